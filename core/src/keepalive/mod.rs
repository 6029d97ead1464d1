//! Keep-alive of active generations: what `tryswap serve` runs, and what a host that embeds
//! the supervisor can run too.
//!
//! [`Monitor::start`] watches every slot registered with the supervisor (slots a config
//! reload adds or removes later are picked up on the next tick):
//!
//! - **Crashes.** When a slot's active generation is recorded running but its process is
//!   gone, the crash is journaled first (`Stopped`, with how it exited as the reason), then
//!   — per the slot's `[slot.restart]` policy — the same generation is relaunched from the
//!   store after an exponential backoff: `backoff_initial`, doubled after every further
//!   crash or failed restart, capped at `backoff_max`. A successful restart is journaled as
//!   `Relaunched` (the supervisor's `start` path: launch, handshake, probe). The backoff
//!   resets once a generation has stayed up for [`MonitorOptions::stable_after`]. A slot
//!   with [`MonitorOptions::failing_after`] consecutive crashes or failed restarts is
//!   reported as [`KeepAliveState::Failing`]; it keeps being retried at the capped backoff,
//!   never in a hot loop.
//! - **Policies.** `never`: a crash is journaled and the slot stays stopped. `on-failure`:
//!   restart unless the plugin exited with status 0 (an exit this process cannot observe —
//!   a plugin reattached after a daemon restart is not its child — counts as a failure).
//!   `always`: restart whatever the status. Slots registered in code without a config (e.g.
//!   in-process engines) are never restarted.
//! - **Operator intent wins.** A slot stopped with [`Supervisor::stop`] is never restarted
//!   (a restart scheduled before the stop is dropped); a reload or `start` in the meantime
//!   supersedes a scheduled restart. Reloads, starts and stops hold the slot's lock; the
//!   monitor restarts only a free slot, but it is never blind to a locked one: a crash of
//!   the active generation while a reload, config reload or retirement holds the lock is
//!   journaled within one poll interval (the fsm refuses it if the marker moved meanwhile),
//!   and the restart follows once the slot is free if the generation is then still active
//!   and stopped (a reload that rolled back to it). A slot being stopped, and a baking
//!   candidate (the bake reverts it), are left to their owners.
//! - **Restart intent.** A restart journals `Restarting` (durably) before it spawns, so a
//!   crash of this process mid-restart is recovered to exactly one process (see
//!   `docs/recovery.md`).
//! - **Health.** The slot's probe runs every `period` (at least
//!   [`MonitorOptions::min_probe_period`]) against the active generation with
//!   [`crate::probe::check_once`]; crossing `failure_threshold` / `success_threshold` is a
//!   health change, reported as a [`MonitorEvent`]. Crossing `failure_threshold` is also
//!   a liveness failure (Kubernetes semantics): under restart policy `on-failure` or
//!   `always` the process is stopped, journaled `Stopped`, and restarted with the same
//!   backoff as a crash ([`MonitorEventKind::UnhealthyRestart`]); under `never` it is only
//!   reported. A baking candidate is never restarted (a failed bake reverts).
//! - **After a restart of the host.** A slot whose last journaled `Stopped` (within the
//!   journal's recent tail) was a crash rather than an operator stop is restarted too.
//!
//! The decisions (crash → backoff → restart, failing after N, a stop cancels a pending
//! restart, stability) are a pure per-slot policy (`keepalive/policy.rs`: `handle(event,
//! now) -> actions`, unit-tested on explicit time); this module is its executor: it reads
//! the journal and the driver, takes the slot's lock, journals, restarts through the
//! supervisor's launch pipeline, and reports.
//!
//! Everything runs on tokio tasks; [`Monitor::shutdown`] stops them (a restart already under
//! way finishes first, so no launched process is left unjournaled).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tryswap_fsm::{Command, EventKind, Generation, ReasonKind, SlotName};

use crate::blocking::off_worker;
use crate::config::{ProbeKind, RestartConfig, RestartPolicy};
use crate::driver::process::ProcessDriver;
use crate::driver::Liveness;
use crate::origin::Origin;
use crate::supervisor::{SlotRuntime, Supervisor};
use policy::{Action, Event, Health, HealthChange, Pending, Policy, Report};

mod policy;

/// How many of the journal's last records are read at start to tell a crashed slot from
/// one an operator stopped.
const TAIL_RECORDS: u64 = 1024;

