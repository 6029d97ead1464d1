//! What an operator reads: `status` with the journal's and the keep-alive's facts,
//! `history` (filtered, or as a timeline), `logs`, the already-active check, shell
//! completions and the man page. Shared by the direct path and the daemon's routes, so the
//! output is the same either way.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::CommandFactory;
use serde::Serialize;
use tryswap::report::{HistoryReport, SlotEvent, StatusReport};
use tryswap::{KeepAliveState, Monitor};
use tryswap::{Supervisor, SupervisorError};
use tryswap_fsm::{EventKind, SlotName};
use tryswap_journal::{JournalStore, Record};

use crate::args::Cli;
use crate::{render, CliError, Context, EXIT_ERROR, EXIT_OK};

/// Every record the journal holds, oldest first (unreadable ones are skipped with a
/// warning: `journal verify` reports them).
pub fn records(journal: &dyn JournalStore) -> Vec<Record> {
    records_from(journal, 1)
}

/// The records from sequence number `from` on, oldest first, as [`records`].
fn records_from(journal: &dyn JournalStore, from: u64) -> Vec<Record> {
    journal
        .events(from)
        .filter_map(|r| match r {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable journal record");
                None
            }
        })
        .collect()
}

/// The keep-alive's word for a slot's health.
fn health_word(state: KeepAliveState, healthy: Option<bool>) -> &'static str {
    match (state, healthy) {
        (KeepAliveState::Restarting, _) => "restarting",
        (KeepAliveState::Failing, _) => "failing",
        (KeepAliveState::Stopped, _) => "stopped",
        (_, Some(true)) => "healthy",
        (_, Some(false)) => "unhealthy",
        (_, None) => "running",
    }
}

/// `status`: the supervisor's view plus restarts and the last exit from the journal, and
/// with a daemon the keep-alive's health.
pub fn status(
    supervisor: &Supervisor,
    only: Option<&SlotName>,
    monitor: Option<&Monitor>,
) -> Result<StatusReport, SupervisorError> {
    let mut report = supervisor.status(only)?;
    let from = active_since(supervisor.journal(), &report)?;
    report.add_record_facts(&records_from(supervisor.journal(), from));
    report.note_exits(Utc::now());
    if let Some(monitor) = monitor {
        for health in monitor.health() {
            let Some(slot) = report.slots.iter_mut().find(|s| s.slot == health.slot) else {
                continue;
            };
            // The keep-alive's word only for a process known to run: an "unknown" stays
            // unknown (the keep-alive does not act on it either).
            if slot.active.as_ref().is_some_and(|a| a.alive) {
                slot.health = Some(health_word(health.state, health.healthy).to_owned());
            }
        }
    }
    Ok(report)
}

/// The sequence number of the oldest commit among the reported slots' active generations:
/// restarts and exits of an active generation all come after it, so `status` reads only
/// the records since then, not the whole history.
fn active_since(journal: &dyn JournalStore, report: &StatusReport) -> Result<u64, SupervisorError> {
    let mut from = u64::MAX;
    for status in report.slots.iter().filter(|s| s.active.is_some()) {
        let Ok(name) = SlotName::new(&status.slot) else {
            return Ok(1);
        };
        let Some(active) = journal.slot(&name)?.and_then(|v| v.slot.active) else {
            continue;
        };
        let committed = journal.reload(&active.reload)?.and_then(|view| {
            view.stages
                .iter()
                .find(|mark| mark.state == "active")
                .map(|mark| mark.seq)
        });
        // A compaction may have dropped the reload's view: read everything that is left.
        from = from.min(committed.unwrap_or(1));
    }
    Ok(from)
}

/// What `history` shows.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// `-n/--limit`.
    pub limit: Option<usize>,
    /// `--since`.
    pub since: Option<DateTime<Utc>>,
    /// `--timeline`.
    pub timeline: bool,
}

impl HistoryQuery {
    /// `-n/--limit`, `--since` and `--timeline`.
    pub fn new(limit: Option<usize>, since: Option<DateTime<Utc>>, timeline: bool) -> Self {
        HistoryQuery {
            limit,
            since,
            timeline,
        }
    }

