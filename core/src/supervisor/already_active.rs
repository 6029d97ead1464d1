//! Whether a reload would change anything: the candidate's artifact and config against the
//! slot's active generation.

use tryswap_fsm::{Generation, SlotName};

use crate::driver::Liveness;

use super::{CandidateSpec, Supervisor, SupervisorError};

impl Supervisor {
    /// The active generation of `slot` if it runs exactly `spec`: the same executable bytes
    /// and the same config bytes (or both without a config), and its process is alive.
    /// `None` when a reload of `spec` would change something, or when that cannot be told
    /// (no executable given, a file unreadable: the reload reports it).
    ///
    /// The executable is staged into the store to learn its digest (hashed while copied; a
    /// source whose stat the store knows unchanged is not read at all), which is the
    /// reload's own first step: the reload that follows finds it staged and reads it not
    /// again, and an unchanged executable is never re-hashed. The config is only hashed,
    /// and only when the executable is the active one: a new config is staged by the
    /// reload, beside the files of its launch (see `Supervisor::run_reload`). Same bytes
    /// as a stored copy leave nothing new in the store. Call it off the async worker
    /// threads.
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
        let store = &self.inner.store;
        // A file that cannot be staged: the reload reports why.
        let Ok(digest) = store.stage_executable(executable) else {
            return Ok(None);
        };
        if digest != active.artifact.sha256 {
            return Ok(None);
        }
        let config = match spec.config.as_deref() {
            Some(path) => match store.config_digest(path) {
                Ok(digest) => Some(digest),
                Err(_) => return Ok(None),
            },
            None => None,
        };
        if config != active.artifact.config_sha256 {
            return Ok(None);
        }
        if self.active_alive(slot, active) != Liveness::Alive {
            return Ok(None);
        }
        Ok(Some(active.generation))
    }
}
