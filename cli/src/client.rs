//! The admin API client: how the CLI runs its commands through a daemon that serves the
//! state directory (DESIGN.md: "If a daemon is serving the state dir, commands go through
//! its socket … Same output either way").
//!
//! The daemon renders the same JSON and text the CLI prints without it (`Accept:
//! text/plain` for text), and error answers carry the CLI's exit code, so output and exit
//! codes match the direct path. Live progress lines of a reload come from `/v1/events`
//! (records of the slot from the moment the request is made, up to the journal's end when
//! the reload answered).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::http::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::UnixStream;
use tryswap::MonitorEvent;
use tryswap_fsm::SlotName;
use tryswap_journal::Record;

use crate::args::{Command, JournalCommand};
use crate::daemon::server::{EXIT_CODE_HEADER, LAST_SEQ_HEADER};
use crate::{render, CliError, Context, EXIT_ERROR, EXIT_OK, EXIT_REJECTED};

/// How long a command waits for a daemon that is still running recovery.
const READY_WAIT: Duration = Duration::from_secs(120);
/// How long a reload's progress lines may lag behind its answer.
const PROGRESS_WAIT: Duration = Duration::from_secs(5);

/// A connection factory for the daemon's admin socket.
pub struct Client {
    socket: PathBuf,
}

/// One answer of the daemon.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `x-tryswap-last-seq`, when present.
    pub last_seq: Option<u64>,
    /// `x-tryswap-exit-code`, when present.
    pub exit_code: Option<u8>,
    /// The body.
    pub body: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    exit_code: u8,
}

impl Reply {
    /// The CLI error this (failed) answer stands for.
    pub fn error(&self) -> CliError {
        match serde_json::from_str::<ErrorBody>(&self.body) {
            Ok(e) => CliError::new(e.exit_code, e.error),
            Err(_) => CliError::new(
                EXIT_ERROR,
                format!("the daemon answered {}: {}", self.status, self.body.trim()),
            ),
        }
    }
}

fn daemon_error(socket: &Path) -> impl Fn(String) -> CliError + '_ {
    move |e| {
        CliError::new(
            EXIT_ERROR,
            format!("talking to the daemon at {}: {e}", socket.display()),
        )
    }
}

/// Refuses a daemon socket that someone else could have bound: before anything is sent,
/// the socket file's owner and the peer's `SO_PEERCRED` uid must both be the invoking user
/// or root. Otherwise another user who bound the path first could answer our commands with
/// forged results.
fn trusted_peer(socket: &Path, stream: &UnixStream) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::getuid().as_raw();
    let trusted = |uid: u32| uid == me || uid == 0;
    let owner = std::fs::metadata(socket)
        .map_err(|e| format!("cannot check who owns the socket: {e}"))?
        .uid();
    if !trusted(owner) {
        return Err(format!(
            "refusing to talk to it: the socket belongs to uid {owner}, not to you (uid {me}) \
             or root"
        ));
    }
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the daemon's credentials: {e}"))?
        .uid();
    if !trusted(peer) {
        return Err(format!(
            "refusing to talk to it: the process serving it runs as uid {peer}, not as you \
             (uid {me}) or root"
        ));
    }
    Ok(())
}

/// Server-sent events of `/v1/events`, one at a time.
pub struct EventStream {
    body: Incoming,
    buf: Vec<u8>,
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// `record` or `monitor`.
    pub event: String,
    /// The record's sequence number, for records.
    pub id: Option<String>,
    /// The JSON payload.
    pub data: String,
}

/// Parses the first complete event out of `buf` (removing it), skipping comment-only
/// blocks (keep-alives).
fn parse_event(buf: &mut Vec<u8>) -> Option<SseEvent> {
    loop {
        let end = buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&block);
        let mut event = SseEvent {
            event: "message".to_owned(),
            id: None,
            data: String::new(),
        };
        let mut has_data = false;
        for line in text.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => event.event = value.to_owned(),
                "id" => event.id = Some(value.to_owned()),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
        if has_data {
            return Some(event);
        }
    }
}

