//! `decide` (command → events or a typed rejection) and `evolve` (state + event → state).

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind};
use crate::state::{Candidate, Instance, Reload, ReloadState, Slot};
use crate::types::{
    ArtifactRef, Endpoint, Generation, Mode, ProcessIdentity, Reason, ReloadId, SlotName, Stage,
};

/// What the runtime asks the state machine to record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Record a candidate that is now in the store. Starts a reload.
    Stage {
        /// The new reload's id.
        reload: ReloadId,
        /// Target slot.
        slot: SlotName,
        /// What the reload is for.
        mode: Mode,
        /// The staged artifact.
        artifact: ArtifactRef,
    },
    /// Record a reload whose artifact could not be staged (missing, unreadable, disk full …).
    FailStaging {
        /// The reload's id.
        reload: ReloadId,
        /// Target slot.
        slot: SlotName,
        /// What the reload was for.
        mode: Mode,
        /// Why staging failed.
        reason: Reason,
    },
    /// Record that the candidate was spawned.
    RecordLaunch {
        /// The reload.
        reload: ReloadId,
        /// The candidate's process.
        process: Option<ProcessIdentity>,
        /// Its log file.
        log_path: Option<String>,
    },
    /// Record an accepted handshake.
    RecordHandshake {
        /// The reload.
        reload: ReloadId,
        /// What the handshake said.
        endpoint: Option<Endpoint>,
    },
    /// Record that the probe passed.
    RecordProbe {
        /// The reload.
        reload: ReloadId,
    },
    /// Move the active marker to the candidate (commit point).
    Commit {
        /// The reload.
        reload: ReloadId,
    },
    /// Record that a dry run passed and its candidate was discarded.
    PassDryRun {
        /// The reload.
        reload: ReloadId,
    },
    /// Record that the reload failed (or was cancelled or recovered) and its candidate stopped.
    Fail {
        /// The reload.
        reload: ReloadId,
        /// Why.
        reason: Reason,
    },
    /// Record that a former active generation was drained and stopped.
    Retire {
        /// The slot.
        slot: SlotName,
        /// The generation, which must be waiting to retire.
        generation: Generation,
    },
    /// Record that the active generation now runs in a new process.
    Relaunch {
        /// The slot.
        slot: SlotName,
        /// The generation, which must be the active one.
        generation: Generation,
        /// The new process.
        process: Option<ProcessIdentity>,
        /// Its log file.
        log_path: Option<String>,
        /// Its handshake.
        endpoint: Option<Endpoint>,
    },
    /// Record that the active generation's process was stopped or found dead.
    Stop {
        /// The slot.
        slot: SlotName,
        /// The generation, which must be the active one.
        generation: Generation,
        /// Why.
        reason: Reason,
    },
    /// Move the active marker to the candidate provisionally (the bake's commit point); the
    /// previous active generation becomes the warm standby.
    CommitBaking {
        /// The reload (in `Probed`).
        reload: ReloadId,
        /// The bake's deadline, in milliseconds since the Unix epoch (UTC).
        until_ms: u64,
    },
    /// End a bake with the candidate active for good.
    Confirm {
        /// The baking reload.
        reload: ReloadId,
    },
    /// End a bake by moving the marker back to the standby.
    Revert {
        /// The baking reload.
        reload: ReloadId,
        /// Why.
        reason: Reason,
    },
    /// Record the intent to relaunch the stopped active generation (keep-alive restart),
    /// before anything is spawned.
    Restart {
        /// The slot.
        slot: SlotName,
        /// The generation, which must be the active one and recorded stopped.
        generation: Generation,
    },
    /// Take over a live process of a reload the journal does not know as the slot's active
    /// generation (`tryswap recover --adopt`). The reload is created committed; the former
    /// active generation waits to be retired.
    Adopt {
        /// The process's reload tag (unknown to the journal).
        reload: ReloadId,
        /// The slot.
        slot: SlotName,
        /// The process's generation: newer than any the slot gave out.
        generation: Generation,
        /// Its artifact in the store.
        artifact: ArtifactRef,
        /// Its process.
        process: Option<ProcessIdentity>,
        /// Its log file.
        log_path: Option<String>,
        /// Its handshake.
        endpoint: Option<Endpoint>,
        /// What was found.
        reason: Reason,
    },
}

