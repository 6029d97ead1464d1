//! Spawning, recognising and stopping plugin processes (Linux only).
//!
//! A plugin is started by [`spawn`] in its own process group with a fully specified
//! environment, its stdout and stderr appended to files (never pipes: a plugin must be able to
//! outlive a crashed host so that it can be reattached). Its [`ProcessIdentity`] — pid, start
//! time and boot id — is recorded at once; from then on the pid is never signalled unless all
//! three still match ([`is_alive`]).
//!
//! [`read_handshake`] waits for the first stdout line, [`stop_group`] retires a plugin's whole
//! process group with SIGTERM then SIGKILL, and [`tagged_processes`] / [`kill_tagged`] find
//! and kill every process carrying `TRYSWAP_RELOAD_ID=<id>` in its environment (crash
//! recovery of a reload that never recorded its launch).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;
use tryswap_fsm::{ProcessIdentity, ReloadId};

use super::inotify::FileWatch;

pub use crate::driver::Liveness;

/// Name of the environment variable that tags every process of a reload.
pub use crate::driver::process::handshake::RELOAD_ID_ENV;

/// Longest handshake line accepted, in bytes (without the newline).
pub const MAX_HANDSHAKE_LINE: usize = 4096;

/// How often [`read_handshake`] looks at the stdout file and [`stop_group`] at the group.
const POLL: Duration = Duration::from_millis(10);

/// For the first [`FAST_POLL_WINDOW`] of a wait, [`read_handshake`] and [`stop_group`] look
/// every [`FAST_POLL`] instead: most plugins print their handshake and exit on SIGTERM
/// within a few milliseconds, and a 10 ms poll would add ~10 ms to every reload.
const FAST_POLL: Duration = Duration::from_millis(1);
const FAST_POLL_WINDOW: Duration = Duration::from_millis(50);

/// The poll interval `waited` into a wait.
fn poll_after(waited: Duration) -> Duration {
    if waited < FAST_POLL_WINDOW {
        FAST_POLL
    } else {
        POLL
    }
}

/// How long [`stop_group`] and [`kill_tagged`] wait after SIGKILL before giving up.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How many times a spawn failing with `ETXTBSY` is retried, and the first backoff.
const TXTBSY_RETRIES: u32 = 5;
const TXTBSY_BACKOFF: Duration = Duration::from_millis(5);

/// Errors of process handling. Each names the path, pid or program concerned.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The directory for a log file could not be created.
    #[error("cannot create log directory {path}: {source}")]
    LogDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A log file could not be opened for appending.
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        /// The log file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The operating system refused to start the program.
    #[error("cannot spawn {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `/dev/null` could not be opened for the plugin's stdin.
    #[error("cannot open /dev/null for the plugin's stdin: {source}")]
    Stdin {
        /// Why.
        source: io::Error,
    },
    /// [`spawn`] was called outside a tokio runtime.
    #[error("cannot spawn {program}: not inside a tokio runtime")]
    NoRuntime {
        /// The program.
        program: PathBuf,
    },
    /// A file under `/proc` could not be read.
    #[error("cannot read {path}: {source}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file under `/proc` did not have the expected shape.
    #[error("cannot parse {path}: {detail}")]
    ProcFormat {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A pid that can never name a plugin (0, 1, out of range, or this very process).
    #[error("refusing to signal pid {pid}: it cannot be a plugin process")]
    BadPid {
        /// The pid.
        pid: u32,
    },
    /// Sending a signal failed for a reason other than the target being gone.
    #[error("cannot send {signal} to {target}: {source}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// `process group N` or `pid N`.
        target: String,
        /// Why.
        source: Errno,
    },
    /// Processes of the group were still running after SIGKILL and a grace period.
    #[error("process group {pgid} still has live members {pids:?} {waited:?} after SIGKILL")]
    StillRunning {
        /// The group.
        pgid: u32,
        /// Members still running (the leader included, if it is).
        pids: Vec<u32>,
        /// How long we waited after SIGKILL.
        waited: Duration,
    },
}

/// Why [`read_handshake`] did not return a handshake line.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeWaitError {
    /// The plugin exited before printing a complete first line.
    #[error("plugin exited ({status}) before printing its handshake line{}", quoted_partial(.partial))]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stdout without a newline (lossy UTF-8, at most 4 KiB).
        partial: String,
    },
    /// The plugin is no longer running, but we are not its parent and cannot learn how it
    /// exited.
    #[error("plugin process {pid} is gone before printing its handshake line{}", quoted_partial(.partial))]
    Vanished {
        /// Its pid.
        pid: u32,
        /// What it printed on stdout without a newline (lossy UTF-8, at most 4 KiB).
        partial: String,
    },
    /// No complete line within the timeout.
    #[error("no handshake line on stdout within {waited:?}{}", quoted_partial(.partial))]
    Timeout {
        /// How long we waited.
        waited: Duration,
        /// What it printed on stdout without a newline (lossy UTF-8, at most 4 KiB).
        partial: String,
    },
    /// The first line is longer than [`MAX_HANDSHAKE_LINE`] bytes.
    #[error("handshake line longer than {MAX_HANDSHAKE_LINE} bytes: {truncated:?}…")]
    LineTooLong {
        /// Its first [`MAX_HANDSHAKE_LINE`] bytes (lossy UTF-8).
        truncated: String,
    },
    /// The stdout file could not be read.
    #[error("cannot read plugin stdout {path}: {source}")]
    Io {
        /// The stdout file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn quoted_partial(partial: &str) -> String {
    if partial.is_empty() {
        String::new()
    } else {
        format!("; stdout so far: {partial:?}")
    }
}

/// How to start a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnSpec {
    /// The executable.
    pub program: PathBuf,
    /// Arguments (without the program name).
    pub args: Vec<String>,
    /// The COMPLETE environment of the plugin: nothing of the host's environment is passed on.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// File that receives stdout (appended; created 0640 with its parent directories).
    pub stdout_path: PathBuf,
    /// File that receives stderr (appended; may be the same path as `stdout_path`).
    pub stderr_path: PathBuf,
    /// How many bytes this run may add to its larger log file; 0 = unlimited. See [`spawn`].
    pub log_max_bytes: u64,
    /// A cgroup v2 directory the plugin joins before `exec`, if it can be created (see
    /// [`super::cgroup`]); `None`, or a cgroup that cannot be made, runs it without one.
    pub cgroup: Option<PathBuf>,
}

