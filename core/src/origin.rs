//! Who acts and why: the actor and reason every journal record of an operation carries
//! (DESIGN.md "Journal, second form"). The caller names them once around the operation
//! with [`acting`]; recovery, the keep-alive and config reloads name themselves inside it.

use std::future::Future;

use tryswap_journal::{Actor, ActorKind};

tokio::task_local! {
    static ORIGIN: Origin;
}

/// The actor and operator reason of the records an operation writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// Who.
    pub actor: Actor,
    /// Why, in the operator's words (`--reason`, API `"reason"`).
    pub reason: Option<String>,
}

impl Origin {
    /// A `tryswap` command run without a daemon: this process's uid and pid.
    pub fn cli(reason: Option<String>) -> Self {
        Origin {
            actor: Actor {
                kind: ActorKind::Cli,
                uid: Some(nix::unistd::getuid().as_raw()),
                pid: Some(std::process::id()),
            },
            reason,
        }
    }

    /// A call to the daemon's admin API by a peer with uid `uid` (if known).
    pub fn api(uid: Option<u32>, reason: Option<String>) -> Self {
        Origin {
            actor: Actor {
                kind: ActorKind::Api,
                uid,
                pid: None,
            },
            reason,
        }
    }

    /// `kind` acting on its own (recovery, keep-alive), with no reason.
    pub fn of(kind: ActorKind) -> Self {
        Origin {
            actor: Actor::of(kind),
            reason: None,
        }
    }
}

/// Runs `operation` with every journal record it writes attributed to `origin` (an inner
/// `acting` wins while it runs; tasks the operation spawns through [`spawn`] inherit it).
pub async fn acting<F: Future>(origin: Origin, operation: F) -> F::Output {
    ORIGIN.scope(origin, operation).await
}

/// The origin in force: the innermost [`acting`], else unknown.
pub(crate) fn current() -> Origin {
    ORIGIN.try_with(Clone::clone).unwrap_or_default()
}

/// `tokio::spawn` keeping the current origin.
pub(crate) fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(ORIGIN.scope(current(), task))
}

/// Runs a synchronous journal write with the current origin on its records.
pub(crate) fn write<T>(write: impl FnOnce() -> T) -> T {
    let origin = current();
    tryswap_journal::with_origin(origin.actor, origin.reason.as_deref(), write)
}
