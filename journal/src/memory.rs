//! [`MemoryJournal`]: the journal in memory, with the same fold, checks and projections as
//! the sled one, and no disk.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tryswap_fsm::{ArtifactRef, Command, Generation, ReloadId, Slot, SlotName};

use crate::append::{append, Staging};
use crate::compact::{dropped_reloads, trimmed_generations};
use crate::error::JournalError;
use crate::failure::HandleFailure;
use crate::layout::{RELOADS, SLOTS};
use crate::projection::{History, ReloadView, ReplayState, SlotView};
use crate::record::Record;
use crate::report::{CompactReport, ProblemKind, VerifyReport};
use crate::store::{JournalStore, Records};
use crate::verify::{
    check_and_fold, history_differences, missing_reloads, missing_slots, reload_differences,
    slot_differences, Findings,
};
use crate::witness::WitnessMark;

/// The label [`MemoryJournal::new`] gives itself (what [`JournalStore::dir`] returns).
const DEFAULT_LABEL: &str = "<memory>";

/// A [`JournalStore`] that keeps its records and projections in memory.
///
/// Writes go through the same code as the sled [`crate::Journal`]'s: the state machine
/// decides every command against the projections, the records get the same sequence
/// numbers, encoding and chain values, and the same fold updates the projections, all or
/// nothing per call. Nothing survives the value: it is for property tests and for embedders
/// that need no crash safety. A write-ahead point is counted by
/// [`JournalStore::flush_count`] as the sled journal counts it, though there is nothing
/// to flush.
#[derive(Debug)]
pub struct MemoryJournal {
    label: PathBuf,
    state: Mutex<MemoryState>,
    flush_count: AtomicU64,
    /// Set by [`JournalStore::fail`]: every later write and flush is refused.
    failed: HandleFailure,
    /// Loaded from a journal's log for reading ([`MemoryJournal::from_log`]): writes are
    /// refused with [`JournalError::ReadOnly`].
    read_only: bool,
}

/// Everything a [`MemoryJournal`] holds.
#[derive(Debug, Default)]
struct MemoryState {
    /// The kept records by sequence number, with their chain values.
    records: BTreeMap<u64, (Record, u32)>,
    /// The projections (`seq` is the last sequence number).
    current: ReplayState,
    /// The compaction base snapshot (empty at seq 0 before any compaction).
    base: ReplayState,
    /// The chain value of the record at the base.
    base_chain: u32,
    /// The chain value of the last record.
    last_chain: u32,
}

impl MemoryState {
    /// Folds one item of the log in (a compaction base replaces everything before it).
    fn fold(&mut self, item: &crate::segment_log::LogItem) {
        use crate::segment_log::LogItem;
        match item {
            LogItem::Base(base) => {
                let folded = crate::log_read::base_state(base);
                self.base = folded.clone();
                self.current = folded;
                self.base_chain = base.chain;
                self.last_chain = base.chain;
            }
            LogItem::Kept(record) => {
                // Kept for audit from before the base: its chain value is not in the log.
                self.records.insert(record.seq, (record.clone(), 0));
            }
            LogItem::Record { record, chain, .. } => {
                self.current.apply(record);
                self.records.insert(record.seq, (record.clone(), *chain));
                self.last_chain = *chain;
            }
        }
    }

    fn tip(&self) -> WitnessMark {
        WitnessMark {
            seq: self.current.seq,
            chain: self.last_chain,
        }
    }
}

impl Default for MemoryJournal {
    fn default() -> Self {
        MemoryJournal::new()
    }
}

impl MemoryJournal {
    /// An empty journal labelled `<memory>` in messages.
    pub fn new() -> Self {
        MemoryJournal::labelled(DEFAULT_LABEL)
    }

    /// An empty journal that names itself `label` in messages and in
    /// [`JournalStore::dir`] (nothing is read or written there).
    pub fn labelled(label: impl Into<PathBuf>) -> Self {
        MemoryJournal {
            label: label.into(),
            state: Mutex::new(MemoryState::default()),
            flush_count: AtomicU64::new(0),
            failed: HandleFailure::default(),
            read_only: false,
        }
    }

    /// The journal the segment log of `dir` holds, read once into memory, strictly (damage
    /// before the durable point is refused, naming its seq and byte offset): every record
    /// with its chain value, the compaction base and the projections folded from them.
    /// Takes no lock and writes nothing; the value refuses writes
    /// ([`JournalError::ReadOnly`]). [`JournalError::Missing`] when `dir` has no log.
    pub fn from_log(dir: &Path) -> Result<MemoryJournal, JournalError> {
        let mut state = MemoryState::default();
        crate::log_read::read_strictly(dir, |item| {
            match item {
                None => state = MemoryState::default(),
                Some(item) => state.fold(item),
            }
            Ok(())
        })?;
        Ok(MemoryJournal::loaded(dir, state, true))
    }

