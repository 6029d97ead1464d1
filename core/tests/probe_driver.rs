//! Probe tests: threshold logic on paused time, and every probe kind against real
//! in-test servers (TCP on 127.0.0.1 and Unix sockets in temp dirs).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio::time::Instant;
use tonic::codegen::tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic_health::ServingStatus;
use tryswap::config::{ProbeConfig, ProbeKind};
use tryswap::internals::probe::{
    check_once, grpc_controller_shutdown, probe, run_probe, ProbeError, ProbeFailure,
};
use tryswap_fsm::{Endpoint, Network, Protocol};

fn cfg(kind: ProbeKind, success: u32, failure: u32) -> ProbeConfig {
    let mut config = ProbeConfig::default();
    config.kind = kind;
    config.initial_delay = Duration::ZERO;
    config.period = Duration::from_millis(100);
    config.timeout = Duration::from_millis(50);
    config.success_threshold = success;
    config.failure_threshold = failure;
    config
}

fn endpoint(network: Network, address: impl Into<String>) -> Endpoint {
    Endpoint {
        core_version: 1,
        app_version: 1,
        network,
        address: address.into(),
        protocol: Protocol::Grpc,
        server_cert: None,
    }
}

/// A fake check that replays `script` (true = success) and records when it was called.
struct Fake {
    script: Mutex<VecDeque<bool>>,
    calls: Mutex<Vec<Instant>>,
}

impl Fake {
    fn new(script: &[bool]) -> Arc<Self> {
        Arc::new(Fake {
            script: Mutex::new(script.iter().copied().collect()),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn check(self: &Arc<Self>) -> impl FnMut() -> BoxFuture<(), String> + '_ {
        move || {
            let this = Arc::clone(self);
            Box::pin(async move {
                let n = {
                    let mut calls = this.calls.lock().unwrap();
                    calls.push(Instant::now());
                    calls.len()
                };
                let ok = this
                    .script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .expect("probe ran more checks than scripted");
                if ok {
                    Ok(())
                } else {
                    Err(format!("boom {n}"))
                }
            })
        }
    }

    fn offsets(&self, start: Instant) -> Vec<Duration> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - start)
            .collect()
    }
}

// ---------------------------------------------------------------- thresholds
//
// Real time with short periods (tokio's `test-util` feature, needed for paused time, is
// not enabled for this crate): counts are asserted exactly, timings only as lower bounds.

const PERIOD: Duration = Duration::from_millis(20);

fn fast(success: u32, failure: u32) -> ProbeConfig {
    let mut config = cfg(ProbeKind::None, success, failure);
    config.period = PERIOD;
    config
}

fn assert_spacing(offsets: &[Duration], first_at_least: Duration) {
    assert!(offsets[0] >= first_at_least, "{offsets:?}");
    for pair in offsets.windows(2) {
        assert!(
            pair[1] - pair[0] >= PERIOD,
            "checks closer than the period: {offsets:?}"
        );
    }
}

#[tokio::test]
async fn passes_after_success_threshold_and_honours_initial_delay_and_period() {
    let fake = Fake::new(&[true, true, true]);
    let mut c = fast(3, 3);
    c.initial_delay = Duration::from_millis(150);
    let start = Instant::now();
    let summary = run_probe(&c, fake.check()).await.unwrap();
    assert_eq!(summary.attempts, 3);
    let offsets = fake.offsets(start);
    assert_eq!(offsets.len(), 3);
    assert_spacing(&offsets, Duration::from_millis(150));
    assert!(summary.elapsed >= Duration::from_millis(150) + 2 * PERIOD);
}

/// Without an initial delay the first check starts at once. tokio rounds every timer up to
/// the end of its millisecond, so a `sleep(ZERO)` before it waited for the next timer tick:
/// up to a millisecond added to every reload's probe stage. On paused time, half a
/// millisecond into a tick, that wait is exactly the rest of the tick.
#[tokio::test(start_paused = true)]
async fn without_an_initial_delay_the_first_check_waits_for_no_timer_tick() {
    tokio::time::advance(Duration::from_micros(500)).await;
    let fake = Fake::new(&[true]);
    let c = fast(1, 1);
    assert_eq!(c.initial_delay, Duration::ZERO);
    let start = Instant::now();
    run_probe(&c, fake.check()).await.unwrap();
    assert_eq!(fake.offsets(start), [Duration::ZERO]);
}

