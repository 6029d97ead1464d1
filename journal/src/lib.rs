//! tryswap's journal: a crash-safe, sled-backed event log of reload events, with slot and
//! reload projections, verify, replay, export and compaction.
//!
//! Every [`Record`] holds one `tryswap_fsm` event with a gap-free sequence number, a time
//! and a CRC chain link. [`Journal::execute`] decides a command against the stored
//! projections and appends the resulting events and the updated projections in one sled
//! transaction; after `Staged`, `Activated` and `Stopped` it flushes and syncs before returning (the
//! write-ahead points of DESIGN.md). The on-disk format is described in `docs/journal.md`.
//!
//! ```
//! use chrono::Utc;
//! use tryswap_fsm::*;
//! use tryswap_journal::Journal;
//! let dir = tempfile::tempdir().unwrap();
//! let journal = Journal::open(dir.path()).unwrap();
//! let slot = SlotName::new("demo").unwrap();
//! let id = ReloadId::from_u128(1);
//! let artifact = ArtifactRef { sha256: Sha256([7; 32]), config_sha256: None };
//! let records = journal
//!     .execute(&Command::Stage { reload: id, slot: slot.clone(), mode: Mode::Activate, artifact }, Utc::now())
//!     .unwrap();
//! assert_eq!(records[0].seq, 1);
//! assert_eq!(journal.slot(&slot).unwrap().unwrap().slot.in_flight, Some(id));
//! assert!(journal.verify().unwrap().is_ok());
//! ```
#![warn(missing_docs)]

pub mod codec;
mod compact;
mod error;
mod export;
mod journal;
pub mod layout;
mod lock;
mod projection;
mod record;
mod replay;
mod rewrite;
mod verify;
mod witness;

pub use codec::{decode_record, encode_record, stored_chain, CodecError};
pub use compact::{CompactReport, DEFAULT_KEEP_PER_SLOT};
pub use error::JournalError;
pub use export::ExportReport;
pub use journal::{Journal, CACHE_CAPACITY};
pub use layout::JOURNAL_FORMAT;
pub use projection::{ReloadView, ReplayState, SlotView, StageMark};
pub use record::{Record, RECORD_FORMAT};
pub use verify::{Problem, ProblemKind, VerifyReport};
pub use witness::WitnessMark;

#[cfg(test)]
mod tests {
    #[test]
    fn the_journal_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<crate::Journal>();
        shared::<crate::Record>();
        shared::<crate::JournalError>();
    }
}
