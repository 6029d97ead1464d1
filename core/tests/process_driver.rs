//! Process driver tests against real `/bin/sh` scripts.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tryswap::internals::os::{
    identity_of, is_alive, kill_tagged, log_excerpt, read_handshake, spawn, stop_group,
    tagged_processes, HandshakeWaitError, ProcessError, SpawnSpec, Spawned, StopOutcome,
    MAX_HANDSHAKE_LINE,
};
use tryswap_fsm::{ProcessIdentity, ReloadId};

const HS: &str = "1|1|tcp|127.0.0.1:1|grpc";

/// Kills every process tagged with the test's reload id when dropped, even if an assert
/// failed first.
struct Cleanup(ReloadId);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in tagged_processes(&self.0) {
            if is_alive(&p) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    id: ReloadId,
    _cleanup: Cleanup,
}

impl Fixture {
    fn new() -> Self {
        let id = uuid::Uuid::now_v7();
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            id,
            _cleanup: Cleanup(id),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn script(&self, body: &str) -> PathBuf {
        let path = self.path("plugin.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TRYSWAP_RELOAD_ID".into(), self.id.to_string()),
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("OUT".into(), self.dir.path().display().to_string()),
            ("SPACED".into(), "a b=c".into()),
        ]
    }

    fn spec(&self, body: &str) -> SpawnSpec {
        SpawnSpec {
            cgroup: None,
            program: self.script(body),
            args: vec!["arg one".into()],
            env: self.env(),
            cwd: self.dir.path().to_path_buf(),
            stdout_path: self.path("logs/slot/1.out"),
            stderr_path: self.path("logs/slot/1.err"),
            log_max_bytes: 0,
        }
    }

    fn spawn(&self, body: &str) -> (Spawned, SpawnSpec) {
        let spec = self.spec(body);
        (spawn(&spec).unwrap(), spec)
    }
}

/// (pgrp, starttime) from /proc/<pid>/stat, parsed independently of the library.
fn proc_stat(pid: u32) -> (i64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &text[text.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[2].parse().unwrap(), f[19].parse().unwrap())
}

