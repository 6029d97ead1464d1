//! The content-addressed artifact store, `<state-dir>/store/sha256/<hex>`.
//!
//! Staging copies a candidate's executable (or config file) into the store, hashing it on
//! the way, so a reload — and any later rollback or relaunch — runs bytes tryswap owns and
//! has fsynced, never a file outside that may have changed since. Stored files are
//! read-only and private to the store's user (0500 executables, 0400 configs) and named by
//! their SHA-256.
//!
//! Staging streams the source into a temporary file inside `<state-dir>/store/`, fsyncs
//! it, makes it read-only, renames it to `sha256/<hex>` and fsyncs the directory. A failed
//! staging leaves no temporary file behind. Staging the same bytes again is a no-op that
//! returns the same digest (and repairs a stored copy that no longer matches its name);
//! the temporary copy is then dropped without an fsync.
//!
//! A `Store` also remembers the digests of the sources it staged and of the stored copies
//! it wrote or verified, each with the file's stat (device, inode, length, mtime, ctime),
//! in memory and, for executables, in `<state-dir>/store/known.json` for the next process
//! (a config is cheaper to hash again than the file is to rewrite). Staging a source
//! whose stat is unchanged, while its stored copy's stat is unchanged too, returns the
//! digest without reading either file, and verifying a stored copy whose stat is unchanged
//! reads nothing: a config-only reload, a relaunch or a one-shot command does not re-hash
//! a large executable, and a new executable is read once (hashed while it is copied). A
//! source's stat is only trusted if the file had not changed for two seconds when it was
//! hashed, so a write within the same timestamp tick cannot go unnoticed. Any change to a
//! stored copy (a write, a chmod, a replacement) changes its ctime or inode, so it is hashed
//! again and a tampered copy is refused; what a stat cannot see (bits rotting on the disk
//! under an unchanged inode) is the file system's job, as it is for git's index.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::fs::PermissionsExt;
//! let dir = tempfile::tempdir()?;
//! let plugin = dir.path().join("plugin");
//! std::fs::write(&plugin, b"#!/bin/sh\n")?;
//! std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))?;
//!
//! let store = tryswap::Store::open(&dir.path().join("state"))?;
//! let digest = store.stage_executable(&plugin)?;
//! assert_eq!(std::fs::read(store.path_of(&digest))?, b"#!/bin/sh\n");
//! store.verify(&digest)?;
//! # Ok(()) }
//! ```

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::Digest as _;
use tryswap_fsm::Sha256;

/// Mode of a stored executable.
const EXECUTABLE_MODE: u32 = 0o500;
/// Mode of a stored config file.
const CONFIG_MODE: u32 = 0o400;
/// Name prefix of temporary files in the store root while a copy is in progress.
const STAGING_PREFIX: &str = ".staging-";
/// Copy buffer size.
const CHUNK: usize = 64 * 1024;
/// Sources up to this size (configs) are read and hashed before any staging file is
/// created: when the store already holds their bytes, nothing is written at all.
const SMALL: usize = CHUNK;
/// A file's stat is trusted to stand for its bytes only if its ctime is at least this much
/// older than the moment it was hashed (see [`Stamp`]).
const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);
/// Name of the file, in the store root, that carries [`Known`] from one process to the next.
const KNOWN_FILE: &str = "known.json";
/// At most this many remembered sources (a deployment stages each version from a new path).
const KNOWN_SOURCES_CAP: usize = 256;

/// How much the store holds (`status --json` `store`, metric `tryswap_store_bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreUsage {
    /// Stored objects (executables and config files).
    pub objects: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// What [`Store::gc`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Digests of the objects removed.
    pub removed: Vec<Sha256>,
    /// Bytes they held.
    pub freed_bytes: u64,
    /// Objects kept.
    pub kept: u64,
    /// Bytes the kept objects hold.
    pub kept_bytes: u64,
}

/// Why staging or verifying an artifact failed. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The source file (or stored copy) does not exist.
    #[error("{} does not exist", path.display())]
    Missing {
        /// The missing path.
        path: PathBuf,
    },
    /// The source is a directory, device, FIFO or socket rather than a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The offending path.
        path: PathBuf,
    },
    /// An executable was asked for but no execute permission bit is set.
    #[error("{} is not executable (no execute permission bit is set)", path.display())]
    NotExecutable {
        /// The offending path.
        path: PathBuf,
    },
    /// The source could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The source path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file-system operation on the store failed (disk full, permissions, …).
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// What was being done, e.g. `write`, `fsync`, `rename into place`.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A stored file's bytes no longer hash to its name.
    #[error("{} is corrupt: expected sha256 {expected}, found {found}", path.display())]
    DigestMismatch {
        /// The stored file.
        path: PathBuf,
        /// The digest it is named after.
        expected: Sha256,
        /// The digest of its current bytes.
        found: Sha256,
    },
}

impl StoreError {
    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// What a staged file is for; decides its mode and the checks on its source.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Executable,
    Config,
}

