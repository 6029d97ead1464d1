//! Helpers shared by the bake tests (one-shot and through the daemon).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tryswap_tests::daemon::poll;
use tryswap_tests::harness::{wait_gone, Harness};
use tryswap_tests::process::fixture_plugin_path;
use tryswap_tests::{pid_alive, FixtureConfig};

/// The candidate's pid in a reload report.
pub fn pid_of(report: &Value) -> u32 {
    report["candidate"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no candidate pid in {report}"))
}

/// `--json activate demo <fixture> --config-file <cfg> [--bake B]`.
pub fn activate_args(cfg: &Path, bake: Option<&str>) -> Vec<String> {
    let plugin = fixture_plugin_path();
    let mut args: Vec<String> = [
        "--json",
        "activate",
        "demo",
        plugin.to_str().expect("utf-8 path"),
        "--config-file",
        cfg.to_str().expect("utf-8 path"),
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(bake) = bake {
        args.extend(["--bake".to_owned(), bake.to_owned()]);
    }
    args
}

/// Activates a fixture candidate configured as `config` (through the daemon when one
/// runs): the exit code and the JSON report.
pub fn activate(
    h: &Harness,
    name: &str,
    config: &FixtureConfig,
    bake: Option<&str>,
) -> (i32, Value) {
    let cfg = h.fixture_config(name, config);
    let args = activate_args(&cfg, bake);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = h.tryswap(&args);
    let report = run.json();
    (run.code, report)
}

/// Activates a healthy v1 (no bake) and returns its pid: the generation a bake keeps as
/// its standby.
pub fn v1_active(h: &Harness) -> u32 {
    let (code, first) = activate(h, "v1", &FixtureConfig::with_message("v1"), None);
    assert_eq!(code, 0, "{first}");
    pid_of(&first)
}

/// The slot's last reload per `history`.
pub fn last_reload(h: &Harness) -> Value {
    let history = h.tryswap(&["--json", "history", "demo"]).json();
    history["reloads"]
        .as_array()
        .and_then(|r| r.last().cloned())
        .unwrap_or_else(|| panic!("no reloads in {history}"))
}

/// Activates a v2 that passes its probe, then exits while baking (`bake` 3s): it is
/// reverted (exit 2, `failed_stage` baking), the candidate is gone, and the old generation
/// serves again in the very process it ran in before the reload. Returns that pid.
pub fn assert_crash_during_bake_reverts(h: &Harness) -> u32 {
    let old_pid = v1_active(h);
    let crashing = FixtureConfig {
        crash_after_ms: Some(600),
        ..FixtureConfig::with_message("v2")
    };
    let (code, report) = activate(h, "v2", &crashing, Some("3s"));
    assert_eq!(code, 2, "a reverted bake exits 2: {report}");
    assert_eq!(report["outcome"], "reverted", "{report}");
    assert_eq!(report["failed_stage"], "baking", "{report}");
    assert_eq!(report["bake"]["state"], "reverted", "{report}");
    assert!(report["bake"]["until"].is_string(), "{report}");
    assert!(
        wait_gone(pid_of(&report), Duration::from_secs(5)),
        "the candidate survived the revert"
    );
    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert_eq!((generation, pid), (1, old_pid), "never restarted");
    assert!(pid_alive(old_pid));
    let last = last_reload(h);
    assert_eq!(last["outcome"], "reverted", "{last}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(error.contains("exited during the bake"), "{last}");
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    old_pid
}

/// Activates a healthy v2 with a 1s bake: confirmed no earlier than the deadline, the
/// standby stopped, v2 active in its own process. Returns v2's pid.
pub fn assert_healthy_bake_confirms(h: &Harness) -> u32 {
    let old_pid = v1_active(h);

    let (code, report) = activate(h, "v2", &FixtureConfig::with_message("v2"), Some("1s"));
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
    let baked = [
        "staged",
        "launched",
        "validated",
        "probed",
        "baking",
        "confirmed",
    ];
    assert_eq!(states, baked, "{report}");
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
    pid_of(&report)
}

/// Exactly one plugin process runs (the active one), and the journal verifies.
pub fn assert_one_live_active(h: &Harness) -> (u64, u32) {
    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert!(pid_alive(pid), "the active pid {pid} is dead");
    assert!(
        h.state.processes().contains(&pid),
        "the process scan must see plugins"
    );
    let others = poll(Duration::from_secs(10), || {
        let mut processes = h.state.processes();
        processes.retain(|p| *p != pid && tryswap_tests::process::process_state(*p) != Some('Z'));
        let plugins: Vec<u32> = processes
            .into_iter()
            .filter(|p| {
                // Not tryswap itself (the daemon): a plugin.
                std::fs::read_link(format!("/proc/{p}/exe"))
                    .is_ok_and(|exe| exe != tryswap_tests::harness::tryswap_path())
            })
            .collect();
        plugins.is_empty().then_some(())
    });
    assert!(
        others.is_some(),
        "plugin processes besides the active {pid}: {:?}",
        h.state.processes()
    );
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    (generation, pid)
}

/// While v2 bakes over v1 (`old_pid`): `status` (JSON and text) shows the bake and the
/// standby, v2 is active, the standby runs. Returns the candidate's pid.
pub fn assert_baking_shown(h: &Harness, old_pid: u32) -> u32 {
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
    candidate_pid
}
