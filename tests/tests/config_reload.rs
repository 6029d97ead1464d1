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
