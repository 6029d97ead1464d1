//! The process driver: plugins as child processes speaking go-plugin's handshake.

pub mod cgroup;
pub mod connections;
pub mod handshake;
mod inotify;
pub mod os;
mod served;
pub mod sock_diag;
pub mod sockets;
pub mod stdio;
pub mod vfork;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::Instrument;
use tryswap_fsm::{Generation, ProcessIdentity, Protocol, ReloadId, SlotName};

use crate::config::SlotConfig;
use crate::driver::{
    Driver, DriverError, FoundProcess, Instance, LaunchRequest, Liveness, StopOutcome,
};
use os::{HandshakeWaitError, SpawnSpec, Spawned};
use stdio::{DrainEnd, DrainRegistration, StdioSinks};

/// How long recovery gives an orphaned process between SIGTERM and SIGKILL when its slot is
/// no longer configured (configured slots use their own `stop_timeout`).
pub const ORPHAN_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of a plugin's log an error message quotes.
const EXCERPT_HEAD: usize = 3;
const EXCERPT_TAIL: usize = 5;
const EXCERPT_BYTES: usize = 2048;

/// How long a stopped instance's stdio drain may take to read what the plugin wrote last
/// before it is aborted.
const STDIO_FINISH_GRACE: Duration = Duration::from_millis(500);
/// How long the stdio drain may take to connect to the plugin.
const STDIO_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the drain of a reattached plugin (not our child) checks that it still runs.
const STDIO_ALIVE_POLL: Duration = Duration::from_millis(500);

/// Where a generation's output goes: `<state-dir>/logs/<slot>/<generation>.log` (stderr) and
/// `<generation>.stdout` (stdout, whose first line is the handshake). go-plugin's stdio
/// stream (`plugin.GRPCStdio`) is drained into the same files.
pub fn log_paths(state_dir: &Path, request: &LaunchRequest) -> (PathBuf, PathBuf) {
    generation_log_paths(state_dir, &request.slot, request.generation)
}

fn generation_log_paths(
    state_dir: &Path,
    slot: &SlotName,
    generation: Generation,
) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("logs").join(slot.as_str());
    (
        dir.join(format!("{generation}.stdout")),
        dir.join(format!("{generation}.log")),
    )
}

/// A generation's own temporary directory, `<state-dir>/tmp/<slot>/<generation>` (mode
/// 0700), given to the plugin as `TMPDIR`: go-plugin creates its unix socket there, so it
/// is reachable only as intended and goes when the generation stops.
pub fn tmp_dir(state_dir: &Path, slot: &SlotName, generation: Generation) -> PathBuf {
    state_dir
        .join("tmp")
        .join(slot.as_str())
        .join(generation.to_string())
}

/// `mutex`'s guard, whether or not a holder panicked (what it guards stays consistent).
/// The one lock helper of the process driver's modules.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a stopped generation's temporary directory (and whatever it left there).
fn remove_tmp_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the generation's TMPDIR")
        }
    }
}

/// The handle of a plugin this process launched.
struct ProcessHandle {
    spawned: Spawned,
    stdout_path: PathBuf,
    stdio: StdioDrainTask,
    /// The generation's gRPC connection, set once its handshake is validated: the stdio
    /// stream, the reload's probe and the controller's `Shutdown` share it, as go-plugin's
    /// host shares one connection per plugin client. (The checks of a bake and of liveness
    /// dial their own, so they also prove the plugin still accepts connections.)
    control: OnceLock<Channel>,
    /// The TCP connections `control` dialed: this process's own, not outside callers.
    dialed: crate::probe::DialedSockets,
}

/// The handle of a plugin reattached by identity (launched by an earlier tryswap process).
struct ReattachedHandle {
    stdio: StdioDrainTask,
}

/// The background task draining an instance's go-plugin stdio stream, once one is started.
/// Dropping it (the last clone of the instance) aborts the task.
#[derive(Default)]
struct StdioDrainTask {
    task: Mutex<Option<JoinHandle<()>>>,
}

impl StdioDrainTask {
    fn set(&self, task: JoinHandle<()>) {
        let mut slot = lock(&self.task);
        if let Some(old) = slot.replace(task) {
            old.abort();
        }
    }

