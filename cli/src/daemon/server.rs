//! The admin API (DESIGN.md "Admin API"): HTTP/1.1 JSON with axum, on the Unix socket and,
//! with a bearer token, on TCP.
//!
//! | route | does | status |
//! |---|---|---|
//! | `GET /healthz` | readiness (no token needed) | 200 ready, 503 recovering or stopping |
//! | `GET /metrics` | Prometheus text | 200 |
//! | `GET /v1/slots` | `status` | 200 |
//! | `GET /v1/slots/{slot}` | one slot of `status` | 200, 404 |
//! | `GET /v1/slots/{slot}/history` | `history` | 200 |
//! | `POST /v1/slots/{slot}/reloads` | activate / try / rollback, answers when done | 200 active or dry run passed, 422 rejected (the report), 409 in progress, 404, 400 |
//! | `POST /v1/slots/{slot}/start`, `…/stop` | `start` / `stop` | 200, 404, 409 |
//! | `POST /v1/slots/{slot}/confirm`, `…/revert` | end the slot's bake (`confirm` / `revert`) | 200 confirmed, 422 reverted (the report), 409 nothing baking, 404 |
//! | `GET /v1/reloads/{id}` | one reload's report | 200, 404, 400 |
//! | `POST /v1/recover` | `recover` | 200 |
//! | `POST /v1/config/reload` | re-read the config file, apply it as one transaction | 200, 422 rolled back, 400 invalid config, 409 |
//! | `GET /v1/events` | server-sent events (see [`super::events`]) | 200 |
//! | `GET /v1/monitor` | keep-alive state of every slot | 200 |
//! | `GET /v1/journal/verify`, `GET /v1/journal/replay?until=SEQ`, `POST /v1/journal/compact` | `tryswap journal …` (records: `/v1/events?follow=false&from=SEQ`) | 200 |
//! | `POST /v1/store/gc` | `tryswap store gc` | 200 |
//! | `POST /v1/slots/{slot}/leases`, `POST /v1/leases/{id}/renew`, `DELETE /v1/leases/{id}` | leases for outside hosts (see [`super::leases`]) | 200, 404, 400 |
//!
//! Every `/v1` route answers 503 until recovery finished and once shutdown began. Errors
//! are `{"error": message, "exit_code": n}` with the exit code the CLI uses for the same
//! failure. With `Accept: text/plain`, successful answers (and 422 reports) are the text
//! the CLI prints, so the CLI's output is the same with or without a daemon.
//!
//! Reloads, starts, stops and recovery run on tasks of their own: a client that hangs up
//! does not cancel them, and shutdown waits for them.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tryswap::admin_body::{
    parse_compact_body, parse_config_reload_body, parse_reload_with_bake, BodyError, ReloadRequest,
};
use tryswap::config::{AdminConfig, Config};
use tryswap::report::{Outcome, ReloadReport, StatusReport};
use tryswap::Monitor;
use tryswap::{internals::SLOT_WAIT, ConfigOutcome, ConfigReloadReport};
use tryswap::{BakeEnd, Origin, Supervisor, SupervisorError};
use tryswap_fsm::{Reason, Rejected, ReloadId, SlotName};
use tryswap_journal::JournalError;

use super::events;
use super::metrics::Metrics;
use super::notify;
use crate::daemon::connections::PeerUid;
use crate::{render, CliError, EXIT_CONFLICT, EXIT_ERROR};

/// Response header with the journal's last sequence number when a reload answered: a
/// client printing progress from `/v1/events` reads the stream up to it.
pub const LAST_SEQ_HEADER: &str = "x-tryswap-last-seq";

/// Response header with the CLI exit code of an answer whose status alone does not tell
/// it (`journal verify`).
pub const EXIT_CODE_HEADER: &str = "x-tryswap-exit-code";

/// Everything the routes share.
pub struct AppState {
    /// The supervisor of the state directory.
    pub supervisor: Supervisor,
    /// The keep-alive, once recovery finished.
    pub monitor: OnceLock<Monitor>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Set when recovery finished.
    pub ready: AtomicBool,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// Reloads, starts, stops, recoveries and config reloads under way.
    pub tasks: TaskTracker,
    /// The config file `reload-config` and SIGHUP re-read.
    pub config_path: PathBuf,
    /// The `[admin]` table and `state_dir` in force (changes need a restart).
    pub started_with: (AdminConfig, Option<PathBuf>),
    /// Serializes config reloads.
    pub config_busy: tokio::sync::Mutex<()>,
    /// Leases held for outside hosts (`/v1/slots/{slot}/leases`).
    pub leases: tryswap::endpoint::leases::LeaseTable,
}

