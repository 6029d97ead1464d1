//! The config file: the DESIGN.md example, defaults, durations, unknown keys and every
//! validation rule, each with the line the error points at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tryswap::config::{
    AdminConfig, Config, ConfigError, HandshakeConfig, ProbeConfig, ProbeKind, RestartConfig,
    RestartPolicy, SlotConfig,
};
use tryswap_fsm::{Protocol, SlotName};

const DESIGN_EXAMPLE: &str = r#"state_dir = ".tryswap"            # also --state-dir / TRYSWAP_STATE_DIR
[admin]
socket = "tryswap.sock"           # relative to state_dir, mode 0600
# listen = "127.0.0.1:7391"       # TCP only with token_file
[[slot]]
name = "demo"
args = ["--config", "{config}"]   # {config}: the staged config file's path, if any
env = { RUST_LOG = "info" }
start_timeout = "10s"
drain_timeout = "5s"
stop_timeout = "5s"
[slot.handshake]
magic_cookie_key = "TRYSWAP_PLUGIN"
magic_cookie_value = "demo"
app_protocol_versions = [1]
protocols = ["grpc"]
[slot.probe]
kind = "grpc"
period = "100ms"
timeout = "1s"
success_threshold = 1
failure_threshold = 3
[slot.restart]                    # used by the daemon
policy = "on-failure"             # never | on-failure | always
backoff_initial = "200ms"
backoff_max = "30s"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("tryswap.toml"))
}

fn name(s: &str) -> SlotName {
    SlotName::new(s).unwrap()
}

/// Parses `text`, expects a validation or parse error on `line` whose message contains
/// every string in `needles`; returns the rendered message.
#[track_caller]
fn error_at(text: &str, line: usize, needles: &[&str]) -> String {
    let err = match parse(text) {
        Ok(c) => panic!("expected an error at line {line}, parsed {c:#?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert_eq!(err.line(), Some(line), "wrong line in: {msg}");
    assert!(
        msg.starts_with(&format!("tryswap.toml:{line}")),
        "message does not start with file:line: {msg}"
    );
    for needle in needles {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    msg
}

/// A one-slot config `demo` whose extra lines come after the `name` line (line 2), so the
/// first extra line is line 3.
fn slot_with(extra: &str) -> String {
    format!("[[slot]]\nname = \"demo\"\n{extra}")
}

#[test]
fn design_example_parses_to_expected_values() {
    let config = parse(DESIGN_EXAMPLE).unwrap();
    let demo = name("demo");
    let expected = Config {
        journal_compact_bytes: None,
        journal_compact_records: None,
        state_dir: Some(PathBuf::from(".tryswap")),
        admin: AdminConfig {
            socket: PathBuf::from("tryswap.sock"),
            listen: None,
            token_file: None,
            socket_outside_state_dir: false,
        },
        slots: vec![SlotConfig {
            name: demo.clone(),
            args: vec!["--config".into(), "{config}".into()],
            env: BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())]),
            pass_env: vec![],
            start_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(5),
            log_max_bytes: 64 * 1024 * 1024,
            handshake: HandshakeConfig {
                magic_cookie_key: "TRYSWAP_PLUGIN".into(),
                magic_cookie_value: "demo".into(),
                app_protocol_versions: vec![1],
                protocols: vec![Protocol::Grpc],
                min_port: 10000,
                max_port: 25000,
            },
            probe: ProbeConfig {
                kind: ProbeKind::Grpc {
                    service: "plugin".into(),
                },
                initial_delay: Duration::ZERO,
                period: Duration::from_millis(100),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            },
            restart: RestartConfig {
                policy: RestartPolicy::OnFailure,
                backoff_initial: Duration::from_millis(200),
                backoff_max: Duration::from_secs(30),
            },
            bake: Duration::ZERO,
            endpoint: None,
        }],
        source: Some(PathBuf::from("tryswap.toml")),
    };
    assert_eq!(config, expected);
    assert_eq!(config.slot(&demo), Some(&expected.slots[0]));
    assert_eq!(config.slot(&name("other")), None);
}

