//! systemd `Type=notify` support: READY, RELOADING, STOPPING, STATUS and WATCHDOG messages.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd), and a
//! failure to notify is logged, never fatal.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "notifying systemd");
    }
}

/// Recovery finished and the admin socket listens: `READY=1`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A config reload starts: `RELOADING=1` with the `MONOTONIC_USEC` systemd ≥ 253 requires.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!(error = %e, "reading the monotonic clock for systemd");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// A config reload applied nothing (rolled back, refused or failed): `READY=1`, since the
/// daemon serves with the config it had, with `STATUS=config reload failed: …` and
/// `ERRNO=` so that `systemctl status` shows the failure instead of a plain success.
pub fn reload_failed(why: &str) {
    let status = format!("config reload failed: {why}");
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status),
        // ECANCELED: the reload was cancelled, the previous config stays in force.
        NotifyState::Errno(125),
    ]);
}

/// Shutdown begins: `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// When systemd asked for a watchdog (`WatchdogSec=`), sends `WATCHDOG=1` every half
/// period from a runtime task until `shutdown`: a daemon whose runtime hangs stops pinging
/// and systemd restarts it. Returns the task, or `None` without a watchdog.
pub fn spawn_watchdog(
    shutdown: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 2).max(std::time::Duration::from_millis(100));
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    }))
}