    /// The journal the log `reader` holds, folded in one pass that also checks it as
    /// [`crate::rebuild::scan`] does (`witness`: the durable point whose chain is wanted).
    /// Writable: for [`crate::LogJournal`], which holds the lock and appends to the log.
    pub(crate) fn from_scan(
        dir: &Path,
        reader: &crate::segment_log::LogReader,
        witness: u64,
    ) -> Result<(MemoryJournal, crate::rebuild::LogScan), JournalError> {
        let mut state = MemoryState::default();
        let scan = crate::rebuild::scan_with(reader, witness, None, |item| {
            state.fold(item);
            Ok(())
        })?;
        Ok((MemoryJournal::loaded(dir, state, false), scan))
    }

    fn loaded(label: &Path, state: MemoryState, read_only: bool) -> MemoryJournal {
        MemoryJournal {
            label: label.to_path_buf(),
            state: Mutex::new(state),
            flush_count: AtomicU64::new(0),
            failed: HandleFailure::default(),
            read_only,
        }
    }

    /// The last record's sequence number and chain value.
    pub(crate) fn tip(&self) -> WitnessMark {
        self.state().tip()
    }

    /// What a projection snapshot holds, read under one lock so the parts agree: the last
    /// sequence number, every slot, the newest `per_slot` reloads of every slot plus every
    /// reload in flight (oldest first), and the last `records_kept` records.
    pub(crate) fn snapshot_parts(
        &self,
        per_slot: usize,
        records_kept: u64,
    ) -> (u64, Vec<SlotView>, Vec<ReloadView>, Vec<Record>) {
        let state = self.state();
        let seq = state.current.seq;
        let slots: Vec<SlotView> = state.current.slots.values().cloned().collect();
        let in_flight: std::collections::HashSet<ReloadId> =
            slots.iter().filter_map(|s| s.slot.in_flight).collect();
        let mut by_slot: BTreeMap<&SlotName, Vec<&ReloadView>> = BTreeMap::new();
        for view in state.current.reloads.values() {
            by_slot.entry(&view.reload.slot).or_default().push(view);
        }
        let mut reloads = Vec::new();
        for mut views in by_slot.into_values() {
            views.sort_by_key(|v| std::cmp::Reverse(v.created_seq()));
            let newest = views.len().min(per_slot);
            let (kept, older) = views.split_at(newest);
            reloads.extend(kept.iter().map(|v| (*v).clone()));
            reloads.extend(
                older
                    .iter()
                    .filter(|v| in_flight.contains(&v.reload.id))
                    .map(|v| (*v).clone()),
            );
        }
        reloads.sort_by_key(ReloadView::created_seq);
        let from = seq.saturating_sub(records_kept.saturating_sub(1)).max(1);
        let records = state
            .records
            .range(from..)
            .map(|(_, (record, _))| record.clone())
            .collect();
        (seq, slots, reloads, records)
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One write's changes over the committed projections, merged only if it succeeds.
struct Overlay<'a> {
    committed: &'a ReplayState,
    slots: RefCell<HashMap<SlotName, Option<SlotView>>>,
    reloads: RefCell<HashMap<ReloadId, ReloadView>>,
    history: RefCell<HashMap<(SlotName, Generation), ArtifactRef>>,
    records: RefCell<Vec<(Record, u32)>>,
}

impl Staging for Overlay<'_> {
    type Error = JournalError;

    fn abort(error: JournalError) -> JournalError {
        error
    }

    fn slot(&self, name: &SlotName) -> Result<Option<Slot>, JournalError> {
        let staged = self.slots.borrow();
        let view = match staged.get(name) {
            Some(view) => view.as_ref(),
            None => self.committed.slots.get(name),
        };
        Ok(view.map(|v| v.slot.clone()))
    }

    fn take_slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError> {
        let mut staged = self.slots.borrow_mut();
        Ok(match staged.get_mut(name) {
            Some(view) => view.take(),
            None => self.committed.slots.get(name).cloned(),
        })
    }

    fn put_slot(&self, view: SlotView) -> Result<(), JournalError> {
        self.slots
            .borrow_mut()
            .insert(view.slot.name.clone(), Some(view));
        Ok(())
    }

    fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError> {
        let staged = self.reloads.borrow();
        Ok(staged
            .get(id)
            .or_else(|| self.committed.reloads.get(id))
            .cloned())
    }

