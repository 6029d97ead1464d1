//! Human-readable and JSON output.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use comfy_table::{CellAlignment, ContentArrangement, Table};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tryswap::config::SlotConfig;
use tryswap::report::{HistoryReport, Outcome, ReloadReport, StatusReport};
use tryswap::RecoveryReport;
use tryswap::{ConfigOutcome, ConfigReloadReport};
use tryswap_fsm::EventKind;
use tryswap_journal::Record;

use crate::{CliError, EXIT_ERROR};

/// The version of every JSON document and exported record (`"schema": 1`).
pub const SCHEMA: u32 = 1;

/// A JSON document: `{"schema": 1, …the value's keys}`.
#[derive(Serialize)]
pub struct Versioned<'a, T: Serialize> {
    schema: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// `value` (which must serialize as an object) as one line of JSON with `"schema": 1`.
pub fn json_text<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Versioned {
        schema: SCHEMA,
        body: value,
    })
}

/// Prints `value` as one line of JSON (with `"schema": 1`) on stdout.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = json_text(value)
        .map_err(|e| CliError::new(EXIT_ERROR, format!("encoding JSON output: {e}")))?;
    out(&format!("{text}\n"))
}

/// A journal record as one line of JSON: an exported record, the `data` of a `record`
/// event (which adds the slot's stable `endpoint` on the records that move the active
/// marker). Encoded once, the endpoint with it.
pub fn record_json(record: &Record, endpoint: Option<&str>) -> Result<String, CliError> {
    json_text(&RecordLine { record, endpoint })
        .map_err(|e| CliError::new(EXIT_ERROR, format!("encoding record {}: {e}", record.seq)))
}

/// A record's JSON keys, then `endpoint` when there is one.
#[derive(Serialize)]
struct RecordLine<'a> {
    #[serde(flatten)]
    record: &'a Record,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
}

/// The error of a failed write to stdout: a closed pipe (`| head`) ends the command quietly
/// with exit 0, as rg and cargo do.
pub fn write_error(e: &std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::pipe_closed()
    } else {
        CliError::new(EXIT_ERROR, format!("writing output: {e}"))
    }
}

/// Writes `text` to stdout and flushes it (lines appear as they happen, even in a pipe).
pub fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| write_error(&e))
}

/// [`out`] with a newline added when `text` lacks one.
pub fn out_line(text: &str) -> Result<(), CliError> {
    if text.ends_with('\n') {
        out(text)
    } else {
        out(&format!("{text}\n"))
    }
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

/// The detail text of a journal event, as `tryswap events` and `journal show` show it.
pub(crate) fn detail(kind: &EventKind) -> String {
    match kind {
        EventKind::Stopped { generation, reason } => {
            let first = reason.message.lines().next().unwrap_or("");
            format!(
                "generation {generation} stopped ({}): {first}",
                reason.kind.name()
            )
        }
        EventKind::RolledBack { stage, reason } => {
            let first = reason.message.lines().next().unwrap_or("");
            format!("failed at {stage} ({}): {first}", reason.kind.name())
        }
        other => stage_detail(other),
    }
}

/// The detail of a progress line: like [`detail`], but a failure's message is left to the
/// closing summary, which prints it once, whole.
fn stage_detail(kind: &EventKind) -> String {
    match kind {
        EventKind::StagingFailed { .. } => "staging failed".to_owned(),
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
            format!("failed at {stage} ({})", reason.kind.name())
        }
        EventKind::DryRunPassed => "candidate discarded".to_owned(),
        EventKind::Retired { generation } => format!("generation {generation} drained and stopped"),
        EventKind::Relaunched { generation, .. } => format!("generation {generation} relaunched"),
        EventKind::Stopped { generation, .. } => format!("generation {generation} stopped"),
        EventKind::Restarting { generation } => {
            format!("generation {generation} is being restarted by keep-alive")
        }
        EventKind::ActivatedBaking { until_ms } => {
            let until = i64::try_from(*until_ms)
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .map_or_else(|| until_ms.to_string(), |t| t.to_rfc3339());
            format!("active marker moved provisionally; baking until {until}")
        }
        EventKind::Confirmed => "bake passed; candidate confirmed".to_owned(),
        EventKind::Adopted {
            generation,
            process,
            reason,
            ..
        } => {
            let pid = process
                .as_ref()
                .map_or_else(String::new, |p| format!(" (pid {})", p.pid));
            let first = reason.message.lines().next().unwrap_or("");
            format!("generation {generation}{pid} adopted as the active generation: {first}")
        }
        EventKind::Reverted { reason } => {
            let first = reason.message.lines().next().unwrap_or("");
            format!("reverted to the standby ({}): {first}", reason.kind.name())
        }
    }
}

