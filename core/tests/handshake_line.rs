//! The go-plugin handshake line and the plugin environment.

use proptest::prelude::*;
use tryswap::config::HandshakeConfig;
use tryswap::internals::handshake::{
    parse_line, plugin_env, HandshakeError, MAX_LINE_LEN, RELOAD_ID_ENV,
};
use tryswap_fsm::{Endpoint, Network, Protocol, ReloadId, SlotName};

fn rules() -> HandshakeConfig {
    HandshakeConfig::for_slot(&SlotName::new("demo").unwrap())
}

fn rules_with(versions: &[u32], protocols: &[Protocol]) -> HandshakeConfig {
    let mut rules = rules();
    rules.app_protocol_versions = versions.to_vec();
    rules.protocols = protocols.to_vec();
    rules
}

#[track_caller]
fn refused(line: &str, rules: &HandshakeConfig) -> (HandshakeError, String) {
    match parse_line(line, rules) {
        Ok(e) => panic!("{line:?} was accepted as {e:?}"),
        Err(err) => {
            let msg = err.to_string();
            (err, msg)
        }
    }
}

#[test]
fn go_plugin_unix_form_with_trailing_bar() {
    let endpoint = parse_line("1|1|unix|/tmp/plugin1831696363|grpc|\n", &rules()).unwrap();
    assert_eq!(
        endpoint,
        Endpoint {
            core_version: 1,
            app_version: 1,
            network: Network::Unix,
            address: "/tmp/plugin1831696363".into(),
            protocol: Protocol::Grpc,
            server_cert: None,
        }
    );
}

#[test]
fn tcp_form_without_cert_field() {
    let endpoint = parse_line("1|1|tcp|127.0.0.1:1234|grpc", &rules()).unwrap();
    assert_eq!(endpoint.network, Network::Tcp);
    assert_eq!(endpoint.address, "127.0.0.1:1234");
    assert_eq!(endpoint.protocol, Protocol::Grpc);
    assert_eq!(endpoint.server_cert, None);

    let v6 = parse_line("1|1|tcp|[::1]:40001|grpc\r\n", &rules()).unwrap();
    assert_eq!(v6.address, "[::1]:40001");
}

#[test]
fn surrounding_whitespace_and_crlf_are_trimmed() {
    let endpoint = parse_line("  1|1|tcp|127.0.0.1:1|grpc|  \r\n", &rules()).unwrap();
    assert_eq!(endpoint.address, "127.0.0.1:1");
}

#[test]
fn server_cert_is_kept() {
    let cert = "MIIB".to_owned() + &"A".repeat(300);
    let endpoint = parse_line(&format!("1|1|tcp|127.0.0.1:1234|grpc|{cert}\n"), &rules()).unwrap();
    assert_eq!(endpoint.server_cert, Some(cert));
}

