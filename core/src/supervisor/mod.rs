//! The supervisor: runs reloads through the state machine and the journal, holds the
//! arc-swapped active pointer of every slot, hands out leases, retires old generations.

pub mod adopt;
mod already_active;
pub mod bake;
pub mod config_reload;
pub mod damaged;
pub mod lease;
mod pipeline;
pub mod recovery;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use tracing::Instrument;
use tryswap_fsm::{
    ArtifactRef, Command, EventKind, Generation, Mode, Plan, Reason, Rejected, ReloadId, SlotName,
};
use tryswap_journal::{Journal, JournalError, JournalStore, Record};

use crate::config::{ProbeConfig, SlotConfig};
use crate::driver::engine::{EngineDriver, EngineFactory};
use crate::driver::process::ProcessDriver;
use crate::driver::{Driver, DriverError, Instance, LaunchRequest, Liveness};
use crate::report::{HistoryReport, PreviousInfo, ReloadReport, SlotStatus, StatusReport};
use crate::store::{Store, StoreError};
use crate::supervisor::lease::{Lease, Serving};
use crate::supervisor::pipeline::{Down, DownError};

/// Marks a point where crash tests can abort the process (`failpoints` feature).
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name)
    };
}
pub(crate) use failpoint;

/// What to stage as a candidate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CandidateSpec {
    /// The plugin executable (process slots).
    pub executable: Option<PathBuf>,
    /// A config file: `{config}` in the slot's args, or the engine config (in-process slots).
    pub config: Option<PathBuf>,
}

impl CandidateSpec {
    /// A plugin executable without a config file.
    pub fn executable(path: impl Into<PathBuf>) -> Self {
        CandidateSpec {
            executable: Some(path.into()),
            config: None,
        }
    }

    /// Adds a config file.
    pub fn with_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }
}

/// Errors a supervisor call returns. A candidate that fails is not an error: it is a
/// [`ReloadReport`] with outcome `rolled_back`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The slot already has a reload in progress.
    #[error("slot {slot}: a reload is already in progress{}", in_flight.map(|id| format!(" ({id})")).unwrap_or_default())]
    Conflict {
        /// The slot.
        slot: SlotName,
        /// The reload in progress, if known.
        in_flight: Option<ReloadId>,
    },
    /// A config reload waited for the operations running on the slot and gave up; it
    /// changed nothing.
    #[error(
        "slot {slot}: reloads, starts or stops kept the slot busy for {}; the config reload \
         changed nothing (try again)",
        humantime::format_duration(*waited)
    )]
    Busy {
        /// The slot.
        slot: SlotName,
        /// How long the config reload waited.
        waited: Duration,
    },
    /// The slot is neither configured nor registered.
    #[error("unknown slot {0}: it is not in the config")]
    UnknownSlot(SlotName),
    /// The slot has no active generation.
    #[error("slot {0} has no active generation")]
    NoActive(SlotName),
    /// The slot has no earlier generation to roll back to.
    #[error("slot {0} has no previous generation to roll back to")]
    NoPrevious(SlotName),
    /// `rollback --to` named a generation whose artifact the slot's history does not hold:
    /// it was never active, or a journal compaction trimmed it.
    #[error(
        "slot {slot} has no generation {generation} to roll back to: it was never active, or \
         a journal compaction trimmed it from the slot's history"
    )]
    UnknownGeneration {
        /// The slot.
        slot: SlotName,
        /// The generation asked for.
        generation: Generation,
    },
    /// The candidate does not fit the slot (refused before anything is staged).
    #[error("slot {slot}: {message}")]
    InvalidCandidate {
        /// The slot.
        slot: SlotName,
        /// What is wrong.
        message: String,
    },
    /// The state machine refused a command.
    #[error("slot {slot}: {rejected}")]
    Rejected {
        /// The slot.
        slot: SlotName,
        /// Why.
        rejected: Rejected,
    },
    /// The journal is older than the processes of its state directory (restored from a
    /// backup?): they run reloads it does not know. Nothing was started or stopped.
    #[error(
        "the journal does not know processes running from this state directory: {}. It is \
         older than they are (restored from a backup?); starting the slots would run a second \
         copy beside them",
        unknown.iter().map(|(reload, pid)| format!("pid {pid} (reload {reload})")).collect::<Vec<_>>().join(", ")
    )]
    UnknownProcesses {
        /// Each process's reload tag and pid.
        unknown: Vec<(ReloadId, u32)>,
    },
    /// `recover --adopt` found the evidence ambiguous or incomplete for some slot: nothing
    /// was adopted, written or stopped.
    #[error("nothing adopted: {}", refusals.join("; "))]
    AdoptionRefused {
        /// Per slot (or group of unattributed pids), why not.
        refusals: Vec<String>,
    },
    /// `confirm` or `revert` of a slot with no bake in progress.
    #[error("slot {0} has no bake in progress")]
    NoBake(SlotName),
    /// The journal failed; the reload was stopped and the slot left as it was.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The journal failed after the reload's commit record (`Activated`) was written: the
    /// swap is committed or not depending on what reached the disk. Nothing was stopped;
    /// the next open of the journal (a restart) verifies it and recovery settles the slot.
    #[error(
        "slot {slot}: reload {reload}: outcome unknown, not rolled back: the commit record \
         was written but {error}. Generation {generation} (pid {pid}) and the former active \
         generation both keep running until recovery decides from the journal on disk"
    )]
    CommitUnknown {
        /// The slot.
        slot: SlotName,
        /// The reload.
        reload: ReloadId,
        /// The candidate's generation.
        generation: Generation,
        /// The candidate's pid (`none` for in-process generations).
        pid: String,
        /// The journal's failure.
        error: Box<JournalError>,
    },
    /// The artifact store failed outside a reload.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Starting or stopping an active generation failed.
    #[error("slot {slot}: {error}")]
    Driver {
        /// The slot.
        slot: SlotName,
        /// What failed.
        error: DriverError,
    },
}

/// A slot's runtime with its lock held.
pub(crate) type LockedSlot = (Arc<SlotRuntime>, tokio::sync::OwnedMutexGuard<()>);

pub(crate) struct SlotRuntime {
    pub(crate) name: SlotName,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) drain_timeout: Duration,
    pub(crate) needs_executable: bool,
    pub(crate) active: ArcSwapOption<Serving>,
    /// Serializes reloads of the slot; shared with the runtime that replaces this one when
    /// a config reload changes the slot.
    pub(crate) busy: Arc<tokio::sync::Mutex<()>>,
    /// The slot's config, for process slots built from a config file.
    pub(crate) config: Option<SlotConfig>,
}

struct Inner {
    journal: Arc<dyn JournalStore>,
    store: Store,
    state_dir: PathBuf,
    /// Stops the processes of slots the journal knows but no config names.
    orphans: Arc<dyn Driver>,
    slots: RwLock<BTreeMap<SlotName, Arc<SlotRuntime>>>,
    records: broadcast::Sender<Record>,
    /// How often `stop` was called per slot: lets the keep-alive monitor drop a restart it
    /// had scheduled before an operator stopped the slot.
    stops: std::sync::Mutex<BTreeMap<SlotName, u64>>,
    /// Slots whose recovery failed, with why: reported, left alone by the other slots.
    failed: std::sync::Mutex<BTreeMap<SlotName, String>>,
    /// Bumped whenever any slot's stop count moves: a keep-alive restart in progress
    /// watches it and gives way to `stop`.
    stops_changed: tokio::sync::watch::Sender<u64>,
    /// The bakes this process watches, reachable by `confirm` / `revert`.
    bakes: bake::BakeWatchers,
    /// Slots whose lock a keep-alive restart holds (a `stop` waits for those instead of
    /// failing with a conflict).
    restarting: std::sync::Mutex<std::collections::BTreeSet<SlotName>>,
    /// Slots a `stop` is stopping right now: the keep-alive, which journals crashes even
    /// while a slot is locked, never calls that process's end a crash.
    stopping: std::sync::Mutex<std::collections::BTreeSet<SlotName>>,
    /// Whether a committed reload has the slot's next launch prepared ahead
    /// ([`Supervisor::prepare_launches_ahead`]).
    prepare_ahead: std::sync::atomic::AtomicBool,
}

