//! Accepting admin API connections without letting them starve the daemon.
//!
//! - A cap per listener ([`Limits::max_connections`]): a connection beyond it is closed at
//!   once, so idle connections can never pile up until the daemon runs out of file
//!   descriptors (the Unix socket, which the CLI uses, has a cap of its own).
//! - The peer is checked before any work: on the Unix socket its `SO_PEERCRED` uid must be
//!   root or the daemon's own uid (the socket's 0600 mode already says so; this also holds
//!   for a socket placed in a looser directory). On TCP every request needs the bearer
//!   token ([`super::server::authorize`]).
//! - Each request's headers must arrive within [`Limits::header_read_timeout`], counted from
//!   the moment the connection is ready for a request: a connection that sends nothing (or
//!   dribbles a byte at a time, or stays idle after an answer) is closed then.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a client may take to send a request's headers, or stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once on the Unix socket.
pub const MAX_UNIX_CONNECTIONS: usize = 256;
/// Connections served at once on the TCP listener.
pub const MAX_TCP_CONNECTIONS: usize = 64;

/// What one listener allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
}

/// Decides, before any byte is read, whether a peer may talk to the API.
pub trait Admit {
    /// `Err(why)` closes the connection; `Ok` gives the peer's uid when the transport
    /// tells it.
    fn admit(&self) -> Result<Option<u32>, String>;
}

/// The uid of the peer that sent a request (a request extension; absent over TCP).
#[derive(Clone, Copy, Debug)]
pub struct PeerUid(pub u32);

impl Admit for tokio::net::TcpStream {
    fn admit(&self) -> Result<Option<u32>, String> {
        Ok(None)
    }
}

impl Admit for tokio::net::UnixStream {
    fn admit(&self) -> Result<Option<u32>, String> {
        let cred = self
            .peer_cred()
            .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() == 0 || cred.uid() == me {
            Ok(Some(cred.uid()))
        } else {
            Err(format!(
                "peer uid {} is neither root nor the daemon's uid {me}",
                cred.uid()
            ))
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown`; then lets the requests in
/// flight finish and returns.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: Admit,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let (io, _addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(
                max = limits.max_connections,
                "admin API: connection refused, too many open"
            );
            continue;
        };
        let peer = match io.admit() {
            Ok(peer) => peer,
            Err(why) => {
                tracing::warn!(reason = %why, "admin API: connection refused");
                continue;
            }
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                if let Some(uid) = peer {
                    request.extensions_mut().insert(PeerUid(uid));
                }
                app.clone().oneshot(request)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "admin API connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (systemd's default soft
/// limit of 1,024 is small for a daemon holding plugins' logs and API connections).
/// Returns the limit now in force.
pub fn raise_nofile_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}
