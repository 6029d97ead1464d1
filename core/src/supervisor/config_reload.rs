//! Config reload as one transaction: every changed slot's candidate is launched and probed
//! with its new config, then all of them are committed in ONE journal transaction — or, if
//! any fails, none is and every slot stays as it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tryswap_fsm::{Command, EventKind, Generation, Mode, Plan, Reason, ReloadId, SlotName};

use crate::config::{Config, SlotConfig};
use crate::driver::process::ProcessDriver;
use crate::driver::{Driver, DriverError, Instance};
use crate::report::ReloadReport;
use crate::supervisor::bake::{self, BakeEnd, Baking, Watched};
use crate::supervisor::failpoint;
use crate::supervisor::lease::Serving;
use crate::supervisor::{SlotRuntime, Supervisor, SupervisorError};

/// How a config reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigOutcome {
    /// The new config is in force.
    Applied,
    /// Dry run: every changed slot's candidate passed its probe; nothing changed.
    DryRunPassed,
    /// A candidate failed; every slot is as it was.
    RolledBack,
    /// The new config describes the same slots as the running one.
    Unchanged,
}

/// The result of a config reload (`tryswap reload-config --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigReloadReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// How it ended.
    pub outcome: ConfigOutcome,
    /// Slots the new config adds (registered; their generation started if a config reload
    /// had stopped it by removing the slot).
    pub added: Vec<String>,
    /// Slots the new config drops (their active generation is stopped; markers stay).
    pub removed: Vec<String>,
    /// Slots whose config changed, with the reload that relaunched their active generation
    /// under the new config (slots without an active generation have no reload).
    pub changed: Vec<String>,
    /// One report per candidate launched.
    pub reloads: Vec<ReloadReport>,
    /// Why it was rolled back.
    pub error: Option<String>,
    /// Settings outside `[[slot]]` that changed and need a daemon restart to take effect.
    pub restart_required: Vec<String>,
    /// Added slots whose active generation was stopped only because an earlier config
    /// reload removed the slot: started again. A slot an operator stopped stays stopped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub started: Vec<String>,
    /// Slots (also listed in `changed`) whose section did not change but whose running
    /// generation runs with other args or environment than it says, with the difference.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}

/// How long a config reload waits for the reloads, starts and stops running on the slots it
/// changes or removes before it gives up (changing nothing).
pub const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The reason message of the `Stopped` a config reload journals for a removed slot: a slot
/// added back is started only if this is why its generation stopped.
const REMOVED_FROM_CONFIG: &str = "slot removed from the config";

/// How a config reload's bake ended.
enum UnitEnd {
    /// Every slot confirmed.
    Confirmed,
    /// Every slot reverted, for this reason.
    Reverted(Reason),
    /// Shutdown: still baking in the journal.
    Detached,
}

/// A slot of a config reload's bake.
struct BakedSlot {
    /// The runtime under the old config (the standby's).
    old_rt: Arc<SlotRuntime>,
    /// The runtime under the new config (the candidate's), registered during the bake.
    new_rt: Arc<SlotRuntime>,
    /// The old generation, serving again if the bake is reverted.
    standby: Option<Arc<Serving>>,
    /// The slot's reload.
    reload: ReloadId,
}

struct Candidate {
    slot: SlotName,
    reload: ReloadId,
    driver: Arc<ProcessDriver>,
    instance: Option<Instance>,
}

impl Supervisor {
    /// Applies a new config: added slots are registered, removed slots' active generations
    /// stopped, and every changed slot's active generation relaunched under its new config —
    /// all changed candidates launched and probed first, then committed in one journal
    /// transaction. If any candidate fails (or the commit fails), all are stopped and rolled
    /// back and nothing else changes. With `dry_run`, candidates are probed and discarded.
    ///
    /// Slots registered in code (not from a config) are never touched.
    ///
    /// Its records carry actor `config_reload` and the reason of the caller's origin.
    pub async fn apply_config(
        &self,
        config: &Config,
        dry_run: bool,
    ) -> Result<ConfigReloadReport, SupervisorError> {
        let origin = crate::origin::Origin {
            actor: tryswap_journal::Actor::of(tryswap_journal::ActorKind::ConfigReload),
            reason: crate::origin::current().reason,
        };
        crate::origin::acting(origin, self.apply_config_as_reload(config, dry_run)).await
    }

