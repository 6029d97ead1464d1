mod common;
use common::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use tryswap_journal::Journal;
#[test]
fn stats() {
    let mut runner = TestRunner::default();
    let mut totals = std::collections::BTreeMap::new();
    for _ in 0..32 {
        let intents = intents(120).new_tree(&mut runner).unwrap().current();
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mut d = Driver::default();
        d.run(&j, &intents);
        for r in &d.records {
            *totals.entry(r.event.name()).or_insert(0) += 1;
        }
        let rep = j.compact(1).unwrap();
        *totals.entry("dropped").or_insert(0) += rep.reloads_dropped;
    }
    eprintln!("{totals:?}");
}
