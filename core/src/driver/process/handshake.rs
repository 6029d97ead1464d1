//! The go-plugin handshake: the environment a plugin is started with and the line it
//! prints back.
//!
//! A plugin announces where it serves with one stdout line,
//! `CORE|APP|NETWORK|ADDR|PROTOCOL[|SERVER-CERT]`, e.g. `1|1|tcp|127.0.0.1:1234|grpc`, or as
//! go-plugin itself prints it on Linux, `1|1|unix|/tmp/plugin1831696363|grpc|`.
//! [`parse_line`] checks it against a slot's [`HandshakeConfig`] the way go-plugin's client
//! does, and quotes the line in every error.
//!
//! ```
//! use tryswap::config::HandshakeConfig;
//! use tryswap::internals::handshake::parse_line;
//! use tryswap_fsm::{Network, Protocol, SlotName};
//!
//! let rules = HandshakeConfig::for_slot(&SlotName::new("demo").unwrap());
//! let endpoint = parse_line("1|1|unix|/tmp/plugin1831696363|grpc|\n", &rules).unwrap();
//! assert_eq!(endpoint.network, Network::Unix);
//! assert_eq!(endpoint.protocol, Protocol::Grpc);
//! assert_eq!(endpoint.server_cert, None);
//!
//! let err = parse_line("1|9|tcp|127.0.0.1:1234|grpc", &rules).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     r#"handshake line "1|9|tcp|127.0.0.1:1234|grpc" offers app protocol version 9; the slot accepts 1"#
//! );
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use tryswap_fsm::{Endpoint, Network, Protocol, ReloadId};

use crate::config::HandshakeConfig;

/// Environment variable carrying the reload id, so recovery can find a candidate that was
/// spawned before its launch was journaled.
pub const RELOAD_ID_ENV: &str = "TRYSWAP_RELOAD_ID";

/// Tag naming the slot a plugin process serves (set by the process driver at every launch):
/// with [`GENERATION_ENV`], what finds a slot's processes when the journal cannot say
/// (a damaged journal, or one older than its processes).
pub const SLOT_ENV: &str = "TRYSWAP_SLOT";

/// Tag naming the generation a plugin process runs (set by the process driver at every
/// launch).
pub const GENERATION_ENV: &str = "TRYSWAP_GENERATION";

/// Whether `name` is one of the tags tryswap itself puts in a plugin's environment (they
/// say which launch a process is, not how the slot is configured).
pub fn is_own_tag(name: &str) -> bool {
    matches!(name, RELOAD_ID_ENV | SLOT_ENV | GENERATION_ENV)
}

/// The go-plugin core protocol version this crate speaks.
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// The longest handshake line accepted, in bytes (before trimming).
pub const MAX_LINE_LEN: usize = 4096;

/// Longest Unix socket path (bytes) that fits `sockaddr_un.sun_path` with its NUL.
const MAX_UNIX_PATH: usize = 107;

/// How many characters of an offending line are quoted in errors.
const QUOTE_CHARS: usize = 120;

/// An offending handshake line as quoted in errors: control characters escaped, cut to a
/// readable length. Displays with surrounding double quotes.
#[derive(Clone, PartialEq, Eq)]
pub struct QuotedLine(String);

impl QuotedLine {
    /// Escapes and truncates `line` for display.
    pub fn new(line: &str) -> QuotedLine {
        let mut out = String::new();
        let mut chars = line.chars();
        for c in chars.by_ref().take(QUOTE_CHARS) {
            out.extend(c.escape_debug());
        }
        if chars.next().is_some() {
            out.push('…');
        }
        QuotedLine(out)
    }

