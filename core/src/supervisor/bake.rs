//! The bake window (DESIGN.md "Provisional activation"): a committed candidate stays
//! provisional until its bake passes, with the previous generation running as a warm
//! standby; a failed bake moves the marker back to the standby (same process) durably
//! before the candidate is stopped.
//!
//! Whoever watches a bake (a reload with a bake, a config reload's bake, or the daemon's
//! watch of a bake it found in the journal after a restart) holds the slot's lock and
//! registers with [`BakeWatchers`]: `confirm` / `revert` of the same process reach it there,
//! and shutdown tells it to stop watching, leaving the bake in the journal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tryswap_fsm::{Command, Reason, ReloadId, SlotName};

use crate::config::ProbeConfig;
use crate::driver::{Driver, Instance};
use crate::report::{PreviousInfo, ReloadReport};
use crate::supervisor::lease::Serving;
use crate::supervisor::{facts_instance, failpoint, SlotRuntime, Supervisor, SupervisorError};

/// The shortest pause between two bake checks.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// How long `confirm` / `revert` wait for the watcher of a bake the journal already shows.
const REGISTER_WAIT: Duration = Duration::from_secs(2);

/// How a bake ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BakeEnd {
    /// The candidate stays active; the standby is retired.
    Confirm,
    /// The marker goes back to the standby; the candidate is stopped.
    Revert(Reason),
}

/// What a bake's watcher is told.
pub(crate) enum BakeSignal {
    /// End the bake now (`confirm` / `revert`); the generations retired are sent back.
    End(BakeEnd, oneshot::Sender<Vec<u64>>),
    /// Stop watching and leave the bake in the journal (shutdown): the next `serve`
    /// continues it.
    Detach,
}

/// How the watch of a bake ended.
pub(crate) enum Watched {
    /// End the bake this way; `reply` waits for the generations retired.
    End(BakeEnd, Option<oneshot::Sender<Vec<u64>>>),
    /// Shutdown: the bake stays in the journal, both generations keep running.
    Detached,
}

/// The watchers of the bakes under way in this process, by slot.
#[derive(Default)]
pub(crate) struct BakeWatchers {
    slots: std::sync::Mutex<BTreeMap<SlotName, mpsc::UnboundedSender<BakeSignal>>>,
    /// Set once shutdown began: no bake is watched any more.
    detached: AtomicBool,
}

/// A watcher's registration and the signals it receives.
pub(crate) type Registered<'a> = (Registration<'a>, mpsc::UnboundedReceiver<BakeSignal>);

/// Removes a watcher's registration when its watch ends.
pub(crate) struct Registration<'a> {
    watchers: &'a BakeWatchers,
    slots: Vec<SlotName>,
    sender: mpsc::UnboundedSender<BakeSignal>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = self
            .watchers
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for slot in &self.slots {
            if map.get(slot).is_some_and(|s| s.same_channel(&self.sender)) {
                map.remove(slot);
            }
        }
    }
}

impl BakeWatchers {
    /// Registers one watcher for `slots` (a config reload's bake watches several as one).
    pub(crate) fn register(
        &self,
        slots: &[SlotName],
    ) -> (Registration<'_>, mpsc::UnboundedReceiver<BakeSignal>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        if self.detached.load(Ordering::SeqCst) {
            let _ = sender.send(BakeSignal::Detach);
        }
        let mut map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots {
            map.insert(slot.clone(), sender.clone());
        }
        let registration = Registration {
            watchers: self,
            slots: slots.to_vec(),
            sender,
        };
        (registration, receiver)
    }

    fn sender(&self, slot: &SlotName) -> Option<mpsc::UnboundedSender<BakeSignal>> {
        let map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        map.get(slot).cloned()
    }

    /// The watcher of `slot`'s bake, waiting (bounded) for one that is about to register:
    /// a config reload's bake registers just after its commit.
    async fn sender_soon(&self, slot: &SlotName) -> Option<mpsc::UnboundedSender<BakeSignal>> {
        let deadline = tokio::time::Instant::now() + REGISTER_WAIT;
        loop {
            if let Some(sender) = self.sender(slot) {
                return Some(sender);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(MIN_PERIOD).await;
        }
    }

    fn detach_all(&self) {
        self.detached.store(true, Ordering::SeqCst);
        let map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for sender in map.values() {
            let _ = sender.send(BakeSignal::Detach);
        }
    }
}

