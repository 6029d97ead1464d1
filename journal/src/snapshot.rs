//! The projection snapshot: what `status` answers from without folding the log, while
//! another process holds the journal or after it let go (DESIGN.md "Journal, second form":
//! reads need no exclusive lock).
//!
//! When a writer is done writing for now (its exit or close flush, a compaction, an open
//! that made records durable; not at the write-ahead points, which stay two syncs and
//! nothing more) it captures the slot projections, the newest reloads of every slot and
//! the last records into `<journal dir>/projection.snapshot`, written over the old one in
//! place (only the journal's holder writes it) and ended by a CRC32 of everything before
//! it. A reader that meets a mix of the old snapshot and the new one (it read while the
//! holder wrote, or a writer died mid-write) sees the CRC differ and treats the snapshot as
//! absent. The snapshot is a cache: it is never synced (a lost one is rewritten at the next
//! such flush), never read by a writer, and used only when its CRC holds and its last
//! record is the log's last record, byte for byte: otherwise (a writer between its durable
//! points, a killed one) the reader folds the log itself, lock-free and strict.
//!
//! [`open_for_reading`] is the read commands' way in.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tryswap_fsm::{Command, ReloadId, SlotName};

use crate::projection::History;

use crate::codec::{self, LIMIT};
use crate::error::JournalError;
use crate::journal::{lock, Journal};
use crate::layout::RELOADS;
use crate::memory::MemoryJournal;
use crate::projection::{ReloadView, ReplayState, SlotView};
use crate::record::Record;
use crate::report::{CompactReport, VerifyReport};
use crate::store::{JournalStore, Records};

/// The snapshot's file name in the journal directory.
pub const SNAPSHOT_FILE: &str = "projection.snapshot";

/// The snapshot format this build writes and reads (a snapshot of another format is
/// ignored: readers fall back to waiting for the lock). Format 2: slot projections without
/// their history (a reader reads a history from the log, see `JournalStore::history`).
/// Format 3: the same, followed by a CRC32 (big-endian) of the encoded snapshot, since the
/// file is rewritten in place.
pub const SNAPSHOT_FORMAT: u16 = 3;

/// Length of the CRC trailer after the encoded snapshot.
const CRC_LEN: usize = 4;

/// At most this many reloads of one slot are kept in the snapshot (the newest).
const RELOADS_PER_SLOT: usize = 100;

/// At most this many reload projections are read (newest first) to build a snapshot, so
/// writing one costs the same however long the journal's history.
const RELOADS_SCANNED: usize = 400;

/// The snapshot carries the last this many records (for `status`'s restarts and last exit).
const RECORDS_KEPT: u64 = 128;

/// The projections as of one point of the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`]; always the first encoded field.
    pub format: u16,
    /// The last sequence number the snapshot includes.
    pub seq: u64,
    /// When it was written.
    pub written_at: DateTime<Utc>,
    /// The process that wrote it (the journal's holder at that time).
    pub writer_pid: u32,
    /// Every slot projection, by name.
    pub slots: Vec<SlotView>,
    /// The newest reloads of every slot (at most 100 per slot), oldest first, plus every
    /// reload in flight.
    pub reloads: Vec<ReloadView>,
    /// The last records as stored (body and CRC trailer), oldest first.
    pub records: Vec<Vec<u8>>,
}

