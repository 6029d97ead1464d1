//! Launching plugins the way a go-plugin host does, and cleaning up after them.
//!
//! [`PluginCommand`] builds a launch with an empty environment plus the
//! go-plugin variables; [`PluginProcess`] owns the running plugin in its own
//! process group, captures stdout and stderr, and kills the whole group when
//! dropped. [`TempState`] is a temp dir that, when dropped, kills every process
//! still running from it. The free functions answer questions about pids.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Name of the go-plugin variable listing the app versions the host accepts.
pub const ENV_PROTOCOL_VERSIONS: &str = "PLUGIN_PROTOCOL_VERSIONS";
/// Lowest TCP port a go-plugin plugin may bind.
pub const ENV_MIN_PORT: &str = "PLUGIN_MIN_PORT";
/// Highest TCP port a go-plugin plugin may bind.
pub const ENV_MAX_PORT: &str = "PLUGIN_MAX_PORT";
/// Directory for unix sockets (go-plugin's `PLUGIN_UNIX_SOCKET_DIR`).
pub const ENV_UNIX_SOCKET_DIR: &str = "PLUGIN_UNIX_SOCKET_DIR";
/// The fixture plugin's default magic cookie key.
pub const DEFAULT_COOKIE_KEY: &str = "TRYSWAP_PLUGIN";
/// The fixture plugin's default magic cookie value.
pub const DEFAULT_COOKIE_VALUE: &str = "demo";
/// Poll interval of [`wait_until`] and [`PluginProcess::wait_timeout`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long [`PluginProcess`] waits for its pipes to reach end of file after
/// the plugin exited.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many stdout lines are kept by [`PluginProcess`].
const MAX_KEPT_LINES: usize = 256;
/// At most this many stderr bytes are kept by [`PluginProcess`].
const MAX_KEPT_STDERR: usize = 1 << 20;

/// Path of the `tryswap-fixture-plugin` binary built by this workspace.
///
/// Works from the tests of any crate of the workspace: the test executable
/// lives in `target/<profile>/deps/`, the binary in `target/<profile>/`. The
/// environment variable `TRYSWAP_FIXTURE_PLUGIN`, if set, wins. The binary
/// exists only once built: `cargo test -p tryswap-tests` builds it, tests of
/// other crates need `cargo build -p tryswap-tests --bin tryswap-fixture-plugin`
/// first. The returned path may not exist; check before relying on it.
pub fn fixture_plugin_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TRYSWAP_FIXTURE_PLUGIN") {
        return PathBuf::from(path);
    }
    workspace_bin_path("tryswap-fixture-plugin")
}

/// Path of the workspace binary `name` (e.g. `tryswap`) next to the running
/// executable: `target/<profile>/<name>`, found from
/// `std::env::current_exe()` (its directory, or that directory's parent when
/// it is `deps/`). The path may not exist if the binary was not built.
pub fn workspace_bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join(name);
    let above = dir.parent().map(|p| p.join(name));
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(above) = above {
            if above.exists() || !beside.exists() {
                return above;
            }
        }
    }
    beside
}

/// Whether `pid` names a running (not zombie) process.
///
/// A zombie (exited, not yet reaped) counts as dead, so this answers
/// "is it still doing anything" even when no one reaps it.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match signal::kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    !matches!(process_state(pid), Some('Z') | Some('X'))
}

/// The one-letter state of `pid` from `/proc/<pid>/stat` (`R`, `S`, `Z`, …).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// The process group of `pid`, if it exists.
pub fn process_group(pid: u32) -> Option<u32> {
    let raw = i32::try_from(pid).ok()?;
    nix::unistd::getpgid(Some(Pid::from_raw(raw)))
        .ok()
        .and_then(|p| u32::try_from(p.as_raw()).ok())
}

/// The session of `pid`, if it exists.
pub fn session_of(pid: u32) -> Option<u32> {
    let raw = i32::try_from(pid).ok()?;
    nix::unistd::getsid(Some(Pid::from_raw(raw)))
        .ok()
        .and_then(|p| u32::try_from(p.as_raw()).ok())
}

