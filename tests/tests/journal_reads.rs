//! Reads change nothing and need no lock (DESIGN.md "Journal, second form"): `status` and
//! `history` never recover or relaunch, report a dead active generation as `exited`, and
//! answer from the log while a one-shot `activate` holds the journal;
//! `events`, `journal show`, `journal export` and `journal replay` read the segment log
//! with no lock and change no byte of the journal, and `journal verify` verifies the log
//! while another process holds the journal.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tryswap_tests::harness::{copy_dir, dir_bytes, wait_gone, Harness, SlotSpec};
use tryswap_tests::process::send_signal;
use tryswap_tests::{pid_alive, wait_until, FixtureConfig};

/// Processes whose working directory is `state_dir`: the plugins tryswap started there.
fn plugins_in(state_dir: &Path) -> Vec<u32> {
    let Ok(state_dir) = state_dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == state_dir)
        })
        .collect()
}

/// How many records `journal export` prints.
fn record_count(h: &Harness) -> usize {
    let run = h.tryswap(&["journal", "export"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout.lines().count()
}

#[test]
fn status_after_kill_9_reports_exited_and_relaunches_nothing() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let run = h.activate("demo", &v1);
    assert_eq!(run.code, 0, "{run:?}");
    let (generation, pid, _) = h.active("demo").expect("an active generation");
    let records = record_count(&h);

    assert!(send_signal(pid, Signal::SIGKILL));
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "pid {pid} survived SIGKILL"
    );

    let status = h.status();
    let slot = &status["slots"][0];
    assert_eq!(slot["health"], "exited", "{status}");
    assert_eq!(slot["active"]["generation"], generation);
    assert_eq!(slot["active"]["pid"], pid, "status relaunched it: {status}");
    assert_eq!(slot["active"]["alive"], false);
    assert_eq!(slot["exited"]["kind"], "not_running", "{status}");
    assert!(slot["exited"]["at"].is_string(), "{status}");
    let text = h.tryswap(&["status"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("exited"), "{}", text.stdout);
    assert!(
        text.stdout.contains("tryswap start demo"),
        "{}",
        text.stdout
    );
    let history = h.tryswap(&["--json", "history", "demo"]);
    assert_eq!(history.code, 0, "{history:?}");

    // Nothing was relaunched and nothing was written.
    assert_eq!(plugins_in(&h.state_dir), Vec::<u32>::new());
    assert_eq!(record_count(&h), records, "a read wrote to the journal");

    // `start` brings it back.
    let run = h.tryswap(&["start", "demo"]);
    assert_eq!(run.code, 0, "{run:?}");
    let status = h.status();
    assert_eq!(status["slots"][0]["health"], "running", "{status}");
    assert!(status["slots"][0].get("exited").is_none(), "{status}");
    let (_, new_pid, _) = h.active("demo").expect("active");
    assert!(pid_alive(new_pid));
}

/// The pid written in the journal's lock file.
fn lock_holder(state_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(state_dir.join("journal").join("journal.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A state dir whose slot `demo` runs generation 1, and a one-shot `activate` of a
/// candidate that takes 20 s to start: it holds the journal, its reload staged (a durable
/// point: the log has it).
fn held_by_a_slow_activate() -> (Harness, Child) {
    let mut spec = SlotSpec::new("demo");
    spec.start_timeout = "30s";
    let h = Harness::new(&[spec]);
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let slow = FixtureConfig {
        startup_delay_ms: Some(20_000),
        ..FixtureConfig::with_message("v2")
    };
    let slow = h.fixture_config("v2", &slow);
    let child = h
        .activate_command("demo", &slow)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn activate");
    let holder = child.id();
    let staged = wait_until(Duration::from_secs(20), || {
        lock_holder(&h.state_dir) == Some(holder)
            && in_flight_in_log(&h.state_dir.join("journal")).is_some()
    });
    assert!(
        staged,
        "the activate never took the journal and staged its reload"
    );
    (h, child)
}

/// Interrupts the `activate` and waits (bounded) for it to end.
fn end(mut child: Child) {
    let _ = send_signal(child.id(), Signal::SIGINT);
    let done = wait_until(Duration::from_secs(30), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !done {
        let _ = child.kill();
    }
    assert!(done, "the activate did not end on SIGINT");
}

#[test]
fn status_and_history_answer_while_a_one_shot_activate_holds_the_journal() {
    let (h, mut child) = held_by_a_slow_activate();
    let holder = child.id();

    // `--wait=0`: any need for the lock would fail at once with exit 3.
    let status = h.tryswap(&["--json", "--wait=0", "status"]);
    assert_eq!(status.code, 0, "{status:?}");
    let status = status.json();
    let slot = &status["slots"][0];
    assert_eq!(slot["active"]["generation"], 1, "{status}");
    assert_eq!(slot["health"], "running", "{status}");
    assert_eq!(slot["in_flight"]["mode"], "activate", "{status}");
    let history = h.tryswap(&["--json", "--wait=0", "history", "demo"]);
    assert_eq!(history.code, 0, "{history:?}");
    assert_eq!(history.json()["reloads"][0]["outcome"], "active");
    assert_eq!(
        lock_holder(&h.state_dir),
        Some(holder),
        "the activate lost its lock"
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the activate ended early"
    );

    // A writer still needs the lock.
    let start = h.tryswap(&["--wait=0", "start", "demo"]);
    assert_eq!(start.code, 3, "{start:?}");

    end(child);
}

/// The lock-free reads, each with `--wait=0` (any need for the lock fails at once with
/// exit 3).
const READS: &[&[&str]] = &[
    &["--wait=0", "--json", "events"],
    &["--wait=0", "events"],
    &["--wait=0", "journal", "show"],
    &["--wait=0", "--json", "journal", "show"],
    &["--wait=0", "journal", "export"],
    &["--wait=0", "journal", "replay", "--until", "1000000"],
];

/// Checks what the reads printed against the journal: every record from seq 1 through at
/// least `durable` with no gap, the in-flight reload `in_flight` staged in it, and the same
/// records whichever read printed them. Returns the last seq.
fn assert_reads_agree(
    runs: &[(Vec<&str>, tryswap_tests::harness::Run)],
    durable: u64,
    in_flight: &str,
) -> u64 {
    for (args, run) in runs {
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
    }
    let export: Vec<serde_json::Value> = runs
        .iter()
        .find(|(args, _)| args.ends_with(&["export"]))
        .expect("an export")
        .1
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let seqs: Vec<u64> = export.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let last = *seqs.last().expect("records");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "a gap in the export");
    assert!(
        last >= durable,
        "the export ends at seq {last}, before the durable seq {durable}"
    );
    assert!(
        export
            .iter()
            .any(|r| r["reload"] == in_flight && r["event"].get("staged").is_some()),
        "the in-flight reload's staged record is not exported: {export:?}"
    );
    for (args, run) in runs {
        let lines = run.stdout.lines().count() as u64;
        match args.last().copied() {
            Some("events") | Some("show") => assert_eq!(lines, last, "{args:?}: {run:?}"),
            _ => {}
        }
        if args.contains(&"replay") {
            let state = run.json();
            assert_eq!(state["seq"], last, "{state}");
            assert_eq!(
                state["slots"]["demo"]["slot"]["in_flight"], in_flight,
                "{state}"
            );
        }
        if args.ends_with(&["--json", "events"]) {
            let first: serde_json::Value =
                serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
            assert_eq!(
                (first["event"].as_str(), first["data"]["seq"].as_u64()),
                (Some("record"), Some(1))
            );
        }
    }
    last
}

#[test]
fn events_journal_show_export_replay_and_verify_read_the_log_while_an_activate_holds_it() {
    let (h, mut child) = held_by_a_slow_activate();
    let holder = child.id();
    let journal = h.state_dir.join("journal");
    let (in_flight, staged_seq) = in_flight_in_log(&journal).unwrap();
    let in_flight = in_flight.to_string();

    // Stopped, the holder writes nothing: every byte the reads could change stays put.
    assert!(send_signal(holder, Signal::SIGSTOP));
    let before = dir_bytes(&journal);
    let mut runs = Vec::new();
    for args in READS {
        runs.push((args.to_vec(), h.tryswap(args)));
    }
    let verify = h.tryswap(&["--wait=0", "--json", "journal", "verify"]);
    let after = dir_bytes(&journal);
    assert!(send_signal(holder, Signal::SIGCONT));

    assert_reads_agree(&runs, staged_seq, &in_flight);
    assert_eq!(verify.code, 0, "{verify:?}");
    let report = verify.json();
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["index_checked"], false, "{report}");
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "the reads changed {changed:?}");

    // And with the holder running (it still waits for its candidate).
    let text = h.tryswap(&["--wait=0", "journal", "verify"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("the log only"), "{text:?}");
    let export = h.tryswap(&["--wait=0", "journal", "export"]);
    assert_eq!(export.code, 0, "{export:?}");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the activate ended early"
    );
    assert_eq!(
        lock_holder(&h.state_dir),
        Some(holder),
        "the activate lost its lock"
    );

    end(child);
}

#[test]
fn reads_of_a_journal_nobody_holds_change_no_byte_of_it() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let stop = h.tryswap(&["stop", "demo"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let journal = h.state_dir.join("journal");
    let before = dir_bytes(&journal);
    let mut runs = Vec::new();
    // `status` answers from the projection snapshot, which holds the journal's last record
    // here, `history` from the log read into memory: no lock taken, sled's files not opened.
    let status: &[&[&str]] = &[
        &["--wait=0", "status"],
        &["--wait=0", "--json", "status"],
        &["--wait=0", "history", "demo"],
        &["--wait=0", "--json", "history", "demo"],
    ];
    for args in READS.iter().chain(status) {
        runs.push((args.to_vec(), h.tryswap(args)));
    }
    let after = dir_bytes(&journal);
    for (args, run) in &runs {
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
    }
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(
        changed.is_empty(),
        "the reads changed {changed:?} (the lock file names the last opener)"
    );
    let export = &runs
        .iter()
        .find(|(a, _)| a.ends_with(&["export"]))
        .unwrap()
        .1;
    let last = export.stdout.lines().last().unwrap_or_default();
    assert!(last.contains("\"stopped\""), "{export:?}");
}

/// The reload in flight in the journal in `dir` and the log's last seq, read from its log
/// (no lock: what a read command sees while a writer holds the journal).
fn in_flight_in_log(dir: &Path) -> Option<(tryswap_fsm::ReloadId, u64)> {
    use tryswap_journal::JournalStore;
    let journal = tryswap_journal::MemoryJournal::from_log(dir).ok()?;
    let slots = journal.slots().ok()?;
    let in_flight = slots.iter().find_map(|v| v.slot.in_flight)?;
    Some((in_flight, journal.last_seq()))
}

#[test]
fn a_journal_older_than_its_processes_starts_no_second_copy() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let journal = h.state_dir.join("journal");
    let backup = h.state.join("journal-backup");
    copy_dir(&journal, &backup);
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    assert_eq!(h.activate("demo", &v2).code, 0);
    let (generation, pid2, _) = h.active("demo").expect("active");
    assert_eq!(generation, 2);

    // The journal from before generation 2 comes back.
    std::fs::remove_dir_all(&journal).unwrap();
    copy_dir(&backup, &journal);
    for args in [&["start", "demo"][..], &["recover"]] {
        let refused = h.tryswap(args);
        assert_eq!(refused.code, 1, "{args:?}: {refused:?}");
        assert!(
            refused.stderr.contains(&format!("pid {pid2}"))
                && refused.stderr.contains("recover --stop-unknown"),
            "{args:?}: {refused:?}"
        );
    }
    assert_eq!(
        plugins_in(&h.state_dir),
        vec![pid2],
        "a second copy started"
    );

    let run = h.tryswap(&["recover", "--stop-unknown"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        wait_gone(pid2, Duration::from_secs(10)),
        "pid {pid2} still runs"
    );
    let run = h.tryswap(&["start", "demo"]);
    assert_eq!(run.code, 0, "{run:?}");
    let (generation, pid, _) = h.active("demo").expect("active");
    assert_eq!(generation, 1);
    assert_eq!(plugins_in(&h.state_dir), vec![pid]);
}
