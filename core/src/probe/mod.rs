//! Health probes with Kubernetes semantics, and go-plugin's graceful shutdown call.
//!
//! [`run_probe`] applies the thresholds: wait `initial_delay`, then run one check every
//! `period` (start to start), each bounded by `timeout`; pass after `success_threshold`
//! consecutive successes, fail after `failure_threshold` consecutive failures (a success
//! resets the failure count and a failure the success count). It is generic over the check
//! so in-process drivers reuse it; [`probe`] runs it with [`check_once`], which knows the
//! kinds: gRPC health, HTTP GET, TCP connect, exec, none. gRPC, HTTP and TCP checks target
//! the address from the plugin's handshake line, over TCP or a Unix socket.

use std::fmt;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint as TonicEndpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tryswap_fsm::{Endpoint, Network};

use crate::config::{ProbeConfig, ProbeKind};

/// gRPC method go-plugin serves to let a host ask a plugin to exit gracefully.
pub const GRPC_CONTROLLER_SHUTDOWN: &str = "/plugin.GRPCController/Shutdown";

/// Environment variables added for an exec probe's command (when an endpoint is known).
pub const EXEC_NETWORK_ENV: &str = "TRYSWAP_NETWORK";
/// See [`EXEC_NETWORK_ENV`].
pub const EXEC_ADDRESS_ENV: &str = "TRYSWAP_ADDRESS";

/// How much of an exec probe's stderr is kept for the error message.
const EXEC_STDERR_KEEP: usize = 1024;

/// Why one check failed. Messages name the kind, the target and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A grpc, http or tcp check without an endpoint to target.
    #[error("{kind} probe needs the plugin's address, but no endpoint is known")]
    NoEndpoint {
        /// The probe kind.
        kind: &'static str,
    },
    /// The check did not finish in time.
    #[error("{what} timed out after {timeout:?}")]
    Timeout {
        /// What was being done, e.g. `tcp connect to tcp:127.0.0.1:80`.
        what: String,
        /// The bound.
        timeout: Duration,
    },
    /// Could not connect (or build a client) to the target.
    #[error("{what}: cannot connect to {target}: {detail}")]
    Connect {
        /// What was being done.
        what: String,
        /// `tcp:host:port` or `unix:/path`.
        target: String,
        /// Why.
        detail: String,
    },
    /// The health service answered, but not SERVING.
    #[error("grpc health of service {service:?} at {target} is {status}")]
    NotServing {
        /// The service asked about.
        service: String,
        /// `tcp:host:port` or `unix:/path`.
        target: String,
        /// The status name, e.g. `NOT_SERVING` or `SERVICE_UNKNOWN`.
        status: String,
    },
    /// A gRPC call failed with a status.
    #[error("{what} at {target} failed: {code:?}: {message}")]
    Rpc {
        /// What was being done.
        what: String,
        /// `tcp:host:port` or `unix:/path`.
        target: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The HTTP request failed before a status was received.
    #[error("http GET {url}: {detail}")]
    Http {
        /// The URL asked for (`http+unix://…` for a socket).
        url: String,
        /// Why.
        detail: String,
    },
    /// The HTTP status was not 2xx or 3xx.
    #[error("http GET {url} returned {status}")]
    HttpStatus {
        /// The URL asked for.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The exec probe's command could not be started.
    #[error("exec probe {command:?}: cannot run: {detail}")]
    ExecSpawn {
        /// The command.
        command: Vec<String>,
        /// Why.
        detail: String,
    },
    /// The exec probe's command did not exit 0.
    #[error("exec probe {command:?} {status}{}", stderr_suffix(.stderr))]
    ExecFailed {
        /// The command.
        command: Vec<String>,
        /// How it exited.
        status: ExitStatus,
        /// The start of its stderr (lossy UTF-8, at most 1 KiB).
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("; stderr: {trimmed}")
    }
}

/// A passed probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSummary {
    /// Checks run, failed ones included.
    pub attempts: u32,
    /// Time from the start of the probe (initial delay included) to passing.
    pub elapsed: Duration,
}

