//! The bake window (DESIGN.md "Provisional activation"): a committed candidate stays
//! provisional until its bake passes, with the previous generation running as a warm
//! standby; a failed bake moves the marker back to the standby (same process) durably
//! before the candidate is stopped.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tryswap_fsm::{Command, Reason, ReloadId, SlotName};

use crate::driver::Instance;
use crate::report::{PreviousInfo, ReloadReport};
use crate::supervisor::lease::Serving;
use crate::supervisor::{failpoint, SlotRuntime, Supervisor, SupervisorError};

/// The shortest pause between two bake checks.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// How a bake ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BakeEnd {
    /// The candidate stays active; the standby is retired.
    Confirm,
    /// The marker goes back to the standby; the candidate is stopped.
    Revert(Reason),
}

impl Supervisor {
    /// The provisional commit of a probed candidate, the bake, and its end: confirm (the
    /// standby is retired) or revert (the standby serves again, the candidate is stopped).
    pub(crate) async fn run_bake(
        &self,
        rt: &SlotRuntime,
        reload: ReloadId,
        instance: Instance,
        bake: Duration,
        started: DateTime<Utc>,
        previous: Option<PreviousInfo>,
    ) -> Result<ReloadReport, SupervisorError> {
        let until = Utc::now() + chrono::Duration::from_std(bake).unwrap_or_default();
        let until_ms = u64::try_from(until.timestamp_millis()).unwrap_or_default();
        failpoint!("bake-before-commit");
        if let Err(e) = self
            .record_off_thread(vec![Command::CommitBaking { reload, until_ms }])
            .await
        {
            if let Err(e) = rt.driver.stop(&instance).await {
                tracing::error!(error = %e, "stopping the candidate");
            }
            return self.abandon(reload, e).await;
        }
        failpoint!("bake-after-commit");
        let standby = rt.active.swap(Some(Serving::new(instance.clone())));
        tracing::info!(until = %until.to_rfc3339(), "baking");
        let end = match self.watch_bake(rt, &instance, until).await {
            Ok(()) => BakeEnd::Confirm,
            Err(reason) => BakeEnd::Revert(reason),
        };
        let retired = self.end_bake_locked(rt, reload, end, standby).await?;
        let mut report = self.report(reload, started, previous)?;
        report.retired = retired;
        Ok(report)
    }

    /// Watches a baking candidate until `until`: `Err` with the reason as soon as it exits
    /// or its probe fails `failure_threshold` times in a row.
    async fn watch_bake(
        &self,
        rt: &SlotRuntime,
        candidate: &Instance,
        until: DateTime<Utc>,
    ) -> Result<(), Reason> {
        let probe = rt.config.as_ref().map(|c| c.probe.clone());
        let period = probe
            .as_ref()
            .map_or(Duration::from_millis(100), |p| p.period)
            .max(MIN_PERIOD);
        let mut failures = 0u32;
        loop {
            if !rt.driver.is_alive(candidate) {
                return Err(Reason::error(format!(
                    "candidate generation {} exited during the bake",
                    candidate.generation
                )));
            }
            if let Some(probe) = &probe {
                match crate::probe::check_once(
                    &probe.kind,
                    candidate.endpoint.as_ref(),
                    probe.timeout,
                )
                .await
                {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(failures, error = %e, "bake probe failed");
                        if failures >= probe.failure_threshold.max(1) {
                            return Err(Reason::error(format!(
                                "probe failed {failures} times in a row during the bake: {e}"
                            )));
                        }
                    }
                }
            }
            let left = (until - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(left.min(period)).await;
        }
    }

    /// Ends the bake of `reload` (the caller holds the slot's reload lock). `standby` is the
    /// standby's serving pointer if the caller still has it. Returns the generations retired.
    pub(crate) async fn end_bake_locked(
        &self,
        rt: &SlotRuntime,
        reload: ReloadId,
        end: BakeEnd,
        standby: Option<Arc<Serving>>,
    ) -> Result<Vec<u64>, SupervisorError> {
        match end {
            BakeEnd::Confirm => {
                failpoint!("bake-before-confirmed");
                self.record_off_thread(vec![Command::Confirm { reload }])
                    .await?;
                tracing::info!("bake passed: confirmed");
                failpoint!("bake-after-confirmed");
                Ok(self.retire_old(rt, standby).await)
            }
            BakeEnd::Revert(reason) => {
                tracing::warn!(reason = %reason, "reverting to the standby");
                failpoint!("bake-before-reverted");
                self.record_off_thread(vec![Command::Revert { reload, reason }])
                    .await?;
                failpoint!("bake-after-reverted");
                // The standby serves again: the same process if it still runs (reattached),
                // else relaunched from the store through the pipeline.
                let marker = self
                    .journal()
                    .slot(&rt.name)?
                    .and_then(|v| v.slot.active.map(|a| a.generation));
                let standby = standby.filter(|s| Some(s.instance.generation) == marker);
                let candidate = rt.active.swap(standby);
                if marker.is_some() {
                    if let Err(e) = self.start_locked(rt).await {
                        tracing::error!(error = %e, "bringing the standby back failed");
                    }
                }
                Ok(self.retire_old(rt, candidate).await)
            }
        }
    }

    /// Ends the bake in progress in `slot` by hand (or after the command that watched it was
    /// interrupted): confirm keeps the candidate, revert restores the standby. Refused with
    /// [`SupervisorError::NoBake`] when the slot is not baking, and as a conflict while
    /// another command of this process holds the slot.
    pub async fn end_bake(
        &self,
        slot: &SlotName,
        end: BakeEnd,
    ) -> Result<ReloadReport, SupervisorError> {
        let rt = self.runtime(slot)?;
        let Ok(_busy) = rt.busy.try_lock() else {
            return Err(SupervisorError::Conflict {
                slot: slot.clone(),
                in_flight: None,
            });
        };
        let baking = self
            .journal()
            .in_flight()?
            .into_iter()
            .find(|v| &v.reload.slot == slot && v.reload.state.bake_until_ms().is_some())
            .ok_or_else(|| SupervisorError::NoBake(slot.clone()))?;
        let reload = baking.reload.id;
        // The standby (the generation active before the bake), as the report's `previous`.
        let previous = self.journal().slot(slot)?.and_then(|v| {
            v.slot
                .retiring
                .iter()
                .find(|f| Some(f.generation) == baking.reload.previous)
                .map(PreviousInfo::from_facts)
        });
        let retired = self.end_bake_locked(&rt, reload, end, None).await?;
        let view = self.journal().reload(&reload)?.ok_or_else(|| {
            SupervisorError::Journal(tryswap_journal::JournalError::Missing(format!(
                "reload {reload}"
            )))
        })?;
        let mut report = ReloadReport::from_view(&view, None, previous);
        report.retired = retired;
        Ok(report)
    }
}
