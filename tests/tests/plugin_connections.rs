//! How many connections tryswap opens to a plugin: one per generation, as go-plugin's host
//! keeps one per plugin client. The stdio stream, the reload's health probe and the
//! controller's `Shutdown` at retirement share it; a connection per call cost the reload
//! ~1 ms each (connect and HTTP/2 setup) on both sides of the swap.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tryswap::report::Outcome;
use tryswap::{CandidateSpec, Supervisor};
use tryswap_fsm::{Mode, SlotName};
use tryswap_tests::harness::fixture_slot;
use tryswap_tests::{fixture_plugin_path, pid_alive, wait_until, FixtureConfig, TempState};

/// Bound on anything that should happen "soon" (generous for loaded CI).
const SOON: Duration = Duration::from_secs(10);

/// A fixture candidate that counts the connections it accepts in `counts`.
fn counting(state: &TempState, name: &str, counts: &Path) -> CandidateSpec {
    let config = FixtureConfig {
        message: Some(name.to_owned()),
        connections_file: Some(counts.to_path_buf()),
        ..FixtureConfig::default()
    };
    let path = config.write(&state.join(format!("{name}.toml"))).unwrap();
    CandidateSpec::executable(fixture_plugin_path()).with_config(path)
}

/// How many connections the plugin with pid `pid` accepted, per its `counts` file.
fn accepted(counts: &Path, pid: u32) -> usize {
    std::fs::read_to_string(counts)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.trim().parse::<u32>().ok() == Some(pid))
        .count()
}

/// A supervisor with slot `name`, its first generation activated (counting in
/// `<state>/connections`); returns the state, the supervisor, the slot, the counts file
/// and the first generation's pid.
async fn first_generation(name: &str) -> (TempState, Supervisor, SlotName, PathBuf, u32) {
    let state = TempState::new().unwrap();
    let sup = Supervisor::open(state.join("state")).unwrap();
    sup.add_process_slot(fixture_slot(name));
    let slot = SlotName::new(name).unwrap();
    let counts = state.join("connections");
    let first = sup
        .activate(&slot, counting(&state, "g1", &counts))
        .await
        .unwrap();
    assert_eq!(first.outcome, Outcome::Active, "{first:?}");
    let pid = first.candidate.as_ref().and_then(|c| c.pid).expect("pid");
    (state, sup, slot, counts, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_validated_probed_and_retired_over_one_connection() {
    let (state, sup, slot, counts, first_pid) = first_generation("one").await;
    // The stdio stream and the probe: one connection.
    assert_eq!(
        accepted(&counts, first_pid),
        1,
        "generation 1 before the swap"
    );

    let second = sup
        .activate(&slot, counting(&state, "g2", &counts))
        .await
        .unwrap();
    assert_eq!(second.outcome, Outcome::Active, "{second:?}");
    assert_eq!(second.retired, vec![1]);
    assert!(
        wait_until(SOON, || !pid_alive(first_pid)),
        "generation 1 still runs"
    );
    // Its retirement asked it to shut down over the same connection.
    assert_eq!(
        accepted(&counts, first_pid),
        1,
        "generation 1 after retirement"
    );
    let second_pid = second.candidate.as_ref().and_then(|c| c.pid).expect("pid");
    assert_eq!(accepted(&counts, second_pid), 1, "generation 2");
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_after_the_reloads_probe_open_connections_of_their_own() {
    let (state, sup, slot, counts, _) = first_generation("baked").await;

    // A 200 ms bake checks the candidate every probe period (20 ms): each check must also
    // prove the plugin still accepts connections, so it dials its own.
    let baked = sup
        .reload_with_bake(
            &slot,
            Mode::Activate,
            Some(counting(&state, "g2", &counts)),
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    assert_eq!(baked.outcome, Outcome::Active, "{baked:?}");
    let pid = baked.candidate.as_ref().and_then(|c| c.pid).expect("pid");
    let connections = accepted(&counts, pid);
    assert!(
        connections >= 3,
        "the bake's checks rode the reload's connection: {connections} accepted"
    );
    sup.shutdown().await;
}
