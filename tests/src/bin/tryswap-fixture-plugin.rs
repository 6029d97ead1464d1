//! `tryswap-fixture-plugin`: a plugin that behaves like a hashicorp/go-plugin
//! gRPC plugin, and misbehaves on request, for testing tryswap's process
//! driver.
//!
//! Usage: `tryswap-fixture-plugin [--config <path>] [--cookie-key K --cookie-value V]`.
//! See `tryswap_tests::config::FixtureConfig` for the config file keys.
//!
//! Normal behaviour, like go-plugin's `Serve`:
//! 1. the magic cookie env var must match, else go-plugin's message on stderr, exit 1;
//! 2. the app version is negotiated from `PLUGIN_PROTOCOL_VERSIONS`;
//! 3. it listens on tcp `127.0.0.1` (within `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT`)
//!    or on a unix socket `plugin<digits>` in the temp dir;
//! 4. serves `grpc.health.v1.Health` ("plugin" SERVING), `plugin.GRPCController`
//!    and `tryswap.fixture.Fixture`;
//! 5. prints the handshake line on stdout and logs hclog JSON lines on stderr;
//! 6. exits 0 on SIGTERM, SIGINT or `GRPCController/Shutdown`.
//!
//! `--grandchild` (internal) makes it the sleeping grandchild of `fork_grandchild`.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tryswap_tests::config::{FixtureConfig, FixtureNetwork};
use tryswap_tests::proto::{
    CallReply, CallRequest, ControllerServer, Empty, Fixture, FixtureServer, GrpcController,
};

/// go-plugin's answer to a missing or wrong magic cookie (byte for byte).
const NOT_A_PLUGIN: &str =
    "This binary is a plugin. These are not meant to be executed directly.\n\
Please execute the program that consumes these plugins, which will\n\
load any plugins automatically\n";

/// The health service name go-plugin registers.
const HEALTH_SERVICE: &str = "plugin";

#[derive(Debug, Parser)]
#[command(
    name = "tryswap-fixture-plugin",
    about = "A go-plugin compatible gRPC plugin for testing tryswap"
)]
struct Args {
    /// Fixture config file (TOML); without it the plugin behaves normally.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Magic cookie environment variable name.
    #[arg(long, default_value = "TRYSWAP_PLUGIN")]
    cookie_key: String,
    /// Magic cookie value.
    #[arg(long, default_value = "demo")]
    cookie_value: String,
    /// Internal: run as the sleeping grandchild.
    #[arg(long, hide = true)]
    grandchild: bool,
}

/// Writes one hclog-style JSON line to stderr.
fn log(level: &str, message: &str, fields: Value) {
    let mut obj = serde_json::Map::new();
    obj.insert("@level".into(), json!(level));
    obj.insert("@message".into(), json!(message));
    obj.insert("@module".into(), json!("fixture"));
    obj.insert(
        "@timestamp".into(),
        json!(chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()),
    );
    if let Value::Object(extra) = fields {
        obj.extend(extra);
    }
    let mut line = Value::Object(obj).to_string();
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => match FixtureConfig::load(path) {
            Ok(config) => config,
            Err(e) => {
                log("error", "invalid config", json!({ "error": e.to_string() }));
                return ExitCode::from(1);
            }
        },
        None => FixtureConfig::default(),
    };
    if args.grandchild {
        grandchild(&config);
    }
    if let Some(path) = &config.pid_file {
        if let Err(e) = write_pid(path, std::process::id()) {
            log(
                "error",
                "cannot write pid file",
                json!({ "path": path, "error": e.to_string() }),
            );
            return ExitCode::from(1);
        }
    }
    if std::env::var_os(&args.cookie_key).is_none_or(|v| v != args.cookie_value.as_str()) {
        let _ = std::io::stderr().lock().write_all(NOT_A_PLUGIN.as_bytes());
        return ExitCode::from(1);
    }
    let version = match negotiate(&config) {
        Ok(v) => v,
        Err(e) => {
            log(
                "error",
                "protocol version negotiation failed",
                json!({ "error": e }),
            );
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(
                "error",
                "cannot start runtime",
                json!({ "error": e.to_string() }),
            );
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run(config, args, version));
    // Exit without dropping the runtime: flood threads may be blocked on writes.
    std::process::exit(code)
}

