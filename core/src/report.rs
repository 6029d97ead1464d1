//! Structured results: the JSON shapes of DESIGN.md ("--json shapes"; keys are a contract).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tryswap_fsm::EventKind;
use tryswap_fsm::{Instance as Facts, Mode, Reload, ReloadId, ReloadState};
use tryswap_journal::{Actor, ActorKind, Record, ReloadView, SlotView};

use crate::driver::Liveness;

/// How a reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The candidate is the slot's active generation.
    Active,
    /// The candidate was stopped; the slot is as it was.
    RolledBack,
    /// A dry run passed; nothing changed.
    DryRunPassed,
    /// The candidate baked as the active generation and failed (or was reverted by hand):
    /// the marker is back on the previous generation.
    Reverted,
    /// The reload has not finished (only seen in `history` or `status` of a live reload).
    InProgress,
}

impl Outcome {
    /// The outcome of a reload in `state`.
    pub fn of(state: &ReloadState) -> Outcome {
        match state {
            ReloadState::Active | ReloadState::Confirmed { .. } => Outcome::Active,
            ReloadState::RolledBack { .. } => Outcome::RolledBack,
            ReloadState::DryRunPassed => Outcome::DryRunPassed,
            ReloadState::Reverted { .. } => Outcome::Reverted,
            _ => Outcome::InProgress,
        }
    }
}

/// The bake window of a reload that activated provisionally: DESIGN.md's `bake` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BakeInfo {
    /// The bake's deadline.
    pub until: DateTime<Utc>,
    /// `baking`, `confirmed` or `reverted`.
    pub state: &'static str,
}

impl BakeInfo {
    /// The bake of a reload in `state`, if it baked.
    pub fn of(state: &ReloadState) -> Option<BakeInfo> {
        let until_ms = state.bake_deadline_ms()?;
        let until = DateTime::<Utc>::from_timestamp_millis(i64::try_from(until_ms).ok()?)?;
        Some(BakeInfo {
            until,
            state: state.name(),
        })
    }
}

/// The candidate of a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CandidateInfo {
    /// Generation number.
    pub generation: u64,
    /// Executable (or engine config) digest.
    pub sha256: String,
    /// Config file digest, if any.
    pub config_sha256: Option<String>,
    /// Process id, once launched.
    pub pid: Option<u32>,
    /// `tcp` or `unix`, once validated.
    pub network: Option<String>,
    /// Address, once validated.
    pub address: Option<String>,
    /// `grpc` or `netrpc`, once validated.
    pub protocol: Option<String>,
    /// Negotiated app protocol version, once validated.
    pub app_protocol_version: Option<u32>,
    /// The candidate's log file.
    pub log_path: Option<String>,
}

/// The generation that was active when a reload started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PreviousInfo {
    /// Generation number.
    pub generation: u64,
    /// Its artifact digest.
    pub sha256: String,
    /// Its process id at the time.
    pub pid: Option<u32>,
}

impl PreviousInfo {
    /// From the journal's facts about an active generation.
    pub fn from_facts(facts: &Facts) -> Self {
        PreviousInfo {
            generation: facts.generation.0,
            sha256: facts.artifact.sha256.to_string(),
            pid: facts.process.as_ref().map(|p| p.pid),
        }
    }
}

/// One stage a reload passed through.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageTiming {
    /// `staged`, `launched`, `validated`, `probed`, `active`, `rolled_back`, `dry_run_passed`.
    pub state: String,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Milliseconds since the previous stage (the first: since the reload started).
    pub elapsed_ms: f64,
}

/// The result of one reload: DESIGN.md's reload JSON shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReloadReport {
    /// Reload id (UUIDv7).
    pub reload_id: ReloadId,
    /// Slot name.
    pub slot: String,
    /// `activate`, `try` or `rollback`.
    pub mode: &'static str,
    /// `active`, `rolled_back`, `dry_run_passed` (or `in_progress` in history).
    pub outcome: Outcome,
    /// The stage that failed, for rolled back reloads.
    pub failed_stage: Option<&'static str>,
    /// The failure, quoting the plugin where possible.
    pub error: Option<String>,
    /// `error`, `timeout`, `cancelled` or `recovered`, for rolled back reloads.
    pub reason_kind: Option<&'static str>,
    /// For rollbacks, the generation whose artifact was reactivated.
    pub rollback_to: Option<u64>,
    /// The candidate.
    pub candidate: Option<CandidateInfo>,
    /// The generation active when the reload started.
    pub previous: Option<PreviousInfo>,
    /// Stages with timings.
    pub stages: Vec<StageTiming>,
    /// When the reload was journaled (its first record).
    pub started_at: DateTime<Utc>,
    /// Whole duration in milliseconds: from the reload's first journal record to its last
    /// stage. The same number in `activate`, `history`, text and JSON; staging (copying and
    /// hashing the artifact before the first record) is `stages[0].elapsed_ms` when the
    /// command that made the reload reports it.
    pub duration_ms: f64,
    /// Former generations this reload drained and stopped.
    pub retired: Vec<u64>,
    /// The bake window, for reloads that activated provisionally.
    pub bake: Option<BakeInfo>,
    /// The slot's stable endpoint after the reload (DESIGN.md "Stable endpoints"): the
    /// unix link's path or the daemon's tcp listener; absent when the slot has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How each former generation this reload retired ended (drained, timed out, killed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drain: Vec<DrainReport>,
    /// Who started the reload (its first record's actor), when the journal knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// The operator's reason given with it (`--reason`, API `"reason"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ReloadReport {
    /// Takes who started the reload and why from its first record (`record` must be it).
    pub fn set_origin(&mut self, record: &Record) {
        if record.actor.kind != ActorKind::Unknown {
            self.actor = Some(record.actor);
        }
        self.reason.clone_from(&record.reason);
    }
}

