//! Compaction: drop old terminal reloads and their records, keep a base snapshot so the
//! projections stay equal to the fold.

use std::collections::{BTreeMap, BTreeSet};

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use tryswap_fsm::{Generation, ReloadId, Slot, SlotName};

use crate::error::JournalError;
use crate::journal::lock;
use crate::layout::{
    base_reload_key, base_slot_key, decode_event, decode_value, encode_value, history_key,
    reload_key, seq_of_key, tx_meta, KEY_BASE_CHAIN, KEY_BASE_SEQ, KEY_NEXT_SEQ, KEY_PURGING,
    PREFIX_BASE_RELOAD, PREFIX_BASE_SLOT, RELOADS,
};
use crate::projection::{BaseSlot, History, ReloadView, SlotView};
use crate::report::CompactReport;
use crate::segment_log::{
    base_frames, frame, list_segments, segment_path, LogWriter, KIND_RECORD, LOG_DIR,
};
use crate::witness::WitnessMark;
use crate::Journal;

/// The number of terminal reloads per slot `tryswap journal compact` keeps by default.
pub const DEFAULT_KEEP_PER_SLOT: usize = 100;

/// The reloads to drop: per slot, all terminal reloads but the newest `keep` (by first
/// record), never one that is in flight, active, or whose generation is still retiring.
pub(crate) fn dropped_reloads(
    slots: &[SlotView],
    reloads: &[ReloadView],
    keep: usize,
) -> BTreeSet<ReloadId> {
    let mut pinned: BTreeSet<ReloadId> = BTreeSet::new();
    for view in slots {
        pinned.extend(view.slot.in_flight);
        pinned.extend(view.slot.active.as_ref().map(|a| a.reload));
        pinned.extend(view.slot.retiring.iter().map(|i| i.reload));
    }
    let mut terminal: BTreeMap<&SlotName, Vec<&ReloadView>> = BTreeMap::new();
    for view in reloads {
        if view.is_terminal() && !pinned.contains(&view.reload.id) {
            terminal.entry(&view.reload.slot).or_default().push(view);
        }
    }
    let mut dropped = BTreeSet::new();
    for (_, mut views) in terminal {
        views.sort_by_key(|v| std::cmp::Reverse(v.created_seq()));
        dropped.extend(views.iter().skip(keep).map(|v| v.reload.id));
    }
    dropped
}

/// History entries a compaction keeps at least, whatever `keep_per_slot` says: the active
/// generation and the one before it, so `rollback` (to the previous generation) still works.
const MIN_HISTORY: usize = 2;

/// The generations of `history` a compaction removes: all but the newest
/// `max(keep, MIN_HISTORY)` and the active and retiring ones. This is a retention policy
/// (what `rollback --to` can still bring back, and so what `store gc` keeps), no longer a
/// cost: a history is one key per generation, and a reload writes one key whatever its
/// length. A `rollback --to` a removed generation is refused afterwards.
pub(crate) fn trimmed_generations(slot: &Slot, history: &History, keep: usize) -> Vec<Generation> {
    let keep = keep.max(MIN_HISTORY);
    if history.len() <= keep {
        return Vec::new();
    }
    let mut pinned: BTreeSet<Generation> = slot.retiring.iter().map(|i| i.generation).collect();
    pinned.extend(slot.active_generation());
    pinned.extend(history.keys().rev().take(keep).copied());
    history
        .keys()
        .filter(|g| !pinned.contains(g))
        .copied()
        .collect()
}

/// Records removed from `events` per sled batch after a compaction's transaction.
///
/// Each removal replaces its leaf by a modified clone of a few KiB, freed only once sled's
/// epoch moves on; inside the transaction that was ~3.5 KiB per dropped record at once
/// (35 MiB for 10,000), and glibc's heap kept that peak as its extent, so the daemon's RSS
/// stepped up with the compactions (docs/performance.md, section 5c). A batch of this many
/// bounds the garbage to about 1 MiB.
const PURGE_BATCH: usize = 256;

/// Lets sled's epoch-based reclamation free what a transaction of `writes` writes replaced.
///
/// A transaction holds one epoch guard over all its writes, and each write replaces its
/// node by a modified clone (a few KiB): the old nodes wait for the reclamation of
/// crossbeam-epoch, which frees up to 8 batches of 64 of them every 128 pins of a thread,
/// so after a compaction of 10,000 records they were freed only as later operations got to
/// them, too late for the daemon's `malloc_trim` after the compaction: its RSS stayed ~40
/// MiB higher after every compaction (docs/performance.md, section 5c). Every sled read
/// pins once; reading one key a few times per write drives the reclamation to its end here.
fn reclaim_garbage(tree: &sled::Tree, writes: usize) {
    for _ in 0..writes.saturating_mul(2).max(1024) {
        // Only the pin matters; the value (and an error) is of no interest.
        let _ = tree.get(KEY_NEXT_SEQ);
    }
}

