//! Human-readable and JSON output.

use std::fmt::Write as _;
use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tryswap::report::{HistoryReport, Outcome, ReloadReport, StatusReport};
use tryswap::supervisor::config_reload::{ConfigOutcome, ConfigReloadReport};
use tryswap::supervisor::recovery::RecoveryReport;
use tryswap::supervisor::Supervisor;
use tryswap_fsm::EventKind;
use tryswap_journal::Record;

use crate::{CliError, EXIT_ERROR};

/// Prints `value` as one line of JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string(value)
        .map_err(|e| CliError::new(EXIT_ERROR, format!("encoding JSON output: {e}")))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| CliError::new(EXIT_ERROR, format!("writing output: {e}")))
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// One line per journal record, as the reload goes.
pub struct Progress {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Prints what is still queued, then stops.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The detail text of a journal event, as progress lines and `tryswap events` show it.
pub(crate) fn detail(kind: &EventKind) -> String {
    match kind {
        EventKind::StagingFailed { reason, .. } => format!("staging failed: {}", reason.message),
        EventKind::Staged {
            generation,
            artifact,
            previous,
            ..
        } => {
            let was = previous.map_or_else(|| "none active".to_owned(), |g| format!("active: {g}"));
            format!(
                "generation {generation}, sha256 {}… ({was})",
                short(&artifact.sha256.to_string())
            )
        }
        EventKind::Launched { process, .. } => process
            .as_ref()
            .map_or_else(|| "in-process".to_owned(), |p| format!("pid {}", p.pid)),
        EventKind::Validated { endpoint } => endpoint.as_ref().map_or_else(
            || "started".to_owned(),
            |e| {
                format!(
                    "{} {} {} v{}",
                    e.network, e.address, e.protocol, e.app_version
                )
            },
        ),
        EventKind::Probed => "healthy".to_owned(),
        EventKind::Activated => "active marker moved".to_owned(),
        EventKind::RolledBack { stage, reason } => {
            let first = reason.message.lines().next().unwrap_or("");
            format!("failed at {stage} ({}): {first}", reason.kind.name())
        }
        EventKind::DryRunPassed => "candidate discarded".to_owned(),
        EventKind::Retired { generation } => format!("generation {generation} drained and stopped"),
        EventKind::Relaunched { generation, .. } => format!("generation {generation} relaunched"),
        EventKind::Stopped { generation, .. } => format!("generation {generation} stopped"),
        EventKind::ActivatedBaking { until_ms } => {
            let until = i64::try_from(*until_ms)
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .map_or_else(|| until_ms.to_string(), |t| t.to_rfc3339());
            format!("active marker moved provisionally; baking until {until}")
        }
        EventKind::Confirmed => "bake passed; candidate confirmed".to_owned(),
        EventKind::Reverted { reason } => {
            let first = reason.message.lines().next().unwrap_or("");
            format!("reverted to the standby ({}): {first}", reason.kind.name())
        }
    }
}

/// One progress line (with its newline); `last` is the time of the previous line.
pub(crate) fn progress_text(record: &Record, last: &mut Option<DateTime<Utc>>) -> String {
    let elapsed = last
        .and_then(|l| (record.at - l).num_microseconds())
        .map_or(0.0, |us| us as f64 / 1000.0);
    *last = Some(record.at);
    format!(
        "  {:<15} {:>9.1} ms  {}\n",
        record.event.name(),
        elapsed,
        detail(&record.event)
    )
}

fn progress_line(record: &Record, last: &mut Option<DateTime<Utc>>) {
    print!("{}", progress_text(record, last));
}

/// The deadline of a bake that `record` starts (`Some`) or ends (`None`); other records
/// leave `baking` as it is.
fn bake_deadline(record: &Record, baking: &mut Option<DateTime<Utc>>) {
    match &record.event {
        EventKind::ActivatedBaking { until_ms } => {
            *baking = i64::try_from(*until_ms)
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_millis);
        }
        EventKind::Confirmed | EventKind::Reverted { .. } => *baking = None,
        _ => {}
    }
}

