//! Draining go-plugin's stdio stream (`plugin.GRPCStdio/StreamStdio`) into the log files.
//!
//! After printing its handshake, go-plugin's `Serve` replaces the plugin's `os.Stdout` and
//! `os.Stderr` with pipes and serves whatever is written to them through the gRPC service
//! `plugin.GRPCStdio`. Its copier hands every chunk over an unbuffered channel, so when no
//! host drains the stream the pipes fill up (~64 KiB) and every later write to
//! `os.Stdout`/`os.Stderr` in the plugin blocks. [`drain_stdio`] is the host's side: it
//! reads the stream and appends STDOUT chunks to the generation's `<generation>.stdout` file
//! and STDERR chunks to its `<generation>.log` file, within the slot's `log_max_bytes`.
//!
//! [`running_drains`] tells how many drains of a reload's instances run in this process.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tryswap_fsm::{Endpoint, ReloadId};

use crate::probe::{grpc_channel, ProbeError};

/// gRPC method of go-plugin's stdio stream (`google.protobuf.Empty` → `stream StdioData`).
pub const GRPC_STDIO_STREAM: &str = "/plugin.GRPCStdio/StreamStdio";

/// The line written (once, to the `.log` file) when a drain reaches `log_max_bytes`.
pub const LIMIT_MARKER: &str = "[tryswap: log_max_bytes reached, plugin stdio dropped]";

/// How long a drain keeps reading after the plugin's process exited (what it wrote last is
/// usually still in flight).
pub const EXIT_GRACE: Duration = Duration::from_millis(250);

/// The request timeout of the drain's channel. [`grpc_channel`] bounds every request,
/// including the wait for a streaming response's headers, and go-plugin (grpc-go) sends
/// those only with the first chunk, which may come hours later or never: so the channel
/// gets a practically unbounded request timeout and the connect is bounded separately.
const STREAM_REQUEST_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// One chunk of go-plugin's stdio stream (`plugin.StdioData`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StdioData {
    /// Which stream the bytes were written to: a [`StdioChannel`] value.
    #[prost(enumeration = "StdioChannel", tag = "1")]
    pub channel: i32,
    /// The bytes, as the plugin wrote them.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// `plugin.StdioData.Channel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StdioChannel {
    /// Not set; such chunks are dropped.
    Invalid = 0,
    /// Written to `os.Stdout`.
    Stdout = 1,
    /// Written to `os.Stderr`.
    Stderr = 2,
}

/// Where a drain writes, and how much it may write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StdioSinks {
    /// Receives STDOUT chunks (the generation's `.stdout` file); appended to.
    pub stdout_path: PathBuf,
    /// Receives STDERR chunks and the [`LIMIT_MARKER`] (the generation's `.log`); appended to.
    pub stderr_path: PathBuf,
    /// How many bytes this drain may append in total (both files); 0 = unlimited. Beyond
    /// it chunks are still read from the stream (the plugin must not block) but dropped.
    pub max_bytes: u64,
}

/// Why a drain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// The plugin does not serve `plugin.GRPCStdio` (it answered with this code).
    NotServed {
        /// `Unimplemented` or `Unavailable`.
        code: tonic::Code,
    },
    /// The plugin ended the stream.
    StreamEnded,
    /// The stream broke (typically: the plugin went away).
    StreamFailed {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The plugin's process exited (and [`EXIT_GRACE`] passed).
    ProcessExited,
}

/// What a drain did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainSummary {
    /// Bytes appended to the stdout file.
    pub stdout_bytes: u64,
    /// Bytes appended to the `.log` file (the limit marker not included).
    pub stderr_bytes: u64,
    /// Bytes read from the stream but not written: beyond the limit, of an unknown
    /// channel, or whose write failed.
    pub dropped_bytes: u64,
    /// Why it ended.
    pub end: DrainEnd,
}

impl DrainSummary {
    fn new(end: DrainEnd) -> Self {
        DrainSummary {
            stdout_bytes: 0,
            stderr_bytes: 0,
            dropped_bytes: 0,
            end,
        }
    }
}

