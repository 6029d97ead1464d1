//! Config reload as one transaction: all changed slots commit together, or none does.

use std::time::Duration;

use tryswap::config::{Config, SlotConfig};
use tryswap::report::Outcome;
use tryswap::ConfigOutcome;
use tryswap::{CandidateSpec, Supervisor};
use tryswap_fsm::{EventKind, SlotName};
use tryswap_tests::{call, fixture_plugin_path, pid_alive, wait_until, FixtureConfig, TempState};

fn slot_config(name: &str) -> SlotConfig {
    tryswap_tests::harness::fixture_slot(name)
}

struct Setup {
    state: TempState,
    sup: Supervisor,
    config: Config,
}

impl Setup {
    async fn new() -> Setup {
        let state = TempState::new().unwrap();
        let sup = Supervisor::open(state.join("state")).unwrap();
        let config = Config::with_slots(vec![slot_config("a"), slot_config("b")]);
        for slot in &config.slots {
            sup.add_process_slot(slot.clone());
        }
        for name in ["a", "b"] {
            let cfg = FixtureConfig::with_message(name)
                .write(&state.join(format!("{name}.toml")))
                .unwrap();
            let spec = CandidateSpec::executable(fixture_plugin_path()).with_config(cfg);
            let report = sup.activate(&slot(name), spec).await.unwrap();
            assert_eq!(report.outcome, Outcome::Active);
        }
        Setup { state, sup, config }
    }

    fn active(&self, name: &str) -> (u64, u32) {
        let status = self.sup.status(Some(&slot(name))).unwrap();
        let active = status.slots[0].active.clone().unwrap();
        (active.generation, active.pid.unwrap())
    }
}

