//! Each generation gets its own TMPDIR under the state dir (mode 0700), where go-plugin
//! creates its unix socket; it goes when the generation stops, so reloads leave no socket
//! files behind, even of plugins that are killed and never remove their socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
