//! go-plugin's stdio stream (`plugin.GRPCStdio/StreamStdio`): a go-plugin plugin's writes
//! to `os.Stdout`/`os.Stderr` after `Serve` block once nobody drains the stream. The
//! fixture with `stdio_stream_kib` behaves the same way; tryswap's process driver drains
//! the stream into the generation's `.stdout` and `.log` files, from validation until the
//! generation is stopped. Every wait and every call is bounded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tryswap::internals::stdio::{running_drains, LIMIT_MARKER};
use tryswap::report::{Outcome, ReloadReport};
use tryswap::{CandidateSpec, Supervisor};
use tryswap_fsm::SlotName;
use tryswap_tests::harness::fixture_slot;
use tryswap_tests::{
    call, fixture_plugin_path, pid_alive, wait_until, FixtureConfig, Handshake, PluginCommand,
    TempState,
};

/// Bound on anything that should happen "soon" (generous for loaded CI).
const SOON: Duration = Duration::from_secs(10);
/// Bound on each call.
const RPC: Duration = Duration::from_secs(5);

fn fixture(state: &TempState, name: &str, config: FixtureConfig) -> CandidateSpec {
    let path = config.write(&state.join(format!("{name}.toml"))).unwrap();
    CandidateSpec::executable(fixture_plugin_path()).with_config(path)
}

fn streaming(message: &str, kib: u64) -> FixtureConfig {
    FixtureConfig {
        message: Some(message.to_owned()),
        stdio_stream_kib: Some(kib),
        ..FixtureConfig::default()
    }
}

/// `<state>/logs/<slot>/<generation>.stdout` and `.log`.
fn log_files(state_dir: &Path, slot: &str, report: &ReloadReport) -> (PathBuf, PathBuf) {
    let generation = report.candidate.as_ref().expect("candidate").generation;
    let dir = state_dir.join("logs").join(slot);
    (
        dir.join(format!("{generation}.stdout")),
        dir.join(format!("{generation}.log")),
    )
}

/// The fixture's stdio lines in `path`: their numbers and total bytes.
fn stdio_lines(path: &Path) -> (Vec<u64>, u64) {
    let text = std::fs::read(path).unwrap_or_default();
    let mut numbers = Vec::new();
    let mut bytes = 0;
    for line in text.split_inclusive(|b| *b == b'\n') {
        let Some(rest) = line.strip_prefix(b"stdio line ") else {
            continue;
        };
        bytes += line.len() as u64;
        let digits: Vec<u8> = rest
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .copied()
            .collect();
        if let Some(n) = std::str::from_utf8(&digits)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            numbers.push(n);
        }
    }
    (numbers, bytes)
}

