//! `tryswap journal show | verify | replay | export [--salvage] | compact | rebuild`.

use tryswap_journal::{CompactReport, Journal, JournalError, Record, VerifyReport};

use crate::args::JournalCommand;
use crate::render;
use crate::{CliError, Context, EXIT_CORRUPT, EXIT_ERROR, EXIT_OK};

/// Runs a journal subcommand on the state directory's journal.
pub async fn run(ctx: &Context, command: &JournalCommand) -> Result<u8, CliError> {
    let dir = ctx.state_dir.join("journal");
    if !dir.exists() {
        return Err(CliError::new(
            EXIT_ERROR,
            format!(
                "no journal at {} (nothing was ever reloaded there)",
                dir.display()
            ),
        ));
    }
    match command {
        JournalCommand::Export { salvage: true } => return salvage(ctx),
        JournalCommand::Rebuild => {
            let journal = ctx
                .wait_for_lock(
                    || Journal::rebuild(&dir),
                    |e| matches!(e, JournalError::Locked { .. }),
                )
                .await?;
            let records = journal.rebuilt().map_or(0, |note| note.records);
            if ctx.json {
                render::json(
                    &serde_json::json!({"schema": 1, "rebuilt": true, "records": records}),
                )?;
            } else {
                render::out(&format!(
                    "rebuilt sled's files from the log: {records} records\n"
                ))?;
            }
            return Ok(EXIT_OK);
        }
        _ => {}
    }
    // The reads: straight from the log, with no lock and nothing written (a journal from
    // before the log, which has none, is read through sled below).
    let printed = match command {
        JournalCommand::Show { from } => print_log_records(&dir, *from, record_text(ctx.json))?,
        JournalCommand::Export { salvage: false } => print_log_records(&dir, 0, record_text(true))?,
        _ => None,
    };
    if printed.is_some() {
        return Ok(EXIT_OK);
    }
    match command {
        JournalCommand::Replay { until } => match tryswap_journal::replay_log(&dir, *until) {
            Ok(state) => {
                render::json(&state)?;
                return Ok(EXIT_OK);
            }
            Err(JournalError::Missing(_)) => {}
            Err(e) => return Err(e.into()),
        },
        JournalCommand::Verify => {
            // sled's index is compared too when nobody holds the journal; while another
            // process does, the log alone is verified, at once.
            match Journal::open_for_inspection(&dir) {
                Err(JournalError::Locked { .. }) => match tryswap_journal::verify_log(&dir) {
                    Ok(report) => return print_verify(ctx, &report, true),
                    Err(JournalError::Missing(_)) => {}
                    Err(e) => return Err(e.into()),
                },
                opened => return verify(ctx, opened),
            }
        }
        _ => {}
    }
    let write = matches!(command, JournalCommand::Compact { .. });
    let opened = ctx.open_journal(&dir, write).await;
    match command {
        JournalCommand::Verify => verify(ctx, opened),
        JournalCommand::Show { from } => {
            let journal = opened?;
            let text = record_text(ctx.json);
            for record in journal.events(*from) {
                render::out_line(&text(&record?)?)?;
            }
            Ok(EXIT_OK)
        }
        JournalCommand::Replay { until } => {
            let journal = opened?;
            let state = journal.replay(*until)?;
            render::json(&state)?;
            Ok(EXIT_OK)
        }
        JournalCommand::Export { salvage: true } | JournalCommand::Rebuild => {
            unreachable!("answered above without opening the journal")
        }
        JournalCommand::Export { salvage: false } => {
            // Every record as a JSON line with `"schema": 1` (what `journal export` of the
            // journal crate writes, versioned); unreadable records are skipped with a
            // warning, as there.
            let journal = opened?;
            for record in journal.events(0) {
                match record {
                    Ok(record) => render::out_line(&render::record_json(&record, None)?)?,
                    Err(e @ JournalError::Sled { .. }) => return Err(e.into()),
                    Err(e) => tracing::warn!(error = %e, "export skips an unreadable record"),
                }
            }
            Ok(EXIT_OK)
        }
        JournalCommand::Compact { keep, no_archive } => {
            let journal = opened?;
            let report = journal.compact_with(*keep, !no_archive)?;
            if report.events_dropped > 0 {
                // Reopening rewrites sled's store without the dropped records' bytes, so
                // the file shrinks now rather than at the next command.
                drop(journal);
                drop(Journal::open(&dir)?);
            }
            if ctx.json {
                render::json(&report)?;
            } else {
                render::out(&compact_text(&report))?;
            }
            Ok(EXIT_OK)
        }
    }
}

