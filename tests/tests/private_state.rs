//! The state directory is private whatever the umask (the journal's sled files held plugin
//! stderr excerpts, world-readable under umask 022), and a staging interrupted by a crash
//! leaves nothing behind once the store is opened again.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tryswap_tests::crash::{reload_args, tryswap_killed_at};
use tryswap_tests::harness::{run_bounded, tryswap_path, Harness};
use tryswap_tests::FixtureConfig;

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every file and directory under `dir` (not following symlinks).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn journal_and_store_files_are_private_under_umask_022() {
    let h = Harness::demo();
    let config = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let mut command = Command::new(tryswap_path());
    command
        .arg("--config")
        .arg(&h.config_path)
        .args(reload_args("activate", "demo", &config))
        .env_remove("TRYSWAP_STATE_DIR")
        .stdin(Stdio::null());
    // SAFETY: umask is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let output = run_bounded(command, Duration::from_secs(60));
    assert!(output.status.success(), "{output:?}");

    assert_eq!(mode_of(&h.state_dir), 0o700, "the state directory");
    let private: Vec<PathBuf> = ["journal", "store"]
        .iter()
        .flat_map(|d| walk(&h.state_dir.join(d)))
        .collect();
    assert!(private.len() > 3, "nothing under journal/ and store/?");
    for path in private {
        assert_eq!(
            mode_of(&path) & 0o077,
            0,
            "{} is mode {:o}",
            path.display(),
            mode_of(&path)
        );
    }
    let logs: Vec<PathBuf> = walk(&h.state_dir.join("logs"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(!logs.is_empty());
    for log in logs {
        assert_eq!(mode_of(&log), 0o640, "{}", log.display());
    }
}

#[test]
fn forty_kills_during_staging_leave_no_staging_file() {
    let h = Harness::demo();
    let config = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let args = reload_args("activate", "demo", &config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for round in 0..40 {
        let exit = tryswap_killed_at(&h, "store-after-copy", &args);
        assert_eq!(
            exit.status.signal(),
            Some(libc::SIGKILL),
            "round {round}: {exit:?}"
        );
        let left = h.staging_files();
        assert!(
            left.len() <= 1,
            "round {round}: earlier stagings were not cleaned up: {left:?}"
        );
    }
    let recover = h.tryswap(&["recover"]);
    assert_eq!(recover.code, 0, "{recover:?}");
    assert_eq!(h.staging_files(), Vec::<String>::new());
}
