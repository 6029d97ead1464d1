//! `tryswap serve` keeps active generations alive: reattach after a daemon crash, restart
//! of a killed plugin, backoff for a plugin that keeps crashing, graceful shutdown.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tryswap_tests::daemon::{event_name, poll, records, Daemon};
use tryswap_tests::harness::{wait_gone, Harness};
use tryswap_tests::process::send_signal;
use tryswap_tests::{call, pid_alive, FixtureConfig};

fn activate(h: &Harness, name: &str, config: FixtureConfig) -> u32 {
    let cfg = h.fixture_config(name, &config);
    let run = h.activate("demo", &cfg);
    assert_eq!(run.code, 0, "activate {name}: {run:?}");
    run.json()["candidate"]["pid"].as_u64().unwrap() as u32
}

fn restart_policy(h: &Harness, initial: &str, max: &str) {
    h.append_config(&format!(
        "\n[slot.restart]\npolicy = \"on-failure\"\nbackoff_initial = \"{initial}\"\nbackoff_max = \"{max}\"\n"
    ));
}

fn names_after(records: &[Value], seq: u64) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["seq"].as_u64().unwrap() > seq)
        .map(event_name)
        .collect()
}

fn last_seq(records: &[Value]) -> u64 {
    records.last().map_or(0, |r| r["seq"].as_u64().unwrap())
}

