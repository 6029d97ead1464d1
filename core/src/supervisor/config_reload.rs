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
    /// Slots the new config adds (registered; started if the journal has a generation).
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
    pub async fn apply_config(
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
        let changed: Vec<SlotName> = current
            .iter()
            .filter(|(n, rt)| {
                wanted
                    .get(*n)
                    .is_some_and(|w| rt.config.as_ref() != Some(*w))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut report = ConfigReloadReport {
            dry_run,
            outcome: ConfigOutcome::Unchanged,
            added: added.iter().map(ToString::to_string).collect(),
            removed: removed.iter().map(ToString::to_string).collect(),
            changed: changed.iter().map(ToString::to_string).collect(),
            reloads: Vec::new(),
            error: None,
            restart_required: Vec::new(),
        };
        if added.is_empty() && removed.is_empty() && changed.is_empty() {
            return Ok(report);
        }

        // Hold every touched slot for the whole transaction.
        let mut guards = Vec::new();
        for name in changed.iter().chain(&removed) {
            let rt = &current[name];
            match Arc::clone(&rt.busy).try_lock_owned() {
                Ok(guard) => guards.push(guard),
                Err(_) => {
                    return Err(SupervisorError::Conflict {
                        slot: name.clone(),
                        in_flight: None,
                    })
                }
            }
        }

        // Launch and probe every changed slot's active artifact under its new config.
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut failure: Option<(SlotName, DriverError)> = None;
        for name in &changed {
            let Some(facts) = self
                .journal()
                .slot(name)?
                .and_then(|v| v.slot.active.clone())
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

        // The commit point of every changed slot at once.
        let commits: Vec<Command> = candidates
            .iter()
            .map(|c| Command::Commit { reload: c.reload })
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
        }
        report.outcome = ConfigOutcome::Applied;
        report.reloads = self.candidate_reports(&candidates);
        Ok(report)
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
                reason: Reason::cancelled("slot removed from the config"),
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