/// What stands for a file's bytes without reading them: device, inode, length, mtime and
/// ctime. Any write, truncation, chmod or replacement changes the ctime (or the inode), so
/// an unchanged stamp means unchanged bytes — provided the file was not written within the
/// same timestamp tick as the one it was hashed in. Stamps taken less than [`RACY_WINDOW`]
/// after the file's ctime are therefore never remembered ("racy", as git calls them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file's last change is at least `window` before `hashed_at`.
    fn settled(&self, hashed_at: std::time::SystemTime, window: std::time::Duration) -> bool {
        let Ok(since_epoch) = hashed_at.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let (secs, nanos) = self.ctime;
        let Ok(secs) = u64::try_from(secs) else {
            return false;
        };
        let ctime = std::time::Duration::new(secs, u32::try_from(nanos).unwrap_or(0));
        ctime.saturating_add(window) <= since_epoch
    }
}

/// Digests already known: of source files (by path) and of stored copies written or
/// verified, each valid while the file's [`Stamp`] is unchanged. Saves reading and hashing
/// an unchanged executable on every reload (a config-only reload, a retry, a relaunch).
#[derive(Debug, Default)]
struct Known {
    sources: std::collections::HashMap<PathBuf, (Stamp, Sha256)>,
    stored: std::collections::HashMap<Sha256, Stamp>,
    /// Files read and hashed in full (sources staged and stored copies verified); the
    /// others were known unchanged.
    reads: u64,
}

/// [`Known`] as kept in `known.json`: digests in hex, so the file reads like the rest of
/// tryswap's output.
#[derive(serde::Serialize, serde::Deserialize)]
struct KnownFile {
    version: u32,
    sources: Vec<KnownSource>,
    stored: Vec<KnownStored>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KnownSource {
    path: PathBuf,
    stamp: Stamp,
    sha256: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KnownStored {
    sha256: String,
    stamp: Stamp,
}

impl Known {
    /// Reads `known.json`; a missing, unreadable or malformed file is an empty memory (the
    /// files are hashed again), never an error.
    fn load(path: &Path) -> Known {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Known::default(),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "not reading the known stamps");
                return Known::default();
            }
        };
        let file: KnownFile = match serde_json::from_slice(&bytes) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a malformed known-stamps file; artifacts are hashed again");
                return Known::default();
            }
        };
        if file.version != 1 {
            return Known::default();
        }
        let mut known = Known::default();
        for source in file.sources {
            if let Ok(digest) = source.sha256.parse() {
                known.sources.insert(source.path, (source.stamp, digest));
            }
        }
        for stored in file.stored {
            if let Ok(digest) = stored.sha256.parse() {
                known.stored.insert(digest, stored.stamp);
            }
        }
        known
    }

    fn to_file(&self) -> KnownFile {
        KnownFile {
            version: 1,
            sources: self
                .sources
                .iter()
                .map(|(path, (stamp, digest))| KnownSource {
                    path: path.clone(),
                    stamp: *stamp,
                    sha256: digest.to_string(),
                })
                .collect(),
            stored: self
                .stored
                .iter()
                .map(|(digest, stamp)| KnownStored {
                    sha256: digest.to_string(),
                    stamp: *stamp,
                })
                .collect(),
        }
    }
}

/// A content-addressed store rooted at `<state_dir>/store`.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    objects: PathBuf,
    known: std::sync::Arc<std::sync::Mutex<Known>>,
    racy_window: std::time::Duration,
    /// Objects a deferred staging wrote and nobody made durable yet (see
    /// [`Store::stage_config_deferred`]).
    unsynced: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Sha256>>>,
}

/// Every stored object a deferred staging wrote or found: what [`Store::make_durable`]
/// syncs. Until then a power loss may take the ones written (a process that is killed
/// loses nothing: they are in the page cache). A copy found already stored is synced
/// again too: another process may have written it without syncing and been killed before
/// it did, which no process can tell afterwards; syncing a clean file costs little, and
/// the reload does it beside the candidate's start.
#[derive(Debug, Default)]
#[must_use = "the staged files are not durable until made so"]
pub struct PendingDurable {
    digests: Vec<Sha256>,
}

