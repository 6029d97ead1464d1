//! The process driver: plugins as child processes speaking go-plugin's handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tryswap_fsm::Protocol;

use crate::config::SlotConfig;
use crate::driver::{Driver, DriverError, Instance, LaunchRequest, StopOutcome};
use crate::handshake;
use crate::process::{self, HandshakeWaitError, SpawnSpec, Spawned};

/// How much of a plugin's log an error message quotes.
const EXCERPT_HEAD: usize = 3;
const EXCERPT_TAIL: usize = 5;
const EXCERPT_BYTES: usize = 2048;

/// Where a generation's output goes: `<state-dir>/logs/<slot>/<generation>.log` (stderr) and
/// `<generation>.stdout` (stdout, whose first line is the handshake).
pub fn log_paths(state_dir: &Path, request: &LaunchRequest) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("logs").join(request.slot.as_str());
    (
        dir.join(format!("{}.stdout", request.generation)),
        dir.join(format!("{}.log", request.generation)),
    )
}

struct ProcessHandle {
    spawned: Spawned,
    stdout_path: PathBuf,
}

/// Launches plugin processes for one slot: the stored executable, the slot's arguments and
/// environment plus go-plugin's, its own process group, output to log files that outlive
/// the host.
///
/// The environment is exactly: the slot's `env`, the host variables named in `pass_env`
/// (PATH included only if listed), the magic cookie, `PLUGIN_PROTOCOL_VERSIONS`,
/// `PLUGIN_MIN_PORT`, `PLUGIN_MAX_PORT` and `TRYSWAP_RELOAD_ID`.
pub struct ProcessDriver {
    slot: Arc<SlotConfig>,
    state_dir: PathBuf,
}

impl ProcessDriver {
    /// A driver for `slot`, keeping logs under `state_dir`.
    pub fn new(slot: SlotConfig, state_dir: impl Into<PathBuf>) -> Self {
        ProcessDriver {
            slot: Arc::new(slot),
            state_dir: state_dir.into(),
        }
    }