/// A plugin we started and (while this process lives) are the parent of.
#[derive(Clone, Debug)]
pub struct Spawned {
    /// Pid, start time and boot id, recorded right after the spawn.
    pub identity: ProcessIdentity,
    /// Length of the stdout file before the spawn: this run's output (and its handshake
    /// line) starts at this offset.
    pub stdout_start: u64,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl Spawned {
    /// The exit status, if the plugin has exited (and been reaped by our background waiter).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until the plugin exits and returns its status. Returns `None` only if the
    /// background waiter could not learn it (the runtime shut down or `waitpid` failed).
    pub async fn wait_exit(&self) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        loop {
            if let Some(status) = *rx.borrow_and_update() {
                return Some(status);
            }
            if rx.changed().await.is_err() {
                return *rx.borrow();
            }
        }
    }

    /// A receiver that holds `Some(status)` once the plugin has exited.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }
}

/// The umask this process had before [`restrict_umask`], given back to plugins;
/// `u32::MAX` while it was never called.
static PLUGIN_UMASK: AtomicU32 = AtomicU32::new(u32::MAX);

/// Sets this process's umask to 077, so that every file and directory it creates (the
/// journal's sled files included) is private to its user whatever umask it was started
/// with. Plugins spawned afterwards get the previous umask back. Returns the previous one.
pub fn restrict_umask() -> u32 {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let old = old.bits() as u32;
    // Only the first call knows the operator's umask.
    let _ = PLUGIN_UMASK.compare_exchange(u32::MAX, old, Ordering::SeqCst, Ordering::SeqCst);
    old
}

/// Starts a plugin as described by `spec`.
///
/// - The environment is exactly `spec.env` (`env_clear` first); stdin is `/dev/null`; stdout
///   and stderr are appended to their files (created with mode 0640, parent directories
///   0750), which the plugin keeps even if the host dies.
/// - The plugin leads its own process group (pgid == pid), so [`stop_group`] can signal it
///   and everything it forks, and terminal signals aimed at the host's group miss it.
/// - It is not killed when the returned value (or the host) goes away.
/// - It is started with `clone(CLONE_VM | CLONE_VFORK)` (see [`super::vfork`]): no copy of
///   the host's address space, so a launch costs the same whatever the host's heap. In the
///   child, before `exec` (no window in which the plugin runs without them): it joins
///   `spec.cgroup`, the signal mask is emptied and every signal disposition is reset to
///   the default (the host may ignore some, and ignored signals survive `exec`).
/// - If `log_max_bytes > 0`, `RLIMIT_FSIZE` is set to `log_max_bytes` plus the current
///   length of the larger log file, and `SIGXFSZ` is ignored: a plugin flooding its output
///   gets `EFBIG` from `write` instead of filling the disk or being killed. Trade-off: the
///   limit applies to EVERY file the plugin (and its children) write, not only the logs;
///   plugins that write large files of their own need `log_max_bytes = 0`.
/// - A spawn failing with `ETXTBSY` (a freshly written executable still open for writing in
///   a child another thread just forked) is retried a few times after short sleeps (at most
///   ~150 ms in total, blocking the calling thread).
///
/// Must be called within a tokio runtime: a background task reaps the child (so it never
/// stays a zombie while we are its parent) and publishes its exit status to
/// [`Spawned::exit_status`] / [`Spawned::wait_exit`].
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, ProcessError> {
    spawn_prepared(spec, None)
}

/// Where one run of a plugin writes and which cgroup it joins: what [`prepare`] makes on
/// disk before the spawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFiles {
    /// File that receives stdout (see [`SpawnSpec::stdout_path`]).
    pub stdout_path: PathBuf,
    /// File that receives stderr (see [`SpawnSpec::stderr_path`]).
    pub stderr_path: PathBuf,
    /// The cgroup the plugin joins, if one can be made (see [`SpawnSpec::cgroup`]).
    pub cgroup: Option<PathBuf>,
}

impl SpawnSpec {
    /// The files and cgroup of this spawn.
    pub fn run_files(&self) -> RunFiles {
        RunFiles {
            stdout_path: self.stdout_path.clone(),
            stderr_path: self.stderr_path.clone(),
            cgroup: self.cgroup.clone(),
        }
    }
}

/// What one spawn needs before the child exists, made by [`prepare`]: the log files open
/// (with their lengths before this run), `/dev/null` for stdin, the cgroup created and
/// opened. Nothing runs yet. Dropping it closes the files and leaves them, and the cgroup,
/// in place (a later spawn of the same files opens them again).
#[derive(Debug)]
pub struct Prepared {
    files: RunFiles,
    stdin: File,
    stdout: File,
    stderr: File,
    stdout_start: u64,
    stderr_start: u64,
    cgroup_procs: Option<File>,
    cgroup_dir: Option<File>,
}

impl Prepared {
    /// What it was made for.
    pub fn files(&self) -> &RunFiles {
        &self.files
    }
}

/// Makes what a spawn writing to `files` needs, without starting anything: the log files
/// (created 0640 with their parent directories 0750, as [`spawn`] says) and the cgroup.
/// Blocking (new inodes); a caller may run it on another thread while it does other work
/// that must come before the spawn, then hand it to [`spawn_prepared`].
pub fn prepare(files: &RunFiles) -> Result<Prepared, ProcessError> {
    let stdout = open_log(&files.stdout_path)?;
    let stderr = if same_file(&files.stdout_path, &files.stderr_path) {
        stdout.try_clone().map_err(|source| ProcessError::LogFile {
            path: files.stderr_path.clone(),
            source,
        })?
    } else {
        open_log(&files.stderr_path)?
    };
    let stdout_start = file_len(&stdout, &files.stdout_path)?;
    let stderr_start = file_len(&stderr, &files.stderr_path)?;
    let cgroup_procs = files.cgroup.as_deref().and_then(super::cgroup::prepare);
    // The child is created in the cgroup where the kernel can (see `vfork`).
    let cgroup_dir = match (&cgroup_procs, files.cgroup.as_deref()) {
        (Some(_), Some(dir)) => super::cgroup::open_dir(dir),
        _ => None,
    };
    let stdin = File::open("/dev/null").map_err(|source| ProcessError::Stdin { source })?;
    Ok(Prepared {
        files: files.clone(),
        stdin,
        stdout,
        stderr,
        stdout_start,
        stderr_start,
        cgroup_procs,
        cgroup_dir,
    })
}

