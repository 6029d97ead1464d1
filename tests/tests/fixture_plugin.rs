//! The fixture plugin behaves like a go-plugin gRPC plugin, and misbehaves as
//! its config file says. Every process is launched directly (empty environment
//! plus the go-plugin variables) and killed by guards; every wait is bounded.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tryswap_tests::{
    call, health, pid_alive, process_group, read_pid_file, session_of, shutdown, wait_until,
    wait_until_async, FixtureConfig, FixtureNetwork, Handshake, PluginCommand, PluginProcess,
    ProcessError, ServingStatus, TempState,
};

/// Bound on anything that should happen "soon" (generous for loaded CI).
const SOON: Duration = Duration::from_secs(10);
/// Bound on each RPC.
const RPC: Duration = Duration::from_secs(5);

const NOT_A_PLUGIN: &str =
    "This binary is a plugin. These are not meant to be executed directly.\n\
Please execute the program that consumes these plugins, which will\n\
load any plugins automatically\n";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tryswap-fixture-plugin")
}

/// The fixture with the default cookie and `PLUGIN_PROTOCOL_VERSIONS=1`.
fn plugin() -> PluginCommand {
    PluginCommand::new(bin())
        .env("TRYSWAP_PLUGIN", "demo")
        .protocol_versions(&[1])
}

/// [`plugin`] with `config` written into the state dir as `<name>.toml`.
fn plugin_with(state: &TempState, name: &str, config: &FixtureConfig) -> PluginCommand {
    let path = config.write(&state.join(format!("{name}.toml"))).unwrap();
    plugin().config(path)
}

fn handshake(p: &PluginProcess) -> Handshake {
    let line = p.next_line(SOON).unwrap();
    Handshake::parse(&line).unwrap()
}

fn exit_code(p: &mut PluginProcess) -> i32 {
    let status = p
        .wait_timeout(SOON)
        .unwrap()
        .unwrap_or_else(|| panic!("pid {} still running; stderr: {}", p.pid(), p.stderr_text()));
    status
        .code()
        .unwrap_or_else(|| panic!("killed by signal {:?}", status.signal()))
}

fn assert_hclog(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no stderr");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for key in ["@level", "@message", "@timestamp"] {
            assert!(
                v.get(key).is_some_and(|x| x.is_string()),
                "{key} missing in {line}"
            );
        }
    }
}

#[test]
fn fixture_plugin_path_finds_the_built_binary() {
    let found = tryswap_tests::fixture_plugin_path().canonicalize().unwrap();
    assert_eq!(found, Path::new(bin()).canonicalize().unwrap());
}