/// A failed probe: `failure_threshold` consecutive checks failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFailure {
    /// Checks run, successful ones included.
    pub attempts: u32,
    /// Consecutive failures at the end (= the failure threshold).
    pub consecutive_failures: u32,
    /// The last check's error.
    pub last_error: String,
    /// Time from the start of the probe (initial delay included) to failing.
    pub elapsed: Duration,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.consecutive_failures;
        let plural = if n == 1 { "" } else { "s" };
        write!(
            f,
            "{n} consecutive probe failure{plural}; last: {}",
            self.last_error
        )
    }
}

impl std::error::Error for ProbeFailure {}

/// `tcp:host:port` or `unix:/path`, as used in messages.
fn target_of(endpoint: &Endpoint) -> String {
    format!("{}:{}", endpoint.network, endpoint.address)
}

/// Runs `check` with the thresholds and timing of `cfg` (`cfg.kind` is ignored).
///
/// Waits `initial_delay`, then starts one check every `period` (start to start; a check
/// slower than the period is followed at once by the next), each bounded by `timeout`
/// (an overrun counts as a failure). Passes after `success_threshold` consecutive
/// successes, fails after `failure_threshold` consecutive failures; thresholds of 0 count
/// as 1. There is no overall deadline: a check that keeps alternating between success and
/// failure (never reaching either threshold) keeps the probe running, as in Kubernetes —
/// bound the whole probe from outside (e.g. with the slot's start timeout) if that matters.
pub async fn run_probe<F, Fut>(cfg: &ProbeConfig, check: F) -> Result<ProbeSummary, ProbeFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    run_thresholds(cfg, cfg.timeout, check).await
}

async fn run_thresholds<F, Fut>(
    cfg: &ProbeConfig,
    bound: Duration,
    mut check: F,
) -> Result<ProbeSummary, ProbeFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let success_threshold = cfg.success_threshold.max(1);
    let failure_threshold = cfg.failure_threshold.max(1);
    // A check that keeps flapping reaches neither threshold; a reload must still end.
    let max_attempts = success_threshold
        .saturating_add(failure_threshold)
        .saturating_mul(MAX_ATTEMPTS_FACTOR)
        .max(MIN_MAX_ATTEMPTS);
    // Not `sleep(ZERO)`: tokio rounds a timer up to the end of its millisecond, so that
    // would wait for the next tick before the first check.
    if !cfg.initial_delay.is_zero() {
        tokio::time::sleep(cfg.initial_delay).await;
    }
    let mut attempts: u32 = 0;
    let mut successes: u32 = 0;
    let mut failures: u32 = 0;
    loop {
        let attempt_started = Instant::now();
        attempts = attempts.saturating_add(1);
        let result = match tokio::time::timeout(bound, check()).await {
            Ok(result) => result,
            Err(_) => Err(format!("check timed out after {bound:?}")),
        };
        match result {
            Ok(()) => {
                failures = 0;
                successes += 1;
                tracing::trace!(attempts, successes, "probe check passed");
                if successes >= success_threshold {
                    return Ok(ProbeSummary {
                        attempts,
                        elapsed: started.elapsed(),
                    });
                }
            }
            Err(error) => {
                successes = 0;
                failures += 1;
                tracing::debug!(attempts, failures, %error, "probe check failed");
                if failures >= failure_threshold {
                    return Err(ProbeFailure {
                        attempts,
                        consecutive_failures: failures,
                        last_error: error,
                        elapsed: started.elapsed(),
                    });
                }
            }
        }
        if attempts >= max_attempts {
            return Err(ProbeFailure {
                attempts,
                consecutive_failures: failures,
                last_error: format!(
                    "no stable result after {attempts} checks (the check keeps alternating \
                     between success and failure)"
                ),
                elapsed: started.elapsed(),
            });
        }
        tokio::time::sleep_until(attempt_started + cfg.period).await;
    }
}

/// A probe gives up after `(success_threshold + failure_threshold) × 10` checks (at least
/// 30) without reaching either threshold, so a flapping candidate cannot stall a reload.
pub const MAX_ATTEMPTS_FACTOR: u32 = 10;
/// See [`MAX_ATTEMPTS_FACTOR`].
pub const MIN_MAX_ATTEMPTS: u32 = 30;

/// Runs `cfg`'s probe against `endpoint`: [`run_probe`] with [`check_once`].
pub async fn probe(
    cfg: &ProbeConfig,
    endpoint: Option<&Endpoint>,
) -> Result<ProbeSummary, ProbeFailure> {
    probe_over(cfg, endpoint, None).await
}

