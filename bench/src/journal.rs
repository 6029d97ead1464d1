//! Sections 3 and 4: journal append rate, and recovery time against the size of history.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use tryswap::Supervisor;
use tryswap_fsm::{
    ArtifactRef, Command, Endpoint, Generation, Mode, Network, ProcessIdentity, Protocol, Reason,
    ReloadId, Sha256, SlotName,
};
use tryswap_journal::Journal;

use crate::report::{count, ms, ratio, verdict, Samples, Table};

/// Bump when the generated history's shape or the journal format changes: cached journals are
/// rebuilt (v3: journal format 2).
const SHAPE: &str = "v3";
/// Slots the generated history is spread over.
pub const HISTORY_SLOTS: usize = 10;
/// Reload cycles per `execute_all` transaction while generating.
const CYCLES_PER_BATCH: usize = 200;

fn artifact(n: u64) -> ArtifactRef {
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&n.to_be_bytes());
    ArtifactRef {
        sha256: Sha256(digest),
        config_sha256: Some(Sha256([7; 32])),
    }
}

fn identity(n: u64) -> ProcessIdentity {
    ProcessIdentity {
        pid: 1_000_000 + (n % 1_000_000) as u32,
        start_time: n,
        boot_id: "00000000-0000-0000-0000-000000000000".into(),
    }
}

fn endpoint(n: u64) -> Endpoint {
    Endpoint {
        core_version: 1,
        app_version: 1,
        network: Network::Tcp,
        address: format!("127.0.0.1:{}", 10_000 + n % 15_000),
        protocol: Protocol::Grpc,
        server_cert: None,
    }
}

/// The commands of one reload cycle of `slot`, numbered `n`, in the generated history's
/// mix: 7 in 10 activate (and retire the former generation), 2 in 10 fail at the probe,
/// 1 in 10 is a dry run. `active` is the slot's active generation, updated.
fn cycle(slot: &SlotName, n: u64, active: &mut Option<Generation>, next: &mut u64) -> Vec<Command> {
    let reload = ReloadId::from_u128(u128::from(n) + 1);
    // Rotates through the mix on every slot of a round-robin over ten slots too.
    let kind = (n + n / 10) % 10;
    let mode = if kind == 9 {
        Mode::DryRun
    } else {
        Mode::Activate
    };
    let mut out = vec![
        Command::Stage {
            reload,
            slot: slot.clone(),
            mode,
            artifact: artifact(n),
        },
        Command::RecordLaunch {
            reload,
            process: Some(identity(n)),
            log_path: Some(format!("/var/lib/tryswap/logs/{slot}/{n}.log")),
        },
        Command::RecordHandshake {
            reload,
            endpoint: Some(endpoint(n)),
        },
    ];
    let generation = Generation(*next);
    *next += 1;
    match kind {
        7 | 8 => out.push(Command::Fail {
            reload,
            reason: Reason::error("probe failed: grpc health of service \"plugin\": NOT_SERVING"),
        }),
        9 => {
            out.push(Command::RecordProbe { reload });
            out.push(Command::PassDryRun { reload });
        }
        _ => {
            out.push(Command::RecordProbe { reload });
            out.push(Command::Commit { reload });
            if let Some(old) = active.replace(generation) {
                out.push(Command::Retire {
                    slot: slot.clone(),
                    generation: old,
                });
            }
        }
    }
    out
}

