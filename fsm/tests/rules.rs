//! Named examples of the rules DESIGN.md fixes, each a concrete scenario.

use tryswap_fsm::*;

fn slot() -> SlotName {
    SlotName::new("billing").unwrap()
}

fn art(b: u8) -> ArtifactRef {
    ArtifactRef {
        sha256: Sha256([b; 32]),
        config_sha256: None,
    }
}

fn stage(world: &mut World, n: u128, mode: Mode, a: u8) -> Result<Vec<Event>, Rejected> {
    world.execute(&Command::Stage {
        reload: ReloadId::from_u128(n),
        slot: slot(),
        mode,
        artifact: art(a),
    })
}

fn through_probe(world: &mut World, n: u128) {
    let reload = ReloadId::from_u128(n);
    world
        .execute(&Command::RecordLaunch {
            reload,
            process: None,
            log_path: None,
        })
        .unwrap();
    world
        .execute(&Command::RecordHandshake {
            reload,
            endpoint: None,
        })
        .unwrap();
    world.execute(&Command::RecordProbe { reload }).unwrap();
}

fn activate(world: &mut World, n: u128, a: u8) {
    stage(world, n, Mode::Activate, a).unwrap();
    through_probe(world, n);
    world
        .execute(&Command::Commit {
            reload: ReloadId::from_u128(n),
        })
        .unwrap();
}

#[test]
fn second_reload_of_a_busy_slot_is_a_conflict() {
    let mut world = World::default();
    stage(&mut world, 1, Mode::Activate, 1).unwrap();
    let err = stage(&mut world, 2, Mode::Activate, 2).unwrap_err();
    assert_eq!(
        err,
        Rejected::Conflict {
            slot: slot(),
            in_flight: ReloadId::from_u128(1)
        }
    );
    // Another slot is independent.
    world
        .execute(&Command::Stage {
            reload: ReloadId::from_u128(3),
            slot: SlotName::new("auth").unwrap(),
            mode: Mode::Activate,
            artifact: art(3),
        })
        .unwrap();
}

#[test]
fn only_probed_reloads_commit_and_dry_runs_never_do() {
    let mut world = World::default();
    stage(&mut world, 1, Mode::DryRun, 1).unwrap();
    let id = ReloadId::from_u128(1);
    assert!(matches!(
        world.execute(&Command::Commit { reload: id }),
        Err(Rejected::IllegalTransition { .. })
    ));
    through_probe(&mut world, 1);
    assert_eq!(
        world.execute(&Command::Commit { reload: id }),
        Err(Rejected::DryRunCannotCommit(id))
    );
    world.execute(&Command::PassDryRun { reload: id }).unwrap();
    let s = &world.slots[&slot()];
    assert!(s.active.is_none() && s.in_flight.is_none());
}

#[test]
fn failure_records_the_stage_being_attempted() {
    let mut world = World::default();
    stage(&mut world, 1, Mode::Activate, 1).unwrap();
    let id = ReloadId::from_u128(1);
    world
        .execute(&Command::RecordLaunch {
            reload: id,
            process: None,
            log_path: None,
        })
        .unwrap();
    world
        .execute(&Command::Fail {
            reload: id,
            reason: Reason::error("bad handshake"),
        })
        .unwrap();
    assert_eq!(
        world.reloads[&id].state,
        ReloadState::RolledBack {
            stage: Stage::Validated,
            reason: Reason::error("bad handshake")
        }
    );
    // Terminal: nothing changes it any more.
    assert!(matches!(
        world.execute(&Command::Fail {
            reload: id,
            reason: Reason::cancelled("again")
        }),
        Err(Rejected::Terminal { .. })
    ));
}

#[test]
fn commit_moves_the_marker_and_queues_the_old_generation_for_retirement() {
    let mut world = World::default();
    activate(&mut world, 1, 1);
    activate(&mut world, 2, 2);
    let s = &world.slots[&slot()];
    assert_eq!(s.active_generation(), Some(Generation(2)));
    assert_eq!(s.retiring.len(), 1);
    assert_eq!(s.retiring[0].generation, Generation(1));
    world
        .execute(&Command::Retire {
            slot: slot(),
            generation: Generation(1),
        })
        .unwrap();
    assert!(world.slots[&slot()].retiring.is_empty());
    assert!(matches!(
        world.execute(&Command::Retire {
            slot: slot(),
            generation: Generation(1)
        }),
        Err(Rejected::NotRetiring { .. })
    ));
}

#[test]
fn rollback_needs_a_known_generation_and_its_artifact() {
    let mut world = World::default();
    activate(&mut world, 1, 1);
    activate(&mut world, 2, 2);
    assert!(matches!(
        stage(&mut world, 3, Mode::Rollback { to: Generation(7) }, 1),
        Err(Rejected::UnknownGeneration { .. })
    ));
    assert!(matches!(
        stage(&mut world, 3, Mode::Rollback { to: Generation(1) }, 2),
        Err(Rejected::ArtifactMismatch { .. })
    ));
    let events = stage(&mut world, 3, Mode::Rollback { to: Generation(1) }, 1).unwrap();
    assert!(matches!(
        events[0].kind,
        EventKind::Staged {
            generation: Generation(3),
            previous: Some(Generation(2)),
            ..
        }
    ));
}

