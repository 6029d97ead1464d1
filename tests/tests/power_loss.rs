//! Power loss, approximated (issue 11, DESIGN.md "Journal, second form"): the state directory
//! lives on an ext4 file system in an image file, attached through a loop device and mounted.
//! A copy of the image file, taken while it is mounted, is what a power loss at that moment
//! would have left on the disk; the copy is mounted on a loop device of its own and only read
//! commands (`history`, `journal verify`, `journal export`, `journal replay`) run on it.
//!
//! Why a copy of the image file is "what reached the disk": tryswap's writes go into the page
//! cache of the mounted file system and reach the loop device only when the kernel writes
//! them back — at once for what tryswap syncs (`fdatasync`, `fsync`, sled's
//! `sync_file_range`), later or never for the rest. The loop device writes what it receives
//! into the image file (the host's page cache of that file), and the copy reads the image
//! file through that same cache. So the copy holds exactly the writes the device received and
//! none of the mounted file system's dirty pages: as after a power loss, where the page cache
//! is gone. The model is the kind one of a device that keeps every write it completed (no
//! volatile write cache that loses completed but unflushed writes).
//!
//! Why the copy is consistent: the copy reads the image piece by piece, so writes landing
//! while it reads could give a mix no power loss can produce (a later synced write without an
//! earlier one it was ordered after). While a copy is taken, every process that writes the
//! journal (`tryswap serve`, or the one-shot command running) is stopped with `SIGSTOP`, every
//! thread of it (a thread inside `fdatasync` stops when the call returns, so no sync is half
//! done), and the file system is mounted with `commit=60`, so ext4's own journal commits only
//! when a process syncs (the periodic commit would add unsynced metadata to the disk by
//! chance; without it less reaches the disk, which only makes the test harder). The kernel's
//! background writeback may still write pages that nobody synced; any state of those is a
//! possible power-loss outcome. Device-mapper (`dmsetup suspend --nolockfs`) would make the
//! copy atomic without stopping anyone, but it is not available everywhere these tests run
//! (not in the VMs this test was written on).
//!
//! Why the copy is mounted read-write: it was taken from a mounted file system, so its ext4
//! journal needs recovery, and mounting it replays that journal, exactly what the boot after
//! a power loss does. It is a scratch copy (the next copy is taken from the live image again).
//! The test compares every file of the copy's journal directory before and after the read
//! commands: the log, the witness and the archive (the truth) must be byte for byte as they
//! were. What else the reads changed is printed per copy: `journal verify` on a journal
//! nobody holds also checks sled's index, and opening sled rewrites its own files (a
//! snapshot, its `conf`; inspection removes an unfinished `snap.*.generating`) and
//! `journal.lock` (the reader's pid). They are derived or bookkeeping, and the next open for
//! writing would rewrite them anyway. (`history`, `export` and `replay` read the log alone;
//! `tests/tests/journal_reads.rs` checks that they change no byte.)
//!
//! What the test checks:
//! - **Acknowledged reloads** (through `tryswap serve`, which keeps running, so nothing is
//!   flushed by an exit): after each `activate` that answered `active`, the daemon is stopped
//!   and the image copied; the copy's history holds that reload as `active`, and every one
//!   before it.
//! - **Random moments** (seeded; the seed is printed; rerun with `TRYSWAP_POWER_LOSS_SEED`):
//!   one-shot `activate`, `journal compact --keep 2` and `journal rebuild` run in another
//!   process, and after a random delay (up to that kind of command's last duration) the image
//!   is copied. Every copy opens, verifies and replays; every reload acknowledged before the
//!   copy began is in the copy's history or, when a compaction trimmed it, in its archive.
//!
//! What it cannot show: ext4 commits all pending metadata at any `fsync`, so a missing
//! directory sync after creating or renaming a file would go unnoticed here.
//!
//! Needs root, a loop device and `mkfs.ext4`; skipped otherwise (failing under
//! `TRYSWAP_REQUIRE_ALL=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tryswap_tests::crash::{seed_from_env, SplitMix64};
use tryswap_tests::daemon::Daemon;
use tryswap_tests::harness::{run_bounded, tryswap_path, Harness, Run};
use tryswap_tests::process::send_signal;
use tryswap_tests::{fixture_plugin_path, wait_until, FixtureConfig};

