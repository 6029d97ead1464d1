//! Stable endpoints for outside callers (DESIGN.md "Stable endpoints for outside callers",
//! issue 13), through the real daemon: callers in other processes call the fixture through
//! the slot's unix endpoint (`<state_dir>/endpoints/<slot>.sock`) and the daemon's tcp
//! endpoint, on a fresh connection per call and on one long-lived connection, while
//! reloads (good, baked and rejected) happen: no call fails and every old generation exits. And
//! the endpoint follows the journal across a SIGKILL of the daemon during a reload.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tryswap_tests::crash::FAILPOINTS_ENV;
use tryswap_tests::daemon::{free_port, Daemon};
use tryswap_tests::harness::{wait_gone, Harness, SlotSpec};
use tryswap_tests::process::{fixture_plugin_path, workspace_bin_path};
use tryswap_tests::{FixtureConfig, FixtureNetwork};

/// Reloads in the caller test; `TRYSWAP_ENDPOINT_RELOADS` raises it (the issue's 200).
const DEFAULT_RELOADS: usize = 30;

fn slot_toml(name: &str, endpoint: Option<&str>) -> String {
    let mut spec = SlotSpec::new(name);
    // Long-lived callers hold connections to the old generation until its graceful stop
    // moves them: a short drain keeps each reload short.
    spec.drain_timeout = "200ms";
    let text = spec.toml();
    match endpoint {
        Some(addr) => text.replacen(
            "log_max_bytes",
            &format!("endpoint = \"{addr}\"\nlog_max_bytes"),
            1,
        ),
        None => text,
    }
}

fn harness(tcp_endpoint: Option<&str>) -> Harness {
    let h = Harness::new(&[]);
    let mut text = String::from("state_dir = \"state\"\n");
    text.push_str(&slot_toml("demo", None));
    if let Some(addr) = tcp_endpoint {
        text.push_str(&slot_toml("tcpdemo", Some(addr)));
    }
    std::fs::write(&h.config_path, text).expect("write config");
    h
}

fn fixture(message: &str, network: FixtureNetwork) -> FixtureConfig {
    FixtureConfig {
        network: Some(network),
        ..FixtureConfig::with_message(message)
    }
}

fn reload(daemon: &Daemon, h: &Harness, slot: &str, name: &str, config: &FixtureConfig) -> Value {
    reload_with(daemon, h, slot, name, config, None)
}

/// [`reload`] with a bake window (`"bake"` in the body) when `bake` is given.
fn reload_with(
    daemon: &Daemon,
    h: &Harness,
    slot: &str,
    name: &str,
    config: &FixtureConfig,
    bake: Option<&str>,
) -> Value {
    let cfg = h.fixture_config(name, config);
    let mut body = serde_json::json!({ "artifact": fixture_plugin_path(), "config_file": cfg });
    if let Some(bake) = bake {
        body["bake"] = Value::String(bake.to_owned());
    }
    let reply = daemon
        .post(&format!("/v1/slots/{slot}/reloads"), &body.to_string())
        .expect("reload request");
    assert!(
        reply.status == 200 || reply.status == 422,
        "reload of {slot}: {reply:?}"
    );
    reply.json()
}

/// Reloads `demo` with a unix fixture answering `message`; the reload's report.
fn unix_demo(daemon: &Daemon, h: &Harness, message: &str) -> Value {
    reload(
        daemon,
        h,
        "demo",
        message,
        &fixture(message, FixtureNetwork::Unix),
    )
}

fn link(h: &Harness, slot: &str) -> PathBuf {
    h.state_dir.join("endpoints").join(format!("{slot}.sock"))
}

struct Caller {
    name: String,
    child: Child,
}