#[test]
fn check_flags_an_event_the_machine_would_not_produce() {
    let mut world = World::default();
    let events = stage(&mut world, 1, Mode::Activate, 1).unwrap();
    let mut forged = events[0].clone();
    if let EventKind::Staged { generation, .. } = &mut forged.kind {
        *generation = Generation(9);
    }
    let empty = World::default();
    assert!(check(&empty, &events[0]).is_ok());
    assert!(matches!(
        check(&empty, &forged),
        Err(Illegal::Mismatch { .. })
    ));
}

#[test]
fn slot_names_refuse_path_tricks() {
    for bad in [
        "",
        "../x",
        "a/b",
        ".hidden",
        "-flag",
        "sp ace",
        &"x".repeat(65),
    ] {
        assert!(SlotName::new(bad).is_err(), "{bad:?}");
    }
    assert!(SlotName::new("billing-v2.eu_1").is_ok());
}

#[test]
fn sha256_round_trips_as_hex() {
    let d = Sha256([0xab; 32]);
    let text = d.to_string();
    assert_eq!(text.len(), 64);
    assert_eq!(text.parse::<Sha256>().unwrap(), d);
    assert!("zz".parse::<Sha256>().is_err());
}

#[test]
fn sha256_is_hex_in_json() {
    let d = Sha256([0x0f; 32]);
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(json, format!("\"{}\"", "0f".repeat(32)));
    assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), d);
    assert!(serde_json::from_str::<Sha256>("\"nothex\"").is_err());
}

fn bake(world: &mut World, n: u128, a: u8) {
    stage(world, n, Mode::Activate, a).unwrap();
    through_probe(world, n);
    world
        .execute(&Command::CommitBaking {
            reload: ReloadId::from_u128(n),
            until_ms: 42,
        })
        .unwrap();
}

#[test]
fn a_bake_keeps_the_slot_busy_and_its_standby_and_candidate_pinned() {
    let mut world = World::default();
    activate(&mut world, 1, 1);
    bake(&mut world, 2, 2);
    let s = &world.slots[&slot()];
    assert_eq!(s.active_generation(), Some(Generation(2)));
    assert_eq!(s.in_flight, Some(ReloadId::from_u128(2)));
    assert_eq!(
        world.reloads[&ReloadId::from_u128(2)].state,
        ReloadState::Baking { until_ms: 42 }
    );
    // A second reload during the bake is a conflict.
    assert!(matches!(
        stage(&mut world, 3, Mode::Activate, 3),
        Err(Rejected::Conflict { .. })
    ));
    // The standby cannot retire, the candidate cannot be restarted, the bake cannot fail.
    let pinned = |r: Result<Vec<Event>, Rejected>| {
        assert!(matches!(r, Err(Rejected::BakeInProgress { .. })), "{r:?}");
    };
    pinned(world.execute(&Command::Retire {
        slot: slot(),
        generation: Generation(1),
    }));
    pinned(world.execute(&Command::Relaunch {
        slot: slot(),
        generation: Generation(2),
        process: None,
        log_path: None,
        endpoint: None,
    }));
    assert!(world
        .execute(&Command::Fail {
            reload: ReloadId::from_u128(2),
            reason: Reason::error("x"),
        })
        .is_err());
}

#[test]
fn a_revert_restores_exactly_the_previous_marker_and_retires_the_candidate() {
    let mut world = World::default();
    activate(&mut world, 1, 1);
    world
        .execute(&Command::Relaunch {
            slot: slot(),
            generation: Generation(1),
            process: Some(ProcessIdentity {
                pid: 4100,
                start_time: 9,
                boot_id: "b".into(),
            }),
            log_path: None,
            endpoint: None,
        })
        .unwrap();
    let before = world.slots[&slot()].active.clone();
    bake(&mut world, 2, 2);
    world
        .execute(&Command::Revert {
            reload: ReloadId::from_u128(2),
            reason: Reason::error("candidate exited"),
        })
        .unwrap();
    let s = &world.slots[&slot()];
    assert_eq!(s.active, before);
    assert_eq!(s.in_flight, None);
    assert_eq!(
        s.retiring.iter().map(|i| i.generation).collect::<Vec<_>>(),
        vec![Generation(2)]
    );
    // Only a baking reload can be confirmed or reverted.
    assert!(world
        .execute(&Command::Confirm {
            reload: ReloadId::from_u128(2)
        })
        .is_err());
    world.check_invariants().unwrap();
}