/// Why a drain could not start.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// No connection to the plugin.
    #[error("stdio stream: {0}")]
    Connect(#[from] ProbeError),
    /// The plugin refused the stream with a status other than Unimplemented/Unavailable.
    #[error("stdio stream at {target} refused: {code:?}: {message}")]
    Refused {
        /// `tcp:host:port` or `unix:/path`.
        target: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

/// Drains `plugin.GRPCStdio/StreamStdio` of the plugin at `endpoint` into `sinks` until the
/// stream ends or `exited` completes (the plugin's process is gone; reading then goes on
/// for at most [`EXIT_GRACE`]).
///
/// Connecting is bounded by `connect_timeout`; the stream itself is not. A plugin that
/// answers `Unimplemented` (it does not serve the service) or `Unavailable` at the start
/// ends the drain quietly with [`DrainEnd::NotServed`]. Files are opened once the stream is
/// open; a file that cannot be opened or written to is reported with one `warn` and its
/// chunks are dropped (the stream is still drained, so the plugin never blocks). Files are
/// written with blocking `write` calls, one per chunk (go-plugin's chunks are ≤ 1 KiB).
pub async fn drain_stdio<F>(
    endpoint: &Endpoint,
    channel: Option<Channel>,
    sinks: &StdioSinks,
    connect_timeout: Duration,
    exited: F,
) -> Result<DrainSummary, StdioError>
where
    F: Future<Output = ()>,
{
    let target = format!("{}:{}", endpoint.network, endpoint.address);
    tokio::pin!(exited);
    let open = open_stream(endpoint, channel, &target, connect_timeout);
    let opened = tokio::select! {
        opened = open => opened,
        () = &mut exited => return Ok(DrainSummary::new(DrainEnd::ProcessExited)),
    };
    let mut stream = match opened? {
        Ok(stream) => stream,
        Err(code) => {
            tracing::debug!(%target, ?code, "plugin does not serve plugin.GRPCStdio");
            return Ok(DrainSummary::new(DrainEnd::NotServed { code }));
        }
    };
    tracing::debug!(%target, "draining the plugin's stdio stream");
    let mut writer = Writer::open(sinks);
    let mut exit_deadline: Option<Instant> = None;
    let end = loop {
        let next = match exit_deadline {
            None => tokio::select! {
                next = stream.message() => next,
                () = &mut exited => {
                    exit_deadline = Some(Instant::now() + EXIT_GRACE);
                    continue;
                }
            },
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(next) => next,
                Err(_) => break DrainEnd::ProcessExited,
            },
        };
        match next {
            Ok(Some(chunk)) => writer.write(chunk),
            Ok(None) => break DrainEnd::StreamEnded,
            Err(status) if exit_deadline.is_some() => {
                tracing::trace!(code = ?status.code(), "stdio stream broke after the plugin exited");
                break DrainEnd::ProcessExited;
            }
            Err(status) => {
                break DrainEnd::StreamFailed {
                    code: status.code(),
                    message: status.message().to_owned(),
                }
            }
        }
    };
    let mut summary = writer.summary;
    summary.end = end;
    Ok(summary)
}

/// Opens the stream: `Ok(Ok(stream))`, `Ok(Err(code))` when the plugin does not serve it.
async fn open_stream(
    endpoint: &Endpoint,
    channel: Option<Channel>,
    target: &str,
    connect_timeout: Duration,
) -> Result<Result<tonic::Streaming<StdioData>, tonic::Code>, StdioError> {
    let channel = match channel {
        Some(channel) => channel,
        None => {
            let connect = grpc_channel(endpoint, STREAM_REQUEST_TIMEOUT);
            match tokio::time::timeout(connect_timeout, connect).await {
                Ok(channel) => channel?,
                Err(_) => {
                    return Err(StdioError::Connect(ProbeError::Timeout {
                        what: format!("grpc connect to {target}"),
                        timeout: connect_timeout,
                    }))
                }
            }
        }
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    match tokio::time::timeout(connect_timeout, grpc.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(StdioError::Connect(ProbeError::Connect {
                what: "stdio stream".into(),
                target: target.to_owned(),
                detail: e.to_string(),
            }))
        }
        Err(_) => {
            return Err(StdioError::Connect(ProbeError::Timeout {
                what: format!("grpc channel to {target} becoming ready"),
                timeout: connect_timeout,
            }))
        }
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_STDIO_STREAM);
    let codec = tonic_prost::ProstCodec::<(), StdioData>::default();
    match grpc
        .server_streaming(tonic::Request::new(()), path, codec)
        .await
    {
        Ok(response) => Ok(Ok(response.into_inner())),
        Err(status) => match status.code() {
            code @ (tonic::Code::Unimplemented | tonic::Code::Unavailable) => Ok(Err(code)),
            code => Err(StdioError::Refused {
                target: target.to_owned(),
                code,
                message: status.message().to_owned(),
            }),
        },
    }
}

/// Appends chunks to the two files, within the byte limit.
struct Writer<'a> {
    sinks: &'a StdioSinks,
    stdout: Option<File>,
    stderr: Option<File>,
    /// Bytes this drain appended (marker excluded).
    written: u64,
    limit_reached: bool,
    /// Whether the last byte this drain wrote to the `.log` ended a line.
    stderr_at_line_start: bool,
    write_failed: bool,
    summary: DrainSummary,
}

