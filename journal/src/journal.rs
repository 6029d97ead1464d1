//! The journal: open (lock, sled, checks), execute (decided, appended to the log, folded
//! into sled behind by the indexer: `crate::backlog`), reads and durable flushes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tryswap_fsm::{ArtifactRef, Command, Generation, ReloadId, Slot, SlotName};

use crate::append::{append, stage_record, Staging};
use crate::backlog::{Backlog, IndexTrees, Staged, Unindexed};
use crate::codec;
use crate::error::JournalError;
use crate::failure::HandleFailure;
use crate::layout::{
    decode_event, decode_value, describe_key, encode_history, encode_value, generation_of_key,
    history_key, history_prefix, reload_key, seq_key, seq_of_key, slot_key, tx_history, tx_reload,
    tx_slot, Meta, EVENTS, HISTORY, JOURNAL_FORMAT, KEY_FORMAT, KEY_LAST_CHAIN, KEY_NEXT_SEQ,
    KEY_PURGING, META, RELOADS, SLED_DIR, SLOTS, WITNESS_FILE,
};
use crate::lock::DirLock;
use crate::projection::{History, ReloadView, ReplayState, SlotView};
use crate::rebuild::{self, check_log, RebuildNote};
use crate::record::Record;
use crate::report::{CompactReport, VerifyReport};
use crate::segment_log::{frame, LogReader, LogWriter, KIND_RECORD};
use crate::sled_dir::open_db;
use crate::store::{JournalStore, Records};
use crate::witness::{self, Witness, WitnessMark};

/// sled's page cache limit (sled's default is 1 GiB): the bound of the journal's share of
/// a long-running daemon's memory (bench sections 5c and 6, docs/performance.md). sled
/// counts each cached page at its on-disk size rounded up to a power of two; what a write
/// or a snapshot touches (the newest records and reloads, the slot projections) fits
/// many times over. With 16 MiB the daemon's RSS still grew 0.9 KiB per record after
/// 39,000 records; with 4 MiB the cache is full after about 15,000.
pub const CACHE_CAPACITY: u64 = 4 * 1024 * 1024;

type TxResult<T> = Result<T, ConflictableTransactionError<JournalError>>;

/// A crash-safe event log of reload events with slot and reload projections.
///
/// One `Journal` per directory: [`Journal::open`] takes an exclusive lock and fails at once
/// with [`JournalError::Locked`] if anyone else (another process, or another handle in
/// this process) holds it. The handle is `Send + Sync`; writes are serialized internally.
/// Dropping it flushes and syncs (see [`Journal::flush`]).
pub struct Journal {
    pub(crate) dir: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) events: sled::Tree,
    pub(crate) slots: sled::Tree,
    pub(crate) reloads: sled::Tree,
    pub(crate) meta: sled::Tree,
    /// One key per (slot, generation): every slot's history.
    pub(crate) history: sled::Tree,
    /// The log segment appended to (`None` when read-only). Locked after `writer` and
    /// `durable`, never before.
    pub(crate) log: Mutex<Option<LogWriter>>,
    /// Last committed sequence number and its chain value.
    pub(crate) tip: Mutex<WitnessMark>,
    /// Serializes writers (execute, compact) and gives verify a stable view.
    pub(crate) writer: Mutex<()>,
    /// The witness, also serializing durable flushes (`None` when read-only).
    durable: Mutex<Option<Witness>>,
    flush_count: AtomicU64,
    /// Why a sync failed, once one did: the handle is failed from then on (see
    /// [`JournalError::Failed`]).
    failed: Arc<HandleFailure>,
    /// Records in the log that sled's trees do not hold yet (see [`crate::backlog`]).
    pub(crate) backlog: Arc<Backlog>,
    /// The thread that folds the backlog into sled (a writable handle's).
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
    read_only: bool,
    /// Why sled was derived again from the log at open, if it was.
    rebuilt: Option<RebuildNote>,
    /// The index mark (see [`crate::index_mark`]) as this handle last read or wrote it.
    index_mark: Mutex<Option<u64>>,
    _lock: DirLock,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("read_only", &self.read_only)
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

const SALVAGE_HINT: &str = "Nothing was written. `tryswap journal export --salvage` prints \
     every record the log holds before the damage; `tryswap journal rebuild` derives sled's \
     files again from the log";

/// sled's database and its trees: `events`, `slots`, `reloads`, `meta`, `history`.
type Trees = (
    sled::Db,
    sled::Tree,
    sled::Tree,
    sled::Tree,
    sled::Tree,
    sled::Tree,
);

/// The trees a write touches: `events`, `slots`, `reloads`, `meta`, `history`.
pub(crate) type WriteTrees<'a> = (
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
);

/// How an open for inspection treats a journal whose checks fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inspection {
    /// Logged, and opened anyway (`verify` reports what it finds).
    Lenient,
    /// Refused with [`JournalError::Corrupt`], as an open for writing refuses it.
    Strict,
}

/// What a durable flush covers besides the log and the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// A write-ahead point: the log alone, counted by [`Journal::flush_count`].
    WriteAhead,
    /// Also sled's files (shutdown, compaction, open, drop).
    Full,
    /// The log alone, not counted: the process exits without closing sled.
    LogOnly,
}

/// Removes `snap.<lsn>.generating` files from `sled_dir`.
///
/// sled 0.34.7 writes a snapshot to `snap.<lsn>.generating`, syncs it and renames it to
/// `snap.<lsn>`, so such a file is never a finished snapshot. But when sled opens it reads
/// every `snap.*` file as a snapshot candidate and takes the one that sorts last: a
/// snapshot write cut short (the process killed in the middle, or a full disk) leaves a
/// file that makes every later open fail with sled's `Corruption`. Only called while
/// holding the journal's lock, so no sled of ours is writing one.
fn remove_unfinished_snapshots(sled_dir: &Path) -> Result<(), JournalError> {
    let entries = match std::fs::read_dir(sled_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(JournalError::io("listing", sled_dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("listing", sled_dir, e))?;
        let name = entry.file_name();
        let unfinished = name
            .to_str()
            .is_some_and(|n| n.starts_with("snap.") && n.ends_with(".generating"));
        if unfinished {
            let path = entry.path();
            tracing::warn!(
                path = %path.display(),
                "removing a snapshot sled never finished writing (a crash or a full disk)"
            );
            std::fs::remove_file(&path)
                .map_err(|e| JournalError::io("removing unfinished sled snapshot", &path, e))?;
        }
    }
    Ok(())
}

/// Opens sled and its trees, turning a panic inside sled into [`JournalError::Corrupt`].
fn open_sled(dir: &Path, sled_dir: &Path) -> Result<Trees, JournalError> {
    remove_unfinished_snapshots(sled_dir)?;
    guard_sled(dir, sled_dir, || {
        let db = open_db(
            sled::Config::new()
                .path(sled_dir)
                .cache_capacity(CACHE_CAPACITY),
        )?;
        let events = db.open_tree(EVENTS)?;
        let slots = db.open_tree(SLOTS)?;
        let reloads = db.open_tree(RELOADS)?;
        let meta = db.open_tree(META)?;
        let history = db.open_tree(HISTORY)?;
        Ok((db, events, slots, reloads, meta, history))
    })
}

/// Runs `open` (which opens sled in `sled_dir`) and maps a panic, sled's corruption error
/// and its other errors to journal errors naming `dir`.
fn guard_sled<T>(
    dir: &Path,
    sled_dir: &Path,
    open: impl FnOnce() -> sled::Result<T>,
) -> Result<T, JournalError> {
    match catch_unwind(AssertUnwindSafe(open)) {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(sled::Error::Corruption { at, .. })) => Err(JournalError::Corrupt {
            dir: dir.to_path_buf(),
            what: format!(
                "sled reports corruption in {} (at {at:?}). {SALVAGE_HINT}",
                sled_dir.display()
            ),
        }),
        Ok(Err(source)) => Err(JournalError::Sled {
            dir: dir.to_path_buf(),
            source,
        }),
        Err(payload) => Err(JournalError::Corrupt {
            dir: dir.to_path_buf(),
            what: format!(
                "sled panicked while opening {}: {}. Its data files are damaged. {SALVAGE_HINT}",
                sled_dir.display(),
                panic_text(payload.as_ref())
            ),
        }),
    }
}