/// [`spawn`] with what [`prepare`] made for it (`None`, or one made for other files: made
/// here).
pub fn spawn_prepared(
    spec: &SpawnSpec,
    prepared: Option<Prepared>,
) -> Result<Spawned, ProcessError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ProcessError::NoRuntime {
            program: spec.program.clone(),
        });
    }
    let files = spec.run_files();
    let prepared = match prepared {
        Some(prepared) if prepared.files == files => prepared,
        _ => prepare(&files)?,
    };
    let Prepared {
        stdin,
        stdout,
        stderr,
        stdout_start,
        stderr_start,
        cgroup_procs,
        cgroup_dir,
        ..
    } = prepared;
    let fsize_limit: Option<libc::rlim_t> = if spec.log_max_bytes > 0 {
        Some(
            spec.log_max_bytes
                .saturating_add(stdout_start.max(stderr_start)) as libc::rlim_t,
        )
    } else {
        None
    };
    let cgroup_fd = cgroup_procs.as_ref().map(AsRawFd::as_raw_fd);

    let umask = match PLUGIN_UMASK.load(Ordering::SeqCst) {
        u32::MAX => None,
        mask => Some(mask as libc::mode_t),
    };
    let exec = super::vfork::Exec {
        program: &spec.program,
        args: &spec.args,
        env: &spec.env,
        cwd: &spec.cwd,
        stdio: [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
        umask,
        fsize_limit,
        cgroup_procs: cgroup_fd,
        cgroup_dir: cgroup_dir.as_ref().map(AsRawFd::as_raw_fd),
    };
    let mut attempt = 0;
    let pid = loop {
        match super::vfork::spawn(&exec) {
            Ok(pid) => break pid,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < TXTBSY_RETRIES => {
                let backoff = TXTBSY_BACKOFF * 2u32.pow(attempt);
                tracing::debug!(program = %spec.program.display(), ?backoff, "spawn: ETXTBSY, retrying");
                std::thread::sleep(backoff);
                attempt += 1;
            }
            Err(source) => {
                return Err(ProcessError::Spawn {
                    program: spec.program.clone(),
                    source,
                })
            }
        }
    };
    // The child is not reaped until the waiter below sees it exit, so /proc/<pid> is ours.
    let identity = match identity_of(pid) {
        Ok(Some(identity)) => identity,
        other => {
            let detail = match other {
                Err(e) => e.to_string(),
                _ => format!("/proc/{pid}/stat vanished"),
            };
            if let Ok(raw) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
            tokio::spawn(super::vfork::wait(pid));
            return Err(ProcessError::Spawn {
                program: spec.program.clone(),
                source: io::Error::other(format!("cannot record identity of pid {pid}: {detail}")),
            });
        }
    };
    tracing::debug!(pid, program = %spec.program.display(), "spawned plugin");

    let (tx, rx) = watch::channel(None);
    let program = spec.program.clone();
    tokio::spawn(async move {
        match super::vfork::wait(pid).await {
            Some(status) => {
                tracing::debug!(pid, %status, program = %program.display(), "plugin exited");
                let _ = tx.send(Some(status));
            }
            None => {
                tracing::warn!(pid, program = %program.display(), "cannot wait for plugin");
            }
        }
    });

    Ok(Spawned {
        identity,
        stdout_start,
        exit: rx,
    })
}

fn open_log(path: &Path) -> Result<File, ProcessError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|source| ProcessError::LogDir {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| ProcessError::LogFile {
            path: path.to_path_buf(),
            source,
        })?;
    // 0640 whatever the umask (tryswap itself runs with 077, see `restrict_umask`).
    file.set_permissions(fs::Permissions::from_mode(0o640))
        .map_err(|source| ProcessError::LogFile {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(file)
}

fn file_len(file: &File, path: &Path) -> Result<u64, ProcessError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|source| ProcessError::LogFile {
            path: path.to_path_buf(),
            source,
        })
}

fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Waits for the plugin's handshake: the first complete line its run wrote to `stdout_path`
/// (read from [`Spawned::stdout_start`], so output of earlier runs appended to the same
/// file is skipped). Returns the line without its `\n` (and without a trailing `\r`).
///
/// The file is read again each time it is written (an inotify watch; every 250 ms as a
/// safety net), or, where inotify is unavailable, polled every 1–10 ms. At most 4 KiB + 1
/// byte of it is ever read, so a plugin flooding stdout without a newline costs nothing. Errors: the plugin exited first
/// ([`HandshakeWaitError::Exited`], with whatever partial line it printed), `timeout`
/// passed ([`HandshakeWaitError::Timeout`]), or the line is longer than
/// [`MAX_HANDSHAKE_LINE`] ([`HandshakeWaitError::LineTooLong`], truncated).
/// A line printed just before exiting is still returned.
pub async fn read_handshake(
    spawned: &Spawned,
    stdout_path: &Path,
    timeout: Duration,
) -> Result<String, HandshakeWaitError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut exit = spawned.exit_watch();
    let mut waiter_gone = false;
    // Event-driven: woken when the plugin writes its stdout file, not by a poll. Set up
    // before the first read, so no write can fall between the read and the wait. The watch
    // lives on the process's one inotify instance: dropping it closes no descriptor (a
    // close would wait 7–20 ms for the kernel to free the watch).
    let mut watch = match FileWatch::new(stdout_path) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::debug!(path = %stdout_path.display(), error = %e, "no inotify watch on the plugin's stdout; polling it");
            None
        }
    };
    loop {
        // Look at the exit status BEFORE reading, so a line written just before exiting
        // is never mistaken for "exited without a line".
        let status = *exit.borrow_and_update();
        let gone = status.is_none() && waiter_gone && !is_alive(&spawned.identity);
        let head = read_head(stdout_path, spawned.stdout_start)?;
        if let Some(pos) = head.iter().position(|&b| b == b'\n') {
            let mut line = &head[..pos];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            return Ok(String::from_utf8_lossy(line).into_owned());
        }
        if head.len() > MAX_HANDSHAKE_LINE {
            return Err(HandshakeWaitError::LineTooLong {
                truncated: String::from_utf8_lossy(&head[..MAX_HANDSHAKE_LINE]).into_owned(),
            });
        }
        let partial = || String::from_utf8_lossy(&head).into_owned();
        if let Some(status) = status {
            return Err(HandshakeWaitError::Exited {
                status,
                partial: partial(),
            });
        }
        if gone {
            return Err(HandshakeWaitError::Vanished {
                pid: spawned.identity.pid,
                partial: partial(),
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HandshakeWaitError::Timeout {
                waited: now - started,
                partial: partial(),
            });
        }
        let nap = match &watch {
            Some(_) => WATCHED_POLL,
            None => poll_after(now - started),
        }
        .min(deadline - now);
        let woke = tokio::select! {
            changed = exit.changed(), if !waiter_gone => match changed {
                Ok(()) => Woke::Exit,
                Err(_) => Woke::WaiterGone,
            },
            written = async {
                match &mut watch {
                    Some(w) => w.written().await,
                    None => std::future::pending().await,
                }
            } => match written {
                Ok(()) => Woke::Written,
                Err(_) => Woke::WatchFailed,
            },
            _ = tokio::time::sleep(nap) => Woke::Timer,
        };
        match woke {
            Woke::WaiterGone => waiter_gone = true,
            Woke::WatchFailed => watch = None,
            Woke::Exit | Woke::Written | Woke::Timer => {}
        }
    }
}

