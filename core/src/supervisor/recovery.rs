//! Crash recovery: finish or undo what the journal says was under way, then make sure every
//! slot's active generation runs (reattached by identity, or relaunched from the store).
//!
//! Also the crash-test switch: [`arm_failpoints_from_env`] turns the `fail` failpoints of the
//! reload flow and of recovery into abrupt deaths (`kill`) when `TRYSWAP_FAILPOINTS` asks for
//! it. Without that variable every failpoint is inert.
//!
//! The rules, as implemented (docs/recovery.md has the full table):
//! - a reload the journal records as unfinished (Staged, Launched, Validated or Probed) is
//!   rolled back with reason `recovered`: its candidate is stopped if it still runs with the
//!   journaled pid + start time + boot id, and so is every process carrying
//!   `TRYSWAP_RELOAD_ID=<its id>` (spawned before `Launched` was durable). If something
//!   survives SIGKILL the reload stays in flight and the next recovery tries again;
//! - a former generation of a committed swap that was not retired is stopped (by identity
//!   and tag) and `Retired` is journaled;
//! - a slot's active generation that still runs with its journaled identity is reattached
//!   and checked once with the slot's probe. A live process that fails the check is **kept**
//!   and reported `reattached_unhealthy`: recovery never kills a live active plugin on a
//!   probe result, since that could turn a blip into an outage and a relaunch beside it
//!   would run the generation twice;
//! - an active generation that does not run (dead, zombie, or its pid now names another
//!   process) is relaunched from the store, after processes tagged with its reload id that a
//!   crashed relaunch left behind are stopped. `Stopped(recovered)` and `Relaunched` are
//!   journaled together; a relaunch that fails journals `Stopped(recovered)` only;
//! - a keep-alive restart interrupted by the crash (its `Restarting` intent journaled, no
//!   `Relaunched` or `Stopped` after it) leaves the generation recorded running with no known
//!   process: the copy the restart spawned carries the generation's reload tag, so it is
//!   stopped with the leftovers above and the generation relaunched — exactly one process.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tryswap_fsm::{Command, Instance as Facts, Plan, Reason, ReloadId, SlotName};
use tryswap_journal::{ReloadView, SlotView};

use crate::driver::{Instance, Liveness};
use crate::origin::Origin;
use crate::supervisor::lease::Serving;
use crate::supervisor::pipeline::DownError;
use crate::supervisor::{facts_instance, relaunch_of, SlotRuntime, Supervisor, SupervisorError};

/// Upper bound on the probe of a reattached generation of a slot without a process config
/// (the probe's own thresholds normally end it much sooner).
const REATTACH_PROBE_LIMIT: Duration = Duration::from_secs(30);

/// Name of the environment variable that arms failpoints: `name=action` pairs separated by
/// `;`, e.g. `TRYSWAP_FAILPOINTS=reload-after-spawn=kill`.
pub const FAILPOINTS_ENV: &str = "TRYSWAP_FAILPOINTS";

/// Every failpoint of the reload flow, of recovery and of a config reload (`config-…`), in
/// the order a reload meets them.
/// `before-X` / `after-X` mean before / after the journal record `X` is written; the others
/// name the side effect they follow or precede.
pub const FAILPOINTS: &[&str] = &[
    "store-after-copy",
    "reload-before-staged",
    "reload-after-staged",
    "reload-after-spawn",
    "reload-after-launched",
    "reload-before-validated",
    "reload-after-validated",
    "reload-before-probed",
    "reload-after-probed",
    "dryrun-before-passed",
    "reload-before-commit",
    "reload-after-commit",
    "reload-after-swap",
    "retire-before-stop",
    "retire-after-stop",
    "retire-after-retired",
    "rollback-before-stop",
    "rollback-before-rolledback",
    "rollback-after-rolledback",
    "recover-before-stop-candidate",
    "recover-before-rolledback",
    "recover-after-rolledback",
    "recover-after-relaunch-spawn",
    "recover-after-relaunched",
    "config-after-staged",
    "config-after-spawn",
    "config-after-launched",
    "config-after-validated",
    "config-after-probed",
    "config-before-commit",
    "config-after-commit",
    "config-after-swap",
    "slot-before-lock",
    "stop-before-stop",
    "stop-after-stop",
    "stop-after-stopped",
    "bake-before-commit",
    "bake-after-commit",
    "bake-before-confirmed",
    "bake-after-confirmed",
    "bake-before-reverted",
    "bake-after-reverted",
    "recover-before-bake-end",
    "restart-after-intent",
    "restart-after-spawn",
    "restart-after-relaunched",
];

