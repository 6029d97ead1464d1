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

/// Where a compaction writes its archive before it is complete: `<journal>/archive.partial`
/// (outside `archive/`, so nothing that lists the archives ever sees a partial one).
pub const PARTIAL_FILE: &str = "archive.partial";

/// The archive file of one compaction being written, one record at a time: the dropped
/// records go to disk as the compaction finds them instead of being held in memory. They
/// are written to [`PARTIAL_FILE`], which [`ArchiveWriter::finish`] syncs and renames to
/// [`archive_path`], so an archive file is always complete. Dropped before `finish` (the
/// compaction failed), it removes the partial file.
pub(crate) struct ArchiveWriter {
    partial: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    /// `None` once finished.
    file: Option<std::io::BufWriter<std::fs::File>>,
    records: u64,
}

impl ArchiveWriter {
    /// Starts the archive of `base_seq` (which replaces, once finished, one an interrupted
    /// compaction left).
    pub(crate) fn create(journal_dir: &Path, base_seq: u64) -> Result<Self, JournalError> {
        let dir = journal_dir.join(ARCHIVE_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| JournalError::io("creating the archive directory", &dir, e))?;
        let partial = journal_dir.join(PARTIAL_FILE);
        let file = std::fs::File::create(&partial)
            .map_err(|e| JournalError::io("creating the archive", &partial, e))?;
        Ok(ArchiveWriter {
            partial,
            path: archive_path(journal_dir, base_seq),
            dir,
            file: Some(std::io::BufWriter::new(file)),
            records: 0,
        })
    }

    /// Appends `record` as one line.
    pub(crate) fn push(&mut self, record: &Record) -> Result<(), JournalError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        serde_json::to_writer(&mut *file, record)
            .map_err(std::io::Error::from)
            .and_then(|()| file.write_all(b"\n"))
            .map_err(|e| JournalError::io("writing the archive", &self.partial, e))?;
        self.records += 1;
        Ok(())
    }

    /// Makes the archive durable under its name (file synced, renamed into `archive/`,
    /// directory synced), or removes it if it holds no record. Returns how many records it
    /// holds.
    pub(crate) fn finish(mut self) -> Result<u64, JournalError> {
        let Some(file) = self.file.take() else {
            return Ok(self.records);
        };
        let file = file
            .into_inner()
            .map_err(|e| JournalError::io("writing the archive", &self.partial, e.into_error()))?;
        if self.records == 0 {
            drop(file);
            return std::fs::remove_file(&self.partial)
                .map(|()| 0)
                .map_err(|e| JournalError::io("removing an empty archive", &self.partial, e));
        }
        file.sync_data()
            .map_err(|e| JournalError::io("syncing the archive", &self.partial, e))?;
        drop(file);
        std::fs::rename(&self.partial, &self.path)
            .map_err(|e| JournalError::io("renaming the archive into place", &self.path, e))?;
        sync_dir(&self.dir)?;
        Ok(self.records)
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            drop(file);
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use tryswap_fsm::{EventKind, ReloadId, SlotName};

    use super::*;
    use crate::record::{Actor, RECORD_FORMAT};

    fn record(seq: u64) -> Record {
        Record {
            format: RECORD_FORMAT,
            seq,
            at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            reload: ReloadId::from_u128(7),
            slot: SlotName::new("demo").unwrap(),
            event: EventKind::Activated,
            prev_chain: 0,
            actor: Actor::default(),
            reason: None,
        }
    }

    #[test]
    fn a_finished_archive_holds_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = ArchiveWriter::create(dir.path(), 9).unwrap();
        for seq in 1..=3 {
            archive.push(&record(seq)).unwrap();
        }
        assert!(
            !archive_path(dir.path(), 9).exists(),
            "a partial archive is visible under its name"
        );
        assert_eq!(archive.finish().unwrap(), 3);
        assert!(!dir.path().join(PARTIAL_FILE).exists());
        let text = std::fs::read_to_string(archive_path(dir.path(), 9)).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn an_unfinished_or_empty_archive_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut failed = ArchiveWriter::create(dir.path(), 9).unwrap();
        failed.push(&record(1)).unwrap();
        drop(failed);
        assert!(
            !archive_path(dir.path(), 9).exists(),
            "a failed compaction's archive"
        );
        let empty = ArchiveWriter::create(dir.path(), 10).unwrap();
        assert_eq!(empty.finish().unwrap(), 0);
        assert!(!archive_path(dir.path(), 10).exists(), "an empty archive");
        assert!(!dir.path().join(PARTIAL_FILE).exists(), "its partial file");
    }
}
