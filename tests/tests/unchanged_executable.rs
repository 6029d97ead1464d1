//! A command that checks whether a candidate is already active (`tryswap activate` without
//! `--force`) and then reloads it never reads an unchanged executable again: its digest comes
//! from the store's known stamps, and the check's staging is the reload's staging.
//!
//! Alone in its test binary: it counts the bytes this whole process reads
//! (`/proc/self/io` `rchar`), which a test running beside it would disturb.

use std::time::{Duration, Instant, SystemTime};

use tryswap::report::Outcome;
use tryswap::{CandidateSpec, Supervisor};
use tryswap_fsm::SlotName;
use tryswap_tests::{fixture_plugin_path, FixtureConfig, TempState};

/// Bytes read by this process so far (`rchar`: every read(2), cached or not).
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/self/io")
}

/// Waits until `path` has not changed for 3 s: the store trusts a source's stat only once it
/// is older than its 2 s racy window (a fixture built just before the test would be hashed
/// again, as it should).
fn settle(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let changed = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("fixture mtime");
        let age = SystemTime::now()
            .duration_since(changed)
            .unwrap_or_default();
        if age >= Duration::from_secs(3) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_secs(3) - age);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checking_and_reloading_an_unchanged_executable_does_not_read_it_again() {
    let fixture = fixture_plugin_path();
    settle(&fixture);
    let size = std::fs::metadata(&fixture).expect("fixture").len();
    let state = TempState::new().unwrap();
    let sup = Supervisor::open(state.join("state")).unwrap();
    sup.add_process_slot(tryswap_tests::harness::fixture_slot("demo"));
    let slot = SlotName::new("demo").unwrap();
    let spec = |name: &str| {
        let config = FixtureConfig::with_message(name)
            .write(&state.join(format!("{name}.toml")))
            .unwrap();
        CandidateSpec::executable(&fixture).with_config(config)
    };
    let first = sup.activate(&slot, spec("v1")).await.unwrap();
    assert_eq!(first.outcome, Outcome::Active, "{first:?}");

    let v2 = spec("v2");
    let before = bytes_read();
    let check = sup.clone();
    let (name, candidate) = (slot.clone(), v2.clone());
    let same = tokio::task::spawn_blocking(move || check.already_active(&name, &candidate))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same, None, "a new config is a change");
    // The check only hashed the new config: the reload stages it, beside its launch's files.
    let v2_digest = sup
        .store()
        .config_digest(v2.config.as_deref().expect("v2's config"))
        .unwrap();
    assert!(
        !sup.store().path_of(&v2_digest).exists(),
        "the check wrote the new config into the store"
    );
    let report = sup.activate(&slot, v2.clone()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Active, "{report:?}");
    let check = sup.clone();
    let same = tokio::task::spawn_blocking(move || check.already_active(&slot, &v2))
        .await
        .unwrap()
        .unwrap();
    let generation = report.candidate.as_ref().expect("candidate").generation;
    assert_eq!(same, Some(tryswap_fsm::Generation(generation)));
    let read = bytes_read() - before;
    sup.shutdown().await;
    assert!(
        read < size / 2,
        "the {size}-byte executable was read again: {read} bytes read by the check, the \
         reload and the second check"
    );
}
