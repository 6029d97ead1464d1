//! The reload state machine of tryswap, free of I/O.
//!
//! A reload is a value. [`decide`] says what a [`Command`] means in the current state — the
//! [`Event`]s to record, or a typed [`Rejected`] — and [`evolve`] folds an event into the
//! slot and reload it touches. The runtime performs side effects (spawn, probe, stop) and
//! feeds their results back as commands; the journal stores the events and keeps the folds
//! as projections. Nothing here blocks, allocates unboundedly on input, or panics.
//!
//! ```
//! use tryswap_fsm::*;
//! let mut world = World::default();
//! let slot = SlotName::new("demo").unwrap();
//! let id = ReloadId::from_u128(1);
//! let artifact = ArtifactRef { sha256: Sha256([7; 32]), config_sha256: None };
//! world.execute(&Command::Stage { reload: id, slot: slot.clone(), mode: Mode::Activate, artifact }).unwrap();
//! world.execute(&Command::RecordLaunch { reload: id, process: None, log_path: None }).unwrap();
//! world.execute(&Command::RecordHandshake { reload: id, endpoint: None }).unwrap();
//! world.execute(&Command::RecordProbe { reload: id }).unwrap();
//! world.execute(&Command::Commit { reload: id }).unwrap();
//! assert_eq!(world.slots[&slot].active_generation(), Some(Generation(1)));
//! ```
#![warn(missing_docs)]

mod event;
mod machine;
mod pipeline;
mod state;
mod types;
mod world;

pub use event::{Event, EventKind};
pub use machine::{
    check, command_for, decide, evolve, history_entry, Command, Illegal, Rejected, Scope, View,
};
pub use pipeline::{Cause, Effect, Failure, Input, Pipeline, Plan, Relaunch, Verdict};
pub use state::{Candidate, Instance, Reload, ReloadState, Slot};
pub use types::{
    ArtifactRef, Endpoint, Generation, InvalidDigest, InvalidSlotName, Mode, Network,
    ProcessIdentity, Protocol, Reason, ReasonKind, ReloadId, Sha256, SlotName, Stage,
};
pub use world::{Violation, World};