/// What ended one wait of [`read_handshake`].
enum Woke {
    /// The plugin exited (its status is published).
    Exit,
    /// The background waiter is gone: the exit must be polled.
    WaiterGone,
    /// The stdout file was written.
    Written,
    /// The inotify watch failed: poll from now on.
    WatchFailed,
    /// The poll interval passed.
    Timer,
}

/// With an inotify watch on the stdout file, the file is still read this often (a safety
/// net for file systems whose writes raise no inotify event).
const WATCHED_POLL: Duration = Duration::from_millis(250);

/// Reads at most `MAX_HANDSHAKE_LINE + 1` bytes of `path` from `offset`.
fn read_head(path: &Path, offset: u64) -> Result<Vec<u8>, HandshakeWaitError> {
    let io_err = |source| HandshakeWaitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    let mut buf = Vec::with_capacity(MAX_HANDSHAKE_LINE + 1);
    file.take(MAX_HANDSHAKE_LINE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    Ok(buf)
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), read once per host process.
pub fn boot_id() -> Result<String, ProcessError> {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id.clone());
    }
    let path = Path::new("/proc/sys/kernel/random/boot_id");
    let text = fs::read_to_string(path).map_err(|source| ProcessError::Proc {
        path: path.to_path_buf(),
        source,
    })?;
    let id = text.trim().to_string();
    if id.is_empty() {
        return Err(ProcessError::ProcFormat {
            path: path.to_path_buf(),
            detail: "empty boot id".into(),
        });
    }
    Ok(BOOT_ID.get_or_init(|| id).clone())
}

/// What we read from `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    state: char,
    ppid: u32,
    pgrp: i64,
    start_time: u64,
}

impl Stat {
    /// The parent's pid (field 4).
    pub(super) fn ppid(&self) -> u32 {
        self.ppid
    }