#[test]
fn a_confirm_keeps_the_candidate_and_lets_the_standby_retire() {
    let mut world = World::default();
    activate(&mut world, 1, 1);
    bake(&mut world, 2, 2);
    world
        .execute(&Command::Confirm {
            reload: ReloadId::from_u128(2),
        })
        .unwrap();
    assert_eq!(
        world.reloads[&ReloadId::from_u128(2)].state,
        ReloadState::Confirmed { until_ms: 42 }
    );
    world
        .execute(&Command::Retire {
            slot: slot(),
            generation: Generation(1),
        })
        .unwrap();
    let s = &world.slots[&slot()];
    assert_eq!(s.active_generation(), Some(Generation(2)));
    assert!(s.retiring.is_empty() && s.in_flight.is_none());
    world.check_invariants().unwrap();
}

#[test]
fn a_restart_intent_needs_a_stopped_active_generation_and_counts_as_running() {
    let mut world = World::default();
    activate(&mut world, 1, 1);
    let g = Generation(1);
    let restart = Command::Restart {
        slot: slot(),
        generation: g,
    };
    assert_eq!(
        world.execute(&restart).unwrap_err(),
        Rejected::AlreadyRunning {
            slot: slot(),
            generation: g,
        }
    );
    world
        .execute(&Command::Stop {
            slot: slot(),
            generation: g,
            reason: Reason::error("killed"),
        })
        .unwrap();
    world.execute(&restart).unwrap();
    let active = world.slot(&slot()).unwrap().active.unwrap();
    assert!(
        active.running,
        "recovery must look for the restarted process"
    );
    assert_eq!(active.process, None, "its process is not known yet");
    // The restart ends in `Relaunched`, or in `Stopped` when it failed.
    world
        .execute(&Command::Stop {
            slot: slot(),
            generation: g,
            reason: Reason::error("relaunch failed"),
        })
        .unwrap();
    world.execute(&restart).unwrap();
    world
        .execute(&Command::Relaunch {
            slot: slot(),
            generation: g,
            process: None,
            log_path: None,
            endpoint: None,
        })
        .unwrap();
    assert!(world.slot(&slot()).unwrap().active.unwrap().running);
}

#[test]
fn an_adoption_takes_a_newer_unknown_generation_as_active_and_queues_the_former_one() {
    let mut world = World::default();
    activate(&mut world, 1, 1);
    let adopt = |reload: u128, generation: u64| Command::Adopt {
        reload: ReloadId::from_u128(reload),
        slot: slot(),
        generation: Generation(generation),
        artifact: art(9),
        process: None,
        log_path: None,
        endpoint: None,
        reason: Reason::recovered("found running"),
    };
    // A generation number the journal already gave out cannot be adopted.
    assert_eq!(
        world.execute(&adopt(7, 1)).unwrap_err(),
        Rejected::NotNewer {
            slot: slot(),
            generation: Generation(1),
            next: Generation(2),
        }
    );
    assert_eq!(
        world.execute(&adopt(1, 3)).unwrap_err(),
        Rejected::DuplicateReload(ReloadId::from_u128(1))
    );
    // Nor while a reload is in flight.
    stage(&mut world, 2, Mode::Activate, 2).unwrap();
    assert!(matches!(
        world.execute(&adopt(7, 5)).unwrap_err(),
        Rejected::Conflict { .. }
    ));
    world
        .execute(&Command::Fail {
            reload: ReloadId::from_u128(2),
            reason: Reason::error("no"),
        })
        .unwrap();

    let events = world.execute(&adopt(7, 5)).unwrap();
    assert!(matches!(
        &events[0].kind,
        EventKind::Adopted {
            previous: Some(Generation(1)),
            ..
        }
    ));
    let s = world.slot(&slot()).unwrap();
    assert_eq!(s.active_generation(), Some(Generation(5)));
    assert_eq!(
        s.active.as_ref().map(|a| a.reload),
        Some(ReloadId::from_u128(7))
    );
    assert_eq!(
        s.retiring.iter().map(|i| i.generation).collect::<Vec<_>>(),
        vec![Generation(1)]
    );
    assert_eq!(s.next_generation, Generation(6));
    assert_eq!(world.history(&slot(), Generation(5)), Some(art(9)));
    assert_eq!(
        world.reload(&ReloadId::from_u128(7)).unwrap().state,
        ReloadState::Active
    );
    world.check_invariants().unwrap();
    // The stored event is a legal transition from the state before it.
    let mut before = World::default();
    activate(&mut before, 1, 1);
    stage(&mut before, 2, Mode::Activate, 2).unwrap();
    before
        .execute(&Command::Fail {
            reload: ReloadId::from_u128(2),
            reason: Reason::error("no"),
        })
        .unwrap();
    check(&before, &events[0]).unwrap();
    // The former generation retires as after a commit.
    world
        .execute(&Command::Retire {
            slot: slot(),
            generation: Generation(1),
        })
        .unwrap();
    world.check_invariants().unwrap();
}