    /// The query string of `GET /v1/slots/{slot}/history` (empty or starting with `?`).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(limit) = self.limit {
            parts.push(format!("limit={limit}"));
        }
        if let Some(since) = self.since {
            parts.push(format!("since={}", since.format("%Y-%m-%dT%H:%M:%S%.6fZ")));
        }
        if self.timeline {
            parts.push("timeline=true".to_owned());
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// The slot's reloads as the query filters them.
pub fn history_report(
    supervisor: &Supervisor,
    slot: &SlotName,
    query: &HistoryQuery,
) -> Result<HistoryReport, SupervisorError> {
    let mut report = supervisor.history(slot)?;
    report.keep(query.limit, query.since);
    if let Some(since) = report.reloads.first().map(|r| r.started_at) {
        report.events = records(supervisor.journal())
            .iter()
            .filter(|r| &r.slot == slot && r.at >= since)
            .filter_map(SlotEvent::of)
            .collect();
    }
    Ok(report)
}

/// Crashes and stops (`✝`) and restarts (`↻`) of a slot's generations since `since`.
fn marks(
    journal: &dyn JournalStore,
    slot: &SlotName,
    since: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, char, String)> {
    records(journal)
        .iter()
        .filter(|r| &r.slot == slot && r.at >= since)
        .filter_map(|r| match &r.event {
            EventKind::Stopped { .. } => Some((r.at, '✝', render::detail(&r.event))),
            EventKind::Relaunched { .. } => Some((r.at, '↻', render::detail(&r.event))),
            _ => None,
        })
        .collect()
}

/// `history` as text: the table, or with `--timeline` the chart.
pub fn history_text(
    supervisor: &Supervisor,
    report: &HistoryReport,
    query: &HistoryQuery,
) -> String {
    if !query.timeline {
        return render::history_text(report);
    }
    let since = report.reloads.first().map(|r| r.started_at);
    let marks = match (since, SlotName::new(&report.slot)) {
        (Some(since), Ok(slot)) => marks(supervisor.journal(), &slot, since),
        _ => Vec::new(),
    };
    render::timeline_text(report, &marks)
}

/// `history` without a daemon: the text, or the JSON line with `json`.
pub fn history(
    supervisor: &Supervisor,
    slot: &SlotName,
    query: &HistoryQuery,
    json: bool,
) -> Result<String, CliError> {
    let report = history_report(supervisor, slot, query)?;
    if json {
        let text = render::json_text(&report)
            .map_err(|e| CliError::new(EXIT_ERROR, format!("encoding JSON output: {e}")))?;
        return Ok(format!("{text}\n"));
    }
    Ok(history_text(supervisor, &report, query))
}

/// The answer when a candidate is what already runs.
#[derive(Debug, Serialize)]
pub struct AlreadyActive {
    /// Slot name.
    pub slot: String,
    /// Always `already_active`.
    pub outcome: &'static str,
    /// The active generation, which keeps running untouched.
    pub generation: u64,
    /// Always false: nothing was restarted.
    pub restarted: bool,
}

impl AlreadyActive {
    /// The answer for `slot` whose active `generation` already runs the candidate.
    pub fn new(slot: &SlotName, generation: u64) -> Self {
        AlreadyActive {
            slot: slot.to_string(),
            outcome: "already_active",
            generation,
            restarted: false,
        }
    }

    /// As text.
    pub fn text(&self) -> String {
        format!(
            "{}: generation {} already runs this artifact and config; nothing restarted \
             (--force reloads it anyway)\n",
            self.slot, self.generation
        )
    }
}

/// Prints the already-active answer; exit 0.
pub fn print_already_active(
    ctx: &Context,
    _supervisor: &Supervisor,
    slot: &SlotName,
    generation: u64,
) -> Result<u8, CliError> {
    let answer = AlreadyActive::new(slot, generation);
    if ctx.json {
        render::json(&answer)?;
    } else {
        render::out(&answer.text())?;
    }
    Ok(EXIT_OK)
}

/// The active generation of `slot`: asked of the daemon if one serves the state dir, else
/// read from the journal (without taking its lock).
async fn active_generation(ctx: &Context, slot: &SlotName) -> Result<u64, CliError> {
    let socket = crate::daemon::server::socket_path(&ctx.state_dir, &ctx.config.admin);
    let none = || {
        CliError::new(
            EXIT_ERROR,
            format!(
                "slot {slot} has no active generation (give --generation N for an earlier one's log)"
            ),
        )
    };
    if let Some(client) = crate::client::Client::detect(&socket).await {
        let reply = client
            .call(
                hyper::Method::GET,
                &format!("/v1/slots/{slot}"),
                None,
                false,
            )
            .await?;
        if !reply.status.is_success() {
            return Err(reply.error());
        }
        let value: serde_json::Value = serde_json::from_str(&reply.body).map_err(|e| {
            CliError::new(
                EXIT_ERROR,
                format!("the daemon's answer is not understood: {e}"),
            )
        })?;
        return value["active"]["generation"].as_u64().ok_or_else(none);
    }
    let dir = ctx.state_dir.join("journal");
    if !dir.exists() {
        return Err(none());
    }
    let journal = ctx.open_journal(&dir, false).await?;
    journal
        .slot(slot)?
        .and_then(|view| view.slot.active.map(|a| a.generation.0))
        .ok_or_else(none)
}

/// Where a generation's plugin log is.
pub fn log_path(state_dir: &Path, slot: &SlotName, generation: u64) -> PathBuf {
    state_dir
        .join("logs")
        .join(slot.as_str())
        .join(format!("{generation}.log"))
}

/// Copies what `file` holds past `offset` to stdout; returns the new offset.
fn copy_new(file: &mut std::fs::File, offset: u64) -> Result<u64, CliError> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(offset);
    // Truncated (a new log of the same generation): start over.
    let offset = if len < offset { 0 } else { offset };
    if len == offset {
        return Ok(offset);
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| CliError::new(EXIT_ERROR, format!("reading the log: {e}")))?;
    let mut buf = Vec::new();
    file.take(len - offset)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::new(EXIT_ERROR, format!("reading the log: {e}")))?;
    render::out(&String::from_utf8_lossy(&buf))?;
    Ok(offset + buf.len() as u64)
}

