//! The journal directory's exclusive lock: `flock(LOCK_EX | LOCK_NB)` on `journal.lock`.
//!
//! flock locks belong to the open file description, so a second open of the same journal
//! conflicts whether it comes from another process or from this one. The kernel drops the
//! lock when the holder dies, so a stale lock file never blocks anyone. The holder writes
//! its pid into the file so the refusal can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::JournalError;
use crate::layout::LOCK_FILE;

/// Holds the lock until dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: Flock<File>,
}

impl DirLock {
    /// Takes the lock of journal directory `dir` or fails at once with
    /// [`JournalError::Locked`].
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, JournalError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| JournalError::io("opening lock file", &path, e))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(JournalError::Locked {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                })
            }
            Err((_, errno)) => {
                return Err(JournalError::io(
                    "locking",
                    path,
                    std::io::Error::from_raw_os_error(errno as i32),
                ))
            }
        };
        write_pid(&mut file, &path)?;
        Ok(DirLock { _file: file })
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_pid(file: &mut File, path: &PathBuf) -> Result<(), JournalError> {
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()))
        .map_err(|e| JournalError::io("writing pid to lock file", path, e))
}
