//! Shared test helpers: a command generator driven by `tryswap_fsm::World` (the oracle),
//! and comparisons of a journal's projections with the oracle, for any [`JournalStore`].
#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use tryswap_fsm::{
    ArtifactRef, Command, Endpoint, Generation, Mode, Network, ProcessIdentity, Protocol, Reason,
    ReloadId, ReloadState, Sha256, Slot, SlotName, World,
};
use tryswap_journal::{History, JournalError, JournalStore, Record};

pub const SLOTS: usize = 3;

pub fn slot_name(i: usize) -> SlotName {
    SlotName::new(format!("slot-{i}")).unwrap()
}

pub fn artifact(byte: u8) -> ArtifactRef {
    ArtifactRef {
        sha256: Sha256([byte; 32]),
        config_sha256: (byte % 2 == 0).then_some(Sha256([byte ^ 0xff; 32])),
    }
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap() + Duration::nanoseconds(123_456_789)
}

pub fn at(step: usize) -> DateTime<Utc> {
    t0() + Duration::milliseconds(step as i64 * 1500)
}

pub fn process(pid: u32) -> ProcessIdentity {
    ProcessIdentity {
        pid,
        start_time: u64::from(pid) * 11,
        boot_id: "3f1c0d4e-boot".into(),
    }
}

pub fn endpoint(port: u16) -> Endpoint {
    Endpoint {
        core_version: 1,
        app_version: 1,
        network: Network::Tcp,
        address: format!("127.0.0.1:{port}"),
        protocol: Protocol::Grpc,
        server_cert: None,
    }
}

/// What to do next, resolved against the oracle's state into a command.
#[derive(Clone, Debug)]
pub enum Intent {
    Begin {
        slot: usize,
        mode: u8,
        artifact: u8,
        staging_fails: bool,
    },
    Advance {
        slot: usize,
    },
    Fail {
        slot: usize,
        kind: u8,
    },
    Retire {
        slot: usize,
        pick: u8,
    },
    Stop {
        slot: usize,
    },
    Relaunch {
        slot: usize,
    },
    /// Something that usually does not fit the state.
    Wrong {
        slot: usize,
        which: u8,
    },
    /// Several intents as one `execute_all`.
    Batch(Vec<Intent>),
}

fn single() -> impl Strategy<Value = Intent> {
    let slot = 0..SLOTS;
    prop_oneof![
        4 => (slot.clone(), 0u8..6, 0u8..4, proptest::bool::weighted(0.1)).prop_map(
            |(slot, mode, artifact, staging_fails)| Intent::Begin { slot, mode, artifact, staging_fails }
        ),
        16 => slot.clone().prop_map(|slot| Intent::Advance { slot }),
        1 => (slot.clone(), 0u8..4).prop_map(|(slot, kind)| Intent::Fail { slot, kind }),
        2 => (slot.clone(), any::<u8>()).prop_map(|(slot, pick)| Intent::Retire { slot, pick }),
        1 => slot.clone().prop_map(|slot| Intent::Stop { slot }),
        1 => slot.clone().prop_map(|slot| Intent::Relaunch { slot }),
        1 => (slot, any::<u8>()).prop_map(|(slot, which)| Intent::Wrong { slot, which }),
    ]
}

pub fn intent() -> impl Strategy<Value = Intent> {
    prop_oneof![
        12 => single(),
        1 => proptest::collection::vec(single(), 2..4).prop_map(Intent::Batch),
    ]
}

pub fn intents(max: usize) -> impl Strategy<Value = Vec<Intent>> {
    proptest::collection::vec(intent(), 1..max)
}

/// The oracle and a counter for fresh reload ids.
#[derive(Clone, Debug, Default)]
pub struct Driver {
    pub world: World,
    pub next_id: u64,
    pub step: usize,
    pub records: Vec<Record>,
}

fn reason(kind: u8) -> Reason {
    match kind % 4 {
        0 => Reason::error("probe failed: connection refused"),
        1 => Reason::timeout("no handshake within 10s"),
        2 => Reason::cancelled("operator"),
        _ => Reason::recovered("found after restart"),
    }
}

/// Slot `first`, or the next one after it, that has a reload in flight.
fn busy_slot(world: &World, first: usize) -> Option<SlotName> {
    (0..SLOTS)
        .map(|i| slot_name((first + i) % SLOTS))
        .find(|name| world.slots.get(name).is_some_and(|s| s.in_flight.is_some()))
}