impl EventStream {
    /// The next event; `None` when the daemon ended the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, CliError> {
        loop {
            if let Some(event) = parse_event(&mut self.buf) {
                return Ok(Some(event));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(CliError::new(
                        EXIT_ERROR,
                        format!("reading the daemon's event stream: {e}"),
                    ))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

impl Client {
    /// A client for the daemon answering on `socket`, if one does.
    pub async fn detect(socket: &Path) -> Option<Client> {
        crate::daemon::socket_answers(socket).await.then(|| Client {
            socket: socket.to_path_buf(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        text: bool,
    ) -> Result<hyper::Response<Incoming>, CliError> {
        let fail = daemon_error(&self.socket);
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| fail(e.to_string()))?;
        trusted_peer(&self.socket, &stream).map_err(&fail)?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin API connection");
            }
        });
        let accept = if text {
            "text/plain"
        } else {
            "application/json"
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, accept);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .map_err(|e| fail(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| fail(e.to_string()))
    }

    /// Sends one request and reads the whole answer. Waits (bounded) while the daemon is
    /// still running recovery.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        text: bool,
    ) -> Result<Reply, CliError> {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let response = self.send(method.clone(), path, body, text).await?;
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let last_seq = header(LAST_SEQ_HEADER).and_then(|v| v.parse().ok());
            let exit_code = header(EXIT_CODE_HEADER).and_then(|v| v.parse().ok());
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| daemon_error(&self.socket)(e.to_string()))?
                .to_bytes();
            let body = String::from_utf8_lossy(&bytes).into_owned();
            let recovering = status == StatusCode::SERVICE_UNAVAILABLE && body.contains("recovery");
            if recovering && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Ok(Reply {
                status,
                last_seq,
                exit_code,
                body,
            });
        }
    }

    /// Opens `/v1/events…` (`path` with its query).
    pub async fn events(&self, path: &str) -> Result<EventStream, CliError> {
        let response = self.send(Method::GET, path, None, false).await?;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Reply {
                status,
                last_seq: None,
                exit_code: None,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }
            .error());
        }
        Ok(EventStream {
            body: response.into_body(),
            buf: Vec::new(),
        })
    }
}

/// Adds `--bake` to a reload body: the daemon parses the same duration syntax.
fn with_bake(body: &mut serde_json::Value, bake: Option<Duration>) {
    if let (Some(bake), Some(map)) = (bake, body.as_object_mut()) {
        let text = format!("{}ms", bake.as_millis());
        map.insert("bake".to_owned(), serde_json::Value::String(text));
    }
}

/// Prints a successful answer's body as the command's output.
fn print_body(body: &str) -> Result<(), CliError> {
    render::out_line(body)
}

/// Succeeds on 2xx, else the CLI error of the answer.
fn ok(reply: Reply) -> Result<Reply, CliError> {
    if reply.status.is_success() {
        Ok(reply)
    } else {
        Err(reply.error())
    }
}

/// `body` with the command's `--reason` as its `"reason"` field.
fn with_reason(mut body: serde_json::Value, ctx: &Context) -> serde_json::Value {
    if let (Some(reason), Some(map)) = (&ctx.reason, body.as_object_mut()) {
        map.insert("reason".to_owned(), reason.clone().into());
    }
    body
}

/// `{"reason": …}` for a request that has no other body, when `--reason` was given.
fn reason_body(ctx: &Context) -> Option<String> {
    ctx.reason
        .as_ref()
        .map(|_| with_reason(serde_json::json!({}), ctx).to_string())
}

