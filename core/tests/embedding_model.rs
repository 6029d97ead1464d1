//! A property test of an embedding, built from the public façade only (`tryswap::…`, as
//! docs/embedding.md shows): random activate / bad candidate / dry run / rollback /
//! crash-and-reopen steps on an in-process engine slot, each checked against a small model of
//! what the slot must hold afterwards (active generation, the value its engine serves, the
//! outcome of the step). A "crash" drops the supervisor without `shutdown` and reopens the
//! state directory, as a host that died and restarted would.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use tryswap::{
    CandidateSpec, Engine, EngineFactory, Outcome, ProbeConfig, ProbeKind, SlotName, Supervisor,
    SupervisorError,
};

/// An engine that serves one number.
struct Number(i64);

#[async_trait]
impl Engine for Number {
    async fn start(&self) -> Result<(), String> {
        Ok(())
    }

    async fn check(&self) -> Result<(), String> {
        if self.0 >= 0 {
            Ok(())
        } else {
            Err(format!("{} is negative", self.0))
        }
    }

    async fn stop(&self) {}
}

/// Builds a [`Number`] from the config text `n = <i64>`; anything else fails at launch.
struct NumberFactory;

#[async_trait]
impl EngineFactory for NumberFactory {
    type Engine = Number;

    async fn build(&self, config: &[u8]) -> Result<Number, String> {
        let text = std::str::from_utf8(config).map_err(|e| e.to_string())?;
        let n = text
            .trim()
            .strip_prefix("n = ")
            .ok_or_else(|| format!("not `n = <number>`: {text:?}"))?;
        n.parse().map(Number).map_err(|e| format!("{n:?}: {e}"))
    }
}

/// One step of the embedding.
#[derive(Clone, Debug)]
enum Step {
    /// Activate a config whose engine is healthy and serves `n`.
    Activate(i64),
    /// Activate a config that does not build (rejected at `launched`).
    Unbuildable,
    /// Activate a config whose engine fails its health check (rejected at `probed`).
    Sick,
    /// Dry run of a healthy config.
    Try(i64),
    /// Roll back to the generation active before the current one.
    Rollback,
    /// Drop the supervisor without shutting down, reopen, register, recover.
    CrashAndReopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0i64..1000).prop_map(Step::Activate),
        1 => Just(Step::Unbuildable),
        1 => Just(Step::Sick),
        1 => (0i64..1000).prop_map(Step::Try),
        2 => Just(Step::Rollback),
        2 => Just(Step::CrashAndReopen),
    ]
}

/// What the slot must hold.
#[derive(Debug, Default)]
struct Model {
    /// The active generation, and the generation that was active before it.
    active: Option<(u64, Option<u64>)>,
    /// The value each generation that was ever active serves.
    values: BTreeMap<u64, i64>,
    /// Generations are numbered per reload attempt that reached the store.
    next: u64,
}

impl Model {
    fn staged(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn activated(&mut self, generation: u64, value: i64) {
        let previous = self.active.map(|(g, _)| g);
        self.active = Some((generation, previous));
        self.values.insert(generation, value);
    }
}

fn slot() -> SlotName {
    SlotName::new("numbers").expect("a valid slot name")
}

fn open(state: &Path) -> Supervisor {
    let sup = Supervisor::open(state).expect("open the state dir");
    // Config structs are `#[non_exhaustive]`: start from the defaults, set what matters.
    let mut probe = ProbeConfig::default();
    probe.kind = ProbeKind::None;
    probe.period = Duration::from_millis(5);
    probe.failure_threshold = 2;
    sup.add_engine_slot(slot(), probe, Duration::from_secs(2), NumberFactory);
    sup
}

fn config(dir: &Path, name: &str, text: &str) -> CandidateSpec {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a candidate config");
    CandidateSpec {
        executable: None,
        config: Some(path),
    }
}

/// Checks that the supervisor serves what the model says.
fn check(sup: &Supervisor, model: &Model, after: &Step) -> Result<(), TestCaseError> {
    let status = sup.status(Some(&slot())).expect("status");
    let active = status.slots[0].active.as_ref().map(|a| a.generation);
    prop_assert_eq!(active, model.active.map(|(g, _)| g), "after {:?}", after);
    match model.active {
        Some((generation, _)) => {
            let lease = sup
                .lease(&slot())
                .expect("a lease on the active generation");
            let engine = lease.engine::<Number>().expect("a Number engine");
            prop_assert_eq!(Some(engine.0), model.values.get(&generation).copied());
        }
        None => prop_assert!(sup.lease(&slot()).is_err()),
    }
    Ok(())
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let state = dir.path().join("state");
    let mut sup = open(&state);
    sup.recover().await.expect("recover a fresh state dir");
    let mut model = Model::default();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Activate(n) => {
                let spec = config(dir.path(), &format!("{i}.toml"), &format!("n = {n}"));
                let report = sup.activate(&slot(), spec).await.expect("activate");
                let generation = model.staged();
                prop_assert_eq!(report.outcome, Outcome::Active);
                model.activated(generation, *n);
            }
            Step::Unbuildable | Step::Sick => {
                let text = if matches!(step, Step::Sick) {
                    "n = -1"
                } else {
                    "not a number"
                };
                let spec = config(dir.path(), &format!("{i}.toml"), text);
                let report = sup.activate(&slot(), spec).await.expect("activate");
                model.staged();
                prop_assert_eq!(report.outcome, Outcome::RolledBack);
            }
            Step::Try(n) => {
                let spec = config(dir.path(), &format!("{i}.toml"), &format!("n = {n}"));
                let report = sup.try_activate(&slot(), spec).await.expect("try");
                model.staged();
                prop_assert_eq!(report.outcome, Outcome::DryRunPassed);
            }
            Step::Rollback => match (model.active, sup.rollback(&slot(), None).await) {
                (Some((_, Some(previous))), Ok(report)) => {
                    let generation = model.staged();
                    prop_assert_eq!(report.outcome, Outcome::Active);
                    let value = model.values[&previous];
                    model.activated(generation, value);
                }
                (None, Err(SupervisorError::NoActive(_)))
                | (None, Err(SupervisorError::NoPrevious(_)))
                | (Some((_, None)), Err(SupervisorError::NoPrevious(_))) => {}
                (model_active, got) => {
                    return Err(TestCaseError::fail(format!(
                        "rollback with model {model_active:?} gave {got:?}"
                    )))
                }
            },
            Step::CrashAndReopen => {
                drop(sup);
                sup = open(&state);
                sup.recover().await.expect("recover after a crash");
            }
        }
        check(&sup, &model, step)?;
    }
    sup.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn an_embedded_slot_always_serves_what_the_model_says(
        steps in proptest::collection::vec(step(), 1..12)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(run(steps))?;
    }
}
