//! The journal served from its log alone (`LogJournal`, what one-shot commands open) on
//! disk: sled catches up with what it wrote without a rebuild, `open_for_command` bounds
//! how far sled may lag, and a damaged log is refused as `Journal::open` refuses it.

mod common;

use common::*;
use proptest::prelude::*;
use tryswap_fsm::ReloadId;
use tryswap_journal::index_mark::{INDEX_LAG_MAX, INDEX_MARK_FILE};
use tryswap_journal::segment_log::segment_path;
use tryswap_journal::{open_for_command, Journal, JournalError, JournalStore, LogJournal};

/// Whether `open_for_command` gave the store served from the log alone.
fn is_log_only(journal: &dyn JournalStore) -> bool {
    format!("{journal:?}").starts_with("LogJournal")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Writes through sled, then the log alone, then sled again give the records and
    /// projections of writes through sled only; sled catches up with the log's records
    /// without being derived again, and verifies clean.
    #[test]
    fn sled_catches_up_with_what_the_log_store_wrote(
        first in intents(40),
        middle in intents(40),
        last in intents(20),
    ) {
        let reference = tempfile::tempdir().unwrap();
        let mut expected = Driver::default();
        {
            let journal = Journal::open(reference.path()).unwrap();
            for part in [&first, &middle, &last] {
                expected.run(&journal, part);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut driver = Driver::default();
        {
            let journal = Journal::open(dir.path()).unwrap();
            driver.run(&journal, &first);
        }
        {
            let journal = LogJournal::open(dir.path()).unwrap();
            driver.run(&journal, &middle);
            prop_assert!(journal.verify().unwrap().is_ok());
        }
        let journal = Journal::open(dir.path()).unwrap();
        prop_assert!(journal.rebuilt().is_none(), "{:?}", journal.rebuilt());
        driver.run(&journal, &last);
        prop_assert_eq!(&driver.records, &expected.records);
        let reference = Journal::open_for_inspection(reference.path());
        drop(journal);
        let journal = Journal::open_for_inspection(dir.path()).unwrap();
        let reference = reference.unwrap();
        prop_assert_eq!(journal.slots().unwrap(), reference.slots().unwrap());
        prop_assert_eq!(
            journal.replay(u64::MAX).unwrap(),
            reference.replay(u64::MAX).unwrap()
        );
        let report = journal.verify().unwrap();
        prop_assert!(report.is_ok(), "{report:?}");
    }
}

#[test]
fn a_command_leaves_sled_closed_only_while_it_lags_the_log_by_a_bounded_amount() {
    let dir = tempfile::tempdir().unwrap();
    let slot = slot_name(0);
    // A new journal needs sled (it creates it); its close marks sled's end.
    let journal = open_for_command(dir.path()).unwrap();
    assert!(!is_log_only(&*journal), "{journal:?}");
    full_activate(&*journal, &slot, ReloadId::from_u128(1), 1);
    drop(journal);
    let marked = std::fs::read_to_string(dir.path().join(INDEX_MARK_FILE)).unwrap();
    assert_eq!(marked.trim(), "5");

    // Then commands leave sled closed until it lags by more than INDEX_LAG_MAX records.
    let mut id = 2u128;
    // 250 records per command: sled must be opened by the tenth.
    for command in 0.. {
        assert!(command < 10, "sled was never opened again");
        let journal = open_for_command(dir.path()).unwrap();
        let lag = journal.last_seq() - 5;
        if !is_log_only(&*journal) {
            assert!(lag > INDEX_LAG_MAX, "sled opened at a lag of {lag}");
            // This command brings sled up to date when it exits.
            full_activate(&*journal, &slot, ReloadId::from_u128(id), id as u8);
            let end = journal.last_seq();
            journal.flush_for_exit().unwrap();
            drop(journal);
            let marked = std::fs::read_to_string(dir.path().join(INDEX_MARK_FILE)).unwrap();
            assert_eq!(marked.trim(), end.to_string());
            break;
        }
        assert!(lag <= INDEX_LAG_MAX, "sled left closed at a lag of {lag}");
        for _ in 0..50 {
            full_activate(&*journal, &slot, ReloadId::from_u128(id), id as u8);
            id += 1;
        }
        drop(journal);
    }
    let journal = open_for_command(dir.path()).unwrap();
    assert!(is_log_only(&*journal), "{journal:?}");
    drop(journal);
    // sled holds everything: nothing to derive again.
    let journal = Journal::open(dir.path()).unwrap();
    assert!(journal.rebuilt().is_none(), "{:?}", journal.rebuilt());
    assert!(journal.verify().unwrap().is_ok());
}

#[test]
fn damage_before_the_durable_point_is_refused_with_its_seq_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path()).unwrap();
        full_activate(&journal, &slot_name(0), ReloadId::from_u128(1), 1);
    }
    let segment = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let err = LogJournal::open(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("seq"), "{err}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "the log was written"
    );
    let err = open_for_command(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
}

