//! The journal directory's exclusive lock: `flock(LOCK_EX | LOCK_NB)` on `journal.lock`.
//!
//! flock locks belong to the open file description, so a second open of the same journal
//! conflicts whether it comes from another process or from this one. The kernel drops the
//! lock when the holder dies, so a stale lock file never blocks anyone. The holder writes
//! its pid into the file so the refusal can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::JournalError;
use crate::layout::LOCK_FILE;

/// How long an open waits for a journal lock that this same process holds (a journal being dropped
/// by another thread) before it reports the journal locked.
pub const OWN_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Holds the journal directory's lock until dropped (what every open takes; a caller that
/// must keep other tryswap processes out without opening the journal, such as a stop on a
/// damaged journal, takes it alone).
#[derive(Debug)]
pub struct DirLock {
    _file: Flock<File>,
}

impl DirLock {
    /// Takes the lock of journal directory `dir`, or fails with [`JournalError::Locked`]:
    /// at once when another live process holds it; after at most [`OWN_RELEASE_WAIT`] when
    /// this process still holds it through a journal being dropped, or when the process
    /// that took it is dead (a child forked from it holds the descriptor until its `exec`).
    pub fn acquire(dir: &Path) -> Result<DirLock, JournalError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| JournalError::io("opening lock file", &path, e))?;
        let started = Instant::now();
        let mut file = file;
        let mut file = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => break locked,
                Err((mut held, Errno::EWOULDBLOCK)) => {
                    let pid = read_pid(&mut held);
                    // Held by this very process (a journal it dropped whose last user, a
                    // write still finishing on a blocking thread, lets go in a moment), or by
                    // a process other than the one that took it (the holder died and a
                    // plugin it was forking still has the descriptor until its `exec`
                    // closes it): wait a moment. A live holder is refused at once.
                    let transient = match pid {
                        Some(pid) => pid == std::process::id() || !alive(pid),
                        None => false,
                    };
                    if transient && started.elapsed() < OWN_RELEASE_WAIT {
                        std::thread::sleep(Duration::from_millis(10));
                        file = held;
                        continue;
                    }
                    return Err(JournalError::Locked {
                        dir: dir.to_path_buf(),
                        pid,
                    });
                }
                Err((_, errno)) => {
                    return Err(JournalError::io(
                        "locking",
                        path,
                        std::io::Error::from_raw_os_error(errno as i32),
                    ))
                }
            }
        };
        write_pid(&mut file, &path)?;
        Ok(DirLock { _file: file })
    }
}

/// Whether `pid` names a running process. A zombie counts as dead: it has exited and its
/// descriptors are closed, so it holds no lock.
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if let Err(Errno::ESRCH) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        return false;
    }
    // The state letter follows the command name, which is in parentheses and may hold ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].trim_start().chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
        Err(_) => true,
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
