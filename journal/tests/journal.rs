//! The sled journal on disk: projections equal the fold across reopen, compaction and the
//! store rewrite, verify's detections, the witness, locking and damaged sled files. What
//! every store must do (the fold, rejections, flush points, batches) is in
//! `conformance.rs`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use tryswap_fsm::{Command, Mode, Reason, ReloadId};
use tryswap_journal::layout::{self, seq_key};
use tryswap_journal::{Journal, JournalError, ProblemKind, OWN_RELEASE_WAIT};

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn projections_equal_the_fold_across_reopen(intents in intents(120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut driver = Driver::default();
        {
            let journal = Journal::open(dir.path()).unwrap();
            driver.run(&journal, &intents);
            assert_matches(&journal, &driver.world);
        }
        let journal = Journal::open(dir.path()).unwrap();
        prop_assert_eq!(journal.last_seq(), driver.records.len() as u64);
        assert_matches(&journal, &driver.world);
        prop_assert_eq!(folded_world(&journal), driver.world.clone());
        let stored: Vec<_> = journal.events(0).map(|r| r.unwrap()).collect();
        prop_assert_eq!(&stored, &driver.records);
        // Writing goes on after reopen.
        driver.run(&journal, &intents[..intents.len().min(5)]);
        assert_matches(&journal, &driver.world);
    }

    #[test]
    fn a_compacted_journal_reopens_verified(intents in intents(120), keep in 0usize..3) {
        let dir = tempfile::tempdir().unwrap();
        let mut driver = Driver::default();
        let journal = Journal::open(dir.path()).unwrap();
        driver.run(&journal, &intents);
        journal.compact(keep).unwrap();
        // Writes after the base, then a second compaction that moves it.
        full_activate(&journal, &slot_name(SLOTS), ReloadId::from_u128(1 << 100), 1);
        journal.compact(keep).unwrap();
        let slots = journal.slots().unwrap();
        let state = journal.replay(u64::MAX).unwrap();
        drop(journal);
        let journal = Journal::open(dir.path()).unwrap();
        let report = journal.verify().unwrap();
        prop_assert!(report.is_ok(), "{:#?}", report.problems);
        prop_assert_eq!(journal.slots().unwrap(), slots);
        prop_assert_eq!(journal.replay(u64::MAX).unwrap(), state);
    }
}

/// Builds a journal with a few reloads and closes it. Returns its last seq.
fn populated(dir: &Path) -> u64 {
    let journal = Journal::open(dir).unwrap();
    full_activate(&journal, &slot_name(0), ReloadId::from_u128(1), 1);
    full_activate(&journal, &slot_name(1), ReloadId::from_u128(2), 2);
    full_activate(&journal, &slot_name(0), ReloadId::from_u128(3), 3);
    journal.last_seq()
}

fn problems_of(dir: &Path) -> Vec<tryswap_journal::Problem> {
    let journal = Journal::open(dir).unwrap();
    let report = journal.verify().unwrap();
    assert!(!report.is_ok());
    report.problems
}

#[test]
fn verify_detects_a_garbage_projection() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = sled_of(dir.path());
        let slots = db.open_tree(layout::SLOTS).unwrap();
        slots
            .insert("slot-1", &b"\xff\xff\xff garbage"[..])
            .unwrap();
        db.flush().unwrap();
    }
    // Reads name the tree and key instead of panicking.
    let journal = Journal::open(dir.path()).unwrap();
    let err = journal.slot(&slot_name(1)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("slots") && text.contains("slot-1"), "{text}");
    drop(journal);
    let problems = problems_of(dir.path());
    assert!(
        problems.iter().any(|p| p.kind == ProblemKind::Undecodable
            && p.tree == "slots"
            && p.slot == Some(slot_name(1))),
        "{problems:#?}"
    );
}

#[test]
fn verify_detects_a_different_valid_projection() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        // Swap the two slots' views, renamed so each still decodes under its key.
        let journal = Journal::open(dir.path()).unwrap();
        let mut other = journal.slot(&slot_name(1)).unwrap().unwrap();
        drop(journal);
        other.slot.name = slot_name(0);
        let bytes = tryswap_journal::codec::encode("slot view", &other).unwrap();
        let db = sled_of(dir.path());
        db.open_tree(layout::SLOTS)
            .unwrap()
            .insert("slot-0", bytes)
            .unwrap();
        db.flush().unwrap();
    }
    let problems = problems_of(dir.path());
    assert!(
        problems
            .iter()
            .any(|p| p.kind == ProblemKind::ProjectionMismatch
                && p.slot == Some(slot_name(0))
                && p.detail.contains("active marker")),
        "{problems:#?}"
    );
}

#[test]
fn verify_detects_a_gap_in_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = sled_of(dir.path());
        db.open_tree(layout::EVENTS)
            .unwrap()
            .remove(seq_key(7))
            .unwrap();
        db.flush().unwrap();
    }
    let problems = problems_of(dir.path());
    assert!(
        problems
            .iter()
            .any(|p| p.kind == ProblemKind::Gap && p.seq == Some(8) && p.detail.contains("7..=7")),
        "{problems:#?}"
    );
}

