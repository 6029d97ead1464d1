//! Leases for hosts in other processes (the daemon's `/v1/slots/{slot}/leases` API): a
//! [`crate::Lease`] held on the caller's behalf until it is released or its TTL passes
//! without a renewal. An expired lease is dropped at its expiry, so it never holds a drain
//! beyond its TTL; a host that dies simply stops renewing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::Instant;
use tryswap_fsm::SlotName;
use uuid::Uuid;

use crate::supervisor::lease::Lease;
use crate::supervisor::{Supervisor, SupervisorError};

/// The longest TTL a lease may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// A lease as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeaseGrant {
    /// The lease id.
    pub lease: Uuid,
    /// The slot.
    pub slot: String,
    /// The generation the lease pins.
    pub generation: u64,
    /// The slot's stable endpoint (see [`Supervisor::endpoint`]).
    pub endpoint: Option<String>,
    /// The generation's own address (what the endpoint pointed to when the lease was taken).
    pub address: Option<String>,
    /// When it expires unless renewed.
    pub expires_at: DateTime<Utc>,
    /// Its TTL in milliseconds.
    pub ttl_ms: u64,
}

struct Held {
    lease: Lease,
    grant: LeaseGrant,
    ttl: Duration,
    expires: Instant,
}

/// Parses a lease TTL (`"30s"`): a duration greater than zero, at most [`MAX_TTL`].
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text.trim())
        .map_err(|e| format!("ttl {text:?} is not a duration ({e}); write e.g. \"30s\""))?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(format!(
            "ttl {text:?} must be greater than zero and at most 1h"
        ));
    }
    Ok(ttl)
}

/// The leases the daemon holds for outside hosts.
#[derive(Clone)]
pub struct LeaseTable {
    supervisor: Supervisor,
    held: Arc<Mutex<BTreeMap<Uuid, Held>>>,
}

impl LeaseTable {
    /// An empty table over `supervisor`'s slots.
    pub fn new(supervisor: Supervisor) -> Self {
        LeaseTable {
            supervisor,
            held: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leases the slot's active generation for `ttl`. Must run inside a tokio runtime (the
    /// expiry is a timer).
    pub fn take(&self, slot: &SlotName, ttl: Duration) -> Result<LeaseGrant, SupervisorError> {
        let lease = self.supervisor.lease(slot)?;
        let id = Uuid::now_v7();
        let grant = LeaseGrant {
            lease: id,
            slot: slot.to_string(),
            generation: lease.generation().0,
            endpoint: self.supervisor.endpoint(slot),
            address: lease.endpoint().map(|e| e.address.clone()),
            expires_at: Utc::now() + ttl,
            ttl_ms: ttl.as_millis() as u64,
        };
        self.lock().insert(
            id,
            Held {
                lease,
                grant: grant.clone(),
                ttl,
                expires: Instant::now() + ttl,
            },
        );
        let table = self.clone();
        tokio::spawn(async move { table.expire(id).await });
        Ok(grant)
    }

    /// Drops the lease at its expiry, following renewals.
    async fn expire(&self, id: Uuid) {
        loop {
            let Some(expires) = self.lock().get(&id).map(|h| h.expires) else {
                return;
            };
            tokio::time::sleep_until(expires).await;
            let mut held = self.lock();
            if held.get(&id).is_some_and(|h| h.expires <= Instant::now()) {
                if let Some(h) = held.remove(&id) {
                    tracing::info!(lease = %id, slot = %h.grant.slot, generation = h.grant.generation, "lease expired");
                }
                return;
            }
        }
    }

    /// Extends the lease by its TTL (or by `ttl`) from now; `None` if it is unknown or
    /// already expired.
    pub fn renew(&self, id: &Uuid, ttl: Option<Duration>) -> Option<LeaseGrant> {
        let mut held = self.lock();
        let h = held.get_mut(id)?;
        if h.expires <= Instant::now() {
            return None;
        }
        if let Some(ttl) = ttl {
            h.ttl = ttl;
        }
        h.expires = Instant::now() + h.ttl;
        h.grant.expires_at = Utc::now() + h.ttl;
        h.grant.ttl_ms = h.ttl.as_millis() as u64;
        Some(h.grant.clone())
    }

    /// Releases the lease; `false` if it was unknown (or had expired).
    pub fn release(&self, id: &Uuid) -> bool {
        let removed = self.lock().remove(id);
        removed.is_some_and(|h| {
            drop(h.lease);
            true
        })
    }

    /// The unexpired leases of `slot`.
    pub fn of_slot(&self, slot: &str) -> Vec<LeaseGrant> {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|h| h.grant.slot == slot && h.expires > now)
            .map(|h| h.grant.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("2h").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
