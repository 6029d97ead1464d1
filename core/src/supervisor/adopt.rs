//! `tryswap recover --adopt`: a journal older than its processes (restored from an older
//! backup) takes over the live generation it does not know as the slot's active generation,
//! when the evidence is unambiguous. The adoption is one journal transaction of `Adopted`
//! events (durable before anything else happens); recovery then retires the journal's
//! former active generation (stopping it if it runs) and reattaches the adopted process.

use std::collections::BTreeMap;

use tryswap_fsm::{ArtifactRef, Command, Reason, ReloadId, SlotName};

use crate::config::SlotConfig;
use crate::driver::{FoundBy, FoundProcess};
use crate::supervisor::recovery::RecoveryAction;
use crate::supervisor::{Supervisor, SupervisorError};

impl Supervisor {
    /// Takes over the live processes of this state directory whose reload the journal does
    /// not know ([`Supervisor::unknown_processes`]) as their slots' active generations.
    ///
    /// Per slot the evidence must be unambiguous: the processes tell their slot and
    /// generation (tags, `TMPDIR` or stdout file), they belong to one reload with one
    /// process-group leader, the generation is newer than any the journal gave out, the
    /// slot is configured with no reload in flight, the executable (and config file) the
    /// process runs are in the store and verify, and its log holds the handshake of an
    /// address it listens on. If any slot fails, nothing is written and
    /// [`SupervisorError::AdoptionRefused`] names each slot and its pids. Otherwise one
    /// journal transaction records every adoption (`Adopted`, actor as the caller's origin),
    /// made durable before it returns; run [`Supervisor::recover`] next, which retires the
    /// former active generations and reattaches the adopted ones.
    pub async fn adopt_unknown(&self) -> Result<Vec<RecoveryAction>, SupervisorError> {
        let found = self.inner.orphans.found_processes();
        let unknown = self.unknown_among(found.iter().map(|p| p.reload))?;
        let mut by_slot: BTreeMap<SlotName, BTreeMap<ReloadId, Vec<FoundProcess>>> =
            BTreeMap::new();
        let mut refusals = Vec::new();
        let mut unattributed = Vec::new();
        for process in found.into_iter().filter(|p| unknown.contains(&p.reload)) {
            match process.slot.clone() {
                Some(slot) => by_slot
                    .entry(slot)
                    .or_default()
                    .entry(process.reload)
                    .or_default()
                    .push(process),
                None => unattributed.push(process.identity.pid),
            }
        }
        if !unattributed.is_empty() {
            refusals.push(format!(
                "pids {unattributed:?}: nothing says which slot they serve (no TRYSWAP_SLOT \
                 tag, and neither their TMPDIR nor their stdout is a generation's)"
            ));
        }
        let mut adoptions = Vec::new();
        let mut commands = Vec::new();
        for (slot, reloads) in &by_slot {
            match self.plan(slot, reloads).await {
                Ok((adoption, command)) => {
                    adoptions.push(adoption);
                    commands.push(command);
                }
                Err(why) => refusals.push(format!("slot {slot}: {why}")),
            }
        }
        if !refusals.is_empty() {
            return Err(SupervisorError::AdoptionRefused { refusals });
        }
        if !commands.is_empty() {
            self.record_off_thread(commands).await?;
        }
        for adoption in &adoptions {
            tracing::info!(%adoption, "recover --adopt");
        }
        Ok(adoptions)
    }