/// An error answer: `{"error": message, "exit_code": n}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    exit_code: u8,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, exit_code: u8, message: impl Into<String>) -> Self {
        ApiError {
            status,
            exit_code,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, EXIT_ERROR, message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, EXIT_ERROR, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, EXIT_ERROR, message)
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A refused request body: 400 with the parser's message, which names the field.
impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<SupervisorError> for ApiError {
    fn from(e: SupervisorError) -> Self {
        let status = match &e {
            SupervisorError::Conflict { .. }
            | SupervisorError::Busy { .. }
            | SupervisorError::NoBake(_) => StatusCode::CONFLICT,
            SupervisorError::UnknownSlot(_) => StatusCode::NOT_FOUND,
            SupervisorError::NoActive(_)
            | SupervisorError::NoPrevious(_)
            | SupervisorError::UnknownGeneration { .. }
            | SupervisorError::InvalidCandidate { .. } => StatusCode::BAD_REQUEST,
            SupervisorError::Rejected {
                rejected: Rejected::Conflict { .. },
                ..
            } => StatusCode::CONFLICT,
            SupervisorError::Rejected { .. } => StatusCode::BAD_REQUEST,
            SupervisorError::Journal(JournalError::Locked { .. }) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = e.to_string();
        // The exit code the CLI gives the same error without a daemon.
        let exit_code = CliError::from(e).code;
        ApiError::new(status, exit_code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "schema": render::SCHEMA, "error": self.message, "exit_code": self.exit_code
        });
        (self.status, axum::Json(body)).into_response()
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn wants_text(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain"))
}

/// The JSON of `value`, or `text` when the client asked for text.
pub(super) fn reply<T: Serialize>(
    status: StatusCode,
    value: &T,
    text: Option<String>,
) -> ApiResult {
    match text {
        Some(text) => Ok((
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response()),
        None => {
            let body = render::json_text(value)
                .map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))?;
            Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
    }
}

impl AppState {
    /// Runs `operation` to its end on a task of its own (a client that hangs up does not
    /// cancel it; shutdown waits for it), its journal records attributed to `origin`.
    /// `task` names it in the error when the task itself dies ("slot demo: the stop task").
    async fn run_acting<T, E>(
        &self,
        origin: Origin,
        task: impl std::fmt::Display,
        operation: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        E: Send + 'static,
        ApiError: From<E>,
    {
        self.tasks
            .spawn(tryswap::acting(origin, operation))
            .await
            .map_err(|e| ApiError::internal(format!("{task} failed: {e}")))?
            .map_err(ApiError::from)
    }

    pub(super) fn ready(&self) -> Result<(), ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                EXIT_ERROR,
                "the daemon is shutting down",
            ));
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                EXIT_ERROR,
                "not ready: the daemon is still running recovery",
            ));
        }
        Ok(())
    }

    /// Re-reads the config file and applies it as one transaction (`reload-config`,
    /// SIGHUP). An invalid file changes nothing and names the offending line.
    pub async fn reload_config(&self, dry_run: bool) -> Result<ConfigReloadReport, ApiError> {
        // Queued behind a config reload under way (bounded): it reads the file when its
        // turn comes, so the latest edit is what gets applied.
        let Ok(_busy) = tokio::time::timeout(SLOT_WAIT, self.config_busy.lock()).await else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                EXIT_CONFLICT,
                format!(
                    "another config reload kept running for {}s; this one changed nothing \
                     (try again)",
                    SLOT_WAIT.as_secs()
                ),
            ));
        };
        let config = Config::load(&self.config_path)
            .map_err(|e| ApiError::bad_request(format!("the config was not reloaded: {e}")))?;
        if !dry_run {
            notify::reloading();
        }
        let result = self.supervisor.apply_config(&config, dry_run).await;
        if !dry_run {
            // systemd gets the truth: READY=1 (the daemon serves either way) with the
            // failure in STATUS and ERRNO when nothing was applied.
            match &result {
                Ok(report) if report.outcome == ConfigOutcome::RolledBack => {
                    notify::reload_failed(report.error.as_deref().unwrap_or("a candidate failed"))
                }
                Ok(_) => notify::ready("serving"),
                Err(e) => notify::reload_failed(&e.to_string()),
            }
        }
        let mut report = result?;
        let (admin, state_dir) = &self.started_with;
        if &config.admin != admin {
            report.restart_required.push("[admin]".to_owned());
        }
        if &config.state_dir != state_dir {
            report.restart_required.push("state_dir".to_owned());
        }
        match report.outcome {
            ConfigOutcome::RolledBack => {
                tracing::warn!(
                    error = report.error.as_deref().unwrap_or(""),
                    "config reload rolled back"
                )
            }
            outcome => {
                let outcome = serde_json::to_value(outcome).unwrap_or_default();
                tracing::info!(outcome = outcome.as_str().unwrap_or(""), "config reload")
            }
        }
        Ok(report)
    }
}