#[test]
fn missing_protocol_means_netrpc_like_go_plugin() {
    let netrpc = rules_with(&[1], &[Protocol::NetRpc]);
    let endpoint = parse_line("1|1|tcp|127.0.0.1:1234", &netrpc).unwrap();
    assert_eq!(endpoint.protocol, Protocol::NetRpc);
    // The default slot accepts only grpc, so the same line is refused there.
    let (err, msg) = refused("1|1|tcp|127.0.0.1:1234", &rules());
    assert!(
        matches!(
            err,
            HandshakeError::ProtocolRejected {
                protocol: Protocol::NetRpc,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        msg,
        r#"handshake line "1|1|tcp|127.0.0.1:1234" uses protocol netrpc; the slot accepts grpc"#
    );
}

#[test]
fn negotiated_app_version_is_one_of_the_slot_s() {
    let r = rules_with(&[1, 2, 3], &[Protocol::Grpc]);
    assert_eq!(
        parse_line("1|3|tcp|127.0.0.1:1|grpc", &r)
            .unwrap()
            .app_version,
        3
    );
    let (err, msg) = refused("1|9|tcp|127.0.0.1:1234|grpc", &r);
    assert!(matches!(
        err,
        HandshakeError::AppVersionRejected { offered: 9, .. }
    ));
    assert_eq!(
        msg,
        r#"handshake line "1|9|tcp|127.0.0.1:1234|grpc" offers app protocol version 9; the slot accepts 1, 2, 3"#
    );
    let (err, msg) = refused("1|one|tcp|127.0.0.1:1234|grpc", &r);
    assert!(
        matches!(err, HandshakeError::AppVersionSyntax { .. }),
        "{err:?}"
    );
    assert!(msg.contains("\"one\""), "{msg}");
    assert!(matches!(
        refused("1|-1|tcp|127.0.0.1:1234|grpc", &r).0,
        HandshakeError::AppVersionSyntax { .. }
    ));
}

#[test]
fn core_version_must_be_one() {
    for bad in ["2", "0", "x", "", "01x"] {
        let (err, msg) = refused(&format!("{bad}|1|tcp|127.0.0.1:1234|grpc"), &rules());
        assert!(
            matches!(err, HandshakeError::CoreVersion { .. }),
            "{bad}: {err:?}"
        );
        assert!(msg.contains("core protocol version"), "{msg}");
    }
}

#[test]
fn network_must_be_tcp_or_unix() {
    let (err, msg) = refused("1|1|udp|127.0.0.1:1234|grpc", &rules());
    assert!(matches!(err, HandshakeError::Network { .. }));
    assert!(msg.contains("\"udp\""), "{msg}");
    assert!(msg.contains(r#""1|1|udp|127.0.0.1:1234|grpc""#), "{msg}");
}

#[test]
fn addresses_are_checked() {
    for line in [
        "1|1|tcp|localhost:1234|grpc",
        "1|1|tcp|127.0.0.1|grpc",
        "1|1|tcp|127.0.0.1:99999|grpc",
        "1|1|tcp||grpc",
        "1|1|unix|relative/sock|grpc",
        "1|1|unix||grpc",
    ] {
        let (err, msg) = refused(line, &rules());
        assert!(
            matches!(err, HandshakeError::Address { .. }),
            "{line}: {err:?}"
        );
        assert!(msg.contains(line), "{msg}");
    }
    let long = format!("1|1|unix|/{}|grpc", "s".repeat(120));
    assert!(matches!(
        refused(&long, &rules()).0,
        HandshakeError::Address { .. }
    ));
}

#[test]
fn protocol_must_be_known_and_allowed() {
    let (err, msg) = refused("1|1|tcp|127.0.0.1:1234|http", &rules());
    assert!(matches!(err, HandshakeError::UnknownProtocol { .. }));
    assert!(msg.contains("\"http\""), "{msg}");
    assert!(matches!(
        refused("1|1|tcp|127.0.0.1:1234|", &rules()).0,
        HandshakeError::UnknownProtocol { .. }
    ));
    let (err, _) = refused("1|1|tcp|127.0.0.1:1234|netrpc", &rules());
    assert!(matches!(err, HandshakeError::ProtocolRejected { .. }));
    let both = rules_with(&[1], &[Protocol::Grpc, Protocol::NetRpc]);
    assert_eq!(
        parse_line("1|1|tcp|127.0.0.1:1234|netrpc", &both)
            .unwrap()
            .protocol,
        Protocol::NetRpc
    );
}

#[test]
fn field_counts_outside_four_to_six_are_refused() {
    for (line, n) in [
        ("1|1|tcp", 3),
        ("hello world", 1),
        ("1|1|tcp|127.0.0.1:1|grpc|cert|extra", 7),
    ] {
        let (err, msg) = refused(line, &rules());
        assert_eq!(
            err,
            HandshakeError::FieldCount {
                line: tryswap::internals::handshake::QuotedLine::new(line),
                fields: n
            }
        );
        assert!(msg.contains(&format!("has {n} fields")), "{msg}");
    }
}

#[test]
fn empty_and_blank_lines_are_refused() {
    for line in ["", "\n", "  \r\n", "\t"] {
        assert_eq!(refused(line, &rules()).0, HandshakeError::Empty, "{line:?}");
    }
}

#[test]
fn garbage_is_refused_with_the_line_quoted() {
    let (_, msg) = refused("panic: runtime error: index out of range", &rules());
    assert!(
        msg.starts_with(r#"handshake line "panic: runtime error: index out of range""#),
        "{msg}"
    );
    // hclog JSON on stdout by mistake.
    let (_, msg) = refused(
        r#"{"@level":"debug","@message":"plugin address"}"#,
        &rules(),
    );
    assert!(msg.contains(r#"\"@level\""#), "{msg}");
}

#[test]
fn control_characters_are_refused_and_escaped() {
    for line in [
        "1|1|tcp|127.0.0.1:1\0|grpc",
        "1|1|tcp|127.0.0.1:1|gr\x1bpc",
        "1|1\t|tcp|x|grpc",
    ] {
        let (err, msg) = refused(line, &rules());
        assert!(
            matches!(err, HandshakeError::ControlCharacter { .. }),
            "{err:?}"
        );
        assert!(!msg.chars().any(|c| c.is_control()), "unescaped: {msg:?}");
    }
    let (_, msg) = refused("1|1|tcp|\0:1|grpc", &rules());
    assert!(msg.contains(r"\0"), "{msg}");
}

#[test]
fn long_lines_are_refused_and_quoted_truncated() {
    let line = format!("1|1|tcp|127.0.0.1:1|grpc|{}", "A".repeat(MAX_LINE_LEN));
    let (err, msg) = refused(&line, &rules());
    assert!(
        matches!(err, HandshakeError::TooLong { len, .. } if len == line.len()),
        "{err:?}"
    );
    assert!(msg.len() < 400, "quote not truncated: {} bytes", msg.len());
    assert!(msg.contains('…'), "{msg}");
    // Exactly at the limit is fine.
    let cert = "A".repeat(MAX_LINE_LEN - "1|1|tcp|127.0.0.1:1|grpc|".len());
    let at_limit = format!("1|1|tcp|127.0.0.1:1|grpc|{cert}");
    assert_eq!(at_limit.len(), MAX_LINE_LEN);
    assert!(parse_line(&at_limit, &rules()).is_ok());
}

#[test]
fn plugin_env_has_cookie_versions_ports_and_reload_id() {
    let mut rules = rules();
    rules.magic_cookie_key = "BASIC_PLUGIN".into();
    rules.magic_cookie_value = "hello".into();
    rules.app_protocol_versions = vec![1, 2];
    rules.protocols = vec![Protocol::Grpc];
    rules.min_port = 20000;
    rules.max_port = 20100;
    let id = ReloadId::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let env = plugin_env(&rules, &id);
    let expected: Vec<(String, String)> = [
        ("BASIC_PLUGIN", "hello"),
        ("PLUGIN_PROTOCOL_VERSIONS", "1,2"),
        ("PLUGIN_MIN_PORT", "20000"),
        ("PLUGIN_MAX_PORT", "20100"),
        (RELOAD_ID_ENV, "01900000-0000-7000-8000-000000000001"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(env, expected);
    assert_eq!(RELOAD_ID_ENV, "TRYSWAP_RELOAD_ID");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(line in any::<String>()) {
        let _ = parse_line(&line, &rules());
    }

    #[test]
    fn handshake_shaped_strings_never_panic(
        fields in proptest::collection::vec("[0-9a-z:/.\\[\\]|\\x00-\\x1f\u{80}-\u{10ffff}]{0,12}", 0..9)
    ) {
        let line = fields.join("|");
        let both = rules_with(&[0, 1, 2], &[Protocol::Grpc, Protocol::NetRpc]);
        if let Err(err) = parse_line(&line, &both) {
            // Errors render without raw control characters.
            let msg = err.to_string();
            prop_assert!(!msg.chars().any(|c| c.is_control()), "{:?}", msg);
        }
    }

    #[test]
    fn valid_tcp_lines_round_trip(
        app in 1u32..4, port in 1u16.., grpc in any::<bool>(), cert in "[A-Za-z0-9+/=]{0,64}"
    ) {
        let protocol = if grpc { "grpc" } else { "netrpc" };
        let line = format!("1|{app}|tcp|127.0.0.1:{port}|{protocol}|{cert}\n");
        let both = rules_with(&[1, 2, 3], &[Protocol::Grpc, Protocol::NetRpc]);
        let e = parse_line(&line, &both).unwrap();
        prop_assert_eq!(e.app_version, app);
        prop_assert_eq!(e.address, format!("127.0.0.1:{port}"));
        prop_assert_eq!(e.protocol, if grpc { Protocol::Grpc } else { Protocol::NetRpc });
        prop_assert_eq!(e.server_cert, if cert.is_empty() { None } else { Some(cert) });
    }
}
