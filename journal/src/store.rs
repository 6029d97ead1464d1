//! [`JournalStore`]: what the runtime needs from a journal, whatever keeps the records.

use std::path::Path;

use chrono::{DateTime, Utc};
use tryswap_fsm::{ArtifactRef, Command, Generation, ReloadId, SlotName};

use crate::error::JournalError;
use crate::projection::{History, ReloadView, ReplayState, SlotView};
use crate::record::Record;
use crate::report::{CompactReport, VerifyReport};

/// The records from a sequence number on, in order (see [`JournalStore::events`]).
pub type Records = Box<dyn Iterator<Item = Result<Record, JournalError>> + Send + 'static>;

/// A journal of reload events with slot and reload projections.
///
/// Every implementation keeps the same contract, checked by one conformance suite
/// (`journal/tests/conformance.rs`) against each of them:
/// - a write decides its commands with the state machine (`tryswap_fsm::decide`) against
///   the projections, appends the resulting records with gap-free sequence numbers and
///   chain values, and folds them into the projections, all or nothing;
/// - the projections always equal the fold of the records (from the compaction base);
/// - every write is in the store when it returns (on disk: in the log, which a killed
///   process does not lose); a write holding an `Activated` record or another write-ahead
///   point ([`crate::Record::needs_durable_flush`]) returns only once it is as durable as
///   the store can make it (counted by [`JournalStore::flush_count`]);
/// - the records, their encoding and their chain are the same whatever the store.
///
/// Implementations: [`crate::Journal`] (sled on disk, crash-safe) and
/// [`crate::MemoryJournal`] (in memory, for tests and embedders that need no
/// durability).
pub trait JournalStore: Send + Sync + std::fmt::Debug {
    /// Where the journal lives, for messages (an in-memory journal gives its label).
    fn dir(&self) -> &Path;

    /// Whether writes are refused ([`JournalError::ReadOnly`]).
    fn is_read_only(&self) -> bool;

    /// Decides `command` against the projections and, if accepted, appends its records and
    /// updates the projections in one write. Returns the appended records.
    ///
    /// [`JournalError::Rejected`] when the state machine refuses (nothing written). After an
    /// `Activated` record (or another write-ahead point) the call returns only once the
    /// record is durable; an error from that flush means the record is committed but not
    /// known to be durable.
    fn execute(&self, command: &Command, at: DateTime<Utc>) -> Result<Vec<Record>, JournalError> {
        self.execute_all(std::slice::from_ref(command), at)
    }

    /// Like [`JournalStore::execute`] for several commands (possibly of different slots),
    /// all or nothing in one write; each is decided against the state the previous ones
    /// left. If any is rejected, nothing is written and that rejection is returned.
    fn execute_all(
        &self,
        commands: &[Command],
        at: DateTime<Utc>,
    ) -> Result<Vec<Record>, JournalError>;

    /// Marks the handle failed, as a failed sync does, and returns the error every later
    /// write and flush gets ([`JournalError::Failed`]) until the journal is reopened. The
    /// first cause is kept. Used by failure injection and by callers that learn of a
    /// failed sync of the journal's files by other means.
    fn fail(&self, cause: &str) -> JournalError;

    /// Why this handle failed, if it did (see [`JournalStore::fail`]).
    fn failure(&self) -> Option<String>;

    /// Makes every committed record durable. Not counted by
    /// [`JournalStore::flush_count`]; a no-op on a read-only handle.
    fn flush(&self) -> Result<(), JournalError>;

    /// [`JournalStore::flush`] for a process that exits next and leaves the handle open:
    /// what the next open does not rebuild by itself (derived indexes) may stay unsynced.
    /// The same as `flush` unless the store says otherwise.
    fn flush_for_exit(&self) -> Result<(), JournalError> {
        self.flush()
    }

    /// How many write-ahead flushes (after `Activated` records and the other write-ahead
    /// points) this handle
    /// made: one per write that holds such a record.
    fn flush_count(&self) -> u64;

    /// The last sequence number committed (0 for an empty journal).
    fn last_seq(&self) -> u64;

    /// The projection of slot `name`, if any event touched it.
    fn slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError>;

    /// Every slot projection, by name.
    fn slots(&self) -> Result<Vec<SlotView>, JournalError>;

    /// The projection of reload `id`, if it exists (and was not compacted away).
    fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError>;

    /// Every reload of `slot` the journal holds, oldest first (by first record).
    fn reloads_of(&self, slot: &SlotName) -> Result<Vec<ReloadView>, JournalError>;

    /// Slot `name`'s history: the artifact of every generation that was ever active there
    /// (and not trimmed by a compaction), oldest first; empty for a slot never used. What
    /// `rollback --to` can bring back and what `store gc` keeps. Kept apart from the slot's
    /// projection, one entry per generation, so a write costs the same however long it is.
    fn history(&self, name: &SlotName) -> Result<History, JournalError>;

    /// The artifact of generation `generation` of slot `name`, if it is in the slot's
    /// history. Stores override it to read the one entry.
    fn history_entry(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, JournalError> {
        Ok(self.history(name)?.remove(&generation))
    }

    /// Every reload that is not terminal, found through the slots' in-flight pointers, in
    /// slot order.
    fn in_flight(&self) -> Result<Vec<ReloadView>, JournalError> {
        let mut out = Vec::new();
        for slot in self.slots()? {
            if let Some(id) = slot.slot.in_flight {
                let view = self.reload(&id)?.ok_or_else(|| JournalError::Corrupt {
                    dir: self.dir().to_path_buf(),
                    what: format!(
                        "slot {} names in-flight reload {id}, which has no projection",
                        slot.slot.name
                    ),
                })?;
                out.push(view);
            }
        }
        Ok(out)
    }

    /// The records from sequence number `from_seq` on, in order (after compaction, only
    /// the kept ones). A record that cannot be read yields an error; iteration goes on.
    fn events(&self, from_seq: u64) -> Records;

    /// The state of every slot and reload after the record `until_seq`: the compaction
    /// base with the records after it up to `until_seq` folded in. A `until_seq` past the
    /// end gives the current state ([`ReplayState::seq`] says which point it is).
    ///
    /// [`JournalError::Compacted`] if `until_seq` is before the compaction base.
    fn replay(&self, until_seq: u64) -> Result<ReplayState, JournalError>;

    /// Re-folds the records from the compaction base and compares the result with the
    /// projections; checks sequence continuity, chain values and that every record is a
    /// legal transition in the state before it. Damage is reported as problems, not errors.
    fn verify(&self) -> Result<VerifyReport, JournalError>;

    /// Bytes the journal takes on disk (what compaction bounds; 0 for a store in memory).
    fn size_bytes(&self) -> u64 {
        0
    }

    /// Keeps the newest `keep_per_slot` terminal reloads of every slot (plus every
    /// non-terminal one, and those behind the active and retiring generations), drops the
    /// others' projections and records, and trims slot histories to the generations
    /// `rollback --to` keeps (see `docs/journal.md`); the current state becomes the
    /// compaction base.
    fn compact(&self, keep_per_slot: usize) -> Result<CompactReport, JournalError>;
}