/// Runs `command` through the daemon. Same output and exit codes as without it.
pub async fn run(client: &Client, ctx: &Context, command: &Command) -> Result<u8, CliError> {
    let text = !ctx.json;
    match command {
        Command::Activate {
            slot,
            artifact,
            config_file,
            force,
            bake,
        } => {
            let mut body = serde_json::json!({
                "artifact": crate::absolute(artifact),
                "config_file": config_file.as_deref().map(crate::absolute),
                "dry_run": false,
            });
            with_bake(&mut body, *bake);
            reload(client, ctx, slot, &body, *force).await
        }
        Command::Try {
            slot,
            artifact,
            config_file,
        } => {
            let body = serde_json::json!({
                "artifact": crate::absolute(artifact),
                "config_file": config_file.as_deref().map(crate::absolute),
                "dry_run": true,
            });
            reload(client, ctx, slot, &body, true).await
        }
        Command::Rollback { slot, to, bake } => {
            let mut body = match to {
                Some(g) => serde_json::json!({ "rollback_to": g }),
                None => serde_json::json!({ "rollback": true }),
            };
            with_bake(&mut body, *bake);
            reload(client, ctx, slot, &body, true).await
        }
        Command::Status { slot } => {
            let path = slot
                .as_ref()
                .map_or_else(|| "/v1/slots".to_owned(), |s| format!("/v1/slots/{s}"));
            let reply = ok(client.call(Method::GET, &path, None, text).await?)?;
            if slot.is_some() && !text {
                // The same `{"schema":1,"slots":[…]}` shape as without a daemon.
                let mut one: serde_json::Value =
                    serde_json::from_str(&reply.body).map_err(|e| {
                        CliError::new(
                            EXIT_ERROR,
                            format!("the daemon's answer is not understood: {e}"),
                        )
                    })?;
                if let Some(map) = one.as_object_mut() {
                    map.remove("schema");
                }
                render::json(&serde_json::json!({ "slots": [one] }))?;
            } else {
                print_body(&reply.body)?;
            }
            Ok(EXIT_OK)
        }
        Command::History {
            slot,
            limit,
            since,
            timeline,
        } => {
            let query = crate::operator::HistoryQuery::new(*limit, *since, *timeline);
            let path = format!("/v1/slots/{slot}/history{}", query.to_query());
            let reply = ok(client.call(Method::GET, &path, None, text).await?)?;
            print_body(&reply.body)?;
            Ok(EXIT_OK)
        }
        Command::Start { slot } => {
            ctx.slot(slot)?;
            let path = format!("/v1/slots/{slot}/start");
            let body = reason_body(ctx);
            let reply = ok(client
                .call(Method::POST, &path, body.as_deref(), text)
                .await?)?;
            if text {
                print_body(&reply.body)?;
            } else {
                #[derive(Deserialize)]
                struct Started<'a> {
                    #[serde(borrow)]
                    status: &'a RawValue,
                }
                let started: Started = serde_json::from_str(&reply.body).map_err(|e| {
                    CliError::new(
                        EXIT_ERROR,
                        format!("the daemon's answer is not understood: {e}"),
                    )
                })?;
                let status: serde_json::Value = serde_json::from_str(started.status.get())
                    .map_err(|e| {
                        CliError::new(
                            EXIT_ERROR,
                            format!("the daemon's answer is not understood: {e}"),
                        )
                    })?;
                render::json(&status)?;
            }
            Ok(EXIT_OK)
        }
        Command::Stop { slot } => {
            ctx.slot(slot)?;
            let path = format!("/v1/slots/{slot}/stop");
            let body = reason_body(ctx);
            let reply = ok(client
                .call(Method::POST, &path, body.as_deref(), text)
                .await?)?;
            print_body(&reply.body)?;
            Ok(EXIT_OK)
        }
        Command::Confirm { slot } | Command::Revert { slot } => {
            ctx.slot(slot)?;
            let verb = match command {
                Command::Confirm { .. } => "confirm",
                _ => "revert",
            };
            let path = format!("/v1/slots/{slot}/{verb}");
            let body = reason_body(ctx);
            print_report(
                client
                    .call(Method::POST, &path, body.as_deref(), text)
                    .await?,
            )
        }
        Command::Recover {
            stop_unknown,
            adopt,
        } if *stop_unknown || *adopt => Err(CliError::new(
            crate::EXIT_ERROR,
            format!(
                "recover --{} is not supported through the daemon (a daemon never starts on a \
                 journal older than its processes)",
                if *adopt { "adopt" } else { "stop-unknown" }
            ),
        )),
        Command::Recover { .. } => {
            let body = reason_body(ctx);
            let reply = ok(client
                .call(Method::POST, "/v1/recover", body.as_deref(), text)
                .await?)?;
            print_body(&reply.body)?;
            Ok(EXIT_OK)
        }
        Command::ReloadConfig { dry_run } => {
            let body = with_reason(serde_json::json!({ "dry_run": dry_run }), ctx).to_string();
            let reply = client
                .call(Method::POST, "/v1/config/reload", Some(&body), text)
                .await?;
            match reply.status {
                StatusCode::OK => {
                    print_body(&reply.body)?;
                    Ok(EXIT_OK)
                }
                StatusCode::UNPROCESSABLE_ENTITY => {
                    print_body(&reply.body)?;
                    Ok(EXIT_REJECTED)
                }
                _ => Err(reply.error()),
            }
        }
        Command::Events { from, follow } => events_remote(client, ctx, *from, *follow).await,
        Command::Journal { command } => journal(client, ctx, command).await,
        Command::Store {
            command: crate::args::StoreCommand::Gc,
        } => {
            let reply = ok(client
                .call(Method::POST, "/v1/store/gc", None, text)
                .await?)?;
            print_body(&reply.body)?;
            Ok(EXIT_OK)
        }
        Command::Serve { .. }
        | Command::Logs { .. }
        | Command::Report { .. }
        | Command::Completions { .. }
        | Command::Man => Err(CliError::new(
            EXIT_ERROR,
            "internal error: this command does not go through the daemon",
        )),
    }
}