impl PendingDurable {
    /// Whether nothing is left to sync.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// [`Store::make_durable`] running on a thread of its own; [`DurableLater::wait`] returns
/// its outcome.
#[derive(Debug)]
#[must_use = "wait for the sync before depending on the files"]
pub struct DurableLater {
    state: DurableState,
}

#[derive(Debug)]
enum DurableState {
    Done(Result<(), StoreError>),
    Running(std::thread::JoinHandle<Result<(), StoreError>>, PathBuf),
}

impl DurableLater {
    /// Waits until the files are durable (blocking). An error names the file or directory
    /// that could not be synced.
    pub fn wait(self) -> Result<(), StoreError> {
        match self.state {
            DurableState::Done(result) => result,
            DurableState::Running(handle, objects) => handle.join().unwrap_or_else(|_| {
                Err(StoreError::io(
                    &objects,
                    "fsync",
                    io::Error::other("the thread syncing the staged files panicked"),
                ))
            }),
        }
    }
}

impl Store {
    /// Opens the store of a state directory, creating `<state_dir>/store/sha256` (mode 0700
    /// for each directory created) if needed.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let root = state_dir.join("store");
        let objects = root.join("sha256");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&objects)
            .map_err(|e| StoreError::io(&objects, "create directory", e))?;
        let known = Known::load(&root.join(KNOWN_FILE));
        Ok(Store {
            root,
            objects,
            known: std::sync::Arc::new(std::sync::Mutex::new(known)),
            racy_window: RACY_WINDOW,
            unsynced: Default::default(),
        })
    }

    /// The store of `state_dir` as it is, creating nothing: for read-only commands (a
    /// missing store is empty).
    pub fn existing(state_dir: &Path) -> Store {
        let root = state_dir.join("store");
        Store {
            objects: root.join("sha256"),
            root,
            known: Default::default(),
            racy_window: RACY_WINDOW,
            unsynced: Default::default(),
        }
    }

    /// The store's root directory, `<state_dir>/store`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the file with this digest lives (or would live): `<state_dir>/store/sha256/<hex>`.
    pub fn path_of(&self, digest: &Sha256) -> PathBuf {
        self.objects.join(digest.to_string())
    }

    /// The digest a path of the store names: `path` is `<state_dir>/store/sha256/<hex>` (as
    /// given, or with symlinks resolved, as `/proc/<pid>/exe` shows it); `None` otherwise.
    pub fn digest_at(&self, path: &Path) -> Option<Sha256> {
        let parent = path.parent()?;
        let inside = parent == self.objects
            || fs::canonicalize(&self.objects).is_ok_and(|objects| objects == parent);
        if !inside {
            return None;
        }
        path.file_name()?.to_str()?.parse().ok()
    }

    /// Copies an executable into the store and returns its digest. The source must be a
    /// regular file (symlinks are followed), readable, with at least one execute bit. The
    /// stored copy has mode 0500.
    pub fn stage_executable(&self, src: &Path) -> Result<Sha256, StoreError> {
        self.stage(src, Kind::Executable, None)
    }

    /// Copies a config file into the store and returns its digest. The source must be a
    /// readable regular file (symlinks are followed). The stored copy has mode 0400 (or
    /// 0500 if the same bytes were also staged as an executable).
    pub fn stage_config(&self, src: &Path) -> Result<Sha256, StoreError> {
        self.stage(src, Kind::Config, None)
    }

    /// [`Store::stage_config`] without waiting for the disk: the copy is written and
    /// renamed into place, and its `fsync` and the directory's are left to
    /// [`Store::make_durable`] of `pending`. For a reload, which needs the copy durable only
    /// at its commit point, and until then only reads it.
    pub fn stage_config_deferred(
        &self,
        src: &Path,
        pending: &mut PendingDurable,
    ) -> Result<Sha256, StoreError> {
        self.stage(src, Kind::Config, Some(pending))
    }

    /// [`Store::stage_executable`] without waiting for the disk (see
    /// [`Store::stage_config_deferred`]).
    pub fn stage_executable_deferred(
        &self,
        src: &Path,
        pending: &mut PendingDurable,
    ) -> Result<Sha256, StoreError> {
        self.stage(src, Kind::Executable, Some(pending))
    }

    /// Makes the objects of `pending` durable: each file `fsync`ed, then the store's
    /// directory. Blocking.
    pub fn make_durable(&self, pending: PendingDurable) -> Result<(), StoreError> {
        if pending.is_empty() {
            return Ok(());
        }
        // Crash tests: `store-sync=return` fails the sync with EIO.
        fail::fail_point!("store-sync", |_| Err(StoreError::io(
            &self.objects,
            "fsync (EIO injected by TRYSWAP_FAILPOINTS)",
            io::Error::from_raw_os_error(libc::EIO),
        )));
        for digest in &pending.digests {
            let path = self.path_of(digest);
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(&path, "fsync", e))?;
        }
        sync_dir(&self.objects)?;
        let mut unsynced = self.lock_unsynced();
        for digest in &pending.digests {
            unsynced.remove(digest);
        }
        Ok(())
    }

    /// [`Store::make_durable`] on a thread of its own (here if no thread can be started).
    pub fn make_durable_later(&self, pending: PendingDurable) -> DurableLater {
        if pending.is_empty() {
            return DurableLater {
                state: DurableState::Done(Ok(())),
            };
        }
        let store = self.clone();
        // Kept for the fallback: a failed spawn drops the closure and `pending` with it.
        let digests = pending.digests.clone();
        let spawned = std::thread::Builder::new()
            .name("tryswap-store-sync".to_owned())
            .spawn(move || store.make_durable(pending));
        let state = match spawned {
            Ok(handle) => DurableState::Running(handle, self.objects.clone()),
            Err(_) => DurableState::Done(self.make_durable(PendingDurable { digests })),
        };
        DurableLater { state }
    }

    fn lock_unsynced(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Sha256>> {
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An object that a staging found already stored. A deferred staging adds it to
    /// `pending` (see [`PendingDurable`]); an immediate one syncs it now if a deferred
    /// staging of this process wrote it and nobody synced it yet.
    fn settle_existing(
        &self,
        digest: &Sha256,
        pending: Option<&mut PendingDurable>,
    ) -> Result<(), StoreError> {
        match pending {
            Some(pending) => {
                pending.digests.push(*digest);
                Ok(())
            }
            None if self.lock_unsynced().contains(digest) => self.make_durable(PendingDurable {
                digests: vec![*digest],
            }),
            None => Ok(()),
        }
    }

    /// Checks that the file for `digest` is present, is a regular file, and that its bytes
    /// still hash to `digest` — read in full unless its stat is the one it had when the
    /// store wrote or last verified it. Run before relaunching from the store.
    pub fn verify(&self, digest: &Sha256) -> Result<(), StoreError> {
        let path = self.path_of(digest);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.is_file() && self.lock_known().stored.get(digest) == Some(&Stamp::of(&meta)) {
                return Ok(());
            }
        }
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::Missing { path }),
            Err(e) => return Err(StoreError::io(&path, "open", e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| StoreError::io(&path, "stat", e))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile { path });
        }
        self.lock_known().reads += 1;
        let found = hash_all(&mut file).map_err(|e| StoreError::io(&path, "read", e))?;
        if &found != digest {
            return Err(StoreError::DigestMismatch {
                path,
                expected: *digest,
                found,
            });
        }
        self.lock_known().stored.insert(*digest, Stamp::of(&meta));
        self.save_known();
        Ok(())
    }

    /// Removes temporary files left in the store root by a staging that was interrupted
    /// (a crash mid-copy). Only call this when no other process or thread is staging into
    /// the same store (e.g. while holding the journal for writing). Returns how many were
    /// removed.
    pub fn clean_staging(&self) -> Result<usize, StoreError> {
        let entries =
            fs::read_dir(&self.root).map_err(|e| StoreError::io(&self.root, "list", e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.root, "list", e))?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(STAGING_PREFIX))
            {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io(&path, "remove", e)),
                }
            }
        }
        Ok(removed)
    }

    /// How many objects the store holds and their total size.
    pub fn usage(&self) -> Result<StoreUsage, StoreError> {
        let mut usage = StoreUsage::default();
        for (_, path) in self.objects()? {
            if let Ok(meta) = fs::symlink_metadata(&path) {
                usage.objects += 1;
                usage.bytes += meta.len();
            }
        }
        Ok(usage)
    }

    /// Removes every object whose digest is not in `keep` (and nothing else: files whose
    /// names are not digests are left alone). Only call this while no reload can stage
    /// (the caller holds every slot's reload lock). Returns what was removed and kept.
    pub fn gc(&self, keep: &std::collections::HashSet<Sha256>) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        for (digest, path) in self.objects()? {
            let bytes = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            if keep.contains(&digest) {
                report.kept += 1;
                report.kept_bytes += bytes;
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.removed.push(digest);
                    report.freed_bytes += bytes;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&path, "remove", e)),
            }
        }
        if !report.removed.is_empty() {
            {
                let mut known = self.lock_known();
                known.stored.retain(|d, _| keep.contains(d));
                known.sources.retain(|_, (_, d)| keep.contains(d));
            }
            self.save_known();
            sync_dir(&self.objects)?;
        }
        Ok(report)
    }

    /// Every object: its digest (from its name) and path.
    fn objects(&self) -> Result<Vec<(Sha256, PathBuf)>, StoreError> {
        let entries =
            fs::read_dir(&self.objects).map_err(|e| StoreError::io(&self.objects, "list", e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.objects, "list", e))?;
            if let Some(digest) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push((digest, entry.path()));
            }
        }
        Ok(out)
    }

    /// Opens the source `src` of a staging: a regular file (symlinks followed), readable,
    /// and for an executable with an execute bit.
    fn open_source(src: &Path, kind: Kind) -> Result<(File, fs::Metadata), StoreError> {
        // O_NONBLOCK: opening a FIFO must not hang; it is refused below as not a file.
        let source = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(src)
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => StoreError::Missing {
                    path: src.to_path_buf(),
                },
                ErrorKind::PermissionDenied => StoreError::Unreadable {
                    path: src.to_path_buf(),
                    source: e,
                },
                _ => StoreError::io(src, "open", e),
            })?;
        let meta = source
            .metadata()
            .map_err(|e| StoreError::io(src, "stat", e))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile {
                path: src.to_path_buf(),
            });
        }
        if kind == Kind::Executable && meta.permissions().mode() & 0o111 == 0 {
            return Err(StoreError::NotExecutable {
                path: src.to_path_buf(),
            });
        }
        Ok((source, meta))
    }

    /// The digest [`Store::stage_config`] would return for `src`, without writing anything:
    /// from its stamp if the store knows the file unchanged since it staged it, else by
    /// hashing its bytes. For a check that decides whether a reload is needed at all; the
    /// reload then stages the file itself.
    pub fn config_digest(&self, src: &Path) -> Result<Sha256, StoreError> {
        let (mut source, meta) = Self::open_source(src, Kind::Config)?;
        if let Some(digest) = self.known_unchanged(src, &Stamp::of(&meta), Kind::Config) {
            return Ok(digest);
        }
        hash_all(&mut source).map_err(|source| StoreError::Unreadable {
            path: src.to_path_buf(),
            source,
        })
    }

    fn stage(
        &self,
        src: &Path,
        kind: Kind,
        pending: Option<&mut PendingDurable>,
    ) -> Result<Sha256, StoreError> {
        let (mut source, meta) = Self::open_source(src, kind)?;

        let stamp = Stamp::of(&meta);
        if let Some(digest) = self.known_unchanged(src, &stamp, kind) {
            tracing::debug!(src = %src.display(), "unchanged since it was last staged");
            self.settle_existing(&digest, pending)?;
            return Ok(digest);
        }
        let hashed_at = std::time::SystemTime::now();
        self.lock_known().reads += 1;
        let unreadable = |source| StoreError::Unreadable {
            path: src.to_path_buf(),
            source,
        };

        // A small source is read whole first: the same bytes already stored (a config
        // staged again, a retry) then cost no staging file, no write and no unlink.
        let mut head = Vec::new();
        let mut hasher = sha2::Sha256::new();
        if meta.len() <= SMALL as u64 {
            (&mut source)
                .take(SMALL as u64 + 1)
                .read_to_end(&mut head)
                .map_err(unreadable)?;
            hasher.update(&head);
            if head.len() <= SMALL {
                let digest = Sha256(hasher.clone().finalize().into());
                if self.existing_copy_is_good(&self.path_of(&digest), &digest, kind)? {
                    tracing::debug!(src = %src.display(), "artifact already in the store");
                    self.remember(src, stamp, hashed_at, &digest, kind);
                    self.settle_existing(&digest, pending)?;
                    return Ok(digest);
                }
            }
        }

        // The temporary file is removed when `staging` drops, on every error path.
        let mut staging = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .permissions(Permissions::from_mode(0o600))
            .tempfile_in(&self.root)
            .map_err(|e| StoreError::io(&self.root, "create a staging file in", e))?;
        let staging_path = staging.path().to_path_buf();
        // `hasher` has the head's bytes already.
        staging
            .as_file_mut()
            .write_all(&head)
            .map_err(|e| StoreError::io(&staging_path, "write", e))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(unreadable(e)),
            };
            hasher.update(&buf[..n]);
            staging
                .as_file_mut()
                .write_all(&buf[..n])
                .map_err(|e| StoreError::io(&staging_path, "write", e))?;
        }
        // Crash tests: a death here leaves a staging copy for the next open to remove.
        fail::fail_point!("store-after-copy");
        let digest = Sha256(hasher.finalize().into());
        let mode = match kind {
            Kind::Executable => EXECUTABLE_MODE,
            Kind::Config => CONFIG_MODE,
        };
        // Same bytes already stored (the common case of a config-only reload, a rollback or a
        // retry): the stored copy is durable since it was staged, so the staging copy is
        // dropped unsynced. Skipping its fsync saves most of the staging time of a large
        // executable.
        let target = self.path_of(&digest);
        if self.existing_copy_is_good(&target, &digest, kind)? {
            drop(staging);
            tracing::debug!(path = %target.display(), "artifact already in the store");
            self.remember(src, stamp, hashed_at, &digest, kind);
            self.settle_existing(&digest, pending)?;
            return Ok(digest);
        }
        let file = staging.as_file();
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| StoreError::io(&staging_path, "chmod", e))?;
        if pending.is_none() {
            file.sync_all()
                .map_err(|e| StoreError::io(&staging_path, "fsync", e))?;
        }
        // Marked unsynced before its name appears, so that a staging of the same bytes on
        // another thread never takes it for durable.
        let newly_unsynced = pending.is_some() && self.lock_unsynced().insert(digest);
        // Closes the file; the path is still removed on drop until persisted.
        let staging = staging.into_temp_path();
        staging.persist(&target).map_err(|e| {
            if newly_unsynced {
                self.lock_unsynced().remove(&digest);
            }
            // `e.path` (the temporary file) is dropped, and so removed, with `e`.
            StoreError::io(&target, "rename into place", e.error)
        })?;
        match pending {
            Some(pending) => pending.digests.push(digest),
            None => sync_dir(&self.objects)?,
        }
        tracing::debug!(src = %src.display(), path = %target.display(), "artifact staged");
        self.remember(src, stamp, hashed_at, &digest, kind);
        Ok(digest)
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The digest of `src` if its stamp is the one it had when it was last staged, and the
    /// stored copy is unchanged since it was last verified (with the right mode).
    fn known_unchanged(&self, src: &Path, stamp: &Stamp, kind: Kind) -> Option<Sha256> {
        let known = self.lock_known();
        let (was, digest) = known.sources.get(src)?;
        if was != stamp {
            return None;
        }
        let stored = fs::metadata(self.path_of(digest)).ok()?;
        if known.stored.get(digest) != Some(&Stamp::of(&stored)) {
            return None;
        }
        if kind == Kind::Executable && stored.permissions().mode() & 0o100 == 0 {
            return None;
        }
        Some(*digest)
    }

    /// Remembers that `src` (stamped `stamp`, read from `hashed_at`) and the stored copy
    /// (verified or written just now) hold `digest` — the source only if it had not changed
    /// for [`RACY_WINDOW`] when it was read. `known.json` is rewritten for executables
    /// only: a config costs the next process less to hash than the rewrite costs now.
    fn remember(
        &self,
        src: &Path,
        stamp: Stamp,
        hashed_at: std::time::SystemTime,
        digest: &Sha256,
        kind: Kind,
    ) {
        let Ok(stored) = fs::metadata(self.path_of(digest)) else {
            return;
        };
        let stored = Stamp::of(&stored);
        let changed = {
            let mut known = self.lock_known();
            let mut changed = false;
            if stamp.settled(hashed_at, self.racy_window)
                && known.sources.get(src) != Some(&(stamp, *digest))
            {
                if known.sources.len() >= KNOWN_SOURCES_CAP && !known.sources.contains_key(src) {
                    // A cache: forgetting costs one hash the next time a source is staged.
                    known.sources.clear();
                }
                known.sources.insert(src.to_path_buf(), (stamp, *digest));
                changed = true;
            }
            // The stored copy was verified or written just now, and nobody but the store
            // writes it (0500/0400 in a 0700 directory): its stamp needs no waiting period.
            changed |= known.stored.insert(*digest, stored) != Some(stored);
            changed
        };
        // `known.json` already says all of it (a source staged again), or only a config
        // changed: not rewritten.
        if changed && kind == Kind::Executable {
            self.save_known();
        }
    }

    /// Replaces `known.json` with what is known now (write a temporary file, rename). Not
    /// fsynced: it is a cache, and a lost or stale file only costs a hash (a stale stamp
    /// never matches a changed file). Failures are logged, not returned.
    fn save_known(&self) {
        let file = self.lock_known().to_file();
        let result = serde_json::to_vec(&file)
            .map_err(io::Error::other)
            .and_then(|bytes| {
                let mut tmp = tempfile::Builder::new()
                    .prefix(STAGING_PREFIX)
                    .permissions(Permissions::from_mode(0o600))
                    .tempfile_in(&self.root)?;
                tmp.write_all(&bytes)?;
                tmp.persist(self.root.join(KNOWN_FILE))
                    .map(drop)
                    .map_err(|e| e.error)
            });
        if let Err(e) = result {
            tracing::debug!(root = %self.root.display(), error = %e, "not saving the known stamps");
        }
    }

    /// Whether `target` already holds the right bytes (fixing its mode if an executable is
    /// staged over a copy without the execute bit). A copy whose bytes are wrong is
    /// reported as not good, so the caller replaces it.
    fn existing_copy_is_good(
        &self,
        target: &Path,
        digest: &Sha256,
        kind: Kind,
    ) -> Result<bool, StoreError> {
        match self.verify(digest) {
            Ok(()) => {}
            Err(StoreError::Missing { .. }) => return Ok(false),
            Err(StoreError::DigestMismatch { found, .. }) => {
                tracing::warn!(
                    path = %target.display(),
                    %found,
                    "stored artifact is corrupt; replacing it with the freshly staged copy"
                );
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        if kind == Kind::Executable {
            let meta = fs::metadata(target).map_err(|e| StoreError::io(target, "stat", e))?;
            if meta.permissions().mode() & 0o100 == 0 {
                fs::set_permissions(target, Permissions::from_mode(EXECUTABLE_MODE))
                    .map_err(|e| StoreError::io(target, "chmod", e))?;
                File::open(target)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| StoreError::io(target, "fsync", e))?;
            }
        }
        Ok(true)
    }
}

