//! tryswap: safe plugin reloads. Stage, launch, validate, probe, swap — or roll back.
#![warn(missing_docs)]

pub mod admin_body;
pub mod config;
pub mod config_reload;
pub mod driver;
pub mod engine;
pub mod handshake;
pub mod lease;
pub mod monitor;
pub mod probe;
pub mod process;
pub mod process_driver;
pub mod recovery;
pub mod report;
pub mod stdio;
pub mod store;
pub mod supervisor;
