//! Deriving sled from the segment log, and the log from an older journal.
//!
//! - [`scan`] reads the log once at open and finds its end, its damage and the chain values
//!   the witness and sled's `meta` claim;
//! - [`rebuild`] throws sled's files away and folds the whole log into a fresh store;
//! - [`migrate`] gives a journal written before the log existed (sled and the witness only,
//!   journal format 1 as main wrote it until e196fe3) its log, once, after copying its
//!   files to `backup-before-log/`.

use std::path::Path;

use crate::codec;
use crate::error::JournalError;
use crate::journal::WriteTrees;
use crate::layout::{
    base_reload_key, base_slot_key, decode_value, encode_history, encode_value, history_key,
    reload_key, seq_key, seq_of_key, slot_key, Meta, EVENTS, PREFIX_BASE_RELOAD, PREFIX_BASE_SLOT,
    SLED_DIR, WITNESS_FILE,
};
use crate::projection::{BaseSlot, ReloadView};
use crate::record::Record;
use crate::segment_log::{
    base_frames, frame, segment_path, LogDamage, LogItem, LogPosition, LogReader, LogWriter,
    KIND_RECORD,
};
use crate::sled_dir::list_tree;
use crate::witness::{sync_dir, WitnessMark};

/// Where [`migrate`] keeps the journal's files as they were before it added the log.
pub const MIGRATION_BACKUP_DIR: &str = "backup-before-log";

/// Where the conversion of a format 1 sled (each slot's history inside its projection) to
/// format 2 (one history key per generation) keeps sled's files and the witness as they
/// were, before it derives sled again from the log.
pub const FORMAT_BACKUP_DIR: &str = "backup-before-format-2";

/// Records folded into sled per transaction by [`rebuild`] and the catch-up.
pub(crate) const APPLY_BATCH: usize = 2048;

/// What one pass over the log found.
#[derive(Debug)]
pub(crate) struct LogScan {
    /// The log's compaction base (0: none).
    pub base: WitnessMark,
    /// Its last good record (or the base).
    pub tip: WitnessMark,
    /// Where the next frame goes: after the last good frame.
    pub end: LogPosition,
    /// The damage that ended the read, if any.
    pub damage: Option<LogDamage>,
    /// The chain value of the record the witness names, if the log holds it.
    pub chain_at_witness: Option<u32>,
    /// The chain value of the record sled's `meta` ends with, if the log holds it.
    pub chain_at_sled: Option<u32>,
    /// The records after sled's end (at most [`CATCH_UP_MAX`]; `None` if there are more).
    pub after_sled: Option<Vec<Record>>,
    /// Records read (kept ones included).
    pub records: u64,
}

/// The most records a catch-up applies; a sled further behind is rebuilt.
const CATCH_UP_MAX: usize = 100_000;

/// Reads the whole log once. `witness` and `sled_tip` are the marks whose chain values are
/// wanted.
pub(crate) fn scan(
    reader: &LogReader,
    witness: u64,
    sled_tip: Option<u64>,
) -> Result<LogScan, JournalError> {
    scan_with(reader, witness, sled_tip, |_| Ok(()))
}

/// [`scan`], handing every good item to `each` as it is read (a lock-free read prints or
/// folds them in the same pass); an error from `each` ends the scan with that error.
pub(crate) fn scan_with(
    reader: &LogReader,
    witness: u64,
    sled_tip: Option<u64>,
    mut each: impl FnMut(&LogItem) -> Result<(), JournalError>,
) -> Result<LogScan, JournalError> {
    let mut out = LogScan {
        base: WitnessMark::default(),
        tip: WitnessMark::default(),
        end: LogPosition {
            segment: 1,
            offset: 8,
        },
        damage: None,
        chain_at_witness: (witness == 0).then_some(0),
        chain_at_sled: (sled_tip == Some(0)).then_some(0),
        after_sled: Some(Vec::new()),
        records: 0,
    };
    let mut items = reader.items();
    for item in items.by_ref() {
        if let Ok(item) = &item {
            each(item)?;
        }
        match item {
            Ok(LogItem::Base(base)) => {
                out.base = WitnessMark {
                    seq: base.seq,
                    chain: base.chain,
                };
                if witness == base.seq {
                    out.chain_at_witness = Some(base.chain);
                }
                if sled_tip == Some(base.seq) {
                    out.chain_at_sled = Some(base.chain);
                }
            }
            Ok(LogItem::Kept(_)) => out.records += 1,
            Ok(LogItem::Record { record, chain, .. }) => {
                out.records += 1;
                if record.seq == witness {
                    out.chain_at_witness = Some(chain);
                }
                if Some(record.seq) == sled_tip {
                    out.chain_at_sled = Some(chain);
                }
                if sled_tip.is_some_and(|s| record.seq > s) {
                    if let Some(after) = out.after_sled.as_mut() {
                        if after.len() < CATCH_UP_MAX {
                            after.push(record);
                        } else {
                            out.after_sled = None;
                        }
                    }
                }
            }
            Err(damage) => {
                out.damage = Some(damage);
                break;
            }
        }
    }
    let (end, tip) = items.position();
    out.end = end;
    out.tip = tip;
    Ok(out)
}

