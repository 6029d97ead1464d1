//! Fuzzes the go-plugin handshake line parser: no input panics, accepted lines meet the
//! slot's rules, and error messages never carry raw control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tryswap::config::HandshakeConfig;
use tryswap::internals::handshake::{parse_line, MAX_LINE_LEN};
use tryswap_fsm::{Network, Protocol, SlotName};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let Ok(slot) = SlotName::new("fuzz") else {
        return;
    };
    let mut rules = HandshakeConfig::for_slot(&slot);
    rules.app_protocol_versions = vec![1, 2];
    rules.protocols = vec![Protocol::Grpc, Protocol::NetRpc];
    match parse_line(&line, &rules) {
        Ok(endpoint) => {
            assert!(line.len() <= MAX_LINE_LEN);
            assert_eq!(endpoint.core_version, 1);
            assert!(rules.app_protocol_versions.contains(&endpoint.app_version));
            assert!(rules.protocols.contains(&endpoint.protocol));
            match endpoint.network {
                Network::Tcp => assert!(endpoint.address.parse::<std::net::SocketAddr>().is_ok()),
                Network::Unix => assert!(endpoint.address.starts_with('/')),
            }
        }
        Err(err) => {
            let message = err.to_string();
            assert!(!message.chars().any(char::is_control), "{message:?}");
        }
    }
});
