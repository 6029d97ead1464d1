//! Failures stay in their slot: at daemon start, one slot whose recovery fails is marked
//! failed and reported (status, `/v1/slots`, metrics) while the other slots keep serving.

use tryswap_tests::crash::{kill_and_wait, FAILPOINTS_ENV};
use tryswap_tests::daemon::Daemon;
use tryswap_tests::harness::{Harness, SlotSpec};
use tryswap_tests::{call, pid_alive, FixtureConfig};

fn active_pid(h: &Harness, slot: &str, message: &str) -> u32 {
    let cfg = h.fixture_config(message, &FixtureConfig::with_message(message));
    let run = h.activate(slot, &cfg);
    assert_eq!(run.code, 0, "activate {slot}: {run:?}");
    run.json()["candidate"]["pid"].as_u64().expect("pid") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slots_failed_recovery_does_not_take_the_other_slots_down() {
    let h = Harness::new(&[SlotSpec::new("a"), SlotSpec::new("b")]);
    let pid_a = active_pid(&h, "a", "a1");
    let pid_b = active_pid(&h, "b", "b1");
    // `a` must be relaunched at the daemon's start; its relaunch cannot be journaled.
    kill_and_wait(pid_a);
    let daemon = Daemon::start_with(
        &h,
        &[],
        &[(FAILPOINTS_ENV, "journal-write-relaunch=return")],
    );

    let b = daemon.get("/v1/slots/b").expect("GET b").json();
    assert_eq!(b["active"]["pid"].as_u64(), Some(u64::from(pid_b)), "{b}");
    assert_eq!(b["active"]["alive"], true, "{b}");
    assert!(b.get("failed").is_none(), "{b}");
    assert!(pid_alive(pid_b), "the healthy plugin was stopped");
    let address = b["active"]["address"].as_str().expect("address");
    let reply = call("tcp", address, "ping", std::time::Duration::from_secs(5))
        .await
        .expect("b answers");
    assert_eq!(reply.message, "b1");

    let a = daemon.get("/v1/slots/a").expect("GET a").json();
    let failed = a["failed"].as_str().unwrap_or_default();
    assert!(
        failed.contains("recovery failed") && failed.contains("No space left"),
        "slot a is not reported failed: {a}\nlog:\n{}",
        daemon.log()
    );
    let status = h.status();
    let listed = status["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot"] == "a"))
        .cloned()
        .unwrap_or_default();
    assert!(listed["failed"].is_string(), "status: {status}");
    let metrics = daemon.get("/metrics").expect("GET /metrics").body;
    assert!(
        metrics.contains("tryswap_slot_recovery_failed{slot=\"a\"} 1")
            && metrics.contains("tryswap_slot_recovery_failed{slot=\"b\"} 0"),
        "{metrics}"
    );
}