/// How the caller writes folded records into sled: one transaction per call.
pub(crate) type Apply<'a> = dyn FnMut(&[Record]) -> Result<(), JournalError> + 'a;

/// Writes the log's contents into an empty, just opened sled: the base (meta values,
/// projections, histories and base snapshot), the kept records, and every record after it
/// through `apply` (which folds them, in batches). Returns the number of records written.
pub(crate) fn fill(
    reader: &LogReader,
    db: &sled::Db,
    (events, slots, reloads, meta, history): WriteTrees<'_>,
    apply: &mut Apply<'_>,
    dir: &Path,
) -> Result<u64, JournalError> {
    let sled_err = |source| JournalError::Sled {
        dir: dir.to_path_buf(),
        source,
    };
    let mut fresh = Meta::fresh();
    let mut batch: Vec<Record> = Vec::with_capacity(APPLY_BATCH);
    let mut written = 0u64;
    let mut meta_written = false;
    let mut kept = sled::Batch::default();
    for item in reader.items() {
        let item = match item {
            Ok(item) => item,
            // The caller decided that what follows the damage is an unflushed tail.
            Err(_) => break,
        };
        match item {
            LogItem::Base(base) => {
                fresh.base_seq = base.seq;
                fresh.base_chain = base.chain;
                fresh.next_seq = base.seq + 1;
                fresh.last_chain = base.chain;
                let mut entries = sled::Batch::default();
                for (key, value) in fresh.entries()? {
                    entries.insert(key, value);
                }
                let mut slot_batch = sled::Batch::default();
                let mut history_batch = sled::Batch::default();
                for view in &base.slots {
                    let name = &view.slot.name;
                    let entries_of = base.history.get(name).cloned().unwrap_or_default();
                    for (generation, artifact) in &entries_of {
                        history_batch
                            .insert(history_key(name, *generation), encode_history(artifact)?);
                    }
                    let with_history = BaseSlot::new(view, entries_of);
                    entries.insert(
                        base_slot_key(name),
                        encode_value("base slot view", &with_history)?,
                    );
                    slot_batch.insert(slot_key(name), encode_value("slot view", view)?);
                }
                history.apply_batch(history_batch).map_err(sled_err)?;
                let mut reload_batch = sled::Batch::default();
                for view in &base.reloads {
                    let encoded = encode_value("reload view", view)?;
                    entries.insert(base_reload_key(&view.reload.id), encoded.clone());
                    reload_batch.insert(&reload_key(&view.reload.id), encoded);
                }
                meta.apply_batch(entries).map_err(sled_err)?;
                slots.apply_batch(slot_batch).map_err(sled_err)?;
                reloads.apply_batch(reload_batch).map_err(sled_err)?;
                meta_written = true;
            }
            LogItem::Kept(record) => {
                kept.insert(&seq_key(record.seq), codec::encode_record(&record)?);
                written += 1;
            }
            LogItem::Record { record, .. } => {
                if !meta_written {
                    let mut entries = sled::Batch::default();
                    for (key, value) in fresh.entries()? {
                        entries.insert(key, value);
                    }
                    meta.apply_batch(entries).map_err(sled_err)?;
                    meta_written = true;
                }
                batch.push(record);
                written += 1;
                if batch.len() == APPLY_BATCH {
                    failpoint_before_batch(dir)?;
                    apply(&batch)?;
                    batch.clear();
                }
            }
        }
    }
    events.apply_batch(kept).map_err(sled_err)?;
    if !meta_written {
        let mut entries = sled::Batch::default();
        for (key, value) in fresh.entries()? {
            entries.insert(key, value);
        }
        meta.apply_batch(entries).map_err(sled_err)?;
    }
    if !batch.is_empty() {
        failpoint_before_batch(dir)?;
        apply(&batch)?;
    }
    db.flush().map_err(sled_err)?;
    Ok(written)
}