/// Arms the failpoints named in `TRYSWAP_FAILPOINTS` (crash tests). Each entry is
/// `name=action`, entries separated by `;`. Action `kill` sends SIGKILL to this very process
/// when the point is reached (no destructor, no flush: exactly a crash); any other action is
/// handed to [`fail::cfg`] (`sleep(100)`, `panic`, `off`, …).
///
/// Returns the names armed (empty if the variable is unset or empty). Fails if an entry is
/// malformed, or if the variable is set but this build has no failpoints (the `failpoints`
/// feature of this crate, off in the shipped `tryswap` binary: there the variable's value is
/// never read).
pub fn arm_failpoints_from_env() -> Result<Vec<String>, String> {
    let Some(spec) = std::env::var_os(FAILPOINTS_ENV) else {
        return Ok(Vec::new());
    };
    if !fail::has_failpoints() {
        return Err(no_failpoints());
    }
    let spec = spec
        .into_string()
        .map_err(|_| format!("{FAILPOINTS_ENV} is not valid UTF-8"))?;
    arm_failpoints(&spec)
}

/// [`arm_failpoints_from_env`] for a given spec string.
pub fn arm_failpoints(spec: &str) -> Result<Vec<String>, String> {
    let mut armed = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, action) = entry.split_once('=').ok_or_else(|| {
            format!("{FAILPOINTS_ENV}: entry {entry:?} is not name=action (e.g. reload-after-spawn=kill)")
        })?;
        let (name, action) = (name.trim(), action.trim());
        if name.is_empty() || action.is_empty() {
            return Err(format!(
                "{FAILPOINTS_ENV}: entry {entry:?} needs a name and an action"
            ));
        }
        armed.push(name.to_owned());
    }
    if armed.is_empty() {
        return Ok(armed);
    }
    if !fail::has_failpoints() {
        return Err(no_failpoints());
    }
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, action)) = entry.split_once('=') else {
            continue;
        };
        let (name, action) = (name.trim(), action.trim());
        if action == "kill" {
            fail::cfg_callback(name, kill_self)?;
        } else {
            fail::cfg(name, action).map_err(|e| format!("{FAILPOINTS_ENV}: {name}: {e}"))?;
        }
    }
    Ok(armed)
}

fn no_failpoints() -> String {
    format!(
        "{FAILPOINTS_ENV} is set but this build has no failpoints (crash tests only: build \
         with `cargo build -p tryswap-cli --features failpoints`, or unset the variable)"
    )
}