impl Snapshot {
    /// Where the snapshot of the journal in `dir` lives.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(SNAPSHOT_FILE)
    }

    /// Reads the snapshot of the journal in `dir`: `None` if there is none, if it was
    /// written in another snapshot format, or if its CRC does not hold (read while its
    /// holder rewrote it, or left half-written by a killed one).
    pub fn load(dir: &Path) -> Result<Option<Snapshot>, JournalError> {
        let path = Self::path(dir);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(JournalError::io("opening the projection snapshot", path, e)),
        };
        let mut bytes = Vec::new();
        file.take((LIMIT + CRC_LEN) as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| JournalError::io("reading the projection snapshot", &path, e))?;
        let format = match codec::decode_prefix::<u16>("snapshot format", &bytes) {
            Ok(format) => format,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable projection snapshot");
                return Ok(None);
            }
        };
        if format != SNAPSHOT_FORMAT {
            tracing::warn!(path = %path.display(), format, "ignoring a projection snapshot of another format");
            return Ok(None);
        }
        let Some(body) = Self::checked_body(&bytes) else {
            tracing::debug!(path = %path.display(), "ignoring a projection snapshot whose CRC does not hold");
            return Ok(None);
        };
        Ok(Some(codec::decode("projection snapshot", body)?))
    }

    /// The encoded snapshot in `bytes` if the CRC trailer after it holds.
    fn checked_body(bytes: &[u8]) -> Option<&[u8]> {
        let (body, trailer) = bytes.split_at_checked(bytes.len().checked_sub(CRC_LEN)?)?;
        let stored = u32::from_be_bytes(trailer.try_into().ok()?);
        (crc32fast::hash(body) == stored).then_some(body)
    }

    /// Writes the snapshot into `dir` over the old one, in place: no new inode and no
    /// rename per write (each cost this `discard`-mounted ext4 a fraction of a
    /// millisecond, and several at p90). Readers check the CRC trailer ([`Snapshot::load`]),
    /// and only the journal's holder writes.
    fn store(&self, dir: &Path) -> Result<(), JournalError> {
        use std::os::unix::fs::FileExt;
        let mut bytes = codec::encode("projection snapshot", self)?;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        let path = Self::path(dir);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|file| {
                file.write_all_at(&bytes, 0)?;
                // A shorter snapshot than the last one: cut the old one's tail.
                if file.metadata()?.len() > bytes.len() as u64 {
                    file.set_len(bytes.len() as u64)?;
                }
                Ok(())
            });
        if let Err(e) = written {
            return Err(JournalError::io("writing the projection snapshot", path, e));
        }
        Ok(())
    }
}

impl Journal {
    /// Captures the projections as they are now (writers held off meanwhile, so slots,
    /// reloads and records agree) into the snapshot file. Called by the flushes that are not
    /// write-ahead points; a failure is logged, never the caller's: the snapshot only
    /// serves readers.
    pub(crate) fn refresh_snapshot(&self) {
        Snapshot::written_or_removed(&self.dir, self.write_snapshot());
    }

    fn write_snapshot(&self) -> Result<(), JournalError> {
        let mut snapshot = {
            let _writer = lock(&self.writer);
            self.settle()?;
            let seq = self.last_seq();
            let slots = self.slots()?;
            let mut per_slot: BTreeMap<SlotName, Vec<ReloadView>> = BTreeMap::new();
            // Slots whose newest reloads are all kept: the scan ends once every slot is.
            let names: std::collections::BTreeSet<&SlotName> =
                slots.iter().map(|s| &s.slot.name).collect();
            let mut full = 0;
            // Reload ids are UUIDv7 (time-ordered): the tree's end holds the newest.
            for item in self.reloads.iter().rev().take(RELOADS_SCANNED) {
                if !names.is_empty() && full >= names.len() {
                    break;
                }
                let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
                // The view starts with the reload's id and slot: a reload of a slot that
                // has its newest already is skipped without decoding the rest.
                let (_, slot): (ReloadId, SlotName) =
                    crate::layout::decode_value_prefix(RELOADS, &key, &bytes)?;
                let known = names.contains(&slot);
                let kept = per_slot.entry(slot).or_default();
                if kept.len() < RELOADS_PER_SLOT {
                    kept.push(crate::layout::decode_value(RELOADS, &key, &bytes)?);
                    if known && kept.len() == RELOADS_PER_SLOT {
                        full += 1;
                    }
                }
            }
            for slot in &slots {
                if let Some(id) = slot.slot.in_flight {
                    let kept = per_slot.entry(slot.slot.name.clone()).or_default();
                    if !kept.iter().any(|v| v.reload.id == id) {
                        kept.extend(self.reload(&id)?);
                    }
                }
            }
            let mut reloads: Vec<ReloadView> = per_slot.into_values().flatten().collect();
            reloads.sort_by_key(ReloadView::created_seq);
            let from = seq.saturating_sub(RECORDS_KEPT - 1).max(1);
            let records: Vec<Record> = self.events(from).filter_map(Result::ok).collect();
            Snapshot::written_now(seq, slots, reloads, &records)?
        };
        snapshot.store_fitting(&self.dir)
    }
}