/// A slot's name in one of the supervisor's marker sets, removed when dropped.
struct Marked<'a>(
    &'a std::sync::Mutex<std::collections::BTreeSet<SlotName>>,
    SlotName,
);

impl<'a> Marked<'a> {
    fn new(
        set: &'a std::sync::Mutex<std::collections::BTreeSet<SlotName>>,
        slot: &SlotName,
    ) -> Self {
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot.clone());
        Marked(set, slot.clone())
    }
}

impl Drop for Marked<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Runs safe reloads for a set of slots over one journal.
///
/// Cloning is cheap and shares everything. Reloads of one slot are serialized (a second one
/// is a [`SupervisorError::Conflict`]); reloads of different slots run concurrently.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// What a relaunch of the active generation `facts` brings back.
pub(crate) fn relaunch_of(slot: &SlotName, facts: &tryswap_fsm::Instance) -> tryswap_fsm::Relaunch {
    tryswap_fsm::Relaunch {
        slot: slot.clone(),
        generation: facts.generation,
        reload: facts.reload,
        artifact: facts.artifact.clone(),
        running: facts.running,
    }
}

/// The journal facts of an active or retiring generation, as an instance without a handle.
pub(crate) fn facts_instance(slot: &SlotName, facts: &tryswap_fsm::Instance) -> Instance {
    Instance {
        slot: slot.clone(),
        generation: facts.generation,
        reload: facts.reload,
        artifact: facts.artifact.clone(),
        process: facts.process.clone(),
        log_path: facts.log_path.as_ref().map(PathBuf::from),
        endpoint: facts.endpoint.clone(),
        handle: None,
    }
}

/// `state_dir` made absolute: plugins run with the state dir as their working directory
/// and get store paths as arguments.
fn absolute(state_dir: &Path) -> Result<PathBuf, SupervisorError> {
    std::path::absolute(state_dir).map_err(|e| {
        SupervisorError::Journal(JournalError::Missing(format!(
            "state directory {}: {e}",
            state_dir.display()
        )))
    })
}

/// Makes the state directory exist with mode 0700 whatever the umask.
fn private_state_dir(state_dir: &Path) -> Result<(), SupervisorError> {
    crate::file_modes::private_state_dir(state_dir).map_err(|e| {
        SupervisorError::Journal(JournalError::Missing(format!(
            "state directory {}: {e}",
            state_dir.display()
        )))
    })
}

