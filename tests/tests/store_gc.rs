//! `tryswap store gc` keeps exactly the artifacts of kept generations (active, retiring,
//! history) and removes the rest (dry runs, rejected candidates); the store's size is in
//! `status --json` and in the daemon's metrics.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use tryswap_tests::daemon::Daemon;
use tryswap_tests::harness::Harness;
use tryswap_tests::{fixture_plugin_path, FixtureConfig};

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

fn stored(h: &Harness) -> BTreeSet<String> {
    std::fs::read_dir(h.state_dir.join("store").join("sha256"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect()
}

#[test]
fn store_gc_keeps_exactly_the_files_of_kept_generations() {
    let h = Harness::demo();
    let mut kept = BTreeSet::from([sha256_of(&fixture_plugin_path())]);
    for n in 1..=3 {
        let config = h.fixture_config(
            &format!("v{n}"),
            &FixtureConfig::with_message(format!("v{n}")),
        );
        let run = h.activate("demo", &config);
        assert_eq!(run.code, 0, "{run:?}");
        kept.insert(sha256_of(&config));
    }
    let dry = h.fixture_config("dry", &FixtureConfig::with_message("dry"));
    assert_eq!(h.try_activate("demo", &dry).code, 0);
    let bad = h.fixture_config(
        "bad",
        &FixtureConfig {
            exit_before_handshake: Some(3),
            ..FixtureConfig::with_message("bad")
        },
    );
    assert_eq!(h.activate("demo", &bad).code, 2);
    let garbage = BTreeSet::from([sha256_of(&dry), sha256_of(&bad)]);
    assert_eq!(
        stored(&h),
        kept.union(&garbage).cloned().collect::<BTreeSet<_>>()
    );
    let before = h.status()["store"]["objects"].as_u64();
    assert_eq!(before, Some(6));

    let run = h.tryswap(&["--json", "store", "gc"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    let removed: BTreeSet<String> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(removed, garbage, "{report}");
    assert_eq!(stored(&h), kept);
    let status = h.status();
    assert_eq!(status["store"]["objects"], 4, "{status}");
    assert!(status["store"]["bytes"].as_u64().unwrap() > 0);

    // The kept generations still come back.
    let rollback = h.tryswap(&["--json", "rollback", "demo", "--to", "1"]);
    assert_eq!(rollback.code, 0, "{rollback:?}");

    let daemon = Daemon::start(&h);
    let metrics = daemon.get("/metrics").unwrap().body;
    assert!(metrics.contains("tryswap_store_bytes "), "{metrics}");
    let gc = daemon.post("/v1/store/gc", "").unwrap();
    assert_eq!(gc.status, 200, "{gc:?}");
}
