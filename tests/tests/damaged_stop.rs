//! `stop` works on a damaged journal (issue 11): it only needs the processes' identities,
//! which their tags give. A log damaged before its durable point makes every other command
//! exit 4; `stop` stops the slot's processes (and only that slot's), records nothing, says
//! so with exit 5, and names the next steps. No daemon runs on a damaged journal, so a
//! stale admin socket left behind must not catch the command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tryswap_fsm::ReloadId;
use tryswap_tests::harness::{wait_gone, Harness, SlotSpec};
use tryswap_tests::{pid_alive, wait_until, FixtureConfig};

/// The segment log's only segment.
fn segment(state_dir: &Path) -> PathBuf {
    state_dir
        .join("journal")
        .join("log")
        .join(format!("{:020}.seg", 1))
}

fn flip_middle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn stop_on_a_log_damaged_before_its_durable_point_stops_the_slots_processes_by_their_tags() {
    let h = Harness::new(&[SlotSpec::new("demo"), SlotSpec::new("other")]);
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    assert_eq!(h.activate("other", &v1).code, 0);
    let (_, demo, _) = h.active("demo").expect("demo active");
    let (_, other, _) = h.active("other").expect("other active");

    flip_middle(&segment(&h.state_dir));
    let log = std::fs::read(segment(&h.state_dir)).unwrap();
    // A daemon killed earlier left its socket; nothing answers on it.
    drop(std::os::unix::net::UnixListener::bind(h.state_dir.join("tryswap.sock")).unwrap());

    let refused = h.tryswap(&["start", "demo"]);
    assert_eq!(refused.code, 4, "{refused:?}");

    let run = h.tryswap(&["stop", "demo"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        wait_gone(demo, Duration::from_secs(10)),
        "pid {demo} still runs: {run:?}"
    );
    assert!(pid_alive(other), "the other slot's pid {other} was stopped");
    for needle in [
        "demo: stopped 1 process without the journal",
        &format!("pid {demo} (generation 1"),
        "found by tags",
        "NOT RECORDED",
        "seq ",
        "journal export --salvage",
        "tryswap stop demo",
    ] {
        assert!(run.stdout.contains(needle), "{needle:?} missing: {run:?}");
    }

    let run = h.tryswap(&["--json", "stop", "other"]);
    assert_eq!(run.code, 5, "{run:?}");
    let json = run.json();
    assert_eq!(json["schema"], 1, "{json}");
    assert_eq!(json["slot"], "other", "{json}");
    assert_eq!(json["recorded"], false, "{json}");
    assert_eq!(json["journal"], "damaged", "{json}");
    assert_eq!(json["stopped_generation"], 1, "{json}");
    assert_eq!(json["stopped"][0]["pid"], other, "{json}");
    assert_eq!(json["stopped"][0]["found_by"], "tags", "{json}");
    assert!(
        json["journal_error"]
            .as_str()
            .is_some_and(|e| e.contains("byte ")),
        "{json}"
    );
    assert!(
        wait_gone(other, Duration::from_secs(10)),
        "pid {other} still runs"
    );

    // Nothing is left, and nothing was written to the log.
    let run = h.tryswap(&["stop", "demo"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stdout.contains("nothing stopped"), "{run:?}");
    assert_eq!(std::fs::read(segment(&h.state_dir)).unwrap(), log);
    assert!(h.state.processes().is_empty(), "{:?}", h.state.processes());
}

/// A stand-in for a plugin an older tryswap started (no `TRYSWAP_SLOT` tag): `sleep`,
/// running in the state directory with reload tag `reload` and the given environment.
fn untagged(h: &Harness, reload: &str, env: &[(&str, &str)], stdout: Option<&Path>) -> Child {
    let mut command = Command::new("/bin/sleep");
    command
        .arg("300")
        .current_dir(&h.state_dir)
        .env_clear()
        .env("TRYSWAP_RELOAD_ID", reload)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    if let Some(path) = stdout {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        command.stdout(std::fs::File::create(path).unwrap());
    }
    command.spawn().expect("spawn sleep")
}

fn exited(child: &mut Child) -> bool {
    wait_until(Duration::from_secs(10), || {
        child.try_wait().ok().flatten().is_some()
    })
}

#[test]
fn stop_on_a_damaged_journal_finds_processes_started_before_the_slot_tags() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let (_, plugin, _) = h.active("demo").expect("demo active");
    let export = h.tryswap(&["--json", "journal", "export"]);
    let first: serde_json::Value =
        serde_json::from_str(export.stdout.lines().next().unwrap()).unwrap();
    let known = first["reload"].as_str().expect("a reload id").to_owned();

    let state_dir = h.state_dir.canonicalize().unwrap();
    let tmp = state_dir.join("tmp/demo/7");
    let mut by_tmpdir = untagged(
        &h,
        &ReloadId::from_u128(0xa).to_string(),
        &[("TMPDIR", tmp.to_str().unwrap())],
        None,
    );
    let mut by_log = untagged(
        &h,
        &ReloadId::from_u128(0xb).to_string(),
        &[],
        Some(&state_dir.join("logs/demo/8.stdout")),
    );
    let mut by_records = untagged(&h, &known, &[], None);
    let mut nobody = untagged(&h, &ReloadId::from_u128(0xd).to_string(), &[], None);

    flip_middle(&segment(&h.state_dir));
    let run = h.tryswap(&["--json", "stop", "demo"]);
    assert_eq!(run.code, 5, "{run:?}");
    let json = run.json();
    let found_by = |pid: u32| {
        json["stopped"]
            .as_array()
            .and_then(|s| s.iter().find(|p| p["pid"] == pid))
            .map(|p| p["found_by"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(found_by(plugin).as_deref(), Some("tags"), "{json}");
    assert_eq!(
        found_by(by_tmpdir.id()).as_deref(),
        Some("tmp_dir"),
        "{json}"
    );
    assert_eq!(found_by(by_log.id()).as_deref(), Some("log_file"), "{json}");
    assert_eq!(
        found_by(by_records.id()).as_deref(),
        Some("journal_records"),
        "{json}"
    );
    assert_eq!(json["unattributed_pids"][0], nobody.id(), "{json}");
    assert!(wait_gone(plugin, Duration::from_secs(10)), "{json}");
    for child in [&mut by_tmpdir, &mut by_log, &mut by_records] {
        assert!(exited(child), "pid {} still runs: {json}", child.id());
    }
    assert!(
        pid_alive(nobody.id()),
        "a process of no known slot was stopped"
    );
    let _ = nobody.kill();
    let _ = nobody.wait();
}