#[tokio::test]
async fn tcp_plugin_handshakes_serves_and_shuts_down_on_controller_request() {
    let mut p = plugin().spawn().unwrap();
    let line = p.next_line(SOON).unwrap();
    let hs = Handshake::parse(&line).unwrap();
    assert_eq!((hs.core_version, hs.app_version), (1, 1), "{line}");
    assert_eq!((hs.network.as_str(), hs.protocol.as_str()), ("tcp", "grpc"));
    assert_eq!(
        hs.server_cert, None,
        "tcp line has no trailing field: {line}"
    );
    let port = hs.address.strip_prefix("127.0.0.1:").unwrap();
    assert!(port.parse::<u16>().unwrap() > 0);

    assert_eq!(
        health("tcp", &hs.address, "plugin", RPC).await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health("tcp", &hs.address, "", RPC).await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = health("tcp", &hs.address, "nope", RPC).await.unwrap_err();
    assert_eq!(unknown.status().unwrap().code(), tonic::Code::NotFound);

    let reply = call("tcp", &hs.address, "ping", RPC).await.unwrap();
    assert_eq!(reply.payload, "ping");
    assert_eq!(reply.message, "default");
    assert_eq!(reply.pid, p.pid());
    assert_eq!(reply.version, 1);

    assert!(wait_until(SOON, || p
        .stderr_text()
        .contains(r#""@message":"call""#)));
    shutdown("tcp", &hs.address, RPC).await.unwrap();
    assert_eq!(exit_code(&mut p), 0);
    assert_hclog(&p.stderr_text());
    assert!(p.stderr_text().contains("shutting down"));
}

#[tokio::test]
async fn unix_plugin_prints_go_plugins_line_and_removes_its_socket() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        network: Some(FixtureNetwork::Unix),
        message: Some("v1".into()),
        ..Default::default()
    };
    let mut p = plugin_with(&state, "unix", &config)
        .env("TMPDIR", state.path())
        .spawn()
        .unwrap();
    let line = p.next_line(SOON).unwrap();
    let hs = Handshake::parse(&line).unwrap();
    assert_eq!(line, format!("1|1|unix|{}|grpc|", hs.address));
    let socket = PathBuf::from(&hs.address);
    assert_eq!(socket.parent(), Some(state.path()));
    let name = socket.file_name().unwrap().to_str().unwrap();
    let digits = name.strip_prefix("plugin").unwrap();
    assert!(
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        "{name}"
    );

    assert_eq!(
        health("unix", &hs.address, "plugin", RPC).await.unwrap(),
        ServingStatus::Serving
    );
    let reply = call("unix", &hs.address, "over unix", RPC).await.unwrap();
    assert_eq!((reply.message.as_str(), reply.pid), ("v1", p.pid()));

    assert!(p.signal(Signal::SIGTERM));
    assert_eq!(exit_code(&mut p), 0);
    assert!(!socket.exists(), "socket {} left behind", socket.display());
}

#[tokio::test]
async fn unix_socket_falls_back_to_tmp_in_an_empty_environment() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        network: Some(FixtureNetwork::Unix),
        ..Default::default()
    };
    let mut p = plugin_with(&state, "unix", &config).spawn().unwrap();
    let hs = handshake(&p);
    assert!(hs.address.starts_with("/tmp/plugin"), "{}", hs.address);
    assert!(Path::new(&hs.address).exists());
    assert!(p.signal(Signal::SIGINT));
    assert_eq!(exit_code(&mut p), 0);
    assert!(!Path::new(&hs.address).exists());
}

#[test]
fn tcp_port_stays_within_the_plugin_port_range() {
    // Hold one port of the range so the plugin must skip it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let (lo, hi) = if taken <= u16::MAX - 40 {
        (taken, taken + 40)
    } else {
        (taken - 40, taken)
    };
    let p = plugin().port_range(lo, hi).spawn().unwrap();
    let hs = handshake(&p);
    let port: u16 = hs
        .address
        .strip_prefix("127.0.0.1:")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (lo..=hi).contains(&port) && port != taken,
        "{port} not in {lo}..={hi} minus {taken}"
    );

    let mut bad = plugin().port_range(2000, 1000).spawn().unwrap();
    assert!(matches!(
        bad.next_line(SOON),
        Err(ProcessError::StdoutClosed { .. })
    ));
    assert_eq!(exit_code(&mut bad), 1);
    assert!(bad.stderr_text().contains("greater than PLUGIN_MAX_PORT"));
}

#[test]
fn missing_or_wrong_cookie_exits_1_with_go_plugins_message() {
    for cmd in [
        PluginCommand::new(bin()).protocol_versions(&[1]),
        plugin().env("TRYSWAP_PLUGIN", "wrong"),
        plugin().args_for_cookie("OTHER", "x"),
    ] {
        let mut p = cmd.spawn().unwrap();
        assert!(matches!(
            p.next_line(SOON),
            Err(ProcessError::StdoutClosed { .. })
        ));
        assert_eq!(exit_code(&mut p), 1);
        assert!(
            wait_until(SOON, || p.stderr_text() == NOT_A_PLUGIN),
            "{:?}",
            p.stderr_text()
        );
    }
    // The cookie given on the command line is honoured.
    let p = plugin()
        .args_for_cookie("OTHER", "x")
        .env("OTHER", "x")
        .spawn()
        .unwrap();
    assert_eq!(handshake(&p).app_version, 1);
}

