//! The daemon re-reads its config (`tryswap reload-config`, SIGHUP) as one transaction, and
//! speaks systemd's notify protocol.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nix::sys::signal::Signal;
use tryswap_tests::daemon::{http_unix, poll, Daemon};
use tryswap_tests::harness::{Harness, SlotSpec};
use tryswap_tests::{fixture_plugin_path, pid_alive, FixtureConfig};

/// Replaces `from` by `to` inside the `[[slot]]` section of `slot` in the config file.
fn edit_slot(h: &Harness, slot: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let marker = format!("name = \"{slot}\"");
    let mut sections: Vec<String> = text.split("[[slot]]").map(str::to_owned).collect();
    let section = sections
        .iter_mut()
        .find(|s| s.contains(&marker))
        .expect("slot section");
    assert!(section.contains(from), "{from} not in slot {slot}");
    *section = section.replacen(from, to, 1);
    std::fs::write(&h.config_path, sections.join("[[slot]]")).unwrap();
}

fn active(h: &Harness, slot: &str) -> (u64, u32) {
    let (generation, pid, _) = h.active(slot).expect("active generation");
    (generation, pid)
}

#[test]
fn a_config_reload_with_one_bad_slot_changes_nothing_and_a_good_one_applies() {
    let h = Harness::new(&[SlotSpec::new("a"), SlotSpec::new("b")]);
    let daemon = Daemon::start(&h);
    for slot in ["a", "b"] {
        let cfg = h.fixture_config(slot, &FixtureConfig::with_message(slot));
        let run = h.activate(slot, &cfg);
        assert_eq!(run.code, 0, "{run:?}");
    }
    let (a0, b0) = (active(&h, "a"), active(&h, "b"));

    // a changes harmlessly, b's new args break its magic cookie: nothing may change.
    edit_slot(&h, "a", "drain_timeout = \"2s\"", "drain_timeout = \"3s\"");
    edit_slot(
        &h,
        "b",
        "\"--cookie-value\", \"b\"",
        "\"--cookie-value\", \"wrong\"",
    );
    let run = h.tryswap(&["reload-config"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("rolled back"), "{}", run.stdout);
    let dry = h.tryswap(&["--json", "reload-config", "--dry-run"]);
    assert_eq!(dry.code, 2, "{dry:?}");
    assert_eq!(dry.json()["outcome"], "rolled_back");
    let api = daemon.post("/v1/config/reload", "{}").unwrap();
    assert_eq!(api.status, 422, "{api:?}");
    assert!(api.json()["error"].as_str().unwrap().contains("slot b"));
    assert_eq!((active(&h, "a"), active(&h, "b")), (a0, b0));
    assert!(pid_alive(a0.1) && pid_alive(b0.1));

    // An invalid file is refused before anything starts, naming the line.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, format!("bogus_key = 1\n{text}")).unwrap();
    let api = daemon
        .post("/v1/config/reload", r#"{"dry_run": false}"#)
        .unwrap();
    assert_eq!(api.status, 400, "{api:?}");
    let error = api.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("tryswap.toml:1"), "{error}");
    assert!(error.contains("bogus_key"), "{error}");
    let run = h.tryswap(&["reload-config"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("tryswap.toml:1"), "{}", run.stderr);
    let bad_body = daemon
        .post("/v1/config/reload", r#"{"dry_run": "no"}"#)
        .unwrap();
    assert_eq!(bad_body.status, 400);
    assert!(bad_body.body.contains("`dry_run`"), "{bad_body:?}");
    std::fs::write(&h.config_path, text).unwrap();
    assert_eq!((active(&h, "a"), active(&h, "b")), (a0, b0));

    // b fixed: only a changes, in one transaction.
    edit_slot(
        &h,
        "b",
        "\"--cookie-value\", \"wrong\"",
        "\"--cookie-value\", \"b\"",
    );
    let run = h.tryswap(&["--json", "reload-config"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["outcome"], "applied");
    assert_eq!(report["changed"], serde_json::json!(["a"]));
    let a1 = active(&h, "a");
    assert!(a1.0 > a0.0, "a was not reloaded: {a1:?}");
    assert_ne!(a1.1, a0.1);
    assert_eq!(active(&h, "b"), b0);

    // SIGHUP does the same.
    edit_slot(&h, "a", "drain_timeout = \"3s\"", "drain_timeout = \"4s\"");
    assert!(daemon.signal(Signal::SIGHUP));
    let a2 = poll(Duration::from_secs(20), || {
        Some(active(&h, "a")).filter(|a| a.0 > a1.0)
    });
    assert!(
        a2.is_some(),
        "SIGHUP did not reload; log:\n{}",
        daemon.log()
    );
    assert_eq!(active(&h, "b"), b0);
}

#[test]
fn the_daemon_notifies_systemd_ready_reloading_and_stopping() {
    let h = Harness::new(&[]);
    let notify = h.state.join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut daemon = Daemon::spawn(&h, &[], &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    let mut buf = [0u8; 1024];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notify message in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert_eq!(daemon.get("/healthz").unwrap().status, 200);

    assert!(daemon.signal(Signal::SIGHUP));
    let reloading = next();
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");

    assert!(daemon.signal(Signal::SIGTERM));
    let stopping = next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let status = daemon.wait(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", daemon.log());
}

/// Whether process `pid` runs with `KEY=value` in its environment.
fn has_env(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == entry.as_bytes()))
}

/// A daemon started with a notify socket, and a reader of its messages.
fn notified_daemon(h: &Harness) -> (Daemon, UnixDatagram) {
    let notify = h.state.join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let daemon = Daemon::spawn(h, &[], &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    let ready = next_message(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    (daemon, socket)
}

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notify message in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Activates `demo` with a plugin that takes `delay_ms` before its handshake.
fn activate_slow(h: &Harness, name: &str, delay_ms: u64) {
    let cfg = h.fixture_config(
        name,
        &FixtureConfig {
            startup_delay_ms: Some(delay_ms),
            ..FixtureConfig::with_message(name)
        },
    );
    let run = h.activate("demo", &cfg);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_sighup_during_a_config_reload_runs_once_more_with_the_latest_file() {
    let h = Harness::demo();
    let (daemon, socket) = notified_daemon(&h);
    // Every relaunch of this plugin takes 1.5 s: the first config reload is still running
    // when the second SIGHUP comes.
    activate_slow(&h, "v1", 1500);
    edit_slot(
        &h,
        "demo",
        "drain_timeout = \"2s\"",
        "drain_timeout = \"2s\"\nenv = { FEATURE = \"1\" }",
    );
    assert!(daemon.signal(Signal::SIGHUP));
    let reloading = next_message(&socket);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    // The first run has read the file; this edit comes after.
    edit_slot(&h, "demo", "FEATURE = \"1\"", "FEATURE = \"2\"");
    assert!(daemon.signal(Signal::SIGHUP));
    let applied = poll(Duration::from_secs(60), || {
        h.active("demo")
            .filter(|(_, pid, _)| has_env(*pid, "FEATURE=2"))
    });
    assert!(
        applied.is_some(),
        "the edit made during the first config reload was dropped; log:\n{}",
        daemon.log()
    );
}

#[test]
fn a_config_reload_waits_for_a_running_reload_and_systemd_hears_about_failures() {
    let h = Harness::demo();
    let (daemon, socket) = notified_daemon(&h);
    activate_slow(&h, "v1", 0);
    // A reload that takes 2 s before its handshake, in flight while the config reloads.
    let v2 = h.fixture_config(
        "v2",
        &FixtureConfig {
            startup_delay_ms: Some(2000),
            ..FixtureConfig::with_message("v2")
        },
    );
    let body = serde_json::json!({"artifact": fixture_plugin_path(), "config_file": v2});
    let socket_path = daemon.socket().to_path_buf();
    let reload = std::thread::spawn(move || {
        http_unix(
            &socket_path,
            "POST",
            "/v1/slots/demo/reloads",
            Some(&body.to_string()),
            &[],
        )
    });
    let in_flight = poll(Duration::from_secs(10), || {
        let slot = daemon.get("/v1/slots/demo").ok()?.json();
        (!slot["in_flight"].is_null()).then_some(())
    });
    assert!(
        in_flight.is_some(),
        "the slow reload never showed in flight"
    );
    edit_slot(
        &h,
        "demo",
        "drain_timeout = \"2s\"",
        "drain_timeout = \"2s\"\nenv = { FEATURE = \"1\" }",
    );
    let run = h.tryswap(&["--json", "reload-config"]);
    assert_eq!(run.code, 0, "the config reload did not queue: {run:?}");
    assert_eq!(run.json()["outcome"], "applied", "{run:?}");
    let reply = reload.join().expect("reload thread").expect("POST reload");
    assert_eq!(reply.status, 200, "{reply:?}");
    let (generation, pid, _) = h.active("demo").expect("active");
    assert_eq!(
        generation, 3,
        "v2 (g2) relaunched under the new config as g3"
    );
    assert!(has_env(pid, "FEATURE=1"), "the new config is not in force");
    // Drain the notify messages of that reload.
    assert!(next_message(&socket).contains("RELOADING=1"));
    assert!(next_message(&socket).contains("READY=1"));

    // A config reload that fails: systemd gets READY=1 with the failure, not "serving".
    edit_slot(
        &h,
        "demo",
        "\"--cookie-value\", \"demo\"",
        "\"--cookie-value\", \"wrong\"",
    );
    assert!(daemon.signal(Signal::SIGHUP));
    let reloading = next_message(&socket);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    let done = next_message(&socket);
    assert!(done.lines().any(|l| l == "READY=1"), "{done}");
    assert!(
        done.lines()
            .any(|l| l.starts_with("STATUS=config reload failed"))
            && done.lines().any(|l| l.starts_with("ERRNO=")),
        "a failed config reload was reported to systemd as a success: {done}"
    );
}

#[test]
fn plugins_left_running_with_an_old_config_are_relaunched_under_the_file() {
    let h = Harness::demo();
    let mut daemon = Daemon::start(&h);
    activate_slow(&h, "v1", 0);
    let (_, pid1, _) = h.active("demo").expect("active");
    // A crash during a config reload: the file is new, the plugin still runs the old one.
    daemon.kill();
    edit_slot(
        &h,
        "demo",
        "drain_timeout = \"2s\"",
        "drain_timeout = \"2s\"\nenv = { FEATURE = \"1\" }",
    );
    assert!(pid_alive(pid1) && !has_env(pid1, "FEATURE=1"));
    let daemon = Daemon::start(&h);
    let (_, pid2, _) = h.active("demo").expect("active");
    assert!(
        has_env(pid2, "FEATURE=1"),
        "the plugin still runs with the old config; log:\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("+FEATURE"),
        "the drift was not reported: {}",
        daemon.log()
    );
    assert!(poll(Duration::from_secs(10), || (!pid_alive(pid1)).then_some(())).is_some());
    let run = h.tryswap(&["--json", "reload-config"]);
    assert_eq!(run.json()["outcome"], "unchanged", "{run:?}");
}

/// glibc's non-main arenas in `/proc/<pid>/maps`: each is a mapping of 64 MiB aligned to
/// 64 MiB, its used part read-write and the rest `---p`.
fn malloc_arenas(pid: u32) -> Vec<String> {
    const HEAP_MAX: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let regions: Vec<(u64, u64, String, bool)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.to_owned();
            let anonymous = fields.nth(3).is_none();
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                perms,
                anonymous,
            ))
        })
        .collect();
    regions
        .iter()
        .enumerate()
        .filter(|(i, (start, end, perms, anonymous))| {
            let rest = regions
                .get(i + 1)
                .filter(|next| next.0 == *end && next.2 == "---p" && next.3)
                .map_or(*end, |next| next.1);
            *anonymous && perms == "rw-p" && start % HEAP_MAX == 0 && rest - start == HEAP_MAX
        })
        .map(|(_, (start, end, _, _))| format!("{start:x}-{end:x}"))
        .collect()
}

/// The malloc arenas besides the main one of a daemon started with `env`, after an
/// activation and reloads from four clients at once.
fn arenas_after_concurrent_reloads(env: &[(&str, &str)]) -> Vec<String> {
    let h = Harness::new(&[SlotSpec::new("a")]);
    let daemon = Daemon::start_with(&h, &[], env);
    let config = h.fixture_config("a", &FixtureConfig::with_message("a"));
    let body = serde_json::json!({ "artifact": fixture_plugin_path(), "config_file": config });
    let reply = daemon
        .post("/v1/slots/a/reloads", &body.to_string())
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let not_a_plugin = h.state.join("not-a-plugin");
    std::fs::write(&not_a_plugin, "not a plugin\n").unwrap();
    let body = serde_json::json!({ "artifact": not_a_plugin, "config_file": config }).to_string();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..20 {
                    let reply = daemon.post("/v1/slots/a/reloads", &body).unwrap();
                    assert_ne!(reply.status, 200, "{reply:?}");
                    let status = daemon.get("/v1/slots/a").unwrap();
                    assert_eq!(status.status, 200, "{status:?}");
                }
            });
        }
    });
    malloc_arenas(daemon.pid())
}