/// `tryswap journal …` through the daemon (which holds the journal).
async fn journal(client: &Client, ctx: &Context, command: &JournalCommand) -> Result<u8, CliError> {
    let text = !ctx.json;
    match command {
        JournalCommand::Show { from } => journal_records(client, *from, text).await,
        JournalCommand::Export { salvage: true } => crate::journal_cmd::salvage(ctx),
        JournalCommand::Export { salvage: false } => journal_records(client, 0, false).await,
        JournalCommand::Rebuild => Err(CliError::new(
            crate::EXIT_CONFLICT,
            "the daemon holds the journal: stop `tryswap serve`, then run `tryswap journal \
             rebuild` (the daemon's next open rebuilds a damaged index by itself)",
        )),
        JournalCommand::Verify => {
            let reply = ok(client
                .call(Method::GET, "/v1/journal/verify", None, text)
                .await?)?;
            print_body(&reply.body)?;
            Ok(reply.exit_code.unwrap_or(EXIT_OK))
        }
        JournalCommand::Replay { until } => {
            let path = format!("/v1/journal/replay?until={until}");
            let reply = ok(client.call(Method::GET, &path, None, false).await?)?;
            print_body(&reply.body)?;
            Ok(EXIT_OK)
        }
        JournalCommand::Compact { keep, .. } => {
            let body = serde_json::json!({ "keep": keep }).to_string();
            let reply = ok(client
                .call(Method::POST, "/v1/journal/compact", Some(&body), text)
                .await?)?;
            print_body(&reply.body)?;
            Ok(EXIT_OK)
        }
    }
}

/// `journal show` (`human`: its text lines) and `journal export` (the records' JSON).
async fn journal_records(client: &Client, from: u64, human: bool) -> Result<u8, CliError> {
    let path = format!("/v1/events?follow=false&from={}", from.max(1));
    let mut stream = client.events(&path).await?;
    while let Some(event) = stream.next().await? {
        if event.event != "record" {
            continue;
        }
        if human {
            let record: Record = serde_json::from_str(&event.data).map_err(|e| {
                CliError::new(
                    EXIT_ERROR,
                    format!("the daemon sent a record that is not understood: {e}"),
                )
            })?;
            render::out_line(&crate::journal_cmd::show_line(&record))?;
        } else {
            render::out_line(&event.data)?;
        }
    }
    Ok(EXIT_OK)
}

