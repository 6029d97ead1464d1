//! tryswap: safe plugin reloads. Stage, launch, validate, probe, swap — or roll back.
#![warn(missing_docs)]

pub mod admin_body;
pub mod config;
pub mod driver;
mod file_modes;
pub mod keepalive;
pub mod probe;
pub mod report;
pub mod store;
pub mod supervisor;