impl<'a> Writer<'a> {
    fn open(sinks: &'a StdioSinks) -> Self {
        Writer {
            sinks,
            stdout: open_append(&sinks.stdout_path),
            stderr: open_append(&sinks.stderr_path),
            written: 0,
            limit_reached: false,
            stderr_at_line_start: true,
            write_failed: false,
            summary: DrainSummary::new(DrainEnd::StreamEnded),
        }
    }

    fn write(&mut self, chunk: StdioData) {
        let len = chunk.data.len() as u64;
        if len == 0 {
            return;
        }
        let to_stdout = match StdioChannel::try_from(chunk.channel) {
            Ok(StdioChannel::Stdout) => true,
            Ok(StdioChannel::Stderr) => false,
            Ok(StdioChannel::Invalid) | Err(_) => {
                tracing::debug!(
                    channel = chunk.channel,
                    len,
                    "stdio chunk of an unknown channel dropped"
                );
                self.summary.dropped_bytes += len;
                return;
            }
        };
        let max = self.sinks.max_bytes;
        if max > 0 && self.written.saturating_add(len) > max {
            self.summary.dropped_bytes += len;
            if !self.limit_reached {
                self.limit_reached = true;
                self.write_marker();
            }
            return;
        }
        let (file, path) = if to_stdout {
            (self.stdout.as_mut(), &self.sinks.stdout_path)
        } else {
            (self.stderr.as_mut(), &self.sinks.stderr_path)
        };
        let result = match file {
            Some(file) => file.write_all(&chunk.data),
            None => {
                self.summary.dropped_bytes += len;
                return;
            }
        };
        match result {
            Ok(()) => {
                self.written += len;
                if to_stdout {
                    self.summary.stdout_bytes += len;
                } else {
                    self.summary.stderr_bytes += len;
                    self.stderr_at_line_start = chunk.data.ends_with(b"\n");
                }
            }
            Err(e) => {
                self.summary.dropped_bytes += len;
                if !self.write_failed {
                    self.write_failed = true;
                    tracing::warn!(path = %path.display(), error = %e, "cannot append plugin stdio; dropping what fails");
                }
            }
        }
    }

    fn write_marker(&mut self) {
        tracing::warn!(
            max_bytes = self.sinks.max_bytes,
            "log_max_bytes reached: dropping the rest of the plugin's stdio stream"
        );
        let Some(file) = self.stderr.as_mut() else {
            return;
        };
        let lead = if self.stderr_at_line_start { "" } else { "\n" };
        let line = format!("{lead}{LIMIT_MARKER}\n");
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::debug!(error = %e, "cannot write the log_max_bytes marker");
        }
        self.stderr_at_line_start = true;
    }
}

fn open_append(path: &Path) -> Option<File> {
    match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
    {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open a log file for the plugin's stdio stream; its chunks are dropped");
            None
        }
    }
}

fn registry() -> &'static Mutex<HashMap<ReloadId, usize>> {
    static REGISTRY: OnceLock<Mutex<HashMap<ReloadId, usize>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// How many stdio drains of instances launched by `reload` run in this process (started by
/// the process driver and not yet ended). A stopped generation has none.
pub fn running_drains(reload: &ReloadId) -> usize {
    let map = super::lock(registry());
    map.get(reload).copied().unwrap_or(0)
}

