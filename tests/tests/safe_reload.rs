//! The seed contract through the real `tryswap` binary: a failed candidate never disturbs
//! the active generation, a good one replaces it, a dry run touches nothing.

use std::time::Duration;

use serde_json::Value;
use tryswap_tests::harness::{wait_gone, Harness, SlotSpec};
use tryswap_tests::{call, pid_alive, read_pid_file, FixtureConfig};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn message_at(address: &str) -> String {
    call("tcp", address, "ping", CALL_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("call to {address} failed: {e}"))
        .message
}

fn pid_of(report: &Value) -> u32 {
    report["candidate"]["pid"]
        .as_u64()
        .map(|p| p as u32)
        .unwrap_or_else(|| panic!("no candidate pid in {report}"))
}

fn activate_ok(h: &Harness, name: &str, message: &str) -> Value {
    let cfg = h.fixture_config(name, &FixtureConfig::with_message(message));
    let run = h.activate("demo", &cfg);
    assert_eq!(run.code, 0, "activate {name}: {run:?}");
    let report = run.json();
    assert_eq!(report["outcome"], "active", "{report}");
    report
}

#[tokio::test]
async fn a_good_candidate_replaces_the_old_generation_which_is_then_stopped() {
    let h = Harness::demo();
    let first = activate_ok(&h, "v1", "v1");
    let pid1 = pid_of(&first);
    assert!(pid_alive(pid1));
    let (_, _, addr1) = h.active("demo").unwrap();
    assert_eq!(message_at(&addr1).await, "v1");

    let second = activate_ok(&h, "v2", "v2");
    let pid2 = pid_of(&second);
    assert_eq!(second["previous"]["generation"], 1);
    assert_eq!(second["previous"]["pid"], pid1);
    assert_eq!(second["retired"], serde_json::json!([1]));
    assert!(
        wait_gone(pid1, Duration::from_secs(5)),
        "old generation survived"
    );
    let (generation, pid, addr2) = h.active("demo").unwrap();
    assert_eq!((generation, pid), (2, pid2));
    assert_eq!(message_at(&addr2).await, "v2");

    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[tokio::test]
async fn the_json_report_keeps_the_contract_keys() {
    let h = Harness::demo();
    let report = activate_ok(&h, "v1", "v1");
    for key in [
        "reload_id",
        "slot",
        "mode",
        "outcome",
        "failed_stage",
        "error",
        "candidate",
        "previous",
        "stages",
    ] {
        assert!(report.get(key).is_some(), "missing key {key} in {report}");
    }
    for key in [
        "generation",
        "sha256",
        "pid",
        "network",
        "address",
        "protocol",
        "app_protocol_version",
    ] {
        assert!(
            report["candidate"].get(key).is_some(),
            "missing candidate.{key} in {report}"
        );
    }
    assert_eq!(report["mode"], "activate");
    assert_eq!(report["candidate"]["network"], "tcp");
    assert_eq!(report["candidate"]["protocol"], "grpc");
    assert_eq!(report["candidate"]["app_protocol_version"], 1);
    let states: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["staged", "launched", "validated", "probed", "active"]
    );
    for stage in report["stages"].as_array().unwrap() {
        assert!(stage["at"].is_string() && stage["elapsed_ms"].is_number());
    }
    let status = h.status();
    let slot = &status["slots"][0];
    for key in ["generation", "sha256", "pid", "alive", "address", "since"] {
        assert!(
            slot["active"].get(key).is_some(),
            "status misses active.{key}"
        );
    }
    assert!(slot.get("in_flight").is_some());
    assert_eq!(slot["active"]["alive"], true);
}

struct Bad {
    name: &'static str,
    config: FixtureConfig,
    failed_stage: &'static str,
}

