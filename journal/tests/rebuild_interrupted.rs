//! A rebuild of sled's index that stops half way (a crash, a full disk, a power loss) leaves
//! the old store in place, whole: a reader that opens the journal meanwhile or afterwards
//! sees every durable record, and the next open for writing finishes or redoes the work.
//! (tests/tests/power_loss.rs found a half-derived store, taken during `journal rebuild`,
//! that `journal verify` reported as a lost tail.) Its own test binary: failpoints are
//! global to the process.

mod common;

use common::*;
use tryswap_fsm::ReloadId;
use tryswap_journal::{layout, Journal, Record};

fn records(journal: &Journal) -> Vec<Record> {
    journal.events(0).map(|r| r.unwrap()).collect()
}

#[test]
fn a_rebuild_that_stops_half_way_leaves_the_old_index_whole() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let journal = Journal::open(dir.path()).unwrap();
        for i in 0..3u8 {
            full_activate(
                &journal,
                &slot_name(usize::from(i % 2)),
                ReloadId::from_u128(u128::from(i) + 1),
                i + 1,
            );
        }
        records(&journal)
    };
    assert!(expected.len() > 10);

    fail::cfg("journal-rebuild-batch", "return").unwrap();
    let err = Journal::rebuild(dir.path()).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("journal-rebuild-batch"), "{err}");
    fail::cfg("journal-rebuild-batch", "off").unwrap();

    // sled's own files still hold every record (before, sled was removed first and refilled
    // in place, so this is where a crash left a store holding none of them).
    {
        let db = sled_of(dir.path());
        let events = db.open_tree(layout::EVENTS).unwrap();
        assert_eq!(events.len(), expected.len());
    }
    // What a reader (another process, or the boot after a power loss) finds: the old index,
    // whole, agreeing with the log and the witness.
    {
        let journal = Journal::open_for_inspection(dir.path()).unwrap();
        let report = journal.verify().unwrap();
        assert!(report.is_ok(), "{:#?}", report.problems);
        assert_eq!(records(&journal), expected);
    }
    // The next open for writing drops the half-built store and needs no rebuild.
    let journal = Journal::open(dir.path()).unwrap();
    assert!(journal.rebuilt().is_none(), "{:?}", journal.rebuilt());
    assert_eq!(records(&journal), expected);
    assert!(journal.verify().unwrap().is_ok());
    drop(journal);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("sled."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // And a rebuild that runs to its end gives the same records.
    let journal = Journal::rebuild(dir.path()).unwrap();
    assert!(journal.rebuilt().is_some());
    assert_eq!(records(&journal), expected);
    assert!(journal.verify().unwrap().is_ok());
    scenario.teardown();
}