/// Dies at once, as if the kernel killed us: no unwinding, no destructors, no flush.
fn kill_self() {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort();
}

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
        /// Processes found running and stopped (candidate and anything tagged with the
        /// reload).
        stopped_pids: Vec<u32>,
    },
    /// An unfinished reload's candidate could not be stopped; the reload stays in flight so
    /// the next recovery tries again.
    CandidateSurvived {
        /// Slot.
        slot: String,
        /// Reload.
        reload_id: ReloadId,
        /// The state it was found in.
        found: String,
        /// What went wrong.
        error: String,
    },
    /// A former generation of a committed swap was stopped and retired.
    Retired {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
    },
    /// A former generation could not be stopped; it stays queued for retirement.
    RetirePending {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
    },
    /// The active generation still ran with its journaled identity, passed its probe and was
    /// taken over.
    Reattached {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
        /// Its pid.
        pid: Option<u32>,
    },
    /// The active generation still runs with its journaled identity but failed its probe.
    /// It was taken over and left running (recovery never kills a live active generation
    /// on a probe result).
    ReattachedUnhealthy {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
        /// Its pid.
        pid: Option<u32>,
        /// The probe's error.
        error: String,
    },
    /// The active generation was not running and was relaunched from the store.
    Relaunched {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
        /// The new process.
        pid: Option<u32>,
        /// Leftovers of an earlier, unjournaled relaunch (tagged with the generation's
        /// reload id) that were stopped first.
        orphans_stopped: Vec<u32>,
    },
    /// Recovering the slot failed (a journal error while settling it): the slot is marked
    /// failed and left as it is; the other slots were recovered and serve.
    SlotFailed {
        /// Slot.
        slot: String,
        /// What recovery was doing.
        stage: String,
        /// Why it failed.
        error: String,
    },
    /// The active generation was not running and could not be relaunched; it is journaled
    /// as stopped (`tryswap start` tries again).
    RelaunchFailed {
        /// Slot.
        slot: String,
        /// Generation.
        generation: u64,
        /// Why.
        error: String,
    },
    /// A bake found after a restart ended: its deadline had passed and the candidate ran
    /// healthy (`confirmed`), or the candidate was dead (`reverted` to the standby).
    BakeEnded {
        /// Slot.
        slot: String,
        /// Reload.
        reload_id: ReloadId,
        /// `confirmed` or `reverted`.
        state: String,
    },
    /// A live process the journal did not know was adopted as the slot's active generation
    /// (`tryswap recover --adopt`, before recovery ran).
    Adopted {
        /// Slot.
        slot: String,
        /// The adopted generation.
        generation: u64,
        /// Its reload.
        reload_id: ReloadId,
        /// Its pid.
        pid: u32,
        /// The slot's active generation before (retired by this recovery).
        previous: Option<u64>,
    },
    /// A bake found after a restart goes on: the candidate runs and its deadline has not
    /// passed (or it fails its probe; a daemon watching the bake reverts it).
    BakeContinues {
        /// Slot.
        slot: String,
        /// Reload.
        reload_id: ReloadId,
        /// The deadline.
        until: String,
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
            RecoveryAction::CandidateSurvived {
                slot,
                reload_id,
                found,
                error,
            } => write!(
                f,
                "{slot}: reload {reload_id} found {found}; its candidate could not be stopped, \
                 the reload stays in flight: {error}"
            ),
            RecoveryAction::Retired { slot, generation } => {
                write!(f, "{slot}: former generation {generation} stopped and retired")
            }
            RecoveryAction::RetirePending { slot, generation } => write!(
                f,
                "{slot}: former generation {generation} could not be stopped; still queued for retirement"
            ),
            RecoveryAction::Reattached {
                slot,
                generation,
                pid,
            } => write!(
                f,
                "{slot}: generation {generation} still runs (pid {}) and passes its probe, reattached",
                pid_text(*pid)
            ),
            RecoveryAction::ReattachedUnhealthy {
                slot,
                generation,
                pid,
                error,
            } => write!(
                f,
                "{slot}: generation {generation} still runs (pid {}) but fails its probe; \
                 reattached and left running: {error}",
                pid_text(*pid)
            ),
            RecoveryAction::Relaunched {
                slot,
                generation,
                pid,
                orphans_stopped,
            } => {
                write!(
                    f,
                    "{slot}: generation {generation} was not running, relaunched from the store (pid {})",
                    pid_text(*pid)
                )?;
                if !orphans_stopped.is_empty() {
                    write!(f, "; stopped leftovers {orphans_stopped:?}")?;
                }
                Ok(())
            }
            RecoveryAction::SlotFailed { slot, stage, error } => write!(
                f,
                "{slot}: recovery failed while {stage}; the slot is marked failed, the others \
                 serve: {error}"
            ),
            RecoveryAction::RelaunchFailed {
                slot,
                generation,
                error,
            } => write!(f, "{slot}: generation {generation} is not running and relaunching it failed: {error}"),
            RecoveryAction::BakeEnded {
                slot,
                reload_id,
                state,
            } => write!(f, "{slot}: the bake of reload {reload_id} was {state} on recovery"),
            RecoveryAction::BakeContinues {
                slot,
                reload_id,
                until,
            } => write!(f, "{slot}: reload {reload_id} is baking until {until}"),
            RecoveryAction::Adopted {
                slot,
                generation,
                reload_id,
                pid,
                previous,
            } => {
                write!(
                    f,
                    "{slot}: adopted pid {pid} as generation {generation} (reload {reload_id}), unknown to the journal"
                )?;
                if let Some(previous) = previous {
                    write!(f, "; generation {previous} retires")?;
                }
                Ok(())
            }
        }
    }
}