/// The command `intent` means in `world` (usually legal, sometimes not on purpose).
pub fn command(world: &World, next_id: &mut u64, intent: &Intent) -> Command {
    match intent {
        Intent::Begin {
            slot,
            mode,
            artifact: a,
            staging_fails,
        } => {
            *next_id += 1;
            let reload = ReloadId::from_u128(u128::from(*next_id) << 64 | 0x7000);
            let name = slot_name(*slot);
            let history = world.history.get(&name).cloned().unwrap_or_default();
            let (mode, art) = match mode {
                0..=2 => (Mode::Activate, artifact(*a)),
                3 => (Mode::DryRun, artifact(*a)),
                _ => match history.iter().nth(usize::from(*a) % history.len().max(1)) {
                    Some((g, art)) => (Mode::Rollback { to: *g }, art.clone()),
                    None => (Mode::Rollback { to: Generation(1) }, artifact(*a)),
                },
            };
            if *staging_fails {
                Command::FailStaging {
                    reload,
                    slot: name,
                    mode,
                    reason: Reason::error("artifact missing"),
                }
            } else {
                Command::Stage {
                    reload,
                    slot: name,
                    mode,
                    artifact: art,
                }
            }
        }
        Intent::Advance { slot } => {
            let in_flight = busy_slot(world, *slot)
                .and_then(|name| world.slots[&name].in_flight)
                .and_then(|id| world.reloads.get(&id));
            match in_flight {
                None => Command::RecordProbe {
                    reload: ReloadId::from_u128(0xdead),
                },
                Some(r) => {
                    let n = (r.id.as_u128() >> 64) as u32;
                    match r.state {
                        ReloadState::Staged => Command::RecordLaunch {
                            reload: r.id,
                            process: Some(process(1000 + n)),
                            log_path: Some(format!("logs/{}/{n}.log", r.slot)),
                        },
                        ReloadState::Launched => Command::RecordHandshake {
                            reload: r.id,
                            endpoint: (n % 3 != 0).then(|| endpoint(40000 + n as u16)),
                        },
                        ReloadState::Validated => Command::RecordProbe { reload: r.id },
                        // Every second bake passes, the others are reverted.
                        ReloadState::Baking { .. } if n % 2 == 0 => {
                            Command::Confirm { reload: r.id }
                        }
                        ReloadState::Baking { .. } => Command::Revert {
                            reload: r.id,
                            reason: Reason::error("candidate exited during the bake"),
                        },
                        _ if r.mode == Mode::DryRun => Command::PassDryRun { reload: r.id },
                        // Every third reload bakes before it is final.
                        _ if n % 3 == 0 => Command::CommitBaking {
                            reload: r.id,
                            until_ms: u64::from(n) * 1_000,
                        },
                        _ => Command::Commit { reload: r.id },
                    }
                }
            }
        }
        Intent::Fail { slot, kind } => {
            let reload = busy_slot(world, *slot)
                .and_then(|name| world.slots[&name].in_flight)
                .unwrap_or(ReloadId::from_u128(0xbeef));
            Command::Fail {
                reload,
                reason: reason(*kind),
            }
        }
        Intent::Retire { slot, pick } => {
            let name = slot_name(*slot);
            let retiring = world
                .slots
                .get(&name)
                .map(|s| s.retiring.clone())
                .unwrap_or_default();
            let generation = if retiring.is_empty() {
                Generation(99)
            } else {
                retiring[usize::from(*pick) % retiring.len()].generation
            };
            Command::Retire {
                slot: name,
                generation,
            }
        }
        Intent::Stop { slot } | Intent::Relaunch { slot } => {
            let name = slot_name(*slot);
            let generation = world
                .slots
                .get(&name)
                .and_then(|s| s.active_generation())
                .unwrap_or(Generation(1));
            if matches!(intent, Intent::Stop { .. }) {
                Command::Stop {
                    slot: name,
                    generation,
                    reason: Reason::error("exited with status 1"),
                }
            } else {
                *next_id += 1;
                Command::Relaunch {
                    slot: name,
                    generation,
                    process: Some(process(5000 + *next_id as u32)),
                    log_path: Some("logs/relaunch.log".into()),
                    endpoint: Some(endpoint(41000)),
                }
            }
        }
        Intent::Wrong { slot, which } => {
            let name = slot_name(*slot);
            let s = world.slots.get(&name);
            let in_flight = s.and_then(|s| s.in_flight);
            let any_reload = world
                .reloads
                .keys()
                .nth(usize::from(*which) % world.reloads.len().max(1))
                .copied()
                .unwrap_or(ReloadId::from_u128(0x1));
            match which % 7 {
                0 => Command::Commit {
                    reload: in_flight.unwrap_or(any_reload),
                },
                1 => Command::PassDryRun {
                    reload: in_flight.unwrap_or(any_reload),
                },
                2 => Command::RecordHandshake {
                    reload: any_reload,
                    endpoint: None,
                },
                3 => Command::Stage {
                    reload: any_reload,
                    slot: name,
                    mode: Mode::Activate,
                    artifact: artifact(0),
                },
                5 => Command::Confirm { reload: any_reload },
                6 => Command::Revert {
                    reload: in_flight.unwrap_or(any_reload),
                    reason: Reason::cancelled("operator revert"),
                },
                _ => Command::Fail {
                    reload: any_reload,
                    reason: Reason::cancelled("late"),
                },
            }
        }
        Intent::Batch(_) => unreachable!("batches are resolved by Driver::apply"),
    }
}

