//! sled's directory on disk: listing its files and opening its store.
//!
//! Shared by opening the journal and by the store rewrite after compaction, neither of which
//! depends on the other.

use std::path::{Path, PathBuf};

use crate::error::JournalError;

/// Everything below a directory.
pub(crate) struct Listing {
    /// The directories, the root first.
    pub(crate) dirs: Vec<PathBuf>,
    /// The other entries, with their lengths.
    pub(crate) files: Vec<(PathBuf, u64)>,
}

/// Lists everything below `root` (`what` names the job in an error).
pub(crate) fn list_tree(root: &Path, what: &'static str) -> Result<Listing, JournalError> {
    let mut listing = Listing {
        dirs: Vec::new(),
        files: Vec::new(),
    };
    let mut pending = vec![root.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| JournalError::io(what, &folder, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| JournalError::io(what, &folder, e))?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .map_err(|e| JournalError::io(what, &path, e))?;
            if meta.is_dir() {
                pending.push(path);
            } else {
                listing.files.push((path, meta.len()));
            }
        }
        listing.dirs.push(folder);
    }
    Ok(listing)
}

/// How long [`open_db`] waits for sled's own file lock.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a sled store, waiting (at most [`SLED_LOCK_WAIT`]) while sled's file lock on its
/// data file is still held. Only this process can hold it — other processes are kept out
/// by `journal.lock`, taken first — and it does so for a moment after a handle on the same
/// store was dropped, until sled's background threads let go of the file.
pub(crate) fn open_db(config: sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}
