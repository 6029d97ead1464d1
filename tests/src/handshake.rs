//! Parsing go-plugin handshake lines, for assertions in tests.
//!
//! `CORE-PROTOCOL-VERSION|APP-PROTOCOL-VERSION|NETWORK-TYPE|NETWORK-ADDR|PROTOCOL[|SERVER-CERT]`,
//! e.g. `1|1|tcp|127.0.0.1:1234|grpc` or `1|1|unix|/tmp/plugin1831696363|grpc|`.
//! This parser only splits and types the fields; it does not judge whether the
//! values are acceptable to a host.

/// The fields of one handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// CORE-PROTOCOL-VERSION (go-plugin's is 1).
    pub core_version: u32,
    /// APP-PROTOCOL-VERSION.
    pub app_version: u32,
    /// NETWORK-TYPE, e.g. `tcp` or `unix`.
    pub network: String,
    /// NETWORK-ADDR, e.g. `127.0.0.1:1234` or a socket path.
    pub address: String,
    /// PROTOCOL, e.g. `grpc` or `netrpc`.
    pub protocol: String,
    /// SERVER-CERT: `None` when the field is absent, `Some("")` for go-plugin's
    /// trailing `|`.
    pub server_cert: Option<String>,
}

/// A line that is not a handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a go-plugin handshake line ({reason}): {line:?}")]
pub struct HandshakeError {
    /// The offending line, as given.
    pub line: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Handshake {
    /// Splits `line` (a trailing `\n` / `\r\n` is ignored) into its fields.
    pub fn parse(line: &str) -> Result<Self, HandshakeError> {
        let trimmed = line.trim_end_matches(['\n', '\r']);
        let err = |reason: String| HandshakeError {
            line: line.to_owned(),
            reason,
        };
        let fields: Vec<&str> = trimmed.split('|').collect();
        if fields.len() != 5 && fields.len() != 6 {
            return Err(err(format!("{} fields, expected 5 or 6", fields.len())));
        }
        let number = |i: usize, name: &str| {
            fields[i]
                .parse::<u32>()
                .map_err(|e| err(format!("{name} {:?}: {e}", fields[i])))
        };
        Ok(Handshake {
            core_version: number(0, "core version")?,
            app_version: number(1, "app version")?,
            network: fields[2].to_owned(),
            address: fields[3].to_owned(),
            protocol: fields[4].to_owned(),
            server_cert: fields.get(5).map(|s| (*s).to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_lines() {
        let h = Handshake::parse("1|2|tcp|127.0.0.1:1234|grpc\n").unwrap();
        assert_eq!(h.core_version, 1);
        assert_eq!(h.app_version, 2);
        assert_eq!(h.address, "127.0.0.1:1234");
        assert_eq!(h.server_cert, None);
        let h = Handshake::parse("1|1|unix|/tmp/plugin1|grpc|").unwrap();
        assert_eq!(h.network, "unix");
        assert_eq!(h.server_cert.as_deref(), Some(""));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Handshake::parse("garbage").is_err());
        assert!(Handshake::parse("x|1|tcp|a|grpc").is_err());
        assert!(Handshake::parse("1|1|tcp|a|grpc|c|d").is_err());
    }
}