impl Command {
    /// Short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Stage { .. } => "stage",
            Command::FailStaging { .. } => "fail-staging",
            Command::RecordLaunch { .. } => "record-launch",
            Command::RecordHandshake { .. } => "record-handshake",
            Command::RecordProbe { .. } => "record-probe",
            Command::Commit { .. } => "commit",
            Command::PassDryRun { .. } => "pass-dry-run",
            Command::Fail { .. } => "fail",
            Command::Retire { .. } => "retire",
            Command::Relaunch { .. } => "relaunch",
            Command::Stop { .. } => "stop",
            Command::CommitBaking { .. } => "commit-baking",
            Command::Confirm { .. } => "confirm",
            Command::Revert { .. } => "revert",
            Command::Restart { .. } => "restart",
            Command::Adopt { .. } => "adopt",
        }
    }
}

/// Why a command was refused. Refusals change nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The slot already has a non-terminal reload.
    #[error("slot {slot} is busy: reload {in_flight} is in progress")]
    Conflict {
        /// The slot.
        slot: SlotName,
        /// The reload in progress.
        in_flight: ReloadId,
    },
    /// No reload with this id exists.
    #[error("unknown reload {0}")]
    UnknownReload(ReloadId),
    /// A reload with this id already exists.
    #[error("reload {0} already exists")]
    DuplicateReload(ReloadId),
    /// The slot has never been used.
    #[error("unknown slot {0}")]
    UnknownSlot(SlotName),
    /// The slot never had this generation active.
    #[error("slot {slot} has no generation {generation} to roll back to")]
    UnknownGeneration {
        /// The slot.
        slot: SlotName,
        /// The generation asked for.
        generation: Generation,
    },
    /// A rollback was staged with an artifact other than the target generation's.
    #[error(
        "slot {slot}: rollback to generation {generation} must use that generation's artifact"
    )]
    ArtifactMismatch {
        /// The slot.
        slot: SlotName,
        /// The rollback target.
        generation: Generation,
    },
    /// The reload is finished; nothing can change it.
    #[error("reload {reload} is already {state}; {command} is not allowed")]
    Terminal {
        /// The reload.
        reload: ReloadId,
        /// Its terminal state's name.
        state: &'static str,
        /// The refused command.
        command: &'static str,
    },
    /// The command does not follow from the reload's current state.
    #[error("reload {reload} is {state}; {command} is not allowed there")]
    IllegalTransition {
        /// The reload.
        reload: ReloadId,
        /// Its state's name.
        state: &'static str,
        /// The refused command.
        command: &'static str,
    },
    /// A dry run may never move the active marker.
    #[error("reload {0} is a dry run; it cannot be committed")]
    DryRunCannotCommit(ReloadId),
    /// Only a dry run can pass as a dry run.
    #[error("reload {0} is not a dry run")]
    NotDryRun(ReloadId),
    /// The slot's active generation changed after the reload was staged.
    #[error("slot {slot}: active generation changed since staging (expected {expected:?}, found {found:?})")]
    StaleActive {
        /// The slot.
        slot: SlotName,
        /// Active generation at staging.
        expected: Option<Generation>,
        /// Active generation now.
        found: Option<Generation>,
    },
    /// The generation named is not the slot's active one.
    #[error("slot {slot}: generation {generation} is not active")]
    NotActive {
        /// The slot.
        slot: SlotName,
        /// The generation named.
        generation: Generation,
    },
    /// The active generation is already recorded as stopped.
    #[error("slot {slot}: generation {generation} is already stopped")]
    AlreadyStopped {
        /// The slot.
        slot: SlotName,
        /// The generation.
        generation: Generation,
    },
    /// The active generation is already recorded as running (or being restarted).
    #[error("slot {slot}: generation {generation} is already running")]
    AlreadyRunning {
        /// The slot.
        slot: SlotName,
        /// The generation.
        generation: Generation,
    },
    /// The generation named is not waiting to be retired.
    #[error("slot {slot}: generation {generation} is not waiting to be retired")]
    NotRetiring {
        /// The slot.
        slot: SlotName,
        /// The generation named.
        generation: Generation,
    },
    /// The generation is the candidate or the standby of a bake in progress: it can be
    /// neither relaunched nor retired until the bake is confirmed or reverted.
    #[error("slot {slot}: generation {generation} belongs to the bake of reload {reload}; confirm or revert it first")]
    BakeInProgress {
        /// The slot.
        slot: SlotName,
        /// The generation named.
        generation: Generation,
        /// The baking reload.
        reload: ReloadId,
    },
    /// An adoption named a generation number the slot already gave out.
    #[error(
        "slot {slot}: generation {generation} is not newer than the journal's generations \
         (the next is {next}); only a generation the journal never gave out can be adopted"
    )]
    NotNewer {
        /// The slot.
        slot: SlotName,
        /// The generation named.
        generation: Generation,
        /// The slot's next generation number.
        next: Generation,
    },
    /// The event's slot does not match the reload's slot.
    #[error("reload {reload} belongs to slot {expected}, not {found}")]
    WrongSlot {
        /// The reload.
        reload: ReloadId,
        /// Its slot.
        expected: SlotName,
        /// The slot the event named.
        found: SlotName,
    },
}