fn slot(name: &str) -> SlotName {
    SlotName::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_slot_keeps_every_slot_as_it_was() {
    let s = Setup::new().await;
    let (a0, b0) = (s.active("a"), s.active("b"));
    let mut next = s.config.clone();
    next.slots[0].env.insert("FEATURE".into(), "on".into());
    // b's new args break the magic cookie: its candidate exits before the handshake.
    next.slots[1].args[5] = "wrong-cookie".into();

    let report = s.sup.apply_config(&next, false).await.unwrap();
    assert_eq!(report.outcome, ConfigOutcome::RolledBack, "{report:?}");
    assert!(report.error.as_deref().unwrap_or("").contains("slot b"));
    assert_eq!(report.reloads.len(), 2);
    for r in &report.reloads {
        assert_eq!(r.outcome, Outcome::RolledBack);
        if let Some(pid) = r.candidate.as_ref().and_then(|c| c.pid) {
            assert!(
                wait_until(Duration::from_secs(5), || !pid_alive(pid)),
                "candidate {pid} survived"
            );
        }
    }
    assert_eq!(s.active("a"), a0);
    assert_eq!(s.active("b"), b0);
    assert!(pid_alive(a0.1) && pid_alive(b0.1));
    // The runtime still uses the old config: a reload of a with the old env works as before.
    let lease = s.sup.lease(&slot("a")).unwrap();
    let reply = call(
        "tcp",
        &lease.endpoint().unwrap().address,
        "x",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(reply.message, "a");
    drop(lease);
    s.sup.shutdown().await;
    drop(s.state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_slots_commit_in_one_transaction_and_old_generations_retire() {
    let s = Setup::new().await;
    let (a0, b0) = (s.active("a"), s.active("b"));
    let mut next = s.config.clone();
    next.slots[0].env.insert("FEATURE".into(), "on".into());
    next.slots[1].env.insert("FEATURE".into(), "on".into());

    // A dry run first: passes, changes nothing.
    let dry = s.sup.apply_config(&next, true).await.unwrap();
    assert_eq!(dry.outcome, ConfigOutcome::DryRunPassed, "{dry:?}");
    assert_eq!((s.active("a"), s.active("b")), (a0, b0));

    let before = s.sup.journal().last_seq();
    let report = s.sup.apply_config(&next, false).await.unwrap();
    assert_eq!(report.outcome, ConfigOutcome::Applied, "{report:?}");
    let (a1, b1) = (s.active("a"), s.active("b"));
    assert!(a1.0 > a0.0 && b1.0 > b0.0, "generations did not move");
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(a0.1)
            && !pid_alive(b0.1)),
        "old generations survived"
    );
    // Both Activated records were appended by one transaction: adjacent, same timestamp.
    let activated: Vec<_> = s
        .sup
        .journal()
        .events(before + 1)
        .map(|r| r.unwrap())
        .filter(|r| matches!(r.event, EventKind::Activated))
        .collect();
    assert_eq!(activated.len(), 2);
    assert_eq!(activated[1].seq, activated[0].seq + 1);
    assert_eq!(activated[0].at, activated[1].at);
    assert!(s.sup.journal().verify().unwrap().is_ok());

    // Unchanged config: nothing to do.
    let again = s.sup.apply_config(&next, false).await.unwrap();
    assert_eq!(again.outcome, ConfigOutcome::Unchanged);
    s.sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_slots_stop_and_added_slots_register() {
    let s = Setup::new().await;
    let (_, b_pid) = s.active("b");
    let mut next = s.config.clone();
    next.slots.remove(1);
    next.slots.push(slot_config("c"));
    let report = s.sup.apply_config(&next, false).await.unwrap();
    assert_eq!(report.outcome, ConfigOutcome::Applied);
    assert_eq!(report.removed, vec!["b"]);
    assert_eq!(report.added, vec!["c"]);
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(b_pid)));
    let status = s.sup.status(None).unwrap();
    let b = status.slots.iter().find(|x| x.slot == "b").unwrap();
    assert!(!b.configured);
    let c = status.slots.iter().find(|x| x.slot == "c").unwrap();
    assert!(c.configured && c.active.is_none());
    s.sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_removed_and_added_back_is_started_again() {
    let s = Setup::new().await;
    let (b_gen, b_pid) = s.active("b");
    let mut without_b = s.config.clone();
    without_b.slots.remove(1);
    let report = s.sup.apply_config(&without_b, false).await.unwrap();
    assert_eq!(report.removed, vec!["b"]);
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(b_pid)));

    let report = s.sup.apply_config(&s.config, false).await.unwrap();
    assert_eq!(report.outcome, ConfigOutcome::Applied, "{report:?}");
    assert_eq!(report.added, vec!["b"]);
    assert_eq!(report.started, vec!["b"], "{report:?}");
    let status = s.sup.status(Some(&slot("b"))).unwrap();
    let active = status.slots[0]
        .active
        .clone()
        .expect("b has an active generation");
    assert_eq!(active.generation, b_gen);
    assert!(active.alive, "b was not started: {status:?}");
    assert_ne!(active.pid, Some(b_pid));
    s.sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_never_starts_a_slot_the_operator_stopped() {
    let s = Setup::new().await;
    let (_, a_pid) = s.active("a");
    let (_, b_pid) = s.active("b");
    s.sup.stop(&slot("a")).await.unwrap();
    s.sup.stop(&slot("b")).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(a_pid)
        && !pid_alive(b_pid)));

    // a's section changes: it gets the new config but stays stopped.
    let mut next = s.config.clone();
    next.slots[0].env.insert("FEATURE".into(), "on".into());
    // b is removed and added back: the operator's stop still wins.
    let mut without_b = next.clone();
    without_b.slots.remove(1);
    let report = s.sup.apply_config(&without_b, false).await.unwrap();
    assert_eq!(report.outcome, ConfigOutcome::Applied, "{report:?}");
    assert_eq!(report.changed, vec!["a"]);
    assert!(
        report.reloads.is_empty(),
        "a candidate was launched: {report:?}"
    );
    let report = s.sup.apply_config(&next, false).await.unwrap();
    assert_eq!(report.added, vec!["b"]);
    assert!(report.started.is_empty(), "{report:?}");

    let status = s.sup.status(None).unwrap();
    for name in ["a", "b"] {
        let slot = status.slots.iter().find(|x| x.slot == name).unwrap();
        let active = slot.active.as_ref().expect("the marker stays");
        assert!(!active.alive, "slot {name} was started: {slot:?}");
    }
    assert!(
        s.state.processes().is_empty(),
        "plugins run: {:?}",
        s.state.processes()
    );
    s.sup.shutdown().await;
}

/// A config reload's bake is one unit (DESIGN.md "Provisional activation"): the changed
/// slots' candidates bake together, and if any of them fails (or is reverted by hand)
/// every slot of the transaction goes back to its standby, in the same process, under its
/// old config.
mod bake {
    use std::time::Instant;

    use tryswap::{BakeEnd, ConfigReloadReport};
    use tryswap_fsm::Reason;

    use super::*;

    /// The config with `bake` on both slots and a changed environment for both; with
    /// `b_crashes`, b's candidate runs a fixture config that exits during the bake.
    fn next_config(s: &Setup, bake: Duration, b_crashes: bool) -> Config {
        let mut next = s.config.clone();
        for slot in &mut next.slots {
            slot.bake = bake;
            slot.env.insert("FEATURE".into(), "on".into());
        }
        if b_crashes {
            let crashing = FixtureConfig {
                crash_after_ms: Some(800),
                ..FixtureConfig::with_message("b")
            }
            .write(&s.state.join("b-crashing.toml"))
            .expect("write fixture config");
            next.slots[1].args[1] = crashing.to_string_lossy().into_owned();
        }
        next
    }