pub(super) type St = State<Arc<AppState>>;

/// Every route, sharing `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/slots", get(slots))
        .route("/v1/slots/{slot}", get(one_slot))
        .route("/v1/slots/{slot}/history", get(history))
        .route("/v1/slots/{slot}/reloads", post(reload))
        .route("/v1/slots/{slot}/start", post(start))
        .route("/v1/slots/{slot}/stop", post(stop))
        .route("/v1/slots/{slot}/confirm", post(confirm))
        .route("/v1/slots/{slot}/revert", post(revert))
        .route("/v1/reloads/{id}", get(reload_status))
        .route("/v1/recover", post(recover))
        .route("/v1/config/reload", post(config_reload))
        .route("/v1/events", get(events))
        .route("/v1/monitor", get(monitor))
        .route("/v1/journal/verify", get(journal_verify))
        .route("/v1/journal/replay", get(journal_replay))
        .route("/v1/journal/compact", post(journal_compact))
        .route("/v1/store/gc", post(store_gc))
        .route("/v1/slots/{slot}/leases", post(super::leases::take))
        .route("/v1/leases/{id}/renew", post(super::leases::renew))
        .route(
            "/v1/leases/{id}",
            axum::routing::delete(super::leases::release),
        )
        .fallback(not_found)
        .with_state(state)
}

/// Who may call the API on one listener.
#[derive(Clone)]
pub struct Auth {
    /// The bearer token, if one is configured.
    pub token: Option<Arc<str>>,
    /// Whether a token is required (TCP) or only checked when given (Unix socket).
    pub required: bool,
}

/// Middleware: checks `Authorization: Bearer <token>` in constant time. `/healthz` is
/// open. On the socket a token is optional, but a wrong one is refused.
pub async fn authorize(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")));
    let allowed = match (given, &auth.token) {
        (None, _) => !auth.required,
        (Some(Some(given)), Some(token)) => bool::from(given.as_bytes().ct_eq(token.as_bytes())),
        (Some(_), _) => false,
    };
    if allowed {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        EXIT_ERROR,
        "missing or wrong bearer token (Authorization: Bearer <the token in admin.token_file>)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}",
        request.method(),
        request.uri().path()
    ))
}

fn slot_name(slot: &str) -> Result<SlotName, ApiError> {
    SlotName::new(slot).map_err(|e| ApiError::not_found(format!("unknown slot: {e}")))
}

async fn healthz(State(st): St) -> Response {
    let (status, state) = if st.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if st.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering")
    };
    (status, axum::Json(serde_json::json!({"status": state}))).into_response()
}

