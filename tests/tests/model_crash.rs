//! Model test: random sequences of reloads, failures, dry runs, rollbacks, crashes (with and
//! without a reload in flight), recoveries and compactions against the in-process engine
//! driver. After every step the journal must agree with itself (its projections equal the
//! fold of its events, `verify` passes) and with a simple model (active generation, its
//! config, next generation, history), and a lease must reach the model's engine.
//!
//! The model runs over the in-memory journal (`MemoryJournal`, kept across each crash as a
//! journal outlives a crashed process) and, in fewer cases, over the sled journal on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use tryswap::config::{ProbeConfig, ProbeKind};
use tryswap::report::Outcome;
use tryswap::RecoveryAction;
use tryswap::{CandidateSpec, Supervisor, SupervisorError};
use tryswap::{Engine, EngineFactory};
use tryswap_fsm::{Generation, SlotName, World};
use tryswap_journal::{JournalStore, MemoryJournal};

/// An engine that does what the first words of its config say.
struct ModelEngine {
    tag: String,
    start_fails: bool,
    start_hangs: bool,
    unhealthy: bool,
    check_hangs: bool,
    stopped: AtomicBool,
}

#[async_trait]
impl Engine for ModelEngine {
    async fn start(&self) -> Result<(), String> {
        if self.start_hangs {
            std::future::pending::<()>().await;
        }
        if self.start_fails {
            return Err(format!("{}: start fails", self.tag));
        }
        Ok(())
    }

    async fn check(&self) -> Result<(), String> {
        if self.check_hangs {
            std::future::pending::<()>().await;
        }
        if self.unhealthy {
            Err(format!("{} is unhealthy", self.tag))
        } else {
            Ok(())
        }
    }

    async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

struct ModelFactory;

#[async_trait]
impl EngineFactory for ModelFactory {
    type Engine = ModelEngine;

    async fn build(&self, config: &[u8]) -> Result<ModelEngine, String> {
        let text = std::str::from_utf8(config).map_err(|e| e.to_string())?;
        let has = |word: &str| text.lines().skip(1).any(|l| l == word);
        if has("build-fails") {
            return Err("invalid engine config".into());
        }
        if has("build-hangs") {
            std::future::pending::<()>().await;
        }
        Ok(ModelEngine {
            tag: text.lines().next().unwrap_or_default().to_owned(),
            start_fails: has("start-fails"),
            start_hangs: has("start-hangs"),
            unhealthy: has("unhealthy"),
            check_hangs: has("check-hangs"),
            stopped: AtomicBool::new(false),
        })
    }
}

/// How a candidate misbehaves.
#[derive(Clone, Copy, Debug)]
enum Flaw {
    BuildFails,
    StartFails,
    Unhealthy,
}

impl Flaw {
    fn word(self) -> &'static str {
        match self {
            Flaw::BuildFails => "build-fails",
            Flaw::StartFails => "start-fails",
            Flaw::Unhealthy => "unhealthy",
        }
    }

    /// The stage a candidate with this flaw fails at.
    fn stage(self) -> &'static str {
        match self {
            Flaw::BuildFails => "launched",
            Flaw::StartFails => "validated",
            Flaw::Unhealthy => "probed",
        }
    }
}

/// Where a reload in flight hangs when the host crashes.
#[derive(Clone, Copy, Debug)]
enum Hang {
    Build,
    Start,
    Check,
}