/// Read access to the states `decide` needs. The journal implements it over its projections.
pub trait View {
    /// The slot's state, if the slot was ever used.
    fn slot(&self, name: &SlotName) -> Option<Slot>;
    /// The reload's state, if it exists.
    fn reload(&self, id: &ReloadId) -> Option<Reload>;
    /// The artifact of generation `generation` of slot `name`, if that generation was ever
    /// active there (and is still in the slot's history): one entry of the history
    /// [`history_entry`] builds. Only a rollback's `Stage` reads it, for its one target.
    fn history(&self, name: &SlotName, generation: Generation) -> Option<ArtifactRef>;
}

/// The part of the world one event touches: its slot and its reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The event's slot (a fresh slot if it was never used).
    pub slot: Slot,
    /// The event's reload, if it exists.
    pub reload: Option<Reload>,
}

impl Scope {
    /// Loads the scope of `event` from `view`.
    pub fn load(view: &impl View, event: &Event) -> Scope {
        Scope {
            slot: view
                .slot(&event.slot)
                .unwrap_or_else(|| Slot::new(event.slot.clone())),
            reload: view.reload(&event.reload),
        }
    }
}

fn reload_of(view: &impl View, id: ReloadId, command: &Command) -> Result<Reload, Rejected> {
    let reload = view.reload(&id).ok_or(Rejected::UnknownReload(id))?;
    if reload.state.is_terminal() {
        return Err(Rejected::Terminal {
            reload: id,
            state: reload.state.name(),
            command: command.name(),
        });
    }
    Ok(reload)
}

fn expect_state(reload: &Reload, want: &ReloadState, command: &Command) -> Result<(), Rejected> {
    if &reload.state == want {
        Ok(())
    } else {
        Err(illegal(reload, command))
    }
}

fn event(reload: &Reload, kind: EventKind) -> Vec<Event> {
    vec![Event {
        reload: reload.id,
        slot: reload.slot.clone(),
        kind,
    }]
}

