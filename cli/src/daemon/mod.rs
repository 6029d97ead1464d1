//! `tryswap serve`: the daemon.
//!
//! 1. Opens the state directory (the journal lock makes it the only writer), registers the
//!    configured slots, and binds the admin socket `<state-dir>/<admin.socket>` (mode
//!    0600; a stale socket file of a dead daemon is replaced, a live one is refused) and,
//!    with `admin.listen` and `admin.token_file`, TCP with a bearer token.
//! 2. Runs recovery (reattach or relaunch every active generation), then relaunches, as
//!    one config reload, the slots whose plugins run with other args or environment than
//!    the file says; meanwhile the API answers 503. Then starts the keep-alive [`Monitor`] and tells systemd `READY=1`.
//! 3. Serves until SIGTERM or SIGINT. SIGHUP re-reads the config file and applies it as
//!    one transaction (`RELOADING=1` … `READY=1`, with `STATUS`/`ERRNO` when it failed).
//!    A SIGHUP during a config reload queues one more run with the file as it is then
//!    (further SIGHUPs meanwhile are coalesced into it); config reloads wait (bounded)
//!    for the reloads running on the slots they change.
//!    If the journal fails (a sync error), the daemon stops serving and exits 1 without
//!    stopping plugins: only a reopen can tell what reached the disk.
//! 4. Shutdown (`STOPPING=1`): stops accepting, lets requests and reloads in flight finish
//!    (a reload always ends active or rolled back), stops the keep-alive, stops every
//!    plugin unless `--keep-plugins` (the journal keeps the active markers either way, so
//!    the next start reattaches or relaunches them), flushes the journal, removes the
//!    socket, exits 0.

pub mod allocator;
pub mod connections;
pub mod events;
pub mod leases;
pub mod metrics;
pub mod notify;
pub mod server;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tryswap::{Monitor, MonitorOptions};
use tryswap::{Supervisor, SupervisorError};
use tryswap_journal::JournalError;

use self::metrics::Metrics;
use self::server::{AppState, Auth};
use crate::{CliError, Context, EXIT_CONFLICT, EXIT_ERROR, EXIT_OK};

/// How long shutdown waits for requests and reloads in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(120);

/// How often the daemon checks whether its journal failed (a failed sync): it then exits,
/// leaving plugins running, so that a restart reopens, verifies and recovers the journal.
const JOURNAL_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Removes the admin socket file when the daemon ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %self.0.display(), error = %e, "removing the admin socket");
            }
        }
    }
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> CliError {
    move |e| CliError::new(EXIT_ERROR, format!("{what}: {e}"))
}

/// Whether something answers on the Unix socket `path`.
pub async fn socket_answers(path: &Path) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await,
        Ok(Ok(_))
    )
}

/// Makes way for our socket: refuses if a daemon answers on it, removes a stale one.
async fn claim_socket(path: &Path, state_dir: &Path) -> Result<(), CliError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(format!("checking {}", path.display()))(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(CliError::new(
            EXIT_ERROR,
            format!(
                "{} exists and is not a socket; refusing to replace it (check admin.socket)",
                path.display()
            ),
        ));
    }
    if socket_answers(path).await {
        return Err(CliError::new(
            EXIT_CONFLICT,
            format!(
                "a tryswap daemon already serves {} (its admin socket {} answers)",
                state_dir.display(),
                path.display()
            ),
        ));
    }
    std::fs::remove_file(path).map_err(io_error(format!(
        "removing the stale socket {}",
        path.display()
    )))?;
    tracing::info!(socket = %path.display(), "removed a stale admin socket");
    Ok(())
}

/// Binds the socket under a temporary name, makes it 0600, then renames it into place, so
/// it is never reachable with looser permissions.
fn bind_socket(path: &Path) -> Result<UnixListener, CliError> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io_error(format!(
        "binding the admin socket {} (paths are limited to 107 bytes)",
        path.display()
    )))?;
    let result = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(format!(
            "installing the admin socket {}",
            path.display()
        ))(e));
    }
    Ok(listener)
}