#[tokio::test]
async fn fails_after_failure_threshold_with_the_last_error() {
    let fake = Fake::new(&[false, false, false]);
    let start = Instant::now();
    let failure = run_probe(&fast(1, 3), fake.check()).await.unwrap_err();
    assert_eq!(failure.attempts, 3);
    assert_eq!(failure.consecutive_failures, 3);
    assert_eq!(failure.last_error, "boom 3");
    assert!(failure.elapsed >= 2 * PERIOD);
    assert_spacing(&fake.offsets(start), Duration::ZERO);
    assert_eq!(
        failure.to_string(),
        "3 consecutive probe failures; last: boom 3"
    );
    let one = ProbeFailure {
        consecutive_failures: 1,
        ..failure
    };
    assert_eq!(one.to_string(), "1 consecutive probe failure; last: boom 3");
}

#[tokio::test]
async fn alternation_resets_both_counts() {
    // success_threshold 2, failure_threshold 2: S F S F never reaches either, then S S passes.
    let fake = Fake::new(&[true, false, true, false, true, true]);
    let summary = run_probe(&fast(2, 2), fake.check()).await.unwrap();
    assert_eq!(summary.attempts, 6);

    // F S F S F F: fails at the sixth check.
    let fake = Fake::new(&[false, true, false, true, false, false]);
    let failure = run_probe(&fast(2, 2), fake.check()).await.unwrap_err();
    assert_eq!(failure.attempts, 6);
    assert_eq!(failure.consecutive_failures, 2);
    assert_eq!(failure.last_error, "boom 6");

    // S S S with threshold 3 after failures F F (threshold 3): passes at the fifth.
    let fake = Fake::new(&[false, false, true, true, true]);
    let summary = run_probe(&fast(3, 3), fake.check()).await.unwrap();
    assert_eq!(summary.attempts, 5);
}

#[tokio::test]
async fn a_slow_check_is_a_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut c = fast(1, 2);
    c.timeout = Duration::from_millis(30);
    let started = Instant::now();
    let failure = run_probe(&c, || {
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        }
    })
    .await
    .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(failure.last_error, "check timed out after 30ms");
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn zero_thresholds_count_as_one() {
    let fake = Fake::new(&[true]);
    let summary = run_probe(&fast(0, 0), fake.check()).await.unwrap();
    assert_eq!(summary.attempts, 1);
    let fake = Fake::new(&[false]);
    let failure = run_probe(&fast(0, 0), fake.check()).await.unwrap_err();
    assert_eq!(failure.attempts, 1);
}

// ---------------------------------------------------------------- grpc

async fn grpc_health_server_tcp() -> (tonic_health::server::HealthReporter, Endpoint) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("plugin", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (reporter, endpoint(Network::Tcp, addr.to_string()))
}

async fn grpc_health_server_unix(
    dir: &tempfile::TempDir,
) -> (tonic_health::server::HealthReporter, Endpoint) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("plugin", ServingStatus::Serving)
        .await;
    let path = dir.path().join("plugin.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    (
        reporter,
        endpoint(Network::Unix, path.display().to_string()),
    )
}

