//! The supervisor as an embedded library: leases across swaps, per-slot serialization,
//! and in-process engines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tryswap::config::{ProbeConfig, ProbeKind, SlotConfig};
use tryswap::report::Outcome;
use tryswap::{CandidateSpec, Supervisor, SupervisorError};
use tryswap::{Engine, EngineFactory};
use tryswap_fsm::{EventKind, Generation, SlotName};
use tryswap_tests::{call, fixture_plugin_path, FixtureConfig, TempState};

fn slot_config(name: &str) -> SlotConfig {
    tryswap_tests::harness::fixture_slot(name)
}

fn fixture(state: &TempState, name: &str, config: FixtureConfig) -> CandidateSpec {
    let path = config.write(&state.join(format!("{name}.toml"))).unwrap();
    CandidateSpec::executable(fixture_plugin_path()).with_config(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_continuous_calls_through_leases_lose_no_call() {
    const SWAPS: u64 = 6;
    let state = TempState::new().unwrap();
    let sup = Supervisor::open(state.join("state")).unwrap();
    sup.add_process_slot(slot_config("demo"));
    let slot = SlotName::new("demo").unwrap();
    let report = sup
        .activate(
            &slot,
            fixture(&state, "g1", FixtureConfig::with_message("g1")),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Active);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (sup, slot, stop, ok, failed) = (
            sup.clone(),
            slot.clone(),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        callers.push(tokio::spawn(async move {
            let mut mismatched = Vec::new();
            // Bounded: at most 100k calls even if stop never comes.
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let lease = sup.lease(&slot).expect("a generation is always active");
                let endpoint = lease.endpoint().expect("endpoint").clone();
                let expected = format!("g{}", lease.generation().0);
                match call("tcp", &endpoint.address, "x", Duration::from_secs(5)).await {
                    Ok(reply) => {
                        if reply.message != expected {
                            mismatched.push((expected, reply.message));
                        }
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        eprintln!("call on generation {expected} failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                drop(lease);
            }
            mismatched
        }));
    }

    for n in 2..=SWAPS + 1 {
        let before = ok.load(Ordering::SeqCst);
        let report = sup
            .activate(
                &slot,
                fixture(
                    &state,
                    &format!("g{n}"),
                    FixtureConfig::with_message(format!("g{n}")),
                ),
            )
            .await
            .unwrap();
        assert_eq!(report.outcome, Outcome::Active, "{report:?}");
        assert_eq!(report.candidate.as_ref().unwrap().generation, n);
        // Calls keep flowing across every swap.
        let flowing = tryswap_tests::wait_until_async(Duration::from_secs(10), || {
            let ok = Arc::clone(&ok);
            async move { ok.load(Ordering::SeqCst) > before + 5 }
        })
        .await;
        assert!(flowing, "calls stalled after swap {n}");
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        let mismatched = caller.await.unwrap();
        assert!(
            mismatched.is_empty(),
            "calls answered by the wrong generation: {mismatched:?}"
        );
    }
    let total = ok.load(Ordering::SeqCst);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed calls out of {total}"
    );
    assert!(total >= SWAPS * 5, "too few calls made: {total}");
    let status = sup.status(Some(&slot)).unwrap();
    assert_eq!(
        status.slots[0].active.as_ref().unwrap().generation,
        SWAPS + 1
    );
    assert!(status.slots[0].retiring.is_empty());
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reloads_conflict_on_one_slot_and_run_in_parallel_on_two() {
    let state = TempState::new().unwrap();
    let sup = Supervisor::open(state.join("state")).unwrap();
    sup.add_process_slot(slot_config("a"));
    sup.add_process_slot(slot_config("b"));
    let a = SlotName::new("a").unwrap();
    let b = SlotName::new("b").unwrap();
    // Slow enough that the two reloads overlap: healthy only after 500 ms.
    let slow = FixtureConfig {
        healthy_after_ms: Some(500),
        ..FixtureConfig::default()
    };
    // The second reload starts once the journal shows the first one launched (it is then
    // waiting 500 ms for its probe), so the two overlap whatever the machine's speed.
    let mut records = sup.subscribe();
    let (first, second) = tokio::join!(
        sup.activate(&a, fixture(&state, "a1", slow.clone())),
        async {
            loop {
                match records.recv().await {
                    Ok(r) if matches!(r.event, EventKind::Launched { .. }) => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("journal records ended before the first launch: {e}"),
                }
            }
            sup.activate(&a, fixture(&state, "a2", slow.clone())).await
        }
    );
    assert_eq!(first.unwrap().outcome, Outcome::Active);
    match second {
        Err(SupervisorError::Conflict { slot, .. }) => assert_eq!(slot, a),
        other => panic!("expected a conflict, got {other:?}"),
    }

    let (ra, rb) = tokio::join!(
        sup.activate(&a, fixture(&state, "a3", slow.clone())),
        sup.activate(&b, fixture(&state, "b1", slow.clone())),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        (ra.outcome, rb.outcome),
        (Outcome::Active, Outcome::Active),
        "{ra:?} {rb:?}"
    );
    // They overlapped: each started before the other finished.
    let (a_start, a_end) = (ra.stages[0].at, ra.stages.last().unwrap().at);
    let (b_start, b_end) = (rb.stages[0].at, rb.stages.last().unwrap().at);
    assert!(
        a_start < b_end && b_start < a_end,
        "reloads of two slots ran one after the other"
    );
    sup.shutdown().await;
}

/// An engine whose behaviour the test controls through its config bytes.
struct TestEngine {
    name: String,
    healthy: bool,
    start_fails: bool,
    started: AtomicBool,
    stopped: Arc<AtomicU64>,
}

#[async_trait]
impl Engine for TestEngine {
    async fn start(&self) -> Result<(), String> {
        if self.start_fails {
            return Err(format!("{}: cannot open its database", self.name));
        }
        self.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn check(&self) -> Result<(), String> {
        if self.healthy {
            Ok(())
        } else {
            Err(format!("{} is unhealthy", self.name))
        }
    }

    async fn stop(&self) {
        self.stopped.fetch_add(1, Ordering::SeqCst);
    }
}

struct TestFactory {
    stopped: Arc<AtomicU64>,
}

#[async_trait]
impl EngineFactory for TestFactory {
    type Engine = TestEngine;

    async fn build(&self, config: &[u8]) -> Result<TestEngine, String> {
        let text = std::str::from_utf8(config).map_err(|e| e.to_string())?;
        if text.contains("build-fails") {
            return Err("invalid engine config: build-fails".into());
        }
        Ok(TestEngine {
            name: text.lines().next().unwrap_or("").to_owned(),
            healthy: !text.contains("unhealthy"),
            start_fails: text.contains("start-fails"),
            started: AtomicBool::new(false),
            stopped: Arc::clone(&self.stopped),
        })
    }
}

#[tokio::test]
async fn a_failed_engine_build_start_or_probe_keeps_the_prior_engine_active() {
    let state = TempState::new().unwrap();
    let sup = Supervisor::open(state.join("state")).unwrap();
    let stopped = Arc::new(AtomicU64::new(0));
    let slot = SlotName::new("engine").unwrap();
    let mut probe = ProbeConfig::default();
    probe.kind = ProbeKind::None;
    probe.period = Duration::from_millis(5);
    probe.failure_threshold = 2;
    sup.add_engine_slot(
        slot.clone(),
        probe,
        Duration::from_secs(1),
        TestFactory {
            stopped: Arc::clone(&stopped),
        },
    );
    let write = |name: &str, body: &str| {
        let path = state.join(name);
        std::fs::write(&path, body).unwrap();
        CandidateSpec {
            executable: None,
            config: Some(path),
        }
    };
    let report = sup
        .activate(&slot, write("e1", "engine-1\n"))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Active);

    for (name, body, stage) in [
        ("e2", "engine-2\nbuild-fails\n", "launched"),
        ("e3", "engine-3\nstart-fails\n", "validated"),
        ("e4", "engine-4\nunhealthy\n", "probed"),
    ] {
        let report = sup.activate(&slot, write(name, body)).await.unwrap();
        assert_eq!(report.outcome, Outcome::RolledBack, "{name}");
        assert_eq!(report.failed_stage, Some(stage), "{name}: {report:?}");
        let lease = sup.lease(&slot).unwrap();
        assert_eq!(lease.generation(), Generation(1), "{name}");
        let engine = lease
            .engine::<TestEngine>()
            .expect("engine behind the lease");
        assert_eq!(engine.name, "engine-1");
        assert!(engine.started.load(Ordering::SeqCst));
    }
    // Only the rejected candidates that were built were stopped (start-fails, unhealthy).
    assert_eq!(stopped.load(Ordering::SeqCst), 2);

    // A good engine then replaces it; the old one is stopped after its lease ends.
    let lease = sup.lease(&slot).unwrap();
    let swap = tokio::spawn({
        let sup = sup.clone();
        let slot = slot.clone();
        let spec = write("e5", "engine-5\n");
        async move { sup.activate(&slot, spec).await }
    });
    assert!(
        tryswap_tests::wait_until_async(Duration::from_secs(5), || {
            let sup = sup.clone();
            let slot = slot.clone();
            async move {
                sup.lease(&slot)
                    .is_ok_and(|l| l.generation() == Generation(5))
            }
        })
        .await,
        "new engine never became active"
    );
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        2,
        "old engine stopped while leased"
    );
    drop(lease);
    let report = swap.await.unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Active);
    assert_eq!(report.retired, vec![1]);
    assert_eq!(stopped.load(Ordering::SeqCst), 3);
}

/// `start` after the plugin died relaunches it, and first stops what the dead plugin left
/// behind: here a grandchild in its own session (outside the process group), which carries
/// the generation's reload tag. Without that, two copies would run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_after_a_crash_stops_the_dead_plugins_leftovers_before_relaunching() {
    let state = TempState::new().unwrap();
    let sup = Supervisor::open(state.join("state")).unwrap();
    sup.add_process_slot(slot_config("demo"));
    let slot = SlotName::new("demo").unwrap();
    let grandchild_file = state.join("grandchild.pid");
    let report = sup
        .activate(
            &slot,
            fixture(
                &state,
                "g1",
                FixtureConfig {
                    fork_grandchild: true,
                    grandchild_new_session: true,
                    grandchild_pid_file: Some(grandchild_file.clone()),
                    ..FixtureConfig::with_message("g1")
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Active, "{report:?}");
    let leader = report
        .candidate
        .as_ref()
        .and_then(|c| c.pid)
        .expect("the active generation has a pid");
    assert!(
        tryswap_tests::wait_until(Duration::from_secs(10), || {
            tryswap_tests::read_pid_file(&grandchild_file).is_some()
        }),
        "the fixture wrote no grandchild pid"
    );
    let grandchild = tryswap_tests::read_pid_file(&grandchild_file).unwrap();
    assert!(tryswap_tests::pid_alive(grandchild));

    // The plugin crashes; its escaped grandchild lives on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        tryswap_tests::wait_until(Duration::from_secs(10), || {
            !tryswap_tests::pid_alive(leader)
        }),
        "the plugin did not die"
    );
    assert!(tryswap_tests::pid_alive(grandchild));

    let generation = sup.start(&slot).await.unwrap();
    assert_eq!(generation, Generation(1));
    assert!(
        !tryswap_tests::pid_alive(grandchild),
        "the dead plugin's grandchild {grandchild} still runs beside the relaunched copy"
    );
    let lease = sup.lease(&slot).expect("the relaunched generation serves");
    assert_ne!(
        lease.instance().process.as_ref().map(|p| p.pid),
        Some(leader)
    );
    drop(lease);
    sup.shutdown().await;
}