#[test]
fn verify_detects_a_flipped_byte_and_open_does_not_read_history() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = sled_of(dir.path());
        let events = db.open_tree(layout::EVENTS).unwrap();
        let mut value = events.get(seq_key(2)).unwrap().unwrap().to_vec();
        value[5] ^= 0x01;
        events.insert(seq_key(2), value).unwrap();
        db.flush().unwrap();
    }
    // Open succeeds: it reads only meta, the last record and the witness.
    let journal = Journal::open(dir.path()).unwrap();
    let err = journal.events(2).next().unwrap().unwrap_err();
    assert!(
        err.to_string().contains("events") && err.to_string().contains("seq 2"),
        "{err}"
    );
    drop(journal);
    let problems = problems_of(dir.path());
    assert!(
        problems.iter().any(|p| p.kind == ProblemKind::Undecodable
            && p.seq == Some(2)
            && p.detail.contains("checksum")),
        "{problems:#?}"
    );
}

#[test]
fn verify_detects_an_illegal_but_well_formed_record() {
    let dir = tempfile::tempdir().unwrap();
    let last = populated(dir.path());
    {
        // Re-encode record 3 (validated) as `Activated`, with a correct CRC and chain
        // from record 2, then fix up record 4's chain: only legality is broken.
        let db = sled_of(dir.path());
        let events = db.open_tree(layout::EVENTS).unwrap();
        let mut r3 =
            tryswap_journal::decode_record(&events.get(seq_key(3)).unwrap().unwrap()).unwrap();
        r3.event = tryswap_fsm::EventKind::Activated;
        let bytes = tryswap_journal::encode_record(&r3).unwrap();
        events.insert(seq_key(3), bytes).unwrap();
        db.flush().unwrap();
    }
    let problems = problems_of(dir.path());
    assert!(
        problems
            .iter()
            .any(|p| p.kind == ProblemKind::Illegal && p.seq == Some(3)),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.kind == ProblemKind::ChainBroken && p.seq == Some(4)),
        "{problems:#?}"
    );
    assert!(last > 4);
}

fn tree_contents(dir: &Path, tree: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = sled_of(dir);
    let tree = db.open_tree(tree).unwrap();
    tree.iter()
        .map(|i| {
            let (k, v) = i.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn files_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Every record as the journal reads it back.
fn all_records(journal: &Journal) -> Vec<tryswap_journal::Record> {
    journal.events(0).map(|r| r.unwrap()).collect()
}

/// The journal's records, and that it verifies, after `damage` was done to a copy of a
/// populated journal: the open heals sled from the log.
fn assert_healed(dir: &Path, expected: &[tryswap_journal::Record], rebuilt: bool, name: &str) {
    let journal = Journal::open(dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        journal.rebuilt().is_some(),
        rebuilt,
        "{name}: {:?}",
        journal.rebuilt()
    );
    assert_eq!(all_records(&journal), expected, "{name}");
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "{name}: {:#?}", report.problems);
}

#[test]
fn an_older_copy_of_sleds_files_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path()).unwrap();
        full_activate(&journal, &slot_name(0), ReloadId::from_u128(1), 1);
    }
    // An older copy of sled's data, as a damaged file system might hand back.
    copy_dir(&dir.path().join(layout::SLED_DIR), old.path());
    let expected = {
        let journal = Journal::open(dir.path()).unwrap();
        full_activate(&journal, &slot_name(1), ReloadId::from_u128(2), 2);
        all_records(&journal)
    };
    assert_eq!(expected.len(), 10);
    fs::remove_dir_all(dir.path().join(layout::SLED_DIR)).unwrap();
    copy_dir(old.path(), &dir.path().join(layout::SLED_DIR));
    assert_healed(dir.path(), &expected, false, "older sled");
}

