//! The archive of compacted records: `<journal>/archive/<base-seq>.jsonl`, one record a
//! line in the JSON form of [`Record`], written by compaction before it removes the log
//! segments that held them.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::record::Record;
use crate::witness::sync_dir;

/// The archive directory inside the journal directory.
pub const ARCHIVE_DIR: &str = "archive";

/// The archive file of the compaction whose base is `base_seq`.
pub fn archive_path(journal_dir: &Path, base_seq: u64) -> PathBuf {
    journal_dir
        .join(ARCHIVE_DIR)
        .join(format!("{base_seq:020}.jsonl"))
}

/// Writes `records` to the archive file of `base_seq` (replacing one an interrupted
/// compaction left), synced with its directory.
pub(crate) fn write(
    journal_dir: &Path,
    base_seq: u64,
    records: &[Record],
) -> Result<(), JournalError> {
    if records.is_empty() {
        return Ok(());
    }
    let dir = journal_dir.join(ARCHIVE_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| JournalError::io("creating the archive directory", &dir, e))?;
    let path = archive_path(journal_dir, base_seq);
    let mut text = Vec::new();
    for record in records {
        serde_json::to_writer(&mut text, record)
            .map_err(|e| JournalError::io("encoding archived records", &path, e.into()))?;
        text.push(b'\n');
    }
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_data()))
        .map_err(|e| JournalError::io("writing the archive", &path, e))?;
    sync_dir(&dir)
}
