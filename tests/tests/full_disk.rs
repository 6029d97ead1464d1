//! A full disk during a reload: the reload is refused, the active generation keeps running
//! (same process, still answering), and the journal stays readable and verifies.
//!
//! Real ENOSPC: the state directory is a small tmpfs, mounted in a user + mount namespace
//! (`unshare --user --map-root-user --mount`, the test re-runs itself inside it; skipped
//! with a message where namespaces are not allowed). Two cases are real: the store copy of
//! the candidate hits ENOSPC (the reload is rolled back at `staged`), and a disk so full that
//! sled cannot open the journal (the command fails before anything happens).
//!
//! sled writes into a segment it preallocated when it opened, so a journal write in the
//! middle of a reload cannot be made to hit a real ENOSPC here; those writes get an
//! injected ENOSPC instead, through the `journal-write-<command>=return` failpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tryswap_tests::crash::{reload_args, tryswap_env, Exit, FAILPOINTS_ENV};
use tryswap_tests::harness::Harness;
use tryswap_tests::{call, fixture_plugin_path, pid_alive, FixtureConfig};

const INNER_ENV: &str = "TRYSWAP_TEST_FULL_DISK_INNER";
const ENOSPC_TEXT: &str = "No space left on device";

/// A tiny plugin: a shell script that execs the fixture. `padding` bytes of comment after
/// the `exec` make it as large as needed without changing what runs.
fn wrapper(h: &Harness, name: &str, padding: usize) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = h.state.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "#!/bin/sh").unwrap();
    writeln!(file, "exec '{}' \"$@\"", fixture_plugin_path().display()).unwrap();
    writeln!(file, "# {name}").unwrap();
    let line = vec![b'x'; 1023];
    for _ in 0..padding / 1024 {
        file.write_all(b"#").unwrap();
        file.write_all(&line).unwrap();
    }
    drop(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn activate(h: &Harness, plugin: &Path, config: &Path, env: &[(&str, &str)]) -> Exit {
    tryswap_env(
        h,
        &[
            "--json",
            "activate",
            "demo",
            plugin.to_str().unwrap(),
            "--config-file",
            config.to_str().unwrap(),
        ],
        env,
    )
}

/// The slot's active generation is still (`generation`, `pid`), alive, answering `message`,
/// nothing is in flight, nothing else runs, and the journal verifies.
async fn assert_untouched(h: &Harness, generation: u64, pid: u32, message: &str, what: &str) {
    assert!(pid_alive(pid), "{what}: the active generation died");
    let (g, p, address) = h.active("demo").expect("an active generation");
    assert_eq!(
        (g, p),
        (generation, pid),
        "{what}: the active generation changed"
    );
    let reply = call("tcp", &address, "ping", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{what}: the active generation does not answer: {e}"));
    assert_eq!(reply.message, message, "{what}");
    // Reads do not recover: `recover` finishes what the refused reload left in flight.
    let recovered = h.tryswap(&["recover"]);
    assert_eq!(recovered.code, 0, "{what}: {recovered:?}");
    let status = h.status();
    assert!(
        status["slots"][0]["in_flight"].is_null(),
        "{what}: a reload is still in flight: {status}"
    );
    let others: Vec<u32> = h
        .state
        .processes()
        .into_iter()
        .filter(|&p| p != pid)
        .collect();
    assert!(others.is_empty(), "{what}: other processes run: {others:?}");
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{what}: journal verify: {verify:?}");
}

/// Each journal write of a reload fails with (injected) ENOSPC in turn: the reload is
/// refused with exit 1 and the error, its candidate is stopped, the old generation keeps
/// serving, and the journal verifies. When the rollback cannot be journaled either, the next
/// command's recovery finishes it.
#[tokio::test]
async fn an_enospc_at_any_journal_write_refuses_the_reload() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let (_, pid1, _) = h.active("demo").unwrap();
    let args = reload_args("activate", "demo", &v2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for spec in [
        "journal-write-stage=return",
        "journal-write-record-launch=return",
        "journal-write-record-handshake=return",
        "journal-write-record-probe=return",
        "journal-write-commit=return",
        "journal-write-commit=return;journal-write-fail=return",
    ] {
        let run = tryswap_env(&h, &args, &[(FAILPOINTS_ENV, spec)]);
        assert_eq!(run.code(), Some(1), "{spec}: {run:?}");
        assert!(run.stderr.contains(ENOSPC_TEXT), "{spec}: {run:?}");
        assert_untouched(&h, 1, pid1, "v1", spec).await;
    }
    // Every refused reload that got as far as `Staged` is in the history, rolled back.
    let outcomes = h.outcomes("demo");
    assert_eq!(
        outcomes,
        [
            "active",
            "rolled_back",
            "rolled_back",
            "rolled_back",
            "rolled_back",
            "rolled_back"
        ],
        "{outcomes:?}"
    );
}

#[test]
fn a_full_disk_refuses_the_reload_and_keeps_the_active_generation() {
    if std::env::var_os(INNER_ENV).is_some() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(full_disk_inside_a_namespace());
        return;
    }
    let name = "a_full_disk_refuses_the_reload_and_keeps_the_active_generation";
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount"])
        .arg(&exe)
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(INNER_ENV, "1");
    match run_outer(cmd) {
        Outer::Passed(out) => println!("{out}"),
        Outer::CouldNotRun(why) => tryswap_tests::skip(name, &why),
        Outer::Failed(out) => panic!("the run inside the namespace failed:\n{out}"),
    }
}

enum Outer {
    Passed(String),
    CouldNotRun(String),
    Failed(String),
}

/// Runs the re-executed test (bounded by 120 s) and classifies how it went.
fn run_outer(mut cmd: Command) -> Outer {
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outer::CouldNotRun(format!("cannot start unshare: {e}")),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(&out_path).unwrap_or_default();
            return Outer::Failed(format!("did not finish within 120 s\n{output}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status.code() {
        Some(0) if output.contains("1 passed") => Outer::Passed(output),
        Some(0) => Outer::Failed(format!("the inner test did not run:\n{output}")),
        // 77: the tmpfs could not be mounted; 1 from unshare itself before exec.
        Some(77) => Outer::CouldNotRun(output),
        Some(1) if !output.contains("running 1 test") => Outer::CouldNotRun(output),
        _ => Outer::Failed(format!("{status}\n{output}")),
    }
}

/// Unmounts the tmpfs (after killing what runs from the test dir and removing its state
/// dir's cgroups, which `TempState` would no longer find under the unmounted state dir)
/// before the test dir goes.
struct Mounted<'a> {
    h: &'a Harness,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        self.h.state.kill_processes();
        self.h.state.remove_cgroups();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.h.state_dir)
            .status();
    }
}

