//! The one-shot floor: the least a host that reloads a go-plugin plugin in a short-lived
//! process must do, as one process per reload (section 1's `tryswap activate` row is
//! compared against it).
//!
//! ```text
//! tryswap-oneshot-floor SLOT PIDFILE PROGRAM [ARGS…]
//! ```
//!
//! Spawns `PROGRAM ARGS…` with go-plugin's environment for slot `SLOT` (the default
//! handshake: cookie `TRYSWAP_PLUGIN=<slot>`, gRPC), reads its handshake line from a stdout
//! pipe, runs one gRPC health check, then stops the plugin whose pid `PIDFILE` names (SIGTERM,
//! waits for its exit on a pidfd), writes the new pid to `PIDFILE` and exits, leaving the new
//! plugin running. No store, no journal, no durable write, no identity check. Exit status 1
//! with a message on stderr if any step fails, or if the old plugin was already gone (a floor
//! whose old plugin died early would measure less than a stop).

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tryswap::config::{HandshakeConfig, ProbeKind, DEFAULT_GRPC_SERVICE};
use tryswap::internals::handshake::{parse_line, plugin_env};
use tryswap_fsm::{ReloadId, SlotName};

/// Bound on each step (handshake, probe, the old plugin's exit).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tryswap-oneshot-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: tryswap-oneshot-floor SLOT PIDFILE PROGRAM [ARGS…]";
    let slot = args.next().ok_or(usage)?;
    let slot = SlotName::new(slot.to_string_lossy().as_ref()).map_err(|e| e.to_string())?;
    let pidfile = PathBuf::from(args.next().ok_or(usage)?);
    let program = args.next().ok_or(usage)?;
    let rules = HandshakeConfig::for_slot(&slot);

    let mut child = Command::new(&program)
        .args(args)
        .env_clear()
        .envs(plugin_env(&rules, &ReloadId::now_v7()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", Path::new(&program).display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    // A plugin that never prints is killed by the caller's own timeout; this read blocks.
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading plugin {pid}'s stdout: {e}"))?;
    let endpoint = parse_line(line.trim_end(), &rules).map_err(|e| format!("plugin {pid}: {e}"))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let kind = ProbeKind::Grpc {
        service: DEFAULT_GRPC_SERVICE.to_owned(),
    };
    runtime
        .block_on(tryswap::internals::probe::check_once(
            &kind,
            Some(&endpoint),
            STEP_TIMEOUT,
        ))
        .map_err(|e| format!("plugin {pid}: {e}"))?;

    if let Some(old) = read_pid(&pidfile)? {
        stop(old)?;
    }
    std::fs::write(&pidfile, pid.to_string())
        .map_err(|e| format!("writing {}: {e}", pidfile.display()))?;
    Ok(())
}

fn read_pid(pidfile: &Path) -> Result<Option<i32>, String> {
    match std::fs::read_to_string(pidfile) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("{}: {e}", pidfile.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", pidfile.display())),
    }
}

/// SIGTERM to `pid` (not our child: a former floor process started it), then waits on its
/// pidfd until it exits; SIGKILL after [`STEP_TIMEOUT`].
fn stop(pid: i32) -> Result<(), String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(format!(
            "the old plugin {pid} is not running: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a new descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut poll = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout only asks whether it has exited already.
    if unsafe { libc::poll(&mut poll, 1, 0) } == 1 {
        return Err(format!(
            "the old plugin {pid} had exited before it was stopped"
        ));
    }
    kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| format!("SIGTERM to {pid}: {e}"))?;
    let timeout = i32::try_from(STEP_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut poll, 1, timeout) };
        match n {
            1.. => return Ok(()),
            0 => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(format!("plugin {pid} ignored SIGTERM for {STEP_TIMEOUT:?}"));
            }
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err(format!("poll: {}", std::io::Error::last_os_error())),
        }
    }
}