async fn grpc_serving_then_not_serving(
    reporter: tonic_health::server::HealthReporter,
    ep: Endpoint,
) {
    let grpc = ProbeKind::Grpc {
        service: "plugin".into(),
    };
    let timeout = Duration::from_secs(5);
    check_once(&grpc, Some(&ep), timeout).await.unwrap();
    let summary = probe(&cfg(grpc.clone(), 2, 3), Some(&ep)).await.unwrap();
    assert_eq!(summary.attempts, 2);

    reporter
        .set_service_status("plugin", ServingStatus::NotServing)
        .await;
    let mut c = cfg(grpc.clone(), 1, 2);
    c.timeout = timeout;
    c.period = Duration::from_millis(10);
    let failure = probe(&c, Some(&ep)).await.unwrap_err();
    assert_eq!(failure.attempts, 2);
    let target = format!("{}:{}", ep.network, ep.address);
    assert_eq!(
        failure.to_string(),
        format!(
            "2 consecutive probe failures; last: grpc health of service \"plugin\" at {target} is NOT_SERVING"
        )
    );

    let unknown = ProbeKind::Grpc {
        service: "nope".into(),
    };
    let err = check_once(&unknown, Some(&ep), timeout).await.unwrap_err();
    match &err {
        ProbeError::Rpc { code, .. } => assert_eq!(*code, tonic::Code::NotFound),
        other => panic!("expected Rpc NotFound, got {other:?}"),
    }
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[tokio::test]
async fn grpc_health_over_tcp() {
    let (reporter, ep) = grpc_health_server_tcp().await;
    grpc_serving_then_not_serving(reporter, ep).await;
}

#[tokio::test]
async fn grpc_health_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (reporter, ep) = grpc_health_server_unix(&dir).await;
    grpc_serving_then_not_serving(reporter, ep).await;
}

#[tokio::test]
async fn grpc_health_against_nothing_fails_to_connect() {
    let port = closed_port().await;
    let grpc = ProbeKind::Grpc {
        service: "plugin".into(),
    };
    let ep = endpoint(Network::Tcp, format!("127.0.0.1:{port}"));
    let err = check_once(&grpc, Some(&ep), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let ep = endpoint(Network::Unix, missing.display().to_string());
    let err = check_once(&grpc, Some(&ep), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
}

// ---------------------------------------------------------------- http

async fn http_service(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Empty<hyper::body::Bytes>>, Infallible> {
    let status = match req.uri().path() {
        "/healthz" => 200,
        "/created" => 201,
        "/redirect" => 302,
        "/fail" => 500,
        _ => 404,
    };
    let mut response = hyper::Response::new(http_body_util::Empty::new());
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    if status == 302 {
        response
            .headers_mut()
            .insert(hyper::header::LOCATION, "/elsewhere".parse().unwrap());
    }
    Ok(response)
}

fn serve_http<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(http_service),
            )
            .await;
    });
}

async fn http_server_tcp() -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serve_http(stream);
        }
    });
    endpoint(Network::Tcp, addr.to_string())
}

async fn http_server_unix(dir: &tempfile::TempDir) -> Endpoint {
    let path = dir.path().join("http.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serve_http(stream);
        }
    });
    endpoint(Network::Unix, path.display().to_string())
}

async fn http_statuses(ep: Endpoint) {
    let t = Duration::from_secs(5);
    let http = |path: &str| ProbeKind::Http { path: path.into() };
    check_once(&http("/healthz"), Some(&ep), t).await.unwrap();
    check_once(&http("/created"), Some(&ep), t).await.unwrap();
    check_once(&http("/redirect"), Some(&ep), t).await.unwrap();
    check_once(&http("healthz"), Some(&ep), t).await.unwrap();
    for (path, code) in [("/fail", 500), ("/missing", 404)] {
        let err = check_once(&http(path), Some(&ep), t).await.unwrap_err();
        match &err {
            ProbeError::HttpStatus { status, url } => {
                assert_eq!(*status, code);
                assert!(url.ends_with(path), "{url}");
            }
            other => panic!("expected HttpStatus, got {other:?}"),
        }
        assert!(err.to_string().contains(&code.to_string()), "{err}");
    }
    let failure = probe(&cfg(http("/fail"), 1, 2), Some(&ep))
        .await
        .unwrap_err();
    assert_eq!(failure.attempts, 2);
    assert!(failure.to_string().contains("returned 500"), "{failure}");
}

#[tokio::test]
async fn http_over_tcp() {
    let ep = http_server_tcp().await;
    assert!(matches!(
        check_once(
            &ProbeKind::Http {
                path: "/healthz".into()
            },
            Some(&ep),
            Duration::from_secs(5)
        )
        .await,
        Ok(())
    ));
    http_statuses(ep).await;
}

#[tokio::test]
async fn http_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let ep = http_server_unix(&dir).await;
    http_statuses(ep).await;
}