/// [`probe`], with a gRPC health check sent over `channel` (a connection to `endpoint`
/// already open, see [`grpc_channel_lazy`]) instead of a connection of its own. Other kinds
/// ignore `channel`.
pub async fn probe_over(
    cfg: &ProbeConfig,
    endpoint: Option<&Endpoint>,
    channel: Option<&Channel>,
) -> Result<ProbeSummary, ProbeFailure> {
    // check_once bounds itself by `timeout` with a descriptive error (and kills an exec
    // probe's command); the outer bound is only a safety net.
    let bound = cfg.timeout.saturating_add(Duration::from_millis(250));
    run_thresholds(cfg, bound, || async {
        check_once_over(&cfg.kind, endpoint, cfg.timeout, channel)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

/// Runs one check of `kind`, bounded by `timeout`.
///
/// - grpc: `grpc.health.v1.Health/Check` for `service`; only `SERVING` passes.
/// - http: `GET path` (over TCP: `http://address/path`; over a Unix socket: HTTP/1.1 on the
///   socket with `Host: localhost`); 2xx and 3xx pass (redirects are not followed).
/// - tcp: a connection (TCP or Unix socket) is established.
/// - exec: `command` (argv, no shell) runs with the host's environment plus
///   `TRYSWAP_NETWORK` / `TRYSWAP_ADDRESS` (when an endpoint is given) in its own process
///   group; exit 0 passes. At the timeout — or if this future is dropped — the whole
///   group is killed with SIGKILL.
/// - none: passes at once, endpoint or not.
///
/// grpc, http and tcp without an endpoint fail with [`ProbeError::NoEndpoint`].
pub async fn check_once(
    kind: &ProbeKind,
    endpoint: Option<&Endpoint>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    check_once_over(kind, endpoint, timeout, None).await
}

/// [`check_once`], a gRPC health check going over `channel` when one is given.
async fn check_once_over(
    kind: &ProbeKind,
    endpoint: Option<&Endpoint>,
    timeout: Duration,
    channel: Option<&Channel>,
) -> Result<(), ProbeError> {
    let no_endpoint = || ProbeError::NoEndpoint { kind: kind.name() };
    match kind {
        ProbeKind::None => Ok(()),
        ProbeKind::Exec { command } => exec_check(command, endpoint, timeout).await,
        ProbeKind::Grpc { service } => {
            let endpoint = endpoint.ok_or_else(no_endpoint)?;
            let what = format!(
                "grpc health of service {service:?} at {}",
                target_of(endpoint)
            );
            let check = async {
                let channel = channel_or_connect(channel, endpoint, timeout).await?;
                grpc_health(service, endpoint, channel).await
            };
            bounded(what, timeout, check).await
        }
        ProbeKind::Http { path } => {
            let endpoint = endpoint.ok_or_else(no_endpoint)?;
            let what = format!("http GET {}", http_url(endpoint, path));
            bounded(what, timeout, http_check(path, endpoint)).await
        }
        ProbeKind::Tcp => {
            let endpoint = endpoint.ok_or_else(no_endpoint)?;
            let what = format!("tcp connect to {}", target_of(endpoint));
            let connect = async {
                match endpoint.network {
                    Network::Tcp => TcpStream::connect(&endpoint.address).await.map(drop),
                    Network::Unix => UnixStream::connect(&endpoint.address).await.map(drop),
                }
                .map_err(|e| ProbeError::Connect {
                    what: "tcp probe".into(),
                    target: target_of(endpoint),
                    detail: e.to_string(),
                })
            };
            bounded(what, timeout, connect).await
        }
    }
}

async fn bounded<F>(what: String, timeout: Duration, fut: F) -> Result<(), ProbeError>
where
    F: Future<Output = Result<(), ProbeError>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout { what, timeout }),
    }
}

/// A gRPC channel to `endpoint` (TCP `host:port` or a Unix socket path), connected within
/// `timeout`; every request on it is also bounded by `timeout`. Plaintext: a server
/// certificate in the handshake (go-plugin AutoMTLS, which tryswap never requests) is not
/// used.
pub async fn grpc_channel(endpoint: &Endpoint, timeout: Duration) -> Result<Channel, ProbeError> {
    let target = target_of(endpoint);
    let builder = tonic_endpoint(endpoint, timeout)?.timeout(timeout);
    let connect = async {
        match endpoint.network {
            Network::Tcp => builder.connect().await,
            Network::Unix => {
                builder
                    .connect_with_connector(unix_connector(&endpoint.address))
                    .await
            }
        }
        .map_err(|e| ProbeError::Connect {
            what: "grpc".into(),
            target: target.clone(),
            detail: error_chain(&e),
        })
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout {
            what: format!("grpc connect to {target}"),
            timeout,
        }),
    }
}