fn verify(ctx: &Context, opened: Result<Journal, JournalError>) -> Result<u8, CliError> {
    let journal = match opened {
        Ok(journal) => journal,
        Err(e @ JournalError::Corrupt { .. }) => {
            if ctx.json {
                render::json(&serde_json::json!({"ok": false, "problems": [e.to_string()]}))?;
            } else {
                render::out(&format!("journal corrupt: {e}\n"))?;
            }
            return Ok(EXIT_CORRUPT);
        }
        Err(e) => return Err(e.into()),
    };
    let report = journal.verify()?;
    print_verify(ctx, &report, false)
}

/// Prints a verify report (`log_only`: sled's index was not compared, another process
/// holding the journal) and returns its exit code.
fn print_verify(ctx: &Context, report: &VerifyReport, log_only: bool) -> Result<u8, CliError> {
    if ctx.json {
        render::json(&VerifyOutput {
            report,
            index_checked: !log_only,
        })?;
    } else {
        let mut text = verify_text(report);
        if log_only {
            text.push_str(
                "  (the log only: another process holds the journal, so sled's index was not \
                 compared)\n",
            );
        }
        render::out(&text)?;
    }
    Ok(verify_code(report))
}

/// `journal verify --json` (and the daemon's `GET /v1/journal/verify`): the report and
/// whether sled's index was compared with the log.
#[derive(serde::Serialize)]
pub(crate) struct VerifyOutput<'a> {
    #[serde(flatten)]
    pub(crate) report: &'a VerifyReport,
    pub(crate) index_checked: bool,
}

/// Prints the journal's records from `from` as `line` makes them, read from the log with
/// neither the lock nor sled (`tryswap_journal::read_records`). `None` when the journal
/// has no log (one from before the log: the caller reads it through sled).
pub(crate) fn print_log_records(
    dir: &std::path::Path,
    from: u64,
    line: impl Fn(&Record) -> Result<String, CliError>,
) -> Result<Option<tryswap_journal::LogRead>, CliError> {
    let mut failed: Option<CliError> = None;
    let read = tryswap_journal::read_records(dir, from, |record| {
        let printed = line(record).and_then(|text| render::out_line(&text));
        printed.map_err(|e| {
            let text = e.message.clone();
            failed = Some(e);
            std::io::Error::other(text)
        })
    });
    if let Some(e) = failed {
        return Err(e);
    }
    match read {
        Ok(read) => Ok(Some(read)),
        Err(JournalError::Missing(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One record of `journal show`: its text line, or with `json` its `journal export` line.
fn record_text(json: bool) -> impl Fn(&Record) -> Result<String, CliError> {
    move |record| {
        if json {
            render::record_json(record, None)
        } else {
            Ok(show_line(record))
        }
    }
}

/// One record of `journal show` (without newline).
pub(crate) fn show_line(record: &Record) -> String {
    format!(
        "{:>8}  {}  {:<16} {}  {:<15} {}",
        record.seq,
        record.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        record.slot,
        record.reload,
        record.event.name(),
        render::detail(&record.event)
    )
}

/// `journal verify` as text.
pub(crate) fn verify_text(report: &VerifyReport) -> String {
    if report.is_ok() {
        return format!("journal ok: {} events checked\n", report.events_checked);
    }
    let mut out = format!("journal corrupt: {} problem(s)\n", report.problems.len());
    for p in &report.problems {
        out.push_str(&format!("  {p}\n"));
    }
    out
}

/// `journal verify`'s exit code.
pub(crate) fn verify_code(report: &VerifyReport) -> u8 {
    if report.is_ok() {
        EXIT_OK
    } else {
        EXIT_CORRUPT
    }
}

/// `journal compact` as text.
pub(crate) fn compact_text(report: &CompactReport) -> String {
    format!(
        "compacted: dropped {} reloads ({} records), kept {}; base now seq {}\n",
        report.reloads_dropped, report.events_dropped, report.reloads_kept, report.base_seq
    )
}

/// `journal export --salvage`: every record of the segment log before its first damage, as
/// `journal export` prints them, with neither the lock nor sled; exit 4 (after the records)
/// if the log is damaged, naming where.
pub(crate) fn salvage(ctx: &Context) -> Result<u8, CliError> {
    let dir = ctx.state_dir.join("journal");
    let mut failed: Option<CliError> = None;
    let report = tryswap_journal::salvage_with(&dir, |record| {
        let printed = render::record_json(record, None).and_then(|line| render::out_line(&line));
        printed.map_err(|e| {
            let text = e.to_string();
            failed = Some(e);
            std::io::Error::other(text)
        })
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let report = report?;
    if report.unreadable.is_empty() {
        return Ok(EXIT_OK);
    }
    for damage in &report.unreadable {
        tracing::error!(%damage, records = report.records, "the log is damaged; the records before the damage were printed");
        eprintln!(
            "tryswap: {damage}; the {} record(s) before it were printed",
            report.records
        );
    }
    Ok(EXIT_CORRUPT)
}
