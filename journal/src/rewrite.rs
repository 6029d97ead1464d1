//! Rewriting sled's store after a compaction.
//!
//! sled 0.34 never shrinks its log: records that compaction removed stay in the data file as
//! garbage, and opening the journal still reads all of it (a journal compacted from 10^5
//! records down to 5 000 opened as slowly as before). So [`Journal::compact`](crate::Journal)
//! leaves a marker file, and the next open for writing copies every tree into a fresh store
//! and swaps the directories before it opens the journal:
//!
//! 1. `sled.rewrite/` gets a copy of every tree, flushed and synced;
//! 2. [`install`] exchanges `sled.rewrite/` and `sled/` in one `renameat2(RENAME_EXCHANGE)`
//!    and syncs the journal directory, so `sled/` is at every moment a complete store, the
//!    old one or the new one (a reader that opens the journal during a rewrite, or a copy
//!    of the disk taken at any moment, never finds it missing or half written);
//! 3. `sled.rewrite/`, which now holds the old store, and the marker are removed.
//!
//! Deriving sled again from the log ([`crate::Journal::rebuild`], a damaged index, a format
//! conversion) builds into `sled.rewrite/` too and is put in place by the same [`install`].
//!
//! A crash at any point leaves a state that [`settle`] resolves on the next open:
//! `sled.rewrite/` is always garbage then (a half-built store before the exchange, the old
//! one after it) and is removed. On a file system without `RENAME_EXCHANGE` the exchange is
//! two renames through `sled.old/`; between them `sled/` is missing and `settle` renames the
//! old store back. The marker stays until the end, so an interrupted rewrite is simply done
//! again. The copy holds the same keys and values, so the witness and the record chain
//! still match.

use std::path::Path;

use crate::error::JournalError;
use crate::sled_dir::{list_tree, open_db};
use crate::witness::sync_dir;

/// Marker file in the journal directory: "the store has garbage, rewrite it on open".
pub(crate) const REWRITE_MARKER: &str = "rewrite-wanted";
/// Where a new store is built (a rewrite's copy, or sled derived again from the log) before
/// [`install`] puts it in place; garbage whenever no open is running.
pub(crate) const BUILD_DIR: &str = "sled.rewrite";
/// Where the old store waits between the two renames of the fallback [`install`].
const OLD_DIR: &str = "sled.old";
/// Entries per insert batch while copying.
const BATCH: usize = 4096;

/// Whether sled's files wait for work only an open with sled can do: a rewrite asked for,
/// or one (or a derivation from the log) interrupted.
pub(crate) fn pending(dir: &Path) -> bool {
    [REWRITE_MARKER, BUILD_DIR, OLD_DIR]
        .iter()
        .any(|name| dir.join(name).exists())
}

/// Asks for a rewrite at the next open (durably: the marker file and its directory entry are
/// synced).
pub(crate) fn request(dir: &Path) -> Result<(), JournalError> {
    let marker = dir.join(REWRITE_MARKER);
    std::fs::File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| JournalError::io("writing the rewrite marker", &marker, e))?;
    sync_dir(dir)
}

/// Resolves what an interrupted rewrite left behind (see the module documentation).
pub(crate) fn settle(dir: &Path, sled_dir: &Path) -> Result<(), JournalError> {
    let rewrite = dir.join(BUILD_DIR);
    let old = dir.join(OLD_DIR);
    if old.exists() {
        if sled_dir.exists() {
            // Both renames happened: the new store is in place.
            remove(&old)?;
        } else {
            // Interrupted between the renames: put the old store back.
            std::fs::rename(&old, sled_dir).map_err(|e| {
                JournalError::io("restoring the store after an interrupted rewrite", &old, e)
            })?;
            sync_dir(dir)?;
            tracing::warn!(dir = %dir.display(), "an interrupted store rewrite was undone");
        }
    }
    if rewrite.exists() {
        remove(&rewrite)?;
    }
    Ok(())
}

