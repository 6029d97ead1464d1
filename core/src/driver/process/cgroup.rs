//! Containment of a generation in a cgroup v2 of its own, where one can be created.
//!
//! A process group and the `TRYSWAP_RELOAD_ID` tag miss a grandchild that calls `setsid`
//! and drops its environment. A cgroup does not: every process a generation forks stays in
//! its cgroup, and `cgroup.kill` (Linux 5.14+) kills them all at once. Each generation gets
//! `<cgroup2 mount>/tryswap/<state-dir id>/<slot>-<generation>`; the child moves itself
//! there before `exec`. Where no cgroup2 hierarchy is mounted writable (or `cgroup.kill` is
//! missing), generations run without one and the process group and reload tag are all
//! there is (docs/operator-guide.md, "Security").

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::Digest as _;
use tokio::time::Instant;
use tryswap_fsm::{Generation, SlotName};

/// Where the cgroup2 hierarchy is mounted, if it is (read once from `/proc/self/mountinfo`).
fn mount_point() -> Option<&'static Path> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
            text.lines().find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                if right.split_whitespace().next()? != "cgroup2" {
                    return None;
                }
                Some(PathBuf::from(left.split_whitespace().nth(4)?))
            })
        })
        .as_deref()
}

/// The cgroup that holds the generations' cgroups of the state dir `state_dir`,
/// `<mount>/tryswap/<state-dir id>` (whether it exists or not); `None` without a cgroup2
/// hierarchy.
fn state_dir_cgroup(state_dir: &Path) -> Option<PathBuf> {
    let mount = mount_point()?;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Some(mount.join("tryswap").join(id))
}

/// Whether the state dir `state_dir` has a cgroup of its own (`false` without a cgroup2
/// hierarchy): [`sweep_empty`] removes it once none of its generations' cgroups is left.
pub fn state_dir_has_cgroup(state_dir: &Path) -> bool {
    state_dir_cgroup(state_dir).is_some_and(|dir| dir.exists())
}

/// The cgroup of generation `generation` of `slot` in the state dir `state_dir` (whether it
/// exists or not); `None` without a cgroup2 hierarchy.
pub fn path_for(state_dir: &Path, slot: &SlotName, generation: Generation) -> Option<PathBuf> {
    Some(state_dir_cgroup(state_dir)?.join(format!("{}-{generation}", slot.as_str())))
}

/// Removes the empty cgroups of the state dir `state_dir`: those of generations whose
/// processes were all killed outside tryswap (or that tryswap could not remove before it
/// died), and the state dir's own cgroup once none is left. Returns how many generation
/// cgroups it removed.
///
/// Call it only while no generation of this state dir is being launched (at open, under
/// the journal's lock): a cgroup is empty between its creation and the moment the new
/// plugin joins it. A cgroup that still holds a process is never removed (`rmdir` of a
/// populated cgroup fails with `EBUSY`), so a live generation keeps its own.
pub fn sweep_empty(state_dir: &Path) -> usize {
    let Some(dir) = state_dir_cgroup(state_dir) else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let child = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || populated(&child) {
            continue;
        }
        match fs::remove_dir(&child) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::debug!(cgroup = %child.display(), error = %e, "keeping a generation's cgroup")
            }
        }
    }
    // Gone with its last generation; stays (EBUSY, ENOTEMPTY) while one still has a cgroup.
    let _ = fs::remove_dir(&dir);
    removed
}

/// A fresh cgroup for one run of an exec probe (`<mount>/tryswap/probes/<pid>-<n>`), so a
/// probe command that daemonizes leaves nothing behind; `None` without a cgroup2 hierarchy.
pub fn for_probe() -> Option<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(
        mount_point()?
            .join("tryswap")
            .join("probes")
            .join(format!("{}-{n}", std::process::id())),
    )
}

/// In a forked child before `exec`: moves the child into the cgroup whose `cgroup.procs`
/// is open as `fd` (writing `0` moves the writer). Async-signal-safe.
pub fn join_in_child(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: write(2) from a buffer we own; async-signal-safe.
    if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the cgroup `dir` and opens its `cgroup.procs` for the child to join (by
/// writing `0` to it before `exec`). `None` (logged) where that is not possible: no
/// permission, no `cgroup.kill`, not cgroup2.
///
/// A cgroup that cannot be used is removed again, so an existing generation cgroup (see
/// [`holds_generation`]) always means its generation was placed in it.
pub fn prepare(dir: &Path) -> Option<fs::File> {
    let result = fs::create_dir_all(dir).and_then(|()| {
        if !dir.join("cgroup.kill").exists() {
            return Err(io::Error::other("no cgroup.kill (Linux 5.14+)"));
        }
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
    });
    match result {
        Ok(procs) => Some(procs),
        Err(e) => {
            let _ = fs::remove_dir(dir);
            tracing::debug!(cgroup = %dir.display(), error = %e, "running the plugin without a cgroup of its own");
            None
        }
    }
}

/// The cgroup `dir` opened as a directory, for `clone3(CLONE_INTO_CGROUP)`; `None` if it
/// cannot be opened (the child then joins through `cgroup.procs`).
pub fn open_dir(dir: &Path) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ok()
}

/// Whether `dir` is a generation's cgroup that its processes were placed in: it exists
/// with `cgroup.kill` ([`prepare`] removes one it could not use). Every process the
/// generation forked is then in it, unless a privileged process moved itself out.
pub fn holds_generation(dir: &Path) -> bool {
    dir.join("cgroup.kill").exists()
}

/// The pids in the cgroup `dir` (its `cgroup.procs`); `None` if it cannot be read.
pub fn procs(dir: &Path) -> Option<Vec<u32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Kills every process left in the cgroup `dir` (`cgroup.kill`), waits up to `timeout`
/// for it to empty, and removes it. Returns how many processes it still held before the
/// kill. Nothing to do if `dir` does not exist.
pub async fn kill_and_remove(dir: &Path, timeout: Duration) -> usize {
    let left = match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(procs) => procs.lines().count(),
        Err(_) => return 0,
    };
    if left > 0 {
        let killed = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"));
        if let Err(e) = killed {
            tracing::warn!(cgroup = %dir.display(), error = %e, "cgroup.kill failed");
        }
    }
    // Also when `cgroup.procs` read empty: an exited process that is not reaped yet (its
    // new parent, init, reaps it in its own time) keeps the cgroup populated, and `rmdir`
    // fails with EBUSY until it is gone.
    let deadline = Instant::now() + timeout;
    while populated(dir) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Err(e) = fs::remove_dir(dir) {
        tracing::warn!(cgroup = %dir.display(), error = %e, "removing the generation's cgroup");
    }
    // The state dir's cgroup goes with its last generation (it stays while others run).
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
    left
}

/// Whether the cgroup still holds a process (`populated 1` in `cgroup.events`).
fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}
