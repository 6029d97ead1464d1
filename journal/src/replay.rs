//! Replay: the state of every slot and reload as of a sequence number.

use tryswap_fsm::SlotName;

use crate::error::JournalError;
use crate::layout::{decode_value, Meta, META, PREFIX_BASE_RELOAD, PREFIX_BASE_SLOT};
use crate::projection::{BaseSlot, ReloadView, ReplayState};
use crate::Journal;

impl Journal {
    /// The state of every slot and reload after the record `until_seq`: the compaction
    /// base snapshot with the records after it up to `until_seq` folded in. A `until_seq`
    /// past the end gives the current state ([`ReplayState::seq`] says which point it is).
    ///
    /// [`JournalError::Compacted`] if `until_seq` is before the compaction base.
    pub fn replay(&self, until_seq: u64) -> Result<ReplayState, JournalError> {
        let meta = self.meta_values()?;
        if until_seq < meta.base_seq {
            return Err(JournalError::Compacted {
                requested: until_seq,
                base: meta.base_seq,
            });
        }
        let mut state = self.base_snapshot(&meta)?;
        for record in self.events(meta.base_seq + 1) {
            let record = record?;
            if record.seq > until_seq {
                break;
            }
            state.apply(&record);
        }
        Ok(state)
    }

    /// The compaction base snapshot (empty, at seq 0, if the journal was never compacted).
    pub(crate) fn base_snapshot(&self, meta: &Meta) -> Result<ReplayState, JournalError> {
        let mut state = ReplayState {
            seq: meta.base_seq,
            ..ReplayState::default()
        };
        for item in self.meta.scan_prefix(PREFIX_BASE_SLOT) {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let base: BaseSlot = decode_value(META, &key, &bytes)?;
            let (view, history) = base.split();
            if !history.is_empty() {
                state.history.insert(view.slot.name.clone(), history);
            }
            state.slots.insert(view.slot.name.clone(), view);
        }
        for item in self.meta.scan_prefix(PREFIX_BASE_RELOAD) {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let view: ReloadView = decode_value(META, &key, &bytes)?;
            state.reloads.insert(view.reload.id, view);
        }
        Ok(state)
    }
}

/// The slot name a `base/slot/<name>` key or a `slots` key holds, if valid.
pub(crate) fn slot_name_of(key: &[u8]) -> Option<SlotName> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|s| SlotName::new(s).ok())
}