/// Rewrites the store if a compaction asked for it. Returns whether it did.
pub(crate) fn run_if_wanted(dir: &Path, sled_dir: &Path) -> Result<bool, JournalError> {
    let marker = dir.join(REWRITE_MARKER);
    if !marker.exists() || !sled_dir.is_dir() {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let rewrite = dir.join(BUILD_DIR);
    let copied = copy_store(dir, sled_dir, &rewrite)?;
    install(dir, &rewrite, sled_dir)?;
    std::fs::remove_file(&marker)
        .map_err(|e| JournalError::io("removing the rewrite marker", &marker, e))?;
    sync_dir(dir)?;
    tracing::info!(
        dir = %dir.display(),
        entries = copied,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rewrote the journal store after compaction"
    );
    Ok(true)
}

/// Puts the complete store in `built` (flushed and synced) in place of `sled_dir`, which
/// may exist or not, in one atomic step where the file system allows it (see the module
/// documentation), and removes the store it replaced. The journal directory is synced
/// before this returns.
pub(crate) fn install(dir: &Path, built: &Path, sled_dir: &Path) -> Result<(), JournalError> {
    if sled_dir.exists() {
        match nix::fcntl::renameat2(
            None,
            built,
            None,
            sled_dir,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => {
                sync_dir(dir)?;
                // `built` now holds the old store.
                return remove(built);
            }
            Err(
                nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) => {
                tracing::debug!(dir = %dir.display(), "no RENAME_EXCHANGE here: installing the store with two renames");
                let old = dir.join(OLD_DIR);
                std::fs::rename(sled_dir, &old)
                    .map_err(|e| JournalError::io("moving the old store aside", sled_dir, e))?;
                std::fs::rename(built, sled_dir)
                    .map_err(|e| JournalError::io("putting the new store in place", built, e))?;
                sync_dir(dir)?;
                return remove(&old);
            }
            Err(e) => {
                return Err(JournalError::io(
                    "exchanging the new store with the old one",
                    built,
                    std::io::Error::from(e),
                ))
            }
        }
    }
    std::fs::rename(built, sled_dir)
        .map_err(|e| JournalError::io("putting the new store in place", built, e))?;
    sync_dir(dir)
}

/// Copies every tree of the store in `from` into a new store in `to`; returns the number of
/// entries copied. The copy is flushed and its files synced.
fn copy_store(dir: &Path, from: &Path, to: &Path) -> Result<u64, JournalError> {
    crate::rebuild::discard(to)?;
    let sled_err = |source| JournalError::Sled {
        dir: dir.to_path_buf(),
        source,
    };
    let copy = || -> Result<u64, JournalError> {
        let old = open_db(sled::Config::new().path(from)).map_err(sled_err)?;
        let new = open_db(sled::Config::new().path(to)).map_err(sled_err)?;
        let mut copied = 0u64;
        for name in old.tree_names() {
            let source = old.open_tree(&name).map_err(sled_err)?;
            let target = new.open_tree(&name).map_err(sled_err)?;
            let mut batch = sled::Batch::default();
            let mut pending = 0;
            for item in source.iter() {
                let (key, value) = item.map_err(sled_err)?;
                batch.insert(key, value);
                pending += 1;
                copied += 1;
                if pending == BATCH {
                    target
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(sled_err)?;
                    pending = 0;
                }
            }
            target.apply_batch(batch).map_err(sled_err)?;
        }
        new.flush().map_err(sled_err)?;
        Ok(copied)
    };
    let copied = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(copy)) {
        Ok(result) => result?,
        Err(_) => {
            return Err(JournalError::Corrupt {
                dir: dir.to_path_buf(),
                what: format!(
                    "sled panicked while the store in {} was copied for a rewrite; the old \
                     store is untouched",
                    from.display()
                ),
            })
        }
    };
    sync_tree(to)?;
    Ok(copied)
}

/// Syncs every file below `root` and every directory, `root` included.
pub(crate) fn sync_tree(root: &Path) -> Result<(), JournalError> {
    let listing = list_tree(root, "listing the rewritten store")?;
    for (path, _) in &listing.files {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| JournalError::io("syncing the rewritten store", path, e))?;
    }
    for dir in &listing.dirs {
        sync_dir(dir)?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), JournalError> {
    std::fs::remove_dir_all(path).map_err(|e| JournalError::io("removing", path, e))
}
