//! `tryswap stop` and `tryswap start` through the real binary.

use std::time::Duration;

use tryswap_tests::harness::{wait_gone, Harness};
use tryswap_tests::{call, pid_alive, FixtureConfig};

#[tokio::test]
async fn stop_keeps_the_marker_and_start_relaunches_the_same_generation_from_the_store() {
    let h = Harness::demo();
    let cfg = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let run = h.activate("demo", &cfg);
    assert_eq!(run.code, 0, "{run:?}");
    let (generation, pid, _) = h.active("demo").unwrap();

    let stop = h.tryswap(&["--json", "stop", "demo"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_eq!(stop.json()["stopped_generation"], generation);
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "stop left pid {pid} running"
    );
    // The marker stays, the generation is not running, and no other command restarts it.
    let status = h.status();
    let active = &status["slots"][0]["active"];
    assert_eq!(active["generation"], generation);
    assert_eq!(active["alive"], false);

    // The user's config file is gone: start must use the store's copy.
    std::fs::remove_file(&cfg).unwrap();
    let start = h.tryswap(&["--json", "start", "demo"]);
    assert_eq!(start.code, 0, "{start:?}");
    let (g2, pid2, addr) = h.active("demo").unwrap();
    assert_eq!(g2, generation);
    assert_ne!(pid2, pid);
    assert!(pid_alive(pid2));
    let reply = call("tcp", &addr, "x", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.message, "v1");

    // Starting a running generation is a no-op.
    let again = h.tryswap(&["start", "demo"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(h.active("demo").unwrap().1, pid2);
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[test]
fn an_interrupted_activate_stops_its_candidate_and_keeps_the_old_generation() {
    use std::process::Stdio;
    use tryswap_tests::harness::SlotSpec;
    use tryswap_tests::wait_until;

    let h = Harness::new(&[SlotSpec {
        start_timeout: "30s",
        ..SlotSpec::new("demo")
    }]);
    let good = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &good).code, 0);
    let (_, old_pid, _) = h.active("demo").unwrap();
    let hang = h.fixture_config(
        "hang",
        &FixtureConfig {
            hang: true,
            pid_file: Some(h.state.join("hang.pid")),
            ..FixtureConfig::default()
        },
    );
    let mut child = h
        .activate_command("demo", &hang)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the hanging candidate runs, then interrupt the CLI.
    let pid_file = h.state.join("hang.pid");
    assert!(
        wait_until(Duration::from_secs(10), || pid_file.exists()),
        "candidate never started"
    );
    let candidate = tryswap_tests::read_pid_file(&pid_file).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let finished = wait_until(Duration::from_secs(20), || {
        child.try_wait().map(|s| s.is_some()).unwrap_or(true)
    });
    if !finished {
        let _ = child.kill();
        panic!("tryswap did not exit after SIGINT");
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        wait_gone(candidate, Duration::from_secs(5)),
        "candidate survived"
    );
    assert_eq!(h.active("demo").unwrap().1, old_pid);
    assert!(pid_alive(old_pid));
    let history = h.tryswap(&["--json", "history", "demo"]).json();
    let last = history["reloads"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["outcome"], "rolled_back", "{last}");
}

/// `start` relaunches from the store: every stored file it launches is verified first, the
/// config file as much as the executable (recovery always checked both; `start` used to
/// check only the executable and launched a damaged config without complaint).
#[test]
fn start_refuses_a_damaged_stored_config_and_names_the_file() {
    let h = Harness::demo();
    let cfg = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &cfg).code, 0);
    let (_, pid, _) = h.active("demo").unwrap();
    assert_eq!(h.tryswap(&["stop", "demo"]).code, 0);
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "stop left pid {pid}"
    );

    // The store's copy of the config: the stored file with the config's bytes.
    let wanted = std::fs::read(&cfg).unwrap();
    let objects = h.state_dir.join("store").join("sha256");
    let stored = std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read(p).is_ok_and(|bytes| bytes == wanted))
        .expect("the config is in the store");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stored, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&stored, b"message = \"tampered\"\n").unwrap();

    let start = h.tryswap(&["start", "demo"]);
    assert_ne!(start.code, 0, "start launched a damaged config: {start:?}");
    let name = stored.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        start.stderr.contains(&name) && start.stderr.contains("corrupt"),
        "the error names the damaged file: {start:?}"
    );
    let status = h.status();
    assert_eq!(status["slots"][0]["active"]["alive"], false, "{status}");
    assert_eq!(h.tryswap(&["journal", "verify"]).code, 0);
}
