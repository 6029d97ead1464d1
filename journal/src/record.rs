//! One journal record: an fsm event with its sequence number, time and chain link.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tryswap_fsm::{Event, EventKind, ReloadId, SlotName};

/// The record format this build writes and reads. Stored in every record.
pub const RECORD_FORMAT: u16 = 1;

/// One appended event. Field order is part of the on-disk format: see `docs/journal.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Record format ([`RECORD_FORMAT`]); always the first encoded field.
    pub format: u16,
    /// Gap-free sequence number, starting at 1; also the record's key in tree `events`.
    pub seq: u64,
    /// When the event was recorded (the time given to `Journal::execute`).
    pub at: DateTime<Utc>,
    /// The reload the event belongs to (for slot-level events: the reload that made the
    /// generation in question active).
    pub reload: ReloadId,
    /// The slot the event touches.
    pub slot: SlotName,
    /// What happened.
    pub event: EventKind,
    /// Chain value (stored CRC) of the record with sequence `seq - 1`; 0 for the first.
    pub prev_chain: u32,
}

impl Record {
    /// The fsm event this record holds.
    pub fn event(&self) -> Event {
        Event {
            reload: self.reload,
            slot: self.slot.clone(),
            kind: self.event.clone(),
        }
    }

    /// Whether appending this record is a write-ahead point that must be durable before
    /// the caller acts on it (`Staged`: before spawning; `Activated`: before stopping the
    /// old generation; `Stopped`: before a stop is acknowledged, so that recovery never
    /// relaunches a generation an operator or the keep-alive stopped; `ActivatedBaking`: the bake deadline and the standby are on disk
    /// before the caller reports the bake; `Confirmed`: before the standby is stopped;
    /// `Reverted`: before the candidate is stopped; `Restarting`: before the keep-alive spawns
    /// the restarted generation, so that recovery knows to look for it).
    pub fn needs_durable_flush(&self) -> bool {
        matches!(
            self.event,
            EventKind::Staged { .. }
                | EventKind::Activated
                | EventKind::ActivatedBaking { .. }
                | EventKind::Confirmed
                | EventKind::Reverted { .. }
                | EventKind::Stopped { .. }
                | EventKind::Restarting { .. }
        )
    }
}