impl Caller {
    fn spawn(name: &str, network: &str, address: &str, connection: &str) -> Caller {
        let child = Command::new(workspace_bin_path("tryswap-caller"))
            .args(["--network", network, "--address", address])
            .args(["--connection", connection, "--pause-ms", "2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tryswap-caller (cargo builds it with the tests)");
        Caller {
            name: name.to_owned(),
            child,
        }
    }

    /// Closes its stdin and reads its summary (bounded).
    fn finish(mut self) -> (String, Value) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "caller {} did not stop",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out).expect("read caller output");
        }
        let summary = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("caller {} printed {out:?}: {e}", self.name));
        (self.name.clone(), summary)
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok_calls(summary: &Value) -> u64 {
    summary["ok"].as_u64().unwrap_or(0)
}

/// Waits (bounded) until the caller's stdout is not needed yet but it has made calls:
/// the endpoint answers before the reloads begin.
fn call_once(network: &str, address: &str) -> tryswap_tests::CallReply {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(tryswap_tests::call(
        network,
        address,
        "probe",
        Duration::from_secs(5),
    ))
    .unwrap_or_else(|e| panic!("calling {network} {address}: {e}"))
}

#[test]
fn outside_callers_follow_every_swap_with_zero_failed_calls() {
    let port = free_port();
    let tcp_endpoint = format!("127.0.0.1:{port}");
    let h = harness(Some(&tcp_endpoint));
    let daemon = Daemon::start(&h);
    let reloads = std::env::var("TRYSWAP_ENDPOINT_RELOADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_RELOADS);

    let first = reload(
        &daemon,
        &h,
        "demo",
        "u0",
        &fixture("u0", FixtureNetwork::Unix),
    );
    assert_eq!(first["outcome"], "active", "{first}");
    let unix_endpoint = link(&h, "demo");
    assert_eq!(first["endpoint"], unix_endpoint.display().to_string());
    let first_tcp = reload(
        &daemon,
        &h,
        "tcpdemo",
        "t0",
        &fixture("t0", FixtureNetwork::Tcp),
    );
    assert_eq!(first_tcp["outcome"], "active", "{first_tcp}");
    assert_eq!(first_tcp["endpoint"], tcp_endpoint);
    assert_eq!(
        std::fs::read_link(&unix_endpoint).ok(),
        first["candidate"]["address"].as_str().map(PathBuf::from)
    );
    let unix_address = unix_endpoint.to_str().expect("utf-8 path").to_owned();
    assert_eq!(call_once("unix", &unix_address).message, "u0");
    assert_eq!(call_once("tcp", &tcp_endpoint).message, "t0");

    let callers = vec![
        Caller::spawn("unix-fresh", "unix", &unix_address, "fresh"),
        Caller::spawn("unix-long", "unix", &unix_address, "long"),
        Caller::spawn("tcp-fresh", "tcp", &tcp_endpoint, "fresh"),
        Caller::spawn("tcp-long", "tcp", &tcp_endpoint, "long"),
    ];

    let mut old_pids = vec![
        first["candidate"]["pid"].as_u64().expect("pid"),
        first_tcp["candidate"]["pid"].as_u64().expect("pid"),
    ];
    let (mut good, mut rejected, mut baked) = (0, 0, 0);
    let mut ends = std::collections::BTreeMap::<String, usize>::new();
    for i in 1..=reloads {
        let (slot, network) = if i % 2 == 0 {
            ("demo", FixtureNetwork::Unix)
        } else {
            ("tcpdemo", FixtureNetwork::Tcp)
        };
        let config = if i % 5 == 0 {
            // Rejected: exits before its handshake; the active generation keeps serving.
            FixtureConfig {
                exit_before_handshake: Some(3),
                ..fixture("bad", network)
            }
        } else {
            fixture(&format!("g{i}"), network)
        };
        // Every seventh good reload bakes first: the endpoint moves at the provisional
        // commit, the standby keeps running, and it is retired (drained) at the confirm.
        let bake = (i % 7 == 0 && i % 5 != 0).then_some("200ms");
        let report = reload_with(&daemon, &h, slot, &format!("c{i}"), &config, bake);
        match report["outcome"].as_str() {
            Some("active") => {
                good += 1;
                if bake.is_some() {
                    baked += 1;
                    assert_eq!(report["bake"]["state"], "confirmed", "{report}");
                }
                old_pids.push(report["candidate"]["pid"].as_u64().expect("pid"));
                for d in report["drain"].as_array().into_iter().flatten() {
                    *ends
                        .entry(d["ended"].as_str().unwrap_or("?").to_owned())
                        .or_default() += 1;
                }
            }
            Some("rolled_back") => rejected += 1,
            other => panic!("reload {i}: outcome {other:?}: {report}"),
        }
    }
    assert!(
        good > 0 && rejected > 0 && baked > 0,
        "good {good}, rejected {rejected}, baked {baked}"
    );

    let mut failures = Vec::new();
    for caller in callers {
        let (name, summary) = caller.finish();
        eprintln!("{name}: {summary}");
        assert!(ok_calls(&summary) > 0, "{name} made no call: {summary}");
        if summary["failed"].as_u64() != Some(0) {
            failures.push(format!("{name}: {summary}"));
        }
    }
    assert!(
        failures.is_empty(),
        "failed calls:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "{reloads} reloads: {good} good ({baked} baked), {rejected} rejected; old generations ended: {ends:?}"
    );
    assert!(!ends.contains_key("killed"), "{ends:?}");

    // Every generation but the two active ones has exited.
    let status = daemon.get("/v1/slots").expect("status").json();
    let active: Vec<u64> = status["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .map(|s| s["active"]["pid"].as_u64().expect("active pid"))
        .collect();
    for pid in old_pids.iter().filter(|p| !active.contains(p)) {
        let pid = u32::try_from(*pid).expect("pid");
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "old generation pid {pid} still runs"
        );
    }
}

#[test]
fn a_lease_holds_the_old_generation_until_released_and_an_expired_one_does_not() {
    let h = harness(None);
    let daemon = Daemon::start(&h);
    let first = unix_demo(&daemon, &h, "v1");
    assert_eq!(first["outcome"], "active", "{first}");
    let v1_pid = u32::try_from(first["candidate"]["pid"].as_u64().expect("pid")).expect("pid");
    assert_eq!(first["endpoint"], link(&h, "demo").display().to_string());

    // The event stream names the endpoint on the record that moved the marker.
    let events = daemon
        .get("/v1/events?from=1&follow=false")
        .expect("events");
    assert_eq!(events.status, 200, "{events:?}");
    let records: Vec<Value> = events
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let activated = records
        .iter()
        .find(|r| r["event"] == "activated")
        .unwrap_or_else(|| panic!("no activated record in {}", events.body));
    assert_eq!(
        activated["endpoint"],
        link(&h, "demo").display().to_string(),
        "{activated}"
    );
    assert!(
        records
            .iter()
            .filter(|r| r["event"] != "activated")
            .all(|r| r.get("endpoint").is_none()),
        "only marker moves carry the endpoint: {}",
        events.body
    );

    let taken = daemon
        .post("/v1/slots/demo/leases", r#"{"ttl":"30s"}"#)
        .expect("lease");
    assert_eq!(taken.status, 200, "{taken:?}");
    let lease = taken.json();
    assert_eq!(lease["generation"], 1);
    assert_eq!(lease["endpoint"], link(&h, "demo").display().to_string());
    let id = lease["lease"].as_str().expect("lease id").to_owned();
    let status = daemon.get("/v1/slots/demo").expect("status").json();
    assert_eq!(status["leases"][0]["lease"], id.as_str(), "{status}");
    assert_eq!(
        daemon
            .post(&format!("/v1/leases/{id}/renew"), "")
            .expect("renew")
            .status,
        200
    );
    assert_eq!(
        daemon
            .post("/v1/slots/demo/leases", r#"{"ttl":"0s"}"#)
            .expect("bad ttl")
            .status,
        400
    );

    // The reload answers only after the old generation drained: the lease holds it until
    // the drain timeout (200ms), so release it from another thread meanwhile.
    let socket = h.socket();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        tryswap_tests::daemon::http_unix(&socket, "DELETE", &format!("/v1/leases/{id}"), None, &[])
            .expect("release")
    });
    let second = unix_demo(&daemon, &h, "v2");
    assert_eq!(second["outcome"], "active", "{second}");
    let released = releaser.join().expect("releaser");
    assert!(
        released.status == 200 || released.status == 404,
        "{released:?}"
    );
    assert!(wait_gone(v1_pid, Duration::from_secs(10)));
    assert_eq!(second["drain"][0]["generation"], 1, "{second}");

    // A lease of 100ms that nobody renews expires: the next drain is not held by it.
    let short = daemon
        .post("/v1/slots/demo/leases", r#"{"ttl":"100ms"}"#)
        .expect("lease")
        .json();
    assert_eq!(short["generation"], 2);
    let short_id = short["lease"].as_str().expect("id").to_owned();
    let expired = tryswap_tests::daemon::poll(Duration::from_secs(5), || {
        let status = daemon.get("/v1/slots/demo").ok()?.json();
        status["leases"].is_null().then_some(())
    });
    assert!(expired.is_some(), "the 100ms lease did not expire");
    assert_eq!(
        daemon
            .post(&format!("/v1/leases/{short_id}/renew"), "")
            .expect("renew")
            .status,
        404
    );
    let third = unix_demo(&daemon, &h, "v3");
    assert_eq!(third["drain"][0]["ended"], "drained", "{third}");
    assert_eq!(third["drain"][0]["leases_left"], 0, "{third}");
}

fn unix_call_message(path: &Path) -> String {
    call_once("unix", path.to_str().expect("utf-8")).message
}

#[test]
fn after_a_daemon_sigkill_during_a_reload_the_endpoint_points_where_the_journal_says() {
    let h = harness(None);
    let endpoint = link(&h, "demo");
    {
        let daemon = Daemon::start(&h);
        let first = unix_demo(&daemon, &h, "v1");
        assert_eq!(first["outcome"], "active", "{first}");
    }
    assert!(
        !endpoint.exists(),
        "a daemon that stopped its plugins leaves no endpoint behind"
    );

    // Killed right after the commit: the journal names v2; the old v1 still runs.
    let mut daemon = Daemon::start_with(&h, &[], &[(FAILPOINTS_ENV, "reload-after-commit=kill")]);
    assert_eq!(unix_call_message(&endpoint), "v1", "recovery relaunched v1");
    let cfg = h.fixture_config("v2", &fixture("v2", FixtureNetwork::Unix));
    let body = serde_json::json!({ "artifact": fixture_plugin_path(), "config_file": cfg });
    let _ = daemon.post("/v1/slots/demo/reloads", &body.to_string());
    assert!(
        daemon.wait(Duration::from_secs(10)).is_some(),
        "daemon was not killed"
    );
    // As if the crash had come between the journal write and the link's rename.
    let v1_socket = std::fs::read_dir(h.state_dir.join("tmp/demo/1"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path());
    if let Some(v1_socket) = v1_socket {
        let temp = h.state_dir.join("endpoints/.stale");
        std::os::unix::fs::symlink(&v1_socket, &temp).expect("symlink");
        std::fs::rename(&temp, &endpoint).expect("rename");
    }

    let daemon = Daemon::start(&h);
    let status = daemon.get("/v1/slots/demo").expect("status").json();
    assert_eq!(status["active"]["generation"], 2, "{status}");
    assert_eq!(status["endpoint"], endpoint.display().to_string());
    assert_eq!(
        std::fs::read_link(&endpoint).ok(),
        status["active"]["address"].as_str().map(PathBuf::from),
        "{status}"
    );
    assert_eq!(unix_call_message(&endpoint), "v2");

    // Stopping the slot removes the endpoint: callers fail fast.
    assert_eq!(
        daemon.post("/v1/slots/demo/stop", "").expect("stop").status,
        200
    );
    assert!(std::fs::symlink_metadata(&endpoint).is_err());
    let _ = std::io::stderr().flush();
}
