//! Projections: the stored folds of the events, per slot and per reload.
//!
//! [`fold_record`] is the one fold used everywhere: inside the write transaction, by
//! `verify`, by `replay` and by compaction's base snapshot. It wraps `tryswap_fsm::evolve`
//! and adds the journal's own bookkeeping (timestamps and stage marks).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tryswap_fsm::{
    evolve, history_entry, ArtifactRef, Generation, Instance, Reload, ReloadId, Scope, Slot,
    SlotName, View, World,
};

use crate::record::Record;

/// The stored state of one slot: the fsm fold plus when things happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotView {
    /// The fsm's fold of every event of the slot.
    pub slot: Slot,
    /// When the current active generation became active (its `Activated` event's time);
    /// `None` when no generation is active.
    pub active_since: Option<DateTime<Utc>>,
    /// Time of the last event that touched the slot.
    pub updated: DateTime<Utc>,
}

impl SlotView {
    /// The view of a slot no event has touched (used by callers for configured slots the
    /// journal does not know yet; never stored).
    pub fn empty(name: SlotName) -> Self {
        SlotView {
            slot: Slot::new(name),
            active_since: None,
            updated: DateTime::<Utc>::UNIX_EPOCH,
        }
    }
}

/// A slot's history: the artifact of every generation that was ever active in it (and not
/// trimmed by a compaction), by generation. Stored as one key per generation, never inside
/// the slot's projection.
pub type History = BTreeMap<Generation, ArtifactRef>;

/// A slot projection together with the slot's whole history, laid out as journal format 1
/// stored a slot projection (the history was then the last field of the slot). The
/// compaction base keeps slots in this form (log frames of kind 3 and `meta`'s
/// `base/slot/<name>` values), so a base written before the history had its own keys reads
/// unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BaseSlot {
    slot: BaseSlotState,
    active_since: Option<DateTime<Utc>>,
    updated: DateTime<Utc>,
}

/// [`Slot`] with its history, field for field as format 1 encoded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BaseSlotState {
    name: SlotName,
    active: Option<Instance>,
    in_flight: Option<ReloadId>,
    next_generation: Generation,
    retiring: Vec<Instance>,
    history: History,
}

impl BaseSlot {
    /// The base form of `view` with `history`.
    pub(crate) fn new(view: &SlotView, history: History) -> BaseSlot {
        let slot = &view.slot;
        BaseSlot {
            slot: BaseSlotState {
                name: slot.name.clone(),
                active: slot.active.clone(),
                in_flight: slot.in_flight,
                next_generation: slot.next_generation,
                retiring: slot.retiring.clone(),
                history,
            },
            active_since: view.active_since,
            updated: view.updated,
        }
    }

    /// The slot's name.
    pub(crate) fn name(&self) -> &SlotName {
        &self.slot.name
    }

    /// The projection and the history apart.
    pub(crate) fn split(self) -> (SlotView, History) {
        let BaseSlotState {
            name,
            active,
            in_flight,
            next_generation,
            retiring,
            history,
        } = self.slot;
        let view = SlotView {
            slot: Slot {
                name,
                active,
                in_flight,
                next_generation,
                retiring,
            },
            active_since: self.active_since,
            updated: self.updated,
        };
        (view, history)
    }
}

/// One stage a reload reached, with the record that got it there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMark {
    /// The reload state's name after the event: `staged`, `launched`, `validated`,
    /// `probed`, `active`, `rolled_back` or `dry_run_passed`.
    pub state: String,
    /// The record's sequence number.
    pub seq: u64,
    /// The record's time.
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub at: DateTime<Utc>,
}

/// The stored state of one reload: the fsm fold plus its timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadView {
    /// The fsm's fold of the reload's events.
    pub reload: Reload,
    /// Every state the reload entered, oldest first (never empty for a stored view).
    pub stages: Vec<StageMark>,
    /// Time of the reload's first event.
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub created: DateTime<Utc>,
    /// Time it reached a terminal state, if it did.
    #[serde(default, deserialize_with = "crate::timestamp::deserialize_option")]
    pub finished: Option<DateTime<Utc>>,
}

impl ReloadView {
    /// Whether the reload is in a terminal state.
    pub fn is_terminal(&self) -> bool {
        self.reload.state.is_terminal()
    }

    /// Sequence number of the reload's first event (orders reloads by creation).
    pub fn created_seq(&self) -> u64 {
        self.stages.first().map_or(0, |m| m.seq)
    }
}