    /// Every reload of the report was reverted during its bake, and its candidate is gone.
    fn assert_all_reverted(report: &ConfigReloadReport) {
        assert_eq!(report.outcome, ConfigOutcome::RolledBack, "{report:?}");
        assert_eq!(report.reloads.len(), 2, "{report:?}");
        for reload in &report.reloads {
            assert_eq!(reload.outcome, Outcome::Reverted, "{report:?}");
            assert_eq!(reload.bake.as_ref().map(|b| b.state), Some("reverted"));
            let pid = reload
                .candidate
                .as_ref()
                .and_then(|c| c.pid)
                .expect("a candidate pid");
            assert!(
                wait_until(Duration::from_secs(5), || !pid_alive(pid)),
                "candidate {pid} survived the revert"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_slot_failing_during_a_config_reload_bake_reverts_every_slot() {
        let s = Setup::new().await;
        let (a0, b0) = (s.active("a"), s.active("b"));
        let next = next_config(&s, Duration::from_secs(5), true);

        let report = s
            .sup
            .apply_config(&next, false)
            .await
            .expect("config reload");
        assert_all_reverted(&report);
        let error = report.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("reverted during the bake") && error.contains("slot b"),
            "{report:?}"
        );
        // a's candidate was healthy: reverted all the same, to the very same process.
        assert_eq!(s.active("a"), a0, "never restarted");
        assert_eq!(s.active("b"), b0, "never restarted");
        assert!(pid_alive(a0.1) && pid_alive(b0.1));
        // The slots run their old config again: applying it changes nothing.
        let again = s.sup.apply_config(&s.config, false).await.expect("reload");
        assert_eq!(again.outcome, ConfigOutcome::Unchanged, "{again:?}");
        assert!(s
            .sup
            .journal()
            .verify()
            .expect("verify")
            .problems
            .is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_healthy_config_reload_bake_confirms_every_slot_at_its_end() {
        let s = Setup::new().await;
        let (a0, b0) = (s.active("a"), s.active("b"));
        let started = Instant::now();
        let report = s
            .sup
            .apply_config(&next_config(&s, Duration::from_secs(1), false), false)
            .await
            .expect("config reload");
        assert!(started.elapsed() >= Duration::from_millis(900), "no bake");
        assert_eq!(report.outcome, ConfigOutcome::Applied, "{report:?}");
        for reload in &report.reloads {
            assert_eq!(reload.outcome, Outcome::Active, "{report:?}");
            assert_eq!(reload.bake.as_ref().map(|b| b.state), Some("confirmed"));
        }
        for (name, old) in [("a", a0), ("b", b0)] {
            let now = s.active(name);
            assert_eq!(now.0, old.0 + 1, "{name}");
            assert!(pid_alive(now.1));
            assert!(
                wait_until(Duration::from_secs(5), || !pid_alive(old.1)),
                "{name}'s standby survived the confirm"
            );
        }
    }

    /// `revert` of one slot of a config reload's bake reverts the whole unit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reverting_one_slot_of_a_config_reload_bake_reverts_every_slot() {
        let s = Setup::new().await;
        let (a0, b0) = (s.active("a"), s.active("b"));
        let next = next_config(&s, Duration::from_secs(60), false);
        let sup = s.sup.clone();
        let reload = tokio::spawn(async move { sup.apply_config(&next, false).await });
        let baking = tryswap_tests::wait_until_async(Duration::from_secs(20), || async {
            s.sup.status(None).is_ok_and(|status| {
                status.slots.iter().all(|slot| {
                    slot.in_flight
                        .as_ref()
                        .is_some_and(|r| r.bake.as_ref().is_some_and(|b| b.state == "baking"))
                })
            })
        })
        .await;
        assert!(baking, "the slots never baked");
        let by_hand = s
            .sup
            .end_bake(&slot("a"), BakeEnd::Revert(Reason::cancelled("by hand")))
            .await
            .expect("revert");
        assert_eq!(by_hand.outcome, Outcome::Reverted);
        let report = tokio::time::timeout(Duration::from_secs(20), reload)
            .await
            .expect("the config reload ended")
            .expect("task")
            .expect("config reload");
        assert_all_reverted(&report);
        assert_eq!(s.active("a"), a0);
        assert_eq!(s.active("b"), b0);
    }
}
