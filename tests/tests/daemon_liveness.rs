//! `tryswap serve` watches the active generation whatever the slot is doing, and acts on
//! its probe: a crash while a reload holds the slot's lock is journaled at once (and the
//! generation restarted once the reload rolled back to it); an active generation that fails
//! its liveness probe `failure_threshold` times is restarted under the restart policy.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tryswap_tests::daemon::{event_name, poll, records, Daemon};
use tryswap_tests::harness::{Harness, SlotSpec};
use tryswap_tests::process::send_signal;
use tryswap_tests::{pid_alive, FixtureConfig};

/// How long a crash of the active generation may go unjournaled while the slot is locked:
/// the keep-alive polls every 100 ms; the rest is slack for a loaded CI machine.
const CRASH_NOTICED_WITHIN: Duration = Duration::from_secs(2);

fn harness(spec: SlotSpec) -> Harness {
    let h = Harness::new(&[spec]);
    h.append_config(
        "\n[slot.restart]\npolicy = \"on-failure\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n",
    );
    h
}

fn activate(h: &Harness, name: &str, config: FixtureConfig) -> u32 {
    let cfg = h.fixture_config(name, &config);
    let run = h.activate("demo", &cfg);
    assert_eq!(run.code, 0, "activate {name}: {run:?}");
    run.json()["candidate"]["pid"].as_u64().unwrap() as u32
}

fn after(records: &[Value], seq: u64) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["seq"].as_u64().unwrap_or(0) > seq)
        .cloned()
        .collect()
}

fn last_seq(daemon: &Daemon) -> u64 {
    records(daemon.socket(), 1)
        .last()
        .map_or(0, |r| r["seq"].as_u64().unwrap())
}

/// The processes of the test besides the daemon.
fn plugins(h: &Harness, daemon: &Daemon) -> Vec<u32> {
    h.state
        .processes()
        .into_iter()
        .filter(|p| *p != daemon.pid())
        .collect()
}