fn misbehaviours(h: &Harness) -> Vec<Bad> {
    let grandchild = h.state.join("grandchild.pid");
    let escaped = h.state.join("escaped.pid");
    vec![
        Bad {
            name: "exit-before-handshake",
            config: FixtureConfig {
                exit_before_handshake: Some(3),
                ..FixtureConfig::default()
            },
            failed_stage: "validated",
        },
        Bad {
            name: "garbage-handshake",
            config: FixtureConfig {
                handshake_line: Some("hello, I am not a plugin".into()),
                ..FixtureConfig::default()
            },
            failed_stage: "validated",
        },
        Bad {
            name: "wrong-core-version",
            config: FixtureConfig {
                core_version: Some(2),
                ..FixtureConfig::default()
            },
            failed_stage: "validated",
        },
        Bad {
            name: "wrong-app-version",
            config: FixtureConfig {
                app_version_override: Some(9),
                ..FixtureConfig::default()
            },
            failed_stage: "validated",
        },
        Bad {
            name: "hang",
            config: FixtureConfig {
                hang: true,
                ..FixtureConfig::default()
            },
            failed_stage: "validated",
        },
        Bad {
            name: "never-healthy",
            config: FixtureConfig {
                never_healthy: true,
                ..FixtureConfig::default()
            },
            failed_stage: "probed",
        },
        Bad {
            name: "crash-during-probe",
            config: FixtureConfig {
                healthy_after_ms: Some(2_000),
                crash_after_ms: Some(100),
                ..FixtureConfig::default()
            },
            failed_stage: "probed",
        },
        Bad {
            name: "ignores-sigterm",
            config: FixtureConfig {
                never_healthy: true,
                ignore_sigterm: true,
                ..FixtureConfig::default()
            },
            failed_stage: "probed",
        },
        Bad {
            name: "forks-grandchild",
            config: FixtureConfig {
                never_healthy: true,
                fork_grandchild: true,
                grandchild_pid_file: Some(grandchild),
                ..FixtureConfig::default()
            },
            failed_stage: "probed",
        },
        Bad {
            name: "grandchild-escapes-group",
            config: FixtureConfig {
                never_healthy: true,
                fork_grandchild: true,
                grandchild_new_session: true,
                grandchild_pid_file: Some(escaped),
                ..FixtureConfig::default()
            },
            failed_stage: "probed",
        },
        Bad {
            name: "floods-stdout",
            config: FixtureConfig {
                never_healthy: true,
                flood_stdout: true,
                flood_stderr: true,
                ..FixtureConfig::default()
            },
            failed_stage: "probed",
        },
    ]
}

#[tokio::test]
async fn every_misbehaving_candidate_is_rejected_and_the_old_generation_keeps_serving() {
    let h = Harness::new(&[SlotSpec {
        start_timeout: "1s",
        ..SlotSpec::new("demo")
    }]);
    let first = activate_ok(&h, "good", "v1");
    let old_pid = pid_of(&first);
    let (_, _, old_addr) = h.active("demo").unwrap();

    for bad in misbehaviours(&h) {
        let cfg = h.fixture_config(bad.name, &bad.config);
        let run = h.activate("demo", &cfg);
        assert_eq!(run.code, 2, "{}: expected rejection, got {run:?}", bad.name);
        let report = run.json();
        assert_eq!(report["outcome"], "rolled_back", "{}: {report}", bad.name);
        assert_eq!(
            report["failed_stage"], bad.failed_stage,
            "{}: {report}",
            bad.name
        );
        assert!(
            report["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}: no error text",
            bad.name
        );
        // The candidate and everything it started are gone.
        if let Some(pid) = report["candidate"]["pid"].as_u64() {
            assert!(
                wait_gone(pid as u32, Duration::from_secs(5)),
                "{}: candidate pid {pid} survived",
                bad.name
            );
        }
        if let Some(file) = &bad.config.grandchild_pid_file {
            let grandchild = read_pid_file(file)
                .unwrap_or_else(|| panic!("{}: no grandchild pid file", bad.name));
            assert!(
                wait_gone(grandchild, Duration::from_secs(5)),
                "{}: grandchild {grandchild} survived",
                bad.name
            );
        }
        // The old generation is untouched: same pid, still the active marker, serving.
        assert!(pid_alive(old_pid), "{}: old generation died", bad.name);
        let (generation, pid, addr) = h.active("demo").unwrap();
        assert_eq!(
            (generation, pid),
            (1, old_pid),
            "{}: active moved",
            bad.name
        );
        assert_eq!(addr, old_addr);
        assert_eq!(message_at(&old_addr).await, "v1", "{}", bad.name);
    }

    // A flooding candidate's log stayed bounded by log_max_bytes (1 MiB).
    let logs = h.state_dir.join("logs").join("demo");
    for entry in std::fs::read_dir(&logs).unwrap() {
        let entry = entry.unwrap();
        let len = entry.metadata().unwrap().len();
        assert!(
            len <= (1 << 20) + 64 * 1024,
            "{} grew to {len} bytes",
            entry.path().display()
        );
    }
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let outcomes = h.outcomes("demo");
    assert_eq!(outcomes.first().map(String::as_str), Some("active"));
    assert!(outcomes[1..].iter().all(|o| *o == "rolled_back"));
}

#[tokio::test]
async fn a_dry_run_passes_through_the_probe_and_touches_nothing() {
    let h = Harness::demo();
    let first = activate_ok(&h, "v1", "v1");
    let old_pid = pid_of(&first);
    let cfg = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let run = h.try_activate("demo", &cfg);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["outcome"], "dry_run_passed");
    assert_eq!(report["mode"], "try");
    let candidate = pid_of(&report);
    assert!(
        wait_gone(candidate, Duration::from_secs(5)),
        "dry run left its candidate"
    );
    let (generation, pid, addr) = h.active("demo").unwrap();
    assert_eq!((generation, pid), (1, old_pid));
    assert_eq!(message_at(&addr).await, "v1");

    // A failing dry run exits 2 and also changes nothing.
    let sick = h.fixture_config(
        "sick",
        &FixtureConfig {
            never_healthy: true,
            ..FixtureConfig::default()
        },
    );
    let run = h.try_activate("demo", &sick);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(h.active("demo").unwrap().1, old_pid);
}

