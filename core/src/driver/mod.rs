//! The driver interface: what launches, validates, probes and stops instances of a slot.

pub mod engine;
pub mod process;

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tryswap_fsm::{
    ArtifactRef, Endpoint, Generation, ProcessIdentity, Reason, ReasonKind, ReloadId, SlotName,
};

/// Everything a driver needs to start one instance of a generation.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    /// The slot.
    pub slot: SlotName,
    /// The reload the instance belongs to; process drivers tag the process with it.
    pub reload: ReloadId,
    /// The generation being started.
    pub generation: Generation,
    /// The staged artifact.
    pub artifact: ArtifactRef,
    /// Path of the staged executable inside the store, if the artifact has one.
    pub executable: Option<PathBuf>,
    /// Path of the staged config file inside the store, if the artifact has one.
    pub config_file: Option<PathBuf>,
}

/// One running (or launched) instance of a generation, as its driver knows it.
#[derive(Clone)]
pub struct Instance {
    /// The slot.
    pub slot: SlotName,
    /// The generation it runs.
    pub generation: Generation,
    /// The reload that launched it (its process tag).
    pub reload: ReloadId,
    /// Its artifact.
    pub artifact: ArtifactRef,
    /// Its process, for process drivers.
    pub process: Option<ProcessIdentity>,
    /// Its main log file.
    pub log_path: Option<PathBuf>,
    /// Where it serves, once validated.
    pub endpoint: Option<Endpoint>,
    /// Driver-private state (a child handle, an engine, a stdio drain). After a reattach by
    /// identity it holds only what the driver can rebuild (the process driver: the gRPC
    /// stdio drain), or `None`.
    pub handle: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("slot", &self.slot)
            .field("generation", &self.generation)
            .field("reload", &self.reload)
            .field("process", &self.process)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// The process id, if the instance is a process.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }
}

/// Why a driver step failed: a kind (error or timeout) and a message that quotes the plugin.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    /// Error or timeout.
    pub kind: ReasonKind,
    /// What went wrong, quoting what the plugin said where possible.
    pub message: String,
}

impl DriverError {
    /// A plain failure.
    pub fn error(message: impl Into<String>) -> Self {
        DriverError {
            kind: ReasonKind::Error,
            message: message.into(),
        }
    }

    /// A step that did not finish in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        DriverError {
            kind: ReasonKind::Timeout,
            message: message.into(),
        }
    }

    /// The journal reason for this failure.
    pub fn reason(&self) -> Reason {
        Reason {
            kind: self.kind,
            message: self.message.clone(),
        }
    }
}

/// How an instance was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopOutcome {
    /// It was already gone.
    AlreadyGone,
    /// It exited when asked.
    Graceful,
    /// It had to be killed.
    Killed,
}

/// Whether an instance runs, as far as its driver can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// It runs (and is the instance that was recorded).
    Alive,
    /// It is gone: exited, a zombie, or its pid names another process now.
    Dead,
    /// The driver could not look (e.g. out of file descriptors): act as if nothing changed.
    Unknown,
}

/// How the slot and generation of a [`FoundProcess`] were told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FoundBy {
    /// Its `TRYSWAP_SLOT` / `TRYSWAP_GENERATION` tags.
    Tags,
    /// Its `TMPDIR`, `<state-dir>/tmp/<slot>/<generation>` (processes started before the
    /// tags existed).
    TmpDir,
    /// Where its stdout goes, `<state-dir>/logs/<slot>/<generation>.stdout`.
    LogFile,
}

/// A live process of a state directory found by its `TRYSWAP_RELOAD_ID` tag, with what its
/// environment and `/proc` entries say about it: no journal involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundProcess {
    /// The reload whose tag it carries.
    pub reload: ReloadId,
    /// Its identity, read now.
    pub identity: ProcessIdentity,
    /// Whether it leads its own process group (a plugin tryswap spawned does; its children
    /// do not).
    pub leader: bool,
    /// The slot it serves, if something tells.
    pub slot: Option<SlotName>,
    /// The generation it runs, if something tells.
    pub generation: Option<Generation>,
    /// What told the slot and generation.
    pub found_by: Option<FoundBy>,
    /// Its executable (`/proc/<pid>/exe`), if readable.
    pub executable: Option<PathBuf>,
    /// Its arguments after the program name.
    pub args: Vec<String>,
}

