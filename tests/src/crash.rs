//! Crash tests: run the real `tryswap` with a failpoint armed (or SIGKILL it at a random
//! moment), read what the journal says it left behind, and check the invariants recovery must
//! restore (DESIGN.md "Tests that matter most", docs/recovery.md).
//!
//! This crate depends on `tryswap` with its `failpoints` feature, so the `tryswap` binary
//! that `cargo test --workspace` builds has failpoints compiled in (inert unless
//! `TRYSWAP_FAILPOINTS` names some); the shipped binary (`cargo build -p tryswap-cli`) has none.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{run_bounded, tryswap_path, Harness};
use crate::process::{pid_alive, send_signal, wait_until};

/// The variable that arms failpoints in `tryswap` (`name=kill;…`).
pub const FAILPOINTS_ENV: &str = "TRYSWAP_FAILPOINTS";
/// The variable that tags every plugin process with its reload id.
pub const RELOAD_ID_ENV: &str = "TRYSWAP_RELOAD_ID";

/// How long one `tryswap` run may take in these tests.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long a gRPC call to the recovered generation may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a `tryswap` run ended.
#[derive(Debug)]
pub struct Exit {
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Exit {
    /// The signal that killed the process, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// The exit code, if it exited.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Stdout parsed as one JSON value (panics with the output if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}); {:?}\nstdout: {}\nstderr: {}",
                self.status, self.stdout, self.stderr
            )
        })
    }
}

