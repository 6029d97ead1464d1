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
//!    and `tryswap.fixture.Fixture` (and, with `stdio_stream_kib`, go-plugin's stdio
//!    stream `plugin.GRPCStdio`);
//! 5. prints the handshake line on stdout and logs hclog JSON lines on stderr;
//! 6. exits 0 on SIGTERM, SIGINT or `GRPCController/Shutdown`.
//!
//! `--grandchild` (internal) makes it the sleeping grandchild of `fork_grandchild`.

use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tonic::codegen::{http, Body, BoxFuture, StdError};
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
    /// Test helper, not a plugin: bind a Unix socket at this path and answer every HTTP
    /// request on it with a forged success (a neighbour impersonating tryswap's daemon).
    #[arg(long, hide = true)]
    forge_admin_socket: Option<PathBuf>,
}

/// Answers every request on a Unix socket at `path` with `200 {"slots":[]}`, forever.
fn forge_admin_socket(path: &Path) -> ExitCode {
    use std::io::Read;
    let listener = match std::os::unix::net::UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            log(
                "error",
                "cannot bind",
                json!({ "path": path, "error": e.to_string() }),
            );
            return ExitCode::from(1);
        }
    };
    let _ = std::io::stdout().write_all(b"ready\n");
    let _ = std::io::stdout().flush();
    let body = r#"{"status":"ready","slots":[]}"#;
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    for mut stream in listener.incoming().flatten() {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(reply.as_bytes());
    }
    ExitCode::SUCCESS
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
    if let Some(path) = &args.forge_admin_socket {
        return forge_admin_socket(path);
    }
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
async fn spawn_grandchild(config_path: Option<&Path>, clear_env: bool) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = tokio::process::Command::new(&exe);
    if clear_env {
        cmd.env_clear();
    }
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

/// Full name of go-plugin's stdio service.
const STDIO_SERVICE: &str = "plugin.GRPCStdio";
/// HTTP/2 path of `plugin.GRPCStdio/StreamStdio`.
const STREAM_STDIO_PATH: &str = "/plugin.GRPCStdio/StreamStdio";
/// `plugin.StdioData.Channel` values.
const STDIO_STDOUT: i32 = 1;
const STDIO_STDERR: i32 = 2;
/// Every line written to the stdio stream is this long, newline included.
const STDIO_LINE_BYTES: usize = 1024;
/// The stdio buffer holds this many lines (64 KiB, a Linux pipe's capacity).
const STDIO_BUFFER_LINES: usize = 64;

