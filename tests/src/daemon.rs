//! Running `tryswap serve` in tests: a guard that starts the daemon on a [`Harness`] and
//! always stops it (SIGTERM, then SIGKILL), plus a tiny HTTP/1.1 client for the admin API
//! over the Unix socket or TCP.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::{tryswap_path, Harness};
use crate::process::{send_signal, wait_until};

/// How long [`Daemon::start`] waits for `/healthz` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Harness {
    /// Appends `text` to the config file (e.g. a `[slot.restart]` table for the last slot,
    /// or an `[admin]` table).
    pub fn append_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(&self.config_path).expect("read config");
        config.push_str(text);
        std::fs::write(&self.config_path, config).expect("write config");
    }

    /// The admin socket (default `admin.socket`).
    pub fn socket(&self) -> PathBuf {
        self.state_dir.join("tryswap.sock")
    }
}

/// A `tryswap serve` process. Dropping it stops it: SIGTERM, then SIGKILL after 10 s.
pub struct Daemon {
    child: Child,
    status: Option<ExitStatus>,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `tryswap --config <cfg> serve ARGS…` with `env` added, without waiting.
    /// Its stderr (with `TRYSWAP_LOG=info`) goes to `<tmp>/daemon-<n>.log`.
    pub fn spawn(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::spawn_limited(h, args, env, None)
    }

    /// [`Daemon::start`] with `RLIMIT_NOFILE` set to `(soft, hard)` for the daemon.
    pub fn start_with_nofile(h: &Harness, soft: u64, hard: u64) -> Daemon {
        let daemon = Self::spawn_limited(h, &[], &[], Some((soft, hard)));
        daemon.wait_ready()
    }

    /// [`Daemon::spawn`], optionally with `RLIMIT_NOFILE` set to `(soft, hard)`.
    fn spawn_limited(
        h: &Harness,
        args: &[&str],
        env: &[(&str, &str)],
        nofile: Option<(u64, u64)>,
    ) -> Daemon {
        let mut n = 0;
        let log = loop {
            let candidate = h.state.join(format!("daemon-{n}.log"));
            if !candidate.exists() {
                break candidate;
            }
            n += 1;
        };
        let stderr = std::fs::File::create(&log).expect("create daemon log");
        let mut command = Command::new(tryswap_path());
        command
            .arg("--config")
            .arg(&h.config_path)
            .arg("serve")
            .args(args)
            .env_remove("TRYSWAP_STATE_DIR")
            .env_remove("NOTIFY_SOCKET")
            .env("TRYSWAP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and only reads the stack value.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft as libc::rlim_t,
                        rlim_max: hard as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("spawn tryswap serve");
        Daemon {
            child,
            status: None,
            socket: h.socket(),
            log,
        }
    }

    /// Starts the daemon and waits (bounded) until `/healthz` answers 200.
    pub fn start(h: &Harness) -> Daemon {
        Self::start_with(h, &[], &[])
    }

    /// [`Daemon::start`] with extra arguments and environment.
    pub fn start_with(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::spawn(h, args, env).wait_ready()
    }

    /// Waits (bounded) until `/healthz` answers 200; panics with the log if it does not.
    fn wait_ready(self) -> Daemon {
        let mut daemon = self;
        let ready = wait_until(READY_TIMEOUT, || {
            daemon.has_exited() || daemon.get("/healthz").is_ok_and(|r| r.status == 200)
        });
        assert!(
            ready && !daemon.has_exited(),
            "daemon did not become ready; log:\n{}",
            daemon.log()
        );
        daemon
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it exited (reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    /// Waits (bounded) for the exit; returns the status if it exited.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_until(limit, || self.has_exited());
        self.status
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        if !self.has_exited() {
            send_signal(self.pid(), Signal::SIGTERM);
        }
        self.wait(limit)
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) -> bool {
        send_signal(self.child.id(), signal)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if !self.has_exited() {
            send_signal(self.pid(), Signal::SIGKILL);
        }
        let _ = self.wait(Duration::from_secs(10));
    }

    /// `GET path` on the socket.
    pub fn get(&self, path: &str) -> std::io::Result<HttpReply> {
        http_unix(&self.socket, "GET", path, None, &[])
    }

    /// `POST path` with a JSON body on the socket.
    pub fn post(&self, path: &str, body: &str) -> std::io::Result<HttpReply> {
        http_unix(&self.socket, "POST", path, Some(body), &[])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.has_exited() {
            send_signal(self.pid(), Signal::SIGTERM);
            if self.wait(Duration::from_secs(10)).is_none() {
                send_signal(self.pid(), Signal::SIGKILL);
                let _ = self.wait(Duration::from_secs(5));
            }
        }
    }
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: String,
}

impl HttpReply {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {} {}", self.status, self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn request_text(method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        text.push_str("Content-Type: application/json\r\n");
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

fn parse_reply(raw: &[u8]) -> std::io::Result<HttpReply> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    }
    Ok(HttpReply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn exchange<S: Read + Write>(mut stream: S, request: &str) -> std::io::Result<HttpReply> {
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_reply(&raw)
}

/// One request on the Unix socket `socket` (`Connection: close`; 60 s timeouts).
pub fn http_unix(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpReply> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    exchange(stream, &request_text(method, path, body, headers))
}

/// One request over TCP to `addr` (`Connection: close`; 60 s timeouts).
pub fn http_tcp(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpReply> {
    let stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    exchange(stream, &request_text(method, path, body, headers))
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race is possible).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Every journal record (with `seq`, `slot`, `event`) the daemon streams from `from`,
/// up to the journal's end, through `GET /v1/events?follow=false`.
pub fn records(socket: &Path, from: u64) -> Vec<Value> {
    let reply = http_unix(
        socket,
        "GET",
        &format!("/v1/events?follow=false&from={from}"),
        None,
        &[],
    )
    .expect("GET /v1/events");
    assert_eq!(reply.status, 200, "{reply:?}");
    sse_data(&reply.body, "record")
        .iter()
        .map(|d| serde_json::from_str(d).expect("record JSON"))
        .collect()
}

/// The `data` of every event named `event` in a server-sent-events text.
pub fn sse_data(text: &str, event: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = "message";
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if name == event && !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    out
}

/// The name of a record's event: the key of its externally tagged `event` (or the string
/// itself for unit variants such as `Probed`).
pub fn event_name(record: &Value) -> String {
    match &record["event"] {
        Value::String(s) => s.clone(),
        Value::Object(map) => map.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Polls `f` every 50 ms until it returns `Some`, at most `limit`.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