/// Probes a generation that recovery reattached. Process slots get ONE check of their probe
/// (no initial delay, no thresholds: the process has been running for a while, and this runs
/// on every command that opens the journal); other drivers run their own probe, bounded.
/// The result is reported, never acted on.
async fn reattach_probe(rt: &SlotRuntime, instance: &Instance) -> Result<(), String> {
    match &rt.config {
        Some(config) => crate::probe::check_once(
            &config.probe.kind,
            instance.endpoint.as_ref(),
            config.probe.timeout,
        )
        .await
        .map_err(|e| e.to_string()),
        None => match tokio::time::timeout(REATTACH_PROBE_LIMIT, rt.driver.probe(instance)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "probe did not finish within {REATTACH_PROBE_LIMIT:?}"
            )),
        },
    }
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "none".to_owned(), |p| p.to_string())
}

/// Which slots' running active generations recovery reattaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Every one (daemon start, `tryswap recover`): reattached and probed once.
    Every,
    /// None of those still running (one-shot commands): see [`Supervisor::recover_needed`].
    Needed,
}

/// What a recovery run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Actions, in order.
    pub actions: Vec<RecoveryAction>,
}

impl Supervisor {
    /// Runs crash recovery (DESIGN.md "Recovery", docs/recovery.md):
    /// 1. every unfinished reload is rolled back with reason `recovered` and its candidate
    ///    stopped (found by pid + start time + boot id, and by its `TRYSWAP_RELOAD_ID` tag);
    /// 2. every former generation of a committed swap is stopped and retired;
    /// 3. every registered slot's active generation that the journal records as running is
    ///    reattached (and probed) if it still runs with its journaled identity, else
    ///    relaunched from the store.
    ///
    /// A pid is never signalled unless its identity (or its reload tag) matches the journal.
    /// Slots with a reload in progress in this process are left alone. What recovery
    /// journaled is made durable before it returns.
    ///
    /// Its records carry actor `recovery`, whatever command or daemon start runs it.
    pub async fn recover(&self) -> Result<RecoveryReport, SupervisorError> {
        self.recover_reaching(Reach::Every).await
    }

    /// The recovery a short-lived command needs before it acts: the same as
    /// [`Supervisor::recover`] for every unfinished reload, bake and former generation and
    /// for every active generation that does not run, but an active generation that still
    /// runs with its journaled identity is left alone: not reattached, probed or drained in
    /// this process. Whatever then acts on such a slot reads its process facts from the
    /// journal as usual (a reload retires it by them, `start` reattaches it).
    ///
    /// Skipping those slots changes nothing recovery would write or stop: a reattached
    /// generation's probe only chooses between the `reattached` and `reattached_unhealthy`
    /// report lines, and recovery never acts on it.
    pub async fn recover_needed(&self) -> Result<RecoveryReport, SupervisorError> {
        self.recover_reaching(Reach::Needed).await
    }

    async fn recover_reaching(&self, reach: Reach) -> Result<RecoveryReport, SupervisorError> {
        let recovery = Origin::of(tryswap_journal::ActorKind::Recovery);
        crate::origin::acting(recovery, self.recover_as_recovery(reach)).await
    }

    async fn recover_as_recovery(&self, reach: Reach) -> Result<RecoveryReport, SupervisorError> {
        // A journal older than the processes it finds must not start a second copy.
        let unknown = self.unknown_processes()?;
        if !unknown.is_empty() {
            return Err(SupervisorError::UnknownProcesses { unknown });
        }
        let mut report = RecoveryReport::default();
        let before = self.journal().last_seq();
        self.roll_back_unfinished(&mut report).await?;
        self.retire_former(&mut report).await?;
        self.bring_up_active(&mut report, reach).await?;
        if self.journal().last_seq() != before {
            self.flush_off_thread().await?;
        }
        // The endpoint links follow the journal's active markers, whatever a crash left.
        self.repair_endpoints();
        for action in &report.actions {
            tracing::info!(%action, "recovery");
        }
        Ok(report)
    }

    /// One slot's recovery failed: mark it failed and report it; recovery goes on with the
    /// other slots.
    fn slot_failed(
        &self,
        report: &mut RecoveryReport,
        slot: &SlotName,
        stage: &str,
        error: SupervisorError,
    ) {
        let error = error.to_string();
        tracing::error!(slot = %slot, stage, %error, "recovering the slot failed; it is marked failed, the other slots go on");
        self.set_failed(
            slot,
            Some(format!("recovery failed while {stage}: {error}")),
        );
        report.actions.push(RecoveryAction::SlotFailed {
            slot: slot.to_string(),
            stage: stage.to_owned(),
            error,
        });
    }

