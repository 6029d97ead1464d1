//! Whether a reload would change anything: the candidate's artifact and config against the
//! slot's active generation.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use tryswap_fsm::{Generation, SlotName};

use crate::driver::Liveness;

use super::{CandidateSpec, Supervisor, SupervisorError};

/// The lowercase hex SHA-256 of the file at `path`, or `None` if it cannot be read (the
/// reload itself then reports why).
fn file_digest(path: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a FIFO must not hang the check; only regular files are hashed.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(format!("{:x}", hasher.finalize()))
}

impl Supervisor {
    /// The active generation of `slot` if it runs exactly `spec`: the same executable bytes
    /// and the same config bytes (or both without a config), and its process is alive.
    /// `None` when a reload of `spec` would change something, or when that cannot be told
    /// (no executable given, a file unreadable: the reload reports it).
    ///
    /// Reads and hashes the files: call it off the async worker threads.
    pub fn already_active(
        &self,
        slot: &SlotName,
        spec: &CandidateSpec,
    ) -> Result<Option<Generation>, SupervisorError> {
        // Only this slot's projection: `status` would read (and decode) every slot's.
        let view = match self.inner.journal.slot(slot)? {
            Some(view) => view,
            None if self.runtime(slot).is_ok() => return Ok(None),
            None => return Err(SupervisorError::UnknownSlot(slot.clone())),
        };
        // A reload under way may change the active generation: let it conflict as usual.
        let (Some(active), None) = (view.slot.active.as_ref(), view.slot.in_flight) else {
            return Ok(None);
        };
        let Some(executable) = spec.executable.as_deref() else {
            return Ok(None);
        };
        // An executable staged before and unchanged since (same stamp) is not read again.
        let same_executable = match self.store().remembered_digest(executable) {
            Some(digest) => digest == active.artifact.sha256,
            None => file_digest(executable) == Some(active.artifact.sha256.to_string()),
        };
        if !same_executable {
            return Ok(None);
        }
        let config = match spec.config.as_deref() {
            Some(path) => match file_digest(path) {
                Some(digest) => Some(digest),
                None => return Ok(None),
            },
            None => None,
        };
        if config != active.artifact.config_sha256.map(|d| d.to_string()) {
            return Ok(None);
        }
        if self.active_alive(slot, active) != Liveness::Alive {
            return Ok(None);
        }
        Ok(Some(active.generation))
    }
}