/// What one record changes: the slot's new view, the reload's new view (`None` if the record
/// names a reload that does not exist and does not create one, e.g. a `Retired` of a
/// compacted-away reload) and the history entry it adds (an activation's generation).
pub(crate) struct Folded {
    pub slot: SlotView,
    pub reload: Option<ReloadView>,
    pub history: Option<(Generation, ArtifactRef)>,
}

/// Folds one record into the slot and reload views it touches.
///
/// `slot` and `reload` are the views before the record (`None`: never seen).
pub(crate) fn fold_record(
    slot: Option<SlotView>,
    reload: Option<ReloadView>,
    record: &Record,
) -> Folded {
    let event = record.event();
    let history = history_entry(reload.as_ref().map(|v| &v.reload), &event);
    let (slot_before, since_before) = match slot {
        Some(view) => (view.slot, view.active_since),
        None => (Slot::new(record.slot.clone()), None),
    };
    let active_before = slot_before
        .active
        .as_ref()
        .map(|a| (a.generation, a.reload));
    let scope = evolve(
        Scope {
            slot: slot_before,
            reload: reload.as_ref().map(|v| v.reload.clone()),
        },
        &event,
    );
    let active_after = scope.slot.active.as_ref().map(|a| (a.generation, a.reload));
    let active_since = if active_after == active_before {
        since_before
    } else {
        active_after.map(|_| record.at)
    };
    let slot_view = SlotView {
        slot: scope.slot,
        active_since,
        updated: record.at,
    };
    let transition = record.event.is_reload_transition();
    let reload_view = scope.reload.map(|after| {
        let mark = StageMark {
            state: after.state.name().to_owned(),
            seq: record.seq,
            at: record.at,
        };
        let terminal = after.state.is_terminal();
        match reload {
            Some(mut view) => {
                if transition {
                    view.stages.push(mark);
                }
                if terminal && view.finished.is_none() {
                    view.finished = Some(record.at);
                }
                view.reload = after;
                view
            }
            None => ReloadView {
                reload: after,
                stages: vec![mark],
                created: record.at,
                finished: terminal.then_some(record.at),
            },
        }
    });
    Folded {
        slot: slot_view,
        reload: reload_view,
        history,
    }
}

/// Every slot and reload view as of one sequence number: what `replay` returns and what
/// `verify` rebuilds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayState {
    /// The last sequence number folded in (0: none).
    pub seq: u64,
    /// Slot views by name.
    pub slots: BTreeMap<SlotName, SlotView>,
    /// Reload views by id (compacted-away reloads are absent).
    pub reloads: BTreeMap<ReloadId, ReloadView>,
    /// Every slot's history (generations a compaction trimmed are absent).
    #[serde(default)]
    pub history: BTreeMap<SlotName, History>,
}

impl ReplayState {
    /// Folds `record` in and advances [`ReplayState::seq`] to its sequence number.
    pub fn apply(&mut self, record: &Record) {
        let slot = self.slots.remove(&record.slot);
        let reload = self.reloads.get(&record.reload).cloned();
        let folded = fold_record(slot, reload, record);
        self.slots.insert(record.slot.clone(), folded.slot);
        if let Some(reload) = folded.reload {
            self.reloads.insert(record.reload, reload);
        }
        if let Some((generation, artifact)) = folded.history {
            self.history
                .entry(record.slot.clone())
                .or_default()
                .insert(generation, artifact);
        }
        self.seq = record.seq;
    }

    /// The fsm part of the state, comparable with `tryswap_fsm::World::fold`.
    pub fn world(&self) -> World {
        World {
            slots: self
                .slots
                .iter()
                .map(|(name, view)| (name.clone(), view.slot.clone()))
                .collect(),
            reloads: self
                .reloads
                .iter()
                .map(|(id, view)| (*id, view.reload.clone()))
                .collect(),
            history: self.history.clone(),
        }
    }
}

impl View for ReplayState {
    fn slot(&self, name: &SlotName) -> Option<Slot> {
        self.slots.get(name).map(|v| v.slot.clone())
    }

    fn reload(&self, id: &ReloadId) -> Option<Reload> {
        self.reloads.get(id).map(|v| v.reload.clone())
    }

    fn history(&self, name: &SlotName, generation: Generation) -> Option<ArtifactRef> {
        self.history.get(name)?.get(&generation).cloned()
    }
}