/// Hashes everything `reader` yields.
fn hash_all(reader: &mut impl Read) -> io::Result<Sha256> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Sha256(hasher.finalize().into()))
}

/// fsyncs a directory so a rename inside it is durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, "fsync directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn store(state: &Path, racy_window: Duration) -> Store {
        let mut store = Store::open(state).unwrap();
        store.racy_window = racy_window;
        store
    }

    fn executable(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, Permissions::from_mode(0o755)).unwrap();
    }

    fn reads(store: &Store) -> u64 {
        store.lock_known().reads
    }

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap())
    }

    #[test]
    fn digest_at_names_only_files_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("state"), Duration::ZERO);
        let src = dir.path().join("plugin");
        executable(&src, b"#!/bin/sh\necho v1\n");
        let digest = store.stage_executable(&src).unwrap();
        assert_eq!(store.digest_at(&store.path_of(&digest)), Some(digest));
        let resolved = fs::canonicalize(store.path_of(&digest)).unwrap();
        assert_eq!(store.digest_at(&resolved), Some(digest));
        assert_eq!(store.digest_at(&src), None);
        let elsewhere = dir.path().join("sha256").join(digest.to_string());
        assert_eq!(store.digest_at(&elsewhere), None);
        assert_eq!(store.digest_at(&store.root().join("sha256/not-hex")), None);
    }

    #[test]
    fn an_unchanged_source_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("state"), Duration::ZERO);
        let src = dir.path().join("plugin");
        executable(&src, b"#!/bin/sh\necho v1\n");
        let first = store.stage_executable(&src).unwrap();
        let before = reads(&store);
        assert_eq!(store.stage_executable(&src).unwrap(), first);
        assert_eq!(store.stage_executable(&src).unwrap(), first);
        assert_eq!(reads(&store), before, "an unchanged source was read again");
    }

    #[test]
    fn a_changed_source_or_stored_copy_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("state"), Duration::ZERO);
        let src = dir.path().join("plugin");
        executable(&src, b"#!/bin/sh\necho v1\n");
        let v1 = store.stage_executable(&src).unwrap();
        store.stage_executable(&src).unwrap();
        // New bytes in place: the stamp changes, so the source is hashed again.
        executable(&src, b"#!/bin/sh\necho v2, longer\n");
        let v2 = store.stage_executable(&src).unwrap();
        assert_ne!(v1, v2);
        assert_eq!(
            fs::read(store.path_of(&v2)).unwrap(),
            b"#!/bin/sh\necho v2, longer\n"
        );
        // A stored copy altered behind the store's back is noticed and repaired.
        store.stage_executable(&src).unwrap();
        let stored = store.path_of(&v2);
        fs::set_permissions(&stored, Permissions::from_mode(0o755)).unwrap();
        fs::write(&stored, b"#!/bin/sh\necho evil, longer\n").unwrap();
        fs::set_permissions(&stored, Permissions::from_mode(0o555)).unwrap();
        assert_eq!(store.stage_executable(&src).unwrap(), v2);
        assert_eq!(fs::read(&stored).unwrap(), b"#!/bin/sh\necho v2, longer\n");
        store.verify(&v2).unwrap();
    }

    #[test]
    fn a_recently_changed_source_is_never_trusted_by_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        // The real window: the source was written just now, so its stamp is racy.
        let store = store(&dir.path().join("state"), RACY_WINDOW);
        let src = dir.path().join("plugin");
        executable(&src, b"#!/bin/sh\necho v1\n");
        store.stage_executable(&src).unwrap();
        let before = reads(&store);
        store.stage_executable(&src).unwrap();
        assert_eq!(reads(&store), before + 1, "a racy stamp was trusted");
        assert!(store.lock_known().sources.is_empty());
        // Rewritten in place with as many bytes, within the same second: still hashed.
        executable(&src, b"#!/bin/sh\necho v2\n");
        let v2 = store.stage_executable(&src).unwrap();
        assert_eq!(
            fs::read(store.path_of(&v2)).unwrap(),
            b"#!/bin/sh\necho v2\n"
        );
    }

    #[test]
    fn staging_bytes_the_store_holds_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // The real window: a config written just now is hashed again each time (racy).
        let store = store(&dir.path().join("state"), RACY_WINDOW);
        let plugin = dir.path().join("plugin");
        executable(&plugin, b"#!/bin/sh\necho v1\n");
        store.stage_executable(&plugin).unwrap();
        let src = dir.path().join("plugin.toml");
        fs::write(&src, b"message = \"v1\"\n").unwrap();
        let digest = store.stage_config(&src).unwrap();
        let known = store.root().join(KNOWN_FILE);
        let before = inode(&known);
        let reads_before = reads(&store);
        assert_eq!(store.stage_config(&src).unwrap(), digest);
        assert_eq!(
            reads(&store),
            reads_before + 1,
            "the racy source was not hashed"
        );
        // known.json says all of it already: not replaced.
        assert_eq!(inode(&known), before, "known.json was rewritten");
        // Another path with the same bytes: remembered nowhere new (racy), still nothing.
        let other = dir.path().join("copy.toml");
        fs::write(&other, b"message = \"v1\"\n").unwrap();
        assert_eq!(store.stage_config(&other).unwrap(), digest);
        assert_eq!(inode(&known), before, "known.json was rewritten");
    }

    /// A store in `dir` and a config file `dir/v1.toml` staged once, deferred: the store,
    /// the config, its digest and what the staging left to make durable.
    fn config_staged_deferred(dir: &Path) -> (Store, PathBuf, Sha256, PendingDurable) {
        let store = store(&dir.join("state"), Duration::ZERO);
        let config = dir.join("v1.toml");
        fs::write(&config, b"message = \"v1\"\n").unwrap();
        let mut pending = PendingDurable::default();
        let digest = store.stage_config_deferred(&config, &mut pending).unwrap();
        (store, config, digest, pending)
    }

    #[test]
    fn a_deferred_staging_lists_every_copy_it_uses_and_stays_unsynced_until_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, config, digest, first) = config_staged_deferred(dir.path());
        assert_eq!(first.digests, [digest]);
        assert!(store.path_of(&digest).is_file(), "the copy is in place");
        assert!(store.lock_unsynced().contains(&digest));
        store.make_durable(first).unwrap();
        assert!(!store.lock_unsynced().contains(&digest));
        // A later deferred staging of the same bytes depends on the copy too, and syncs it
        // again: it cannot tell whether another process wrote it without syncing.
        let mut second = PendingDurable::default();
        assert_eq!(
            store.stage_config_deferred(&config, &mut second).unwrap(),
            digest
        );
        assert_eq!(second.digests, [digest]);
        store.make_durable_later(second).wait().unwrap();
    }

    #[test]
    fn an_immediate_staging_syncs_a_copy_a_deferred_one_left_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, config, digest, pending) = config_staged_deferred(dir.path());
        drop(pending);
        assert!(store.lock_unsynced().contains(&digest));
        assert_eq!(store.stage_config(&config).unwrap(), digest);
        assert!(
            !store.lock_unsynced().contains(&digest),
            "an immediate staging took an unsynced copy for durable"
        );
    }

    #[test]
    fn a_new_config_is_remembered_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("state"), Duration::ZERO);
        let plugin = dir.path().join("plugin");
        executable(&plugin, b"#!/bin/sh\necho v1\n");
        store.stage_executable(&plugin).unwrap();
        let known = store.root().join(KNOWN_FILE);
        let before = inode(&known);
        let config = dir.path().join("v2.toml");
        fs::write(&config, b"message = \"v2\"\n").unwrap();
        let digest = store.stage_config(&config).unwrap();
        assert_eq!(
            inode(&known),
            before,
            "known.json was rewritten for a config"
        );
        // This process still knows it: verifying the copy reads nothing.
        let reads_before = reads(&store);
        store.verify(&digest).unwrap();
        assert_eq!(reads(&store), reads_before);
        // The next process hashes the small copy once, and learns it.
        let next = self::store(&dir.path().join("state"), Duration::ZERO);
        next.verify(&digest).unwrap();
        assert_eq!(reads(&next), 1);
    }

    #[test]
    fn a_new_executable_is_read_once_and_then_verified_by_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("state"), Duration::ZERO);
        let src = dir.path().join("plugin");
        executable(&src, b"#!/bin/sh\necho v1\n");
        let digest = store.stage_executable(&src).unwrap();
        assert_eq!(reads(&store), 1);
        store.verify(&digest).unwrap();
        assert_eq!(reads(&store), 1, "the copy just written was hashed again");
    }

    /// A state dir under `dir` whose store staged one executable (and remembered it in
    /// `known.json`): the state dir, the source and its digest.
    fn staged_once(dir: &Path) -> (PathBuf, PathBuf, Sha256) {
        let state = dir.join("state");
        let src = dir.join("plugin");
        executable(&src, b"#!/bin/sh\necho v1\n");
        let digest = store(&state, Duration::ZERO)
            .stage_executable(&src)
            .unwrap();
        (state, src, digest)
    }

    #[test]
    fn the_next_process_neither_hashes_an_unchanged_executable_nor_trusts_a_changed_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (state, src, digest) = staged_once(dir.path());

        // A new Store stands for the next one-shot command.
        let next = store(&state, Duration::ZERO);
        assert_eq!(next.stage_executable(&src).unwrap(), digest);
        next.verify(&digest).unwrap();
        assert_eq!(reads(&next), 0, "an unchanged executable was hashed again");

        // The stored copy damaged between two commands: its stamp changed, so it is hashed
        // and refused.
        let stored = next.path_of(&digest);
        fs::set_permissions(&stored, Permissions::from_mode(0o700)).unwrap();
        fs::write(&stored, b"#!/bin/sh\necho XX\n").unwrap();
        fs::set_permissions(&stored, Permissions::from_mode(0o500)).unwrap();
        let after = store(&state, Duration::ZERO);
        assert!(matches!(
            after.verify(&digest),
            Err(StoreError::DigestMismatch { .. })
        ));
    }

    /// `known.json` is rewritten only when what it says changes: a source staged again
    /// inside its racy window (hashed, its copy already known) leaves the file as it is.
    #[test]
    fn staging_what_is_already_known_does_not_rewrite_the_known_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // A racy window longer than the test: every staging hashes the source again.
        let store = store(&state, Duration::from_secs(3600));
        let src = dir.path().join("plugin");
        executable(&src, b"#!/bin/sh\necho hi\n");
        let digest = store.stage_executable(&src).unwrap();
        let known = state.join("store").join(KNOWN_FILE);
        let inode = fs::metadata(&known).unwrap().ino();
        assert_eq!(store.stage_executable(&src).unwrap(), digest);
        assert_eq!(reads(&store), 2, "the racy source was not hashed again");
        assert_eq!(
            fs::metadata(&known).unwrap().ino(),
            inode,
            "known.json was rewritten with nothing new"
        );
    }

    #[test]
    fn a_malformed_known_file_only_costs_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (state, src, digest) = staged_once(dir.path());
        fs::write(
            state.join("store").join(KNOWN_FILE),
            b"{\"version\":1,\"sour",
        )
        .unwrap();
        let next = store(&state, Duration::ZERO);
        assert_eq!(next.stage_executable(&src).unwrap(), digest);
        next.verify(&digest).unwrap();
        assert_eq!(
            reads(&next),
            2,
            "source and stored copy are hashed once each"
        );
        // …and the file is rewritten whole.
        assert_eq!(reads(&store(&state, Duration::ZERO)), 0);
        let again = store(&state, Duration::ZERO);
        again.verify(&digest).unwrap();
        assert_eq!(reads(&again), 0);
    }
}