    async fn roll_back_unfinished(
        &self,
        report: &mut RecoveryReport,
    ) -> Result<(), SupervisorError> {
        for view in self.journal().in_flight()? {
            let slot = view.reload.slot.clone();
            let what = format!("rolling back reload {}", view.reload.id);
            if let Err(e) = self.roll_back_one(view, report).await {
                self.slot_failed(report, &slot, &what, e);
            }
        }
        Ok(())
    }

    async fn roll_back_one(
        &self,
        view: ReloadView,
        report: &mut RecoveryReport,
    ) -> Result<(), SupervisorError> {
        let id = view.reload.id;
        let slot = view.reload.slot.clone();
        let rt = self.runtime(&slot).ok();
        let _busy = match &rt {
            Some(rt) => match rt.busy.try_lock() {
                Ok(guard) => Some(guard),
                Err(_) => return Ok(()), // a live reload of this very process
            },
            None => None,
        };
        // Under the slot's lock: the reload may have finished meanwhile.
        let Some(view) = self.journal().reload(&id)? else {
            return Ok(());
        };
        let reload = &view.reload;
        if reload.state.is_terminal() {
            return Ok(());
        }
        let found = reload.state.name().to_owned();
        if let (Some(until_ms), Some(rt)) = (reload.state.bake_until_ms(), &rt) {
            report
                .actions
                .push(self.recover_bake(rt, reload, until_ms).await?);
            return Ok(());
        }
        // The configured slot's driver, or (a slot no longer configured) the orphan
        // driver, which stops without asking the plugin first.
        let driver = self.driver_of(&slot);
        let candidate = reload.candidate.as_ref();
        let instance = Instance {
            slot: slot.clone(),
            generation: candidate.map_or_else(Default::default, |c| c.generation),
            reload: id,
            artifact: candidate.map_or_else(
                || tryswap_fsm::ArtifactRef {
                    sha256: tryswap_fsm::Sha256::default(),
                    config_sha256: None,
                },
                |c| c.artifact.clone(),
            ),
            process: reload.process.clone(),
            log_path: reload.log_path.as_ref().map(PathBuf::from),
            endpoint: rt.as_ref().and(reload.endpoint.clone()),
            handle: None,
        };
        let mut seen = driver.survivors(&instance);
        fail::fail_point!("recover-before-stop-candidate");
        // Stops the journaled process and everything tagged with the reload.
        let stop_error = driver.stop(&instance).await.err().map(|e| e.to_string());
        // Whatever the driver said: nothing of this reload may survive its rollback.
        let survivors = driver.survivors(&instance);
        if !survivors.is_empty() {
            let error = match stop_error {
                Some(e) => format!("{e}; still running: pids {survivors:?}"),
                None => format!("still running: pids {survivors:?}"),
            };
            tracing::error!(slot = %slot, reload_id = %id, %error, "an orphaned candidate survived");
            report.actions.push(RecoveryAction::CandidateSurvived {
                slot: slot.to_string(),
                reload_id: id,
                found,
                error,
            });
            return Ok(());
        }
        if let Some(e) = stop_error {
            tracing::warn!(slot = %slot, reload_id = %id, error = %e, "stopping an orphaned candidate reported an error, but nothing of it runs");
        }
        fail::fail_point!("recover-before-rolledback");
        self.record(&Command::Fail {
            reload: id,
            reason: Reason::recovered(format!(
                "tryswap stopped while the reload was {found}; candidate stopped on recovery"
            )),
        })?;
        fail::fail_point!("recover-after-rolledback");
        seen.sort_unstable();
        seen.dedup();
        report.actions.push(RecoveryAction::RolledBack {
            slot: slot.to_string(),
            reload_id: id,
            found,
            stopped_pids: seen,
        });
        Ok(())
    }