/// Starts printing a progress line for every record the supervisor appends, and a line
/// with the time left every second while a bake runs.
pub fn progress(mut rx: broadcast::Receiver<Record>) -> Progress {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut last = Some(Utc::now());
        let mut baking: Option<DateTime<Utc>> = None;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                r = rx.recv() => match r {
                    Ok(record) => {
                        progress_line(&record, &mut last);
                        bake_deadline(&record, &mut baking);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = &mut stopped => {
                    while let Ok(record) = rx.try_recv() {
                        progress_line(&record, &mut last);
                    }
                    break;
                }
                _ = tick.tick(), if baking.is_some() => {
                    if let Some(until) = baking {
                        let left = (until - Utc::now()).num_milliseconds().max(0);
                        println!("  {:<15} {:>9.1} s left", "baking", left as f64 / 1000.0);
                    }
                }
            }
        }
    });
    Progress { stop, task }
}

/// The closing line of a reload.
pub fn reload_summary(report: &ReloadReport, supervisor: &Supervisor) {
    let _ = supervisor;
    print!("{}", reload_summary_text(report));
}

/// The closing line(s) of a reload, as [`reload_summary`] prints them.
pub fn reload_summary_text(report: &ReloadReport) -> String {
    let mut out = String::new();
    let slot = &report.slot;
    let gen = report.candidate.as_ref().map(|c| c.generation);
    let pid = report
        .candidate
        .as_ref()
        .and_then(|c| c.pid)
        .map_or_else(String::new, |p| format!(" (pid {p})"));
    let kept = report.previous.as_ref().map_or_else(
        || "the slot stays without an active generation".to_owned(),
        |p| {
            let pid = p.pid.map_or_else(String::new, |pid| format!(", pid {pid}"));
            format!("generation {}{pid} stays active", p.generation)
        },
    );
    match report.outcome {
        Outcome::Active => {
            let retired = if report.retired.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = report.retired.iter().map(u64::to_string).collect();
                format!("; retired generation {}", list.join(", "))
            };
            let _ = writeln!(
                out,
                "{slot}: generation {} is active{pid} after {:.1} ms{retired}",
                gen.unwrap_or_default(),
                report.duration_ms
            );
        }
        Outcome::DryRunPassed => {
            let _ = writeln!(
                out,
                "{slot}: dry run passed for generation {} in {:.1} ms; nothing changed ({kept})",
                gen.unwrap_or_default(),
                report.duration_ms
            );
        }
        Outcome::Reverted => {
            let _ = writeln!(
                out,
                "{slot}: generation {} reverted during its bake; {kept}",
                gen.unwrap_or_default()
            );
            if let Some(error) = &report.error {
                for line in error.lines() {
                    let _ = writeln!(out, "  | {line}");
                }
            }
        }
        Outcome::InProgress if report.bake.is_some() => {
            let until = report.bake.as_ref().map(|b| b.until.to_rfc3339());
            let _ = writeln!(
                out,
                "{slot}: generation {} is active, baking until {}",
                gen.unwrap_or_default(),
                until.unwrap_or_default()
            );
        }
        Outcome::RolledBack | Outcome::InProgress => {
            let stage = report.failed_stage.unwrap_or("?");
            let _ = writeln!(out, "{slot}: candidate rejected at {stage}; {kept}");
            if let Some(error) = &report.error {
                for line in error.lines() {
                    let _ = writeln!(out, "  | {line}");
                }
            }
        }
    }
    out
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `tryswap status`.
pub fn status(report: &StatusReport) {
    print!("{}", status_text(report));
}