/// Fills the file system holding `dir` with a file `dir/filler`, then frees `leave` bytes.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written: u64 = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
        assert!(written < 1 << 30, "the tmpfs never filled up");
    }
    file.set_len(written.saturating_sub(leave)).unwrap();
    file.sync_all().unwrap();
    path
}

async fn full_disk_inside_a_namespace() {
    let h = Harness::demo();
    std::fs::create_dir_all(&h.state_dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&h.state_dir)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("cannot mount a tmpfs on {}", h.state_dir.display());
        std::process::exit(77);
    }
    let _mounted = Mounted { h: &h };

    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let small = wrapper(&h, "plugin-v1", 0);
    let first = activate(&h, &small, &v1, &[]);
    assert_eq!(
        first.code(),
        Some(0),
        "activating v1 on the tmpfs: {first:?}"
    );
    let (_, pid1, _) = h.active("demo").unwrap();

    // 1. Room for the journal (sled preallocates a 512 KiB segment when it opens), not for
    //    the 3 MiB candidate: the store copy hits ENOSPC, the reload is rolled back.
    let big = wrapper(&h, "plugin-v2-big", 3 << 20);
    let filler = fill(&h.state_dir, 1 << 20);
    let run = activate(&h, &big, &v2, &[]);
    assert_eq!(run.code(), Some(2), "store copy on a full disk: {run:?}");
    let report = run.json();
    assert_eq!(report["outcome"], "rolled_back", "{report}");
    assert_eq!(report["failed_stage"], "staged", "{report}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains(ENOSPC_TEXT)),
        "{report}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(h.state_dir.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".staging-"))
        .collect();
    assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
    assert_untouched(&h, 1, pid1, "v1", "store copy on a full disk").await;
    std::fs::remove_file(&filler).unwrap();

    // 2. Not a byte left. Depending on how much of its current segment sled has used, the
    //    command fails as sled opens the journal (exit 1), or the store copy fails (exit 2,
    //    rolled back at `staged`): refused either way, with the error. The active generation
    //    keeps running and answering meanwhile, and `status` either works or says why not.
    //    The config is one the store does not hold yet (v2's bytes were stored by the first
    //    attempt, and staging bytes the store holds writes nothing).
    let v3 = h.fixture_config("v3", &FixtureConfig::with_message("v3"));
    let filler = fill(&h.state_dir, 0);
    let run = activate(&h, &small, &v3, &[]);
    assert!(
        matches!(run.code(), Some(1) | Some(2)),
        "activate on a full disk: {run:?}"
    );
    assert!(
        run.stderr.contains(ENOSPC_TEXT) || run.stdout.contains(ENOSPC_TEXT),
        "{run:?}"
    );
    println!(
        "activate on a full disk: exit {:?}, {}",
        run.code(),
        run.stderr.trim()
    );
    assert!(pid_alive(pid1), "the active generation died on a full disk");
    let status = h.tryswap(&["--json", "status"]);
    assert!(
        status.code == 0 || (status.code == 1 && status.stderr.contains(ENOSPC_TEXT)),
        "status on a full disk: {status:?}"
    );
    std::fs::remove_file(&filler).unwrap();
    assert_untouched(&h, 1, pid1, "v1", "a full disk").await;

    // The space is back: the same reload goes through.
    let run = activate(&h, &small, &v2, &[]);
    assert_eq!(run.code(), Some(0), "activate after freeing space: {run:?}");
    let (generation, pid2, _) = h.active("demo").unwrap();
    assert_ne!(pid2, pid1);
    assert_untouched(&h, generation, pid2, "v2", "after freeing space").await;
}
