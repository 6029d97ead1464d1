//! Events: facts that happened, appended to the journal and folded into states.

use serde::{Deserialize, Serialize};

use crate::types::{
    ArtifactRef, Endpoint, Generation, Mode, ProcessIdentity, Reason, ReloadId, SlotName, Stage,
};

/// One fact about one reload (and the slot it targets).
///
/// Slot-level facts (`Retired`, `Relaunched`, `Stopped`, `Restarting`) carry the id of the reload that made
/// the generation in question active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The reload this event belongs to.
    pub reload: ReloadId,
    /// The slot it touches.
    pub slot: SlotName,
    /// What happened.
    pub kind: EventKind,
}

/// What happened. The variant order is part of the journal format: append, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The artifact could not be staged; the reload is recorded as rolled back at `Staged`.
    #[serde(alias = "StagingFailed")]
    StagingFailed {
        /// What the reload was for.
        mode: Mode,
        /// Why staging failed.
        reason: Reason,
    },
    /// The candidate is in the store and the reload exists.
    #[serde(alias = "Staged")]
    Staged {
        /// What the reload is for.
        mode: Mode,
        /// The candidate's generation number.
        generation: Generation,
        /// The staged artifact.
        artifact: ArtifactRef,
        /// The slot's active generation at staging.
        previous: Option<Generation>,
    },
    /// The candidate was spawned.
    #[serde(alias = "Launched")]
    Launched {
        /// Its process, if it is one.
        process: Option<ProcessIdentity>,
        /// Its log file.
        log_path: Option<String>,
    },
    /// The candidate's handshake was accepted.
    #[serde(alias = "Validated")]
    Validated {
        /// What it said (none for in-process engines).
        endpoint: Option<Endpoint>,
    },
    /// The candidate passed its probe.
    #[serde(alias = "Probed")]
    Probed,
    /// Commit point: the slot's active marker now names the candidate.
    #[serde(alias = "Activated")]
    Activated,
    /// The candidate was stopped; the slot is as it was.
    #[serde(alias = "RolledBack")]
    RolledBack {
        /// The stage that failed.
        stage: Stage,
        /// Why.
        reason: Reason,
    },
    /// A dry run passed its probe and its candidate was discarded.
    #[serde(alias = "DryRunPassed")]
    DryRunPassed,
    /// A former active generation was drained and stopped.
    #[serde(alias = "Retired")]
    Retired {
        /// Which generation.
        generation: Generation,
    },
    /// The active generation runs in a new process (restart, recovery relaunch, `start`).
    #[serde(alias = "Relaunched")]
    Relaunched {
        /// Which generation (always the active one).
        generation: Generation,
        /// The new process.
        process: Option<ProcessIdentity>,
        /// Its log file.
        log_path: Option<String>,
        /// Its handshake.
        endpoint: Option<Endpoint>,
    },
    /// The active generation's process was stopped or found dead; the marker stays.
    #[serde(alias = "Stopped")]
    Stopped {
        /// Which generation (always the active one).
        generation: Generation,
        /// Why.
        reason: Reason,
    },
    /// Provisional commit point: the slot's active marker now names the candidate, until the
    /// bake ends; the previous active generation stays running as the warm standby.
    #[serde(alias = "ActivatedBaking")]
    ActivatedBaking {
        /// The bake's deadline, in milliseconds since the Unix epoch (UTC).
        until_ms: u64,
    },
    /// The bake of the reload passed: the candidate stays active; the standby may retire.
    #[serde(alias = "Confirmed")]
    Confirmed,
    /// The bake of the reload failed: the marker is back on the standby, exactly as it was
    /// before the provisional commit; the candidate waits to be stopped (retired).
    #[serde(alias = "Reverted")]
    Reverted {
        /// Why.
        reason: Reason,
    },
    /// The keep-alive is about to relaunch the stopped active generation; written (durably)
    /// before anything is spawned. Until `Relaunched` or `Stopped` follows, the generation
    /// counts as running with no known process: recovery after a crash stops any copy the
    /// interrupted restart spawned (it carries the generation's reload tag) and relaunches
    /// it, so exactly one process remains.
    #[serde(alias = "Restarting")]
    Restarting {
        /// Which generation (always the active one).
        generation: Generation,
    },
    /// A live process of a reload the journal did not know (a journal restored from an
    /// older backup) was taken over as the slot's active generation: creates the reload,
    /// already `Active`, and moves the active marker to it; the former active generation
    /// waits to be retired. Its generation is newer than any the journal had given out.
    #[serde(alias = "Adopted")]
    Adopted {
        /// The adopted generation.
        generation: Generation,
        /// Its artifact (identified from the process's executable and config in the store).
        artifact: ArtifactRef,
        /// The slot's active generation before the adoption.
        previous: Option<Generation>,
        /// The process taken over.
        process: Option<ProcessIdentity>,
        /// Its log file.
        log_path: Option<String>,
        /// Its handshake, as its log holds it.
        endpoint: Option<Endpoint>,
        /// What was found (the evidence).
        reason: Reason,
    },
}

impl EventKind {
    /// Lowercase name used in reports and event streams.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::StagingFailed { .. } => "staging_failed",
            EventKind::Staged { .. } => "staged",
            EventKind::Launched { .. } => "launched",
            EventKind::Validated { .. } => "validated",
            EventKind::Probed => "probed",
            EventKind::Activated => "active",
            EventKind::RolledBack { .. } => "rolled_back",
            EventKind::DryRunPassed => "dry_run_passed",
            EventKind::Retired { .. } => "retired",
            EventKind::Relaunched { .. } => "relaunched",
            EventKind::Stopped { .. } => "stopped",
            EventKind::ActivatedBaking { .. } => "baking",
            EventKind::Confirmed => "confirmed",
            EventKind::Reverted { .. } => "reverted",
            EventKind::Restarting { .. } => "restarting",
            EventKind::Adopted { .. } => "adopted",
        }
    }

    /// Whether this event is a reload transition (as opposed to a slot-level fact).
    pub fn is_reload_transition(&self) -> bool {
        !matches!(
            self,
            EventKind::Retired { .. }
                | EventKind::Relaunched { .. }
                | EventKind::Stopped { .. }
                | EventKind::Restarting { .. }
        )
    }
}
