//! `tryswap recover --adopt` (issue 11): a journal older than the processes it finds (a
//! backup restored while a newer generation runs) takes the newer generation over as the
//! slot's active one, through the journal (`Adopted`), instead of starting a second copy;
//! the journal's older generation is stopped if it runs. Ambiguous evidence (two unknown
//! generations of one slot) is refused, naming the slot and pids, with nothing changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tryswap_tests::harness::{copy_dir, plugins_in, wait_gone, Harness};
use tryswap_tests::{pid_alive, wait_until, FixtureConfig};

fn backup(h: &Harness, name: &str) -> PathBuf {
    let to = h.state.join(name);
    copy_dir(&h.state_dir.join("journal"), &to);
    to
}

fn restore(h: &Harness, from: &Path) {
    let journal = h.state_dir.join("journal");
    std::fs::remove_dir_all(&journal).unwrap();
    copy_dir(from, &journal);
}

/// Activates `config` with a long bake and SIGKILLs the command mid-bake: the candidate
/// (the new generation) and the standby (the former one) both keep running. Returns the
/// candidate's generation and pid.
fn kill_during_a_bake(h: &Harness, config: &Path) -> (u64, u32) {
    let before = h.active("demo").map(|(g, _, _)| g);
    let mut child = h
        .activate_command("demo", config)
        .args(["--bake", "120s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn activate --bake");
    let mut candidate = None;
    let baking = wait_until(Duration::from_secs(30), || {
        candidate = h.active("demo").filter(|(g, _, _)| Some(*g) != before);
        candidate.is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(baking, "the bake did not begin");
    let (generation, pid, _) = candidate.expect("a baking candidate");
    (generation, pid)
}

#[test]
fn adopt_takes_over_the_generation_a_restored_journal_does_not_know() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let older = backup(&h, "journal-older");
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    assert_eq!(h.activate("demo", &v2).code, 0);
    let (generation, pid2, _) = h.active("demo").expect("active");
    assert_eq!(generation, 2);

    restore(&h, &older);
    let refused = h.tryswap(&["recover"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("recover --adopt") && refused.stderr.contains("--stop-unknown"),
        "the hint offers both ways: {refused:?}"
    );

    let run = h.tryswap(&[
        "--json",
        "--reason",
        "restored backup",
        "recover",
        "--adopt",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let actions = run.json()["actions"].clone();
    assert_eq!(actions[0]["action"], "adopted", "{actions}");
    assert_eq!(actions[0]["slot"], "demo", "{actions}");
    assert_eq!(actions[0]["generation"], 2, "{actions}");
    assert_eq!(actions[0]["pid"], pid2, "{actions}");
    assert_eq!(actions[0]["previous"], 1, "{actions}");

    let status = h.status();
    let slot = &status["slots"][0];
    assert_eq!(slot["active"]["generation"], 2, "{status}");
    assert_eq!(slot["active"]["pid"], pid2, "{status}");
    assert_eq!(slot["active"]["alive"], true, "{status}");
    assert_eq!(
        plugins_in(&h.state_dir),
        vec![pid2],
        "a second copy started"
    );
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");

    // The adoption is in the journal, with who and why; the next commands just reattach.
    let export = h.tryswap(&["journal", "export"]);
    let adopted = export
        .stdout
        .lines()
        .find(|l| l.contains("\"adopted\""))
        .unwrap_or_else(|| panic!("no Adopted record: {export:?}"));
    assert!(
        adopted.contains("restored backup") && adopted.contains("\"cli\""),
        "{adopted}"
    );
    let run = h.tryswap(&["--json", "recover"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["actions"][0]["action"], "reattached", "{run:?}");
    assert_eq!(plugins_in(&h.state_dir), vec![pid2]);
}

#[test]
fn adopt_stops_the_journals_older_generation_when_it_still_runs() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let (_, pid1, _) = h.active("demo").expect("active");
    let older = backup(&h, "journal-older");
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let (generation, pid2) = kill_during_a_bake(&h, &v2);
    assert_eq!(generation, 2);
    assert!(pid_alive(pid1) && pid_alive(pid2));

    restore(&h, &older);
    let run = h.tryswap(&["recover", "--adopt"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        wait_gone(pid1, Duration::from_secs(10)),
        "the journal's generation 1 (pid {pid1}) still runs: {run:?}"
    );
    let (generation, pid, _) = h.active("demo").expect("active");
    assert_eq!((generation, pid), (2, pid2));
    assert_eq!(plugins_in(&h.state_dir), vec![pid2]);
    assert_eq!(h.tryswap(&["journal", "verify"]).code, 0);
}

#[test]
fn adopt_refuses_two_unknown_generations_of_one_slot_and_changes_nothing() {
    let h = Harness::demo();
    // A journal that knows nothing yet.
    assert_eq!(h.tryswap(&["recover"]).code, 0);
    let empty = backup(&h, "journal-empty");
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let (_, pid1, _) = h.active("demo").expect("active");
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let (_, pid2) = kill_during_a_bake(&h, &v2);

    restore(&h, &empty);
    let records = h.tryswap(&["journal", "export"]).stdout;
    let refused = h.tryswap(&["recover", "--adopt"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    for needle in [
        "slot demo".to_owned(),
        "ambiguous".to_owned(),
        format!("{pid1}"),
        format!("{pid2}"),
        "--stop-unknown".to_owned(),
    ] {
        assert!(refused.stderr.contains(&needle), "{needle:?}: {refused:?}");
    }
    assert!(pid_alive(pid1) && pid_alive(pid2), "a process was stopped");
    let status = h.status();
    assert!(status["slots"][0]["active"].is_null(), "{status}");
    assert_eq!(
        h.tryswap(&["journal", "export"]).stdout,
        records,
        "the journal changed"
    );

    let run = h.tryswap(&["recover", "--stop-unknown"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(wait_gone(pid1, Duration::from_secs(10)) && wait_gone(pid2, Duration::from_secs(10)));
}