/// Where each record's frame starts in the log.
fn record_offsets(dir: &Path) -> Vec<u64> {
    tryswap_journal::LogReader::open(dir)
        .unwrap()
        .items()
        .filter_map(|item| match item.unwrap() {
            tryswap_journal::LogItem::Record { at, .. } => Some(at.offset),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lost_tail_of_the_log_fails_open_naming_seq_and_offset_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let last = populated(dir.path());
    let segment = tryswap_journal::segment_log::segment_path(dir.path(), 1);
    let offsets = record_offsets(dir.path());
    assert_eq!(offsets.len() as u64, last);
    // The log loses its last two records, which the witness knows were durable.
    let cut = offsets[last as usize - 2];
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(cut)
        .unwrap();
    // The log and the witness are the truth; sled's files (derived) are not compared.
    let truth = |dir: &Path| {
        let mut files = files_of(dir);
        files.retain(|path, _| {
            !path.starts_with(dir.join(layout::SLED_DIR)) && !path.ends_with(layout::LOCK_FILE)
        });
        files
    };
    let files_before = truth(dir.path());
    let err = Journal::open(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{text}");
    assert!(
        text.contains(&format!("ends at seq {}", last - 2))
            && text.contains(&format!("byte {cut}"))
            && text.contains(&format!("seq {last} was"))
            && text.contains("--salvage"),
        "{text}"
    );
    assert!(
        files_before == truth(dir.path()),
        "a failed open changed the log or the witness"
    );
    // Salvage prints every record the log still holds.
    let mut out = Vec::new();
    let report = tryswap_journal::salvage(dir.path(), &mut out).unwrap();
    assert_eq!(report.records, last - 2);
    assert_eq!(out.iter().filter(|b| **b == b'\n').count() as u64, last - 2);
}

#[test]
fn a_flipped_byte_in_the_log_before_the_durable_point_is_named_and_salvage_stops_there() {
    let dir = tempfile::tempdir().unwrap();
    let last = populated(dir.path());
    let expected = all_records(&Journal::open(dir.path()).unwrap());
    let segment = tryswap_journal::segment_log::segment_path(dir.path(), 1);
    let offsets = record_offsets(dir.path());
    let mut bytes = fs::read(&segment).unwrap();
    bytes[offsets[4] as usize + 20] ^= 0x08;
    fs::write(&segment, &bytes).unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{text}");
    assert!(
        text.contains("seq 5") && text.contains(&format!("byte {}", offsets[4])),
        "{text}"
    );
    let mut salvaged = Vec::new();
    let report = tryswap_journal::salvage_with(dir.path(), |r| {
        salvaged.push(r.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(salvaged, expected[..4]);
    assert!(report.unreadable[0].contains("seq 5"), "{report:?}");
    assert!(last > 5);
}

#[test]
fn an_unflushed_tail_of_the_log_is_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let journal = Journal::open(dir.path()).unwrap();
        full_activate(&journal, &slot_name(0), ReloadId::from_u128(1), 1);
        all_records(&journal)
    };
    let segment = tryswap_journal::segment_log::segment_path(dir.path(), 1);
    // Half a frame after the last durable point, as a crash in the middle of a write leaves.
    let mut f = fs::OpenOptions::new().append(true).open(&segment).unwrap();
    std::io::Write::write_all(&mut f, &[0x40, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let len = fs::metadata(&segment).unwrap().len();
    assert_healed(dir.path(), &expected, false, "torn tail");
    assert_eq!(fs::metadata(&segment).unwrap().len(), len - 7);
}

/// What a power loss on ext4 leaves when a record was appended after the last durable point:
/// the segment's new size reached the disk, its bytes did not (zeros). Read-only commands
/// (`journal verify` opens for inspection, which cuts nothing) must not call that corrupt:
/// the next open for writing cuts it, as above (tests/tests/power_loss.rs found this).
#[test]
fn verify_without_a_writer_accepts_an_unflushed_tail_and_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path()).unwrap();
        full_activate(&journal, &slot_name(0), ReloadId::from_u128(1), 1);
    }
    let segment = tryswap_journal::segment_log::segment_path(dir.path(), 1);
    let mut f = fs::OpenOptions::new().append(true).open(&segment).unwrap();
    std::io::Write::write_all(&mut f, &[0; 24]).unwrap();
    drop(f);
    let len = fs::metadata(&segment).unwrap().len();
    let journal = Journal::open_for_inspection(dir.path()).unwrap();
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    drop(journal);
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        len,
        "inspection cut the log"
    );
}

#[test]
fn deleting_the_last_events_behind_the_journals_back_is_healed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let last = populated(dir.path());
    let expected = all_records(&Journal::open(dir.path()).unwrap());
    {
        let db = sled_of(dir.path());
        let events = db.open_tree(layout::EVENTS).unwrap();
        events.remove(seq_key(last)).unwrap();
        events.remove(seq_key(last - 1)).unwrap();
        db.flush().unwrap();
    }
    assert_healed(dir.path(), &expected, true, "deleted events");
    let notes = fs::read_to_string(dir.path().join(tryswap_journal::REBUILDS_FILE)).unwrap();
    assert!(notes.contains(&format!("seq {last}")), "{notes}");
}

#[test]
fn a_replaced_record_in_sled_is_healed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let last = populated(dir.path());
    let expected = all_records(&Journal::open(dir.path()).unwrap());
    {
        // Same seq, different content, valid CRC: the chain value differs from the log's.
        let db = sled_of(dir.path());
        let events = db.open_tree(layout::EVENTS).unwrap();
        let mut r =
            tryswap_journal::decode_record(&events.get(seq_key(last)).unwrap().unwrap()).unwrap();
        r.at = at(999);
        let bytes = tryswap_journal::encode_record(&r).unwrap();
        let chain = tryswap_journal::stored_chain(&bytes).unwrap();
        events.insert(seq_key(last), bytes).unwrap();
        let meta = db.open_tree(layout::META).unwrap();
        meta.insert(
            "last_chain",
            tryswap_journal::codec::encode("chain", &chain).unwrap(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    assert_healed(dir.path(), &expected, true, "replaced record");
}

#[test]
fn a_newer_journal_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = sled_of(dir.path());
        db.open_tree(layout::META)
            .unwrap()
            .insert(
                "format",
                tryswap_journal::codec::encode("format", &9u16).unwrap(),
            )
            .unwrap();
        db.flush().unwrap();
    }
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, JournalError::Format { found: 9, .. }),
        "{err}"
    );
}

