//! The TOML config file: state directory, admin API and slots.
//!
//! [`Config::parse`] turns the text of a `tryswap.toml` into a validated [`Config`]. Every
//! error names the file and the line it is about (and, where it helps, the slot and the
//! table): unknown keys, malformed values, durations humantime cannot read, and the
//! semantic rules checked after parsing (duplicate slot names, empty version lists, port
//! ranges, thresholds, probe keys that do not fit the probe kind …).
//!
//! ```
//! use std::path::Path;
//! use tryswap::config::{Config, ProbeKind};
//!
//! let text = r#"
//! [[slot]]
//! name = "demo"
//! args = ["--config", "{config}"]
//! [slot.probe]
//! kind = "http"
//! "#;
//! let config = Config::parse(text, Path::new("tryswap.toml")).unwrap();
//! let slot = &config.slots[0];
//! assert_eq!(slot.args, ["--config", "{config}"]);
//! assert_eq!(slot.probe.kind, ProbeKind::Http { path: "/healthz".into() });
//! ```

// The config file tests build exhaustive struct literals (a new field must be added to
// them), which `#[non_exhaustive]` allows only inside this crate.
#[cfg(test)]
mod file_tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use tryswap_fsm::{Protocol, SlotName};

/// A parsed and validated config file.
#[derive(Clone, Debug, PartialEq, Default)]
#[non_exhaustive]
pub struct Config {
    /// `state_dir`: where the journal, store and logs live, exactly as written (a relative
    /// path is not resolved here). `None` when the file does not set it.
    pub state_dir: Option<PathBuf>,
    /// `[admin]`: the daemon's admin API.
    pub admin: AdminConfig,
    /// `[[slot]]` tables, in file order. Names are unique.
    pub slots: Vec<SlotConfig>,
    /// `journal_compact_bytes`: the daemon compacts the journal (keeping
    /// `tryswap_journal::DEFAULT_KEEP_PER_SLOT` finished reloads per slot) once its log and
    /// sled's files take more than this; `None`: [`DEFAULT_JOURNAL_COMPACT_BYTES`]; 0: never.
    pub journal_compact_bytes: Option<u64>,
    /// `journal_compact_records`: the daemon also compacts once this many records were
    /// appended since its last compaction (what bounds sled's memory, which grows with the
    /// records it indexes); `None`: [`DEFAULT_JOURNAL_COMPACT_RECORDS`]; 0: never.
    pub journal_compact_records: Option<u64>,
    /// The file this config was read from (the `origin` given to [`Config::parse`]), or
    /// `None` for a config built in code.
    pub source: Option<PathBuf>,
}

/// `[admin]`: where the daemon serves its admin API.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Unix socket path; a relative path is relative to the state directory. Default
    /// `tryswap.sock`.
    pub socket: PathBuf,
    /// Optional TCP listen address. Only ever set together with `token_file`.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token required on TCP (and accepted on the socket).
    pub token_file: Option<PathBuf>,
    /// `admin.socket_outside_state_dir = true`: allows a `socket` that is absolute or leaves
    /// the state directory with `..`. Off by default: a socket elsewhere (e.g. in a
    /// directory other users can write) could be bound first by someone else.
    pub socket_outside_state_dir: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            listen: None,
            token_file: None,
            socket_outside_state_dir: false,
        }
    }
}

/// One `[[slot]]`: how to launch, validate, probe, stop and restart its plugin.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SlotConfig {
    /// The slot's name.
    pub name: SlotName,
    /// Arguments given to the plugin executable. `{config}` is kept literally here; the
    /// runtime replaces it with the staged config file's path.
    pub args: Vec<String>,
    /// Environment variables set for the plugin (in addition to the handshake variables).
    pub env: BTreeMap<String, String>,
    /// Names of host environment variables passed through (e.g. `["PATH"]`); default none.
    pub pass_env: Vec<String>,
    /// How long a candidate may take to print its handshake line. Default 10s. Never zero.
    pub start_timeout: Duration,
    /// How long in-flight leases of a retiring generation may take. Default 5s. Never zero.
    pub drain_timeout: Duration,
    /// How long between the graceful stop and SIGKILL. Default 5s. Never zero.
    pub stop_timeout: Duration,
    /// Size at which a generation's log file stops growing; 0 means unlimited. Default 64 MiB.
    pub log_max_bytes: u64,
    /// `[slot.handshake]`.
    pub handshake: HandshakeConfig,
    /// `[slot.probe]`.
    pub probe: ProbeConfig,
    /// `[slot.restart]`.
    pub restart: RestartConfig,
    /// The bake window of a reload (DESIGN.md "Provisional activation"): how long a
    /// committed candidate stays provisional, with the previous generation as a warm
    /// standby. Default zero: off. At most [`MAX_BAKE`].
    pub bake: Duration,
    /// `endpoint = "127.0.0.1:7000"`: a TCP address `tryswap serve` listens on and forwards
    /// to the active generation (DESIGN.md "Stable endpoints for outside callers"). Unix
    /// socket plugins need none: their stable endpoint is `<state_dir>/endpoints/<slot>.sock`.
    pub endpoint: Option<SocketAddr>,
}

