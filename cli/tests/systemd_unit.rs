//! docs/tryswap.service: the keys the daemon relies on, and its hardening score.

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tryswap.service");
    std::fs::read_to_string(path).expect("read docs/tryswap.service")
}

/// The values of `key` in the unit, in order.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

#[test]
fn the_unit_notifies_reloads_synchronously_and_has_a_watchdog() {
    let text = unit();
    assert_eq!(values(&text, "Type"), ["notify"]);
    let reload = values(&text, "ExecReload");
    assert_eq!(reload.len(), 1, "{reload:?}");
    assert!(
        reload[0].contains("tryswap") && reload[0].ends_with("reload-config"),
        "ExecReload must run `tryswap reload-config` (synchronous, exit code reported): {reload:?}"
    );
    let watchdog = values(&text, "WatchdogSec");
    assert_eq!(watchdog.len(), 1, "{watchdog:?}");
    assert_ne!(watchdog[0], "0");
    // Plugins outlive a crashed daemon (it reattaches them).
    assert_eq!(values(&text, "KillMode"), ["process"]);
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "PrivateTmp",
        "RestrictAddressFamilies",
        "SystemCallFilter",
        "CapabilityBoundingSet",
    ] {
        assert!(!values(&text, key).is_empty(), "{key} is not set");
    }
    // Recovery reads the boot id under /proc/sys: hiding it breaks plugin identity.
    assert!(values(&text, "ProcSubset").is_empty());
}

#[test]
fn systemd_analyze_rates_the_unit_below_5() {
    let Ok(out) = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tryswap.service"))
        .output()
    else {
        assert!(
            std::env::var_os("TRYSWAP_REQUIRE_ALL").is_none_or(|v| v != "1"),
            "systemd-analyze is not installed and TRYSWAP_REQUIRE_ALL=1"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for tryswap.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no score in systemd-analyze's output:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score < 5.0, "exposure {score}:\n{text}");
}