#[test]
fn a_second_open_in_this_process_fails_after_a_bounded_wait_naming_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let started = Instant::now();
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(started.elapsed() >= OWN_RELEASE_WAIT);
    assert!(started.elapsed() < OWN_RELEASE_WAIT + Duration::from_secs(2));
    match &err {
        JournalError::Locked { dir: d, pid } => {
            assert_eq!(d, dir.path());
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("{other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    assert!(Journal::open_for_inspection(dir.path()).is_err());
    drop(journal);
    Journal::open(dir.path()).unwrap();
}

/// A journal of this process that another thread is still dropping (for example a write
/// that finishes on a blocking thread after its reload was cancelled) does not make the next
/// open fail: the open waits for the lock to go.
#[test]
fn an_open_waits_for_a_journal_this_process_is_still_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    assert_reopens_while_another_thread_drops(dir.path(), journal);
}

/// Opens the journal in `dir` while another thread still holds `journal` and drops it a
/// moment after the open began: the open must wait for it, not fail "locked".
fn assert_reopens_while_another_thread_drops(dir: &Path, journal: Journal) {
    let (opening_tx, opening_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        // Let go only once the main thread is about to open, so the open finds it held.
        opening_rx.recv().unwrap();
        std::thread::sleep(OWN_RELEASE_WAIT / 4);
        drop(journal);
    });
    opening_tx.send(()).unwrap();
    let reopened = Journal::open(dir);
    holder.join().unwrap();
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

/// The process that took the lock died, but a child it was forking still holds the lock's
/// descriptor until its `exec` closes it (plugins are forked by the journal's holder): the
/// next open waits for it instead of failing "locked by <dead pid>". Simulated here by a
/// holder whose lock file names a process that has exited.
#[test]
fn an_open_waits_for_a_lock_whose_taker_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut exited = Process::new("true").spawn().unwrap();
    exited.wait().unwrap();
    fs::write(
        dir.path().join(layout::LOCK_FILE),
        format!("{}\n", exited.id()),
    )
    .unwrap();
    assert_reopens_while_another_thread_drops(dir.path(), journal);
}

const CHILD_ENV: &str = "TRYSWAP_JOURNAL_TEST_LOCK_DIR";

/// Not a test on its own: the child process of `another_process_holding_the_lock_...`.
#[test]
#[ignore]
fn lock_holder_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let _journal = Journal::open(Path::new(&dir)).unwrap();
    println!("HOLDING-LOCK");
    // Hold the lock until the parent closes our stdin.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn another_process_holding_the_lock_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let child = Process::new(exe)
        .args([
            "--ignored",
            "--exact",
            "lock_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let stdout = child.0.stdout.take().unwrap();
    // Wait (bounded) for the child to say it holds the lock.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("HOLDING-LOCK") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("child did not take the lock");
    let started = Instant::now();
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(err, JournalError::Locked { pid: Some(p), .. } if p == pid),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("process {pid}")), "{err}");
    // When the holder goes away, the lock goes with it.
    drop(child.0.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.0.try_wait().unwrap() {
            Some(_) => break,
            None if Instant::now() > deadline => panic!("child did not exit"),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Journal::open(dir.path()).unwrap();
}

type Damage = Box<dyn Fn(&Path)>;

#[test]
fn damaged_sled_files_are_rebuilt_from_the_log_never_a_panic() {
    let template = tempfile::tempdir().unwrap();
    populated(template.path());
    let expected = all_records(&Journal::open(template.path()).unwrap());
    let data = template.path().join(layout::SLED_DIR).join("db");
    let len = fs::metadata(&data).unwrap().len() as usize;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "conf garbage",
            Box::new(|sled: &Path| fs::write(sled.join("conf"), b"\x00\x01garbage").unwrap()),
        ),
        (
            "data truncated",
            Box::new(move |sled: &Path| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(sled.join("db"))
                    .unwrap();
                f.set_len((len / 3) as u64).unwrap();
            }),
        ),
        (
            "data overwritten",
            Box::new(move |sled: &Path| {
                let mut bytes = fs::read(sled.join("db")).unwrap();
                for b in bytes.iter_mut().skip(len / 4).take(len / 2) {
                    *b ^= 0x5a;
                }
                fs::write(sled.join("db"), bytes).unwrap();
            }),
        ),
        (
            "data emptied",
            Box::new(|sled: &Path| fs::write(sled.join("db"), b"").unwrap()),
        ),
    ];
    for (name, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        damage(&dir.path().join(layout::SLED_DIR));
        let outcome = std::panic::catch_unwind(|| Journal::open(dir.path()).map(|_| ()));
        let result = outcome.unwrap_or_else(|_| panic!("{name}: a panic escaped Journal::open"));
        // Every damage here loses records or makes sled refuse its files: the open derives
        // sled again from the log, and nothing durable is lost.
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_healed(dir.path(), &expected, false, name);
    }
}