#[test]
fn minimal_slot_gets_every_default() {
    let config = parse("[[slot]]\nname = \"billing\"\n").unwrap();
    assert_eq!(config.state_dir, None);
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(config.admin.socket, PathBuf::from("tryswap.sock"));
    let slot = &config.slots[0];
    assert_eq!(slot, &SlotConfig::new(name("billing")));
    assert_eq!(slot.handshake.magic_cookie_key, "TRYSWAP_PLUGIN");
    assert_eq!(slot.handshake.magic_cookie_value, "billing");
    assert_eq!(slot.handshake.app_protocol_versions, [1]);
    assert_eq!(slot.handshake.protocols, [Protocol::Grpc]);
    assert_eq!(
        (slot.handshake.min_port, slot.handshake.max_port),
        (10000, 25000)
    );
    assert_eq!(slot.start_timeout, Duration::from_secs(10));
    assert_eq!(slot.drain_timeout, Duration::from_secs(5));
    assert_eq!(slot.stop_timeout, Duration::from_secs(5));
    assert_eq!(slot.log_max_bytes, 64 << 20);
    assert!(slot.pass_env.is_empty());
    assert_eq!(slot.probe, ProbeConfig::default());
    assert_eq!(slot.probe.period, Duration::from_millis(500));
    assert_eq!(
        slot.probe.kind,
        ProbeKind::Grpc {
            service: "plugin".into()
        }
    );
    assert_eq!(slot.restart, RestartConfig::default());
    assert_eq!(slot.restart.policy, RestartPolicy::OnFailure);
}

#[test]
fn empty_file_is_a_config_without_slots() {
    let config = parse("").unwrap();
    assert!(config.slots.is_empty());
    assert_eq!(config.admin, AdminConfig::default());
}

#[test]
fn all_optional_settings_are_read() {
    let text = r#"
[admin]
socket = "/run/tryswap/admin.sock"
socket_outside_state_dir = true
listen = "127.0.0.1:7391"
token_file = "/etc/tryswap/token"

[[slot]]
name = "a"
pass_env = ["PATH", "HOME"]
log_max_bytes = 0
[slot.handshake]
app_protocol_versions = [2, 3]
protocols = ["netrpc", "grpc"]
min_port = 20000
max_port = 20010
[slot.probe]
kind = "exec"
command = ["/bin/check", "--quick"]
initial_delay = "2s"
success_threshold = 2
failure_threshold = 5
[slot.restart]
policy = "always"

[[slot]]
name = "b"
[slot.probe]
kind = "http"
path = "/ready"
timeout = "250ms"

[[slot]]
name = "c"
probe = { kind = "tcp" }
restart.policy = "never"

[[slot]]
name = "d"
[slot.probe]
kind = "none"

[[slot]]
name = "e"
[slot.probe]
service = ""
"#;
    let config = parse(text).unwrap();
    assert_eq!(
        config.admin,
        AdminConfig {
            socket: "/run/tryswap/admin.sock".into(),
            listen: Some("127.0.0.1:7391".parse().unwrap()),
            token_file: Some("/etc/tryswap/token".into()),
            socket_outside_state_dir: true,
        }
    );
    let a = config.slot(&name("a")).unwrap();
    assert_eq!(a.pass_env, ["PATH", "HOME"]);
    assert_eq!(a.log_max_bytes, 0);
    assert_eq!(a.handshake.app_protocol_versions, [2, 3]);
    assert_eq!(a.handshake.protocols, [Protocol::NetRpc, Protocol::Grpc]);
    assert_eq!((a.handshake.min_port, a.handshake.max_port), (20000, 20010));
    assert_eq!(
        a.probe,
        ProbeConfig {
            kind: ProbeKind::Exec {
                command: vec!["/bin/check".into(), "--quick".into()]
            },
            initial_delay: Duration::from_secs(2),
            period: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 5,
        }
    );
    assert_eq!(a.restart.policy, RestartPolicy::Always);
    let b = config.slot(&name("b")).unwrap();
    assert_eq!(
        b.probe.kind,
        ProbeKind::Http {
            path: "/ready".into()
        }
    );
    assert_eq!(b.probe.timeout, Duration::from_millis(250));
    let c = config.slot(&name("c")).unwrap();
    assert_eq!(c.probe.kind, ProbeKind::Tcp);
    assert_eq!(c.restart.policy, RestartPolicy::Never);
    assert_eq!(config.slot(&name("d")).unwrap().probe.kind, ProbeKind::None);
    assert_eq!(
        config.slot(&name("e")).unwrap().probe.kind,
        ProbeKind::Grpc {
            service: String::new()
        }
    );
    let names: Vec<&str> = config.slots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"], "file order is kept");
}

