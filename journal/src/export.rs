//! Export: every record as one JSON line.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::JournalError;
use crate::segment_log::{LogItem, LogReader};
use crate::Journal;

/// What an export wrote and skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Records written.
    pub records: u64,
    /// Records that did not decode and were skipped, each as `"<key>: <why>"`.
    pub unreadable: Vec<String>,
}

impl Journal {
    /// Writes every record, in sequence order, as one JSON object per line (the serde
    /// JSON form of [`crate::Record`]). Records that do not decode are skipped, logged and
    /// listed in the report, so a damaged journal can still be salvaged. Does not use
    /// sled's own export (which panics on I/O errors). After compaction only the kept
    /// records remain.
    pub fn export(&self, out: &mut impl Write) -> Result<ExportReport, JournalError> {
        let mut report = ExportReport::default();
        let write_err = |e: std::io::Error| {
            JournalError::io("writing export", PathBuf::from("<export output>"), e)
        };
        for record in self.events(0) {
            match record {
                Ok(record) => {
                    serde_json::to_writer(&mut *out, &record).map_err(|e| write_err(e.into()))?;
                    out.write_all(b"\n").map_err(write_err)?;
                    report.records += 1;
                }
                Err(JournalError::Sled { source, .. }) => return Err(self.sled_err(source)),
                Err(e) => {
                    tracing::warn!(error = %e, "export skips an unreadable record");
                    report.unreadable.push(e.to_string());
                }
            }
        }
        out.flush().map_err(write_err)?;
        Ok(report)
    }
}

/// Writes every record the segment log of the journal in `dir` holds before its first
/// damage, in order, as one JSON object per line (as [`Journal::export`] does), and
/// reports the damage that ended it in [`ExportReport::unreadable`]. Needs neither sled
/// nor the lock, and writes nothing to the journal: the salvage path when the journal
/// does not open.
pub fn salvage(dir: &Path, out: &mut impl Write) -> Result<ExportReport, JournalError> {
    salvage_with(dir, |record| {
        serde_json::to_writer(&mut *out, record).map_err(std::io::Error::from)?;
        out.write_all(b"\n")
    })
    .and_then(|report| {
        out.flush()
            .map_err(|e| JournalError::io("writing export", PathBuf::from("<export output>"), e))?;
        Ok(report)
    })
}

/// [`salvage`] with the caller writing each record.
pub fn salvage_with(
    dir: &Path,
    mut write: impl FnMut(&crate::Record) -> std::io::Result<()>,
) -> Result<ExportReport, JournalError> {
    let mut report = ExportReport::default();
    for item in LogReader::open(dir)?.items() {
        match item {
            Ok(LogItem::Base(_)) => {}
            Ok(LogItem::Kept(record)) | Ok(LogItem::Record { record, .. }) => {
                write(&record).map_err(|e| {
                    JournalError::io("writing export", PathBuf::from("<export output>"), e)
                })?;
                report.records += 1;
            }
            Err(damage) => {
                tracing::warn!(%damage, "salvage stops at the log's damage");
                report.unreadable.push(damage.to_string());
            }
        }
    }
    Ok(report)
}