/// `tryswap logs SLOT [-f] [--generation N]`.
pub async fn logs(
    ctx: &Context,
    slot: &SlotName,
    generation: Option<u64>,
    follow: bool,
) -> Result<u8, CliError> {
    let generation = match generation {
        Some(g) => g,
        None => active_generation(ctx, slot).await?,
    };
    let path = log_path(&ctx.state_dir, slot, generation);
    let mut file = std::fs::File::open(&path).map_err(|e| {
        CliError::new(
            EXIT_ERROR,
            format!(
                "slot {slot} generation {generation}: cannot read its log {}: {e}",
                path.display()
            ),
        )
    })?;
    let mut offset = copy_new(&mut file, 0)?;
    if !follow {
        return Ok(EXIT_OK);
    }
    let interrupted = crate::interrupted();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(EXIT_OK),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                offset = copy_new(&mut file, offset)?;
            }
        }
    }
}

/// `tryswap completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<u8, CliError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tryswap", &mut buf);
    render::out(&String::from_utf8_lossy(&buf))?;
    Ok(EXIT_OK)
}

/// `tryswap man`.
pub fn man() -> Result<u8, CliError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| CliError::new(EXIT_ERROR, format!("rendering the man page: {e}")))?;
    render::out(&String::from_utf8_lossy(&buf))?;
    Ok(EXIT_OK)
}

/// `tryswap stop SLOT` on a journal that does not open because it is damaged (`damage`,
/// exit 4 from the open): stops the slot's processes found by their tags, records nothing,
/// says so and what to do next; exit 5 ([`crate::EXIT_UNRECORDED`]).
pub async fn stop_without_journal(
    ctx: &Context,
    slot: &SlotName,
    damage: &CliError,
) -> Result<u8, CliError> {
    let config = ctx
        .config
        .slot(slot)
        .cloned()
        .ok_or_else(|| CliError::new(EXIT_ERROR, format!("unknown slot {slot}")))?;
    let stop = tryswap::stop_without_journal(&ctx.state_dir, &config).await?;
    let damage = damage.message.split("\nhint:").next().unwrap_or_default();
    let next = [
        "tryswap journal export --salvage > salvaged.jsonl".to_owned(),
        "tryswap journal verify".to_owned(),
        "tryswap journal rebuild".to_owned(),
        format!("tryswap stop {slot}"),
    ];
    if ctx.json {
        render::json(&serde_json::json!({
            "slot": slot.as_str(),
            "stopped_generation": stop.generation(),
            "recorded": false,
            "journal": "damaged",
            "journal_error": damage,
            "stopped": stop.stopped,
            "unattributed_pids": stop.unattributed_pids,
            "readable_records": stop.readable_records,
            "next": next,
        }))?;
    } else {
        render::out(&render::unrecorded_stop_text(&stop, damage))?;
    }
    Ok(crate::EXIT_UNRECORDED)
}
