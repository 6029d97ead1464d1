//! One-shot commands write the journal's log alone (docs/journal.md, "One-shot commands
//! leave sled closed"): sled's files, the index derived from the log, are not opened, and
//! the next open of sled catches them up from the log without deriving them again.

use tryswap_tests::daemon::Daemon;
use tryswap_tests::harness::{dir_bytes, Harness};
use tryswap_tests::FixtureConfig;

#[test]
fn one_shot_reloads_leave_sleds_files_untouched_and_the_daemon_sees_every_record() {
    let h = Harness::demo();
    let journal = h.state_dir.join("journal");
    let config = |name: &str| h.fixture_config(name, &FixtureConfig::with_message(name));
    // A new journal is created with sled.
    let first = h.activate("demo", &config("v1"));
    assert_eq!(first.code, 0, "{first:?}");
    let sled_before = dir_bytes(&journal.join("sled"));

    for name in ["v2", "v3"] {
        let run = h.activate("demo", &config(name));
        assert_eq!(run.code, 0, "{run:?}");
    }
    let stop = h.tryswap(&["stop", "demo"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let start = h.tryswap(&["start", "demo"]);
    assert_eq!(start.code, 0, "{start:?}");
    assert!(
        dir_bytes(&journal.join("sled")) == sled_before,
        "a one-shot command wrote sled's files"
    );
    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert_eq!(generation, 3);

    // The log holds every record: the lock-free read and an open of sled agree.
    let export = h.tryswap(&["journal", "export"]);
    assert_eq!(export.code, 0, "{export:?}");
    let records = export.stdout.lines().count();
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(
        verify.stdout.contains(&format!("{records} events checked")),
        "{verify:?}"
    );

    // The daemon opens sled: it catches up from the log, derives nothing again, and
    // reattaches the generation the last one-shot command started.
    let daemon = Daemon::start(&h);
    let slot = daemon.get("/v1/slots/demo").expect("slot answers").json();
    assert_eq!(slot["active"]["generation"], generation, "{slot}");
    assert_eq!(slot["active"]["pid"], pid, "{slot}");
    let log = daemon.log();
    assert!(!log.contains("REBUILT"), "{log}");
    assert!(!journal.join("rebuilds.jsonl").exists(), "{log}");
    drop(daemon);
}