/// How a retired generation ended after its outside callers were drained.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainReport {
    /// The retired generation.
    pub generation: u64,
    /// `drained` (its connections and leases ended, then it stopped gracefully),
    /// `timed_out` (`drain_timeout` passed first; then stopped gracefully) or `killed`
    /// (it had to be killed).
    pub ended: &'static str,
    /// Milliseconds from the start of the drain to the generation's end.
    pub waited_ms: f64,
    /// Established connections left when the drain gave up (0 when drained).
    pub connections_left: usize,
    /// Leases still held when the drain gave up (0 when drained).
    pub leases_left: usize,
}

/// Milliseconds from `from` to `to`, never negative (clocks of two records can step back).
fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .num_microseconds()
        .map_or(0.0, |us| us as f64 / 1000.0)
        .max(0.0)
}

impl ReloadReport {
    /// Builds the report of a reload from its journal view.
    ///
    /// `started` is when the caller began (before staging); without it timings start at the
    /// first recorded stage. `previous` describes the generation active at the start.
    pub fn from_view(
        view: &ReloadView,
        started: Option<DateTime<Utc>>,
        previous: Option<PreviousInfo>,
    ) -> Self {
        let reload: &Reload = &view.reload;
        let mut stages = Vec::with_capacity(view.stages.len());
        let origin = started.unwrap_or(view.created);
        let mut last = origin;
        for mark in &view.stages {
            stages.push(StageTiming {
                state: mark.state.clone(),
                at: mark.at,
                elapsed_ms: millis(last, mark.at),
            });
            last = mark.at;
        }
        let (failed_stage, error, reason_kind) = match &reload.state {
            ReloadState::RolledBack { stage, reason } => (
                Some(stage.name()),
                Some(reason.message.clone()),
                Some(reason.kind.name()),
            ),
            ReloadState::Reverted { reason, .. } => (
                Some(tryswap_fsm::Stage::Baking.name()),
                Some(reason.message.clone()),
                Some(reason.kind.name()),
            ),
            _ => (None, None, None),
        };
        let candidate = reload.candidate.as_ref().map(|c| CandidateInfo {
            generation: c.generation.0,
            sha256: c.artifact.sha256.to_string(),
            config_sha256: c.artifact.config_sha256.map(|d| d.to_string()),
            pid: reload.process.as_ref().map(|p| p.pid),
            network: reload.endpoint.as_ref().map(|e| e.network.to_string()),
            address: reload.endpoint.as_ref().map(|e| e.address.clone()),
            protocol: reload.endpoint.as_ref().map(|e| e.protocol.to_string()),
            app_protocol_version: reload.endpoint.as_ref().map(|e| e.app_version),
            log_path: reload.log_path.clone(),
        });
        let previous = previous.or_else(|| {
            reload.previous.map(|g| PreviousInfo {
                generation: g.0,
                sha256: String::new(),
                pid: None,
            })
        });
        ReloadReport {
            reload_id: reload.id,
            slot: reload.slot.to_string(),
            mode: reload.mode.name(),
            outcome: Outcome::of(&reload.state),
            failed_stage,
            error,
            reason_kind,
            rollback_to: match reload.mode {
                Mode::Rollback { to } => Some(to.0),
                _ => None,
            },
            candidate,
            previous,
            stages,
            started_at: view.created,
            duration_ms: millis(view.created, last),
            retired: Vec::new(),
            bake: BakeInfo::of(&reload.state),
            endpoint: None,
            drain: Vec::new(),
            actor: None,
            reason: None,
        }
    }
}

