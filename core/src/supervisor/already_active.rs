//! Whether a reload would change anything: the candidate's artifact and config against the
//! slot's active generation.

use tryswap_fsm::{Generation, SlotName};

use super::{CandidateSpec, Supervisor, SupervisorError};

impl Supervisor {
    /// The active generation of `slot` if it runs exactly `spec`: the same executable bytes
    /// and the same config bytes (or both without a config), and its process is alive.
    /// `None` when a reload of `spec` would change something, or when that cannot be told
    /// (no executable given, a file unreadable: the reload reports it).
    ///
    /// The files are staged into the store to learn their digests (hashed while copied; a
    /// source whose stat the store knows unchanged is not read at all), which is the
    /// reload's own first step: the reload that follows finds them staged and reads
    /// neither again, and an unchanged executable is never re-hashed. Same bytes as a
    /// stored copy leave nothing new in the store. Call it off the async worker threads.
    pub fn already_active(
        &self,
        slot: &SlotName,
        spec: &CandidateSpec,
    ) -> Result<Option<Generation>, SupervisorError> {
        let status = self.status(Some(slot))?;
        let Some(slot) = status.slots.first() else {
            return Ok(None);
        };
        // A reload under way may change the active generation: let it conflict as usual.
        let (Some(active), None) = (slot.active.as_ref(), slot.in_flight.as_ref()) else {
            return Ok(None);
        };
        if !active.alive {
            return Ok(None);
        }
        let Some(executable) = spec.executable.as_deref() else {
            return Ok(None);
        };
        let store = &self.inner.store;
        // A file that cannot be staged: the reload reports why.
        let Ok(digest) = store.stage_executable(executable) else {
            return Ok(None);
        };
        if digest.to_string() != active.sha256 {
            return Ok(None);
        }
        let config = match spec.config.as_deref() {
            Some(path) => match store.stage_config(path) {
                Ok(digest) => Some(digest.to_string()),
                Err(_) => return Ok(None),
            },
            None => None,
        };
        Ok((config == active.config_sha256).then_some(Generation(active.generation)))
    }
}
