//! tryswap: safe plugin reloads. Stage, launch, validate, probe, swap — or roll back.
#![warn(missing_docs)]

pub mod admin_body;
mod blocking;
pub mod config;
pub mod driver;
pub mod keepalive;
pub mod probe;
pub mod report;
pub mod store;
pub mod supervisor;