#[tokio::test]
async fn http_against_a_closed_port_fails() {
    let port = closed_port().await;
    let ep = endpoint(Network::Tcp, format!("127.0.0.1:{port}"));
    let err = check_once(
        &ProbeKind::Http {
            path: "/healthz".into(),
        },
        Some(&ep),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProbeError::Http { .. }), "{err:?}");
}

// ---------------------------------------------------------------- tcp

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn tcp_connect_to_listener_and_closed_port() {
    let t = Duration::from_secs(5);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = endpoint(Network::Tcp, listener.local_addr().unwrap().to_string());
    check_once(&ProbeKind::Tcp, Some(&ep), t).await.unwrap();

    let port = closed_port().await;
    let ep = endpoint(Network::Tcp, format!("127.0.0.1:{port}"));
    let err = check_once(&ProbeKind::Tcp, Some(&ep), t).await.unwrap_err();
    assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("tcp:127.0.0.1:{port}")),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcp.sock");
    let _unix = UnixListener::bind(&path).unwrap();
    let ep = endpoint(Network::Unix, path.display().to_string());
    check_once(&ProbeKind::Tcp, Some(&ep), t).await.unwrap();
    let ep = endpoint(
        Network::Unix,
        dir.path().join("gone.sock").display().to_string(),
    );
    assert!(check_once(&ProbeKind::Tcp, Some(&ep), t).await.is_err());
}

#[tokio::test]
async fn network_kinds_need_an_endpoint_and_none_does_not() {
    let t = Duration::from_secs(1);
    for kind in [
        ProbeKind::Grpc {
            service: "plugin".into(),
        },
        ProbeKind::Http {
            path: "/healthz".into(),
        },
        ProbeKind::Tcp,
    ] {
        let err = check_once(&kind, None, t).await.unwrap_err();
        assert!(matches!(err, ProbeError::NoEndpoint { .. }), "{err:?}");
        assert!(err.to_string().starts_with(kind.name()), "{err}");
    }
    check_once(&ProbeKind::None, None, t).await.unwrap();
    let summary = probe(&cfg(ProbeKind::None, 1, 1), None).await.unwrap();
    assert_eq!(summary.attempts, 1);
}

// ---------------------------------------------------------------- exec