#[test]
fn http_probe_defaults_to_healthz() {
    let config = parse(&slot_with("[slot.probe]\nkind = \"http\"\n")).unwrap();
    assert_eq!(
        config.slots[0].probe.kind,
        ProbeKind::Http {
            path: "/healthz".into()
        }
    );
}

#[test]
fn config_placeholder_in_args_is_kept_literally() {
    let config = parse(&slot_with(
        "args = [\"-c\", \"{config}\", \"x{config}y\"]\n",
    ))
    .unwrap();
    assert_eq!(config.slots[0].args, ["-c", "{config}", "x{config}y"]);
}

#[test]
fn durations_are_humantime_strings() {
    for (text, expected) in [
        ("100ms", Duration::from_millis(100)),
        ("10s", Duration::from_secs(10)),
        ("1m", Duration::from_secs(60)),
        ("1m 30s", Duration::from_secs(90)),
        ("2h", Duration::from_secs(7200)),
        ("1500us", Duration::from_micros(1500)),
    ] {
        let config = parse(&slot_with(&format!("start_timeout = \"{text}\"\n"))).unwrap();
        assert_eq!(config.slots[0].start_timeout, expected, "{text}");
    }
}

#[test]
fn bad_durations_name_the_key_and_line() {
    error_at(
        &slot_with("\nstop_timeout = \"soon\"\n"),
        4,
        &[
            "slot \"demo\"",
            "`stop_timeout`",
            "\"soon\"",
            "not a duration",
        ],
    );
    error_at(
        &slot_with("[slot.probe]\nperiod = \"10\"\n"),
        4,
        &["`probe.period`", "not a duration"],
    );
    error_at(
        &slot_with("[slot.restart]\nbackoff_max = \"1 fortnight\"\n"),
        4,
        &["`restart.backoff_max`"],
    );
    // A number instead of a string is a type error pointing at the value.
    let msg = error_at(&slot_with("start_timeout = 10\n"), 3, &["string"]);
    assert!(msg.starts_with("tryswap.toml:3:17:"), "{msg}");
}

#[test]
fn zero_timeouts_are_rejected() {
    for key in ["start_timeout", "drain_timeout", "stop_timeout"] {
        error_at(
            &slot_with(&format!("{key} = \"0s\"\n")),
            3,
            &[key, "greater than zero", "slot \"demo\""],
        );
    }
    for key in ["period", "timeout"] {
        error_at(
            &slot_with(&format!("[slot.probe]\n{key} = \"0ms\"\n")),
            4,
            &[&format!("probe.{key}"), "greater than zero"],
        );
    }
    error_at(
        &slot_with("[slot.restart]\nbackoff_initial = \"0s\"\n"),
        4,
        &["restart.backoff_initial", "greater than zero"],
    );
    // A zero initial delay is fine.
    let config = parse(&slot_with("[slot.probe]\ninitial_delay = \"0s\"\n")).unwrap();
    assert_eq!(config.slots[0].probe.initial_delay, Duration::ZERO);
}

#[test]
fn backoff_max_below_initial_is_rejected() {
    error_at(
        &slot_with("[slot.restart]\nbackoff_initial = \"1m\"\nbackoff_max = \"1s\"\n"),
        5,
        &["backoff_max", "less than backoff_initial"],
    );
}

#[test]
fn unknown_key_at_top_level() {
    let msg = error_at(
        "state_dir = \"x\"\n\n  colour = \"blue\"\n",
        3,
        &["unknown key `colour` at the top level"],
    );
    assert!(
        msg.starts_with("tryswap.toml:3:3: unknown key `colour`"),
        "{msg}"
    );
}