fn read_token(path: &Path) -> Result<Arc<str>, CliError> {
    let text = std::fs::read_to_string(path).map_err(io_error(format!(
        "reading admin.token_file {}",
        path.display()
    )))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CliError::new(
            EXIT_ERROR,
            format!("admin.token_file {} is empty", path.display()),
        ));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "admin.token_file is readable by group or others");
        }
    }
    Ok(Arc::from(token))
}

fn spawn_server<L>(
    listener: L,
    state: &Arc<AppState>,
    auth: Auth,
    max_connections: usize,
) -> JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Io: connections::Admit,
{
    let app = server::router(Arc::clone(state)).layer(axum::middleware::from_fn_with_state(
        auth,
        server::authorize,
    ));
    let limits = connections::Limits {
        max_connections,
        header_read_timeout: connections::HEADER_READ_TIMEOUT,
    };
    tokio::spawn(connections::serve(
        listener,
        app,
        limits,
        state.shutdown.clone(),
    ))
}

async fn wait_server(name: &str, task: JoinHandle<std::io::Result<()>>) {
    match tokio::time::timeout(SHUTDOWN_GRACE, task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(listener = name, error = %e, "admin API server failed"),
        Ok(Err(e)) => tracing::error!(listener = name, error = %e, "admin API server task failed"),
        Err(_) => tracing::error!(
            listener = name,
            "admin API did not finish its requests in time"
        ),
    }
}

/// Runs config reloads for SIGHUP one after another until shutdown. The returned queue
/// holds at most one pending run: SIGHUPs that arrive while a run is pending are coalesced
/// into it, and a SIGHUP during a run always gets one more run, with the file as it is then.
fn spawn_sighup_worker(state: &Arc<AppState>) -> tokio::sync::mpsc::Sender<()> {
    let (queue, mut due) = tokio::sync::mpsc::channel::<()>(1);
    let st = Arc::clone(state);
    state.tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = st.shutdown.cancelled() => break,
                next = due.recv() => {
                    if next.is_none() {
                        break;
                    }
                    tracing::info!("SIGHUP: reloading the config");
                    if let Err(e) = st.reload_config(false).await {
                        tracing::error!(error = e.message(), "SIGHUP config reload failed");
                    }
                }
            }
        }
    });
    queue
}

/// After recovery: relaunches, as one config reload, every slot whose reattached
/// generation runs with other args or environment than the config file says (a crash
/// during a config reload leaves the file new and the plugins old). Failures are logged;
/// the slots keep serving as they run.
async fn settle_drift(supervisor: &Supervisor, config: &tryswap::config::Config) {
    match supervisor.apply_config(config, false).await {
        Ok(report) if report.drift.is_empty() => {}
        Ok(report) => tracing::warn!(
            drift = ?report.drift,
            outcome = ?report.outcome,
            error = ?report.error,
            "plugins ran with another config than the file's; relaunched under the file's"
        ),
        Err(e) => tracing::error!(error = %e, "checking the plugins against the config file"),
    }
}

/// How often the daemon removes artifacts no kept generation references.
const STORE_GC_PERIOD: Duration = Duration::from_secs(60 * 60);

/// Watches every bake recovery left under way (a restart during a bake) to its end, as the
/// reload that began it would have; its records are filed under actor `recovery`.
fn spawn_recovered_bakes(state: &Arc<AppState>) {
    let watches = match state.supervisor.recovered_bakes() {
        Ok(watches) => watches,
        Err(e) => {
            tracing::error!(error = %e, "finding the bakes under way");
            return;
        }
    };
    for watch in watches {
        let slot = watch.slot().clone();
        // The bake's end (confirmed or reverted) is recovery's doing: the reload that
        // began it died with the previous daemon.
        let recovery = tryswap::Origin::of(tryswap_journal::ActorKind::Recovery);
        state.tasks.spawn(async move {
            match tryswap::acting(recovery, watch.run()).await {
                Ok(report) => {
                    let outcome = serde_json::to_value(report.outcome).unwrap_or_default();
                    tracing::info!(slot = %slot, outcome = outcome.as_str().unwrap_or(""), "bake ended");
                }
                Err(e) => tracing::error!(slot = %slot, error = %e, "watching the bake"),
            }
        });
    }
}

