//! The content-addressed store: staging, modes, idempotence, refused sources, verify, and
//! errors that name their path (including a real ENOSPC on a small tmpfs when the test can
//! mount one in a user namespace).

use std::fs::{self, Permissions};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tryswap::{Store, StoreError};
use tryswap_fsm::Sha256;

fn sha256_of(bytes: &[u8]) -> Sha256 {
    Sha256(sha2::Sha256::digest(bytes).into())
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
}

/// Names in the store root other than `sha256` (leftover staging files).
fn leftovers(store: &Store) -> Vec<String> {
    fs::read_dir(store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "sha256" && n != "known.json")
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        Fixture { dir, store }
    }

    fn file(&self, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = self.dir.path().join(name);
        write_file(&path, bytes, mode);
        path
    }
}

#[track_caller]
fn assert_names(err: &StoreError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "{path:?} not named in: {msg}"
    );
}

#[test]
fn open_creates_private_directories() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = Store::open(&state).unwrap();
    assert_eq!(store.root(), state.join("store"));
    assert_eq!(mode_of(&state.join("store")), 0o700);
    assert_eq!(mode_of(&state.join("store/sha256")), 0o700);
    // Opening again is fine.
    Store::open(&state).unwrap();
}

#[test]
fn open_on_a_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::write(&state, b"not a dir").unwrap();
    let err = Store::open(&state).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert_names(&err, &state);
}

#[test]
fn staged_executable_is_a_read_only_copy_named_by_its_digest() {
    let fx = Fixture::new();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = fx.file("plugin", &bytes, 0o750);
    let digest = fx.store.stage_executable(&src).unwrap();
    assert_eq!(digest, sha256_of(&bytes));
    let stored = fx.store.path_of(&digest);
    assert_eq!(
        stored,
        fx.dir
            .path()
            .join("state/store/sha256")
            .join(digest.to_string())
    );
    assert_eq!(fs::read(&stored).unwrap(), bytes);
    assert_eq!(mode_of(&stored), 0o500);
    assert!(
        leftovers(&fx.store).is_empty(),
        "{:?}",
        leftovers(&fx.store)
    );
    fx.store.verify(&digest).unwrap();
    // The source is untouched.
    assert_eq!(mode_of(&src), 0o750);
}

#[test]
fn staged_config_is_read_only_and_needs_no_execute_bit() {
    let fx = Fixture::new();
    let src = fx.file("plugin.toml", b"level = 3\n", 0o600);
    let digest = fx.store.stage_config(&src).unwrap();
    assert_eq!(digest, sha256_of(b"level = 3\n"));
    assert_eq!(mode_of(&fx.store.path_of(&digest)), 0o400);
    // An empty config is fine too.
    let empty = fx.file("empty.toml", b"", 0o644);
    let digest = fx.store.stage_config(&empty).unwrap();
    assert_eq!(digest, sha256_of(b""));
    assert_eq!(fs::read(fx.store.path_of(&digest)).unwrap(), b"");
}

#[test]
fn staging_is_idempotent() {
    let fx = Fixture::new();
    let src = fx.file("plugin", b"#!/bin/sh\necho hi\n", 0o755);
    let first = fx.store.stage_executable(&src).unwrap();
    let stored = fx.store.path_of(&first);
    let inode = fs::metadata(&stored).unwrap();
    let second = fx.store.stage_executable(&src).unwrap();
    assert_eq!(first, second);
    // The existing copy was kept, not replaced.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(inode.ino(), fs::metadata(&stored).unwrap().ino());
    // A different path with the same bytes lands on the same object.
    let copy = fx.file("copy", b"#!/bin/sh\necho hi\n", 0o700);
    assert_eq!(fx.store.stage_executable(&copy).unwrap(), first);
    let objects: Vec<_> = fs::read_dir(stored.parent().unwrap()).unwrap().collect();
    assert_eq!(objects.len(), 1);
    assert!(leftovers(&fx.store).is_empty());
}

#[test]
fn executable_staged_over_a_config_copy_gets_its_execute_bits() {
    let fx = Fixture::new();
    let src = fx.file("both", b"#!/bin/sh\n", 0o755);
    let digest = fx.store.stage_config(&src).unwrap();
    assert_eq!(mode_of(&fx.store.path_of(&digest)), 0o400);
    assert_eq!(fx.store.stage_executable(&src).unwrap(), digest);
    assert_eq!(mode_of(&fx.store.path_of(&digest)), 0o500);
    // Staging it as a config again does not take the bits away.
    fx.store.stage_config(&src).unwrap();
    assert_eq!(mode_of(&fx.store.path_of(&digest)), 0o500);
}

#[test]
fn symlinks_are_followed() {
    let fx = Fixture::new();
    let target = fx.file("real-plugin", b"real bytes", 0o755);
    let link = fx.dir.path().join("plugin-link");
    symlink(&target, &link).unwrap();
    let digest = fx.store.stage_executable(&link).unwrap();
    assert_eq!(digest, sha256_of(b"real bytes"));
    let stored = fx.store.path_of(&digest);
    assert!(fs::symlink_metadata(&stored).unwrap().is_file());
}

