//! One behaviour for every `JournalStore`: each test here runs against the sled `Journal`
//! (in a temporary directory) and against the `MemoryJournal`. What only the disk can show
//! (reopen, the witness, damaged files, locks) is in `journal.rs`.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use tryswap_fsm::{Command, Generation, Mode, Reason, Rejected, ReloadId, SlotName, World};
use tryswap_journal::{Journal, JournalError, JournalStore, LogJournal, MemoryJournal, ReloadView};

/// A store under test, with what keeps it alive.
struct Subject {
    journal: Box<dyn JournalStore>,
    _dir: Option<tempfile::TempDir>,
}

fn sled() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    Subject {
        journal: Box::new(journal),
        _dir: Some(dir),
    }
}

/// The journal served from its log alone (what one-shot commands use): a journal created
/// with sled, then reopened as a [`LogJournal`].
fn log() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::open(dir.path()).unwrap());
    let journal = LogJournal::open(dir.path()).unwrap();
    Subject {
        journal: Box::new(journal),
        _dir: Some(dir),
    }
}

fn memory() -> Subject {
    Subject {
        journal: Box::new(MemoryJournal::new()),
        _dir: None,
    }
}

/// Runs every named test against the store `$open` makes, in module `$store`; with
/// `compacts`, also the compaction tests.
macro_rules! conformance {
    ($store:ident $(, $compacts:ident)?: $($test:ident),* $(,)?) => {
        mod $store {
            use super::*;

            $(
                #[test]
                fn $test() {
                    super::$test(&*super::$store().journal);
                }
            )*

            proptest! {
                #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

                #[test]
                fn projections_equal_the_fold(intents in intents(120)) {
                    super::projections_equal_the_fold(&*super::$store().journal, &intents);
                }
            }

            $(conformance!(@$compacts $store);)?
        }
    };
    (@compacts $store:ident) => {
        #[test]
        fn compaction_trims_history_and_refuses_a_rollback_to_a_trimmed_generation() {
            super::compaction_trims_history_and_refuses_a_rollback_to_a_trimmed_generation(
                &*super::$store().journal,
            );
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

            #[test]
            fn compaction_keeps_projections(
                intents in intents(120),
                more in intents(30),
                keep in 0usize..3,
            ) {
                super::compaction_keeps_projections(&*super::$store().journal, &intents, &more, keep);
            }
        }
    };
}

/// The conformance suite for one store (`compacts`: the store compacts).
macro_rules! suite {
    ($store:ident $(, $compacts:ident)?) => {
        conformance!($store $(, $compacts)?:
            a_successful_activate_makes_exactly_one_durable_flush,
            a_rolled_back_reload_makes_no_durable_flush,
            stage_marks_and_timestamps_follow_the_events,
            execute_all_is_all_or_nothing,
            an_illegal_command_is_rejected_and_writes_nothing,
            events_and_replay_follow_the_sequence,
            a_failed_handle_refuses_every_write_and_keeps_the_first_cause,
            a_bake_is_journaled_durably_and_a_revert_restores_the_standby,
        );
    };
}

suite!(sled, compacts);
suite!(memory, compacts);
suite!(log);

