//! The fixture plugin's config file: which generation it is and how it misbehaves.
//!
//! The plugin is started as `tryswap-fixture-plugin --config <path>`; the file is
//! TOML, every key is optional and unknown keys are errors. Tests build a
//! [`FixtureConfig`] and [`FixtureConfig::write`] it next to the plugin.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Message returned by `Fixture/Call` when the config sets none.
pub const DEFAULT_MESSAGE: &str = "default";

/// Where the fixture listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FixtureNetwork {
    /// `127.0.0.1:<port>`, within `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT` if given.
    #[default]
    Tcp,
    /// A socket `plugin<random>` in `PLUGIN_UNIX_SOCKET_DIR`, else `$TMPDIR`,
    /// else `/tmp` (like go-plugin on Linux); removed on a clean exit.
    Unix,
}

impl FixtureNetwork {
    /// The handshake line's NETWORK-TYPE word: `tcp` or `unix`.
    pub fn as_str(self) -> &'static str {
        match self {
            FixtureNetwork::Tcp => "tcp",
            FixtureNetwork::Unix => "unix",
        }
    }
}

/// Contents of a fixture config file. `Default` is a well-behaved plugin.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureConfig {
    /// Returned by `Fixture/Call` (default `"default"`), so tests can tell
    /// generations apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// App protocol versions the plugin supports (default `[1]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_versions: Option<Vec<u32>>,
    /// Listen on tcp (default) or a unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<FixtureNetwork>,
    /// Exit with this code before printing the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_before_handshake: Option<i32>,
    /// Print this line instead of the real handshake, then keep serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_line: Option<String>,
    /// Print this core protocol version in the handshake instead of 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_version: Option<u32>,
    /// Print this app version in the handshake instead of the negotiated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version_override: Option<u32>,
    /// Force (`true`) or suppress (`false`) the trailing `|` (empty
    /// SERVER-CERT) of the handshake line. Default: only for unix, as the brief
    /// for the fixture asks (go-plugin itself prints it for both networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailing_pipe: Option<bool>,
    /// go-plugin's exact negotiation: when `PLUGIN_PROTOCOL_VERSIONS` shares no
    /// version with `app_versions`, serve the lowest supported version instead
    /// of exiting 1 (the host must then reject the handshake).
    #[serde(default, skip_serializing_if = "is_false")]
    pub version_fallback: bool,
    /// Never print a handshake; keep running.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hang: bool,
    /// Health reports NOT_SERVING forever.
    #[serde(default, skip_serializing_if = "is_false")]
    pub never_healthy: bool,
    /// Health reports NOT_SERVING until this long after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_after_ms: Option<u64>,
    /// Health turns NOT_SERVING this long after start (and stays so); the process keeps
    /// running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_after_ms: Option<u64>,
    /// Spend this long initialising before listening and printing the handshake (a plugin
    /// that loads data or connects to something first; the benchmark's realistic plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_delay_ms: Option<u64>,
    /// Exit with code 2 this long after printing the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_after_ms: Option<u64>,
    /// Ignore SIGTERM and `GRPCController/Shutdown` (SIGINT still exits 0).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_sigterm: bool,
    /// Before the handshake, start a grandchild (this binary re-executed with
    /// `--grandchild`) that sleeps until killed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fork_grandchild: bool,
    /// Where to write the grandchild's pid (written before the handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grandchild_pid_file: Option<PathBuf>,
    /// The grandchild calls `setsid`, escaping the plugin's process group.
    #[serde(default, skip_serializing_if = "is_false")]
    pub grandchild_new_session: bool,
    /// The grandchild starts with an empty environment (no `TRYSWAP_RELOAD_ID` tag).
    #[serde(default, skip_serializing_if = "is_false")]
    pub grandchild_clear_env: bool,
    /// After the handshake, write to stdout as fast as possible forever.
    #[serde(default, skip_serializing_if = "is_false")]
    pub flood_stdout: bool,
    /// After the handshake, write to stderr as fast as possible forever.
    #[serde(default, skip_serializing_if = "is_false")]
    pub flood_stderr: bool,
    /// Write the plugin's own pid here at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// Serve go-plugin's stdio stream (`plugin.GRPCStdio/StreamStdio`) the way go-plugin
    /// does, and write this many KiB to it after the handshake: 1 KiB lines
    /// `stdio line N …\n` (every 10th on STDERR, the rest on STDOUT) go through a
    /// 64 KiB buffer that only the stream drains; a writer waits while it is full, like a
    /// go-plugin plugin writing to its replaced `os.Stdout`. Each `Fixture/Call` also
    /// writes one line before replying, so calls block when nobody drains the stream.
    /// Unset (default): `plugin.GRPCStdio` is not served (calls answer `Unimplemented`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio_stream_kib: Option<u64>,
    /// Append one line, the plugin's pid, to this file for every connection it accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_file: Option<PathBuf>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a fixture config could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("fixture config {path}: cannot read: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid fixture TOML (syntax, type or unknown key).
    #[error("fixture config {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML error, with line and column.
        source: toml::de::Error,
    },
    /// The file parsed but a value is unusable.
    #[error("fixture config {path}: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The config could not be serialized.
    #[error("fixture config {path}: cannot serialize: {source}")]
    Serialize {
        /// The destination file.
        path: PathBuf,
        /// The TOML error.
        source: toml::ser::Error,
    },
    /// The file could not be written.
    #[error("fixture config {path}: cannot write: {source}")]
    Write {
        /// The destination file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl FixtureConfig {
    /// A well-behaved config whose `Call` replies carry `message`.
    pub fn with_message(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            ..Self::default()
        }
    }

    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The config as TOML text (only the keys that are set).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Writes the config as TOML to `path` (replacing it) and returns `path`.
    pub fn write(&self, path: &Path) -> Result<PathBuf, ConfigError> {
        let text = self.to_toml().map_err(|source| ConfigError::Serialize {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text).map_err(|source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(path.to_path_buf())
    }

    /// The message `Call` returns.
    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or(DEFAULT_MESSAGE)
    }

    /// The app versions the plugin supports.
    pub fn app_versions(&self) -> Vec<u32> {
        self.app_versions.clone().unwrap_or_else(|| vec![1])
    }

    /// Where the plugin listens.
    pub fn network(&self) -> FixtureNetwork {
        self.network.unwrap_or_default()
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if matches!(&self.app_versions, Some(v) if v.is_empty()) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: "app_versions must not be empty".to_owned(),
            });
        }
        Ok(())
    }
}