/// One baking candidate being watched.
pub(crate) struct Baking {
    /// The slot.
    pub(crate) slot: SlotName,
    /// The driver that runs the candidate.
    pub(crate) driver: Arc<dyn Driver>,
    /// The candidate.
    pub(crate) instance: Instance,
    /// The probe run every `period` during the bake.
    pub(crate) probe: Option<ProbeConfig>,
}

impl Baking {
    pub(crate) fn of(rt: &SlotRuntime, instance: Instance) -> Self {
        Baking {
            slot: rt.name.clone(),
            driver: Arc::clone(&rt.driver),
            instance,
            probe: rt.config.as_ref().map(|c| c.probe.clone()),
        }
    }
}

/// A bake found in the journal after a restart, with its slot held: [`BakeWatch::run`]
/// watches it to its end, as the reload that began it would have.
pub struct BakeWatch {
    supervisor: Supervisor,
    rt: Arc<SlotRuntime>,
    _busy: tokio::sync::OwnedMutexGuard<()>,
    reload: ReloadId,
    until: DateTime<Utc>,
    previous: Option<tryswap_fsm::Generation>,
}

impl BakeWatch {
    /// The slot that bakes.
    pub fn slot(&self) -> &SlotName {
        &self.rt.name
    }

    /// Watches the bake until it ends (confirmed or reverted), or until shutdown tells the
    /// watch to stop (the bake stays in the journal: outcome `in_progress`).
    pub async fn run(self) -> Result<ReloadReport, SupervisorError> {
        let sup = &self.supervisor;
        let rt = &self.rt;
        let slot_view = sup.journal().slot(&rt.name)?;
        let facts = slot_view
            .as_ref()
            .and_then(|v| v.slot.active.clone())
            .filter(|a| a.reload == self.reload);
        let standby_facts = slot_view.as_ref().and_then(|v| {
            v.slot
                .retiring
                .iter()
                .find(|f| Some(f.generation) == self.previous)
                .cloned()
        });
        let previous = standby_facts.as_ref().map(PreviousInfo::from_facts);
        let standby = standby_facts
            .filter(|f| f.running)
            .and_then(|f| rt.driver.reattach(&facts_instance(&rt.name, &f)))
            .map(Serving::new);
        let candidate = match (&facts, rt.active.load_full()) {
            (Some(f), Some(serving)) if serving.instance.generation == f.generation => {
                Some(serving.instance.clone())
            }
            (Some(f), _) if f.running => rt.driver.reattach(&facts_instance(&rt.name, f)),
            _ => None,
        };
        let Some(candidate) = candidate else {
            let reason = Reason::recovered("the candidate was found dead during its bake");
            let retired = sup
                .end_bake_locked(rt, self.reload, BakeEnd::Revert(reason), standby)
                .await?;
            return sup.bake_report(self.reload, previous, retired);
        };
        rt.active.store(Some(Serving::new(candidate.clone())));
        tracing::info!(slot = %rt.name, reload_id = %self.reload, until = %self.until.to_rfc3339(), "watching a bake found in the journal");
        let registered = sup.inner.bakes.register(std::slice::from_ref(&rt.name));
        let retired = sup
            .watch_and_end(rt, self.reload, candidate, standby, self.until, registered)
            .await?;
        sup.bake_report(self.reload, previous, retired.unwrap_or_default())
    }
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
        let until = bake_deadline(bake);
        // Reachable by `confirm` / `revert` as soon as the journal shows the bake.
        let registered = self.inner.bakes.register(std::slice::from_ref(&rt.name));
        failpoint!("bake-before-commit");
        if let Err(e) = self
            .record_off_thread(vec![Command::CommitBaking {
                reload,
                until_ms: until_ms(until),
            }])
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
        let retired = self
            .watch_and_end(rt, reload, instance, standby, until, registered)
            .await?;
        let mut report = self.report(reload, started, previous)?;
        report.retired = retired.unwrap_or_default();
        Ok(report)
    }

    /// Watches one slot's baking candidate and ends its bake. `None`: shutdown detached
    /// the watch (the bake stays in the journal).
    async fn watch_and_end(
        &self,
        rt: &SlotRuntime,
        reload: ReloadId,
        instance: Instance,
        standby: Option<Arc<Serving>>,
        until: DateTime<Utc>,
        (registration, mut signals): Registered<'_>,
    ) -> Result<Option<Vec<u64>>, SupervisorError> {
        let watched = self
            .watch_bake(&[Baking::of(rt, instance)], until, &mut signals)
            .await;
        let (end, reply) = match watched {
            Watched::Detached => {
                // Both generations keep running; the standby's pointer is dropped, not
                // the process: whoever continues the bake reattaches it.
                tracing::info!("no longer watching the bake (shutdown); it stays in the journal");
                return Ok(None);
            }
            Watched::End(end, reply) => (end, reply),
        };
        let retired = self.end_bake_locked(rt, reload, end, standby).await?;
        drop(registration);
        if let Some(reply) = reply {
            let _ = reply.send(retired.clone());
        }
        Ok(Some(retired))
    }

    /// Watches baking candidates until `until`: ends with a revert as soon as one exits or
    /// its probe fails `failure_threshold` times in a row, with a confirm at `until`, or as
    /// `signals` says.
    pub(crate) async fn watch_bake(
        &self,
        candidates: &[Baking],
        until: DateTime<Utc>,
        signals: &mut mpsc::UnboundedReceiver<BakeSignal>,
    ) -> Watched {
        let period = candidates
            .iter()
            .map(|c| {
                c.probe
                    .as_ref()
                    .map_or(Duration::from_millis(100), |p| p.period)
            })
            .min()
            .unwrap_or(Duration::from_millis(100))
            .max(MIN_PERIOD);
        let mut failures = vec![0u32; candidates.len()];
        loop {
            for (candidate, failures) in candidates.iter().zip(failures.iter_mut()) {
                if let Err(mut reason) = check_candidate(candidate, failures).await {
                    if candidates.len() > 1 {
                        reason.message = format!("slot {}: {}", candidate.slot, reason.message);
                    }
                    return Watched::End(BakeEnd::Revert(reason), None);
                }
            }
            let left = (until - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return Watched::End(BakeEnd::Confirm, None);
            }
            tokio::select! {
                () = tokio::time::sleep(left.min(period)) => {}
                signal = signals.recv() => match signal {
                    Some(BakeSignal::End(end, reply)) => return Watched::End(end, Some(reply)),
                    Some(BakeSignal::Detach) | None => return Watched::Detached,
                },
            }
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
                Ok(self.restore_standby(rt, standby).await)
            }
        }
    }

    /// After a journaled revert: the standby serves again (the same process if it still
    /// runs, else relaunched from the store) and the candidate is stopped.
    pub(crate) async fn restore_standby(
        &self,
        rt: &SlotRuntime,
        standby: Option<Arc<Serving>>,
    ) -> Vec<u64> {
        let marker = match self.journal().slot(&rt.name) {
            Ok(view) => view.and_then(|v| v.slot.active.map(|a| a.generation)),
            Err(e) => {
                tracing::error!(error = %e, "reading the slot after the revert");
                None
            }
        };
        let standby = standby.filter(|s| Some(s.instance.generation) == marker);
        let candidate = rt.active.swap(standby);
        if marker.is_some() {
            if let Err(e) = self.start_locked(rt).await {
                tracing::error!(error = %e, "bringing the standby back failed");
            }
        }
        self.retire_old(rt, candidate).await
    }

    /// Ends the bake in progress in `slot` by hand (or after the command that watched it was
    /// interrupted): confirm keeps the candidate, revert restores the standby. A bake this
    /// process watches (the daemon's) is ended by its watcher. Refused with
    /// [`SupervisorError::NoBake`] when the slot is not baking, and as a conflict while
    /// another command of this process holds the slot.
    pub async fn end_bake(
        &self,
        slot: &SlotName,
        end: BakeEnd,
    ) -> Result<ReloadReport, SupervisorError> {
        let rt = self.runtime(slot)?;
        let baking = self
            .journal()
            .in_flight()?
            .into_iter()
            .find(|v| &v.reload.slot == slot && v.reload.state.bake_until_ms().is_some());
        let busy = rt.busy.try_lock();
        let Some(baking) = baking else {
            return Err(SupervisorError::NoBake(slot.clone()));
        };
        let reload = baking.reload.id;
        // The standby (the generation active before the bake), as the report's `previous`.
        let previous = self.journal().slot(slot)?.and_then(|v| {
            v.slot
                .retiring
                .iter()
                .find(|f| Some(f.generation) == baking.reload.previous)
                .map(PreviousInfo::from_facts)
        });
        let retired = match busy {
            Ok(_busy) => self.end_bake_locked(&rt, reload, end, None).await?,
            Err(_) => {
                let sender = self.inner.bakes.sender_soon(slot).await.ok_or_else(|| {
                    SupervisorError::Conflict {
                        slot: slot.clone(),
                        in_flight: Some(reload),
                    }
                })?;
                let (reply, retired) = oneshot::channel();
                if sender.send(BakeSignal::End(end, reply)).is_err() {
                    return Err(SupervisorError::Conflict {
                        slot: slot.clone(),
                        in_flight: Some(reload),
                    });
                }
                // No answer: the bake ended otherwise meanwhile; the journal says how.
                retired.await.unwrap_or_default()
            }
        };
        self.bake_report(reload, previous, retired)
    }

    fn bake_report(
        &self,
        reload: ReloadId,
        previous: Option<PreviousInfo>,
        retired: Vec<u64>,
    ) -> Result<ReloadReport, SupervisorError> {
        let view = self.journal().reload(&reload)?.ok_or_else(|| {
            SupervisorError::Journal(tryswap_journal::JournalError::Missing(format!(
                "reload {reload}"
            )))
        })?;
        let mut report = ReloadReport::from_view(&view, None, previous);
        report.retired = retired;
        Ok(report)
    }

    /// The bakes the journal shows under way whose slot is free, each with its slot held:
    /// the daemon runs them after recovery so that every bake is watched to its end.
    pub fn recovered_bakes(&self) -> Result<Vec<BakeWatch>, SupervisorError> {
        let mut watches = Vec::new();
        for view in self.journal().in_flight()? {
            let Some(until_ms) = view.reload.state.bake_until_ms() else {
                continue;
            };
            let slot = &view.reload.slot;
            if self.runtime(slot).is_err() {
                continue;
            }
            let Some((rt, busy)) = self.lock_slot(slot)? else {
                continue;
            };
            watches.push(BakeWatch {
                supervisor: self.clone(),
                rt,
                _busy: busy,
                reload: view.reload.id,
                until: deadline_of(until_ms),
                previous: view.reload.previous,
            });
        }
        Ok(watches)
    }

    /// Tells every bake watched by this process to stop watching (shutdown): their bakes
    /// stay in the journal, and the next `serve` or command continues or settles them.
    pub fn stop_watching_bakes(&self) {
        self.inner.bakes.detach_all();
    }

    /// Stops the standbys of the bakes under way (shutdown of the daemon, which stops
    /// every generation): the next start reverts the bake whose candidate it finds stopped
    /// and relaunches the standby from the store.
    pub(crate) async fn stop_standbys(&self) {
        let Ok(in_flight) = self.journal().in_flight() else {
            return;
        };
        for view in in_flight {
            if view.reload.state.bake_until_ms().is_none() {
                continue;
            }
            let slot = &view.reload.slot;
            let Ok(Some(slot_view)) = self.journal().slot(slot) else {
                continue;
            };
            let Some(facts) = slot_view
                .slot
                .retiring
                .iter()
                .find(|f| Some(f.generation) == view.reload.previous && f.running)
            else {
                continue;
            };
            let driver = self.driver_of(slot);
            if let Some(instance) = driver.reattach(&facts_instance(slot, facts)) {
                if let Err(e) = driver.stop(&instance).await {
                    tracing::error!(slot = %slot, error = %e, "stopping the standby at shutdown");
                }
            }
        }
    }
}

