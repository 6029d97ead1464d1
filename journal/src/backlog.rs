//! The backlog: records a [`crate::Journal`] has decided and appended to the log but not
//! yet folded into sled's trees, with the projections they left.
//!
//! DESIGN.md "Journal, second form": the log is the truth, sled its index. A write is
//! decided against sled's projections overlaid with the backlog's, appended to the log
//! (and made durable at the write-ahead points), and added to the backlog; it returns
//! without a sled transaction. The indexer, a thread of the handle, folds the backlog into
//! sled in one transaction per batch (with the same fold as the catch-up at open), a short
//! while after the first record waits, so that a burst of writes costs sled one
//! transaction instead of one each. The journal's reads answer from the backlog first,
//! then from sled, so every read sees every write that returned.
//!
//! What sled holds plus the backlog is always the whole journal: an entry leaves the
//! backlog only after the transaction that put it into sled committed, and only if no later
//! write changed it since. Whatever needs sled whole (compaction, verify, replay, export,
//! the projection snapshot, a full flush, close) first settles the backlog itself. A
//! process killed with a backlog leaves sled behind the log, which the next open catches
//! up, as after any crash before sled's flush.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tryswap_fsm::{ArtifactRef, Generation, ReloadId, SlotName};

use crate::error::JournalError;
use crate::failure::HandleFailure;
use crate::journal::lock;
use crate::projection::{ReloadView, SlotView};
use crate::record::Record;

/// How long the indexer lets records gather after the first one before it folds them in.
pub(crate) const INDEX_DELAY: Duration = Duration::from_millis(50);

/// The indexer folds the backlog in at once when it holds this many records.
pub(crate) const INDEX_BATCH: usize = 512;

/// The most records one sled transaction of the indexer takes in.
pub(crate) const INDEX_CHUNK: usize = 64;

/// A write that finds this many records waiting folds them in itself (an indexer that
/// could not start, or falls behind): the backlog's memory stays bounded.
pub(crate) const BACKLOG_MAX: usize = 8192;

/// Records in the log that sled does not hold yet, and the projections they changed, each
/// with the sequence number of the last record that changed it.
#[derive(Debug, Default)]
pub(crate) struct Unindexed {
    /// In sequence order: a suffix of the journal.
    pub(crate) records: Vec<Record>,
    pub(crate) slots: HashMap<SlotName, (u64, SlotView)>,
    pub(crate) reloads: HashMap<ReloadId, (u64, ReloadView)>,
    pub(crate) history: HashMap<(SlotName, Generation), (u64, ArtifactRef)>,
}

/// What one write staged, before it is accepted.
#[derive(Debug, Default)]
pub(crate) struct Staged {
    pub(crate) records: Vec<Record>,
    pub(crate) slots: HashMap<SlotName, SlotView>,
    pub(crate) reloads: HashMap<ReloadId, ReloadView>,
    pub(crate) history: HashMap<(SlotName, Generation), ArtifactRef>,
}

impl Unindexed {
    /// Takes in what one accepted write staged; `seq` is the write's last record. A
    /// batch of the indexer holds all of a write's records or none (both happen under the
    /// backlog's lock), so an entry tagged `seq` is in sled once a batch up to `seq` is.
    pub(crate) fn merge(&mut self, staged: Staged, seq: u64) {
        self.records.extend(staged.records);
        self.slots
            .extend(staged.slots.into_iter().map(|(k, v)| (k, (seq, v))));
        self.reloads
            .extend(staged.reloads.into_iter().map(|(k, v)| (k, (seq, v))));
        self.history
            .extend(staged.history.into_iter().map(|(k, v)| (k, (seq, v))));
    }

    /// Drops what sled now holds: the first `count` records, and every projection no
    /// record after `upto` changed.
    fn indexed(&mut self, count: usize, upto: u64) {
        self.records.drain(..count.min(self.records.len()));
        self.slots.retain(|_, (seq, _)| *seq > upto);
        self.reloads.retain(|_, (seq, _)| *seq > upto);
        self.history.retain(|_, (seq, _)| *seq > upto);
    }

    /// The first sequence number the backlog holds, if any.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.records.first().map(|r| r.seq)
    }
}

/// sled's trees, as the indexer writes them.
#[derive(Clone)]
pub(crate) struct IndexTrees {
    pub(crate) events: sled::Tree,
    pub(crate) slots: sled::Tree,
    pub(crate) reloads: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) history: sled::Tree,
}

impl IndexTrees {
    /// The trees in the order of [`crate::journal::WriteTrees`].
    fn write_trees(&self) -> crate::journal::WriteTrees<'_> {
        (
            &self.events,
            &self.slots,
            &self.reloads,
            &self.meta,
            &self.history,
        )
    }
}

/// The backlog shared by a journal handle and its indexer.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    state: Mutex<State>,
    /// Wakes the indexer: a record waits, or the handle closes.
    wake: Condvar,
    /// Held while a batch is folded into sled: one folder at a time, in order.
    folding: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    unindexed: Unindexed,
    closing: bool,
}