#[test]
fn a_sigkilled_daemon_restarted_reattaches_the_same_plugin_pid() {
    let h = Harness::demo();
    let mut daemon = Daemon::start(&h);
    let pid = activate(&h, "v1", FixtureConfig::with_message("v1"));
    let seq = last_seq(&records(daemon.socket(), 1));

    daemon.kill();
    assert!(pid_alive(pid), "the plugin died with the daemon");
    let mut again = Daemon::start(&h);
    let (generation, pid2, _) = h.active("demo").unwrap();
    assert_eq!((generation, pid2), (1, pid), "not reattached");
    assert!(h.status()["slots"][0]["active"]["alive"] == true);
    // Nothing was relaunched or stopped: recovery took the process over as it was.
    let after = names_after(&records(again.socket(), 1), seq);
    assert!(
        after.is_empty(),
        "unexpected records after the reattach: {after:?}"
    );
    assert!(again.log().contains("reattached"), "log: {}", again.log());

    let status = again.terminate(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", again.log());
    assert!(wait_gone(pid, Duration::from_secs(10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_plugin_is_restarted_with_the_same_generation_and_journaled() {
    let h = Harness::demo();
    restart_policy(&h, "100ms", "1s");
    let daemon = Daemon::start(&h);
    let pid = activate(&h, "v1", FixtureConfig::with_message("v1"));
    let seq = last_seq(&records(daemon.socket(), 1));

    assert!(send_signal(pid, Signal::SIGKILL));
    let restarted = poll(Duration::from_secs(15), || {
        h.active("demo")
            .filter(|(_, p, _)| *p != pid && pid_alive(*p))
    });
    let (generation, pid2, address) =
        restarted.unwrap_or_else(|| panic!("not restarted; log:\n{}", daemon.log()));
    assert_eq!(generation, 1);
    assert_eq!(
        call("tcp", &address, "x", Duration::from_secs(5))
            .await
            .unwrap()
            .message,
        "v1"
    );
    let journal = records(daemon.socket(), 1);
    let after: Vec<&Value> = journal
        .iter()
        .filter(|r| r["seq"].as_u64().unwrap() > seq)
        .collect();
    let names: Vec<String> = after.iter().map(|r| event_name(r)).collect();
    // The restart's intent is journaled before it spawns.
    assert_eq!(names, ["stopped", "restarting", "relaunched"], "{after:?}");
    let reason = &after[0]["event"]["stopped"]["reason"];
    assert_eq!(reason["kind"], "error", "{reason}");
    assert!(
        reason["message"].as_str().unwrap().contains("SIGKILL"),
        "{reason}"
    );
    assert_eq!(
        after[2]["event"]["relaunched"]["process"]["pid"],
        u64::from(pid2)
    );

    let metrics = daemon.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("tryswap_restarts_total{slot=\"demo\"} 1"),
        "{}",
        metrics.body
    );
    let monitor = daemon.get("/v1/monitor").unwrap().json();
    assert_eq!(monitor["slots"][0]["restarts"], 1, "{monitor}");
    assert_eq!(monitor["slots"][0]["state"], "running", "{monitor}");
}

#[test]
fn a_plugin_that_keeps_crashing_is_restarted_with_growing_backoff_and_reported_failing() {
    let h = Harness::demo();
    restart_policy(&h, "300ms", "1s");
    let daemon = Daemon::start(&h);
    let first = activate(
        &h,
        "crashy",
        FixtureConfig {
            crash_after_ms: Some(400),
            ..FixtureConfig::default()
        },
    );
    let seq = last_seq(&records(daemon.socket(), 1));

    // Within the window the unbounded loop would restart ~8 times (400 ms up + ~150 ms).
    let failing = poll(Duration::from_secs(15), || {
        let m = daemon.get("/v1/monitor").ok()?.json();
        (m["slots"][0]["state"] == "failing").then_some(m)
    });
    let failing = failing.unwrap_or_else(|| panic!("never reported failing:\n{}", daemon.log()));
    assert!(
        failing["slots"][0]["consecutive_failures"]
            .as_u64()
            .unwrap()
            >= 3
    );
    std::thread::sleep(Duration::from_millis(2500));

    let journal = records(daemon.socket(), 1);
    let after: Vec<&Value> = journal
        .iter()
        .filter(|r| r["seq"].as_u64().unwrap() > seq)
        .collect();
    let at = |r: &Value| {
        chrono::DateTime::parse_from_rfc3339(r["at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let mut gaps = Vec::new();
    let mut stopped_at = None;
    for r in &after {
        match event_name(r).as_str() {
            "stopped" => stopped_at = Some(at(r)),
            "restarting" => {}
            "relaunched" => {
                gaps.push(at(r) - stopped_at.take().expect("Relaunched without Stopped"))
            }
            other => panic!("unexpected {other} record: {r}"),
        }
    }
    let window = at(after.last().unwrap()) - at(after[0]);
    assert!(
        (2..=6).contains(&gaps.len()),
        "{} restarts in {window} ms: {gaps:?}",
        gaps.len()
    );
    for (k, gap) in gaps.iter().enumerate() {
        let backoff = (300i64 << k).min(1000);
        assert!(
            *gap >= backoff,
            "restart {} came {gap} ms after the crash, backoff is {backoff} ms: {gaps:?}",
            k + 1
        );
    }
    let metrics = daemon.get("/metrics").unwrap().body;
    assert!(
        metrics.contains("tryswap_slot_failing{slot=\"demo\"} 1"),
        "{metrics}"
    );
    let last = daemon.get("/v1/monitor").unwrap().json()["slots"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    drop(daemon);
    assert!(wait_gone(first, Duration::from_secs(5)));
    assert!(
        wait_gone(last, Duration::from_secs(10)),
        "a restarted plugin survived"
    );
}

#[test]
fn sigterm_stops_the_plugins_and_exits_0_unless_told_to_keep_them() {
    let h = Harness::demo();
    let mut daemon = Daemon::start(&h);
    let pid = activate(&h, "v1", FixtureConfig::with_message("v1"));
    let status = daemon.terminate(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", daemon.log());
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "plugin survived SIGTERM"
    );
    assert!(!h.socket().exists(), "the socket file stays behind");
    // The marker stays: the next daemon relaunches the generation.
    let mut daemon = Daemon::start_with(&h, &["--keep-plugins"], &[]);
    let (generation, pid2, _) = h.active("demo").unwrap();
    assert_eq!(generation, 1);
    assert_ne!(pid2, pid);
    assert!(daemon.signal(Signal::SIGINT));
    let status = daemon.wait(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", daemon.log());
    assert!(pid_alive(pid2), "--keep-plugins stopped the plugin");
    // Without a daemon the CLI works on the journal itself and sees the kept plugin.
    assert_eq!(h.active("demo").unwrap().1, pid2);
    let stop = h.tryswap(&["stop", "demo"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(wait_gone(pid2, Duration::from_secs(10)));
}

/// Stop always wins (issue 18 item 9): `tryswap stop` while the keep-alive is relaunching a
/// crashed plugin cancels the restart instead of failing with "a reload is already in
/// progress", and the slot stays stopped: the half-started process is gone too.
#[test]
fn stop_during_a_keep_alive_restart_cancels_it_and_the_slot_stays_stopped() {
    use tryswap_tests::harness::SlotSpec;
    let h = Harness::new(&[SlotSpec {
        start_timeout: "20s",
        ..SlotSpec::new("demo")
    }]);
    restart_policy(&h, "100ms", "1s");
    let daemon = Daemon::start(&h);
    let pid_file = h.state.join("plugin.pid");
    let slow = FixtureConfig {
        startup_delay_ms: Some(5_000),
        pid_file: Some(pid_file.clone()),
        ..FixtureConfig::with_message("v1")
    };
    let pid = activate(&h, "slow", slow);
    assert!(send_signal(pid, Signal::SIGKILL));

    // The restart has spawned its process, which takes 5 s to print its handshake.
    let restarting = poll(Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&pid_file).ok()?;
        let new: u32 = text.trim().parse().ok()?;
        (new != pid && pid_alive(new)).then_some(new)
    });
    let restarting =
        restarting.unwrap_or_else(|| panic!("no restart began; log:\n{}", daemon.log()));
    let stop = h.tryswap(&["--json", "stop", "demo"]);
    assert_eq!(stop.code, 0, "stop lost to the restart: {stop:?}");
    assert!(
        wait_gone(restarting, Duration::from_secs(10)),
        "the cancelled restart's process {restarting} survived"
    );
    let stopped = poll(Duration::from_secs(10), || {
        let m = daemon.get("/v1/monitor").ok()?.json();
        (m["slots"][0]["state"] == "stopped").then_some(m)
    });
    assert!(
        stopped.is_some(),
        "the keep-alive did not settle on stopped"
    );
    let status = h.status();
    assert_eq!(status["slots"][0]["active"]["alive"], false, "{status}");
    assert_eq!(h.tryswap(&["journal", "verify"]).code, 0);
}

/// A plugin that is still a zombie when the keep-alive finds it dead (its reaping is late,
/// as on a busy host) is reported with its real end, not "exit status unknown". Crash-test
/// build only (the delay is a failpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_found_before_its_reaping_is_reported_with_its_signal() {
    let h = Harness::demo();
    restart_policy(&h, "100ms", "1s");
    // Reaping waits 1 s, ten keep-alive polls: the poll sees the zombie first.
    let daemon = Daemon::start_with(
        &h,
        &[],
        &[(
            tryswap_tests::crash::FAILPOINTS_ENV,
            "plugin-reap-delay=return(1000)",
        )],
    );
    let pid = activate(&h, "v1", FixtureConfig::with_message("v1"));
    let seq = last_seq(&records(daemon.socket(), 1));
    assert!(send_signal(pid, Signal::SIGKILL));
    let stopped = poll(Duration::from_secs(15), || {
        records(daemon.socket(), 1)
            .into_iter()
            .find(|r| r["seq"].as_u64().is_some_and(|s| s > seq) && event_name(r) == "stopped")
    })
    .unwrap_or_else(|| panic!("no crash journaled; log:\n{}", daemon.log()));
    let reason = &stopped["event"]["stopped"]["reason"];
    assert!(
        reason["message"].as_str().unwrap_or("").contains("SIGKILL"),
        "{reason}"
    );
}