/// Decides what a command means in the current state: the events to append, or why not.
///
/// Never panics, never changes anything: applying the returned events with [`evolve`] is the
/// caller's job (the journal does it in one transaction).
pub fn decide(view: &impl View, command: &Command) -> Result<Vec<Event>, Rejected> {
    match command {
        Command::Stage {
            reload,
            slot,
            mode,
            artifact,
        } => {
            let state = free_slot_for_new(view, *reload, slot)?;
            if let Mode::Rollback { to } = mode {
                match view.history(slot, *to).as_ref() {
                    None => {
                        return Err(Rejected::UnknownGeneration {
                            slot: slot.clone(),
                            generation: *to,
                        })
                    }
                    Some(known) if known != artifact => {
                        return Err(Rejected::ArtifactMismatch {
                            slot: slot.clone(),
                            generation: *to,
                        })
                    }
                    Some(_) => {}
                }
            }
            Ok(vec![Event {
                reload: *reload,
                slot: slot.clone(),
                kind: EventKind::Staged {
                    mode: *mode,
                    generation: state.next_generation,
                    artifact: artifact.clone(),
                    previous: state.active_generation(),
                },
            }])
        }
        Command::FailStaging {
            reload,
            slot,
            mode,
            reason,
        } => {
            if view.reload(reload).is_some() {
                return Err(Rejected::DuplicateReload(*reload));
            }
            Ok(vec![Event {
                reload: *reload,
                slot: slot.clone(),
                kind: EventKind::StagingFailed {
                    mode: *mode,
                    reason: reason.clone(),
                },
            }])
        }
        Command::RecordLaunch {
            reload,
            process,
            log_path,
        } => {
            let r = reload_of(view, *reload, command)?;
            expect_state(&r, &ReloadState::Staged, command)?;
            Ok(event(
                &r,
                EventKind::Launched {
                    process: process.clone(),
                    log_path: log_path.clone(),
                },
            ))
        }
        Command::RecordHandshake { reload, endpoint } => {
            let r = reload_of(view, *reload, command)?;
            expect_state(&r, &ReloadState::Launched, command)?;
            Ok(event(
                &r,
                EventKind::Validated {
                    endpoint: endpoint.clone(),
                },
            ))
        }
        Command::RecordProbe { reload } => {
            let r = reload_of(view, *reload, command)?;
            expect_state(&r, &ReloadState::Validated, command)?;
            Ok(event(&r, EventKind::Probed))
        }
        Command::Commit { reload } => {
            let r = committable(view, *reload, command)?;
            Ok(event(&r, EventKind::Activated))
        }
        Command::CommitBaking { reload, until_ms } => {
            let r = committable(view, *reload, command)?;
            Ok(event(
                &r,
                EventKind::ActivatedBaking {
                    until_ms: *until_ms,
                },
            ))
        }
        Command::Confirm { reload } => {
            let r = baking(view, *reload, command)?;
            Ok(event(&r, EventKind::Confirmed))
        }
        Command::Revert { reload, reason } => {
            let r = baking(view, *reload, command)?;
            Ok(event(
                &r,
                EventKind::Reverted {
                    reason: reason.clone(),
                },
            ))
        }
        Command::PassDryRun { reload } => {
            let r = reload_of(view, *reload, command)?;
            expect_state(&r, &ReloadState::Probed, command)?;
            if r.mode != Mode::DryRun {
                return Err(Rejected::NotDryRun(r.id));
            }
            Ok(event(&r, EventKind::DryRunPassed))
        }
        Command::Fail { reload, reason } => {
            let r = reload_of(view, *reload, command)?;
            if r.state.bake_until_ms().is_some() {
                // The candidate holds the marker: only a revert can take it back.
                return Err(illegal(&r, command));
            }
            // Non-terminal states always have a next stage.
            let stage = r.state.next_stage().unwrap_or(Stage::Active);
            Ok(event(
                &r,
                EventKind::RolledBack {
                    stage,
                    reason: reason.clone(),
                },
            ))
        }
        Command::Retire { slot, generation } => {
            let state = view
                .slot(slot)
                .ok_or_else(|| Rejected::UnknownSlot(slot.clone()))?;
            if let Some(bake) = bake_of(view, &state) {
                if bake.previous == Some(*generation) {
                    return Err(Rejected::BakeInProgress {
                        slot: slot.clone(),
                        generation: *generation,
                        reload: bake.id,
                    });
                }
            }
            let old = state
                .retiring
                .iter()
                .find(|i| i.generation == *generation)
                .ok_or_else(|| Rejected::NotRetiring {
                    slot: slot.clone(),
                    generation: *generation,
                })?;
            Ok(vec![Event {
                reload: old.reload,
                slot: slot.clone(),
                kind: EventKind::Retired {
                    generation: *generation,
                },
            }])
        }
        Command::Relaunch {
            slot,
            generation,
            process,
            log_path,
            endpoint,
        } => {
            let active = active_instance(view, slot, *generation)?;
            not_baking(view, slot, &active)?;
            Ok(vec![Event {
                reload: active.reload,
                slot: slot.clone(),
                kind: EventKind::Relaunched {
                    generation: *generation,
                    process: process.clone(),
                    log_path: log_path.clone(),
                    endpoint: endpoint.clone(),
                },
            }])
        }
        Command::Restart { slot, generation } => {
            let active = active_instance(view, slot, *generation)?;
            if active.running {
                return Err(Rejected::AlreadyRunning {
                    slot: slot.clone(),
                    generation: *generation,
                });
            }
            not_baking(view, slot, &active)?;
            Ok(vec![Event {
                reload: active.reload,
                slot: slot.clone(),
                kind: EventKind::Restarting {
                    generation: *generation,
                },
            }])
        }
        Command::Adopt {
            reload,
            slot,
            generation,
            artifact,
            process,
            log_path,
            endpoint,
            reason,
        } => {
            let state = free_slot_for_new(view, *reload, slot)?;
            if *generation < state.next_generation {
                return Err(Rejected::NotNewer {
                    slot: slot.clone(),
                    generation: *generation,
                    next: state.next_generation,
                });
            }
            Ok(vec![Event {
                reload: *reload,
                slot: slot.clone(),
                kind: EventKind::Adopted {
                    generation: *generation,
                    artifact: artifact.clone(),
                    previous: state.active_generation(),
                    process: process.clone(),
                    log_path: log_path.clone(),
                    endpoint: endpoint.clone(),
                    reason: reason.clone(),
                },
            }])
        }
        Command::Stop {
            slot,
            generation,
            reason,
        } => {
            let active = active_instance(view, slot, *generation)?;
            if !active.running {
                return Err(Rejected::AlreadyStopped {
                    slot: slot.clone(),
                    generation: *generation,
                });
            }
            Ok(vec![Event {
                reload: active.reload,
                slot: slot.clone(),
                kind: EventKind::Stopped {
                    generation: *generation,
                    reason: reason.clone(),
                },
            }])
        }
    }
}