#[test]
fn unknown_key_in_slot() {
    let msg = error_at(
        &slot_with("args = []\nstartup_timeout = \"1s\"\n"),
        4,
        &["unknown key `startup_timeout` in [[slot]]", "start_timeout"],
    );
    assert!(msg.starts_with("tryswap.toml:4:1:"), "{msg}");
}

#[test]
fn unknown_key_in_probe() {
    let msg = error_at(
        &slot_with("[slot.probe]\nkind = \"grpc\"\nfoo = 1\n"),
        5,
        &["unknown key `foo` in [slot.probe]"],
    );
    assert!(
        msg.starts_with("tryswap.toml:5:1: unknown key `foo` in [slot.probe]"),
        "{msg}"
    );
    // Same when written as a dotted key or an inline table.
    error_at(
        &slot_with("probe.kind = \"tcp\"\nprobe.foo = 1\n"),
        4,
        &["unknown key `foo` in [slot.probe]"],
    );
    error_at(
        &slot_with("probe = { kind = \"tcp\", foo = 1 }\n"),
        3,
        &["unknown key `foo` in [slot.probe]"],
    );
}

#[test]
fn unknown_keys_in_other_tables() {
    error_at("[admin]\nport = 1\n", 2, &["unknown key `port` in [admin]"]);
    error_at(
        &slot_with("[slot.handshake]\nmagic = \"x\"\n"),
        4,
        &["unknown key `magic` in [slot.handshake]"],
    );
    error_at(
        &slot_with("[slot.restart]\nretries = 3\n"),
        4,
        &["unknown key `retries` in [slot.restart]"],
    );
    error_at("[slots]\nname = \"x\"\n", 1, &["unknown key `slots`"]);
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let err = parse("state_dir = \"x\"\n[[slot]\nname = \"a\"\n").unwrap_err();
    match &err {
        ConfigError::Parse { line, column, .. } => {
            assert_eq!(*line, 2);
            assert_eq!(*column, 7);
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(err.to_string().starts_with("tryswap.toml:2:7: "), "{err}");
    // Duplicate keys are TOML errors too.
    error_at(
        &slot_with("[slot.probe]\nperiod = \"1s\"\nperiod = \"2s\"\n"),
        5,
        &["duplicate key"],
    );
}

#[test]
fn missing_slot_name_is_reported() {
    error_at("\n[[slot]]\nargs = []\n", 2, &["missing key `name`"]);
}

#[test]
fn duplicate_slot_names_are_rejected() {
    let text = "[[slot]]\nname = \"a\"\n[[slot]]\nname = \"b\"\n[[slot]]\nname = \"a\"\n";
    error_at(
        text,
        6,
        &["duplicate slot name \"a\"", "first defined on line 2"],
    );
}

#[test]
fn invalid_slot_names_are_rejected() {
    for bad in ["", "../etc", ".hidden", "-x", "has space", &"x".repeat(65)] {
        error_at(
            &format!("\n[[slot]]\nname = \"{bad}\"\n"),
            3,
            &["invalid slot name"],
        );
    }
}

#[test]
fn empty_app_protocol_versions_is_rejected() {
    error_at(
        &slot_with("[slot.handshake]\napp_protocol_versions = []\n"),
        4,
        &["slot \"demo\"", "app_protocol_versions", "at least one"],
    );
}

#[test]
fn unknown_protocols_are_rejected() {
    error_at(
        &slot_with("[slot.handshake]\nprotocols = [\"grpc\",\n  \"http\"]\n"),
        5,
        &["unknown protocol \"http\"", "\"grpc\" or \"netrpc\""],
    );
    error_at(
        &slot_with("[slot.handshake]\nprotocols = []\n"),
        4,
        &["protocols must list at least one"],
    );
}

#[test]
fn min_port_above_max_port_is_rejected() {
    error_at(
        &slot_with("[slot.handshake]\nmin_port = 30000\nmax_port = 20000\n"),
        5,
        &["min_port 30000 is greater than max_port 20000"],
    );
    // Only min_port set, above the default max_port.
    error_at(
        &slot_with("[slot.handshake]\nmin_port = 30000\n"),
        4,
        &["min_port 30000 is greater than max_port 25000"],
    );
    // Out of u16 range is a type error on the value.
    error_at(
        &slot_with("[slot.handshake]\nmax_port = 70000\n"),
        4,
        &["70000"],
    );
}

#[test]
fn zero_thresholds_are_rejected() {
    for key in ["success_threshold", "failure_threshold"] {
        error_at(
            &slot_with(&format!("[slot.probe]\nkind = \"tcp\"\n{key} = 0\n")),
            5,
            &[key, "at least 1", "slot \"demo\""],
        );
    }
    error_at(
        &slot_with("[slot.probe]\nsuccess_threshold = -1\n"),
        4,
        &["-1"],
    );
}

#[test]
fn exec_probe_needs_a_command() {
    error_at(
        &slot_with("[slot.probe]\nkind = \"exec\"\n"),
        4,
        &["kind = \"exec\" needs `command`"],
    );
    error_at(
        &slot_with("[slot.probe]\nkind = \"exec\"\ncommand = []\n"),
        5,
        &["`command` must not be empty"],
    );
    error_at(
        &slot_with("[slot.probe]\nkind = \"exec\"\ncommand = [\"\", \"x\"]\n"),
        5,
        &["must start with a program"],
    );
}

#[test]
fn per_kind_probe_keys_must_fit_the_kind() {
    error_at(
        &slot_with("[slot.probe]\nkind = \"grpc\"\npath = \"/x\"\n"),
        5,
        &["`path` only applies to kind = \"http\"", "kind is \"grpc\""],
    );
    // No kind means grpc.
    error_at(
        &slot_with("[slot.probe]\n\ncommand = [\"x\"]\n"),
        5,
        &["`command` only applies to kind = \"exec\""],
    );
    error_at(
        &slot_with("[slot.probe]\nkind = \"http\"\nservice = \"x\"\n"),
        5,
        &["`service` only applies to kind = \"grpc\""],
    );
    error_at(
        &slot_with("[slot.probe]\nkind = \"http\"\npath = \"healthz\"\n"),
        5,
        &["must start with '/'"],
    );
    error_at(
        &slot_with("[slot.probe]\nkind = \"udp\"\n"),
        4,
        &["unknown kind \"udp\""],
    );
}

#[test]
fn unknown_restart_policy_is_rejected() {
    error_at(
        &slot_with("[slot.restart]\npolicy = \"sometimes\"\n"),
        4,
        &["unknown policy \"sometimes\""],
    );
}

#[test]
fn listen_requires_a_token_file() {
    error_at(
        "[admin]\nlisten = \"127.0.0.1:7391\"\n",
        2,
        &["`admin.listen` needs `admin.token_file`"],
    );
    error_at(
        "[admin]\ntoken_file = \"t\"\nlisten = \"localhost\"\n",
        3,
        &["`admin.listen`", "not an IP address and port"],
    );
}

#[test]
fn env_keys_with_equals_or_nul_are_rejected() {
    error_at(
        &slot_with("\nenv = { \"A=B\" = \"x\" }\n"),
        4,
        &["slot \"demo\"", "\"A=B\"", "contains '='"],
    );
    error_at(&slot_with("env = { \"A\\u0000B\" = \"x\" }\n"), 3, &["NUL"]);
    error_at(&slot_with("env = { \"\" = \"x\" }\n"), 3, &["is empty"]);
    error_at(
        &slot_with("env = { A = \"x\\u0000\" }\n"),
        3,
        &["value of env \"A\"", "NUL"],
    );
    error_at(
        &slot_with("pass_env = [\"PATH\", \"X=Y\"]\n"),
        3,
        &["`pass_env`", "contains '='"],
    );
    error_at(&slot_with("args = [\"a\\u0000\"]\n"), 3, &["`args`", "NUL"]);
}

#[test]
fn magic_cookie_key_must_not_be_empty() {
    error_at(
        &slot_with("[slot.handshake]\nmagic_cookie_key = \"\"\n"),
        4,
        &["magic_cookie_key must not be empty"],
    );
    error_at(
        &slot_with("[slot.handshake]\nmagic_cookie_key = \"A=B\"\n"),
        4,
        &["magic_cookie_key must not contain '='"],
    );
}

#[test]
fn empty_paths_are_rejected() {
    error_at("state_dir = \"\"\n", 1, &["`state_dir` must not be empty"]);
    error_at(
        "[admin]\nsocket = \"\"\n",
        2,
        &["`admin.socket` must not be empty"],
    );
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tryswap.toml");
    std::fs::write(&path, DESIGN_EXAMPLE).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    assert_eq!(config.slots.len(), 1);

    std::fs::write(&path, "[[slot]]\nname = \"a\"\nbogus = 1\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:3:1: unknown key `bogus`", path.display())),
        "{err}"
    );

    let missing = dir.path().join("nope.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert_eq!(err.line(), None);

    std::fs::write(&path, b"state_dir = \"\xff\"\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
}

#[test]
fn slots_built_in_code_use_the_same_defaults() {
    let n = name("inproc");
    let slot = SlotConfig::new(n.clone());
    assert_eq!(slot.handshake, HandshakeConfig::for_slot(&n));
    assert_eq!(slot.handshake.magic_cookie_value, "inproc");
    assert_eq!(ProbeKind::Exec { command: vec![] }.name(), "exec");
    assert_eq!(RestartPolicy::OnFailure.name(), "on-failure");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text(text in any::<String>()) {
            let _ = parse(&text);
        }

        /// The DESIGN.md example with a few characters replaced or removed: errors, never
        /// panics, and any error points inside the file.
        #[test]
        fn mutated_design_example(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), "[\"'=\\[\\]{},.#\\n a-z0-9]?"), 1..4)
        ) {
            let mut text: Vec<char> = DESIGN_EXAMPLE.chars().collect();
            for (at, replacement) in &edits {
                let i = at.index(text.len());
                text.splice(i..=i, replacement.chars());
            }
            let text: String = text.into_iter().collect();
            if let Err(err) = parse(&text) {
                let lines = text.lines().count().max(1);
                if let Some(line) = err.line() {
                    prop_assert!(line >= 1 && line <= lines + 1, "line {} of {}: {}", line, lines, err);
                }
            }
        }
    }
}

