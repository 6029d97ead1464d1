//! The states a reload and a slot can be in.

use serde::{Deserialize, Serialize};

use crate::types::{
    ArtifactRef, Endpoint, Generation, Mode, ProcessIdentity, Reason, ReloadId, SlotName, Stage,
};

/// Where one reload stands.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadState {
    /// Artifact in the store, reload recorded; nothing spawned yet (or not yet recorded).
    #[serde(alias = "Staged")]
    Staged,
    /// Candidate spawned.
    #[serde(alias = "Launched")]
    Launched,
    /// Candidate's handshake accepted.
    #[serde(alias = "Validated")]
    Validated,
    /// Candidate passed its probe.
    #[serde(alias = "Probed")]
    Probed,
    /// Committed: the candidate is (or was) the slot's active generation. Terminal.
    #[serde(alias = "Active")]
    Active,
    /// Candidate stopped, active marker untouched. Terminal.
    #[serde(alias = "RolledBack")]
    RolledBack {
        /// The stage that was being attempted when the reload failed.
        stage: Stage,
        /// Why.
        reason: Reason,
    },
    /// Dry run passed its probe; candidate discarded. Terminal.
    #[serde(alias = "DryRunPassed")]
    DryRunPassed,
    /// Provisionally committed: the candidate holds the active marker until the bake ends;
    /// the previous generation waits, running, as a warm standby. Not terminal: the slot's
    /// next reload is a conflict until the bake is confirmed or reverted.
    #[serde(alias = "Baking")]
    Baking {
        /// The bake's deadline, in milliseconds since the Unix epoch (UTC).
        until_ms: u64,
    },
    /// The bake passed (or was confirmed by hand): the candidate is the slot's active
    /// generation for good. Terminal.
    #[serde(alias = "Confirmed")]
    Confirmed {
        /// The bake's deadline as it was journaled (ms since the Unix epoch).
        until_ms: u64,
    },
    /// The bake failed (or was reverted by hand): the marker is back on the standby and the
    /// candidate waits to be stopped. Terminal.
    #[serde(alias = "Reverted")]
    Reverted {
        /// The bake's deadline as it was journaled (ms since the Unix epoch).
        until_ms: u64,
        /// Why.
        reason: Reason,
    },
}

impl ReloadState {
    /// Whether no command can change this state any more.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ReloadState::Active
                | ReloadState::RolledBack { .. }
                | ReloadState::DryRunPassed
                | ReloadState::Confirmed { .. }
                | ReloadState::Reverted { .. }
        )
    }

    /// The last stage reached, for non-terminal states and `Active`.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            ReloadState::Staged => Some(Stage::Staged),
            ReloadState::Launched => Some(Stage::Launched),
            ReloadState::Validated => Some(Stage::Validated),
            ReloadState::Probed => Some(Stage::Probed),
            ReloadState::Active | ReloadState::Confirmed { .. } => Some(Stage::Active),
            ReloadState::Baking { .. } => Some(Stage::Baking),
            ReloadState::RolledBack { .. }
            | ReloadState::DryRunPassed
            | ReloadState::Reverted { .. } => None,
        }
    }

    /// The stage a non-terminal reload is attempting next; a failure now fails that stage.
    pub fn next_stage(&self) -> Option<Stage> {
        match self {
            ReloadState::Staged => Some(Stage::Launched),
            ReloadState::Launched => Some(Stage::Validated),
            ReloadState::Validated => Some(Stage::Probed),
            ReloadState::Probed => Some(Stage::Active),
            ReloadState::Baking { .. } => Some(Stage::Baking),
            _ => None,
        }
    }

    /// Lowercase name used in reports: `staged` … `active`, `rolled_back`, `dry_run_passed`,
    /// `baking`, `confirmed`, `reverted`.
    pub fn name(&self) -> &'static str {
        match self {
            ReloadState::Staged => "staged",
            ReloadState::Launched => "launched",
            ReloadState::Validated => "validated",
            ReloadState::Probed => "probed",
            ReloadState::Active => "active",
            ReloadState::RolledBack { .. } => "rolled_back",
            ReloadState::DryRunPassed => "dry_run_passed",
            ReloadState::Baking { .. } => "baking",
            ReloadState::Confirmed { .. } => "confirmed",
            ReloadState::Reverted { .. } => "reverted",
        }
    }

    /// The bake deadline (ms since the Unix epoch) while the reload is baking.
    pub fn bake_until_ms(&self) -> Option<u64> {
        match self {
            ReloadState::Baking { until_ms } => Some(*until_ms),
            _ => None,
        }
    }

    /// The deadline of the reload's bake, whether it is baking or its bake has ended.
    pub fn bake_deadline_ms(&self) -> Option<u64> {
        match self {
            ReloadState::Baking { until_ms }
            | ReloadState::Confirmed { until_ms }
            | ReloadState::Reverted { until_ms, .. } => Some(*until_ms),
            _ => None,
        }
    }

    /// Whether the reload's candidate holds, or held, the active marker for good or for now:
    /// `Active`, `Baking` or `Confirmed`.
    pub fn is_committed(&self) -> bool {
        matches!(
            self,
            ReloadState::Active | ReloadState::Baking { .. } | ReloadState::Confirmed { .. }
        )
    }
}

/// The candidate a reload tries: its generation number and artifact.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// Generation number assigned at staging.
    pub generation: Generation,
    /// The staged artifact.
    pub artifact: ArtifactRef,
}

/// Everything known about one reload: the fold of its events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    /// Reload id.
    pub id: ReloadId,
    /// The slot it targets.
    pub slot: SlotName,
    /// What it is for.
    pub mode: Mode,
    /// The candidate; `None` only when staging itself failed.
    pub candidate: Option<Candidate>,
    /// The slot's active generation when the reload was staged.
    pub previous: Option<Generation>,
    /// Current state.
    pub state: ReloadState,
    /// The candidate's process, once launched (none for in-process engines).
    pub process: Option<ProcessIdentity>,
    /// The candidate's log file, once launched.
    pub log_path: Option<String>,
    /// What the handshake said, once validated.
    pub endpoint: Option<Endpoint>,
}

/// A generation that is, or was, serving in a slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Instance {
    /// Generation number.
    pub generation: Generation,
    /// Its artifact in the store.
    pub artifact: ArtifactRef,
    /// The reload that made it active.
    pub reload: ReloadId,
    /// Its current process, if it runs as one.
    pub process: Option<ProcessIdentity>,
    /// Its log file.
    pub log_path: Option<String>,
    /// Where it serves.
    pub endpoint: Option<Endpoint>,
    /// Whether the journal believes it is running (false after `Stopped`).
    pub running: bool,
}

/// Everything known about one slot: the fold of the events that touch it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Slot name.
    pub name: SlotName,
    /// The active marker: which generation is active, with its process facts.
    pub active: Option<Instance>,
    /// The one non-terminal reload of this slot, if any.
    pub in_flight: Option<ReloadId>,
    /// Generation number the next staged reload gets.
    pub next_generation: Generation,
    /// Former active generations that have not been retired (stopped) yet.
    pub retiring: Vec<Instance>,
}

impl Slot {
    /// A slot that has never seen a reload.
    pub fn new(name: SlotName) -> Self {
        Slot {
            name,
            active: None,
            in_flight: None,
            next_generation: Generation(1),
            retiring: Vec::new(),
        }
    }

    /// The active generation number, if any.
    pub fn active_generation(&self) -> Option<Generation> {
        self.active.as_ref().map(|a| a.generation)
    }
}
