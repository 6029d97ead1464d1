//! Fleet rollouts through Ansible (integrations/ansible, docs/fleet.md): the
//! `tryswap.tryswap` collection's playbooks against six simulated hosts on this machine.
//!
//! Each host is its own state directory, config and `tryswap serve` daemon; the inventory
//! reaches them with `ansible_connection=local`. ansible-core is installed with pip into a
//! virtual environment under `target/fleet-ansible/` (kept between runs: a rerun takes
//! seconds; a clean clone builds it once). Without python3, its venv module or PyPI the
//! test says so and skips (a failure under `TRYSWAP_REQUIRE_ALL=1`).
//!
//! Every host's slot bakes for 300 ms (host6's for 2 s), so a wave ends only when its hosts
//! have passed their bake. The bad version starts slowly (healthy 600 ms after start);
//! host3's probe allows 150 ms, the other hosts' 5 s: it fails its probe on the third host
//! only, as a version that breaks on one kind of machine does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tryswap_tests::daemon::Daemon;
use tryswap_tests::harness::{run_bounded, tryswap_path, Harness, SlotSpec};
use tryswap_tests::{fixture_plugin_path, FixtureConfig, TempState};

/// The ansible-core the collection is tested with (2.19 runs on Python 3.11 to 3.13).
const ANSIBLE_CORE: &str = "ansible-core>=2.16,<2.20";
/// The hosts, in inventory order.
const HOSTS: [&str; 6] = ["host1", "host2", "host3", "host4", "host5", "host6"];
/// How long one `ansible-playbook` run may take.
const PLAYBOOK_LIMIT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// `target/` of the running test binary (`target/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