/// `--cookie-key K --cookie-value V`.
trait CookieArgs {
    fn args_for_cookie(self, key: &str, value: &str) -> Self;
}

impl CookieArgs for PluginCommand {
    fn args_for_cookie(self, key: &str, value: &str) -> Self {
        self.arg("--cookie-key")
            .arg(key)
            .arg("--cookie-value")
            .arg(value)
    }
}

#[tokio::test]
async fn app_version_is_the_highest_common_one() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        app_versions: Some(vec![1, 2, 3]),
        ..Default::default()
    };
    let cmd = plugin_with(&state, "versions", &config);

    let p = cmd.clone().protocol_versions(&[2, 3, 5]).spawn().unwrap();
    let hs = handshake(&p);
    assert_eq!(hs.app_version, 3);
    assert_eq!(call("tcp", &hs.address, "", RPC).await.unwrap().version, 3);

    let p = cmd.clone().protocol_versions(&[1]).spawn().unwrap();
    assert_eq!(handshake(&p).app_version, 1);

    // A legacy host that sends no list gets the lowest version, as go-plugin does.
    let p = cmd
        .clone()
        .env_remove("PLUGIN_PROTOCOL_VERSIONS")
        .spawn()
        .unwrap();
    assert_eq!(handshake(&p).app_version, 1);

    let mut p = cmd.clone().protocol_versions(&[4, 7]).spawn().unwrap();
    assert!(matches!(
        p.next_line(SOON),
        Err(ProcessError::StdoutClosed { .. })
    ));
    assert_eq!(exit_code(&mut p), 1);
    assert!(p.stderr_text().contains("no common app protocol version"));

    let fallback = FixtureConfig {
        app_versions: Some(vec![2, 3]),
        version_fallback: true,
        ..Default::default()
    };
    let p = plugin_with(&state, "fallback", &fallback)
        .protocol_versions(&[4, 7])
        .spawn()
        .unwrap();
    assert_eq!(handshake(&p).app_version, 2);
}

#[test]
fn exit_before_handshake_exits_with_the_code_and_no_line() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        exit_before_handshake: Some(3),
        ..Default::default()
    };
    let mut p = plugin_with(&state, "exit", &config).spawn().unwrap();
    assert!(matches!(
        p.next_line(SOON),
        Err(ProcessError::StdoutClosed { .. })
    ));
    assert_eq!(exit_code(&mut p), 3);
    assert!(p.stderr_text().contains("exiting before handshake"));
    assert_eq!(p.stdout_bytes(), 0);
}

#[test]
fn handshake_line_override_prints_garbage_and_keeps_running() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        handshake_line: Some("garbage".into()),
        ..Default::default()
    };
    let mut p = plugin_with(&state, "garbage", &config).spawn().unwrap();
    assert_eq!(p.next_line(SOON).unwrap(), "garbage");
    assert!(Handshake::parse("garbage").is_err());
    assert!(p
        .wait_timeout(Duration::from_millis(200))
        .unwrap()
        .is_none());
    assert!(pid_alive(p.pid()));
}

#[test]
fn core_and_app_version_overrides_show_in_the_handshake() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        core_version: Some(2),
        app_version_override: Some(9),
        ..Default::default()
    };
    let p = plugin_with(&state, "versions", &config).spawn().unwrap();
    let hs = handshake(&p);
    assert_eq!((hs.core_version, hs.app_version), (2, 9));
    assert_eq!(hs.network, "tcp");
}

#[test]
fn hang_never_prints_a_handshake() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        hang: true,
        ..Default::default()
    };
    let mut p = plugin_with(&state, "hang", &config).spawn().unwrap();
    assert!(wait_until(SOON, || p.stderr_text().contains("hanging")));
    assert!(matches!(
        p.next_line(Duration::from_millis(300)),
        Err(ProcessError::NoLine { .. })
    ));
    assert!(p.try_wait().unwrap().is_none());
    assert_eq!(p.stdout_bytes(), 0);
}