/// The records a compaction drops leave the log only once they are in the archive: a
/// compaction that cannot write its archive (here `archive` is a file; a full disk does the
/// same) changes nothing, and a later one archives them. Before, the new segment came first:
/// the failed archive left the dropped records only in superseded segments, which no read
/// shows and the next compaction removed. A crash or a power loss between the two did the
/// same (found while writing tests/tests/power_loss.rs).
#[test]
fn a_compaction_whose_archive_fails_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let slot = slot_name(0);
    let journal = Journal::open(dir.path()).unwrap();
    full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
    // Three dry runs: terminal, so a compaction keeping none drops them.
    for n in 2..=4u8 {
        for command in dry_run(&slot, ReloadId::from_u128(n.into()), n) {
            journal.execute(&command, at(n.into())).unwrap();
        }
    }
    let everything: Vec<u64> = all_records(&journal).iter().map(|r| r.seq).collect();
    let archive = dir.path().join(tryswap_journal::archive::ARCHIVE_DIR);
    fs::write(&archive, b"not a directory").unwrap();
    let failed = journal.compact(0);
    assert!(failed.is_err(), "the archive cannot be written: {failed:?}");
    drop(journal);
    fs::remove_file(&archive).unwrap();

    let journal = Journal::open(dir.path()).unwrap();
    journal.compact(0).unwrap();
    let mut kept: Vec<u64> = all_records(&journal).iter().map(|r| r.seq).collect();
    for entry in fs::read_dir(&archive).into_iter().flatten() {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let record: tryswap_journal::Record = serde_json::from_str(line).unwrap();
            kept.push(record.seq);
        }
    }
    kept.sort_unstable();
    kept.dedup();
    assert_eq!(
        kept, everything,
        "records lost between the log and the archive"
    );
}

#[test]
fn compaction_can_drop_the_last_record_and_the_journal_reopens_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let slot = slot_name(2);
    let dry_run = |n: u128| dry_run(&slot, ReloadId::from_u128(100 + n), n as u8);
    {
        let journal = Journal::open(dir.path()).unwrap();
        full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
        for n in 0..4 {
            for c in dry_run(n) {
                journal.execute(&c, at(n as usize)).unwrap();
            }
        }
        assert_eq!(journal.last_seq(), 25);
        let slot_before = journal.slot(&slot).unwrap();
        let report = journal.compact(1).unwrap();
        assert_eq!(report.reloads_dropped, 3);
        assert_eq!(report.events_dropped, 15);
        assert_eq!(report.events_kept, 10);
        assert_eq!(journal.events(0).count(), 10);
        assert_eq!(report.base_seq, 25);
        assert_eq!(journal.slot(&slot).unwrap(), slot_before);
        // The newest dry run and the active generation's reload stay.
        let kept: Vec<u128> = journal
            .reloads_of(&slot)
            .unwrap()
            .iter()
            .map(|v| v.reload.id.as_u128())
            .collect();
        assert_eq!(kept, [1, 103]);
        assert!(journal.verify().unwrap().is_ok());
        assert!(matches!(
            journal.replay(24),
            Err(JournalError::Compacted {
                requested: 24,
                base: 25
            })
        ));
        let mut out = Vec::new();
        assert_eq!(journal.export(&mut out).unwrap().records, 10);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 10);
    }
    // Reopen: the witness names seq 25, whose record is gone; the base vouches for it.
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.last_seq(), 25);
    for c in dry_run(9) {
        journal.execute(&c, at(30)).unwrap();
    }
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    assert_eq!(report.base_seq, 25);
    assert_eq!(journal.replay(27).unwrap().seq, 27);
    drop(journal);
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.last_seq(), 30);
}

#[test]
fn export_writes_one_json_object_per_record() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let journal = Journal::open(dir.path()).unwrap();
    let mut out = Vec::new();
    let report = journal.export(&mut out).unwrap();
    assert_eq!(report.records, 15);
    assert!(report.unreadable.is_empty());
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 15);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["slot"], "slot-0");
    assert_eq!(lines[0]["format"], tryswap_journal::RECORD_FORMAT);
    // Written without an origin: actor unknown, no reason.
    assert_eq!(lines[0]["actor"]["kind"], "unknown", "{}", lines[0]);
    assert!(lines[0]["reason"].is_null(), "{}", lines[0]);
    assert!(lines[0]["event"]["staged"].is_object(), "{}", lines[0]);
    assert_eq!(lines[4]["event"], "activated");
    // Each line is the record itself.
    let back: tryswap_journal::Record = serde_json::from_value(lines[4].clone()).unwrap();
    assert_eq!(back, journal.events(5).next().unwrap().unwrap());
}

#[test]
fn inspection_needs_an_existing_journal() {
    let dir = tempfile::tempdir().unwrap();
    let err = Journal::open_for_inspection(&dir.path().join("nothing")).unwrap_err();
    assert!(matches!(err, JournalError::Missing(_)), "{err}");
    assert!(!dir.path().join("nothing").exists());
}

/// Bytes of sled's files (the store only, not the journal's other files).
fn store_bytes(dir: &Path) -> u64 {
    files_of(&dir.join(layout::SLED_DIR))
        .values()
        .map(|bytes| bytes.len() as u64)
        .sum()
}