/// Issue 18 item 14: the daemon allocates from one malloc arena whatever its threads do
/// (`mallopt(M_ARENA_MAX, 1)` before its runtime starts): with one arena per thread that
/// allocated, memory a compaction freed on one thread was reused only by the threads of
/// its arena, and the RSS swung with the compactions (docs/performance.md, section 5c).
/// An operator's `MALLOC_ARENA_MAX` still wins (and shows that more arenas are seen).
#[test]
fn the_daemon_allocates_from_one_malloc_arena() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        tryswap_tests::skip(
            "the_daemon_allocates_from_one_malloc_arena",
            "glibc's arenas exist only with glibc",
        );
        return;
    }
    let arenas = arenas_after_concurrent_reloads(&[]);
    assert!(
        arenas.is_empty(),
        "the daemon has {} malloc arenas besides the main one: {arenas:?}",
        arenas.len()
    );
    let operators = arenas_after_concurrent_reloads(&[("MALLOC_ARENA_MAX", "4")]);
    assert!(
        !operators.is_empty(),
        "with MALLOC_ARENA_MAX=4 the daemon's threads should get arenas of their own"
    );
}

/// The daemon compacts once `journal_compact_records` records were appended, not only past
/// `journal_compact_bytes`: sled's memory grows with every record it indexes, and at the
/// default size limit a one-slot journal compacted only after ~120,000 records
/// (docs/performance.md, section 5c). 110 reloads of a file that is not executable (one
/// terminal reload and one record each) with a limit of 50: the daemon compacts on its own, keeping
/// 100 reloads, archives the rest, and the journal still verifies.
#[test]
fn the_daemon_compacts_once_enough_records_were_appended() {
    let h = Harness::new(&[SlotSpec::new("a")]);
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        format!("journal_compact_records = 50\n{text}"),
    )
    .unwrap();
    let daemon = Daemon::start(&h);
    // A file that is not executable: staging refuses it, one `staging_failed` record each.
    let not_a_plugin = h.state.join("not-a-plugin");
    std::fs::write(&not_a_plugin, "not a plugin\n").unwrap();
    let config = h.fixture_config("a", &FixtureConfig::with_message("a"));
    let body = serde_json::json!({ "artifact": not_a_plugin, "config_file": config }).to_string();
    let mut replies = Vec::new();
    for _ in 0..110 {
        let reply = daemon.post("/v1/slots/a/reloads", &body).unwrap();
        assert_ne!(reply.status, 200, "{reply:?}");
        replies.push(reply.status);
    }
    let archive = h.state_dir.join("journal").join("archive");
    let archived = poll(Duration::from_secs(30), || {
        std::fs::read_dir(&archive)
            .ok()?
            .flatten()
            .next()
            .map(|e| e.path())
    });
    let Some(archived) = archived else {
        let log = std::fs::read_to_string(h.state.join("daemon-0.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!("the daemon did not compact within 30 s; replies {replies:?}; log ends {tail:#?}");
    };
    let lines = std::fs::read_to_string(&archived).unwrap().lines().count();
    assert!(
        lines >= 10,
        "{lines} records archived in {}",
        archived.display()
    );
    let verify = daemon.get("/v1/journal/verify").unwrap();
    assert_eq!(verify.status, 200, "{verify:?}");
    assert!(
        verify
            .headers
            .iter()
            .any(|(name, value)| name == "x-tryswap-exit-code" && value == "0"),
        "{verify:?}"
    );
    drop(daemon);
}