impl Driver {
    /// Resolves `intent`, executes it in the journal and in the oracle, and checks that
    /// both agree (same events or the same rejection).
    pub fn apply(&mut self, journal: &dyn JournalStore, intent: &Intent) {
        self.step += 1;
        let now = at(self.step);
        match intent {
            Intent::Batch(parts) => {
                let mut world = self.world.clone();
                let mut commands = Vec::new();
                let mut expected: Result<Vec<_>, _> = Ok(Vec::new());
                for part in parts {
                    let cmd = command(&world, &mut self.next_id, part);
                    match world.execute(&cmd) {
                        Ok(events) => {
                            if let Ok(all) = expected.as_mut() {
                                all.extend(events);
                            }
                        }
                        Err(rejected) => {
                            if expected.is_ok() {
                                expected = Err(rejected);
                            }
                        }
                    }
                    commands.push(cmd);
                }
                let before = journal.last_seq();
                let actual = journal.execute_all(&commands, now);
                match (expected, actual) {
                    (Ok(events), Ok(records)) => {
                        let got: Vec<_> = records.iter().map(Record::event).collect();
                        assert_eq!(got, events);
                        self.world = world;
                        self.records.extend(records);
                    }
                    (Err(want), Err(JournalError::Rejected(got))) => {
                        assert_eq!(got, want);
                        assert_eq!(journal.last_seq(), before, "a rejected batch wrote nothing");
                    }
                    (want, got) => panic!("batch {commands:?}: oracle {want:?}, journal {got:?}"),
                }
            }
            _ => {
                let cmd = command(&self.world, &mut self.next_id, intent);
                let mut world = self.world.clone();
                let expected = world.execute(&cmd);
                let before = journal.last_seq();
                match (expected, journal.execute(&cmd, now)) {
                    (Ok(events), Ok(records)) => {
                        let got: Vec<_> = records.iter().map(Record::event).collect();
                        assert_eq!(got, events);
                        for r in &records {
                            assert_eq!(r.at, now);
                        }
                        self.world = world;
                        self.records.extend(records);
                    }
                    (Err(want), Err(JournalError::Rejected(got))) => {
                        assert_eq!(got, want);
                        assert_eq!(journal.last_seq(), before);
                    }
                    (want, got) => panic!("{cmd:?}: oracle {want:?}, journal {got:?}"),
                }
            }
        }
    }

    pub fn run(&mut self, journal: &dyn JournalStore, intents: &[Intent]) {
        for intent in intents {
            self.apply(journal, intent);
        }
    }
}

/// The journal's projections as an fsm world.
pub fn stored_world(journal: &dyn JournalStore) -> World {
    let slots: BTreeMap<_, _> = journal
        .slots()
        .unwrap()
        .into_iter()
        .map(|v| (v.slot.name.clone(), v.slot))
        .collect();
    let mut reloads = BTreeMap::new();
    for name in slots.keys() {
        for view in journal.reloads_of(name).unwrap() {
            reloads.insert(view.reload.id, view.reload);
        }
    }
    let mut history = BTreeMap::new();
    for name in slots.keys() {
        let entries = journal.history(name).unwrap();
        for (generation, artifact) in &entries {
            assert_eq!(
                journal.history_entry(name, *generation).unwrap().as_ref(),
                Some(artifact),
                "history entry {name} {generation}"
            );
        }
        if !entries.is_empty() {
            history.insert(name.clone(), entries);
        }
    }
    World {
        slots,
        reloads,
        history,
    }
}