/// The log frames of `records`, in order.
pub(crate) fn log_frames(records: &[Record]) -> Result<Vec<u8>, JournalError> {
    let mut frames = Vec::new();
    for record in records {
        frames.extend(frame(KIND_RECORD, &codec::encode_record(record)?));
    }
    Ok(frames)
}

/// Bytes of the log and of sled's files in the journal directory `dir` (the archive and
/// backups not counted): what compaction bounds. Unreadable entries count as 0.
pub(crate) fn size_on_disk(dir: &Path) -> u64 {
    [crate::segment_log::LOG_DIR, SLED_DIR]
        .iter()
        .filter_map(|sub| crate::sled_dir::list_tree(&dir.join(sub), "sizing").ok())
        .flat_map(|listing| listing.files)
        .map(|(_, len)| len)
        .sum()
}

/// Reads and decodes the record with sequence number `seq`, if it exists.
pub(crate) fn read_record(events: &sled::Tree, seq: u64) -> Result<Option<(Record, u32)>, String> {
    let key = seq_key(seq);
    let bytes = events
        .get(key)
        .map_err(|e| format!("cannot read tree `events` at seq {seq}: {e}"))?;
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let (record, chain) = codec::decode_stored(&bytes)
        .map_err(|e| format!("tree `events` at seq {seq} does not decode: {e}"))?;
    if record.seq != seq {
        return Err(format!(
            "tree `events` key seq {seq} holds a record with seq {}",
            record.seq
        ));
    }
    Ok(Some((record, chain)))
}

/// Checks that the end of `events` agrees with `meta`. Reads at most two records.
pub(crate) fn tail_findings(events: &sled::Tree, meta: &Meta) -> Vec<String> {
    let mut findings = Vec::new();
    let last = meta.last_seq();
    match events.last() {
        Err(e) => findings.push(format!("cannot read the last record of tree `events`: {e}")),
        Ok(Some((key, _))) => match seq_of_key(&key) {
            None => findings.push(format!(
                "tree `events` ends with key {}",
                describe_key(EVENTS, &key)
            )),
            Some(seq) if seq > last => findings.push(format!(
                "tree `events` holds seq {seq} but `meta` says the last committed seq is {last}"
            )),
            Some(_) => {}
        },
        Ok(None) => {}
    }
    if last == 0 {
        return findings;
    }
    match read_record(events, last) {
        Err(e) => findings.push(e),
        Ok(Some((_, chain))) if chain != meta.last_chain => findings.push(format!(
            "the last record, seq {last}, has chain value {chain:#010x} but `meta` says \
             {:#010x}",
            meta.last_chain
        )),
        Ok(Some(_)) => {}
        Ok(None) if last == meta.base_seq && meta.last_chain == meta.base_chain => {}
        Ok(None) => findings.push(format!(
            "the last committed record, seq {last}, is missing from tree `events`"
        )),
    }
    findings
}

/// Checks the witness mark against `events` and `meta`. Reads at most one record.
pub(crate) fn witness_findings(
    events: &sled::Tree,
    meta: &Meta,
    mark: WitnessMark,
    path: &Path,
) -> Vec<String> {
    let last = meta.last_seq();
    let w = mark.seq;
    if w == 0 {
        return Vec::new();
    }
    if w > last {
        return vec![format!(
            "witness {} records seq {w} (chain {:#010x}) as durably committed, but the journal \
             ends at seq {last}: records {}..={w} are missing (a lost tail)",
            path.display(),
            mark.chain,
            last + 1
        )];
    }
    match read_record(events, w) {
        Err(e) => vec![e],
        Ok(Some((_, chain))) if chain == mark.chain => Vec::new(),
        Ok(Some((_, chain))) => vec![format!(
            "record seq {w} has chain value {chain:#010x} but witness {} says {:#010x}: the \
             journal was altered or replaced",
            path.display(),
            mark.chain
        )],
        Ok(None) if w < meta.base_seq => Vec::new(),
        Ok(None) if w == meta.base_seq && mark.chain == meta.base_chain => Vec::new(),
        Ok(None) => vec![format!(
            "record seq {w}, durably committed according to witness {}, is missing from tree \
             `events`",
            path.display()
        )],
    }
}

/// The slot projections one write transaction touches, decoded once and encoded once (a
/// write of several events of one slot encodes its projection once).
struct SlotCache<'a> {
    tree: &'a TransactionalTree,
    views: RefCell<HashMap<SlotName, Option<SlotView>>>,
    dirty: RefCell<BTreeSet<SlotName>>,
}

impl<'a> SlotCache<'a> {
    fn new(tree: &'a TransactionalTree) -> Self {
        SlotCache {
            tree,
            views: RefCell::new(HashMap::new()),
            dirty: RefCell::new(BTreeSet::new()),
        }
    }

    /// Loads `name` into the cache if it is not there yet.
    fn load(&self, name: &SlotName) -> TxResult<()> {
        if !self.views.borrow().contains_key(name) {
            let view = tx_slot(self.tree, name)?;
            self.views.borrow_mut().insert(name.clone(), view);
        }
        Ok(())
    }

    /// The slot as the transaction left it so far.
    fn slot(&self, name: &SlotName) -> TxResult<Option<Slot>> {
        self.load(name)?;
        Ok(self
            .views
            .borrow()
            .get(name)
            .and_then(|v| v.as_ref().map(|v| v.slot.clone())))
    }

    /// Takes the projection out for folding; [`SlotCache::put`] gives it back.
    fn take(&self, name: &SlotName) -> TxResult<Option<SlotView>> {
        self.load(name)?;
        Ok(self.views.borrow_mut().get_mut(name).and_then(Option::take))
    }

    fn put(&self, view: SlotView) {
        let name = view.slot.name.clone();
        self.dirty.borrow_mut().insert(name.clone());
        self.views.borrow_mut().insert(name, Some(view));
    }

    /// Writes every changed projection into the transaction.
    fn write_back(&self) -> TxResult<()> {
        let views = self.views.borrow();
        for name in self.dirty.borrow().iter() {
            if let Some(Some(view)) = views.get(name) {
                self.tree.insert(
                    slot_key(name),
                    encode_value("slot view", view).map_err(abort)?,
                )?;
            }
        }
        Ok(())
    }
}