/// The longest bake window a slot or a reload may ask for.
pub const MAX_BAKE: Duration = MAX_DURATION;

/// Parses a bake window (`--bake DUR`, the API body's `"bake"`): a duration such as `"30s"`,
/// at most [`MAX_BAKE`]; `"0s"` means no bake.
pub fn parse_bake(text: &str) -> Result<Duration, String> {
    let value = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("bake {text:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"1m\"")
    })?;
    if value > MAX_BAKE {
        return Err(format!("bake {text:?} is longer than 24h"));
    }
    Ok(value)
}

impl SlotConfig {
    /// A slot with every setting at its default: no args, no env, timeouts 10s/5s/5s,
    /// 64 MiB logs, the default handshake for `name`, a gRPC probe and on-failure restarts.
    pub fn new(name: SlotName) -> SlotConfig {
        SlotConfig {
            handshake: HandshakeConfig::for_slot(&name),
            name,
            args: Vec::new(),
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            probe: ProbeConfig::default(),
            restart: RestartConfig::default(),
            bake: Duration::ZERO,
            endpoint: None,
        }
    }
}

/// `[slot.handshake]`: the go-plugin handshake a candidate must complete.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HandshakeConfig {
    /// Name of the magic cookie environment variable. Default `TRYSWAP_PLUGIN`; never empty.
    pub magic_cookie_key: String,
    /// Value of the magic cookie. Default: the slot name.
    pub magic_cookie_value: String,
    /// Application protocol versions the slot accepts. Default `[1]`; never empty.
    pub app_protocol_versions: Vec<u32>,
    /// RPC protocols the slot accepts. Default `[Grpc]`; never empty.
    pub protocols: Vec<Protocol>,
    /// Lowest TCP port the plugin may listen on (`PLUGIN_MIN_PORT`). Default 10000.
    pub min_port: u16,
    /// Highest TCP port the plugin may listen on (`PLUGIN_MAX_PORT`). Default 25000;
    /// never below `min_port`.
    pub max_port: u16,
}

impl HandshakeConfig {
    /// The default handshake for a slot: cookie `TRYSWAP_PLUGIN=<slot>`, app version 1,
    /// gRPC, ports 10000–25000.
    pub fn for_slot(slot: &SlotName) -> HandshakeConfig {
        HandshakeConfig {
            magic_cookie_key: DEFAULT_MAGIC_COOKIE_KEY.to_owned(),
            magic_cookie_value: slot.as_str().to_owned(),
            app_protocol_versions: vec![1],
            protocols: vec![Protocol::Grpc],
            min_port: DEFAULT_MIN_PORT,
            max_port: DEFAULT_MAX_PORT,
        }
    }
}

/// `[slot.probe]`: how a candidate's health is checked (Kubernetes semantics).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// What the probe does.
    pub kind: ProbeKind,
    /// Wait before the first attempt. Default 0.
    pub initial_delay: Duration,
    /// Time between attempts. Default 500ms. Never zero.
    pub period: Duration,
    /// Time one attempt may take. Default 1s. Never zero.
    pub timeout: Duration,
    /// Consecutive successes needed to pass. Default 1. At least 1.
    pub success_threshold: u32,
    /// Consecutive failures that fail the probe. Default 3. At least 1.
    pub failure_threshold: u32,
}

