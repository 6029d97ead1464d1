//! The CLI talks only to a daemon socket owned and served by the invoking user or root: a
//! neighbour who binds the `admin.socket` path first cannot answer root's commands with a
//! forged success. A socket outside the state dir needs an explicit config flag.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use tryswap_tests::fixture_plugin_path;
use tryswap_tests::harness::{capability, Harness};
use tryswap_tests::process::send_signal;

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

#[test]
fn a_socket_bound_by_another_user_is_refused() {
    let root = if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err("not running as root".to_owned())
    };
    if !capability("root (to bind a socket as another user)", root) {
        return;
    }
    let h = Harness::demo();
    // A world-writable directory, like /tmp or /run/user with loose modes.
    std::fs::set_permissions(h.state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let public = h.state.join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = public.join("admin.sock");
    h.append_config(&format!(
        "\n[admin]\nsocket = \"{}\"\nsocket_outside_state_dir = true\n",
        socket.display()
    ));

    let mut command = Command::new(fixture_plugin_path());
    command
        .arg("--forge-admin-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setgid/setuid are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut forger = command.spawn().expect("spawn the forger");
    let mut ready = String::new();
    BufReader::new(forger.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");

    let run = h.tryswap(&["--json", "status"]);
    send_signal(forger.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = forger.wait();
    assert_eq!(run.code, 1, "a forged answer was accepted: {run:?}");
    assert!(
        run.stdout.contains("uid 65534") || run.stderr.contains("uid 65534"),
        "{run:?}"
    );
}

#[test]
fn a_socket_outside_the_state_dir_needs_the_flag() {
    let h = Harness::demo();
    h.append_config("\n[admin]\nsocket = \"/tmp/tryswap-admin.sock\"\n");
    let run = h.tryswap(&["status"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("socket_outside_state_dir"), "{run:?}");
}