fn command(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(tryswap_path());
    cmd.arg("--config")
        .arg(&h.config_path)
        .args(args)
        .env_remove("TRYSWAP_STATE_DIR")
        .env_remove("TRYSWAP_LOG")
        .env_remove(FAILPOINTS_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// Runs `tryswap --config <cfg> ARGS…` with extra environment variables, bounded by 60 s.
pub fn tryswap_env(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Exit {
    let output = run_bounded(command(h, args, env), RUN_LIMIT);
    Exit {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `tryswap` with the failpoint `point` set to `kill`.
pub fn tryswap_killed_at(h: &Harness, point: &str, args: &[&str]) -> Exit {
    let spec = format!("{point}=kill");
    tryswap_env(h, args, &[(FAILPOINTS_ENV, &spec)])
}

/// The argument list of `tryswap --json activate SLOT <fixture> --config-file <config>`.
pub fn reload_args(verb: &str, slot: &str, config: &std::path::Path) -> Vec<String> {
    let plugin = crate::process::fixture_plugin_path();
    vec![
        "--json".into(),
        verb.into(),
        slot.into(),
        plugin.to_string_lossy().into_owned(),
        "--config-file".into(),
        config.to_string_lossy().into_owned(),
    ]
}

/// A `tryswap` run in the background, SIGKILLed (and reaped) when dropped.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    out: PathBuf,
}

impl Background {
    /// Starts `tryswap --config <cfg> ARGS…`; stdout and stderr go to `<tmp>/<name>.out`.
    pub fn start(h: &Harness, args: &[&str], name: &str) -> Background {
        let out = h.state.join(format!("{name}.out"));
        let file = File::create(&out).expect("create output file");
        let err = file.try_clone().expect("clone output file");
        let child = command(h, args, &[])
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("spawn tryswap");
        Background {
            child: Some(child),
            out,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILLs it if it still runs, then reaps it. Returns how it ended and whether this
    /// call killed it (false: it had already exited).
    pub fn kill(mut self) -> (ExitStatus, bool) {
        let mut child = self.child.take().expect("child");
        let killed = match child.try_wait().expect("try_wait") {
            Some(_) => false,
            None => {
                let _ = child.kill();
                true
            }
        };
        let status = wait_bounded(&mut child);
        // It may have exited on its own between try_wait and kill.
        (status, killed && status.signal() == Some(9))
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "tryswap pid {} did not exit within {RUN_LIMIT:?}",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every live process whose environment carries `TRYSWAP_RELOAD_ID=<reload_id>`.
pub fn tagged_pids(reload_id: &str) -> Vec<u32> {
    let wanted = format!("{RELOAD_ID_ENV}={reload_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == wanted.as_bytes()))
        })
        .filter(|&pid| pid_alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// One journal record as `tryswap --json journal show` prints it.
#[derive(Clone, Debug)]
pub struct JournalRecord {
    /// Sequence number.
    pub seq: u64,
    /// Reload id.
    pub reload: String,
    /// Event name (`Staged`, `Launched`, `Activated`, …).
    pub event: String,
    /// The event's fields (`null` for events without any).
    pub body: Value,
}

/// Every record of the journal, read for inspection (no recovery runs).
pub fn journal_records(h: &Harness) -> Vec<JournalRecord> {
    let run = tryswap_env(h, &["--json", "journal", "show"], &[]);
    assert_eq!(run.code(), Some(0), "journal show failed: {run:?}");
    run.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("journal show line is not JSON ({e}): {line}"));
            let (event, body) = match &v["event"] {
                Value::String(name) => (name.clone(), Value::Null),
                Value::Object(map) => {
                    let (name, body) = map.iter().next().expect("event with a name");
                    (name.clone(), body.clone())
                }
                other => panic!("unexpected event shape {other}"),
            };
            JournalRecord {
                seq: v["seq"].as_u64().expect("seq"),
                reload: v["reload"].as_str().expect("reload").to_owned(),
                event,
                body,
            }
        })
        .collect()
}

/// What the journal said about the most recent reload when tryswap died.
#[derive(Clone, Debug, Default)]
pub struct CrashFacts {
    /// Its id (none if the crash came before its first record).
    pub reload_id: Option<String>,
    /// Its generation, from `Staged`.
    pub generation: Option<u64>,
    /// Its events in order.
    pub events: Vec<String>,
    /// The candidate's pid from `Launched`, if journaled.
    pub candidate_pid: Option<u32>,
    /// Whether `Activated` is in the journal (the swap committed).
    pub committed: bool,
    /// Events of the slot after the reload's last one (`Retired`, `Relaunched`, …).
    pub after: Vec<String>,
}

impl CrashFacts {
    /// Reads the journal: the last reload staged after sequence number `since`.
    pub fn read(h: &Harness, since: u64) -> CrashFacts {
        let records = journal_records(h);
        let Some(staged) = records
            .iter()
            .rev()
            .find(|r| r.seq > since && (r.event == "staged" || r.event == "staging_failed"))
        else {
            let after = records
                .iter()
                .filter(|r| r.seq > since)
                .map(|r| r.event.clone())
                .collect();
            return CrashFacts {
                after,
                ..CrashFacts::default()
            };
        };
        let id = staged.reload.clone();
        let mine: Vec<&JournalRecord> = records.iter().filter(|r| r.reload == id).collect();
        let last_seq = mine.last().map_or(0, |r| r.seq);
        CrashFacts {
            reload_id: Some(id.clone()),
            generation: staged.body["generation"].as_u64(),
            events: mine.iter().map(|r| r.event.clone()).collect(),
            candidate_pid: mine
                .iter()
                .find(|r| r.event == "launched")
                .and_then(|r| r.body["process"]["pid"].as_u64())
                .map(|p| p as u32),
            committed: mine.iter().any(|r| r.event == "activated"),
            after: records
                .iter()
                .filter(|r| r.seq > last_seq && r.reload != id)
                .map(|r| r.event.clone())
                .collect(),
        }
    }

    /// The journal's last word on the reload, e.g. `Launched`, or `—`.
    pub fn last_event(&self) -> String {
        self.events
            .last()
            .cloned()
            .unwrap_or_else(|| "—".to_owned())
    }
}

/// The last sequence number in the journal (0 if empty).
pub fn last_seq(h: &Harness) -> u64 {
    journal_records(h).last().map_or(0, |r| r.seq)
}

/// The state recovery must leave a slot in.
#[derive(Clone, Debug)]
pub struct Expect {
    /// The slot.
    pub slot: String,
    /// Its active generation.
    pub generation: u64,
    /// Its pid, if it must be a given process (reattached, not relaunched).
    pub pid: Option<u32>,
    /// What `Fixture/Call` answers.
    pub message: String,
}

/// What recovery left.
#[derive(Clone, Debug)]
pub struct Recovered {
    /// Active generation.
    pub generation: u64,
    /// Its pid.
    pub pid: u32,
    /// Its address.
    pub address: String,
}

/// Runs `tryswap --json recover` and returns its actions (panics unless it exits 0).
pub fn recover(h: &Harness) -> Vec<Value> {
    let run = tryswap_env(h, &["--json", "recover"], &[]);
    assert_eq!(run.code(), Some(0), "recover failed: {run:?}");
    run.json()["actions"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("recover printed no actions: {run:?}"))
}

/// A short text for a list of recovery actions, e.g. `rolled_back(launched) stopped 1; reattached g1`.
pub fn describe_actions(actions: &[Value]) -> String {
    if actions.is_empty() {
        return "nothing".to_owned();
    }
    actions
        .iter()
        .map(|a| {
            let kind = a["action"].as_str().unwrap_or("?");
            match kind {
                "rolled_back" => format!(
                    "rolled back (found {}, stopped {} pid{})",
                    a["found"].as_str().unwrap_or("?"),
                    a["stopped_pids"].as_array().map_or(0, Vec::len),
                    if a["stopped_pids"].as_array().map_or(0, Vec::len) == 1 {
                        ""
                    } else {
                        "s"
                    }
                ),
                "retired" => format!("retired g{}", a["generation"]),
                "reattached" => format!("reattached g{}", a["generation"]),
                "relaunched" => format!(
                    "relaunched g{} (stopped {} leftover{})",
                    a["generation"],
                    a["orphans_stopped"].as_array().map_or(0, Vec::len),
                    if a["orphans_stopped"].as_array().map_or(0, Vec::len) == 1 {
                        ""
                    } else {
                        "s"
                    }
                ),
                other => other.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Asserts everything recovery promises (`what` names the case in failures):
/// - the slot's active generation, pid (if expected) and reply are as expected, it is
///   alive, and no reload is in flight or generation waiting to retire;
/// - it is the only process running from the test's directory (no candidate, no former
///   generation, no leftover of a relaunch);
/// - no process tagged with `crashed` survives, except the active one if that reload is
///   what made it active;
/// - a second recovery only reattaches;
/// - `tryswap journal verify` exits 0.
pub async fn assert_recovered(
    h: &Harness,
    expect: &Expect,
    crashed: Option<&str>,
    what: &str,
) -> Recovered {
    let crashed: Vec<&str> = crashed.into_iter().collect();
    let mut recovered = assert_all_recovered(h, std::slice::from_ref(expect), &crashed, what).await;
    recovered.remove(0)
}

/// [`assert_recovered`] for several slots at once: each as expected, and the active
/// processes of `expects` the only ones running from the test's directory.
pub async fn assert_all_recovered(
    h: &Harness,
    expects: &[Expect],
    crashed: &[&str],
    what: &str,
) -> Vec<Recovered> {
    // Reads never recover: `recover` does (as `start` and `serve` would).
    let recovered_by = tryswap_env(h, &["recover"], &[]);
    let status = tryswap_env(h, &["--json", "status"], &[]);
    assert_eq!(
        status.code(),
        Some(0),
        "{what}: status failed: {status:?} (after recover: {recovered_by:?})"
    );
    let status = status.json();
    let mut recovered = Vec::with_capacity(expects.len());
    for expect in expects {
        recovered.push(assert_slot_recovered(&status, expect, what).await);
    }
    let actives: Vec<u32> = recovered.iter().map(|r| r.pid).collect();

    let mut others = Vec::new();
    let only_actives = wait_until(Duration::from_secs(3), || {
        others = h
            .state
            .processes()
            .into_iter()
            .filter(|p| !actives.contains(p))
            .collect();
        others.is_empty()
    });
    assert!(
        only_actives,
        "{what}: processes besides the active ones (pids {actives:?}) survive: {others:?}"
    );
    for id in crashed {
        let tagged: Vec<u32> = tagged_pids(id)
            .into_iter()
            .filter(|p| !actives.contains(p))
            .collect();
        assert!(
            tagged.is_empty(),
            "{what}: processes tagged with reload {id} survive: {tagged:?}"
        );
    }

    let again = recover(h);
    assert!(
        again.iter().all(|a| a["action"] == "reattached"),
        "{what}: a second recovery did more than reattach: {again:?}"
    );
    let verify = tryswap_env(h, &["journal", "verify"], &[]);
    assert_eq!(verify.code(), Some(0), "{what}: journal verify: {verify:?}");
    recovered
}

/// Checks one slot of a `status` document against `expect` and calls its generation.
async fn assert_slot_recovered(status: &Value, expect: &Expect, what: &str) -> Recovered {
    let slot = status["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot"] == expect.slot.as_str()))
        .unwrap_or_else(|| panic!("{what}: no slot {} in {status}", expect.slot))
        .clone();
    let active = &slot["active"];
    assert_eq!(
        active["generation"].as_u64(),
        Some(expect.generation),
        "{what}: wrong active generation: {slot}"
    );
    assert_eq!(active["alive"], true, "{what}: active not alive: {slot}");
    assert!(slot["in_flight"].is_null(), "{what}: in flight: {slot}");
    assert!(
        slot["retiring"].as_array().is_none_or(Vec::is_empty),
        "{what}: generations still retiring: {slot}"
    );
    let pid = active["pid"].as_u64().expect("active pid") as u32;
    if let Some(expected) = expect.pid {
        assert_eq!(pid, expected, "{what}: the active process changed: {slot}");
    }
    assert!(pid_alive(pid), "{what}: active pid {pid} is not alive");
    let address = active["address"].as_str().expect("address").to_owned();
    let reply = crate::call("tcp", &address, "ping", CALL_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{what}: active g{} does not answer: {e}", expect.generation));
    assert_eq!(
        reply.message, expect.message,
        "{what}: wrong generation answers"
    );
    Recovered {
        generation: expect.generation,
        pid,
        address,
    }
}

/// SIGKILLs `pid` and waits (bounded) until it is gone.
pub fn kill_and_wait(pid: u32) {
    send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(pid)),
        "pid {pid} survived SIGKILL"
    );
}

/// The seed of a seeded test schedule: environment variable `var` when set (to rerun a
/// failure), else the clock.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// A small deterministic random number generator (SplitMix64) for seeded test schedules.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
