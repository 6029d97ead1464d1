//! Value types shared by commands, events and states.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifies one reload attempt. Runtimes mint UUIDv7 values so ids sort by creation time.
pub type ReloadId = uuid::Uuid;

/// The name of a slot: 1 to 64 characters from `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
///
/// Slot names end up in file paths (`logs/<slot>/…`) and URLs, so the constructor refuses
/// anything that could escape a directory or need quoting.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SlotName(String);

/// Why a string is not a valid [`SlotName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid slot name {name:?}: {why}")]
pub struct InvalidSlotName {
    /// The refused input.
    pub name: String,
    /// What rule it broke.
    pub why: &'static str,
}

impl SlotName {
    /// The longest slot name accepted.
    pub const MAX_LEN: usize = 64;

    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidSlotName> {
        let name = name.into();
        let why = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > Self::MAX_LEN {
            Some("it is longer than 64 characters")
        } else if name.starts_with('.') || name.starts_with('-') {
            Some("it starts with '.' or '-'")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            Some("only ASCII letters, digits, '_', '-' and '.' are allowed")
        } else {
            None
        };
        match why {
            Some(why) => Err(InvalidSlotName { name, why }),
            None => Ok(SlotName(name)),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SlotName {
    type Error = InvalidSlotName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        SlotName::new(value)
    }
}

impl From<SlotName> for String {
    fn from(value: SlotName) -> Self {
        value.0
    }
}

impl FromStr for SlotName {
    type Err = InvalidSlotName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SlotName::new(s)
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A generation number within one slot: 1, 2, 3 … assigned when a reload is staged.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A SHA-256 digest; displays and parses as 64 lowercase hex digits.
///
/// Serializes as that hex string in human-readable formats (JSON) and as the 32 raw bytes in
/// binary ones (the journal's bincode encoding).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sha256(pub [u8; 32]);

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_newtype_struct("Sha256", &self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            #[derive(Deserialize)]
            #[serde(rename = "Sha256")]
            struct Raw([u8; 32]);
            Raw::deserialize(deserializer).map(|raw| Sha256(raw.0))
        }
    }
}

/// Why a string is not a SHA-256 hex digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a sha256 hex digest: {0:?}")]
pub struct InvalidDigest(pub String);

impl FromStr for Sha256 {
    type Err = InvalidDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(InvalidDigest(s.to_owned()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(|| InvalidDigest(s.to_owned()))?;
            let lo = hex_value(pair[1]).ok_or_else(|| InvalidDigest(s.to_owned()))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Sha256(out))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// What a candidate is made of: an executable and optionally a config file, both in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// Digest of the executable (or, for in-process engines, of the engine's build input).
    pub sha256: Sha256,
    /// Digest of the staged config file, if one was given.
    pub config_sha256: Option<Sha256>,
}

/// Enough about a process to recognise it again after a restart of the host.
///
/// A pid alone can be reused; the start time (clock ticks since boot, from
/// `/proc/<pid>/stat`) and the boot id together make the identity unambiguous.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Operating-system process id (also the process group id: candidates lead their group).
    pub pid: u32,
    /// Process start time in clock ticks after boot.
    pub start_time: u64,
    /// The kernel's boot id at launch.
    pub boot_id: String,
}

/// Transport a plugin listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A TCP `host:port`.
    #[serde(alias = "Tcp")]
    Tcp,
    /// A Unix domain socket path.
    #[serde(alias = "Unix")]
    Unix,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Tcp => "tcp",
            Network::Unix => "unix",
        })
    }
}

/// RPC protocol a plugin speaks, as named in its handshake line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// gRPC.
    #[serde(alias = "Grpc")]
    Grpc,
    /// Go's net/rpc.
    #[serde(rename = "netrpc", alias = "NetRpc")]
    NetRpc,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::NetRpc => "netrpc",
        })
    }
}