/// The fold of every record the journal holds.
pub fn folded_world(journal: &dyn JournalStore) -> World {
    let events: Vec<_> = journal.events(0).map(|r| r.unwrap().event()).collect();
    World::fold(&events)
}

/// Asserts projections, reads and verify all agree with `world`.
pub fn assert_matches(journal: &dyn JournalStore, world: &World) {
    let stored = stored_world(journal);
    assert_eq!(&stored, world, "projections differ from the oracle");
    for (name, slot) in &world.slots {
        assert_eq!(&journal.slot(name).unwrap().unwrap().slot, slot);
    }
    for (id, reload) in &world.reloads {
        assert_eq!(&journal.reload(id).unwrap().unwrap().reload, reload);
    }
    let in_flight: Vec<ReloadId> = journal
        .in_flight()
        .unwrap()
        .into_iter()
        .map(|v| v.reload.id)
        .collect();
    let want: Vec<ReloadId> = world.slots.values().filter_map(|s| s.in_flight).collect();
    assert_eq!(in_flight, want);
    let report = journal.verify().unwrap();
    assert!(report.is_ok(), "verify: {:#?}", report.problems);
    let replay = journal.replay(journal.last_seq()).unwrap();
    assert_eq!(&replay.world(), world);
    assert_eq!(replay.seq, journal.last_seq());
}

/// Runs one reload of `slot` from `Stage` to `Commit`, one call per command; returns the
/// durable flushes it made.
pub fn full_activate(journal: &dyn JournalStore, slot: &SlotName, id: ReloadId, byte: u8) -> u64 {
    let before = journal.flush_count();
    let commands = [
        Command::Stage {
            reload: id,
            slot: slot.clone(),
            mode: Mode::Activate,
            artifact: artifact(byte),
        },
        Command::RecordLaunch {
            reload: id,
            process: Some(process(4242)),
            log_path: Some("logs/demo/1.log".into()),
        },
        Command::RecordHandshake {
            reload: id,
            endpoint: Some(endpoint(40001)),
        },
        Command::RecordProbe { reload: id },
        Command::Commit { reload: id },
    ];
    for (i, c) in commands.iter().enumerate() {
        journal.execute(c, at(i)).unwrap();
    }
    journal.flush_count() - before
}

/// The commands that take a new reload of `slot` from `Stage` through `RecordProbe` (no
/// process facts, no endpoint): what a terminal command then ends.
pub fn through_probe(slot: &SlotName, reload: ReloadId, mode: Mode, byte: u8) -> Vec<Command> {
    vec![
        Command::Stage {
            reload,
            slot: slot.clone(),
            mode,
            artifact: artifact(byte),
        },
        Command::RecordLaunch {
            reload,
            process: None,
            log_path: None,
        },
        Command::RecordHandshake {
            reload,
            endpoint: None,
        },
        Command::RecordProbe { reload },
    ]
}

/// The commands of one dry run of `slot` (`try`: staged, launched, validated, probed,
/// passed): a terminal reload that a compaction may drop.
pub fn dry_run(slot: &SlotName, reload: ReloadId, byte: u8) -> Vec<Command> {
    let mut commands = through_probe(slot, reload, Mode::DryRun, byte);
    commands.push(Command::PassDryRun { reload });
    commands
}

pub fn trimmed(slot: &Slot, history: &History, keep: usize) -> History {
    let keep = keep.max(2);
    let mut history = history.clone();
    if history.len() > keep {
        let mut wanted: Vec<Generation> = history.keys().rev().take(keep).copied().collect();
        wanted.extend(slot.active.as_ref().map(|a| a.generation));
        wanted.extend(slot.retiring.iter().map(|i| i.generation));
        history.retain(|g, _| wanted.contains(g));
    }
    history
}

/// Copies the directory tree `from` to `to`.
#[allow(dead_code)] // not every test file copies journals
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Opens the journal's sled store directly, waiting (bounded) while a handle this process
/// just dropped still holds sled's file lock.
pub fn sled_of(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(dir.join(tryswap_journal::layout::SLED_DIR)) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other.unwrap(),
        }
    }
}
