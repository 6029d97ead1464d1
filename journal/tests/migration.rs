//! A journal written by an earlier tryswap opens with this build: the fixture
//! `tests/fixtures/journal-format1-main-e196fe3.tar.gz` was made by main at e196fe3 (four
//! activations, a rollback and a stop of the fixture plugin; sled only, with the witness
//! file), and its `journal export` is kept beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use tryswap_journal::{Journal, LogReader, Record, MIGRATION_BACKUP_DIR};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Unpacks the fixture journal into a fresh directory; returns it and the journal's path.
fn unpack() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(fixture("journal-format1-main-e196fe3.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "tar failed: {status}");
    let journal = dir.path().join("journal");
    (dir, journal)
}

fn expected_records() -> Vec<Record> {
    let text = std::fs::read_to_string(fixture("journal-format1-main-e196fe3.jsonl")).unwrap();
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
    let (_tmp, dir) = unpack();
    let expected = expected_records();
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
