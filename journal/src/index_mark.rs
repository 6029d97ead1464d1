//! The index mark: how far sled (the index derived from the log) is known to be durable.
//!
//! `<journal dir>/index.seq` holds one sequence number in decimal: every record up to it was
//! in sled's files when sled last finished a full flush. It is written after each full
//! flush of a [`crate::Journal`] and read by [`crate::open_for_command`] to decide whether a
//! one-shot command may leave sled closed ([`crate::LogJournal`]): the index then lags the
//! log by what such commands append, and the next open of sled catches it up from the log.
//! The mark bounds that lag. It is a hint, never evidence: a missing, unreadable or wrong
//! mark only makes a command open sled, which checks sled against the log itself.

use std::path::Path;

/// The mark's file name in the journal directory.
pub const INDEX_MARK_FILE: &str = "index.seq";

/// The most records sled may lag the log when a one-shot command leaves it closed: past
/// this, the command opens sled (which catches up) and closes it with a full flush.
pub const INDEX_LAG_MAX: u64 = 2048;

/// The mark of the journal in `dir`, if one is there and readable.
pub(crate) fn read(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(INDEX_MARK_FILE)).ok()?;
    text.trim().parse().ok()
}

/// Records that sled's files hold every record up to `seq` (call after a full flush).
/// Written to a temporary file renamed into place, not synced: a mark lost in a crash is
/// an older or missing one, which only makes the next command open sled.
pub(crate) fn write(dir: &Path, seq: u64) {
    let path = dir.join(INDEX_MARK_FILE);
    let tmp = dir.join(format!("{INDEX_MARK_FILE}.tmp"));
    let written =
        std::fs::write(&tmp, format!("{seq}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "writing the index mark");
        let _ = std::fs::remove_file(&path);
    }
}

/// Whether sled, last marked at `mark`, lags a journal whose durable end is `seq` by more
/// than `allowed` records (a missing mark, or one past the end, counts as lagging).
pub(crate) fn lags(mark: Option<u64>, seq: u64, allowed: u64) -> bool {
    mark.is_none_or(|mark| mark > seq || seq - mark > allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_garbage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        write(dir.path(), 42);
        assert_eq!(read(dir.path()), Some(42));
        std::fs::write(dir.path().join(INDEX_MARK_FILE), b"4x2").unwrap();
        assert_eq!(read(dir.path()), None);
    }

    #[test]
    fn a_missing_or_impossible_mark_lags() {
        assert!(lags(None, 0, 10));
        assert!(lags(Some(11), 10, 10), "a mark past the end is not trusted");
        assert!(!lags(Some(0), 10, 10));
        assert!(lags(Some(0), 11, 10));
    }
}