/// A journal with `cycles` dry runs on one slot after one activate, compacted to keep one.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn compacted_journal(dir: &Path, cycles: u128) -> (Entries, u64) {
    let slot = slot_name(3);
    let journal = Journal::open(dir).unwrap();
    full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
    for n in 0..cycles {
        let id = ReloadId::from_u128(1000 + n);
        let commands = [
            Command::Stage {
                reload: id,
                slot: slot.clone(),
                mode: Mode::DryRun,
                artifact: artifact((n % 200) as u8),
            },
            Command::RecordLaunch {
                reload: id,
                process: Some(process(5000 + n as u32)),
                log_path: Some(format!("logs/demo/{n}.log")),
            },
            Command::RecordHandshake {
                reload: id,
                endpoint: Some(endpoint(41000)),
            },
            Command::RecordProbe { reload: id },
            Command::PassDryRun { reload: id },
        ];
        journal.execute_all(&commands, at(n as usize)).unwrap();
    }
    let report = journal.compact(1).unwrap();
    assert_eq!(report.reloads_dropped as u128, cycles - 1);
    assert!(dir.join("rewrite-wanted").exists());
    let last = journal.last_seq();
    drop(journal);
    (tree_contents(dir, "events"), last)
}

#[test]
fn the_store_is_rewritten_after_compaction_and_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (events_before, last) = compacted_journal(dir.path(), 2000);
    let slots_before = tree_contents(dir.path(), "slots");
    let bloated = store_bytes(dir.path());

    let journal = Journal::open(dir.path()).unwrap();
    assert!(!dir.path().join("rewrite-wanted").exists());
    assert!(!dir.path().join("sled.old").exists());
    assert!(!dir.path().join("sled.rewrite").exists());
    assert_eq!(journal.last_seq(), last);
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    drop(journal);
    let rewritten = store_bytes(dir.path());
    assert!(
        rewritten * 4 < bloated,
        "the store did not shrink: {bloated} bytes before, {rewritten} after"
    );
    assert_eq!(tree_contents(dir.path(), "events"), events_before);
    assert_eq!(tree_contents(dir.path(), "slots"), slots_before);
    // And it goes on: a new reload after the rewrite.
    let journal = Journal::open(dir.path()).unwrap();
    full_activate(&journal, &slot_name(3), ReloadId::from_u128(9), 9);
    assert!(journal.verify().unwrap().is_ok());
}

#[test]
fn an_interrupted_rewrite_is_undone_or_finished_on_the_next_open() {
    // Each case: what a crash left beside (or instead of) `sled/`.
    for case in ["half-copied", "between-renames", "after-renames"] {
        let dir = tempfile::tempdir().unwrap();
        let (events_before, last) = compacted_journal(dir.path(), 50);
        let sled_dir = dir.path().join(layout::SLED_DIR);
        match case {
            "half-copied" => {
                fs::create_dir_all(dir.path().join("sled.rewrite")).unwrap();
                fs::write(dir.path().join("sled.rewrite/db"), b"partial garbage").unwrap();
            }
            "between-renames" => {
                fs::rename(&sled_dir, dir.path().join("sled.old")).unwrap();
                fs::create_dir_all(dir.path().join("sled.rewrite")).unwrap();
                fs::write(dir.path().join("sled.rewrite/db"), b"never finished").unwrap();
            }
            "after-renames" => {
                copy_dir(&sled_dir, &dir.path().join("sled.old"));
                fs::write(dir.path().join("sled.old/db"), b"the old store").unwrap();
            }
            _ => unreachable!(),
        }
        let journal = Journal::open(dir.path()).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(journal.last_seq(), last, "{case}");
        assert!(journal.verify().unwrap().is_ok(), "{case}");
        drop(journal);
        for leftover in ["sled.old", "sled.rewrite", "rewrite-wanted"] {
            assert!(
                !dir.path().join(leftover).exists(),
                "{case}: {leftover} is still there"
            );
        }
        assert_eq!(tree_contents(dir.path(), "events"), events_before, "{case}");
    }
}

#[test]
fn a_failed_sync_fails_the_handle_for_every_later_write_and_drop_does_not_sync() {
    let dir = tempfile::tempdir().unwrap();
    let slot = slot_name(1);
    let journal = Journal::open(dir.path()).unwrap();
    full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
    assert!(journal.failure().is_none());
    let first = journal.fail("fdatasync of the data file: Input/output error (os error 5)");
    assert!(matches!(first, JournalError::Failed { .. }), "{first}");
    assert!(journal.failure().is_some_and(|c| c.contains("os error 5")));
    let stop = Command::Stop {
        slot: slot.clone(),
        generation: tryswap_fsm::Generation(1),
        reason: Reason::cancelled("stopped by operator"),
    };
    let last = journal.last_seq();
    let err = journal.execute(&stop, at(9)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, JournalError::Failed { .. }), "{text}");
    assert!(
        text.contains(&dir.path().display().to_string()) && text.contains("reopened"),
        "{text}"
    );
    assert_eq!(journal.last_seq(), last, "a failed journal wrote a record");
    // A retried sync proves nothing: flush refuses too.
    assert!(matches!(journal.flush(), Err(JournalError::Failed { .. })));
    // Dropping a failed handle neither syncs nor panics (sled panics if its last sync fails).
    drop(journal);
}