    /// A bake a crashed process left: candidate dead → revert; deadline passed and the
    /// candidate alive and healthy → confirm; otherwise the bake goes on.
    async fn recover_bake(
        &self,
        rt: &SlotRuntime,
        reload: &tryswap_fsm::Reload,
        until_ms: u64,
    ) -> Result<RecoveryAction, SupervisorError> {
        use crate::supervisor::bake::BakeEnd;
        let slot = rt.name.to_string();
        let facts = self
            .journal()
            .slot(&rt.name)?
            .and_then(|v| v.slot.active)
            .filter(|a| a.reload == reload.id);
        let candidate = facts
            .as_ref()
            .filter(|f| f.running)
            .and_then(|f| rt.driver.reattach(&facts_instance(&rt.name, f)));
        let until = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(
            i64::try_from(until_ms).unwrap_or(i64::MAX),
        )
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let end = match &candidate {
            None => Some(BakeEnd::Revert(Reason::recovered(
                "the candidate was found dead after a restart during its bake",
            ))),
            Some(instance) if chrono::Utc::now() >= until => {
                match reattach_probe(rt, instance).await {
                    Ok(()) => Some(BakeEnd::Confirm),
                    Err(_) => None,
                }
            }
            Some(_) => None,
        };
        let Some(end) = end else {
            if let Some(instance) = candidate {
                rt.active.store(Some(Serving::new(instance)));
            }
            return Ok(RecoveryAction::BakeContinues {
                slot,
                reload_id: reload.id,
                until: until.to_rfc3339(),
            });
        };
        let serving = candidate.map(Serving::new);
        rt.active.store(serving);
        fail::fail_point!("recover-before-bake-end");
        self.end_bake_locked(rt, reload.id, end.clone(), None)
            .await?;
        Ok(RecoveryAction::BakeEnded {
            slot,
            reload_id: reload.id,
            state: match end {
                BakeEnd::Confirm => "confirmed".to_owned(),
                BakeEnd::Revert(_) => "reverted".to_owned(),
            },
        })
    }

    async fn retire_former(&self, report: &mut RecoveryReport) -> Result<(), SupervisorError> {
        for view in self.journal().slots()? {
            let slot = view.slot.name.clone();
            if let Err(e) = self.retire_former_of(view, report).await {
                self.slot_failed(report, &slot, "retiring former generations", e);
            }
        }
        Ok(())
    }