/// What a validated handshake told us about where and how a plugin serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// go-plugin core protocol version (always 1 once validated).
    pub core_version: u32,
    /// The negotiated application protocol version.
    pub app_version: u32,
    /// Transport.
    pub network: Network,
    /// Address on that transport.
    pub address: String,
    /// RPC protocol.
    pub protocol: Protocol,
    /// Base64 server certificate when the plugin offered auto-mTLS.
    pub server_cert: Option<String>,
}

/// What a reload is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Make the candidate the slot's active generation.
    #[serde(alias = "Activate")]
    Activate,
    /// Go through the probe, then discard the candidate; the slot is untouched.
    #[serde(alias = "DryRun")]
    DryRun,
    /// Make an earlier generation's stored artifact active again as a new generation.
    #[serde(alias = "Rollback")]
    Rollback {
        /// The generation whose artifact is reactivated.
        to: Generation,
    },
}

impl Mode {
    /// The name used in reports: `activate`, `try` or `rollback`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Activate => "activate",
            Mode::DryRun => "try",
            Mode::Rollback { .. } => "rollback",
        }
    }
}

/// The stages of a reload, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Artifact copied into the store and the reload recorded.
    #[serde(alias = "Staged")]
    Staged,
    /// Candidate spawned.
    #[serde(alias = "Launched")]
    Launched,
    /// Handshake accepted.
    #[serde(alias = "Validated")]
    Validated,
    /// Health probe passed.
    #[serde(alias = "Probed")]
    Probed,
    /// Active marker moved to the candidate.
    #[serde(alias = "Active")]
    Active,
    /// The bake window after a provisional activation: the candidate holds the marker, the
    /// previous generation waits as a warm standby.
    #[serde(alias = "Baking")]
    Baking,
}

impl Stage {
    /// Lowercase name used in reports and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Staged => "staged",
            Stage::Launched => "launched",
            Stage::Validated => "validated",
            Stage::Probed => "probed",
            Stage::Active => "active",
            Stage::Baking => "baking",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The broad kind of a rollback reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    /// The stage failed with an error (bad handshake, probe failure, exit, I/O error …).
    #[serde(alias = "Error")]
    Error,
    /// The stage did not finish in time.
    #[serde(alias = "Timeout")]
    Timeout,
    /// An operator or shutdown cancelled the reload.
    #[serde(alias = "Cancelled")]
    Cancelled,
    /// Crash recovery found the reload unfinished after a restart.
    #[serde(alias = "Recovered")]
    Recovered,
}

impl ReasonKind {
    /// Lowercase name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            ReasonKind::Error => "error",
            ReasonKind::Timeout => "timeout",
            ReasonKind::Cancelled => "cancelled",
            ReasonKind::Recovered => "recovered",
        }
    }
}

/// Why something was rolled back or stopped: a kind and human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reason {
    /// Broad kind.
    pub kind: ReasonKind,
    /// Detail, e.g. the error text quoting what the plugin printed.
    pub message: String,
}

impl Reason {
    /// A reason of kind [`ReasonKind::Error`].
    pub fn error(message: impl Into<String>) -> Self {
        Reason {
            kind: ReasonKind::Error,
            message: message.into(),
        }
    }

    /// A reason of kind [`ReasonKind::Timeout`].
    pub fn timeout(message: impl Into<String>) -> Self {
        Reason {
            kind: ReasonKind::Timeout,
            message: message.into(),
        }
    }

    /// A reason of kind [`ReasonKind::Cancelled`].
    pub fn cancelled(message: impl Into<String>) -> Self {
        Reason {
            kind: ReasonKind::Cancelled,
            message: message.into(),
        }
    }

    /// A reason of kind [`ReasonKind::Recovered`].
    pub fn recovered(message: impl Into<String>) -> Self {
        Reason {
            kind: ReasonKind::Recovered,
            message: message.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(self.kind.name())
        } else {
            write!(f, "{}: {}", self.kind.name(), self.message)
        }
    }
}