async fn wait_for<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_file(path: &Path) -> String {
    wait_for(&format!("{}", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn spawn_gives_exact_env_own_group_identity_and_handshake() {
    let fx = Fixture::new();
    let (p, spec) = fx.spawn(&format!(
        "tr '\\0' '\\n' < /proc/$$/environ > \"$OUT/env.txt\"\n\
         pwd > \"$OUT/cwd.txt\"\n\
         printf '%s\\n' \"$1\" > \"$OUT/args.txt\"\n\
         echo to-stderr >&2\n\
         echo '{HS}'\n\
         echo after-handshake\n\
         exec sleep 1000"
    ));
    let line = read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(line, HS);

    let env = wait_file(&fx.path("env.txt")).await;
    let mut got: Vec<&str> = env.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = fx.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
    want.sort_unstable();
    assert_eq!(got, want, "the plugin's environment is exactly the spec's");
    assert_eq!(
        wait_file(&fx.path("cwd.txt")).await.trim(),
        fx.dir.path().canonicalize().unwrap().display().to_string()
    );
    assert_eq!(wait_file(&fx.path("args.txt")).await, "arg one\n");
    wait_for("stderr line", || {
        std::fs::read_to_string(&spec.stderr_path).is_ok_and(|s| s == "to-stderr\n")
    })
    .await;

    let (pgrp, start) = proc_stat(p.identity.pid);
    assert_eq!(
        pgrp,
        i64::from(p.identity.pid),
        "plugin leads its own group"
    );
    assert_eq!(p.identity.start_time, start);
    assert_eq!(
        p.identity.boot_id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
    assert_eq!(
        identity_of(p.identity.pid).unwrap(),
        Some(p.identity.clone())
    );
    assert!(is_alive(&p.identity));
    assert!(p.exit_status().is_none());
    let mode = std::fs::metadata(&spec.stdout_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o137, 0, "log file is at most 0640, got {mode:o}");

    // A recorded identity with another start time is not this process.
    let stranger = ProcessIdentity {
        start_time: p.identity.start_time - 1,
        ..p.identity.clone()
    };
    assert!(!is_alive(&stranger));
    assert_eq!(
        stop_group(&stranger, None, Duration::from_millis(100))
            .await
            .unwrap(),
        StopOutcome::AlreadyGone
    );
    assert!(
        is_alive(&p.identity),
        "a mismatched identity is never signalled"
    );

    let outcome = stop_group(&p.identity, Some(&fx.id), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Graceful);
    assert!(!is_alive(&p.identity));
    let status = tokio::time::timeout(Duration::from_secs(10), p.wait_exit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_eq!(p.exit_status(), Some(status));
    assert_eq!(
        stop_group(&p.identity, Some(&fx.id), Duration::from_secs(1))
            .await
            .unwrap(),
        StopOutcome::AlreadyGone
    );
}

#[tokio::test]
async fn term_ignoring_plugin_is_killed_after_stop_timeout() {
    let fx = Fixture::new();
    let (p, spec) = fx.spawn(&format!(
        "trap '' TERM\necho '{HS}'\nwhile :; do sleep 0.05; done"
    ));
    read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = stop_group(&p.identity, None, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Killed);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!is_alive(&p.identity));
    let status = tokio::time::timeout(Duration::from_secs(10), p.wait_exit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        tagged_processes(&fx.id).is_empty(),
        "no tagged process survives"
    );
}

#[tokio::test]
async fn grandchild_in_the_group_is_stopped_too() {
    let fx = Fixture::new();
    let (p, spec) = fx.spawn(&format!(
        "sleep 1000 &\necho $! > \"$OUT/gc.pid\"\necho '{HS}'\nexec sleep 1000"
    ));
    read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap();
    let gc_pid: u32 = wait_file(&fx.path("gc.pid")).await.trim().parse().unwrap();
    let gc = identity_of(gc_pid).unwrap().unwrap();
    assert_eq!(proc_stat(gc_pid).0, i64::from(p.identity.pid));
    assert!(is_alive(&gc));

    let outcome = stop_group(&p.identity, None, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Graceful);
    assert!(!is_alive(&p.identity));
    assert!(!is_alive(&gc), "the grandchild is gone with its group");
}

/// The leader exited, its child lives on in the group: it is stopped only when it can be
/// verified as ours by its TRYSWAP_RELOAD_ID.
#[tokio::test]
async fn orphan_in_group_after_leader_exit_needs_the_reload_tag() {
    let fx = Fixture::new();
    let (p, _spec) = fx.spawn("sleep 1000 &\necho $! > \"$OUT/gc.pid\"\nexit 0");
    let status = tokio::time::timeout(Duration::from_secs(10), p.wait_exit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let gc_pid: u32 = wait_file(&fx.path("gc.pid")).await.trim().parse().unwrap();
    let gc = identity_of(gc_pid).unwrap().unwrap();
    assert!(is_alive(&gc));

    // No tag to check against: the group cannot be proven ours, so nothing is signalled.
    let outcome = stop_group(&p.identity, None, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::AlreadyGone);
    assert!(is_alive(&gc));

    // Another reload's tag does not match either.
    let other = uuid::Uuid::now_v7();
    let outcome = stop_group(&p.identity, Some(&other), Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::AlreadyGone);
    assert!(is_alive(&gc));

    let outcome = stop_group(&p.identity, Some(&fx.id), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Graceful);
    assert!(!is_alive(&gc));
}

#[tokio::test]
async fn handshake_exit_before_line_reports_status_and_partial_output() {
    let fx = Fixture::new();
    let (p, spec) = fx.spawn("echo 'fatal: no config' >&2\nprintf 'half a line'\nexit 3");
    let err = read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap_err();
    match &err {
        HandshakeWaitError::Exited { status, partial } => {
            assert_eq!(status.code(), Some(3));
            assert_eq!(partial, "half a line");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("half a line"), "{text}");
    assert_eq!(
        log_excerpt(&spec.stderr_path, 5, 5, 4096),
        "fatal: no config"
    );
}

#[tokio::test]
async fn handshake_printed_right_before_exit_is_still_read() {
    let fx = Fixture::new();
    let (p, spec) = fx.spawn(&format!("echo '{HS}'\nexit 0"));
    p.wait_exit().await.unwrap();
    let line = read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(line, HS);
}

#[tokio::test]
async fn handshake_timeout_when_nothing_is_printed() {
    let fx = Fixture::new();
    let (p, spec) = fx.spawn("printf 'no newline'\nexec sleep 1000");
    let started = Instant::now();
    let err = read_handshake(&p, &spec.stdout_path, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    match err {
        HandshakeWaitError::Timeout { waited, partial } => {
            assert!(waited >= Duration::from_millis(300));
            assert!(partial == "no newline" || partial.is_empty());
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    stop_group(&p.identity, Some(&fx.id), Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn stdout_flood_without_newline_is_line_too_long() {
    let fx = Fixture::new();
    let (p, spec) = fx.spawn("head -c 3000000 /dev/zero | tr '\\0' x\nexec sleep 1000");
    let err = read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap_err();
    match err {
        HandshakeWaitError::LineTooLong { truncated } => {
            assert_eq!(truncated.len(), MAX_HANDSHAKE_LINE);
            assert!(truncated.bytes().all(|b| b == b'x'));
        }
        other => panic!("expected LineTooLong, got {other:?}"),
    }
    stop_group(&p.identity, Some(&fx.id), Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn handshake_skips_output_of_earlier_runs_in_the_same_file() {
    let fx = Fixture::new();
    let spec = fx.spec(&format!("echo '{HS}'\nexec sleep 1000"));
    std::fs::create_dir_all(spec.stdout_path.parent().unwrap()).unwrap();
    let old = "1|1|tcp|127.0.0.1:9|grpc\nold output\n";
    std::fs::write(&spec.stdout_path, old).unwrap();
    let p = spawn(&spec).unwrap();
    assert_eq!(p.stdout_start, old.len() as u64);
    let line = read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(line, HS);
    stop_group(&p.identity, Some(&fx.id), Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn log_max_bytes_bounds_the_log_without_killing_the_plugin() {
    let fx = Fixture::new();
    let mut spec = fx.spec(
        "dd if=/dev/zero bs=65536 count=160 2>/dev/null\n\
         echo \"dd-rc=$?\" > \"$OUT/rc.txt\"\n\
         echo 'the shell itself writes past the limit'\nexit 0",
    );
    spec.log_max_bytes = 64 * 1024;
    let p = spawn(&spec).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), p.wait_exit())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), None, "not killed by SIGXFSZ: {status}");
    assert_eq!(status.code(), Some(0));
    let len = std::fs::metadata(&spec.stdout_path).unwrap().len();
    assert!(len <= 64 * 1024, "log is {len} bytes");
    assert!(len > 0);
    let rc = std::fs::read_to_string(fx.path("rc.txt")).unwrap();
    // 1: dd saw EFBIG and exited; 153 (128 + SIGXFSZ) would mean it was killed.
    assert_eq!(rc.trim(), "dd-rc=1", "dd must have hit EFBIG");
}

#[tokio::test]
async fn tagged_processes_are_found_and_killed() {
    let fx = Fixture::new();
    let (p, spec) = fx.spawn(&format!(
        "sleep 1000 &\necho $! > \"$OUT/gc.pid\"\necho '{HS}'\nexec sleep 1000"
    ));
    read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap();
    let gc_pid: u32 = wait_file(&fx.path("gc.pid")).await.trim().parse().unwrap();
    // The handshake comes before the shell's `exec sleep`: a process in the middle of an
    // exec shows an empty /proc/<pid>/environ, so the scan below would miss it (the
    // handshake wait became fast enough to get here first). `kill_tagged` scans again while
    // it waits; this one-shot scan waits for the exec to be done.
    // The same holds for the backgrounded grandchild: `$!` is known as soon as the shell
    // forks it, possibly before its own exec of sleep is done.
    for (what, pid) in [
        ("the plugin's exec of sleep", p.identity.pid),
        ("the grandchild's exec of sleep", gc_pid),
    ] {
        let cmdline = format!("/proc/{pid}/cmdline");
        wait_for(what, || {
            std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sleep\0"))
        })
        .await;
    }
    let tagged = tagged_processes(&fx.id);
    assert!(tagged.contains(&p.identity), "{tagged:?}");
    assert!(tagged.iter().any(|t| t.pid == gc_pid), "{tagged:?}");
    assert!(tagged_processes(&uuid::Uuid::now_v7()).is_empty());

    let killed = kill_tagged(&fx.id, Duration::from_secs(10)).await;
    assert!(killed.contains(&p.identity), "{killed:?}");
    assert!(killed.iter().any(|t| t.pid == gc_pid), "{killed:?}");
    assert!(tagged_processes(&fx.id).is_empty());
    assert!(!is_alive(&p.identity));
    assert!(kill_tagged(&fx.id, Duration::from_secs(1)).await.is_empty());
}

#[tokio::test]
async fn dropping_spawned_leaves_the_plugin_running() {
    let fx = Fixture::new();
    // The plugin answers a ping file with a pong file, so the test can see it still runs
    // after the handle is dropped without guessing how long a kill would take to land.
    let (ping, pong) = (fx.path("ping"), fx.path("pong"));
    let (p, spec) = fx.spawn(&format!(
        "echo '{HS}'\nwhile [ ! -e '{}' ]; do sleep 0.01; done\n: > '{}'\nexec sleep 1000",
        ping.display(),
        pong.display()
    ));
    read_handshake(&p, &spec.stdout_path, Duration::from_secs(10))
        .await
        .unwrap();
    let identity = p.identity.clone();
    drop(p);
    std::fs::write(&ping, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pong.exists() {
        assert!(
            Instant::now() < deadline,
            "the plugin did not answer after its handle was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(is_alive(&identity));
    assert_eq!(
        stop_group(&identity, None, Duration::from_secs(5))
            .await
            .unwrap(),
        StopOutcome::Graceful
    );
}

#[tokio::test]
async fn spawn_failure_names_the_program() {
    let fx = Fixture::new();
    let mut spec = fx.spec("exit 0");
    spec.program = fx.path("does-not-exist");
    let err = spawn(&spec).unwrap_err();
    assert!(matches!(err, ProcessError::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    let fx = Fixture::new();
    let err = spawn(&fx.spec("exit 0")).unwrap_err();
    assert!(matches!(err, ProcessError::NoRuntime { .. }), "{err:?}");
}

#[test]
fn identity_of_a_missing_pid_is_none() {
    // pid_max is at most 2^22 on Linux.
    assert_eq!(identity_of(u32::MAX - 1).unwrap(), None);
}

#[test]
fn log_excerpt_small_and_huge_files() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.log");
    let lines: Vec<String> = (1..=100).map(|i| format!("line {i}")).collect();
    std::fs::write(&small, lines.join("\n") + "\n").unwrap();
    assert_eq!(
        log_excerpt(&small, 2, 2, 1 << 20),
        "line 1\nline 2\n… (96 lines omitted) …\nline 99\nline 100"
    );
    assert_eq!(log_excerpt(&small, 100, 0, 1 << 20), lines.join("\n"));

    let huge = dir.path().join("huge.log");
    let mut text = String::from("first line\nsecond line\n");
    for i in 0..200_000 {
        text.push_str(&format!("filler {i} \u{e9}\n"));
    }
    text.push_str("penultimate\nlast line\n");
    std::fs::write(&huge, &text).unwrap();
    let ex = log_excerpt(&huge, 2, 2, 1000);
    assert!(ex.len() < 1200, "{} bytes", ex.len());
    assert!(ex.starts_with("first line\nsecond line\n… ("), "{ex}");
    assert!(ex.ends_with("\npenultimate\nlast line"), "{ex}");
    assert!(ex.contains("bytes omitted"), "{ex}");

    assert_eq!(log_excerpt(&dir.path().join("missing.log"), 2, 2, 100), "");
    let binary = dir.path().join("bin.log");
    std::fs::write(&binary, [0xff, 0xfe, b'\n', b'o', b'k']).unwrap();
    assert_eq!(log_excerpt(&binary, 5, 5, 100), "\u{fffd}\u{fffd}\nok");
}
