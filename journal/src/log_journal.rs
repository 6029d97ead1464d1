//! [`LogJournal`]: the journal served from its segment log alone, for one-shot commands.
//!
//! DESIGN.md "Journal, second form": the log is the truth, sled is its index. A command
//! that runs once and exits needs the log's durability, not sled's index: opening sled
//! (its thread pool, its segment tail zeroed and synced, a snapshot written) costs more
//! than the rest of the command. A [`LogJournal`] holds the directory lock, reads the log
//! once (as strictly as [`Journal::open`]), keeps the projections in memory with the same
//! fold as every store, and appends to the log with the same durable points (log
//! `fdatasync`, then the witness). sled is left as it was; the next open of sled catches it
//! up from the log, as after a process killed right after a durable point.
//!
//! [`open_for_command`] chooses: a [`LogJournal`] when sled's files are in place and known
//! to lag the log by at most a bounded number of records (the index mark, see
//! [`crate::index_mark`]), otherwise the sled [`Journal`], whose exit flush then brings sled
//! up to date. So the lag stays bounded however many one-shot commands run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tryswap_fsm::{ArtifactRef, Command, Generation, ReloadId, SlotName};

use crate::error::JournalError;
use crate::index_mark::{self, INDEX_LAG_MAX};
use crate::journal::lock;
use crate::layout::{SLED_DIR, WITNESS_FILE};
use crate::lock::DirLock;
use crate::memory::MemoryJournal;
use crate::projection::{History, ReloadView, ReplayState, SlotView};
use crate::record::Record;
use crate::report::{CompactReport, VerifyReport};
use crate::segment_log::{LogReader, LogWriter};
use crate::snapshot::Snapshot;
use crate::store::{JournalStore, Records};
use crate::witness::{self, Witness, WitnessMark};
use crate::Journal;

/// Opens the journal in `dir` for a command that writes and then exits: a [`LogJournal`]
/// when sled's files are in place and lag the log by at most a bounded number of records,
/// else the sled [`Journal`] ([`Journal::open`], which also creates a new journal, converts
/// old ones and derives a damaged sled again). Either way the lock is held and the log is
/// checked as [`Journal::open`] checks it; [`JournalError::Locked`] if another process
/// holds the journal.
pub fn open_for_command(dir: &Path) -> Result<Arc<dyn JournalStore>, JournalError> {
    match LogJournal::open_if_indexed(dir)? {
        Some(journal) => Ok(Arc::new(journal)),
        None => Ok(Arc::new(Journal::open(dir)?)),
    }
}

/// A writable journal over the segment log alone: every write is decided and folded in
/// memory exactly as by the other stores, appended to the log, and made durable at the
/// same write-ahead points (log `fdatasync`, then the witness). sled's files are not
/// opened; the projection snapshot for lock-free readers is written when the handle is
/// flushed outside a write-ahead point (at exit, on drop), as by [`Journal`].
///
/// What needs sled is refused: [`JournalStore::compact`] returns
/// [`JournalError::NeedsIndex`] (open the journal with [`Journal::open`] for that).
#[derive(Debug)]
pub struct LogJournal {
    dir: PathBuf,
    memory: MemoryJournal,
    /// Held while a write is decided in memory and appended to the log: the log's order is
    /// the sequence order.
    log: Mutex<LogWriter>,
    /// The last record appended to the log.
    tip: Mutex<WitnessMark>,
    /// The witness: the last durable point.
    durable: Mutex<Witness>,
    flush_count: AtomicU64,
    _lock: DirLock,
}

impl LogJournal {
    /// Opens the journal in `dir` from its log: takes the lock, reads the log once (an
    /// unflushed tail after the last durable point is cut, as a crash leaves one; damage
    /// before it, or a log shorter than the witness, is [`JournalError::Corrupt`] naming
    /// the seq and byte offset, and nothing is written), and folds it into memory.
    /// [`JournalError::Missing`] when `dir` has no log.
    pub fn open(dir: &Path) -> Result<LogJournal, JournalError> {
        let lock = DirLock::acquire(dir)?;
        let found = witness::read(&dir.join(WITNESS_FILE), dir)?;
        let reader = LogReader::open(dir)?;
        if !reader.exists() {
            return Err(JournalError::Missing(format!(
                "no segment log in {} (open the journal with sled once to create it)",
                dir.display()
            )));
        }
        Self::open_locked(dir, lock, found, &reader)
    }

    /// [`LogJournal::open`] if sled's files are in place, nothing waits for an open of
    /// sled (a rewrite, an interrupted derivation) and the index mark says sled lags the
    /// durable log by at most [`INDEX_LAG_MAX`] records; `None` otherwise (the lock is
    /// released again).
    fn open_if_indexed(dir: &Path) -> Result<Option<LogJournal>, JournalError> {
        if !dir.join(SLED_DIR).is_dir() || crate::rewrite::pending(dir) {
            return Ok(None);
        }
        let lock = DirLock::acquire(dir)?;
        let found = witness::read(&dir.join(WITNESS_FILE), dir)?;
        let durable = found.map_or(0, |(mark, _)| mark.seq);
        let reader = LogReader::open(dir)?;
        if !reader.exists() || index_mark::lags(index_mark::read(dir), durable, INDEX_LAG_MAX) {
            return Ok(None);
        }
        Self::open_locked(dir, lock, found, &reader).map(Some)
    }

