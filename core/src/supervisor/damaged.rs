//! What can still be done while the journal does not open because it is damaged: stop a
//! slot's processes (DESIGN.md "Journal, second form"). It needs only the processes'
//! identities, which their tags give (`TRYSWAP_SLOT` / `TRYSWAP_GENERATION`, else their
//! `TMPDIR` or stdout file), and the log's readable records (which reload belongs to which
//! slot). Nothing is journaled: the journal cannot be written.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;
use tryswap_fsm::{ArtifactRef, EventKind, Generation, ReloadId, Sha256, SlotName};

use crate::config::SlotConfig;
use crate::driver::process::ProcessDriver;
use crate::driver::{Driver, DriverError, FoundBy, FoundProcess, Instance};
use crate::supervisor::SupervisorError;

/// One process a stop without the journal ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnrecordedProcess {
    /// Its pid.
    pub pid: u32,
    /// The reload whose tag it carried.
    pub reload_id: ReloadId,
    /// The generation it ran, if known.
    pub generation: Option<u64>,
    /// What said it belongs to the slot: `tags`, `tmp_dir`, `log_file` (see
    /// [`FoundBy`]) or `journal_records` (the log's readable records name its reload).
    pub found_by: String,
}

/// What [`stop_without_journal`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnrecordedStop {
    /// The slot.
    pub slot: String,
    /// The processes stopped (plugins and the children carrying their tag), by pid.
    pub stopped: Vec<UnrecordedProcess>,
    /// Tagged processes of the state directory nothing attributes to a slot: left alone.
    pub unattributed_pids: Vec<u32>,
    /// Records the log still yields before its damage (what mapped reloads to slots).
    pub readable_records: u64,
}

impl UnrecordedStop {
    /// The generation stopped, when the stopped processes ran exactly one.
    pub fn generation(&self) -> Option<u64> {
        let mut generations: Vec<u64> = self.stopped.iter().filter_map(|p| p.generation).collect();
        generations.sort_unstable();
        generations.dedup();
        match generations.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// Stops every process of `slot` running from `state_dir` while the journal cannot be
/// opened: found by its tags (the slot's reload ids named in the log's readable records
/// count too), stopped as `stop` would (SIGTERM to its process group, SIGKILL after the
/// slot's `stop_timeout`, its cgroup emptied), without asking the plugin first (its
/// address is in the journal). Takes the journal's lock, so no other tryswap process works
/// on the state directory meanwhile. Writes nothing to the journal.
pub async fn stop_without_journal(
    state_dir: &Path,
    slot: &SlotConfig,
) -> Result<UnrecordedStop, SupervisorError> {
    let state_dir = super::absolute(state_dir)?;
    let journal_dir = state_dir.join("journal");
    let _lock = tryswap_journal::DirLock::acquire(&journal_dir)?;
    let (slots_of, readable_records) = readable_reloads(&journal_dir);
    let driver = ProcessDriver::new(slot.clone(), state_dir.clone());
    let mut ours: BTreeMap<ReloadId, Vec<(FoundProcess, String)>> = BTreeMap::new();
    let mut unattributed_pids = Vec::new();
    for found in driver.found_processes() {
        let recorded = slots_of.get(&found.reload);
        let (owner, generation, by) = match (&found.slot, recorded) {
            (Some(owner), _) => (
                owner.clone(),
                found.generation,
                found_by_name(found.found_by),
            ),
            (None, Some((owner, generation))) => {
                (owner.clone(), *generation, "journal_records".to_owned())
            }
            (None, None) => {
                unattributed_pids.push(found.identity.pid);
                continue;
            }
        };
        if owner == slot.name {
            let found = FoundProcess {
                generation,
                ..found
            };
            ours.entry(found.reload).or_default().push((found, by));
        }
    }
    let mut stopped = Vec::new();
    for (reload, processes) in &ours {
        stop_reload(&driver, &slot.name, *reload, processes).await?;
        stopped.extend(processes.iter().map(|(p, by)| UnrecordedProcess {
            pid: p.identity.pid,
            reload_id: p.reload,
            generation: p.generation.map(|g| g.0),
            found_by: by.clone(),
        }));
    }
    let survivors: Vec<u32> = driver
        .found_processes()
        .iter()
        .filter(|p| ours.contains_key(&p.reload))
        .map(|p| p.identity.pid)
        .collect();
    if !survivors.is_empty() {
        return Err(SupervisorError::Driver {
            slot: slot.name.clone(),
            error: DriverError::error(format!(
                "stopping without the journal: pids {survivors:?} still run after SIGKILL"
            )),
        });
    }
    stopped.sort_by_key(|p| p.pid);
    unattributed_pids.sort_unstable();
    Ok(UnrecordedStop {
        slot: slot.name.to_string(),
        stopped,
        unattributed_pids,
        readable_records,
    })
}

/// Stops the processes of one reload: its group leader's whole group (by identity, as
/// `stop` does), then whatever else carries its tag.
async fn stop_reload(
    driver: &ProcessDriver,
    slot: &SlotName,
    reload: ReloadId,
    processes: &[(FoundProcess, String)],
) -> Result<(), SupervisorError> {
    let leader = processes.iter().map(|(p, _)| p).find(|p| p.leader);
    if let Some(leader) = leader.filter(|p| p.generation.is_some()) {
        let instance = Instance {
            slot: slot.clone(),
            generation: leader.generation.unwrap_or_default(),
            reload,
            artifact: ArtifactRef {
                sha256: Sha256::default(),
                config_sha256: None,
            },
            process: Some(leader.identity.clone()),
            log_path: None,
            endpoint: None,
            handle: None,
        };
        tracing::info!(%slot, reload_id = %reload, pid = leader.identity.pid, "stopping without the journal");
        driver
            .stop(&instance)
            .await
            .map_err(|error| SupervisorError::Driver {
                slot: slot.clone(),
                error,
            })?;
    }
    driver.stop_leftovers(&reload).await;
    Ok(())
}

fn found_by_name(found_by: Option<FoundBy>) -> String {
    serde_json::to_value(found_by)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "tags".to_owned())
}

/// The slot (and generation, where its `Staged` record is readable) of every reload the
/// log's records before its damage name, and how many records it read.
fn readable_reloads(
    journal_dir: &Path,
) -> (HashMap<ReloadId, (SlotName, Option<Generation>)>, u64) {
    let mut reloads: HashMap<ReloadId, (SlotName, Option<Generation>)> = HashMap::new();
    let read = tryswap_journal::salvage_with(journal_dir, |record| {
        let entry = reloads
            .entry(record.reload)
            .or_insert_with(|| (record.slot.clone(), None));
        if let EventKind::Staged { generation, .. } = &record.event {
            entry.1 = Some(*generation);
        }
        Ok(())
    });
    match read {
        Ok(report) => (reloads, report.records),
        Err(e) => {
            tracing::warn!(error = %e, "the journal's log is unreadable: finding processes by their tags only");
            (reloads, 0)
        }
    }
}