#[test]
fn missing_source_is_refused_with_its_path() {
    let fx = Fixture::new();
    let src = fx.dir.path().join("no-such-plugin");
    let err = fx.store.stage_executable(&src).unwrap_err();
    assert!(
        matches!(&err, StoreError::Missing { path } if path == &src),
        "{err:?}"
    );
    assert_names(&err, &src);
    // A dangling symlink is missing too.
    let link = fx.dir.path().join("dangling");
    symlink(&src, &link).unwrap();
    let err = fx.store.stage_config(&link).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(leftovers(&fx.store).is_empty());
}

#[test]
fn directories_and_fifos_are_refused() {
    let fx = Fixture::new();
    let dir = fx.dir.path().join("a-dir");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
    let err = fx.store.stage_executable(&dir).unwrap_err();
    assert!(matches!(err, StoreError::NotAFile { .. }), "{err:?}");
    assert_names(&err, &dir);

    // Opening a FIFO with no writer must not block staging.
    let fifo = fx.dir.path().join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
    let err = fx.store.stage_config(&fifo).unwrap_err();
    assert!(matches!(err, StoreError::NotAFile { .. }), "{err:?}");
    assert_names(&err, &fifo);
    assert!(leftovers(&fx.store).is_empty());
}

#[test]
fn non_executable_source_is_refused() {
    let fx = Fixture::new();
    let src = fx.file("plugin", b"bytes", 0o644);
    let err = fx.store.stage_executable(&src).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotExecutable { path } if path == &src),
        "{err:?}"
    );
    assert_names(&err, &src);
    assert!(err.to_string().contains("not executable"), "{err}");
    // Any one execute bit is enough.
    let other_x = fx.file("plugin2", b"bytes", 0o641);
    fx.store.stage_executable(&other_x).unwrap();
}

#[test]
fn read_errors_are_unreadable_and_leave_no_staging_file() {
    // /proc/self/mem is a regular file that opens but fails to read at offset 0 (EIO).
    let fx = Fixture::new();
    let src = Path::new("/proc/self/mem");
    let err = fx.store.stage_config(src).unwrap_err();
    assert!(matches!(err, StoreError::Unreadable { .. }), "{err:?}");
    assert_names(&err, src);
    assert!(
        leftovers(&fx.store).is_empty(),
        "{:?}",
        leftovers(&fx.store)
    );
}

const UNREADABLE_ENV: &str = "TRYSWAP_TEST_UNREADABLE_DIR";

/// A source without read permission is refused. Root can read anything, so under root the
/// check re-runs this test as `nobody` with `setpriv` (skipped if that is not possible).
#[test]
fn unreadable_source_is_refused() {
    if let Ok(dir) = std::env::var(UNREADABLE_ENV) {
        // Inner run: not root, in a world-writable directory prepared by the outer run.
        let dir = PathBuf::from(dir);
        let store = Store::open(&dir.join("state")).unwrap();
        let src = dir.join("plugin");
        let err = store.stage_executable(&src).unwrap_err();
        assert!(
            matches!(&err, StoreError::Unreadable { path, .. } if path == &src),
            "{err:?}"
        );
        assert_names(&err, &src);
        assert!(leftovers(&store).is_empty());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("plugin");
    write_file(&src, b"secret", 0o111);
    if fs::File::open(&src).is_err() {
        // Not privileged: test directly.
        let store = Store::open(&dir.path().join("state")).unwrap();
        let err = store.stage_executable(&src).unwrap_err();
        assert!(
            matches!(&err, StoreError::Unreadable { path, .. } if path == &src),
            "{err:?}"
        );
        assert_names(&err, &src);
        return;
    }
    fs::set_permissions(dir.path(), Permissions::from_mode(0o777)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "unreadable_source_is_refused",
            "--test-threads=1",
        ])
        .env(UNREADABLE_ENV, dir.path());
    match run_bounded(cmd) {
        Outcome::Passed => {}
        Outcome::CouldNotRun(why) => skip(
            "the unprivileged part of unreadable_source_is_refused",
            &why,
        ),
        Outcome::Failed(out) => panic!("inner run failed:\n{out}"),
    }
}