/// The active generation of a slot, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActiveInfo {
    /// Generation number.
    pub generation: u64,
    /// Artifact digest.
    pub sha256: String,
    /// Config digest, if any.
    pub config_sha256: Option<String>,
    /// Process id.
    pub pid: Option<u32>,
    /// Whether it is known to run (process alive with the journaled identity); false both
    /// when it is gone and when its process could not be looked at (health `unknown`).
    pub alive: bool,
    /// `tcp` or `unix`.
    pub network: Option<String>,
    /// Address.
    pub address: Option<String>,
    /// When it became active.
    pub since: Option<DateTime<Utc>>,
    /// Its log file.
    pub log_path: Option<String>,
    /// Whether the journal records it running (no exit journaled since it last started).
    #[serde(skip)]
    pub recorded_running: bool,
}

/// A reload in progress, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InFlightInfo {
    /// Reload id.
    pub reload_id: ReloadId,
    /// Mode name.
    pub mode: &'static str,
    /// Current state name.
    pub state: &'static str,
    /// Candidate generation.
    pub generation: Option<u64>,
    /// The bake window, while the reload bakes.
    pub bake: Option<BakeInfo>,
    /// The warm standby (the generation active before the bake), while the reload bakes.
    pub standby: Option<PreviousInfo>,
}

/// One slot in `status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlotStatus {
    /// Slot name.
    pub slot: String,
    /// The active generation, if any.
    pub active: Option<ActiveInfo>,
    /// The reload in progress, if any.
    pub in_flight: Option<InFlightInfo>,
    /// Former generations not yet retired.
    pub retiring: Vec<u64>,
    /// Whether the slot is in the config (a journal can know slots the config dropped).
    pub configured: bool,
    /// `running`, `exited`, `unknown` (its process could not be looked at, e.g. `/proc`
    /// unreadable: not counted as exited), or with a daemon its keep-alive's view:
    /// `healthy`, `unhealthy`, `restarting`, `failing`; `null` without an active generation.
    pub health: Option<String>,
    /// Times the active generation was relaunched (keep-alive, `start`, recovery) since it
    /// became active, per the journal.
    pub restarts: u64,
    /// The last time the active generation's process ended, per the journal.
    pub last_exit: Option<ExitInfo>,
    /// Why the slot is failed, if it is: its recovery failed when this process started
    /// (the other slots serve). Cleared by the slot's next successful `start` or reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The slot's stable endpoint (DESIGN.md "Stable endpoints"): the unix link's path
    /// while it exists, or the daemon's tcp listener; absent when the slot has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Unexpired leases outside hosts hold through the daemon's API.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<crate::endpoint::leases::LeaseGrant>,
    /// Set when the active generation does not run (`health` is `exited`): how and when it
    /// ended, as journaled, or kind `not_running` (`at`: when this status found it so) when
    /// it died unseen. Reading never relaunches it; `tryswap start`, `recover` or `serve`
    /// do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exited: Option<ExitInfo>,
    /// The operator's reason on the slot's latest record that carries one (since the
    /// active generation's commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
}

/// How a generation's process last ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExitInfo {
    /// Generation.
    pub generation: u64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// `error`, `timeout`, `cancelled` or `recovered`; `not_running` for a process found
    /// dead whose exit nobody journaled.
    pub kind: &'static str,
    /// What happened (first line).
    pub message: String,
}

impl SlotStatus {
    /// Builds a slot's status from its journal view; `liveness` says whether the active
    /// generation's process runs ([`Liveness::Unknown`]: health `unknown`, `alive` false).
    pub fn from_view(
        view: &SlotView,
        in_flight: Option<&ReloadView>,
        liveness: Liveness,
        configured: bool,
    ) -> Self {
        let alive = liveness == Liveness::Alive;
        let slot = &view.slot;
        SlotStatus {
            slot: slot.name.to_string(),
            active: slot.active.as_ref().map(|a| ActiveInfo {
                generation: a.generation.0,
                sha256: a.artifact.sha256.to_string(),
                config_sha256: a.artifact.config_sha256.map(|d| d.to_string()),
                pid: a.process.as_ref().map(|p| p.pid),
                alive,
                network: a.endpoint.as_ref().map(|e| e.network.to_string()),
                address: a.endpoint.as_ref().map(|e| e.address.clone()),
                since: view.active_since,
                log_path: a.log_path.clone(),
                recorded_running: a.running,
            }),
            in_flight: in_flight.map(|r| InFlightInfo {
                reload_id: r.reload.id,
                mode: r.reload.mode.name(),
                state: r.reload.state.name(),
                generation: r.reload.candidate.as_ref().map(|c| c.generation.0),
                bake: BakeInfo::of(&r.reload.state),
                standby: r
                    .reload
                    .state
                    .bake_until_ms()
                    .and_then(|_| {
                        slot.retiring
                            .iter()
                            .find(|i| Some(i.generation) == r.reload.previous)
                    })
                    .map(PreviousInfo::from_facts),
            }),
            retiring: slot.retiring.iter().map(|i| i.generation.0).collect(),
            configured,
            health: slot.active.as_ref().map(|_| health_of(liveness).to_owned()),
            restarts: 0,
            last_exit: None,
            failed: None,
            endpoint: None,
            leases: Vec::new(),
            exited: None,
            last_reason: None,
        }
    }
}

