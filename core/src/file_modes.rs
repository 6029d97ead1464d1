//! The state directory is private to tryswap's user: the directory itself 0700, and
//! everything under `journal/` without group or other bits (sled creates its files with
//! the process umask; a state dir made by an older tryswap, or by a host with a loose
//! umask, is tightened here). The `tryswap` binary also runs with umask 077
//! (`driver::process::os::restrict_umask`), so files created later are private too.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `state_dir` (mode 0700) if needed; takes group and other bits off an existing
/// one only if it already holds a tryswap journal (a directory that is not yet tryswap's,
/// such as one named by mistake, is left as it is, with a warning).
pub(crate) fn private_state_dir(state_dir: &Path) -> io::Result<()> {
    let existed = state_dir.is_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)?;
    if !existed || state_dir.join("journal").is_dir() {
        return strip_group_and_other(state_dir);
    }
    let mode = fs::metadata(state_dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            state_dir = %state_dir.display(),
            mode = format!("{:o}", mode & 0o7777),
            "the state directory is open to group or others; tryswap keeps it 0700 once it holds a journal"
        );
    }
    Ok(())
}

/// Takes group and other bits off every file and directory under `dir` (`dir` included);
/// symlinks are left alone. A missing `dir` is fine.
pub(crate) fn private_tree(dir: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    strip_group_and_other(dir)?;
    if meta.is_dir() {
        for entry in fs::read_dir(dir)? {
            private_tree(&entry?.path())?;
        }
    }
    Ok(())
}

fn strip_group_and_other(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}