/// The state of `slot` for a reload `reload` that starts now: the id must be new and the
/// slot must have no reload in flight.
fn free_slot_for_new(
    view: &impl View,
    reload: ReloadId,
    slot: &SlotName,
) -> Result<Slot, Rejected> {
    if view.reload(&reload).is_some() {
        return Err(Rejected::DuplicateReload(reload));
    }
    let state = view.slot(slot).unwrap_or_else(|| Slot::new(slot.clone()));
    if let Some(in_flight) = state.in_flight {
        return Err(Rejected::Conflict {
            slot: slot.clone(),
            in_flight,
        });
    }
    Ok(state)
}

/// The reload of `reload` if it is in `Probed`, not a dry run, and the slot's active
/// generation is still the one it was staged against.
fn committable(view: &impl View, reload: ReloadId, command: &Command) -> Result<Reload, Rejected> {
    let r = reload_of(view, reload, command)?;
    expect_state(&r, &ReloadState::Probed, command)?;
    if r.mode == Mode::DryRun {
        return Err(Rejected::DryRunCannotCommit(r.id));
    }
    let found = view.slot(&r.slot).and_then(|s| s.active_generation());
    if found != r.previous {
        return Err(Rejected::StaleActive {
            slot: r.slot.clone(),
            expected: r.previous,
            found,
        });
    }
    Ok(r)
}

/// Refuses to relaunch or restart the candidate of the slot's bake in progress: a baking
/// candidate that dies is reverted, never restarted.
fn not_baking(view: &impl View, slot: &SlotName, active: &Instance) -> Result<(), Rejected> {
    match view
        .slot(slot)
        .and_then(|state| bake_of(view, &state))
        .filter(|bake| bake.id == active.reload)
    {
        Some(bake) => Err(Rejected::BakeInProgress {
            slot: slot.clone(),
            generation: active.generation,
            reload: bake.id,
        }),
        None => Ok(()),
    }
}