/// The status word for an active generation's liveness.
fn health_of(liveness: Liveness) -> &'static str {
    match liveness {
        Liveness::Alive => "running",
        Liveness::Dead => "exited",
        Liveness::Unknown => "unknown",
    }
}

impl StatusReport {
    /// Says how every active generation that does not run ended ([`SlotStatus::exited`]):
    /// the journaled exit, or, when the journal still records it running, `not_running`
    /// found at `now` (which also becomes its last exit). Call after
    /// [`StatusReport::add_record_facts`].
    pub fn note_exits(&mut self, now: DateTime<Utc>) {
        for slot in &mut self.slots {
            // Only a process known to be gone: `unknown` (it could not be looked at) is
            // never reported as exited.
            if slot.health.as_deref() != Some("exited") {
                continue;
            }
            let Some(active) = slot.active.as_ref().filter(|a| !a.alive) else {
                continue;
            };
            slot.exited = if active.recorded_running {
                let unseen = ExitInfo {
                    generation: active.generation,
                    at: now,
                    kind: "not_running",
                    message: "not running; its exit was not journaled (no daemon watched it)"
                        .to_owned(),
                };
                slot.last_exit = Some(unseen.clone());
                Some(unseen)
            } else {
                slot.last_exit.clone()
            };
        }
    }

    /// Adds what only the journal's records tell: restarts and the last exit of every
    /// slot's active generation. `records` are the journal's records, oldest first.
    pub fn add_record_facts<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        for record in records {
            let Some(slot) = self
                .slots
                .iter_mut()
                .find(|s| s.slot == record.slot.as_str())
            else {
                continue;
            };
            let Some(active) = slot.active.as_ref().map(|a| a.generation) else {
                continue;
            };
            match &record.event {
                EventKind::Activated => {
                    // A new active generation starts counting afresh.
                    slot.restarts = 0;
                    slot.last_exit = None;
                }
                EventKind::Relaunched { generation, .. } if generation.0 == active => {
                    slot.restarts += 1;
                }
                EventKind::Stopped { generation, reason } if generation.0 == active => {
                    slot.last_exit = Some(ExitInfo {
                        generation: generation.0,
                        at: record.at,
                        kind: reason.kind.name(),
                        message: reason.message.lines().next().unwrap_or("").to_owned(),
                    });
                }
                _ => {}
            }
            if record.reason.is_some() {
                slot.last_reason.clone_from(&record.reason);
            }
        }
    }
}

/// `status --json`: `{"slots":[…]}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusReport {
    /// Every slot, configured or known to the journal, by name.
    pub slots: Vec<SlotStatus>,
    /// The artifact store's size (absent when it could not be measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::store::StoreUsage>,
}

/// `history --json`: `{"slot":…, "reloads":[…]}`, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryReport {
    /// Slot name.
    pub slot: String,
    /// Reloads, oldest first.
    pub reloads: Vec<ReloadReport>,
    /// Stops, crashes and restarts of the slot's generations since the first reload shown,
    /// oldest first, with who did them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SlotEvent>,
}

/// A slot-level record in `history`: a generation stopped (or crashed) or relaunched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlotEvent {
    /// The record's sequence number.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// `stopped` or `relaunched`.
    pub event: &'static str,
    /// The generation.
    pub generation: u64,
    /// What happened (a stop's or crash's reason).
    pub detail: Option<String>,
    /// Who.
    pub actor: Actor,
    /// The operator's reason, if one was given.
    pub reason: Option<String>,
}

impl SlotEvent {
    /// The slot-level event `record` holds, if it is one.
    pub fn of(record: &Record) -> Option<SlotEvent> {
        let (event, generation, detail) = match &record.event {
            EventKind::Stopped { generation, reason } => {
                ("stopped", generation.0, Some(reason.message.clone()))
            }
            EventKind::Relaunched { generation, .. } => ("relaunched", generation.0, None),
            _ => return None,
        };
        Some(SlotEvent {
            seq: record.seq,
            at: record.at,
            event,
            generation,
            detail,
            actor: record.actor,
            reason: record.reason.clone(),
        })
    }
}

impl HistoryReport {
    /// Keeps the reloads started at or after `since`, then the last `limit` of them.
    pub fn keep(&mut self, limit: Option<usize>, since: Option<DateTime<Utc>>) {
        if let Some(since) = since {
            self.reloads.retain(|r| r.started_at >= since);
        }
        if let Some(limit) = limit {
            let drop = self.reloads.len().saturating_sub(limit);
            self.reloads.drain(..drop);
        }
    }
}