/// `tryswap status` as text.
pub fn status_text(report: &StatusReport) -> String {
    let mut out = String::new();
    if report.slots.is_empty() {
        let _ = writeln!(out, "no slots (configure [[slot]] tables in tryswap.toml)");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<16} {:>4} {:>8} {:<6} {:<28} {:<20} IN-FLIGHT",
        "SLOT", "GEN", "PID", "ALIVE", "ADDRESS", "SINCE"
    );
    for s in &report.slots {
        let a = s.active.as_ref();
        let in_flight = s.in_flight.as_ref().map_or_else(
            || "-".to_owned(),
            |f| match (&f.bake, &f.standby) {
                (Some(bake), standby) => format!(
                    "{} baking until {}, standby {} ({})",
                    f.mode,
                    bake.until.format("%H:%M:%SZ"),
                    standby.as_ref().map_or_else(
                        || "none".to_owned(),
                        |s| format!("g{} pid {}", s.generation, or_dash(s.pid))
                    ),
                    f.reload_id
                ),
                (None, _) => format!("{} {} ({})", f.mode, f.state, f.reload_id),
            },
        );
        let _ = writeln!(
            out,
            "{:<16} {:>4} {:>8} {:<6} {:<28} {:<20} {}",
            s.slot,
            or_dash(a.map(|a| a.generation)),
            or_dash(a.and_then(|a| a.pid)),
            a.map_or("-", |a| if a.alive { "yes" } else { "no" }),
            or_dash(a.and_then(|a| a.address.clone())),
            or_dash(a.and_then(|a| a.since.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ")))),
            in_flight
        );
    }
    out
}

/// `tryswap history SLOT`.
pub fn history(report: &HistoryReport) {
    print!("{}", history_text(report));
}

/// `tryswap history SLOT` as text.
pub fn history_text(report: &HistoryReport) -> String {
    let mut out = String::new();
    if report.reloads.is_empty() {
        let _ = writeln!(out, "{}: no reloads", report.slot);
        return out;
    }
    let _ = writeln!(
        out,
        "{:<36} {:<8} {:<14} {:>4} {:<10} {:>10}  ERROR",
        "RELOAD", "MODE", "OUTCOME", "GEN", "FAILED AT", "DURATION"
    );
    for r in &report.reloads {
        let outcome = serde_json::to_value(r.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let error = r
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .unwrap_or("");
        let _ = writeln!(
            out,
            "{:<36} {:<8} {:<14} {:>4} {:<10} {:>7.1} ms  {}",
            r.reload_id,
            r.mode,
            outcome,
            or_dash(r.candidate.as_ref().map(|c| c.generation)),
            r.failed_stage.unwrap_or("-"),
            r.duration_ms,
            error
        );
    }
    out
}

/// `tryswap recover`.
pub fn recovery(report: &RecoveryReport) {
    print!("{}", recovery_text(report));
}

/// `tryswap recover` as text.
pub fn recovery_text(report: &RecoveryReport) -> String {
    let mut out = String::new();
    if report.actions.is_empty() {
        let _ = writeln!(out, "recovery: nothing to do");
        return out;
    }
    for action in &report.actions {
        let _ = writeln!(out, "recovery: {action}");
    }
    out
}

/// `tryswap start SLOT` as text.
pub fn started_text(slot: &str, generation: u64) -> String {
    format!("{slot}: generation {generation} is running\n")
}

/// `tryswap stop SLOT` as text.
pub fn stopped_text(slot: &str, stopped: Option<u64>) -> String {
    match stopped {
        Some(g) => format!("{slot}: generation {g} stopped (still the active marker; `tryswap start {slot}` relaunches it)\n"),
        None => format!("{slot}: nothing to stop\n"),
    }
}

/// `tryswap stop SLOT --json`: `{"slot":…, "stopped_generation":…}`.
pub fn stopped_json(slot: &str, stopped: Option<u64>) -> serde_json::Value {
    serde_json::json!({
        "slot": slot,
        "stopped_generation": stopped,
    })
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// `tryswap reload-config` as text.
pub fn config_reload_text(report: &ConfigReloadReport) -> String {
    let mut out = String::new();
    let what = format!(
        "added {}; removed {}; changed {}",
        list_or_none(&report.added),
        list_or_none(&report.removed),
        list_or_none(&report.changed)
    );
    let _ = match report.outcome {
        ConfigOutcome::Unchanged => writeln!(out, "config reload: nothing changed"),
        ConfigOutcome::Applied => writeln!(out, "config reload applied: {what}"),
        ConfigOutcome::DryRunPassed => writeln!(
            out,
            "config reload dry run passed: would have {what}; nothing changed"
        ),
        ConfigOutcome::RolledBack => writeln!(
            out,
            "config reload rolled back: every slot stays as it was ({what} were asked)"
        ),
    };
    for r in &report.reloads {
        let outcome = serde_json::to_value(r.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let failed = r
            .failed_stage
            .map_or_else(String::new, |s| format!(" at {s}"));
        let _ = writeln!(
            out,
            "  {}: generation {} {outcome}{failed}",
            r.slot,
            or_dash(r.candidate.as_ref().map(|c| c.generation)),
        );
    }
    if let Some(error) = &report.error {
        for line in error.lines() {
            let _ = writeln!(out, "  | {line}");
        }
    }
    if !report.restart_required.is_empty() {
        let _ = writeln!(
            out,
            "  needs a daemon restart to take effect: {}",
            report.restart_required.join(", ")
        );
    }
    out
}
