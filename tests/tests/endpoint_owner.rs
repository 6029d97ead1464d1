//! A candidate may only announce an address its own process tree listens on: one that
//! prints the active generation's address (or any other process's) is rejected at
//! `validated`, with a message naming who holds the address, and the old pid keeps serving.

use std::time::Duration;

use tryswap_tests::harness::Harness;
use tryswap_tests::{call, pid_alive, FixtureConfig, FixtureNetwork};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn thief(address: &str, network: FixtureNetwork) -> FixtureConfig {
    let trailing = if network == FixtureNetwork::Unix {
        "|"
    } else {
        ""
    };
    FixtureConfig {
        message: Some("thief".into()),
        network: Some(network),
        handshake_line: Some(format!("1|1|{}|{address}|grpc{trailing}", network.as_str())),
        ..FixtureConfig::default()
    }
}

async fn the_thief_is_rejected_and_the_old_pid_keeps_serving(network: FixtureNetwork) {
    let h = Harness::demo();
    let v1 = FixtureConfig {
        network: Some(network),
        ..FixtureConfig::with_message("v1")
    };
    let run = h.activate("demo", &h.fixture_config("v1", &v1));
    assert_eq!(run.code, 0, "{run:?}");
    let (generation, pid1, addr1) = h.active("demo").expect("an active generation");

    let run = h.activate("demo", &h.fixture_config("thief", &thief(&addr1, network)));
    assert_eq!(run.code, 2, "the address thief must be rejected: {run:?}");
    let report = run.json();
    assert_eq!(report["outcome"], "rolled_back", "{report}");
    assert_eq!(report["failed_stage"], "validated", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("held by pid {pid1}")) && error.contains(&addr1),
        "the message must say who holds {addr1}: {error}"
    );

    assert_eq!(h.active("demo"), Some((generation, pid1, addr1.clone())));
    assert!(pid_alive(pid1), "the old generation must keep running");
    let reply = call(network.as_str(), &addr1, "ping", CALL_TIMEOUT)
        .await
        .expect("the old generation still answers");
    assert_eq!((reply.message.as_str(), reply.pid), ("v1", pid1));
}

#[tokio::test]
async fn a_candidate_announcing_the_active_tcp_address_is_rejected() {
    the_thief_is_rejected_and_the_old_pid_keeps_serving(FixtureNetwork::Tcp).await;
}

#[tokio::test]
async fn a_candidate_announcing_the_active_unix_socket_is_rejected() {
    the_thief_is_rejected_and_the_old_pid_keeps_serving(FixtureNetwork::Unix).await;
}

/// Activates a fixture announcing the tcp `address`; returns the rejection's error text.
fn rejected_at_validated(h: &Harness, address: &str) -> String {
    let run = h.activate(
        "demo",
        &h.fixture_config("thief", &thief(address, FixtureNetwork::Tcp)),
    );
    assert_eq!(run.code, 2, "{run:?}");
    let report = run.json();
    assert_eq!(report["failed_stage"], "validated", "{report}");
    report["error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_candidate_announcing_a_strangers_port_is_rejected() {
    let h = Harness::demo();
    let stranger = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = stranger.local_addr().expect("local addr").to_string();
    let error = rejected_at_validated(&h, &address);
    assert!(
        error.contains(&format!("held by pid {}", std::process::id())),
        "{error}"
    );
    assert_eq!(h.active("demo"), None);
}

#[test]
fn a_candidate_announcing_an_address_nobody_listens_on_is_rejected() {
    let h = Harness::demo();
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = free.local_addr().expect("local addr").to_string();
    drop(free);
    let error = rejected_at_validated(&h, &address);
    assert!(error.contains("nothing listens"), "{error}");
}