impl Snapshot {
    /// The snapshot at `seq` of these projections and last records, written now by this
    /// process.
    fn written_now(
        seq: u64,
        slots: Vec<SlotView>,
        reloads: Vec<ReloadView>,
        records: &[Record],
    ) -> Result<Snapshot, JournalError> {
        Ok(Snapshot {
            format: SNAPSHOT_FORMAT,
            seq,
            written_at: Utc::now(),
            writer_pid: std::process::id(),
            slots,
            reloads,
            records: records
                .iter()
                .map(codec::encode_record)
                .collect::<Result<_, _>>()?,
        })
    }

    /// [`Snapshot::store`]; when the snapshot is too large for the codec's limit, the
    /// older half of what is optional (records, reloads) is left out until it fits.
    fn store_fitting(&mut self, dir: &Path) -> Result<(), JournalError> {
        loop {
            match self.store(dir) {
                Err(JournalError::Codec(codec::CodecError::TooLarge { .. }))
                    if !self.records.is_empty() || self.reloads.len() > 1 =>
                {
                    let records = self.records.len() / 2;
                    self.records.drain(..records);
                    let reloads = self.reloads.len() / 2;
                    self.reloads.drain(..reloads);
                }
                other => return other,
            }
        }
    }

    /// Writes the snapshot of `journal` (the projections a [`crate::LogJournal`] holds in
    /// memory) into `dir`, as [`Journal`] does.
    pub(crate) fn refresh_from_memory(dir: &Path, journal: &MemoryJournal) {
        let (seq, slots, reloads, records) = journal.snapshot_parts(RELOADS_PER_SLOT, RECORDS_KEPT);
        let written = Snapshot::written_now(seq, slots, reloads, &records)
            .and_then(|mut snapshot| snapshot.store_fitting(dir));
        Snapshot::written_or_removed(dir, written);
    }

    /// After a snapshot write: a failure is logged and the old snapshot removed, never left
    /// behind for readers to trust.
    fn written_or_removed(dir: &Path, written: Result<(), JournalError>) {
        if let Err(e) = written {
            tracing::warn!(dir = %dir.display(), error = %e, "writing the projection snapshot");
            let _ = std::fs::remove_file(Snapshot::path(dir));
        }
    }
}

/// A [`Snapshot`] as a read-only [`JournalStore`]: every read answers from the snapshot;
/// writes, `verify`, `replay` and `compact` return [`JournalError::ReadOnly`].
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    snapshot: Snapshot,
}

impl SnapshotStore {
    /// The snapshot of the journal in `dir`.
    pub fn new(dir: &Path, snapshot: Snapshot) -> Self {
        SnapshotStore {
            dir: dir.to_path_buf(),
            snapshot,
        }
    }

    /// The snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    fn read_only(&self) -> JournalError {
        JournalError::ReadOnly {
            dir: self.dir.clone(),
        }
    }
}

impl JournalStore for SnapshotStore {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn is_read_only(&self) -> bool {
        true
    }

    fn execute_all(
        &self,
        _commands: &[Command],
        _at: DateTime<Utc>,
    ) -> Result<Vec<Record>, JournalError> {
        Err(self.read_only())
    }

    fn fail(&self, _cause: &str) -> JournalError {
        self.read_only()
    }

    fn failure(&self) -> Option<String> {
        None
    }

    fn flush(&self) -> Result<(), JournalError> {
        Ok(())
    }

    fn flush_count(&self) -> u64 {
        0
    }

    fn last_seq(&self) -> u64 {
        self.snapshot.seq
    }

    fn slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError> {
        Ok(self
            .snapshot
            .slots
            .iter()
            .find(|v| &v.slot.name == name)
            .cloned())
    }

    fn slots(&self) -> Result<Vec<SlotView>, JournalError> {
        Ok(self.snapshot.slots.clone())
    }

    fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError> {
        Ok(self
            .snapshot
            .reloads
            .iter()
            .find(|v| &v.reload.id == id)
            .cloned())
    }

    fn reloads_of(&self, slot: &SlotName) -> Result<Vec<ReloadView>, JournalError> {
        Ok(self
            .snapshot
            .reloads
            .iter()
            .filter(|v| &v.reload.slot == slot)
            .cloned()
            .collect())
    }

