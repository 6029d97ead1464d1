//! Bad input is the client's fault, said as such: every bad admin body is a 400 (never a
//! 500), and a config duration beyond the maximum is refused with its key and line.

use tryswap_tests::daemon::Daemon;
use tryswap_tests::fixture_plugin_path;
use tryswap_tests::harness::Harness;

#[test]
fn a_reload_body_the_slot_cannot_run_is_a_400() {
    let h = Harness::demo();
    let daemon = Daemon::start(&h);
    // The slot's args use {config}: a candidate without `config_file` cannot run.
    let body = serde_json::json!({ "artifact": fixture_plugin_path() }).to_string();
    let reply = daemon.post("/v1/slots/demo/reloads", &body).unwrap();
    assert_eq!(reply.status, 400, "{reply:?}");
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("--config-file"), "{error}");
    for body in [
        r#"{"artifact": "/p", "rollback": true}"#,
        r#"{"rollback_to": "x"}"#,
        r#"{"artifact": ""}"#,
        "[]",
        "",
    ] {
        let reply = daemon.post("/v1/slots/demo/reloads", body).unwrap();
        assert_eq!(reply.status, 400, "{body:?}: {reply:?}");
    }
    for (path, body) in [
        ("/v1/config/reload", r#"{"dry_run": 1}"#),
        ("/v1/journal/compact", r#"{"keep": -1}"#),
        ("/v1/journal/compact", "{"),
    ] {
        let reply = daemon.post(path, body).unwrap();
        assert_eq!(reply.status, 400, "{path} {body:?}: {reply:?}");
    }
}

#[test]
fn a_duration_beyond_the_maximum_names_its_key_and_line() {
    let h = Harness::demo();
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let text = text.replacen(
        "start_timeout = \"3s\"",
        "start_timeout = \"1000000000000h\"",
        1,
    );
    let line = text
        .lines()
        .position(|l| l.contains("1000000000000h"))
        .expect("the line was replaced")
        + 1;
    std::fs::write(&h.config_path, text).unwrap();
    let run = h.tryswap(&["status"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("start_timeout")
            && run.stderr.contains(&format!("tryswap.toml:{line}:"))
            && run.stderr.contains("maximum"),
        "{run:?}"
    );
}
