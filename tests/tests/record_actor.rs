//! Who did what (DESIGN.md "Journal, second form"): every record carries its actor and the
//! operator's `--reason`; recovery and the keep-alive label their own records; history,
//! status and `journal export` show them.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tryswap_tests::daemon::{event_name, poll, records, Daemon};
use tryswap_tests::harness::{wait_gone, Harness};
use tryswap_tests::process::send_signal;
use tryswap_tests::FixtureConfig;

/// Every record `journal export` prints.
fn exported(h: &Harness) -> Vec<Value> {
    let run = h.tryswap(&["journal", "export"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn uid() -> u64 {
    u64::from(nix::unistd::getuid().as_raw())
}

#[test]
fn the_cli_records_who_and_why_and_recovery_labels_its_own_records() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let plugin = tryswap_tests::fixture_plugin_path();
    let run = h.tryswap(&[
        "--json",
        "--reason",
        "ticket 42",
        "activate",
        "demo",
        plugin.to_str().unwrap(),
        "--config-file",
        v1.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["reason"], "ticket 42", "{report}");
    assert_eq!(report["actor"]["kind"], "cli", "{report}");

    // Every record of the reload says who and why.
    let records = exported(&h);
    assert!(!records.is_empty());
    for record in &records {
        assert_eq!(record["actor"]["kind"], "cli", "{record}");
        assert_eq!(record["actor"]["uid"], uid(), "{record}");
        assert!(record["actor"]["pid"].is_u64(), "{record}");
        assert_eq!(record["reason"], "ticket 42", "{record}");
    }
    let history = h.tryswap(&["--json", "history", "demo"]).json();
    assert_eq!(history["reloads"][0]["reason"], "ticket 42", "{history}");
    assert_eq!(history["reloads"][0]["actor"]["kind"], "cli", "{history}");
    let text = h.tryswap(&["history", "demo"]).stdout;
    assert!(
        text.contains("ticket 42") && text.contains("cli uid"),
        "{text}"
    );
    let status = h.status();
    assert_eq!(status["slots"][0]["last_reason"], "ticket 42", "{status}");

    // Recovery's relaunch, run by a `start` with a reason, is filed as recovery's.
    let (_, pid, _) = h.active("demo").expect("active");
    assert!(send_signal(pid, Signal::SIGKILL));
    assert!(wait_gone(pid, Duration::from_secs(10)));
    let run = h.tryswap(&["--reason", "bring it back", "start", "demo"]);
    assert_eq!(run.code, 0, "{run:?}");
    let relaunched: Vec<Value> = exported(&h)
        .into_iter()
        .filter(|r| r["event"].get("relaunched").is_some())
        .collect();
    assert_eq!(relaunched.len(), 1, "{relaunched:?}");
    assert_eq!(relaunched[0]["actor"]["kind"], "recovery", "{relaunched:?}");
    assert!(relaunched[0]["reason"].is_null(), "{relaunched:?}");
    let history = h.tryswap(&["history", "demo"]).stdout;
    assert!(
        history.contains("relaunched generation 1 by recovery"),
        "{history}"
    );

    // Reads take no reason.
    let run = h.tryswap(&["--reason", "x", "status"]);
    assert_eq!(run.code, 64, "{run:?}");
    let run = h.tryswap(&["--reason", "two\nlines", "stop", "demo"]);
    assert_eq!(run.code, 64, "{run:?}");
}

#[test]
fn the_api_and_the_keep_alive_record_who_they_are() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let mut daemon = Daemon::start(&h);
    let socket = daemon.socket().to_path_buf();

    // A crash: the keep-alive journals it and restarts the generation.
    let (_, pid, _) = h.active("demo").expect("active");
    let from = records(&socket, 1).len() as u64 + 1;
    assert!(send_signal(pid, Signal::SIGKILL));
    let restart = poll(Duration::from_secs(20), || {
        records(&socket, from)
            .into_iter()
            .find(|r| event_name(r) == "relaunched")
    })
    .expect("the keep-alive relaunched the generation");
    assert_eq!(restart["actor"]["kind"], "keepalive", "{restart}");
    let crash = records(&socket, from)
        .into_iter()
        .find(|r| event_name(r) == "stopped")
        .expect("the crash is journaled");
    assert_eq!(crash["actor"]["kind"], "keepalive", "{crash}");

    // An operator through the daemon: actor `api` with the peer's uid, and the reason.
    let run = h.tryswap(&["--reason", "maintenance", "stop", "demo"]);
    assert_eq!(run.code, 0, "{run:?}");
    let stopped = records(&socket, from)
        .into_iter()
        .rev()
        .find(|r| event_name(r) == "stopped")
        .expect("the stop is journaled");
    assert_eq!(stopped["actor"]["kind"], "api", "{stopped}");
    assert_eq!(stopped["actor"]["uid"], uid(), "{stopped}");
    assert_eq!(stopped["reason"], "maintenance", "{stopped}");
    // A bad reason in a body is refused, naming the field.
    let reply = daemon
        .post("/v1/slots/demo/start", r#"{"reason": 7}"#)
        .expect("POST start");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.body.contains("reason"), "{reply:?}");
    daemon.terminate(Duration::from_secs(20));
}