/// Sends `sig` to `pid`; returns whether it was delivered.
pub fn send_signal(pid: u32, sig: Signal) -> bool {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .is_some_and(|p| signal::kill(Pid::from_raw(p), sig).is_ok())
}

/// Sends `sig` to every process of group `pgid`; returns whether it was
/// delivered to at least one.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    i32::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .is_some_and(|p| signal::killpg(Pid::from_raw(p), sig).is_ok())
}

/// Reads a pid written as decimal text (surrounding whitespace allowed).
pub fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Polls `cond` every [`POLL_INTERVAL`] until it is true or `timeout` passed;
/// returns its last answer. `cond` is always asked at least once.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Async [`wait_until`]: awaits `cond()` every [`POLL_INTERVAL`] until it is
/// true or `timeout` passed (each `cond()` itself is not cut short, so bound
/// it too). Returns its last answer.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Why a plugin could not be launched or did not behave.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No stdout line arrived in time.
    #[error("pid {pid}: no stdout line within {timeout:?}; stderr: {stderr}")]
    NoLine {
        /// The plugin's pid.
        pid: u32,
        /// How long was waited.
        timeout: Duration,
        /// What the plugin wrote to stderr so far.
        stderr: String,
    },
    /// Stdout closed (usually: the plugin exited) before a line arrived.
    #[error("pid {pid}: stdout closed before a line; stderr: {stderr}")]
    StdoutClosed {
        /// The plugin's pid.
        pid: u32,
        /// What the plugin wrote to stderr.
        stderr: String,
    },
    /// Waiting for the exit status failed.
    #[error("pid {pid}: wait failed: {source}")]
    Wait {
        /// The plugin's pid.
        pid: u32,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A plugin launch as a go-plugin host does it: no inherited environment, the
/// magic cookie, `PLUGIN_PROTOCOL_VERSIONS`, optional port range, stdin null.
#[derive(Debug, Clone)]
pub struct PluginCommand {
    program: PathBuf,
    args: Vec<OsString>,
    env: BTreeMap<OsString, OsString>,
}

impl PluginCommand {
    /// Launches `program` with no arguments and an empty environment.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    /// The fixture plugin ([`fixture_plugin_path`]) with its default cookie
    /// (`TRYSWAP_PLUGIN=demo`) and `PLUGIN_PROTOCOL_VERSIONS=1`.
    pub fn fixture() -> Self {
        Self::new(fixture_plugin_path())
            .env(DEFAULT_COOKIE_KEY, DEFAULT_COOKIE_VALUE)
            .protocol_versions(&[1])
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends `--config <path>` (the fixture's config file).
    pub fn config(self, path: impl Into<OsString>) -> Self {
        self.arg("--config").arg(path)
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Removes one environment variable set earlier.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.remove(&key.into());
        self
    }

    /// Sets `PLUGIN_PROTOCOL_VERSIONS` to the comma list of `versions`.
    pub fn protocol_versions(self, versions: &[u32]) -> Self {
        let list: Vec<String> = versions.iter().map(u32::to_string).collect();
        self.env(ENV_PROTOCOL_VERSIONS, list.join(","))
    }

    /// Sets `PLUGIN_MIN_PORT` and `PLUGIN_MAX_PORT`.
    pub fn port_range(self, min: u16, max: u16) -> Self {
        self.env(ENV_MIN_PORT, min.to_string())
            .env(ENV_MAX_PORT, max.to_string())
    }

    /// Starts the plugin in a new process group with stdout and stderr
    /// captured.
    pub fn spawn(&self) -> Result<PluginProcess, ProcessError> {
        PluginProcess::spawn(self)
    }
}

#[derive(Debug, Default)]
struct Capture {
    bytes: AtomicU64,
    eof: AtomicBool,
    kept: Mutex<Vec<u8>>,
    lines: Mutex<Vec<String>>,
}

/// A running plugin started by [`PluginCommand::spawn`], leader of its own
/// process group. Dropping it sends SIGKILL to the group and reaps the child.
#[derive(Debug)]
pub struct PluginProcess {
    child: Child,
    pid: u32,
    status: Option<ExitStatus>,
    lines: Mutex<Receiver<String>>,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
}

impl PluginProcess {
    fn spawn(cmd: &PluginCommand) -> Result<Self, ProcessError> {
        let mut command = std::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .env_clear()
            .envs(&cmd.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
        let pid = child.id();
        let stdout = Arc::new(Capture::default());
        let stderr = Arc::new(Capture::default());
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let capture = Arc::clone(&stdout);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(out);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => {
                            capture.eof.store(true, Ordering::Release);
                            break;
                        }
                        Ok(n) => {
                            capture.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            let mut lines = capture.lines.lock().unwrap_or_else(|e| e.into_inner());
                            if lines.len() < MAX_KEPT_LINES {
                                let line = String::from_utf8_lossy(&buf)
                                    .trim_end_matches(['\n', '\r'])
                                    .to_owned();
                                lines.push(line.clone());
                                let _ = tx.send(line);
                            }
                        }
                    }
                }
            });
        }
        if let Some(mut err) = child.stderr.take() {
            let capture = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match err.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            capture.eof.store(true, Ordering::Release);
                            break;
                        }
                        Ok(n) => {
                            capture.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            let mut kept = capture.kept.lock().unwrap_or_else(|e| e.into_inner());
                            let room = MAX_KEPT_STDERR.saturating_sub(kept.len());
                            kept.extend_from_slice(&buf[..n.min(room)]);
                        }
                    }
                }
            });
        }
        Ok(Self {
            child,
            pid,
            status: None,
            lines: Mutex::new(rx),
            stdout,
            stderr,
        })
    }

    /// The plugin's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits at most `timeout` for the next stdout line (without its newline).
    /// The first call returns the handshake line of a go-plugin plugin.
    pub fn next_line(&self, timeout: Duration) -> Result<String, ProcessError> {
        let rx = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(ProcessError::NoLine {
                pid: self.pid,
                timeout,
                stderr: self.stderr_text(),
            }),
            Err(RecvTimeoutError::Disconnected) => {
                self.drain_stderr();
                Err(ProcessError::StdoutClosed {
                    pid: self.pid,
                    stderr: self.stderr_text(),
                })
            }
        }
    }

    /// The stdout lines read so far (the first 256 only).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Total bytes the plugin wrote to stdout so far.
    pub fn stdout_bytes(&self) -> u64 {
        self.stdout.bytes.load(Ordering::Relaxed)
    }

    /// Total bytes the plugin wrote to stderr so far.
    pub fn stderr_bytes(&self) -> u64 {
        self.stderr.bytes.load(Ordering::Relaxed)
    }

    /// What the plugin wrote to stderr so far (the first MiB), lossily decoded.
    pub fn stderr_text(&self) -> String {
        let kept = self.stderr.kept.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }

    /// Sends `sig` to the plugin process only.
    pub fn signal(&self, sig: Signal) -> bool {
        self.status.is_none() && send_signal(self.pid, sig)
    }

    /// Sends `sig` to the plugin's whole process group.
    pub fn signal_group(&self, sig: Signal) -> bool {
        signal_group(self.pid, sig)
    }

    /// Waits (at most [`DRAIN_TIMEOUT`]) until stderr reached end of file, so
    /// that [`stderr_text`](Self::stderr_text) holds everything an exited
    /// plugin wrote. A grandchild holding the pipe open makes this time out.
    fn drain_stderr(&self) {
        wait_until(DRAIN_TIMEOUT, || self.stderr.eof.load(Ordering::Acquire));
    }

    /// The exit status if the plugin has exited (reaps it), without waiting
    /// for the exit. Once it has exited, its stdout and stderr are read to the
    /// end (bounded by [`DRAIN_TIMEOUT`]) before this returns.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| ProcessError::Wait {
                pid: self.pid,
                source,
            })?;
            if self.status.is_some() {
                self.drain_stderr();
                wait_until(DRAIN_TIMEOUT, || self.stdout.eof.load(Ordering::Acquire));
            }
        }
        Ok(self.status)
    }

    /// Waits at most `timeout` for the plugin to exit; `Ok(None)` if it is
    /// still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILLs the process group and the plugin, then reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, ProcessError> {
        signal_group(self.pid, Signal::SIGKILL);
        if let Some(status) = self.status {
            return Ok(status);
        }
        send_signal(self.pid, Signal::SIGKILL);
        let status = self.child.wait().map_err(|source| ProcessError::Wait {
            pid: self.pid,
            source,
        })?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A temporary directory for one test that, when dropped, SIGKILLs every
