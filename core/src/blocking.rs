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