#[tokio::test]
async fn rollback_reactivates_the_previous_artifact_from_the_store() {
    let h = Harness::demo();
    activate_ok(&h, "v1", "v1");
    activate_ok(&h, "v2", "v2");
    // The user's files are gone: rollback must use the store's copies.
    std::fs::remove_file(h.state.join("v1.toml")).unwrap();
    let run = h.tryswap(&["--json", "rollback", "demo"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["mode"], "rollback");
    assert_eq!(report["rollback_to"], 1);
    assert_eq!(report["candidate"]["generation"], 3);
    let (_, _, addr) = h.active("demo").unwrap();
    assert_eq!(message_at(&addr).await, "v1");

    let run = h.tryswap(&["--json", "rollback", "demo", "--to", "42"]);
    assert_ne!(run.code, 0, "rollback to an unknown generation: {run:?}");
}

#[tokio::test]
async fn a_missing_or_non_executable_artifact_is_rejected_at_staged() {
    let h = Harness::demo();
    let first = activate_ok(&h, "v1", "v1");
    let old_pid = pid_of(&first);
    let cfg = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let cfg = cfg.to_str().unwrap();
    let missing = h.state.join("no-such-plugin");
    let run = h.tryswap(&[
        "--json",
        "activate",
        "demo",
        missing.to_str().unwrap(),
        "--config-file",
        cfg,
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    let report = run.json();
    assert_eq!(report["failed_stage"], "staged");
    assert!(
        report["error"].as_str().unwrap().contains("no-such-plugin"),
        "error does not name the path: {report}"
    );
    let not_exec = h.state.join("plain.txt");
    std::fs::write(&not_exec, "not a program").unwrap();
    let run = h.tryswap(&[
        "--json",
        "activate",
        "demo",
        not_exec.to_str().unwrap(),
        "--config-file",
        cfg,
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.json()["failed_stage"], "staged");
    // A slot whose args use {config} refuses a candidate without a config file up front.
    let plugin = tryswap_tests::fixture_plugin_path();
    let run = h.tryswap(&["--json", "activate", "demo", plugin.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--config-file"), "{}", run.stderr);
    assert_eq!(h.active("demo").unwrap().1, old_pid);
}

#[test]
fn a_config_with_an_unknown_key_is_refused_with_its_line() {
    let h = Harness::demo();
    let mut text = std::fs::read_to_string(&h.config_path).unwrap();
    text.push_str("bogus_key = 1\n");
    let line = text.lines().count();
    std::fs::write(&h.config_path, text).unwrap();
    let run = h.tryswap(&["status"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("bogus_key"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(":{line}:")),
        "line {line} not named: {}",
        run.stderr
    );
}

#[test]
fn activating_an_unconfigured_slot_is_an_error_naming_it() {
    let h = Harness::demo();
    let run = h.tryswap(&["activate", "nope", "/bin/true"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
}

#[test]
fn the_default_config_in_the_working_directory_with_a_relative_state_dir_works() {
    use std::process::Command;
    use tryswap_tests::harness::{run_bounded, tryswap_path};
    let h = Harness::demo();
    let cfg = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let mut command = Command::new(tryswap_path());
    command
        .current_dir(h.state.path())
        .args(["--json", "activate", "demo"])
        .arg(tryswap_tests::fixture_plugin_path())
        .args(["--config-file", "v1.toml"])
        .env_remove("TRYSWAP_STATE_DIR");
    let out = run_bounded(command, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cfg.exists());
    assert!(h.active("demo").is_some());
}
