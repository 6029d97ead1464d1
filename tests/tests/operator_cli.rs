//! The operator's view through the real binary (issue 16): output conventions (closed
//! pipes, exit 64, JSON errors, `"schema": 1`), live progress through the daemon, event
//! backlogs, truthful status and history, logs, the state-dir wait, already-active
//! candidates, completions, the man page and metrics negotiation.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tryswap_tests::daemon::{http_unix, sse_data, Daemon};
use tryswap_tests::harness::{tryswap_path, Harness, Run};
use tryswap_tests::{fixture_plugin_path, FixtureConfig};

fn plugin() -> String {
    fixture_plugin_path().to_str().unwrap().to_owned()
}

fn command(h: &Harness, args: &[&str]) -> Command {
    let mut command = Command::new(tryswap_path());
    command
        .arg("--config")
        .arg(&h.config_path)
        .args(args)
        .env_remove("TRYSWAP_STATE_DIR")
        .env_remove("TRYSWAP_LOG")
        .stdin(Stdio::null());
    command
}

/// Runs `tryswap ARGS…` with its stdout a pipe whose reading end is already closed.
/// Returns the exit code and stderr.
fn into_closed_pipe(h: &Harness, args: &[&str]) -> (Option<i32>, String) {
    let mut child = command(h, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tryswap");
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), stderr);
        }
        assert!(Instant::now() < deadline, "tryswap {args:?} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn activated(h: &Harness, message: &str) -> Run {
    let cfg = h.fixture_config(message, &FixtureConfig::with_message(message));
    let run = h.activate("demo", &cfg);
    assert_eq!(run.code, 0, "{run:?}");
    run
}