#[tokio::test]
async fn never_healthy_reports_not_serving() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        never_healthy: true,
        ..Default::default()
    };
    let p = plugin_with(&state, "sick", &config).spawn().unwrap();
    let hs = handshake(&p);
    let serving = wait_until_async(Duration::from_millis(500), || async {
        health("tcp", &hs.address, "plugin", RPC).await.unwrap() == ServingStatus::Serving
    })
    .await;
    assert!(!serving);
    assert_eq!(
        health("tcp", &hs.address, "plugin", RPC).await.unwrap(),
        ServingStatus::NotServing
    );
    // It still answers calls: only its health is bad.
    assert_eq!(
        call("tcp", &hs.address, "x", RPC).await.unwrap().pid,
        p.pid()
    );
}

#[tokio::test]
async fn healthy_after_ms_turns_serving_after_the_delay() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        healthy_after_ms: Some(1500),
        ..Default::default()
    };
    let started = Instant::now();
    let p = plugin_with(&state, "slow", &config).spawn().unwrap();
    let hs = handshake(&p);
    let first = health("tcp", &hs.address, "plugin", RPC).await.unwrap();
    if started.elapsed() < Duration::from_millis(1400) {
        assert_eq!(first, ServingStatus::NotServing);
    }
    let serving = wait_until_async(SOON, || async {
        health("tcp", &hs.address, "plugin", RPC).await.unwrap() == ServingStatus::Serving
    })
    .await;
    assert!(serving, "not serving within {SOON:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn crash_after_ms_exits_2_after_the_handshake() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        crash_after_ms: Some(300),
        ..Default::default()
    };
    let mut p = plugin_with(&state, "crash", &config).spawn().unwrap();
    let hs = handshake(&p);
    let handshake_at = Instant::now();
    assert_eq!(exit_code(&mut p), 2);
    assert!(handshake_at.elapsed() >= Duration::from_millis(250));
    assert!(p.stderr_text().contains("crashing"));
    assert!(call("tcp", &hs.address, "x", RPC).await.is_err());
}

#[tokio::test]
async fn ignore_sigterm_survives_sigterm_and_shutdown_but_not_sigkill() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        ignore_sigterm: true,
        ..Default::default()
    };
    let mut p = plugin_with(&state, "stubborn", &config).spawn().unwrap();
    let hs = handshake(&p);
    assert!(p.signal(Signal::SIGTERM));
    assert!(wait_until(SOON, || p
        .stderr_text()
        .contains("ignoring SIGTERM")));
    shutdown("tcp", &hs.address, RPC).await.unwrap();
    assert!(wait_until(SOON, || p
        .stderr_text()
        .contains("ignoring GRPCController/Shutdown")));
    assert!(p
        .wait_timeout(Duration::from_millis(200))
        .unwrap()
        .is_none());
    assert_eq!(
        call("tcp", &hs.address, "x", RPC).await.unwrap().pid,
        p.pid()
    );

    assert!(p.signal(Signal::SIGKILL));
    let status = p.wait_timeout(SOON).unwrap().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn fork_grandchild_stays_in_the_process_group_and_dies_with_it() {
    let state = TempState::new().unwrap();
    let pid_file = state.join("grandchild.pid");
    let config = FixtureConfig {
        fork_grandchild: true,
        grandchild_pid_file: Some(pid_file.clone()),
        ..Default::default()
    };
    let mut p = plugin_with(&state, "forker", &config).spawn().unwrap();
    handshake(&p);
    // The pid file is written before the handshake.
    let gc = read_pid_file(&pid_file).unwrap();
    assert_ne!(gc, p.pid());
    assert!(pid_alive(gc));
    assert_eq!(process_group(gc), Some(p.pid()));
    assert_eq!(session_of(gc), session_of(p.pid()));

    assert!(p.signal_group(Signal::SIGKILL));
    p.wait_timeout(SOON).unwrap().unwrap();
    assert!(
        wait_until(SOON, || !pid_alive(gc)),
        "grandchild {gc} survived"
    );
}

