//! The bake window (DESIGN.md "Provisional activation") through the real binary, without a
//! daemon: `activate --bake` waits in the foreground, reverts to the same old process when
//! the candidate fails, confirms and retires the standby when it stays healthy.

use std::time::Duration;

use tryswap_tests::harness::{wait_gone, Harness};
use tryswap_tests::process::fixture_plugin_path;
use tryswap_tests::{pid_alive, FixtureConfig};

mod bake_support;
use bake_support::{activate, last_reload, pid_of, v1_active};

#[test]
fn a_candidate_that_crashes_during_its_bake_is_reverted_to_the_same_old_process() {
    let h = Harness::demo();
    bake_support::assert_crash_during_bake_reverts(&h);
}

#[test]
fn a_healthy_candidate_is_confirmed_when_the_bake_ends_then_the_standby_is_stopped() {
    let h = Harness::demo();
    bake_support::assert_healthy_bake_confirms(&h);
}

#[test]
fn a_bake_longer_than_a_day_is_a_usage_error() {
    let h = Harness::demo();
    let run = h.tryswap(&["rollback", "demo", "--bake", "25h"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("longer than 24h"), "{run:?}");
}

#[test]
fn sigint_during_a_foreground_bake_reverts_to_the_same_old_process() {
    use tryswap_tests::crash::Background;
    use tryswap_tests::process::send_signal;
    let h = Harness::demo();
    let old_pid = v1_active(&h);
    let cfg = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let plugin = fixture_plugin_path();
    let run = Background::start(
        &h,
        &[
            "activate",
            "demo",
            plugin.to_str().expect("utf-8 path"),
            "--config-file",
            cfg.to_str().expect("utf-8 path"),
            "--bake",
            "30s",
        ],
        "bake",
    );
    // The countdown shows the bake runs; then interrupt it.
    let counting = tryswap_tests::process::wait_until(Duration::from_secs(20), || {
        run.output().contains("s left")
    });
    assert!(counting, "no countdown: {}", run.output());
    assert!(send_signal(run.pid(), nix::sys::signal::Signal::SIGINT));
    let pid = run.pid();
    let exited = tryswap_tests::process::wait_until(Duration::from_secs(20), || !pid_alive(pid));
    assert!(exited, "still running: {}", run.output());
    assert!(
        run.output().contains("reverted during its bake"),
        "{}",
        run.output()
    );
    let (status, killed) = run.kill();
    assert!(!killed, "it had to be killed");
    assert_eq!(status.code(), Some(2));

    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert_eq!((generation, pid), (1, old_pid), "never restarted");
    let last = last_reload(&h);
    assert_eq!(last["outcome"], "reverted", "{last}");
    assert_eq!(last["reason_kind"], "cancelled", "{last}");
}

/// A bake whose foreground command died (SIGKILL at `bake-after-commit`) goes on; a second
/// reload is a conflict (exit 3); `tryswap revert` and `tryswap confirm` end it by hand.
#[test]
fn confirm_and_revert_by_hand_end_a_bake_and_a_second_reload_during_it_is_a_conflict() {
    use tryswap_tests::crash::{reload_args, tryswap_killed_at};
    for verb in ["revert", "confirm"] {
        let h = Harness::demo();
        let old_pid = v1_active(&h);
        let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
        let mut args = reload_args("activate", "demo", &v2);
        args.extend(["--bake".to_owned(), "60s".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let exit = tryswap_killed_at(&h, "bake-after-commit", &args);
        assert_eq!(exit.signal(), Some(9), "{exit:?}");

        let candidate_pid = bake_support::assert_baking_shown(&h, old_pid);

        let (code, report) = activate(&h, "v3", &FixtureConfig::with_message("v3"), None);
        assert_eq!(code, 3, "a second reload during a bake: {report}");

        let run = h.tryswap(&["--json", verb, "demo"]);
        let report = run.json();
        if verb == "revert" {
            assert_eq!(run.code, 2, "{run:?}");
            assert_eq!(report["outcome"], "reverted", "{report}");
            assert_eq!(report["reason_kind"], "cancelled", "{report}");
            assert!(wait_gone(candidate_pid, Duration::from_secs(5)));
            assert_eq!(h.active("demo").map(|a| (a.0, a.1)), Some((1, old_pid)));
        } else {
            assert_eq!(run.code, 0, "{run:?}");
            assert_eq!(report["bake"]["state"], "confirmed", "{report}");
            assert!(wait_gone(old_pid, Duration::from_secs(5)));
            assert_eq!(
                h.active("demo").map(|a| (a.0, a.1)),
                Some((2, candidate_pid))
            );
        }
        // Nothing is baking any more.
        let again = h.tryswap(&[verb, "demo"]);
        assert_eq!(again.code, 1, "{again:?}");
        assert!(again.stderr.contains("no bake in progress"), "{again:?}");
        let verify = h.tryswap(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");
    }
}

#[test]
fn a_candidate_that_turns_not_serving_during_its_bake_is_reverted() {
    let h = Harness::demo();
    let old_pid = v1_active(&h);
    let sick = FixtureConfig {
        unhealthy_after_ms: Some(1000),
        ..FixtureConfig::with_message("v2")
    };
    let (code, report) = activate(&h, "v2", &sick, Some("10s"));
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["outcome"], "reverted", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("probe failed 3 times in a row"), "{report}");
    assert!(wait_gone(pid_of(&report), Duration::from_secs(5)));
    let (generation, pid, _) = h.active("demo").expect("an active generation");
    assert_eq!((generation, pid), (1, old_pid), "never restarted");
}

/// A standby that died during the bake is relaunched from the store when the bake reverts.
#[test]
fn a_revert_relaunches_a_standby_that_died_during_the_bake() {
    use tryswap_tests::crash::{kill_and_wait, reload_args, tryswap_killed_at};
    let h = Harness::demo();
    let old_pid = v1_active(&h);
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    let mut args = reload_args("activate", "demo", &v2);
    args.extend(["--bake".to_owned(), "60s".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exit = tryswap_killed_at(&h, "bake-after-commit", &args);
    assert_eq!(exit.signal(), Some(9), "{exit:?}");
    let (_, candidate_pid, _) = h.active("demo").expect("the candidate is active");
    kill_and_wait(old_pid);

    let run = h.tryswap(&["--json", "revert", "demo"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(wait_gone(candidate_pid, Duration::from_secs(5)));
    let (generation, pid, _) = h.active("demo").expect("the standby is active again");
    assert_eq!(generation, 1);
    assert_ne!(pid, old_pid, "relaunched in a new process");
    assert!(pid_alive(pid));
    let verify = h.tryswap(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// SIGKILL of a one-shot `activate --bake` at random moments (seeded; rerun with
/// `TRYSWAP_CRASH_SEED=<seed>`), then `recover` until nothing is in flight (a bake found
/// under way goes on until its deadline): the slot ends with the candidate confirmed or the
/// old generation restored, exactly one live plugin process, and a journal that verifies.
#[test]
fn sigkill_of_a_one_shot_bake_at_random_moments_is_finished_or_restored() {
    use tryswap_tests::crash::{Background, SplitMix64};
    use tryswap_tests::daemon::poll;
    const ROUNDS: u64 = 4;
    let seed = match std::env::var("TRYSWAP_CRASH_SEED") {
        Ok(text) => text.trim().parse().expect("TRYSWAP_CRASH_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    println!("bake random kills: seed {seed} (rerun with TRYSWAP_CRASH_SEED={seed})");
    let mut rng = SplitMix64::new(seed);
    let h = Harness::demo();
    v1_active(&h);
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        let (before, _) = bake_support::assert_one_live_active(&h);
        let name = format!("r{round}");
        let cfg = h.fixture_config(&name, &FixtureConfig::with_message(&name));
        let args = bake_support::activate_args(&cfg, Some("700ms"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = Background::start(&h, &args, &name);
        // From startup through staging, launch, probe and the bake to its end.
        let delay = Duration::from_millis(50 + rng.below(1200));
        std::thread::sleep(delay);
        let (status, killed) = run.kill();
        let settled = poll(Duration::from_secs(20), || {
            let recover = h.tryswap(&["--json", "recover"]);
            assert_eq!(recover.code, 0, "round {round}: {recover:?}");
            h.status()["slots"][0]["in_flight"].is_null().then_some(())
        });
        assert!(
            settled.is_some(),
            "round {round} (killed after {delay:?}): still in flight: {}",
            h.status()
        );
        let (after, _) = bake_support::assert_one_live_active(&h);
        assert!(
            after >= before,
            "round {round}: generation {after} after {before}"
        );
        let outcome = h.outcomes("demo").last().cloned().unwrap_or_default();
        if after > before {
            assert_eq!(outcome, "active", "round {round}");
        }
        println!(
            "round {round}: killed after {delay:?} (killed: {killed}, {status}): {outcome}, generation {before} -> {after}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(120), "too slow");
}
