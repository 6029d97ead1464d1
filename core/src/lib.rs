//! tryswap: safe plugin reloads. Stage, launch, validate, probe, swap — or roll back.
#![warn(missing_docs)]

pub mod config;
pub mod handshake;
pub mod probe;
pub mod process;
pub mod store;