async fn metrics(State(st): St, headers: HeaderMap) -> Response {
    let format = super::metrics::Format::negotiate(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let text = st.metrics.render(&st.supervisor, st.monitor.get(), format);
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

async fn slots(State(st): St, headers: HeaderMap) -> ApiResult {
    st.ready()?;
    let mut report =
        crate::operator::status(&st.supervisor, None, st.monitor.get()).map_err(ApiError::from)?;
    super::leases::add_to_status(&st, &mut report);
    let text = wants_text(&headers).then(|| render::status_text(&report));
    reply(StatusCode::OK, &report, text)
}

async fn one_slot(State(st): St, Path(slot): Path<String>, headers: HeaderMap) -> ApiResult {
    st.ready()?;
    let slot = slot_name(&slot)?;
    let mut report = crate::operator::status(&st.supervisor, Some(&slot), st.monitor.get())
        .map_err(ApiError::from)?;
    super::leases::add_to_status(&st, &mut report);
    if wants_text(&headers) {
        return reply(StatusCode::OK, &(), Some(render::status_text(&report)));
    }
    match report.slots.first() {
        Some(one) => reply(StatusCode::OK, one, None),
        None => Err(ApiError::not_found(format!("unknown slot {slot}"))),
    }
}

/// Query of `GET /v1/slots/{slot}/history`.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryParams {
    /// Only the last N reloads.
    pub limit: Option<usize>,
    /// Only reloads started at or after this RFC 3339 time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Text answers: the timeline chart.
    pub timeline: Option<bool>,
}

async fn history(
    State(st): St,
    Path(slot): Path<String>,
    Query(params): Query<HistoryParams>,
    headers: HeaderMap,
) -> ApiResult {
    st.ready()?;
    let slot = slot_name(&slot)?;
    let query = crate::operator::HistoryQuery {
        limit: params.limit,
        since: params.since,
        timeline: params.timeline.unwrap_or(false),
    };
    let report =
        crate::operator::history_report(&st.supervisor, &slot, &query).map_err(ApiError::from)?;
    let text = wants_text(&headers)
        .then(|| crate::operator::history_text(&st.supervisor, &report, &query));
    reply(StatusCode::OK, &report, text)
}

/// Query of `POST /v1/slots/{slot}/reloads`.
#[derive(Debug, Default, Deserialize)]
pub struct ReloadParams {
    /// Reload even when the candidate's artifact and config already run.
    pub force: Option<bool>,
}

/// Who calls (the peer's uid, when the socket tells it) and why (the body's `"reason"`).
fn api_origin(peer: Option<Extension<PeerUid>>, body: &[u8]) -> Result<Origin, ApiError> {
    let reason = tryswap::admin_body::parse_reason(body)?;
    Ok(Origin::api(peer.map(|Extension(PeerUid(uid))| uid), reason))
}

async fn reload(
    State(st): St,
    Path(slot): Path<String>,
    Query(params): Query<ReloadParams>,
    peer: Option<Extension<PeerUid>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    st.ready()?;
    let slot = slot_name(&slot)?;
    let (request, bake) = parse_reload_with_bake(&body)?;
    let origin = api_origin(peer, &body)?;
    if let (
        ReloadRequest::Candidate {
            spec,
            dry_run: false,
        },
        false,
    ) = (&request, params.force.unwrap_or(false))
    {
        let (supervisor, spec, name) = (st.supervisor.clone(), spec.clone(), slot.clone());
        let same = tokio::task::spawn_blocking(move || supervisor.already_active(&name, &spec))
            .await
            .map_err(|e| ApiError::internal(format!("slot {slot}: the check failed: {e}")))??;
        if let Some(generation) = same {
            let answer = crate::operator::AlreadyActive::new(&slot, generation.0);
            let text = wants_text(&headers).then(|| answer.text());
            return reply(StatusCode::OK, &answer, text);
        }
    }
    let supervisor = st.supervisor.clone();
    let task_slot = slot.clone();
    let operation = async move {
        let slot = &task_slot;
        match request {
            ReloadRequest::Candidate {
                spec,
                dry_run: false,
            } => {
                supervisor
                    .reload_with_bake(slot, tryswap::Mode::Activate, Some(spec), bake)
                    .await
            }
            ReloadRequest::Candidate {
                spec,
                dry_run: true,
            } => supervisor.try_activate(slot, spec).await,
            ReloadRequest::Rollback { to } => supervisor.rollback_with_bake(slot, to, bake).await,
        }
    };
    let report: ReloadReport = st
        .run_acting(origin, format!("slot {slot}: the reload task"), operation)
        .await?;
    report_reply(&st, &report, &headers)
}

/// A reload report as the answer: 200 active, 422 rolled back or reverted (the report),
/// with the journal's last sequence number in [`LAST_SEQ_HEADER`].
fn report_reply(st: &AppState, report: &ReloadReport, headers: &HeaderMap) -> ApiResult {
    let status = match report.outcome {
        Outcome::Active | Outcome::DryRunPassed => StatusCode::OK,
        Outcome::RolledBack | Outcome::Reverted | Outcome::InProgress => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    let text = wants_text(headers).then(|| render::reload_summary_text(report));
    let mut response = reply(status, report, text)?;
    let last = st.supervisor.journal().last_seq();
    response
        .headers_mut()
        .insert(LAST_SEQ_HEADER, HeaderValue::from(last));
    Ok(response)
}

async fn reload_status(State(st): St, Path(id): Path<String>, headers: HeaderMap) -> ApiResult {
    st.ready()?;
    let id: ReloadId = id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("reload id {id:?} is not a UUID: {e}")))?;
    let view = st
        .supervisor
        .journal()
        .reload(&id)
        .map_err(SupervisorError::from)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "unknown reload {id} (never made, or compacted away)"
            ))
        })?;
    let report = ReloadReport::from_view(&view, None, None);
    let text = wants_text(&headers).then(|| render::reload_summary_text(&report));
    reply(StatusCode::OK, &report, text)
}

