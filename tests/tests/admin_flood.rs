//! Idle connections to the admin API cannot starve the daemon: with 2,000 of them open on
//! its TCP listener at RLIMIT_NOFILE 1,024, the CLI still answers within a second, the
//! keep-alive reports no false crash, and the idle connections are closed.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tryswap_tests::daemon::{free_port, Daemon};
use tryswap_tests::harness::Harness;
use tryswap_tests::{pid_alive, FixtureConfig};

const IDLE_CONNECTIONS: usize = 2000;

/// Lets this test process hold the connections it opens.
fn raise_own_nofile(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let soft = (wanted as libc::rlim_t).min(limit.rlim_max);
        assert!(
            soft >= wanted as libc::rlim_t,
            "the hard RLIMIT_NOFILE {} is below the {wanted} this test needs",
            limit.rlim_max
        );
        limit.rlim_cur = limit.rlim_cur.max(soft);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

fn soft_nofile_of(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

#[test]
fn two_thousand_idle_connections_leave_the_cli_answering_and_no_false_crash() {
    raise_own_nofile(IDLE_CONNECTIONS as u64 + 512);
    let h = Harness::demo();
    let port = free_port();
    std::fs::create_dir_all(&h.state_dir).unwrap();
    std::fs::write(h.state_dir.join("token"), "flood-token\n").unwrap();
    h.append_config(&format!(
        "\n[slot.restart]\npolicy = \"always\"\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"token\"\n"
    ));
    let run = h.activate(
        "demo",
        &h.fixture_config("v1", &FixtureConfig::with_message("v1")),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let (_, pid, _) = h.active("demo").expect("active");

    let daemon = Daemon::start_with_nofile(&h, 1024, 1024);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    // Bounded in count and in time: a starved daemon stops accepting, and connects hang.
    let opening = Instant::now() + Duration::from_secs(30);
    for _ in 0..IDLE_CONNECTIONS {
        if Instant::now() >= opening {
            break;
        }
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            idle.push(stream);
        }
    }
    assert!(
        idle.len() >= IDLE_CONNECTIONS / 2,
        "only {} connections opened",
        idle.len()
    );

    let started = Instant::now();
    let status = h.tryswap(&["--json", "status"]);
    let took = started.elapsed();
    assert_eq!(status.code, 0, "{status:?}\n{}", daemon.log());
    assert!(
        took < Duration::from_secs(1),
        "the CLI took {took:?} with {} idle connections open",
        idle.len()
    );
    assert_eq!(status.json()["slots"][0]["active"]["pid"], pid);

    // The monitor lists a slot once its first check ran (the daemon may answer before).
    let listed = Instant::now() + Duration::from_secs(10);
    while daemon.get("/v1/monitor").expect("monitor answers").json()["slots"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(Instant::now() < listed, "the monitor never listed the slot");
        std::thread::sleep(Duration::from_millis(20));
    }
    // While the connections stay open, the keep-alive keeps seeing the plugin alive.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let monitor = daemon.get("/v1/monitor").expect("monitor answers").json();
        let slot = &monitor["slots"][0];
        assert_eq!(slot["state"], "running", "{monitor}\n{}", daemon.log());
        assert_eq!(slot["restarts"], 0, "{monitor}");
        assert_eq!(slot["consecutive_failures"], 0, "{monitor}");
        assert_eq!(slot["pid"], pid, "{monitor}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pid_alive(pid));
    assert!(
        !daemon.log().contains("exited unexpectedly"),
        "{}",
        daemon.log()
    );

    // The daemon closes a connection that never sends a request.
    let mut first = idle.swap_remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = match first.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(closed, "an idle connection was kept open");
    assert_eq!(h.outcomes("demo"), vec!["active".to_owned()]);
}

#[test]
fn the_daemon_raises_its_soft_nofile_limit_to_the_hard_limit() {
    let h = Harness::demo();
    let daemon = Daemon::start_with_nofile(&h, 1024, 4096);
    assert_eq!(soft_nofile_of(daemon.pid()), 4096);
}