    /// A zombie or a process being reaped.
    pub(super) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`; `Ok(None)` if the process does not exist.
pub(super) fn read_stat(pid: u32) -> Result<Option<Stat>, ProcessError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    // Tests: `/proc` unreadable, as when the process is out of file descriptors.
    fail::fail_point!("proc-stat-emfile", |_| Err(ProcessError::Proc {
        path: path.clone(),
        source: io::Error::from_raw_os_error(libc::EMFILE),
    }));
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            return Ok(None)
        }
        Err(source) => return Err(ProcessError::Proc { path, source }),
    };
    parse_stat(&bytes)
        .map(Some)
        .map_err(|detail| ProcessError::ProcFormat { path, detail })
}

/// Parses the fields after the command name, which is in parentheses and may itself
/// contain spaces and parentheses: everything after the LAST `)` is space-separated.
fn parse_stat(bytes: &[u8]) -> Result<Stat, String> {
    let close = bytes
        .iter()
        .rposition(|&b| b == b')')
        .ok_or_else(|| "no ')' after the command name".to_string())?;
    let rest = std::str::from_utf8(&bytes[close + 1..])
        .map_err(|_| "fields after the command name are not UTF-8".to_string())?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    let field = |n: usize| {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| format!("only {} fields, need field {n}", fields.len() + 2))
    };
    let state = field(3)?
        .chars()
        .next()
        .ok_or_else(|| "empty state field".to_string())?;
    let ppid = field(4)?
        .parse::<u32>()
        .map_err(|e| format!("field 4 (ppid): {e}"))?;
    let pgrp = field(5)?
        .parse::<i64>()
        .map_err(|e| format!("field 5 (pgrp): {e}"))?;
    let start_time = field(22)?
        .parse::<u64>()
        .map_err(|e| format!("field 22 (starttime): {e}"))?;
    Ok(Stat {
        state,
        ppid,
        pgrp,
        start_time,
    })
}

/// The identity of the process `pid` now: its start time (field 22 of `/proc/<pid>/stat`)
/// and the current boot id. `Ok(None)` if no such process exists. A zombie still has an
/// identity (use [`is_alive`] to ask whether it runs).
pub fn identity_of(pid: u32) -> Result<Option<ProcessIdentity>, ProcessError> {
    let Some(stat) = read_stat(pid)? else {
        return Ok(None);
    };
    Ok(Some(ProcessIdentity {
        pid,
        start_time: stat.start_time,
        boot_id: boot_id()?,
    }))
}

/// True if the process exists, is not a zombie, and its start time and the boot id match
/// `identity`: only then may it be signalled. Any error reading `/proc` counts as "not
/// alive" (never signal what we cannot recognise).
pub fn is_alive(identity: &ProcessIdentity) -> bool {
    stat_if_ours(identity).is_some()
}

/// A pidfd of the process `pid` (`pidfd_open(2)`, Linux 5.3+): readable once it has
/// exited; `ESRCH` when no process has that pid.
pub(super) fn pidfd_open(pid: libc::pid_t) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd =
        std::os::fd::RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a descriptor just opened that nobody else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Waits on a pidfd until `identity`'s process exits or `deadline` passes, whoever its
/// parent is (a one-shot command stops plugins an earlier process started): the pidfd
/// turns readable at the exit, so no polling of `/proc` and no timer rounds. `true` only
/// when the process is known gone ([`is_alive`] says so after the wake); `false` when that
/// is not known (no pidfd on this kernel, the deadline passed, or it still looks alive):
/// the caller then checks `/proc` as before.
pub async fn exited_on_pidfd(identity: &ProcessIdentity, deadline: Instant) -> bool {
    let Ok(raw) = libc::pid_t::try_from(identity.pid) else {
        return false;
    };
    let Ok(fd) = pidfd_open(raw) else {
        // ESRCH: no process has that pid any more.
        return !is_alive(identity);
    };
    // The pidfd names whichever process had the pid at `pidfd_open`: it is the plugin's only
    // if the identity (pid, start time, boot id) still matches now. If not, it is gone.
    if !is_alive(identity) {
        return true;
    }
    // SAFETY: the OwnedFd stays open, and the same descriptor, until the AsyncFd that owns
    // it is dropped.
    let Ok(ready) = (unsafe { tokio::io::unix::AsyncFd::register(fd) }) else {
        return false;
    };
    match tokio::time::timeout_at(deadline, ready.readable()).await {
        Ok(Ok(_)) => !is_alive(identity),
        _ => false,
    }
}

/// Whether `identity`'s process runs, telling "dead" (it is gone, a zombie, or its pid now
/// names another process) from "unknown" (`/proc` could not be read, e.g. `EMFILE`): only
/// [`Liveness::Dead`] licenses treating a plugin as crashed.
pub fn liveness(identity: &ProcessIdentity) -> Liveness {
    match boot_id() {
        Ok(id) if id == identity.boot_id => {}
        Ok(_) => return Liveness::Dead,
        Err(_) => return Liveness::Unknown,
    }
    match read_stat(identity.pid) {
        Ok(Some(stat)) if !stat.is_dead() && stat.start_time == identity.start_time => {
            Liveness::Alive
        }
        Ok(_) => Liveness::Dead,
        Err(_) => Liveness::Unknown,
    }
}

/// The stat of `identity`'s process if it is alive and really that process.
fn stat_if_ours(identity: &ProcessIdentity) -> Option<Stat> {
    match boot_id() {
        Ok(id) if id == identity.boot_id => {}
        _ => return None,
    }
    match read_stat(identity.pid) {
        Ok(Some(stat)) if !stat.is_dead() && stat.start_time == identity.start_time => Some(stat),
        _ => None,
    }
}

/// How [`stop_group`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Nothing of ours was running: no signal was sent.
    AlreadyGone,
    /// Everything exited within the stop timeout after SIGTERM.
    Graceful,
    /// SIGKILL was needed; everything is gone now.
    Killed,
}

/// Pids that can never be a plugin we started: signalling them would hit init, ourselves,
/// or (pid 0) our own process group.
fn check_pid(pid: u32) -> Result<i32, ProcessError> {
    let raw = i32::try_from(pid).map_err(|_| ProcessError::BadPid { pid })?;
    if raw <= 1
        || pid == std::process::id()
        || i64::from(raw) == i64::from(nix::unistd::getpgrp().as_raw())
    {
        return Err(ProcessError::BadPid { pid });
    }
    Ok(raw)
}

/// A live (not zombie) process and the few facts we keep about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Member {
    pid: u32,
    start_time: u64,
}

/// Pids of all processes, from the numeric entries of `/proc`.
pub(super) fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .collect()
}

/// Live (non-zombie) processes whose process group is `pgid`, at a cost of O(the
/// generation's processes) where possible: nothing is read when `kill(-pgid, 0)` finds the
/// group empty, and with the generation's `cgroup` only the processes it holds are looked
/// at (every process a generation forks stays in its cgroup). Without a cgroup, every
/// process in `/proc` is (the fallback: a group can only be listed that way).
fn group_members(pgid: u32, cgroup: Option<&Path>) -> Vec<Member> {
    let Ok(raw) = i32::try_from(pgid) else {
        return Vec::new();
    };
    if raw <= 1 || kill(Pid::from_raw(-raw), None) == Err(Errno::ESRCH) {
        return Vec::new();
    }
    let candidates = match cgroup.and_then(super::cgroup::procs) {
        Some(pids) => pids,
        None => all_pids(),
    };
    candidates
        .into_iter()
        .filter_map(|pid| match read_stat(pid) {
            Ok(Some(stat)) if stat.pgrp == i64::from(pgid) && !stat.is_dead() => Some(Member {
                pid,
                start_time: stat.start_time,
            }),
            _ => None,
        })
        .collect()
}

/// The value of `TRYSWAP_RELOAD_ID` in the environment `pid` was started with.
pub(super) fn reload_tag_of(pid: u32) -> Option<String> {
    let environ = read_environ(pid)?;
    let prefix = format!("{RELOAD_ID_ENV}=");
    environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every live process, other than this one, that runs in `dir` (its working directory:
/// plugins run in their state directory) and carries a `TRYSWAP_RELOAD_ID` tag, with the
/// tag's reload id.
pub fn tagged_in(dir: &Path) -> Vec<(ReloadId, u32)> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|&pid| read_stat(pid).ok().flatten().is_some_and(|s| !s.is_dead()))
        .filter_map(|pid| {
            let reload = reload_tag_of(pid)?.parse::<ReloadId>().ok()?;
            Some((reload, pid))
        })
        .collect()
}

/// Every live process, other than this one, running in `dir` with a `TRYSWAP_RELOAD_ID`
/// tag (as [`tagged_in`]), with its slot and generation as its tags say, else as its
/// `TMPDIR` (`<dir>/tmp/<slot>/<generation>`) or its stdout
/// (`<dir>/logs/<slot>/<generation>.stdout`) says, and its executable and arguments.
pub fn found_in(dir: &Path) -> Vec<crate::driver::FoundProcess> {
    let Ok(boot) = boot_id() else {
        return Vec::new();
    };
    tagged_in(dir)
        .into_iter()
        .filter_map(|(reload, pid)| {
            let stat = read_stat(pid).ok().flatten()?;
            let environ = read_environ(pid).unwrap_or_default();
            let var = |name: &str| -> Option<String> {
                let prefix = format!("{name}=");
                environ
                    .split(|&b| b == 0)
                    .find_map(|e| e.strip_prefix(prefix.as_bytes()))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let tagged = var(super::handshake::SLOT_ENV)
                .zip(var(super::handshake::GENERATION_ENV))
                .map(|(slot, generation)| (slot, generation, crate::driver::FoundBy::Tags));
            let tmpdir = || {
                let path = PathBuf::from(var("TMPDIR")?);
                let rest = path.strip_prefix(dir.join("tmp")).ok()?;
                let (slot, generation) = two_parts(rest, "")?;
                Some((slot, generation, crate::driver::FoundBy::TmpDir))
            };
            let log = || {
                let path = fs::read_link(format!("/proc/{pid}/fd/1")).ok()?;
                let rest = path.strip_prefix(dir.join("logs")).ok()?;
                let (slot, generation) = two_parts(rest, ".stdout")?;
                Some((slot, generation, crate::driver::FoundBy::LogFile))
            };
            let told = tagged.or_else(tmpdir).or_else(log).and_then(|(s, g, by)| {
                Some((
                    tryswap_fsm::SlotName::new(s).ok()?,
                    tryswap_fsm::Generation(g.parse().ok()?),
                    by,
                ))
            });
            let args = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|bytes| {
                    bytes
                        .split(|&b| b == 0)
                        .skip(1)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let mut args = args;
            // cmdline ends with a NUL: the split leaves one empty string after it.
            if args.last().is_some_and(String::is_empty) {
                args.pop();
            }
            Some(crate::driver::FoundProcess {
                reload,
                identity: ProcessIdentity {
                    pid,
                    start_time: stat.start_time,
                    boot_id: boot.clone(),
                },
                leader: stat.pgrp == i64::from(pid),
                slot: told.as_ref().map(|(s, _, _)| s.clone()),
                generation: told.as_ref().map(|(_, g, _)| *g),
                found_by: told.as_ref().map(|(_, _, by)| *by),
                executable: fs::read_link(format!("/proc/{pid}/exe")).ok(),
                args,
            })
        })
        .collect()
}

/// `<a>/<b><suffix>` split into `a` and `b` (exactly two components).
fn two_parts(path: &Path, suffix: &str) -> Option<(String, String)> {
    let mut parts = path.components().map(|c| c.as_os_str().to_str());
    let (Some(Some(a)), Some(Some(b)), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    Some((a.to_owned(), b.strip_suffix(suffix)?.to_owned()))
}

/// Reads `/proc/<pid>/environ` (at most 4 MiB); `None` if unreadable.
fn read_environ(pid: u32) -> Option<Vec<u8>> {
    let file = File::open(format!("/proc/{pid}/environ")).ok()?;
    let mut buf = Vec::new();
    file.take(4 << 20).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// What may be signalled right now for a group whose leader was `identity`.
#[derive(Debug, PartialEq, Eq)]
enum Targets {
    /// The leader is verified alive: signal the whole group atomically.
    Group,
    /// The leader is gone; these members are verified ours.
    Members(Vec<Member>),
    /// Nothing of ours is left (possibly unverifiable strangers, which we leave alone).
    Nothing,
}

/// Decides what [`stop_group`] may signal. See its documentation for the rule.
struct GroupGuard<'a> {
    identity: &'a ProcessIdentity,
    /// The generation's cgroup, if it runs in one: where its processes are listed.
    cgroup: Option<&'a Path>,
    /// Members seen while the leader was verified alive (so certainly in our group).
    known: HashSet<Member>,
    /// Accepted values of `TRYSWAP_RELOAD_ID`.
    tags: Vec<String>,
    warned: HashSet<u32>,
}

impl GroupGuard<'_> {
    fn targets(&mut self) -> Targets {
        if is_alive(self.identity) {
            return Targets::Group;
        }
        if !matches!(boot_id(), Ok(id) if id == self.identity.boot_id) {
            return Targets::Nothing;
        }
        let mut verified = Vec::new();
        for member in group_members(self.identity.pid, self.cgroup) {
            let ours = member.start_time >= self.identity.start_time
                && (self.known.contains(&member)
                    || reload_tag_of(member.pid).is_some_and(|t| self.tags.contains(&t)));
            if ours {
                verified.push(member);
            } else if self.warned.insert(member.pid) {
                tracing::warn!(
                    pgid = self.identity.pid,
                    pid = member.pid,
                    "process group member cannot be verified as ours (no matching {RELOAD_ID_ENV}); not signalling it"
                );
            }
        }
        if verified.is_empty() {
            Targets::Nothing
        } else {
            Targets::Members(verified)
        }
    }

    fn send(&self, targets: &Targets, signal: Signal) -> Result<(), ProcessError> {
        match targets {
            Targets::Nothing => Ok(()),
            Targets::Group => {
                let pgid = check_pid(self.identity.pid)?;
                match kill(Pid::from_raw(-pgid), signal) {
                    Ok(()) | Err(Errno::ESRCH) => Ok(()),
                    Err(source) => Err(ProcessError::Signal {
                        signal,
                        target: format!("process group {pgid}"),
                        source,
                    }),
                }
            }
            Targets::Members(members) => {
                for m in members {
                    signal_if_same(m.pid, m.start_time, signal)?;
                }
                Ok(())
            }
        }
    }
}

/// Sends `signal` to `pid` if it is still the (non-zombie) process started at `start_time`.
fn signal_if_same(pid: u32, start_time: u64, signal: Signal) -> Result<bool, ProcessError> {
    let raw = check_pid(pid)?;
    match read_stat(pid) {
        Ok(Some(stat)) if stat.start_time == start_time && !stat.is_dead() => {}
        _ => return Ok(false),
    }
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(source) => Err(ProcessError::Signal {
            signal,
            target: format!("pid {pid}"),
            source,
        }),
    }
}

/// Stops the process group led by `identity`: SIGTERM, up to `stop_timeout` for it to
/// empty, then SIGKILL and up to 5 s more. Signals only; a graceful go-plugin controller
/// shutdown (see `probe::grpc_controller_shutdown`) is the caller's job before this.
///
/// Safety rule — a pid or group is only signalled when it is provably ours:
/// - While the leader is alive with the recorded pid, start time and boot id, the whole
///   group (`-pid`) is signalled: a live leader's pid cannot be reused, and its group was
///   created by it. Members present at that moment are remembered as ours.
/// - Once the leader is gone (exited, zombie, or its pid now names another process),
///   remaining processes of group `pid` are signalled one by one, each only if it started
///   no earlier than the leader AND is either one of the remembered members (same pid and
///   start time) or carries `TRYSWAP_RELOAD_ID` equal to the leader's (read from its
///   environment while it was alive) or to `reload_id`. Unverifiable members are left alone
///   (with a warning): a pgid can outlive its leader, and after the group empties the number
///   may be reused by a stranger.
/// - Nothing is signalled across reboots, nor pids 0/1, this process or its own group.
///
/// "Gone" means: the leader is not alive (zombies count as gone; our own child is reaped by
/// [`spawn`]'s waiter, others by their parent or init) and no verified member is alive.
/// Returns [`StopOutcome::AlreadyGone`] if nothing had to be signalled,
/// [`ProcessError::StillRunning`] if verified processes survive SIGKILL for 5 s.
pub async fn stop_group(
    identity: &ProcessIdentity,
    reload_id: Option<&ReloadId>,
    stop_timeout: Duration,
) -> Result<StopOutcome, ProcessError> {
    stop_group_in(identity, reload_id, None, stop_timeout).await
}

/// [`stop_group`] for a generation that runs in the cgroup `cgroup` (every process it
/// forked is there): the group's members are listed from the cgroup's `cgroup.procs`
/// instead of a scan of all of `/proc`, so stopping costs O(the generation's processes)
/// whatever else runs on the host. The rule of what may be signalled is unchanged.
pub async fn stop_group_in(
    identity: &ProcessIdentity,
    reload_id: Option<&ReloadId>,
    cgroup: Option<&Path>,
    stop_timeout: Duration,
) -> Result<StopOutcome, ProcessError> {
    check_pid(identity.pid)?;
    let mut tags: Vec<String> = reload_id.map(|id| id.to_string()).into_iter().collect();
    let mut known = HashSet::new();
    if is_alive(identity) {
        if let Some(tag) = reload_tag_of(identity.pid) {
            tags.push(tag);
        }
        known.extend(group_members(identity.pid, cgroup));
        // The snapshot may have raced with the leader's exit; it only counts if the leader
        // was still the same process after it.
        if !is_alive(identity) {
            known.clear();
        }
    }
    let mut guard = GroupGuard {
        identity,
        cgroup,
        known,
        tags,
        warned: HashSet::new(),
    };

    let targets = guard.targets();
    if targets == Targets::Nothing {
        return Ok(StopOutcome::AlreadyGone);
    }
    tracing::debug!(pgid = identity.pid, ?targets, "stop_group: SIGTERM");
    guard.send(&targets, Signal::SIGTERM)?;
    if wait_until_nothing(&mut guard, stop_timeout).await {
        return Ok(StopOutcome::Graceful);
    }

    let started = Instant::now();
    let deadline = started + KILL_GRACE;
    loop {
        let targets = guard.targets();
        if targets == Targets::Nothing {
            return Ok(StopOutcome::Killed);
        }
        if Instant::now() >= deadline {
            let mut pids: Vec<u32> = match targets {
                Targets::Members(m) => m.iter().map(|m| m.pid).collect(),
                _ => vec![identity.pid],
            };
            pids.sort_unstable();
            return Err(ProcessError::StillRunning {
                pgid: identity.pid,
                pids,
                waited: started.elapsed(),
            });
        }
        tracing::debug!(pgid = identity.pid, ?targets, "stop_group: SIGKILL");
        // Re-sent each round: members forked after the first SIGKILL are caught too.
        guard.send(&targets, Signal::SIGKILL)?;
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_until_nothing(guard: &mut GroupGuard<'_>, timeout: Duration) -> bool {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if guard.targets() == Targets::Nothing {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(poll_after(now - started).min(deadline - now)).await;
    }
}

/// Every live (non-zombie) process, other than this one, whose environment carries
/// `TRYSWAP_RELOAD_ID=<reload_id>`. Processes whose environment cannot be read (other
/// users', or gone mid-scan) are skipped.
pub fn tagged_processes(reload_id: &ReloadId) -> Vec<ProcessIdentity> {
    let Ok(boot) = boot_id() else {
        return Vec::new();
    };
    let wanted = format!("{RELOAD_ID_ENV}={reload_id}");
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let environ = read_environ(pid)?;
            if !environ.split(|&b| b == 0).any(|e| e == wanted.as_bytes()) {
                return None;
            }
            let stat = read_stat(pid).ok()??;
            if stat.is_dead() {
                return None;
            }
            Some(ProcessIdentity {
                pid,
                start_time: stat.start_time,
                boot_id: boot.clone(),
            })
        })
        .collect()
}

/// Kills every process tagged with `reload_id` (see [`tagged_processes`]): SIGTERM, up to
/// `stop_timeout` for them to exit, then SIGKILL and up to 5 s more. Each pid is signalled
/// only if its start time still matches what the scan saw; the scan is repeated while
/// waiting, so processes forked meanwhile are caught too. Returns every process signalled.
/// Survivors (a process stuck in the kernel) are logged, not returned as an error.
pub async fn kill_tagged(reload_id: &ReloadId, stop_timeout: Duration) -> Vec<ProcessIdentity> {
    let mut signalled: Vec<ProcessIdentity> = Vec::new();
    let mut termed: HashSet<(u32, u64)> = HashSet::new();
    fn record(signalled: &mut Vec<ProcessIdentity>, p: &ProcessIdentity) {
        if !signalled.contains(p) {
            signalled.push(p.clone());
        }
    }

    let deadline = Instant::now() + stop_timeout;
    loop {
        let live = tagged_processes(reload_id);
        if live.is_empty() {
            return signalled;
        }
        if Instant::now() >= deadline {
            break;
        }
        for p in &live {
            if termed.insert((p.pid, p.start_time)) {
                match signal_if_same(p.pid, p.start_time, Signal::SIGTERM) {
                    Ok(true) => record(&mut signalled, p),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pid = p.pid, error = %e, "kill_tagged: SIGTERM failed")
                    }
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }

    let deadline = Instant::now() + KILL_GRACE;
    loop {
        let live = tagged_processes(reload_id);
        if live.is_empty() {
            return signalled;
        }
        if Instant::now() >= deadline {
            let pids: Vec<u32> = live.iter().map(|p| p.pid).collect();
            tracing::warn!(%reload_id, ?pids, "kill_tagged: processes survive SIGKILL");
            return signalled;
        }
        for p in &live {
            match signal_if_same(p.pid, p.start_time, Signal::SIGKILL) {
                Ok(true) => record(&mut signalled, p),
                Ok(false) => {}
                Err(e) => tracing::warn!(pid = p.pid, error = %e, "kill_tagged: SIGKILL failed"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The first `head_lines` and last `tail_lines` lines of a log file, for error messages.
///
/// At most `max_bytes` of the file are read (half from the start, half from the end), so a
/// huge log costs nothing; bytes are decoded as lossy UTF-8. Omitted parts are marked with
/// a line `… (N lines omitted) …` or `… (N bytes omitted) …`. A missing or empty file gives
/// an empty string; another read error gives a one-line note naming the path.
pub fn log_excerpt(path: &Path, head_lines: usize, tail_lines: usize, max_bytes: usize) -> String {
    match excerpt(path, head_lines, tail_lines, max_bytes) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => format!("(cannot read log {}: {e})", path.display()),
    }
}

fn excerpt(
    path: &Path,
    head_lines: usize,
    tail_lines: usize,
    max_bytes: usize,
) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 || max_bytes == 0 || head_lines + tail_lines == 0 {
        return Ok(String::new());
    }
    if len <= max_bytes as u64 {
        let mut buf = Vec::with_capacity(len as usize);
        (&mut file).take(max_bytes as u64).read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
        if lines.len() <= head_lines + tail_lines {
            return Ok(lines.join("\n"));
        }
        let omitted = lines.len() - head_lines - tail_lines;
        let mut out: Vec<String> = lines[..head_lines].iter().map(|s| s.to_string()).collect();
        out.push(format!("… ({omitted} lines omitted) …"));
        out.extend(
            lines[lines.len() - tail_lines..]
                .iter()
                .map(|s| s.to_string()),
        );
        return Ok(out.join("\n"));
    }

    let half = (max_bytes / 2).max(1) as u64;
    let mut head = Vec::with_capacity(half as usize);
    (&mut file).take(half).read_to_end(&mut head)?;
    let tail_start = len.saturating_sub(half).max(head.len() as u64);
    file.seek(SeekFrom::Start(tail_start))?;
    let mut tail = Vec::with_capacity(half as usize);
    (&mut file).take(half).read_to_end(&mut tail)?;

    let head_text = String::from_utf8_lossy(&head);
    let head_part: Vec<&str> = head_text.split('\n').take(head_lines).collect();
    let head_bytes: usize = head_part.iter().map(|l| l.len() + 1).sum();
    let tail_text = String::from_utf8_lossy(&tail);
    let tail_trimmed = tail_text.trim_end_matches('\n');
    let mut tail_all: Vec<&str> = tail_trimmed.split('\n').collect();
    if tail_all.len() > 1 && tail_start > 0 {
        // The first piece probably starts mid-line; only keep it if it is all we have.
        tail_all.remove(0);
    }
    let tail_part = &tail_all[tail_all.len().saturating_sub(tail_lines)..];
    let tail_bytes: usize = tail_part.iter().map(|l| l.len() + 1).sum();
    let omitted = len.saturating_sub((head_bytes + tail_bytes) as u64);
    let mut out: Vec<String> = head_part.iter().map(|s| s.to_string()).collect();
    out.push(format!("… ({omitted} bytes omitted) …"));
    out.extend(tail_part.iter().map(|s| s.to_string()));
    Ok(out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generations_tmpdir_or_log_file_names_its_slot_and_generation() {
        let parts = |p: &str, suffix| two_parts(Path::new(p), suffix);
        assert_eq!(parts("demo/3", ""), Some(("demo".into(), "3".into())));
        assert_eq!(
            parts("demo/3.stdout", ".stdout"),
            Some(("demo".into(), "3".into()))
        );
        assert_eq!(parts("demo/3.log", ".stdout"), None);
        assert_eq!(parts("demo", ""), None);
        assert_eq!(parts("demo/3/x", ""), None);
    }

    #[test]
    fn stat_parses_after_last_paren() {
        let mut line = String::from("1234 (we ird) (x) ) S 1 777 777 0 -1 4194560");
        for i in 10..=21 {
            line.push_str(&format!(" {i}"));
        }
        line.push_str(" 987654 rest of fields\n");
        let stat = parse_stat(line.as_bytes()).unwrap();
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                ppid: 1,
                pgrp: 777,
                start_time: 987654
            }
        );
    }

    #[test]
    fn stat_rejects_truncated_and_garbage() {
        assert!(parse_stat(b"12 (sh) S 1 2").is_err());
        assert!(parse_stat(b"no paren at all").is_err());
        assert!(parse_stat(b"").is_err());
        assert!(parse_stat(&[0xff, b')', 0xfe]).is_err());
    }

    #[test]
    fn own_identity_is_alive_and_other_start_time_is_not() {
        let me = identity_of(std::process::id()).unwrap().unwrap();
        assert!(is_alive(&me));
        let other = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!is_alive(&other));
        let other_boot = ProcessIdentity {
            boot_id: "not-this-boot".into(),
            ..me
        };
        assert!(!is_alive(&other_boot));
    }

    /// A process that is not this one's child (a shell's background job, left behind when
    /// the shell exits), as a one-shot command meets the plugin an earlier command started.
    fn not_our_child() -> ProcessIdentity {
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        identity_of(pid).unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_pidfd_tells_the_exit_of_a_process_that_is_not_our_child() {
        let plugin = not_our_child();
        let soon = || Instant::now() + Duration::from_millis(50);
        assert!(!exited_on_pidfd(&plugin, soon()).await, "it still runs");
        let waiting = Instant::now();
        let waiter = tokio::spawn({
            let plugin = plugin.clone();
            async move { exited_on_pidfd(&plugin, Instant::now() + Duration::from_secs(30)).await }
        });
        kill(Pid::from_raw(plugin.pid as i32), Signal::SIGTERM).unwrap();
        assert!(waiter.await.unwrap(), "its exit is seen");
        assert!(waiting.elapsed() < Duration::from_secs(10));
        assert!(!is_alive(&plugin));
        assert!(exited_on_pidfd(&plugin, soon()).await);
        // Another identity behind a live pid (this process, another start time) is gone.
        let me = identity_of(std::process::id()).unwrap().unwrap();
        let reused = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(exited_on_pidfd(&reused, soon()).await);
    }

    #[test]
    fn refuses_dangerous_pids() {
        assert!(check_pid(0).is_err());
        assert!(check_pid(1).is_err());
        assert!(check_pid(std::process::id()).is_err());
        assert!(check_pid(u32::MAX).is_err());
    }
}