/// A gRPC channel to `endpoint` that connects on its first request (within
/// `connect_timeout`) and again after its connection broke; its requests carry no deadline
/// of their own, so one channel serves a long-lived stream beside bounded calls. Clones
/// share the one HTTP/2 connection, as go-plugin's host shares one per plugin client.
/// Fails only on an address that does not parse.
pub fn grpc_channel_lazy(
    endpoint: &Endpoint,
    connect_timeout: Duration,
) -> Result<Channel, ProbeError> {
    let builder = tonic_endpoint(endpoint, connect_timeout)?;
    Ok(match endpoint.network {
        Network::Tcp => builder.connect_lazy(),
        Network::Unix => builder.connect_with_connector_lazy(unix_connector(&endpoint.address)),
    })
}

/// The TCP connections a channel dialed, each by its local address and its socket's
/// inode (the newest few): what tells this process's own connections to a plugin from an
/// outside caller's without a look at every descriptor this process holds. Clones share
/// the list.
#[derive(Clone, Debug, Default)]
pub struct DialedSockets(std::sync::Arc<std::sync::Mutex<Vec<(std::net::SocketAddr, u64)>>>);

impl DialedSockets {
    /// How many connections are remembered: a channel dials again only after its
    /// connection broke, so the newest one is the live one.
    const KEPT: usize = 4;