#[test]
fn verify_detects_a_tampered_copy() {
    let fx = Fixture::new();
    let src = fx.file("plugin", b"original bytes", 0o755);
    let digest = fx.store.stage_executable(&src).unwrap();
    fx.store.verify(&digest).unwrap();

    let stored = fx.store.path_of(&digest);
    fs::set_permissions(&stored, Permissions::from_mode(0o755)).unwrap();
    fs::write(&stored, b"tampered bytes").unwrap();
    let err = fx.store.verify(&digest).unwrap_err();
    match &err {
        StoreError::DigestMismatch {
            path,
            expected,
            found,
        } => {
            assert_eq!(path, &stored);
            assert_eq!(expected, &digest);
            assert_eq!(found, &sha256_of(b"tampered bytes"));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_names(&err, &stored);
    assert!(err.to_string().contains(&digest.to_string()), "{err}");

    // Staging the original again repairs the copy.
    assert_eq!(fx.store.stage_executable(&src).unwrap(), digest);
    fx.store.verify(&digest).unwrap();
    assert_eq!(fs::read(&stored).unwrap(), b"original bytes");
    assert_eq!(mode_of(&stored), 0o500);
}

#[test]
fn verify_reports_a_missing_copy() {
    let fx = Fixture::new();
    let digest = sha256_of(b"never staged");
    let err = fx.store.verify(&digest).unwrap_err();
    let expected = fx.store.path_of(&digest);
    assert!(
        matches!(&err, StoreError::Missing { path } if path == &expected),
        "{err:?}"
    );
    assert_names(&err, &expected);
}

#[test]
fn clean_staging_removes_only_interrupted_copies() {
    let fx = Fixture::new();
    let src = fx.file("plugin", b"x", 0o755);
    let digest = fx.store.stage_executable(&src).unwrap();
    fs::write(fx.store.root().join(".staging-crashed1"), b"partial").unwrap();
    fs::write(fx.store.root().join(".staging-crashed2"), b"partial").unwrap();
    assert_eq!(fx.store.clean_staging().unwrap(), 2);
    assert!(leftovers(&fx.store).is_empty());
    fx.store.verify(&digest).unwrap();
    assert_eq!(fx.store.clean_staging().unwrap(), 0);
}

const ENOSPC_ENV: &str = "TRYSWAP_TEST_ENOSPC_DIR";
const ENOSPC_SRC_ENV: &str = "TRYSWAP_TEST_ENOSPC_SRC";

/// A full disk comes back as an `Io` error naming the staging path, and leaves nothing
/// behind. Runs the staging inside a user+mount namespace over a 256 KiB tmpfs; skipped
/// (with a note on stderr) where such a namespace cannot be made.
#[test]
fn disk_full_is_an_io_error_naming_the_path() {
    if let (Ok(dir), Ok(src)) = (std::env::var(ENOSPC_ENV), std::env::var(ENOSPC_SRC_ENV)) {
        // Inner run, with a small tmpfs mounted at `dir`.
        let store = Store::open(Path::new(&dir)).unwrap();
        let err = store.stage_executable(Path::new(&src)).unwrap_err();
        match &err {
            StoreError::Io { path, op, source } => {
                assert_eq!(*op, "write");
                assert!(path.starts_with(store.root()), "{path:?}");
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{source}");
            }
            other => panic!("expected an Io error, got {other:?}"),
        }
        assert!(
            err.to_string()
                .contains(&store.root().display().to_string()),
            "{err}"
        );
        assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let src = dir.path().join("big-plugin");
    write_file(&src, &vec![0x5a; 1024 * 1024], 0o755);
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=256k tmpfs \"$TRYSWAP_TEST_ENOSPC_DIR\" || exit 77; \
             exec \"$0\" --exact disk_full_is_an_io_error_naming_the_path --test-threads=1",
        )
        .arg(&exe)
        .env(ENOSPC_ENV, &mnt)
        .env(ENOSPC_SRC_ENV, &src);
    match run_bounded(cmd) {
        Outcome::Passed => {}
        Outcome::CouldNotRun(why) => skip("disk_full_is_an_io_error_naming_the_path", &why),
        Outcome::Failed(out) => panic!("inner run failed:\n{out}"),
    }
}

enum Outcome {
    Passed,
    CouldNotRun(String),
    Failed(String),
}

/// Kills the child if the test panics before it was reaped.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` (a re-run of this test binary under a wrapper) for at most 60 s. Exit 77 or a
/// wrapper that cannot start means the environment does not allow the check.
fn run_bounded(mut cmd: Command) -> Outcome {
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("out");
    let out = fs::File::create(&out_path).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::CouldNotRun(format!("cannot start {cmd:?}: {e}")),
    };
    let mut guard = KillOnDrop(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let child = guard.0.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            guard.0 = None;
            break status;
        }
        if Instant::now() > deadline {
            drop(guard);
            return Outcome::Failed(format!("{cmd:?} did not finish within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    match status.code() {
        Some(0) if output.contains("1 passed") => Outcome::Passed,
        Some(0) => Outcome::Failed(format!("inner test did not run:\n{output}")),
        // 77: the wrapper could not set up; 1 from unshare/setpriv itself before exec.
        Some(77) => Outcome::CouldNotRun(output),
        Some(1) if !output.contains("running 1 test") => Outcome::CouldNotRun(output),
        Some(126) | Some(127) => Outcome::CouldNotRun(output),
        _ => Outcome::Failed(format!("{status}\n{output}")),
    }
}

/// Reports a test that cannot run for lack of a capability; a failure when
/// `TRYSWAP_REQUIRE_ALL=1` (the same rule as `tryswap_tests::skip`, which this crate cannot
/// depend on).
fn skip(test: &str, why: &str) {
    if std::env::var("TRYSWAP_REQUIRE_ALL").is_ok_and(|v| v.trim() == "1") {
        panic!("{test} cannot run here ({why}) and TRYSWAP_REQUIRE_ALL=1 forbids skipping it");
    }
    eprintln!("skipping {test}: {why} (set TRYSWAP_REQUIRE_ALL=1 to make this a failure)");
}