impl Default for ProbeConfig {
    /// A gRPC health check of service `plugin`, every 500ms, 1s timeout, thresholds 1/3.
    fn default() -> Self {
        ProbeConfig {
            kind: ProbeKind::Grpc {
                service: DEFAULT_GRPC_SERVICE.to_owned(),
            },
            initial_delay: Duration::ZERO,
            period: DEFAULT_PROBE_PERIOD,
            timeout: DEFAULT_PROBE_TIMEOUT,
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

/// The kind of a probe, with its kind-specific settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeKind {
    /// grpc.health.v1 `Check` against the handshake address.
    Grpc {
        /// Service name asked about. Default `plugin` (what go-plugin serves).
        service: String,
    },
    /// HTTP GET against the handshake address; 2xx and 3xx pass.
    Http {
        /// Request path, starting with `/`. Default `/healthz`.
        path: String,
    },
    /// A TCP connect to the handshake address.
    Tcp,
    /// Run a command; exit status 0 passes.
    Exec {
        /// Program and arguments; never empty.
        command: Vec<String>,
    },
    /// No probe: the handshake alone validates the candidate.
    None,
}

impl ProbeKind {
    /// The kind's name as written in the config: `grpc`, `http`, `tcp`, `exec` or `none`.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Grpc { .. } => "grpc",
            ProbeKind::Http { .. } => "http",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Exec { .. } => "exec",
            ProbeKind::None => "none",
        }
    }
}

/// `[slot.restart]`: how the daemon keeps an active generation alive.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RestartConfig {
    /// When to restart. Default [`RestartPolicy::OnFailure`].
    pub policy: RestartPolicy,
    /// First backoff delay. Default 200ms. Never zero.
    pub backoff_initial: Duration,
    /// Largest backoff delay. Default 30s. Never below `backoff_initial`.
    pub backoff_max: Duration,
}

impl Default for RestartConfig {
    /// On-failure restarts with backoff from 200ms up to 30s.
    fn default() -> Self {
        RestartConfig {
            policy: RestartPolicy::OnFailure,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// When the daemon restarts an active generation that exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// Never restart.
    Never,
    /// Restart when it exits with a failure status or is killed by a signal.
    OnFailure,
    /// Restart whenever it exits.
    Always,
}

impl RestartPolicy {
    /// The policy's name as written in the config: `never`, `on-failure` or `always`.
    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8 …).
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not valid TOML, a key is unknown, or a value has the wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The TOML is well-formed but breaks a rule (duplicate slot, empty version list …).
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the offending value, when known.
        line: Option<usize>,
        /// What is wrong, naming the slot and key.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Parse { line, .. } => Some(*line),
            ConfigError::Invalid { line, .. } => *line,
        }
    }
}

/// Default admin socket name, relative to the state directory.
pub const DEFAULT_ADMIN_SOCKET: &str = "tryswap.sock";
/// Default magic cookie key.
pub const DEFAULT_MAGIC_COOKIE_KEY: &str = "TRYSWAP_PLUGIN";
/// Default gRPC health service name (the one go-plugin registers).
pub const DEFAULT_GRPC_SERVICE: &str = "plugin";
/// Default HTTP probe path.
pub const DEFAULT_HTTP_PATH: &str = "/healthz";
/// Default `journal_compact_bytes`: 64 MiB.
pub const DEFAULT_JOURNAL_COMPACT_BYTES: u64 = 64 << 20;
/// Default `journal_compact_records`: 1,000 records (about 170 reloads). sled holds about
/// 50 bytes of memory per record it indexes, and a compaction's one transaction needs
/// about 3.5 KiB per record it drops while it runs (docs/performance.md, section 5c).
pub const DEFAULT_JOURNAL_COMPACT_RECORDS: u64 = 1_000;

/// Default `log_max_bytes`: 64 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The longest duration a config file may give any key: longer timers are mistakes, and
/// adding them to a clock could overflow it.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_PROBE_PERIOD: Duration = Duration::from_millis(500);
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
const DEFAULT_MIN_PORT: u16 = 10000;
const DEFAULT_MAX_PORT: u16 = 25000;

impl Config {
    /// A config with these slots and every other setting at its default (the state dir
    /// and admin socket unset), as a file with only `[[slot]]` tables would give.
    pub fn with_slots(slots: Vec<SlotConfig>) -> Config {
        Config {
            slots,
            ..Config::default()
        }
    }

    /// Parses and validates the text of a config file. `origin` is used in error messages
    /// and kept as [`Config::source`]; nothing is read from it.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx { text, path: origin };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
        ctx.build(raw)
    }

    /// Reads and parses the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// The slot called `name`, if the config has one.
    pub fn slot(&self, name: &SlotName) -> Option<&SlotConfig> {
        self.slots.iter().find(|s| &s.name == name)
    }
}

// ---------------------------------------------------------------------------------------
// Raw shapes, as written in the file. Values checked after parsing carry their spans.