async fn reload(
    client: &Client,
    ctx: &Context,
    slot: &SlotName,
    body: &serde_json::Value,
    force: bool,
) -> Result<u8, CliError> {
    ctx.slot(slot)?;
    let text = !ctx.json;
    // Subscribe before asking, so every record of the reload is seen; print each as it
    // is appended while the reload runs, with a heartbeat inside long stages.
    let mut progress = match text {
        true => Some(client.events(&format!("/v1/events?slot={slot}")).await?),
        false => None,
    };
    let mut printer = render::ProgressPrinter::new(ctx.config.slot(slot));
    let path = if force {
        format!("/v1/slots/{slot}/reloads?force=true")
    } else {
        format!("/v1/slots/{slot}/reloads")
    };
    let body = with_reason(body.clone(), ctx).to_string();
    let post = client.call(Method::POST, &path, Some(&body), text);
    tokio::pin!(post);
    let mut reply: Option<Reply> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut baking = None;
    let mut bake_line = std::time::Instant::now();
    while let Some(stream) = progress.as_mut() {
        tokio::select! {
            answered = &mut post, if reply.is_none() => {
                let answered = answered?;
                if !answered.status.is_success()
                    && answered.status != StatusCode::UNPROCESSABLE_ENTITY
                {
                    render::out(&printer.done())?;
                    return Err(answered.error());
                }
                let done = answered.last_seq.is_none();
                reply = Some(answered);
                drain_until = Some(tokio::time::Instant::now() + PROGRESS_WAIT);
                if done {
                    break;
                }
            }
            event = stream.next() => {
                let Some(event) = event? else { break };
                if event.event != "record" {
                    continue;
                }
                let Ok(record) = serde_json::from_str::<Record>(&event.data) else {
                    continue;
                };
                render::out(&printer.record(&record))?;
                render::bake_deadline(&record, &mut baking);
                if reply
                    .as_ref()
                    .and_then(|r| r.last_seq)
                    .is_some_and(|last| record.seq >= last)
                {
                    break;
                }
            }
            _ = tick.tick() => {
                if let Some(until) = baking.filter(|_| reply.is_none() && bake_line.elapsed().as_secs() >= 1) {
                    bake_line = std::time::Instant::now();
                    render::out(&render::bake_left_line(until))?;
                } else if reply.is_none() {
                    if let Some(beat) = printer.heartbeat() {
                        render::out(&beat)?;
                    }
                }
                if drain_until.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    tracing::warn!("progress lines: the event stream lagged behind the answer");
                    break;
                }
            }
        }
    }
    drop(progress);
    let reply = match reply {
        Some(reply) => reply,
        None => post.await?,
    };
    render::out(&printer.done())?;
    print_report(reply)
}

/// Prints a reload report answer: exit 0 when 200, 2 when 422 (rolled back or reverted),
/// else the answer's error.
fn print_report(reply: Reply) -> Result<u8, CliError> {
    let code = match reply.status {
        StatusCode::OK => EXIT_OK,
        StatusCode::UNPROCESSABLE_ENTITY => EXIT_REJECTED,
        _ => return Err(reply.error()),
    };
    print_body(&reply.body)?;
    Ok(code)
}

/// One event of `tryswap events` as a line (without newline).
fn event_line(json: bool, event: &SseEvent) -> Option<String> {
    if json {
        let name = serde_json::to_string(&event.event).ok()?;
        return Some(format!(
            "{{\"schema\":{},\"event\":{name},\"data\":{}}}",
            render::SCHEMA,
            event.data
        ));
    }
    match event.event.as_str() {
        "record" => serde_json::from_str::<Record>(&event.data)
            .ok()
            .map(|r| record_line(&r)),
        "monitor" => serde_json::from_str::<MonitorEvent>(&event.data)
            .ok()
            .map(|m| {
                format!(
                    "{:>8}  {}  {:<16} {:<15} {}",
                    "-",
                    m.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    m.slot,
                    m.kind.name(),
                    m.kind
                )
            }),
        _ => None,
    }
}

