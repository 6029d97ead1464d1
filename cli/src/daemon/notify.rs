//! systemd `Type=notify` support: READY, RELOADING, STOPPING and STATUS messages.
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
