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

use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::http::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::UnixStream;
use tryswap::keepalive::MonitorEvent;
use tryswap_fsm::SlotName;
use tryswap_journal::{Journal, Record};

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

/// Prints a successful answer's body as the command's output.
fn print_body(body: &str) {
    if body.ends_with('\n') {
        print!("{body}");
    } else {
        println!("{body}");
    }
}

/// Succeeds on 2xx, else the CLI error of the answer.
fn ok(reply: Reply) -> Result<Reply, CliError> {
    if reply.status.is_success() {
        Ok(reply)
    } else {
        Err(reply.error())
    }
}

/// Runs `command` through the daemon. Same output and exit codes as without it.
pub async fn run(client: &Client, ctx: &Context, command: &Command) -> Result<u8, CliError> {
    let text = !ctx.json;
    match command {
        Command::Activate { bake: Some(_), .. } | Command::Rollback { bake: Some(_), .. } => {
            Err(CliError::new(
                crate::EXIT_ERROR,
                "--bake is not supported through the daemon yet: set `bake` on the slot, or stop \
                 the daemon to bake in the foreground",
            ))
        }
        Command::Activate {
            slot,
            artifact,
            config_file,
            ..
        }
        | Command::Try {
            slot,
            artifact,
            config_file,
        } => {
            let dry_run = matches!(command, Command::Try { .. });
            let body = serde_json::json!({
                "artifact": crate::absolute(artifact),
                "config_file": config_file.as_deref().map(crate::absolute),
                "dry_run": dry_run,
            });
            reload(client, ctx, slot, &body).await
        }
        Command::Rollback { slot, to, .. } => {
            let body = match to {
                Some(g) => serde_json::json!({ "rollback_to": g }),
                None => serde_json::json!({ "rollback": true }),
            };
            reload(client, ctx, slot, &body).await
        }
        Command::Status { slot } => {
            let path = slot
                .as_ref()
                .map_or_else(|| "/v1/slots".to_owned(), |s| format!("/v1/slots/{s}"));
            let reply = ok(client.call(Method::GET, &path, None, text).await?)?;
            if slot.is_some() && !text {
                // The same `{"slots":[…]}` shape as without a daemon.
                println!("{{\"slots\":[{}]}}", reply.body.trim());
            } else {
                print_body(&reply.body);
            }
            Ok(EXIT_OK)
        }
        Command::History { slot } => {
            let path = format!("/v1/slots/{slot}/history");
            let reply = ok(client.call(Method::GET, &path, None, text).await?)?;
            print_body(&reply.body);
            Ok(EXIT_OK)
        }
        Command::Start { slot } => {
            ctx.slot(slot)?;
            let path = format!("/v1/slots/{slot}/start");
            let reply = ok(client.call(Method::POST, &path, None, text).await?)?;
            if text {
                print_body(&reply.body);
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
                println!("{}", started.status.get());
            }
            Ok(EXIT_OK)
        }
        Command::Stop { slot } => {
            ctx.slot(slot)?;
            let path = format!("/v1/slots/{slot}/stop");
            let reply = ok(client.call(Method::POST, &path, None, text).await?)?;
            print_body(&reply.body);
            Ok(EXIT_OK)
        }
        Command::Confirm { .. } | Command::Revert { .. } => Err(CliError::new(
            crate::EXIT_ERROR,
            "confirm and revert are not supported through the daemon yet",
        )),
        Command::Recover => {
            let reply = ok(client.call(Method::POST, "/v1/recover", None, text).await?)?;
            print_body(&reply.body);
            Ok(EXIT_OK)
        }
        Command::ReloadConfig { dry_run } => {
            let body = serde_json::json!({ "dry_run": dry_run }).to_string();
            let reply = client
                .call(Method::POST, "/v1/config/reload", Some(&body), text)
                .await?;
            match reply.status {
                StatusCode::OK => {
                    print_body(&reply.body);
                    Ok(EXIT_OK)
                }
                StatusCode::UNPROCESSABLE_ENTITY => {
                    print_body(&reply.body);
                    Ok(EXIT_REJECTED)
                }
                _ => Err(reply.error()),
            }
        }
        Command::Events { from, follow } => events_remote(client, ctx, *from, *follow).await,
        Command::Journal { command } => journal(client, ctx, command).await,
        Command::Serve { .. } => Err(CliError::new(
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
        JournalCommand::Export => journal_records(client, 0, false).await,
        JournalCommand::Verify => {
            let reply = ok(client
                .call(Method::GET, "/v1/journal/verify", None, text)
                .await?)?;
            print_body(&reply.body);
            Ok(reply.exit_code.unwrap_or(EXIT_OK))
        }
        JournalCommand::Replay { until } => {
            let path = format!("/v1/journal/replay?until={until}");
            let reply = ok(client.call(Method::GET, &path, None, false).await?)?;
            print_body(&reply.body);
            Ok(EXIT_OK)
        }
        JournalCommand::Compact { keep } => {
            let body = serde_json::json!({ "keep": keep }).to_string();
            let reply = ok(client
                .call(Method::POST, "/v1/journal/compact", Some(&body), text)
                .await?)?;
            print_body(&reply.body);
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
            println!("{}", crate::journal_cmd::show_line(&record));
        } else {
            println!("{}", event.data);
        }
    }
    Ok(EXIT_OK)
}

async fn reload(
    client: &Client,
    ctx: &Context,
    slot: &SlotName,
    body: &serde_json::Value,
) -> Result<u8, CliError> {
    ctx.slot(slot)?;
    let text = !ctx.json;
    let started = Utc::now();
    // Subscribe before asking, so every record of the reload is seen.
    let mut progress = match text {
        true => Some(client.events(&format!("/v1/events?slot={slot}")).await?),
        false => None,
    };
    let path = format!("/v1/slots/{slot}/reloads");
    let reply = client
        .call(Method::POST, &path, Some(&body.to_string()), text)
        .await?;
    let code = match reply.status {
        StatusCode::OK => EXIT_OK,
        StatusCode::UNPROCESSABLE_ENTITY => EXIT_REJECTED,
        _ => return Err(reply.error()),
    };
    if let (Some(stream), Some(last_seq)) = (progress.as_mut(), reply.last_seq) {
        let mut last = Some(started);
        let printed = tokio::time::timeout(PROGRESS_WAIT, async {
            while let Some(event) = stream.next().await? {
                if event.event != "record" {
                    continue;
                }
                let Ok(record) = serde_json::from_str::<Record>(&event.data) else {
                    continue;
                };
                print!("{}", render::progress_text(&record, &mut last));
                if record.seq >= last_seq {
                    break;
                }
            }
            Ok::<(), CliError>(())
        })
        .await;
        if let Ok(Err(e)) = printed {
            tracing::warn!(error = %e, "progress lines");
        }
    }
    drop(progress);
    print_body(&reply.body);
    Ok(code)
}

/// One event of `tryswap events` as a line (without newline).
fn event_line(json: bool, event: &SseEvent) -> Option<String> {
    if json {
        let name = serde_json::to_string(&event.event).ok()?;
        return Some(format!("{{\"event\":{name},\"data\":{}}}", event.data));
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
    let mut detail = render::detail(&record.event);
    if let tryswap_fsm::EventKind::Stopped { reason, .. } = &record.event {
        let first = reason.message.lines().next().unwrap_or("");
        detail.push_str(&format!(" ({}): {first}", reason.kind.name()));
    }
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
    loop {
        let event = tokio::select! {
            event = stream.next() => event?,
            _ = &mut interrupted => return Ok(EXIT_OK),
        };
        let Some(event) = event else {
            return Ok(EXIT_OK);
        };
        if let Some(line) = event_line(ctx.json, &event) {
            println!("{line}");
        }
    }
}

/// `tryswap events` without a daemon: the journal's records from `from` (no `--follow`).
pub fn events_direct(ctx: &Context, from: Option<u64>, follow: bool) -> Result<u8, CliError> {
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
    let journal = Journal::open_for_inspection(&dir)?;
    for record in journal.events(from.unwrap_or(1)) {
        let record = record?;
        if ctx.json {
            let data = serde_json::to_string(&record).map_err(|e| {
                CliError::new(EXIT_ERROR, format!("encoding record {}: {e}", record.seq))
            })?;
            println!("{{\"event\":\"record\",\"data\":{data}}}");
        } else {
            println!("{}", record_line(&record));
        }
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
