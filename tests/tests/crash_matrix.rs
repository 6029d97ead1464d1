//! The crash matrix: the real `tryswap` killed (SIGKILL, through a failpoint) at every
//! journal write and every side effect of a reload and of recovery, then recovered. After
//! each crash: exactly one live active process per slot, answering calls; no candidate or
//! tagged process survives; `journal verify` passes; a committed swap is never lost and an
//! uncommitted one never appears (the old generation keeps its very process).
//!
//! Set `TRYSWAP_CRASH_MATRIX_OUT=<dir>` to get each test's results as a Markdown table
//! (docs/recovery.md shows one such run).

use std::fmt::Write as _;
use std::path::PathBuf;

use tryswap_tests::crash::{
    assert_all_recovered, assert_recovered, describe_actions, journal_records, kill_and_wait,
    last_seq, recover, reload_args, tryswap_env, tryswap_killed_at, CrashFacts, Expect,
};
use tryswap_tests::harness::{Harness, SlotSpec};
use tryswap_tests::FixtureConfig;

#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// `activate` a good v2 while v1 runs.
    Activate,
    /// `activate` a v2 that never becomes healthy while v1 runs.
    Reject,
    /// `try` a good v2 while v1 runs.
    DryRun,
    /// `activate` v2 killed at the given point, then `recover` killed at the case's point.
    RecoverAfter(&'static str),
    /// v1's process dies; `recover` killed at the case's point while it relaunches v1.
    Relaunch,
}

impl Scenario {
    fn describe(self) -> String {
        match self {
            Scenario::Activate => "activate v2".to_owned(),
            Scenario::Reject => "activate a never-healthy v2".to_owned(),
            Scenario::DryRun => "try v2".to_owned(),
            Scenario::RecoverAfter(first) => format!("activate v2 killed at {first}, then recover"),
            Scenario::Relaunch => "v1 killed, then recover (relaunch)".to_owned(),
        }
    }
}

struct Case {
    point: &'static str,
    scenario: Scenario,
    /// Whether the swap to v2 is committed when the process dies.
    commits: bool,
}

const fn case(point: &'static str, scenario: Scenario, commits: bool) -> Case {
    Case {
        point,
        scenario,
        commits,
    }
}

struct Row {
    point: &'static str,
    scenario: String,
    journal: String,
    recovery: String,
    result: String,
}

fn slot() -> SlotSpec {
    SlotSpec {
        failure_threshold: 2,
        ..SlotSpec::new("demo")
    }
}

