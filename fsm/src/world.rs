//! An in-memory world: every slot and reload, with the invariants DESIGN.md fixes.

use std::collections::BTreeMap;

use crate::event::Event;
use crate::machine::{decide, evolve, history_entry, Command, Rejected, Scope, View};
use crate::state::{Reload, Slot};
use crate::types::{ArtifactRef, Generation, ReloadId, SlotName};

/// Every slot and every reload, as folded from events.
///
/// Embedders and tests use it as the reference fold; the journal keeps the same fold as
/// on-disk projections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    /// Slots by name.
    pub slots: BTreeMap<SlotName, Slot>,
    /// Reloads by id.
    pub reloads: BTreeMap<ReloadId, Reload>,
    /// Every slot's history: the artifact of each generation that was ever active (see
    /// [`history_entry`]), by slot and generation.
    pub history: BTreeMap<SlotName, BTreeMap<Generation, ArtifactRef>>,
}

impl View for World {
    fn slot(&self, name: &SlotName) -> Option<Slot> {
        self.slots.get(name).cloned()
    }

    fn reload(&self, id: &ReloadId) -> Option<Reload> {
        self.reloads.get(id).cloned()
    }

    fn history(&self, name: &SlotName, generation: Generation) -> Option<ArtifactRef> {
        self.history.get(name)?.get(&generation).cloned()
    }
}

/// A broken invariant, found by [`World::check_invariants`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// More than one reload of a slot is not terminal.
    #[error("slot {slot} has {count} non-terminal reloads")]
    SeveralInFlight {
        /// The slot.
        slot: SlotName,
        /// How many.
        count: usize,
    },
    /// The slot's in-flight pointer disagrees with the reloads.
    #[error("slot {slot}: in-flight pointer {pointer:?} but non-terminal reload {actual:?}")]
    InFlightMismatch {
        /// The slot.
        slot: SlotName,
        /// What the slot says.
        pointer: Option<ReloadId>,
        /// What the reloads say.
        actual: Option<ReloadId>,
    },
    /// The active marker names a generation no committed reload of the slot produced.
    #[error("slot {slot}: active marker does not match a committed reload")]
    ActiveWithoutCommit {
        /// The slot.
        slot: SlotName,
    },
    /// A baking reload's candidate is not the active marker, or its standby is not waiting.
    #[error(
        "slot {slot}: a bake is in progress but its candidate is not active or its standby is gone"
    )]
    BakeMismatch {
        /// The slot.
        slot: SlotName,
    },
    /// A generation number was given out twice in one slot.
    #[error("slot {slot}: generation numbers are not unique")]
    DuplicateGeneration {
        /// The slot.
        slot: SlotName,
    },
}

impl World {
    /// Folds one event in.
    pub fn apply(&mut self, event: &Event) {
        let scope = Scope::load(self, event);
        if let Some((generation, artifact)) = history_entry(scope.reload.as_ref(), event) {
            self.history
                .entry(event.slot.clone())
                .or_default()
                .insert(generation, artifact);
        }
        let scope = evolve(scope, event);
        self.slots.insert(event.slot.clone(), scope.slot);
        if let Some(reload) = scope.reload {
            self.reloads.insert(reload.id, reload);
        }
    }

    /// Decides `command` and folds the resulting events in; returns them.
    pub fn execute(&mut self, command: &Command) -> Result<Vec<Event>, Rejected> {
        let events = decide(self, command)?;
        for event in &events {
            self.apply(event);
        }
        Ok(events)
    }

    /// The fold of `events` from an empty world.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> World {
        let mut world = World::default();
        for event in events {
            world.apply(event);
        }
        world
    }

    /// Checks the invariants of DESIGN.md that hold for any reachable world.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        for (name, slot) in &self.slots {
            let open: Vec<&Reload> = self
                .reloads
                .values()
                .filter(|r| &r.slot == name && !r.state.is_terminal())
                .collect();
            if open.len() > 1 {
                return Err(Violation::SeveralInFlight {
                    slot: name.clone(),
                    count: open.len(),
                });
            }
            let actual = open.first().map(|r| r.id);
            if actual != slot.in_flight {
                return Err(Violation::InFlightMismatch {
                    slot: name.clone(),
                    pointer: slot.in_flight,
                    actual,
                });
            }
            if let Some(active) = &slot.active {
                let committed = self.reloads.get(&active.reload).is_some_and(|r| {
                    r.state.is_committed()
                        && r.candidate
                            .as_ref()
                            .is_some_and(|c| c.generation == active.generation)
                });
                if !committed {
                    return Err(Violation::ActiveWithoutCommit { slot: name.clone() });
                }
            }
            if let Some(bake) = open.first().filter(|r| r.state.bake_until_ms().is_some()) {
                let candidate_active = slot.active.as_ref().is_some_and(|a| a.reload == bake.id);
                let standby_waits = bake
                    .previous
                    .is_none_or(|g| slot.retiring.iter().any(|i| i.generation == g));
                if !candidate_active || !standby_waits {
                    return Err(Violation::BakeMismatch { slot: name.clone() });
                }
            }
            let mut generations: Vec<_> = self
                .reloads
                .values()
                .filter(|r| &r.slot == name)
                .filter_map(|r| r.candidate.as_ref().map(|c| c.generation))
                .collect();
            let count = generations.len();
            generations.sort();
            generations.dedup();
            if generations.len() != count {
                return Err(Violation::DuplicateGeneration { slot: name.clone() });
            }
        }
        Ok(())
    }
}
