//! Lock-free reads straight from the segment log (`read_records`, `replay_log`,
//! `verify_log`) answer what the journal itself answers, while the journal is open (its
//! lock held) and across compaction, and refuse a log damaged before its durable point.

mod common;

use std::path::Path;

use common::*;
use proptest::prelude::*;
use tryswap_fsm::ReloadId;
use tryswap_journal::{
    read_records, replay_log, verify_log, Journal, JournalError, JournalStore, MemoryJournal,
    Record,
};

fn log_records(dir: &Path, from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    read_records(dir, from, |r| {
        out.push(r.clone());
        Ok(())
    })
    .unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_log_answers_as_the_journal_does_while_it_is_held(
        intents in intents(80),
        compact in proptest::option::of(0usize..3),
        until in 0u64..200,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut driver = Driver::default();
        let journal = Journal::open(dir.path()).unwrap();
        driver.run(&journal, &intents);
        if let Some(keep) = compact {
            journal.compact(keep).unwrap();
            full_activate(&journal, &slot_name(SLOTS), ReloadId::from_u128(1 << 100), 1);
        }
        journal.flush().unwrap();
        // The journal stays open: its lock is held while the log is read.
        let stored: Vec<Record> = journal.events(0).map(|r| r.unwrap()).collect();
        prop_assert_eq!(log_records(dir.path(), 0), stored.clone());
        let from = until.max(1);
        let tail: Vec<Record> = stored.iter().filter(|r| r.seq >= from).cloned().collect();
        prop_assert_eq!(log_records(dir.path(), from), tail);
        match (journal.replay(until), replay_log(dir.path(), until)) {
            (Ok(stored), Ok(folded)) => prop_assert_eq!(stored, folded),
            (Err(JournalError::Compacted { base: a, .. }), Err(JournalError::Compacted { base: b, .. })) => {
                prop_assert_eq!(a, b)
            }
            (a, b) => prop_assert!(false, "journal {a:?} but log {b:?}"),
        }
        prop_assert_eq!(
            replay_log(dir.path(), u64::MAX).unwrap(),
            journal.replay(u64::MAX).unwrap()
        );
        // The whole journal read from the log into memory (what `history` reads).
        let loaded = MemoryJournal::from_log(dir.path()).unwrap();
        prop_assert_eq!(loaded.events(0).map(|r| r.unwrap()).collect::<Vec<_>>(), stored);
        prop_assert_eq!(loaded.replay(u64::MAX).unwrap(), journal.replay(u64::MAX).unwrap());
        prop_assert_eq!(loaded.slots().unwrap(), journal.slots().unwrap());
        for view in journal.slots().unwrap() {
            let name = &view.slot.name;
            prop_assert_eq!(loaded.reloads_of(name).unwrap(), journal.reloads_of(name).unwrap());
            prop_assert_eq!(loaded.history(name).unwrap(), journal.history(name).unwrap());
        }
        prop_assert!(loaded.is_read_only());
        let report = verify_log(dir.path()).unwrap();
        prop_assert!(report.is_ok(), "{:#?}", report.problems);
        prop_assert_eq!(report.last_seq, journal.last_seq());
    }
}

#[test]
fn a_log_damaged_before_its_durable_point_is_refused_naming_seq_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path()).unwrap();
        for i in 0..4 {
            full_activate(&journal, &slot_name(0), ReloadId::from_u128(i + 1), i as u8);
        }
    }
    let all = log_records(dir.path(), 0);
    let segment = dir.path().join("log").join(format!("{:020}.seg", 1));
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let mut read = Vec::new();
    let err = read_records(dir.path(), 0, |r| {
        read.push(r.clone());
        Ok(())
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(err.is_corrupt(), "{err:?}");
    let damaged = read.len() as u64 + 1;
    assert!(
        text.contains(&format!("seq {damaged}")) && text.contains("byte "),
        "{text}"
    );
    assert_eq!(read, all[..read.len()]);
    assert!(replay_log(dir.path(), u64::MAX).unwrap_err().is_corrupt());
    let report = verify_log(dir.path()).unwrap();
    assert!(
        report.problems.iter().any(|p| p.seq == Some(damaged)),
        "{report:#?}"
    );
}

#[test]
fn a_frame_cut_after_the_durable_point_ends_the_read_quietly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path()).unwrap();
        full_activate(&journal, &slot_name(0), ReloadId::from_u128(1), 1);
    }
    let all = log_records(dir.path(), 0);
    // Half a frame appended: what a reader sees of a write in progress.
    let segment = dir.path().join("log").join(format!("{:020}.seg", 1));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
    std::fs::write(&segment, &bytes).unwrap();
    assert_eq!(log_records(dir.path(), 0), all);
    assert!(verify_log(dir.path()).unwrap().is_ok());
}