/// The test's name in skip messages.
const TEST: &str = "power_loss";
/// Size of the ext4 image (sparse: what the copies write is what the file system used).
const IMAGE_BYTES: u64 = 128 << 20;
/// Reloads acknowledged through the daemon, each followed by a copy.
const ACKNOWLEDGED_RELOADS: usize = 4;
/// The one-shot commands run in the background, one copy taken during each.
const RANDOM_ROUNDS: [Op; 10] = [
    Op::Activate,
    Op::Activate,
    Op::Compact,
    Op::Activate,
    Op::Rebuild,
    Op::Activate,
    Op::Compact,
    Op::Activate,
    Op::Rebuild,
    Op::Activate,
];
/// How long a stopped writer may take to stop every thread.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long one system tool (mkfs, losetup, mount) may take.
const TOOL_LIMIT: Duration = Duration::from_secs(60);
/// Files of the journal that hold its truth: never changed by a read.
const TRUTH: [&str; 3] = ["log/", "witness", "archive/"];

/// A one-shot command run in the background while a copy is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Activate,
    Compact,
    Rebuild,
}

/// The path of system tool `name` (PATH, then the sbin directories root's PATH may lack).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs system tool `name` with `args` (bounded); its stdout, or why it failed.
fn tool(name: &str, args: &[&str]) -> Result<String, String> {
    let program = find_tool(name).ok_or_else(|| format!("`{name}` is not installed"))?;
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    let output = run_bounded(command, TOOL_LIMIT);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{name} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Why this machine cannot run the test, if it cannot.
fn missing_capability() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (losetup, mount)".into());
    }
    for name in ["mkfs.ext4", "losetup", "mount", "umount"] {
        if find_tool(name).is_none() {
            return Some(format!(
                "`{name}` is not installed (Debian: e2fsprogs, util-linux, mount)"
            ));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no loop devices (/dev/loop-control is missing)".into());
    }
    None
}

/// An ext4 image attached to a loop device and mounted. Dropping it unmounts and detaches,
/// also when the test fails.
struct Disk {
    device: String,
    mount: PathBuf,
    mounted: bool,
}

impl Disk {
    /// Creates the sparse image file `image` and an ext4 file system in it.
    fn format(image: &Path) -> Result<(), String> {
        File::create(image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .map_err(|e| format!("creating {}: {e}", image.display()))?;
        tool("mkfs.ext4", &["-q", "-F", text(image)]).map(drop)
    }

    /// Attaches `image` to a free loop device and mounts it at `mount` with `options`.
    fn attach(image: &Path, mount: &Path, options: &str) -> Result<Disk, String> {
        let device = tool("losetup", &["--find", "--show", text(image)])?
            .trim()
            .to_owned();
        let mut disk = Disk {
            device,
            mount: mount.to_path_buf(),
            mounted: false,
        };
        std::fs::create_dir_all(mount).map_err(|e| format!("creating {}: {e}", mount.display()))?;
        tool(
            "mount",
            &["-t", "ext4", "-o", options, &disk.device, text(mount)],
        )?;
        disk.mounted = true;
        Ok(disk)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            let mount = self.mount.clone();
            let unmounted = wait_until(Duration::from_secs(10), || {
                tool("umount", &[text(&mount)]).is_ok()
            });
            if !unmounted {
                eprintln!("{TEST}: {} is busy; detaching it lazily", mount.display());
                let _ = tool("umount", &["-l", text(&mount)]);
            }
        }
        if let Err(e) = tool("losetup", &["-d", &self.device]) {
            eprintln!("{TEST}: {e}");
        }
    }
}

/// The test's world: the harness (config and temp dir), the mounted disk holding the state
/// directory, and the daemon while it runs. Dropping it stops the daemon and every process
/// running from the temp dir (the plugins run from the store on the disk), then unmounts.
struct Rig {
    daemon: Option<Daemon>,
    disk: Option<Disk>,
    image: PathBuf,
    h: Harness,
}

