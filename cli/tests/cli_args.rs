//! Argument handling of the `tryswap` binary. (Having an integration test here also makes
//! `cargo test --workspace` build the binary that the end-to-end tests in tests/ drive.)

use std::process::Command;

fn tryswap(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tryswap"))
        .args(args)
        .env_remove("TRYSWAP_STATE_DIR")
        .output()
        .expect("run tryswap")
}

#[test]
fn help_lists_every_command() {
    let out = tryswap(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in [
        "activate", "try", "rollback", "status", "history", "start", "stop", "recover", "journal",
    ] {
        assert!(text.contains(command), "--help does not list {command}");
    }
}

#[test]
fn an_invalid_slot_name_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = tryswap(&[
        "--state-dir",
        dir.path().to_str().unwrap(),
        "activate",
        "../etc",
        "/bin/true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid slot name"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "state dir was written to"
    );
}

#[test]
fn a_missing_config_file_named_explicitly_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = tryswap(&["--config", missing.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.toml"), "{err}");
}
