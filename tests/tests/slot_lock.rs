//! An operation that waited for its slot's lock runs on the slot's runtime as it is once the
//! lock is held: a config reload that replaced the runtime meanwhile (new driver, new
//! environment) is not undone by an operation that looked the runtime up before.
//!
//! Own test binary: it arms the `slot-before-lock` failpoint process-wide.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tryswap::config::Config;
use tryswap::report::Outcome;
use tryswap::{CandidateSpec, Supervisor};
use tryswap_fsm::SlotName;
use tryswap_tests::{fixture_plugin_path, FixtureConfig, TempState};

fn environ_has(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == entry.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_waited_for_the_slot_runs_on_the_runtime_a_config_reload_put_there() {
    let state = TempState::new().unwrap();
    let sup = Supervisor::open(state.join("state")).unwrap();
    let slot = SlotName::new("a").unwrap();
    let config = Config::with_slots(vec![tryswap_tests::harness::fixture_slot("a")]);
    sup.add_process_slot(config.slots[0].clone());
    let spec = |name: &str| {
        let cfg = FixtureConfig::with_message(name)
            .write(&state.join(format!("{name}.toml")))
            .unwrap();
        CandidateSpec::executable(fixture_plugin_path()).with_config(cfg)
    };
    let first = sup.activate(&slot, spec("v1")).await.unwrap();
    assert_eq!(first.outcome, Outcome::Active);

    // The reload stops between looking the runtime up and taking the slot's lock…
    let (reached_tx, reached) = mpsc::channel::<()>();
    let (resume, resume_rx) = mpsc::channel::<()>();
    let (reached_tx, resume_rx) = (Mutex::new(reached_tx), Arc::new(Mutex::new(resume_rx)));
    fail::cfg_callback("slot-before-lock", move || {
        let _ = reached_tx.lock().unwrap().send(());
        let _ = resume_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
    })
    .unwrap();
    let reload = tokio::spawn({
        let (sup, slot, spec) = (sup.clone(), slot.clone(), spec("v2"));
        async move { sup.activate(&slot, spec).await }
    });
    reached
        .recv_timeout(Duration::from_secs(30))
        .expect("the reload reaches the slot lock");
    fail::remove("slot-before-lock");

    // … while a config reload gives the slot a new environment (and a new runtime).
    let mut next = config.clone();
    next.slots[0].env.insert("FEATURE".into(), "on".into());
    let applied = sup.apply_config(&next, false).await.unwrap();
    assert!(applied.error.is_none(), "{applied:?}");
    resume.send(()).unwrap();

    let report = reload.await.unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Active, "{report:?}");
    let candidate = report.candidate.as_ref().expect("a candidate");
    let pid = candidate.pid.expect("the candidate's pid");
    assert!(
        environ_has(pid, "FEATURE=on"),
        "the reload launched its candidate with the replaced runtime's environment"
    );
    // And the runtime in force serves it: a lease reaches the new generation.
    let lease = sup.lease(&slot).unwrap();
    assert_eq!(lease.generation().0, candidate.generation);
    drop(lease);
    sup.shutdown().await;
}
