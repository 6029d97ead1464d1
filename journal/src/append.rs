//! Appending: decide each command against the projections, number and chain the records,
//! fold them in. One algorithm for every store; a store supplies the projections a write
//! sees and keeps what the write stages (sled: inside its transaction; memory: in an
//! overlay it merges only when everything was accepted).

use std::cell::RefCell;
use std::path::Path;

use chrono::{DateTime, Utc};
use tryswap_fsm::{
    decide, ArtifactRef, Command, Generation, Reload, ReloadId, Slot, SlotName, View,
};

use crate::codec;
use crate::error::JournalError;
use crate::projection::{fold_record, ReloadView, SlotView};
use crate::record::{Record, RECORD_FORMAT};
use crate::witness::WitnessMark;

/// The projections one write sees and the place where it stages its changes.
///
/// Reads see what the write staged so far. Nothing staged is visible to others before the
/// store commits the write; a failed write is dropped whole.
pub(crate) trait Staging {
    /// The store's error inside a write.
    type Error;

    /// Turns a journal error (a rejection, an encoding failure) into one that aborts the
    /// write.
    fn abort(error: JournalError) -> Self::Error;

    /// The fsm state of slot `name` as the write left it so far.
    fn slot(&self, name: &SlotName) -> Result<Option<Slot>, Self::Error>;

    /// The projection of slot `name`, taken out for folding; [`Staging::put_slot`] gives
    /// it back.
    fn take_slot(&self, name: &SlotName) -> Result<Option<SlotView>, Self::Error>;

    /// Stages the new projection of a slot.
    fn put_slot(&self, view: SlotView) -> Result<(), Self::Error>;

    /// The projection of reload `id` as the write left it so far.
    fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, Self::Error>;

    /// Stages the new projection of a reload.
    fn put_reload(&self, view: ReloadView) -> Result<(), Self::Error>;

    /// One entry of slot `name`'s history as the write left it so far: the artifact of
    /// `generation`, if it was ever active (a rollback's `decide` reads its target).
    fn history(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, Self::Error>;

    /// Stages a new history entry (an activation): one key, whatever the history's length.
    fn put_history(
        &self,
        name: &SlotName,
        generation: Generation,
        artifact: &ArtifactRef,
    ) -> Result<(), Self::Error>;

    /// Stages a record, with its encoded form and chain value.
    fn put_record(&self, record: &Record, stored: Vec<u8>, chain: u32) -> Result<(), Self::Error>;
}

/// A [`View`] over a write's staged projections for `decide`; remembers the first read
/// failure (a `View` cannot return one).
struct Decider<'a, S: Staging> {
    staging: &'a S,
    failure: RefCell<Option<S::Error>>,
}

impl<S: Staging> Decider<'_, S> {
    fn note<T>(&self, result: Result<Option<T>, S::Error>) -> Option<T> {
        result.unwrap_or_else(|error| {
            let mut failure = self.failure.borrow_mut();
            if failure.is_none() {
                *failure = Some(error);
            }
            None
        })
    }
}

impl<S: Staging> View for Decider<'_, S> {
    fn slot(&self, name: &SlotName) -> Option<Slot> {
        self.note(self.staging.slot(name))
    }

    fn reload(&self, id: &ReloadId) -> Option<Reload> {
        self.note(self.staging.reload(id)).map(|v| v.reload)
    }

    fn history(&self, name: &SlotName, generation: Generation) -> Option<ArtifactRef> {
        self.note(self.staging.history(name, generation))
    }
}

/// Decides every command against the projections as left by the previous ones, stages the
/// records (numbered from `tip.seq + 1`, chained from `tip.chain`) and folds them into the
/// projections. Returns the records and the new tip. A rejection aborts the whole write
/// with [`JournalError::Rejected`]; `dir` names the journal in other errors.
pub(crate) fn append<S: Staging>(
    staging: &S,
    commands: &[Command],
    at: DateTime<Utc>,
    tip: WitnessMark,
    dir: &Path,
) -> Result<(Vec<Record>, WitnessMark), S::Error> {
    let mut tip = tip;
    let mut records = Vec::new();
    let (actor, reason) = crate::record::current_origin();
    for command in commands {
        let decider = Decider {
            staging,
            failure: RefCell::new(None),
        };
        let decided = decide(&decider, command);
        if let Some(failure) = decider.failure.into_inner() {
            return Err(failure);
        }
        for event in decided.map_err(|e| S::abort(e.into()))? {
            let seq = tip.seq.checked_add(1).ok_or_else(|| {
                S::abort(JournalError::Corrupt {
                    dir: dir.to_path_buf(),
                    what: "sequence numbers exhausted".to_owned(),
                })
            })?;
            let record = Record {
                format: RECORD_FORMAT,
                seq,
                at,
                reload: event.reload,
                slot: event.slot,
                event: event.kind,
                prev_chain: tip.chain,
                actor,
                reason: reason.clone(),
            };
            let chain = stage_record(staging, &record)?;
            tip = WitnessMark { seq, chain };
            records.push(record);
        }
    }
    Ok((records, tip))
}

/// Folds one record into the staged projections and stages it; returns its chain value.
/// Used by [`append`] and by the catch-up from the log, which folds records decided before.
pub(crate) fn stage_record<S: Staging>(staging: &S, record: &Record) -> Result<u32, S::Error> {
    let stored = codec::encode_record(record).map_err(|e| S::abort(e.into()))?;
    let chain = codec::stored_chain(&stored).unwrap_or_default();
    let folded = fold_record(
        staging.take_slot(&record.slot)?,
        staging.reload(&record.reload)?,
        record,
    );
    staging.put_slot(folded.slot)?;
    if let Some(reload_view) = folded.reload {
        staging.put_reload(reload_view)?;
    }
    if let Some((generation, artifact)) = &folded.history {
        staging.put_history(&record.slot, *generation, artifact)?;
    }
    staging.put_record(record, stored, chain)?;
    Ok(chain)
}