    async fn retire_former_of(
        &self,
        view: SlotView,
        report: &mut RecoveryReport,
    ) -> Result<(), SupervisorError> {
        let slot = view.slot.name.clone();
        if view.slot.retiring.is_empty() {
            return Ok(());
        }
        match self.runtime(&slot) {
            Ok(rt) => {
                let Ok(_busy) = rt.busy.try_lock() else {
                    return Ok(());
                };
                let retired = self.retire_old(&rt, None).await;
                let still = self
                    .journal()
                    .slot(&slot)?
                    .map(|v| v.slot.retiring)
                    .unwrap_or_default();
                for generation in retired {
                    report.actions.push(RecoveryAction::Retired {
                        slot: slot.to_string(),
                        generation,
                    });
                }
                for facts in still {
                    report.actions.push(RecoveryAction::RetirePending {
                        slot: slot.to_string(),
                        generation: facts.generation.0,
                    });
                }
            }
            Err(_) => {
                let driver = self.driver_of(&slot);
                for facts in &view.slot.retiring {
                    // Orphans are stopped by signal, without asking the plugin first.
                    let instance = Instance {
                        endpoint: None,
                        ..facts_instance(&slot, facts)
                    };
                    if let Err(e) = driver.stop(&instance).await {
                        tracing::error!(slot = %slot, error = %e, "stopping a former generation");
                        report.actions.push(RecoveryAction::RetirePending {
                            slot: slot.to_string(),
                            generation: facts.generation.0,
                        });
                        continue;
                    }
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
        Ok(())
    }

    /// Brings every slot's active generation up concurrently: recovery costs the slowest
    /// slot, not the sum. Actions are reported in slot order.
    async fn bring_up_active(
        &self,
        report: &mut RecoveryReport,
        reach: Reach,
    ) -> Result<(), SupervisorError> {
        let tasks: Vec<_> = self
            .runtimes()
            .into_iter()
            .map(|rt| {
                let sup = self.clone();
                let name = rt.name.clone();
                let task = crate::origin::spawn(async move {
                    let mut own = RecoveryReport::default();
                    let result = sup.bring_up_slot(&rt, &mut own, reach).await;
                    (own, result)
                });
                (name, task)
            })
            .collect();
        for (name, task) in tasks {
            let stage = "bringing up the active generation";
            match task.await {
                Ok((own, result)) => {
                    report.actions.extend(own.actions);
                    if let Err(e) = result {
                        self.slot_failed(report, &name, stage, e);
                    }
                }
                Err(e) => self.slot_failed(
                    report,
                    &name,
                    stage,
                    SupervisorError::Driver {
                        slot: name.clone(),
                        error: crate::driver::DriverError::error(format!(
                            "the recovery task failed: {e}"
                        )),
                    },
                ),
            }
        }
        Ok(())
    }

    async fn bring_up_slot(
        &self,
        rt: &Arc<SlotRuntime>,
        report: &mut RecoveryReport,
        reach: Reach,
    ) -> Result<(), SupervisorError> {
        let Ok(_busy) = rt.busy.try_lock() else {
            return Ok(());
        };
        let Some(view) = self.journal().slot(&rt.name)? else {
            return Ok(());
        };
        let Some(facts) = view.slot.active.clone().filter(|a| a.running) else {
            return Ok(());
        };
        if let Some(serving) = rt.active.load_full() {
            if serving.instance.generation == facts.generation {
                return Ok(());
            }
        }
        let journaled = facts_instance(&rt.name, &facts);
        // The same test as the driver's `reattach` (anything but provably gone would be
        // reattached, never relaunched): such a slot needs no recovery.
        if reach == Reach::Needed && rt.driver.liveness(&journaled) != Liveness::Dead {
            return Ok(());
        }
        let slot = rt.name.to_string();
        let generation = facts.generation.0;
        if let Some(instance) = rt.driver.reattach(&journaled) {
            let pid = instance.pid();
            let probe = reattach_probe(rt.as_ref(), &instance).await;
            rt.active.store(Some(Serving::new(instance)));
            report.actions.push(match probe {
                Ok(()) => RecoveryAction::Reattached {
                    slot,
                    generation,
                    pid,
                },
                Err(error) => {
                    tracing::warn!(slot = %rt.name, generation, %error, "reattached generation fails its probe; left running");
                    RecoveryAction::ReattachedUnhealthy {
                        slot,
                        generation,
                        pid,
                        error,
                    }
                }
            });
            return Ok(());
        }
        report.actions.push(self.relaunch(rt, &facts).await?);
        Ok(())
    }

    /// Relaunches the active generation `facts` (journaled running, found not running).
    ///
    /// Processes tagged with the generation's reload id are stopped first (leftovers of a
    /// relaunch that crashed before `Relaunched` was durable: the journaled process is gone,
    /// so none of them can be it). `Stopped(recovered)` and `Relaunched` are journaled in one
    /// transaction once the new process passed its handshake and probe, so a crash in
    /// between never leaves the slot marked stopped.
    async fn relaunch(
        &self,
        rt: &SlotRuntime,
        facts: &Facts,
    ) -> Result<RecoveryAction, SupervisorError> {
        let slot = rt.name.to_string();
        let generation = facts.generation.0;
        let gone = match facts.process.as_ref() {
            Some(p) => format!(
                "generation {generation}'s process (pid {}) was not running when tryswap recovered",
                p.pid
            ),
            None => format!("generation {generation} was not running when tryswap recovered"),
        };
        let plan = Plan::Recovery {
            active: relaunch_of(&rt.name, facts),
            gone,
        };
        let request = self.launch_request(rt, facts.reload, facts.generation, &facts.artifact);
        match self.bring_up(rt.driver.as_ref(), &request, plan).await {
            Ok(up) => {
                let pid = up.instance.pid();
                rt.active.store(Some(Serving::new(up.instance)));
                Ok(RecoveryAction::Relaunched {
                    slot,
                    generation,
                    pid,
                    orphans_stopped: up.leftovers,
                })
            }
            Err(down) => match down.error {
                DownError::Journal(e) => Err(e.into()),
                _ => Ok(RecoveryAction::RelaunchFailed {
                    slot,
                    generation,
                    error: down.failure.reason.message,
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoint_specs_are_checked() {
        assert!(arm_failpoints("").unwrap().is_empty());
        assert!(arm_failpoints(" ; ").unwrap().is_empty());
        let err = arm_failpoints("reload-after-spawn").unwrap_err();
        assert!(err.contains("name=action"), "{err}");
        let err = arm_failpoints("=kill").unwrap_err();
        assert!(err.contains("needs a name"), "{err}");
    }

    #[test]
    fn failpoint_names_are_unique() {
        let mut names = FAILPOINTS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAILPOINTS.len());
    }
}
