//! Crash recovery: finish or undo what the journal says was under way, then make sure every
//! slot's active generation runs (reattached by identity, or relaunched from the store).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tryswap_fsm::{Command, Reason, ReloadId};

use crate::process;
use crate::supervisor::{facts_instance, Supervisor, SupervisorError};

/// How long recovery gives an orphaned process between SIGTERM and SIGKILL when its slot is
/// no longer configured (configured slots use their own `stop_timeout`).
const ORPHAN_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One thing recovery did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RecoveryAction {
    /// An unfinished reload was rolled back; its candidate (if any survived) was stopped.
    RolledBack {
        /// Slot.
        slot: String,
        /// Reload.
        reload_id: ReloadId,
        /// The state it was found in.
        found: String,
        /// Processes stopped (candidate and anything tagged with the reload).
        stopped_pids: Vec<u32>,
    },
    /// A former generation of a committed swap was stopped and retired.
    Retired {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
    },
    /// The active generation still ran with its journaled identity and was taken over.
    Reattached {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
        /// Its pid.
        pid: Option<u32>,
    },
    /// The active generation was not running and was relaunched from the store.
    Relaunched {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
    },
    /// The active generation was not running and could not be relaunched.
    RelaunchFailed {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
        /// Why.
        error: String,
    },
}

impl fmt::Display for RecoveryAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryAction::RolledBack {
                slot,
                reload_id,
                found,
                stopped_pids,
            } => write!(
                f,
                "{slot}: reload {reload_id} found {found}, rolled back (stopped pids {stopped_pids:?})"
            ),
            RecoveryAction::Retired { slot, generation } => {
                write!(f, "{slot}: former generation {generation} stopped and retired")
            }
            RecoveryAction::Reattached {
                slot,
                generation,
                pid,
            } => write!(f, "{slot}: generation {generation} still runs (pid {pid:?}), reattached"),
            RecoveryAction::Relaunched { slot, generation } => {
                write!(f, "{slot}: generation {generation} was not running, relaunched from the store")
            }
            RecoveryAction::RelaunchFailed {
                slot,
                generation,
                error,
            } => write!(f, "{slot}: generation {generation} is not running and relaunching it failed: {error}"),
        }
    }
}

/// What a recovery run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Actions, in order.
    pub actions: Vec<RecoveryAction>,
}