/// Failpoint `journal-rebuild-batch`: a rebuild that stops before it writes a batch of
/// records into the new store, as a crash or a full disk would stop it. Active wherever the
/// `fail` crate's failpoints are compiled in (this crate's `failpoints` feature, or its own
/// tests); `dir` is only used then.
#[allow(unused_variables)]
fn failpoint_before_batch(dir: &Path) -> Result<(), JournalError> {
    fail::fail_point!("journal-rebuild-batch", |_| Err(JournalError::io(
        "deriving sled from the log (failpoint journal-rebuild-batch)",
        dir,
        std::io::Error::other("failpoint"),
    )));
    Ok(())
}

/// Removes a store directory (sled's files, or a half-built one) if it exists.
pub(crate) fn discard(store: &Path) -> Result<(), JournalError> {
    match std::fs::remove_dir_all(store) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JournalError::io(
            "removing a store to build it again",
            store,
            e,
        )),
    }
}

/// Gives a journal without a log its log: copies `sled/` and the witness to
/// [`MIGRATION_BACKUP_DIR`] (synced), then writes one segment holding the compaction base
/// (if any) and every record sled holds, byte for byte. Returns the records written.
pub(crate) fn migrate(dir: &Path, db: &sled::Db) -> Result<u64, JournalError> {
    backup_into(dir, MIGRATION_BACKUP_DIR)?;
    let sled_err = |source| JournalError::Sled {
        dir: dir.to_path_buf(),
        source,
    };
    let meta_tree = db.open_tree(crate::layout::META).map_err(sled_err)?;
    let events = db.open_tree(EVENTS).map_err(sled_err)?;
    let meta = Meta::read(&meta_tree, dir)?.unwrap_or_else(Meta::fresh);
    let mut initial = Vec::new();
    if meta.base_seq > 0 {
        // Format 1 stored base slots with their history, as base frames still do.
        let mut slots: Vec<BaseSlot> = Vec::new();
        for item in meta_tree.scan_prefix(PREFIX_BASE_SLOT) {
            let (key, bytes) = item.map_err(sled_err)?;
            slots.push(decode_value(crate::layout::META, &key, &bytes)?);
        }
        let mut reloads: Vec<ReloadView> = Vec::new();
        for item in meta_tree.scan_prefix(PREFIX_BASE_RELOAD) {
            let (key, bytes) = item.map_err(sled_err)?;
            reloads.push(decode_value(crate::layout::META, &key, &bytes)?);
        }
        let refs: Vec<&ReloadView> = reloads.iter().collect();
        let mark = WitnessMark {
            seq: meta.base_seq,
            chain: meta.base_chain,
        };
        initial.extend(base_frames(mark, &slots, &refs)?);
    }
    let mut count = 0u64;
    for item in events.iter() {
        let (key, bytes) = item.map_err(sled_err)?;
        if seq_of_key(&key).is_some_and(|seq| seq > meta.last_seq()) {
            break;
        }
        crate::layout::decode_event(&key, &bytes)?;
        initial.extend(frame(KIND_RECORD, &bytes));
        count += 1;
    }
    LogWriter::create(dir, meta.base_seq + 1, &initial)?;
    tracing::warn!(
        dir = %dir.display(),
        records = count,
        backup = %dir.join(MIGRATION_BACKUP_DIR).display(),
        "converted a journal without a segment log: its records are now in log/, its old files in the backup"
    );
    Ok(count)
}