impl Supervisor {
    /// For a long-lived host (the daemon): from now on, once a reload has committed, the
    /// slot's next generation's files (for processes: its `TMPDIR`, log files and cgroup)
    /// are made in the background ([`Driver::prepare_ahead`]), so the next reload's launch
    /// does not wait for their creation. [`Supervisor::discard_launches_ahead`] removes
    /// them when the host stops; a process that runs one command leaves this off.
    pub fn prepare_launches_ahead(&self) {
        self.inner
            .prepare_ahead
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Supervisor::prepare_launches_ahead`] was called.
    fn prepares_ahead(&self) -> bool {
        self.inner
            .prepare_ahead
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// With [`Supervisor::prepare_launches_ahead`]: removes the files made ahead for each
    /// slot's next generation that nothing used ([`Driver::discard_ahead`]), for a host
    /// that stops. Slots with a reload in flight are left alone. Call it once this process
    /// starts no more reloads.
    pub fn discard_launches_ahead(&self) {
        if !self.prepares_ahead() {
            return;
        }
        crate::blocking::off_worker(|| {
            for rt in self.runtimes() {
                if let Ok(Some(view)) = self.inner.journal.slot(&rt.name) {
                    if view.slot.in_flight.is_none() {
                        rt.driver.discard_ahead(&rt.name, view.slot.next_generation);
                    }
                }
            }
        });
    }

    /// Opens (or creates) the state directory: its journal and store. Fails at once if
    /// another process holds the journal. Register slots next, then call [`Supervisor::attach`].
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Self, SupervisorError> {
        Self::open_journal(state_dir.as_ref(), |dir| {
            Ok(Arc::new(Journal::open(dir)?) as Arc<dyn JournalStore>)
        })
    }

    /// [`Supervisor::open`] for a process that runs one command and exits: the journal is
    /// opened with [`tryswap_journal::open_for_command`], which serves it from its log
    /// alone (sled, the index, stays closed and is caught up by the next long-lived open)
    /// as long as sled lags the log by a bounded number of records. The durable points
    /// are the same; end with [`Supervisor::close_for_exit`].
    pub fn open_for_command(state_dir: impl AsRef<Path>) -> Result<Self, SupervisorError> {
        Self::open_journal(state_dir.as_ref(), tryswap_journal::open_for_command)
    }

    fn open_journal(
        state_dir: &Path,
        open: impl FnOnce(&Path) -> Result<Arc<dyn JournalStore>, JournalError>,
    ) -> Result<Self, SupervisorError> {
        let state_dir = absolute(state_dir)?;
        private_state_dir(&state_dir)?;
        let journal = open(&state_dir.join("journal"))?;
        for private in ["journal", "store"] {
            if let Err(e) = crate::file_modes::private_tree(&state_dir.join(private)) {
                tracing::warn!(error = %e, "taking group and other bits off {private}/");
            }
        }
        Self::with_journal(state_dir, journal)
    }

    /// Like [`Supervisor::open`], but keeps the journal in `journal` instead of the sled
    /// journal in `<state_dir>/journal` (the artifact store, logs and plugins' working
    /// directory stay in `state_dir`). With a [`tryswap_journal::MemoryJournal`] nothing of
    /// the journal survives the process, so recovery after a crash has nothing to read: for
    /// tests and embedders that need no crash safety.
    pub fn open_with(
        state_dir: impl AsRef<Path>,
        journal: Arc<dyn JournalStore>,
    ) -> Result<Self, SupervisorError> {
        let state_dir = absolute(state_dir.as_ref())?;
        private_state_dir(&state_dir)?;
        Self::with_journal(state_dir, journal)
    }

    /// A supervisor over `journal` (typically [`tryswap_journal::open_for_reading`]) for
    /// read commands: it creates, cleans, recovers and relaunches nothing, so reading
    /// never changes the evidence. Its `status` and `history` answer as usual; writes fail
    /// when the journal is read-only.
    pub fn for_reading(
        state_dir: impl AsRef<Path>,
        journal: Arc<dyn JournalStore>,
    ) -> Result<Self, SupervisorError> {
        let state_dir = absolute(state_dir.as_ref())?;
        let store = Store::existing(&state_dir);
        Ok(Self::assemble(state_dir, journal, store))
    }

    fn with_journal(
        state_dir: PathBuf,
        journal: Arc<dyn JournalStore>,
    ) -> Result<Self, SupervisorError> {
        let store = Store::open(&state_dir)?;
        // The journal's lock is ours: no other process is staging into the store.
        match store.clean_staging() {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed copies left by interrupted stagings"),
            Err(e) => tracing::warn!(error = %e, "removing copies left by interrupted stagings"),
        }
        // Nor is any generation being launched: cgroups of generations killed outside
        // tryswap can go.
        let swept = crate::driver::process::cgroup::sweep_empty(&state_dir);
        if swept > 0 {
            tracing::info!(
                swept,
                "removed the empty cgroups of generations that are gone"
            );
        }
        Ok(Self::assemble(state_dir, journal, store))
    }

    fn assemble(state_dir: PathBuf, journal: Arc<dyn JournalStore>, store: Store) -> Self {
        let (records, _) = broadcast::channel(1024);
        Supervisor {
            inner: Arc::new(Inner {
                journal,
                store,
                orphans: Arc::new(ProcessDriver::for_orphans(state_dir.clone())),
                state_dir,
                slots: RwLock::new(BTreeMap::new()),
                records,
                stops: std::sync::Mutex::new(BTreeMap::new()),
                failed: std::sync::Mutex::new(BTreeMap::new()),
                stops_changed: tokio::sync::watch::channel(0).0,
                restarting: std::sync::Mutex::new(std::collections::BTreeSet::new()),
                stopping: std::sync::Mutex::new(std::collections::BTreeSet::new()),
                prepare_ahead: std::sync::atomic::AtomicBool::new(false),
                bakes: bake::BakeWatchers::default(),
            }),
        }
    }

    /// How many times [`Supervisor::stop`] was called for `slot` by this process.
    pub(crate) fn stop_epoch(&self, slot: &SlotName) -> u64 {
        let stops = self.inner.stops.lock().unwrap_or_else(|e| e.into_inner());
        stops.get(slot).copied().unwrap_or(0)
    }

    /// The slots whose recovery failed in this process, with why (see
    /// [`Supervisor::recover`]). A slot leaves the list on its next successful `start` or
    /// reload.
    pub fn failed_slots(&self) -> BTreeMap<SlotName, String> {
        self.inner
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks `slot` failed (`Some(why)`) or clears the mark (`None`).
    pub(crate) fn set_failed(&self, slot: &SlotName, why: Option<String>) {
        let mut failed = self.inner.failed.lock().unwrap_or_else(|e| e.into_inner());
        match why {
            Some(why) => {
                failed.insert(slot.clone(), why);
            }
            None => {
                failed.remove(slot);
            }
        }
    }

    fn count_stop(&self, slot: &SlotName) {
        {
            let mut stops = self.inner.stops.lock().unwrap_or_else(|e| e.into_inner());
            *stops.entry(slot.clone()).or_insert(0) += 1;
        }
        self.inner
            .stops_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether a `stop` of `slot` is under way.
    pub(crate) fn is_stopping(&self, slot: &SlotName) -> bool {
        let stopping = self
            .inner
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        stopping.contains(slot)
    }

    fn is_restarting(&self, slot: &SlotName) -> bool {
        let restarting = self
            .inner
            .restarting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        restarting.contains(slot)
    }

    /// A keep-alive restart of the slot (its lock held): [`Supervisor::start_locked`] with
    /// the restart's intent journaled before the launch ([`Plan::Restart`]), abandoned as soon as `stop` is called for the slot (`None`). Stop always wins.
    pub(crate) async fn restart_locked(
        &self,
        rt: &SlotRuntime,
        stop_epoch: u64,
    ) -> Option<Result<Generation, SupervisorError>> {
        let mut stops = self.inner.stops_changed.subscribe();
        let _restarting = Marked::new(&self.inner.restarting, &rt.name);
        if self.stop_epoch(&rt.name) != stop_epoch {
            return None;
        }
        let start = self.start_as(rt, true);
        tokio::pin!(start);
        loop {
            tokio::select! {
                result = &mut start => return Some(result),
                changed = stops.changed() => {
                    if changed.is_err() || self.stop_epoch(&rt.name) != stop_epoch {
                        tracing::info!(slot = %rt.name, "a stop cancelled the keep-alive restart");
                        return None;
                    }
                }
            }
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The journal (read it for audits; write to it only through the supervisor).
    pub fn journal(&self) -> &dyn JournalStore {
        &*self.inner.journal
    }

    /// For a process that exits next (a one-shot command): makes every committed record
    /// durable, as dropping the journal would (log and witness synced, projection snapshot
    /// written), then keeps the journal open until the process ends instead of closing it.
    ///
    /// What the close would add is sled's (an index derived from the log): a final write
    /// of its buffers, an `fsync` of its file and the join of its flusher thread. The
    /// next open catches sled up from the log whatever of it did not reach the disk, as
    /// after a process killed right after its last durable point. This process must not
    /// open the state directory again: the journal's lock stays held until it exits.
    pub fn close_for_exit(&self) -> Result<(), SupervisorError> {
        let flushed = self.inner.journal.flush_for_exit();
        std::mem::forget(Arc::clone(&self.inner.journal));
        Ok(flushed?)
    }

    /// The artifact store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Every journal record appended from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.inner.records.subscribe()
    }

    pub(crate) fn register(&self, runtime: SlotRuntime) {
        let mut slots = self.inner.slots.write().unwrap_or_else(|e| e.into_inner());
        slots.insert(runtime.name.clone(), Arc::new(runtime));
    }

    /// Registers a slot whose generations are plugin processes.
    pub fn add_process_slot(&self, config: SlotConfig) {
        let name = config.name.clone();
        let drain_timeout = config.drain_timeout;
        let driver = ProcessDriver::new(config.clone(), self.inner.state_dir.clone());
        self.register(SlotRuntime {
            name,
            driver: Arc::new(driver),
            drain_timeout,
            needs_executable: true,
            active: ArcSwapOption::empty(),
            busy: Arc::new(tokio::sync::Mutex::new(())),
            config: Some(config),
        });
    }

    /// Registers a slot whose generations are in-process engines built by `factory` from a
    /// staged config file.
    pub fn add_engine_slot<F: EngineFactory>(
        &self,
        name: SlotName,
        probe: ProbeConfig,
        drain_timeout: Duration,
        factory: F,
    ) {
        let driver = EngineDriver::new(factory, probe);
        self.add_slot(name, Arc::new(driver), drain_timeout, false);
    }

    /// Registers a slot with any driver. `needs_executable`: candidates must name an
    /// executable (else a config file is the artifact).
    pub fn add_slot(
        &self,
        name: SlotName,
        driver: Arc<dyn Driver>,
        drain_timeout: Duration,
        needs_executable: bool,
    ) {
        self.register(SlotRuntime {
            name,
            driver,
            drain_timeout,
            needs_executable,
            active: ArcSwapOption::empty(),
            busy: Arc::new(tokio::sync::Mutex::new(())),
            config: None,
        });
    }

    pub(crate) fn runtime(&self, slot: &SlotName) -> Result<Arc<SlotRuntime>, SupervisorError> {
        let slots = self.inner.slots.read().unwrap_or_else(|e| e.into_inner());
        slots
            .get(slot)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownSlot(slot.clone()))
    }

    /// Takes the slot's lock without waiting (`None`: it is held) and returns the runtime
    /// registered *now*: a config reload may have replaced the runtime between the lookup
    /// and the lock (it hands its lock on to the new runtime).
    pub(crate) fn lock_slot(&self, slot: &SlotName) -> Result<Option<LockedSlot>, SupervisorError> {
        let looked_up = self.runtime(slot)?;
        failpoint!("slot-before-lock");
        let Ok(guard) = Arc::clone(&looked_up.busy).try_lock_owned() else {
            return Ok(None);
        };
        let rt = self.runtime(slot)?;
        if !Arc::ptr_eq(&rt.busy, &looked_up.busy) {
            // The slot was removed and added again meanwhile: its new lock is not ours.
            return Ok(None);
        }
        Ok(Some((rt, guard)))
    }

    /// The config of a process slot registered from a config file.
    pub(crate) fn slot_config(&self, slot: &SlotName) -> Option<SlotConfig> {
        self.runtime(slot).ok().and_then(|rt| rt.config.clone())
    }

    pub(crate) fn runtimes(&self) -> Vec<Arc<SlotRuntime>> {
        let slots = self.inner.slots.read().unwrap_or_else(|e| e.into_inner());
        slots.values().cloned().collect()
    }

    /// Appends several commands in one journal transaction: all or nothing.
    pub(crate) fn record_all(&self, commands: &[Command]) -> Result<Vec<Record>, JournalError> {
        for command in commands {
            self.write_failpoint(command)?;
        }
        let records =
            crate::origin::write(|| self.inner.journal.execute_all(commands, Utc::now()))?;
        self.follow_records(&records);
        for record in &records {
            let _ = self.inner.records.send(record.clone());
        }
        Ok(records)
    }

    pub(crate) fn unregister(&self, slot: &SlotName) {
        let mut slots = self.inner.slots.write().unwrap_or_else(|e| e.into_inner());
        slots.remove(slot);
    }

    /// Crash tests: `journal-write-<command>=return` fails the write of `command` with ENOSPC.
    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
    fn write_failpoint(&self, command: &Command) -> Result<(), JournalError> {
        fail::fail_point!(&format!("journal-write-{}", command.name()), |_| {
            Err(JournalError::Io {
                op: "writing (failure injected by TRYSWAP_FAILPOINTS)",
                path: self.inner.journal.dir().to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            })
        });
        Ok(())
    }

    pub(crate) fn record(&self, command: &Command) -> Result<Vec<Record>, JournalError> {
        self.write_failpoint(command)?;
        let records = crate::origin::write(|| self.inner.journal.execute(command, Utc::now()))?;
        // Crash tests: `journal-sync-<command>=return` fails the sync after the write.
        fail::fail_point!(&format!("journal-sync-{}", command.name()), |_| {
            Err(self
                .inner
                .journal
                .fail("syncing (EIO injected by TRYSWAP_FAILPOINTS)"))
        });
        // The endpoint link follows the marker just journaled, before anyone hears of it.
        self.follow_records(&records);
        for record in &records {
            // Nobody listening is fine.
            let _ = self.inner.records.send(record.clone());
        }
        Ok(records)
    }

    /// Takes over the active generations the journal names that still run with their
    /// journaled identity (a previous tryswap process started them). Call after registering
    /// slots. Returns the slots whose active generation is recorded running but is not.
    pub fn attach(&self) -> Result<Vec<SlotName>, SupervisorError> {
        let mut dead = Vec::new();
        for rt in self.runtimes() {
            if rt.active.load().is_some() {
                continue;
            }
            let Some(view) = self.inner.journal.slot(&rt.name)? else {
                continue;
            };
            let Some(facts) = view.slot.active.as_ref().filter(|a| a.running) else {
                continue;
            };
            match rt.driver.reattach(&facts_instance(&rt.name, facts)) {
                Some(instance) => rt.active.store(Some(Serving::new(instance))),
                None => dead.push(rt.name.clone()),
            }
        }
        Ok(dead)
    }

    /// Leases the slot's active generation for one piece of work.
    pub fn lease(&self, slot: &SlotName) -> Result<Lease, SupervisorError> {
        let rt = self.runtime(slot)?;
        // A lease can race a swap: retry on the new pointer if the old one began draining.
        for _ in 0..64 {
            let Some(serving) = rt.active.load_full() else {
                return Err(SupervisorError::NoActive(slot.clone()));
            };
            if let Some(lease) = serving.try_lease() {
                return Ok(lease);
            }
            std::thread::yield_now();
        }
        Err(SupervisorError::NoActive(slot.clone()))
    }

    /// Full safe reload: stage, launch, validate, probe, commit, drain and stop the old one.
    pub async fn activate(
        &self,
        slot: &SlotName,
        candidate: CandidateSpec,
    ) -> Result<ReloadReport, SupervisorError> {
        self.reload(slot, Mode::Activate, Some(candidate)).await
    }

    /// Dry run: stage, launch, validate, probe, then discard the candidate. Nothing changes.
    pub async fn try_activate(
        &self,
        slot: &SlotName,
        candidate: CandidateSpec,
    ) -> Result<ReloadReport, SupervisorError> {
        self.reload(slot, Mode::DryRun, Some(candidate)).await
    }

    /// Safe reload of an earlier generation's stored artifact (default: the generation that
    /// was active before the current one).
    pub async fn rollback(
        &self,
        slot: &SlotName,
        to: Option<Generation>,
    ) -> Result<ReloadReport, SupervisorError> {
        self.rollback_with_bake(slot, to, None).await
    }

    /// [`Supervisor::rollback`] with a bake window (see [`Supervisor::reload_with_bake`]).
    pub async fn rollback_with_bake(
        &self,
        slot: &SlotName,
        to: Option<Generation>,
        bake: Option<Duration>,
    ) -> Result<ReloadReport, SupervisorError> {
        let to = match to {
            Some(g) => g,
            None => {
                let view = self
                    .inner
                    .journal
                    .slot(slot)?
                    .ok_or_else(|| SupervisorError::NoPrevious(slot.clone()))?;
                let active = view
                    .slot
                    .active
                    .as_ref()
                    .ok_or_else(|| SupervisorError::NoActive(slot.clone()))?;
                let reload = self
                    .inner
                    .journal
                    .reload(&active.reload)?
                    .ok_or_else(|| SupervisorError::NoPrevious(slot.clone()))?;
                match reload.reload.previous {
                    Some(previous) => previous,
                    None => self
                        .inner
                        .journal
                        .history(slot)?
                        .keys()
                        .rev()
                        .find(|g| **g < active.generation)
                        .copied()
                        .ok_or_else(|| SupervisorError::NoPrevious(slot.clone()))?,
                }
            }
        };
        let known = self.inner.journal.history_entry(slot, to)?.is_some();
        if !known {
            return Err(SupervisorError::UnknownGeneration {
                slot: slot.clone(),
                generation: to,
            });
        }
        self.reload_with_bake(slot, Mode::Rollback { to }, None, bake)
            .await
    }

    /// Runs one reload of `slot` in `mode`. `candidate` is required except for rollbacks.
    /// The bake window is the slot's `bake`.
    pub async fn reload(
        &self,
        slot: &SlotName,
        mode: Mode,
        candidate: Option<CandidateSpec>,
    ) -> Result<ReloadReport, SupervisorError> {
        self.reload_with_bake(slot, mode, candidate, None).await
    }

    /// [`Supervisor::reload`] with a bake window: `Some` overrides the slot's `bake`
    /// (zero: none). A reload with a bake returns when the bake has ended.
    pub async fn reload_with_bake(
        &self,
        slot: &SlotName,
        mode: Mode,
        candidate: Option<CandidateSpec>,
        bake: Option<Duration>,
    ) -> Result<ReloadReport, SupervisorError> {
        let rt = self.runtime(slot)?;
        let bake = bake
            .or_else(|| rt.config.as_ref().map(|c| c.bake))
            .filter(|d| !d.is_zero() && mode != Mode::DryRun);
        if let (Some(config), Some(spec)) = (&rt.config, &candidate) {
            if spec.config.is_none() && config.args.iter().any(|a| a.contains("{config}")) {
                return Err(SupervisorError::InvalidCandidate {
                    slot: slot.clone(),
                    message: "the slot's args use {config}: give the candidate a config file \
                              (--config-file)"
                        .to_owned(),
                });
            }
        }
        let started = Utc::now();
        let Some((rt, _busy)) = self.lock_slot(slot)? else {
            let in_flight = self
                .inner
                .journal
                .slot(slot)
                .ok()
                .flatten()
                .and_then(|v| v.slot.in_flight);
            return Err(SupervisorError::Conflict {
                slot: slot.clone(),
                in_flight,
            });
        };
        let reload = ReloadId::now_v7();
        let span = tracing::info_span!(
            "reload",
            slot = %slot,
            reload_id = %reload,
            mode = mode.name(),
            generation = tracing::field::Empty
        );
        let report = self
            .run_reload(&rt, reload, mode, candidate, started, bake)
            .instrument(span)
            .await;
        if report
            .as_ref()
            .is_ok_and(|r| r.outcome == crate::report::Outcome::Active)
        {
            self.set_failed(slot, None);
        }
        report
    }

    fn report(
        &self,
        reload: ReloadId,
        started: DateTime<Utc>,
        previous: Option<PreviousInfo>,
    ) -> Result<ReloadReport, SupervisorError> {
        let view = self.inner.journal.reload(&reload)?.ok_or_else(|| {
            SupervisorError::Journal(JournalError::Missing(format!("reload {reload}")))
        })?;
        let mut report = ReloadReport::from_view(&view, Some(started), previous);
        report.endpoint = self.endpoint(&view.reload.slot);
        self.set_origin(&mut report, &view);
        Ok(report)
    }

    /// Fills in who started the reload of `view` and why, from its first record (if the
    /// journal still holds it).
    fn set_origin(&self, report: &mut ReloadReport, view: &tryswap_journal::ReloadView) {
        let first = self.inner.journal.events(view.created_seq()).next();
        if let Some(Ok(record)) = first.filter(|r| {
            r.as_ref()
                .is_ok_and(|r| r.reload == view.reload.id && r.seq == view.created_seq())
        }) {
            report.set_origin(&record);
        }
    }

    /// Copies the candidate into the store, or finds a rollback target there. What it
    /// writes joins `pending`: durable only once the reload makes it so, before its commit.
    fn stage_artifact(
        &self,
        slot: &SlotName,
        needs_executable: bool,
        mode: Mode,
        candidate: Option<&CandidateSpec>,
        pending: &mut crate::store::PendingDurable,
    ) -> Result<ArtifactRef, String> {
        let store = &self.inner.store;
        if let Mode::Rollback { to } = mode {
            let artifact = self
                .inner
                .journal
                .history_entry(slot, to)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("slot {} never had generation {to} active", slot))?;
            store
                .verify(&artifact.sha256)
                .map_err(|e| format!("generation {to}'s executable: {e}"))?;
            if let Some(config) = &artifact.config_sha256 {
                store
                    .verify(config)
                    .map_err(|e| format!("generation {to}'s config: {e}"))?;
            }
            return Ok(artifact);
        }
        let spec = candidate.ok_or_else(|| "no candidate given".to_owned())?;
        let config = match &spec.config {
            Some(path) => Some(
                store
                    .stage_config_deferred(path, pending)
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        if needs_executable {
            let exe = spec.executable.as_ref().ok_or_else(|| {
                format!("slot {} runs plugin processes: give an executable", slot)
            })?;
            let sha256 = store
                .stage_executable_deferred(exe, pending)
                .map_err(|e| e.to_string())?;
            Ok(ArtifactRef {
                sha256,
                config_sha256: config,
            })
        } else {
            let sha256 = config.ok_or_else(|| {
                format!("slot {} runs in-process engines: give a config file", slot)
            })?;
            Ok(ArtifactRef {
                sha256,
                config_sha256: Some(sha256),
            })
        }
    }

    pub(crate) fn launch_request(
        &self,
        rt: &SlotRuntime,
        reload: ReloadId,
        generation: Generation,
        artifact: &ArtifactRef,
    ) -> LaunchRequest {
        let store = &self.inner.store;
        LaunchRequest {
            slot: rt.name.clone(),
            reload,
            generation,
            artifact: artifact.clone(),
            executable: rt.needs_executable.then(|| store.path_of(&artifact.sha256)),
            config_file: artifact.config_sha256.map(|d| store.path_of(&d)),
        }
    }

    async fn run_reload(
        &self,
        rt: &SlotRuntime,
        reload: ReloadId,
        mode: Mode,
        candidate: Option<CandidateSpec>,
        started: DateTime<Utc>,
        bake: Option<Duration>,
    ) -> Result<ReloadReport, SupervisorError> {
        let slot = &rt.name;
        // One read of the slot's projection: what is active now (the report's "previous"),
        // a reload in flight, the next generation.
        let view = self.inner.journal.slot(slot)?;
        let previous = view
            .as_ref()
            .and_then(|v| v.slot.active.as_ref().map(PreviousInfo::from_facts));
        // Refuse early (no staging, nothing journaled) if the journal knows a reload in
        // flight, e.g. one a crashed process left behind.
        if let Some(in_flight) = view.as_ref().and_then(|v| v.slot.in_flight) {
            return Err(SupervisorError::Conflict {
                slot: slot.clone(),
                in_flight: Some(in_flight),
            });
        }
        // The generation the `Staged` record will give out: this reload holds the slot, so
        // no other reload of it can take that number first.
        let next = view.map(|v| v.slot.next_generation);

        // Staged: the artifact is in the store and the reload in the journal's log before any
        // spawn. Not synced: a process that dies after the spawn leaves the record (the
        // kernel has it) for recovery to stop the tagged candidate, and a power loss that
        // loses it ends the candidate too; the commit's flush makes it durable.
        // Copying, hashing and the record's write block: without stalling the async worker.
        // Meanwhile another thread makes the files the launch will need (nothing runs
        // before the launch, so the write-ahead rule holds).
        let span = tracing::Span::current();
        let prepare = || {
            if let Some(generation) = next {
                let _entered = span.enter();
                rt.driver.prepare(slot, generation);
            }
        };
        let staging: Result<_, String> = crate::blocking::off_worker(|| {
            crate::blocking::beside(
                || {
                    let mut pending = crate::store::PendingDurable::default();
                    let artifact = self.stage_artifact(
                        slot,
                        rt.needs_executable,
                        mode,
                        candidate.as_ref(),
                        &mut pending,
                    )?;
                    failpoint!("reload-before-staged");
                    let staged = self.record(&Command::Stage {
                        reload,
                        slot: slot.clone(),
                        mode,
                        artifact: artifact.clone(),
                    });
                    Ok((artifact, staged, pending))
                },
                prepare,
            )
        });
        let (artifact, staged, pending) = match staging {
            Ok(staged) => staged,
            Err(message) => {
                rt.driver.discard_prepared();
                tracing::warn!(%message, "staging failed");
                self.record(&Command::FailStaging {
                    reload,
                    slot: slot.clone(),
                    mode,
                    reason: Reason::error(message),
                })?;
                return self.report(reload, started, previous);
            }
        };
        let staged = staged.map_err(|e| {
            rt.driver.discard_prepared();
            match e {
                JournalError::Rejected(Rejected::Conflict { in_flight, .. }) => {
                    SupervisorError::Conflict {
                        slot: slot.clone(),
                        in_flight: Some(in_flight),
                    }
                }
                JournalError::Rejected(rejected) => SupervisorError::Rejected {
                    slot: slot.clone(),
                    rejected,
                },
                other => SupervisorError::Journal(other),
            }
        })?;
        let generation = staged
            .iter()
            .find_map(|r| match r.event {
                EventKind::Staged { generation, .. } => Some(generation),
                _ => None,
            })
            .unwrap_or_default();
        tracing::Span::current().record("generation", generation.0);
        tracing::info!("staged");
        failpoint!("reload-after-staged");
        // The copies the staging wrote become durable while the candidate starts; the
        // commit waits for them below.
        let durable = self.inner.store.make_durable_later(pending);

        // Launched, validated, probed: each journaled as it passes.
        let request = self.launch_request(rt, reload, generation, &artifact);
        let instance = match self
            .bring_up(rt.driver.as_ref(), &request, Plan::Reload { reload })
            .await
        {
            Ok(up) => up.instance,
            Err(Down {
                error: DownError::Journal(e),
                ..
            }) => return self.abandon(reload, e).await,
            Err(down) => {
                return self
                    .fail(reload, down.driver_error(), started, previous)
                    .await
            }
        };

        if mode == Mode::DryRun {
            if let Err(e) = rt.driver.stop(&instance).await {
                tracing::warn!(error = %e, "stopping the dry run's candidate");
            }
            failpoint!("dryrun-before-passed");
            self.record(&Command::PassDryRun { reload })?;
            tracing::info!("dry run passed");
            return self.report(reload, started, previous);
        }

        // The active generation must be relaunchable from the store after a power loss:
        // its files are durable before the commit (plain or baking) names it.
        if let Err(e) = crate::blocking::off_worker(|| durable.wait()) {
            if let Err(stop) = rt.driver.stop(&instance).await {
                tracing::error!(error = %stop, "stopping the candidate");
            }
            return self
                .fail(
                    reload,
                    DriverError::error(format!(
                        "store: the staged files could not be made durable: {e}"
                    )),
                    started,
                    previous,
                )
                .await;
        }

        if let Some(bake) = bake {
            return self
                .run_bake(rt, reload, instance, bake, started, previous)
                .await;
        }

        // Active: the commit point. Durable before the old generation is touched.
        failpoint!("reload-before-commit");
        if let Err(e) = self
            .record_off_thread(vec![Command::Commit { reload }])
            .await
        {
            if let JournalError::Failed { .. } = e {
                // Written, not known durable: never "rolled back", nothing stopped.
                tracing::error!(error = %e, "journal failed at the commit point; outcome unknown");
                return Err(SupervisorError::CommitUnknown {
                    slot: slot.clone(),
                    reload,
                    generation,
                    pid: instance
                        .pid()
                        .map_or_else(|| "none".to_owned(), |p| p.to_string()),
                    error: Box::new(e),
                });
            }
            if let Err(e) = rt.driver.stop(&instance).await {
                tracing::error!(error = %e, "stopping the candidate");
            }
            return self.abandon(reload, e).await;
        }
        failpoint!("reload-after-commit");
        let old = rt.active.swap(Some(Serving::new(instance)));
        tracing::info!("active");
        failpoint!("reload-after-swap");

        // The next reload's files are made while the old generation drains and stops
        // (mostly waiting).
        self.prepare_next_launch(rt);
        // Drain and stop every former generation still waiting to retire.
        let drain = self.retire_old_drained(rt, old).await;
        let mut report = self.report(reload, started, previous)?;
        report.retired = drain.iter().map(|d| d.generation).collect();
        report.drain = drain;
        Ok(report)
    }

    /// With [`Supervisor::prepare_launches_ahead`]: makes the slot's next generation's
    /// files on a blocking thread, not waited for. A reload that starts meanwhile makes the
    /// same files itself; making them twice is harmless.
    fn prepare_next_launch(&self, rt: &SlotRuntime) {
        if !self.prepares_ahead() {
            return;
        }
        let next = match self.inner.journal.slot(&rt.name) {
            Ok(Some(view)) => view.slot.next_generation,
            _ => return,
        };
        let driver = Arc::clone(&rt.driver);
        let slot = rt.name.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            driver.prepare_ahead(&slot, next);
        });
    }

    /// Drains and stops former generations of the slot, journaling `Retired` for each.
    pub(crate) async fn retire_old(&self, rt: &SlotRuntime, old: Option<Arc<Serving>>) -> Vec<u64> {
        self.retire_old_drained(rt, old)
            .await
            .iter()
            .map(|d| d.generation)
            .collect()
    }

    /// [`Supervisor::retire_old`], saying how each retired generation ended: its leases
    /// and its outside callers' connections are waited for (up to `drain_timeout`), then
    /// it is stopped gracefully (go-plugin's controller or SIGTERM, SIGKILL last).
    pub(crate) async fn retire_old_drained(
        &self,
        rt: &SlotRuntime,
        old: Option<Arc<Serving>>,
    ) -> Vec<crate::report::DrainReport> {
        let mut retired = Vec::new();
        let retiring = match self.inner.journal.slot(&rt.name) {
            Ok(Some(view)) => {
                // The standby of a bake in progress is not retired before the bake ends.
                let standby = view
                    .slot
                    .in_flight
                    .and_then(|id| self.inner.journal.reload(&id).ok().flatten())
                    .filter(|r| r.reload.state.bake_until_ms().is_some())
                    .and_then(|r| r.reload.previous);
                let mut retiring = view.slot.retiring;
                retiring.retain(|f| Some(f.generation) != standby);
                retiring
            }
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::error!(error = %e, "reading the slot to retire old generations");
                return retired;
            }
        };
        for facts in retiring {
            let serving = old
                .as_ref()
                .filter(|s| s.instance.generation == facts.generation)
                .cloned();
            let began = tokio::time::Instant::now();
            let (instance, leases_left) = match &serving {
                Some(s) => {
                    let held = s.drain(rt.drain_timeout).await;
                    if held > 0 {
                        tracing::warn!(
                            generation = facts.generation.0,
                            held,
                            "drain timeout passed with leases still held; stopping anyway"
                        );
                    }
                    (s.instance.clone(), held)
                }
                None => (facts_instance(&rt.name, &facts), 0),
            };
            let connections_left =
                crate::endpoint::drain::wait_unconnected(rt, &instance, began + rt.drain_timeout)
                    .await;
            failpoint!("retire-before-stop");
            let ended = match rt.driver.stop(&instance).await {
                Ok(outcome) => {
                    tracing::info!(
                        generation = facts.generation.0,
                        ?outcome,
                        leases_left,
                        connections_left,
                        "old generation stopped"
                    );
                    crate::endpoint::drain::ended(outcome, leases_left + connections_left)
                }
                Err(e) => {
                    tracing::error!(generation = facts.generation.0, error = %e, "stopping the old generation failed; it stays queued for retirement");
                    continue;
                }
            };
            failpoint!("retire-after-stop");
            match self.record(&Command::Retire {
                slot: rt.name.clone(),
                generation: facts.generation,
            }) {
                Ok(_) => retired.push(crate::report::DrainReport {
                    generation: facts.generation.0,
                    ended,
                    waited_ms: began.elapsed().as_secs_f64() * 1000.0,
                    connections_left,
                    leases_left,
                }),
                Err(e) => tracing::error!(error = %e, "journaling Retired"),
            }
            failpoint!("retire-after-retired");
        }
        retired
    }

    /// A stage failed and the pipeline stopped the candidate: journal the rollback, report
    /// it.
    async fn fail(
        &self,
        reload: ReloadId,
        error: DriverError,
        started: DateTime<Utc>,
        previous: Option<PreviousInfo>,
    ) -> Result<ReloadReport, SupervisorError> {
        tracing::warn!(error = %error, "candidate rejected");
        failpoint!("rollback-before-rolledback");
        self.record_off_thread(vec![Command::Fail {
            reload,
            reason: error.reason(),
        }])
        .await?;
        failpoint!("rollback-after-rolledback");
        self.report(reload, started, previous)
    }

    /// The journal failed mid-reload and the candidate is stopped: try to record the
    /// rollback, and return the journal error. The slot's active generation is untouched.
    async fn abandon(
        &self,
        reload: ReloadId,
        error: JournalError,
    ) -> Result<ReloadReport, SupervisorError> {
        tracing::error!(error = %error, "journal write failed; the candidate is stopped");
        if let Err(e) = self
            .record_off_thread(vec![Command::Fail {
                reload,
                reason: Reason::error(format!("journal write failed: {error}")),
            }])
            .await
        {
            tracing::error!(error = %e, "journaling the rollback failed too; recovery will finish it");
        }
        Err(SupervisorError::Journal(error))
    }

    /// The driver that knows the slot's processes: its own, or (a slot no longer
    /// configured) the orphan driver.
    pub(crate) fn driver_of(&self, slot: &SlotName) -> Arc<dyn Driver> {
        match self.runtime(slot) {
            Ok(rt) => Arc::clone(&rt.driver),
            Err(_) => Arc::clone(&self.inner.orphans),
        }
    }

    /// The processes of this state directory whose reload the journal does not know (a
    /// journal older than they are), with their reload tags.
    pub fn unknown_processes(&self) -> Result<Vec<(ReloadId, u32)>, SupervisorError> {
        let tagged = self.inner.orphans.tagged_processes();
        let unknown = self.unknown_among(tagged.iter().map(|(reload, _)| *reload))?;
        Ok(tagged
            .into_iter()
            .filter(|(reload, _)| unknown.contains(reload))
            .collect())
    }

    /// Which of `reloads` the journal does not know: neither a reload it holds nor the
    /// reload of an active or retiring generation.
    pub(crate) fn unknown_among(
        &self,
        reloads: impl IntoIterator<Item = ReloadId>,
    ) -> Result<std::collections::HashSet<ReloadId>, SupervisorError> {
        let mut reloads: std::collections::HashSet<ReloadId> = reloads.into_iter().collect();
        if reloads.is_empty() {
            return Ok(reloads);
        }
        for view in self.inner.journal.slots()? {
            let instances = view.slot.active.iter().chain(view.slot.retiring.iter());
            for instance in instances {
                reloads.remove(&instance.reload);
            }
        }
        let mut unknown = std::collections::HashSet::new();
        for reload in reloads {
            if self.inner.journal.reload(&reload)?.is_none() {
                unknown.insert(reload);
            }
        }
        Ok(unknown)
    }

    /// Stops every process [`Supervisor::unknown_processes`] finds (each by its reload tag);
    /// returns their pids.
    pub async fn stop_unknown(&self) -> Result<Vec<u32>, SupervisorError> {
        let mut reloads: Vec<ReloadId> = self
            .unknown_processes()?
            .into_iter()
            .map(|(reload, _)| reload)
            .collect();
        reloads.sort_unstable();
        reloads.dedup();
        let mut stopped = Vec::new();
        for reload in reloads {
            stopped.extend(self.inner.orphans.stop_leftovers(&reload).await);
        }
        Ok(stopped)
    }

    /// Whether the slot's active generation runs; [`Liveness::Unknown`] when its driver
    /// cannot look (never reported as exited).
    fn active_alive(&self, slot: &SlotName, facts: &tryswap_fsm::Instance) -> Liveness {
        if let Ok(rt) = self.runtime(slot) {
            if let Some(serving) = rt.active.load_full() {
                if serving.instance.generation == facts.generation {
                    return rt.driver.liveness(&serving.instance);
                }
            }
            if !rt.needs_executable {
                return Liveness::Dead;
            }
        }
        if !facts.running {
            return Liveness::Dead;
        }
        self.driver_of(slot).liveness(&facts_instance(slot, facts))
    }

    /// Removes from the store every artifact no kept generation references: a slot's
    /// active and retiring generations and every generation in its history (what
    /// `rollback --to` can bring back). Waits for reloads under way and holds every slot's
    /// reload lock meanwhile, so nothing is staged while it runs.
    pub async fn store_gc(&self) -> Result<crate::store::GcReport, SupervisorError> {
        let runtimes = self.runtimes();
        let mut guards = Vec::with_capacity(runtimes.len());
        for rt in &runtimes {
            guards.push(Arc::clone(&rt.busy).lock_owned().await);
        }
        let mut keep = std::collections::HashSet::new();
        for view in self.inner.journal.slots()? {
            let slot = &view.slot;
            let history = self.inner.journal.history(&slot.name)?;
            let instances = slot.active.iter().chain(slot.retiring.iter());
            let artifacts = instances.map(|i| &i.artifact).chain(history.values());
            for artifact in artifacts {
                keep.insert(artifact.sha256);
                keep.extend(artifact.config_sha256);
            }
        }
        let inner = Arc::clone(&self.inner);
        let report = tokio::task::spawn_blocking(move || inner.store.gc(&keep))
            .await
            .map_err(|e| {
                SupervisorError::Store(StoreError::io(
                    &self.inner.state_dir.join("store"),
                    "collect garbage in",
                    std::io::Error::other(e.to_string()),
                ))
            })??;
        drop(guards);
        Ok(report)
    }

    /// Every configured slot and every slot the journal knows, by name.
    pub fn status(&self, only: Option<&SlotName>) -> Result<StatusReport, SupervisorError> {
        let configured: Vec<SlotName> = self.runtimes().iter().map(|r| r.name.clone()).collect();
        let mut views: BTreeMap<SlotName, Option<tryswap_journal::SlotView>> = BTreeMap::new();
        for name in &configured {
            views.insert(name.clone(), None);
        }
        for view in self.inner.journal.slots()? {
            views.insert(view.slot.name.clone(), Some(view));
        }
        if let Some(only) = only {
            if !views.contains_key(only) {
                return Err(SupervisorError::UnknownSlot(only.clone()));
            }
            views.retain(|k, _| k == only);
        }
        let failed = self.failed_slots();
        let mut slots = Vec::with_capacity(views.len());
        for (name, view) in views {
            let is_configured = configured.contains(&name);
            let view = view.unwrap_or_else(|| tryswap_journal::SlotView::empty(name.clone()));
            let in_flight = match view.slot.in_flight {
                Some(id) => self.inner.journal.reload(&id)?,
                None => None,
            };
            let alive = view
                .slot
                .active
                .as_ref()
                .map_or(Liveness::Dead, |a| self.active_alive(&name, a));
            let mut status = SlotStatus::from_view(&view, in_flight.as_ref(), alive, is_configured);
            status.failed = failed.get(&name).cloned();
            status.endpoint = self.endpoint(&name);
            slots.push(status);
        }
        Ok(StatusReport {
            slots,
            // The store belongs to no slot: only in the status of every slot.
            store: only
                .is_none()
                .then(|| self.inner.store.usage().ok())
                .flatten(),
        })
    }

    /// Every reload of the slot the journal still holds, oldest first.
    pub fn history(&self, slot: &SlotName) -> Result<HistoryReport, SupervisorError> {
        if self.inner.journal.slot(slot)?.is_none() && self.runtime(slot).is_err() {
            return Err(SupervisorError::UnknownSlot(slot.clone()));
        }
        let views = self.inner.journal.reloads_of(slot)?;
        // The previous generations' artifacts: from the reloads listed (their candidates),
        // and from the slot's history only for those compacted away.
        let mut artifacts: BTreeMap<Generation, tryswap_fsm::ArtifactRef> = views
            .iter()
            .filter_map(|v| v.reload.candidate.as_ref())
            .map(|c| (c.generation, c.artifact.clone()))
            .collect();
        let unknown = views
            .iter()
            .filter_map(|v| v.reload.previous)
            .any(|g| !artifacts.contains_key(&g));
        if unknown {
            for (generation, artifact) in self.inner.journal.history(slot)? {
                artifacts.entry(generation).or_insert(artifact);
            }
        }
        let reloads = views
            .iter()
            .map(|v| {
                let previous = v.reload.previous.map(|g| PreviousInfo {
                    generation: g.0,
                    sha256: artifacts
                        .get(&g)
                        .map(|a| a.sha256.to_string())
                        .unwrap_or_default(),
                    pid: None,
                });
                let mut report = ReloadReport::from_view(v, None, previous);
                self.set_origin(&mut report, v);
                report
            })
            .collect();
        Ok(HistoryReport {
            slot: slot.to_string(),
            reloads,
            events: Vec::new(),
        })
    }

    /// (Re)launches the slot's active generation from the store if it does not run.
    /// Returns the generation now running.
    pub async fn start(&self, slot: &SlotName) -> Result<Generation, SupervisorError> {
        let Some((rt, _busy)) = self.lock_slot(slot)? else {
            return Err(SupervisorError::Conflict {
                slot: slot.clone(),
                in_flight: None,
            });
        };
        self.start_locked(&rt).await
    }

    pub(crate) async fn start_locked(
        &self,
        rt: &SlotRuntime,
    ) -> Result<Generation, SupervisorError> {
        self.start_as(rt, false).await
    }

    /// `start` (or, with `restart`, the keep-alive's restart, which journals its intent
    /// first).
    async fn start_as(
        &self,
        rt: &SlotRuntime,
        restart: bool,
    ) -> Result<Generation, SupervisorError> {
        let started = self.start_unmarked(rt, restart).await;
        if started.is_ok() {
            // The slot runs: whatever failed at recovery is over.
            self.set_failed(&rt.name, None);
        }
        started
    }

    async fn start_unmarked(
        &self,
        rt: &SlotRuntime,
        restart: bool,
    ) -> Result<Generation, SupervisorError> {
        let slot = &rt.name;
        let view = self
            .inner
            .journal
            .slot(slot)?
            .ok_or_else(|| SupervisorError::NoActive(slot.clone()))?;
        let facts = view
            .slot
            .active
            .clone()
            .ok_or_else(|| SupervisorError::NoActive(slot.clone()))?;
        if let Some(serving) = rt.active.load_full() {
            if serving.instance.generation == facts.generation
                && rt.driver.is_alive(&serving.instance)
            {
                return Ok(facts.generation);
            }
        }
        if let Some(instance) = rt.driver.reattach(&facts_instance(slot, &facts)) {
            rt.active.store(Some(Serving::new(instance)));
            return Ok(facts.generation);
        }
        let active = relaunch_of(slot, &facts);
        let plan = if restart && !facts.running {
            Plan::Restart { active }
        } else {
            Plan::Start { active }
        };
        let request = self.launch_request(rt, facts.reload, facts.generation, &facts.artifact);
        match self.bring_up(rt.driver.as_ref(), &request, plan).await {
            Ok(up) => {
                rt.active.store(Some(Serving::new(up.instance)));
                Ok(facts.generation)
            }
            Err(down) => Err(match down.error {
                DownError::Store(e) => SupervisorError::Store(e),
                DownError::Journal(e) => SupervisorError::Journal(e),
                DownError::Driver(error) => SupervisorError::Driver {
                    slot: slot.clone(),
                    error,
                },
            }),
        }
    }

    /// Stops the slot's active generation (after draining its leases). The active marker
    /// stays; `start` brings it back.
    pub async fn stop(&self, slot: &SlotName) -> Result<Option<Generation>, SupervisorError> {
        let _stopping = Marked::new(&self.inner.stopping, slot);
        // Stop always wins over a keep-alive restart: it tells the restart to give up (the
        // restart's launch is undone below: its process carries the generation's tag) and
        // waits for the slot. Anything else holding the slot is a conflict.
        let (rt, _busy) = match self.lock_slot(slot)? {
            Some(locked) => {
                self.count_stop(slot);
                locked
            }
            None if self.is_restarting(slot) => {
                self.count_stop(slot);
                let busy = Arc::clone(&self.runtime(slot)?.busy).lock_owned().await;
                (self.runtime(slot)?, busy)
            }
            None => {
                return Err(SupervisorError::Conflict {
                    slot: slot.clone(),
                    in_flight: None,
                })
            }
        };
        let Some(view) = self.inner.journal.slot(slot)? else {
            return Ok(None);
        };
        let Some(facts) = view.slot.active.clone() else {
            return Ok(None);
        };
        let instance = match rt.active.swap(None) {
            Some(serving) => {
                serving.drain(rt.drain_timeout).await;
                serving.instance.clone()
            }
            None => facts_instance(slot, &facts),
        };
        failpoint!("stop-before-stop");
        rt.driver
            .stop(&instance)
            .await
            .map_err(|error| SupervisorError::Driver {
                slot: slot.clone(),
                error,
            })?;
        failpoint!("stop-after-stop");
        if facts.running {
            // Durable before it returns: an acknowledged stop survives a crash.
            self.record(&Command::Stop {
                slot: slot.clone(),
                generation: facts.generation,
                reason: Reason::cancelled("stopped by operator"),
            })?;
        }
        failpoint!("stop-after-stopped");
        Ok(Some(facts.generation))
    }

    /// Stops every generation this process runs (shutdown of an embedding host). The
    /// journal keeps the active markers; the next start relaunches or reattaches them.
    pub async fn shutdown(&self) {
        self.stop_watching_bakes();
        self.stop_standbys().await;
        // Every slot at once: shutdown costs the slowest slot's drain and stop timeout.
        let stops: Vec<_> = self
            .runtimes()
            .into_iter()
            .filter_map(|rt| rt.active.swap(None).map(|serving| (rt, serving)))
            .map(|(rt, serving)| {
                tokio::spawn(async move {
                    serving.drain(rt.drain_timeout).await;
                    if let Err(e) = rt.driver.stop(&serving.instance).await {
                        tracing::error!(slot = %rt.name, error = %e, "stopping at shutdown");
                    }
                })
            })
            .collect();
        for stop in stops {
            if let Err(e) = stop.await {
                tracing::error!(error = %e, "a stop task failed at shutdown");
            }
        }
        if let Err(e) = self.flush_off_thread().await {
            tracing::error!(error = %e, "flushing the journal at shutdown");
        }
    }
}
