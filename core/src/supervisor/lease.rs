//! Leases: how in-flight work pins the generation it runs on while a swap happens.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tryswap_fsm::{Endpoint, Generation};

use crate::driver::Instance;

/// A generation that serves (or drains) in a slot, with its lease count.
pub(crate) struct Serving {
    pub(crate) instance: Instance,
    leases: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

impl Serving {
    pub(crate) fn new(instance: Instance) -> Arc<Self> {
        Arc::new(Serving {
            instance,
            leases: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
        })
    }

    /// Takes a lease unless the generation is draining.
    pub(crate) fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        self.leases.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            self.release();
            return None;
        }
        Some(Lease {
            serving: Arc::clone(self),
        })
    }

    fn release(&self) {
        if self.leases.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Refuses new leases from now on and waits until the current ones end or `timeout`
    /// passes. Returns the number of leases still held when it gave up (0 = drained).
    pub(crate) async fn drain(&self, timeout: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let held = self.leases.load(Ordering::SeqCst);
            if held == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.leases.load(Ordering::SeqCst);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn leases(&self) -> usize {
        self.leases.load(Ordering::SeqCst)
    }
}

/// A claim on the slot's active generation for one piece of work.
///
/// While a lease is held, its generation is not stopped (up to the slot's drain timeout):
/// after a swap, new leases go to the new generation and the old one is stopped once its
/// last lease is dropped.
pub struct Lease {
    serving: Arc<Serving>,
}

impl Lease {
    /// The generation this lease runs on.
    pub fn generation(&self) -> Generation {
        self.serving.instance.generation
    }

    /// Where that generation serves (process plugins).
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.serving.instance.endpoint.as_ref()
    }

    /// The instance behind the lease.
    pub fn instance(&self) -> &Instance {
        &self.serving.instance
    }

    /// The in-process engine behind the lease, if the slot runs engines of type `E`.
    pub fn engine<E: crate::driver::engine::Engine>(&self) -> Option<Arc<E>> {
        crate::driver::engine::engine_of::<E>(&self.serving.instance)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.serving.release();
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("generation", &self.generation())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tryswap_fsm::{ArtifactRef, ReloadId, Sha256, SlotName};

    fn serving() -> Arc<Serving> {
        Serving::new(Instance {
            slot: SlotName::new("s").unwrap(),
            generation: Generation(1),
            reload: ReloadId::from_u128(1),
            artifact: ArtifactRef {
                sha256: Sha256([0; 32]),
                config_sha256: None,
            },
            process: None,
            log_path: None,
            endpoint: None,
            handle: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_the_last_lease_then_refuses_new_ones() {
        let s = serving();
        let lease = s.try_lease().unwrap();
        let drainer = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.drain(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        assert!(!drainer.is_finished());
        assert!(s.try_lease().is_none(), "draining generation gave a lease");
        drop(lease);
        assert_eq!(drainer.await.unwrap(), 0);
        assert_eq!(s.leases(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_timeout_and_reports_held_leases() {
        let s = serving();
        let _a = s.try_lease().unwrap();
        let _b = s.try_lease().unwrap();
        assert_eq!(s.drain(Duration::from_millis(500)).await, 2);
    }
}