type Sp<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Sp<String>>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    slot: Vec<RawSlot>,
    journal_compact_bytes: Option<u64>,
    journal_compact_records: Option<u64>,
}
const TOP_KEYS: &[&str] = &[
    "state_dir",
    "admin",
    "slot",
    "journal_compact_bytes",
    "journal_compact_records",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<Sp<String>>,
    listen: Option<Sp<String>>,
    token_file: Option<Sp<String>>,
    socket_outside_state_dir: Option<bool>,
}
const ADMIN_KEYS: &[&str] = &["socket", "listen", "token_file", "socket_outside_state_dir"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlot {
    name: Sp<String>,
    args: Option<Vec<Sp<String>>>,
    env: Option<BTreeMap<Sp<String>, Sp<String>>>,
    pass_env: Option<Vec<Sp<String>>>,
    start_timeout: Option<Sp<String>>,
    drain_timeout: Option<Sp<String>>,
    stop_timeout: Option<Sp<String>>,
    log_max_bytes: Option<u64>,
    handshake: Option<RawHandshake>,
    probe: Option<RawProbe>,
    restart: Option<RawRestart>,
    bake: Option<Sp<String>>,
    endpoint: Option<Sp<String>>,
}
const SLOT_KEYS: &[&str] = &[
    "name",
    "args",
    "env",
    "pass_env",
    "start_timeout",
    "drain_timeout",
    "stop_timeout",
    "log_max_bytes",
    "handshake",
    "probe",
    "restart",
    "bake",
    "endpoint",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandshake {
    magic_cookie_key: Option<Sp<String>>,
    magic_cookie_value: Option<Sp<String>>,
    app_protocol_versions: Option<Sp<Vec<u32>>>,
    protocols: Option<Sp<Vec<Sp<String>>>>,
    min_port: Option<Sp<u16>>,
    max_port: Option<Sp<u16>>,
}
const HANDSHAKE_KEYS: &[&str] = &[
    "magic_cookie_key",
    "magic_cookie_value",
    "app_protocol_versions",
    "protocols",
    "min_port",
    "max_port",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    kind: Option<Sp<String>>,
    initial_delay: Option<Sp<String>>,
    period: Option<Sp<String>>,
    timeout: Option<Sp<String>>,
    success_threshold: Option<Sp<u32>>,
    failure_threshold: Option<Sp<u32>>,
    service: Option<Sp<String>>,
    path: Option<Sp<String>>,
    command: Option<Sp<Vec<Sp<String>>>>,
}
const PROBE_KEYS: &[&str] = &[
    "kind",
    "initial_delay",
    "period",
    "timeout",
    "success_threshold",
    "failure_threshold",
    "service",
    "path",
    "command",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    policy: Option<Sp<String>>,
    backoff_initial: Option<Sp<String>>,
    backoff_max: Option<Sp<String>>,
}
const RESTART_KEYS: &[&str] = &["policy", "backoff_initial", "backoff_max"];

/// Every table with its label in messages and the keys it accepts.
const TABLES: &[(&str, &[&str])] = &[
    ("at the top level", TOP_KEYS),
    ("in [admin]", ADMIN_KEYS),
    ("in [[slot]]", SLOT_KEYS),
    ("in [slot.handshake]", HANDSHAKE_KEYS),
    ("in [slot.probe]", PROBE_KEYS),
    ("in [slot.restart]", RESTART_KEYS),
];

// ---------------------------------------------------------------------------------------
// Conversion and validation.

/// The text being parsed and its name, for turning spans into lines.
struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

/// Names a slot in messages.
struct SlotLabel<'a>(&'a str);

impl fmt::Display for SlotLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {:?}", self.0)
    }
}

impl<'a> Ctx<'a> {
    /// 1-based line and column (in characters) of byte offset `at`.
    fn position(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn line(&self, span: Range<usize>) -> usize {
        self.position(span.start).0
    }

    fn invalid(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: Some(self.line(span)),
            message: message.into(),
        }
    }

    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let (line, column) = err.span().map_or((1, 1), |s| self.position(s.start));
        let mut message = describe_toml_error(err.message());
        if let Some(source_line) = self.text.lines().nth(line - 1).map(str::trim) {
            if !source_line.is_empty() && !message.starts_with("unknown key") {
                let shown: String = source_line.chars().take(80).collect();
                let more = if shown.len() < source_line.len() {
                    "…"
                } else {
                    ""
                };
                message = format!("{message} (in `{shown}{more}`)");
            }
        }
        ConfigError::Parse {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let state_dir = raw
            .state_dir
            .map(|p| self.path_value(p, "state_dir"))
            .transpose()?;
        let admin = match raw.admin {
            Some(a) => self.admin(a)?,
            None => AdminConfig::default(),
        };
        let mut slots: Vec<SlotConfig> = Vec::with_capacity(raw.slot.len());
        let mut first_line: BTreeMap<SlotName, usize> = BTreeMap::new();
        for raw_slot in raw.slot {
            let name_span = raw_slot.name.span();
            let slot = self.slot(raw_slot)?;
            let line = self.line(name_span.clone());
            if let Some(first) = first_line.get(&slot.name) {
                return Err(self.invalid(
                    name_span,
                    format!(
                        "duplicate slot name {:?} (first defined on line {first})",
                        slot.name.as_str()
                    ),
                ));
            }
            first_line.insert(slot.name.clone(), line);
            slots.push(slot);
        }
        Ok(Config {
            state_dir,
            admin,
            slots,
            journal_compact_bytes: raw.journal_compact_bytes,
            journal_compact_records: raw.journal_compact_records,
            source: Some(self.path.to_path_buf()),
        })
    }

