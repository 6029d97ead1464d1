//! tryswap's journal: an event log of reload events, with slot and reload projections,
//! verify, replay, export and compaction, behind the [`JournalStore`] trait.
//!
//! Every [`Record`] holds one `tryswap_fsm` event with a gap-free sequence number, a time
//! and a CRC chain link. [`JournalStore::execute`] decides a command against the stored
//! projections and appends the resulting events and the updated projections in one write;
//! after `Activated`, `Stopped` and the other write-ahead points
//! ([`Record::needs_durable_flush`]) it makes them durable before returning.
//!
//! Two stores keep the same contract: [`Journal`], crash-safe on disk (every write appended
//! to the segment log, synced at the write-ahead points, and folded into sled's index by a
//! thread of the handle shortly after; this crate is the only one that touches sled), and [`MemoryJournal`], in memory, for property tests and
//! embedders that need no durability. The on-disk format is described in `docs/journal.md`.
//!
//! ```
//! use chrono::Utc;
//! use tryswap_fsm::*;
//! use tryswap_journal::{Journal, JournalStore, MemoryJournal};
//! let dir = tempfile::tempdir().unwrap();
//! let stores: [Box<dyn JournalStore>; 2] =
//!     [Box::new(Journal::open(dir.path()).unwrap()), Box::new(MemoryJournal::new())];
//! let slot = SlotName::new("demo").unwrap();
//! let id = ReloadId::from_u128(1);
//! let artifact = ArtifactRef { sha256: Sha256([7; 32]), config_sha256: None };
//! let stage = Command::Stage { reload: id, slot: slot.clone(), mode: Mode::Activate, artifact };
//! for journal in &stores {
//!     let records = journal.execute(&stage, Utc::now()).unwrap();
//!     assert_eq!(records[0].seq, 1);
//!     assert_eq!(journal.slot(&slot).unwrap().unwrap().slot.in_flight, Some(id));
//!     // Staged is written, not synced: the commit's flush makes it durable.
//!     assert_eq!(journal.flush_count(), 0);
//!     assert!(journal.verify().unwrap().is_ok());
//! }
//! ```
#![warn(missing_docs)]

mod append;
pub mod archive;
mod backlog;
pub mod codec;
mod compact;
mod error;
mod export;
mod failure;
mod history;
pub mod index_mark;
mod journal;
pub mod layout;
mod lock;
mod log_journal;
mod log_read;
mod memory;
mod projection;
mod rebuild;
mod record;
mod replay;
mod report;
mod rewrite;
pub mod segment_log;
mod sled_dir;
mod snapshot;
mod store;
mod timestamp;
mod verify;
mod witness;

pub use codec::{decode_record, encode_record, stored_chain, CodecError};
pub use compact::DEFAULT_KEEP_PER_SLOT;
pub use error::JournalError;
pub use export::{salvage, salvage_with, ExportReport};
pub use journal::{Journal, CACHE_CAPACITY};
pub use layout::JOURNAL_FORMAT;
pub use lock::{DirLock, OWN_RELEASE_WAIT};
pub use log_journal::{open_for_command, LogJournal};
pub use log_read::{read_records, replay_log, verify_log, LogRead};
pub use memory::MemoryJournal;
pub use projection::{History, ReloadView, ReplayState, SlotView, StageMark};
pub use rebuild::{RebuildNote, FORMAT_BACKUP_DIR, MIGRATION_BACKUP_DIR, REBUILDS_FILE};
pub use record::{with_origin, Actor, ActorKind, Record, LEGACY_RECORD_FORMAT, RECORD_FORMAT};
pub use report::{CompactReport, Problem, ProblemKind, VerifyReport};
pub use segment_log::{LogBase, LogDamage, LogItem, LogItems, LogPosition, LogReader};
pub use snapshot::{open_for_reading, ReadScope, Snapshot, SnapshotStore, SNAPSHOT_FILE};
pub use store::{JournalStore, Records};
pub use witness::WitnessMark;

#[cfg(test)]
mod tests {
    #[test]
    fn the_journal_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<crate::Journal>();
        shared::<crate::MemoryJournal>();
        shared::<crate::LogJournal>();
        shared::<std::sync::Arc<dyn crate::JournalStore>>();
        shared::<crate::Record>();
        shared::<crate::JournalError>();
    }
}