    /// Opens the journal whose lock is `lock`, witness `found` and (existing) log `reader`.
    fn open_locked(
        dir: &Path,
        lock: DirLock,
        found: Option<(WitnessMark, usize)>,
        reader: &LogReader,
    ) -> Result<LogJournal, JournalError> {
        let mark = found.map(|(m, _)| m).unwrap_or_default();
        let (memory, scan) = MemoryJournal::from_scan(dir, reader, mark.seq)?;
        let writer = crate::rebuild::writer_after(dir, reader, &scan, mark)?;
        let witness = Witness::open(&dir.join(WITNESS_FILE), found, WitnessMark::default())?;
        let tip = memory.tip();
        let journal = LogJournal {
            dir: dir.to_path_buf(),
            memory,
            log: Mutex::new(writer),
            tip: Mutex::new(tip),
            durable: Mutex::new(witness),
            flush_count: AtomicU64::new(0),
            _lock: lock,
        };
        if tip.seq > mark.seq {
            // Records a killed process appended after its last durable point, intact: they
            // are kept, so they are made durable now (as `Journal::open` does).
            journal.durable_flush(tip, false)?;
        }
        Ok(journal)
    }

    /// Makes everything up to `tip` power-safe: `fdatasync` of the log, then the witness,
    /// group-committed as in [`Journal`] ([`Witness::group_commit`]). `counted`: a
    /// write-ahead point (see [`JournalStore::flush_count`]); any other flush (the exit's,
    /// the drop's) also writes the projection snapshot for readers.
    fn durable_flush(&self, tip: WitnessMark, counted: bool) -> Result<(), JournalError> {
        let mut witness = lock(&self.durable);
        // After a failed sync a retry could "succeed" over pages the kernel dropped.
        self.memory.flush()?;
        let latest = *lock(&self.tip);
        match witness.group_commit(tip, latest, counted, || lock(&self.log).sync()) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(cause) => return Err(self.fail(&cause)),
        }
        if counted {
            self.flush_count.fetch_add(1, Ordering::SeqCst);
        } else {
            // As the sled journal: the snapshot when the holder is done writing.
            Snapshot::refresh_from_memory(&self.dir, &self.memory);
        }
        Ok(())
    }
}

impl JournalStore for LogJournal {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn execute_all(
        &self,
        commands: &[Command],
        at: DateTime<Utc>,
    ) -> Result<Vec<Record>, JournalError> {
        let (records, tip) = {
            let mut log = lock(&self.log);
            let records = self.memory.execute_all(commands, at)?;
            if records.is_empty() {
                return Ok(records);
            }
            // The projections moved: a record that does not reach the log fails the handle
            // (the next open reads the log, which never had it).
            let appended = crate::journal::log_frames(&records).and_then(|f| log.append(&f));
            if let Err(e) = appended {
                return Err(self.fail(&format!("appending seq {} to the log: {e}", records[0].seq)));
            }
            let tip = self.memory.tip();
            *lock(&self.tip) = tip;
            (records, tip)
        };
        if records.iter().any(Record::needs_durable_flush) {
            self.durable_flush(tip, true)?;
        }
        Ok(records)
    }

    fn fail(&self, cause: &str) -> JournalError {
        self.memory.fail(cause)
    }

    fn failure(&self) -> Option<String> {
        self.memory.failure()
    }

    fn flush(&self) -> Result<(), JournalError> {
        let tip = *lock(&self.tip);
        self.durable_flush(tip, false)
    }

    fn flush_count(&self) -> u64 {
        self.flush_count.load(Ordering::SeqCst)
    }

    fn last_seq(&self) -> u64 {
        self.memory.last_seq()
    }

    fn slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError> {
        self.memory.slot(name)
    }

    fn slots(&self) -> Result<Vec<SlotView>, JournalError> {
        self.memory.slots()
    }

    fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError> {
        self.memory.reload(id)
    }

    fn reloads_of(&self, slot: &SlotName) -> Result<Vec<ReloadView>, JournalError> {
        self.memory.reloads_of(slot)
    }

    fn history(&self, name: &SlotName) -> Result<History, JournalError> {
        self.memory.history(name)
    }

    fn history_entry(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, JournalError> {
        self.memory.history_entry(name, generation)
    }

    fn events(&self, from_seq: u64) -> Records {
        self.memory.events(from_seq)
    }

    fn replay(&self, until_seq: u64) -> Result<ReplayState, JournalError> {
        self.memory.replay(until_seq)
    }

    fn verify(&self) -> Result<VerifyReport, JournalError> {
        self.memory.verify()
    }

    fn size_bytes(&self) -> u64 {
        crate::journal::size_on_disk(&self.dir)
    }

    fn compact(&self, _keep_per_slot: usize) -> Result<CompactReport, JournalError> {
        Err(JournalError::NeedsIndex {
            dir: self.dir.clone(),
            what: "compaction".to_owned(),
        })
    }
}

impl Drop for LogJournal {
    fn drop(&mut self) {
        if self.failure().is_none() {
            if let Err(e) = self.flush() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "flushing the journal on drop");
            }
        }
    }
}