impl Rig {
    /// The rig, or why this machine cannot have one.
    fn new() -> Result<Rig, String> {
        if let Some(why) = missing_capability() {
            return Err(why);
        }
        let mut h = Harness::demo();
        let config = std::fs::read_to_string(&h.config_path).expect("read config");
        let config = config.replacen("state_dir = \"state\"", "state_dir = \"disk/state\"", 1);
        std::fs::write(&h.config_path, config).expect("write config");
        h.state_dir = h.state.join("disk/state");
        let image = h.state.join("disk.img");
        Disk::format(&image)?;
        let disk = Disk::attach(&image, &h.state.join("disk"), "commit=60")?;
        Ok(Rig {
            daemon: None,
            disk: Some(disk),
            image,
            h,
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.daemon.take());
        self.h.state.kill_processes();
        if !wait_until(Duration::from_secs(10), || {
            self.h.state.processes().is_empty()
        }) {
            eprintln!(
                "{TEST}: processes still run from the disk: {:?}",
                self.h.state.processes()
            );
        }
        // While the state dir is still mounted: TempState would not find it afterwards.
        self.h.state.remove_cgroups();
        drop(self.disk.take());
    }
}

/// The one-letter state of every thread of `pid` (empty once it is gone).
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.trim_start().chars().next()
        })
        .collect()
}

/// Writers stopped with SIGSTOP, every thread of them; continued when dropped.
struct Stopped(Vec<u32>);

impl Stopped {
    fn new(pids: &[u32]) -> Stopped {
        for &pid in pids {
            send_signal(pid, Signal::SIGSTOP);
        }
        let stopped = Stopped(pids.to_vec());
        let all = wait_until(STOP_WAIT, || {
            pids.iter().all(|&pid| {
                thread_states(pid)
                    .iter()
                    .all(|s| matches!(s, 'T' | 't' | 'Z' | 'X'))
            })
        });
        assert!(all, "writers {pids:?} did not stop within {STOP_WAIT:?}");
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            send_signal(pid, Signal::SIGCONT);
        }
    }
}

/// Copies the image file `from` to `to`: reads it into memory with `writers` stopped (the
/// pieces that are not all zero), then writes the copy with them running again, leaving
/// holes where the image is zero (so a copy costs what the file system uses). Returns how
/// long the writers were stopped.
fn copy_image(from: &Path, to: &Path, writers: &[u32]) -> Duration {
    const PIECE: usize = 64 << 10;
    let started = Instant::now();
    let stopped = Stopped::new(writers);
    let mut source = File::open(from).expect("open the image");
    let mut pieces: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut buffer = vec![0u8; 16 * PIECE];
    let zeros = vec![0u8; PIECE];
    let mut at = 0u64;
    loop {
        let n = source.read(&mut buffer).expect("read the image");
        if n == 0 {
            break;
        }
        for (i, piece) in buffer[..n].chunks(PIECE).enumerate() {
            // A slice comparison (memcmp): a byte loop is slow in a debug build.
            if piece != &zeros[..piece.len()] {
                pieces.push((at + (i * PIECE) as u64, piece.to_vec()));
            }
        }
        at += n as u64;
    }
    drop(stopped);
    let took = started.elapsed();
    let mut copy = File::create(to).expect("create the copy");
    for (offset, piece) in pieces {
        copy.seek(SeekFrom::Start(offset))
            .expect("seek in the copy");
        copy.write_all(&piece).expect("write the copy");
    }
    copy.set_len(at).expect("size the copy");
    took
}

/// Every file under `dir` (relative path with `/` → contents).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.insert(format!("{name}/"), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(name, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The paths that differ between two [`files`] listings.
fn changed(before: &BTreeMap<String, Vec<u8>>, after: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .cloned()
        .collect()
}

/// What the read commands found in one copy.
#[derive(Debug)]
struct CopyView {
    /// Reload id → outcome, per `history`.
    reloads: BTreeMap<String, String>,
    /// Reload ids with an `Activated` record in `journal/archive/`.
    archived_active: BTreeSet<String>,
    /// The last sequence number `journal export` printed.
    last_seq: u64,
    /// How long mounting, reading and unmounting the copy took.
    took: Duration,
    /// The files of the copy's journal directory, with their sizes.
    listing: Vec<(String, usize)>,
    /// Files of the journal directory the reads changed (outside the log, witness and
    /// archive, which must not change).
    changed: Vec<String>,
}