/// The reload of `reload` if it is baking.
fn baking(view: &impl View, reload: ReloadId, command: &Command) -> Result<Reload, Rejected> {
    let r = reload_of(view, reload, command)?;
    if r.state.bake_until_ms().is_none() {
        return Err(illegal(&r, command));
    }
    Ok(r)
}

/// The slot's baking reload, if its in-flight reload is baking.
fn bake_of(view: &impl View, slot: &Slot) -> Option<Reload> {
    slot.in_flight
        .and_then(|id| view.reload(&id))
        .filter(|r| r.state.bake_until_ms().is_some())
}

fn illegal(reload: &Reload, command: &Command) -> Rejected {
    Rejected::IllegalTransition {
        reload: reload.id,
        state: reload.state.name(),
        command: command.name(),
    }
}

fn active_instance(
    view: &impl View,
    slot: &SlotName,
    generation: Generation,
) -> Result<Instance, Rejected> {
    let state = view
        .slot(slot)
        .ok_or_else(|| Rejected::UnknownSlot(slot.clone()))?;
    match state.active {
        Some(active) if active.generation == generation => Ok(active),
        _ => Err(Rejected::NotActive {
            slot: slot.clone(),
            generation,
        }),
    }
}

/// The command that, decided in the right state, yields exactly `event`.
///
/// Used to check that a stored event was a legal transition: see [`check`].
pub fn command_for(event: &Event) -> Command {
    let reload = event.reload;
    match &event.kind {
        EventKind::StagingFailed { mode, reason } => Command::FailStaging {
            reload,
            slot: event.slot.clone(),
            mode: *mode,
            reason: reason.clone(),
        },
        EventKind::Staged { mode, artifact, .. } => Command::Stage {
            reload,
            slot: event.slot.clone(),
            mode: *mode,
            artifact: artifact.clone(),
        },
        EventKind::Launched { process, log_path } => Command::RecordLaunch {
            reload,
            process: process.clone(),
            log_path: log_path.clone(),
        },
        EventKind::Validated { endpoint } => Command::RecordHandshake {
            reload,
            endpoint: endpoint.clone(),
        },
        EventKind::Probed => Command::RecordProbe { reload },
        EventKind::Activated => Command::Commit { reload },
        EventKind::RolledBack { reason, .. } => Command::Fail {
            reload,
            reason: reason.clone(),
        },
        EventKind::DryRunPassed => Command::PassDryRun { reload },
        EventKind::Retired { generation } => Command::Retire {
            slot: event.slot.clone(),
            generation: *generation,
        },
        EventKind::Relaunched {
            generation,
            process,
            log_path,
            endpoint,
        } => Command::Relaunch {
            slot: event.slot.clone(),
            generation: *generation,
            process: process.clone(),
            log_path: log_path.clone(),
            endpoint: endpoint.clone(),
        },
        EventKind::Stopped { generation, reason } => Command::Stop {
            slot: event.slot.clone(),
            generation: *generation,
            reason: reason.clone(),
        },
        EventKind::ActivatedBaking { until_ms } => Command::CommitBaking {
            reload,
            until_ms: *until_ms,
        },
        EventKind::Confirmed => Command::Confirm { reload },
        EventKind::Reverted { reason } => Command::Revert {
            reload,
            reason: reason.clone(),
        },
        EventKind::Restarting { generation } => Command::Restart {
            slot: event.slot.clone(),
            generation: *generation,
        },
        EventKind::Adopted {
            generation,
            artifact,
            process,
            log_path,
            endpoint,
            reason,
            ..
        } => Command::Adopt {
            reload,
            slot: event.slot.clone(),
            generation: *generation,
            artifact: artifact.clone(),
            process: process.clone(),
            log_path: log_path.clone(),
            endpoint: endpoint.clone(),
            reason: reason.clone(),
        },
    }
}

/// Why a stored event is not a legal transition from the state before it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Illegal {
    /// The state machine refuses the command behind the event.
    #[error("{0}")]
    Rejected(#[from] Rejected),
    /// The state machine would have recorded something else.
    #[error("the state machine would have recorded {expected:?}, the journal holds {found:?}")]
    Mismatch {
        /// What decide yields.
        expected: Vec<Event>,
        /// The stored event.
        found: Box<Event>,
    },
}