fn record_line(record: &Record) -> String {
    let detail = render::detail(&record.event);
    format!(
        "{:>8}  {}  {:<16} {:<15} {}",
        record.seq,
        record.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        record.slot,
        record.event.name(),
        detail
    )
}

async fn events_remote(
    client: &Client,
    ctx: &Context,
    from: Option<u64>,
    follow: bool,
) -> Result<u8, CliError> {
    let from = if follow {
        from
    } else {
        Some(from.unwrap_or(1))
    };
    let mut path = format!("/v1/events?follow={follow}");
    if let Some(from) = from {
        path.push_str(&format!("&from={from}"));
    }
    let mut stream = client.events(&path).await?;
    let interrupted = crate::interrupted();
    tokio::pin!(interrupted);
    let gone = |why: String| {
        CliError::new(
            EXIT_ERROR,
            format!(
                "the daemon serving {} went away ({why}); events may have been missed \
                 (`tryswap events --follow --from SEQ` resumes after the last seq printed)",
                ctx.state_dir.display()
            ),
        )
    };
    loop {
        let event = tokio::select! {
            event = stream.next() => event.map_err(|e| gone(e.message)),
            _ = &mut interrupted => return Ok(EXIT_OK),
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) if follow => return Err(gone("the event stream ended".to_owned())),
            Ok(None) => return Ok(EXIT_OK),
            Err(e) if follow => return Err(e),
            Err(e) => return Err(e),
        };
        if let Some(line) = event_line(ctx.json, &event) {
            render::out_line(&line)?;
        }
    }
}

/// `tryswap events` without a daemon: the journal's records from `from` (no `--follow`).
pub async fn events_direct(ctx: &Context, from: Option<u64>, follow: bool) -> Result<u8, CliError> {
    if follow {
        return Err(CliError::new(
            EXIT_ERROR,
            format!(
                "events --follow needs a running daemon (`tryswap serve`) for {}; without one, `tryswap events` prints the journal's records",
                ctx.state_dir.display()
            ),
        ));
    }
    let dir = ctx.state_dir.join("journal");
    if !dir.exists() {
        return Ok(EXIT_OK);
    }
    let json = ctx.json;
    let line = |record: &Record| -> Result<String, CliError> {
        if json {
            let data = render::record_json(record, None)?;
            Ok(format!(
                "{{\"schema\":{},\"event\":\"record\",\"data\":{data}}}",
                render::SCHEMA
            ))
        } else {
            Ok(record_line(record))
        }
    };
    // From the log, with no lock and nothing written; a journal from before the log (it
    // has none) through sled.
    let from = from.unwrap_or(1);
    if crate::journal_cmd::print_log_records(&dir, from, line)?.is_some() {
        return Ok(EXIT_OK);
    }
    let journal = ctx.open_journal(&dir, false).await?;
    for record in journal.events(from) {
        render::out_line(&line(&record?)?)?;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_are_parsed_and_keep_alives_skipped() {
        let mut buf =
            b": keep-alive\n\nevent: record\nid: 7\ndata: {\"a\":1}\n\nevent: monitor\ndata: x\ndata: y\n\nevent: rec"
                .to_vec();
        assert_eq!(
            parse_event(&mut buf),
            Some(SseEvent {
                event: "record".into(),
                id: Some("7".into()),
                data: "{\"a\":1}".into()
            })
        );
        let second = parse_event(&mut buf).unwrap();
        assert_eq!(
            (second.event.as_str(), second.data.as_str()),
            ("monitor", "x\ny")
        );
        assert_eq!(parse_event(&mut buf), None);
        assert_eq!(buf, b"event: rec");
    }
}