/// Copies `sled/` and the witness into `dir/<name>` (under a temporary name, synced, then
/// renamed), unless a backup is already there.
pub(crate) fn backup_into(dir: &Path, name: &str) -> Result<(), JournalError> {
    let target = dir.join(name);
    if target.exists() {
        return Ok(());
    }
    let staging = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&staging);
    let sled_dir = dir.join(SLED_DIR);
    let listing = list_tree(&sled_dir, "listing sled's files for the backup")?;
    let mut copies = Vec::new();
    for (file, _) in &listing.files {
        let relative = file.strip_prefix(dir).unwrap_or(file);
        copies.push((file.clone(), staging.join(relative)));
    }
    let witness = dir.join(WITNESS_FILE);
    if witness.exists() {
        copies.push((witness, staging.join(WITNESS_FILE)));
    }
    std::fs::create_dir_all(&staging)
        .map_err(|e| JournalError::io("creating the backup", &staging, e))?;
    for (from, to) in &copies {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| JournalError::io("creating the backup", parent, e))?;
        }
        std::fs::copy(from, to).map_err(|e| JournalError::io("copying for the backup", from, e))?;
        std::fs::File::open(to)
            .and_then(|f| f.sync_all())
            .map_err(|e| JournalError::io("syncing the backup", to, e))?;
    }
    std::fs::rename(&staging, &target)
        .map_err(|e| JournalError::io("putting the backup in place", &target, e))?;
    sync_dir(dir)
}

/// Why and when sled's files were derived again from the log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RebuildNote {
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Why (what was wrong with sled's files, or that an operator asked).
    pub reason: String,
    /// How many records were folded in from the log.
    pub records: u64,
}

/// The file in the journal directory that lists every rebuild, one JSON object a line.
pub const REBUILDS_FILE: &str = "rebuilds.jsonl";

/// Records a rebuild in [`REBUILDS_FILE`] (appended and synced) and returns its note.
pub(crate) fn note(dir: &Path, reason: String, records: u64) -> Result<RebuildNote, JournalError> {
    use std::io::Write;
    let note = RebuildNote {
        at: chrono::Utc::now(),
        reason,
        records,
    };
    let path = dir.join(REBUILDS_FILE);
    let mut line = serde_json::to_vec(&note)
        .map_err(|e| JournalError::io("encoding the rebuild note", &path, e.into()))?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_data()))
        .map_err(|e| JournalError::io("writing the rebuild note", &path, e))?;
    Ok(note)
}

/// Checks the log as [`check_log`] does and opens its last segment for appending after
/// the last good frame: an unflushed tail after the durable point `mark` is cut, with a
/// warning (a crash leaves one).
pub(crate) fn writer_after(
    dir: &Path,
    reader: &LogReader,
    scan: &LogScan,
    mark: WitnessMark,
) -> Result<crate::segment_log::LogWriter, JournalError> {
    check_log(dir, reader, scan, mark)?;
    if let Some(damage) = &scan.damage {
        tracing::warn!(
            dir = %dir.display(),
            %damage,
            "the log ends with an unflushed tail after its last durable point (seq {}): cutting it",
            mark.seq
        );
    }
    crate::segment_log::LogWriter::append_to(dir, scan.end.segment, scan.end.offset)
}

/// Refuses a log that lost or damaged what the witness says was durable: damage at or before
/// the witness's seq, a log that ends before it, or a different record there. Damage after
/// it is an unflushed tail (cut by a writer; a reader stops before it), which the caller
/// reports as it sees fit.
pub(crate) fn check_log(
    dir: &Path,
    reader: &LogReader,
    scan: &LogScan,
    mark: WitnessMark,
) -> Result<(), JournalError> {
    let corrupt = |what: String| JournalError::Corrupt {
        dir: dir.to_path_buf(),
        what: format!(
            "{what}. Nothing was written. `tryswap journal export --salvage` prints the {} \
             record(s) before the damage",
            scan.records
        ),
    };
    if let Some(damage) = &scan.damage {
        if damage.seq <= mark.seq {
            return Err(corrupt(format!(
                "{damage}; the witness says every record up to seq {} was durable",
                mark.seq
            )));
        }
        if reader.segments().last() != Some(&damage.at.segment) {
            return Err(corrupt(format!("{damage}; later segments follow it")));
        }
    }
    if scan.tip.seq < mark.seq {
        return Err(corrupt(format!(
            "the log ends at seq {} (segment {}, byte {}) but the witness says seq {} was \
             durable: a lost tail",
            scan.tip.seq,
            segment_path(dir, scan.end.segment).display(),
            scan.end.offset,
            mark.seq
        )));
    }
    if mark.seq >= scan.base.seq {
        if let Some(chain) = scan.chain_at_witness.filter(|c| *c != mark.chain) {
            return Err(corrupt(format!(
                "seq {} in the log has chain value {chain:#010x} but the witness says {:#010x}: \
                 the journal was altered or replaced",
                mark.seq, mark.chain
            )));
        }
    }
    Ok(())
}