/// Launches, validates, probes and stops instances of one slot.
///
/// The supervisor calls these in order for a reload (launch → validate → probe) and calls
/// `stop` on a candidate that failed, on a dry run's candidate, and on a drained old
/// generation. Implementations must make `stop` idempotent and must never leave a process
/// of a stopped instance behind.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Makes on disk what a launch of generation `generation` of `slot` will need (for
    /// processes: its `TMPDIR`, log files and cgroup) and keeps it for that launch. Nothing
    /// runs. A reload calls it on another thread while it stages the candidate and writes its
    /// `Staged` record, so the two overlap; the write-ahead rule holds because nothing is
    /// spawned before [`Driver::launch`]. Blocking. A failure is not reported here: the launch makes the
    /// same things again and reports it. The default has nothing to make.
    fn prepare(&self, slot: &SlotName, generation: Generation) {
        let _ = (slot, generation);
    }

    /// Removes what [`Driver::prepare`] made when no launch will use it (the reload failed
    /// before its launch). Blocking. The default has nothing to remove.
    fn discard_prepared(&self) {}

    /// Makes on disk, and lets go of, what a later launch of generation `generation` of
    /// `slot` will need, so that its [`Driver::prepare`] only opens what exists (for
    /// processes: creating the `TMPDIR`, the log files and the cgroup costs a file system
    /// its inode allocations; opening them costs little). A long-lived host calls it after a
    /// reload, for the slot's next generation. Nothing runs and nothing is held; what it
    /// made and no launch used is empty (docs/architecture.md, "Write-ahead rules").
    /// Blocking. The default has nothing to make.
    fn prepare_ahead(&self, slot: &SlotName, generation: Generation) {
        let _ = (slot, generation);
    }

    /// Removes what [`Driver::prepare_ahead`] made for generation `generation` of `slot`
    /// if nothing used it (everything it made is still empty). The host calls it when it
    /// stops, with no launch of that generation under way. Blocking. The default has
    /// nothing to remove.
    fn discard_ahead(&self, slot: &SlotName, generation: Generation) {
        let _ = (slot, generation);
    }

    /// Starts an instance. Returns once it exists (spawned, built); not yet validated.
    async fn launch(&self, request: &LaunchRequest) -> Result<Instance, DriverError>;

    /// Waits for and checks the instance's handshake; fills in its endpoint.
    async fn validate(&self, instance: &mut Instance) -> Result<(), DriverError>;

    /// Runs the slot's health probe until it passes or fails.
    async fn probe(&self, instance: &Instance) -> Result<(), DriverError>;

    /// Stops the instance and everything it started. Idempotent.
    async fn stop(&self, instance: &Instance) -> Result<StopOutcome, DriverError>;

    /// Whether the instance still runs.
    fn is_alive(&self, instance: &Instance) -> bool;

    /// Whether the instance still runs, or [`Liveness::Unknown`] when the driver cannot
    /// tell (for processes: `/proc` unreadable). The default knows no "unknown".
    fn liveness(&self, instance: &Instance) -> Liveness {
        if self.is_alive(instance) {
            Liveness::Alive
        } else {
            Liveness::Dead
        }
    }

    /// Rebuilds an instance from journal facts after this process (re)started, if it is still
    /// running with the same identity. Drivers whose instances cannot outlive the host return
    /// `None`.
    fn reattach(&self, facts: &Instance) -> Option<Instance> {
        let _ = facts;
        None
    }

    /// Stops every process still carrying the tag of `reload` (what a crashed instance, or
    /// a launch that failed half-way, left behind) and returns their pids. Drivers whose
    /// instances are not processes have nothing to stop.
    async fn stop_leftovers(&self, reload: &ReloadId) -> Vec<u32> {
        let _ = reload;
        Vec::new()
    }

    /// Every process this driver's state directory runs, tagged with its reload id (what a
    /// journal must know). Drivers whose instances are not processes report none.
    fn tagged_processes(&self) -> Vec<(ReloadId, u32)> {
        Vec::new()
    }

    /// Every live process this driver's state directory runs with a reload tag, with what
    /// its tags and `/proc` say about it (see [`FoundProcess`]). Drivers whose instances are
    /// not processes report none.
    fn found_processes(&self) -> Vec<FoundProcess> {
        Vec::new()
    }

    /// The instance of `found`, a live process an earlier tryswap launched as generation
    /// `found.generation` of this slot with `artifact`, for a journal that lost its records:
    /// its identity, log file, and the endpoint of its last handshake line whose address
    /// it still holds. Drivers whose instances are not processes cannot adopt.
    fn adopt(&self, found: &FoundProcess, artifact: &ArtifactRef) -> Result<Instance, DriverError> {
        let _ = (found, artifact);
        Err(DriverError::error("this driver cannot adopt processes"))
    }

    /// The pids of `facts`' reload that still run: the journaled process if it still runs
    /// with its journaled identity, and every process tagged with the reload. Drivers whose
    /// instances are not processes report none.
    fn survivors(&self, facts: &Instance) -> Vec<u32> {
        let _ = facts;
        Vec::new()
    }

    /// Established connections outside callers hold to the instance's endpoint (what a
    /// drain waits on), or `None` when the driver cannot tell. The default cannot.
    fn outside_connections(&self, instance: &Instance) -> Option<usize> {
        let _ = instance;
        None
    }
}