/// Tunables of the [`Monitor`]. The per-slot settings (restart policy, backoff, probe)
/// come from each slot's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorOptions {
    /// How often every slot's active process is checked. Default 100ms.
    pub poll_interval: Duration,
    /// How long a generation must stay up after a (re)start before its backoff resets.
    /// Default 10s.
    pub stable_after: Duration,
    /// Consecutive crashes or failed restarts after which a slot is reported failing.
    /// Default 3.
    pub failing_after: u32,
    /// Lower bound of the health-probe period (a reload's probe may run every 50ms; the
    /// keep-alive need not). Default 1s.
    pub min_probe_period: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            poll_interval: Duration::from_millis(100),
            stable_after: Duration::from_secs(10),
            failing_after: 3,
            min_probe_period: Duration::from_secs(1),
        }
    }
}

/// What the keep-alive is doing with a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepAliveState {
    /// No active generation.
    Idle,
    /// The active generation runs.
    Running,
    /// It crashed; a restart is scheduled.
    Restarting,
    /// It keeps crashing (or its restarts keep failing): still retried at the capped
    /// backoff. Also reported while a restarted generation has not yet been up for
    /// [`MonitorOptions::stable_after`].
    Failing,
    /// It is not running and will not be restarted (operator stop, restart policy).
    Stopped,
}

/// The keep-alive's view of one slot (`GET /v1/monitor`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotHealth {
    /// Slot name.
    pub slot: String,
    /// What the keep-alive is doing.
    pub state: KeepAliveState,
    /// The active generation, if any.
    pub generation: Option<u64>,
    /// Its process id, if known.
    pub pid: Option<u32>,
    /// Result of the periodic probe: `None` until a threshold was reached for the current
    /// generation.
    pub healthy: Option<bool>,
    /// Restarts this monitor made since it started.
    pub restarts: u64,
    /// Crashes and failed restarts since the slot last ran stably.
    pub consecutive_failures: u32,
    /// When the scheduled restart is due.
    pub next_restart_at: Option<DateTime<Utc>>,
    /// The last crash, restart failure or probe failure.
    pub last_error: Option<String>,
    /// The slot's restart policy (`never`, `on-failure`, `always`).
    pub policy: &'static str,
}

impl SlotHealth {
    fn new(slot: &SlotName) -> Self {
        SlotHealth {
            slot: slot.to_string(),
            state: KeepAliveState::Idle,
            generation: None,
            pid: None,
            healthy: None,
            restarts: 0,
            consecutive_failures: 0,
            next_restart_at: None,
            last_error: None,
            policy: RestartPolicy::Never.name(),
        }
    }
}

/// What happened, in a [`MonitorEvent`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MonitorEventKind {
    /// The active generation's process was found gone (journaled as `Stopped`).
    Crashed {
        /// Generation.
        generation: u64,
        /// The process that died.
        pid: Option<u32>,
        /// How it exited, as far as known.
        exit: String,
        /// Whether a restart follows (per the restart policy).
        restart: bool,
    },
    /// A restart is due after `delay_ms`.
    RestartScheduled {
        /// Generation.
        generation: u64,
        /// 1 for the first attempt after a crash.
        attempt: u32,
        /// The backoff delay.
        delay_ms: u64,
    },
    /// The generation runs again (journaled as `Relaunched`).
    Restarted {
        /// Generation.
        generation: u64,
        /// The new process.
        pid: Option<u32>,
        /// Which attempt succeeded.
        attempt: u32,
    },
    /// A restart failed (launch, handshake or probe); another is scheduled.
    RestartFailed {
        /// Generation.
        generation: u64,
        /// Which attempt failed.
        attempt: u32,
        /// Why.
        error: String,
    },
    /// The slot keeps crashing: `consecutive_failures` reached the failing threshold.
    Failing {
        /// Generation.
        generation: u64,
        /// Crashes and failed restarts in a row.
        consecutive_failures: u32,
    },
    /// A failing slot's generation stayed up long enough: its backoff was reset.
    Stable {
        /// Generation.
        generation: u64,
    },
    /// The periodic probe reached its success threshold.
    Healthy {
        /// Generation.
        generation: u64,
    },
    /// The periodic probe reached its failure threshold.
    Unhealthy {
        /// Generation.
        generation: u64,
        /// The last probe error.
        error: String,
    },
    /// The active generation failed its liveness probe `failure_threshold` times in a row
    /// and was stopped (journaled as `Stopped`) to be restarted per the restart policy.
    UnhealthyRestart {
        /// Generation.
        generation: u64,
        /// The process stopped.
        pid: Option<u32>,
        /// The last probe error.
        error: String,
    },
}

