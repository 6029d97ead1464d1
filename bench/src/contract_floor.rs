//! The contract's floor, done by hand: the bare floor plus only what the safe-reload
//! contract itself asks of any implementation, with none of tryswap's reload machinery on
//! the path: like the bare floor, it borrows only tryswap's handshake parser and its gRPC
//! health and controller calls.
//!
//! - the daemon's request: one HTTP/1.1 round trip on the admin socket (`GET /healthz`);
//! - staging: the config file copied into a content-addressed store (read, SHA-256, a new
//!   file), its `fsync` running beside the plugin's start, done before the commit;
//! - the launch from the staged file, the handshake from a stdout pipe, one health check
//!   over a connection kept for the controller (as go-plugin's host keeps one);
//! - the durable commit: a record appended to a log and `fdatasync`ed, then a witness of
//!   the durable point written and `fdatasync`ed (in that order: a witness ahead of its log
//!   would claim what a power loss took);
//! - the graceful stop of the old plugin as go-plugin's `Client.Kill` does it:
//!   `GRPCController/Shutdown` over its connection, then its exit (SIGKILL after a timeout).
//!
//! What tryswap adds beyond this (journal records, identity and owner checks, process
//! group and cgroup, drain checks, log files, reports) is the difference between its rows
//! and this one.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tryswap::config::{ProbeConfig, SlotConfig};

use crate::floor::{self, Bare, Launch};

/// How long each step of one contract-floor reload took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Steps {
    /// The HTTP round trip (zero without a daemon).
    pub request: Duration,
    /// The config copied into the store (its fsync runs later, beside the start).
    pub stage: Duration,
    /// spawn(2) returned.
    pub spawn: Duration,
    /// The handshake line was read and parsed.
    pub handshake: Duration,
    /// One health check passed over the kept connection.
    pub probe: Duration,
    /// The wait for the staged file's fsync, then the log's and the witness's fdatasync.
    pub commit: Duration,
    /// The old plugin's controller shutdown and exit.
    pub stop_old: Duration,
}

/// A plugin this floor runs, with the connection its controller is reached on.
struct Kept {
    bare: Bare,
    channel: Channel,
}

/// A log and its witness, shared by every contract floor of a run: concurrent commits
/// share one durable flush (a group commit, as tryswap's journal does), so that many
/// reloads at once pay what they must and no more.
pub struct CommitLog {
    appending: Mutex<Appending>,
    syncing: Mutex<Syncing>,
}

/// The log's end: records appended so far.
struct Appending {
    log: File,
    appended: u64,
}

/// The durable point and what moves it.
struct Syncing {
    log: File,
    witness: File,
    durable: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl CommitLog {
    /// A log and witness in `dir` (made if missing).
    pub fn open(dir: &Path) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let open = |name: &str| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(name == "log")
                .write(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        let log = open("log")?;
        let log_to_sync = log.try_clone().map_err(|e| format!("the log: {e}"))?;
        Ok(Arc::new(CommitLog {
            appending: Mutex::new(Appending { log, appended: 0 }),
            syncing: Mutex::new(Syncing {
                log: log_to_sync,
                witness: open("witness")?,
                durable: 0,
            }),
        }))
    }

    /// The durable commit: a record about the size of tryswap's `Activated` frame appended
    /// to the log; returns once it is durable: the log synced, then the witness of that
    /// point written in place and synced. Blocking.
    pub fn commit(&self, pid: u32) -> Result<(), String> {
        let mine = {
            let mut appending = lock(&self.appending);
            appending.appended += 1;
            let mut record = format!("commit {} pid {pid} ", appending.appended).into_bytes();
            record.resize(160, b'.');
            record.push(b'\n');
            appending
                .log
                .write_all(&record)
                .map_err(|e| format!("the contract floor's log: {e}"))?;
            appending.appended
        };
        let mut syncing = lock(&self.syncing);
        if syncing.durable >= mine {
            // Another commit's flush took this record along.
            return Ok(());
        }
        let upto = lock(&self.appending).appended;
        syncing
            .log
            .sync_data()
            .map_err(|e| format!("the contract floor's log: {e}"))?;
        let mut mark = [0u8; 32];
        mark[..8].copy_from_slice(&upto.to_be_bytes());
        let offset = (upto % 2) * 32;
        syncing
            .witness
            .write_all_at(&mark, offset)
            .and_then(|()| syncing.witness.sync_data())
            .map_err(|e| format!("the contract floor's witness: {e}"))?;
        syncing.durable = upto;
        Ok(())
    }
}

/// One slot of the contract floor: the store it stages into, the log it commits to, and
/// its running plugin.
pub struct ContractFloor {
    store: PathBuf,
    log: Arc<CommitLog>,
    current: Option<Kept>,
}

impl ContractFloor {
    /// A floor keeping its store, log and witness in `dir` (made if missing).
    pub fn new(dir: &Path) -> Result<Self, String> {
        let log = CommitLog::open(dir)?;
        Self::sharing(dir, log)
    }