async fn run_case(c: &Case) -> Row {
    let what = format!("{} ({})", c.point, c.scenario.describe());
    let h = Harness::new(&[slot()]);
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let sick = h.fixture_config(
        "sick",
        &FixtureConfig {
            never_healthy: true,
            ..FixtureConfig::with_message("sick")
        },
    );
    let first = h.activate("demo", &v1);
    assert_eq!(first.code, 0, "{what}: activating v1: {first:?}");
    let (g1, pid1, _) = h.active("demo").expect("v1 active");
    let v1_reload = journal_records(&h)[0].reload.clone();
    let since = last_seq(&h);

    let (args, crash_at) = match c.scenario {
        Scenario::Activate => (reload_args("activate", "demo", &v2), c.point),
        Scenario::RecoverAfter(first) => (reload_args("activate", "demo", &v2), first),
        Scenario::Reject => (reload_args("activate", "demo", &sick), c.point),
        Scenario::DryRun => (reload_args("try", "demo", &v2), c.point),
        Scenario::Relaunch => {
            kill_and_wait(pid1);
            (vec!["--json".to_owned(), "recover".to_owned()], c.point)
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exit = tryswap_killed_at(&h, crash_at, &args);
    assert_eq!(
        exit.signal(),
        Some(9),
        "{what}: tryswap was not killed at {crash_at} (failpoint not reached?): {exit:?}"
    );
    if let Scenario::RecoverAfter(_) = c.scenario {
        let exit = tryswap_killed_at(&h, c.point, &["--json", "recover"]);
        assert_eq!(
            exit.signal(),
            Some(9),
            "{what}: recover was not killed at {} (failpoint not reached?): {exit:?}",
            c.point
        );
    }
    let facts = CrashFacts::read(&h, since);
    let actions = recover(&h);

    if !matches!(c.scenario, Scenario::Relaunch) {
        assert_eq!(
            facts.committed, c.commits,
            "{what}: the journal disagrees about the commit: {facts:?}"
        );
    }
    // An unfinished reload is rolled back, by id.
    let unfinished = facts.reload_id.is_some()
        && !facts
            .events
            .iter()
            .any(|e| matches!(e.as_str(), "activated" | "rolled_back" | "dry_run_passed"));
    if unfinished {
        let id = facts.reload_id.as_deref().unwrap_or_default();
        assert!(
            actions
                .iter()
                .any(|a| a["action"] == "rolled_back" && a["reload_id"] == id),
            "{what}: reload {id} left {} but recovery did not roll it back: {actions:?}",
            facts.last_event()
        );
    }
    let (expect, crashed) = if c.commits {
        (
            Expect {
                slot: "demo".into(),
                generation: facts
                    .generation
                    .expect("a committed reload has a generation"),
                pid: Some(
                    facts
                        .candidate_pid
                        .expect("a committed reload was launched"),
                ),
                message: "v2".into(),
            },
            facts.reload_id.clone(),
        )
    } else if let Scenario::Relaunch = c.scenario {
        (
            Expect {
                slot: "demo".into(),
                generation: g1,
                pid: None,
                message: "v1".into(),
            },
            Some(v1_reload),
        )
    } else {
        (
            Expect {
                slot: "demo".into(),
                generation: g1,
                pid: Some(pid1),
                message: "v1".into(),
            },
            facts.reload_id.clone(),
        )
    };
    let recovered = assert_recovered(&h, &expect, crashed.as_deref(), &what).await;
    let staging = h.staging_files();
    assert!(
        staging.is_empty(),
        "{what}: staging copies left in the store: {staging:?}"
    );
    if c.commits {
        assert!(
            !tryswap_tests::pid_alive(pid1),
            "{what}: the former generation (pid {pid1}) survived"
        );
    }
    if let Scenario::Relaunch = c.scenario {
        assert_ne!(recovered.pid, pid1, "{what}: v1 was not relaunched");
        if c.point == "recover-after-relaunch-spawn" {
            assert!(
                actions.iter().any(|a| a["action"] == "relaunched"
                    && a["orphans_stopped"]
                        .as_array()
                        .is_some_and(|o| !o.is_empty())),
                "{what}: the unjournaled relaunch was not stopped: {actions:?}"
            );
        }
    }

    let mut journal = match (&facts.reload_id, c.scenario) {
        (_, Scenario::Relaunch) => "g1 active and running (its process is dead)".to_owned(),
        (Some(_), _) => facts.events.join(" → "),
        (None, _) => "no record of the reload".to_owned(),
    };
    if !facts.after.is_empty() {
        let _ = write!(journal, "; then {}", facts.after.join(", "));
    }
    Row {
        point: c.point,
        scenario: c.scenario.describe(),
        journal,
        recovery: describe_actions(&actions),
        result: format!(
            "g{} ({}), pid {}",
            recovered.generation,
            expect.message,
            if expect.pid == Some(pid1) {
                "unchanged"
            } else if expect.pid.is_some() {
                "the candidate's"
            } else {
                "new"
            }
        ),
    }
}

async fn run_matrix(name: &str, cases: &[Case]) {
    let mut table = String::from(
        "| failpoint | scenario | journal at the crash | recovery did | active after |\n\
         |---|---|---|---|---|\n",
    );
    for c in cases {
        let started = std::time::Instant::now();
        let row = run_case(c).await;
        println!(
            "{}: {} | {} | {} ({:?})",
            row.point,
            row.journal,
            row.recovery,
            row.result,
            started.elapsed()
        );
        let _ = writeln!(
            table,
            "| `{}` | {} | {} | {} | {} |",
            row.point, row.scenario, row.journal, row.recovery, row.result
        );
    }
    if let Some(dir) = std::env::var_os("TRYSWAP_CRASH_MATRIX_OUT") {
        let path = PathBuf::from(dir).join(format!("{name}.md"));
        std::fs::write(&path, &table).expect("write the crash matrix table");
    }
}

const BEFORE_COMMIT: &[Case] = &[
    case("slot-before-lock", Scenario::Activate, false),
    case("store-after-copy", Scenario::Activate, false),
    case("reload-before-staged", Scenario::Activate, false),
    case("reload-after-staged", Scenario::Activate, false),
    case("reload-after-spawn", Scenario::Activate, false),
    case("reload-after-launched", Scenario::Activate, false),
    case("reload-before-validated", Scenario::Activate, false),
    case("reload-after-validated", Scenario::Activate, false),
    case("reload-before-probed", Scenario::Activate, false),
    case("reload-after-probed", Scenario::Activate, false),
    case("reload-before-commit", Scenario::Activate, false),
];

const AFTER_COMMIT: &[Case] = &[
    case("reload-after-commit", Scenario::Activate, true),
    case("reload-after-swap", Scenario::Activate, true),
    case("retire-before-stop", Scenario::Activate, true),
    case("retire-after-stop", Scenario::Activate, true),
    case("retire-after-retired", Scenario::Activate, true),
];

const REJECT_AND_DRY_RUN: &[Case] = &[
    case("rollback-before-stop", Scenario::Reject, false),
    case("rollback-before-rolledback", Scenario::Reject, false),
    case("rollback-after-rolledback", Scenario::Reject, false),
    case("dryrun-before-passed", Scenario::DryRun, false),
];

const DURING_RECOVERY: &[Case] = &[
    case(
        "recover-before-stop-candidate",
        Scenario::RecoverAfter("reload-after-probed"),
        false,
    ),
    case(
        "recover-before-rolledback",
        Scenario::RecoverAfter("reload-after-probed"),
        false,
    ),
    case(
        "recover-after-rolledback",
        Scenario::RecoverAfter("reload-after-probed"),
        false,
    ),
    case(
        "retire-before-stop",
        Scenario::RecoverAfter("reload-after-commit"),
        true,
    ),
    case(
        "retire-after-stop",
        Scenario::RecoverAfter("reload-after-commit"),
        true,
    ),
    case("recover-after-relaunch-spawn", Scenario::Relaunch, false),
    case("recover-after-relaunched", Scenario::Relaunch, false),
];

#[tokio::test]
async fn a_crash_before_the_commit_never_makes_the_candidate_active() {
    run_matrix("before_commit", BEFORE_COMMIT).await;
}

#[tokio::test]
async fn a_crash_after_the_commit_never_loses_the_swap() {
    run_matrix("after_commit", AFTER_COMMIT).await;
}

#[tokio::test]
async fn a_crash_while_rejecting_or_dry_running_keeps_the_old_generation() {
    run_matrix("reject_and_dry_run", REJECT_AND_DRY_RUN).await;
}

#[tokio::test]
async fn a_crash_during_recovery_is_recovered_by_the_next_one() {
    run_matrix("during_recovery", DURING_RECOVERY).await;
}

/// The `reload-config` family: `tryswap serve` killed at each failpoint of a config reload
/// that changes both slots, then `recover`: a config reload commits every changed slot or
/// none (never half of it), and leaves no candidate behind.
const RELOAD_CONFIG: &[(&str, bool)] = &[
    ("config-after-staged", false),
    ("config-after-spawn", false),
    ("config-after-launched", false),
    ("config-after-validated", false),
    ("config-after-probed", false),
    ("config-before-commit", false),
    ("config-after-commit", true),
    ("config-after-swap", true),
];

async fn run_config_case(point: &str, commits: bool) {
    use std::time::Duration;
    use tryswap_tests::daemon::Daemon;
    let what = format!("{point} (reload-config changing slots a and b)");
    let h = Harness::new(&[SlotSpec::new("a"), SlotSpec::new("b")]);
    let mut before = Vec::new();
    for name in ["a", "b"] {
        let cfg = h.fixture_config(name, &FixtureConfig::with_message(name));
        assert_eq!(h.activate(name, &cfg).code, 0, "{what}: activating {name}");
        let (generation, pid, _) = h.active(name).expect("active");
        before.push((name, generation, pid));
    }
    let since = last_seq(&h);
    let spec = format!("{point}=kill");
    let mut daemon = Daemon::start_with(&h, &[], &[("TRYSWAP_FAILPOINTS", &spec)]);
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        text.replace("drain_timeout = \"2s\"", "drain_timeout = \"3s\""),
    )
    .unwrap();
    let run = h.tryswap(&["reload-config"]);
    let status = daemon.wait(Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        Some(9),
        "{what}: the daemon was not killed at {point}: {run:?}\n{}",
        daemon.log()
    );

    // What the journal says: the config reload's reloads all committed, or none did.
    let records = journal_records(&h);
    let staged: Vec<_> = records
        .iter()
        .filter(|r| r.seq > since && r.event == "staged")
        .collect();
    let committed = staged
        .iter()
        .filter(|s| {
            records
                .iter()
                .any(|r| r.reload == s.reload && r.event == "activated")
        })
        .count();
    let expected_commits = if commits { 2 } else { 0 };
    assert_eq!(
        committed,
        expected_commits,
        "{what}: {committed} of {} config-reload candidates committed",
        staged.len()
    );
    recover(&h);
    let crashed: Vec<&str> = staged.iter().map(|r| r.reload.as_str()).collect();
    let expects: Vec<Expect> = before
        .iter()
        .map(|(name, generation, pid)| Expect {
            slot: (*name).to_owned(),
            generation: if commits { generation + 1 } else { *generation },
            pid: (!commits).then_some(*pid),
            message: (*name).to_owned(),
        })
        .collect();
    assert_all_recovered(&h, &expects, &crashed, &what).await;
    for (_, _, pid) in &before {
        if commits {
            assert!(
                !tryswap_tests::pid_alive(*pid),
                "{what}: the former generation (pid {pid}) survived"
            );
        }
    }
}

#[tokio::test]
async fn a_crash_during_a_config_reload_commits_every_changed_slot_or_none() {
    for (point, commits) in RELOAD_CONFIG {
        let started = std::time::Instant::now();
        run_config_case(point, *commits).await;
        println!("{point}: ok ({:?})", started.elapsed());
    }
}

/// The `stop` family: `tryswap stop demo` killed at each point, then recovered. The point
/// and whether the stop was durable (journaled `Stopped`, flushed) when the process died.
const STOP: &[(&str, bool)] = &[
    ("stop-before-stop", false),
    ("stop-after-stop", false),
    ("stop-after-stopped", true),
];

/// "An acknowledged intent survives a crash": once `Stopped` is durable (it is before
/// `stop` answers), recovery never relaunches the generation and nothing of the slot
/// runs. Before that the stop was never acknowledged, so recovery restores the slot as
/// the journal has it: the same process if it still runs, else a relaunch.
#[tokio::test]
async fn a_crash_during_stop_keeps_an_acknowledged_stop() {
    let mut table = String::from(
        "| failpoint | scenario | journal at the crash | recovery did | after |\n\
         |---|---|---|---|---|\n",
    );
    for &(point, durable) in STOP {
        let what = format!("{point} (stop)");
        let h = Harness::new(&[slot()]);
        let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
        assert_eq!(h.activate("demo", &v1).code, 0, "{what}: activating v1");
        let (g1, pid1, _) = h.active("demo").expect("v1 active");
        let since = last_seq(&h);
        let exit = tryswap_killed_at(&h, point, &["--json", "stop", "demo"]);
        assert_eq!(exit.signal(), Some(9), "{what}: not killed: {exit:?}");
        let after: Vec<String> = journal_records(&h)
            .into_iter()
            .filter(|r| r.seq > since)
            .map(|r| r.event)
            .collect();
        assert_eq!(
            after.iter().any(|e| e == "stopped"),
            durable,
            "{what}: the journal disagrees about the stop: {after:?}"
        );
        let actions = recover(&h);
        let result = if durable {
            assert!(
                !actions.iter().any(|a| a["action"] == "relaunched"),
                "{what}: an acknowledged stop was undone: {actions:?}"
            );
            let running = h.state.processes();
            assert!(running.is_empty(), "{what}: plugins run: {running:?}");
            let status = h.status();
            assert_eq!(
                status["slots"][0]["active"]["alive"], false,
                "{what}: {status}"
            );
            assert!(recover(&h).is_empty(), "{what}: a second recovery acted");
            let verify = tryswap_tests::crash::tryswap_env(&h, &["journal", "verify"], &[]);
            assert_eq!(verify.code(), Some(0), "{what}: journal verify: {verify:?}");
            "stopped, nothing runs".to_owned()
        } else {
            let alive = tryswap_tests::pid_alive(pid1);
            let expect = Expect {
                slot: "demo".into(),
                generation: g1,
                pid: alive.then_some(pid1),
                message: "v1".into(),
            };
            let recovered = assert_recovered(&h, &expect, None, &what).await;
            format!(
                "g{} (v1), pid {}",
                recovered.generation,
                if recovered.pid == pid1 {
                    "unchanged"
                } else {
                    "new"
                }
            )
        };
        let journal = if after.is_empty() {
            "no record of the stop".to_owned()
        } else {
            after.join(", ")
        };
        let _ = writeln!(
            table,
            "| `{point}` | stop | {journal} | {} | {result} |",
            describe_actions(&actions)
        );
    }
    if let Some(dir) = std::env::var_os("TRYSWAP_CRASH_MATRIX_OUT") {
        let path = PathBuf::from(dir).join("stop.md");
        std::fs::write(&path, &table).expect("write the crash matrix table");
    }
}

/// One crash of the `bake` family: `activate v2 --bake` killed at `point` (a good v2 baking
/// 1 s, or a v2 that exits 600 ms after its handshake, baking 3 s), then (`recover_point`) a
/// `recover` killed too, then a plain `recover` once the deadline has passed.
struct BakeCase {
    point: &'static str,
    crashing: bool,
    /// Kill `activate` here first, then kill `recover` at `point`.
    first: Option<&'static str>,
}

const BAKE: &[BakeCase] = &[
    bake_case("bake-before-commit", false, None),
    bake_case("bake-after-commit", false, None),
    bake_case("bake-before-confirmed", false, None),
    bake_case("bake-after-confirmed", false, None),
    bake_case("bake-before-reverted", true, None),
    bake_case("bake-after-reverted", true, None),
    bake_case("recover-before-bake-end", true, Some("bake-after-commit")),
];

const fn bake_case(point: &'static str, crashing: bool, first: Option<&'static str>) -> BakeCase {
    BakeCase {
        point,
        crashing,
        first,
    }
}

/// After each crash and recovery: the slot ends with exactly one of {candidate confirmed,
/// standby restored}, exactly one live active process (the standby's very pid when
/// restored), no process of the other generation, and `journal verify` passes.
#[tokio::test]
async fn a_crash_during_a_bake_ends_confirmed_or_restored() {
    use tryswap_tests::crash::tagged_pids;
    for c in BAKE {
        let what = c.point;
        let h = Harness::new(&[slot()]);
        let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
        let v2 = h.fixture_config(
            "v2",
            &FixtureConfig {
                crash_after_ms: c.crashing.then_some(600),
                ..FixtureConfig::with_message("v2")
            },
        );
        assert_eq!(h.activate("demo", &v1).code, 0, "{what}: v1");
        let (_, pid1, _) = h.active("demo").expect("v1 active");
        let mut args = reload_args("activate", "demo", &v2);
        args.extend([
            "--bake".to_owned(),
            if c.crashing { "3s" } else { "1s" }.to_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let exit = tryswap_killed_at(&h, c.first.unwrap_or(c.point), &args);
        assert_eq!(exit.signal(), Some(9), "{what}: not killed: {exit:?}");
        if c.first.is_some() {
            // The candidate exits on its own; recovery then reverts, killed before it ends.
            let candidate = journal_records(&h)
                .iter()
                .rev()
                .find(|r| r.event == "launched")
                .and_then(|r| r.body["process"]["pid"].as_u64())
                .expect("the candidate's pid");
            assert!(
                tryswap_tests::harness::wait_gone(
                    candidate as u32,
                    std::time::Duration::from_secs(5)
                ),
                "{what}: the crashing candidate did not exit"
            );
            let exit = tryswap_killed_at(&h, c.point, &["--json", "recover"]);
            assert_eq!(
                exit.signal(),
                Some(9),
                "{what}: recover not killed: {exit:?}"
            );
        }
        // Past the deadline, a healthy candidate is confirmed; a dead one is reverted.
        let deadline = std::time::Duration::from_millis(if c.crashing { 3300 } else { 1300 });
        if let Some(left) = deadline.checked_sub(started.elapsed()) {
            tokio::time::sleep(left).await;
        }
        let mut actions = recover(&h);
        // A slow start (a loaded machine) may commit the bake later than `started`
        // suggests: wait for the journaled deadline itself, then recover once more.
        let until = actions
            .iter()
            .find(|a| a["action"] == "bake_continues")
            .and_then(|a| a["until"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let Some(until) = until {
            let left = (until.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            tokio::time::sleep(left + std::time::Duration::from_millis(300)).await;
            actions = recover(&h);
        }
        let history = h.tryswap(&["--json", "history", "demo"]).json();
        let last = history["reloads"]
            .as_array()
            .and_then(|r| r.last().cloned())
            .expect("a reload");
        let outcome = last["outcome"].as_str().unwrap_or_default().to_owned();
        let v2_reload = last["reload_id"].as_str().unwrap_or_default().to_owned();
        let (generation, pid, _) = h.active("demo").expect("an active generation");
        assert!(
            tryswap_tests::pid_alive(pid),
            "{what}: the active process is dead"
        );
        match outcome.as_str() {
            "active" => {
                assert!(!c.crashing, "{what}: a crashing candidate was confirmed");
                assert_eq!(generation, 2, "{what}");
                assert!(
                    tryswap_tests::harness::wait_gone(pid1, std::time::Duration::from_secs(5)),
                    "{what}: the standby survived the confirm"
                );
                assert_eq!(tagged_pids(&v2_reload), vec![pid], "{what}: orphans");
            }
            "reverted" | "rolled_back" => {
                assert_eq!(
                    (generation, pid),
                    (1, pid1),
                    "{what}: the standby's own pid"
                );
                assert!(
                    tagged_pids(&v2_reload).is_empty(),
                    "{what}: the candidate survived"
                );
            }
            other => panic!("{what}: the bake did not end ({other}); recovery: {actions:?}"),
        }
        let verify = h.tryswap(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{what}: {verify:?}");
        println!("{what}: {outcome} ({})", describe_actions(&actions));
    }
}

/// The keep-alive restart family: `tryswap serve` with the point armed, v1 killed, the
/// daemon SIGKILLed at the point while its keep-alive restarts v1. The journal must hold the
/// restart's intent; a daemon started again leaves exactly one live v1 process (whatever
/// the interrupted restart spawned is stopped), no orphan, and `journal verify` passes.
const RESTART: &[&str] = &[
    "restart-after-intent",
    "restart-after-spawn",
    "restart-after-relaunched",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_keep_alive_restart_leaves_exactly_one_process() {
    use std::time::Duration;
    use tryswap_tests::crash::{tagged_pids, FAILPOINTS_ENV};
    use tryswap_tests::daemon::{poll, Daemon};

    for &point in RESTART {
        let what = format!("{point} (keep-alive restart)");
        let h = Harness::new(&[slot()]);
        h.append_config(
            "\n[slot.restart]\npolicy = \"on-failure\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"1s\"\n",
        );
        let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
        let run = h.activate("demo", &v1);
        assert_eq!(run.code, 0, "{what}: activating v1: {run:?}");
        let reload = run.json()["reload_id"]
            .as_str()
            .expect("reload id")
            .to_owned();
        let (g1, pid1, _) = h.active("demo").expect("v1 active");
        let spec = format!("{point}=kill");
        let mut daemon = Daemon::start_with(&h, &[], &[(FAILPOINTS_ENV, &spec)]);
        let since = last_seq(&h);
        kill_and_wait(pid1);
        let status = daemon.wait(Duration::from_secs(20));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status.expect("daemon exit")),
            Some(9),
            "{what}: the daemon did not die at the failpoint; log:\n{}",
            daemon.log()
        );
        let after: Vec<String> = journal_records(&h)
            .into_iter()
            .filter(|r| r.seq > since)
            .map(|r| r.event)
            .collect();
        assert!(
            after.iter().any(|e| e == "restarting"),
            "{what}: no restart intent journaled: {after:?}"
        );

        let mut again = Daemon::start(&h);
        let up = poll(Duration::from_secs(15), || {
            h.active("demo")
                .filter(|(g, p, _)| *g == g1 && *p != pid1 && tryswap_tests::pid_alive(*p))
        });
        let (_, pid, address) =
            up.unwrap_or_else(|| panic!("{what}: v1 does not run again; log:\n{}", again.log()));
        let others = |pid: u32| -> Vec<u32> {
            h.state
                .processes()
                .into_iter()
                .filter(|p| *p != pid && *p != again.pid())
                .collect()
        };
        assert!(
            tryswap_tests::process::wait_until(Duration::from_secs(3), || others(pid).is_empty()),
            "{what}: processes besides the active one survive: {:?}",
            others(pid)
        );
        assert_eq!(
            tagged_pids(&reload),
            vec![pid],
            "{what}: orphans of the restart"
        );
        let reply = tryswap_tests::call("tcp", &address, "ping", Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{what}: v1 does not answer: {e}"));
        assert_eq!(reply.message, "v1", "{what}");
        again.kill();
        assert!(
            tryswap_tests::pid_alive(pid),
            "{what}: the plugin died with the daemon"
        );
        let verify = tryswap_tests::crash::tryswap_env(&h, &["journal", "verify"], &[]);
        assert_eq!(verify.code(), Some(0), "{what}: journal verify: {verify:?}");
        println!("{what}: ok, journal had {after:?}");
    }
}

#[test]
fn the_matrix_covers_every_failpoint() {
    let mut covered: Vec<&str> = [
        BEFORE_COMMIT,
        AFTER_COMMIT,
        REJECT_AND_DRY_RUN,
        DURING_RECOVERY,
    ]
    .iter()
    .flat_map(|cases| cases.iter().map(|c| c.point))
    .chain(RELOAD_CONFIG.iter().map(|(point, _)| *point))
    .chain(BAKE.iter().map(|c| c.point))
    .collect();
    covered.extend(STOP.iter().map(|(point, _)| *point));
    covered.extend(RESTART.iter().copied());
    for point in tryswap::internals::FAILPOINTS {
        assert!(
            covered.contains(point),
            "failpoint {point} is not in the crash matrix"
        );
    }
    for point in &covered {
        assert!(
            tryswap::internals::FAILPOINTS.contains(point),
            "the matrix names {point}, which tryswap does not list"
        );
    }
}

/// The rule for an active generation that still runs with its journaled identity but fails
/// its probe (here: SIGSTOPped, so it cannot answer): recovery keeps it, reports
/// `reattached_unhealthy`, and neither kills nor relaunches it. Once it answers again, the
/// next recovery reports it `reattached`.
#[tokio::test]
async fn a_live_active_generation_that_fails_its_probe_is_kept_not_killed() {
    use nix::sys::signal::Signal;
    let h = Harness::new(&[slot()]);
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let (_, pid1, _) = h.active("demo").expect("v1 active");
    assert!(tryswap_tests::process::send_signal(pid1, Signal::SIGSTOP));
    let actions = recover(&h);
    assert!(
        tryswap_tests::process::send_signal(pid1, Signal::SIGCONT),
        "the stopped generation is gone"
    );
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["action"], "reattached_unhealthy", "{actions:?}");
    assert_eq!(actions[0]["pid"], pid1, "{actions:?}");
    assert!(
        actions[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{actions:?}"
    );
    let expect = Expect {
        slot: "demo".into(),
        generation: 1,
        pid: Some(pid1),
        message: "v1".into(),
    };
    assert_recovered(&h, &expect, None, "after SIGCONT").await;
}

/// A one-shot command recovers only what needs it: another slot's active generation that
/// still runs with its journaled identity is neither reattached nor probed (that recovery
/// would write and stop nothing), while one whose process is gone is relaunched by the next
/// command, as `recover` would.
#[test]
fn a_one_shot_command_leaves_running_slots_alone_and_relaunches_dead_ones() {
    let h = Harness::new(&[SlotSpec::new("a"), SlotSpec::new("b")]);
    for slot in ["a", "b"] {
        let run = h.activate(
            slot,
            &h.fixture_config(slot, &FixtureConfig::with_message(slot)),
        );
        assert_eq!(run.code, 0, "{run:?}");
    }
    let (_, a_pid, _) = h.active("a").expect("a active");
    let log = [("TRYSWAP_LOG", "info")];

    let stopped = tryswap_env(&h, &["stop", "b"], &log);
    assert_eq!(stopped.status.code(), Some(0), "{stopped:?}");
    assert!(
        !stopped.stderr.contains("a: generation"),
        "slot a runs and was recovered anyway: {}",
        stopped.stderr
    );
    assert_eq!(
        h.active("a").map(|a| a.1),
        Some(a_pid),
        "slot a was touched"
    );

    // Its process gone, slot a's facts are stale: the next command relaunches it.
    kill_and_wait(a_pid);
    let started = tryswap_env(&h, &["start", "b"], &log);
    assert_eq!(started.status.code(), Some(0), "{started:?}");
    assert!(
        started.stderr.contains("a: generation 1") && started.stderr.contains("relaunched"),
        "slot a was not relaunched: {}",
        started.stderr
    );
    let (generation, relaunched, _) = h.active("a").expect("a active again");
    assert_eq!(generation, 1);
    assert_ne!(relaunched, a_pid);
    assert!(tryswap_tests::pid_alive(relaunched));
    for slot in ["a", "b"] {
        assert_eq!(h.tryswap(&["stop", slot]).code, 0);
    }
}