    /// Read from the segment log up to the snapshot's seq: the snapshot carries no history.
    fn history(&self, name: &SlotName) -> Result<History, JournalError> {
        crate::history::history_from_log(&self.dir, name, self.snapshot.seq)
    }

    fn events(&self, from_seq: u64) -> Records {
        let records: Vec<Result<Record, JournalError>> = self
            .snapshot
            .records
            .iter()
            .map(|stored| codec::decode_record(stored).map_err(JournalError::from))
            .filter(|r| r.as_ref().map_or(true, |r| r.seq >= from_seq))
            .collect();
        Box::new(records.into_iter())
    }

    fn replay(&self, _until_seq: u64) -> Result<ReplayState, JournalError> {
        Err(self.read_only())
    }

    fn verify(&self) -> Result<VerifyReport, JournalError> {
        Err(self.read_only())
    }

    fn compact(&self, _keep_per_slot: usize) -> Result<CompactReport, JournalError> {
        Err(self.read_only())
    }
}

/// How much of the journal a read command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadScope {
    /// The state as it is: every slot, the reloads in flight and the newest reloads of each
    /// slot, the last records (`status`). A snapshot that holds the journal's last record
    /// answers it, whoever holds the journal or nobody.
    Current,
    /// Everything: every reload of a slot and every record (`history`).
    Full,
}

/// The journal in `dir` for a read command, without waiting, without the lock and without
/// writing anything.
///
/// With [`ReadScope::Current`], the projection snapshot when its last record is the log's
/// last record (nothing was written after its durable point). Otherwise the journal as its
/// segment log holds it, read into memory ([`MemoryJournal::from_log`]): sled's files are
/// not opened. A journal without a log (written before the log existed) is opened for
/// inspection when nobody holds it, else answered from its snapshot
/// ([`JournalError::Locked`] without one); an empty journal when `dir` holds none. The log
/// is read strictly either way: a log damaged before its durable point is refused.
pub fn open_for_reading(
    dir: &Path,
    scope: ReadScope,
) -> Result<Arc<dyn JournalStore>, JournalError> {
    if !dir.exists() {
        return Ok(Arc::new(MemoryJournal::new()));
    }
    if scope == ReadScope::Current {
        if let Some(snapshot) = exact_snapshot(dir)? {
            return Ok(Arc::new(SnapshotStore::new(dir, snapshot)));
        }
    }
    match MemoryJournal::from_log(dir) {
        Ok(journal) => return Ok(Arc::new(journal)),
        Err(JournalError::Missing(_)) => {}
        Err(e) => return Err(e),
    }
    // No log: a journal of the first format. Strict: a damaged witness is refused before
    // sled opens, a sled that lost what was durable too.
    match Journal::open_strict(dir) {
        Ok(journal) => Ok(Arc::new(journal)),
        Err(locked @ JournalError::Locked { .. }) => match Snapshot::load(dir)? {
            Some(snapshot) => Ok(Arc::new(SnapshotStore::new(dir, snapshot))),
            None => Err(locked),
        },
        Err(JournalError::Missing(_)) => Ok(Arc::new(MemoryJournal::new())),
        Err(e) => Err(e),
    }
}

/// The snapshot of the journal in `dir` if it holds the journal's state exactly: the log's
/// last record is the snapshot's last record, byte for byte (a journal restored from a
/// backup, rebuilt or written after the snapshot does not match). Reads the log once,
/// strictly; `None` when there is no snapshot or no log, or they differ.
fn exact_snapshot(dir: &Path) -> Result<Option<Snapshot>, JournalError> {
    let Some(snapshot) = Snapshot::load(dir)? else {
        return Ok(None);
    };
    let Some(last) = snapshot.records.last() else {
        return Ok(None);
    };
    let mut at_seq = None;
    let read = match crate::log_read::read_records(dir, snapshot.seq, |record| {
        if record.seq == snapshot.seq {
            at_seq = Some(record.clone());
        }
        Ok(())
    }) {
        Ok(read) => read,
        Err(JournalError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let same = match &at_seq {
        Some(record) => codec::encode_record(record)? == *last,
        None => false,
    };
    Ok((same && read.last_seq == snapshot.seq).then_some(snapshot))
}