#[derive(Serialize)]
struct Started<'a> {
    slot: &'a str,
    generation: u64,
    status: &'a StatusReport,
}

async fn start(
    State(st): St,
    Path(slot): Path<String>,
    peer: Option<Extension<PeerUid>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    st.ready()?;
    let slot = slot_name(&slot)?;
    let origin = api_origin(peer, &body)?;
    let supervisor = st.supervisor.clone();
    let task_slot = slot.clone();
    let generation = st
        .run_acting(origin, format!("slot {slot}: the start task"), async move {
            supervisor.start(&task_slot).await
        })
        .await?;
    let status = st.supervisor.status(Some(&slot))?;
    let text = wants_text(&headers).then(|| render::started_text(slot.as_str(), generation.0));
    let started = Started {
        slot: slot.as_str(),
        generation: generation.0,
        status: &status,
    };
    reply(StatusCode::OK, &started, text)
}

async fn stop(
    State(st): St,
    Path(slot): Path<String>,
    peer: Option<Extension<PeerUid>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    st.ready()?;
    let slot = slot_name(&slot)?;
    let origin = api_origin(peer, &body)?;
    let supervisor = st.supervisor.clone();
    let task_slot = slot.clone();
    let stopped = st
        .run_acting(origin, format!("slot {slot}: the stop task"), async move {
            supervisor.stop(&task_slot).await
        })
        .await?
        .map(|g| g.0);
    let text = wants_text(&headers).then(|| render::stopped_text(slot.as_str(), stopped));
    reply(
        StatusCode::OK,
        &render::stopped_json(slot.as_str(), stopped),
        text,
    )
}

/// `POST /v1/slots/{slot}/confirm`: ends the slot's bake with the candidate active.
async fn confirm(
    State(st): St,
    Path(slot): Path<String>,
    peer: Option<Extension<PeerUid>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let origin = api_origin(peer, &body)?;
    end_bake(st, slot, headers, origin, BakeEnd::Confirm).await
}

/// `POST /v1/slots/{slot}/revert`: ends the slot's bake with the standby serving again.
async fn revert(
    State(st): St,
    Path(slot): Path<String>,
    peer: Option<Extension<PeerUid>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let origin = api_origin(peer, &body)?;
    let reason = Reason::cancelled("reverted by hand (revert through the admin API)");
    end_bake(st, slot, headers, origin, BakeEnd::Revert(reason)).await
}

async fn end_bake(
    st: Arc<AppState>,
    slot: String,
    headers: HeaderMap,
    origin: Origin,
    end: BakeEnd,
) -> ApiResult {
    st.ready()?;
    let slot = slot_name(&slot)?;
    let supervisor = st.supervisor.clone();
    let task_slot = slot.clone();
    let report = st
        .run_acting(origin, format!("slot {slot}: the bake task"), async move {
            supervisor.end_bake(&task_slot, end).await
        })
        .await?;
    report_reply(&st, &report, &headers)
}

async fn recover(
    State(st): St,
    peer: Option<Extension<PeerUid>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    st.ready()?;
    let origin = api_origin(peer, &body)?;
    let supervisor = st.supervisor.clone();
    let report = st
        .run_acting(origin, "the recovery task", async move {
            supervisor.recover().await
        })
        .await?;
    let text = wants_text(&headers).then(|| render::recovery_text(&report));
    reply(StatusCode::OK, &report, text)
}