impl Supervisor {
    /// Runs crash recovery (DESIGN.md "Recovery"): every unfinished reload is rolled back
    /// with reason `recovered` and its candidate stopped (found by pid + start time + boot id,
    /// and by its `TRYSWAP_RELOAD_ID` tag); every former generation of a committed swap is
    /// stopped and retired; every registered slot's active generation that the journal
    /// records as running is reattached if it still runs, else relaunched from the store.
    ///
    /// A pid is never signalled unless its identity matches the journal. Slots with a reload
    /// in progress in this process are left alone.
    pub async fn recover(&self) -> Result<RecoveryReport, SupervisorError> {
        let mut report = RecoveryReport::default();
        for view in self.journal().in_flight()? {
            let reload = &view.reload;
            let slot = reload.slot.clone();
            let rt = self.runtime(&slot).ok();
            let _busy = match &rt {
                Some(rt) => match rt.busy.try_lock() {
                    Ok(guard) => Some(guard),
                    Err(_) => continue, // a live reload of this very process
                },
                None => None,
            };
            let mut stopped: Vec<u32> = reload
                .process
                .iter()
                .filter(|p| process::is_alive(p))
                .map(|p| p.pid)
                .collect();
            for tagged in process::tagged_processes(&reload.id) {
                if !stopped.contains(&tagged.pid) {
                    stopped.push(tagged.pid);
                }
            }
            match (&rt, &reload.candidate) {
                (Some(rt), Some(candidate)) => {
                    let instance = crate::driver::Instance {
                        slot: slot.clone(),
                        generation: candidate.generation,
                        reload: reload.id,
                        artifact: candidate.artifact.clone(),
                        process: reload.process.clone(),
                        log_path: reload.log_path.as_ref().map(std::path::PathBuf::from),
                        endpoint: reload.endpoint.clone(),
                        handle: None,
                    };
                    if let Err(e) = rt.driver.stop(&instance).await {
                        tracing::error!(slot = %slot, reload_id = %reload.id, error = %e, "stopping an orphaned candidate");
                    }
                }
                _ => {
                    if let Some(identity) = &reload.process {
                        if let Err(e) =
                            process::stop_group(identity, Some(&reload.id), ORPHAN_STOP_TIMEOUT)
                                .await
                        {
                            tracing::error!(slot = %slot, reload_id = %reload.id, error = %e, "stopping an orphaned candidate");
                        }
                    }
                    process::kill_tagged(&reload.id, ORPHAN_STOP_TIMEOUT).await;
                }
            }
            let found = reload.state.name().to_owned();
            self.record(&Command::Fail {
                reload: reload.id,
                reason: Reason::recovered(format!(
                    "tryswap stopped while the reload was {found}; candidate stopped on recovery"
                )),
            })?;
            report.actions.push(RecoveryAction::RolledBack {
                slot: slot.to_string(),
                reload_id: reload.id,
                found,
                stopped_pids: stopped,
            });
        }

        for view in self.journal().slots()? {
            let slot = view.slot.name.clone();
            if view.slot.retiring.is_empty() {
                continue;
            }
            match self.runtime(&slot) {
                Ok(rt) => {
                    let Ok(_busy) = rt.busy.try_lock() else {
                        continue;
                    };
                    for generation in self.retire_old(&rt, None).await {
                        report.actions.push(RecoveryAction::Retired {
                            slot: slot.to_string(),
                            generation,
                        });
                    }
                }
                Err(_) => {
                    for facts in &view.slot.retiring {
                        let instance = facts_instance(&slot, facts);
                        if let Some(identity) = &instance.process {
                            if let Err(e) = process::stop_group(
                                identity,
                                Some(&instance.reload),
                                ORPHAN_STOP_TIMEOUT,
                            )
                            .await
                            {
                                tracing::error!(slot = %slot, error = %e, "stopping a former generation");
                                continue;
                            }
                        }
                        process::kill_tagged(&instance.reload, ORPHAN_STOP_TIMEOUT).await;
                        self.record(&Command::Retire {
                            slot: slot.clone(),
                            generation: facts.generation,
                        })?;
                        report.actions.push(RecoveryAction::Retired {
                            slot: slot.to_string(),
                            generation: facts.generation.0,
                        });
                    }
                }
            }
        }

        for rt in self.runtimes() {
            let Some(view) = self.journal().slot(&rt.name)? else {
                continue;
            };
            let Some(facts) = view.slot.active.clone().filter(|a| a.running) else {
                continue;
            };
            if let Some(serving) = rt.active.load_full() {
                if serving.instance.generation == facts.generation {
                    continue;
                }
            }
            let Ok(_busy) = rt.busy.try_lock() else {
                continue;
            };
            if let Some(instance) = rt.driver.reattach(&facts_instance(&rt.name, &facts)) {
                let pid = instance.pid();
                rt.active.store(Some(crate::lease::Serving::new(instance)));
                report.actions.push(RecoveryAction::Reattached {
                    slot: rt.name.to_string(),
                    generation: facts.generation.0,
                    pid,
                });
                continue;
            }
            match self.start_locked(&rt).await {
                Ok(generation) => report.actions.push(RecoveryAction::Relaunched {
                    slot: rt.name.to_string(),
                    generation: generation.0,
                }),
                Err(e) => report.actions.push(RecoveryAction::RelaunchFailed {
                    slot: rt.name.to_string(),
                    generation: facts.generation.0,
                    error: e.to_string(),
                }),
            }
        }
        for action in &report.actions {
            tracing::info!(%action, "recovery");
        }
        Ok(report)
    }
}