/// Checks that `event` is exactly what [`decide`] yields for it in the state `view` holds.
pub fn check(view: &impl View, event: &Event) -> Result<(), Illegal> {
    if let Some(reload) = view.reload(&event.reload) {
        if reload.slot != event.slot {
            return Err(Rejected::WrongSlot {
                reload: event.reload,
                expected: reload.slot,
                found: event.slot.clone(),
            }
            .into());
        }
    }
    let expected = decide(view, &command_for(event))?;
    if expected.len() == 1 && &expected[0] == event {
        Ok(())
    } else {
        Err(Illegal::Mismatch {
            expected,
            found: Box::new(event.clone()),
        })
    }
}

/// Folds one event into the part of the world it touches.
///
/// Total: an event that does not fit (which [`check`] would flag) leaves what it cannot
/// apply unchanged rather than panicking.
pub fn evolve(scope: Scope, event: &Event) -> Scope {
    let Scope {
        mut slot,
        mut reload,
    } = scope;
    match &event.kind {
        EventKind::StagingFailed { mode, reason } => {
            reload = Some(Reload {
                id: event.reload,
                slot: event.slot.clone(),
                mode: *mode,
                candidate: None,
                previous: slot.active_generation(),
                state: ReloadState::RolledBack {
                    stage: Stage::Staged,
                    reason: reason.clone(),
                },
                process: None,
                log_path: None,
                endpoint: None,
            });
        }
        EventKind::Staged {
            mode,
            generation,
            artifact,
            previous,
        } => {
            reload = Some(Reload {
                id: event.reload,
                slot: event.slot.clone(),
                mode: *mode,
                candidate: Some(Candidate {
                    generation: *generation,
                    artifact: artifact.clone(),
                }),
                previous: *previous,
                state: ReloadState::Staged,
                process: None,
                log_path: None,
                endpoint: None,
            });
            slot.in_flight = Some(event.reload);
            slot.next_generation = Generation(generation.0.saturating_add(1));
        }
        EventKind::Launched { process, log_path } => {
            if let Some(r) = reload.as_mut() {
                r.state = ReloadState::Launched;
                r.process = process.clone();
                r.log_path = log_path.clone();
            }
        }
        EventKind::Validated { endpoint } => {
            if let Some(r) = reload.as_mut() {
                r.state = ReloadState::Validated;
                r.endpoint = endpoint.clone();
            }
        }
        EventKind::Probed => {
            if let Some(r) = reload.as_mut() {
                r.state = ReloadState::Probed;
            }
        }
        EventKind::Activated | EventKind::ActivatedBaking { .. } => {
            if let Some(r) = reload.as_mut() {
                r.state = match &event.kind {
                    EventKind::ActivatedBaking { until_ms } => ReloadState::Baking {
                        until_ms: *until_ms,
                    },
                    _ => ReloadState::Active,
                };
                if let Some(candidate) = &r.candidate {
                    if let Some(old) = slot.active.take() {
                        slot.retiring.push(old);
                    }
                    slot.active = Some(Instance {
                        generation: candidate.generation,
                        artifact: candidate.artifact.clone(),
                        reload: r.id,
                        process: r.process.clone(),
                        log_path: r.log_path.clone(),
                        endpoint: r.endpoint.clone(),
                        running: true,
                    });
                }
            }
            if event.kind == EventKind::Activated {
                clear_in_flight(&mut slot, event.reload);
            }
        }
        EventKind::Confirmed => {
            if let Some(r) = reload.as_mut() {
                let until_ms = r.state.bake_until_ms().unwrap_or_default();
                r.state = ReloadState::Confirmed { until_ms };
            }
            clear_in_flight(&mut slot, event.reload);
        }
        EventKind::Reverted { reason } => {
            if let Some(r) = reload.as_mut() {
                let until_ms = r.state.bake_until_ms().unwrap_or_default();
                r.state = ReloadState::Reverted {
                    until_ms,
                    reason: reason.clone(),
                };
                if slot.active.as_ref().is_some_and(|a| a.reload == r.id) {
                    let standby = r.previous.and_then(|g| {
                        let at = slot.retiring.iter().position(|i| i.generation == g)?;
                        Some(slot.retiring.remove(at))
                    });
                    if let Some(candidate) = slot.active.take() {
                        slot.retiring.push(candidate);
                    }
                    slot.active = standby;
                }
            }
            clear_in_flight(&mut slot, event.reload);
        }
        EventKind::RolledBack { stage, reason } => {
            if let Some(r) = reload.as_mut() {
                r.state = ReloadState::RolledBack {
                    stage: *stage,
                    reason: reason.clone(),
                };
            }
            clear_in_flight(&mut slot, event.reload);
        }
        EventKind::DryRunPassed => {
            if let Some(r) = reload.as_mut() {
                r.state = ReloadState::DryRunPassed;
            }
            clear_in_flight(&mut slot, event.reload);
        }
        EventKind::Retired { generation } => {
            slot.retiring.retain(|i| i.generation != *generation);
        }
        EventKind::Relaunched {
            generation,
            process,
            log_path,
            endpoint,
        } => {
            if let Some(active) = slot.active.as_mut() {
                if active.generation == *generation {
                    active.process = process.clone();
                    active.log_path = log_path.clone();
                    active.endpoint = endpoint.clone();
                    active.running = true;
                }
            }
        }
        EventKind::Stopped { generation, .. } => {
            if let Some(active) = slot.active.as_mut() {
                if active.generation == *generation {
                    active.running = false;
                }
            }
        }
        EventKind::Restarting { generation } => {
            if let Some(active) = slot.active.as_mut() {
                if active.generation == *generation {
                    // Running as far as recovery is concerned, in a process not known yet.
                    active.process = None;
                    active.endpoint = None;
                    active.running = true;
                }
            }
        }
        EventKind::Adopted {
            generation,
            artifact,
            previous,
            process,
            log_path,
            endpoint,
            ..
        } => {
            if reload.is_none() {
                reload = Some(Reload {
                    id: event.reload,
                    slot: event.slot.clone(),
                    mode: Mode::Activate,
                    candidate: Some(Candidate {
                        generation: *generation,
                        artifact: artifact.clone(),
                    }),
                    previous: *previous,
                    state: ReloadState::Active,
                    process: process.clone(),
                    log_path: log_path.clone(),
                    endpoint: endpoint.clone(),
                });
                if let Some(old) = slot.active.take() {
                    slot.retiring.push(old);
                }
                slot.active = Some(Instance {
                    generation: *generation,
                    artifact: artifact.clone(),
                    reload: event.reload,
                    process: process.clone(),
                    log_path: log_path.clone(),
                    endpoint: endpoint.clone(),
                    running: true,
                });
                slot.next_generation = slot
                    .next_generation
                    .max(Generation(generation.0.saturating_add(1)));
            }
        }
    }
    Scope { slot, reload }
}

/// The history entry `event` adds to its slot: the generation and artifact of the candidate
/// an `Activated` or `ActivatedBaking` event makes active, or of the generation an `Adopted`
/// event adopts, given the event's reload as it was before the event (`None` for every other
/// event).
///
/// A slot's history (every generation that was ever active, for `rollback --to`) is not part
/// of [`Slot`]: it grows with every activation, so the journal keeps it as one entry per
/// generation beside the slot and [`View::history`] reads one entry back.
pub fn history_entry(reload: Option<&Reload>, event: &Event) -> Option<(Generation, ArtifactRef)> {
    match event.kind {
        EventKind::Activated | EventKind::ActivatedBaking { .. } => reload
            .filter(|r| r.id == event.reload)
            .and_then(|r| r.candidate.as_ref())
            .map(|c| (c.generation, c.artifact.clone())),
        // An adoption makes its generation active only when the reload is new.
        EventKind::Adopted {
            generation,
            ref artifact,
            ..
        } if reload.is_none() => Some((generation, artifact.clone())),
        _ => None,
    }
}

fn clear_in_flight(slot: &mut Slot, reload: ReloadId) {
    if slot.in_flight == Some(reload) {
        slot.in_flight = None;
    }
}
