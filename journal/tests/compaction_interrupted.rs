//! A compaction removes the records it dropped from sled in bounded batches after its
//! transaction moved the base (issue 18 item 14: one transaction over every dropped record
//! peaked at ~3.5 KiB each, and the daemon's heap kept that peak). A removal that stops
//! part-way (a crash, a sled error) must lose nothing and show no dropped record for good:
//! `verify` accepts the store as it is, the next open for writing derives sled again from
//! the log, and a later compaction in the same process removes what is left. Its own test
//! binary: failpoints are global to the process.

mod common;

use common::*;
use tryswap_fsm::ReloadId;
use tryswap_journal::{layout, Journal, Record};

fn records(journal: &Journal) -> Vec<Record> {
    journal.events(0).map(|r| r.unwrap()).collect()
}

/// `reloads` dry runs of one slot, each a few records: enough that the compaction below
/// drops several removal batches' worth.
fn history(journal: &Journal, reloads: u128, first: u128) {
    let slot = slot_name(1);
    for id in first..first + reloads {
        let commands = dry_run(&slot, ReloadId::from_u128(id), (id % 200) as u8);
        journal.execute_all(&commands, at(0)).unwrap();
    }
}

/// Records whose reload has no projection: what an interrupted removal leaves behind.
fn orphans(journal: &Journal) -> Vec<u64> {
    records(journal)
        .into_iter()
        .filter(|r| journal.reload(&r.reload).unwrap().is_none())
        .map(|r| r.seq)
        .collect()
}

fn purging_mark(dir: &std::path::Path) -> bool {
    let db = sled_of(dir);
    let meta = db.open_tree(layout::META).unwrap();
    meta.get(b"purging").unwrap().is_some()
}

#[test]
fn an_interrupted_removal_is_redone_from_the_log_by_the_next_open() {
    let scenario = fail::FailScenario::setup();
    // The same history compacted without a failure: what every store must end up holding.
    let clean = tempfile::tempdir().unwrap();
    let expected = {
        let journal = Journal::open(clean.path()).unwrap();
        history(&journal, 300, 1);
        let report = journal.compact(10).unwrap();
        assert!(report.events_dropped > 600, "{report:?}");
        records(&journal)
    };

    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path()).unwrap();
        history(&journal, 300, 1);
        fail::cfg("journal-compact-purge", "return").unwrap();
        let err = journal.compact(10).unwrap_err();
        fail::cfg("journal-compact-purge", "off").unwrap();
        assert!(err.to_string().contains("journal-compact-purge"), "{err}");
        // The first batch went, the rest is still there: records of reloads that have no
        // projection any more, below the new base.
        let left = orphans(&journal);
        assert!(!left.is_empty(), "the failpoint did not stop the removal");
        assert!(records(&journal).len() > expected.len());
    }
    assert!(purging_mark(dir.path()), "the removal's mark is missing");

    // A reader meanwhile (or the boot after a crash) finds a sound journal.
    {
        let journal = Journal::open_for_inspection(dir.path()).unwrap();
        let report = journal.verify().unwrap();
        assert!(report.is_ok(), "{:#?}", report.problems);
    }
    // The next open for writing derives sled again from the log, which holds none of them.
    let journal = Journal::open(dir.path()).unwrap();
    let note = journal.rebuilt().expect("sled was not derived again");
    assert!(note.reason.contains("interrupted"), "{}", note.reason);
    assert_eq!(records(&journal), expected);
    assert!(orphans(&journal).is_empty());
    assert!(journal.verify().unwrap().is_ok());
    drop(journal);
    assert!(!purging_mark(dir.path()));
    scenario.teardown();
}

#[test]
fn a_later_compaction_removes_what_an_interrupted_one_left() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    history(&journal, 300, 1);
    fail::cfg("journal-compact-purge", "return").unwrap();
    journal.compact(10).unwrap_err();
    fail::cfg("journal-compact-purge", "off").unwrap();
    assert!(!orphans(&journal).is_empty());

    // The same process goes on and compacts again: the leftovers are removed, not kept (and
    // not written into the new log segment as records to keep).
    history(&journal, 50, 1000);
    journal.compact(10).unwrap();
    assert!(orphans(&journal).is_empty(), "{:?}", orphans(&journal));
    assert!(journal.verify().unwrap().is_ok());
    let kept = records(&journal);
    drop(journal);
    assert!(!purging_mark(dir.path()));

    // The log agrees: sled derived from it holds the same records.
    let journal = Journal::rebuild(dir.path()).unwrap();
    assert_eq!(records(&journal), kept);
    scenario.teardown();
}