    /// The escaped text, without quotes.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QuotedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

impl fmt::Debug for QuotedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a handshake line was refused. Every message quotes the line (escaped, truncated).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Nothing but whitespace.
    #[error("handshake line is empty")]
    Empty,
    /// Longer than [`MAX_LINE_LEN`] bytes.
    #[error("handshake line {line} is {len} bytes long; at most {MAX_LINE_LEN} are accepted")]
    TooLong {
        /// The start of the line.
        line: QuotedLine,
        /// Its length in bytes.
        len: usize,
    },
    /// Contains NUL or another control character (after trimming surrounding whitespace).
    #[error("handshake line {line} contains a control character")]
    ControlCharacter {
        /// The line.
        line: QuotedLine,
    },
    /// Fewer than 4 or more than 6 `|`-separated fields.
    #[error("handshake line {line} has {fields} fields; expected CORE|APP|NETWORK|ADDR|PROTOCOL[|SERVER-CERT]")]
    FieldCount {
        /// The line.
        line: QuotedLine,
        /// How many fields it has.
        fields: usize,
    },
    /// The core protocol version is not 1.
    #[error("handshake line {line} has core protocol version {found:?}; only {CORE_PROTOCOL_VERSION} is supported")]
    CoreVersion {
        /// The line.
        line: QuotedLine,
        /// The first field as printed.
        found: String,
    },
    /// The app protocol version is not a number.
    #[error("handshake line {line} has app protocol version {found:?}, which is not a number")]
    AppVersionSyntax {
        /// The line.
        line: QuotedLine,
        /// The second field as printed.
        found: String,
    },
    /// The app protocol version is not one the slot accepts.
    #[error(
        "handshake line {line} offers app protocol version {offered}; the slot accepts {}",
        list(accepted)
    )]
    AppVersionRejected {
        /// The line.
        line: QuotedLine,
        /// The version the plugin offered.
        offered: u32,
        /// The versions the slot accepts.
        accepted: Vec<u32>,
    },
    /// The network is neither `tcp` nor `unix`.
    #[error("handshake line {line} has network type {found:?}; expected \"tcp\" or \"unix\"")]
    Network {
        /// The line.
        line: QuotedLine,
        /// The third field as printed.
        found: String,
    },
    /// A `tcp` address that is not `ip:port`, or a `unix` address that is not an absolute
    /// path short enough for a socket address.
    #[error("handshake line {line} has {network} address {address:?}: {why}")]
    Address {
        /// The line.
        line: QuotedLine,
        /// The network type.
        network: Network,
        /// The fourth field as printed.
        address: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The protocol is neither `grpc` nor `netrpc`.
    #[error("handshake line {line} names protocol {found:?}; expected \"grpc\" or \"netrpc\"")]
    UnknownProtocol {
        /// The line.
        line: QuotedLine,
        /// The fifth field as printed.
        found: String,
    },
    /// The protocol is known but the slot does not accept it.
    #[error(
        "handshake line {line} uses protocol {protocol}; the slot accepts {}",
        list(allowed)
    )]
    ProtocolRejected {
        /// The line.
        line: QuotedLine,
        /// The protocol offered (netrpc when the field is absent, as in go-plugin).
        protocol: Protocol,
        /// The protocols the slot accepts.
        allowed: Vec<Protocol>,
    },
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Parses and checks one handshake line against a slot's rules.
///
/// Follows go-plugin's client: surrounding whitespace (including `\r\n`) is trimmed; the
/// line splits on `|` into 4 to 6 fields; the core version must be 1; the app version must
/// be one of `rules.app_protocol_versions`; the network is `tcp` (address `ip:port`) or
/// `unix` (absolute path); a missing protocol field means `netrpc`; the protocol must be in
/// `rules.protocols`; an empty sixth field means no server certificate. Lines over
/// [`MAX_LINE_LEN`] bytes or with control characters are refused. Never panics.
pub fn parse_line(line: &str, rules: &HandshakeConfig) -> Result<Endpoint, HandshakeError> {
    if line.len() > MAX_LINE_LEN {
        return Err(HandshakeError::TooLong {
            line: QuotedLine::new(line),
            len: line.len(),
        });
    }
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Err(HandshakeError::Empty);
    }
    let quoted = || QuotedLine::new(trimmed);
    if trimmed.chars().any(char::is_control) {
        return Err(HandshakeError::ControlCharacter { line: quoted() });
    }
    let fields: Vec<&str> = trimmed.split('|').collect();
    if !(4..=6).contains(&fields.len()) {
        return Err(HandshakeError::FieldCount {
            line: quoted(),
            fields: fields.len(),
        });
    }

    let core = fields[0];
    if core.parse::<u32>().ok() != Some(CORE_PROTOCOL_VERSION) {
        return Err(HandshakeError::CoreVersion {
            line: quoted(),
            found: core.to_owned(),
        });
    }

    let app_version: u32 = fields[1]
        .parse()
        .map_err(|_| HandshakeError::AppVersionSyntax {
            line: quoted(),
            found: fields[1].to_owned(),
        })?;
    if !rules.app_protocol_versions.contains(&app_version) {
        return Err(HandshakeError::AppVersionRejected {
            line: quoted(),
            offered: app_version,
            accepted: rules.app_protocol_versions.clone(),
        });
    }

    let network = match fields[2] {
        "tcp" => Network::Tcp,
        "unix" => Network::Unix,
        other => {
            return Err(HandshakeError::Network {
                line: quoted(),
                found: other.to_owned(),
            })
        }
    };
    let address = fields[3];
    let bad_address = |why| HandshakeError::Address {
        line: quoted(),
        network,
        address: address.to_owned(),
        why,
    };
    match network {
        Network::Tcp => {
            if address.parse::<SocketAddr>().is_err() {
                return Err(bad_address("not an IP address and port"));
            }
        }
        Network::Unix => {
            if !Path::new(address).is_absolute() {
                return Err(bad_address("not an absolute path"));
            }
            if address.len() > MAX_UNIX_PATH {
                return Err(bad_address("longer than a Unix socket path may be"));
            }
        }
    }

    // go-plugin defaults to net/rpc when the field is absent, for old plugins.
    let protocol = match fields.get(4).copied() {
        None | Some("netrpc") => Protocol::NetRpc,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            return Err(HandshakeError::UnknownProtocol {
                line: quoted(),
                found: other.to_owned(),
            })
        }
    };
    if !rules.protocols.contains(&protocol) {
        return Err(HandshakeError::ProtocolRejected {
            line: quoted(),
            protocol,
            allowed: rules.protocols.clone(),
        });
    }

    let server_cert = fields
        .get(5)
        .filter(|cert| !cert.is_empty())
        .map(|cert| (*cert).to_owned());

    Ok(Endpoint {
        core_version: CORE_PROTOCOL_VERSION,
        app_version,
        network,
        address: address.to_owned(),
        protocol,
        server_cert,
    })
}

/// The handshake environment for a candidate of a slot, in this order: the magic cookie
/// `KEY=VALUE`, `PLUGIN_PROTOCOL_VERSIONS` (comma-separated accepted app versions, e.g.
/// `1,2`), `PLUGIN_MIN_PORT`, `PLUGIN_MAX_PORT`, and [`RELOAD_ID_ENV`] (the reload id in
/// hyphenated form). The slot's own `env` is not included.
pub fn plugin_env(rules: &HandshakeConfig, reload_id: &ReloadId) -> Vec<(String, String)> {
    let versions: Vec<String> = rules
        .app_protocol_versions
        .iter()
        .map(u32::to_string)
        .collect();
    vec![
        (
            rules.magic_cookie_key.clone(),
            rules.magic_cookie_value.clone(),
        ),
        ("PLUGIN_PROTOCOL_VERSIONS".to_owned(), versions.join(",")),
        ("PLUGIN_MIN_PORT".to_owned(), rules.min_port.to_string()),
        ("PLUGIN_MAX_PORT".to_owned(), rules.max_port.to_string()),
        (RELOAD_ID_ENV.to_owned(), reload_id.hyphenated().to_string()),
    ]
}