impl Journal {
    /// Keeps the newest `keep_per_slot` terminal reloads of every slot (plus every
    /// non-terminal one, and those behind the active and retiring generations) and drops
    /// the others: their projections and their records.
    ///
    /// Slot projections and kept reload projections are unchanged. The current state
    /// becomes the compaction base snapshot (in `meta`), so `verify` and `replay` fold from
    /// it; records up to the base that belong to kept reloads stay for audit. One sled
    /// transaction moves the base; the dropped records leave after it in bounded batches
    /// (an interrupted removal is finished by the next open or compaction), then a flush
    /// and sync. Blocks writers while it runs. Refuses (with the
    /// error) if a record up to the base does not decode: run `verify` first.
    ///
    /// The dropped records are written to `archive/<base-seq>.jsonl` (one JSON object a
    /// line, synced) first; then the log gets a new segment starting with the base, which
    /// supersedes the old segments, and those are removed.
    pub fn compact(&self, keep_per_slot: usize) -> Result<CompactReport, JournalError> {
        self.compact_with(keep_per_slot, true)
    }

    /// [`Journal::compact`], with the dropped records archived or not (`--no-archive`).
    pub fn compact_with(
        &self,
        keep_per_slot: usize,
        archive: bool,
    ) -> Result<CompactReport, JournalError> {
        self.writable()?;
        let (report, tip) = {
            let _writer = lock(&self.writer);
            let meta = self.meta_values()?;
            let slots = self.slots()?;
            let reloads: Vec<ReloadView> = self
                .reloads
                .iter()
                .map(|item| {
                    let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
                    decode_value(RELOADS, &key, &bytes)
                })
                .collect::<Result<_, _>>()?;
            let dropped = dropped_reloads(&slots, &reloads, keep_per_slot);
            let tip = WitnessMark {
                seq: meta.last_seq(),
                chain: meta.last_chain,
            };
            if dropped.is_empty() {
                return Ok(CompactReport {
                    base_seq: meta.base_seq,
                    reloads_dropped: 0,
                    events_dropped: 0,
                    reloads_kept: reloads.len() as u64,
                    events_kept: self.events.len() as u64,
                });
            }
            let known: BTreeSet<ReloadId> = reloads.iter().map(|v| v.reload.id).collect();
            let mut event_keys = Vec::new();
            // The archive first: the dropped records leave the log (the new segment below
            // supersedes the old ones, which no read shows) only once they are durable in
            // the archive. A crash (or a failed write) before the new segment leaves them in
            // both: the next compaction archives them again, never none. Written as they
            // are found, so the compaction never holds them all in memory.
            let mut archived = if archive {
                Some(crate::archive::ArchiveWriter::create(&self.dir, tip.seq)?)
            } else {
                None
            };
            let mut kept_frames = Vec::new();
            let mut events_kept = 0u64;
            for item in self.events.iter() {
                let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
                let record = decode_event(&key, &bytes)?;
                if seq_of_key(&key).is_some_and(|seq| seq <= tip.seq) {
                    if dropped.contains(&record.reload) {
                        event_keys.push(key);
                        if let Some(archive) = archived.as_mut() {
                            archive.push(&record)?;
                        }
                    } else if !known.contains(&record.reload) {
                        // Left by an earlier compaction whose removal failed part-way (see
                        // `purge_events`): archived then, removed now.
                        event_keys.push(key);
                    } else {
                        kept_frames.extend(frame(KIND_RECORD, &bytes));
                        events_kept += 1;
                    }
                }
            }
            let old_base: Vec<sled::IVec> = self
                .meta
                .scan_prefix(PREFIX_BASE_SLOT)
                .chain(self.meta.scan_prefix(PREFIX_BASE_RELOAD))
                .map(|item| item.map(|(key, _)| key).map_err(|e| self.sled_err(e)))
                .collect::<Result<_, _>>()?;
            // Histories shrink to what a rollback may still want (see
            // `trimmed_generations`); the base snapshot gets the same trimmed histories, so
            // the fold from the base still equals the projections and the history keys.
            let mut base: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut trimmed_keys: Vec<Vec<u8>> = Vec::new();
            let mut base_slots: Vec<BaseSlot> = Vec::with_capacity(slots.len());
            for view in &slots {
                let name = &view.slot.name;
                let mut history: History = self.history(name)?;
                for generation in trimmed_generations(&view.slot, &history, keep_per_slot) {
                    history.remove(&generation);
                    trimmed_keys.push(history_key(name, generation));
                }
                let with_history = BaseSlot::new(view, history);
                base.push((
                    base_slot_key(name),
                    encode_value("base slot view", &with_history)?,
                ));
                base_slots.push(with_history);
            }
            let kept: Vec<&ReloadView> = reloads
                .iter()
                .filter(|v| !dropped.contains(&v.reload.id))
                .collect();
            for view in &kept {
                base.push((
                    base_reload_key(&view.reload.id),
                    encode_value("base reload view", *view)?,
                ));
            }
            if let Some(archive) = archived {
                archive.finish()?;
            }
            // Then the log: a segment starting with the new base and the kept records
            // supersedes the old ones (a crash before sled's transaction below leaves sled
            // disagreeing with the log's base, and the next open derives it again).
            let mut initial = base_frames(tip, &base_slots, &kept)?;
            initial.extend(kept_frames);
            let segment = LogWriter::create(&self.dir, tip.seq + 1, &initial)?;
            let old_segments = {
                let mut log = lock(&self.log);
                *log = Some(segment);
                list_segments(&self.dir.join(LOG_DIR))?
                    .into_iter()
                    .filter(|first| *first < tip.seq + 1)
                    .collect::<Vec<_>>()
            };
            let base_seq = encode_value("meta base_seq", &tip.seq)?;
            let base_chain = encode_value("meta base_chain", &tip.chain)?;
            let dir = self.dir.clone();
            let outcome = (&self.reloads, &self.meta, &self.history).transaction(
                |(reloads, meta, history)| {
                    let next: u64 = tx_meta(meta, KEY_NEXT_SEQ, &dir)?;
                    if next != tip.seq + 1 {
                        return Err(ConflictableTransactionError::Abort(JournalError::Corrupt {
                            dir: dir.clone(),
                            what: format!(
                                "`meta` next_seq changed to {next} during compaction (expected {})",
                                tip.seq + 1
                            ),
                        }));
                    }
                    if !event_keys.is_empty() {
                        meta.insert(KEY_PURGING, base_seq.as_slice())?;
                    }
                    for id in &dropped {
                        reloads.remove(&reload_key(id))?;
                    }
                    for key in &old_base {
                        meta.remove(key)?;
                    }
                    for (key, value) in &base {
                        meta.insert(key.as_slice(), value.as_slice())?;
                    }
                    for key in &trimmed_keys {
                        history.remove(key.as_slice())?;
                    }
                    meta.insert(KEY_BASE_SEQ, base_seq.as_slice())?;
                    meta.insert(KEY_BASE_CHAIN, base_chain.as_slice())?;
                    Ok(())
                },
            );
            self.finish_tx(outcome)?;
            reclaim_garbage(
                &self.meta,
                dropped.len() + trimmed_keys.len() + base.len() + old_base.len(),
            );
            self.purge_events(&event_keys)?;
            for first in old_segments {
                let path = segment_path(&self.dir, first);
                std::fs::remove_file(&path)
                    .map_err(|e| JournalError::io("removing a superseded log segment", &path, e))?;
            }
            tracing::info!(
                dir = %self.dir.display(),
                base_seq = tip.seq,
                reloads_dropped = dropped.len(),
                events_dropped = event_keys.len(),
                "journal compacted"
            );
            (
                CompactReport {
                    base_seq: tip.seq,
                    reloads_dropped: dropped.len() as u64,
                    events_dropped: event_keys.len() as u64,
                    reloads_kept: kept.len() as u64,
                    events_kept,
                },
                tip,
            )
        };
        self.durable_flush(tip, crate::journal::Flush::Full)?;
        if report.events_dropped > 0 {
            // sled keeps the dropped records' bytes in its log: the next open for writing
            // copies the store into a fresh one (see `rewrite`).
            crate::rewrite::request(&self.dir)?;
        }
        Ok(report)
    }
}