/// go-plugin's `plugin.StdioData` (written independently of tryswap's, so the two are
/// checked against each other on the wire).
#[derive(Clone, PartialEq, Eq, ::prost::Message)]
struct StdioData {
    /// 1 = STDOUT, 2 = STDERR.
    #[prost(int32, tag = "1")]
    channel: i32,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

/// What go-plugin makes of a plugin's `os.Stdout`/`os.Stderr` after `Serve`: a bounded
/// buffer that only `StreamStdio` drains; writers wait while it is full.
#[derive(Clone)]
struct StdioPipe {
    tx: mpsc::Sender<StdioData>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<StdioData>>>,
    lines: Arc<AtomicU64>,
}

impl StdioPipe {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(STDIO_BUFFER_LINES);
        StdioPipe {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            lines: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Writes the next 1 KiB line `stdio line N …\n` (every 10th to STDERR); waits while
    /// the buffer is full.
    async fn write_line(&self) {
        let n = self.lines.fetch_add(1, Ordering::SeqCst) + 1;
        let channel = if n % 10 == 0 {
            STDIO_STDERR
        } else {
            STDIO_STDOUT
        };
        let mut line = format!("stdio line {n} ").into_bytes();
        line.resize(STDIO_LINE_BYTES - 1, b'.');
        line.push(b'\n');
        // The receiver lives as long as the pipe: this only waits.
        let _ = self
            .tx
            .send(StdioData {
                channel,
                data: line,
            })
            .await;
    }
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One `StreamStdio` stream: forwards the buffer's lines until the client goes away or
/// the plugin stops. One stream reads the buffer at a time.
fn stdio_stream(
    pipe: StdioPipe,
    stop: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<StdioData, Status>> {
    let (out, stream) = mpsc::channel(1);
    tokio::spawn(async move {
        let stop = stopped(stop);
        tokio::pin!(stop);
        let mut source = tokio::select! {
            source = pipe.rx.lock() => source,
            () = out.closed() => return,
            () = &mut stop => return,
        };
        loop {
            let permit = tokio::select! {
                permit = out.reserve() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = &mut stop => return,
            };
            let data = tokio::select! {
                data = source.recv() => data,
                () = out.closed() => return,
                () = &mut stop => return,
            };
            match data {
                Some(data) => permit.send(Ok(data)),
                None => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(stream)
}

/// Routable tower service serving `plugin.GRPCStdio` from a [`StdioPipe`].
#[derive(Clone)]
struct StdioServer {
    pipe: StdioPipe,
    stop: watch::Receiver<bool>,
}

impl tonic::server::NamedService for StdioServer {
    const NAME: &'static str = STDIO_SERVICE;
}

impl<B> tower::Service<http::Request<B>> for StdioServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_STDIO_PATH {
            return Box::pin(
                async move { Ok(Status::unimplemented("unknown method").into_http()) },
            );
        }
        let (pipe, stop) = (self.pipe.clone(), self.stop.clone());
        Box::pin(async move {
            let handler = tower::service_fn(move |_: Request<Empty>| {
                let (pipe, stop) = (pipe.clone(), stop.clone());
                async move {
                    log("debug", "stdio stream opened", json!({}));
                    Ok::<_, Status>(Response::new(stdio_stream(pipe, stop)))
                }
            });
            let codec = tonic_prost::ProstCodec::<StdioData, Empty>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.server_streaming(handler, req).await)
        })
    }
}

struct FixtureService {
    message: String,
    version: u32,
    /// With `stdio_stream_kib`: every call writes one line to it first.
    stdio: Option<StdioPipe>,
}

impl Fixture for FixtureService {
    async fn call(&self, request: Request<CallRequest>) -> Result<Response<CallReply>, Status> {
        let payload = request.into_inner().payload;
        log("info", "call", json!({ "payload": payload }));
        if let Some(pipe) = &self.stdio {
            pipe.write_line().await;
        }
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

    if let Some(ms) = config.startup_delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
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

    if let Some(ms) = config.unhealthy_after_ms {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
            for service in [HEALTH_SERVICE, ""] {
                reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
            log("info", "now NOT_SERVING", json!({ "after_ms": ms }));
        });
    }

    let (requested_tx, mut requested_rx) = watch::channel(false);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stdio = config.stdio_stream_kib.map(|_| StdioPipe::new());
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(FixtureServer::new(FixtureService {
            message: config.message().to_owned(),
            version,
            stdio: stdio.clone(),
        }))
        .add_service(ControllerServer::new(Controller {
            ignore: config.ignore_sigterm,
            requested: requested_tx,
        }));
    let router = match &stdio {
        Some(pipe) => router.add_service(StdioServer {
            pipe: pipe.clone(),
            stop: stop_tx.subscribe(),
        }),
        None => router,
    };
    let stop = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let (network, address, socket_path) = match &bound {
        Bound::Tcp(_, addr) => ("tcp", addr.clone(), None),
        Bound::Unix(_, path) => ("unix", path.display().to_string(), Some(path.clone())),
    };
    let connections_file = config.connections_file.clone();
    let mut server = match bound {
        // TCP_NODELAY on every connection, as Go (and so go-plugin) sets by default:
        // `serve_with_incoming` ignores the builder's `tcp_nodelay`, and with Nagle on,
        // a fresh HTTP/2 connection often stalls ~40 ms on delayed ACKs.
        Bound::Tcp(l, _) => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(l),
                move |conn| {
                    if let Ok(stream) = &conn {
                        let _ = stream.set_nodelay(true);
                        count_connection(connections_file.as_deref());
                    }
                    conn
                },
            ),
            stop,
        )),
        Bound::Unix(l, _) => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::UnixListenerStream::new(l),
                move |conn| {
                    if conn.is_ok() {
                        count_connection(connections_file.as_deref());
                    }
                    conn
                },
            ),
            stop,
        )),
    };
    log(
        "debug",
        "plugin address",
        json!({ "network": network, "address": address }),
    );

    if config.fork_grandchild {
        match spawn_grandchild(args.config.as_deref(), config.grandchild_clear_env).await {
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
    if let (Some(pipe), Some(kib)) = (&stdio, config.stdio_stream_kib) {
        // Like a go-plugin plugin printing after Serve: blocks while nobody drains.
        let pipe = pipe.clone();
        tokio::spawn(async move {
            for _ in 0..kib {
                pipe.write_line().await;
            }
            log("debug", "stdio stream lines written", json!({ "kib": kib }));
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

/// Appends this process's pid to `file` (config `connections_file`): one line per
/// accepted connection.
fn count_connection(file: Option<&Path>) {
    let Some(file) = file else {
        return;
    };
    let line = format!("{}\n", std::process::id());
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
}

#[cfg(test)]
mod tests {
    #[test]
    fn cookie_message_is_go_plugins() {
        assert!(super::NOT_A_PLUGIN.starts_with("This binary is a plugin."));
        assert_eq!(super::NOT_A_PLUGIN.lines().count(), 3);
    }
}