    /// A path value: not empty, no NUL byte.
    fn path_value(&self, value: Sp<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let span = value.span();
        let value = value.into_inner();
        if value.is_empty() {
            return Err(self.invalid(span, format!("`{key}` must not be empty")));
        }
        if value.contains('\0') {
            return Err(self.invalid(span, format!("`{key}` must not contain a NUL character")));
        }
        Ok(PathBuf::from(value))
    }

    fn admin(&self, raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
        let socket_outside_state_dir = raw.socket_outside_state_dir.unwrap_or(false);
        let socket = match raw.socket {
            Some(s) => {
                let span = s.span();
                let path = self.path_value(s, "admin.socket")?;
                let outside = path.is_absolute()
                    || path
                        .components()
                        .any(|c| c == std::path::Component::ParentDir);
                if outside && !socket_outside_state_dir {
                    return Err(self.invalid(
                        span,
                        format!(
                            "`admin.socket` = {:?} is outside the state directory; set \
                             `admin.socket_outside_state_dir = true` if that is meant (the \
                             directory holding it must be writable only by tryswap's user)",
                            path.display().to_string()
                        ),
                    ));
                }
                path
            }
            None => PathBuf::from(DEFAULT_ADMIN_SOCKET),
        };
        let token_file = raw
            .token_file
            .map(|t| self.path_value(t, "admin.token_file"))
            .transpose()?;
        let listen = match raw.listen {
            None => None,
            Some(l) => {
                let span = l.span();
                let addr: SocketAddr = l.get_ref().parse().map_err(|e| {
                    self.invalid(
                        span.clone(),
                        format!(
                            "`admin.listen` = {:?} is not an IP address and port ({e}), e.g. \"127.0.0.1:7391\"",
                            l.get_ref()
                        ),
                    )
                })?;
                if token_file.is_none() {
                    return Err(self.invalid(
                        span,
                        "`admin.listen` needs `admin.token_file`: the admin API is served over TCP only with a bearer token",
                    ));
                }
                Some(addr)
            }
        };
        Ok(AdminConfig {
            socket,
            listen,
            token_file,
            socket_outside_state_dir,
        })
    }

    fn slot(&self, raw: RawSlot) -> Result<SlotConfig, ConfigError> {
        let name_span = raw.name.span();
        let name = SlotName::new(raw.name.into_inner())
            .map_err(|e| self.invalid(name_span, format!("[[slot]] name: {e}")))?;
        let label = SlotLabel(name.as_str());
        let mut slot = SlotConfig::new(name.clone());

        for arg in raw.args.unwrap_or_default() {
            if arg.get_ref().contains('\0') {
                return Err(self.invalid(
                    arg.span(),
                    format!("{label}: an argument in `args` contains a NUL character"),
                ));
            }
            slot.args.push(arg.into_inner());
        }
        for (key, value) in raw.env.unwrap_or_default() {
            self.env_name(&key, &label, "env")?;
            if value.get_ref().contains('\0') {
                return Err(self.invalid(
                    value.span(),
                    format!(
                        "{label}: the value of env {:?} contains a NUL character",
                        key.get_ref()
                    ),
                ));
            }
            slot.env.insert(key.into_inner(), value.into_inner());
        }
        for name in raw.pass_env.unwrap_or_default() {
            self.env_name(&name, &label, "pass_env")?;
            slot.pass_env.push(name.into_inner());
        }
        if let Some(d) = raw.start_timeout {
            slot.start_timeout = self.positive_duration(&d, &label, "start_timeout")?;
        }
        if let Some(d) = raw.drain_timeout {
            slot.drain_timeout = self.positive_duration(&d, &label, "drain_timeout")?;
        }
        if let Some(d) = raw.stop_timeout {
            slot.stop_timeout = self.positive_duration(&d, &label, "stop_timeout")?;
        }
        if let Some(n) = raw.log_max_bytes {
            slot.log_max_bytes = n;
        }
        if let Some(h) = raw.handshake {
            self.handshake(h, &label, &mut slot.handshake)?;
        }
        if let Some(p) = raw.probe {
            slot.probe = self.probe(p, &label)?;
        }
        if let Some(r) = raw.restart {
            slot.restart = self.restart(r, &label)?;
        }
        if let Some(d) = raw.bake {
            // At most MAX_BAKE, which is MAX_DURATION: `duration` refuses anything longer.
            slot.bake = self.duration(&d, &label, "bake")?;
        }
        if let Some(e) = raw.endpoint {
            let addr: SocketAddr = e.get_ref().parse().map_err(|err| {
                self.invalid(
                    e.span(),
                    format!(
                        "{label}: `endpoint` = {:?} is not an IP address and port ({err}), e.g. \"127.0.0.1:7000\"",
                        e.get_ref()
                    ),
                )
            })?;
            slot.endpoint = Some(addr);
        }
        Ok(slot)
    }