impl Hang {
    fn word(self) -> &'static str {
        match self {
            Hang::Build => "build-hangs",
            Hang::Start => "start-hangs",
            Hang::Check => "check-hangs",
        }
    }

    /// The reload's state while it hangs there.
    fn state(self) -> &'static str {
        match self {
            Hang::Build => "staged",
            Hang::Start => "launched",
            Hang::Check => "validated",
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Activate(u8),
    ActivateBad(Flaw),
    DryRun(u8),
    DryRunBad(Flaw),
    Rollback,
    Crash,
    CrashDuring(Hang),
    Compact(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let flaw = prop_oneof![
        Just(Flaw::BuildFails),
        Just(Flaw::StartFails),
        Just(Flaw::Unhealthy)
    ];
    let hang = prop_oneof![Just(Hang::Build), Just(Hang::Start), Just(Hang::Check)];
    prop_oneof![
        4 => (0u8..4).prop_map(Op::Activate),
        3 => flaw.clone().prop_map(Op::ActivateBad),
        1 => (0u8..4).prop_map(Op::DryRun),
        1 => flaw.prop_map(Op::DryRunBad),
        2 => Just(Op::Rollback),
        2 => Just(Op::Crash),
        2 => hang.prop_map(Op::CrashDuring),
        1 => (0usize..3).prop_map(Op::Compact),
    ]
}

/// What the journal should say about the slot.
#[derive(Debug, Default)]
struct Model {
    /// Active generation and the tag of its config.
    active: Option<(Generation, String)>,
    /// The generation the next staged reload gets.
    next: u64,
    /// Every generation that was ever active, with its config tag.
    history: BTreeMap<Generation, String>,
    /// For every generation that became active: the generation active when it was staged.
    previous: BTreeMap<Generation, Option<Generation>>,
}

impl Model {
    fn stage(&mut self) -> Generation {
        let g = Generation(self.next);
        self.next += 1;
        g
    }

    fn activate(&mut self, tag: String) -> Generation {
        let g = self.stage();
        self.previous.insert(g, self.active.as_ref().map(|a| a.0));
        self.history.insert(g, tag.clone());
        self.active = Some((g, tag));
        g
    }

    /// A compaction keeps the newest `max(keep, 2)` generations of the history (and the
    /// active one).
    fn trim_history(&mut self, keep: usize) {
        let keep = keep.max(2);
        let mut wanted: Vec<Generation> = self.history.keys().rev().take(keep).copied().collect();
        wanted.extend(self.active.as_ref().map(|a| a.0));
        self.history.retain(|g, _| wanted.contains(g));
    }

    /// The generation `rollback(None)` goes back to, as the supervisor picks it.
    fn rollback_target(&self) -> Option<Generation> {
        let (active, _) = self.active.as_ref()?;
        self.previous
            .get(active)
            .copied()
            .flatten()
            .or_else(|| self.history.keys().rev().find(|g| *g < active).copied())
    }
}

/// Where the host keeps its journal.
#[derive(Clone)]
enum Backing {
    /// A `MemoryJournal` that outlives each supervisor, as a journal outlives a crashed
    /// process: the model needs no disk.
    Memory(Arc<MemoryJournal>),
    /// The sled journal in the state dir, reopened after every crash.
    Disk,
}

struct Host {
    dir: PathBuf,
    backing: Backing,
    slot: SlotName,
    sup: Option<Supervisor>,
    files: usize,
    compacted: bool,
}

fn probe() -> ProbeConfig {
    let mut probe = ProbeConfig::default();
    probe.kind = ProbeKind::None;
    probe.period = Duration::from_millis(1);
    probe.timeout = Duration::from_secs(5);
    probe.success_threshold = 1;
    probe.failure_threshold = 2;
    probe
}

impl Host {
    fn open(dir: &Path, backing: Backing) -> Host {
        let slot = SlotName::new("engine").unwrap();
        let mut host = Host {
            dir: dir.to_path_buf(),
            backing,
            slot,
            sup: None,
            files: 0,
            compacted: false,
        };
        host.start();
        host
    }

    fn start(&mut self) {
        let state = self.dir.join("state");
        let sup = match &self.backing {
            Backing::Memory(journal) => Supervisor::open_with(state, journal.clone()).unwrap(),
            Backing::Disk => Supervisor::open(state).unwrap(),
        };
        sup.add_engine_slot(
            self.slot.clone(),
            probe(),
            Duration::from_secs(5),
            ModelFactory,
        );
        self.sup = Some(sup);
    }

    fn sup(&self) -> &Supervisor {
        self.sup.as_ref().unwrap()
    }

    fn candidate(&mut self, tag: &str, words: &[&str]) -> CandidateSpec {
        self.files += 1;
        let path = self.dir.join(format!("engine-{}.conf", self.files));
        let mut text = format!("{tag}\n");
        for word in words {
            text.push_str(word);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        CandidateSpec {
            executable: None,
            config: Some(path),
        }
    }

    /// Drops the supervisor without shutdown (in-process engines die with it), opens the
    /// state dir again, registers the slot and recovers.
    async fn crash_and_recover(&mut self) -> Vec<RecoveryAction> {
        self.sup = None;
        self.start();
        let report = self.sup().recover().await.unwrap();
        report.actions
    }
}

async fn step(host: &mut Host, model: &mut Model, op: &Op) {
    let slot = host.slot.clone();
    match op {
        Op::Activate(tag) => {
            let tag = format!("good-{tag}");
            let spec = host.candidate(&tag, &[]);
            let report = host.sup().activate(&slot, spec).await.unwrap();
            assert_eq!(report.outcome, Outcome::Active, "{report:?}");
            let g = model.activate(tag);
            assert_eq!(report.candidate.as_ref().unwrap().generation, g.0);
        }
        Op::ActivateBad(flaw) => {
            let spec = host.candidate("bad", &[flaw.word()]);
            let report = host.sup().activate(&slot, spec).await.unwrap();
            assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
            assert_eq!(report.failed_stage, Some(flaw.stage()), "{report:?}");
            model.stage();
        }
        Op::DryRun(tag) => {
            let spec = host.candidate(&format!("dry-{tag}"), &[]);
            let report = host.sup().try_activate(&slot, spec).await.unwrap();
            assert_eq!(report.outcome, Outcome::DryRunPassed, "{report:?}");
            model.stage();
        }
        Op::DryRunBad(flaw) => {
            let spec = host.candidate("dry-bad", &[flaw.word()]);
            let report = host.sup().try_activate(&slot, spec).await.unwrap();
            assert_eq!(report.outcome, Outcome::RolledBack, "{report:?}");
            assert_eq!(report.failed_stage, Some(flaw.stage()), "{report:?}");
            model.stage();
        }
        Op::Rollback => match model.rollback_target() {
            Some(to) => {
                let report = host.sup().rollback(&slot, None).await.unwrap();
                assert_eq!(report.outcome, Outcome::Active, "{report:?}");
                assert_eq!(report.rollback_to, Some(to.0));
                let tag = model.history[&to].clone();
                model.activate(tag);
            }
            None => {
                let result = host.sup().rollback(&slot, None).await;
                assert!(
                    matches!(
                        result,
                        Err(SupervisorError::NoActive(_) | SupervisorError::NoPrevious(_))
                    ),
                    "rollback without a previous generation: {result:?}"
                );
            }
        },
        Op::Crash => {
            let actions = host.crash_and_recover().await;
            let relaunched = actions
                .iter()
                .any(|a| matches!(a, RecoveryAction::Relaunched { .. }));
            assert_eq!(
                relaunched,
                model.active.is_some(),
                "recovery must relaunch the active engine (and only then): {actions:?}"
            );
            assert!(
                !actions
                    .iter()
                    .any(|a| matches!(a, RecoveryAction::RolledBack { .. })),
                "{actions:?}"
            );
        }
        Op::CrashDuring(hang) => {
            let spec = host.candidate("hanging", &[hang.word()]);
            let sup = host.sup().clone();
            let task = tokio::spawn({
                let slot = slot.clone();
                async move { sup.activate(&slot, spec).await }
            });
            // Wait (bounded) until the journal shows the reload hanging where expected.
            let journal_state = || -> Option<String> {
                let view = host.sup().journal().slot(&slot).ok()??;
                let id = view.slot.in_flight?;
                let reload = host.sup().journal().reload(&id).ok()??;
                Some(reload.reload.state.name().to_owned())
            };
            let reached = tryswap_tests::wait_until_async(Duration::from_secs(10), || {
                let state = journal_state();
                async move { state.as_deref() == Some(hang.state()) }
            })
            .await;
            assert!(
                reached,
                "reload never hung at {}: {:?}",
                hang.state(),
                journal_state()
            );
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
            model.stage();
            let actions = host.crash_and_recover().await;
            let rolled_back: Vec<&RecoveryAction> = actions
                .iter()
                .filter(|a| matches!(a, RecoveryAction::RolledBack { found, .. } if found == hang.state()))
                .collect();
            assert_eq!(rolled_back.len(), 1, "{actions:?}");
        }
        Op::Compact(keep) => {
            let report = host.sup().journal().compact(*keep).unwrap();
            host.compacted = true;
            if report.reloads_dropped > 0 {
                model.trim_history(*keep);
            }
        }
    }
}

/// The journal's projections of every slot and reload, as a fsm world.
fn projections(host: &Host) -> World {
    let journal = host.sup().journal();
    let mut world = World::default();
    for view in journal.slots().unwrap() {
        for reload in journal.reloads_of(&view.slot.name).unwrap() {
            world.reloads.insert(reload.reload.id, reload.reload);
        }
        let history = journal.history(&view.slot.name).unwrap();
        if !history.is_empty() {
            world.history.insert(view.slot.name.clone(), history);
        }
        world.slots.insert(view.slot.name.clone(), view.slot);
    }
    world
}

fn check(host: &Host, model: &Model, op: &Op) {
    let journal = host.sup().journal();
    let stored = projections(host);
    // The fold of the events equals the projections: from seq 1 while nothing was
    // compacted away, from the compaction base always.
    if !host.compacted {
        let events: Vec<_> = journal.events(0).map(|r| r.unwrap().event()).collect();
        assert_eq!(
            World::fold(&events),
            stored,
            "after {op:?}: fold ≠ projections"
        );
    }
    let replayed = journal.replay(u64::MAX).unwrap().world();
    assert_eq!(replayed, stored, "after {op:?}: replay ≠ projections");
    stored.check_invariants().unwrap();
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "after {op:?}: {:?}", report.problems);

    // The journal equals the model.
    assert!(journal.in_flight().unwrap().is_empty(), "after {op:?}");
    match stored.slots.get(&host.slot) {
        Some(slot) => {
            assert_eq!(
                slot.active.as_ref().map(|a| a.generation),
                model.active.as_ref().map(|a| a.0),
                "after {op:?}: active generation"
            );
            assert_eq!(slot.next_generation, Generation(model.next), "after {op:?}");
            assert!(slot.in_flight.is_none());
            assert!(
                slot.retiring.is_empty(),
                "after {op:?}: {:?}",
                slot.retiring
            );
            let history: Vec<Generation> = stored
                .history
                .get(&host.slot)
                .map(|h| h.keys().copied().collect())
                .unwrap_or_default();
            let expected: Vec<Generation> = model.history.keys().copied().collect();
            assert_eq!(history, expected, "after {op:?}: history");
        }
        None => assert_eq!(model.next, 1, "after {op:?}: the journal lost the slot"),
    }

    // A lease reaches the model's engine.
    match (&model.active, host.sup().lease(&host.slot)) {
        (Some((generation, tag)), Ok(lease)) => {
            assert_eq!(lease.generation(), *generation, "after {op:?}");
            let engine = lease
                .engine::<ModelEngine>()
                .expect("engine behind the lease");
            assert_eq!(&engine.tag, tag, "after {op:?}");
            assert!(!engine.stopped.load(Ordering::SeqCst), "after {op:?}");
        }
        (None, Err(SupervisorError::NoActive(_))) => {}
        (expected, got) => panic!("after {op:?}: expected {expected:?}, lease gave {got:?}"),
    }
}

async fn run(ops: Vec<Op>, backing: Backing) {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::open(dir.path(), backing);
    let mut model = Model {
        next: 1,
        ..Model::default()
    };
    check(&host, &model, &Op::Crash);
    for op in &ops {
        step(&mut host, &mut model, op).await;
        check(&host, &model, op);
    }
    host.sup().shutdown().await;
    if let Backing::Memory(journal) = &host.backing {
        // Everything went to the store that was given: no sled journal on disk.
        assert!(!host.dir.join("state/journal").exists());
        assert_eq!(journal.last_seq(), host.sup().journal().last_seq());
    }
}

/// Runs `ops` on a fresh host with a two-thread runtime, bounded in time.
fn run_bounded(ops: Vec<Op>, backing: Backing) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), run(ops, backing)).await })
        .expect("one case took over 120 s");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The model over the in-memory journal: what recovery and compaction do, no disk.
    #[test]
    fn random_reloads_crashes_and_recoveries_keep_the_journal_equal_to_the_model(
        ops in proptest::collection::vec(op(), 1..=30)
    ) {
        run_bounded(ops, Backing::Memory(Arc::new(MemoryJournal::new())));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 6,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The same model over the sled journal, reopened from disk after every crash.
    #[test]
    fn the_model_holds_with_the_journal_on_disk(ops in proptest::collection::vec(op(), 1..=30)) {
        run_bounded(ops, Backing::Disk);
    }
}

/// One fixed sequence through every kind of step, so a plain run always covers them.
#[test]
fn every_kind_of_step_in_one_sequence() {
    for backing in [
        Backing::Memory(Arc::new(MemoryJournal::new())),
        Backing::Disk,
    ] {
        run_bounded(every_kind_of_step(), backing);
    }
}

fn every_kind_of_step() -> Vec<Op> {
    vec![
        Op::Rollback,
        Op::Crash,
        Op::Activate(0),
        Op::ActivateBad(Flaw::BuildFails),
        Op::Activate(1),
        Op::ActivateBad(Flaw::StartFails),
        Op::DryRun(2),
        Op::DryRunBad(Flaw::Unhealthy),
        Op::CrashDuring(Hang::Build),
        Op::Rollback,
        Op::CrashDuring(Hang::Start),
        Op::Compact(0),
        Op::Rollback,
        Op::CrashDuring(Hang::Check),
        Op::Crash,
        Op::ActivateBad(Flaw::Unhealthy),
        Op::Compact(1),
        Op::Activate(3),
    ]
}
