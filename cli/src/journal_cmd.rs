//! `tryswap journal show | verify | replay | export | compact`.

use std::io::Write;

use tryswap_journal::{CompactReport, Journal, JournalError, Record, VerifyReport};

use crate::args::JournalCommand;
use crate::render;
use crate::{CliError, Context, EXIT_CORRUPT, EXIT_ERROR, EXIT_OK};

fn io_error(e: std::io::Error) -> CliError {
    CliError::new(EXIT_ERROR, format!("writing output: {e}"))
}

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
    let opened = match command {
        JournalCommand::Compact { .. } => Journal::open(&dir),
        _ => Journal::open_for_inspection(&dir),
    };
    match command {
        JournalCommand::Verify => verify(ctx, opened),
        JournalCommand::Show { from } => {
            let journal = opened?;
            let mut out = std::io::stdout().lock();
            for record in journal.events(*from) {
                let record = record?;
                if ctx.json {
                    let line = serde_json::to_string(&record).map_err(|e| {
                        CliError::new(EXIT_ERROR, format!("encoding record {}: {e}", record.seq))
                    })?;
                    writeln!(out, "{line}").map_err(io_error)?;
                } else {
                    writeln!(out, "{}", show_line(&record)).map_err(io_error)?;
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
        JournalCommand::Export => {
            let journal = opened?;
            let mut out = std::io::stdout().lock();
            journal.export(&mut out)?;
            out.flush().map_err(io_error)?;
            Ok(EXIT_OK)
        }
        JournalCommand::Compact { keep } => {
            let journal = opened?;
            let report = journal.compact(*keep)?;
            if report.events_dropped > 0 {
                // Reopening rewrites sled's store without the dropped records' bytes, so
                // the file shrinks now rather than at the next command.
                drop(journal);
                drop(Journal::open(&dir)?);
            }
            if ctx.json {
                render::json(&report)?;
            } else {
                print!("{}", compact_text(&report));
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
                println!("journal corrupt: {e}");
            }
            return Ok(EXIT_CORRUPT);
        }
        Err(e) => return Err(e.into()),
    };
    let report = journal.verify()?;
    if ctx.json {
        render::json(&report)?;
    } else {
        print!("{}", verify_text(&report));
    }
    Ok(verify_code(&report))
}

/// One record of `journal show` (without newline).
pub(crate) fn show_line(record: &Record) -> String {
    format!(
        "{:>8}  {}  {:<16} {}  {:?}",
        record.seq,
        record.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        record.slot,
        record.reload,
        record.event
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