    /// An environment variable name: not empty, no `=`, no NUL.
    fn env_name(&self, name: &Sp<String>, label: &SlotLabel, key: &str) -> Result<(), ConfigError> {
        let n = name.get_ref();
        let why = if n.is_empty() {
            "is empty"
        } else if n.contains('=') {
            "contains '='"
        } else if n.contains('\0') {
            "contains a NUL character"
        } else {
            return Ok(());
        };
        Err(self.invalid(
            name.span(),
            format!("{label}: environment variable name {n:?} in `{key}` {why}"),
        ))
    }

    fn duration(
        &self,
        d: &Sp<String>,
        label: &SlotLabel,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        let value = humantime::parse_duration(d.get_ref().trim()).map_err(|e| {
            self.invalid(
                d.span(),
                format!(
                    "{label}: `{key}` = {:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"1m\"",
                    d.get_ref()
                ),
            )
        })?;
        if value > MAX_DURATION {
            return Err(self.invalid(
                d.span(),
                format!(
                    "{label}: `{key}` = {:?} is longer than the maximum of {}",
                    d.get_ref(),
                    humantime::format_duration(MAX_DURATION)
                ),
            ));
        }
        Ok(value)
    }

    fn positive_duration(
        &self,
        d: &Sp<String>,
        label: &SlotLabel,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(d, label, key)?;
        if value.is_zero() {
            return Err(self.invalid(
                d.span(),
                format!("{label}: `{key}` must be greater than zero"),
            ));
        }
        Ok(value)
    }

    fn handshake(
        &self,
        raw: RawHandshake,
        label: &SlotLabel,
        out: &mut HandshakeConfig,
    ) -> Result<(), ConfigError> {
        if let Some(key) = raw.magic_cookie_key {
            let k = key.get_ref();
            let why = if k.is_empty() {
                Some("must not be empty")
            } else if k.contains('=') {
                Some("must not contain '='")
            } else if k.contains('\0') {
                Some("must not contain a NUL character")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(self.invalid(
                    key.span(),
                    format!("{label}: [slot.handshake] magic_cookie_key {why}"),
                ));
            }
            out.magic_cookie_key = key.into_inner();
        }
        if let Some(value) = raw.magic_cookie_value {
            if value.get_ref().contains('\0') {
                return Err(self.invalid(
                    value.span(),
                    format!("{label}: [slot.handshake] magic_cookie_value must not contain a NUL character"),
                ));
            }
            out.magic_cookie_value = value.into_inner();
        }
        if let Some(versions) = raw.app_protocol_versions {
            if versions.get_ref().is_empty() {
                return Err(self.invalid(
                    versions.span(),
                    format!("{label}: [slot.handshake] app_protocol_versions must list at least one version"),
                ));
            }
            out.app_protocol_versions = versions.into_inner();
        }
        if let Some(protocols) = raw.protocols {
            if protocols.get_ref().is_empty() {
                return Err(self.invalid(
                    protocols.span(),
                    format!("{label}: [slot.handshake] protocols must list at least one of \"grpc\", \"netrpc\""),
                ));
            }
            let mut list = Vec::new();
            for p in protocols.into_inner() {
                let protocol = match p.get_ref().as_str() {
                    "grpc" => Protocol::Grpc,
                    "netrpc" => Protocol::NetRpc,
                    other => {
                        return Err(self.invalid(
                            p.span(),
                            format!("{label}: [slot.handshake] protocols: unknown protocol {other:?}; expected \"grpc\" or \"netrpc\""),
                        ))
                    }
                };
                list.push(protocol);
            }
            out.protocols = list;
        }
        let mut port_span = None;
        if let Some(p) = raw.min_port {
            port_span = Some(p.span());
            out.min_port = p.into_inner();
        }
        if let Some(p) = raw.max_port {
            port_span = Some(p.span());
            out.max_port = p.into_inner();
        }
        if out.min_port > out.max_port {
            let message = format!(
                "{label}: [slot.handshake] min_port {} is greater than max_port {}",
                out.min_port, out.max_port
            );
            return Err(match port_span {
                Some(span) => self.invalid(span, message),
                None => ConfigError::Invalid {
                    path: self.path.to_path_buf(),
                    line: None,
                    message,
                },
            });
        }
        Ok(())
    }