/// Mounts the copy `image` at `mount`, runs the read commands on its state directory, checks
/// they succeed and leave the journal's truth untouched, and unmounts it again.
fn read_copy(h: &Harness, image: &Path, mount: &Path, label: &str) -> CopyView {
    let started = Instant::now();
    let disk = Disk::attach(image, mount, "rw")
        .unwrap_or_else(|e| panic!("{label}: the copy does not mount: {e}"));
    let state = mount.join("state");
    let journal = state.join("journal");
    let before = files(&journal);
    let read = |args: &[&str]| -> Run {
        let mut all = vec!["--state-dir", text(&state)];
        all.extend_from_slice(args);
        let run = h.tryswap(&all);
        assert_eq!(
            run.code,
            0,
            "{label}: `tryswap {}` on the copy failed: {run:?}",
            args.join(" ")
        );
        run
    };

    let history = read(&["--json", "history", "demo"]).json();
    let reloads = history["reloads"]
        .as_array()
        .unwrap_or_else(|| panic!("{label}: history has no `reloads`: {history}"))
        .iter()
        .map(|r| {
            (
                r["reload_id"].as_str().unwrap_or_default().to_owned(),
                r["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    read(&["journal", "verify"]);
    let export = read(&["journal", "export"]);
    let last_seq = export
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|record| record["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let until = last_seq.to_string();
    let replay = read(&["--json", "journal", "replay", "--until", &until]).json();
    assert_eq!(
        replay["seq"].as_u64(),
        Some(last_seq),
        "{label}: replay did not reach the last record: {replay}"
    );

    let after = files(&journal);
    let changed = changed(&before, &after);
    let truth: Vec<&String> = changed
        .iter()
        .filter(|name| TRUTH.iter().any(|t| name.starts_with(t)))
        .collect();
    assert!(
        truth.is_empty(),
        "{label}: read commands changed the copy's log, witness or archive: {truth:?}"
    );
    let archived_active = after
        .iter()
        .filter(|(name, _)| name.starts_with("archive/"))
        .flat_map(|(_, bytes)| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(|record| event_name(&record["event"]).eq_ignore_ascii_case("activated"))
        .filter_map(|record| record["reload"].as_str().map(str::to_owned))
        .collect();
    drop(disk);
    std::fs::remove_file(image).expect("remove the copy");
    CopyView {
        reloads,
        archived_active,
        last_seq,
        took: started.elapsed(),
        listing: after
            .iter()
            .map(|(name, bytes)| (name.clone(), bytes.len()))
            .collect(),
        changed,
    }
}

/// The name of an exported event: `"name"` or `{"name": {…}}`.
fn event_name(event: &Value) -> &str {
    match event {
        Value::String(name) => name,
        Value::Object(map) => map.keys().next().map_or("", String::as_str),
        _ => "",
    }
}

/// Checks that every reload of `acknowledged` is in the copy: `active` in its history, or
/// with its `Activated` record in the archive (a compaction trimmed it).
fn assert_holds(view: &CopyView, acknowledged: &[String], label: &str) {
    for id in acknowledged {
        let in_history = view.reloads.get(id).map(String::as_str) == Some("active");
        assert!(
            in_history || view.archived_active.contains(id),
            "{label}: the acknowledged reload {id} is lost: the copy's history has {:?}, its \
             archive {:?}; its journal directory: {:?}",
            view.reloads,
            view.archived_active,
            view.listing
        );
    }
}

/// The reload id of an `activate --json` answer that says `active`.
fn activated(stdout: &str, what: &str) -> String {
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout}"));
    assert_eq!(report["outcome"], "active", "{what}: {report}");
    report["reload_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no reload_id: {report}"))
        .to_owned()
}

/// `tryswap ARGS…` started in the background (stdout and stderr piped).
fn spawn(h: &Harness, args: &[&str]) -> Child {
    Command::new(tryswap_path())
        .arg("--config")
        .arg(&h.config_path)
        .args(args)
        .env_remove("TRYSWAP_STATE_DIR")
        .env_remove("TRYSWAP_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tryswap")
}

/// Waits (bounded) for `child`; its exit code and output.
fn finish(child: Child, what: &str) -> Run {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            send_signal(pid, Signal::SIGKILL);
            panic!("{what} did not finish within 60 s")
        })
        .expect("wait for tryswap");
    Run::from_output(output)
}

#[test]
fn copies_of_the_disk_taken_at_any_moment_hold_every_acknowledged_reload() {
    let mut rig = match Rig::new() {
        Ok(rig) => rig,
        Err(why) => {
            tryswap_tests::skip(TEST, &why);
            return;
        }
    };
    let seed = seed_from_env("TRYSWAP_POWER_LOSS_SEED");
    println!("{TEST}: seed {seed} (rerun with TRYSWAP_POWER_LOSS_SEED={seed})");
    let mut rng = SplitMix64::new(seed);
    let configs = [
        rig.h
            .fixture_config("v1", &FixtureConfig::with_message("v1")),
        rig.h
            .fixture_config("v2", &FixtureConfig::with_message("v2")),
    ];
    let copy_image_path = rig.h.state.join("copy.img");
    let mut acknowledged: Vec<String> = Vec::new();
    let mut tally = Vec::new();

    // Acknowledged reloads through the daemon: each one is in the copy taken right after.
    rig.daemon = Some(Daemon::start(&rig.h));
    let daemon_pid = rig.daemon.as_ref().map_or(0, Daemon::pid);
    for n in 0..ACKNOWLEDGED_RELOADS {
        let what = format!("acknowledged reload {n}");
        let run = rig.h.activate("demo", &configs[n % 2]);
        assert_eq!(run.code, 0, "{what}: {run:?}");
        acknowledged.push(activated(&run.stdout, &what));
        copy_image(&rig.image, &copy_image_path, &[daemon_pid]);
        let view = read_copy(&rig.h, &copy_image_path, &rig.h.state.join("copy"), &what);
        assert_holds(&view, &acknowledged, &what);
        tally.push(format!(
            "{what}: copy ends at seq {}, {} reloads; read in {} ms, reads changed {:?}",
            view.last_seq,
            view.reloads.len(),
            view.took.as_millis(),
            view.changed
        ));
    }
    let mut daemon = rig.daemon.take().expect("the daemon");
    assert!(
        daemon.terminate(Duration::from_secs(20)).is_some(),
        "the daemon did not stop"
    );
    drop(daemon);

    // Copies at random moments of one-shot commands run by another process.
    let plugin = fixture_plugin_path();
    let mut last_ms: BTreeMap<Op, u64> = BTreeMap::new();
    for (n, op) in RANDOM_ROUNDS.into_iter().enumerate() {
        // Alternate v1 and v2 after the last acknowledged reload, so every activation swaps.
        let config = &configs[(acknowledged.len()) % 2];
        let args: Vec<&str> = match op {
            Op::Activate => vec![
                "--json",
                "activate",
                "demo",
                text(&plugin),
                "--config-file",
                text(config),
            ],
            Op::Compact => vec!["journal", "compact", "--keep", "2"],
            Op::Rebuild => vec!["journal", "rebuild"],
        };
        let what = format!("round {n} ({op:?})");
        let window = *last_ms.entry(op).or_insert(300);
        let delay = rng.below(window + 1);
        let started = Instant::now();
        let mut child = spawn(&rig.h, &args);
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(delay));
        let during = child.try_wait().expect("try_wait").is_none();
        let mut before_copy = acknowledged.clone();
        let stopped = copy_image(&rig.image, &copy_image_path, &[pid]);
        let run = finish(child, &what);
        // The next delay of this kind spreads over this run's own duration.
        let ran = started.elapsed().saturating_sub(stopped);
        last_ms.insert(op, ran.as_millis() as u64);
        assert_eq!(run.code, 0, "{what}: {run:?}");
        if op == Op::Activate {
            let id = activated(&run.stdout, &what);
            if !during {
                // It had answered before the copy began: the copy must hold it too.
                before_copy.push(id.clone());
            }
            acknowledged.push(id);
        }
        let view = read_copy(&rig.h, &copy_image_path, &rig.h.state.join("copy"), &what);
        assert_holds(&view, &before_copy, &what);
        tally.push(format!(
            "{what}: copied {delay} ms in ({}, stopped {} ms); copy ends at seq {}; read in {} ms, \
             reads changed {:?}",
            if during { "while it ran" } else { "after it answered" },
            stopped.as_millis(),
            view.last_seq,
            view.took.as_millis(),
            view.changed
        ));
    }
    let verify = rig.h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "the live journal: {verify:?}");
    println!(
        "{TEST}: {} copies, all open, verify and replay:",
        tally.len()
    );
    for line in &tally {
        println!("  {line}");
    }
}
