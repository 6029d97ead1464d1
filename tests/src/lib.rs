//! End-to-end test support for tryswap.
//!
//! This crate holds the fixture plugin (`tryswap-fixture-plugin`, a Rust binary
//! that behaves like a hashicorp/go-plugin gRPC plugin and can be told to
//! misbehave through a config file) and everything tests need around it:
//!
//! - [`config`]: the fixture's config file ([`FixtureConfig`]);
//! - [`client`]: gRPC calls to a plugin ([`call`], [`health`], [`shutdown`]);
//! - [`handshake`]: parsing go-plugin handshake lines ([`Handshake`]);
//! - [`process`]: launching plugins like a go-plugin host ([`PluginCommand`],
//!   [`PluginProcess`]), cleanup guards ([`TempState`]), pid helpers and
//!   bounded polling ([`wait_until`]);
//! - [`proto`]: the wire types and gRPC services (hand-written tonic glue).
//!
//! Typical use:
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tryswap_tests::{FixtureConfig, Handshake, PluginCommand, TempState};
//!
//! let state = TempState::new()?;
//! let config = FixtureConfig::with_message("v1").write(&state.join("v1.toml"))?;
//! let plugin = PluginCommand::fixture().config(&config).spawn()?;
//! let hs = Handshake::parse(&plugin.next_line(Duration::from_secs(10))?)?;
//! let reply = tryswap_tests::call(&hs.network, &hs.address, "hi", Duration::from_secs(5)).await?;
//! assert_eq!(reply.message, "v1");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod crash;
pub mod daemon;
pub mod handshake;
pub mod harness;
pub mod process;
pub mod proto;

pub use client::{call, connect, health, shutdown, ClientError, ServingStatus};
pub use config::{ConfigError, FixtureConfig, FixtureNetwork};
pub use handshake::{Handshake, HandshakeError};
pub use process::{
    fixture_plugin_path, pid_alive, process_group, read_pid_file, session_of, wait_until,
    wait_until_async, workspace_bin_path, PluginCommand, PluginProcess, ProcessError, TempState,
};
pub use proto::CallReply;

/// Name of the variable that turns every capability skip into a failure: set
/// `TRYSWAP_REQUIRE_ALL=1` on a machine that is meant to have every capability the tests use
/// (user namespaces, cgroup v2, a browser…), so a skipped test cannot hide a broken setup.
pub const REQUIRE_ALL_ENV: &str = "TRYSWAP_REQUIRE_ALL";

/// Reports that `test` could not run here because of `why` (a missing capability, never a
/// failure of tryswap). Prints the reason and returns; panics instead when
/// [`REQUIRE_ALL_ENV`] is `1`.
pub fn skip(test: &str, why: &str) {
    if std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v.trim() == "1") {
        panic!("{test} cannot run here ({why}) and {REQUIRE_ALL_ENV}=1 forbids skipping it");
    }
    eprintln!("skipping {test}: {why} (set {REQUIRE_ALL_ENV}=1 to make this a failure)");
}
