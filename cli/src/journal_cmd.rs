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
    let write = matches!(command, JournalCommand::Compact { .. });
    let opened = ctx.open_journal(&dir, write).await;
    match command {
        JournalCommand::Verify => verify(ctx, opened),
        JournalCommand::Show { from } => {
            let journal = opened?;
            for record in journal.events(*from) {
                let record = record?;
                if ctx.json {
                    render::out_line(&render::record_json(&record)?)?;
                } else {
                    render::out_line(&show_line(&record))?;
                }
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
                    Ok(record) => render::out_line(&render::record_json(&record)?)?,
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
    if ctx.json {
        render::json(&report)?;
    } else {
        render::out(&verify_text(&report))?;
    }
    Ok(verify_code(&report))
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
        let printed = render::record_json(record).and_then(|line| render::out_line(&line));
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