/// process still running from it, then deletes it.
///
/// "Running from it" means: the process's executable, working directory or
/// any command-line argument lies under (or mentions) the directory. Plugins
/// staged into a state dir under it, daemons given `--state-dir` under it and
/// fixtures given `--config` under it (and their grandchildren) all qualify.
#[derive(Debug)]
pub struct TempState {
    dir: tempfile::TempDir,
}

impl TempState {
    /// Creates a fresh directory (`tryswap-test-*` in the system temp dir,
    /// short enough for unix socket paths).
    pub fn new() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tryswap-test-").tempdir()?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()` joined with `rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Pids of the live processes (not this one) running from the directory.
    pub fn processes(&self) -> Vec<u32> {
        let me = std::process::id();
        let root = self.dir.path();
        let needle = root.as_os_str().as_encoded_bytes();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || pid <= 1 || !pid_alive(pid) {
                continue;
            }
            let proc_dir = entry.path();
            let under = |link: &str| {
                std::fs::read_link(proc_dir.join(link)).is_ok_and(|p| p.starts_with(root))
            };
            let in_cmdline = std::fs::read(proc_dir.join("cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle));
            if under("exe") || under("cwd") || in_cmdline {
                found.push(pid);
            }
        }
        found
    }

    /// SIGKILLs every process [`processes`](Self::processes) finds; returns
    /// their pids.
    pub fn kill_processes(&self) -> Vec<u32> {
        let pids = self.processes();
        for &pid in &pids {
            send_signal(pid, Signal::SIGKILL);
        }
        pids
    }

    /// Removes the cgroups tryswap made for the state directories under the directory
    /// (one per state dir, holding one per generation; see
    /// `tryswap::internals::cgroup`). A test's plugins are killed here, not stopped
    /// by tryswap, and the state dir goes with the directory, so nothing else would ever
    /// remove them: thousands of empty cgroups left by test runs slowed every cgroup
    /// operation of the host. Waits (≤ 2 s) for the killed processes to leave them.
    pub fn remove_cgroups(&self) {
        use tryswap::internals::cgroup;
        for state_dir in state_dirs_under(self.dir.path(), 3) {
            wait_until(Duration::from_secs(2), || {
                cgroup::sweep_empty(&state_dir);
                !cgroup::state_dir_has_cgroup(&state_dir)
            });
        }
    }
}

/// The tryswap state directories (those holding a `journal` directory) at most `depth`
/// levels below `dir`.
fn state_dirs_under(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if dir.join("journal").is_dir() {
        found.push(dir.to_path_buf());
    }
    if depth == 0 {
        return found;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(state_dirs_under(&entry.path(), depth - 1));
        }
    }
    found
}

impl Drop for TempState {
    fn drop(&mut self) {
        let killed = self.kill_processes();
        if !killed.is_empty() {
            tracing::warn!(dir = %self.dir.path().display(), ?killed, "killed leftover processes");
        }
        self.remove_cgroups();
    }
}
