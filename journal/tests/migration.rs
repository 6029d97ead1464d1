//! A journal written by an earlier tryswap opens with this build: the fixture
//! `tests/fixtures/journal-format1-main-e196fe3.tar.gz` was made by main at e196fe3 (four
//! activations, a rollback and a stop of the fixture plugin; sled only, with the witness
//! file), and its `journal export` is kept beside it.
//! `tests/fixtures/journal-format1-log-main-0dbcd8e.tar.gz` was made by main at 0dbcd8e
//! (segment log, sled in journal format 1 with every slot's history inside its projection,
//! a compaction base): three activations, `journal compact --keep 1`, `rollback --to 2`, an
//! activation and a stop.

use std::path::{Path, PathBuf};

use tryswap_fsm::{Command, Generation, Mode, ReloadId, SlotName};
use tryswap_journal::{
    Journal, LogReader, Record, FORMAT_BACKUP_DIR, MIGRATION_BACKUP_DIR, REBUILDS_FILE,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Unpacks the fixture journal `name` into a fresh directory; returns it and the journal's
/// path.
fn unpack(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixture(&format!("{name}.tar.gz")))
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "tar failed: {status}");
    let journal = dir.path().join("journal");
    (dir, journal)
}

fn expected_records(name: &str) -> Vec<Record> {
    let text = std::fs::read_to_string(fixture(&format!("{name}.jsonl"))).unwrap();
    text.lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            value.as_object_mut().unwrap().remove("schema");
            serde_json::from_value(value).unwrap()
        })
        .collect()
}

#[test]
fn a_journal_written_by_main_e196fe3_opens_verifies_and_keeps_every_record() {
    let name = "journal-format1-main-e196fe3";
    let (_tmp, dir) = unpack(name);
    let expected = expected_records(name);
    assert_eq!(expected.len(), 30);
    for round in 0..2 {
        let journal = Journal::open(&dir).unwrap();
        assert_eq!(journal.last_seq(), 30, "round {round}");
        let report = journal.verify().unwrap();
        assert!(report.is_ok(), "round {round}: {report:?}");
        let stored: Vec<Record> = journal.events(0).map(|r| r.unwrap()).collect();
        assert_eq!(stored, expected, "round {round}");
        let slot = journal
            .slot(&tryswap_fsm::SlotName::new("demo").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            slot.slot.active_generation(),
            Some(tryswap_fsm::Generation(5))
        );
        drop(journal);
        // Converted once: the log holds every record, the old files are kept.
        let (logged, damage) = LogReader::open(&dir).unwrap().records();
        assert_eq!((logged, damage), (expected.clone(), None), "round {round}");
        assert!(dir
            .join(MIGRATION_BACKUP_DIR)
            .join("sled")
            .join("db")
            .is_file());
        assert!(dir.join(MIGRATION_BACKUP_DIR).join("witness").is_file());
    }
}

#[test]
fn a_journal_written_by_main_0dbcd8e_is_converted_once_to_history_keys_and_keeps_every_record() {
    let name = "journal-format1-log-main-0dbcd8e";
    let (_tmp, dir) = unpack(name);
    let expected = expected_records(name);
    assert_eq!(expected.len(), 24, "the kept records of the fixture");
    let log_before = std::fs::read(dir.join("log").join("00000000000000000018.seg")).unwrap();
    let slot = SlotName::new("demo").unwrap();
    for round in 0..2 {
        let journal = Journal::open(&dir).unwrap();
        assert_eq!(journal.last_seq(), 30, "round {round}");
        // Converted at the first open only (sled's files derived again from the log).
        assert_eq!(journal.rebuilt().is_some(), round == 0, "round {round}");
        let report = journal.verify().unwrap();
        assert!(report.is_ok(), "round {round}: {report:?}");
        let stored: Vec<Record> = journal.events(0).map(|r| r.unwrap()).collect();
        assert_eq!(stored, expected, "round {round}");
        let view = journal.slot(&slot).unwrap().unwrap();
        assert_eq!(view.slot.active_generation(), Some(Generation(5)));
        assert!(!view.slot.active.as_ref().unwrap().running, "stopped");
        // The history as main kept it: generation 1 was trimmed by the compaction.
        let history = journal.history(&slot).unwrap();
        let generations: Vec<u64> = history.keys().map(|g| g.0).collect();
        assert_eq!(generations, [2, 3, 4, 5], "round {round}");
        assert_eq!(journal.history_entry(&slot, Generation(1)).unwrap(), None);
        assert_eq!(
            journal.replay(u64::MAX).unwrap().history[&slot],
            history,
            "round {round}"
        );
        drop(journal);
        // The log is untouched; sled's old files are kept once.
        assert_eq!(
            std::fs::read(dir.join("log").join("00000000000000000018.seg")).unwrap(),
            log_before
        );
        assert!(dir
            .join(FORMAT_BACKUP_DIR)
            .join("sled")
            .join("db")
            .is_file());
        assert!(dir.join(FORMAT_BACKUP_DIR).join("witness").is_file());
    }
    let notes = std::fs::read_to_string(dir.join(REBUILDS_FILE)).unwrap();
    assert_eq!(notes.lines().count(), 1, "{notes}");
    assert!(notes.contains("format 1"), "{notes}");
    // A rollback to a generation of the converted history is decided from its one key.
    let journal = Journal::open(&dir).unwrap();
    let artifact = journal
        .history_entry(&slot, Generation(3))
        .unwrap()
        .unwrap();
    let stage = Command::Stage {
        reload: ReloadId::from_u128(0x01a2_0000_0000_7000_8000_0000_0000_0001),
        slot: slot.clone(),
        mode: Mode::Rollback { to: Generation(3) },
        artifact,
    };
    journal.execute(&stage, chrono::Utc::now()).unwrap();
    assert!(journal.verify().unwrap().is_ok());
}

#[test]
fn a_main_0dbcd8e_journal_read_without_the_lock_first_changes_nothing_and_converts_at_the_first_open(
) {
    let (_tmp, dir) = unpack("journal-format1-log-main-0dbcd8e");
    let before = files_of(&dir);
    let store = tryswap_journal::open_for_reading(&dir, tryswap_journal::ReadScope::Full).unwrap();
    let slot = SlotName::new("demo").unwrap();
    let generations: Vec<u64> = store.history(&slot).unwrap().keys().map(|g| g.0).collect();
    assert_eq!(generations, [2, 3, 4, 5]);
    assert!(store.is_read_only());
    drop(store);
    assert_eq!(files_of(&dir), before, "a read changed the journal");
    let journal = Journal::open(&dir).unwrap();
    assert!(
        dir.join(FORMAT_BACKUP_DIR)
            .join("sled")
            .join("db")
            .is_file(),
        "the first open converts (after a backup)"
    );
    assert_eq!(
        journal
            .history(&slot)
            .unwrap()
            .keys()
            .map(|g| g.0)
            .collect::<Vec<_>>(),
        [2, 3, 4, 5]
    );
    assert!(journal.verify().unwrap().is_ok());
}

/// Every file under `dir` with its bytes.
fn files_of(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}
