//! `GET /metrics`: the daemon's metrics, as Prometheus text 0.0.4 or, when the scraper
//! asks for it (`Accept: application/openmetrics-text`), OpenMetrics 1.0.0.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tryswap_build_info` | info (gauge 1) | `version` |
//! | `tryswap_reloads_total` | counter | `slot`, `mode`, `outcome`, `failed_stage` (empty unless rolled back); every slot's `mode`×`outcome` with `failed_stage=""` exists from 0 |
//! | `tryswap_reload_stage_duration_seconds` | histogram | `slot`, `stage` (time from the previous stage) |
//! | `tryswap_restarts_total` | counter | `slot` (keep-alive restarts; from 0) |
//! | `tryswap_unhealthy_restarts_total` | counter | `slot` (active generations stopped to be restarted after failing their liveness probe; from 0) |
//! | `tryswap_reverts_total` | counter | `slot` (bakes that ended reverted; from 0) |
//! | `tryswap_active_generation` | gauge | `slot` |
//! | `tryswap_plugin_up` | gauge | `slot` (1 when the active generation runs) |
//! | `tryswap_slot_failing` | gauge | `slot` (1 when it keeps crashing) |
//! | `tryswap_slot_recovery_failed` | gauge | `slot` (1 when its recovery failed at daemon start) |
//! | `tryswap_slot_healthy` | gauge | `slot` (1 healthy, 0 unhealthy, absent while unknown) |
//! | `tryswap_journal_flushes_total` | counter | — (write-ahead flushes) |
//! | `tryswap_journal_last_seq` | gauge | — |
//! | `tryswap_heap_in_use_bytes` | gauge | `kind` (`arenas`, `mapped`: what the daemon holds allocated from glibc's allocator, [`super::allocator::heap_in_use`]; absent with another allocator) |
//!
//! Reload counts and stage durations are folded from the journal records as they are
//! appended (every reload of the daemon, API, CLI through the socket or config reload);
//! gauges are read from the supervisor and the monitor at scrape time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tryswap::Supervisor;
use tryswap::{KeepAliveState, Monitor, MonitorEvent, MonitorEventKind};
use tryswap_fsm::{EventKind, ReloadId};
use tryswap_journal::Record;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    slot: String,
    mode: String,
    outcome: String,
    failed_stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    slot: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeapLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (with a non-zero q), else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_open = accept.is_some_and(|accept| {
            accept.split(',').any(|part| {
                let mut params = part.split(';').map(str::trim);
                let is_open = params
                    .next()
                    .is_some_and(|t| t.eq_ignore_ascii_case("application/openmetrics-text"));
                let q_zero = params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                is_open && !q_zero
            })
        });
        if wants_open {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// OpenMetrics text as Prometheus text 0.0.4: counters' `# HELP`/`# TYPE` name the
/// `_total` series, info metrics become gauges named `_info`, `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(open: &str) -> String {
    let mut kinds = HashMap::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                kinds.insert(name.to_owned(), kind.to_owned());
            }
        }
    }
    let renamed = |name: &str| match kinds.get(name).map(String::as_str) {
        Some("counter") => format!("{name}_total"),
        Some("info") => format!("{name}_info"),
        _ => name.to_owned(),
    };
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = match kind {
                "info" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every mode and the outcomes it can end in.
const MODE_OUTCOMES: [(&str, &[&str]); 3] = [
    ("activate", &["active", "rolled_back"]),
    ("rollback", &["active", "rolled_back"]),
    ("try", &["dry_run_passed", "rolled_back"]),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: String,
}

fn stage_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The daemon's metrics registry and the state needed to fold records into it.
pub struct Metrics {
    registry: Registry,
    reloads: Family<ReloadLabels, Counter>,
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    restarts: Family<SlotLabels, Counter>,
    unhealthy_restarts: Family<SlotLabels, Counter>,
    reverts: Family<SlotLabels, Counter>,
    active_generation: Family<SlotLabels, Gauge>,
    plugin_up: Family<SlotLabels, Gauge>,
    failing: Family<SlotLabels, Gauge>,
    recovery_failed: Family<SlotLabels, Gauge>,
    healthy: Family<SlotLabels, Gauge>,
    flushes: Counter,
    last_seq: Gauge,
    store_bytes: Gauge,
    heap: Family<HeapLabels, Gauge>,
    /// Reloads in progress: mode and time of their last record.
    open: std::sync::Mutex<HashMap<ReloadId, (&'static str, DateTime<Utc>)>>,
}

impl Metrics {
    /// An empty registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let stages: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage_histogram);
        let restarts = Family::<SlotLabels, Counter>::default();
        let unhealthy_restarts = Family::<SlotLabels, Counter>::default();
        let reverts = Family::<SlotLabels, Counter>::default();
        let active_generation = Family::<SlotLabels, Gauge>::default();
        let plugin_up = Family::<SlotLabels, Gauge>::default();
        let failing = Family::<SlotLabels, Gauge>::default();
        let recovery_failed = Family::<SlotLabels, Gauge>::default();
        let healthy = Family::<SlotLabels, Gauge>::default();
        let flushes = Counter::default();
        let last_seq = Gauge::default();
        let store_bytes = Gauge::default();
        let heap = Family::<HeapLabels, Gauge>::default();
        registry.register(
            "tryswap_heap_in_use_bytes",
            "Bytes the daemon holds allocated from its allocator (arenas, or mapped on their own)",
            heap.clone(),
        );
        registry.register(
            "tryswap_store_bytes",
            "Total size of the artifact store's objects",
            store_bytes.clone(),
        );
        registry.register(
            "tryswap_build",
            "The tryswap version serving these metrics",
            prometheus_client::metrics::info::Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        registry.register(
            "tryswap_reloads",
            "Finished reloads by slot, mode, outcome and failed stage",
            reloads.clone(),
        );
        registry.register(
            "tryswap_reload_stage_duration_seconds",
            "Time a reload spent reaching each stage from the previous one",
            stages.clone(),
        );
        registry.register(
            "tryswap_restarts",
            "Restarts of crashed active generations by the keep-alive",
            restarts.clone(),
        );
        registry.register(
            "tryswap_unhealthy_restarts",
            "Active generations stopped to be restarted after failing their liveness probe",
            unhealthy_restarts.clone(),
        );
        registry.register(
            "tryswap_reverts",
            "Bakes that ended with the marker moved back to the standby",
            reverts.clone(),
        );
        registry.register(
            "tryswap_active_generation",
            "The slot's active generation number",
            active_generation.clone(),
        );
        registry.register(
            "tryswap_plugin_up",
            "1 when the slot's active generation runs",
            plugin_up.clone(),
        );
        registry.register(
            "tryswap_slot_failing",
            "1 when the slot's active generation keeps crashing",
            failing.clone(),
        );
        registry.register(
            "tryswap_slot_recovery_failed",
            "1 when the slot's recovery failed at daemon start (the other slots serve)",
            recovery_failed.clone(),
        );
        registry.register(
            "tryswap_slot_healthy",
            "Periodic probe result of the active generation (1 healthy, 0 unhealthy)",
            healthy.clone(),
        );
        registry.register(
            "tryswap_journal_flushes",
            "Write-ahead journal flushes (after Activated, Stopped and the other write-ahead records)",
            flushes.clone(),
        );
        registry.register(
            "tryswap_journal_last_seq",
            "Sequence number of the journal's last record",
            last_seq.clone(),
        );
        Metrics {
            registry,
            reloads,
            stages,
            restarts,
            unhealthy_restarts,
            reverts,
            active_generation,
            plugin_up,
            failing,
            recovery_failed,
            healthy,
            flushes,
            store_bytes,
            heap,
            last_seq,
            open: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Folds one journal record into the reload counters and stage durations.
    pub fn observe_record(&self, record: &Record) {
        if let EventKind::Reverted { .. } = record.event {
            self.reverts
                .get_or_create(&SlotLabels {
                    slot: record.slot.to_string(),
                })
                .inc();
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let finish = |mode: &str, outcome: &str, failed_stage: &str| {
            self.reloads
                .get_or_create(&ReloadLabels {
                    slot: record.slot.to_string(),
                    mode: mode.to_owned(),
                    outcome: outcome.to_owned(),
                    failed_stage: failed_stage.to_owned(),
                })
                .inc();
        };
        match &record.event {
            EventKind::Staged { mode, .. } => {
                open.insert(record.reload, (mode.name(), record.at));
            }
            EventKind::StagingFailed { mode, .. } => finish(mode.name(), "rolled_back", "staged"),
            EventKind::Launched { .. }
            | EventKind::Validated { .. }
            | EventKind::Probed
            | EventKind::Activated
            | EventKind::ActivatedBaking { .. }
            | EventKind::Confirmed
            | EventKind::Reverted { .. }
            | EventKind::DryRunPassed
            | EventKind::RolledBack { .. } => {
                let Some((mode, last)) = open.get(&record.reload).copied() else {
                    return; // started before the daemon, or a slot-level record
                };
                let seconds = (record.at - last)
                    .num_microseconds()
                    .map_or(0.0, |us| us as f64 / 1e6);
                self.stages
                    .get_or_create(&StageLabels {
                        slot: record.slot.to_string(),
                        stage: record.event.name().to_owned(),
                    })
                    .observe(seconds.max(0.0));
                match &record.event {
                    EventKind::Activated | EventKind::Confirmed => finish(mode, "active", ""),
                    EventKind::Reverted { .. } => finish(mode, "reverted", "baking"),
                    EventKind::DryRunPassed => finish(mode, "dry_run_passed", ""),
                    EventKind::RolledBack { stage, .. } => {
                        finish(mode, "rolled_back", stage.name())
                    }
                    _ => {
                        open.insert(record.reload, (mode, record.at));
                        return;
                    }
                }
                open.remove(&record.reload);
            }
            EventKind::Retired { .. }
            | EventKind::Relaunched { .. }
            | EventKind::Stopped { .. }
            | EventKind::Restarting { .. }
            | EventKind::Adopted { .. } => {}
        }
    }

    /// Counts keep-alive restarts, crash or liveness.
    pub fn observe_monitor(&self, event: &MonitorEvent) {
        let family = match event.kind {
            MonitorEventKind::Restarted { .. } => &self.restarts,
            MonitorEventKind::UnhealthyRestart { .. } => &self.unhealthy_restarts,
            _ => return,
        };
        family
            .get_or_create(&SlotLabels {
                slot: event.slot.clone(),
            })
            .inc();
    }

    /// Refreshes the gauges and renders every metric in `format`.
    pub fn render(
        &self,
        supervisor: &Supervisor,
        monitor: Option<&Monitor>,
        format: Format,
    ) -> String {
        let journal = supervisor.journal();
        let flushes = journal.flush_count();
        let counted = self.flushes.get();
        if flushes > counted {
            self.flushes.inc_by(flushes - counted);
        }
        self.last_seq
            .set(i64::try_from(journal.last_seq()).unwrap_or(i64::MAX));
        if let Some(heap) = super::allocator::heap_in_use() {
            for (kind, bytes) in [("arenas", heap.arenas), ("mapped", heap.mapped)] {
                self.heap
                    .get_or_create(&HeapLabels { kind })
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
        self.active_generation.clear();
        self.plugin_up.clear();
        self.recovery_failed.clear();
        match supervisor.status(None) {
            Ok(status) => {
                if let Some(store) = status.store {
                    self.store_bytes
                        .set(i64::try_from(store.bytes).unwrap_or(i64::MAX));
                }
                for slot in status.slots {
                    let labels = SlotLabels {
                        slot: slot.slot.clone(),
                    };
                    // Counters exist from 0, so rate() and alerts see a slot at once.
                    let _ = self.restarts.get_or_create(&labels);
                    let _ = self.unhealthy_restarts.get_or_create(&labels);
                    let _ = self.reverts.get_or_create(&labels);
                    for (mode, outcomes) in MODE_OUTCOMES {
                        for outcome in outcomes {
                            let _ = self.reloads.get_or_create(&ReloadLabels {
                                slot: slot.slot.clone(),
                                mode: mode.to_owned(),
                                outcome: (*outcome).to_owned(),
                                failed_stage: String::new(),
                            });
                        }
                    }
                    let (generation, up) = slot
                        .active
                        .as_ref()
                        .map_or((0, false), |a| (a.generation, a.alive));
                    self.active_generation
                        .get_or_create(&labels)
                        .set(i64::try_from(generation).unwrap_or(i64::MAX));
                    self.plugin_up.get_or_create(&labels).set(i64::from(up));
                    self.recovery_failed
                        .get_or_create(&labels)
                        .set(i64::from(slot.failed.is_some()));
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: reading slot status"),
        }
        self.failing.clear();
        self.healthy.clear();
        if let Some(monitor) = monitor {
            for health in monitor.health() {
                let labels = SlotLabels {
                    slot: health.slot.clone(),
                };
                self.failing
                    .get_or_create(&labels)
                    .set(i64::from(health.state == KeepAliveState::Failing));
                if let Some(healthy) = health.healthy {
                    self.healthy.get_or_create(&labels).set(i64::from(healthy));
                }
            }
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        match format {
            Format::OpenMetrics => text,
            Format::Prometheus => to_prometheus_text(&text),
        }
    }
}
