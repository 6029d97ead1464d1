//! What `verify` and `compact` report, whatever the store.

use std::fmt;

use serde::Serialize;
use tryswap_fsm::{ReloadId, SlotName};

/// What a compaction did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// The compaction base after the call: records after it are continuous and folded
    /// from the base snapshot by `verify` and `replay`.
    pub base_seq: u64,
    /// Reloads whose projections and records were removed.
    pub reloads_dropped: u64,
    /// Records removed.
    pub events_dropped: u64,
    /// Reload projections kept.
    pub reloads_kept: u64,
    /// Records the journal holds after the call (the kept ones up to the base, and any
    /// after it): what the next compaction rewrites, whatever it drops.
    pub events_kept: u64,
}

/// What kind of problem `verify` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A stored record or value does not decode (bad CRC, bad bytes, unknown format).
    Undecodable,
    /// A record's own seq differs from its key.
    SeqMismatch,
    /// Sequence numbers after the compaction base are not continuous.
    Gap,
    /// A record's `prev_chain` is not its predecessor's chain value.
    ChainBroken,
    /// A record is not what the state machine would have recorded in the state before it.
    Illegal,
    /// A stored projection differs from the fold of the events.
    ProjectionMismatch,
    /// The fold has a slot or reload the projections lack.
    ProjectionMissing,
    /// The projections have a slot or reload the fold lacks.
    ProjectionExtra,
    /// The meta values disagree with the events.
    Meta,
    /// The compaction base snapshot is damaged.
    Base,
    /// The witness file is unreadable or disagrees with the events.
    Witness,
    /// The segment log is damaged, or sled holds records the log does not.
    Log,
}

/// One thing `verify` found wrong, with where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The sled tree (or file) involved.
    pub tree: String,
    /// The record's sequence number, if the problem is about a record.
    pub seq: Option<u64>,
    /// The slot involved, if known.
    pub slot: Option<SlotName>,
    /// The reload involved, if known.
    pub reload: Option<ReloadId>,
    /// What is wrong.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} in `{}`", self.kind, self.tree)?;
        if let Some(seq) = self.seq {
            write!(f, " seq {seq}")?;
        }
        if let Some(slot) = &self.slot {
            write!(f, " slot {slot}")?;
        }
        if let Some(reload) = &self.reload {
            write!(f, " reload {reload}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What `verify` checked and found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records decoded and checked (including kept records before the compaction base).
    pub events_checked: u64,
    /// The compaction base (0 if never compacted).
    pub base_seq: u64,
    /// The last sequence number according to `meta`.
    pub last_seq: u64,
    /// Everything found wrong; empty when the journal is sound.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}
