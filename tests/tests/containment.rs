//! Where a cgroup v2 hierarchy is writable, each generation runs in a cgroup of its own and
//! is stopped with `cgroup.kill`: a grandchild that calls `setsid` and drops its
//! environment (escaping both the process group and the reload tag) does not survive a
//! rejection.

use std::path::PathBuf;
use std::time::Duration;

use tryswap_tests::harness::{capability, wait_gone, Harness};
use tryswap_tests::{pid_alive, read_pid_file, FixtureConfig};

/// Where the cgroup v2 hierarchy is mounted.
fn cgroup2_mount() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| "no cgroup2 hierarchy is mounted".to_owned())
}

/// Whether a cgroup v2 hierarchy with `cgroup.kill` is mounted and writable here.
fn writable_cgroup2() -> Result<(), String> {
    let mount = cgroup2_mount()?;
    let probe = mount.join(format!("tryswap-test-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| format!("{}: {e}", probe.display()))?;
    let has_kill = probe.join("cgroup.kill").exists();
    let _ = std::fs::remove_dir(&probe);
    if has_kill {
        Ok(())
    } else {
        Err("cgroup.kill is missing (Linux 5.14+)".to_owned())
    }
}

/// A state dir whose slot `demo` runs v1 (and its pid), where cgroup v2 is writable;
/// `None` (the test skips) elsewhere.
fn v1_active_with_cgroups() -> Option<(Harness, u32)> {
    if !capability("a writable cgroup v2 hierarchy", writable_cgroup2()) {
        return None;
    }
    let h = Harness::demo();
    let run = h.activate(
        "demo",
        &h.fixture_config("v1", &FixtureConfig::with_message("v1")),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let (_, pid1, _) = h.active("demo").expect("active");
    Some((h, pid1))
}

#[test]
fn an_escaped_grandchild_without_the_tag_does_not_survive_a_rejection() {
    let Some((h, pid1)) = v1_active_with_cgroups() else {
        return;
    };

    let grandchild_pid_file = h.state.join("grandchild.pid");
    let escaping = FixtureConfig {
        fork_grandchild: true,
        grandchild_new_session: true,
        grandchild_clear_env: true,
        grandchild_pid_file: Some(grandchild_pid_file.clone()),
        never_healthy: true,
        ..FixtureConfig::with_message("v2")
    };
    let run = h.activate("demo", &h.fixture_config("v2", &escaping));
    assert_eq!(run.code, 2, "{run:?}");
    let grandchild = read_pid_file(&grandchild_pid_file).expect("the grandchild's pid");
    assert!(
        wait_gone(grandchild, Duration::from_secs(10)),
        "the escaped grandchild {grandchild} survived the rejection"
    );
    assert!(pid_alive(pid1), "the active generation must keep running");
    assert_eq!(h.active("demo").map(|(_, pid, _)| pid), Some(pid1));
}

#[test]
fn an_exec_probe_that_daemonizes_leaks_nothing() {
    if !capability("a writable cgroup v2 hierarchy", writable_cgroup2()) {
        return;
    }
    let h = Harness::demo();
    let pid_file = h.state.join("probe-daemon.pid");
    let probe = format!(
        "kind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > {}\"]",
        pid_file.display()
    );
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, text.replacen("kind = \"grpc\"", &probe, 1)).unwrap();
    let run = h.activate(
        "demo",
        &h.fixture_config("v1", &FixtureConfig::with_message("v1")),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let daemonized = read_pid_file(&pid_file).expect("the probe's daemon pid");
    assert!(
        wait_gone(daemonized, Duration::from_secs(10)),
        "the process the exec probe daemonized ({daemonized}) survived"
    );
}

/// The cgroup a process is in, as a path under the cgroup2 mount.
fn cgroup_of(pid: u32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read its cgroup");
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .expect("a cgroup2 entry");
    cgroup2_mount().expect("a cgroup2 mount").join(relative)
}

#[test]
fn empty_cgroups_of_generations_that_are_gone_are_removed_at_open() {
    let Some((h, pid1)) = v1_active_with_cgroups() else {
        return;
    };
    let live = cgroup_of(pid1);
    assert!(
        live.file_name()
            .is_some_and(|n| n.to_string_lossy() == "demo-1"),
        "{}",
        live.display()
    );
    // What a generation killed outside tryswap while no tryswap ran leaves: an empty cgroup
    // beside the live one.
    let gone = live.with_file_name("demo-7");
    std::fs::create_dir(&gone).expect("create a stand-in empty cgroup");

    // A command that opens the state dir for writing (reads touch nothing) and changes
    // nothing here: recovery reattaches the live generation.
    let recover = h.tryswap(&["recover"]);
    assert_eq!(recover.code, 0, "{recover:?}");
    assert!(
        !gone.exists(),
        "the empty cgroup {} was kept",
        gone.display()
    );
    assert!(live.exists(), "the live generation lost its cgroup");
    assert_eq!(cgroup_of(pid1), live);
    assert!(pid_alive(pid1));

    // Once the last generation stops, nothing of the state dir is left in the hierarchy.
    let stop = h.tryswap(&["stop", "demo"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        !live.parent().expect("the state dir's cgroup").exists(),
        "the state dir's cgroup outlived its last generation"
    );
}

/// A caller in another process connected straight to `address` (bash's `/dev/tcp`, then
/// asleep holding the connection); killed and reaped when dropped.
struct DirectCaller(std::process::Child);

impl DirectCaller {
    fn connect(address: &str) -> DirectCaller {
        let (host, port) = address.rsplit_once(':').expect("an ip:port");
        let script = format!("exec 3<>/dev/tcp/{host}/{port} && echo connected && exec sleep 60");
        let mut child = std::process::Command::new("bash")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("bash");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read");
        assert_eq!(
            line.trim(),
            "connected",
            "bash could not connect to {address}"
        );
        DirectCaller(child)
    }
}

impl Drop for DirectCaller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_caller_connected_straight_to_a_contained_generation_holds_its_drain() {
    // The generation's connections are counted from the fd tables of its cgroup's
    // processes: the caller's connection is in the plugin's table, the one-shot command's
    // own connection (its probe, its controller) is not counted.
    let Some((h, pid1)) = v1_active_with_cgroups() else {
        return;
    };
    let (_, _, address) = h.active("demo").expect("active");
    let caller = DirectCaller::connect(&address);
    let run = h.activate(
        "demo",
        &h.fixture_config("v2", &FixtureConfig::with_message("v2")),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    let drain = &report["drain"][0];
    assert_eq!(drain["generation"], 1, "{report}");
    assert_eq!(drain["ended"], "timed_out", "{report}");
    assert_eq!(drain["connections_left"], 1, "{report}");
    assert!(wait_gone(pid1, Duration::from_secs(10)));
    drop(caller);

    // Nobody connected from outside: the next retirement does not wait.
    let run = h.activate(
        "demo",
        &h.fixture_config("v3", &FixtureConfig::with_message("v3")),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["drain"][0]["generation"], 2, "{report}");
    assert_eq!(report["drain"][0]["ended"], "drained", "{report}");
    assert_eq!(report["drain"][0]["connections_left"], 0, "{report}");
}
