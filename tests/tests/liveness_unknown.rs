//! "Cannot look" is never "dead": when `/proc` cannot be read (as when tryswap is out of file
//! descriptors, simulated here by the `proc-stat-emfile` failpoint), recovery reattaches the
//! active generation instead of relaunching a second one beside it, journals nothing, and
//! `status` shows its health as `unknown` (text and `--json`), not `exited`.

use tryswap_tests::crash::{last_seq, tryswap_env, FAILPOINTS_ENV};
use tryswap_tests::harness::Harness;
use tryswap_tests::{pid_alive, FixtureConfig};

const PROC_UNREADABLE: (&str, &str) = (FAILPOINTS_ENV, "proc-stat-emfile=return");

#[test]
fn an_unreadable_proc_is_unknown_never_dead() {
    let h = Harness::demo();
    let run = h.activate(
        "demo",
        &h.fixture_config("v1", &FixtureConfig::with_message("v1")),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let (generation, pid, _) = h.active("demo").expect("v1 active");
    let since = last_seq(&h);

    let recovered = tryswap_env(&h, &["--json", "recover"], &[PROC_UNREADABLE]);
    assert_eq!(recovered.code(), Some(0), "{recovered:?}");
    let actions = recovered.json()["actions"].clone();
    let actions = actions.as_array().expect("recovery actions");
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(
        matches!(
            actions[0]["action"].as_str(),
            Some("reattached" | "reattached_unhealthy")
        ),
        "a generation whose liveness is unknown was not reattached: {actions:?}"
    );
    assert_eq!(actions[0]["pid"], pid, "{actions:?}");

    let status = tryswap_env(&h, &["--json", "status"], &[PROC_UNREADABLE]);
    assert_eq!(status.code(), Some(0), "{status:?}");
    let slot = &status.json()["slots"][0];
    assert_eq!(slot["health"], "unknown", "{slot}");
    assert_eq!(slot["active"]["pid"], pid, "{slot}");
    assert_eq!(slot["active"]["generation"], generation, "{slot}");

    let text = tryswap_env(&h, &["status"], &[PROC_UNREADABLE]);
    assert_eq!(text.code(), Some(0), "{text:?}");
    assert!(text.stdout.contains("unknown"), "{}", text.stdout);
    assert!(!text.stdout.contains("exited"), "{}", text.stdout);

    // Nothing was relaunched, stopped or journaled: the very same process serves.
    assert!(pid_alive(pid));
    assert_eq!(last_seq(&h), since, "recovery journaled something");
    assert_eq!(h.active("demo").map(|(_, p, _)| p), Some(pid));
    assert_eq!(h.status()["slots"][0]["health"], "running");
}