fn abort(error: impl Into<JournalError>) -> ConflictableTransactionError<JournalError> {
    ConflictableTransactionError::Abort(error.into())
}

/// One write transaction's trees, as the [`Staging`] of [`append`].
struct SledWrite<'a> {
    events: &'a TransactionalTree,
    reloads: &'a TransactionalTree,
    history: &'a TransactionalTree,
    slots: SlotCache<'a>,
}

impl Staging for SledWrite<'_> {
    type Error = ConflictableTransactionError<JournalError>;

    fn abort(error: JournalError) -> Self::Error {
        abort(error)
    }

    fn slot(&self, name: &SlotName) -> TxResult<Option<Slot>> {
        self.slots.slot(name)
    }

    fn take_slot(&self, name: &SlotName) -> TxResult<Option<SlotView>> {
        self.slots.take(name)
    }

    fn put_slot(&self, view: SlotView) -> TxResult<()> {
        self.slots.put(view);
        Ok(())
    }

    fn reload(&self, id: &ReloadId) -> TxResult<Option<ReloadView>> {
        tx_reload(self.reloads, id)
    }

    fn put_reload(&self, view: ReloadView) -> TxResult<()> {
        let encoded = encode_value("reload view", &view).map_err(abort)?;
        self.reloads.insert(&reload_key(&view.reload.id), encoded)?;
        Ok(())
    }

    fn history(&self, name: &SlotName, generation: Generation) -> TxResult<Option<ArtifactRef>> {
        tx_history(self.history, name, generation)
    }

    fn put_history(
        &self,
        name: &SlotName,
        generation: Generation,
        artifact: &ArtifactRef,
    ) -> TxResult<()> {
        let encoded = encode_history(artifact).map_err(abort)?;
        self.history
            .insert(history_key(name, generation), encoded)?;
        Ok(())
    }

    fn put_record(&self, record: &Record, stored: Vec<u8>, _chain: u32) -> TxResult<()> {
        self.events.insert(&seq_key(record.seq), stored)?;
        Ok(())
    }
}

/// One write over sled's projections overlaid with the backlog's, as the [`Staging`] of
/// [`append`]: reads see what the write staged, then the backlog, then sled; what it
/// stages joins the backlog only if the whole write is accepted and in the log.
struct BacklogWrite<'a> {
    journal: &'a Journal,
    base: &'a Unindexed,
    staged: RefCell<Staged>,
}

impl Staging for BacklogWrite<'_> {
    type Error = JournalError;

    fn abort(error: JournalError) -> JournalError {
        error
    }

    fn slot(&self, name: &SlotName) -> Result<Option<Slot>, JournalError> {
        if let Some(view) = self.staged.borrow().slots.get(name) {
            return Ok(Some(view.slot.clone()));
        }
        if let Some((_, view)) = self.base.slots.get(name) {
            return Ok(Some(view.slot.clone()));
        }
        Ok(self.journal.sled_slot(name)?.map(|v| v.slot))
    }

    fn take_slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError> {
        if let Some(view) = self.staged.borrow_mut().slots.remove(name) {
            return Ok(Some(view));
        }
        if let Some((_, view)) = self.base.slots.get(name) {
            return Ok(Some(view.clone()));
        }
        self.journal.sled_slot(name)
    }

    fn put_slot(&self, view: SlotView) -> Result<(), JournalError> {
        self.staged
            .borrow_mut()
            .slots
            .insert(view.slot.name.clone(), view);
        Ok(())
    }

    fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError> {
        if let Some(view) = self.staged.borrow().reloads.get(id) {
            return Ok(Some(view.clone()));
        }
        if let Some((_, view)) = self.base.reloads.get(id) {
            return Ok(Some(view.clone()));
        }
        self.journal.sled_reload(id)
    }

    fn put_reload(&self, view: ReloadView) -> Result<(), JournalError> {
        self.staged
            .borrow_mut()
            .reloads
            .insert(view.reload.id, view);
        Ok(())
    }

    fn history(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, JournalError> {
        let key = (name.clone(), generation);
        if let Some(artifact) = self.staged.borrow().history.get(&key) {
            return Ok(Some(artifact.clone()));
        }
        if let Some((_, artifact)) = self.base.history.get(&key) {
            return Ok(Some(artifact.clone()));
        }
        self.journal.sled_history_entry(name, generation)
    }

    fn put_history(
        &self,
        name: &SlotName,
        generation: Generation,
        artifact: &ArtifactRef,
    ) -> Result<(), JournalError> {
        self.staged
            .borrow_mut()
            .history
            .insert((name.clone(), generation), artifact.clone());
        Ok(())
    }

    fn put_record(
        &self,
        record: &Record,
        _stored: Vec<u8>,
        _chain: u32,
    ) -> Result<(), JournalError> {
        self.staged.borrow_mut().records.push(record.clone());
        Ok(())
    }
}

/// Writes the meta values of a journal at seq 0 into `meta` (one batch).
fn write_fresh_meta(meta: &sled::Tree, dir: &Path) -> Result<(), JournalError> {
    let mut batch = sled::Batch::default();
    for (key, value) in Meta::fresh().entries()? {
        batch.insert(key, value);
    }
    meta.apply_batch(batch)
        .map_err(|source| JournalError::Sled {
            dir: dir.to_path_buf(),
            source,
        })
}

/// Folds the records the log holds after sled's end into sled, in batches.
fn catch_up(trees: WriteTrees<'_>, after: &[Record], dir: &Path) -> Result<(), JournalError> {
    tracing::info!(
        dir = %dir.display(),
        records = after.len(),
        "sled is behind the log (a crash before its flush): catching up"
    );
    for chunk in after.chunks(rebuild::APPLY_BATCH) {
        apply_records(trees, chunk, dir)?;
    }
    Ok(())
}

