//! The bake window (DESIGN.md "Provisional activation") through the real binary, without a
//! daemon: `activate --bake` waits in the foreground, reverts to the same old process when
//! the candidate fails, confirms and retires the standby when it stays healthy.

use std::time::Duration;

use serde_json::Value;
use tryswap_tests::harness::{wait_gone, Harness};
use tryswap_tests::process::fixture_plugin_path;
use tryswap_tests::{pid_alive, FixtureConfig};

fn pid_of(report: &Value) -> u32 {
    report["candidate"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no candidate pid in {report}"))
}

fn activate(h: &Harness, name: &str, config: &FixtureConfig, bake: Option<&str>) -> (i32, Value) {
    let cfg = h.fixture_config(name, config);
    let plugin = fixture_plugin_path();
    let mut args = vec![
        "--json",
        "activate",
        "demo",
        plugin.to_str().expect("utf-8 path"),
        "--config-file",
        cfg.to_str().expect("utf-8 path"),
    ];
    if let Some(bake) = bake {
        args.extend(["--bake", bake]);
    }
    let run = h.tryswap(&args);
    let report = run.json();
    (run.code, report)
}

/// Activates a healthy v1 (no bake) and returns its pid: the generation a bake keeps as
/// its standby.
fn v1_active(h: &Harness) -> u32 {
    let (code, first) = activate(h, "v1", &FixtureConfig::with_message("v1"), None);
    assert_eq!(code, 0, "{first}");
    pid_of(&first)
}

fn last_reload(h: &Harness) -> Value {
    let history = h.tryswap(&["--json", "history", "demo"]).json();
    history["reloads"]
        .as_array()
        .and_then(|r| r.last().cloned())
        .unwrap_or_else(|| panic!("no reloads in {history}"))
}

#[test]
fn a_candidate_that_crashes_during_its_bake_is_reverted_to_the_same_old_process() {
    let h = Harness::demo();
    let old_pid = v1_active(&h);

    // Passes its probe (every 50 ms), then exits while baking.
    let crashing = FixtureConfig {
        crash_after_ms: Some(600),
        ..FixtureConfig::with_message("v2")
    };
    let (code, report) = activate(&h, "v2", &crashing, Some("3s"));
    assert_eq!(code, 2, "a reverted bake exits 2: {report}");
    assert_eq!(report["outcome"], "reverted", "{report}");
    assert_eq!(report["failed_stage"], "baking", "{report}");
    assert_eq!(report["bake"]["state"], "reverted", "{report}");
    assert!(report["bake"]["until"].is_string(), "{report}");
    let candidate_pid = pid_of(&report);
    assert!(
        wait_gone(candidate_pid, Duration::from_secs(5)),
        "the candidate survived the revert"
    );

    // The old generation serves again in the very process it ran in before the reload.
    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert_eq!((generation, pid), (1, old_pid), "never restarted");
    assert!(pid_alive(old_pid));

    let last = last_reload(&h);
    assert_eq!(last["outcome"], "reverted", "{last}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(error.contains("exited during the bake"), "{last}");
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[test]
fn a_healthy_candidate_is_confirmed_when_the_bake_ends_then_the_standby_is_stopped() {
    let h = Harness::demo();
    let old_pid = v1_active(&h);

    let (code, report) = activate(&h, "v2", &FixtureConfig::with_message("v2"), Some("1s"));
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["outcome"], "active", "{report}");
    assert_eq!(report["bake"]["state"], "confirmed", "{report}");
    assert_eq!(report["retired"], serde_json::json!([1]), "{report}");
    let states: Vec<&str> = report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["state"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "staged",
            "launched",
            "validated",
            "probed",
            "baking",
            "confirmed"
        ]
    );
    // The bake lasted: confirmed no earlier than its deadline.
    let baking_at = report["stages"][4]["at"].as_str().unwrap_or_default();
    let confirmed_at = report["stages"][5]["at"].as_str().unwrap_or_default();
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("rfc 3339");
    assert!(parse(confirmed_at) - parse(baking_at) >= chrono::Duration::milliseconds(900));

    assert!(
        wait_gone(old_pid, Duration::from_secs(5)),
        "the standby survived the confirm"
    );
    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert_eq!((generation, pid), (2, pid_of(&report)));
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[test]
fn a_bake_longer_than_a_day_is_a_usage_error() {
    let h = Harness::demo();
    let run = h.tryswap(&["rollback", "demo", "--bake", "25h"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("longer than 24h"), "{run:?}");
}

#[test]
fn sigint_during_a_foreground_bake_reverts_to_the_same_old_process() {
    use tryswap_tests::crash::Background;
    use tryswap_tests::process::send_signal;
    let h = Harness::demo();
    let old_pid = v1_active(&h);
    let cfg = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let plugin = fixture_plugin_path();
    let run = Background::start(
        &h,
        &[
            "activate",
            "demo",
            plugin.to_str().expect("utf-8 path"),
            "--config-file",
            cfg.to_str().expect("utf-8 path"),
            "--bake",
            "30s",
        ],
        "bake",
    );
    // The countdown shows the bake runs; then interrupt it.
    let counting = tryswap_tests::process::wait_until(Duration::from_secs(20), || {
        run.output().contains("s left")
    });
    assert!(counting, "no countdown: {}", run.output());
    assert!(send_signal(run.pid(), nix::sys::signal::Signal::SIGINT));
    let pid = run.pid();
    let exited = tryswap_tests::process::wait_until(Duration::from_secs(20), || !pid_alive(pid));
    assert!(exited, "still running: {}", run.output());
    assert!(
        run.output().contains("reverted during its bake"),
        "{}",
        run.output()
    );
    let (status, killed) = run.kill();
    assert!(!killed, "it had to be killed");
    assert_eq!(status.code(), Some(2));

    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert_eq!((generation, pid), (1, old_pid), "never restarted");
    let last = last_reload(&h);
    assert_eq!(last["outcome"], "reverted", "{last}");
    assert_eq!(last["reason_kind"], "cancelled", "{last}");
}

/// A bake whose foreground command died (SIGKILL at `bake-after-commit`) goes on; a second
/// reload is a conflict (exit 3); `tryswap revert` and `tryswap confirm` end it by hand.
#[test]
fn confirm_and_revert_by_hand_end_a_bake_and_a_second_reload_during_it_is_a_conflict() {
    use tryswap_tests::crash::{reload_args, tryswap_killed_at};
    for verb in ["revert", "confirm"] {
        let h = Harness::demo();
        let old_pid = v1_active(&h);
        let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
        let mut args = reload_args("activate", "demo", &v2);
        args.extend(["--bake".to_owned(), "60s".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let exit = tryswap_killed_at(&h, "bake-after-commit", &args);
        assert_eq!(exit.signal(), Some(9), "{exit:?}");

        let status = h.status();
        let in_flight = &status["slots"][0]["in_flight"];
        assert_eq!(in_flight["state"], "baking", "{status}");
        assert_eq!(in_flight["bake"]["state"], "baking", "{status}");
        assert_eq!(
            in_flight["standby"]["pid"], old_pid,
            "status shows the standby: {status}"
        );
        let text = h.tryswap(&["status"]).stdout;
        assert!(
            text.contains("baking until") && text.contains(&format!("standby g1 pid {old_pid}")),
            "{text}"
        );
        let (generation, candidate_pid, _) = h.active("demo").expect("the candidate is active");
        assert_eq!(generation, 2);
        assert!(
            pid_alive(old_pid),
            "the standby must keep running during the bake"
        );

        let (code, report) = activate(&h, "v3", &FixtureConfig::with_message("v3"), None);
        assert_eq!(code, 3, "a second reload during a bake: {report}");

        let run = h.tryswap(&["--json", verb, "demo"]);
        let report = run.json();
        if verb == "revert" {
            assert_eq!(run.code, 2, "{run:?}");
            assert_eq!(report["outcome"], "reverted", "{report}");
            assert_eq!(report["reason_kind"], "cancelled", "{report}");
            assert!(wait_gone(candidate_pid, Duration::from_secs(5)));
            assert_eq!(h.active("demo").map(|a| (a.0, a.1)), Some((1, old_pid)));
        } else {
            assert_eq!(run.code, 0, "{run:?}");
            assert_eq!(report["bake"]["state"], "confirmed", "{report}");
            assert!(wait_gone(old_pid, Duration::from_secs(5)));
            assert_eq!(
                h.active("demo").map(|a| (a.0, a.1)),
                Some((2, candidate_pid))
            );
        }
        // Nothing is baking any more.
        let again = h.tryswap(&[verb, "demo"]);
        assert_eq!(again.code, 1, "{again:?}");
        assert!(again.stderr.contains("no bake in progress"), "{again:?}");
        let verify = h.tryswap(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");
    }
}

#[test]
fn a_candidate_that_turns_not_serving_during_its_bake_is_reverted() {
    let h = Harness::demo();
    let old_pid = v1_active(&h);
    let sick = FixtureConfig {
        unhealthy_after_ms: Some(1000),
        ..FixtureConfig::with_message("v2")
    };
    let (code, report) = activate(&h, "v2", &sick, Some("10s"));
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["outcome"], "reverted", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("probe failed 3 times in a row"), "{report}");
    assert!(wait_gone(pid_of(&report), Duration::from_secs(5)));
    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert_eq!((generation, pid), (1, old_pid), "never restarted");
}

/// A standby that died during the bake is relaunched from the store when the bake reverts.
#[test]
fn a_revert_relaunches_a_standby_that_died_during_the_bake() {
    use tryswap_tests::crash::{kill_and_wait, reload_args, tryswap_killed_at};
    let h = Harness::demo();
    let old_pid = v1_active(&h);
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let mut args = reload_args("activate", "demo", &v2);
    args.extend(["--bake".to_owned(), "60s".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exit = tryswap_killed_at(&h, "bake-after-commit", &args);
    assert_eq!(exit.signal(), Some(9), "{exit:?}");
    let (_, candidate_pid, _) = h.active("demo").expect("the candidate is active");
    kill_and_wait(old_pid);

    let run = h.tryswap(&["--json", "revert", "demo"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(wait_gone(candidate_pid, Duration::from_secs(5)));
    let (generation, pid, _) = h.active("demo").expect("the standby is active again");
    assert_eq!(generation, 1);
    assert_ne!(pid, old_pid, "relaunched in a new process");
    assert!(pid_alive(pid));
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}
