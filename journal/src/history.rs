//! A slot's history read from the segment log, without sled and without the lock: what a
//! reader answers from while another process holds the journal (the projection snapshot
//! carries no history, so that writing it costs the same however long the histories are).

use std::collections::HashMap;
use std::path::Path;

use tryswap_fsm::{ArtifactRef, EventKind, Generation, ReloadId, SlotName};

use crate::error::JournalError;
use crate::projection::History;
use crate::segment_log::{LogItem, LogReader};

/// Slot `name`'s history as of record `until` (inclusive): the compaction base's history of
/// the slot plus every generation an `Activated` or `ActivatedBaking` record made active
/// after it. Reads the log once, read-only. Damage at or before `until` (which a writer has
/// made durable) is [`JournalError::Corrupt`] naming the seq and byte offset; damage after
/// it is a writer's unfinished tail and ends the read.
pub(crate) fn history_from_log(
    dir: &Path,
    name: &SlotName,
    until: u64,
) -> Result<History, JournalError> {
    let reader = LogReader::open(dir)?;
    let mut history = History::new();
    // The candidate of every reload of the slot: what an activation adds.
    let mut candidates: HashMap<ReloadId, (Generation, ArtifactRef)> = HashMap::new();
    for item in reader.items() {
        match item {
            Ok(LogItem::Base(base)) => {
                history = base.history.get(name).cloned().unwrap_or_default();
                candidates.clear();
                for view in base.reloads.iter().filter(|v| &v.reload.slot == name) {
                    if let Some(candidate) = &view.reload.candidate {
                        candidates.insert(
                            view.reload.id,
                            (candidate.generation, candidate.artifact.clone()),
                        );
                    }
                }
            }
            Ok(LogItem::Kept(_)) => {}
            Ok(LogItem::Record { record, .. }) => {
                if record.seq > until {
                    break;
                }
                if &record.slot != name {
                    continue;
                }
                match &record.event {
                    EventKind::Staged {
                        generation,
                        artifact,
                        ..
                    } => {
                        candidates.insert(record.reload, (*generation, artifact.clone()));
                    }
                    EventKind::Activated | EventKind::ActivatedBaking { .. } => {
                        if let Some((generation, artifact)) = candidates.get(&record.reload) {
                            history.insert(*generation, artifact.clone());
                        }
                    }
                    _ => {}
                }
            }
            Err(damage) if damage.seq <= until => {
                return Err(JournalError::Corrupt {
                    dir: dir.to_path_buf(),
                    what: format!(
                        "{damage}, reading the history of slot {name} up to seq {until}. \
                         `tryswap journal export --salvage` prints every record before it"
                    ),
                });
            }
            Err(_) => break,
        }
    }
    Ok(history)
}