fn run(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The virtual environment with ansible-core: made once under target/ (a `ready` file
/// marks a finished install; a half-made one is made again). `Err` says what is missing.
fn ansible_venv() -> Result<PathBuf, String> {
    let venv = target_dir().join("fleet-ansible").join("venv");
    let ready = venv.join("ready");
    let installed = std::fs::read_to_string(&ready).is_ok_and(|r| r.trim() == ANSIBLE_CORE);
    // A venv whose Python went away (an upgrade) is made again.
    if installed && run(Command::new(venv.join("bin/ansible-playbook")).arg("--version")).is_ok() {
        return Ok(venv);
    }
    run(Command::new("python3").arg("--version")).map_err(|e| format!("no python3: {e}"))?;
    if venv.exists() {
        std::fs::remove_dir_all(&venv).map_err(|e| format!("{}: {e}", venv.display()))?;
    }
    let started = Instant::now();
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).map_err(|e| {
        format!(
            "python3 cannot make a virtual environment (Debian: apt-get install python3-venv): {e}"
        )
    })?;
    run(Command::new(venv.join("bin/python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        ANSIBLE_CORE,
    ]))
    .map_err(|e| format!("pip cannot install {ANSIBLE_CORE} (no PyPI?): {e}"))?;
    std::fs::write(&ready, ANSIBLE_CORE).map_err(|e| format!("{}: {e}", ready.display()))?;
    eprintln!(
        "fleet_ansible: made {} with {ANSIBLE_CORE} in {:.1} s",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(venv)
}

/// One simulated host: its config and state directory, and its daemon.
struct Host {
    name: &'static str,
    h: Harness,
    daemon: Daemon,
}

impl Host {
    fn status(&self) -> Value {
        self.h.status()["slots"][0].clone()
    }

    fn active_config_sha(&self) -> String {
        let status = self.status();
        status["active"]["config_sha256"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no active config digest in {status}", self.name))
            .to_owned()
    }

    fn history(&self) -> Vec<Value> {
        let run = self.h.tryswap(&["--json", "history", "demo"]);
        assert_eq!(run.code, 0, "{}: {run:?}", self.name);
        run.json()["reloads"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The journal as `journal export` prints it (through the daemon).
    fn export(&self) -> String {
        let run = self.h.tryswap(&["journal", "export"]);
        assert_eq!(run.code, 0, "{}: {run:?}", self.name);
        run.stdout
    }
}

/// A playbook run: exit code, output and the PLAY RECAP per host.
#[derive(Debug)]
struct Played {
    code: i32,
    output: String,
    recap: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Played {
    fn count(&self, host: &str, what: &str) -> u64 {
        self.recap
            .get(host)
            .and_then(|r| r.get(what))
            .copied()
            .unwrap_or(0)
    }
}

/// `host1 : ok=2 changed=1 unreachable=0 failed=0 …` lines.
fn parse_recap(output: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let tail = output.rsplit("PLAY RECAP").next().unwrap_or("");
    tail.lines()
        .filter_map(|line| {
            let (host, counts) = line.split_once(" : ")?;
            let counts = counts
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect();
            Some((host.trim().to_owned(), counts))
        })
        .collect()
}

/// The controller: the venv, the installed collection, the inventory of the six hosts.
struct Fleet {
    venv: PathBuf,
    work: TempState,
    hosts: Vec<Host>,
}

impl Fleet {
    fn new(venv: PathBuf) -> Fleet {
        let hosts = HOSTS
            .iter()
            .map(|&name| {
                let mut spec = SlotSpec::new("demo");
                // host3 allows a candidate 3 × 50 ms to become healthy; the others 5 s.
                spec.failure_threshold = if name == "host3" { 3 } else { 100 };
                let h = Harness::new(&[spec.clone()]);
                let toml = std::fs::read_to_string(&h.config_path).expect("read config");
                let bake = if name == "host6" { "2s" } else { "300ms" };
                let toml = toml.replacen(
                    "start_timeout",
                    &format!("bake = \"{bake}\"\nstart_timeout"),
                    1,
                );
                std::fs::write(&h.config_path, toml).expect("write config");
                let daemon = Daemon::start(&h);
                Host { name, h, daemon }
            })
            .collect();
        let fleet = Fleet {
            venv,
            work: TempState::new().expect("temp dir"),
            hosts,
        };
        fleet.install_collection();
        fleet.write_inventory();
        fleet
    }

    fn tool(&self, name: &str) -> Command {
        let mut command = Command::new(self.venv.join("bin").join(name));
        let home = self.work.join("ansible-home");
        command
            .current_dir(self.work.path())
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", home.join("remote-tmp"))
            .env("ANSIBLE_CONFIG", self.work.join("no-ansible.cfg"))
            .env("ANSIBLE_COLLECTIONS_PATH", self.work.join("collections"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_PIPELINING", "1")
            .env("ANSIBLE_FORKS", "6")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("ANSIBLE_LOCALHOST_WARNING", "0")
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8")
            .env_remove("TRYSWAP_STATE_DIR")
            .env_remove("TRYSWAP_LOG")
            .stdin(std::process::Stdio::null());
        command
    }

    /// `ansible-galaxy collection build` of integrations/ansible, then `install`: what a
    /// user does, and a check of galaxy.yml.
    fn install_collection(&self) {
        let source = repo_root().join("integrations/ansible");
        let dist = self.work.join("dist");
        let built = run(self
            .tool("ansible-galaxy")
            .args(["collection", "build", "--force", "--output-path"])
            .arg(&dist)
            .arg(&source))
        .unwrap_or_else(|e| panic!("building the collection: {e}"));
        let tarball = dist.join("tryswap-tryswap-0.1.0.tar.gz");
        assert!(tarball.exists(), "{built}");
        run(self
            .tool("ansible-galaxy")
            .args(["collection", "install", "--force", "-p"])
            .arg(self.work.join("collections"))
            .arg(&tarball))
        .unwrap_or_else(|e| panic!("installing the collection: {e}"));
    }

    fn write_inventory(&self) {
        let hosts: serde_json::Map<String, Value> = self
            .hosts
            .iter()
            .map(|host| {
                (
                    host.name.to_owned(),
                    json!({ "tryswap_config": host.h.config_path }),
                )
            })
            .collect();
        let inventory = json!({
            "all": {
                "hosts": hosts,
                "vars": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": self.venv.join("bin/python"),
                    "tryswap_bin": tryswap_path(),
                    "tryswap_controller_bin": tryswap_path(),
                },
            },
        });
        std::fs::write(self.inventory(), inventory.to_string()).expect("write inventory");
    }

    fn inventory(&self) -> PathBuf {
        self.work.join("inventory.yml")
    }

    /// `ansible-playbook -i inventory tryswap.tryswap.NAME -e VARS`.
    fn playbook(&self, name: &str, vars: &Value) -> Played {
        let mut command = self.tool("ansible-playbook");
        command
            .arg("-i")
            .arg(self.inventory())
            .arg(format!("tryswap.tryswap.{name}"))
            .arg("-e")
            .arg(vars.to_string());
        let started = Instant::now();
        let output = run_bounded(command, PLAYBOOK_LIMIT);
        eprintln!(
            "fleet_ansible: playbook {name} took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let output_text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Played {
            code: output.status.code().unwrap_or(-1),
            recap: parse_recap(&output_text),
            output: output_text,
        }
    }

    /// `ansible HOST -m tryswap.tryswap.reload -a ARGS [--check]` on `host` (with its
    /// config and the binary): whether it succeeded, and its output.
    fn reload_task(&self, host: &Host, args: Value, check: bool) -> (bool, String) {
        let mut args = args;
        if let Some(map) = args.as_object_mut() {
            map.insert("slot".into(), json!("demo"));
            map.insert("config".into(), json!(host.h.config_path));
            map.insert("tryswap".into(), json!(tryswap_path()));
        }
        let mut command = self.tool("ansible");
        command
            .args([host.name, "-m", "tryswap.tryswap.reload", "-i"])
            .arg(self.inventory())
            .arg("-a")
            .arg(args.to_string());
        if check {
            command.arg("--check");
        }
        let output = run_bounded(command, PLAYBOOK_LIMIT);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("a host of the fleet")
    }
}

fn at(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .with_timezone(&Utc)
}

/// (first stage, last stage) of the host's last reload.
fn last_reload_span(host: &Host) -> (DateTime<Utc>, DateTime<Utc>) {
    let history = host.history();
    let last = history.last().expect("a reload");
    let stages = last["stages"].as_array().expect("stages");
    (at(&stages[0]["at"]), at(&stages[stages.len() - 1]["at"]))
}

#[test]
fn ansible_rolls_out_in_halting_waves_rolls_back_and_audits_six_hosts() {
    let test = "ansible_rolls_out_in_halting_waves_rolls_back_and_audits_six_hosts";
    let started = Instant::now();
    let venv = match ansible_venv() {
        Ok(venv) => venv,
        Err(why) => return tryswap_tests::skip(test, &why),
    };
    let setup = started.elapsed();
    let fleet = Fleet::new(venv);

    // ansible-doc renders the module's documentation.
    let doc = run(fleet.tool("ansible-doc").arg("tryswap.tryswap.reload"))
        .unwrap_or_else(|e| panic!("ansible-doc: {e}"));
    for needle in [
        "slot",
        "artifact",
        "rolled_back_to",
        "bake",
        "reason",
        "failed_stage",
    ] {
        assert!(
            doc.contains(needle),
            "ansible-doc shows no {needle}:\n{doc}"
        );
    }

    // Versions are config files of the fixture plugin; v3 starts slowly.
    let plugin = fixture_plugin_path();
    let version = |name: &str, config: FixtureConfig| {
        config
            .write(&fleet.work.join(format!("{name}.toml")))
            .expect("write version")
    };
    let v1 = version("v1", FixtureConfig::with_message("v1"));
    let v2 = version("v2", FixtureConfig::with_message("v2"));
    let v3 = version(
        "v3",
        FixtureConfig {
            healthy_after_ms: Some(600),
            ..FixtureConfig::with_message("v3")
        },
    );
    for host in &fleet.hosts {
        let run = host.h.activate("demo", &v1);
        assert_eq!(run.code, 0, "{}: {run:?}", host.name);
    }
    let v1_sha = fleet.host("host1").active_config_sha();
    let rollout = |config: &Path, extra: Value| {
        let mut vars = json!({
            "tryswap_slot": "demo",
            "tryswap_artifact": plugin,
            "tryswap_config_file": config,
        });
        if let (Some(vars), Some(extra)) = (vars.as_object_mut(), extra.as_object()) {
            vars.extend(extra.clone());
        }
        vars
    };

    // A good version reaches all six hosts, wave by wave: 1, 25 % (1), the rest (4).
    let good = fleet.playbook(
        "rollout",
        &rollout(&v2, json!({"tryswap_reason": "roll out v2 (CHG-1)"})),
    );
    assert_eq!(good.code, 0, "{}", good.output);
    for name in HOSTS {
        assert_eq!(good.count(name, "changed"), 1, "{name}: {}", good.output);
    }
    // Each host's journal says who did it and why: the API of its daemon, with the
    // rollout's reason.
    for host in &fleet.hosts {
        let history = host.history();
        let last = history.last().expect("a reload");
        assert_eq!(
            last["reason"], "roll out v2 (CHG-1)",
            "{}: {last}",
            host.name
        );
        assert_eq!(last["actor"]["kind"], "api", "{}: {last}", host.name);
    }
    let v2_sha = fleet.host("host1").active_config_sha();
    assert_ne!(v1_sha, v2_sha);
    for host in &fleet.hosts {
        assert_eq!(host.active_config_sha(), v2_sha, "{}", host.name);
    }
    let spans: Vec<_> = fleet.hosts.iter().map(last_reload_span).collect();
    assert!(
        spans[0].1 <= spans[1].0,
        "wave 2 began before wave 1 had baked: {spans:?}"
    );
    for later in &spans[2..] {
        assert!(
            spans[1].1 <= later.0,
            "wave 3 began before wave 2 had baked: {spans:?}"
        );
    }

    // The same rollout again changes nothing anywhere.
    let again = fleet.playbook("rollout", &rollout(&v2, json!({})));
    assert_eq!(again.code, 0, "{}", again.output);
    for name in HOSTS {
        assert_eq!(again.count(name, "changed"), 0, "{name}: {}", again.output);
        assert_eq!(again.count(name, "ok"), 2, "{name}: {}", again.output);
    }
    let reloads_before: Vec<usize> = fleet.hosts.iter().map(|h| h.history().len()).collect();

    // The bad version fails its probe on host3. Waves of 1, 2, the rest put host3 in the
    // middle wave (with six hosts the default waves are 1, 1, 4, the last holding host3).
    let bad = fleet.playbook(
        "rollout",
        &rollout(&v3, json!({"tryswap_waves": [1, 2, "100%"]})),
    );
    assert_ne!(bad.code, 0, "the rollout must fail: {}", bad.output);
    assert!(
        bad.output.contains("rejected at stage probed"),
        "the stage and reason: {}",
        bad.output
    );
    assert_eq!(bad.count("host3", "failed"), 1, "{}", bad.output);
    let v3_sha = fleet.host("host1").active_config_sha();
    assert_ne!(v3_sha, v2_sha, "host1 (wave 1) keeps the new version");
    assert_eq!(
        fleet.host("host2").active_config_sha(),
        v3_sha,
        "host2 keeps it"
    );
    let host3 = fleet.host("host3");
    assert_eq!(
        host3.active_config_sha(),
        v2_sha,
        "host3 keeps its generation"
    );
    let last = host3.history().last().cloned().expect("host3's reload");
    assert_eq!(
        (&last["outcome"], &last["failed_stage"]),
        (&json!("rolled_back"), &json!("probed")),
        "{last}"
    );
    for (host, before) in fleet.hosts.iter().zip(&reloads_before).skip(3) {
        assert_eq!(bad.count(host.name, "changed"), 0, "{}", bad.output);
        assert_eq!(host.history().len(), *before, "{} saw a reload", host.name);
        assert!(
            !host.export().contains(&v3_sha),
            "{}'s journal knows v3",
            host.name
        );
        assert_eq!(host.active_config_sha(), v2_sha);
    }

    // Check mode is the dry run: host3 would reject v3 again, and nothing changes.
    let (passed, dry_text) =
        fleet.reload_task(host3, json!({"artifact": plugin, "config_file": v3}), true);
    assert!(!passed, "{dry_text}");
    assert!(
        dry_text.contains("would be rejected (dry run) at stage probed"),
        "{dry_text}"
    );
    let last = host3.history().last().cloned().expect("host3's reload");
    assert_eq!(last["mode"], "try", "{last}");
    assert_eq!(host3.active_config_sha(), v2_sha);

    // The fleet rollback undoes v3 where it is active; elsewhere it changes nothing.
    let back = fleet.playbook("rollback", &rollout(&v3, json!({})));
    assert_eq!(back.code, 0, "{}", back.output);
    for (name, changed) in HOSTS.iter().zip([1, 1, 0, 0, 0, 0]) {
        assert_eq!(
            back.count(name, "changed"),
            changed,
            "{name}: {}",
            back.output
        );
    }
    for host in &fleet.hosts {
        assert_eq!(host.active_config_sha(), v2_sha, "{}", host.name);
    }
    let last = fleet
        .host("host1")
        .history()
        .last()
        .cloned()
        .expect("a reload");
    assert_eq!(last["mode"], "rollback", "{last}");

    // With tryswap_on_halt=rollback the halted rollout puts its earlier hosts back itself.
    let halted = fleet.playbook(
        "rollout",
        &rollout(
            &v3,
            json!({"tryswap_waves": [1, 2, "100%"], "tryswap_on_halt": "rollback"}),
        ),
    );
    assert_ne!(halted.code, 0, "{}", halted.output);
    for host in &fleet.hosts {
        assert_eq!(host.active_config_sha(), v2_sha, "{}", host.name);
    }
    for (name, mode) in [("host1", "rollback"), ("host2", "rollback")] {
        let last = fleet
            .host(name)
            .history()
            .last()
            .cloned()
            .expect("a reload");
        assert_eq!(last["mode"], mode, "{name}: {last}");
    }
    for host in &fleet.hosts[3..] {
        assert!(
            !host.export().contains(&v3_sha),
            "{}'s journal knows v3",
            host.name
        );
    }

    // A version that crashes during the bake is reverted: the task fails with stage
    // baking, and the standby serves again.
    let v4 = version(
        "v4",
        FixtureConfig {
            crash_after_ms: Some(700),
            ..FixtureConfig::with_message("v4")
        },
    );
    let host6 = fleet.host("host6");
    let standby = host6.status()["active"]["pid"].clone();
    let (passed, reverted) =
        fleet.reload_task(host6, json!({"artifact": plugin, "config_file": v4}), false);
    assert!(!passed, "{reverted}");
    assert!(
        reverted.contains("reverted during the bake (stage baking)"),
        "{reverted}"
    );
    assert_eq!(host6.status()["active"]["pid"], standby);
    assert_eq!(host6.active_config_sha(), v2_sha);

    // Fleet status: every host's status document in one file on the controller.
    let fleet_dir = fleet.work.join("fleet");
    std::fs::create_dir_all(&fleet_dir).expect("fleet dir");
    let status = fleet.playbook("status", &json!({"tryswap_fleet_dir": fleet_dir}));
    assert_eq!(status.code, 0, "{}", status.output);
    let collected: Value = serde_json::from_str(
        &std::fs::read_to_string(fleet_dir.join("status.json")).expect("status.json"),
    )
    .expect("status.json is JSON");
    for name in HOSTS {
        let slot = &collected[name]["slots"][0];
        assert_eq!(
            slot["active"]["config_sha256"],
            json!(v2_sha),
            "{name}: {slot}"
        );
        assert_eq!(slot["active"]["alive"], true, "{name}: {slot}");
    }

    // Fleet audit: every host's journal fetched, one page with a timeline per host.
    let audit = fleet.playbook("audit", &json!({"tryswap_fleet_dir": fleet_dir}));
    assert_eq!(audit.code, 0, "{}", audit.output);
    let html = std::fs::read_to_string(fleet_dir.join("fleet.html")).expect("fleet.html");
    for host in &fleet.hosts {
        let fetched = std::fs::read_to_string(
            fleet_dir
                .join("journals")
                .join(format!("{}.jsonl", host.name)),
        )
        .expect("the fetched journal");
        assert_eq!(
            fetched.lines().count(),
            host.export().lines().count(),
            "{}",
            audit.output
        );
        assert!(
            html.contains(&format!(
                "class=\"timeline\" data-source=\"{}\" data-slot=\"demo\"",
                host.name
            )),
            "no timeline for {}",
            host.name
        );
        assert!(html.contains(&format!("<tr class=\"host\" data-host=\"{}\">", host.name)));
    }
    assert_eq!(html.matches("class=\"timeline\"").count(), 6);

    for host in &fleet.hosts {
        assert!(
            !host.daemon.log().contains("panicked"),
            "{}",
            host.daemon.log()
        );
    }
    eprintln!(
        "fleet_ansible: venv ready in {:.1} s, whole test {:.1} s",
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_fleet_report_labels_hosts_and_reads_a_state_dir_its_daemon_serves() {
    let h = Harness::demo();
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    // A baked reload that is confirmed, then one that crashes in its bake and is reverted.
    let plugin = fixture_plugin_path();
    let baked = |name: &str, config: FixtureConfig| {
        let config = h.fixture_config(name, &config);
        let plugin = plugin.to_str().expect("utf-8");
        let config = config.to_str().expect("utf-8");
        let args = [
            "--json",
            "activate",
            "demo",
            plugin,
            "--config-file",
            config,
        ];
        h.tryswap(&[&args[..], &["--bake", "3s"]].concat()).code
    };
    let crashing = FixtureConfig {
        crash_after_ms: Some(500),
        ..FixtureConfig::with_message("v3")
    };
    assert_eq!(baked("v2", FixtureConfig::with_message("v2")), 0);
    assert_eq!(baked("v3", crashing), 2);
    let export = h.state.join("web2.jsonl");
    std::fs::write(&export, h.tryswap(&["journal", "export"]).stdout).expect("export");
    let _daemon = Daemon::start(&h);

    // The default source is the state directory its daemon serves: the report reads it
    // itself (through the daemon), never sending the command to the daemon.
    let page = h.state.join("one.html");
    let run = h.tryswap(&["--json", "report", "--html", page.to_str().expect("utf-8")]);
    assert_eq!(run.code, 0, "{run:?}");

    // HOST=PATH labels a source; a page has a fleet row and a timeline per host.
    let page = h.state.join("fleet.html");
    let web1 = format!("web1={}", h.state_dir.display());
    let web2 = format!("web2={}", export.display());
    let run = h.tryswap(&[
        "--json",
        "report",
        "--html",
        page.to_str().expect("utf-8"),
        &web1,
        &web2,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["sources"][1]["host"], "web2", "{run:?}");
    let html = std::fs::read_to_string(&page).expect("the page");
    // Bake outcomes: confirmed counts as active, a revert as a failure at `baking`.
    assert!(
        !html.contains("in_progress"),
        "a finished bake shown as in progress"
    );
    assert!(
        html.contains("<td class=\"reverted\">reverted</td>"),
        "no revert"
    );
    assert!(html.contains("<td>baking</td>"), "no failure at the bake");
    assert!(html.contains("<td class=\"active\">active</td>"));
    for host in ["web1", "web2"] {
        assert!(html.contains(&format!("<tr class=\"host\" data-host=\"{host}\">")));
        assert!(html.contains(&format!("class=\"timeline\" data-source=\"{host}\"")));
    }

    // Two sources with one label are refused, naming the label.
    let run = h.tryswap(&[
        "report",
        "--html",
        page.to_str().expect("utf-8"),
        &web1,
        &web1,
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("\"web1\""), "{run:?}");
}
