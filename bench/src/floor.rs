//! The bare floor, done by hand: spawn the plugin with go-plugin's environment, read its
//! handshake line from a stdout pipe, one gRPC health check, SIGTERM the old one and wait.
//! No store, no journal, no log files, no identity checks: the least any host must do.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tryswap::config::{HandshakeConfig, ProbeKind, SlotConfig, DEFAULT_GRPC_SERVICE};
use tryswap_fsm::Endpoint;

/// How to start one plugin: program, arguments, environment.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The plugin executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its handshake rules (the environment is built from them).
    pub handshake: HandshakeConfig,
}

impl Launch {
    /// The launch the process driver would make for `slot` with config file `config`.
    pub fn for_slot(program: PathBuf, slot: &SlotConfig, config: &std::path::Path) -> Self {
        let args = slot
            .args
            .iter()
            .map(|a| a.replace("{config}", &config.to_string_lossy()))
            .collect();
        Launch {
            program,
            args,
            handshake: slot.handshake.clone(),
        }
    }
}

/// A plugin started by hand.
pub struct Bare {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    /// Where it serves.
    pub endpoint: Endpoint,
    /// Its pid.
    pub pid: u32,
}

/// How long each step of the floor took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Steps {
    /// spawn(2) returned.
    pub spawn: Duration,
    /// The handshake line was read and parsed.
    pub handshake: Duration,
    /// One health check passed.
    pub probe: Duration,
    /// The old plugin exited after SIGTERM.
    pub stop_old: Duration,
}

/// Spawns the plugin and reads its handshake line (bounded by `timeout`).
pub async fn launch(launch: &Launch, timeout: Duration) -> Result<(Bare, Steps), String> {
    let started = Instant::now();
    let reload = uuid_now();
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .args(&launch.args)
        .env_clear()
        .envs(tryswap::internals::handshake::plugin_env(
            &launch.handshake,
            &reload,
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", launch.program.display()))?;
    let pid = child.id().ok_or("spawned plugin has no pid")?;
    let spawn = started.elapsed();
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    match tokio::time::timeout(timeout, reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => return Err(format!("plugin {pid} closed stdout before its handshake")),
        Ok(Err(e)) => return Err(format!("reading plugin {pid}'s stdout: {e}")),
        Err(_) => return Err(format!("no handshake from plugin {pid} within {timeout:?}")),
    }
    let endpoint = tryswap::internals::handshake::parse_line(line.trim_end(), &launch.handshake)
        .map_err(|e| format!("plugin {pid}: {e}"))?;
    let handshake = started.elapsed() - spawn;
    Ok((
        Bare {
            child,
            _stdout: reader,
            endpoint,
            pid,
        },
        Steps {
            spawn,
            handshake,
            ..Steps::default()
        },
    ))
}

/// One gRPC health check (`grpc.health.v1`, service `plugin`).
pub async fn probe_once(endpoint: &Endpoint, timeout: Duration) -> Result<(), String> {
    let kind = ProbeKind::Grpc {
        service: DEFAULT_GRPC_SERVICE.to_owned(),
    };
    tryswap::internals::probe::check_once(&kind, Some(endpoint), timeout)
        .await
        .map_err(|e| e.to_string())
}

/// SIGTERM, then waits for the exit (SIGKILL after `timeout`).
pub async fn stop(bare: Bare, timeout: Duration) -> Result<(), String> {
    let pid = i32::try_from(bare.pid).map_err(|_| format!("bad pid {}", bare.pid))?;
    match kill(Pid::from_raw(pid), Signal::SIGTERM) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => return Err(format!("SIGTERM to {pid}: {e}")),
    }
    wait_exit(bare, timeout).await
}

/// Waits for the plugin, already asked to stop, to exit; SIGKILL (and an error) after
/// `timeout`.
pub async fn wait_exit(mut bare: Bare, timeout: Duration) -> Result<(), String> {
    let pid = bare.pid;
    match tokio::time::timeout(timeout, bare.child.wait()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("waiting for {pid}: {e}")),
        Err(_) => {
            let _ = bare.child.kill().await;
            Err(format!(
                "plugin {pid} did not exit within {timeout:?} of its stop"
            ))
        }
    }
}

/// One floor reload: launch the new plugin, probe it once, stop the old one.
pub async fn reload(
    how: &Launch,
    old: Option<Bare>,
    timeout: Duration,
) -> Result<(Bare, Steps), String> {
    let (new, mut steps) = launch(how, timeout).await?;
    let t = Instant::now();
    probe_once(&new.endpoint, timeout).await?;
    steps.probe = t.elapsed();
    if let Some(old) = old {
        let t = Instant::now();
        stop(old, timeout).await?;
        steps.stop_old = t.elapsed();
    }
    Ok((new, steps))
}

fn uuid_now() -> tryswap_fsm::ReloadId {
    tryswap_fsm::ReloadId::now_v7()
}