    fn record(&self, local: std::net::SocketAddr, inode: u64) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.push((local, inode));
        if list.len() > Self::KEPT {
            list.remove(0);
        }
    }

    /// The connections dialed so far (local address, socket inode), oldest first.
    pub fn list(&self) -> Vec<(std::net::SocketAddr, u64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// [`grpc_channel_lazy`] whose TCP connections are recorded in `dialed` as they are made.
pub fn grpc_channel_lazy_dialed(
    endpoint: &Endpoint,
    connect_timeout: Duration,
    dialed: &DialedSockets,
) -> Result<Channel, ProbeError> {
    let address = match endpoint.network {
        Network::Tcp => endpoint.address.parse::<std::net::SocketAddr>().ok(),
        Network::Unix => None,
    };
    let Some(address) = address else {
        return grpc_channel_lazy(endpoint, connect_timeout);
    };
    let builder = tonic_endpoint(endpoint, connect_timeout)?;
    Ok(builder.connect_with_connector_lazy(tcp_connector(address, dialed.clone())))
}

/// A connection being made over TCP, as [`tcp_connector`] returns it.
type TcpDial = std::pin::Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

/// A connector that dials `address` (with `TCP_NODELAY`, as tonic's own does), whatever
/// URI it is given, and records each connection in `dialed`.
fn tcp_connector(
    address: std::net::SocketAddr,
    dialed: DialedSockets,
) -> tower::util::ServiceFn<impl Clone + Send + FnMut(Uri) -> TcpDial> {
    tower::service_fn(move |_: Uri| -> TcpDial {
        let dialed = dialed.clone();
        Box::pin(async move {
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            if let (Ok(local), Some(inode)) = (stream.local_addr(), socket_inode(&stream)) {
                dialed.record(local, inode);
            }
            Ok(TokioIo::new(stream))
        })
    })
}

/// The inode of a socket (what the kernel's socket tables report for it).
fn socket_inode(stream: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into `stat`, which is read only when it succeeded.
    if unsafe { libc::fstat(stream.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful fstat above.
    Some(unsafe { stat.assume_init() }.st_ino)
}

/// The tonic endpoint for `endpoint`, connecting within `connect_timeout`. A Unix socket's
/// URI is required by the API but unused: [`unix_connector`] dials the path.
fn tonic_endpoint(
    endpoint: &Endpoint,
    connect_timeout: Duration,
) -> Result<TonicEndpoint, ProbeError> {
    let uri = match endpoint.network {
        Network::Tcp => format!("http://{}", endpoint.address),
        Network::Unix => "http://[::]:50051".to_owned(),
    };
    Ok(TonicEndpoint::from_shared(uri)
        .map_err(|e| ProbeError::Connect {
            what: "grpc".into(),
            target: target_of(endpoint),
            detail: format!("bad address: {e}"),
        })?
        .connect_timeout(connect_timeout))
}

/// A connection being made to a Unix socket, as [`unix_connector`] returns it.
type UnixDial =
    std::pin::Pin<Box<dyn Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send>>;

/// A connector that dials the Unix socket at `path`, whatever URI it is given.
fn unix_connector(
    path: &str,
) -> tower::util::ServiceFn<impl Clone + Send + FnMut(Uri) -> UnixDial> {
    let path = std::path::PathBuf::from(path);
    tower::service_fn(move |_: Uri| -> UnixDial {
        let path = path.clone();
        Box::pin(async move { UnixStream::connect(path).await.map(TokioIo::new) })
    })
}

/// `channel` when given, else a connection of its own to `endpoint` ([`grpc_channel`]).
async fn channel_or_connect(
    channel: Option<&Channel>,
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<Channel, ProbeError> {
    match channel {
        Some(channel) => Ok(channel.clone()),
        None => grpc_channel(endpoint, timeout).await,
    }
}

/// An error and its sources, joined with `: ` (tonic's transport errors hide the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

async fn grpc_health(
    service: &str,
    endpoint: &Endpoint,
    channel: Channel,
) -> Result<(), ProbeError> {
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| ProbeError::Rpc {
            what: format!("grpc health check of service {service:?}"),
            target: target_of(endpoint),
            code: status.code(),
            message: status.message().to_owned(),
        })?;
    let raw = response.into_inner().status;
    if raw == ServingStatus::Serving as i32 {
        return Ok(());
    }
    let status = ServingStatus::try_from(raw)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("unknown status {raw}"));
    Err(ProbeError::NotServing {
        service: service.to_owned(),
        target: target_of(endpoint),
        status,
    })
}

fn normalized_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

fn http_url(endpoint: &Endpoint, path: &str) -> String {
    let path = normalized_path(path);
    match endpoint.network {
        Network::Tcp => format!("http://{}{path}", endpoint.address),
        Network::Unix => format!("http+unix://{}{path}", endpoint.address),
    }
}

async fn http_check(path: &str, endpoint: &Endpoint) -> Result<(), ProbeError> {
    let url = http_url(endpoint, path);
    let fail = |detail: String| ProbeError::Http {
        url: url.clone(),
        detail,
    };
    let status = match endpoint.network {
        Network::Tcp => {
            let stream = TcpStream::connect(&endpoint.address)
                .await
                .map_err(|e| fail(format!("cannot connect: {e}")))?;
            http_get(stream, &endpoint.address, path).await
        }
        Network::Unix => {
            let stream = UnixStream::connect(&endpoint.address)
                .await
                .map_err(|e| fail(format!("cannot connect: {e}")))?;
            http_get(stream, "localhost", path).await
        }
    }
    .map_err(fail)?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::HttpStatus { url, status })
    }
}

/// One HTTP/1.1 `GET` on a fresh connection; returns the status code.
async fn http_get<S>(stream: S, host: &str, path: &str) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!(error = %e, "http probe connection ended with an error");
        }
    });
    let request = hyper::Request::get(normalized_path(path))
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "tryswap-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request for path {path:?}: {e}"))?;
    let result = sender
        .send_request(request)
        .await
        .map(|response| response.status().as_u16())
        .map_err(|e| error_chain(&e));
    // The body is not needed; closing the connection is enough.
    driver.abort();
    result
}

/// Kills an exec probe's process group if the check ends before the command was reaped.
struct GroupKiller {
    pgid: Option<i32>,
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // The leader is our unreaped child, so the group id cannot have been reused.
            let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
        }
    }
}

/// How long an exec probe's cgroup may take to empty after `cgroup.kill`.
const EXEC_CGROUP_GRACE: Duration = Duration::from_secs(2);

/// Runs an exec probe in a cgroup of its own where one can be created, and kills whatever
/// it left running (a command that daemonizes) once it is done.
async fn exec_check(
    command: &[String],
    endpoint: Option<&Endpoint>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    use crate::driver::process::cgroup;
    let dir = cgroup::for_probe();
    let procs = dir.as_deref().and_then(cgroup::prepare);
    let fd = procs.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let result = exec_check_in(command, endpoint, timeout, fd).await;
    drop(procs);
    if let Some(dir) = dir {
        if dir.exists() {
            let left = cgroup::kill_and_remove(&dir, EXEC_CGROUP_GRACE).await;
            if left > 0 {
                tracing::debug!(?command, left, "killed what an exec probe left running");
            }
        }
    }
    result
}