impl MonitorEventKind {
    /// The snake_case name of the kind (`crashed`, `restarted`, `healthy` …).
    pub fn name(&self) -> &'static str {
        match self {
            MonitorEventKind::Crashed { .. } => "crashed",
            MonitorEventKind::RestartScheduled { .. } => "restart_scheduled",
            MonitorEventKind::Restarted { .. } => "restarted",
            MonitorEventKind::RestartFailed { .. } => "restart_failed",
            MonitorEventKind::Failing { .. } => "failing",
            MonitorEventKind::Stable { .. } => "stable",
            MonitorEventKind::Healthy { .. } => "healthy",
            MonitorEventKind::Unhealthy { .. } => "unhealthy",
            MonitorEventKind::UnhealthyRestart { .. } => "unhealthy_restart",
        }
    }
}

impl fmt::Display for MonitorEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MonitorEventKind::Crashed {
                generation,
                pid,
                exit,
                restart,
            } => {
                let pid = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
                let then = if *restart {
                    "a restart follows"
                } else {
                    "not restarted"
                };
                write!(f, "generation {generation}{pid} exited: {exit}; {then}")
            }
            MonitorEventKind::RestartScheduled {
                generation,
                attempt,
                delay_ms,
            } => write!(
                f,
                "generation {generation}: restart attempt {attempt} in {delay_ms} ms"
            ),
            MonitorEventKind::Restarted {
                generation,
                pid,
                attempt,
            } => {
                let pid = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
                write!(
                    f,
                    "generation {generation} restarted{pid} on attempt {attempt}"
                )
            }
            MonitorEventKind::RestartFailed {
                generation,
                attempt,
                error,
            } => {
                let first = error.lines().next().unwrap_or("");
                write!(
                    f,
                    "generation {generation}: restart attempt {attempt} failed: {first}"
                )
            }
            MonitorEventKind::Failing {
                generation,
                consecutive_failures,
            } => write!(
                f,
                "generation {generation} keeps failing ({consecutive_failures} in a row)"
            ),
            MonitorEventKind::Stable { generation } => {
                write!(
                    f,
                    "generation {generation} runs stably again; backoff reset"
                )
            }
            MonitorEventKind::Healthy { generation } => {
                write!(f, "generation {generation} is healthy")
            }
            MonitorEventKind::Unhealthy { generation, error } => {
                let first = error.lines().next().unwrap_or("");
                write!(f, "generation {generation} is unhealthy: {first}")
            }
            MonitorEventKind::UnhealthyRestart {
                generation,
                pid,
                error,
            } => {
                let pid = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
                let first = error.lines().next().unwrap_or("");
                write!(
                    f,
                    "generation {generation}{pid} failed its liveness probe, stopped to be restarted: {first}"
                )
            }
        }
    }
}

/// A keep-alive or health change of one slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// Slot name.
    pub slot: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened (serialized inline, with a `kind` field).
    #[serde(flatten)]
    pub kind: MonitorEventKind,
}

struct Shared {
    supervisor: Supervisor,
    options: MonitorOptions,
    health: Mutex<BTreeMap<SlotName, SlotHealth>>,
    events: broadcast::Sender<MonitorEvent>,
    restarts_total: AtomicU64,
}

impl Shared {
    fn update(&self, slot: &SlotName, f: impl FnOnce(&mut SlotHealth)) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        f(health
            .entry(slot.clone())
            .or_insert_with(|| SlotHealth::new(slot)));
    }

    fn forget(&self, slot: &SlotName) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.remove(slot);
    }

    fn emit(&self, slot: &SlotName, kind: MonitorEventKind) {
        match &kind {
            MonitorEventKind::Crashed { .. }
            | MonitorEventKind::RestartFailed { .. }
            | MonitorEventKind::Failing { .. }
            | MonitorEventKind::Unhealthy { .. }
            | MonitorEventKind::UnhealthyRestart { .. } => {
                tracing::warn!(slot = %slot, event = ?kind, "keep-alive")
            }
            _ => tracing::info!(slot = %slot, event = ?kind, "keep-alive"),
        }
        // Nobody listening is fine.
        let _ = self.events.send(MonitorEvent {
            slot: slot.to_string(),
            at: Utc::now(),
            kind,
        });
    }
}