    fn put_reload(&self, view: ReloadView) -> Result<(), JournalError> {
        self.reloads.borrow_mut().insert(view.reload.id, view);
        Ok(())
    }

    fn history(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, JournalError> {
        if let Some(staged) = self.history.borrow().get(&(name.clone(), generation)) {
            return Ok(Some(staged.clone()));
        }
        Ok(self
            .committed
            .history
            .get(name)
            .and_then(|h| h.get(&generation))
            .cloned())
    }

    fn put_history(
        &self,
        name: &SlotName,
        generation: Generation,
        artifact: &ArtifactRef,
    ) -> Result<(), JournalError> {
        self.history
            .borrow_mut()
            .insert((name.clone(), generation), artifact.clone());
        Ok(())
    }

    fn put_record(
        &self,
        record: &Record,
        _stored: Vec<u8>,
        chain: u32,
    ) -> Result<(), JournalError> {
        self.records.borrow_mut().push((record.clone(), chain));
        Ok(())
    }
}

impl JournalStore for MemoryJournal {
    fn fail(&self, cause: &str) -> JournalError {
        self.failed.fail(&self.label, cause)
    }

    fn failure(&self) -> Option<String> {
        self.failed.cause()
    }

    fn dir(&self) -> &Path {
        &self.label
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn execute_all(
        &self,
        commands: &[Command],
        at: DateTime<Utc>,
    ) -> Result<Vec<Record>, JournalError> {
        if self.read_only {
            return Err(JournalError::ReadOnly {
                dir: self.label.clone(),
            });
        }
        self.failed.check(&self.label)?;
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.state();
        let overlay = Overlay {
            committed: &state.current,
            slots: RefCell::new(HashMap::new()),
            reloads: RefCell::new(HashMap::new()),
            history: RefCell::new(HashMap::new()),
            records: RefCell::new(Vec::new()),
        };
        let (records, tip) = append(&overlay, commands, at, state.tip(), &self.label)?;
        let Overlay {
            slots,
            reloads,
            history,
            records: staged,
            ..
        } = overlay;
        for ((name, generation), artifact) in history.into_inner() {
            state
                .current
                .history
                .entry(name)
                .or_default()
                .insert(generation, artifact);
        }
        for (name, view) in slots.into_inner() {
            if let Some(view) = view {
                state.current.slots.insert(name, view);
            }
        }
        state.current.reloads.extend(reloads.into_inner());
        for (record, chain) in staged.into_inner() {
            state.records.insert(record.seq, (record, chain));
        }
        state.current.seq = tip.seq;
        state.last_chain = tip.chain;
        if records.iter().any(Record::needs_durable_flush) {
            self.flush_count.fetch_add(1, Ordering::SeqCst);
        }
        Ok(records)
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.failed.check(&self.label)
    }

    fn flush_count(&self) -> u64 {
        self.flush_count.load(Ordering::SeqCst)
    }

    fn last_seq(&self) -> u64 {
        self.state().current.seq
    }

    fn slot(&self, name: &SlotName) -> Result<Option<SlotView>, JournalError> {
        Ok(self.state().current.slots.get(name).cloned())
    }

    fn slots(&self) -> Result<Vec<SlotView>, JournalError> {
        Ok(self.state().current.slots.values().cloned().collect())
    }

    fn reload(&self, id: &ReloadId) -> Result<Option<ReloadView>, JournalError> {
        Ok(self.state().current.reloads.get(id).cloned())
    }

    fn history(&self, name: &SlotName) -> Result<History, JournalError> {
        Ok(self
            .state()
            .current
            .history
            .get(name)
            .cloned()
            .unwrap_or_default())
    }

    fn history_entry(
        &self,
        name: &SlotName,
        generation: Generation,
    ) -> Result<Option<ArtifactRef>, JournalError> {
        Ok(self
            .state()
            .current
            .history
            .get(name)
            .and_then(|h| h.get(&generation))
            .cloned())
    }

    fn reloads_of(&self, slot: &SlotName) -> Result<Vec<ReloadView>, JournalError> {
        let mut views: Vec<ReloadView> = self
            .state()
            .current
            .reloads
            .values()
            .filter(|v| &v.reload.slot == slot)
            .cloned()
            .collect();
        views.sort_by_key(ReloadView::created_seq);
        Ok(views)
    }

    fn events(&self, from_seq: u64) -> Records {
        let records: Vec<_> = self
            .state()
            .records
            .range(from_seq..)
            .map(|(_, (record, _))| Ok(record.clone()))
            .collect();
        Box::new(records.into_iter())
    }

    fn replay(&self, until_seq: u64) -> Result<ReplayState, JournalError> {
        let state = self.state();
        if until_seq < state.base.seq {
            return Err(JournalError::Compacted {
                requested: until_seq,
                base: state.base.seq,
            });
        }
        let mut replayed = state.base.clone();
        let after_base = (Bound::Excluded(state.base.seq), Bound::Included(until_seq));
        for (record, _) in state.records.range(after_base).map(|(_, r)| r) {
            replayed.apply(record);
        }
        Ok(replayed)
    }

    fn verify(&self) -> Result<VerifyReport, JournalError> {
        let state = self.state();
        let mut found = Findings(Vec::new());
        let mut folded = state.base.clone();
        let mut prev_chain = Some(state.base_chain);
        let after_base = (Bound::Excluded(state.base.seq), Bound::Unbounded);
        for (seq, (record, chain)) in state.records.range(after_base) {
            check_and_fold(&mut folded, *seq, record, prev_chain, &mut found);
            prev_chain = Some(*chain);
        }
        compare(&state.current, folded, &mut found);
        Ok(VerifyReport {
            events_checked: state.records.len() as u64,
            base_seq: state.base.seq,
            last_seq: state.current.seq,
            problems: found.0,
        })
    }

    fn compact(&self, keep_per_slot: usize) -> Result<CompactReport, JournalError> {
        let mut state = self.state();
        let slots: Vec<SlotView> = state.current.slots.values().cloned().collect();
        let reloads: Vec<ReloadView> = state.current.reloads.values().cloned().collect();
        let dropped = dropped_reloads(&slots, &reloads, keep_per_slot);
        if dropped.is_empty() {
            return Ok(CompactReport {
                base_seq: state.base.seq,
                reloads_dropped: 0,
                events_dropped: 0,
                reloads_kept: reloads.len() as u64,
                events_kept: state.records.len() as u64,
            });
        }
        let before = state.records.len();
        state
            .records
            .retain(|_, (record, _)| !dropped.contains(&record.reload));
        let events_dropped = (before - state.records.len()) as u64;
        state.current.reloads.retain(|id, _| !dropped.contains(id));
        let current = &mut state.current;
        for view in current.slots.values() {
            if let Some(history) = current.history.get_mut(&view.slot.name) {
                for generation in trimmed_generations(&view.slot, history, keep_per_slot) {
                    history.remove(&generation);
                }
            }
        }
        state.base = state.current.clone();
        state.base_chain = state.last_chain;
        tracing::info!(
            dir = %self.label.display(),
            base_seq = state.base.seq,
            reloads_dropped = dropped.len(),
            events_dropped,
            "journal compacted"
        );
        Ok(CompactReport {
            base_seq: state.base.seq,
            reloads_dropped: dropped.len() as u64,
            events_dropped,
            reloads_kept: state.current.reloads.len() as u64,
            events_kept: state.records.len() as u64,
        })
    }
}

/// Compares the projections with the fold, reporting every difference.
fn compare(projections: &ReplayState, mut folded: ReplayState, found: &mut Findings) {
    for (name, stored) in &projections.slots {
        let slot = Some(name.clone());
        match folded.slots.remove(name) {
            Some(fold) if &fold == stored => {}
            Some(fold) => {
                let detail = slot_differences(stored, &fold);
                found.push(
                    ProblemKind::ProjectionMismatch,
                    SLOTS,
                    None,
                    slot,
                    None,
                    detail,
                );
            }
            None => {
                let detail = "no event touches this slot";
                found.push(
                    ProblemKind::ProjectionExtra,
                    SLOTS,
                    None,
                    slot,
                    None,
                    detail,
                );
            }
        }
    }
    missing_slots(folded.slots, found);
    for (id, stored) in &projections.reloads {
        let (slot, reload) = (Some(stored.reload.slot.clone()), Some(*id));
        match folded.reloads.remove(id) {
            Some(fold) if &fold == stored => {}
            Some(fold) => {
                let detail = reload_differences(stored, &fold);
                found.push(
                    ProblemKind::ProjectionMismatch,
                    RELOADS,
                    None,
                    slot,
                    reload,
                    detail,
                );
            }
            None => {
                let detail = "no event created this reload";
                found.push(
                    ProblemKind::ProjectionExtra,
                    RELOADS,
                    None,
                    slot,
                    reload,
                    detail,
                );
            }
        }
    }
    missing_reloads(folded.reloads, found);
    history_differences(&projections.history, &folded.history, found);
}
