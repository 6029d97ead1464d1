//! One journal record: an fsm event with its sequence number, time, chain link, and who
//! wrote it why.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tryswap_fsm::{Event, EventKind, ReloadId, SlotName};

/// The record format this build writes. Stored in every record. Format 1 (no `actor`, no
/// `reason`) is still read: see [`LEGACY_RECORD_FORMAT`].
pub const RECORD_FORMAT: u16 = 2;

/// The record format of journals written before records carried an actor and a reason.
/// Such records decode with [`Actor::default`] (`unknown`) and no reason, keep their format
/// number and re-encode to their original bytes.
pub const LEGACY_RECORD_FORMAT: u16 = 1;

/// What kind of caller wrote a record. The variant order is part of the record format:
/// append new kinds at the end only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// Not known: a record of format 1, or a write whose caller named no actor (an
    /// embedding host).
    #[default]
    Unknown,
    /// A `tryswap` command run without a daemon (`uid` and `pid` of that process).
    Cli,
    /// A call to the daemon's admin API (`uid`: the peer's, when the socket tells it).
    Api,
    /// The daemon's keep-alive (crashes, restarts).
    Keepalive,
    /// Crash recovery (whatever command or daemon start ran it).
    Recovery,
    /// A config reload (`reload-config`, SIGHUP, `POST /v1/config/reload`).
    ConfigReload,
}

/// Who wrote a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// What kind of caller.
    pub kind: ActorKind,
    /// The caller's uid, when known.
    pub uid: Option<u32>,
    /// The caller's pid, when known.
    pub pid: Option<u32>,
}

impl Actor {
    /// An actor of `kind` with no uid or pid.
    pub fn of(kind: ActorKind) -> Self {
        Actor {
            kind,
            uid: None,
            pid: None,
        }
    }
}

thread_local! {
    static ORIGIN: RefCell<(Actor, Option<String>)> = const {
        RefCell::new((Actor { kind: ActorKind::Unknown, uid: None, pid: None }, None))
    };
}

/// Runs `write` with every record appended by it on this thread carrying `actor` and
/// `reason`. Journal writes are synchronous on the calling thread, so the caller of
/// `execute`/`execute_all` wraps that call; the previous origin is restored afterwards.
pub fn with_origin<T>(actor: Actor, reason: Option<&str>, write: impl FnOnce() -> T) -> T {
    let previous = ORIGIN.with(|o| o.replace((actor, reason.map(str::to_owned))));
    struct Restore(Option<(Actor, Option<String>)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                ORIGIN.with(|o| *o.borrow_mut() = previous);
            }
        }
    }
    let _restore = Restore(Some(previous));
    write()
}

/// The actor and reason records appended now on this thread carry (see [`with_origin`]).
pub(crate) fn current_origin() -> (Actor, Option<String>) {
    ORIGIN.with(|o| o.borrow().clone())
}

/// One appended event. Field order is part of the on-disk format: see `docs/journal.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Record format ([`RECORD_FORMAT`]); always the first encoded field.
    pub format: u16,
    /// Gap-free sequence number, starting at 1; also the record's key in tree `events`.
    pub seq: u64,
    /// When the event was recorded (the time given to `Journal::execute`).
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
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
    /// Who wrote it (format 2 on; `unknown` for older records, and in JSON exports of
    /// them, which have no `actor`).
    #[serde(default)]
    pub actor: Actor,
    /// The operator's reason (`--reason`, API `"reason"`), if one was given.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A record of format 1, as stored: [`Record`] without `actor` and `reason`.
#[derive(Serialize, Deserialize)]
pub(crate) struct LegacyRecord {
    format: u16,
    seq: u64,
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    at: DateTime<Utc>,
    reload: ReloadId,
    slot: SlotName,
    event: EventKind,
    prev_chain: u32,
}

impl From<LegacyRecord> for Record {
    fn from(r: LegacyRecord) -> Self {
        Record {
            format: r.format,
            seq: r.seq,
            at: r.at,
            reload: r.reload,
            slot: r.slot,
            event: r.event,
            prev_chain: r.prev_chain,
            actor: Actor::default(),
            reason: None,
        }
    }
}

impl From<&Record> for LegacyRecord {
    fn from(r: &Record) -> Self {
        LegacyRecord {
            format: r.format,
            seq: r.seq,
            at: r.at,
            reload: r.reload,
            slot: r.slot.clone(),
            event: r.event.clone(),
            prev_chain: r.prev_chain,
        }
    }
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

    /// Whether appending this record is a write-ahead point that must be durable (survive a
    /// power loss) before the caller acts on it (`Activated`: before stopping the old
    /// generation and reporting the swap; `Stopped`: before a stop is acknowledged, so that recovery never
    /// relaunches a generation an operator or the keep-alive stopped; `ActivatedBaking`: the bake deadline and the standby are on disk
    /// before the caller reports the bake; `Confirmed`: before the standby is stopped;
    /// `Reverted`: before the candidate is stopped; `Restarting`: before the keep-alive spawns
    /// the restarted generation, so that recovery knows to look for it; `Adopted`: before
    /// the former active generation is stopped).
    ///
    /// `Staged` is not one: every record is in the log (the kernel's page cache) when the
    /// write returns, so a process that dies after the spawn leaves the record to
    /// recovery, which stops the tagged candidate; and a power loss that loses the record
    /// also ends the candidate it licensed. Its sync rides on the commit's
    /// (docs/journal.md, "Write-ahead rules and flush points").
    pub fn needs_durable_flush(&self) -> bool {
        matches!(
            self.event,
            EventKind::Activated
                | EventKind::ActivatedBaking { .. }
                | EventKind::Confirmed
                | EventKind::Reverted { .. }
                | EventKind::Stopped { .. }
                | EventKind::Restarting { .. }
                | EventKind::Adopted { .. }
        )
    }
}