#[test]
fn another_holder_of_the_journal_keeps_the_log_store_out() {
    let dir = tempfile::tempdir().unwrap();
    let held = Journal::open(dir.path()).unwrap();
    let err = LogJournal::open(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    let err = open_for_command(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    drop(held);
}

/// The write-ahead points sync the log and the witness and write nothing more; the
/// projection snapshot is written when the holder is done (its exit flush), holding the
/// journal's last record. For both stores a command may open.
#[test]
fn the_snapshot_is_written_by_the_exit_flush_not_at_the_write_ahead_points() {
    use tryswap_journal::Snapshot;
    let dir = tempfile::tempdir().unwrap();
    let slot = slot_name(0);
    let journal = Journal::open(dir.path()).unwrap();
    full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
    assert_eq!(Snapshot::load(dir.path()).unwrap(), None);
    journal.flush_for_exit().unwrap();
    let written = Snapshot::load(dir.path()).unwrap().expect("a snapshot");
    assert_eq!(written.seq, journal.last_seq());
    drop(journal);

    let journal = LogJournal::open(dir.path()).unwrap();
    let before = Snapshot::load(dir.path()).unwrap().expect("a snapshot");
    full_activate(&journal, &slot, ReloadId::from_u128(2), 2);
    assert_eq!(Snapshot::load(dir.path()).unwrap().unwrap().seq, before.seq);
    journal.flush_for_exit().unwrap();
    let written = Snapshot::load(dir.path()).unwrap().expect("a snapshot");
    assert_eq!(written.seq, journal.last_seq());
    assert!(written.seq > before.seq);
}

/// The snapshot is rewritten in place: a reader that meets it half-rewritten (the new
/// snapshot's head over the old one's tail or the reverse, or a writer killed mid-write)
/// finds its CRC broken, does not use it, and reads answer from the log with the journal's
/// state. A snapshot shorter than the file it overwrites cuts the file.
#[test]
fn a_torn_snapshot_is_not_used_and_reads_fold_the_log() {
    use tryswap_journal::{open_for_reading, ReadScope, Snapshot, SNAPSHOT_FILE};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SNAPSHOT_FILE);
    let slot = slot_name(0);
    let journal = Journal::open(dir.path()).unwrap();
    full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
    journal.flush_for_exit().unwrap();
    let old = std::fs::read(&path).unwrap();
    // Junk after the snapshot, as a longer snapshot's tail: the next write cuts it.
    std::fs::write(&path, [old.as_slice(), &[7u8; 4096]].concat()).unwrap();
    full_activate(&journal, &slot, ReloadId::from_u128(2), 2);
    journal.flush_for_exit().unwrap();
    let new = std::fs::read(&path).unwrap();
    let written = Snapshot::load(dir.path())
        .unwrap()
        .expect("the new snapshot");
    assert_eq!(written.seq, journal.last_seq());
    let (slots, last_seq) = (journal.slots().unwrap(), journal.last_seq());
    drop(journal);

    let half = new.len() / 2;
    let tail = |bytes: &[u8]| bytes.get(half..).unwrap_or_default().to_vec();
    let torn = [
        [&new[..half], tail(&old).as_slice()].concat(),
        [old.get(..half).unwrap_or(&old), tail(&new).as_slice()].concat(),
        new[..new.len() - 1].to_vec(),
        new[..half].to_vec(),
        Vec::new(),
    ];
    for bytes in torn {
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            Snapshot::load(dir.path()).unwrap(),
            None,
            "{} bytes",
            bytes.len()
        );
        let reader = open_for_reading(dir.path(), ReadScope::Current).unwrap();
        assert!(!format!("{reader:?}").starts_with("SnapshotStore"));
        assert_eq!(reader.slots().unwrap(), slots);
        assert_eq!(reader.last_seq(), last_seq);
    }
    std::fs::write(&path, &new).unwrap();
    let reader = open_for_reading(dir.path(), ReadScope::Current).unwrap();
    assert!(format!("{reader:?}").starts_with("SnapshotStore"));
    assert_eq!(reader.slots().unwrap(), slots);
}

/// What a power loss leaves after a one-shot command: sled behind the log (the command
/// left it closed), every record the witness names in the log, and a torn write after
/// them. Inspection catches sled up with the intact records and verifies clean: the torn
/// tail is after the durable point, so nothing acknowledged is missing.
#[test]
fn inspection_catches_sled_up_to_a_torn_tail_after_the_durable_point() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let slot = slot_name(0);
    {
        let journal = Journal::open(dir.path()).unwrap();
        full_activate(&journal, &slot, ReloadId::from_u128(1), 1);
    }
    let durable = {
        let journal = LogJournal::open(dir.path()).unwrap();
        full_activate(&journal, &slot, ReloadId::from_u128(2), 2);
        journal.last_seq()
    };
    // A frame cut short by the power loss: bytes after the last good frame.
    std::fs::OpenOptions::new()
        .append(true)
        .open(segment_path(dir.path(), 1))
        .unwrap()
        .write_all(&[0xAB; 37])
        .unwrap();
    let journal = Journal::open_for_inspection(dir.path()).unwrap();
    assert_eq!(journal.last_seq(), durable);
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(journal.events(1).count() as u64, durable);
}
