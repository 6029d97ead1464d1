//! Model test: random command sequences with injected failures at every stage, checked
//! against a small reference model after every step.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use tryswap_fsm::{
    ArtifactRef, Command, Event, Generation, Mode, ProcessIdentity, Reason, ReasonKind, Reload,
    ReloadId, ReloadState, Sha256, SlotName, World,
};

const SLOTS: usize = 3;

fn slot_name(i: usize) -> SlotName {
    SlotName::new(format!("slot-{i}")).unwrap()
}

fn artifact(byte: u8) -> ArtifactRef {
    ArtifactRef {
        sha256: Sha256([byte; 32]),
        config_sha256: None,
    }
}

fn id(n: u64) -> ReloadId {
    ReloadId::from_u128(u128::from(n) + 1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Staged,
    Launched,
    Validated,
    Probed,
    /// Provisionally committed; the standby (the marker before, exactly) waits.
    Baking,
}

#[derive(Clone, Debug)]
struct InFlight {
    id: u64,
    phase: Phase,
    dry_run: bool,
    generation: u64,
    artifact: u8,
    bake: bool,
    standby: Option<(u64, bool)>,
}

#[derive(Clone, Debug, Default)]
struct ModelSlot {
    active: Option<(u64, bool)>,
    in_flight: Option<InFlight>,
    next_generation: u64,
    retiring: Vec<u64>,
    history: BTreeMap<u64, u8>,
}

#[derive(Clone, Debug)]
struct Model {
    slots: Vec<ModelSlot>,
    next_id: u64,
    finished: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
enum ModeChoice {
    Activate,
    DryRun,
    RollbackTo(u64),
}

#[derive(Clone, Debug)]
enum Step {
    Begin {
        slot: usize,
        id: u64,
        mode: ModeChoice,
        artifact: u8,
        staging_fails: bool,
        bake: bool,
    },
    Advance {
        slot: usize,
    },
    Fail {
        slot: usize,
        kind: ReasonKind,
    },
    Retire {
        slot: usize,
        generation: u64,
    },
    Stop {
        slot: usize,
    },
    Relaunch {
        slot: usize,
    },
    /// Revert the slot's baking reload (or try to, when none is baking).
    Revert {
        slot: usize,
    },
    /// A command that does not fit the state: must be rejected and change nothing.
    Wrong {
        slot: usize,
        which: u8,
    },
    /// Any command aimed at a finished reload: must be rejected.
    PokeFinished {
        pick: usize,
        which: u8,
    },
}

impl Model {
    /// Whether the fsm must accept `step` in this state.
    fn accepts(&self, step: &Step) -> bool {
        match step {
            Step::Begin {
                slot,
                mode,
                artifact,
                staging_fails,
                ..
            } => {
                if *staging_fails {
                    return true;
                }
                let s = &self.slots[*slot];
                if s.in_flight.is_some() {
                    return false;
                }
                match mode {
                    ModeChoice::RollbackTo(g) => s.history.get(g) == Some(artifact),
                    _ => true,
                }
            }
            Step::Advance { slot } => self.slots[*slot].in_flight.is_some(),
            Step::Fail { slot, .. } => self.slots[*slot]
                .in_flight
                .as_ref()
                .is_some_and(|f| f.phase != Phase::Baking),
            Step::Revert { slot } => self.slots[*slot]
                .in_flight
                .as_ref()
                .is_some_and(|f| f.phase == Phase::Baking),
            Step::Retire { slot, generation } => {
                let s = &self.slots[*slot];
                let standby = s
                    .in_flight
                    .as_ref()
                    .filter(|f| f.phase == Phase::Baking)
                    .and_then(|f| f.standby)
                    .map(|(g, _)| g);
                s.retiring.contains(generation) && standby != Some(*generation)
            }
            Step::Stop { slot } => matches!(self.slots[*slot].active, Some((_, true))),
            Step::Relaunch { slot } => {
                let s = &self.slots[*slot];
                let baking = s
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.phase == Phase::Baking);
                s.active.is_some() && !baking
            }
            Step::Wrong { .. } | Step::PokeFinished { .. } => false,
        }
    }

    fn apply(mut self, step: &Step) -> Model {
        let accepted = self.accepts(step);
        if let Step::Begin { id, .. } = step {
            self.next_id = self.next_id.max(id + 1);
        }
        if !accepted {
            return self;
        }
        match step {
            Step::Begin {
                slot,
                id,
                mode,
                artifact,
                staging_fails,
                bake,
            } => {
                if *staging_fails {
                    self.finished.push(*id);
                } else {
                    let s = &mut self.slots[*slot];
                    s.in_flight = Some(InFlight {
                        id: *id,
                        phase: Phase::Staged,
                        dry_run: matches!(mode, ModeChoice::DryRun),
                        generation: s.next_generation,
                        artifact: *artifact,
                        bake: *bake,
                        standby: None,
                    });
                    s.next_generation += 1;
                }
            }
            Step::Advance { slot } => {
                let s = &mut self.slots[*slot];
                let Some(mut f) = s.in_flight.take() else {
                    return self;
                };
                match f.phase {
                    Phase::Staged => f.phase = Phase::Launched,
                    Phase::Launched => f.phase = Phase::Validated,
                    Phase::Validated => f.phase = Phase::Probed,
                    Phase::Probed => {
                        if !f.dry_run {
                            let old = s.active.take();
                            if let Some((old, _)) = old {
                                s.retiring.push(old);
                            }
                            s.active = Some((f.generation, true));
                            s.history.insert(f.generation, f.artifact);
                            if f.bake {
                                f.phase = Phase::Baking;
                                f.standby = old;
                                s.in_flight = Some(f);
                                return self;
                            }
                        }
                        self.finished.push(f.id);
                        return self;
                    }
                    Phase::Baking => {
                        // Confirm: the standby stays waiting to retire.
                        self.finished.push(f.id);
                        return self;
                    }
                }
                s.in_flight = Some(f);
            }
            Step::Fail { slot, .. } => {
                if let Some(f) = self.slots[*slot].in_flight.take() {
                    self.finished.push(f.id);
                }
            }
            Step::Revert { slot } => {
                let s = &mut self.slots[*slot];
                if let Some(f) = s.in_flight.take() {
                    if let Some((g, _)) = f.standby {
                        s.retiring.retain(|r| *r != g);
                    }
                    if let Some((candidate, _)) = s.active.take() {
                        s.retiring.push(candidate);
                    }
                    s.active = f.standby;
                    self.finished.push(f.id);
                }
            }
            Step::Retire { slot, generation } => {
                self.slots[*slot].retiring.retain(|g| g != generation);
            }
            Step::Stop { slot } => {
                if let Some(a) = self.slots[*slot].active.as_mut() {
                    a.1 = false;
                }
            }
            Step::Relaunch { slot } => {
                if let Some(a) = self.slots[*slot].active.as_mut() {
                    a.1 = true;
                }
            }
            Step::Wrong { .. } | Step::PokeFinished { .. } => {}
        }
        self
    }
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            slots: vec![
                ModelSlot {
                    next_generation: 1,
                    ..ModelSlot::default()
                };
                SLOTS
            ],
            next_id: 0,
            finished: Vec::new(),
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        let next_id = state.next_id;
        let slot = 0..SLOTS;
        let kinds = prop_oneof![
            Just(ReasonKind::Error),
            Just(ReasonKind::Timeout),
            Just(ReasonKind::Cancelled),
            Just(ReasonKind::Recovered),
        ];
        let mode = prop_oneof![
            3 => Just(ModeChoice::Activate),
            1 => Just(ModeChoice::DryRun),
            1 => (1u64..6).prop_map(ModeChoice::RollbackTo),
        ];
        let finished = state.finished.len();
        prop_oneof![
            3 => (slot.clone(), mode, 0u8..4, proptest::bool::weighted(0.1), proptest::bool::weighted(0.4)).prop_map(
                move |(slot, mode, artifact, staging_fails, bake)| Step::Begin {
                    slot,
                    id: next_id,
                    mode,
                    artifact,
                    staging_fails,
                    bake,
                }
            ),
            2 => slot.clone().prop_map(|slot| Step::Revert { slot }),
            8 => slot.clone().prop_map(|slot| Step::Advance { slot }),
            2 => (slot.clone(), kinds).prop_map(|(slot, kind)| Step::Fail { slot, kind }),
            2 => (slot.clone(), 1u64..8).prop_map(|(slot, generation)| Step::Retire { slot, generation }),
            1 => slot.clone().prop_map(|slot| Step::Stop { slot }),
            1 => slot.clone().prop_map(|slot| Step::Relaunch { slot }),
            1 => (slot, 0u8..4).prop_map(|(slot, which)| Step::Wrong { slot, which }),
            1 => (0..finished.max(1), 0u8..6).prop_map(|(pick, which)| Step::PokeFinished { pick, which }),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, step: &Step) -> bool {
        match step {
            // After shrinking, ids must still be fresh.
            Step::Begin { id, .. } => *id >= state.next_id,
            Step::PokeFinished { pick, .. } => *pick < state.finished.len(),
            _ => true,
        }
    }

    fn apply(state: Model, step: &Step) -> Model {
        state.apply(step)
    }
}

struct Sut {
    world: World,
    /// The active marker (full instance) each bake found when it committed.
    standbys: BTreeMap<ReloadId, Option<tryswap_fsm::Instance>>,
    events: Vec<Event>,
    model_before: Model,
    terminal: BTreeMap<ReloadId, Reload>,
}

fn process(pid: u32) -> ProcessIdentity {
    ProcessIdentity {
        pid,
        start_time: u64::from(pid) * 7,
        boot_id: "boot".into(),
    }
}

fn reason(kind: ReasonKind) -> Reason {
    Reason {
        kind,
        message: format!("{kind:?} injected"),
    }
}

impl Sut {
    fn command(&self, step: &Step) -> Command {
        let model = &self.model_before;
        match step {
            Step::Begin {
                slot,
                id: n,
                mode,
                artifact: a,
                staging_fails,
                ..
            } => {
                let mode = match mode {
                    ModeChoice::Activate => Mode::Activate,
                    ModeChoice::DryRun => Mode::DryRun,
                    ModeChoice::RollbackTo(g) => Mode::Rollback { to: Generation(*g) },
                };
                if *staging_fails {
                    Command::FailStaging {
                        reload: id(*n),
                        slot: slot_name(*slot),
                        mode,
                        reason: Reason::error("artifact missing"),
                    }
                } else {
                    Command::Stage {
                        reload: id(*n),
                        slot: slot_name(*slot),
                        mode,
                        artifact: artifact(*a),
                    }
                }
            }
            Step::Advance { slot } => match &model.slots[*slot].in_flight {
                None => Command::RecordProbe { reload: id(9_999) },
                Some(f) => {
                    let reload = id(f.id);
                    match f.phase {
                        Phase::Staged => Command::RecordLaunch {
                            reload,
                            process: Some(process(1000 + f.id as u32)),
                            log_path: Some(format!("logs/{}.log", f.generation)),
                        },
                        Phase::Launched => Command::RecordHandshake {
                            reload,
                            endpoint: None,
                        },
                        Phase::Validated => Command::RecordProbe { reload },
                        Phase::Probed if f.dry_run => Command::PassDryRun { reload },
                        Phase::Probed if f.bake => Command::CommitBaking {
                            reload,
                            until_ms: 1_000 + f.id,
                        },
                        Phase::Probed => Command::Commit { reload },
                        Phase::Baking => Command::Confirm { reload },
                    }
                }
            },
            Step::Fail { slot, kind } => match &model.slots[*slot].in_flight {
                None => Command::Fail {
                    reload: id(9_998),
                    reason: reason(*kind),
                },
                Some(f) => Command::Fail {
                    reload: id(f.id),
                    reason: reason(*kind),
                },
            },
            Step::Revert { slot } => Command::Revert {
                reload: model.slots[*slot]
                    .in_flight
                    .as_ref()
                    .map_or(id(9_997), |f| id(f.id)),
                reason: Reason::error("candidate exited during the bake"),
            },
            Step::Retire { slot, generation } => Command::Retire {
                slot: slot_name(*slot),
                generation: Generation(*generation),
            },
            Step::Stop { slot } => Command::Stop {
                slot: slot_name(*slot),
                generation: model.slots[*slot]
                    .active
                    .map_or(Generation(1), |a| Generation(a.0)),
                reason: Reason::error("operator stop"),
            },
            Step::Relaunch { slot } => Command::Relaunch {
                slot: slot_name(*slot),
                generation: model.slots[*slot]
                    .active
                    .map_or(Generation(1), |a| Generation(a.0)),
                process: Some(process(5000)),
                log_path: None,
                endpoint: None,
            },
            Step::Wrong { slot, which } => {
                let s = &model.slots[*slot];
                match &s.in_flight {
                    // A command that skips or repeats a stage, or commits a dry run.
                    Some(f) => {
                        let reload = id(f.id);
                        let wrong = match f.phase {
                            Phase::Staged => [
                                Command::RecordHandshake {
                                    reload,
                                    endpoint: None,
                                },
                                Command::RecordProbe { reload },
                                Command::Commit { reload },
                                Command::PassDryRun { reload },
                            ],
                            Phase::Launched => [
                                Command::RecordLaunch {
                                    reload,
                                    process: None,
                                    log_path: None,
                                },
                                Command::RecordProbe { reload },
                                Command::Commit { reload },
                                Command::PassDryRun { reload },
                            ],
                            Phase::Validated => [
                                Command::RecordLaunch {
                                    reload,
                                    process: None,
                                    log_path: None,
                                },
                                Command::RecordHandshake {
                                    reload,
                                    endpoint: None,
                                },
                                Command::Commit { reload },
                                Command::PassDryRun { reload },
                            ],
                            Phase::Probed => {
                                let finish = if f.dry_run {
                                    Command::Commit { reload }
                                } else {
                                    Command::PassDryRun { reload }
                                };
                                [
                                    finish.clone(),
                                    Command::RecordProbe { reload },
                                    Command::RecordLaunch {
                                        reload,
                                        process: None,
                                        log_path: None,
                                    },
                                    finish,
                                ]
                            }
                            Phase::Baking => [
                                Command::Commit { reload },
                                Command::Fail {
                                    reload,
                                    reason: Reason::error("a bake is reverted, not failed"),
                                },
                                Command::CommitBaking {
                                    reload,
                                    until_ms: 5,
                                },
                                Command::RecordProbe { reload },
                            ],
                        };
                        wrong[usize::from(*which) % 4].clone()
                    }
                    // No reload in flight: anything aimed at an unknown reload.
                    None => Command::Commit {
                        reload: id(8_000 + u64::from(*which)),
                    },
                }
            }
            Step::PokeFinished { pick, which } => {
                let reload = id(model.finished[*pick]);
                match which {
                    0 => Command::Commit { reload },
                    1 => Command::Fail {
                        reload,
                        reason: Reason::cancelled("late"),
                    },
                    2 => Command::RecordLaunch {
                        reload,
                        process: None,
                        log_path: None,
                    },
                    3 => Command::Confirm { reload },
                    4 => Command::Revert {
                        reload,
                        reason: Reason::cancelled("late"),
                    },
                    _ => Command::Stage {
                        reload,
                        slot: slot_name(0),
                        mode: Mode::Activate,
                        artifact: artifact(0),
                    },
                }
            }
        }
    }
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Sut;
    type Reference = Reference;

    fn init_test(ref_state: &Model) -> Sut {
        Sut {
            world: World::default(),
            standbys: BTreeMap::new(),
            events: Vec::new(),
            model_before: ref_state.clone(),
            terminal: BTreeMap::new(),
        }
    }

    fn apply(mut sut: Sut, ref_state: &Model, step: Step) -> Sut {
        let expect_ok = sut.model_before.accepts(&step);
        let command = sut.command(&step);
        let before = sut.world.clone();
        match sut.world.execute(&command) {
            Ok(events) => {
                assert!(expect_ok, "accepted {command:?} which the model refuses");
                assert_eq!(events.len(), 1, "one event per command");
                match &command {
                    Command::CommitBaking { reload, .. } => {
                        let slot = &before.reloads[reload].slot;
                        let marker = before.slots.get(slot).and_then(|s| s.active.clone());
                        sut.standbys.insert(*reload, marker);
                    }
                    Command::Revert { reload, .. } => {
                        // A revert restores exactly the marker the bake found.
                        let slot = &before.reloads[reload].slot;
                        assert_eq!(
                            sut.world.slots[slot].active, sut.standbys[reload],
                            "revert of {reload} did not restore the previous marker"
                        );
                    }
                    _ => {}
                }
                sut.events.extend(events);
            }
            Err(rejected) => {
                assert!(
                    !expect_ok,
                    "refused {command:?} which the model accepts: {rejected}"
                );
                assert_eq!(before, sut.world, "a refused command changed the world");
            }
        }
        sut.model_before = ref_state.clone();
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        sut.world.check_invariants().unwrap();
        // Replaying the events yields exactly the state built step by step.
        assert_eq!(World::fold(&sut.events), sut.world);
        // Every stored event is a legal transition from the state before it.
        let mut replay = World::default();
        for event in &sut.events {
            tryswap_fsm::check(&replay, event).unwrap();
            replay.apply(event);
        }
        for (i, m) in model.slots.iter().enumerate() {
            let name = slot_name(i);
            let Some(s) = sut.world.slots.get(&name) else {
                assert!(m.active.is_none() && m.in_flight.is_none());
                continue;
            };
            assert_eq!(
                s.active.as_ref().map(|a| (a.generation.0, a.running)),
                m.active,
                "active marker of {name}"
            );
            assert_eq!(s.next_generation.0, m.next_generation);
            let retiring: BTreeSet<u64> = s.retiring.iter().map(|r| r.generation.0).collect();
            assert_eq!(retiring, m.retiring.iter().copied().collect());
            let history: BTreeMap<u64, u8> = sut
                .world
                .history
                .get(&name)
                .into_iter()
                .flatten()
                .map(|(g, a)| (g.0, a.sha256.0[0]))
                .collect();
            assert_eq!(history, m.history);
            match (&s.in_flight, &m.in_flight) {
                (None, None) => {}
                (Some(got), Some(want)) => {
                    assert_eq!(*got, id(want.id));
                    let state = &sut.world.reloads[got].state;
                    let expected = match want.phase {
                        Phase::Staged => ReloadState::Staged,
                        Phase::Launched => ReloadState::Launched,
                        Phase::Validated => ReloadState::Validated,
                        Phase::Probed => ReloadState::Probed,
                        Phase::Baking => ReloadState::Baking {
                            until_ms: 1_000 + want.id,
                        },
                    };
                    assert_eq!(state, &expected);
                }
                (got, want) => panic!("in-flight of {name}: {got:?} vs model {want:?}"),
            }
        }
        // Finished reloads are terminal.
        for n in &model.finished {
            assert!(sut.world.reloads[&id(*n)].state.is_terminal());
        }
    }

    fn teardown(sut: Sut, _model: Model) {
        // Terminal states never change: compare every terminal reload with the first time
        // it was seen terminal, by replaying prefixes.
        let mut seen = sut.terminal;
        let mut world = World::default();
        for event in &sut.events {
            world.apply(event);
            for (rid, reload) in &world.reloads {
                if reload.state.is_terminal() {
                    let first = seen.entry(*rid).or_insert_with(|| reload.clone());
                    assert_eq!(first, reload, "terminal reload {rid} changed");
                }
            }
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]
    #[test]
    fn reload_state_machine_matches_model(sequential 1..80 => Sut);
}