    /// Lets the drain read what a stopped plugin wrote last (within `grace`), then aborts
    /// it; returns once the task has ended.
    async fn finish(&self, grace: Duration) {
        let task = lock(&self.task).take();
        let Some(mut task) = task else {
            return;
        };
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for StdioDrainTask {
    fn drop(&mut self) {
        let task = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// Completes once the plugin's process has exited: at once through the exit watch of our
/// own child, else by polling its identity.
async fn process_exited(spawned: Option<Spawned>, identity: Option<ProcessIdentity>) {
    if let Some(spawned) = spawned {
        if spawned.wait_exit().await.is_some() {
            return;
        }
    }
    let Some(identity) = identity else {
        // Nothing to watch: the stream's end ends the drain.
        return std::future::pending().await;
    };
    // "Unknown" (`/proc` unreadable) is not "exited": keep draining.
    while os::liveness(&identity) != Liveness::Dead {
        tokio::time::sleep(STDIO_ALIVE_POLL).await;
    }
}

/// How much of the end of a generation's stdout file adoption reads for its handshake.
const ADOPT_STDOUT_TAIL: u64 = 1 << 20;

/// The endpoint a live process announced: the last line of the end of `stdout_path` that
/// is a handshake the slot accepts and whose address the process's own tree listens on
/// (a relaunch appends its line after the earlier runs').
fn announced_endpoint(
    stdout_path: &Path,
    rules: &crate::config::HandshakeConfig,
    identity: &ProcessIdentity,
    reload: &ReloadId,
) -> Result<tryswap_fsm::Endpoint, DriverError> {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(stdout_path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(ADOPT_STDOUT_TAIL)))?;
        let mut tail = Vec::new();
        file.take(ADOPT_STDOUT_TAIL).read_to_end(&mut tail)?;
        Ok(tail)
    };
    let tail = read().map_err(|e| {
        DriverError::error(format!(
            "reading pid {}'s handshake in {}: {e}",
            identity.pid,
            stdout_path.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&tail);
    let tag = reload.to_string();
    text.lines()
        .rev()
        .filter_map(|line| handshake::parse_line(line, rules).ok())
        .find(|endpoint| {
            sockets::check_endpoint_owner(endpoint.network, &endpoint.address, identity, &tag)
                .is_ok()
        })
        .ok_or_else(|| {
            DriverError::error(format!(
                "no handshake line in {} announces an address pid {} listens on",
                stdout_path.display(),
                identity.pid
            ))
        })
}

/// How long a generation's cgroup may take to empty after `cgroup.kill`.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long a candidate may take, after printing its handshake, to have a socket listening
/// at the address it announced.
const LISTENER_GRACE: Duration = Duration::from_secs(1);

/// Accepts the announced address only if the candidate's own process tree listens there
/// (see [`sockets::check_endpoint_owner`]), waiting up to `wait` for a listener to appear.
/// It reads `/proc`: on a multi-thread runtime, on the blocking pool.
async fn check_endpoint_owner(
    endpoint: &tryswap_fsm::Endpoint,
    identity: &ProcessIdentity,
    reload_tag: &str,
    wait: Duration,
) -> Result<(), sockets::EndpointOwnerError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (network, address) = (endpoint.network, endpoint.address.clone());
        let (candidate, tag) = (identity.clone(), reload_tag.to_owned());
        let result = crate::blocking::on_blocking_pool(move || {
            sockets::check_endpoint_owner(network, &address, &candidate, &tag)
        })
        .await
        .unwrap_or_else(|e| {
            Err(sockets::EndpointOwnerError::Proc {
                path: PathBuf::from("/proc"),
                source: std::io::Error::other(e.to_string()),
            })
        });
        let nobody_seen = match &result {
            Err(sockets::EndpointOwnerError::NotListening { .. }) => true,
            Err(sockets::EndpointOwnerError::HeldByOthers { holders, .. }) => holders.is_empty(),
            _ => false,
        };
        // A candidate that exited meanwhile holds nothing any more: the probe, which watches
        // its exit, rejects it with its exit status.
        if nobody_seen && !os::is_alive(identity) {
            return Ok(());
        }
        match result {
            Err(sockets::EndpointOwnerError::NotListening { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// Launches plugin processes for one slot: the stored executable, the slot's arguments and
/// environment plus go-plugin's, its own process group, output to log files that outlive
/// the host.
///
/// The environment is exactly: the slot's `env`, the host variables named in `pass_env`
/// (PATH included only if listed), the magic cookie, `PLUGIN_PROTOCOL_VERSIONS`,
/// `PLUGIN_MIN_PORT`, `PLUGIN_MAX_PORT`, `TRYSWAP_RELOAD_ID`, and `TMPDIR` (the
/// generation's own [`tmp_dir`], unless the slot sets or passes `TMPDIR` itself).
pub struct ProcessDriver {
    slot: Arc<SlotConfig>,
    state_dir: PathBuf,
    /// What [`Driver::prepare`] made for the next launch.
    prepared: Mutex<Option<PreparedLaunch>>,
}

/// A launch's files made ahead by [`Driver::prepare`]: the generation's `TMPDIR` (when it
/// has its own) and what the spawn needs.
struct PreparedLaunch {
    generation: Generation,
    tmp: Option<PathBuf>,
    spawn: os::Prepared,
}

impl ProcessDriver {
    /// A driver for `slot`, keeping logs under `state_dir`.
    pub fn new(slot: SlotConfig, state_dir: impl Into<PathBuf>) -> Self {
        ProcessDriver {
            slot: Arc::new(slot),
            state_dir: state_dir.into(),
            prepared: Mutex::new(None),
        }
    }

    /// A driver for the processes of slots the journal knows but no config names (what
    /// recovery stops): every default setting, [`ORPHAN_STOP_TIMEOUT`] between SIGTERM and
    /// SIGKILL. It launches nothing.
    pub fn for_orphans(state_dir: impl Into<PathBuf>) -> Self {
        let name = SlotName::new("orphans").unwrap_or_else(|_| unreachable!("a valid name"));
        let mut slot = SlotConfig::new(name);
        slot.stop_timeout = ORPHAN_STOP_TIMEOUT;
        ProcessDriver::new(slot, state_dir)
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
        if self.own_tmpdir() {
            let tmp = tmp_dir(&self.state_dir, &request.slot, request.generation);
            env.push(("TMPDIR".to_owned(), tmp.to_string_lossy().into_owned()));
        }
        env.extend(slot.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(handshake::plugin_env(&slot.handshake, &request.reload));
        env.push((handshake::SLOT_ENV.to_owned(), request.slot.to_string()));
        env.push((
            handshake::GENERATION_ENV.to_owned(),
            request.generation.to_string(),
        ));
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
                cgroup: cgroup::path_for(&self.state_dir, &request.slot, request.generation),
            },
            stdout_path,
        ))
    }

    /// Whether the plugins get a `TMPDIR` of their own per generation (the slot neither sets
    /// nor passes one).
    fn own_tmpdir(&self) -> bool {
        !self.slot.env.contains_key("TMPDIR") && !self.slot.pass_env.iter().any(|n| n == "TMPDIR")
    }

    /// Creates generation `generation`'s own `TMPDIR` (mode 0700) if it gets one; returns
    /// its path then.
    fn make_tmp_dir(
        &self,
        slot: &SlotName,
        generation: Generation,
    ) -> Result<Option<PathBuf>, DriverError> {
        if !self.own_tmpdir() {
            return Ok(None);
        }
        let tmp = tmp_dir(&self.state_dir, slot, generation);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| {
                DriverError::error(format!(
                    "slot {slot}: cannot create the TMPDIR {} of generation {generation}: {e}",
                    tmp.display()
                ))
            })?;
        Ok(Some(tmp))
    }

    /// Makes generation `generation`'s `TMPDIR`, log files and cgroup and opens what the
    /// spawn needs: what [`Driver::prepare`] keeps and [`Driver::prepare_ahead`] lets go of.
    fn make_launch_files(
        &self,
        slot: &SlotName,
        generation: Generation,
    ) -> Result<PreparedLaunch, DriverError> {
        let tmp = self.make_tmp_dir(slot, generation)?;
        let spawn = os::prepare(&self.run_files(slot, generation)).map_err(|e| {
            DriverError::error(format!(
                "slot {slot}: preparing generation {generation}'s launch: {e}"
            ))
        })?;
        Ok(PreparedLaunch {
            generation,
            tmp,
            spawn,
        })
    }

    /// The files and cgroup of a run of generation `generation`.
    fn run_files(&self, slot: &SlotName, generation: Generation) -> os::RunFiles {
        let (stdout_path, stderr_path) = generation_log_paths(&self.state_dir, slot, generation);
        os::RunFiles {
            stdout_path,
            stderr_path,
            cgroup: cgroup::path_for(&self.state_dir, slot, generation),
        }
    }

    /// Takes what [`Driver::prepare`] made if it was made for this launch (its files are
    /// this launch's).
    fn take_prepared(&self, spec: &SpawnSpec) -> Option<os::Prepared> {
        let mut prepared = lock(&self.prepared);
        if prepared
            .as_ref()
            .is_some_and(|p| *p.spawn.files() == spec.run_files())
        {
            return prepared.take().map(|p| p.spawn);
        }
        None
    }

    /// How the running process `pid` differs from what this driver would launch for
    /// `request`: its arguments, and the names (never the values) of environment variables
    /// added, removed or changed. `None` if it matches, or if its `/proc` entries cannot
    /// be read. The spawn clears the environment, so the comparison is exact.
    pub(crate) fn drift(&self, request: &LaunchRequest, pid: u32) -> Option<String> {
        let (spec, _) = self.spec(request).ok()?;
        let fields = |name: &str| -> Option<Vec<String>> {
            let bytes = std::fs::read(format!("/proc/{pid}/{name}")).ok()?;
            let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
            if bytes.is_empty() {
                return Some(Vec::new());
            }
            Some(
                bytes
                    .split(|&b| b == 0)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect(),
            )
        };
        let running_args: Vec<String> = fields("cmdline")?.into_iter().skip(1).collect();
        let running_env: std::collections::BTreeMap<String, String> = fields("environ")?
            .into_iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let wanted_env: std::collections::BTreeMap<String, String> =
            spec.env.iter().cloned().collect();
        let mut differences = Vec::new();
        if running_args != spec.args {
            differences.push(format!(
                "args {:?} where the config gives {:?}",
                running_args, spec.args
            ));
        }
        let mut env_names: Vec<String> = Vec::new();
        for (key, value) in &wanted_env {
            // tryswap's own tags are not config (processes started before a tag existed
            // lack it): never a reason to relaunch.
            if handshake::is_own_tag(key) {
                continue;
            }
            // `pass_env` values come from the host's environment, not the file.
            let passed = self.slot.pass_env.contains(key);
            match running_env.get(key) {
                None => env_names.push(format!("+{key}")),
                Some(v) if v != value && !passed => env_names.push(format!("~{key}")),
                Some(_) => {}
            }
        }
        for key in running_env
            .keys()
            .filter(|k| !wanted_env.contains_key(*k) && !handshake::is_own_tag(k))
        {
            env_names.push(format!("-{key}"));
        }
        if !env_names.is_empty() {
            differences.push(format!("env {}", env_names.join(" ")));
        }
        (!differences.is_empty()).then(|| differences.join("; "))
    }

    fn excerpt(instance: &Instance) -> String {
        match &instance.log_path {
            Some(path) => {
                let text = os::log_excerpt(path, EXCERPT_HEAD, EXCERPT_TAIL, EXCERPT_BYTES);
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

    fn stdio_task(instance: &Instance) -> Option<&StdioDrainTask> {
        let handle = instance.handle.as_ref()?;
        if let Some(h) = handle.downcast_ref::<ProcessHandle>() {
            return Some(&h.stdio);
        }
        handle.downcast_ref::<ReattachedHandle>().map(|h| &h.stdio)
    }

    /// Starts draining go-plugin's stdio stream (`plugin.GRPCStdio`) of a validated gRPC
    /// instance into its log files, as a background task (see [`stdio::drain_stdio`]).
    /// Nothing for netrpc plugins, instances without an endpoint, or outside a runtime.
    fn start_stdio_drain(
        &self,
        instance: &Instance,
        spawned: Option<Spawned>,
        channel: Option<Channel>,
    ) -> Option<JoinHandle<()>> {
        let endpoint = instance.endpoint.clone()?;
        if endpoint.protocol != Protocol::Grpc {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (stdout_path, stderr_path) =
            generation_log_paths(&self.state_dir, &instance.slot, instance.generation);
        let sinks = StdioSinks {
            stdout_path,
            stderr_path,
            max_bytes: self.slot.log_max_bytes,
        };
        let exited = process_exited(spawned, instance.process.clone());
        let registration = DrainRegistration::new(instance.reload);
        let span = tracing::info_span!(
            parent: None,
            "stdio_drain",
            slot = %instance.slot,
            generation = instance.generation.0,
            reload_id = %instance.reload
        );
        let task = async move {
            let _registration = registration;
            match stdio::drain_stdio(&endpoint, channel, &sinks, STDIO_CONNECT_TIMEOUT, exited)
                .await
            {
                Ok(summary) if matches!(summary.end, DrainEnd::NotServed { .. }) => {}
                Ok(summary) => tracing::debug!(
                    stdout_bytes = summary.stdout_bytes,
                    stderr_bytes = summary.stderr_bytes,
                    dropped_bytes = summary.dropped_bytes,
                    end = ?summary.end,
                    "stdio stream drain ended"
                ),
                Err(e) => tracing::debug!(error = %e, "stdio stream not drained"),
            }
        };
        Some(runtime.spawn(task.instrument(span)))
    }

    /// How a plugin this process launched exited, when it is known to have exited (its
    /// liveness read dead: it may still be a zombie its waiter has not reaped yet), waiting
    /// up to `grace` for the waiter. `None` for instances reattached by identity (only the
    /// parent learns the status) or when the status cannot be learnt in time.
    pub(crate) async fn exit_status_within(
        instance: &Instance,
        grace: Duration,
    ) -> Option<std::process::ExitStatus> {
        let handle = Self::handle(instance)?;
        if let Some(status) = handle.spawned.exit_status() {
            return Some(status);
        }
        tokio::time::timeout(grace, handle.spawned.wait_exit())
            .await
            .ok()
            .flatten()
    }

    async fn wait_gone(instance: &Instance, timeout: Duration) -> bool {
        let Some(identity) = &instance.process else {
            return true;
        };
        if let Some(handle) = Self::handle(instance) {
            // Our own child: its waiter reports the exit at once, no polling.
            match tokio::time::timeout(timeout, handle.spawned.wait_exit()).await {
                Ok(Some(_)) => return true,
                Err(_) => return !os::is_alive(identity),
                Ok(None) => {} // The waiter is gone: poll below.
            }
        }
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        // Not our child (an earlier process started it): its exit wakes a pidfd at once.
        if os::exited_on_pidfd(identity, deadline).await {
            return true;
        }
        loop {
            if !os::is_alive(identity) {
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

/// Removes a generation's files that nothing used: its `TMPDIR` if it is empty, its log
/// files if they are empty, its cgroup if nothing is in it. What holds anything stays.
fn remove_unused(tmp: Option<&Path>, files: &os::RunFiles) {
    if let Some(tmp) = tmp {
        // `remove_dir` removes an empty directory only.
        let _ = std::fs::remove_dir(tmp);
    }
    for path in [&files.stdout_path, &files.stderr_path] {
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(path);
        }
    }
    if let Some(dir) = &files.cgroup {
        // Fails (EBUSY) if anything joined it.
        let _ = std::fs::remove_dir(dir);
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    fn outside_connections(&self, instance: &Instance) -> Option<usize> {
        let endpoint = instance.endpoint.as_ref()?;
        // A generation in a cgroup of its own: the cgroup lists every process that can
        // hold its connections, whose fd tables are cheaper to read than the kernel's
        // established table.
        let holders = cgroup::path_for(&self.state_dir, &instance.slot, instance.generation)
            .filter(|dir| cgroup::holds_generation(dir))
            .and_then(|dir| cgroup::procs(&dir));
        match holders {
            Some(pids) => {
                let dialed = Self::handle(instance)
                    .map(|h| h.dialed.list())
                    .unwrap_or_default();
                connections::outside_connections_held_by(endpoint, &pids, &dialed)
            }
            None => connections::outside_connections(endpoint),
        }
    }

    fn prepare(&self, slot: &SlotName, generation: Generation) {
        match self.make_launch_files(slot, generation) {
            Ok(made) => {
                if let Some(unused) = lock(&self.prepared).replace(made) {
                    tracing::debug!(
                        generation = unused.generation.0,
                        "an earlier prepared launch was never used; its files stay"
                    );
                }
            }
            // The launch makes the same again and reports the error.
            Err(e) => tracing::debug!(error = %e, "preparing the launch ahead failed"),
        }
    }

    fn prepare_ahead(&self, slot: &SlotName, generation: Generation) {
        // The same files as `prepare`, closed again at once (the launch is dropped).
        if let Err(e) = self.make_launch_files(slot, generation) {
            tracing::debug!(generation = generation.0, error = %e, "preparing the next launch ahead failed");
        }
    }

    fn discard_ahead(&self, slot: &SlotName, generation: Generation) {
        let tmp = self
            .own_tmpdir()
            .then(|| tmp_dir(&self.state_dir, slot, generation));
        remove_unused(tmp.as_deref(), &self.run_files(slot, generation));
    }

    fn discard_prepared(&self) {
        let Some(PreparedLaunch { tmp, spawn, .. }) = lock(&self.prepared).take() else {
            return;
        };
        let files = spawn.files().clone();
        drop(spawn);
        // No process of the generation ever ran: the journal never gave the generation
        // out, so its files hold nothing.
        remove_unused(tmp.as_deref(), &files);
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<Instance, DriverError> {
        let (spec, stdout_path) = self.spec(request)?;
        let prepared = self.take_prepared(&spec);
        // Opening the logs, fork/exec and the ETXTBSY retries block: off the async workers.
        let spawned = crate::blocking::off_worker(|| {
            if prepared.is_none() {
                self.make_tmp_dir(&request.slot, request.generation)?;
            }
            os::spawn_prepared(&spec, prepared).map_err(|e| {
                DriverError::error(format!(
                    "slot {}: could not start {}: {e}",
                    request.slot,
                    spec.program.display()
                ))
            })
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
                stdio: StdioDrainTask::default(),
                control: OnceLock::new(),
                dialed: crate::probe::DialedSockets::default(),
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
        let line = match os::read_handshake(
            &handle.spawned,
            &handle.stdout_path,
            slot.start_timeout,
        )
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
        if let Some(identity) = &instance.process {
            let wait = slot.start_timeout.min(LISTENER_GRACE);
            check_endpoint_owner(&endpoint, identity, &instance.reload.to_string(), wait)
                .await
                .map_err(|e| DriverError::error(format!("{e}; {}", Self::excerpt(instance))))?;
        }
        // One connection for the stdio stream, the probe and the controller (gRPC only).
        let dialed = Self::handle(instance)
            .map(|h| h.dialed.clone())
            .unwrap_or_default();
        let channel = (endpoint.protocol == Protocol::Grpc)
            .then(|| {
                crate::probe::grpc_channel_lazy_dialed(&endpoint, STDIO_CONNECT_TIMEOUT, &dialed)
                    .ok()
            })
            .flatten();
        instance.endpoint = Some(endpoint);
        // Drain go-plugin's stdio stream from now on (probing included): a plugin that
        // writes to stdout/stderr after its handshake blocks once nobody reads it.
        if let Some(handle) = Self::handle(instance) {
            if let Some(channel) = &channel {
                let _ = handle.control.set(channel.clone());
            }
            if let Some(task) =
                self.start_stdio_drain(instance, Some(handle.spawned.clone()), channel)
            {
                handle.stdio.set(task);
            }
        }
        Ok(())
    }

    async fn probe(&self, instance: &Instance) -> Result<(), DriverError> {
        let handle = Self::handle(instance);
        let channel = handle.and_then(|h| h.control.get());
        let probe = crate::probe::probe_over(&self.slot.probe, instance.endpoint.as_ref(), channel);
        let result = match handle {
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
        // Where the generation was placed in a cgroup of its own, that cgroup lists all of
        // its processes: no scan of all of /proc is needed to find them.
        let cgroup_dir = cgroup::path_for(&self.state_dir, &instance.slot, instance.generation);
        let contained = cgroup_dir
            .as_deref()
            .filter(|dir| cgroup::holds_generation(dir));
        if let Some(identity) = &instance.process {
            // go-plugin plugins exit cleanly when their controller asks.
            if os::is_alive(identity) {
                if let Some(endpoint) = &instance.endpoint {
                    if endpoint.protocol == Protocol::Grpc {
                        let ask = stop_timeout.min(Duration::from_secs(2));
                        let channel = Self::handle(instance).and_then(|h| h.control.get());
                        if crate::probe::grpc_controller_shutdown_over(endpoint, channel, ask)
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
            let signalled =
                os::stop_group_in(identity, Some(&instance.reload), contained, stop_timeout)
                    .await
                    .map_err(|e| {
                        DriverError::error(format!(
                            "stopping generation {} (pid {}): {e}",
                            instance.generation, identity.pid
                        ))
                    })?;
            if outcome == StopOutcome::AlreadyGone {
                outcome = match signalled {
                    os::StopOutcome::AlreadyGone => StopOutcome::AlreadyGone,
                    os::StopOutcome::Graceful => StopOutcome::Graceful,
                    os::StopOutcome::Killed => StopOutcome::Killed,
                };
            }
        }
        // The plugin is gone: its stdio stream ends; keep nothing of it running.
        if let Some(task) = Self::stdio_task(instance) {
            task.finish(STDIO_FINISH_GRACE).await;
        }
        // Anything that escaped the group (setsid'd grandchildren) is still in the cgroup,
        // which `cgroup.kill` empties below; without one, it still carries the tag, found
        // by a scan of /proc (the one O(host processes) step left, only where no cgroup v2
        // is writable).
        let stragglers = match contained {
            Some(_) => Vec::new(),
            None => os::kill_tagged(&instance.reload, stop_timeout).await,
        };
        if let Some(dir) = cgroup_dir {
            let left = cgroup::kill_and_remove(&dir, KILL_GRACE).await;
            if left > 0 {
                tracing::warn!(
                    slot = %instance.slot,
                    generation = instance.generation.0,
                    count = left,
                    "killed processes left in the generation's cgroup"
                );
            }
        }
        remove_tmp_dir(&tmp_dir(
            &self.state_dir,
            &instance.slot,
            instance.generation,
        ));
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
        instance.process.as_ref().is_some_and(os::is_alive)
    }

    async fn stop_leftovers(&self, reload: &ReloadId) -> Vec<u32> {
        os::kill_tagged(reload, self.slot.stop_timeout)
            .await
            .iter()
            .map(|p| p.pid)
            .collect()
    }

    fn tagged_processes(&self) -> Vec<(ReloadId, u32)> {
        os::tagged_in(&self.state_dir)
    }

    fn found_processes(&self) -> Vec<FoundProcess> {
        os::found_in(&self.state_dir)
    }

    fn adopt(
        &self,
        found: &FoundProcess,
        artifact: &tryswap_fsm::ArtifactRef,
    ) -> Result<Instance, DriverError> {
        let (Some(slot), Some(generation)) = (&found.slot, found.generation) else {
            return Err(DriverError::error(format!(
                "pid {}: neither its tags, its TMPDIR nor its stdout say which slot and \
                 generation it runs",
                found.identity.pid
            )));
        };
        let (stdout_path, stderr_path) = generation_log_paths(&self.state_dir, slot, generation);
        let endpoint = announced_endpoint(
            &stdout_path,
            &self.slot.handshake,
            &found.identity,
            &found.reload,
        )?;
        Ok(Instance {
            slot: slot.clone(),
            generation,
            reload: found.reload,
            artifact: artifact.clone(),
            process: Some(found.identity.clone()),
            log_path: Some(stderr_path),
            endpoint: Some(endpoint),
            handle: None,
        })
    }

    fn survivors(&self, facts: &Instance) -> Vec<u32> {
        // A process whose liveness cannot be read counts as surviving: never "dead" unseen.
        let mut pids: Vec<u32> = facts
            .process
            .iter()
            .filter(|p| os::liveness(p) != Liveness::Dead)
            .map(|p| p.pid)
            .collect();
        pids.extend(os::tagged_processes(&facts.reload).iter().map(|p| p.pid));
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn liveness(&self, instance: &Instance) -> Liveness {
        instance
            .process
            .as_ref()
            .map_or(Liveness::Dead, os::liveness)
    }

    /// Reattaches unless the process is provably gone: a process whose liveness cannot be
    /// read (`/proc` unreadable, e.g. `EMFILE`) is reattached, never relaunched beside
    /// itself.
    fn reattach(&self, facts: &Instance) -> Option<Instance> {
        let identity = facts.process.as_ref()?;
        match os::liveness(identity) {
            Liveness::Dead => return None,
            Liveness::Unknown => tracing::warn!(
                slot = %facts.slot,
                generation = facts.generation.0,
                pid = identity.pid,
                "cannot tell whether the active generation runs; reattached, not relaunched"
            ),
            Liveness::Alive => {}
        }
        let mut instance = Instance {
            handle: None,
            ..facts.clone()
        };
        // Not our child, but its stdio stream still needs a reader.
        if let Some(task) = self.start_stdio_drain(&instance, None, None) {
            let stdio = StdioDrainTask::default();
            stdio.set(task);
            instance.handle = Some(Arc::new(ReattachedHandle { stdio }));
        }
        Some(instance)
    }
}