    async fn apply_config_as_reload(
        &self,
        config: &Config,
        dry_run: bool,
    ) -> Result<ConfigReloadReport, SupervisorError> {
        let current: BTreeMap<SlotName, Arc<SlotRuntime>> = self
            .runtimes()
            .into_iter()
            .filter(|rt| rt.config.is_some())
            .map(|rt| (rt.name.clone(), rt))
            .collect();
        let wanted: BTreeMap<SlotName, &SlotConfig> =
            config.slots.iter().map(|s| (s.name.clone(), s)).collect();
        let added: Vec<SlotName> = wanted
            .keys()
            .filter(|n| !current.contains_key(*n) && self.runtime(n).is_err())
            .cloned()
            .collect();
        let removed: Vec<SlotName> = current
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        // Changed: the section differs, or the running generation does not run as the
        // section says (e.g. a crash during a config reload: recovery rolled the candidates
        // back while the file stayed new).
        let mut changed: Vec<SlotName> = Vec::new();
        let mut drift: Vec<String> = Vec::new();
        for (name, rt) in &current {
            let Some(w) = wanted.get(name) else {
                continue;
            };
            if rt.config.as_ref() != Some(*w) {
                changed.push(name.clone());
            } else if let Some(d) = self.drift_of(rt, w) {
                tracing::warn!(slot = %name, drift = %d, "the running generation does not run as the config says; relaunching it under the config");
                drift.push(format!("{name}: {d}"));
                changed.push(name.clone());
            }
        }
        let mut report = ConfigReloadReport {
            dry_run,
            outcome: ConfigOutcome::Unchanged,
            added: added.iter().map(ToString::to_string).collect(),
            removed: removed.iter().map(ToString::to_string).collect(),
            changed: changed.iter().map(ToString::to_string).collect(),
            reloads: Vec::new(),
            error: None,
            restart_required: Vec::new(),
            started: Vec::new(),
            drift,
        };
        if added.is_empty() && removed.is_empty() && changed.is_empty() {
            return Ok(report);
        }

        // Hold every touched slot for the whole transaction, queued behind the reloads
        // running on them (bounded). Slots are taken in name order and every other caller
        // holds one slot at a time, so waiting cannot deadlock.
        let mut guards = Vec::new();
        for name in changed.iter().chain(&removed) {
            let rt = &current[name];
            match tokio::time::timeout(SLOT_WAIT, Arc::clone(&rt.busy).lock_owned()).await {
                Ok(guard) => guards.push(guard),
                Err(_) => {
                    return Err(SupervisorError::Busy {
                        slot: name.clone(),
                        waited: SLOT_WAIT,
                    })
                }
            }
        }

        // Launch and probe every changed slot's active artifact under its new config.
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut failure: Option<(SlotName, DriverError)> = None;
        for name in &changed {
            // A stopped slot gets its new config but stays stopped: stop always wins.
            let Some(facts) = self
                .journal()
                .slot(name)?
                .and_then(|v| v.slot.active.clone())
                .filter(|a| a.running)
            else {
                continue;
            };
            let new_config = wanted[name].clone();
            let driver = Arc::new(ProcessDriver::new(new_config, self.state_dir()));
            let reload = ReloadId::now_v7();
            let staged = self
                .record_off_thread(vec![Command::Stage {
                    reload,
                    slot: name.clone(),
                    mode: if dry_run {
                        Mode::DryRun
                    } else {
                        Mode::Activate
                    },
                    artifact: facts.artifact.clone(),
                }])
                .await;
            let staged = match staged {
                Ok(records) => records,
                Err(e) => {
                    self.abort_candidates(&mut candidates, &format!("{name}: {e}"))
                        .await;
                    return Err(e.into());
                }
            };
            let generation = staged
                .iter()
                .find_map(|r| match r.event {
                    EventKind::Staged { generation, .. } => Some(generation),
                    _ => None,
                })
                .unwrap_or(Generation(0));
            let mut candidate = Candidate {
                slot: name.clone(),
                reload,
                driver: Arc::clone(&driver),
                instance: None,
            };
            failpoint!("config-after-staged");
            let rt = &current[name];
            let request = self.launch_request(rt, reload, generation, &facts.artifact);
            let plan = Plan::ConfigReload {
                reload,
                artifact: facts.artifact.clone(),
            };
            let result = self.bring_up(driver.as_ref(), &request, plan).await;
            match result {
                Ok(up) => {
                    candidate.instance = Some(up.instance);
                    candidates.push(candidate);
                }
                Err(down) => {
                    candidates.push(candidate);
                    failure = Some((name.clone(), down.driver_error()));
                    break;
                }
            }
        }

        if let Some((slot, error)) = failure {
            let message = format!("slot {slot}: {error}");
            report.error = Some(message.clone());
            self.abort_candidates(&mut candidates, &message).await;
            report.outcome = ConfigOutcome::RolledBack;
            report.reloads = self.candidate_reports(&candidates);
            return Ok(report);
        }

        if dry_run {
            for candidate in &candidates {
                if let Some(instance) = &candidate.instance {
                    let _ = candidate.driver.stop(instance).await;
                }
                self.record(&Command::PassDryRun {
                    reload: candidate.reload,
                })?;
            }
            report.outcome = ConfigOutcome::DryRunPassed;
            report.reloads = self.candidate_reports(&candidates);
            return Ok(report);
        }

        // The commit point of every changed slot at once; with a bake (the longest `bake`
        // of the changed slots), a provisional one: the bake is one unit.
        let until = candidates
            .iter()
            .map(|c| wanted[&c.slot].bake)
            .max()
            .filter(|d| !d.is_zero())
            .map(bake::bake_deadline);
        let commits: Vec<Command> = candidates
            .iter()
            .map(|c| match until {
                Some(until) => Command::CommitBaking {
                    reload: c.reload,
                    until_ms: bake::until_ms(until),
                },
                None => Command::Commit { reload: c.reload },
            })
            .collect();
        if !commits.is_empty() {
            failpoint!("config-before-commit");
            if let Err(e) = self.record_off_thread(commits).await {
                let message = format!("committing the config reload: {e}");
                report.error = Some(message.clone());
                self.abort_candidates(&mut candidates, &message).await;
                report.outcome = ConfigOutcome::RolledBack;
                report.reloads = self.candidate_reports(&candidates);
                return Ok(report);
            }
        }

        failpoint!("config-after-commit");

        // Swap in the new runtimes (same busy lock, new driver and config), then retire.
        let mut retire: Vec<(Arc<SlotRuntime>, Option<Arc<Serving>>)> = Vec::new();
        let mut baked: Vec<BakedSlot> = Vec::new();
        for name in &changed {
            let old_rt = &current[name];
            let new_config = wanted[name].clone();
            let candidate = candidates.iter_mut().find(|c| &c.slot == name);
            let (driver, serving) = match candidate {
                Some(c) => (
                    Arc::clone(&c.driver) as Arc<dyn Driver>,
                    c.instance.take().map(Serving::new),
                ),
                None => (
                    Arc::new(ProcessDriver::new(new_config.clone(), self.state_dir()))
                        as Arc<dyn Driver>,
                    None,
                ),
            };
            let had_candidate = serving.is_some();
            let new_rt = SlotRuntime {
                name: name.clone(),
                driver,
                drain_timeout: new_config.drain_timeout,
                needs_executable: true,
                active: ArcSwapOption::new(serving),
                busy: Arc::clone(&old_rt.busy),
                config: Some(new_config),
            };
            if had_candidate {
                let old = old_rt.active.swap(None);
                retire.push((Arc::clone(old_rt), old));
            } else if let Some(old) = old_rt.active.swap(None) {
                new_rt.active.store(Some(old));
            }
            self.register(new_rt);
        }
        failpoint!("config-after-swap");
        if let Some(until) = until {
            // The old generations stay up as warm standbys until the unit's bake ends.
            for (old_rt, standby) in retire.drain(..) {
                let Some(candidate) = candidates.iter().find(|c| c.slot == old_rt.name) else {
                    continue;
                };
                baked.push(BakedSlot {
                    new_rt: self.runtime(&old_rt.name)?,
                    old_rt,
                    standby,
                    reload: candidate.reload,
                });
            }
            match self.bake_config(baked, until).await? {
                UnitEnd::Confirmed => {}
                UnitEnd::Reverted(reason) => {
                    drop(guards);
                    report.error = Some(format!("reverted during the bake: {}", reason.message));
                    report.outcome = ConfigOutcome::RolledBack;
                    report.reloads = self.candidate_reports(&candidates);
                    return Ok(report);
                }
                UnitEnd::Detached => {
                    // Shutdown: the candidates stay active and baking in the journal; the
                    // next start settles each slot's bake. Removed and added slots wait
                    // for the next config reload.
                    drop(guards);
                    report.error = Some(
                        "shutdown began during the bake: it stays in the journal, the next \
                         start settles it"
                            .to_owned(),
                    );
                    report.outcome = ConfigOutcome::Applied;
                    report.reloads = self.candidate_reports(&candidates);
                    return Ok(report);
                }
            }
        }
        for (old_rt, old) in retire {
            self.retire_old(&old_rt, old).await;
        }
        for name in &removed {
            let rt = &current[name];
            self.stop_removed(rt).await;
            self.unregister(name);
        }
        drop(guards);
        for name in &added {
            self.add_process_slot(wanted[name].clone());
        }
        // Added slots the journal already knows (removed earlier, now back): bring them up.
        if !added.is_empty() {
            self.recover().await?;
            for name in self.stopped_by_removal(&added)? {
                match self.start(&name).await {
                    Ok(_) => report.started.push(name.to_string()),
                    Err(e) => {
                        tracing::error!(slot = %name, error = %e, "starting a slot added back to the config");
                        report.error = Some(format!("slot {name}: starting it failed: {e}"));
                    }
                }
            }
        }
        report.outcome = ConfigOutcome::Applied;
        report.reloads = self.candidate_reports(&candidates);
        Ok(report)
    }

