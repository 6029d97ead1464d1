//! A journal whose sync fails: once the commit record (`Activated`) is written the outcome
//! is "committed" or "unknown, journal failed", never "rolled back"; nothing is stopped on
//! the basis of a failed sync; the failed handle refuses further writes and the process
//! exits without panicking; the next open (a restart) settles the slot from the disk.

use std::path::PathBuf;
use std::time::Duration;
use tryswap_tests::crash::{
    assert_recovered, last_seq, reload_args, tryswap_env, CrashFacts, Expect, FAILPOINTS_ENV,
};

use tryswap_tests::daemon::Daemon;
use tryswap_tests::harness::Harness;
use tryswap_tests::{fixture_plugin_path, pid_alive, FixtureConfig};

/// A demo slot with v1 active: the harness, v2's config, v1's pid, the journal's last seq.
fn v1_active() -> (Harness, PathBuf, u32, u64) {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let first = h.activate("demo", &v1);
    assert_eq!(first.code, 0, "activating v1: {first:?}");
    let (_, pid1, _) = h.active("demo").expect("v1 active");
    let since = last_seq(&h);
    (h, v2, pid1, since)
}

#[tokio::test]
async fn a_failed_sync_after_the_commit_record_is_never_reported_as_a_rollback() {
    let (h, v2, pid1, since) = v1_active();

    let args = reload_args("activate", "demo", &v2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exit = tryswap_env(&h, &args, &[(FAILPOINTS_ENV, "journal-sync-commit=return")]);
    // Not 101 (a panic in sled's drop), not 2 (rejected): an error with an unknown outcome.
    assert_eq!(exit.code(), Some(1), "{exit:?}");
    assert!(
        exit.stderr.contains("outcome unknown") && exit.stderr.contains("journal"),
        "the error must say the outcome is unknown because the journal failed: {exit:?}"
    );
    assert!(
        !exit.stderr.contains("keeps serving") && !exit.stdout.contains("rolled_back"),
        "a written commit was reported as a rollback: {exit:?}"
    );
    assert!(!exit.stderr.contains("panicked"), "{exit:?}");

    let facts = CrashFacts::read(&h, since);
    assert!(facts.committed, "the commit record is on disk: {facts:?}");
    assert!(
        !facts.events.iter().any(|e| e == "rolled_back"),
        "a rollback was journaled after the commit record: {facts:?}"
    );
    let pid2 = facts.candidate_pid.expect("the candidate was launched");
    assert!(
        pid_alive(pid2),
        "the candidate (pid {pid2}) was stopped on the basis of a failed sync"
    );

    // The next command reopens and verifies the journal; recovery keeps the committed swap
    // with the very process that was probed, and retires v1.
    assert_recovered(
        &h,
        &Expect {
            slot: "demo".into(),
            generation: facts.generation.expect("generation"),
            pid: Some(pid2),
            message: "v2".into(),
        },
        None,
        "after a failed sync at the commit point",
    )
    .await;
    assert!(
        !pid_alive(pid1),
        "the former generation (pid {pid1}) survived"
    );
    let outcomes = h.outcomes("demo");
    assert_eq!(
        outcomes.last().map(String::as_str),
        Some("active"),
        "{outcomes:?}"
    );
}

/// A reload writes its copies into the store without waiting for the disk and makes them
/// durable while the candidate starts; the commit waits for that. A sync that fails there
/// rolls the reload back at `active`: v1 stays active and serving, the candidate is stopped.
#[test]
fn a_store_copy_that_cannot_be_made_durable_is_never_committed() {
    let (h, v2, pid1, since) = v1_active();

    let args = reload_args("activate", "demo", &v2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exit = tryswap_env(&h, &args, &[(FAILPOINTS_ENV, "store-sync=return")]);
    assert_eq!(exit.code(), Some(2), "rejected: {exit:?}");
    assert!(
        exit.stdout.contains("could not be made durable") && exit.stdout.contains("EIO"),
        "the report must say why: {exit:?}"
    );

    let facts = CrashFacts::read(&h, since);
    assert!(
        !facts.committed,
        "committed without durable files: {facts:?}"
    );
    assert_eq!(
        facts.events.last().map(String::as_str),
        Some("rolled_back"),
        "{facts:?}"
    );
    let pid2 = facts.candidate_pid.expect("the candidate was launched");
    assert!(!pid_alive(pid2), "the candidate (pid {pid2}) still runs");
    assert!(pid_alive(pid1), "v1 (pid {pid1}) was stopped");
    assert_eq!(h.active("demo").map(|(_, pid, _)| pid), Some(pid1));
}

#[tokio::test]
async fn the_daemon_exits_without_stopping_plugins_when_its_journal_fails_and_a_restart_settles_it()
{
    let (h, v2, pid1, since) = v1_active();

    let mut daemon = Daemon::start_with(&h, &[], &[(FAILPOINTS_ENV, "journal-sync-commit=return")]);
    let body = serde_json::json!({"artifact": fixture_plugin_path(), "config_file": v2});
    let reply = daemon
        .post("/v1/slots/demo/reloads", &body.to_string())
        .expect("POST reload");
    assert_eq!(reply.status, 500, "{reply:?}");
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("outcome unknown"), "{error}");
    assert_eq!(reply.json()["exit_code"], 1, "{reply:?}");
    // The daemon notices the failed journal and exits 1 (no panic) without stopping plugins.
    let status = daemon.wait(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the daemon did not exit 1 on a failed journal; log:\n{}",
        daemon.log()
    );
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
    let facts = CrashFacts::read(&h, since);
    let pid2 = facts.candidate_pid.expect("the candidate was launched");
    assert!(
        pid_alive(pid1) && pid_alive(pid2),
        "a plugin was stopped: {facts:?}"
    );

    // A restart reopens and verifies the journal; recovery keeps the committed swap.
    let daemon = Daemon::start(&h);
    let slot = daemon.get("/v1/slots/demo").expect("GET slot").json();
    assert_eq!(
        slot["active"]["pid"].as_u64(),
        Some(u64::from(pid2)),
        "{slot}"
    );
    assert!(
        tryswap_tests::daemon::poll(Duration::from_secs(10), || (!pid_alive(pid1)).then_some(()))
            .is_some(),
        "the former generation (pid {pid1}) was not retired"
    );
}

/// A preloaded library that makes `fdatasync` and `fsync` fail with EIO once the file
/// named by `TRYSWAP_EIO_TRIGGER` exists: a disk that starts failing at a given moment.
const EIO_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
static int failing(void) {
    const char *t = getenv("TRYSWAP_EIO_TRIGGER");
    return t && access(t, F_OK) == 0;
}
int fdatasync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
int fsync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
"#;

/// Builds the shim with `cc`, or says why it cannot (a capability this machine may lack).
fn build_shim(dir: &std::path::Path) -> Option<PathBuf> {
    let source = dir.join("eio_shim.c");
    let lib = dir.join("eio_shim.so");
    std::fs::write(&source, EIO_SHIM).expect("write the shim source");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .arg("-ldl")
        .status()
        .is_ok_and(|s| s.success());
    if built {
        return Some(lib);
    }
    let why = "no C compiler (`cc`) to build the fdatasync EIO shim";
    assert!(
        std::env::var_os("TRYSWAP_REQUIRE_ALL").is_none_or(|v| v != "1"),
        "{why} (TRYSWAP_REQUIRE_ALL=1)"
    );
    eprintln!("skipped: {why}");
    None
}

/// The real thing: fdatasync starts failing with EIO while the reload waits before its
/// commit. The commit record is written, its sync fails: the CLI reports an unknown
/// outcome, exits 1 (sled's own drop used to panic: exit 101) and stops nothing.
#[tokio::test]
async fn a_real_fdatasync_eio_at_the_commit_exits_1_without_a_panic() {
    let (h, v2, pid1, since) = v1_active();
    let Some(shim) = build_shim(&h.state.join(".")) else {
        return;
    };
    let trigger = h.state.join("disk-fails-now");
    let out = h.state.join("activate.out");
    let args = reload_args("activate", "demo", &v2);
    let mut child = std::process::Command::new(tryswap_tests::harness::tryswap_path())
        .arg("--config")
        .arg(&h.config_path)
        .args(&args)
        .env_remove("TRYSWAP_STATE_DIR")
        .env("TRYSWAP_LOG", "info")
        .env("LD_PRELOAD", &shim)
        .env("TRYSWAP_EIO_TRIGGER", &trigger)
        .env(FAILPOINTS_ENV, "reload-before-commit=sleep(5000)")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&out).expect("output file"))
        .spawn()
        .expect("spawn tryswap activate");
    // The candidate passed its probe: the reload now waits 5 s before writing `Activated`.
    let probed = tryswap_tests::daemon::poll(Duration::from_secs(30), || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.contains("probed"))
            .map(drop)
    });
    assert!(probed.is_some(), "the reload never probed");
    std::fs::write(&trigger, b"").expect("arm the shim");
    let status =
        tryswap_tests::daemon::poll(Duration::from_secs(60), || child.try_wait().ok().flatten())
            .expect("tryswap activate did not exit");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{status:?}\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(text.contains("outcome unknown"), "{text}");
    let _ = std::fs::remove_file(&trigger);

    // The next command reopens the journal and settles the slot from what is on disk:
    // whichever side of the commit it is, one generation serves and nothing is left over.
    let facts = CrashFacts::read(&h, since);
    let (generation, message, pid) = if facts.committed {
        (
            facts.generation.expect("generation"),
            "v2",
            facts.candidate_pid,
        )
    } else {
        (1, "v1", Some(pid1))
    };
    assert_recovered(
        &h,
        &Expect {
            slot: "demo".into(),
            generation,
            pid,
            message: message.into(),
        },
        None,
        "after a real fdatasync EIO at the commit",
    )
    .await;
}
