//! The bake window through the daemon (DESIGN.md "Provisional activation": "Who watches:
//! the daemon"): `serve` watches every bake (reverts on candidate exit or probe failures,
//! confirms at the deadline), `confirm` / `revert` reach it through the CLI and the API, a
//! second reload during a bake is a conflict, and a bake survives a SIGKILL of the daemon.

use std::time::Duration;

use serde_json::Value;
use tryswap_tests::crash::Background;
use tryswap_tests::daemon::{http_unix, poll, Daemon};
use tryswap_tests::harness::{wait_gone, Harness};
use tryswap_tests::process::fixture_plugin_path;
use tryswap_tests::{pid_alive, FixtureConfig};

mod bake_support;
use bake_support::{
    activate, activate_args, assert_one_live_active, last_reload, pid_of, v1_active,
};

/// The reload body of a fixture candidate, with a bake.
fn reload_body(h: &Harness, name: &str, config: &FixtureConfig, bake: &str) -> String {
    let cfg = h.fixture_config(name, config);
    serde_json::json!({
        "artifact": fixture_plugin_path(),
        "config_file": cfg,
        "bake": bake,
    })
    .to_string()
}

/// The slot's reload in flight per `status`, once it bakes (bounded wait).
fn wait_baking(h: &Harness) -> Value {
    poll(Duration::from_secs(20), || {
        let status = h.status();
        let in_flight = status["slots"][0]["in_flight"].clone();
        (in_flight["state"] == "baking").then_some(in_flight)
    })
    .unwrap_or_else(|| panic!("the slot never baked: {}", h.status()))
}

/// Waits (bounded) until the slot has no reload in flight.
fn wait_settled(h: &Harness) {
    let settled = poll(Duration::from_secs(30), || {
        h.status()["slots"][0]["in_flight"].is_null().then_some(())
    });
    assert!(settled.is_some(), "the bake never ended: {}", h.status());
}

#[test]
fn the_daemon_reverts_a_candidate_that_crashes_during_its_bake_to_the_same_old_process() {
    let h = Harness::demo();
    let _daemon = Daemon::start(&h);
    let old_pid = bake_support::assert_crash_during_bake_reverts(&h);
    assert_eq!(assert_one_live_active(&h), (1, old_pid));
    let text = h.tryswap(&["history", "demo"]).stdout;
    assert!(text.contains("reverted"), "{text}");
}

#[test]
fn the_daemon_reverts_a_candidate_that_turns_not_serving_through_the_api() {
    let h = Harness::demo();
    let daemon = Daemon::start(&h);
    let old_pid = v1_active(&h);
    let sick = FixtureConfig {
        unhealthy_after_ms: Some(1000),
        ..FixtureConfig::with_message("v2")
    };
    let body = reload_body(&h, "v2", &sick, "10s");
    let reply = daemon
        .post("/v1/slots/demo/reloads", &body)
        .expect("reload answered");
    assert_eq!(reply.status, 422, "{}", reply.body);
    let report = reply.json();
    assert_eq!(report["outcome"], "reverted", "{report}");
    assert_eq!(report["failed_stage"], "baking", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("probe failed 3 times in a row"), "{report}");
    assert!(wait_gone(pid_of(&report), Duration::from_secs(5)));
    let (generation, pid) = assert_one_live_active(&h);
    assert_eq!((generation, pid), (1, old_pid), "never restarted");
}

#[test]
fn the_daemon_confirms_a_healthy_candidate_at_the_end_of_its_bake_and_stops_the_standby() {
    let h = Harness::demo();
    let _daemon = Daemon::start(&h);
    let pid = bake_support::assert_healthy_bake_confirms(&h);
    assert_eq!(assert_one_live_active(&h), (2, pid));
}