/// Keeps every slot's active generation alive and reports its health (see the module
/// docs). Dropping it stops its tasks at their next check; [`Monitor::shutdown`] also waits
/// for them.
pub struct Monitor {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Monitor {
    /// Starts watching `supervisor`'s slots. Call after recovery (the monitor treats a
    /// recorded-running generation whose process is gone as a crash). Must be called
    /// within a tokio runtime.
    pub fn start(supervisor: Supervisor, options: MonitorOptions) -> Monitor {
        let (events, _) = broadcast::channel(1024);
        let crashed = crashed_in_tail(&supervisor);
        let shared = Arc::new(Shared {
            supervisor,
            options,
            health: Mutex::new(BTreeMap::new()),
            events,
            restarts_total: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let keepalive = Origin::of(tryswap_journal::ActorKind::Keepalive);
        let run = run(Arc::clone(&shared), stopped, crashed);
        let task = tokio::spawn(crate::origin::acting(keepalive, run));
        Monitor {
            shared,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Every keep-alive and health event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MonitorEvent> {
        self.shared.events.subscribe()
    }

    /// The keep-alive state of every watched slot, by name.
    pub fn health(&self) -> Vec<SlotHealth> {
        let health = self.shared.health.lock().unwrap_or_else(|e| e.into_inner());
        health.values().cloned().collect()
    }

    /// The keep-alive state of one slot, once the monitor has looked at it.
    pub fn slot_health(&self, slot: &SlotName) -> Option<SlotHealth> {
        let health = self.shared.health.lock().unwrap_or_else(|e| e.into_inner());
        health.get(slot).cloned()
    }

    /// Restarts made since the monitor started, over all slots.
    pub fn restarts_total(&self) -> u64 {
        self.shared.restarts_total.load(Ordering::SeqCst)
    }

    /// Stops watching and waits for the tasks to end (a restart under way finishes
    /// first). Stop the monitor before stopping the plugins, or it restarts them.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the keep-alive monitor task failed");
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The slots whose last `Stopped` in the journal's tail was a crash (not an operator stop,
/// not a clean exit), with the generation that crashed.
fn crashed_in_tail(supervisor: &Supervisor) -> BTreeMap<SlotName, Generation> {
    let journal = supervisor.journal();
    let from = journal.last_seq().saturating_sub(TAIL_RECORDS) + 1;
    let mut last: BTreeMap<SlotName, Option<Generation>> = BTreeMap::new();
    for record in journal.events(from) {
        let Ok(record) = record else { continue };
        match &record.event {
            EventKind::Stopped { generation, reason } => {
                let crashed = reason.kind != ReasonKind::Cancelled;
                last.insert(record.slot.clone(), crashed.then_some(*generation));
            }
            // A new or restored active generation: whatever crashed before is past.
            EventKind::Relaunched { .. }
            | EventKind::Activated
            | EventKind::ActivatedBaking { .. }
            | EventKind::Reverted { .. } => {
                last.insert(record.slot.clone(), None);
            }
            _ => {}
        }
    }
    last.into_iter()
        .filter_map(|(slot, g)| g.map(|g| (slot, g)))
        .collect()
}

/// Sleeps `period`; true if the monitor is told to stop meanwhile (or already was).
async fn stopped_during(stop: &mut watch::Receiver<bool>, period: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
        _ = tokio::time::sleep(period) => *stop.borrow(),
    }
}

async fn run(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut crashed: BTreeMap<SlotName, Generation>,
) {
    let mut tasks: BTreeMap<SlotName, JoinHandle<()>> = BTreeMap::new();
    loop {
        for rt in shared.supervisor.runtimes() {
            let name = rt.name.clone();
            if tasks.get(&name).is_some_and(|t| !t.is_finished()) {
                continue;
            }
            let crashed_before = crashed.remove(&name);
            let shared = Arc::clone(&shared);
            let stop = stop.clone();
            let task = crate::origin::spawn(async move {
                let (sick, sick_seen) = watch::channel(None);
                tokio::join!(
                    keep_alive(&shared, &name, stop.clone(), crashed_before, sick_seen),
                    watch_health(&shared, &name, stop, sick),
                );
            });
            tasks.insert(rt.name.clone(), task);
        }
        tasks.retain(|_, t| !t.is_finished());
        if stopped_during(&mut stop, shared.options.poll_interval).await {
            break;
        }
    }
    for (slot, task) in tasks {
        if let Err(e) = task.await {
            tracing::error!(slot = %slot, error = %e, "a keep-alive task failed");
        }
    }
}

/// How long a crash's report waits for the exit status of a plugin that died as its
/// liveness was read: its waiter reaps it as soon as it runs.
const EXIT_STATUS_GRACE: Duration = Duration::from_secs(2);

/// Whether the generation the journal calls active runs; [`Liveness::Unknown`] (e.g.
/// `/proc` unreadable for lack of file descriptors) is never acted upon.
fn active_alive(rt: &SlotRuntime, facts: &tryswap_fsm::Instance) -> Liveness {
    match rt.active.load_full() {
        Some(serving) if serving.instance.generation == facts.generation => {
            rt.driver.liveness(&serving.instance)
        }
        _ => rt
            .driver
            .liveness(&crate::supervisor::facts_instance(&rt.name, facts)),
    }
}

/// The executor of one slot's keep-alive [`Policy`]: reads the journal and the driver,
/// feeds what it saw to the policy, and performs the actions (under the slot's lock where
/// they touch the slot).
struct KeepAlive<'a> {
    shared: &'a Shared,
    slot: &'a SlotName,
    policy: Policy,
}

impl KeepAlive<'_> {
    fn handle(&mut self, event: Event<'_>) -> Vec<Action> {
        self.policy.handle(event, Instant::now())
    }

    /// Performs what does not need the slot: reports and events. Returns the rest.
    fn report(&self, actions: Vec<Action>) -> Vec<Action> {
        let mut rest = Vec::new();
        for action in actions {
            match action {
                Action::Emit(kind) => self.shared.emit(self.slot, kind),
                Action::Report(report) => self.apply(report),
                other => rest.push(other),
            }
        }
        rest
    }

    fn apply(&self, report: Report) {
        if matches!(report, Report::Restarted { .. }) {
            self.shared.restarts_total.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.update(self.slot, |h| match report {
            Report::Idle => {
                h.state = KeepAliveState::Idle;
                h.generation = None;
                h.pid = None;
            }
            Report::Running {
                state,
                generation,
                pid,
                failures,
            } => {
                h.state = state;
                h.generation = Some(generation.0);
                h.pid = pid;
                h.next_restart_at = None;
                h.consecutive_failures = failures;
            }
            Report::Stopped { generation } => {
                h.state = KeepAliveState::Stopped;
                if let Some(generation) = generation {
                    h.generation = Some(generation.0);
                }
                h.next_restart_at = None;
            }
            Report::Scheduled {
                state,
                delay,
                failures,
            } => {
                h.state = state;
                h.next_restart_at =
                    Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
                h.consecutive_failures = failures;
            }
            Report::Failed { failures, error } => {
                h.consecutive_failures = failures;
                h.last_error = Some(error);
            }
            Report::Restarted { state, pid } => {
                h.restarts += 1;
                h.state = state;
                h.pid = pid;
                h.next_restart_at = None;
            }
        });
    }

    /// Performs actions: reports, events, and restarts (which feed the policy again).
    async fn perform(&mut self, actions: Vec<Action>, stop: &watch::Receiver<bool>) {
        let mut queue = actions;
        while !queue.is_empty() {
            let mut next = Vec::new();
            for action in self.report(std::mem::take(&mut queue)) {
                match action {
                    Action::Restart(pending) => next.extend(self.restart(pending, stop).await),
                    other => {
                        tracing::error!(slot = %self.slot, action = ?other, "keep-alive: an action out of place");
                    }
                }
            }
            queue = next;
        }
    }

    /// The journal says the active generation runs, but it does not: confirm it, let the
    /// policy decide, and journal the crash.
    ///
    /// Whatever the slot is doing: when its lock is held (a reload, config reload, bake or
    /// retirement in progress) the crash is still journaled at once, through the fsm (which
    /// refuses it if the marker moved meanwhile); the dead instance is cleaned up, and a
    /// restart runs, once the slot is free and only if the generation is still active and
    /// stopped then (a reload that rolled back to it). A slot being stopped, and a baking
    /// candidate (reverted by the bake watch), are left to their owners.
    async fn crashed(&mut self, restart: Option<&RestartConfig>, stop: &watch::Receiver<bool>) {
        let sup = &self.shared.supervisor;
        let Ok(rt) = sup.runtime(self.slot) else {
            return;
        };
        let busy = Arc::clone(&rt.busy).try_lock_owned().ok();
        // The runtime may have been replaced (config reload) while we took the lock.
        let Ok(rt) = sup.runtime(self.slot) else {
            return;
        };
        if busy.is_none() && sup.is_stopping(self.slot) {
            return; // the stop under way ends the process and journals it
        }
        let view = match sup.journal().slot(self.slot) {
            Ok(view) => view,
            Err(e) => {
                tracing::error!(slot = %self.slot, error = %e, "keep-alive: reading the journal");
                return;
            }
        };
        let Some(facts) = view
            .as_ref()
            .and_then(|v| v.slot.active.clone())
            .filter(|f| f.running)
        else {
            return;
        };
        if active_alive(&rt, &facts) != Liveness::Dead {
            return;
        }
        if busy.is_none() && (self.baking(view.as_ref(), &facts) || sup.is_stopping(self.slot)) {
            return;
        }
        let generation = facts.generation;
        let serving = rt
            .active
            .load_full()
            .filter(|s| s.instance.generation == generation);
        // Dead by `/proc` may mean a zombie its waiter has not reaped yet: the status (a
        // signal, an exit code) comes a moment later.
        let exit = match serving.as_ref() {
            Some(s) => ProcessDriver::exit_status_within(&s.instance, EXIT_STATUS_GRACE).await,
            None => None,
        };
        let actions = self.handle(Event::Crashed {
            generation,
            pid: facts.process.as_ref().map(|p| p.pid),
            exit,
            restart,
            stop_epoch: sup.stop_epoch(self.slot),
        });
        // Without the lock the in-flight operation owns the slot's instances: only journal.
        let serving = if busy.is_some() { serving } else { None };
        let rest = self.journal_crashes(&rt, serving, actions).await;
        drop(busy);
        self.perform(rest, stop).await;
    }

    /// Whether `facts` is the candidate of the slot's bake in progress.
    fn baking(
        &self,
        view: Option<&tryswap_journal::SlotView>,
        facts: &tryswap_fsm::Instance,
    ) -> bool {
        let Some(in_flight) = view.and_then(|v| v.slot.in_flight) else {
            return false;
        };
        in_flight == facts.reload
            && self
                .shared
                .supervisor
                .journal()
                .reload(&in_flight)
                .ok()
                .flatten()
                .is_some_and(|r| r.reload.state.bake_until_ms().is_some())
    }

    /// Performs the policy's [`Action::JournalCrash`]es: stops what is left of `serving`
    /// (the dead leader's group, processes tagged with its reload, or a live process that
    /// failed its liveness probe) and journals `Stopped`. Returns the other actions.
    async fn journal_crashes(
        &self,
        rt: &SlotRuntime,
        serving: Option<Arc<crate::supervisor::lease::Serving>>,
        actions: Vec<Action>,
    ) -> Vec<Action> {
        let sup = &self.shared.supervisor;
        let mut rest = Vec::new();
        for action in actions {
            let Action::JournalCrash { generation, reason } = action else {
                rest.push(action);
                continue;
            };
            if let Some(serving) = &serving {
                rt.active.store(None);
                if let Err(e) = rt.driver.stop(&serving.instance).await {
                    tracing::warn!(slot = %self.slot, error = %e, "stopping what is left of the active generation");
                }
            }
            if let Err(e) = off_worker(|| {
                sup.record(&Command::Stop {
                    slot: self.slot.clone(),
                    generation,
                    reason,
                })
            }) {
                tracing::error!(slot = %self.slot, error = %e, "journaling a crash");
            }
        }
        rest
    }

    /// The periodic probe found the active generation `sick` unhealthy: under the slot's
    /// lock, if it is still the same process and not a baking candidate, let the policy
    /// decide (stop and restart it, unless the restart policy is `never`). Returns false
    /// when the slot was busy (try again next tick).
    async fn unhealthy(
        &mut self,
        sick: &Sick,
        restart: Option<&RestartConfig>,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let sup = &self.shared.supervisor;
        let Ok(rt) = sup.runtime(self.slot) else {
            return true;
        };
        let Ok(busy) = Arc::clone(&rt.busy).try_lock_owned() else {
            return false;
        };
        let Ok(rt) = sup.runtime(self.slot) else {
            return true;
        };
        let view = match sup.journal().slot(self.slot) {
            Ok(view) => view,
            Err(e) => {
                tracing::error!(slot = %self.slot, error = %e, "keep-alive: reading the journal");
                return false;
            }
        };
        let Some(facts) = view
            .as_ref()
            .and_then(|v| v.slot.active.clone())
            .filter(|f| f.running && f.generation == sick.generation)
        else {
            return true;
        };
        let serving = rt
            .active
            .load_full()
            .filter(|s| s.instance.generation == sick.generation && s.instance.pid() == sick.pid);
        if serving.is_none() || self.baking(view.as_ref(), &facts) {
            return true; // another process by now, or the bake watch decides
        }
        let actions = self.handle(Event::Unhealthy {
            generation: sick.generation,
            pid: sick.pid,
            error: sick.error.clone(),
            restart,
            stop_epoch: sup.stop_epoch(self.slot),
        });
        let rest = self.journal_crashes(&rt, serving, actions).await;
        drop(busy);
        self.perform(rest, stop).await;
        true
    }

    /// A scheduled restart is due: relaunch the generation from the store under the slot's
    /// lock. Returns what the policy makes of the result.
    async fn restart(&mut self, pending: Pending, stop: &watch::Receiver<bool>) -> Vec<Action> {
        let sup = &self.shared.supervisor;
        let Ok(rt) = sup.runtime(self.slot) else {
            return Vec::new();
        };
        let Ok(_busy) = Arc::clone(&rt.busy).try_lock_owned() else {
            return self.handle(Event::RestartDeferred(pending)); // busy: next tick
        };
        let Ok(rt) = sup.runtime(self.slot) else {
            return Vec::new();
        };
        let still_down = match sup.journal().slot(self.slot) {
            Ok(view) => view
                .and_then(|v| v.slot.active)
                .is_some_and(|f| f.generation == pending.generation && !f.running),
            Err(e) => {
                tracing::error!(slot = %self.slot, error = %e, "keep-alive: reading the journal");
                return self.handle(Event::RestartDeferred(pending));
            }
        };
        if !still_down || sup.stop_epoch(self.slot) != pending.stop_epoch || *stop.borrow() {
            return Vec::new();
        }
        let restart = rt.config.as_ref().map(|c| c.restart.clone());
        let Some(result) = sup.restart_locked(&rt, pending.stop_epoch).await else {
            return Vec::new(); // a stop won
        };
        match result {
            Ok(_) => {
                let pid = rt.active.load_full().and_then(|s| s.instance.pid());
                self.handle(Event::Restarted { pending, pid })
            }
            Err(e) => match &restart {
                Some(restart) => self.handle(Event::RestartFailed {
                    pending,
                    error: e.to_string(),
                    restart,
                    stop_epoch: sup.stop_epoch(self.slot),
                }),
                None => Vec::new(),
            },
        }
    }
}

/// The periodic probe's verdict that the active generation is unhealthy (liveness).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sick {
    generation: Generation,
    pid: Option<u32>,
    error: String,
}

async fn keep_alive(
    shared: &Shared,
    slot: &SlotName,
    mut stop: watch::Receiver<bool>,
    crashed_before: Option<Generation>,
    sick: watch::Receiver<Option<Sick>>,
) {
    let mut handled: Option<Sick> = None;
    let mut ka = KeepAlive {
        shared,
        slot,
        policy: Policy::new(
            shared.options.stable_after,
            shared.options.failing_after,
            crashed_before,
        ),
    };
    loop {
        if stopped_during(&mut stop, shared.options.poll_interval).await {
            return;
        }
        let Ok(rt) = shared.supervisor.runtime(slot) else {
            shared.forget(slot);
            return;
        };
        let restart = rt.config.as_ref().map(|c| c.restart.clone());
        let policy = restart
            .as_ref()
            .map_or(RestartPolicy::Never, |r| r.policy)
            .name();
        shared.update(slot, |h| h.policy = policy);
        let unhealthy = sick
            .borrow()
            .clone()
            .filter(|s| handled.as_ref() != Some(s));
        if let Some(unhealthy) = unhealthy {
            drop(rt);
            if ka.unhealthy(&unhealthy, restart.as_ref(), &stop).await {
                handled = Some(unhealthy);
            }
            continue;
        }
        let facts = match shared.supervisor.journal().slot(slot) {
            Ok(view) => view.and_then(|v| v.slot.active),
            Err(e) => {
                tracing::error!(slot = %slot, error = %e, "keep-alive: reading the journal");
                continue;
            }
        };
        let actions = match facts {
            None => ka.handle(Event::NoActive),
            Some(facts) if facts.running => match active_alive(&rt, &facts) {
                Liveness::Alive => ka.handle(Event::Running {
                    generation: facts.generation,
                    pid: facts.process.as_ref().map(|p| p.pid),
                }),
                Liveness::Dead => {
                    drop(rt);
                    ka.crashed(restart.as_ref(), &stop).await;
                    continue;
                }
                Liveness::Unknown => {
                    tracing::warn!(
                        slot = %slot,
                        generation = facts.generation.0,
                        "cannot tell whether the active generation runs (/proc unreadable); \
                         not acting on it"
                    );
                    continue;
                }
            },
            Some(facts) => {
                drop(rt);
                ka.handle(Event::Down {
                    generation: facts.generation,
                    restart: restart.as_ref(),
                    stop_epoch: shared.supervisor.stop_epoch(slot),
                })
            }
        };
        ka.perform(actions, &stop).await;
    }
}

/// Periodic probe of the slot's active generation; reports threshold crossings, and tells
/// the keep-alive (`sick`) when the generation's process is unhealthy.
async fn watch_health(
    shared: &Shared,
    slot: &SlotName,
    mut stop: watch::Receiver<bool>,
    sick: watch::Sender<Option<Sick>>,
) {
    let mut health = Health::default();
    let mut probed_pid: Option<u32> = None;
    let report = |change: Option<HealthChange>, pid: Option<u32>| match change {
        None => {}
        Some(HealthChange::Reset) => {
            sick.send_replace(None);
            shared.update(slot, |h| h.healthy = None);
        }
        Some(HealthChange::Healthy(generation)) => {
            sick.send_replace(None);
            shared.update(slot, |h| h.healthy = Some(true));
            shared.emit(
                slot,
                MonitorEventKind::Healthy {
                    generation: generation.0,
                },
            );
        }
        Some(HealthChange::Unhealthy(generation, error)) => {
            sick.send_replace(Some(Sick {
                generation,
                pid,
                error: error.clone(),
            }));
            let last = error.clone();
            shared.update(slot, |h| {
                h.healthy = Some(false);
                h.last_error = Some(last);
            });
            shared.emit(
                slot,
                MonitorEventKind::Unhealthy {
                    generation: generation.0,
                    error,
                },
            );
        }
    };
    loop {
        let Ok(rt) = shared.supervisor.runtime(slot) else {
            return;
        };
        let Some(probe) = rt.config.as_ref().map(|c| c.probe.clone()) else {
            // Slots registered in code probe through their own driver: not watched here.
            if stopped_during(&mut stop, shared.options.min_probe_period).await {
                return;
            }
            continue;
        };
        drop(rt);
        let period = probe.period.max(shared.options.min_probe_period);
        if stopped_during(&mut stop, period).await {
            return;
        }
        let Ok(rt) = shared.supervisor.runtime(slot) else {
            return;
        };
        let serving = rt
            .active
            .load_full()
            .filter(|s| rt.driver.is_alive(&s.instance));
        drop(rt);
        let Some(serving) = serving else {
            report(health.gone(), None);
            continue;
        };
        let pid = serving.instance.pid();
        if pid != probed_pid {
            // A restarted process of the same generation starts without a verdict.
            report(health.gone(), pid);
            probed_pid = pid;
        }
        report(health.probing(serving.instance.generation), pid);
        let result = match &probe.kind {
            ProbeKind::None => Ok(()),
            kind => {
                let check = crate::probe::check_once(
                    kind,
                    serving.instance.endpoint.as_ref(),
                    probe.timeout,
                );
                tokio::select! {
                    r = check => r.map_err(|e| e.to_string()),
                    _ = stop.changed() => return,
                }
            }
        };
        drop(serving);
        report(
            health.probed(result, probe.success_threshold, probe.failure_threshold),
            pid,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_the_slot_time_and_an_inline_kind() {
        let event = MonitorEvent {
            slot: "demo".into(),
            at: Utc::now(),
            kind: MonitorEventKind::Restarted {
                generation: 2,
                pid: Some(42),
                attempt: 1,
            },
        };
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["slot"], "demo");
        assert_eq!(value["kind"], "restarted");
        assert_eq!(value["generation"], 2);
        assert_eq!(value["pid"], 42);
        assert_eq!(event.kind.name(), "restarted");
    }
}
