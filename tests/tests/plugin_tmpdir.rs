//! Each generation gets its own TMPDIR under the state dir (mode 0700), where go-plugin
//! creates its unix socket; it goes when the generation stops, so reloads leave no socket
//! files behind, even of plugins that are killed and never remove their socket. A reload
//! makes the TMPDIR and log files of its generation while it stages the candidate (the
//! daemon makes them ahead, after the previous commit); a reload that fails before its
//! launch removes them again.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tryswap_tests::daemon::{poll, Daemon};
use tryswap_tests::harness::Harness;
use tryswap_tests::{FixtureConfig, FixtureNetwork};

/// Every socket file under `dir`.
fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(sockets_under(&path)),
            Ok(t) if t.is_socket() => out.push(path),
            _ => {}
        }
    }
    out
}

#[test]
fn twenty_reloads_of_a_unix_socket_plugin_leave_no_socket_behind() {
    let h = Harness::demo();
    let tmp_root = h.state_dir.join("tmp").join("demo");
    for round in 1..=20u64 {
        let config = FixtureConfig {
            network: Some(FixtureNetwork::Unix),
            // Killed at the end of its stop timeout: it never removes its own socket.
            ignore_sigterm: round % 2 == 0,
            ..FixtureConfig::with_message(format!("v{round}"))
        };
        let run = h.activate("demo", &h.fixture_config(&format!("v{round}"), &config));
        assert_eq!(run.code, 0, "round {round}: {run:?}");
        let (generation, _, address) = h.active("demo").expect("active");
        let own = tmp_root.join(generation.to_string());
        assert!(
            Path::new(&address).starts_with(&own),
            "round {round}: the socket {address} is not in the generation's TMPDIR {}",
            own.display()
        );
        let mode = std::fs::metadata(&own).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", own.display());
        assert_eq!(
            sockets_under(&h.state_dir.join("tmp")),
            vec![PathBuf::from(&address)],
            "round {round}: sockets of stopped generations are left"
        );
    }
    let dirs: Vec<_> = std::fs::read_dir(&tmp_root).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
}

#[test]
fn a_reload_that_fails_before_its_launch_leaves_no_files_of_its_generation() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let run = h.activate("demo", &v1);
    assert_eq!(run.code, 0, "{run:?}");
    let (generation, _, _) = h.active("demo").expect("active");
    let next = generation + 1;
    let tmp = h.state_dir.join("tmp").join("demo").join(next.to_string());
    let logs = h.state_dir.join("logs").join("demo");
    let leftovers = || {
        [
            tmp.clone(),
            logs.join(format!("{next}.stdout")),
            logs.join(format!("{next}.log")),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect::<Vec<_>>()
    };

    // Staging fails (the config file is missing) after the launch's files were made.
    let run = h.activate("demo", &h.state_dir.join("no-such-config.toml"));
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("staged"), "{run:?}");
    assert_eq!(leftovers(), Vec::<PathBuf>::new());

    // The next reload gets that generation and makes its files itself.
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let run = h.activate("demo", &v2);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(h.active("demo").expect("active").0, next);
    assert_eq!(leftovers().len(), 3, "the active generation's files");
}

/// `tryswap serve` makes the next generation's TMPDIR and log files once a reload has
/// committed (while the old generation stops), so the next reload's launch only opens
/// them; that reload's plugin then runs in them. When the daemon stops, the unused ones go.
#[test]
fn the_daemon_makes_the_next_generations_files_ahead_and_the_next_reload_uses_them() {
    let h = Harness::demo();
    let mut daemon = Daemon::start(&h);
    let tmp_root = h.state_dir.join("tmp").join("demo");
    let logs = h.state_dir.join("logs").join("demo");
    let files_of = |generation: u64| {
        (
            tmp_root.join(generation.to_string()),
            logs.join(format!("{generation}.stdout")),
            logs.join(format!("{generation}.log")),
        )
    };
    for round in 1..=2u64 {
        let config = FixtureConfig {
            network: Some(FixtureNetwork::Unix),
            ..FixtureConfig::with_message(format!("v{round}"))
        };
        let run = h.activate("demo", &h.fixture_config(&format!("v{round}"), &config));
        assert_eq!(run.code, 0, "round {round}: {run:?}");
        let (generation, _, address) = h.active("demo").expect("active");
        // The plugin runs in its generation's TMPDIR: the one made ahead from round 2 on.
        assert!(
            Path::new(&address).starts_with(tmp_root.join(generation.to_string())),
            "round {round}: {address}"
        );
        let (tmp, stdout, stderr) = files_of(generation + 1);
        let made = poll(Duration::from_secs(10), || {
            (tmp.is_dir() && stdout.is_file() && stderr.is_file()).then_some(())
        });
        assert!(
            made.is_some(),
            "round {round}: generation {}'s files were not made ahead",
            generation + 1
        );
        let mode = std::fs::metadata(&tmp).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", tmp.display());
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "nothing ran yet"
        );
        for log in [&stdout, &stderr] {
            assert_eq!(
                std::fs::metadata(log).unwrap().len(),
                0,
                "{}",
                log.display()
            );
        }
    }
    // A daemon that stops removes what it made ahead and no reload used; the logs of the
    // generations that ran stay.
    let (generation, _, _) = h.active("demo").expect("active");
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        daemon.log()
    );
    let (tmp, stdout, stderr) = files_of(generation + 1);
    for leftover in [&tmp, &stdout, &stderr] {
        assert!(!leftover.exists(), "{} stayed", leftover.display());
    }
    let (_, stdout, stderr) = files_of(generation);
    assert!(stdout.is_file() && stderr.is_file());
}
