//! Shutdown and recovery work on every slot at once: shutdown costs one `stop_timeout`,
//! recovery the slowest slot. The bounds below sit well under what one slot after another
//! must take (five times as much), so they hold on a loaded machine too.

use std::time::{Duration, Instant};

use tryswap_tests::crash::kill_and_wait;
use tryswap_tests::daemon::Daemon;
use tryswap_tests::harness::{Harness, SlotSpec};
use tryswap_tests::{pid_alive, FixtureConfig};

const SLOTS: [&str; 5] = ["s1", "s2", "s3", "s4", "s5"];

fn harness() -> Harness {
    let specs: Vec<SlotSpec> = SLOTS
        .iter()
        .map(|name| SlotSpec {
            stop_timeout: "2s",
            ..SlotSpec::new(name)
        })
        .collect();
    Harness::new(&specs)
}

fn activate_all(h: &Harness, config: impl Fn(&str) -> FixtureConfig) -> Vec<u32> {
    SLOTS
        .iter()
        .map(|slot| {
            let cfg = h.fixture_config(slot, &config(slot));
            let run = h.activate(slot, &cfg);
            assert_eq!(run.code, 0, "activate {slot}: {run:?}");
            run.json()["candidate"]["pid"].as_u64().expect("pid") as u32
        })
        .collect()
}

#[test]
fn shutdown_stops_every_slot_at_once() {
    let h = harness();
    let mut daemon = Daemon::start(&h);
    // Plugins that ignore SIGTERM: each stop waits its 2 s stop_timeout, then SIGKILL.
    let pids = activate_all(&h, |slot| FixtureConfig {
        ignore_sigterm: true,
        ..FixtureConfig::with_message(slot)
    });
    let started = Instant::now();
    let status = daemon.terminate(Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", daemon.log());
    assert!(pids.iter().all(|&p| !pid_alive(p)), "a plugin survived");
    // One after another: at least 5 x 2 s.
    assert!(
        took < Duration::from_secs(7),
        "shutdown took {took:?}: slots were stopped one after another"
    );
}

#[test]
fn recovery_relaunches_every_slot_at_once() {
    let h = harness();
    // Plugins that take 2 s before their handshake: each relaunch takes at least that.
    let pids = activate_all(&h, |slot| FixtureConfig {
        startup_delay_ms: Some(2000),
        ..FixtureConfig::with_message(slot)
    });
    for pid in pids {
        kill_and_wait(pid);
    }
    let started = Instant::now();
    let daemon = Daemon::start(&h);
    let took = started.elapsed();
    for slot in SLOTS {
        let reply = daemon
            .get(&format!("/v1/slots/{slot}"))
            .expect("GET slot")
            .json();
        assert_eq!(reply["active"]["alive"], true, "{reply}");
    }
    // One after another: at least 5 x 2 s before the API leaves 503.
    assert!(
        took < Duration::from_secs(8),
        "recovery took {took:?}: slots were relaunched one after another"
    );
}
