//! Leases for hosts in other processes (DESIGN.md "Stable endpoints for outside callers"):
//!
//! - `POST /v1/slots/{slot}/leases` `{"ttl":"30s"}` (ttl optional, default 30s, at most 1h)
//!   → `{"lease":…, "slot":…, "generation":n, "endpoint":…, "address":…, "expires_at":…,
//!   "ttl_ms":…}`;
//! - `POST /v1/leases/{id}/renew` (optional `{"ttl":…}`) → the lease, 404 once expired;
//! - `DELETE /v1/leases/{id}` → `{"lease":…, "released":true}`, 404 if unknown.
//!
//! A leased generation is not stopped after a swap until its last unexpired lease ends or
//! its `drain_timeout` passes; a lease not renewed within its TTL ends by itself.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tryswap::endpoint::leases::parse_ttl;
use tryswap::report::StatusReport;
use uuid::Uuid;

use super::server::{reply, ApiError, ApiResult, AppState, St};

/// The TTL of a lease whose request names none.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlBody {
    ttl: Option<String>,
}

/// The body's `ttl`, if any; an empty body is no ttl.
fn ttl_of(body: &Bytes) -> Result<Option<Duration>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let parsed: TtlBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("lease body: {e}")))?;
    parsed
        .ttl
        .map(|t| parse_ttl(&t).map_err(ApiError::bad_request))
        .transpose()
}

fn lease_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|e| ApiError::bad_request(format!("lease id {id:?}: {e}")))
}

pub(super) async fn take(State(st): St, Path(slot): Path<String>, body: Bytes) -> ApiResult {
    st.ready()?;
    let slot = tryswap::SlotName::new(slot.as_str())
        .map_err(|e| ApiError::bad_request(format!("slot {slot:?}: {e}")))?;
    let ttl = ttl_of(&body)?.unwrap_or(DEFAULT_TTL);
    let grant = st.leases.take(&slot, ttl)?;
    tracing::info!(lease = %grant.lease, slot = %slot, generation = grant.generation, "lease taken");
    reply(StatusCode::OK, &grant, None)
}

pub(super) async fn renew(State(st): St, Path(id): Path<String>, body: Bytes) -> ApiResult {
    st.ready()?;
    let id = lease_id(&id)?;
    let ttl = ttl_of(&body)?;
    match st.leases.renew(&id, ttl) {
        Some(grant) => reply(StatusCode::OK, &grant, None),
        None => Err(ApiError::not_found(format!(
            "lease {id} is unknown or expired: take a new one"
        ))),
    }
}

pub(super) async fn release(State(st): St, Path(id): Path<String>) -> ApiResult {
    st.ready()?;
    let id = lease_id(&id)?;
    if st.leases.release(&id) {
        tracing::info!(lease = %id, "lease released");
        reply(
            StatusCode::OK,
            &serde_json::json!({ "lease": id, "released": true }),
            None,
        )
    } else {
        Err(ApiError::not_found(format!(
            "lease {id} is unknown or expired"
        )))
    }
}

/// Puts each slot's unexpired leases into a status report.
pub(super) fn add_to_status(st: &Arc<AppState>, report: &mut StatusReport) {
    for slot in &mut report.slots {
        slot.leases = st.leases.of_slot(&slot.slot);
    }
}