/// Runs `job` every `period` until shutdown.
fn spawn_every<F, Fut>(state: &Arc<AppState>, period: Duration, mut job: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let shutdown = state.shutdown.clone();
    state.tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            job().await;
        }
    });
}

/// Runs `store gc` every [`STORE_GC_PERIOD`] until shutdown.
fn spawn_store_gc(state: &Arc<AppState>) {
    let supervisor = state.supervisor.clone();
    spawn_every(state, STORE_GC_PERIOD, move || {
        let supervisor = supervisor.clone();
        async move {
            match supervisor.store_gc().await {
                Ok(report) if report.removed.is_empty() => {}
                Ok(report) => tracing::info!(
                    removed = report.removed.len(),
                    freed_bytes = report.freed_bytes,
                    "store gc"
                ),
                Err(e) => tracing::warn!(error = %e, "store gc"),
            }
        }
    });
}

/// How often the daemon checks the journal against `journal_compact_bytes` and
/// `journal_compact_records`.
const JOURNAL_SIZE_PERIOD: Duration = Duration::from_secs(5);

/// When the daemon compacts the journal on its own: past `bytes` of log and sled files, or
/// once `records` records were appended since its last compaction (0: that limit is off) —
/// and never before as many records were appended as the last compaction kept.
///
/// A compaction rewrites every record it keeps (the log's new segment, sled's base) whatever
/// it drops, about 600 records per slot at the default `--keep`. Waiting for at least that
/// many new records keeps the rewriting to at most one record written per record appended,
/// with 1 slot or 1,000: a fixed count alone made a 100-slot daemon rewrite ~60,000 records
/// every 1,000 appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompactTrigger {
    /// `journal_compact_bytes` (0: off).
    pub bytes: u64,
    /// `journal_compact_records` (0: off).
    pub records: u64,
}

/// Where the journal stood at the daemon's last compaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LastCompaction {
    /// The journal's tip then (0 before the first).
    pub seq: u64,
    /// The records it kept (0 before the first).
    pub kept: u64,
}

impl CompactTrigger {
    /// Why to compact now, if at all: `last_seq` is the journal's tip, `last` the last
    /// compaction, `size` reads the journal's bytes. Nothing is due while fewer records were
    /// appended since the last compaction than it kept (see above), and in particular while
    /// none were: it found all it could drop then (sled's files shrink only at the next open,
    /// so the size alone would compact again every period).
    pub fn due(
        &self,
        last_seq: u64,
        last: LastCompaction,
        size: impl FnOnce() -> u64,
    ) -> Option<String> {
        let appended = last_seq.saturating_sub(last.seq);
        if appended == 0 || appended < last.kept {
            return None;
        }
        if self.records > 0 && appended >= self.records {
            return Some(format!("{appended} records since the last compaction"));
        }
        if self.bytes > 0 {
            let size = size();
            if size > self.bytes {
                return Some(format!("{size} bytes, more than {}", self.bytes));
            }
        }
        None
    }
}

/// Every [`JOURNAL_SIZE_PERIOD`] in which the journal grew, gives the memory the allocator
/// holds free back to the system (see [`allocator::Trim`]); until shutdown.
fn spawn_allocator_trim(state: &Arc<AppState>) {
    let supervisor = state.supervisor.clone();
    let mut trim = allocator::Trim::default();
    spawn_every(state, JOURNAL_SIZE_PERIOD, move || {
        let due = trim.due(supervisor.journal().last_seq());
        async move {
            if due {
                if let Err(e) = tokio::task::spawn_blocking(allocator::give_back).await {
                    tracing::debug!(error = %e, "the allocator trim task failed");
                }
            }
        }
    });
}