/// Makes `n` calls through leases, each bounded; panics on the first failure.
async fn calls_through_leases(sup: &Supervisor, slot: &SlotName, n: usize, expected: &str) {
    for i in 0..n {
        let lease = sup.lease(slot).expect("a generation is active");
        let endpoint = lease.endpoint().expect("endpoint").clone();
        let reply = call("tcp", &endpoint.address, &format!("call {i}"), RPC)
            .await
            .unwrap_or_else(|e| panic!("call {i} failed (is the stdio stream drained?): {e}"));
        assert_eq!(reply.message, expected, "call {i}");
        drop(lease);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_drain_the_fixtures_stdio_stream_blocks_its_calls() {
    // The control: the fixture really blocks like go-plugin when nobody drains.
    let state = TempState::new().unwrap();
    let config = streaming("undrained", 512)
        .write(&state.join("undrained.toml"))
        .unwrap();
    let plugin = PluginCommand::fixture().config(&config).spawn().unwrap();
    let handshake = Handshake::parse(&plugin.next_line(SOON).unwrap()).unwrap();
    // The buffer holds 64 lines and every call writes one before it replies, so whatever
    // the background writer managed so far, at most 64 calls can be answered while nobody
    // drains (no timing assumption: the bound holds even if the writer has not started).
    let mut answered = Vec::new();
    for i in 0..70 {
        match call(
            &handshake.network,
            &handshake.address,
            &format!("x{i}"),
            Duration::from_secs(1),
        )
        .await
        {
            Ok(reply) => answered.push(reply),
            Err(_) => break,
        }
    }
    assert!(
        answered.len() <= 64,
        "{} calls answered although nobody drains the stdio stream",
        answered.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_grpc_stdio_is_left_alone() {
    let state = TempState::new().unwrap();
    let sup = Supervisor::open(state.join("state")).unwrap();
    sup.add_process_slot(fixture_slot("plain"));
    let slot = SlotName::new("plain").unwrap();
    let mut reports = Vec::new();
    for n in 1..=2 {
        let name = format!("p{n}");
        let report = sup
            .activate(
                &slot,
                fixture(&state, &name, FixtureConfig::with_message(&name)),
            )
            .await
            .unwrap();
        assert_eq!(report.outcome, Outcome::Active, "{report:?}");
        // The plugin answers Unimplemented: the drain ends at once.
        assert!(
            wait_until(SOON, || running_drains(&report.reload_id) == 0),
            "a drain still runs for a plugin without plugin.GRPCStdio"
        );
        calls_through_leases(&sup, &slot, 5, &name).await;
        reports.push(report);
    }
    assert_eq!(reports[1].retired, vec![1]);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_stream_is_drained_into_the_logs_and_the_drain_ends_with_its_generation() {
    let state = TempState::new().unwrap();
    let state_dir = state.join("state");
    let sup = Supervisor::open(&state_dir).unwrap();
    sup.add_process_slot(fixture_slot("demo"));
    let slot = SlotName::new("demo").unwrap();

    // 512 KiB written at start: the probe only passes if the stream is drained meanwhile
    // (the fixture serves health regardless, but its writer must not stall the calls).
    let first = sup
        .activate(&slot, fixture(&state, "g1", streaming("g1", 512)))
        .await
        .unwrap();
    assert_eq!(first.outcome, Outcome::Active, "{first:?}");
    assert_eq!(
        running_drains(&first.reload_id),
        1,
        "no drain for generation 1"
    );
    let first_pid = first.candidate.as_ref().and_then(|c| c.pid).expect("pid");

    calls_through_leases(&sup, &slot, 300, "g1").await;

    // Every line (512 from the start, one per call) lands exactly once: STDOUT lines in
    // `.stdout`, every 10th (STDERR) in `.log`.
    let (stdout_path, log_path) = log_files(&state_dir, "demo", &first);
    let total: u64 = 512 + 300;
    let complete = wait_until(SOON, || {
        stdio_lines(&stdout_path).0.len() + stdio_lines(&log_path).0.len() >= total as usize
    });
    let (out_numbers, out_bytes) = stdio_lines(&stdout_path);
    let (err_numbers, err_bytes) = stdio_lines(&log_path);
    assert!(
        complete,
        "only {} + {} of {total} stdio lines reached the logs",
        out_numbers.len(),
        err_numbers.len()
    );
    assert!(
        out_bytes >= 512 * 1024,
        "{} holds only {out_bytes} bytes of stdio lines",
        stdout_path.display()
    );
    assert!(err_bytes > 0, "{} holds no stdio lines", log_path.display());
    assert!(out_numbers.iter().all(|n| n % 10 != 0));
    assert!(err_numbers.iter().all(|n| n % 10 == 0));
    let all: BTreeSet<u64> = out_numbers.iter().chain(&err_numbers).copied().collect();
    assert_eq!(all.len() as u64, total, "a line was duplicated");
    assert_eq!(all, (1..=total).collect::<BTreeSet<u64>>());

    // A reload: the old generation's process and its drain are gone once it returns.
    let second = sup
        .activate(&slot, fixture(&state, "g2", streaming("g2", 16)))
        .await
        .unwrap();
    assert_eq!(second.outcome, Outcome::Active, "{second:?}");
    assert_eq!(second.retired, vec![1]);
    assert_eq!(
        running_drains(&first.reload_id),
        0,
        "the stopped generation's drain still runs"
    );
    assert!(!pid_alive(first_pid), "generation 1 still runs");
    assert_eq!(running_drains(&second.reload_id), 1);
    calls_through_leases(&sup, &slot, 20, "g2").await;
    let (stdout2, log2) = log_files(&state_dir, "demo", &second);
    assert!(wait_until(SOON, || {
        stdio_lines(&stdout2).0.len() + stdio_lines(&log2).0.len() >= 36
    }));

    sup.shutdown().await;
    assert_eq!(running_drains(&second.reload_id), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_log_max_bytes_the_stream_is_still_drained_but_dropped_with_one_marker() {
    let state = TempState::new().unwrap();
    let state_dir = state.join("state");
    let sup = Supervisor::open(&state_dir).unwrap();
    let mut config = fixture_slot("capped");
    config.log_max_bytes = 100 * 1024;
    sup.add_process_slot(config);
    let slot = SlotName::new("capped").unwrap();

    let report = sup
        .activate(&slot, fixture(&state, "c1", streaming("c1", 256)))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Active, "{report:?}");
    // Calls keep answering although the logs are full.
    calls_through_leases(&sup, &slot, 50, "c1").await;

    let (stdout_path, log_path) = log_files(&state_dir, "capped", &report);
    assert!(
        wait_until(SOON, || std::fs::read_to_string(&log_path)
            .is_ok_and(|log| log.contains(LIMIT_MARKER))),
        "no log_max_bytes marker in {}",
        log_path.display()
    );
    let written = stdio_lines(&stdout_path).1 + stdio_lines(&log_path).1;
    assert!(
        (90 * 1024..=100 * 1024).contains(&written),
        "{written} bytes of stdio lines written with log_max_bytes = 100 KiB"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.matches(LIMIT_MARKER).count(), 1);
    sup.shutdown().await;
    assert_eq!(running_drains(&report.reload_id), 0);
}
