//! Blocking work (fdatasync, hashing a file, fork/exec) called from async code.
//!
//! [`off_worker`] runs it with `tokio::task::block_in_place` on a multi-thread runtime: the
//! worker thread's other tasks move to another worker while this one blocks, and the call
//! stays synchronous for its caller (cancelling the future cannot leave the work running
//! behind it with a handle on the journal). On a current-thread runtime, or outside tokio,
//! it simply runs inline: there is no other worker to hand tasks to.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` without stalling the async worker it is called from (see the module docs).
pub(crate) fn off_worker<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Runs `work` on tokio's blocking pool and awaits it on a multi-thread runtime (the
/// daemon: its workers keep serving meanwhile); inline on a current-thread runtime (a
/// one-shot command), whose one thread would only wait for the pool's thread, and whose
/// exit would then wait again to join it. Err only when the pool's task panicked or was
/// cancelled.
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::spawn_blocking(work).await
        }
        _ => Ok(work()),
    }
}

/// Runs `main` on this thread and `side` on a thread of its own at the same time; returns
/// `main`'s result once both are done. For blocking work that may overlap, such as a
/// journal flush and the files a launch will need. `side` is best effort: if no thread can
/// be started it does not run, so it must only do what its user would otherwise do itself.
/// A panic of `side` is logged, not propagated. Call it off the async workers
/// ([`off_worker`]).
pub(crate) fn beside<T>(main: impl FnOnce() -> T, side: impl FnOnce() + Send) -> T {
    std::thread::scope(|scope| {
        let side = std::thread::Builder::new()
            .name("tryswap-beside".to_owned())
            .spawn_scoped(scope, side);
        let out = main();
        match side {
            Ok(handle) => {
                if handle.join().is_err() {
                    tracing::error!("a side task of blocking work panicked");
                }
            }
            Err(e) => tracing::debug!(error = %e, "no thread for a side task; it did not run"),
        }
        out
    })
}
