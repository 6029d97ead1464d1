//! "An acknowledged intent survives a crash" and "stop always wins" through `tryswap serve`:
//! a daemon SIGKILLed right after it answered `stop` (or after the keep-alive journaled a
//! crash under restart policy `never`) does not relaunch the slot on recovery.

use std::time::Duration;

use nix::sys::signal::Signal;
use tryswap_tests::crash::recover;
use tryswap_tests::daemon::{event_name, poll, records, Daemon};
use tryswap_tests::harness::Harness;
use tryswap_tests::process::send_signal;
use tryswap_tests::{pid_alive, FixtureConfig};

/// The daemon's count of write-ahead (durable) journal flushes, from `/metrics`.
fn durable_flushes(daemon: &Daemon) -> u64 {
    let metrics = daemon.get("/metrics").expect("GET /metrics").body;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tryswap_journal_flushes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tryswap_journal_flushes_total in {metrics}"))
}

fn activate_v1(h: &Harness) -> u32 {
    let cfg = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let run = h.activate("demo", &cfg);
    assert_eq!(run.code, 0, "activate v1: {run:?}");
    run.json()["candidate"]["pid"].as_u64().expect("pid") as u32
}

/// Recovery after the crash relaunched nothing and nothing of the slot runs.
fn assert_stays_stopped(h: &Harness, what: &str) {
    let actions = recover(h);
    assert!(
        !actions.iter().any(|a| a["action"] == "relaunched"),
        "{what}: recovery relaunched a stopped slot: {actions:?}"
    );
    let running = h.state.processes();
    assert!(running.is_empty(), "{what}: plugins run: {running:?}");
    let status = h.status();
    let active = &status["slots"][0]["active"];
    assert_eq!(active["alive"], false, "{what}: {status}");
}

#[test]
fn an_acknowledged_stop_survives_a_daemon_sigkill_right_after_the_answer() {
    for round in 0..3 {
        let h = Harness::demo();
        let mut daemon = Daemon::start(&h);
        let pid = activate_v1(&h);
        let flushes = durable_flushes(&daemon);
        let reply = daemon.post("/v1/slots/demo/stop", "").expect("POST stop");
        assert_eq!(reply.status, 200, "round {round}: {reply:?}");
        // The answer came after a durable flush (a SIGKILL alone rarely loses a record that
        // sled already wrote; a power loss would).
        assert_eq!(
            durable_flushes(&daemon),
            flushes + 1,
            "round {round}: stop was acknowledged before the Stopped record was durable"
        );
        // No grace for sled's background flush: the answer must mean "durable".
        daemon.kill();
        assert!(
            !pid_alive(pid),
            "round {round}: stop answered but pid {pid} runs"
        );
        assert_stays_stopped(&h, &format!("round {round}"));
    }
}

#[test]
fn a_keepalive_stop_under_policy_never_survives_a_daemon_sigkill() {
    let h = Harness::demo();
    h.append_config("\n[slot.restart]\npolicy = \"never\"\n");
    let mut daemon = Daemon::start(&h);
    let pid = activate_v1(&h);
    let flushes = durable_flushes(&daemon);
    assert!(send_signal(pid, Signal::SIGKILL));
    // The keep-alive reports `stopped` only after it journaled the crash.
    let stopped = poll(Duration::from_secs(15), || {
        let monitor = daemon.get("/v1/monitor").ok()?.json();
        monitor["slots"]
            .as_array()?
            .iter()
            .any(|s| s["slot"] == "demo" && s["state"] == "stopped")
            .then_some(())
    });
    assert!(
        stopped.is_some(),
        "the keep-alive journaled no Stopped; log:\n{}",
        daemon.log()
    );
    assert!(
        records(daemon.socket(), 1)
            .iter()
            .any(|r| event_name(r) == "stopped"),
        "no Stopped record"
    );
    assert_eq!(
        durable_flushes(&daemon),
        flushes + 1,
        "the keep-alive's Stopped was not made durable"
    );
    daemon.kill();
    assert_stays_stopped(&h, "keep-alive, policy never");
}