/// Appends reload cycles round-robin over [`HISTORY_SLOTS`] slots until the journal holds
/// at least `events` records, or `deadline` passes (`Ok(false)`). Resumes where a previous
/// (interrupted) run stopped: the slots' projections say how far it got.
fn generate(journal: &Journal, events: u64, deadline: Instant) -> Result<bool, String> {
    let slots: Vec<SlotName> = (0..HISTORY_SLOTS)
        .map(|i| SlotName::new(format!("history-{i:02}")).expect("valid slot name"))
        .collect();
    let mut active = [None; HISTORY_SLOTS];
    let mut next = [1u64; HISTORY_SLOTS];
    for (i, slot) in slots.iter().enumerate() {
        if let Some(view) = journal.slot(slot).map_err(|e| e.to_string())? {
            active[i] = view.slot.active.as_ref().map(|a| a.generation);
            next[i] = view.slot.next_generation.0;
        }
    }
    // Batches hold a multiple of HISTORY_SLOTS cycles, so every slot has had as many.
    let mut n: u64 = next.iter().map(|g| g - 1).sum();
    while journal.last_seq() < events {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        let mut batch = Vec::new();
        for _ in 0..CYCLES_PER_BATCH {
            let i = (n % HISTORY_SLOTS as u64) as usize;
            batch.extend(cycle(&slots[i], n, &mut active[i], &mut next[i]));
            n += 1;
        }
        journal
            .execute_all(&batch, Utc::now())
            .map_err(|e| format!("generating history: {e}"))?;
    }
    Ok(true)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// How a cached history came to be.
enum Cached {
    /// Ready: the state dir, and how long generating it took in this run (zero if cached).
    Ready(PathBuf, Duration),
    /// The generation budget ran out at this many events (the next run resumes).
    Partial(u64),
}

/// A state dir holding a journal with `events` records (compacted to 100 reloads per slot
/// if `compacted`), from the cache or generated into it (resuming a partial one) until
/// `deadline`.
fn cached_state(
    cache: &Path,
    events: u64,
    compacted: bool,
    deadline: Instant,
) -> Result<Cached, String> {
    let plain = cache.join(format!("{SHAPE}-{events}"));
    let done = |dir: &Path| dir.join("complete").exists();
    let mut took = Duration::ZERO;
    if !done(&plain) {
        let t = Instant::now();
        let journal = Journal::open(&plain.join("state").join("journal"))
            .map_err(|e| format!("opening {}: {e}", plain.display()))?;
        let finished = generate(&journal, events, deadline)?;
        journal.flush().map_err(|e| e.to_string())?;
        if !finished {
            return Ok(Cached::Partial(journal.last_seq()));
        }
        drop(journal);
        took = t.elapsed();
        std::fs::write(plain.join("complete"), format!("{took:?}\n")).map_err(|e| e.to_string())?;
    }
    if !compacted {
        return Ok(Cached::Ready(plain.join("state"), took));
    }
    // Compacted (histories trimmed), then reopened once, which rewrites sled's store without the
    // dropped records' garbage (what any next open after a compaction does).
    let small = cache.join(format!("{SHAPE}-{events}-compacted-trimmed"));
    if !done(&small) {
        let _ = std::fs::remove_dir_all(&small);
        copy_dir(&plain, &small).map_err(|e| format!("copying {}: {e}", plain.display()))?;
        let journal = Journal::open(&small.join("state").join("journal"))
            .map_err(|e| format!("opening {}: {e}", small.display()))?;
        journal
            .compact(tryswap_journal::DEFAULT_KEEP_PER_SLOT)
            .map_err(|e| format!("compacting: {e}"))?;
        drop(journal);
        let journal = Journal::open(&small.join("state").join("journal"))
            .map_err(|e| format!("reopening {} after compaction: {e}", small.display()))?;
        drop(journal);
        std::fs::write(small.join("complete"), "").map_err(|e| e.to_string())?;
    }
    Ok(Cached::Ready(small.join("state"), took))
}

/// Times of one recovery: open, recover, verify.
struct Recovery {
    open: Samples,
    recover: Samples,
    verify: Samples,
    total: Samples,
    events_checked: u64,
}

/// One recovery of `state` in a new process of this binary (`--recover-once`), as a
/// restart does: in this process the rows before (10^6 records verified, a rebuild) left
/// a heap and caches that made the same 5,545 records verify 1.5× slower after a larger
/// history than after a smaller one.
async fn recover_in_child(state: &Path, rec: &mut Recovery) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let out = tokio::process::Command::new(exe)
        .arg("--recover-once")
        .arg(state)
        .output()
        .await
        .map_err(|e| format!("starting a recovery process: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the recovery process of {} failed ({}): {}",
            state.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let fields: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the recovery process printed {text:?}: {e}"))?;
    let [open, recover, verify, events] = fields[..] else {
        return Err(format!("the recovery process printed {text:?}"));
    };
    rec.open.push_ms(open);
    rec.recover.push_ms(recover);
    rec.verify.push_ms(verify);
    rec.total.push_ms(open + recover + verify);
    rec.events_checked = events as u64;
    Ok(())
}

/// `tryswap-bench --recover-once STATE`: one recovery of `STATE` in this process; prints
/// the milliseconds of open, recover and verify, and the records verified.
pub async fn recover_once_here(state: &Path) -> Result<String, String> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let t = Instant::now();
    let sup = Supervisor::open(state).map_err(|e| format!("open {}: {e}", state.display()))?;
    let opened = t.elapsed();
    let report = sup.recover().await.map_err(|e| e.to_string())?;
    if !report.actions.is_empty() {
        return Err(format!(
            "recovery did something on a quiet journal: {report:?}"
        ));
    }
    let recovered = t.elapsed();
    let verified = sup.journal().verify().map_err(|e| e.to_string())?;
    let total = t.elapsed();
    if !verified.is_ok() {
        return Err(format!("verify: {:?}", verified.problems));
    }
    Ok(format!(
        "{} {} {} {}",
        ms(opened),
        ms(recovered - opened),
        ms(total - recovered),
        verified.events_checked
    ))
}

/// Section 4: recovery time at each history size, plain and compacted.
pub async fn recovery(cache: &Path, sizes: &[u64], budget: Duration) -> Result<Vec<Table>, String> {
    let deadline = Instant::now() + budget;
    let mut t = Table::new(
        "4. Recovery (open + recover + verify) against the size of history",
        &[
            "events",
            "compacted",
            "records verified",
            "open",
            "recover",
            "verify",
            "total (median of 3)",
            "goal",
        ],
    );
    let mut rebuilt = Table::new(
        "4b. Rebuild sled from the log (`tryswap journal rebuild`)",
        &["events", "records folded", "rebuild", "rate"],
    );
    let mut generated = Vec::new();
    for &events in sizes {
        for compacted in [false, true] {
            let (state, took) = match cached_state(cache, events, compacted, deadline)? {
                Cached::Ready(state, took) => (state, took),
                Cached::Partial(reached) => {
                    t.row([
                        count(events as f64),
                        "–".to_owned(),
                        format!(
                            "not generated yet: the budget ran out at {} events (a rerun resumes)",
                            count(reached as f64)
                        ),
                    ]);
                    break;
                }
            };
            if took > Duration::ZERO {
                generated.push((events, took));
            }
            let mut rec = Recovery {
                open: Samples::new(),
                recover: Samples::new(),
                verify: Samples::new(),
                total: Samples::new(),
                events_checked: 0,
            };
            // The rows before this one (generating a history, the 4b rebuild of 10^6
            // records) leave hundreds of MB of dirty pages; a journal's fsync would wait for
            // their writeback, which is not recovery's cost (it doubled the compacted rows'
            // time, growing with the size of the row before). Recovery after a restart
            // starts from a settled disk.
            nix::unistd::sync();
            for _ in 0..3 {
                recover_in_child(&state, &mut rec).await?;
            }
            if !compacted && events >= 100_000 {
                let dir = state.join("journal");
                let t = Instant::now();
                let journal = Journal::rebuild(&dir)
                    .map_err(|e| format!("rebuilding {}: {e}", dir.display()))?;
                let took = t.elapsed();
                let records = journal.rebuilt().map_or(0, |note| note.records);
                drop(journal);
                rebuilt.row([
                    count(events as f64),
                    count(records as f64),
                    ms(took.as_secs_f64() * 1000.0),
                    rate(records, took),
                ]);
            }
            let total = rec.total.p50();
            let goal = if compacted && events >= 1_000_000 {
                format!("≤ 50 ms: {}", verdict(total <= 50.0))
            } else {
                String::new()
            };
            t.row([
                count(events as f64),
                if compacted {
                    "yes (keep 100/slot)"
                } else {
                    "no"
                }
                .to_owned(),
                count(rec.events_checked as f64),
                ms(rec.open.p50()),
                ms(rec.recover.p50()),
                ms(rec.verify.p50()),
                ms(total),
                goal,
            ]);
        }
    }
    t.note(format!(
        "History: reload cycles round-robin over {HISTORY_SLOTS} slots (7 in 10 activate and retire the former generation, 2 in 10 fail at the probe, 1 in 10 dry runs), appended with `Journal::execute_all` ({CYCLES_PER_BATCH} cycles per transaction) and cached under the cache directory. Each recovery runs in a new process, as after a restart. `recover` is `Supervisor::recover` with no slot registered (nothing to relaunch): it reads the projections only. `verify` re-folds every record still in the journal."
    ));
    for (events, took) in generated {
        t.note(format!(
            "Generated {} events in {:.1} s this run.",
            count(events as f64),
            took.as_secs_f64()
        ));
    }
    rebuilt.note(
        "The uncompacted journal of section 4: sled's directory removed and every record of the log folded in again (`Journal::rebuild`, batches of 2,048 records per sled transaction).",
    );
    Ok(vec![t, rebuilt])
}

fn rate(events: u64, elapsed: Duration) -> String {
    format!("{}/s", count(events as f64 / elapsed.as_secs_f64()))
}

/// Adds a row to section 3b: runs `step` (given how many steps ran before) until `budget`
/// has passed or it ran `max_steps` times, after a flush so that earlier work is not
/// counted, and measures the events it appended (by sequence number), the time, the rate
/// and the durable flushes. `label` names the row from the number of steps.
fn measure_row(
    table: &mut Table,
    journal: &Journal,
    budget: Duration,
    max_steps: u64,
    label: impl FnOnce(u64) -> String,
    mut step: impl FnMut(u64) -> Result<(), String>,
) -> Result<(), String> {
    journal.flush().map_err(|e| e.to_string())?;
    let flushes = journal.flush_count();
    let first = journal.last_seq();
    let started = Instant::now();
    let mut steps = 0;
    while started.elapsed() < budget && steps < max_steps {
        step(steps)?;
        steps += 1;
    }
    let elapsed = started.elapsed();
    let events = journal.last_seq() - first;
    table.row([
        label(steps),
        count(events as f64),
        ms(elapsed.as_secs_f64() * 1000.0),
        rate(events, elapsed),
        (journal.flush_count() - flushes).to_string(),
    ]);
    Ok(())
}

/// Section 3b: events appended per second.
pub fn append_rate(dir: &Path, budget: Duration) -> Result<Vec<Table>, String> {
    let journal = Journal::open(&dir.join("append")).map_err(|e| e.to_string())?;
    let slot = SlotName::new("append").map_err(|e| e.to_string())?;
    let mut active = None;
    let mut next = 1;
    let mut n = 0u64;
    // An active generation for the Stop/Relaunch loop.
    for command in cycle(&slot, n, &mut active, &mut next) {
        journal
            .execute(&command, Utc::now())
            .map_err(|e| e.to_string())?;
    }
    n += 1;
    let generation = active.ok_or("no active generation")?;

    let mut t = Table::new(
        "3b. Journal appends per second",
        &["what", "events", "time", "rate", "durable flushes"],
    );

    // Without flush points: one event per transaction.
    measure_row(
        &mut t,
        &journal,
        budget,
        1_000_000,
        |_| "`execute`, events without a flush point (Stopped/Relaunched)".to_owned(),
        |events| {
            let command = if events % 2 == 0 {
                Command::Stop {
                    slot: slot.clone(),
                    generation,
                    reason: Reason::cancelled("bench"),
                }
            } else {
                Command::Relaunch {
                    slot: slot.clone(),
                    generation,
                    process: Some(identity(events)),
                    log_path: None,
                    endpoint: Some(endpoint(events)),
                }
            };
            journal
                .execute(&command, Utc::now())
                .map_err(|e| e.to_string())?;
            Ok(())
        },
    )?;

    // Whole reloads: one transaction per event, one durable flush per reload (the commit).
    measure_row(
        &mut t,
        &journal,
        budget,
        100_000,
        |reloads| {
            format!("`execute`, whole reload cycles ({reloads} reloads, flush after Activated)")
        },
        |_| {
            for command in cycle(&slot, n, &mut active, &mut next) {
                journal
                    .execute(&command, Utc::now())
                    .map_err(|e| e.to_string())?;
            }
            n += 1;
            Ok(())
        },
    )?;

    // Batched: many reload cycles per transaction, one durable flush per batch.
    measure_row(
        &mut t,
        &journal,
        budget,
        10_000,
        |_| format!("`execute_all`, {CYCLES_PER_BATCH} reload cycles per transaction"),
        |_| {
            let mut batch = Vec::new();
            for _ in 0..CYCLES_PER_BATCH {
                batch.extend(cycle(&slot, n, &mut active, &mut next));
                n += 1;
            }
            journal
                .execute_all(&batch, Utc::now())
                .map_err(|e| e.to_string())?;
            Ok(())
        },
    )?;
    let history = journal.history(&slot).map_err(|e| e.to_string())?.len();
    t.note(format!(
        "All rows append to one slot, which ends with {} generations in its history (one key per generation beside the slot's projection: an activation writes one key, whatever the history's length).",
        count(history as f64)
    ));
    Ok(vec![t])
}

/// Bytes this process has written so far (`wchar` of `/proc/self/io`: sled's pages, the
/// log, the witness and the projection snapshot), if the kernel says.
fn written_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("wchar:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The commands of activation `n` of `slot` (generation `n`), then the retirement of the
/// generation before: one reload as the supervisor journals it.
fn activation(slot: &SlotName, n: u64) -> Vec<Command> {
    let reload = ReloadId::from_u128(u128::from(n) << 64 | 0x7000);
    let mut commands = vec![
        Command::Stage {
            reload,
            slot: slot.clone(),
            mode: Mode::Activate,
            artifact: artifact(n),
        },
        Command::RecordLaunch {
            reload,
            process: Some(identity(n)),
            log_path: Some(format!("logs/growth/{n:06}.log")),
        },
        Command::RecordHandshake {
            reload,
            endpoint: Some(endpoint(n)),
        },
        Command::RecordProbe { reload },
        Command::Commit { reload },
    ];
    if n > 1 {
        commands.push(Command::Retire {
            slot: slot.clone(),
            generation: Generation(n - 1),
        });
    }
    commands
}

/// Section 3e: `reloads` activations of one slot through the journal, one `execute` per
/// event (one durable flush per reload, the commit's, as a reload makes it); the time and the bytes
/// written per reload of the last 1,000 against those of reloads 301–1,300 (before 300
/// generation numbers are shorter varints), and against reloads 2,001–3,000, once sled's
/// trees have grown their index levels. Windows of 1,000 reloads: sled takes the records in
/// behind the log, one transaction per batch of about 85 reloads plus its own flusher's
/// writes, so a window of 200 held two or three of them and its bytes moved ±20 % from run
/// to run.
pub fn history_growth(dir: &Path, reloads: u64) -> Result<Vec<Table>, String> {
    const WARM_UP: u64 = 300;
    const SETTLED: u64 = 2_000;
    const WINDOW: u64 = 1_000;
    let reloads = reloads.max(SETTLED + 2 * WINDOW);
    let journal = Journal::open(&dir.join("history-growth")).map_err(|e| e.to_string())?;
    let slot = SlotName::new("growth").map_err(|e| e.to_string())?;
    let mut t = Table::new(
        format!("3e. After {} reloads of one slot", count(reloads as f64)),
        &[
            "reloads",
            "time per reload (p50)",
            "mean",
            "bytes written per reload",
        ],
    );
    let run = |n: u64| -> Result<Duration, String> {
        let started = Instant::now();
        for command in activation(&slot, n) {
            journal
                .execute(&command, Utc::now())
                .map_err(|e| e.to_string())?;
        }
        Ok(started.elapsed())
    };
    let mut windows = Vec::new();
    let mut done = 0;
    for (start, end) in [
        (WARM_UP, WARM_UP + WINDOW),
        (SETTLED, SETTLED + WINDOW),
        (reloads - WINDOW, reloads),
    ] {
        for n in done + 1..=start {
            run(n)?;
        }
        journal.flush().map_err(|e| e.to_string())?;
        let before = written_bytes();
        let mut samples = Samples::new();
        let mut total = Duration::ZERO;
        for n in start + 1..=end {
            let took = run(n)?;
            total += took;
            samples.push(took);
        }
        journal.flush().map_err(|e| e.to_string())?;
        let bytes = match (before, written_bytes()) {
            (Some(a), Some(b)) => (b - a) as f64 / WINDOW as f64,
            _ => f64::NAN,
        };
        let mean = total.as_secs_f64() * 1000.0 / WINDOW as f64;
        t.row([
            format!("{}–{}", count((start + 1) as f64), count(end as f64)),
            ms(samples.p50()),
            ms(mean),
            count(bytes),
        ]);
        windows.push((samples.p50(), bytes));
        done = end;
    }
    let history = journal.history(&slot).map_err(|e| e.to_string())?.len();
    let last = windows[2];
    for (label, base) in [
        ("last ÷ first (goal ≤ 1.1×)".to_owned(), windows[0]),
        (
            format!(
                "last ÷ reloads {}–{} (sled settled)",
                count((SETTLED + 1) as f64),
                count((SETTLED + WINDOW) as f64)
            ),
            windows[1],
        ),
    ] {
        let (time, bytes) = (last.0 / base.0, last.1 / base.1);
        t.row([
            label,
            format!("{}: {}", ratio(time), verdict(time <= 1.1)),
            String::new(),
            format!("{}: {}", ratio(bytes), verdict(bytes <= 1.1)),
        ]);
    }
    t.note(format!(
        "One slot, {} generations in its history at the end: each is one key beside the slot's projection, so a reload writes one history key however long the history is. Bytes are every byte this process wrote (`wchar` of /proc/self/io: sled, the log, the witness, and the projection snapshot at each window's closing flush). Between reloads 300 and 2,000 sled's trees grow their index levels, which adds bytes to every page it flushes; after that they stay flat. sled takes the records in behind the log (the backlog: one transaction per batch of records, docs/journal.md \"Writing\"), so a window's bytes are whole batches plus sled's flusher: windows of 1,000 reloads. Before issue 11's history keys, reload 3,000 wrote 2.0 MB (issue 15).",
        count(history as f64)
    ));
    Ok(vec![t])
}