/// Picks the highest app version both sides support.
///
/// `PLUGIN_PROTOCOL_VERSIONS` unset or empty: the lowest supported version
/// (go-plugin's answer to a legacy host). No common version: an error, unless
/// `version_fallback` asks for go-plugin's exact behaviour (lowest supported).
fn negotiate(config: &FixtureConfig) -> Result<u32, String> {
    let mut supported = config.app_versions();
    supported.sort_unstable();
    let lowest = supported.first().copied().unwrap_or(1);
    let offered = std::env::var("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default();
    if offered.is_empty() {
        return Ok(lowest);
    }
    let mut host: Vec<u32> = Vec::new();
    for s in offered.split(',') {
        match s.trim().parse::<u32>() {
            Ok(v) => host.push(v),
            Err(_) => {
                // go-plugin's wording (it also does not end the line).
                let _ = write!(
                    std::io::stderr(),
                    "server sent invalid plugin version {s:?}"
                );
            }
        }
    }
    if let Some(v) = supported.iter().rev().find(|v| host.contains(v)) {
        return Ok(*v);
    }
    if config.version_fallback {
        return Ok(lowest);
    }
    Err(format!(
        "no common app protocol version: host offers {offered:?}, plugin supports {supported:?}"
    ))
}

fn write_pid(path: &Path, pid: u32) -> std::io::Result<()> {
    // Write then rename, so readers never see a partial pid.
    let tmp = path.with_extension("tmp-pid");
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// The grandchild: optionally leave the process group, report ready, sleep.
fn grandchild(config: &FixtureConfig) -> ! {
    if config.grandchild_new_session {
        let _ = nix::unistd::setsid();
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b"ready\n");
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}

/// Starts the grandchild and waits (bounded) until it is ready; returns its pid.
async fn spawn_grandchild(config_path: Option<&Path>) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("--grandchild");
    if let Some(path) = config_path {
        cmd.arg("--config").arg(path);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", exe.display()))?;
    let pid = child.id().ok_or("grandchild exited at once")?;
    let stdout = child.stdout.take().ok_or("grandchild has no stdout")?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
        Ok(Ok(_)) if line.trim() == "ready" => Ok(pid),
        Ok(Ok(_)) => Err(format!("grandchild {pid} said {line:?} instead of ready")),
        Ok(Err(e)) => Err(format!("grandchild {pid}: {e}")),
        Err(_) => Err(format!("grandchild {pid} not ready within 10s")),
    }
}

struct FixtureService {
    message: String,
    version: u32,
}

impl Fixture for FixtureService {
    async fn call(&self, request: Request<CallRequest>) -> Result<Response<CallReply>, Status> {
        let payload = request.into_inner().payload;
        log("info", "call", json!({ "payload": payload }));
        Ok(Response::new(CallReply {
            payload,
            message: self.message.clone(),
            pid: std::process::id(),
            version: self.version,
        }))
    }
}

struct Controller {
    ignore: bool,
    requested: watch::Sender<bool>,
}

impl GrpcController for Controller {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        if self.ignore {
            log(
                "warn",
                "ignoring GRPCController/Shutdown as configured",
                json!({}),
            );
        } else {
            log("info", "GRPCController/Shutdown received", json!({}));
            self.requested.send_replace(true);
        }
        Ok(Response::new(Empty {}))
    }
}

enum Bound {
    Tcp(tokio::net::TcpListener, String),
    Unix(tokio::net::UnixListener, PathBuf),
}

fn port_env(name: &str) -> Result<u16, String> {
    match std::env::var(name) {
        Err(_) => Ok(0),
        Ok(s) if s.is_empty() => Ok(0),
        Ok(s) => s
            .parse::<u16>()
            .map_err(|e| format!("Couldn't get value from {name}: {s:?}: {e}")),
    }
}

async fn listen(network: FixtureNetwork) -> Result<Bound, String> {
    match network {
        FixtureNetwork::Tcp => {
            let min = port_env("PLUGIN_MIN_PORT")?;
            let max = port_env("PLUGIN_MAX_PORT")?;
            if min > max {
                return Err(format!(
                    "PLUGIN_MIN_PORT value of {min} is greater than PLUGIN_MAX_PORT value of {max}"
                ));
            }
            for port in min..=max {
                if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    let addr = l.local_addr().map_err(|e| e.to_string())?;
                    return Ok(Bound::Tcp(l, addr.to_string()));
                }
            }
            Err("Couldn't bind plugin TCP listener".to_owned())
        }
        FixtureNetwork::Unix => {
            let dir = ["PLUGIN_UNIX_SOCKET_DIR", "TMPDIR"]
                .iter()
                .filter_map(std::env::var_os)
                .find(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp"));
            let mut last = String::new();
            for _ in 0..100 {
                let n = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
                    % 10_000_000_000;
                let path = dir.join(format!("plugin{n}"));
                match tokio::net::UnixListener::bind(&path) {
                    Ok(l) => return Ok(Bound::Unix(l, path)),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = e.to_string(),
                    Err(e) => return Err(format!("bind {}: {e}", path.display())),
                }
            }
            Err(format!("no free socket name in {}: {last}", dir.display()))
        }
    }
}