/// One check of a baking candidate: `Err` with the reason to revert.
async fn check_candidate(candidate: &Baking, failures: &mut u32) -> Result<(), Reason> {
    if !candidate.driver.is_alive(&candidate.instance) {
        return Err(Reason::error(format!(
            "candidate generation {} exited during the bake",
            candidate.instance.generation
        )));
    }
    let Some(probe) = &candidate.probe else {
        return Ok(());
    };
    match crate::probe::check_once(
        &probe.kind,
        candidate.instance.endpoint.as_ref(),
        probe.timeout,
    )
    .await
    {
        Ok(()) => *failures = 0,
        Err(e) => {
            *failures += 1;
            tracing::warn!(slot = %candidate.slot, failures = *failures, error = %e, "bake probe failed");
            if *failures >= probe.failure_threshold.max(1) {
                return Err(Reason::error(format!(
                    "probe failed {} times in a row during the bake: {e}",
                    *failures
                )));
            }
        }
    }
    Ok(())
}

/// The deadline of a bake of `bake` starting now.
pub(crate) fn bake_deadline(bake: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(bake).unwrap_or_default()
}

/// A deadline as the journal stores it.
pub(crate) fn until_ms(until: DateTime<Utc>) -> u64 {
    u64::try_from(until.timestamp_millis()).unwrap_or_default()
}

/// A journaled deadline as a time.
pub(crate) fn deadline_of(until_ms: u64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(until_ms).unwrap_or(i64::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