/// How often a long stage prints a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Progress lines of one reload: a line per journal record as it is appended, and inside
/// a long stage a heartbeat (`waiting for handshake 3.0 s / 10 s`), so a slow plugin
/// never leaves the terminal silent.
pub struct ProgressPrinter {
    last: Option<DateTime<Utc>>,
    stage_since: Instant,
    last_beat: Instant,
    waiting: Option<(&'static str, Option<Duration>)>,
    start_timeout: Option<Duration>,
    retire_timeout: Option<Duration>,
    /// On a terminal the heartbeat rewrites one line; in a pipe it prints lines.
    tty: bool,
    beat_shown: bool,
}

impl ProgressPrinter {
    /// A printer for a reload of a slot configured as `slot` (its timeouts bound the
    /// heartbeat), starting now.
    pub fn new(slot: Option<&SlotConfig>) -> Self {
        let now = Instant::now();
        ProgressPrinter {
            last: Some(Utc::now()),
            stage_since: now,
            last_beat: now,
            waiting: Some(("staging the artifact", None)),
            start_timeout: slot.map(|s| s.start_timeout),
            retire_timeout: slot.map(|s| s.drain_timeout + s.stop_timeout),
            tty: std::io::stdout().is_terminal(),
            beat_shown: false,
        }
    }

    fn clear_beat(&mut self) -> &'static str {
        if std::mem::take(&mut self.beat_shown) && self.tty {
            "\r\x1b[2K"
        } else {
            ""
        }
    }

    /// The line of a record (with its newline), after clearing a heartbeat.
    pub fn record(&mut self, record: &Record) -> String {
        let clear = self.clear_beat();
        self.stage_since = Instant::now();
        self.last_beat = self.stage_since;
        self.waiting = match &record.event {
            EventKind::Staged { .. } => Some(("launching", self.start_timeout)),
            EventKind::Launched { .. } => Some(("waiting for handshake", self.start_timeout)),
            EventKind::Validated { .. } => Some(("waiting for the probe", self.start_timeout)),
            EventKind::Probed => Some(("moving the active marker", None)),
            EventKind::Activated => Some(("retiring the previous generation", self.retire_timeout)),
            _ => None,
        };
        format!("{clear}{}", progress_text(record, &mut self.last))
    }

    /// A heartbeat when the current stage has lasted a while, else `None`.
    pub fn heartbeat(&mut self) -> Option<String> {
        let (what, limit) = self.waiting?;
        let now = Instant::now();
        if now.duration_since(self.stage_since) < HEARTBEAT
            || now.duration_since(self.last_beat) < HEARTBEAT
        {
            return None;
        }
        self.last_beat = now;
        let waited = now.duration_since(self.stage_since).as_secs_f64();
        let limit = limit.map_or_else(String::new, |l| {
            format!(" / {}", humantime::format_duration(l))
        });
        let text = format!("  … {what} {waited:.1} s{limit}");
        let clear = self.clear_beat();
        self.beat_shown = true;
        Some(if self.tty {
            format!("{clear}{text}")
        } else {
            format!("{text}\n")
        })
    }

    /// Clears a heartbeat left on the terminal line.
    pub fn done(&mut self) -> String {
        let clear = self.clear_beat();
        self.waiting = None;
        clear.to_owned()
    }
}