#[test]
fn a_closed_pipe_ends_quietly_with_exit_0_with_and_without_a_daemon() {
    let h = Harness::demo();
    activated(&h, "v1");
    activated(&h, "v2");
    for args in [
        &["events"][..],
        &["journal", "show"],
        &["journal", "export"],
        &["--json", "status"],
        &["history", "demo"],
    ] {
        let (code, stderr) = into_closed_pipe(&h, args);
        assert_eq!(code, Some(0), "{args:?} without a daemon: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let _daemon = Daemon::start(&h);
    for args in [
        &["events"][..],
        &["journal", "show"],
        &["journal", "export"],
        &["status"],
    ] {
        let (code, stderr) = into_closed_pipe(&h, args);
        assert_eq!(code, Some(0), "{args:?} through the daemon: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn usage_errors_exit_64_and_json_errors_are_one_object_on_stdout() {
    let h = Harness::demo();
    for args in [
        &["bogus"][..],
        &["activate"],
        &["history", "demo", "-n", "many"],
    ] {
        let run = h.tryswap(args);
        assert_eq!(run.code, 64, "{args:?}: {run:?}");
    }
    let run = h.tryswap(&["--json", "bogus"]);
    assert_eq!(run.code, 64, "{run:?}");
    let error = run.json();
    assert_eq!(error["exit_code"], 64);
    assert_eq!(error["schema"], 1);
    assert!(
        error["error"].as_str().unwrap().contains("bogus"),
        "{error}"
    );

    let run = h.tryswap(&["--json", "status", "nope"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    assert_eq!(run.json()["exit_code"], 1);

    assert_eq!(h.tryswap(&["--help"]).code, 0);
    assert!(h.tryswap(&["--help"]).stdout.contains("Examples:"));
}

#[test]
fn json_documents_and_exported_records_carry_schema_1_and_hex_digests() {
    let h = Harness::demo();
    let run = activated(&h, "v1");
    assert_eq!(run.json()["schema"], 1);
    assert_eq!(h.status()["schema"], 1);
    let history = h.tryswap(&["--json", "history", "demo"]).json();
    assert_eq!(history["schema"], 1);
    let export = h.tryswap(&["journal", "export"]);
    assert_eq!(export.code, 0, "{export:?}");
    for line in export.stdout.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["schema"], 1, "{line}");
    }
    let first: Value = serde_json::from_str(export.stdout.lines().next().unwrap()).unwrap();
    let sha = first["event"]["staged"]["artifact"]["sha256"]
        .as_str()
        .unwrap();
    assert!(
        sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "{sha}"
    );
}

/// Reads a child's stdout lines on a thread, with when each arrived.
fn lines_of(child: &mut Child) -> mpsc::Receiver<(Instant, String)> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// `tryswap activate demo` of a plugin that takes `delay_ms` to start, with its stdout
/// lines as they come.
fn slow_activate(h: &Harness, delay_ms: u64) -> (Child, mpsc::Receiver<(Instant, String)>) {
    let slow = h.fixture_config(
        "slow",
        &FixtureConfig {
            startup_delay_ms: Some(delay_ms),
            ..FixtureConfig::with_message("slow")
        },
    );
    let mut child = command(
        h,
        &[
            "activate",
            "demo",
            &plugin(),
            "--config-file",
            slow.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let rx = lines_of(&mut child);
    (child, rx)
}

#[test]
fn activate_through_the_daemon_prints_stages_as_they_happen_with_a_heartbeat() {
    let h = Harness::demo();
    let _daemon = Daemon::start(&h);
    let (mut child, rx) = slow_activate(&h, 2500);
    let mut seen = Vec::new();
    while let Ok((at, line)) = rx.recv_timeout(Duration::from_secs(30)) {
        seen.push((at, line));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen:?}");
    let when = |needle: &str| {
        seen.iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no line with {needle:?}: {seen:?}"))
    };
    let launched = when("launched");
    let last = seen.last().unwrap().0;
    assert!(
        last.duration_since(launched) >= Duration::from_secs(2),
        "the launched line came only at the end: {seen:?}"
    );
    let beat = when("waiting for handshake");
    assert!(beat > launched && beat < when("validated"), "{seen:?}");
    assert!(seen.iter().any(|(_, l)| l.contains(" / 3s")), "{seen:?}");
}

#[test]
fn events_from_a_seq_send_the_backlog_at_once_and_follow_fails_when_the_daemon_goes() {
    let h = Harness::demo();
    activated(&h, "v1");
    let mut daemon = Daemon::start(&h);
    // Last-Event-ID resumes after the given record.
    let reply = http_unix(
        daemon.socket(),
        "GET",
        "/v1/events?follow=false",
        None,
        &[("Last-Event-ID", "2")],
    )
    .unwrap();
    let first: Value = serde_json::from_str(&sse_data(&reply.body, "record")[0]).unwrap();
    assert_eq!(first["seq"], 3, "{}", reply.body);

    let mut child = command(&h, &["events", "--follow", "--from", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    // The backlog comes without any new record being appended.
    let (_, line) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the backlog from seq 1");
    assert!(line.trim_start().starts_with("1 "), "{line}");
    daemon.terminate(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "events --follow outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("went away"), "{stderr}");
}

#[test]
fn status_and_history_tell_health_restarts_age_and_rollbacks() {
    let h = Harness::demo();
    activated(&h, "v1");
    activated(&h, "v2");
    assert_eq!(h.tryswap(&["stop", "demo"]).code, 0);
    assert_eq!(h.tryswap(&["start", "demo"]).code, 0);
    let rollback = h.tryswap(&["rollback", "demo"]);
    assert_eq!(rollback.code, 0, "{rollback:?}");
    assert_eq!(h.tryswap(&["stop", "demo"]).code, 0);
    assert_eq!(h.tryswap(&["start", "demo"]).code, 0);

    let status = h.status();
    let slot = &status["slots"][0];
    assert_eq!(slot["health"], "running", "{status}");
    assert_eq!(slot["restarts"], 1, "{status}");
    assert!(
        slot["last_exit"]["message"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{status}"
    );
    let text = h.tryswap(&["status"]).stdout;
    for column in ["HEALTH", "RESTARTS", "AGE", "LAST EXIT"] {
        assert!(text.contains(column), "{text}");
    }

    let history = h.tryswap(&["history", "demo"]).stdout;
    assert!(history.starts_with("WHEN (UTC)"), "{history}");
    assert!(history.contains("rollback → generation 1"), "{history}");
    let last = h.tryswap(&["--json", "history", "demo", "-n", "1"]).json();
    let reloads = last["reloads"].as_array().unwrap();
    assert_eq!(reloads.len(), 1);
    assert_eq!(reloads[0]["mode"], "rollback");
    let future = h.tryswap(&[
        "--json",
        "history",
        "demo",
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(future.json()["reloads"].as_array().unwrap().len(), 0);

    let timeline = h.tryswap(&["history", "demo", "--timeline"]);
    assert_eq!(timeline.code, 0, "{timeline:?}");
    assert!(timeline.stdout.contains('✔'), "{}", timeline.stdout);
    assert!(timeline.stdout.contains('↻'), "{}", timeline.stdout);
    assert!(timeline.stdout.contains('✝'), "{}", timeline.stdout);
}

#[test]
fn a_failed_reload_prints_its_error_once_and_no_negative_duration() {
    let h = Harness::demo();
    activated(&h, "v1");
    let cfg = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let run = h.tryswap(&[
        "activate",
        "demo",
        "/nonexistent",
        "--config-file",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(!run.stdout.contains("-0."), "{}", run.stdout);
    assert_eq!(
        run.stdout.matches("/nonexistent").count(),
        1,
        "{}",
        run.stdout
    );
}

#[test]
fn activating_what_already_runs_restarts_nothing_unless_forced() {
    let h = Harness::demo();
    let first = activated(&h, "v1");
    let pid = first.json()["candidate"]["pid"].as_u64().unwrap();
    let cfg = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let again = h.activate("demo", &cfg);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["outcome"], "already_active");
    assert_eq!(h.active("demo").unwrap().1 as u64, pid);
    let _daemon = Daemon::start(&h);
    let through = h.activate("demo", &cfg);
    assert_eq!(through.json()["outcome"], "already_active", "{through:?}");
    let forced = h.tryswap(&[
        "--json",
        "activate",
        "demo",
        &plugin(),
        "--config-file",
        cfg.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(forced.json()["outcome"], "active");
    assert_ne!(h.active("demo").unwrap().1 as u64, pid);
}

#[test]
fn logs_print_a_generations_plugin_log() {
    let h = Harness::demo();
    activated(&h, "v1");
    let run = h.tryswap(&["logs", "demo"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("starting fixture plugin"), "{run:?}");
    let run = h.tryswap(&["logs", "demo", "--generation", "1"]);
    assert!(run.stdout.contains("starting fixture plugin"), "{run:?}");
    let run = h.tryswap(&["logs", "demo", "--generation", "9"]);
    assert_eq!(run.code, 1, "{run:?}");
}

#[test]
fn a_held_state_dir_is_waited_for_and_the_message_suggests_serve() {
    let h = Harness::demo();
    activated(&h, "v1");
    let (mut holder, rx) = slow_activate(&h, 2000);
    // The holder has the lock once it prints its first stage.
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a stage line");
    // (The reads need no lock: journal_reads.rs.)
    for args in [
        &["start", "demo", "--wait=0"][..],
        &["journal", "compact", "--wait=0"],
    ] {
        let refused = h.tryswap(args);
        assert_eq!(refused.code, 3, "{args:?}: {refused:?}");
        assert!(refused.stderr.contains("tryswap serve"), "{refused:?}");
    }
    let waited = h.tryswap(&["start", "demo", "--wait=30s"]);
    assert_eq!(waited.code, 0, "{waited:?}");
    assert!(waited.stderr.contains("waiting"), "{waited:?}");
    assert!(holder.wait().unwrap().success());
    // Without a daemon too, a long stage has a heartbeat.
    let rest: Vec<String> = rx.try_iter().map(|(_, line)| line).collect();
    assert!(
        rest.iter().any(|l| l.contains("waiting for handshake")),
        "{rest:?}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let h = Harness::demo();
    let bash = h.tryswap(&["completions", "bash"]);
    assert_eq!(bash.code, 0, "{bash:?}");
    assert!(bash.stdout.contains("activate") && bash.stdout.contains("--timeline"));
    let zsh = h.tryswap(&["completions", "zsh"]);
    assert!(zsh.stdout.contains("#compdef tryswap"), "{zsh:?}");
    let man = h.tryswap(&["man"]);
    assert_eq!(man.code, 0, "{man:?}");
    assert!(man.stdout.contains(".TH tryswap"), "{}", &man.stdout[..200]);
}

#[test]
fn metrics_are_negotiated_and_every_counter_exists_from_zero() {
    let h = Harness::demo();
    let daemon = Daemon::start(&h);
    let text = daemon.get("/metrics").unwrap();
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{text:?}"
    );
    assert!(!text.body.contains("# EOF"));
    assert!(text.body.contains("# TYPE tryswap_reloads_total counter"));
    assert!(text.body.contains("tryswap_build_info{version="));
    assert!(
        text.body.contains(
            "tryswap_reloads_total{slot=\"demo\",mode=\"activate\",outcome=\"rolled_back\",failed_stage=\"\"} 0"
        ),
        "{}",
        text.body
    );
    assert!(text
        .body
        .contains("tryswap_restarts_total{slot=\"demo\"} 0"));
    let open = http_unix(
        daemon.socket(),
        "GET",
        "/metrics",
        None,
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .unwrap();
    assert!(open
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(open.body.trim_end().ends_with("# EOF"));
    assert!(open.body.contains("# TYPE tryswap_reloads counter"));
}

/// Every `tryswap_…` metric name in a PromQL text.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tryswap_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

fn exprs_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => exprs_in(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs_in(v, out)),
        _ => {}
    }
}

#[test]
fn monitoring_files_name_only_metrics_the_daemon_exports() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join("grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    exprs_in(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    let alerts = std::fs::read_to_string(docs.join("tryswap-alerts.yml")).unwrap();
    let mut alert_names = Vec::new();
    for line in alerts.lines() {
        let line = line.trim();
        if let Some(expr) = line.strip_prefix("expr:") {
            exprs.push(expr.trim().to_owned());
        } else if let Some(name) = line.strip_prefix("- alert:") {
            alert_names.push(name.trim().to_owned());
        }
    }
    for wanted in [
        "TryswapSlotFailing",
        "TryswapPluginDown",
        "TryswapReloadsRollingBack",
    ] {
        assert!(alert_names.iter().any(|n| n == wanted), "{alert_names:?}");
    }

    // A daemon that made one reload exports every series the files name.
    let h = Harness::demo();
    let daemon = Daemon::start(&h);
    activated(&h, "v1");
    // The probe result series appears once the keep-alive probed the new generation.
    let metrics = tryswap_tests::daemon::poll(Duration::from_secs(20), || {
        let body = daemon.get("/metrics").ok()?.body;
        body.contains("tryswap_slot_healthy{").then_some(body)
    })
    .expect("tryswap_slot_healthy within 20 s");
    // Series, and families declared without a series yet (`tryswap_slot_healthy` is
    // absent while no probe result is known).
    let exported: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next().map(str::to_owned),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next().map(str::to_owned),
        })
        .collect();
    for expr in &exprs {
        let names = metric_names(expr);
        for name in names {
            assert!(
                exported.contains(&name),
                "{name} (in `{expr}`) is not exported; the daemon has {exported:?}"
            );
        }
    }
}

/// Headless Chromium, if installed (Debian's `chromium`; .ci/run installs it).
fn chromium() -> Option<std::path::PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os("TRYSWAP_REQUIRE_ALL").is_none_or(|v| v != "1"),
            "chromium is not installed and TRYSWAP_REQUIRE_ALL=1"
        );
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
    }
    found
}

fn headless(browser: &std::path::Path, profile: &std::path::Path, args: &[&str]) -> Run {
    let mut command = Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null());
    let output = tryswap_tests::harness::run_bounded(command, Duration::from_secs(120));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn the_html_report_renders_timelines_lineage_and_failures_in_a_browser() {
    let h = Harness::demo();
    activated(&h, "v1");
    let bad = h.fixture_config(
        "bad",
        &FixtureConfig {
            app_version_override: Some(9),
            ..FixtureConfig::default()
        },
    );
    assert_eq!(h.activate("demo", &bad).code, 2);
    activated(&h, "v2");
    assert_eq!(h.tryswap(&["stop", "demo"]).code, 0);
    assert_eq!(h.tryswap(&["start", "demo"]).code, 0);
    assert_eq!(h.tryswap(&["rollback", "demo"]).code, 0);

    // Two sources: the state directory and an exported journal (as a fleet would give).
    let export = h.tryswap(&["journal", "export"]);
    let exported = h.state.join("exported.jsonl");
    std::fs::write(&exported, &export.stdout).unwrap();
    let page = h.state.join("report.html");
    let run = h.tryswap(&[
        "report",
        "--html",
        page.to_str().unwrap(),
        h.state_dir.to_str().unwrap(),
        exported.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("<link") && !html.contains("src=\""),
        "self-contained: nothing loaded from elsewhere"
    );

    let Some(browser) = chromium() else { return };
    let profile = h.state.join("chromium-profile");
    let url = format!("file://{}", page.display());
    let dom = headless(&browser, &profile, &["--dump-dom", &url]);
    assert_eq!(dom.code, 0, "{dom:?}");
    let dom = dom.stdout;
    // The script drew a timeline per source and slot, with a bar per stage.
    assert_eq!(dom.matches("data-rendered=\"4\"").count(), 2, "{dom}");
    for class in [
        "stage stage-launched",
        "stage stage-validated",
        "stage stage-probed",
        "stage stage-rolled_back",
        "mark mark-stopped",
        "mark mark-relaunched",
    ] {
        assert!(dom.contains(class), "no {class} in the rendered page");
    }
    // Lineage with full digests, the rollback arrow, failures with their reasons.
    let status = h.status();
    let sha = status["slots"][0]["active"]["sha256"].as_str().unwrap();
    assert!(dom.contains(&format!("title=\"{sha}\"")), "no digest {sha}");
    assert!(dom.contains("↺ rollback to"), "no rollback in the lineage");
    assert!(
        dom.contains("offers app protocol version 9"),
        "no failure reason"
    );

    let shot = h.state.join("report.png");
    let taken = headless(
        &browser,
        &profile,
        &[
            "--window-size=1200,900",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    assert_eq!(taken.code, 0, "{taken:?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

#[test]
fn logs_honour_rust_log_and_the_daemon_logs_json_with_fields() {
    let h = Harness::demo();
    // RUST_LOG applies when TRYSWAP_LOG is unset.
    let cfg = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let out = command(
        &h,
        &[
            "activate",
            "demo",
            &plugin(),
            "--config-file",
            cfg.to_str().unwrap(),
        ],
    )
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colours despite NO_COLOR: {stderr}"
    );

    let mut daemon = Daemon::start_with(&h, &[], &[("TRYSWAP_LOG_FORMAT", "json")]);
    daemon.terminate(Duration::from_secs(30));
    let log = daemon.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ready = lines
        .iter()
        .find(|l| l["message"] == "ready")
        .unwrap_or_else(|| panic!("no ready line: {log}"));
    // Fields are keys of their own, not Debug text inside the message.
    assert_eq!(ready["slots"], 1, "{ready}");
    assert_eq!(ready["level"], "INFO");
}

#[test]
fn status_columns_stay_aligned_with_long_slot_names() {
    use tryswap_tests::harness::SlotSpec;
    let long = "billing-eu-west-1-payments-v2-canary";
    let h = Harness::new(&[SlotSpec::new("demo"), SlotSpec::new(long)]);
    activated(&h, "v1");
    let run = h.tryswap(&["status"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let column = |name: &str| lines[0].find(name).unwrap();
    let (health, address) = (column("HEALTH"), column("ADDRESS"));
    assert!(health > long.len(), "{}", run.stdout);
    for row in &lines[1..] {
        let cell = &row[health..];
        assert!(
            cell.starts_with("running") || cell.starts_with('-'),
            "HEALTH is not under its header:\n{}",
            run.stdout
        );
        let cell = &row[address..];
        assert!(
            cell.starts_with("127.0.0.1:") || cell.starts_with('-'),
            "ADDRESS is not under its header:\n{}",
            run.stdout
        );
    }
}