    /// The adoption of the one unknown generation of `slot`, or why not.
    async fn plan(
        &self,
        slot: &SlotName,
        reloads: &BTreeMap<ReloadId, Vec<FoundProcess>>,
    ) -> Result<(RecoveryAction, Command), String> {
        let pids: Vec<u32> = reloads.values().flatten().map(|p| p.identity.pid).collect();
        let [(reload, processes)] = reloads.iter().collect::<Vec<_>>()[..] else {
            let generations: Vec<String> = reloads
                .iter()
                .map(|(reload, ps)| {
                    let generation = ps
                        .iter()
                        .find_map(|p| p.generation)
                        .map_or_else(|| "?".to_owned(), |g| g.to_string());
                    let pids: Vec<u32> = ps.iter().map(|p| p.identity.pid).collect();
                    format!("generation {generation} (reload {reload}, pids {pids:?})")
                })
                .collect();
            return Err(format!(
                "{} generations the journal does not know run: {}; which one should be active \
                 is ambiguous (stop the others, or `recover --stop-unknown` stops them all)",
                reloads.len(),
                generations.join(", ")
            ));
        };
        let leaders: Vec<&FoundProcess> = processes.iter().filter(|p| p.leader).collect();
        let [leader] = leaders[..] else {
            return Err(format!(
                "reload {reload}'s processes (pids {pids:?}) have {} process-group leaders, \
                 so which one is the plugin is ambiguous",
                leaders.len()
            ));
        };
        let pid = leader.identity.pid;
        let Some(generation) = leader.generation else {
            return Err(format!("pid {pid}: nothing says which generation it runs"));
        };
        let rt = self
            .runtime(slot)
            .map_err(|_| format!("pid {pid}: the slot is not in the config"))?;
        let config = rt
            .config
            .clone()
            .ok_or_else(|| format!("pid {pid}: the slot does not run plugin processes"))?;
        if let Some(view) = self.journal().slot(slot).map_err(|e| e.to_string())? {
            if let Some(in_flight) = view.slot.in_flight {
                return Err(format!(
                    "pid {pid}: the journal has reload {in_flight} of the slot in flight; \
                     nothing can be adopted before it ends"
                ));
            }
            if generation < view.slot.next_generation {
                return Err(format!(
                    "pid {pid} runs generation {generation}, which is not newer than the \
                     journal's generations (the next is {})",
                    view.slot.next_generation
                ));
            }
        }
        let artifact = self
            .artifact_of(leader, &config)
            .map_err(|why| format!("pid {pid}: {why}"))?;
        let (driver, found, stored) = (rt.driver.clone(), leader.clone(), artifact.clone());
        let instance = crate::blocking::off_worker(move || driver.adopt(&found, &stored))
            .map_err(|e| format!("pid {pid}: {e}"))?;
        let previous = self
            .journal()
            .slot(slot)
            .map_err(|e| e.to_string())?
            .and_then(|v| v.slot.active_generation());
        let by = match leader.found_by {
            Some(FoundBy::Tags) | None => "its tags",
            Some(FoundBy::TmpDir) => "its TMPDIR",
            Some(FoundBy::LogFile) => "its stdout file",
        };
        let reason = Reason::recovered(format!(
            "pid {pid} ran generation {generation} (reload {reload}, slot and generation told \
             by {by}) that the journal did not know (restored from an older backup?); adopted \
             as the active generation by `tryswap recover --adopt`"
        ));
        let command = Command::Adopt {
            reload: *reload,
            slot: slot.clone(),
            generation,
            artifact,
            process: instance.process,
            log_path: instance.log_path.map(|p| p.to_string_lossy().into_owned()),
            endpoint: instance.endpoint,
            reason,
        };
        let adoption = RecoveryAction::Adopted {
            slot: slot.to_string(),
            generation: generation.0,
            reload_id: *reload,
            pid,
            previous: previous.map(|g| g.0),
        };
        Ok((adoption, command))
    }

    /// The artifact `found` runs: its executable in the store, and the config file the
    /// slot's `{config}` argument names there; both verified.
    fn artifact_of(
        &self,
        found: &FoundProcess,
        config: &SlotConfig,
    ) -> Result<ArtifactRef, String> {
        let store = self.store();
        let exe = found
            .executable
            .as_ref()
            .ok_or("its executable cannot be read (/proc/<pid>/exe)")?;
        let sha256 = store
            .digest_at(exe)
            .ok_or_else(|| format!("its executable {} is not in the store", exe.display()))?;
        let mut config_sha256 = None;
        for (i, template) in config.args.iter().enumerate() {
            let Some((prefix, suffix)) = template.split_once("{config}") else {
                continue;
            };
            let path = found
                .args
                .get(i)
                .and_then(|arg| arg.strip_prefix(prefix))
                .and_then(|arg| arg.strip_suffix(suffix))
                .ok_or_else(|| {
                    format!(
                        "its arguments {:?} do not match the slot's args {:?}",
                        found.args, config.args
                    )
                })?;
            let digest = store
                .digest_at(std::path::Path::new(path))
                .ok_or_else(|| format!("its config file {path} is not in the store"))?;
            config_sha256 = Some(digest);
        }
        for digest in std::iter::once(&sha256).chain(config_sha256.iter()) {
            crate::blocking::off_worker(|| store.verify(digest)).map_err(|e| e.to_string())?;
        }
        Ok(ArtifactRef {
            sha256,
            config_sha256,
        })
    }
}