/// Folds `records` (read from the log, decided before) into sled in one transaction:
/// records, projections and the new tip in `meta`.
pub(crate) fn apply_records(
    trees: WriteTrees<'_>,
    records: &[Record],
    dir: &Path,
) -> Result<(), JournalError> {
    let outcome = trees.transaction(|(events, slots, reloads, meta, history)| {
        let write = SledWrite {
            events,
            reloads,
            history,
            slots: SlotCache::new(slots),
        };
        let mut tip = None;
        for record in records {
            let chain = stage_record(&write, record)?;
            tip = Some((record.seq, chain));
        }
        write.slots.write_back()?;
        if let Some((seq, chain)) = tip {
            meta.insert(
                KEY_NEXT_SEQ,
                encode_value("meta next_seq", &(seq + 1)).map_err(abort)?,
            )?;
            meta.insert(
                KEY_LAST_CHAIN,
                encode_value("meta last_chain", &chain).map_err(abort)?,
            )?;
        }
        Ok(())
    });
    match outcome {
        Ok(()) => Ok(()),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(source)) => Err(JournalError::Sled {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes sled's files and derives them again from the log; returns the trees and the
/// number of records folded in.
fn derive_sled(
    dir: &Path,
    sled_dir: &Path,
    reader: &LogReader,
) -> Result<(Trees, u64), JournalError> {
    // Built beside the store and put in place in one step: `sled/` stays the old store
    // (damaged or not) until the new one is complete, for a reader opening it meanwhile and
    // for whatever a crash or power loss leaves (tests/tests/power_loss.rs found a
    // half-derived store that `journal verify` called a lost tail).
    let built = dir.join(crate::rewrite::BUILD_DIR);
    rebuild::discard(&built)?;
    let records = {
        let trees = open_sled(dir, &built)?;
        let (db, events, slots, reloads, meta, history) = &trees;
        let write = (events, slots, reloads, meta, history);
        let mut apply = |records: &[Record]| apply_records(write, records, dir);
        rebuild::fill(reader, db, write, &mut apply, dir)?
    };
    crate::rewrite::sync_tree(&built)?;
    crate::rewrite::install(dir, &built, sled_dir)?;
    Ok((open_sled(dir, sled_dir)?, records))
}

impl Journal {
    /// Opens (creating if needed) the journal in directory `dir` for reading and writing.
    ///
    /// Takes the directory lock and reads the segment log (`<dir>/log`, the source of
    /// truth) once: an unflushed tail after the last durable point (the witness) is cut,
    /// as a crash leaves one; damage before it, or a log shorter than the witness, is
    /// [`JournalError::Corrupt`] naming the seq and byte offset, and nothing is written.
    /// Then sled is opened (a panic inside sled is caught): a sled that does not open or
    /// whose end disagrees with the log is derived again from the log, with a warning
    /// ([`Journal::rebuilt`] says why); a sled that is only behind the log catches up. A
    /// journal written before the log existed gets its log once, after a backup copy of
    /// its files (see `docs/journal.md`).
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        Self::open_mode(dir, None, None)
    }

    /// Opens the journal in `dir` for writing after deriving sled's files from the log
    /// again, whatever state they are in (`tryswap journal rebuild`). The log must be
    /// sound up to its last durable point, as for [`Journal::open`].
    pub fn rebuild(dir: &Path) -> Result<Journal, JournalError> {
        Self::open_mode(dir, None, Some("asked for (`tryswap journal rebuild`)"))
    }

    /// Opens an existing journal read-only for `verify`, `replay`, `export` and reads,
    /// even if the checks of [`Journal::open`] fail (they are logged; `verify` reports
    /// them). Still takes the lock. Writes nothing to the log or the witness; a sled that
    /// is only behind a sound log catches up (derived data, as at [`Journal::open`]), and
    /// sled itself may repair its log on open. `execute` and `compact` return
    /// [`JournalError::ReadOnly`].
    pub fn open_for_inspection(dir: &Path) -> Result<Journal, JournalError> {
        Self::open_mode(dir, Some(Inspection::Lenient), None)
    }

    /// [`Journal::open_for_inspection`] for the read commands: refuses, as
    /// [`Journal::open`] would, a damaged witness, a log that lost or damaged what the
    /// witness says was durable ([`JournalError::Corrupt`] naming the seq and byte offset)
    /// and a sled whose end disagrees with `meta` or the witness: a read must not show a
    /// silently shorter history. The log is read once.
    pub(crate) fn open_strict(dir: &Path) -> Result<Journal, JournalError> {
        Self::open_mode(dir, Some(Inspection::Strict), None)
    }

    fn open_mode(
        dir: &Path,
        inspection: Option<Inspection>,
        rebuild: Option<&str>,
    ) -> Result<Journal, JournalError> {
        let read_only = inspection.is_some();
        let sled_dir = dir.join(SLED_DIR);
        if read_only {
            if !sled_dir.is_dir() {
                return Err(JournalError::Missing(format!(
                    "no journal in {} ({} does not exist)",
                    dir.display(),
                    sled_dir.display()
                )));
            }
        } else {
            std::fs::create_dir_all(dir)
                .map_err(|e| JournalError::io("creating journal directory", dir, e))?;
        }
        let dir_lock = DirLock::acquire(dir)?;
        let witness_path = dir.join(WITNESS_FILE);
        let witness_found = match witness::read(&witness_path, dir) {
            Ok(found) => found,
            Err(e) if inspection == Some(Inspection::Lenient) => {
                tracing::warn!(error = %e, "ignoring the witness for inspection");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(inspection) = inspection {
            return Self::open_inspection(dir, sled_dir, dir_lock, witness_found, inspection);
        }
        crate::rewrite::settle(dir, &sled_dir)?;
        crate::rewrite::run_if_wanted(dir, &sled_dir)?;
        Self::open_writable(dir, sled_dir, dir_lock, witness_found, rebuild)
    }

    fn open_inspection(
        dir: &Path,
        sled_dir: PathBuf,
        dir_lock: DirLock,
        witness_found: Option<(WitnessMark, usize)>,
        inspection: Inspection,
    ) -> Result<Journal, JournalError> {
        let witness_path = dir.join(WITNESS_FILE);
        let strict = inspection == Inspection::Strict;
        let mark = witness_found.map(|(m, _)| m).unwrap_or_default();
        let mut trees = open_sled(dir, &sled_dir)?;
        if let Some(format) = Meta::read(&trees.4, dir)?
            .map(|m| m.format)
            .filter(|f| *f < JOURNAL_FORMAT)
        {
            // sled's files are derived data: an older layout is converted here too (after a
            // backup), from the log only, which stays untouched.
            let reader = LogReader::open(dir)?;
            if !reader.exists() {
                return Err(JournalError::Corrupt {
                    dir: dir.to_path_buf(),
                    what: format!(
                        "journal format {format} without a segment log: open it for writing \
                         once (any command that changes something, or `tryswap journal \
                         rebuild`) to convert it"
                    ),
                });
            }
            rebuild::backup_into(dir, rebuild::FORMAT_BACKUP_DIR)?;
            drop(trees);
            let (derived, records) = derive_sled(dir, &sled_dir, &reader)?;
            rebuild::note(
                dir,
                format!(
                    "converting sled's files from journal format {format} to format \
                     {JOURNAL_FORMAT} (one history key per generation), for inspection"
                ),
                records,
            )?;
            trees = derived;
        }
        let (db, events, slots, reloads, meta, history) = trees;
        // sled files that never took a record in (all trees empty, not even `meta`) are a
        // journal at seq 0: they catch up from the log like any sled behind it.
        let untouched = [&events, &slots, &reloads, &meta, &history]
            .iter()
            .all(|tree| tree.is_empty());
        if untouched {
            write_fresh_meta(&meta, dir)?;
        }
        let stored = Meta::read(&meta, dir)?;
        // One pass over the log: what sled lacks of it, and (strict) whether it holds
        // everything the witness says was durable.
        let reader = LogReader::open(dir)?;
        if stored.is_some() || (strict && reader.exists()) {
            let scan = rebuild::scan(&reader, mark.seq, stored.as_ref().map(Meta::last_seq))?;
            if strict && reader.exists() {
                check_log(dir, &reader, &scan, mark)?;
            }
            if let Some(values) = &stored {
                // Records a killed process appended to the log after sled's last flush:
                // sled (derived data) catches up, so that inspection shows what the log
                // holds. Up to the first damage, if any: the records before it are intact
                // (a power loss leaves a torn write after the durable point, which the next
                // open for writing cuts; damage before that point was refused above in the
                // strict mode and is reported in the lenient one).
                let follows = scan.base.seq == values.base_seq
                    && scan.chain_at_sled == Some(values.last_chain)
                    && tail_findings(&events, values).is_empty();
                if let Some(after) = scan
                    .after_sled
                    .as_ref()
                    .filter(|a| follows && !a.is_empty())
                {
                    catch_up((&events, &slots, &reloads, &meta, &history), after, dir)?;
                }
            }
        }
        let meta_values = match Meta::read(&meta, dir)? {
            Some(values) => {
                let mut findings = tail_findings(&events, &values);
                if let Some((mark, _)) = witness_found {
                    findings.extend(witness_findings(&events, &values, mark, &witness_path));
                }
                if !findings.is_empty() {
                    if strict {
                        return Err(JournalError::Corrupt {
                            dir: dir.to_path_buf(),
                            what: format!(
                                "{}. Nothing was changed; `tryswap journal export` prints the \
                                 readable records",
                                findings.join("; ")
                            ),
                        });
                    }
                    let what = format!("{}. {SALVAGE_HINT}", findings.join("; "));
                    tracing::warn!(dir = %dir.display(), problem = %what, "opening for inspection anyway");
                }
                values
            }
            None => Meta::fresh(),
        };
        Ok(Journal::assemble(
            dir,
            (db, events, slots, reloads, meta, history),
            &meta_values,
            None,
            None,
            dir_lock,
        ))
    }

    /// The handle over opened trees; `log` and `witness` are `None` for a read-only one.
    fn assemble(
        dir: &Path,
        (db, events, slots, reloads, meta, history): Trees,
        meta_values: &Meta,
        log: Option<LogWriter>,
        witness: Option<Witness>,
        dir_lock: DirLock,
    ) -> Journal {
        let tip = WitnessMark {
            seq: meta_values.last_seq(),
            chain: meta_values.last_chain,
        };
        // Only a writable handle flushes sled and moves the mark.
        let index_mark = log
            .is_some()
            .then(|| crate::index_mark::read(dir))
            .flatten();
        let writable = log.is_some();
        let journal = Journal {
            dir: dir.to_path_buf(),
            db,
            events,
            slots,
            reloads,
            meta,
            history,
            read_only: log.is_none(),
            log: Mutex::new(log),
            tip: Mutex::new(tip),
            writer: Mutex::new(()),
            durable: Mutex::new(witness),
            flush_count: AtomicU64::new(0),
            failed: Arc::default(),
            backlog: Arc::default(),
            indexer: Mutex::new(None),
            rebuilt: None,
            index_mark: Mutex::new(index_mark),
            _lock: dir_lock,
        };
        if writable {
            *lock(&journal.indexer) = journal.backlog.start_indexer(
                journal.index_trees(),
                journal.dir.clone(),
                Arc::clone(&journal.failed),
            );
        }
        journal
    }

    fn open_writable(
        dir: &Path,
        sled_dir: PathBuf,
        dir_lock: DirLock,
        witness_found: Option<(WitnessMark, usize)>,
        forced: Option<&str>,
    ) -> Result<Journal, JournalError> {
        let mark = witness_found.map(|(m, _)| m).unwrap_or_default();
        let mut sled = if sled_dir.exists() {
            remove_unfinished_snapshots(&sled_dir)?;
            Some(open_sled(dir, &sled_dir))
        } else {
            None
        };
        let mut migrated = false;
        if !LogReader::open(dir)?.exists() {
            match &sled {
                Some(Ok(trees)) if trees.4.contains_key(KEY_FORMAT).unwrap_or(false) => {
                    rebuild::migrate(dir, &trees.0)?;
                    migrated = true;
                }
                Some(Err(_)) => {
                    // A journal from before the log whose sled does not open: nothing to
                    // derive it from.
                    if let Some(Err(e)) = sled.take() {
                        return Err(e);
                    }
                }
                _ => {
                    if mark.seq > 0 {
                        return Err(JournalError::Corrupt {
                            dir: dir.to_path_buf(),
                            what: format!(
                                "witness {} records seq {} as durably committed but the \
                                 journal has neither a log nor sled's data. {SALVAGE_HINT}",
                                dir.join(WITNESS_FILE).display(),
                                mark.seq
                            ),
                        });
                    }
                    LogWriter::create(dir, 1, &[])?;
                }
            }
        }
        let reader = LogReader::open(dir)?;
        let sled_meta = match &sled {
            Some(Ok(trees)) => match Meta::read(&trees.4, dir) {
                Err(e @ JournalError::Format { .. }) => return Err(e),
                other => Some(other),
            },
            _ => None,
        };
        let sled_tip = match &sled_meta {
            Some(Ok(Some(meta))) => Some(meta.last_seq()),
            _ => None,
        };
        let scan = rebuild::scan(&reader, mark.seq, sled_tip)?;
        let writer = rebuild::writer_after(dir, &reader, &scan, mark)?;
        let log_empty = scan.records == 0 && scan.base.seq == 0;
        let old_format = match &sled_meta {
            Some(Ok(Some(meta))) if meta.format < JOURNAL_FORMAT => Some(meta.format),
            _ => None,
        };
        let converting = old_format.map(|format| {
            format!(
                "converting sled's files from journal format {format} (each slot's history \
                 inside its projection) to format {JOURNAL_FORMAT} (one history key per \
                 generation): derived again from the log"
            )
        });
        if converting.is_some() && !migrated {
            rebuild::backup_into(dir, rebuild::FORMAT_BACKUP_DIR)?;
        }
        let forced = forced.or(converting.as_deref());
        let reason: Option<String> = match (&sled, &sled_meta) {
            _ if forced.is_some() => forced.map(str::to_owned),
            (None, _) if log_empty => None,
            (None, _) => Some("sled's files are missing".to_owned()),
            (Some(Err(e)), _) => Some(format!("sled does not open: {e}")),
            (Some(Ok(_)), Some(Err(e))) => Some(format!("sled's meta values are unreadable: {e}")),
            (Some(Ok(trees)), Some(Ok(None))) => {
                let empty = trees.1.is_empty()
                    && trees.2.is_empty()
                    && trees.3.is_empty()
                    && trees.4.is_empty()
                    && trees.5.is_empty();
                (!empty || !log_empty).then(|| "sled holds no journal".to_owned())
            }
            (Some(Ok(trees)), Some(Ok(Some(meta)))) => {
                let findings = tail_findings(&trees.1, meta);
                if !matches!(trees.4.get(KEY_PURGING), Ok(None)) {
                    Some(format!(
                        "a compaction to base seq {} was interrupted while it removed the \
                         records it dropped from sled",
                        meta.base_seq
                    ))
                } else if !findings.is_empty() {
                    Some(findings.join("; "))
                } else if meta.base_seq != scan.base.seq {
                    Some(format!(
                        "sled's compaction base is seq {} but the log's is seq {}",
                        meta.base_seq, scan.base.seq
                    ))
                } else if meta.last_seq() > scan.tip.seq {
                    Some(format!(
                        "sled ends at seq {} but the log at seq {}",
                        meta.last_seq(),
                        scan.tip.seq
                    ))
                } else if scan.chain_at_sled != Some(meta.last_chain) {
                    Some(format!(
                        "sled's last record, seq {}, differs from the log's",
                        meta.last_seq()
                    ))
                } else if scan.after_sled.is_none() {
                    Some(format!(
                        "sled is far behind the log (seq {} of {})",
                        meta.last_seq(),
                        scan.tip.seq
                    ))
                } else {
                    None
                }
            }
            (Some(Ok(_)), None) => None,
        };
        let mut rebuilt = None;
        let (db, events, slots, reloads, meta, history) = match (reason, sled) {
            (Some(reason), sled) => {
                if converting.is_some() {
                    tracing::warn!(
                        dir = %dir.display(),
                        %reason,
                        backup = %dir.join(rebuild::FORMAT_BACKUP_DIR).display(),
                        "converting the journal's index once"
                    );
                } else if forced.is_none() {
                    tracing::warn!(
                        dir = %dir.display(),
                        %reason,
                        "JOURNAL INDEX REBUILT: sled's files cannot be trusted; deriving them again from the log (no durable record is lost)"
                    );
                }
                drop(sled);
                let (trees, records) = derive_sled(dir, &sled_dir, &reader)?;
                rebuilt = Some(rebuild::note(dir, reason, records)?);
                trees
            }
            (None, Some(Ok(trees))) => {
                if let Some(after) = scan.after_sled.as_ref().filter(|a| !a.is_empty()) {
                    let (_, events, slots, reloads, meta, history) = &trees;
                    catch_up((events, slots, reloads, meta, history), after, dir)?;
                }
                trees
            }
            (None, _) => {
                let trees = open_sled(dir, &sled_dir)?;
                write_fresh_meta(&trees.4, dir)?;
                // On disk at once: sled takes records in only behind the log (the
                // backlog), so a copy of the disk or a process killed before sled's first
                // flush must find a journal at seq 0 to catch up from the log, not sled
                // files that hold no journal (which a writable open would derive again,
                // loudly, and an inspection could not read).
                trees.0.flush().map_err(|source| JournalError::Sled {
                    dir: dir.to_path_buf(),
                    source,
                })?;
                trees
            }
        };
        let meta_values = Meta::read(&meta, dir)?.unwrap_or_else(Meta::fresh);
        let witness = Witness::open(
            &dir.join(WITNESS_FILE),
            witness_found,
            WitnessMark::default(),
        )?;
        let mut journal = Journal::assemble(
            dir,
            (db, events, slots, reloads, meta, history),
            &meta_values,
            Some(writer),
            Some(witness),
            dir_lock,
        );
        journal.rebuilt = rebuilt;
        let tip = journal.tip();
        if tip.seq > mark.seq || journal.rebuilt.is_some() {
            journal.durable_flush(tip, Flush::Full)?;
        }
        Ok(journal)
    }

    /// Why sled's files were derived again from the log when this handle opened, if they
    /// were (also logged as a warning and kept in `rebuilds.jsonl`).
    pub fn rebuilt(&self) -> Option<&RebuildNote> {
        self.rebuilt.as_ref()
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this handle came from [`Journal::open_for_inspection`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn writable(&self) -> Result<(), JournalError> {
        if self.read_only {
            return Err(JournalError::ReadOnly {
                dir: self.dir.clone(),
            });
        }
        self.healthy()
    }

    /// `Ok` unless a sync failed on this handle.
    fn healthy(&self) -> Result<(), JournalError> {
        self.failed.check(&self.dir)
    }

    /// Why this handle failed, if a sync failed on it: from then on every write and flush
    /// returns [`JournalError::Failed`], and dropping the handle neither flushes nor syncs.
    pub fn failure(&self) -> Option<String> {
        self.failed.cause()
    }

    /// Marks the handle failed as a failed sync does, and returns the error every later
    /// write gets. Failure injection (crash tests) and callers that learn of a failed sync
    /// of the journal's files by other means use it; the first cause is kept.
    pub fn fail(&self, cause: impl Into<String>) -> JournalError {
        self.failed.fail(&self.dir, &cause.into())
    }

    pub(crate) fn sled_err(&self, source: sled::Error) -> JournalError {
        JournalError::Sled {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Decides `command` against the projections and, if accepted, appends its event(s)
    /// to the log and updates the projections (every read sees them from then on; sled's
    /// trees take them in shortly after, see `docs/journal.md` "Writing"). Returns the
    /// appended records.
    ///
    /// [`JournalError::Rejected`] when the state machine refuses (nothing written). Every
    /// record is in the log when the call returns; after an `Activated` record (or another
    /// write-ahead point, [`Record::needs_durable_flush`]) the call returns only once the
    /// record is durable (flushed and synced, witness updated). An error from that flush
    /// means the record is committed but not known to be durable.
    pub fn execute(
        &self,
        command: &Command,
        at: DateTime<Utc>,
    ) -> Result<Vec<Record>, JournalError> {
        self.execute_all(std::slice::from_ref(command), at)
    }

    /// Like [`Journal::execute`] for several commands (possibly of different slots), all
    /// or nothing in one transaction; each is decided against the state the previous ones
    /// left. If any is rejected, nothing is written and that rejection is returned.
    pub fn execute_all(
        &self,
        commands: &[Command],
        at: DateTime<Utc>,
    ) -> Result<Vec<Record>, JournalError> {
        self.writable()?;
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let (records, tip) = {
            let _writer = lock(&self.writer);
            let tip = *lock(&self.tip);
            let mut backlog = self.backlog.lock();
            let write = BacklogWrite {
                journal: self,
                base: &backlog,
                staged: RefCell::new(Staged::default()),
            };
            let (records, tip) = append(&write, commands, at, tip, &self.dir)?;
            let staged = write.staged.into_inner();
            self.append_to_log(&records)?;
            backlog.merge(staged, tip.seq);
            let waiting = backlog.records.len();
            drop(backlog);
            *lock(&self.tip) = tip;
            if waiting >= crate::backlog::BACKLOG_MAX {
                self.settle()?;
            }
            (records, tip)
        };
        self.backlog.notify();
        if records.iter().any(Record::needs_durable_flush) {
            self.durable_flush(tip, Flush::WriteAhead)?;
        }
        Ok(records)
    }

    /// Appends the frames of `records` (just committed to sled) to the log; a failure fails
    /// the handle (sled is then ahead of the log, and the next open derives it again).
    pub(crate) fn append_to_log(&self, records: &[Record]) -> Result<(), JournalError> {
        let frames = log_frames(records)?;
        let mut log = lock(&self.log);
        let Some(writer) = log.as_mut() else {
            return Ok(());
        };
        writer.append(&frames).map_err(|e| {
            self.fail(format!(
                "appending seq {:?} to the log: {e}",
                records.first().map(|r| r.seq)
            ))
        })
    }

    pub(crate) fn finish_tx<T>(
        &self,
        outcome: Result<T, TransactionError<JournalError>>,
    ) -> Result<T, JournalError> {
        match outcome {
            Ok(value) => Ok(value),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.sled_err(e)),
        }
    }

    /// Makes everything up to `tip` power-safe: `fdatasync` of the log, then the witness.
    /// [`Flush::WriteAhead`] flushes are the ones behind [`Journal::flush_count`].
    ///
    /// Group commit: the sync covers every record committed when it starts (a record is in
    /// the log before the tip moves past it), and the witness is moved to that tip, so the
    /// callers that waited for this one find their records durable and return without a
    /// sync of their own.
    ///
    /// Only [`Flush::Full`] (`Journal::flush`, compaction, open, drop) also flushes sled
    /// (`Db::flush`, on Linux a `sync_file_range` of its files that waits for their
    /// writeback): sled is an index derived from the log, which `open` (and an inspection)
    /// catches up with whatever sled lost in a killed process, and sled's own flusher
    /// writes it every 500 ms. A write-ahead point needs the log on disk, not the index;
    /// nor does a process that exits without closing sled ([`Flush::LogOnly`]).
    pub(crate) fn durable_flush(&self, tip: WitnessMark, how: Flush) -> Result<(), JournalError> {
        let counted = how == Flush::WriteAhead;
        if how == Flush::Full {
            // A failed handle refuses every flush, before it touches sled.
            self.healthy()?;
            // sled is flushed whole, and the index mark moved: with the backlog in it.
            self.settle()?;
        }
        let mut durable = lock(&self.durable);
        let Some(witness) = durable.as_mut() else {
            return Ok(());
        };
        // After a failed sync a retry could "succeed" over pages the kernel dropped.
        self.healthy()?;
        let latest = *lock(&self.tip);
        let committed = witness.group_commit(tip, latest, counted, || {
            if how == Flush::Full {
                self.db.flush().map_err(|e| self.sled_err(e))?;
            }
            if let Some(log) = lock(&self.log).as_ref() {
                log.sync()?;
            }
            Ok(())
        });
        let target = match committed {
            Ok(Some(target)) => target,
            Ok(None) => return Ok(()),
            Err(cause) => return Err(self.fail(cause)),
        };
        if how == Flush::Full {
            crate::index_mark::write(&self.dir, target.seq);
            *lock(&self.index_mark) = Some(target.seq);
        }
        if counted {
            self.flush_count.fetch_add(1, Ordering::SeqCst);
        } else {
            // The holder is done writing for now (closing, exiting, compacted): readers
            // without the lock answer from the projections as of this point. Between
            // these, they read the log (see `crate::snapshot`).
            self.refresh_snapshot();
        }
        Ok(())
    }

    /// How many write-ahead flushes (after `Activated`, `Stopped` and the other write-ahead
    /// records) this handle made durable. Flushes by [`Journal::flush`], `compact` and drop are not counted.
    pub fn flush_count(&self) -> u64 {
        self.flush_count.load(Ordering::SeqCst)
    }

    /// Makes every committed record durable (flush, sync, witness). Call at shutdown;
    /// dropping the journal does it too. A no-op on a read-only handle.
    pub fn flush(&self) -> Result<(), JournalError> {
        let tip = *lock(&self.tip);
        self.durable_flush(tip, Flush::Full)
    }

    /// [`Journal::flush`] for a process that exits next without closing the journal: the
    /// log and the witness are made durable and the projection snapshot written, sled (the
    /// index, which the next open catches up from the log) is left to what its own writes
    /// already did, unless it lags the log by more than half of what
    /// [`crate::open_for_command`] lets a one-shot command leave it behind: then sled is
    /// flushed too and the index mark moved. Not counted by [`Journal::flush_count`].
    pub fn flush_for_exit(&self) -> Result<(), JournalError> {
        let tip = *lock(&self.tip);
        let mark = *lock(&self.index_mark);
        let how = if crate::index_mark::lags(mark, tip.seq, crate::index_mark::INDEX_LAG_MAX / 2) {
            Flush::Full
        } else {
            Flush::LogOnly
        };
        self.durable_flush(tip, how)
    }

    /// Bytes of the log and of sled's files (the archive and backups not counted): what
    /// compaction bounds. Unreadable entries count as 0.
    pub fn size_bytes(&self) -> u64 {
        size_on_disk(&self.dir)
    }

    /// The last sequence number committed (0 for an empty journal).
    pub fn last_seq(&self) -> u64 {
        lock(&self.tip).seq
    }

    fn tip(&self) -> WitnessMark {
        *lock(&self.tip)
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, JournalError> {
        match tree.get(key).map_err(|e| self.sled_err(e))? {
            None => Ok(None),
            Some(bytes) => decode_value(name, key, &bytes).map(Some),
        }
    }

    fn all<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
    ) -> Result<Vec<T>, JournalError> {
        tree.iter()
            .map(|item| {
                let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
                decode_value(name, &key, &bytes)
            })
            .collect()
    }

    /// The projection of slot `name` in sled's tree (the backlog aside).
    pub(crate) fn sled_slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError> {
        self.get(&self.slots, SLOTS, slot_key(name))
    }

    /// The projection of reload `id` in sled's tree (the backlog aside).
    pub(crate) fn sled_reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError> {
        self.get(&self.reloads, RELOADS, &reload_key(id))
    }

    /// One history entry in sled's tree (the backlog aside).
    pub(crate) fn sled_history_entry(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, JournalError> {
        self.get(&self.history, HISTORY, &history_key(name, generation))
    }

    /// Folds the backlog into sled now, for what reads sled's trees whole (compaction,
    /// verify, replay, the snapshot, a full flush). No-op on a read-only handle.
    pub(crate) fn settle(&self) -> Result<(), JournalError> {
        if self.read_only {
            return Ok(());
        }
        self.backlog
            .settle(&self.index_trees(), &self.dir, &self.failed)
    }

    /// sled's trees, as the indexer writes them.
    fn index_trees(&self) -> IndexTrees {
        IndexTrees {
            events: self.events.clone(),
            slots: self.slots.clone(),
            reloads: self.reloads.clone(),
            meta: self.meta.clone(),
            history: self.history.clone(),
        }
    }

    /// The projection of slot `name`, if any event touched it.
    pub fn slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError> {
        // The backlog is consulted first, and an entry leaves it only once sled holds it
        // (see `crate::backlog`): a miss there finds it in sled.
        if let Some((_, view)) = self.backlog.lock().slots.get(name) {
            return Ok(Some(view.clone()));
        }
        self.sled_slot(name)
    }

    /// Every slot projection, by name.
    pub fn slots(&self) -> Result<Vec<SlotView>, JournalError> {
        let newer: Vec<SlotView> = self
            .backlog
            .lock()
            .slots
            .values()
            .map(|(_, v)| v.clone())
            .collect();
        let mut all: BTreeMap<SlotName, SlotView> = self
            .all::<SlotView>(&self.slots, SLOTS)?
            .into_iter()
            .map(|v| (v.slot.name.clone(), v))
            .collect();
        all.extend(newer.into_iter().map(|v| (v.slot.name.clone(), v)));
        Ok(all.into_values().collect())
    }

    /// The projection of reload `id`, if it exists (and was not compacted away).
    pub fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError> {
        if let Some((_, view)) = self.backlog.lock().reloads.get(id) {
            return Ok(Some(view.clone()));
        }
        self.sled_reload(id)
    }

    /// Slot `name`'s history: every generation that was ever active there (and not
    /// trimmed by a compaction) with its artifact. One range scan of the `history` tree.
    pub fn history(&self, name: &SlotName) -> Result<History, JournalError> {
        let newer: Vec<(Generation, ArtifactRef)> = self
            .backlog
            .lock()
            .history
            .iter()
            .filter(|((slot, _), _)| slot == name)
            .map(|((_, generation), (_, artifact))| (*generation, artifact.clone()))
            .collect();
        let mut out = History::new();
        for item in self.history.scan_prefix(history_prefix(name)) {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let generation = generation_of_key(&key).ok_or_else(|| JournalError::Corrupt {
                dir: self.dir.clone(),
                what: format!("tree `history` holds key {}", describe_key(HISTORY, &key)),
            })?;
            out.insert(generation, decode_value(HISTORY, &key, &bytes)?);
        }
        out.extend(newer);
        Ok(out)
    }

    /// The artifact of generation `generation` of slot `name`, if it is in the slot's
    /// history. One key read.
    pub fn history_entry(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, JournalError> {
        let key = (name.clone(), generation);
        if let Some((_, artifact)) = self.backlog.lock().history.get(&key) {
            return Ok(Some(artifact.clone()));
        }
        self.sled_history_entry(name, generation)
    }

    /// Every reload of `slot` the journal holds, oldest first (by first record).
    ///
    /// Scans the reload projections, which compaction keeps bounded.
    pub fn reloads_of(&self, slot: &SlotName) -> Result<Vec<ReloadView>, JournalError> {
        let newer: Vec<ReloadView> = self
            .backlog
            .lock()
            .reloads
            .values()
            .filter(|(_, v)| &v.reload.slot == slot)
            .map(|(_, v)| v.clone())
            .collect();
        let mut views: HashMap<ReloadId, ReloadView> = self
            .all::<ReloadView>(&self.reloads, RELOADS)?
            .into_iter()
            .filter(|v| &v.reload.slot == slot)
            .map(|v| (v.reload.id, v))
            .collect();
        views.extend(newer.into_iter().map(|v| (v.reload.id, v)));
        let mut views: Vec<ReloadView> = views.into_values().collect();
        views.sort_by_key(ReloadView::created_seq);
        Ok(views)
    }

    /// Every reload that is not terminal, found through the slots' in-flight pointers.
    pub fn in_flight(&self) -> Result<Vec<ReloadView>, JournalError> {
        JournalStore::in_flight(self)
    }

    /// The records from sequence number `from_seq` on, in order. A record that does not
    /// decode yields [`JournalError::CorruptValue`] naming its key; iteration goes on.
    pub fn events(
        &self,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<Record, JournalError>> + Send + 'static {
        let dir = self.dir.clone();
        // The backlog is a suffix of the journal; sled holds everything before its first
        // record (and may take in more meanwhile: the range stops where the copy starts).
        let (newer, first_newer): (Vec<Record>, Option<u64>) = {
            let backlog = self.backlog.lock();
            (
                backlog
                    .records
                    .iter()
                    .filter(|r| r.seq >= from_seq)
                    .cloned()
                    .collect(),
                backlog.first_seq(),
            )
        };
        let range = match first_newer {
            Some(first) => self
                .events
                .range(seq_key(from_seq)..seq_key(first.max(from_seq))),
            None => self.events.range(seq_key(from_seq)..),
        };
        range
            .map(move |item| {
                let (key, bytes) = item.map_err(|source| JournalError::Sled {
                    dir: dir.clone(),
                    source,
                })?;
                let record = decode_event(&key, &bytes)?;
                if seq_of_key(&key) != Some(record.seq) {
                    return Err(JournalError::Corrupt {
                        dir: dir.clone(),
                        what: format!(
                            "tree `events` key {} holds the record of seq {}",
                            describe_key(EVENTS, &key),
                            record.seq
                        ),
                    });
                }
                Ok(record)
            })
            .chain(newer.into_iter().map(Ok))
    }

    /// The current meta values.
    pub(crate) fn meta_values(&self) -> Result<Meta, JournalError> {
        // The tip in `meta` is sled's: with the backlog folded in, the journal's.
        self.settle()?;
        Ok(Meta::read(&self.meta, &self.dir)?.unwrap_or_else(Meta::fresh))
    }
}

/// The sled journal as a [`JournalStore`]: every method is the inherent one of the same name.
impl JournalStore for Journal {
    fn dir(&self) -> &Path {
        Journal::dir(self)
    }

    fn is_read_only(&self) -> bool {
        Journal::is_read_only(self)
    }

    fn execute_all(
        &self,
        commands: &[Command],
        at: DateTime<Utc>,
    ) -> Result<Vec<Record>, JournalError> {
        Journal::execute_all(self, commands, at)
    }

    fn fail(&self, cause: &str) -> JournalError {
        Journal::fail(self, cause)
    }

    fn failure(&self) -> Option<String> {
        Journal::failure(self)
    }

    fn flush(&self) -> Result<(), JournalError> {
        Journal::flush(self)
    }

    fn flush_for_exit(&self) -> Result<(), JournalError> {
        Journal::flush_for_exit(self)
    }

    fn flush_count(&self) -> u64 {
        Journal::flush_count(self)
    }

    fn last_seq(&self) -> u64 {
        Journal::last_seq(self)
    }

    fn slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError> {
        Journal::slot(self, name)
    }

    fn slots(&self) -> Result<Vec<SlotView>, JournalError> {
        Journal::slots(self)
    }

    fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError> {
        Journal::reload(self, id)
    }

    fn reloads_of(&self, slot: &SlotName) -> Result<Vec<ReloadView>, JournalError> {
        Journal::reloads_of(self, slot)
    }

    fn history(&self, name: &SlotName) -> Result<History, JournalError> {
        Journal::history(self, name)
    }

    fn history_entry(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, JournalError> {
        Journal::history_entry(self, name, generation)
    }

    fn events(&self, from_seq: u64) -> Records {
        Box::new(Journal::events(self, from_seq))
    }

    fn replay(&self, until_seq: u64) -> Result<ReplayState, JournalError> {
        Journal::replay(self, until_seq)
    }

    fn verify(&self) -> Result<VerifyReport, JournalError> {
        Journal::verify(self)
    }

    fn compact(&self, keep_per_slot: usize) -> Result<CompactReport, JournalError> {
        Journal::compact(self, keep_per_slot)
    }

    fn size_bytes(&self) -> u64 {
        Journal::size_bytes(self)
    }
}

impl Journal {
    /// Stops the indexer thread and waits for it (it holds sled's trees: sled must be
    /// closed, and the directory's lock released, only after it).
    fn stop_indexer(&self) {
        self.backlog.close();
        if let Some(thread) = lock(&self.indexer).take() {
            if thread.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "the journal's indexer panicked");
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop_indexer();
        if self.failure().is_some() {
            // sled syncs its log when its last handle drops and panics if that fails. What
            // is on disk is for the next open to judge: keep sled's state alive (a leak,
            // once, on a failed journal) so nothing more is written or synced.
            std::mem::forget(self.db.clone());
            return;
        }
        if !self.read_only {
            if let Err(e) = self.flush() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "flushing the journal on drop");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_sled_open_becomes_corrupt() {
        let dir = Path::new("/var/lib/tryswap/journal");
        let err = guard_sled::<()>(dir, &dir.join(SLED_DIR), || {
            panic!("assertion failed: segment header")
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{text}");
        assert!(text.contains("/var/lib/tryswap/journal"), "{text}");
        assert!(
            text.contains("sled panicked") && text.contains("segment header"),
            "{text}"
        );
        assert!(
            text.contains("export --salvage") && text.contains("journal rebuild"),
            "{text}"
        );
        let err = guard_sled::<()>(dir, &dir.join(SLED_DIR), || {
            Err(sled::Error::Corruption { at: None, bt: () })
        })
        .unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    }
}