    /// A floor staging into `dir`'s store and committing to `log`, which other floors
    /// share.
    pub fn sharing(dir: &Path, log: Arc<CommitLog>) -> Result<Self, String> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).map_err(|e| format!("{}: {e}", store.display()))?;
        Ok(ContractFloor {
            store,
            log,
            current: None,
        })
    }

    /// One reload to the fixture `program` with config file `config`, the slot's arguments
    /// and handshake; `admin` is the daemon's socket the request goes to, if one runs.
    pub async fn reload(
        &mut self,
        program: &Path,
        slot: &SlotConfig,
        config: &Path,
        admin: Option<&Path>,
        timeout: Duration,
    ) -> Result<Steps, String> {
        let mut steps = Steps::default();
        if let Some(socket) = admin {
            let t = Instant::now();
            let (status, body) = crate::daemon::request(socket, "GET", "/healthz", None).await?;
            if status != 200 {
                return Err(format!("GET /healthz: {status}: {body}"));
            }
            steps.request = t.elapsed();
        }

        let t = Instant::now();
        let (staged, file) = self.stage(config)?;
        steps.stage = t.elapsed();
        let synced = tokio::task::spawn_blocking(move || file.map_or(Ok(()), |f| f.sync_all()));

        let how = Launch::for_slot(program.to_path_buf(), slot, &staged);
        let (bare, launched) = floor::launch(&how, timeout).await?;
        steps.spawn = launched.spawn;
        steps.handshake = launched.handshake;
        let t = Instant::now();
        let channel = tryswap::internals::probe::grpc_channel_lazy(&bare.endpoint, timeout)
            .map_err(|e| e.to_string())?;
        let mut probe = ProbeConfig::default();
        probe.timeout = timeout;
        tryswap::internals::probe::probe_over(&probe, Some(&bare.endpoint), Some(&channel))
            .await
            .map_err(|e| format!("plugin {}: {e}", bare.pid))?;
        steps.probe = t.elapsed();

        let t = Instant::now();
        synced
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("fsync of {}: {e}", staged.display()))?;
        let (log, pid) = (Arc::clone(&self.log), bare.pid);
        tokio::task::spawn_blocking(move || log.commit(pid))
            .await
            .map_err(|e| e.to_string())??;
        steps.commit = t.elapsed();

        if let Some(old) = self.current.replace(Kept { bare, channel }) {
            let t = Instant::now();
            Self::stop(old, timeout).await?;
            steps.stop_old = t.elapsed();
        }
        Ok(steps)
    }

    /// Stops the running plugin, if any.
    pub async fn stop_current(&mut self, timeout: Duration) -> Result<(), String> {
        match self.current.take() {
            Some(kept) => Self::stop(kept, timeout).await,
            None => Ok(()),
        }
    }

    /// Copies `config` into the store under its SHA-256; returns the stored path and, for a
    /// new file, the file to sync.
    fn stage(&self, config: &Path) -> Result<(PathBuf, Option<File>), String> {
        let bytes = std::fs::read(config).map_err(|e| format!("{}: {e}", config.display()))?;
        let digest = Sha256::digest(&bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.store.join(hex);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok((path, Some(file)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((path, None)),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// go-plugin's `Client.Kill`: the controller's `Shutdown` over the kept connection, then
    /// the exit (SIGKILL after `timeout`, as `floor::wait_exit` does).
    async fn stop(kept: Kept, timeout: Duration) -> Result<(), String> {
        let Kept { bare, channel } = kept;
        // Like go-plugin, a failed Shutdown call still waits for the exit.
        let _ = tryswap::internals::probe::grpc_controller_shutdown_over(
            &bare.endpoint,
            Some(&channel),
            timeout,
        )
        .await;
        drop(channel);
        floor::wait_exit(bare, timeout).await
    }
}