#[test]
fn a_stop_is_durable_before_execute_returns() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let slot = slot_name(1);
    full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
    let before = journal.flush_count();
    journal
        .execute(
            &Command::Stop {
                slot: slot.clone(),
                generation: tryswap_fsm::Generation(1),
                reason: Reason::cancelled("stopped by operator"),
            },
            at(9),
        )
        .unwrap();
    assert_eq!(
        journal.flush_count(),
        before + 1,
        "Stopped is a write-ahead point"
    );
}

#[test]
fn a_reader_of_the_snapshot_reads_the_history_from_the_log_up_to_the_snapshot() {
    use tryswap_journal::{JournalStore, Snapshot, SnapshotStore};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let journal = Journal::open(&dir).unwrap();
    let slot = slot_name(0);
    for n in 1..=6u8 {
        full_activate(&journal, &slot, ReloadId::from_u128(u128::from(n)), n);
        if n > 1 {
            let retire = Command::Retire {
                slot: slot.clone(),
                generation: tryswap_fsm::Generation(u64::from(n - 1)),
            };
            journal.execute(&retire, at(0)).unwrap();
        }
        if n == 4 {
            // The base carries the (trimmed) history; the log's records add to it.
            journal.compact(1).unwrap();
        }
    }
    journal.flush().unwrap();
    let snapshot = Snapshot::load(&dir).unwrap().unwrap();
    assert_eq!(snapshot.seq, journal.last_seq());
    let store = SnapshotStore::new(&dir, snapshot);
    let history = journal.history(&slot).unwrap();
    let generations: Vec<u64> = history.keys().map(|g| g.0).collect();
    assert_eq!(generations, [3, 4, 5, 6]);
    assert_eq!(store.history(&slot).unwrap(), history);
    assert_eq!(
        store
            .history_entry(&slot, tryswap_fsm::Generation(5))
            .unwrap(),
        history.get(&tryswap_fsm::Generation(5)).cloned()
    );
    // A reload staged after the snapshot's durable point is not in the snapshot's answer.
    let stage = Command::Stage {
        reload: ReloadId::from_u128(99),
        slot: slot.clone(),
        mode: Mode::Activate,
        artifact: artifact(9),
    };
    journal.execute(&stage, at(1)).unwrap();
    assert_eq!(store.history(&slot).unwrap(), history);
    assert!(store.history(&slot_name(7)).unwrap().is_empty());
}

/// The highest seq the witness file records (either of its two slots).
fn witness_seq(dir: &Path) -> u64 {
    let bytes = fs::read(dir.join(layout::WITNESS_FILE)).unwrap();
    bytes
        .chunks(32)
        .filter(|slot| slot.len() == 32 && slot.starts_with(b"TSWJWIT1"))
        .map(|slot| u64::from_be_bytes(slot[8..16].try_into().unwrap()))
        .max()
        .unwrap_or(0)
}

/// A one-shot command's last flush (`flush_for_exit`, then the process exits without closing
/// the journal): the records after the last write-ahead point become durable (the witness
/// reaches the tip) without counting as a write-ahead flush, and a journal left open that way
/// opens complete and verifies.
#[test]
fn a_journal_left_open_after_its_exit_flush_opens_complete() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let slot = slot_name(0);
    assert_eq!(full_activate(&journal, &slot, ReloadId::from_u128(1), 1), 1);
    assert_eq!(full_activate(&journal, &slot, ReloadId::from_u128(2), 2), 1);
    let retire = Command::Retire {
        slot: slot.clone(),
        generation: tryswap_fsm::Generation(1),
    };
    journal.execute(&retire, at(9)).unwrap();
    let tip = journal.last_seq();
    assert!(
        witness_seq(dir.path()) < tip,
        "the retire is after the last durable point"
    );
    journal.flush_for_exit().unwrap();
    assert_eq!(witness_seq(dir.path()), tip);
    assert_eq!(
        journal.flush_count(),
        2,
        "the exit flush is not a write-ahead point"
    );
    // What another process finds once this one has exited with the journal still open.
    let after_exit = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), after_exit.path());
    std::mem::forget(journal);
    let reopened = Journal::open(after_exit.path()).unwrap();
    assert_eq!(reopened.last_seq(), tip);
    assert!(reopened.verify().unwrap().is_ok());
    let slot_view = reopened.slot(&slot).unwrap().unwrap();
    assert!(slot_view.slot.retiring.is_empty(), "{:?}", slot_view.slot);
}