#[test]
fn bake_is_a_bounded_duration_off_by_default() {
    let config = parse("[[slot]]\nname = \"billing\"\nbake = \"30s\"\n").unwrap();
    assert_eq!(config.slots[0].bake, Duration::from_secs(30));
    let config = parse("[[slot]]\nname = \"billing\"\n").unwrap();
    assert_eq!(config.slots[0].bake, Duration::ZERO);
    let err = parse("[[slot]]\nname = \"billing\"\nbake = \"2days\"\n").unwrap_err();
    assert!(
        err.to_string().contains("`bake`") && err.to_string().contains("maximum of 1day"),
        "{err}"
    );
    assert_eq!(err.line(), Some(3), "{err}");
    let err = parse("[[slot]]\nname = \"billing\"\nbake = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("bake"), "{err}");
}

#[test]
fn slot_endpoint_is_an_ip_and_port() {
    let config = Config::parse(
        "[[slot]]\nname = \"a\"\nendpoint = \"127.0.0.1:7000\"\n",
        Path::new("t.toml"),
    )
    .unwrap();
    assert_eq!(
        config.slots[0].endpoint,
        Some("127.0.0.1:7000".parse().unwrap())
    );
    let err = Config::parse(
        "[[slot]]\nname = \"a\"\nendpoint = \"/tmp/x.sock\"\n",
        Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`endpoint`") && err.contains("t.toml:3"),
        "{err}"
    );
}

#[test]
fn journal_compact_bytes_is_read_and_defaults_to_none() {
    assert_eq!(parse("").unwrap().journal_compact_bytes, None);
    let config = parse("journal_compact_bytes = 1000\n").unwrap();
    assert_eq!(config.journal_compact_bytes, Some(1000));
    assert_eq!(
        parse("journal_compact_bytes = 0\n")
            .unwrap()
            .journal_compact_bytes,
        Some(0)
    );
}

#[test]
fn journal_compact_records_is_read_and_defaults_to_none() {
    assert_eq!(parse("").unwrap().journal_compact_records, None);
    let config = parse("journal_compact_records = 500\n").unwrap();
    assert_eq!(config.journal_compact_records, Some(500));
}