/// v1 is SIGKILLed while a slow reload to v2 holds the slot's lock: the crash shows in the
/// journal, `status` and `/v1/monitor` within a bounded time, long before the reload ends.
/// Returns v1's pid and the reload's exit code, once it ended.
fn kill_active_during_a_slow_reload(h: &Harness, daemon: &Daemon, v2: FixtureConfig) -> (u32, i32) {
    let pid1 = activate(h, "v1", FixtureConfig::with_message("v1"));
    let seq = last_seq(daemon);
    let cfg = h.fixture_config("v2", &v2);
    std::thread::scope(|scope| {
        let reload = scope.spawn(|| h.activate("demo", &cfg));
        // The reload holds the lock once its candidate is launched and waits for its handshake.
        let launched = poll(Duration::from_secs(10), || {
            after(&records(daemon.socket(), 1), seq)
                .iter()
                .any(|r| event_name(r) == "launched")
                .then_some(())
        });
        assert!(launched.is_some(), "the reload never launched v2");
        assert!(send_signal(pid1, Signal::SIGKILL));
        let killed_at = Instant::now();
        let noticed = poll(CRASH_NOTICED_WITHIN, || {
            let journaled = after(&records(daemon.socket(), 1), seq)
                .iter()
                .any(|r| event_name(r) == "stopped");
            let status = h.status();
            let dead = status["slots"][0]["active"]["alive"] == false;
            let in_flight = !status["slots"][0]["in_flight"].is_null();
            let monitor = daemon.get("/v1/monitor").ok()?.json();
            let state = monitor["slots"][0]["state"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (journaled && dead && state != "running").then_some((in_flight, state))
        });
        let (in_flight, state) = noticed.unwrap_or_else(|| {
            panic!(
                "the crash was not journaled within {CRASH_NOTICED_WITHIN:?}; log:\n{}",
                daemon.log()
            )
        });
        assert!(
            in_flight,
            "the reload ended before the crash was noticed ({:?}): the test proves nothing",
            killed_at.elapsed()
        );
        assert!(
            ["restarting", "failing"].contains(&state.as_str()),
            "monitor state {state}"
        );
        let run = reload.join().expect("reload thread");
        (pid1, run.code)
    })
}

fn slow(v2: FixtureConfig) -> FixtureConfig {
    FixtureConfig {
        startup_delay_ms: Some(2000),
        ..v2
    }
}

#[test]
fn a_crash_during_a_reload_that_commits_is_journaled_at_once_and_the_candidate_serves() {
    let h = harness(SlotSpec::new("demo"));
    let daemon = Daemon::start(&h);
    let (pid1, ended) =
        kill_active_during_a_slow_reload(&h, &daemon, slow(FixtureConfig::with_message("v2")));
    assert_eq!(ended, 0, "the reload to v2 failed; log:\n{}", daemon.log());
    let (generation, pid2, _) = h.active("demo").unwrap_or_else(|| {
        panic!(
            "no active; status {}\njournal {:?}\nlog:\n{}",
            h.status(),
            records(daemon.socket(), 1),
            daemon.log()
        )
    });
    assert_eq!(generation, 2);
    assert!(pid_alive(pid2) && !pid_alive(pid1));
    assert_eq!(plugins(&h, &daemon), vec![pid2], "exactly one live process");
    // The restart scheduled for v1 is dropped: v2 is active and runs.
    let monitor = poll(Duration::from_secs(3), || {
        let m = daemon.get("/v1/monitor").ok()?.json();
        (m["slots"][0]["generation"] == 2 && m["slots"][0]["state"] == "running").then_some(m)
    });
    assert!(
        monitor.is_some(),
        "{}",
        daemon.get("/v1/monitor").unwrap().body
    );
    assert_eq!(
        plugins(&h, &daemon),
        vec![pid2],
        "nothing restarted beside v2"
    );
}

#[test]
fn a_crash_during_a_reload_that_rolls_back_restarts_the_old_generation_after_it() {
    let h = harness(SlotSpec::new("demo"));
    let daemon = Daemon::start(&h);
    let v2 = FixtureConfig {
        never_healthy: true,
        ..slow(FixtureConfig::with_message("v2"))
    };
    let (pid1, ended) = kill_active_during_a_slow_reload(&h, &daemon, v2);
    assert_ne!(ended, 0, "the never-healthy v2 was activated");
    // Rolled back to v1, which crashed meanwhile: the keep-alive brings it back.
    let back = poll(Duration::from_secs(10), || {
        h.active("demo")
            .filter(|(g, p, _)| *g == 1 && *p != pid1 && pid_alive(*p))
    });
    let (_, pid, _) = back.unwrap_or_else(|| panic!("v1 not restarted; log:\n{}", daemon.log()));
    let only = poll(Duration::from_secs(5), || {
        (plugins(&h, &daemon) == vec![pid]).then_some(())
    });
    assert!(
        only.is_some(),
        "exactly one live process: {:?} (active {pid})",
        plugins(&h, &daemon)
    );
}

#[test]
fn an_active_generation_that_fails_its_liveness_probe_is_restarted_and_counted() {
    let h = harness(SlotSpec {
        failure_threshold: 2,
        ..SlotSpec::new("demo")
    });
    let daemon = Daemon::start(&h);
    let metrics = daemon.get("/metrics").unwrap().body;
    for counter in ["tryswap_unhealthy_restarts_total", "tryswap_reverts_total"] {
        assert!(
            metrics.contains(&format!("{counter}{{slot=\"demo\"}} 0")),
            "{counter} is not present from 0:\n{metrics}"
        );
    }
    let pid1 = activate(
        &h,
        "v1",
        FixtureConfig {
            unhealthy_after_ms: Some(1500),
            ..FixtureConfig::with_message("v1")
        },
    );
    let seq = last_seq(&daemon);
    // Probed every second (the monitor's lower bound), unhealthy twice in a row: restarted.
    let restarted = poll(Duration::from_secs(15), || {
        h.active("demo")
            .filter(|(g, p, _)| *g == 1 && *p != pid1 && pid_alive(*p))
    });
    let (_, pid2, _) = restarted.unwrap_or_else(|| panic!("not restarted; log:\n{}", daemon.log()));
    assert!(!pid_alive(pid1), "the unhealthy process still runs");
    let journal = after(&records(daemon.socket(), 1), seq);
    let names: Vec<String> = journal.iter().map(event_name).collect();
    assert_eq!(
        names[..3],
        ["stopped", "restarting", "relaunched"],
        "{journal:?}"
    );
    assert_eq!(
        journal[2]["event"]["relaunched"]["process"]["pid"],
        u64::from(pid2)
    );
    let reason = journal[0]["event"]["stopped"]["reason"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(reason.contains("liveness probe"), "{reason}");
    let metrics = daemon.get("/metrics").unwrap().body;
    assert!(
        metrics.contains("tryswap_unhealthy_restarts_total{slot=\"demo\"} 1")
            || metrics.contains("tryswap_unhealthy_restarts_total{slot=\"demo\"} 2"),
        "{metrics}"
    );
    let events = daemon.get("/v1/monitor").unwrap().json();
    assert!(
        events["slots"][0]["restarts"].as_u64().unwrap_or(0) >= 1,
        "{events}"
    );
    let history = h.tryswap(&["history", "demo", "--timeline"]);
    assert_eq!(history.code, 0, "{history:?}");
    assert!(
        history.stdout.contains("liveness probe"),
        "history does not show the restart:\n{}",
        history.stdout
    );
}
