//! Section 1d: reload time with many unrelated processes on the host. A reload must cost
//! O(its own processes): no scan of all of `/proc` when it retires the old generation.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tryswap::report::Outcome;
use tryswap::Supervisor;
use tryswap_fsm::SlotName;
use tryswap_tests::TempState;

use crate::report::{ms, ratio, verdict, Samples, Table};
use crate::setup::{self, Bins};

/// How many idle processes the second half of the run adds to the host.
pub const EXTRA_PROCESSES: usize = 2000;
/// The goal: reloads with the extra processes at most this many times slower.
const GOAL: f64 = 1.1;

/// Idle `sleep` processes, killed and reaped when dropped.
struct Idle(Vec<Child>);

impl Idle {
    fn spawn(count: usize, budget: Duration) -> Result<Idle, String> {
        let deadline = Instant::now() + budget;
        let mut idle = Idle(Vec::with_capacity(count));
        while idle.0.len() < count {
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {} of {count} idle processes started within {budget:?}",
                    idle.0.len()
                ));
            }
            let child = Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawning idle process {}: {e}", idle.0.len() + 1))?;
            idle.0.push(child);
        }
        idle.settle(deadline)?;
        Ok(idle)
    }

    /// Waits until every process has exec'd `sleep` and sleeps (state `S` in
    /// `/proc/<pid>/stat`): the reloads measured next must share the host with idle
    /// processes, not with 2,000 of them still starting (exec, dynamic loading), which
    /// two full runs measured as a 1.25× and 1.28× slowdown of the first reloads after the
    /// spawn.
    fn settle(&self, deadline: Instant) -> Result<(), String> {
        let asleep = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (head, rest) = stat.rsplit_once(") ")?;
                    Some(head.ends_with("(sleep") && rest.starts_with('S'))
                })
                .unwrap_or(false)
        };
        let mut waiting: Vec<u32> = self.0.iter().map(Child::id).collect();
        loop {
            waiting.retain(|&pid| !asleep(pid));
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} of the idle processes were still starting at the deadline",
                    waiting.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// About `reloads` library reloads with the host as it is and as many with
/// [`EXTRA_PROCESSES`] idle processes added, in blocks placed symmetrically in time so
/// that drift hits both.
pub async fn run(bins: &Bins, reloads: usize, budget: Duration) -> Result<Table, String> {
    let temp = TempState::new().map_err(|e| format!("temp dir: {e}"))?;
    let dir = temp.join("host-processes");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sup = Supervisor::open(dir.join("state")).map_err(|e| e.to_string())?;
    sup.add_process_slot(setup::slot_config("bench"));
    let slot = SlotName::new("bench").map_err(|e| e.to_string())?;
    let mut n = 0;
    let mut reload = |sup: &Supervisor| {
        n += 1;
        let candidate = setup::candidate(bins, &dir, &format!("host{n}"));
        let sup = sup.clone();
        let slot = slot.clone();
        async move {
            let t = Instant::now();
            let report = sup
                .activate(&slot, candidate)
                .await
                .map_err(|e| e.to_string())?;
            if report.outcome != Outcome::Active {
                return Err(format!("reload rolled back: {:?}", report.error));
            }
            Ok::<Duration, String>(t.elapsed())
        }
    };
    reload(&sup).await?;
    let deadline = Instant::now() + budget;
    let (mut quiet, mut busy) = (Samples::new(), Samples::new());
    let mut host_processes = 0;
    // Quiet, busy, quiet, busy, quiet, the outer quiet blocks half as long: both hosts get
    // the same number of reloads, and their mean position in time is the same, so a drift
    // of the machine over the run (a background job, the journal growing) weighs on both
    // alike instead of on whichever comes last.
    let quarter = reloads.div_ceil(4).max(1);
    let blocks = [
        (false, quarter),
        (true, 2 * quarter),
        (false, 2 * quarter),
        (true, 2 * quarter),
        (false, quarter),
    ];
    for (with_idle, count) in blocks {
        let idle = if with_idle {
            let idle = Idle::spawn(EXTRA_PROCESSES, Duration::from_secs(60))?;
            host_processes = std::fs::read_dir("/proc")
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                        .count()
                })
                .unwrap_or(0);
            Some(idle)
        } else {
            None
        };
        let samples = if with_idle { &mut busy } else { &mut quiet };
        for _ in 0..count {
            if Instant::now() >= deadline {
                break;
            }
            samples.push(reload(&sup).await?);
        }
        drop(idle);
    }
    sup.shutdown().await;
    drop(temp);

    let mut t = Table::new(
        format!(
            "1d. One reload with {EXTRA_PROCESSES} extra idle processes on the host ({} + {} library reloads, in blocks quiet, busy, quiet, busy, quiet)",
            quiet.len(),
            busy.len()
        ),
        &["host", "p50", "p99", "ratio of medians", "goal"],
    );
    t.row([
        "as it is".to_owned(),
        ms(quiet.p50()),
        ms(quiet.p99()),
        String::new(),
        String::new(),
    ]);
    let r = busy.p50() / quiet.p50();
    t.row([
        format!("{EXTRA_PROCESSES} idle `sleep` processes more ({host_processes} in all)"),
        ms(busy.p50()),
        ms(busy.p99()),
        ratio(r),
        format!("≤ {GOAL}×: {}", verdict(r <= GOAL)),
    ]);
    t.note("Supervisor::activate of the fixture, the old generation retired each time. The idle processes belong to nobody tryswap knows; a reload looks only at its own processes (the generation's cgroup, its process group), never at all of /proc.");
    Ok(t)
}