/// The snapshot keeps the 100 newest reloads of every slot: a slot with a long history does
/// not crowd out the older reloads of another (the scan goes on until every slot has its
/// newest, reading only the slot name of the reloads it skips).
#[test]
fn the_snapshot_keeps_the_newest_reloads_of_every_slot() {
    use tryswap_fsm::SlotName;
    use tryswap_journal::Snapshot;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let (quiet, busy) = (slot_name(1), slot_name(2));
    for n in 1..=3u8 {
        full_activate(&journal, &quiet, ReloadId::from_u128(u128::from(n)), n);
    }
    for n in 1..=150u32 {
        let id = ReloadId::from_u128(1000 + u128::from(n));
        full_activate(&journal, &busy, id, n as u8);
    }
    journal.flush().unwrap();
    let snapshot = Snapshot::load(dir.path()).unwrap().unwrap();
    let ids = |slot: &SlotName| -> Vec<u128> {
        snapshot
            .reloads
            .iter()
            .filter(|r| &r.reload.slot == slot)
            .map(|r| r.reload.id.as_u128())
            .collect()
    };
    assert_eq!(ids(&quiet), [1, 2, 3]);
    assert_eq!(ids(&busy), (1051..=1150).collect::<Vec<u128>>());
}

/// Issue 18 item 14: compaction bounds what sled keeps in memory, not only its keys. It
/// removes the dropped records from the left of the `events` tree; sled merges
/// the emptied leaves and reuses their page ids, so the tree's nodes and the page table stay
/// the same size however many records the open journal compacted away (a daemon never
/// reopens it). Suspected of the daemon's slow RSS rise (docs/performance.md, section 5c):
/// sled would then keep a page per ~9 records. Fails if compaction leaves the dropped keys.
#[test]
fn sled_keeps_a_bounded_tree_across_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let slot = slot_name(1);
    let mut next = 0u128;
    let mut settled = None;
    for cycle in 0..12 {
        for _ in 0..60 {
            next += 1;
            let commands = dry_run(&slot, ReloadId::from_u128(next), (next % 200) as u8);
            journal.execute_all(&commands, at(0)).unwrap();
        }
        journal.compact(20).unwrap();
        let (nodes, max_pid) = journal.events_tree_pages();
        assert!(
            nodes > 0 && max_pid > 0,
            "sled's Debug changed: {nodes}, {max_pid}"
        );
        let &mut (first_nodes, first_max) = settled.get_or_insert((nodes, max_pid));
        // Unbounded, each cycle would add ~30 nodes (300 records) and their page ids.
        assert!(
            nodes <= first_nodes + 4 && max_pid <= first_max + first_max / 2,
            "cycle {cycle}, {} records: {nodes} nodes and page ids up to {max_pid}, against \
             {first_nodes} and {first_max} after the first compaction",
            journal.last_seq()
        );
    }
}

/// The backlog (`docs/journal.md` "Writing"): a write returns before sled's trees take it
/// in; a copy of the directory taken right then (a power loss, a disk snapshot) still
/// holds every durable record, and reads it after catching sled up from the log.
#[test]
fn a_copy_taken_right_after_a_durable_write_of_a_new_journal_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    full_activate(&journal, &slot_name(0), ReloadId::from_u128(1), 1);
    let expected = all_records(&journal);
    // Taken while the handle is open, before the indexer's first batch (it waits 50 ms).
    for entry in fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let to = copy.path().join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else if entry.file_name() != "journal.lock" {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
    let inspected = Journal::open_for_inspection(copy.path()).unwrap();
    let report = inspected.verify().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    assert_eq!(all_records(&inspected), expected);
    drop(inspected);
    // A writable open catches up too, without deriving sled again.
    let reopened = Journal::open(copy.path()).unwrap();
    assert!(reopened.rebuilt().is_none(), "{:?}", reopened.rebuilt());
    assert_eq!(all_records(&reopened), expected);
    drop(journal);
}

/// Reads see a write as soon as it returns, whether sled's trees took it in yet or not,
/// and what the indexer folds in later is the same.
#[test]
fn reads_see_every_write_before_and_after_the_indexer_folds_it_in() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let slot = slot_name(0);
    full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
    let last = journal.last_seq();
    let before = (
        journal.slots().unwrap(),
        journal.reloads_of(&slot).unwrap(),
        journal.history(&slot).unwrap(),
        all_records(&journal),
    );
    assert_eq!(before.3.last().map(|r| r.seq), Some(last));
    assert_eq!(before.0.len(), 1);
    assert_eq!(before.1.len(), 1);
    assert_eq!(before.2.len(), 1);
    // `events` from the middle of what may still wait in the backlog.
    let tail: Vec<u64> = journal.events(3).map(|r| r.unwrap().seq).collect();
    assert_eq!(tail, (3..=last).collect::<Vec<_>>());
    // verify settles the backlog first, and finds sled equal to the log.
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    let after = (
        journal.slots().unwrap(),
        journal.reloads_of(&slot).unwrap(),
        journal.history(&slot).unwrap(),
        all_records(&journal),
    );
    assert_eq!(after, before);
    // sled's own trees hold everything once the handle is closed.
    drop(journal);
    let reopened = Journal::open(dir.path()).unwrap();
    assert_eq!(all_records(&reopened), before.3);
    assert_eq!(reopened.slots().unwrap(), before.0);
}