#[test]
fn grandchild_new_session_escapes_the_group_and_temp_state_kills_it() {
    let state = TempState::new().unwrap();
    let pid_file = state.join("grandchild.pid");
    let config = FixtureConfig {
        fork_grandchild: true,
        grandchild_pid_file: Some(pid_file.clone()),
        grandchild_new_session: true,
        ..Default::default()
    };
    let mut p = plugin_with(&state, "escaper", &config).spawn().unwrap();
    handshake(&p);
    let gc = read_pid_file(&pid_file).unwrap();
    assert_eq!(session_of(gc), Some(gc));
    assert_eq!(process_group(gc), Some(gc));

    p.kill().unwrap();
    assert!(pid_alive(gc), "grandchild died with the plugin's group");
    assert_eq!(state.processes(), vec![gc]);
    assert_eq!(state.kill_processes(), vec![gc]);
    assert!(
        wait_until(SOON, || !pid_alive(gc)),
        "grandchild {gc} survived SIGKILL"
    );
}

#[test]
fn flood_stdout_and_stderr_write_a_lot() {
    let state = TempState::new().unwrap();
    for (name, config) in [
        (
            "out",
            FixtureConfig {
                flood_stdout: true,
                ..Default::default()
            },
        ),
        (
            "err",
            FixtureConfig {
                flood_stderr: true,
                ..Default::default()
            },
        ),
    ] {
        let p = plugin_with(&state, name, &config).spawn().unwrap();
        handshake(&p);
        let bytes = || {
            if config.flood_stdout {
                p.stdout_bytes()
            } else {
                p.stderr_bytes()
            }
        };
        assert!(
            wait_until(SOON, || bytes() > 8 << 20),
            "{name}: only {} bytes",
            bytes()
        );
    }
}

#[test]
fn pid_file_holds_the_plugin_pid() {
    let state = TempState::new().unwrap();
    let pid_file = state.join("plugin.pid");
    let config = FixtureConfig {
        pid_file: Some(pid_file.clone()),
        ..Default::default()
    };
    let p = plugin_with(&state, "pid", &config).spawn().unwrap();
    handshake(&p);
    assert_eq!(read_pid_file(&pid_file), Some(p.pid()));
}

#[test]
fn bad_config_files_exit_1_naming_the_problem() {
    let state = TempState::new().unwrap();
    let path = state.join("bad.toml");
    std::fs::write(&path, "message = \"x\"\nbogus_key = 1\n").unwrap();
    let mut p = plugin().config(&path).spawn().unwrap();
    assert_eq!(exit_code(&mut p), 1);
    assert!(p.stderr_text().contains("bogus_key"), "{}", p.stderr_text());

    let mut p = plugin().config(state.join("missing.toml")).spawn().unwrap();
    assert_eq!(exit_code(&mut p), 1);
    assert!(p.stderr_text().contains("missing.toml"));
}

#[test]
fn config_round_trips_through_toml() {
    let state = TempState::new().unwrap();
    let config = FixtureConfig {
        message: Some("v2".into()),
        app_versions: Some(vec![1, 2]),
        network: Some(FixtureNetwork::Unix),
        healthy_after_ms: Some(10),
        grandchild_pid_file: Some(state.join("g.pid")),
        flood_stderr: true,
        ..Default::default()
    };
    let path = config.write(&state.join("c.toml")).unwrap();
    assert_eq!(FixtureConfig::load(&path).unwrap(), config);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("hang"), "unset keys are not written: {text}");
    assert_eq!(
        FixtureConfig::parse("", &path).unwrap(),
        FixtureConfig::default()
    );
    assert!(FixtureConfig::parse("app_versions = []", &path).is_err());
    assert!(FixtureConfig::parse("network = \"udp\"", &path).is_err());
}