impl Backlog {
    /// The backlog, locked: reads consult it before sled; a write stages against it and
    /// merges into it.
    pub(crate) fn lock(&self) -> MappedGuard<'_> {
        MappedGuard(lock(&self.state))
    }

    /// Tells the indexer that records wait.
    pub(crate) fn notify(&self) {
        self.wake.notify_one();
    }

    /// Folds everything the backlog holds into sled now (on this thread), then returns.
    /// A failure fails the handle (`failed`): sled could not take records the log holds.
    pub(crate) fn settle(
        &self,
        trees: &IndexTrees,
        dir: &Path,
        failed: &HandleFailure,
    ) -> Result<(), JournalError> {
        let _folding = lock(&self.folding);
        let batch: Vec<Record> = lock(&self.state).unindexed.records.clone();
        // sled's transactions exclude its plain reads (a global lock): short ones keep the
        // writers' and readers' misses from waiting long. A chunk may end inside a write:
        // that write's projections stay in the backlog (tagged with its last record) until
        // the chunk that holds its last record is in.
        for chunk in batch.chunks(INDEX_CHUNK) {
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            if let Err(e) = crate::journal::apply_records(trees.write_trees(), chunk, dir) {
                return Err(failed.fail(
                    dir,
                    &format!(
                        "folding seq {}..={} from the log into sled: {e}",
                        first.seq, last.seq
                    ),
                ));
            }
            lock(&self.state).unindexed.indexed(chunk.len(), last.seq);
        }
        Ok(())
    }

    /// Starts the indexer thread of a writable handle. It folds the backlog in
    /// [`INDEX_DELAY`] after the first record waits (at once from [`INDEX_BATCH`] records)
    /// until [`Backlog::close`].
    pub(crate) fn start_indexer(
        self: &Arc<Self>,
        trees: IndexTrees,
        dir: PathBuf,
        failed: Arc<HandleFailure>,
    ) -> Option<std::thread::JoinHandle<()>> {
        let backlog = Arc::clone(self);
        std::thread::Builder::new()
            .name("tryswap-index".to_owned())
            .spawn(move || backlog.run_indexer(&trees, &dir, &failed))
            .map_err(|e| {
                // Without the thread, the backlog is folded in by every settle (flush,
                // close, compaction...): correct, only later.
                tracing::warn!(error = %e, "no thread for the journal's indexer");
            })
            .ok()
    }

    fn run_indexer(&self, trees: &IndexTrees, dir: &Path, failed: &HandleFailure) {
        loop {
            {
                let mut state = lock(&self.state);
                while state.unindexed.records.is_empty() && !state.closing {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if state.closing {
                    return;
                }
                let deadline = Instant::now() + INDEX_DELAY;
                while !state.closing && state.unindexed.records.len() < INDEX_BATCH {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    state = self
                        .wake
                        .wait_timeout(state, deadline - now)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                }
                if state.closing {
                    // The handle settles what is left itself.
                    return;
                }
            }
            if failed.cause().is_some() {
                return;
            }
            if let Err(e) = self.settle(trees, dir, failed) {
                tracing::error!(dir = %dir.display(), error = %e, "the journal's indexer stopped");
                return;
            }
        }
    }

    /// Stops the indexer (it returns without folding; the caller settles what is left).
    pub(crate) fn close(&self) {
        lock(&self.state).closing = true;
        self.wake.notify_all();
    }
}

/// The locked backlog.
pub(crate) struct MappedGuard<'a>(MutexGuard<'a, State>);

impl std::ops::Deref for MappedGuard<'_> {
    type Target = Unindexed;
    fn deref(&self) -> &Unindexed {
        &self.0.unindexed
    }
}

impl std::ops::DerefMut for MappedGuard<'_> {
    fn deref_mut(&mut self) -> &mut Unindexed {
        &mut self.0.unindexed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Record {
        Record {
            format: crate::record::RECORD_FORMAT,
            seq,
            at: chrono::Utc::now(),
            reload: ReloadId::from_u128(1),
            slot: SlotName::new("a").expect("a slot name"),
            event: tryswap_fsm::EventKind::Retired {
                generation: Generation(1),
            },
            prev_chain: 0,
            actor: crate::record::Actor::default(),
            reason: None,
        }
    }

    #[test]
    fn indexed_keeps_what_a_later_record_changed() {
        let mut u = Unindexed {
            records: (1..=4).map(record).collect(),
            ..Unindexed::default()
        };
        let artifact = ArtifactRef {
            sha256: tryswap_fsm::Sha256([1; 32]),
            config_sha256: None,
        };
        let a = SlotName::new("a").expect("a slot name");
        let b = SlotName::new("b").expect("a slot name");
        u.history
            .insert((a.clone(), Generation(1)), (2, artifact.clone()));
        u.history.insert((b.clone(), Generation(1)), (4, artifact));
        u.indexed(3, 3);
        assert_eq!(u.first_seq(), Some(4));
        assert!(!u.history.contains_key(&(a, Generation(1))));
        assert!(u.history.contains_key(&(b, Generation(1))));
    }
}