async fn config_reload(
    State(st): St,
    peer: Option<Extension<PeerUid>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    st.ready()?;
    let dry_run = parse_config_reload_body(&body)?;
    let origin = api_origin(peer, &body)?;
    let state = Arc::clone(&st);
    let report = st
        .run_acting(origin, "the config reload task", async move {
            state.reload_config(dry_run).await
        })
        .await?;
    let status = match report.outcome {
        ConfigOutcome::RolledBack => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    let text = wants_text(&headers).then(|| render::config_reload_text(&report));
    reply(status, &report, text)
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// First record sequence number to send (default: only new records).
    pub from: Option<u64>,
    /// Keep streaming (default true); false ends after the current backlog.
    pub follow: Option<bool>,
    /// Only this slot.
    pub slot: Option<String>,
    /// Only this reload's records.
    pub reload: Option<String>,
}

async fn events(
    State(st): St,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A reconnecting EventSource resumes after the last record it saw.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|seq| seq + 1);
    if st.shutdown.is_cancelled() {
        st.ready()?;
    }
    let filter = events::Filter {
        slot: query.slot.as_deref().map(slot_name).transpose()?,
        reload: query
            .reload
            .as_deref()
            .map(|r| {
                r.parse::<ReloadId>().map_err(|e| {
                    ApiError::bad_request(format!("query `reload`: {r:?} is not a UUID: {e}"))
                })
            })
            .transpose()?,
    };
    let stream = events::stream(
        st.supervisor.clone(),
        st.monitor.get().map(Monitor::subscribe),
        query.from.or(resume),
        query.follow.unwrap_or(true),
        filter,
        st.shutdown.clone(),
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn monitor(State(st): St) -> ApiResult {
    st.ready()?;
    let slots = st.monitor.get().map(Monitor::health).unwrap_or_default();
    reply(StatusCode::OK, &serde_json::json!({"slots": slots}), None)
}

/// `GET /v1/journal/verify`: the verify report; the CLI's exit code (0 ok, 4 corrupt) in
/// [`EXIT_CODE_HEADER`].
async fn journal_verify(State(st): St, headers: HeaderMap) -> ApiResult {
    st.ready()?;
    let report = st
        .supervisor
        .journal()
        .verify()
        .map_err(SupervisorError::from)?;
    let text = wants_text(&headers).then(|| crate::journal_cmd::verify_text(&report));
    let output = crate::journal_cmd::VerifyOutput {
        report: &report,
        index_checked: true,
    };
    let mut response = reply(StatusCode::OK, &output, text)?;
    response.headers_mut().insert(
        EXIT_CODE_HEADER,
        HeaderValue::from(u16::from(crate::journal_cmd::verify_code(&report))),
    );
    Ok(response)
}

/// Query of `GET /v1/journal/replay`.
#[derive(Debug, Deserialize)]
pub struct ReplayQuery {
    /// Last sequence number to apply.
    pub until: u64,
}

/// `GET /v1/journal/replay?until=SEQ`: every slot and reload as of `SEQ`.
async fn journal_replay(State(st): St, Query(query): Query<ReplayQuery>) -> ApiResult {
    st.ready()?;
    let state = st
        .supervisor
        .journal()
        .replay(query.until)
        .map_err(SupervisorError::from)?;
    reply(StatusCode::OK, &state, None)
}

/// `POST /v1/journal/compact` with `{"keep": N}` (default 100).
async fn journal_compact(State(st): St, headers: HeaderMap, body: Bytes) -> ApiResult {
    st.ready()?;
    let keep = parse_compact_body(&body)?;
    let supervisor = st.supervisor.clone();
    let report = st
        .tasks
        .spawn_blocking(move || {
            let report = supervisor.journal().compact(keep);
            super::allocator::give_back();
            report
        })
        .await
        .map_err(|e| ApiError::internal(format!("the compaction task failed: {e}")))?
        .map_err(SupervisorError::from)?;
    let text = wants_text(&headers).then(|| crate::journal_cmd::compact_text(&report));
    reply(StatusCode::OK, &report, text)
}

/// `POST /v1/store/gc`: `tryswap store gc`.
async fn store_gc(State(st): St, headers: HeaderMap) -> ApiResult {
    st.ready()?;
    let supervisor = st.supervisor.clone();
    let report = st
        .tasks
        .spawn(async move { supervisor.store_gc().await })
        .await
        .map_err(|e| ApiError::internal(format!("the store gc task failed: {e}")))??;
    let text = wants_text(&headers).then(|| render::store_gc_text(&report));
    reply(StatusCode::OK, &report, text)
}

/// The admin socket's path: `admin.socket`, relative to the state directory.
pub fn socket_path(state_dir: &FsPath, admin: &AdminConfig) -> PathBuf {
    if admin.socket.is_absolute() {
        admin.socket.clone()
    } else {
        state_dir.join(&admin.socket)
    }
}