async fn exec_check_in(
    command: &[String],
    endpoint: Option<&Endpoint>,
    timeout: Duration,
    cgroup_procs: Option<std::os::fd::RawFd>,
) -> Result<(), ProbeError> {
    let spawn_err = |detail: String| ProbeError::ExecSpawn {
        command: command.to_vec(),
        detail,
    };
    let Some((program, args)) = command.split_first() else {
        return Err(spawn_err("empty command".into()));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(endpoint) = endpoint {
        cmd.env(EXEC_NETWORK_ENV, endpoint.network.to_string())
            .env(EXEC_ADDRESS_ENV, &endpoint.address);
    }
    if let Some(fd) = cgroup_procs {
        // SAFETY: the closure only calls write(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || crate::driver::process::cgroup::join_in_child(fd));
        }
    }
    let mut child = cmd.spawn().map_err(|e| spawn_err(e.to_string()))?;
    let pgid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| spawn_err("spawned command has no pid".into()))?;
    let mut killer = GroupKiller { pgid: Some(pgid) };

    let stderr_reader = child.stderr.take().map(|mut pipe| {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = EXEC_STDERR_KEEP.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    });

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            drop(killer);
            return Err(spawn_err(format!("cannot wait for it: {e}")));
        }
        Err(_) => {
            // Kill the group while the leader is still unreaped, then reap it.
            drop(killer);
            let _ = child.wait().await;
            if let Some(reader) = stderr_reader {
                reader.abort();
            }
            return Err(ProbeError::Timeout {
                what: format!("exec probe {command:?}"),
                timeout,
            });
        }
    };
    // Reaped: the pgid may now be reused, so never signal it again.
    killer.pgid = None;
    if status.success() {
        if let Some(reader) = stderr_reader {
            reader.abort();
        }
        return Ok(());
    }
    // Something else still holding the pipe must not stall us: give the output 100 ms.
    let stderr = match stderr_reader {
        Some(reader) => {
            let abort = reader.abort_handle();
            match tokio::time::timeout(Duration::from_millis(100), reader).await {
                Ok(Ok(text)) => text,
                _ => {
                    abort.abort();
                    String::new()
                }
            }
        }
        None => String::new(),
    };
    tracing::debug!(?command, %status, signal = ?status.signal(), "exec probe failed");
    Err(ProbeError::ExecFailed {
        command: command.to_vec(),
        status,
        stderr,
    })
}

/// go-plugin's `plugin.GRPCController/Shutdown` (`google.protobuf.Empty` → `Empty`):
/// asks the plugin to exit gracefully. Ok when the plugin acknowledged; the call (connect
/// included) is bounded by `timeout`. A plugin may exit before answering, so callers follow
/// with `process::stop_group` whatever this returns.
pub async fn grpc_controller_shutdown(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<(), ProbeError> {
    grpc_controller_shutdown_over(endpoint, None, timeout).await
}

/// [`grpc_controller_shutdown`] over `channel` (a connection to `endpoint` already open,
/// see [`grpc_channel_lazy`]) when one is given.
pub async fn grpc_controller_shutdown_over(
    endpoint: &Endpoint,
    channel: Option<&Channel>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let what = format!("grpc controller shutdown at {}", target_of(endpoint));
    let call = async {
        let channel = channel_or_connect(channel, endpoint, timeout).await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        let rpc_err = |status: tonic::Status| ProbeError::Rpc {
            what: "grpc controller shutdown".into(),
            target: target_of(endpoint),
            code: status.code(),
            message: status.message().to_owned(),
        };
        grpc.ready().await.map_err(|e| ProbeError::Connect {
            what: "grpc controller shutdown".into(),
            target: target_of(endpoint),
            detail: error_chain(&e),
        })?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_CONTROLLER_SHUTDOWN);
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        grpc.unary(tonic::Request::new(()), path, codec)
            .await
            .map(drop)
            .map_err(rpc_err)
    };
    bounded(what, timeout, call).await
}