fn flood(to_stderr: bool) {
    std::thread::spawn(move || {
        let line = if to_stderr {
            "flood stderr flood stderr flood stderr flood stderr flood stderr\n"
        } else {
            "flood stdout flood stdout flood stdout flood stdout flood stdout\n"
        };
        let chunk = line.repeat(1024);
        loop {
            let result = if to_stderr {
                std::io::stderr().lock().write_all(chunk.as_bytes())
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(chunk.as_bytes()).and_then(|()| out.flush())
            };
            if result.is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
}

async fn run(config: FixtureConfig, args: Args, version: u32) -> i32 {
    let start = tokio::time::Instant::now();
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            log(
                "error",
                "cannot install signal handlers",
                json!({ "error": e.to_string() }),
            );
            return 1;
        }
    };
    log(
        "info",
        "starting fixture plugin",
        json!({
            "pid": std::process::id(),
            "message": config.message(),
            "version": version,
            "config": args.config,
        }),
    );

    if let Some(code) = config.exit_before_handshake {
        log(
            "error",
            "exiting before handshake as configured",
            json!({ "code": code }),
        );
        return code;
    }

    let bound = match listen(config.network()).await {
        Ok(b) => b,
        Err(e) => {
            log("error", "plugin init error", json!({ "error": e }));
            return 1;
        }
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let delayed = config.never_healthy || config.healthy_after_ms.is_some();
    let initial = if delayed {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    reporter.set_service_status(HEALTH_SERVICE, initial).await;
    reporter.set_service_status("", initial).await;
    if let (Some(ms), false) = (config.healthy_after_ms, config.never_healthy) {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
            reporter
                .set_service_status(HEALTH_SERVICE, ServingStatus::Serving)
                .await;
            reporter
                .set_service_status("", ServingStatus::Serving)
                .await;
            log("info", "now healthy", json!({ "after_ms": ms }));
        });
    }

    let (requested_tx, mut requested_rx) = watch::channel(false);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(FixtureServer::new(FixtureService {
            message: config.message().to_owned(),
            version,
        }))
        .add_service(ControllerServer::new(Controller {
            ignore: config.ignore_sigterm,
            requested: requested_tx,
        }));
    let stop = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let (network, address, socket_path) = match &bound {
        Bound::Tcp(_, addr) => ("tcp", addr.clone(), None),
        Bound::Unix(_, path) => ("unix", path.display().to_string(), Some(path.clone())),
    };
    let mut server = match bound {
        // TCP_NODELAY on every connection, as Go (and so go-plugin) sets by default:
        // `serve_with_incoming` ignores the builder's `tcp_nodelay`, and with Nagle on,
        // a fresh HTTP/2 connection often stalls ~40 ms on delayed ACKs.
        Bound::Tcp(l, _) => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(l),
                |conn| {
                    if let Ok(stream) = &conn {
                        let _ = stream.set_nodelay(true);
                    }
                    conn
                },
            ),
            stop,
        )),
        Bound::Unix(l, _) => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(l),
            stop,
        )),
    };
    log(
        "debug",
        "plugin address",
        json!({ "network": network, "address": address }),
    );

    if config.fork_grandchild {
        match spawn_grandchild(args.config.as_deref()).await {
            Ok(pid) => {
                log(
                    "info",
                    "started grandchild",
                    json!({ "grandchild_pid": pid }),
                );
                if let Some(path) = &config.grandchild_pid_file {
                    if let Err(e) = write_pid(path, pid) {
                        log(
                            "error",
                            "cannot write grandchild pid file",
                            json!({ "path": path, "error": e.to_string() }),
                        );
                        return 1;
                    }
                }
            }
            Err(e) => {
                log("error", "cannot start grandchild", json!({ "error": e }));
                return 1;
            }
        }
    }

    if config.hang {
        log("info", "hanging: no handshake as configured", json!({}));
    } else {
        let line = match &config.handshake_line {
            Some(line) => line.clone(),
            None => {
                let trailing = config.trailing_pipe.unwrap_or(network == "unix");
                format!(
                    "{}|{}|{network}|{address}|grpc{}",
                    config.core_version.unwrap_or(1),
                    config.app_version_override.unwrap_or(version),
                    if trailing { "|" } else { "" }
                )
            }
        };
        let mut out = std::io::stdout().lock();
        if out
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            log("error", "cannot write handshake", json!({}));
        }
    }

    if let Some(ms) = config.crash_after_ms {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            log("error", "crashing as configured", json!({ "after_ms": ms }));
            std::process::exit(2);
        });
    }
    if config.flood_stdout {
        flood(false);
    }
    if config.flood_stderr {
        flood(true);
    }

    let code = loop {
        tokio::select! {
            _ = sigterm.recv() => {
                if config.ignore_sigterm {
                    log("warn", "ignoring SIGTERM as configured", json!({}));
                    continue;
                }
                log("info", "SIGTERM received, shutting down", json!({}));
                break 0;
            }
            _ = sigint.recv() => {
                log("info", "SIGINT received, shutting down", json!({}));
                break 0;
            }
            _ = requested_rx.wait_for(|r| *r) => {
                log("info", "shutting down on controller request", json!({}));
                break 0;
            }
            result = &mut server => {
                log("error", "server stopped", json!({ "result": format!("{result:?}") }));
                break 1;
            }
        }
    };
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut server).await;
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    log("info", "plugin exiting", json!({ "code": code }));
    code
}

#[cfg(test)]
mod tests {
    #[test]
    fn cookie_message_is_go_plugins() {
        assert!(super::NOT_A_PLUGIN.starts_with("This binary is a plugin."));
        assert_eq!(super::NOT_A_PLUGIN.lines().count(), 3);
    }
}