/// A store served from the log alone leaves compaction to the sled journal, with an error
/// that says so.
#[test]
fn the_log_store_refuses_compaction_and_names_the_index() {
    let subject = log();
    let err = subject.journal.compact(1).unwrap_err();
    assert!(matches!(err, JournalError::NeedsIndex { .. }), "{err}");
    assert!(err.to_string().contains("compaction"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The same commands give the same records (seq, time, encoding, chain) and the same
    /// projections in both stores.
    #[test]
    fn both_stores_write_the_same_records(intents in intents(80)) {
        let (on_disk, in_memory) = (sled(), memory());
        let mut disk_driver = Driver::default();
        let mut memory_driver = Driver::default();
        disk_driver.run(&*on_disk.journal, &intents);
        memory_driver.run(&*in_memory.journal, &intents);
        prop_assert_eq!(&disk_driver.records, &memory_driver.records);
        let all = |j: &dyn JournalStore| j.events(0).map(|r| r.unwrap()).collect::<Vec<_>>();
        prop_assert_eq!(all(&*on_disk.journal), all(&*in_memory.journal));
        prop_assert_eq!(on_disk.journal.slots().unwrap(), in_memory.journal.slots().unwrap());
        prop_assert_eq!(
            on_disk.journal.replay(u64::MAX).unwrap(),
            in_memory.journal.replay(u64::MAX).unwrap()
        );
        prop_assert_eq!(on_disk.journal.flush_count(), in_memory.journal.flush_count());
    }
}

fn projections_equal_the_fold(journal: &dyn JournalStore, intents: &[Intent]) {
    let mut driver = Driver::default();
    driver.run(journal, intents);
    assert_matches(journal, &driver.world);
    assert_eq!(journal.last_seq(), driver.records.len() as u64);
    assert_eq!(folded_world(journal), driver.world);
    // Sequence numbers are gap-free and the stored records are the returned ones.
    let stored: Vec<_> = journal.events(0).map(|r| r.unwrap()).collect();
    assert_eq!(stored, driver.records);
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
    }
    // Every prefix replays to the fold of that prefix (bakes, confirms and reverts included).
    let mut prefix = World::default();
    for (cut, record) in stored.iter().enumerate() {
        if cut % 5 == 0 || cut == stored.len() / 2 {
            assert_eq!(journal.replay(cut as u64).unwrap().world(), prefix);
        }
        prefix.apply(&record.event());
    }
}

fn a_bake_is_journaled_durably_and_a_revert_restores_the_standby(journal: &dyn JournalStore) {
    let slot = slot_name(2);
    full_activate(journal, &slot, ReloadId::from_u128(1), 1);
    let standby = journal.slot(&slot).unwrap().unwrap().slot.active;
    let bake = |id: u128, byte: u8, last: Command| {
        let reload = ReloadId::from_u128(id);
        let before = journal.flush_count();
        let mut commands = through_probe(&slot, reload, Mode::Activate, byte);
        commands.push(Command::CommitBaking {
            reload,
            until_ms: 1_700_000_000_000,
        });
        for (step, command) in commands.iter().enumerate() {
            journal.execute(command, at(step)).unwrap();
        }
        let view = journal.slot(&slot).unwrap().unwrap();
        assert_eq!(
            view.slot.in_flight,
            Some(reload),
            "a bake keeps the slot busy"
        );
        let second = Command::Stage {
            reload: ReloadId::from_u128(id + 100),
            slot: slot.clone(),
            mode: Mode::Activate,
            artifact: artifact(9),
        };
        assert!(matches!(
            journal.execute(&second, at(6)),
            Err(JournalError::Rejected(Rejected::Conflict { .. }))
        ));
        journal.execute(&last, at(7)).unwrap();
        // ActivatedBaking and the end of the bake are durable (Staged rides on the first).
        assert_eq!(journal.flush_count() - before, 2);
        journal.reload(&reload).unwrap().unwrap()
    };
    let reverted = bake(
        2,
        2,
        Command::Revert {
            reload: ReloadId::from_u128(2),
            reason: Reason::error("candidate exited with status 1"),
        },
    );
    let states: Vec<&str> = reverted.stages.iter().map(|m| m.state.as_str()).collect();
    assert_eq!(
        states,
        [
            "staged",
            "launched",
            "validated",
            "probed",
            "baking",
            "reverted"
        ]
    );
    let after = journal.slot(&slot).unwrap().unwrap().slot;
    assert_eq!(
        after.active, standby,
        "the revert restores the previous marker"
    );
    assert_eq!(after.retiring.len(), 1, "the candidate waits to be stopped");
    journal
        .execute(
            &Command::Retire {
                slot: slot.clone(),
                generation: Generation(2),
            },
            at(8),
        )
        .unwrap();
    let confirmed = bake(
        3,
        3,
        Command::Confirm {
            reload: ReloadId::from_u128(3),
        },
    );
    assert!(confirmed.finished.is_some());
    let after = journal.slot(&slot).unwrap().unwrap().slot;
    assert_eq!(after.active_generation(), Some(Generation(3)));
    assert_eq!(after.in_flight, None);
    assert!(journal.verify().unwrap().is_ok());
}

fn compaction_keeps_projections(
    journal: &dyn JournalStore,
    intents: &[Intent],
    more: &[Intent],
    keep: usize,
) {
    let mut driver = Driver::default();
    driver.run(journal, intents);
    let slots_before = journal.slots().unwrap();
    let reloads_before: BTreeMap<ReloadId, ReloadView> = driver
        .world
        .reloads
        .keys()
        .map(|id| (*id, journal.reload(id).unwrap().unwrap()))
        .collect();
    let report = journal.compact(keep).unwrap();
    // Unchanged; histories are trimmed to what a rollback may still want (only when the
    // compaction dropped something).
    if report.reloads_dropped > 0 {
        let world = &mut driver.world;
        for (name, history) in world.history.iter_mut() {
            *history = trimmed(&world.slots[name], history, keep);
        }
    }
    assert_eq!(journal.slots().unwrap(), slots_before);
    for name in driver.world.slots.keys() {
        let expected = driver.world.history.get(name).cloned().unwrap_or_default();
        assert_eq!(
            journal.history(name).unwrap(),
            expected,
            "history of {name}"
        );
    }
    let mut kept_terminal: BTreeMap<SlotName, usize> = BTreeMap::new();
    let mut dropped = 0u64;
    let mut dropped_ids = Vec::new();
    for (id, before) in &reloads_before {
        match journal.reload(id).unwrap() {
            Some(after) => {
                assert_eq!(&after, before);
                let slot = &driver.world.slots[&before.reload.slot];
                let pinned = slot.active.as_ref().is_some_and(|a| a.reload == *id)
                    || slot.retiring.iter().any(|i| i.reload == *id);
                if after.reload.state.is_terminal() && !pinned {
                    *kept_terminal.entry(before.reload.slot.clone()).or_default() += 1;
                }
            }
            None => {
                assert!(before.reload.state.is_terminal(), "dropped a live reload");
                dropped += 1;
                dropped_ids.push(*id);
                driver.world.reloads.remove(id);
            }
        }
    }
    assert_eq!(dropped, report.reloads_dropped);
    assert_eq!(
        report.events_kept,
        journal.events(0).count() as u64,
        "{report:?}"
    );
    assert_eq!(
        report.reloads_kept,
        (reloads_before.len() as u64) - dropped,
        "{report:?}"
    );
    for count in kept_terminal.values() {
        assert!(*count <= keep);
    }
    // No record of a dropped reload is left.
    for record in journal.events(0) {
        let record = record.unwrap();
        assert!(!dropped_ids.contains(&record.reload), "{record:?}");
    }
    if report.reloads_dropped > 0 {
        assert_eq!(report.base_seq, journal.last_seq());
        let below = journal.replay(report.base_seq - 1);
        assert!(
            matches!(below, Err(JournalError::Compacted { .. })),
            "{below:?}"
        );
    }
    assert_matches(journal, &driver.world);
    driver.run(journal, more);
    assert_matches(journal, &driver.world);
    // Compacting again moves the base and still verifies.
    journal.compact(keep).unwrap();
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    assert_eq!(journal.slots().unwrap().len(), driver.world.slots.len());
}

fn compaction_trims_history_and_refuses_a_rollback_to_a_trimmed_generation(
    journal: &dyn JournalStore,
) {
    let slot = slot_name(4);
    for n in 1..=6u8 {
        full_activate(journal, &slot, ReloadId::from_u128(u128::from(n)), n);
        if n > 1 {
            let retire = Command::Retire {
                slot: slot.clone(),
                generation: Generation(u64::from(n - 1)),
            };
            journal.execute(&retire, at(0)).unwrap();
        }
    }
    let before = journal.slot(&slot).unwrap().unwrap().slot;
    let history = journal.history(&slot).unwrap();
    assert_eq!(history.len(), 6);
    journal.compact(1).unwrap();
    let after = journal.history(&slot).unwrap();
    let kept: Vec<u64> = after.keys().map(|g| g.0).collect();
    assert_eq!(kept, [5, 6], "the newest max(keep, 2) generations stay");
    assert_eq!(after, trimmed(&before, &history, 1));
    assert_eq!(journal.slot(&slot).unwrap().unwrap().slot, before);
    assert_eq!(journal.history_entry(&slot, Generation(2)).unwrap(), None);
    assert!(journal.verify().unwrap().is_ok());
    // A rollback to a trimmed generation is refused; to a kept one it is staged.
    let rollback = |to: u64, id: u128| Command::Stage {
        reload: ReloadId::from_u128(id),
        slot: slot.clone(),
        mode: Mode::Rollback { to: Generation(to) },
        artifact: history[&Generation(to)].clone(),
    };
    assert!(journal.execute(&rollback(2, 100), at(1)).is_err());
    journal.execute(&rollback(5, 101), at(1)).unwrap();
    assert!(journal.verify().unwrap().is_ok());
}

/// The commit is the one write-ahead point of a plain activation: `Staged` and the records
/// before the commit ride on its flush (docs/journal.md, "Write-ahead rules and flush
/// points").
fn a_successful_activate_makes_exactly_one_durable_flush(journal: &dyn JournalStore) {
    let slot = slot_name(0);
    let id = ReloadId::from_u128(1);
    let commands = through_probe(&slot, id, Mode::Activate, 1);
    journal.execute(&commands[0], at(0)).unwrap();
    assert_eq!(
        journal.flush_count(),
        0,
        "Staged is not a write-ahead point"
    );
    for command in &commands[1..] {
        journal.execute(command, at(1)).unwrap();
    }
    assert_eq!(journal.flush_count(), 0);
    journal
        .execute(&Command::Commit { reload: id }, at(2))
        .unwrap();
    assert_eq!(journal.flush_count(), 1, "the commit is");
    // The second activation too, and retiring the old generation adds none.
    assert_eq!(full_activate(journal, &slot, ReloadId::from_u128(2), 2), 1);
    let retire = Command::Retire {
        slot: slot.clone(),
        generation: Generation(1),
    };
    journal.execute(&retire, at(9)).unwrap();
    assert_eq!(journal.flush_count(), 2);
    // Public flush is not counted.
    journal.flush().unwrap();
    assert_eq!(journal.flush_count(), 2);
}

/// After a failed sync (here: `fail`) the handle refuses writes and flushes until the
/// journal is reopened; what was committed before stays readable.
fn a_failed_handle_refuses_every_write_and_keeps_the_first_cause(journal: &dyn JournalStore) {
    journal.execute(&stage(1, 0), at(1)).unwrap();
    assert_eq!(journal.failure(), None);
    let error = journal.fail("syncing: EIO");
    assert!(matches!(error, JournalError::Failed { .. }), "{error}");
    journal.fail("a later cause");
    assert_eq!(journal.failure().as_deref(), Some("syncing: EIO"));
    let refused = journal.execute(&stage(2, 1), at(2)).unwrap_err();
    assert!(
        matches!(&refused, JournalError::Failed { cause, .. } if cause == "syncing: EIO"),
        "{refused}"
    );
    assert!(matches!(journal.flush(), Err(JournalError::Failed { .. })));
    assert_eq!(journal.last_seq(), 1);
    assert!(journal.slot(&slot_name(0)).unwrap().is_some());
}

fn a_rolled_back_reload_makes_no_durable_flush(journal: &dyn JournalStore) {
    let id = ReloadId::from_u128(7);
    let commands = [
        Command::Stage {
            reload: id,
            slot: slot_name(1),
            mode: Mode::Activate,
            artifact: artifact(3),
        },
        Command::RecordLaunch {
            reload: id,
            process: None,
            log_path: None,
        },
        Command::Fail {
            reload: id,
            reason: Reason::error("bad handshake line \"1|9|tcp\""),
        },
    ];
    for (step, command) in commands.iter().enumerate() {
        journal.execute(command, at(step)).unwrap();
    }
    // A rejected candidate's records ride on the next durable flush.
    assert_eq!(journal.flush_count(), 0);
    let view = journal.reload(&id).unwrap().unwrap();
    let states: Vec<&str> = view.stages.iter().map(|m| m.state.as_str()).collect();
    assert_eq!(states, ["staged", "launched", "rolled_back"]);
    assert_eq!(view.finished, Some(at(2)));
    assert_eq!(view.created, at(0));
    assert!(journal.in_flight().unwrap().is_empty());
}

fn stage_marks_and_timestamps_follow_the_events(journal: &dyn JournalStore) {
    let slot = slot_name(0);
    full_activate(journal, &slot, ReloadId::from_u128(1), 1);
    let view = journal.reload(&ReloadId::from_u128(1)).unwrap().unwrap();
    let marks: Vec<(&str, u64)> = view
        .stages
        .iter()
        .map(|m| (m.state.as_str(), m.seq))
        .collect();
    assert_eq!(
        marks,
        [
            ("staged", 1),
            ("launched", 2),
            ("validated", 3),
            ("probed", 4),
            ("active", 5)
        ]
    );
    let slot_view = journal.slot(&slot).unwrap().unwrap();
    assert_eq!(slot_view.active_since, Some(at(4)));
    assert_eq!(slot_view.updated, at(4));
    // A relaunch keeps active_since; a new activation moves it.
    let relaunch = Command::Relaunch {
        slot: slot.clone(),
        generation: Generation(1),
        process: Some(process(77)),
        log_path: None,
        endpoint: None,
    };
    journal.execute(&relaunch, at(20)).unwrap();
    let slot_view = journal.slot(&slot).unwrap().unwrap();
    assert_eq!(slot_view.active_since, Some(at(4)));
    assert_eq!(slot_view.updated, at(20));
    assert_eq!(journal.reloads_of(&slot).unwrap().len(), 1);
}

fn stage(n: u128, slot: usize) -> Command {
    Command::Stage {
        reload: ReloadId::from_u128(n),
        slot: slot_name(slot),
        mode: Mode::Activate,
        artifact: artifact(n as u8),
    }
}

fn execute_all_is_all_or_nothing(journal: &dyn JournalStore) {
    // The third conflicts with the first (same slot): nothing is written.
    let err = journal
        .execute_all(&[stage(1, 0), stage(2, 1), stage(3, 0)], at(0))
        .unwrap_err();
    assert!(
        matches!(err, JournalError::Rejected(Rejected::Conflict { .. })),
        "{err}"
    );
    assert_eq!(journal.last_seq(), 0);
    assert!(journal.slots().unwrap().is_empty());
    assert!(journal.reload(&ReloadId::from_u128(1)).unwrap().is_none());
    assert_eq!(journal.events(0).count(), 0);
    assert_eq!(journal.flush_count(), 0);
    // Each command sees the state the previous left: stage then launch in one batch.
    let launch = Command::RecordLaunch {
        reload: ReloadId::from_u128(1),
        process: None,
        log_path: None,
    };
    let records = journal
        .execute_all(&[stage(1, 0), stage(2, 1), launch], at(1))
        .unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(
        journal.flush_count(),
        0,
        "no write-ahead point in the batch"
    );
    // Both slots' reloads through the probe, then both commits in one batch.
    let rest = |n: u128| {
        let reload = ReloadId::from_u128(n);
        let mut commands = vec![
            Command::RecordHandshake {
                reload,
                endpoint: None,
            },
            Command::RecordProbe { reload },
        ];
        if n == 2 {
            commands.insert(
                0,
                Command::RecordLaunch {
                    reload,
                    process: None,
                    log_path: None,
                },
            );
        }
        commands
    };
    journal
        .execute_all(&[rest(1), rest(2)].concat(), at(2))
        .unwrap();
    let commits = [1, 2].map(|n| Command::Commit {
        reload: ReloadId::from_u128(n),
    });
    journal.execute_all(&commits, at(3)).unwrap();
    assert_eq!(journal.flush_count(), 1, "one durable flush per batch");
    assert!(journal.execute_all(&[], at(4)).unwrap().is_empty());
    assert_eq!(journal.last_seq(), 10);
    assert!(journal.verify().unwrap().is_ok());
}

fn an_illegal_command_is_rejected_and_writes_nothing(journal: &dyn JournalStore) {
    let unknown = ReloadId::from_u128(42);
    let err = journal
        .execute(&Command::Commit { reload: unknown }, at(0))
        .unwrap_err();
    assert!(matches!(err, JournalError::Rejected(_)), "{err}");
    journal.execute(&stage(1, 0), at(1)).unwrap();
    let slots = journal.slots().unwrap();
    // A reload in flight blocks a second one of the same slot; a commit before the probe
    // is refused.
    let conflict = journal.execute(&stage(2, 0), at(2)).unwrap_err();
    assert!(
        matches!(conflict, JournalError::Rejected(Rejected::Conflict { .. })),
        "{conflict}"
    );
    let early = Command::Commit {
        reload: ReloadId::from_u128(1),
    };
    assert!(matches!(
        journal.execute(&early, at(3)),
        Err(JournalError::Rejected(_))
    ));
    assert_eq!(journal.last_seq(), 1);
    assert_eq!(journal.slots().unwrap(), slots);
    assert!(journal.reload(&ReloadId::from_u128(2)).unwrap().is_none());
    assert!(journal.verify().unwrap().is_ok());
}

fn events_and_replay_follow_the_sequence(journal: &dyn JournalStore) {
    assert_eq!(journal.replay(0).unwrap().seq, 0);
    assert_eq!(journal.events(1).count(), 0);
    full_activate(journal, &slot_name(0), ReloadId::from_u128(1), 1);
    full_activate(journal, &slot_name(1), ReloadId::from_u128(2), 2);
    let all: Vec<_> = journal.events(0).map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 10);
    for from in [1, 4, 10, 11] {
        let tail: Vec<_> = journal.events(from).map(|r| r.unwrap()).collect();
        assert_eq!(
            tail,
            all[(from as usize - 1).min(all.len())..],
            "from {from}"
        );
    }
    for until in 0..=all.len() {
        let events: Vec<_> = all[..until].iter().map(|r| r.event()).collect();
        let state = journal.replay(until as u64).unwrap();
        assert_eq!(state.seq, until as u64);
        assert_eq!(state.world(), World::fold(&events), "until {until}");
    }
    let past_end = journal.replay(u64::MAX).unwrap();
    assert_eq!(past_end.seq, 10);
    assert!(journal.in_flight().unwrap().is_empty());
    journal.execute(&stage(3, 1), at(30)).unwrap();
    let in_flight = journal.in_flight().unwrap();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0].reload.id, ReloadId::from_u128(3));
}
