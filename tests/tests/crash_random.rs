//! SIGKILL at random moments: `tryswap activate` (good and never-healthy candidates, on one
//! state directory) is killed after a random delay, then recovered, round after round. After
//! every round the invariants of the crash matrix hold: one live active process answering
//! calls, no candidate or tagged process left, `journal verify` passes, the active generation
//! is the new one exactly when the journal committed the swap (and otherwise the old one,
//! still the same process).
//!
//! The schedule comes from a seeded generator; the seed is printed. Rerun a failure with
//! `TRYSWAP_CRASH_SEED=<seed>`.

use std::time::{Duration, Instant};

use tryswap_tests::crash::{
    assert_recovered, describe_actions, last_seq, recover, reload_args, seed_from_env, Background,
    CrashFacts, Expect, SplitMix64,
};
use tryswap_tests::harness::{Harness, SlotSpec};
use tryswap_tests::FixtureConfig;

const ROUNDS: u64 = 15;
/// Longest random delay before the kill.
const MAX_DELAY_MS: u64 = 300;

#[tokio::test]
async fn sigkill_at_random_moments_during_reloads_is_always_recovered() {
    let seed = seed_from_env("TRYSWAP_CRASH_SEED");
    println!("crash_random: seed {seed} (rerun with TRYSWAP_CRASH_SEED={seed})");
    let mut rng = SplitMix64::new(seed);
    let h = Harness::new(&[SlotSpec {
        failure_threshold: 2,
        ..SlotSpec::new("demo")
    }]);

    // A full activation over a running generation, timed (the median of three, after a
    // first one that warms the caches up): the kills land from a quarter of that time
    // (startup, recovery and staging come first) to a quarter past it, in a window at
    // least 10 ms wide. A window with a fixed floor of 50 ms put most kills after the end
    // of a 10 ms activation: 2 of 15 landed mid-run once the `Staged` flush was gone.
    let v0 = h.fixture_config("v0", &FixtureConfig::with_message("v0"));
    let zeroth = h.activate("demo", &v0);
    assert_eq!(zeroth.code, 0, "activating v0: {zeroth:?}");
    let mut timed = Vec::new();
    for n in 1..=3 {
        let config = h.fixture_config(
            &format!("v{n}"),
            &FixtureConfig::with_message(format!("v{n}")),
        );
        let started = Instant::now();
        let run = h.activate("demo", &config);
        timed.push(started.elapsed());
        assert_eq!(run.code, 0, "activating v{n}: {run:?}");
    }
    timed.sort();
    let full = timed[1];
    let full_ms = full.as_millis() as u64;
    let earliest_ms = (full_ms / 4).min(MAX_DELAY_MS / 2);
    let latest_ms = (full_ms * 5 / 4).clamp(earliest_ms + 10, MAX_DELAY_MS);
    let (generation, pid, _) = h.active("demo").expect("v3 active");
    let mut current = Expect {
        slot: "demo".into(),
        generation,
        pid: Some(pid),
        message: "v3".into(),
    };
    println!(
        "crash_random: a full activation takes {full:?} (median of {timed:?}); kills after \
         {earliest_ms}..={latest_ms} ms"
    );

    let sick = h.fixture_config(
        "sick",
        &FixtureConfig {
            never_healthy: true,
            ..FixtureConfig::with_message("sick")
        },
    );
    let mut killed_rounds = 0;
    for round in 0..ROUNDS {
        let good = rng.below(4) != 0;
        let message = format!("r{round}");
        let config = if good {
            h.fixture_config(&message, &FixtureConfig::with_message(message.as_str()))
        } else {
            sick.clone()
        };
        let delay = Duration::from_millis(earliest_ms + rng.below(latest_ms - earliest_ms + 1));
        let since = last_seq(&h);
        let args = reload_args("activate", "demo", &config);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();

        let run = Background::start(&h, &args, &format!("round-{round}"));
        tokio::time::sleep(delay).await;
        let output_before_kill = run.output();
        let (status, killed) = run.kill();
        killed_rounds += u32::from(killed);

        let facts = CrashFacts::read(&h, since);
        let actions = recover(&h);
        let what = format!(
            "seed {seed} round {round} ({} candidate, killed after {delay:?}: {killed}, {status}, \
             journal: {:?}; output: {output_before_kill})",
            if good { "good" } else { "never-healthy" },
            facts.events
        );
        if facts.committed {
            assert!(good, "{what}: a never-healthy candidate was committed");
            current = Expect {
                slot: "demo".into(),
                generation: facts.generation.expect("generation"),
                pid: facts.candidate_pid,
                message: message.clone(),
            };
        }
        let recovered = assert_recovered(&h, &current, facts.reload_id.as_deref(), &what).await;
        current.pid = Some(recovered.pid);
        println!(
            "round {round:>2}: {:<13} delay {:>3} ms, {}, journal {} → {} → active g{} pid {}",
            if good { "good" } else { "never-healthy" },
            delay.as_millis(),
            if killed { "killed" } else { "finished" },
            if facts.events.is_empty() {
                "—".to_owned()
            } else {
                facts.events.join("→")
            },
            describe_actions(&actions),
            recovered.generation,
            recovered.pid
        );
    }
    println!("crash_random: {killed_rounds} of {ROUNDS} rounds were killed mid-run");
    assert!(
        killed_rounds >= 3,
        "seed {seed}: only {killed_rounds} of {ROUNDS} kills landed mid-run; the kill window \
         ({earliest_ms}..={latest_ms} ms) misses the reloads"
    );
}