    fn probe(&self, raw: RawProbe, label: &SlotLabel) -> Result<ProbeConfig, ConfigError> {
        let mut probe = ProbeConfig::default();
        let kind_name = raw.kind.as_ref().map_or("grpc", |k| k.get_ref().as_str());
        let kind_span = raw.kind.as_ref().map(|k| k.span());
        // Per-kind keys must fit the kind.
        let misplaced: [(&str, Option<Range<usize>>, &str); 3] = [
            ("service", raw.service.as_ref().map(|s| s.span()), "grpc"),
            ("path", raw.path.as_ref().map(|s| s.span()), "http"),
            ("command", raw.command.as_ref().map(|s| s.span()), "exec"),
        ];
        let known = matches!(kind_name, "grpc" | "http" | "tcp" | "exec" | "none");
        if !known {
            let span = kind_span.unwrap_or(0..0);
            return Err(self.invalid(
                span,
                format!("{label}: [slot.probe] unknown kind {kind_name:?}; expected one of \"grpc\", \"http\", \"tcp\", \"exec\", \"none\""),
            ));
        }
        for (key, span, belongs_to) in misplaced {
            if let Some(span) = span {
                if kind_name != belongs_to {
                    return Err(self.invalid(
                        span,
                        format!("{label}: [slot.probe] key `{key}` only applies to kind = \"{belongs_to}\", but kind is \"{kind_name}\""),
                    ));
                }
            }
        }
        probe.kind = match kind_name {
            "grpc" => ProbeKind::Grpc {
                service: raw
                    .service
                    .map_or_else(|| DEFAULT_GRPC_SERVICE.to_owned(), Spanned::into_inner),
            },
            "http" => {
                let path = match raw.path {
                    None => DEFAULT_HTTP_PATH.to_owned(),
                    Some(p) => {
                        let ok = p.get_ref().starts_with('/')
                            && !p.get_ref().chars().any(|c| c.is_control() || c == ' ');
                        if !ok {
                            return Err(self.invalid(
                                p.span(),
                                format!("{label}: [slot.probe] path {:?} must start with '/' and contain no spaces or control characters", p.get_ref()),
                            ));
                        }
                        p.into_inner()
                    }
                };
                ProbeKind::Http { path }
            }
            "tcp" => ProbeKind::Tcp,
            "exec" => {
                let Some(command) = raw.command else {
                    return Err(self.invalid(
                        kind_span.unwrap_or(0..0),
                        format!("{label}: [slot.probe] kind = \"exec\" needs `command`, e.g. command = [\"/bin/check\", \"--quick\"]"),
                    ));
                };
                let span = command.span();
                let command = command.into_inner();
                match command.first() {
                    None => {
                        return Err(self.invalid(
                            span,
                            format!("{label}: [slot.probe] `command` must not be empty"),
                        ))
                    }
                    Some(program) if program.get_ref().is_empty() => {
                        return Err(self.invalid(
                            program.span(),
                            format!("{label}: [slot.probe] `command` must start with a program, not an empty string"),
                        ))
                    }
                    Some(_) => {}
                }
                if let Some(bad) = command.iter().find(|a| a.get_ref().contains('\0')) {
                    return Err(self.invalid(
                        bad.span(),
                        format!("{label}: [slot.probe] `command` contains a NUL character"),
                    ));
                }
                ProbeKind::Exec {
                    command: command.into_iter().map(Spanned::into_inner).collect(),
                }
            }
            _ => ProbeKind::None,
        };
        if let Some(d) = raw.initial_delay {
            probe.initial_delay = self.duration(&d, label, "probe.initial_delay")?;
        }
        if let Some(d) = raw.period {
            probe.period = self.positive_duration(&d, label, "probe.period")?;
        }
        if let Some(d) = raw.timeout {
            probe.timeout = self.positive_duration(&d, label, "probe.timeout")?;
        }
        for (key, value, out) in [
            (
                "success_threshold",
                raw.success_threshold,
                &mut probe.success_threshold,
            ),
            (
                "failure_threshold",
                raw.failure_threshold,
                &mut probe.failure_threshold,
            ),
        ] {
            if let Some(v) = value {
                if *v.get_ref() == 0 {
                    return Err(self.invalid(
                        v.span(),
                        format!("{label}: [slot.probe] {key} must be at least 1"),
                    ));
                }
                *out = v.into_inner();
            }
        }
        Ok(probe)
    }

