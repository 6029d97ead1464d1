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

// Unit tests moved in from tests/ keep their `tryswap::…` paths.
#[cfg(test)]
extern crate self as tryswap;

pub mod admin_body;
mod blocking;
pub mod config;
mod driver;
pub mod endpoint;
mod file_modes;
mod keepalive;
mod origin;
mod probe;
pub mod report;
mod store;
mod supervisor;

pub use config::{
    AdminConfig, Config, ConfigError, HandshakeConfig, ProbeConfig, ProbeKind, RestartConfig,
    RestartPolicy, SlotConfig,
};
pub use driver::engine::{engine_of, Engine, EngineDriver, EngineFactory};
pub use driver::{
    Driver, DriverError, FoundBy, FoundProcess, Instance, LaunchRequest, Liveness, StopOutcome,
};
pub use keepalive::{
    KeepAliveState, Monitor, MonitorEvent, MonitorEventKind, MonitorOptions, SlotHealth,
};
pub use origin::{acting, Origin};
pub use report::{DrainReport, HistoryReport, Outcome, ReloadReport, SlotStatus, StatusReport};
pub use store::{DurableLater, GcReport, PendingDurable, Store, StoreError, StoreUsage};
pub use supervisor::bake::{BakeEnd, BakeWatch};
pub use supervisor::config_reload::{ConfigOutcome, ConfigReloadReport};
pub use supervisor::damaged::{stop_without_journal, UnrecordedProcess, UnrecordedStop};
pub use supervisor::lease::Lease;
pub use supervisor::recovery::{RecoveryAction, RecoveryReport};
pub use supervisor::{CandidateSpec, Supervisor, SupervisorError};
pub use tryswap_fsm::{
    ArtifactRef, Endpoint, Generation, Mode, Network, Protocol, ReloadId, Sha256, SlotName, Stage,
};

/// Not part of the API: what tryswap's own command, tests, benchmarks and fuzz targets use
/// of the runtime's insides (process spawning and `/proc`, the handshake parser, probes,
/// the stdio drain, crash-test failpoints). It changes without notice; embedders use the
/// items at the crate's top level.
#[doc(hidden)]
pub mod internals {
    pub use crate::driver::process::{cgroup, handshake, os, sockets, stdio, ProcessDriver};
    /// Probes: one check, thresholds, go-plugin's controller.
    pub mod probe {
        pub use crate::probe::*;
    }
    pub use crate::supervisor::config_reload::SLOT_WAIT;
    pub use crate::supervisor::recovery::{
        arm_failpoints, arm_failpoints_from_env, FAILPOINTS, FAILPOINTS_ENV,
    };
}

/// The journal: the audit trail a [`Supervisor`] writes (`Supervisor::journal`), its
/// records, views and errors.
pub use tryswap_journal as journal;