/// One progress line (with its newline); `last` is the time of the previous line.
pub(crate) fn progress_text(record: &Record, last: &mut Option<DateTime<Utc>>) -> String {
    let elapsed = last
        .and_then(|l| (record.at - l).num_microseconds())
        .map_or(0.0, |us| us as f64 / 1000.0)
        .max(0.0);
    *last = Some(record.at);
    format!(
        "  {:<15} {:>9.1} ms  {}\n",
        record.event.name(),
        elapsed,
        stage_detail(&record.event)
    )
}

/// The deadline of a bake that `record` starts (`Some`) or ends (`None`); other records
/// leave `baking` as it is.
pub(crate) fn bake_deadline(record: &Record, baking: &mut Option<DateTime<Utc>>) {
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

/// The countdown line of a bake ending at `until` (with its newline).
pub(crate) fn bake_left_line(until: DateTime<Utc>) -> String {
    let left = (until - Utc::now()).num_milliseconds().max(0);
    format!("  {:<15} {:>9.1} s left\n", "baking", left as f64 / 1000.0)
}

/// Starts printing a progress line for every record the supervisor appends, and a
/// heartbeat inside long stages, and
/// the time left every second while a bake runs. Output errors (a closed pipe) stop it quietly; the
/// command's own result reports them.
pub fn progress(mut rx: broadcast::Receiver<Record>, slot: Option<&SlotConfig>) -> Progress {
    let (stop, mut stopped) = oneshot::channel();
    let mut printer = ProgressPrinter::new(slot);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut baking: Option<DateTime<Utc>> = None;
        let mut bake_line = std::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                r = rx.recv() => match r {
                    Ok(record) => {
                        if out(&printer.record(&record)).is_err() {
                            break;
                        }
                        bake_deadline(&record, &mut baking);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = &mut stopped => {
                    while let Ok(record) = rx.try_recv() {
                        let _ = out(&printer.record(&record));
                    }
                    break;
                }
                _ = tick.tick() => {
                    if let Some(until) = baking.filter(|_| bake_line.elapsed().as_secs() >= 1) {
                        bake_line = std::time::Instant::now();
                        if out(&bake_left_line(until)).is_err() {
                            break;
                        }
                    } else if let Some(beat) = printer.heartbeat() {
                        if out(&beat).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        let _ = out(&printer.done());
    });
    Progress { stop, task }
}

/// The closing line of a reload.
pub fn reload_summary(report: &ReloadReport) -> Result<(), CliError> {
    out(&reload_summary_text(report))
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

/// A table as kubectl prints one: a header row, columns two spaces apart, as wide as
/// their longest cell (long slot names never shift the other columns out of line).
fn table(header: &[&str], rows: Vec<Vec<String>>, right: &[usize]) -> String {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = String::new();
    for line in table.lines() {
        let _ = writeln!(text, "{}", line.trim_end());
    }
    text
}

/// A duration the way `kubectl get` shows ages: `45s`, `12m`, `3h4m`, `2d3h`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// `tryswap status`.
pub fn status(report: &StatusReport) -> Result<(), CliError> {
    out(&status_text(report))
}

/// `tryswap status` as text.
pub fn status_text(report: &StatusReport) -> String {
    if report.slots.is_empty() {
        return "no slots (configure [[slot]] tables in tryswap.toml)\n".to_owned();
    }
    let now = Utc::now();
    let rows = report
        .slots
        .iter()
        .map(|s| {
            let a = s.active.as_ref();
            let in_flight = s.in_flight.as_ref().map_or_else(
                || "-".to_owned(),
                |f| match (&f.bake, &f.standby) {
                    (Some(bake), standby) => format!(
                        "{} baking until {} ({} s left), standby {} ({})",
                        f.mode,
                        bake.until.format("%H:%M:%SZ"),
                        (bake.until - now).num_seconds().max(0),
                        standby.as_ref().map_or_else(
                            || "none".to_owned(),
                            |s| format!("g{} pid {}", s.generation, or_dash(s.pid))
                        ),
                        f.reload_id
                    ),
                    (None, _) => format!("{} {} ({})", f.mode, f.state, f.reload_id),
                },
            );
            let last_exit = s.last_exit.as_ref().map_or_else(
                || "-".to_owned(),
                |e| {
                    if e.kind == "not_running" {
                        "not running (exit not journaled)".to_owned()
                    } else {
                        format!(
                            "{} ago: {}",
                            age((now - e.at).num_seconds()),
                            e.message.chars().take(60).collect::<String>()
                        )
                    }
                },
            );
            vec![
                s.slot.clone(),
                or_dash(a.map(|a| a.generation)),
                or_dash(a.and_then(|a| a.pid)),
                or_dash(s.health.clone()),
                a.map_or_else(|| "-".to_owned(), |_| s.restarts.to_string()),
                or_dash(a.and_then(|a| a.since.map(|t| age((now - t).num_seconds())))),
                or_dash(a.and_then(|a| a.address.clone())),
                in_flight,
                last_exit,
            ]
        })
        .collect();
    let mut text = table(
        &[
            "SLOT",
            "GEN",
            "PID",
            "HEALTH",
            "RESTARTS",
            "AGE",
            "ADDRESS",
            "IN-FLIGHT",
            "LAST EXIT",
        ],
        rows,
        &[1, 2, 4],
    );
    for s in &report.slots {
        if let Some(reason) = &s.last_reason {
            text.push_str(&format!("{}: last reason: {reason}\n", s.slot));
        }
        if let (Some(active), Some(_)) = (&s.active, &s.exited) {
            text.push_str(&format!(
                "{}: generation {} exited; `tryswap start {}` (or `recover`, `serve`) brings it \
                 back\n",
                s.slot, active.generation, s.slot
            ));
        }
    }
    text + &endpoints_text(report)
}

/// One line per slot with a stable endpoint: where callers dial, and its leases.
fn endpoints_text(report: &StatusReport) -> String {
    let mut text = String::new();
    for s in &report.slots {
        if let Some(endpoint) = &s.endpoint {
            text.push_str(&format!("{} endpoint: {endpoint}", s.slot));
            if !s.leases.is_empty() {
                text.push_str(&format!(" ({} lease(s))", s.leases.len()));
            }
            text.push('\n');
        }
    }
    text
}

/// A reload's outcome as history shows it: `rollback → generation N` for rollbacks.
fn outcome_text(r: &ReloadReport) -> String {
    let outcome = serde_json::to_value(r.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match r.rollback_to {
        Some(to) => format!("{outcome} (rollback → generation {to})"),
        None => outcome,
    }
}

/// `tryswap history SLOT` as text.
pub fn history_text(report: &HistoryReport) -> String {
    if report.reloads.is_empty() {
        return format!("{}: no reloads\n", report.slot);
    }
    let rows = report
        .reloads
        .iter()
        .map(|r| {
            let error = r
                .error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("");
            vec![
                r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.reload_id.to_string(),
                r.mode.to_owned(),
                outcome_text(r),
                or_dash(r.candidate.as_ref().map(|c| c.generation)),
                r.failed_stage.unwrap_or("-").to_owned(),
                format!("{:.1} ms", r.duration_ms),
                r.actor.as_ref().map_or_else(|| "-".to_owned(), actor_text),
                or_dash(r.reason.clone()),
                error.to_owned(),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "WHEN (UTC)",
            "RELOAD",
            "MODE",
            "OUTCOME",
            "GEN",
            "FAILED AT",
            "DURATION",
            "BY",
            "REASON",
            "ERROR",
        ],
        rows,
        &[4, 6],
    );
    if !report.events.is_empty() {
        text.push_str("\nstops and restarts:\n");
        for e in &report.events {
            text.push_str(&format!(
                "  {}  {} generation {} by {}{}{}\n",
                e.at.format("%Y-%m-%d %H:%M:%S"),
                e.event,
                e.generation,
                actor_text(&e.actor),
                e.detail
                    .as_deref()
                    .and_then(|d| d.lines().next())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default(),
                e.reason
                    .as_deref()
                    .map(|r| format!(" (reason: {r})"))
                    .unwrap_or_default(),
            ));
        }
    }
    text
}

/// Who wrote a record, in a few words: `cli uid 1000 pid 42`, `api uid 0`, `keepalive`.
pub fn actor_text(actor: &tryswap_journal::Actor) -> String {
    let kind = serde_json::to_value(actor.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut text = kind;
    if let Some(uid) = actor.uid {
        text.push_str(&format!(" uid {uid}"));
    }
    if let Some(pid) = actor.pid {
        text.push_str(&format!(" pid {pid}"));
    }
    text
}

/// Width of the time axis of `history --timeline`.
const TIMELINE_WIDTH: usize = 50;

/// `tryswap history SLOT --timeline`: a Gantt chart of the reloads, oldest first, each
/// bar on one shared axis of time since its reload began, a segment per stage (`s` staged,
/// `l` launched, `v` validated (handshake), `p` probed, `a` active), then how it ended:
/// `✔` active, `✘` rolled back, `○` dry run passed. Crashes (`✝`) and restarts (`↻`) of the
/// slot's generations (`marks`) are rows at their place in time.
pub fn timeline_text(report: &HistoryReport, marks: &[(DateTime<Utc>, char, String)]) -> String {
    let mut out = String::new();
    if report.reloads.is_empty() {
        return format!("{}: no reloads\n", report.slot);
    }
    let span_ms = report
        .reloads
        .iter()
        .map(|r| r.duration_ms)
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let col = |ms: f64| -> usize {
        (((ms / span_ms) * (TIMELINE_WIDTH - 1) as f64).round() as usize).min(TIMELINE_WIDTH - 1)
    };
    let _ = writeln!(
        out,
        "{}: {} reload(s); axis: time since each reload began, 0 to {span_ms:.1} ms",
        report.slot,
        report.reloads.len()
    );
    let _ = writeln!(
        out,
        "{:<19} {:<16} |0{:>width$}|",
        "WHEN (UTC)",
        "RELOAD",
        format!("{span_ms:.1} ms"),
        width = TIMELINE_WIDTH - 1
    );
    let mut marks = marks.iter().peekable();
    for r in &report.reloads {
        while let Some((at, mark, what)) = marks.next_if(|m| m.0 < r.started_at) {
            let _ = writeln!(out, "{}  {mark} {what}", at.format("%Y-%m-%d %H:%M:%S"));
        }
        let mut bar = [' '; TIMELINE_WIDTH];
        let mut from = 0;
        for stage in &r.stages {
            let ms = (stage.at - r.started_at)
                .num_microseconds()
                .map_or(0.0, |us| us as f64 / 1000.0)
                .max(0.0);
            let to = col(ms);
            let glyph = match stage.state.as_str() {
                "staged" => 's',
                "launched" => 'l',
                "validated" => 'v',
                "probed" => 'p',
                "active" => 'a',
                _ => '=',
            };
            for cell in bar.iter_mut().take(to + 1).skip(from + 1) {
                *cell = glyph;
            }
            bar[from] = if bar[from] == ' ' { glyph } else { bar[from] };
            from = to;
        }
        bar[from] = match r.outcome {
            Outcome::Active => '✔',
            Outcome::RolledBack => '✘',
            Outcome::Reverted => '↶',
            Outcome::DryRunPassed => '○',
            Outcome::InProgress => '…',
        };
        let gen = or_dash(r.candidate.as_ref().map(|c| c.generation));
        let label = format!("{} gen {gen}", r.mode);
        let what = match (r.outcome, r.failed_stage) {
            (Outcome::RolledBack, Some(stage)) => format!("rolled back at {stage}"),
            (Outcome::Reverted, _) => "reverted during the bake".to_owned(),
            _ => outcome_text(r),
        };
        let _ = writeln!(
            out,
            "{} {label:<16} |{}| {:>8.1} ms  {what}",
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            bar.iter().collect::<String>(),
            r.duration_ms
        );
    }
    for (at, mark, what) in marks {
        let _ = writeln!(out, "{}  {mark} {what}", at.format("%Y-%m-%d %H:%M:%S"));
    }
    let _ = writeln!(
        out,
        "legend: s staged  l launched  v validated  p probed  a active  ✔ active  ✘ rolled back  \
         ○ dry run passed  ✝ crash or stop  ↻ restart"
    );
    out
}

/// `tryswap recover`.
pub fn recovery(report: &RecoveryReport) -> Result<(), CliError> {
    out(&recovery_text(report))
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

/// `tryswap store gc` as text.
pub fn store_gc_text(report: &tryswap::GcReport) -> String {
    format!(
        "store: removed {} artifact(s) no kept generation references ({} bytes freed); kept {} ({} bytes)\n",
        report.removed.len(),
        report.freed_bytes,
        report.kept,
        report.kept_bytes
    )
}

/// `tryswap stop SLOT` as text.
pub fn stopped_text(slot: &str, stopped: Option<u64>) -> String {
    match stopped {
        Some(g) => format!("{slot}: generation {g} stopped (still the active marker; `tryswap start {slot}` relaunches it)\n"),
        None => format!("{slot}: nothing to stop\n"),
    }
}

/// `tryswap stop SLOT` on a damaged journal (`damage`: why it does not open): what was
/// stopped, that nothing is recorded, and what to do next.
pub fn unrecorded_stop_text(stop: &tryswap::UnrecordedStop, damage: &str) -> String {
    let slot = &stop.slot;
    let mut text = match stop.stopped.len() {
        0 => format!("{slot}: no process of the slot runs; nothing stopped\n"),
        n => {
            let processes: Vec<String> = stop
                .stopped
                .iter()
                .map(|p| {
                    let generation = p.generation.map_or_else(
                        || "generation unknown".to_owned(),
                        |g| format!("generation {g}"),
                    );
                    format!(
                        "pid {} ({generation}, reload {}, found by {})",
                        p.pid,
                        p.reload_id,
                        p.found_by.replace('_', " ")
                    )
                })
                .collect();
            let s = if n == 1 { "" } else { "es" };
            format!(
                "{slot}: stopped {n} process{s} without the journal: {}\n",
                processes.join(", ")
            )
        }
    };
    if !stop.unattributed_pids.is_empty() {
        text.push_str(&format!(
            "left alone: pids {:?} carry a reload tag but nothing says which slot they serve\n",
            stop.unattributed_pids
        ));
    }
    text.push_str(&format!(
        "NOT RECORDED: the journal is damaged, so this stop is in no journal: {damage}\n\
         next: `tryswap journal export --salvage > salvaged.jsonl` keeps the {} readable \
         records; `tryswap journal verify` says what is damaged; `tryswap journal rebuild` \
         when only sled's files are, else restore the journal from a backup. A restored \
         journal does not know of this stop: run `tryswap stop {slot}` again once it opens \
         (`tryswap recover --adopt` takes over processes it does not know)\n",
        stop.readable_records
    ));
    text
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

#[cfg(test)]
mod tests {
    use super::*;
    use tryswap_fsm::{ReloadId, SlotName};
    use tryswap_journal::{Actor, ActorKind, RECORD_FORMAT};

    #[test]
    fn a_record_line_is_the_record_with_schema_and_the_endpoint_when_given() {
        let record = Record {
            format: RECORD_FORMAT,
            seq: 7,
            at: DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("a time"),
            reload: ReloadId::from_u128(9),
            slot: SlotName::new("demo").expect("a slot name"),
            event: EventKind::Activated,
            prev_chain: 3,
            actor: Actor::of(ActorKind::Recovery),
            reason: None,
        };
        let plain: serde_json::Value =
            serde_json::from_str(&record_json(&record, None).expect("encoded")).expect("JSON");
        let mut expected = serde_json::to_value(&record).expect("a value");
        expected["schema"] = SCHEMA.into();
        assert_eq!(plain, expected);
        let with: serde_json::Value =
            serde_json::from_str(&record_json(&record, Some("/run/demo.sock")).expect("encoded"))
                .expect("JSON");
        expected["endpoint"] = "/run/demo.sock".into();
        assert_eq!(with, expected);
    }
}
