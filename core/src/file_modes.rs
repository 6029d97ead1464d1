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

/// Takes group and other bits off every file and directory under `dir` (`dir` included)
/// if `dir` itself has any; symlinks are left alone. A missing `dir` is fine.
///
/// A `dir` without group or other bits is not walked: nothing below it is reachable by
/// anyone else, and it is private only because this function (or tryswap's umask 077)
/// made it so. That keeps the cost of opening a state dir independent of how many files
/// the store and the journal hold; a state dir made by an older tryswap or under a loose
/// umask is walked once, the first time.
pub(crate) fn private_tree(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() && meta.permissions().mode() & 0o077 == 0 => Ok(()),
        Ok(_) => private_tree_walk(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn private_tree_walk(dir: &Path) -> io::Result<()> {
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
            private_tree_walk(&entry?.path())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_loose_tree_is_tightened_and_a_private_one_is_not_walked() {
        let dir = tempfile::tempdir().unwrap();
        let loose = dir.path().join("journal");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(loose.join("db"), b"x").unwrap();
        fs::set_permissions(loose.join("db"), fs::Permissions::from_mode(0o644)).unwrap();
        private_tree(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
        assert_eq!(mode(&loose.join("db")), 0o600);

        // Already private: its entries are not visited (they are unreachable to others).
        fs::set_permissions(loose.join("db"), fs::Permissions::from_mode(0o644)).unwrap();
        private_tree(&loose).unwrap();
        assert_eq!(mode(&loose.join("db")), 0o644, "a private tree was walked");
        private_tree(&dir.path().join("missing")).unwrap();
    }
}
