//! `tryswap stop` and `tryswap start` through the real binary.

use std::time::Duration;

use tryswap_tests::harness::{wait_gone, Harness};
use tryswap_tests::{call, pid_alive, FixtureConfig};

#[tokio::test]
async fn stop_keeps_the_marker_and_start_relaunches_the_same_generation_from_the_store() {
    let h = Harness::demo();
    let cfg = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let run = h.activate("demo", &cfg);
    assert_eq!(run.code, 0, "{run:?}");
    let (generation, pid, _) = h.active("demo").unwrap();

    let stop = h.tryswap(&["--json", "stop", "demo"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_eq!(stop.json()["stopped_generation"], generation);
    assert!(wait_gone(pid, Duration::from_secs(5)), "stop left pid {pid} running");
    // The marker stays, the generation is not running, and no other command restarts it.
    let status = h.status();
    let active = &status["slots"][0]["active"];
    assert_eq!(active["generation"], generation);
    assert_eq!(active["alive"], false);

    // The user's config file is gone: start must use the store's copy.
    std::fs::remove_file(&cfg).unwrap();
    let start = h.tryswap(&["--json", "start", "demo"]);
    assert_eq!(start.code, 0, "{start:?}");
    let (g2, pid2, addr) = h.active("demo").unwrap();
    assert_eq!(g2, generation);
    assert_ne!(pid2, pid);
    assert!(pid_alive(pid2));
    let reply = call("tcp", &addr, "x", Duration::from_secs(5)).await.unwrap();
    assert_eq!(reply.message, "v1");

    // Starting a running generation is a no-op.
    let again = h.tryswap(&["start", "demo"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(h.active("demo").unwrap().1, pid2);
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}