/// Counts one running drain of `reload` in [`running_drains`] until dropped.
#[derive(Debug)]
pub(crate) struct DrainRegistration {
    reload: ReloadId,
}

impl DrainRegistration {
    pub(crate) fn new(reload: ReloadId) -> Self {
        let mut map = super::lock(registry());
        *map.entry(reload).or_insert(0) += 1;
        DrainRegistration { reload }
    }
}

impl Drop for DrainRegistration {
    fn drop(&mut self) {
        let mut map = super::lock(registry());
        if let Some(n) = map.get_mut(&self.reload) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.reload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn stdio_data_has_go_plugins_wire_format() {
        let chunk = StdioData {
            channel: StdioChannel::Stderr as i32,
            data: b"hi".to_vec(),
        };
        assert_eq!(
            chunk.encode_to_vec(),
            vec![0x08, 0x02, 0x12, 0x02, b'h', b'i']
        );
        let decoded = StdioData::decode(&[0x08u8, 0x01, 0x12, 0x01, b'x'][..]).unwrap();
        assert_eq!(decoded.channel, StdioChannel::Stdout as i32);
        assert_eq!(decoded.data, b"x");
    }

    fn sinks(dir: &Path, max_bytes: u64) -> StdioSinks {
        StdioSinks {
            stdout_path: dir.join("1.stdout"),
            stderr_path: dir.join("1.log"),
            max_bytes,
        }
    }

    fn chunk(channel: StdioChannel, data: &str) -> StdioData {
        StdioData {
            channel: channel as i32,
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn writer_splits_channels_and_stops_at_the_limit_with_one_marker() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = sinks(dir.path(), 10);
        let mut writer = Writer::open(&sinks);
        writer.write(chunk(StdioChannel::Stdout, "out 1\n"));
        writer.write(chunk(StdioChannel::Stderr, "err"));
        writer.write(chunk(StdioChannel::Invalid, "lost"));
        writer.write(chunk(StdioChannel::Stdout, "too long\n"));
        writer.write(chunk(StdioChannel::Stderr, "x\n"));
        let summary = writer.summary.clone();
        drop(writer);
        assert_eq!(summary.stdout_bytes, 6);
        assert_eq!(summary.stderr_bytes, 3);
        assert_eq!(summary.dropped_bytes, 4 + 9 + 2);
        let stdout = std::fs::read_to_string(&sinks.stdout_path).unwrap();
        let log = std::fs::read_to_string(&sinks.stderr_path).unwrap();
        assert_eq!(stdout, "out 1\n");
        assert_eq!(log, format!("err\n{LIMIT_MARKER}\n"));
    }

    #[test]
    fn zero_max_bytes_is_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = sinks(dir.path(), 0);
        let mut writer = Writer::open(&sinks);
        let line = "y".repeat(1000);
        for _ in 0..100 {
            writer.write(chunk(StdioChannel::Stderr, &line));
        }
        assert_eq!(writer.summary.stderr_bytes, 100_000);
        assert_eq!(writer.summary.dropped_bytes, 0);
    }

    #[test]
    fn registrations_count_per_reload() {
        let a = ReloadId::from_u128(0xa11ce);
        let b = ReloadId::from_u128(0xb0b);
        let first = DrainRegistration::new(a);
        let second = DrainRegistration::new(a);
        assert_eq!(running_drains(&a), 2);
        assert_eq!(running_drains(&b), 0);
        drop(first);
        assert_eq!(running_drains(&a), 1);
        drop(second);
        assert_eq!(running_drains(&a), 0);
    }

    #[tokio::test]
    async fn a_plugin_that_is_not_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let endpoint = Endpoint {
            core_version: 1,
            app_version: 1,
            network: tryswap_fsm::Network::Tcp,
            address,
            protocol: tryswap_fsm::Protocol::Grpc,
            server_cert: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let result = drain_stdio(
            &endpoint,
            None,
            &sinks(dir.path(), 0),
            Duration::from_secs(2),
            std::future::pending(),
        )
        .await;
        assert!(matches!(result, Err(StdioError::Connect(_))), "{result:?}");
        assert!(!dir.path().join("1.log").exists());
    }
}