/// A long bake started in the background through the daemon; returns the command, the
/// standby's and the candidate's pids once it bakes.
fn start_long_bake(h: &Harness, via_api: bool, daemon: &Daemon) -> (Background, u32, u32) {
    let old_pid = v1_active(h);
    let cfg = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let args = activate_args(&cfg, Some("60s"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = Background::start(h, &args, "bake");
    wait_baking(h);
    let candidate_pid = bake_support::assert_baking_shown(h, old_pid);

    // A second reload during the bake is a conflict.
    if via_api {
        let body = reload_body(h, "v3", &FixtureConfig::with_message("v3"), "1s");
        let reply = daemon
            .post("/v1/slots/demo/reloads", &body)
            .expect("answer");
        assert_eq!(reply.status, 409, "{}", reply.body);
        assert_eq!(reply.json()["exit_code"], 3, "{}", reply.body);
    } else {
        let (code, report) = activate(h, "v3", &FixtureConfig::with_message("v3"), None);
        assert_eq!(code, 3, "a second reload during a bake: {report}");
    }
    (run, old_pid, candidate_pid)
}

#[test]
fn confirm_and_revert_by_hand_through_the_cli_and_the_api_end_a_daemon_watched_bake() {
    for (verb, via_api) in [
        ("revert", false),
        ("confirm", true),
        ("revert", true),
        ("confirm", false),
    ] {
        let h = Harness::demo();
        let daemon = Daemon::start(&h);
        let (run, old_pid, candidate_pid) = start_long_bake(&h, via_api, &daemon);

        let (code, report) = if via_api {
            let reply = daemon
                .post(&format!("/v1/slots/demo/{verb}"), "")
                .expect("answer");
            let code = match reply.status {
                200 => 0,
                422 => 2,
                other => panic!("{verb}: HTTP {other}: {}", reply.body),
            };
            (code, reply.json())
        } else {
            let run = h.tryswap(&["--json", verb, "demo"]);
            (run.code, run.json())
        };
        // The reload that began the bake answers with the same end.
        let ended =
            tryswap_tests::process::wait_until(Duration::from_secs(20), || !pid_alive(run.pid()));
        assert!(ended, "the baking command did not end: {}", run.output());
        let waiter = run.output();
        let (status, _) = run.kill();
        if verb == "revert" {
            assert_eq!(code, 2, "{report}");
            assert_eq!(report["outcome"], "reverted", "{report}");
            assert_eq!(report["reason_kind"], "cancelled", "{report}");
            assert_eq!(status.code(), Some(2), "{waiter}");
            assert!(wait_gone(candidate_pid, Duration::from_secs(5)));
            assert_eq!(assert_one_live_active(&h), (1, old_pid), "never restarted");
        } else {
            assert_eq!(code, 0, "{report}");
            assert_eq!(report["bake"]["state"], "confirmed", "{report}");
            assert_eq!(status.code(), Some(0), "{waiter}");
            assert!(wait_gone(old_pid, Duration::from_secs(5)));
            assert_eq!(assert_one_live_active(&h), (2, candidate_pid));
        }
        // Nothing bakes any more: 409 through the API, an error through the CLI.
        let reply = daemon
            .post(&format!("/v1/slots/demo/{verb}"), "")
            .expect("answer");
        assert_eq!(reply.status, 409, "{}", reply.body);
        assert!(reply.body.contains("no bake in progress"), "{}", reply.body);
        let again = h.tryswap(&[verb, "demo"]);
        assert_eq!(again.code, 1, "{again:?}");
        assert!(again.stderr.contains("no bake in progress"), "{again:?}");
        let unknown = daemon
            .post(&format!("/v1/slots/nope/{verb}"), "")
            .expect("answer");
        assert_eq!(unknown.status, 404, "{}", unknown.body);
    }
}

/// SIGKILL of the daemon during a bake: the restarted daemon finds the bake in the journal
/// and watches it to its end (here: a healthy candidate, confirmed at the deadline, the
/// candidate's process reattached, the standby stopped). If the candidate died meanwhile,
/// the standby serves again in its own process.
#[test]
fn a_bake_survives_a_sigkill_of_the_daemon() {
    for candidate_dies in [false, true] {
        let h = Harness::demo();
        let mut daemon = Daemon::start(&h);
        let old_pid = v1_active(&h);
        let body = reload_body(&h, "v2", &FixtureConfig::with_message("v2"), "4s");
        let socket = daemon.socket().to_path_buf();
        let request = std::thread::spawn(move || {
            http_unix(&socket, "POST", "/v1/slots/demo/reloads", Some(&body), &[])
        });
        wait_baking(&h);
        let (_, candidate_pid, _) = h.active("demo").expect("the candidate is active");
        daemon.kill();
        // The client's connection ends with the daemon.
        let _ = request.join();
        if candidate_dies {
            tryswap_tests::crash::kill_and_wait(candidate_pid);
        }
        let _daemon = Daemon::start(&h);
        wait_settled(&h);
        let last = last_reload(&h);
        let (generation, pid) = assert_one_live_active(&h);
        if candidate_dies {
            assert_eq!(last["outcome"], "reverted", "{last}");
            assert_eq!((generation, pid), (1, old_pid), "the standby's own process");
        } else {
            assert_eq!(last["outcome"], "active", "{last}");
            assert_eq!(
                (generation, pid),
                (2, candidate_pid),
                "reattached, not restarted"
            );
            assert!(
                wait_gone(old_pid, Duration::from_secs(5)),
                "standby left running"
            );
        }
    }
}

/// `reload-config` with `bake` on the changed slots bakes them as one unit in the daemon:
/// b's candidate exits during the bake, so a's (healthy) candidate is reverted too, and
/// both slots serve again from the processes they ran in before.
#[test]
fn a_config_reload_bake_through_the_daemon_reverts_every_slot_when_one_fails() {
    use tryswap_tests::harness::SlotSpec;
    let h = Harness::new(&[SlotSpec::new("a"), SlotSpec::new("b")]);
    let _daemon = Daemon::start(&h);
    let mut before = Vec::new();
    for slot in ["a", "b"] {
        let cfg = h.fixture_config(slot, &FixtureConfig::with_message(slot));
        let run = h.activate(slot, &cfg);
        assert_eq!(run.code, 0, "{run:?}");
        before.push(h.active(slot).expect("active"));
    }
    let crashing = h.fixture_config(
        "b-crashing",
        &FixtureConfig {
            crash_after_ms: Some(600),
            ..FixtureConfig::with_message("b")
        },
    );
    // Both slots get a bake and a change; b's candidate runs the crashing fixture config.
    let text = std::fs::read_to_string(&h.config_path).expect("config");
    let mut sections: Vec<String> = text.split("[[slot]]").map(str::to_owned).collect();
    assert_eq!(sections.len(), 3, "{text}");
    for section in &mut sections[1..] {
        *section = section.replacen(
            "\nargs = ",
            "\nbake = \"3s\"\nenv = { FEATURE = \"on\" }\nargs = ",
            1,
        );
    }
    sections[2] = sections[2].replacen("{config}", crashing.to_str().expect("utf-8"), 1);
    std::fs::write(&h.config_path, sections.join("[[slot]]")).expect("write config");

    let run = h.tryswap(&["--json", "reload-config"]);
    assert_eq!(run.code, 2, "{run:?}");
    let report = run.json();
    assert_eq!(report["outcome"], "rolled_back", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("reverted during the bake") && error.contains("slot b"),
        "{report}"
    );
    let reloads = report["reloads"].as_array().expect("reloads");
    assert_eq!(reloads.len(), 2, "{report}");
    for reload in reloads {
        assert_eq!(reload["outcome"], "reverted", "{report}");
        assert_eq!(reload["failed_stage"], "baking", "{report}");
        assert!(wait_gone(pid_of(reload), Duration::from_secs(5)));
    }
    for (slot, old) in ["a", "b"].into_iter().zip(&before) {
        let now = h.active(slot).expect("active");
        assert_eq!((now.0, now.1), (old.0, old.1), "{slot} was restarted");
        assert!(pid_alive(now.1));
    }
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// SIGTERM to the daemon during a bake: the request that began it answers `in_progress`,
/// the daemon stops the candidate and the standby (no plugin left running), and the next
/// start reverts the bake and relaunches the standby from the store.
#[test]
fn a_daemon_stopped_during_a_bake_leaves_no_plugin_and_the_next_start_reverts_it() {
    let h = Harness::demo();
    let mut daemon = Daemon::start(&h);
    let old_pid = v1_active(&h);
    let body = reload_body(&h, "v2", &FixtureConfig::with_message("v2"), "60s");
    let socket = daemon.socket().to_path_buf();
    let request = std::thread::spawn(move || {
        http_unix(&socket, "POST", "/v1/slots/demo/reloads", Some(&body), &[])
    });
    wait_baking(&h);
    let (_, candidate_pid, _) = h.active("demo").expect("the candidate is active");
    let status = daemon.terminate(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", daemon.log());
    let answer = request.join().expect("thread").expect("answered");
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(answer.json()["outcome"], "in_progress", "{}", answer.body);
    assert!(
        wait_gone(candidate_pid, Duration::from_secs(5)),
        "candidate left"
    );
    assert!(wait_gone(old_pid, Duration::from_secs(5)), "standby left");

    let _daemon = Daemon::start(&h);
    wait_settled(&h);
    assert_eq!(last_reload(&h)["outcome"], "reverted");
    let (generation, pid) = assert_one_live_active(&h);
    assert_eq!(generation, 1);
    assert_ne!(pid, old_pid, "relaunched from the store");
}