    fn spec(&self, request: &LaunchRequest) -> Result<(SpawnSpec, PathBuf), DriverError> {
        let slot = &self.slot;
        let program = request.executable.clone().ok_or_else(|| {
            DriverError::error(format!(
                "slot {}: runs plugin processes, so the candidate needs an executable",
                slot.name
            ))
        })?;
        let mut args = Vec::with_capacity(slot.args.len());
        for arg in &slot.args {
            if arg.contains("{config}") {
                let config = request.config_file.as_ref().ok_or_else(|| {
                    DriverError::error(format!(
                        "slot {}: args use {{config}} but the candidate has no config file \
                         (pass --config-file)",
                        slot.name
                    ))
                })?;
                args.push(arg.replace("{config}", &config.to_string_lossy()));
            } else {
                args.push(arg.clone());
            }
        }
        let mut env: Vec<(String, String)> = Vec::new();
        for name in &slot.pass_env {
            if let Ok(value) = std::env::var(name) {
                env.push((name.clone(), value));
            }
        }
        env.extend(slot.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(handshake::plugin_env(&slot.handshake, &request.reload));
        let (stdout_path, stderr_path) = log_paths(&self.state_dir, request);
        Ok((
            SpawnSpec {
                program,
                args,
                env,
                cwd: self.state_dir.clone(),
                stdout_path: stdout_path.clone(),
                stderr_path,
                log_max_bytes: slot.log_max_bytes,
            },
            stdout_path,
        ))
    }

    fn excerpt(instance: &Instance) -> String {
        match &instance.log_path {
            Some(path) => {
                let text = process::log_excerpt(path, EXCERPT_HEAD, EXCERPT_TAIL, EXCERPT_BYTES);
                if text.trim().is_empty() {
                    "(the plugin's log is empty)".to_owned()
                } else {
                    format!("plugin log {}:\n{}", path.display(), text.trim_end())
                }
            }
            None => String::new(),
        }
    }

    fn handle(instance: &Instance) -> Option<&ProcessHandle> {
        instance
            .handle
            .as_ref()
            .and_then(|h| h.downcast_ref::<ProcessHandle>())
    }

    /// How a plugin this process launched exited, once it has (`None` while it runs, and
    /// for instances reattached by identity: only the parent learns the status).
    pub(crate) fn exit_status(instance: &Instance) -> Option<std::process::ExitStatus> {
        Self::handle(instance).and_then(|h| h.spawned.exit_status())
    }

    async fn wait_gone(instance: &Instance, timeout: Duration) -> bool {
        let Some(identity) = &instance.process else {
            return true;
        };
        if let Some(handle) = Self::handle(instance) {
            // Our own child: its waiter reports the exit at once, no polling.
            match tokio::time::timeout(timeout, handle.spawned.wait_exit()).await {
                Ok(Some(_)) => return true,
                Err(_) => return !process::is_alive(identity),
                Ok(None) => {} // The waiter is gone: poll below.
            }
        }
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        loop {
            if !process::is_alive(identity) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            // Poll fast at first: a plugin asked to shut down usually exits within ms.
            let nap = if now - started < Duration::from_millis(50) {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            };
            tokio::time::sleep(nap.min(deadline - now)).await;
        }
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    async fn launch(&self, request: &LaunchRequest) -> Result<Instance, DriverError> {
        let (spec, stdout_path) = self.spec(request)?;
        let spawned = process::spawn(&spec).map_err(|e| {
            DriverError::error(format!(
                "slot {}: could not start {}: {e}",
                request.slot,
                spec.program.display()
            ))
        })?;
        Ok(Instance {
            slot: request.slot.clone(),
            generation: request.generation,
            reload: request.reload,
            artifact: request.artifact.clone(),
            process: Some(spawned.identity.clone()),
            log_path: Some(spec.stderr_path.clone()),
            endpoint: None,
            handle: Some(Arc::new(ProcessHandle {
                spawned,
                stdout_path,
            })),
        })
    }

    async fn validate(&self, instance: &mut Instance) -> Result<(), DriverError> {
        let slot = &self.slot;
        let handle = Self::handle(instance).ok_or_else(|| {
            DriverError::error(format!(
                "slot {}: candidate has no process handle",
                slot.name
            ))
        })?;
        let line =
            match process::read_handshake(&handle.spawned, &handle.stdout_path, slot.start_timeout)
                .await
            {
                Ok(line) => line,
                Err(HandshakeWaitError::Timeout { .. }) => {
                    return Err(DriverError::timeout(format!(
                        "no handshake line on stdout within {}; {}",
                        humantime::format_duration(slot.start_timeout),
                        Self::excerpt(instance)
                    )))
                }
                Err(e) => {
                    return Err(DriverError::error(format!(
                        "{e}; {}",
                        Self::excerpt(instance)
                    )))
                }
            };
        let endpoint = handshake::parse_line(&line, &slot.handshake)
            .map_err(|e| DriverError::error(format!("{e}; {}", Self::excerpt(instance))))?;
        instance.endpoint = Some(endpoint);
        Ok(())
    }

    async fn probe(&self, instance: &Instance) -> Result<(), DriverError> {
        let probe = crate::probe::probe(&self.slot.probe, instance.endpoint.as_ref());
        let result = match Self::handle(instance) {
            Some(handle) => {
                tokio::select! {
                    r = probe => r,
                    status = handle.spawned.wait_exit() => {
                        let status = status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string());
                        return Err(DriverError::error(format!(
                            "plugin exited ({status}) while being probed; {}",
                            Self::excerpt(instance)
                        )));
                    }
                }
            }
            None => probe.await,
        };
        result
            .map(|_| ())
            .map_err(|e| DriverError::error(format!("{e}; {}", Self::excerpt(instance))))
    }

    async fn stop(&self, instance: &Instance) -> Result<StopOutcome, DriverError> {
        let stop_timeout = self.slot.stop_timeout;
        let mut outcome = StopOutcome::AlreadyGone;
        if let Some(identity) = &instance.process {
            // go-plugin plugins exit cleanly when their controller asks.
            if process::is_alive(identity) {
                if let Some(endpoint) = &instance.endpoint {
                    if endpoint.protocol == Protocol::Grpc {
                        let ask = stop_timeout.min(Duration::from_secs(2));
                        if crate::probe::grpc_controller_shutdown(endpoint, ask)
                            .await
                            .is_ok()
                            && Self::wait_gone(instance, stop_timeout).await
                        {
                            outcome = StopOutcome::Graceful;
                        }
                    }
                }
            }
            // Signals to the whole group, even if the leader already exited: members it
            // left behind are signalled when they carry the instance's reload tag.
            let signalled = process::stop_group(identity, Some(&instance.reload), stop_timeout)
                .await
                .map_err(|e| {
                    DriverError::error(format!(
                        "stopping generation {} (pid {}): {e}",
                        instance.generation, identity.pid
                    ))
                })?;
            if outcome == StopOutcome::AlreadyGone {
                outcome = match signalled {
                    process::StopOutcome::AlreadyGone => StopOutcome::AlreadyGone,
                    process::StopOutcome::Graceful => StopOutcome::Graceful,
                    process::StopOutcome::Killed => StopOutcome::Killed,
                };
            }
        }
        // Anything that escaped the group (setsid'd grandchildren) still carries the tag.
        let stragglers = process::kill_tagged(&instance.reload, stop_timeout).await;
        if !stragglers.is_empty() {
            tracing::warn!(
                slot = %instance.slot,
                generation = instance.generation.0,
                count = stragglers.len(),
                "killed processes that escaped the plugin's process group"
            );
        }
        Ok(outcome)
    }

    fn is_alive(&self, instance: &Instance) -> bool {
        instance.process.as_ref().is_some_and(process::is_alive)
    }

    fn reattach(&self, facts: &Instance) -> Option<Instance> {
        let identity = facts.process.as_ref()?;
        process::is_alive(identity).then(|| Instance {
            handle: None,
            ..facts.clone()
        })
    }
}