/// Compacts the journal (archiving what it trims) whenever `trigger` says so, checked every
/// [`JOURNAL_SIZE_PERIOD`] until shutdown.
fn spawn_journal_compaction(state: &Arc<AppState>, trigger: CompactTrigger) {
    if trigger.bytes == 0 && trigger.records == 0 {
        return;
    }
    let supervisor = state.supervisor.clone();
    let last = Arc::new(std::sync::Mutex::new(LastCompaction::default()));
    spawn_every(state, JOURNAL_SIZE_PERIOD, move || {
        let supervisor = supervisor.clone();
        let last = last.clone();
        async move {
            let journal = supervisor.journal();
            let last_seq = journal.last_seq();
            let before = *last.lock().unwrap_or_else(|e| e.into_inner());
            let Some(why) = trigger.due(last_seq, before, || journal.size_bytes()) else {
                return;
            };
            // A failed compaction is not tried again before more records were appended.
            *last.lock().unwrap_or_else(|e| e.into_inner()) = LastCompaction {
                seq: last_seq,
                kept: before.kept,
            };
            let compacting = supervisor.clone();
            let keep = tryswap_journal::DEFAULT_KEEP_PER_SLOT;
            let compacted = tokio::task::spawn_blocking(move || {
                let report = compacting.journal().compact(keep);
                allocator::give_back();
                report
            })
            .await;
            if let Ok(Ok(report)) = &compacted {
                last.lock().unwrap_or_else(|e| e.into_inner()).kept = report.events_kept;
            }
            match compacted {
                Ok(Ok(report)) if report.events_dropped == 0 => {}
                Ok(Ok(report)) => tracing::info!(
                    why = %why,
                    reloads_dropped = report.reloads_dropped,
                    events_dropped = report.events_dropped,
                    "journal compacted"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "compacting the journal"),
                Err(e) => tracing::warn!(error = %e, "the compaction task failed"),
            }
        }
    });
}