    /// Watches the bake of a config reload's candidates as one unit and ends it for all of
    /// them: confirmed together, or (any candidate failed, or a `revert` of any of the
    /// slots) reverted together, each slot back to its old config and standby. A shutdown
    /// leaves the bake in the journal.
    async fn bake_config(
        &self,
        baked: Vec<BakedSlot>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<UnitEnd, SupervisorError> {
        let slots: Vec<SlotName> = baked.iter().map(|b| b.new_rt.name.clone()).collect();
        let (registration, mut signals) = self.inner.bakes.register(&slots);
        let watched: Vec<Baking> = baked
            .iter()
            .filter_map(|b| {
                let serving = b.new_rt.active.load_full()?;
                Some(Baking::of(&b.new_rt, serving.instance.clone()))
            })
            .collect();
        tracing::info!(slots = ?slots, until = %until.to_rfc3339(), "config reload baking");
        let (end, reply) = match self.watch_bake(&watched, until, &mut signals).await {
            Watched::Detached => return Ok(UnitEnd::Detached),
            Watched::End(end, reply) => (end, reply),
        };
        let mut retired = Vec::new();
        let unit_end = match end {
            BakeEnd::Confirm => {
                let confirms = baked
                    .iter()
                    .map(|b| Command::Confirm { reload: b.reload })
                    .collect();
                self.record_off_thread(confirms).await?;
                tracing::info!("config reload bake passed: confirmed");
                for b in baked {
                    retired.extend(self.retire_old(&b.old_rt, b.standby).await);
                }
                UnitEnd::Confirmed
            }
            BakeEnd::Revert(reason) => {
                tracing::warn!(reason = %reason, "config reload bake failed: reverting every slot");
                let reverts = baked
                    .iter()
                    .map(|b| Command::Revert {
                        reload: b.reload,
                        reason: reason.clone(),
                    })
                    .collect();
                self.record_off_thread(reverts).await?;
                for b in baked {
                    // The slot goes back to its old config with its standby.
                    let restored = SlotRuntime {
                        name: b.old_rt.name.clone(),
                        driver: Arc::clone(&b.old_rt.driver),
                        drain_timeout: b.old_rt.drain_timeout,
                        needs_executable: b.old_rt.needs_executable,
                        active: ArcSwapOption::new(b.new_rt.active.load_full()),
                        busy: Arc::clone(&b.old_rt.busy),
                        config: b.old_rt.config.clone(),
                    };
                    self.register(restored);
                    let rt = self.runtime(&b.old_rt.name)?;
                    retired.extend(self.restore_standby(&rt, b.standby).await);
                }
                UnitEnd::Reverted(reason)
            }
        };
        drop(registration);
        if let Some(reply) = reply {
            let _ = reply.send(retired);
        }
        Ok(unit_end)
    }

    /// Stops every candidate and journals its rollback (best effort: recovery finishes
    /// what fails here).
    async fn abort_candidates(&self, candidates: &mut [Candidate], why: &str) {
        for candidate in candidates.iter_mut() {
            if let Some(instance) = candidate.instance.take() {
                if let Err(e) = candidate.driver.stop(&instance).await {
                    tracing::error!(slot = %candidate.slot, error = %e, "stopping a config-reload candidate");
                }
            } else {
                candidate.driver.stop_leftovers(&candidate.reload).await;
            }
            let reason = Reason::error(format!("config reload rolled back: {why}"));
            if let Err(e) = self.record(&Command::Fail {
                reload: candidate.reload,
                reason,
            }) {
                tracing::error!(slot = %candidate.slot, error = %e, "journaling a config-reload rollback");
            }
        }
    }

    fn candidate_reports(&self, candidates: &[Candidate]) -> Vec<ReloadReport> {
        candidates
            .iter()
            .filter_map(|c| self.journal().reload(&c.reload).ok().flatten())
            .map(|view| ReloadReport::from_view(&view, None, None))
            .collect()
    }

    /// How `rt`'s live active generation differs from what `config` launches, if it does.
    fn drift_of(&self, rt: &SlotRuntime, config: &SlotConfig) -> Option<String> {
        let serving = rt.active.load_full()?;
        let instance = &serving.instance;
        let pid = instance.pid()?;
        let request =
            self.launch_request(rt, instance.reload, instance.generation, &instance.artifact);
        ProcessDriver::new(config.clone(), self.state_dir()).drift(&request, pid)
    }

    /// Which of `slots` have an active generation that is stopped only because a config
    /// reload removed the slot (the reason of their last `Stopped`). Scans the journal's
    /// records: runs only when a config reload adds slots.
    fn stopped_by_removal(&self, slots: &[SlotName]) -> Result<Vec<SlotName>, SupervisorError> {
        let mut stopped: BTreeMap<SlotName, Generation> = BTreeMap::new();
        let mut last: BTreeMap<SlotName, (Generation, bool)> = BTreeMap::new();
        for name in slots {
            if let Some(active) = self
                .journal()
                .slot(name)?
                .and_then(|v| v.slot.active)
                .filter(|a| !a.running)
            {
                stopped.insert(name.clone(), active.generation);
            }
        }
        if stopped.is_empty() {
            return Ok(Vec::new());
        }
        for record in self.journal().events(0) {
            let record = record?;
            if let EventKind::Stopped { generation, reason } = &record.event {
                if stopped.contains_key(&record.slot) {
                    let removed = reason.message == REMOVED_FROM_CONFIG;
                    last.insert(record.slot.clone(), (*generation, removed));
                }
            }
        }
        Ok(stopped
            .into_iter()
            .filter(|(name, generation)| last.get(name) == Some(&(*generation, true)))
            .map(|(name, _)| name)
            .collect())
    }

    /// Drains and stops a removed slot's active generation; its marker stays in the journal.
    async fn stop_removed(&self, rt: &SlotRuntime) {
        let facts = match self.journal().slot(&rt.name) {
            Ok(Some(view)) => view.slot.active,
            _ => None,
        };
        let instance = match rt.active.swap(None) {
            Some(serving) => {
                serving.drain(rt.drain_timeout).await;
                Some(serving.instance.clone())
            }
            None => facts
                .as_ref()
                .map(|f| crate::supervisor::facts_instance(&rt.name, f)),
        };
        if let Some(instance) = instance {
            if let Err(e) = rt.driver.stop(&instance).await {
                tracing::error!(slot = %rt.name, error = %e, "stopping a removed slot");
                return;
            }
        }
        if let Some(facts) = facts.filter(|f| f.running) {
            let _ = self.record(&Command::Stop {
                slot: rt.name.clone(),
                generation: facts.generation,
                reason: Reason::cancelled(REMOVED_FROM_CONFIG),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_snake_case() {
        let text = serde_json::to_string(&ConfigOutcome::DryRunPassed).unwrap();
        assert_eq!(text, "\"dry_run_passed\"");
    }
}