    fn restart(&self, raw: RawRestart, label: &SlotLabel) -> Result<RestartConfig, ConfigError> {
        let mut restart = RestartConfig::default();
        if let Some(p) = raw.policy {
            restart.policy = match p.get_ref().as_str() {
                "never" => RestartPolicy::Never,
                "on-failure" => RestartPolicy::OnFailure,
                "always" => RestartPolicy::Always,
                other => {
                    return Err(self.invalid(
                        p.span(),
                        format!("{label}: [slot.restart] unknown policy {other:?}; expected \"never\", \"on-failure\" or \"always\""),
                    ))
                }
            };
        }
        if let Some(d) = &raw.backoff_initial {
            restart.backoff_initial =
                self.positive_duration(d, label, "restart.backoff_initial")?;
        }
        if let Some(d) = &raw.backoff_max {
            restart.backoff_max = self.positive_duration(d, label, "restart.backoff_max")?;
        }
        if restart.backoff_max < restart.backoff_initial {
            let span = raw
                .backoff_max
                .as_ref()
                .or(raw.backoff_initial.as_ref())
                .map_or(0..0, |d| d.span());
            return Err(self.invalid(
                span,
                format!(
                    "{label}: [slot.restart] backoff_max ({}) is less than backoff_initial ({})",
                    humantime::format_duration(restart.backoff_max),
                    humantime::format_duration(restart.backoff_initial)
                ),
            ));
        }
        Ok(restart)
    }
}

/// Rewords toml/serde messages: unknown keys name the table they were found in and the
/// keys it accepts.
fn describe_toml_error(message: &str) -> String {
    let joined = message.trim_end().replace('\n', "; ");
    let message = joined.as_str();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.replace("missing field", "missing key");
    };
    let Some((key, expected)) = rest.split_once("`, expected ") else {
        return message.to_owned();
    };
    for (table, keys) in TABLES {
        if expected == serde_expected(keys) {
            return format!(
                "unknown key `{key}` {table}; known keys: {}",
                keys.join(", ")
            );
        }
    }
    format!("unknown key `{key}`; expected {expected}")
}

/// How serde lists expected field names in an unknown-field error.
fn serde_expected(keys: &[&str]) -> String {
    match keys {
        [] => "nothing".to_owned(),
        [one] => format!("`{one}`"),
        [a, b] => format!("`{a}` or `{b}`"),
        many => {
            let list: Vec<String> = many.iter().map(|k| format!("`{k}`")).collect();
            format!("one of {}", list.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every raw table's key list matches what serde reports for it, so unknown keys are
    /// attributed to the right table.
    #[test]
    fn unknown_keys_name_their_table() {
        let cases = [
            ("zz = 1\n", "at the top level"),
            ("[admin]\nzz = 1\n", "in [admin]"),
            ("[[slot]]\nname = \"a\"\nzz = 1\n", "in [[slot]]"),
            (
                "[[slot]]\nname = \"a\"\n[slot.handshake]\nzz = 1\n",
                "in [slot.handshake]",
            ),
            (
                "[[slot]]\nname = \"a\"\n[slot.probe]\nzz = 1\n",
                "in [slot.probe]",
            ),
            (
                "[[slot]]\nname = \"a\"\n[slot.restart]\nzz = 1\n",
                "in [slot.restart]",
            ),
        ];
        for (text, table) in cases {
            let err = Config::parse(text, Path::new("t.toml")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("unknown key `zz` {table}")), "{msg}");
        }
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let ctx = Ctx {
            text: "ab\néé x\n",
            path: Path::new("t"),
        };
        assert_eq!(ctx.position(0), (1, 1));
        assert_eq!(ctx.position(3), (2, 1));
        // "éé " is 5 bytes, 3 characters.
        assert_eq!(ctx.position(8), (2, 4));
        // Past the end and inside a character never panic.
        assert_eq!(ctx.position(4).0, 2);
        assert_eq!(ctx.position(1000).0, 3);
    }
}