impl Journal {
    /// Removes the records a compaction dropped from `events`, [`PURGE_BATCH`] at a time,
    /// then the [`KEY_PURGING`] mark its transaction left.
    ///
    /// The records are below the new base and belong to reloads that have no projection any
    /// more, so no fold reads them, and `verify` accepts records kept below the base. A crash
    /// before the mark is removed leaves some of them: the next open for writing finds the
    /// mark and derives sled again from the log, which holds none of them.
    fn purge_events(&self, event_keys: &[sled::IVec]) -> Result<(), JournalError> {
        if event_keys.is_empty() {
            return Ok(());
        }
        for (n, chunk) in event_keys.chunks(PURGE_BATCH).enumerate() {
            if n > 0 {
                fail::fail_point!("journal-compact-purge", |_| Err(JournalError::io(
                    "removing the records a compaction dropped",
                    &self.dir,
                    std::io::Error::other("failpoint journal-compact-purge"),
                )));
            }
            let mut batch = sled::Batch::default();
            for key in chunk {
                batch.remove(key.clone());
            }
            self.events
                .apply_batch(batch)
                .map_err(|e| self.sled_err(e))?;
            reclaim_garbage(&self.meta, chunk.len());
        }
        self.meta
            .remove(KEY_PURGING)
            .map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// What sled holds in memory for the `events` tree of this open journal: its nodes (a
    /// page each) and the highest page id of the store (the size of sled's page table).
    /// Read from sled's `Debug` of the tree, which walks every node: for tests and
    /// diagnostics of the daemon's memory (docs/performance.md, section 5c), not for a
    /// hot path.
    #[doc(hidden)]
    pub fn events_tree_pages(&self) -> (usize, u64) {
        let text = format!("{:?}", self.events);
        let nodes = text
            .lines()
            .filter_map(|l| l.strip_prefix("\t\t"))
            .filter(|l| {
                l.split(':')
                    .next()
                    .is_some_and(|p| p.parse::<u64>().is_ok())
            })
            .count();
        let max = text
            .split("PageCache { max: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (nodes, max)
    }
}