fn exec(args: &[&str]) -> ProbeKind {
    ProbeKind::Exec {
        command: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// True while `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let rest = &stat[stat.rfind(')').unwrap() + 1..];
            !matches!(rest.split_whitespace().next(), Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

fn read_pids(path: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// SIGKILLs the pids listed in a file when dropped (cleanup even if an assert fails).
struct KillPids(std::path::PathBuf);

impl Drop for KillPids {
    fn drop(&mut self) {
        for pid in read_pids(&self.0) {
            if running(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[tokio::test]
async fn exec_true_false_and_environment() {
    let t = Duration::from_secs(5);
    check_once(&exec(&["/bin/true"]), None, t).await.unwrap();
    let err = check_once(&exec(&["/bin/false"]), None, t)
        .await
        .unwrap_err();
    match &err {
        ProbeError::ExecFailed { status, .. } => assert_eq!(status.code(), Some(1)),
        other => panic!("expected ExecFailed, got {other:?}"),
    }
    let err = check_once(
        &exec(&["/bin/sh", "-c", "echo 'database unreachable' >&2; exit 2"]),
        None,
        t,
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("exit status: 2"), "{text}");
    assert!(text.contains("database unreachable"), "{text}");

    let ep = endpoint(Network::Tcp, "127.0.0.1:5");
    let check_env = exec(&[
        "/bin/sh",
        "-c",
        "test \"$TRYSWAP_NETWORK\" = tcp && test \"$TRYSWAP_ADDRESS\" = 127.0.0.1:5",
    ]);
    check_once(&check_env, Some(&ep), t).await.unwrap();
    assert!(check_once(&check_env, None, t).await.is_err());

    let err = check_once(&exec(&[]), None, t).await.unwrap_err();
    assert!(matches!(err, ProbeError::ExecSpawn { .. }), "{err:?}");
    let err = check_once(&exec(&["/nonexistent/probe"]), None, t)
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::ExecSpawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/probe"), "{err}");
}

#[tokio::test]
async fn exec_hanging_command_is_killed_at_timeout_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let _cleanup = KillPids(pids.clone());
    let script = format!(
        "sleep 100 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; wait",
        p = pids.display()
    );
    let started = std::time::Instant::now();
    let err = check_once(
        &exec(&["/bin/sh", "-c", &script]),
        None,
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out after 500ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let listed = read_pids(&pids);
    assert_eq!(listed.len(), 2, "the script recorded its pids in time");
    // SIGKILL was sent before the command was reaped; give the kernel a moment to finish
    // the orphaned grandchild.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(pid) = listed.iter().find(|&&p| running(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} survived the probe timeout"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn exec_command_is_killed_when_the_check_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let _cleanup = KillPids(pids.clone());
    let script = format!(
        "sleep 100 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; wait",
        p = pids.display()
    );
    let kind = exec(&["/bin/sh", "-c", &script]);
    let mut check = Box::pin(check_once(&kind, None, Duration::from_secs(100)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pids.exists() {
        assert!(std::time::Instant::now() < deadline, "script never started");
        tokio::select! {
            _ = &mut check => panic!("the check ended early"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let listed = read_pids(&pids);
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|&p| running(p)));
    drop(check);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listed.iter().any(|&p| running(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "exec probe processes survived the dropped check"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- controller

/// A minimal go-plugin `plugin.GRPCController` server counting Shutdown calls.
#[derive(Clone)]
struct Controller(Arc<AtomicUsize>);

impl tonic::server::NamedService for Controller {
    const NAME: &'static str = "plugin.GRPCController";
}

struct ShutdownSvc(Arc<AtomicUsize>);

impl tonic::server::UnaryService<()> for ShutdownSvc {
    type Response = ();
    type Future = BoxFuture<tonic::Response<()>, tonic::Status>;
    fn call(&mut self, _request: tonic::Request<()>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(tonic::Response::new(())) })
    }
}

impl Service<http::Request<tonic::body::Body>> for Controller {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let calls = Arc::clone(&self.0);
        Box::pin(async move {
            if req.uri().path() == "/plugin.GRPCController/Shutdown" {
                let mut grpc =
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::<(), ()>::default());
                Ok(grpc.unary(ShutdownSvc(calls), req).await)
            } else {
                Ok(tonic::Status::unimplemented("no such method").into_http())
            }
        })
    }
}

#[tokio::test]
async fn grpc_controller_shutdown_calls_the_plugin() {
    let calls = Arc::new(AtomicUsize::new(0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Controller(Arc::clone(&calls)))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let ep = endpoint(Network::Unix, path.display().to_string());
    grpc_controller_shutdown(&ep, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Over TCP too.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = endpoint(Network::Tcp, listener.local_addr().unwrap().to_string());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Controller(Arc::clone(&calls)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    grpc_controller_shutdown(&ep, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn grpc_controller_shutdown_unimplemented_is_an_error() {
    let (_reporter, ep) = grpc_health_server_tcp().await;
    let err = grpc_controller_shutdown(&ep, Duration::from_secs(5))
        .await
        .unwrap_err();
    match &err {
        ProbeError::Rpc { code, .. } => assert_eq!(*code, tonic::Code::Unimplemented),
        other => panic!("expected Rpc Unimplemented, got {other:?}"),
    }
    let port = closed_port().await;
    let ep = endpoint(Network::Tcp, format!("127.0.0.1:{port}"));
    assert!(grpc_controller_shutdown(&ep, Duration::from_secs(5))
        .await
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn a_check_that_keeps_flapping_fails_after_a_bounded_number_of_attempts() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let c = fast(2, 2);
    let failure = run_probe(&c, move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n % 2 == 0 {
                Ok(())
            } else {
                Err(format!("flap {n}"))
            }
        }
    })
    .await
    .unwrap_err();
    let limit = ((2 + 2) * tryswap::internals::probe::MAX_ATTEMPTS_FACTOR)
        .max(tryswap::internals::probe::MIN_MAX_ATTEMPTS);
    assert_eq!(failure.attempts, limit);
    assert_eq!(calls.load(Ordering::SeqCst) as u32, limit);
    assert!(failure.last_error.contains("no stable result"), "{failure}");
}
