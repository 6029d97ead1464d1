//! Driving the real `tryswap` binary against the fixture plugin in a throwaway state dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::config::FixtureConfig;
use crate::process::{fixture_plugin_path, pid_alive, wait_until, workspace_bin_path, TempState};

/// The `tryswap` binary of this workspace (built by `cargo test --workspace`).
pub fn tryswap_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TRYSWAP_BIN") {
        return PathBuf::from(path);
    }
    let path = workspace_bin_path("tryswap");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p tryswap-cli` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// How one slot of the generated config looks.
#[derive(Clone, Debug)]
pub struct SlotSpec {
    /// Slot name (also the fixture's magic cookie value).
    pub name: String,
    /// `start_timeout`.
    pub start_timeout: &'static str,
    /// `stop_timeout`.
    pub stop_timeout: &'static str,
    /// `drain_timeout`.
    pub drain_timeout: &'static str,
    /// `log_max_bytes`.
    pub log_max_bytes: u64,
    /// Probe `period`.
    pub probe_period: &'static str,
    /// Probe `failure_threshold`.
    pub failure_threshold: u32,
}

impl SlotSpec {
    /// A slot with short timeouts suited to tests.
    pub fn new(name: &str) -> Self {
        SlotSpec {
            name: name.to_owned(),
            start_timeout: "3s",
            stop_timeout: "1s",
            drain_timeout: "2s",
            log_max_bytes: 1 << 20,
            probe_period: "50ms",
            failure_threshold: 3,
        }
    }

    /// The slot as a `[[slot]]` table of a tryswap config file.
    pub fn toml(&self) -> String {
        format!(
            r#"
[[slot]]
name = "{name}"
args = ["--config", "{{config}}", "--cookie-key", "TRYSWAP_PLUGIN", "--cookie-value", "{name}"]
start_timeout = "{start}"
drain_timeout = "{drain}"
stop_timeout = "{stop}"
log_max_bytes = {log}

[slot.handshake]
magic_cookie_key = "TRYSWAP_PLUGIN"
magic_cookie_value = "{name}"
app_protocol_versions = [1]
protocols = ["grpc"]

[slot.probe]
kind = "grpc"
period = "{period}"
timeout = "1s"
success_threshold = 1
failure_threshold = {failures}
"#,
            name = self.name,
            start = self.start_timeout,
            drain = self.drain_timeout,
            stop = self.stop_timeout,
            log = self.log_max_bytes,
            period = self.probe_period,
            failures = self.failure_threshold,
        )
    }
}

/// The result of one `tryswap` run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// The run that `output` describes.
    pub fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Stdout parsed as one JSON value (panics with the output if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}); exit {}\nstdout: {}\nstderr: {}",
                self.code, self.stdout, self.stderr
            )
        })
    }
}

/// A temporary state dir with a config file for the given slots, and the binary to drive.
pub struct Harness {
    /// Owns the directory; kills any process started from it when dropped.
    pub state: TempState,
    /// The config file.
    pub config_path: PathBuf,
    /// The state directory (`<tmp>/state`).
    pub state_dir: PathBuf,
}

impl Harness {
    /// A harness with one slot per spec.
    pub fn new(slots: &[SlotSpec]) -> Harness {
        let state = TempState::new().expect("temp dir");
        let config_path = state.join("tryswap.toml");
        let mut text = String::from("state_dir = \"state\"\n");
        for slot in slots {
            text.push_str(&slot.toml());
        }
        std::fs::write(&config_path, text).expect("write config");
        let state_dir = state.join("state");
        Harness {
            state,
            config_path,
            state_dir,
        }
    }

    /// A harness with one default slot named `demo`.
    pub fn demo() -> Harness {
        Harness::new(&[SlotSpec::new("demo")])
    }

    /// Writes a fixture config named `name` and returns its path.
    pub fn fixture_config(&self, name: &str, config: &FixtureConfig) -> PathBuf {
        config
            .write(&self.state.join(format!("{name}.toml")))
            .expect("write fixture config")
    }

    /// Runs `tryswap --config <cfg> ARGS…` and waits (bounded by 60 s) for it.
    pub fn tryswap(&self, args: &[&str]) -> Run {
        let mut child = Command::new(tryswap_path());
        child
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env_remove("TRYSWAP_STATE_DIR")
            .env_remove("TRYSWAP_LOG")
            .stdin(std::process::Stdio::null());
        let output = run_bounded(child, Duration::from_secs(60));
        Run::from_output(output)
    }

    /// `tryswap --json activate SLOT <fixture> --config-file <config>`.
    pub fn activate(&self, slot: &str, config: &Path) -> Run {
        self.reload("activate", slot, config)
    }

    /// `tryswap --json try SLOT <fixture> --config-file <config>`.
    pub fn try_activate(&self, slot: &str, config: &Path) -> Run {
        self.reload("try", slot, config)
    }

    fn reload(&self, verb: &str, slot: &str, config: &Path) -> Run {
        let plugin = fixture_plugin_path();
        self.tryswap(&[
            "--json",
            verb,
            slot,
            plugin.to_str().expect("utf-8 path"),
            "--config-file",
            config.to_str().expect("utf-8 path"),
        ])
    }

    /// `tryswap --config <cfg> activate SLOT <fixture> --config-file <config>`, to spawn
    /// (stdin null; output as the caller sets it).
    pub fn activate_command(&self, slot: &str, config: &Path) -> Command {
        let mut command = Command::new(tryswap_path());
        command
            .arg("--config")
            .arg(&self.config_path)
            .args(["activate", slot])
            .arg(fixture_plugin_path())
            .arg("--config-file")
            .arg(config)
            .env_remove("TRYSWAP_STATE_DIR")
            .stdin(std::process::Stdio::null());
        command
    }

    /// `tryswap --json status` as JSON.
    pub fn status(&self) -> Value {
        let run = self.tryswap(&["--json", "status"]);
        assert_eq!(run.code, 0, "status failed: {run:?}");
        run.json()
    }

    /// The `outcome` of every reload of `slot` per `tryswap --json history`, oldest first.
    pub fn outcomes(&self, slot: &str) -> Vec<String> {
        let history = self.tryswap(&["--json", "history", slot]).json();
        history["reloads"]
            .as_array()
            .expect("history has `reloads`")
            .iter()
            .map(|r| {
                r["outcome"]
                    .as_str()
                    .expect("a reload has an outcome")
                    .to_owned()
            })
            .collect()
    }

    /// The store's staging copies (`store/.staging-*`): a crash mid-staging leaves one,
    /// which the next open must remove.
    pub fn staging_files(&self) -> Vec<String> {
        std::fs::read_dir(self.state_dir.join("store"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|n| n.starts_with(".staging-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The active generation of `slot` per `status`: (generation, pid, address).
    pub fn active(&self, slot: &str) -> Option<(u64, u32, String)> {
        let status = self.status();
        let slots = status["slots"].as_array()?;
        let s = slots.iter().find(|s| s["slot"] == slot)?;
        let a = &s["active"];
        if a.is_null() {
            return None;
        }
        Some((
            a["generation"].as_u64()?,
            u32::try_from(a["pid"].as_u64()?).ok()?,
            a["address"].as_str()?.to_owned(),
        ))
    }
}

/// Processes whose working directory is `state_dir` (the plugins tryswap started there),
/// sorted by pid.
pub fn plugins_in(state_dir: &Path) -> Vec<u32> {
    let Ok(state_dir) = state_dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == state_dir)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Runs a command with a deadline; kills it if it overruns (and then panics).
pub fn run_bounded(mut command: Command, limit: Duration) -> Output {
    use std::process::Stdio;
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tryswap");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for tryswap"),
        Err(_) => {
            // SAFETY-free: plain kill(2) through nix.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("tryswap did not finish within {limit:?}");
        }
    }
}

/// Whether a test needing `capability` may run: `Ok(())` from `available` runs it; an error
/// skips it with a message saying why, or fails it when `TRYSWAP_REQUIRE_ALL=1`.
pub fn capability(capability: &str, available: Result<(), String>) -> bool {
    let Err(why) = available else {
        return true;
    };
    assert!(
        std::env::var("TRYSWAP_REQUIRE_ALL").as_deref() != Ok("1"),
        "this test needs {capability}: {why}"
    );
    eprintln!("skipped: needs {capability}: {why}");
    false
}

/// Copies directory `from` (recursively) to `to`; panics on any error.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for entry in std::fs::read_dir(from).expect("list the directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Waits (bounded) until `pid` is gone; returns whether it is.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    wait_until(limit, || !pid_alive(pid))
}

/// A slot config for the fixture plugin, for library tests: `--config {config}` and the
/// slot's magic cookie, short timeouts, a 20 ms gRPC probe period that tolerates ~4 s of
/// a slowly starting candidate.
pub fn fixture_slot(name: &str) -> tryswap::config::SlotConfig {
    let slot = tryswap_fsm::SlotName::new(name).expect("valid slot name");
    let mut config = tryswap::config::SlotConfig::new(slot);
    config.args = vec![
        "--config".into(),
        "{config}".into(),
        "--cookie-key".into(),
        "TRYSWAP_PLUGIN".into(),
        "--cookie-value".into(),
        name.into(),
    ];
    config.start_timeout = Duration::from_secs(5);
    config.drain_timeout = Duration::from_secs(5);
    config.stop_timeout = Duration::from_secs(2);
    config.probe.period = Duration::from_millis(20);
    config.probe.failure_threshold = 200;
    config
}

/// Every file under `dir` (recursively) with its bytes, by path relative to `dir`: to show
/// that a command changed nothing there.
pub fn dir_bytes(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("list the directory") {
            let entry = entry.expect("a directory entry");
            let path = entry.path();
            if entry.file_type().expect("a file type").is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                out.insert(relative, std::fs::read(&path).expect("read a file"));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
