//! tryswap: safe plugin reloads. Stage, launch, validate, probe, swap — or roll back.
//!
//! An embedding host needs this one crate. Open a [`Supervisor`] on a state directory,
//! register slots ([`Supervisor::add_process_slot`] for go-plugin processes,
//! [`Supervisor::add_engine_slot`] for in-process [`Engine`]s, [`Supervisor::add_slot`] for any
//! [`Driver`]), call [`Supervisor::recover`], then reload with [`Supervisor::activate`],
//! [`Supervisor::try_activate`] and [`Supervisor::rollback`], and do work through a
//! [`Lease`]. Every outcome is a [`ReloadReport`]; a rejected candidate is an outcome, not an
//! error. The value types shared with the journal (slot names, generations, reload ids,
//! digests) are re-exported from `tryswap-fsm`, and the journal itself from
//! `tryswap-journal` as [`journal`], so a host depends on `tryswap` alone.
//!
//! docs/embedding.md walks through an embedding; `core/examples/embed.rs` is its code.
#![warn(missing_docs)]

pub mod admin_body;
mod blocking;
pub mod config;
pub mod driver;
mod file_modes;
pub mod keepalive;
pub mod probe;
pub mod report;
pub mod store;
pub mod supervisor;

pub use config::{
    AdminConfig, Config, ConfigError, HandshakeConfig, ProbeConfig, ProbeKind, RestartConfig,
    RestartPolicy, SlotConfig,
};
pub use driver::engine::{Engine, EngineFactory};
pub use driver::{Driver, DriverError, Instance, LaunchRequest, StopOutcome};
pub use keepalive::{Monitor, MonitorEvent, MonitorEventKind, MonitorOptions, SlotHealth};
pub use report::{HistoryReport, Outcome, ReloadReport, SlotStatus, StatusReport};
pub use supervisor::config_reload::{ConfigOutcome, ConfigReloadReport};
pub use supervisor::lease::Lease;
pub use supervisor::recovery::{RecoveryAction, RecoveryReport};
pub use supervisor::{CandidateSpec, Supervisor, SupervisorError};
pub use tryswap_fsm::{
    ArtifactRef, Endpoint, Generation, Mode, Network, Protocol, ReloadId, Sha256, SlotName, Stage,
};

/// The journal: the audit trail a [`Supervisor`] writes (`Supervisor::journal`), its
/// records, views and errors.
pub use tryswap_journal as journal;