/// `tryswap serve [--keep-plugins]`: runs the daemon until SIGTERM or SIGINT.
pub async fn serve(ctx: &Context, keep_plugins: bool) -> Result<u8, CliError> {
    let state_dir = &ctx.state_dir;
    match connections::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE to its hard limit"),
    }
    std::fs::create_dir_all(state_dir).map_err(io_error(format!(
        "creating the state directory {}",
        state_dir.display()
    )))?;
    let admin = &ctx.config.admin;
    let socket = server::socket_path(state_dir, admin);
    let supervisor = match Supervisor::open(state_dir) {
        Ok(supervisor) => supervisor,
        Err(e @ SupervisorError::Journal(JournalError::Locked { .. })) => {
            if socket_answers(&socket).await {
                return Err(CliError::new(
                    EXIT_CONFLICT,
                    format!(
                        "a tryswap daemon already serves {} (its admin socket {} answers)",
                        state_dir.display(),
                        socket.display()
                    ),
                ));
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    // The daemon lives on: each reload makes the next one's files ahead.
    supervisor.prepare_launches_ahead();
    for slot in &ctx.config.slots {
        supervisor.add_process_slot(slot.clone());
    }
    let token = match &admin.token_file {
        Some(file) if file.is_absolute() => Some(read_token(file)?),
        Some(file) => Some(read_token(&state_dir.join(file))?),
        None => None,
    };
    // Signals are caught from now on (a signal during recovery waits for it to finish).
    let signal_error =
        |e: std::io::Error| CliError::new(EXIT_ERROR, format!("installing signal handlers: {e}"));
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(signal_error)?;

    claim_socket(&socket, state_dir).await?;
    let unix = bind_socket(&socket)?;
    let _socket_file = SocketFile(socket.clone());
    let tcp = match (admin.listen, &token) {
        (Some(addr), Some(_)) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(io_error(format!("binding admin.listen {addr}")))?,
        ),
        _ => None,
    };

    let state = Arc::new(AppState {
        supervisor: supervisor.clone(),
        monitor: OnceLock::new(),
        metrics: Metrics::new(),
        ready: AtomicBool::new(false),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        config_path: ctx.config_path.clone(),
        started_with: (admin.clone(), ctx.config.state_dir.clone()),
        config_busy: tokio::sync::Mutex::new(()),
        leases: tryswap::endpoint::leases::LeaseTable::new(supervisor.clone()),
    });
    let unix_server = spawn_server(
        unix,
        &state,
        Auth {
            token: token.clone(),
            required: false,
        },
        connections::MAX_UNIX_CONNECTIONS,
    );
    let tcp_server = tcp.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin API on TCP (bearer token required)");
        }
        spawn_server(
            listener,
            &state,
            Auth {
                token: token.clone(),
                required: true,
            },
            connections::MAX_TCP_CONNECTIONS,
        )
    });
    // The tcp stable endpoints are bound now (a taken port fails the start), and forward
    // once recovery has settled the active generations.
    let mut endpoints = Vec::new();
    for slot in &ctx.config.slots {
        if let Some(address) = slot.endpoint {
            let listener = tryswap::endpoint::tcp::bind(&slot.name, address)
                .await
                .map_err(|e| CliError::new(EXIT_ERROR, e.to_string()))?;
            endpoints.push((slot.name.clone(), listener));
        }
    }
    tracing::info!(socket = %socket.display(), "admin API listening; running recovery");

    let recovered = supervisor.recover().await;
    // Recovery logs its actions itself.
    let outcome = recovered.map(drop).map_err(CliError::from);
    let mut journal_failed = None;
    if outcome.is_ok() {
        settle_drift(&supervisor, &ctx.config).await;
        spawn_recovered_bakes(&state);
        let monitor = Monitor::start(supervisor.clone(), MonitorOptions::default());
        let mut records = supervisor.subscribe();
        let mut monitored = monitor.subscribe();
        let _ = state.monitor.set(monitor);
        let metrics_state = Arc::clone(&state);
        let shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = records.recv() => match r {
                        Ok(record) => metrics_state.metrics.observe_record(&record),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                    m = monitored.recv() => match m {
                        Ok(event) => metrics_state.metrics.observe_monitor(&event),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                }
            }
        });
        spawn_store_gc(&state);
        spawn_allocator_trim(&state);
        for (slot, listener) in endpoints.drain(..) {
            tracing::info!(slot = %slot, address = ?listener.local_addr().ok(), "tcp endpoint forwarding");
            let cancel = state.shutdown.clone().cancelled_owned();
            tokio::spawn(tryswap::endpoint::tcp::forward(
                supervisor.clone(),
                slot,
                listener,
                Box::pin(cancel),
            ));
        }
        spawn_journal_compaction(
            &state,
            CompactTrigger {
                bytes: ctx
                    .config
                    .journal_compact_bytes
                    .unwrap_or(tryswap::config::DEFAULT_JOURNAL_COMPACT_BYTES),
                records: ctx
                    .config
                    .journal_compact_records
                    .unwrap_or(tryswap::config::DEFAULT_JOURNAL_COMPACT_RECORDS),
            },
        );
        state.ready.store(true, Ordering::SeqCst);
        let slots = ctx.config.slots.len();
        notify::ready(&format!("serving {slots} slot(s)"));
        let _watchdog = notify::spawn_watchdog(state.shutdown.clone());
        tracing::info!(slots, "ready");

        let hup_queue = spawn_sighup_worker(&state);
        let mut journal_check = tokio::time::interval(JOURNAL_CHECK_PERIOD);
        loop {
            tokio::select! {
                _ = journal_check.tick() => {
                    if let Some(cause) = supervisor.journal().failure() {
                        tracing::error!(%cause, "the journal failed: exiting so that a restart reopens and verifies it (plugins keep running)");
                        journal_failed = Some(cause);
                        break;
                    }
                }
                _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = sighup.recv() => {
                    // A full queue means a run is already due after the current one: it
                    // reads the file when it starts, so this signal's edits are in it.
                    match hup_queue.try_send(()) {
                        Ok(()) => tracing::info!("SIGHUP: config reload queued"),
                        Err(_) => tracing::info!("SIGHUP: coalesced with the config reload already queued"),
                    }
                }
            }
        }
    }

    // Shutdown.
    notify::stopping();
    state.shutdown.cancel();
    // Bakes under way stay in the journal: the next start continues or settles them.
    supervisor.stop_watching_bakes();
    wait_server("unix", unix_server).await;
    if let Some(tcp_server) = tcp_server {
        wait_server("tcp", tcp_server).await;
    }
    state.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::error!("reloads in flight did not finish in time");
    }
    if let Some(monitor) = state.monitor.get() {
        monitor.shutdown().await;
    }
    // No reload starts any more: the next generations' files made ahead go.
    supervisor.discard_launches_ahead();
    if let Some(cause) = journal_failed {
        // Stopping plugins now would act on a journal whose disk state is unknown; the
        // restart's recovery reattaches them or settles their slots from the disk.
        return Err(CliError::new(
            EXIT_ERROR,
            format!(
                "the journal {} failed ({cause}); exited without stopping plugins: restart \
                 tryswap serve to reopen, verify and recover it",
                supervisor.journal().dir().display()
            ),
        ));
    }
    if keep_plugins {
        if let Err(e) = supervisor.journal().flush() {
            tracing::error!(error = %e, "flushing the journal at shutdown");
        }
        tracing::info!("plugins keep running (--keep-plugins)");
    } else {
        supervisor.shutdown().await;
    }
    outcome.map(|()| EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::{CompactTrigger, LastCompaction};

    #[test]
    fn a_compaction_is_due_by_records_appended_or_by_size() {
        let trigger = CompactTrigger {
            bytes: 1000,
            records: 100,
        };
        let at = |seq, kept| LastCompaction { seq, kept };
        assert_eq!(trigger.due(99, at(0, 0), || 10), None);
        assert!(trigger.due(100, at(0, 0), || 10).is_some());
        assert!(trigger.due(250, at(150, 0), || 10).is_some());
        assert_eq!(trigger.due(249, at(150, 0), || 10), None);
        assert!(trigger.due(151, at(150, 0), || 1001).is_some());
        // Nothing appended since the last compaction: not due, whatever the size.
        assert_eq!(trigger.due(150, at(150, 0), || 1001), None);
        let records_off = CompactTrigger {
            bytes: 1000,
            records: 0,
        };
        assert_eq!(records_off.due(1_000_000, at(0, 0), || 10), None);
    }

    /// A compaction rewrites what it keeps: with many slots (kept records far above the
    /// record limit) the next one waits for as many new records, by count or by size, so
    /// the rewriting stays at most one record per record appended.
    #[test]
    fn a_compaction_waits_for_as_many_new_records_as_the_last_one_kept() {
        let trigger = CompactTrigger {
            bytes: 1000,
            records: 1_000,
        };
        let kept_60k = LastCompaction {
            seq: 100_000,
            kept: 60_000,
        };
        assert_eq!(trigger.due(101_000, kept_60k, || 10), None);
        assert_eq!(trigger.due(159_999, kept_60k, || 1_000_000), None);
        assert!(trigger.due(160_000, kept_60k, || 10).is_some());
        // Fewer kept than the limit (one slot): the limit decides.
        let kept_600 = LastCompaction {
            seq: 100_000,
            kept: 600,
        };
        assert_eq!(trigger.due(100_999, kept_600, || 10), None);
        assert!(trigger.due(101_000, kept_600, || 10).is_some());
    }
}
