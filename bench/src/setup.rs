//! What every section shares: the binaries, the slot's settings, the machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tryswap::config::SlotConfig;
use tryswap::CandidateSpec;
use tryswap_tests::harness::{fixture_slot, SlotSpec};
use tryswap_tests::FixtureConfig;

/// Binaries the bench drives.
#[derive(Clone, Debug)]
pub struct Bins {
    /// `tryswap-fixture-plugin` (release build, next to this binary).
    pub fixture: PathBuf,
    /// `tryswap` (release build, next to this binary), if built.
    pub tryswap: Option<PathBuf>,
    /// Whether `tryswap serve --help` works.
    pub daemon: bool,
    /// `tryswap-oneshot-floor` (built with this bench, next to it), if present.
    pub oneshot_floor: Option<PathBuf>,
}

impl Bins {
    /// Finds the binaries next to this executable (building them with `$CARGO` first
    /// unless `no_build`).
    pub fn find(no_build: bool) -> Result<Bins, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let dir = exe
            .parent()
            .ok_or("the bench binary has no parent directory")?
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        if !no_build {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let profile: &[&str] = if release { &["--release"] } else { &[] };
            let build = |what: &[&str]| {
                std::process::Command::new(&cargo)
                    .arg("build")
                    .args(profile)
                    .args(what)
                    .stdin(std::process::Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            };
            if !build(&["-p", "tryswap-tests", "--bin", "tryswap-fixture-plugin"]) {
                return Err("building tryswap-fixture-plugin failed".into());
            }
            if !build(&["-p", "tryswap-cli", "--bin", "tryswap"]) {
                eprintln!("bench: building the tryswap binary failed; the CLI column is skipped");
            }
        }
        let fixture = dir.join("tryswap-fixture-plugin");
        if !fixture.exists() {
            return Err(format!(
                "{} is missing: cargo build --release -p tryswap-tests --bin tryswap-fixture-plugin",
                fixture.display()
            ));
        }
        let tryswap = Some(dir.join("tryswap")).filter(|p| p.exists());
        let daemon = tryswap.as_ref().is_some_and(|bin| {
            std::process::Command::new(bin)
                .args(["serve", "--help"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let oneshot_floor = Some(dir.join("tryswap-oneshot-floor")).filter(|p| p.exists());
        Ok(Bins {
            fixture,
            tryswap,
            daemon,
            oneshot_floor,
        })
    }
}

/// The bench slot's settings, shared by the library, the CLI and the daemon runs: the
/// tests' fixture slot with generous timeouts and a 10 ms gRPC probe period that tolerates
/// ~3 s of a slowly starting candidate.
pub fn slot_config(name: &str) -> SlotConfig {
    let mut config = fixture_slot(name);
    config.start_timeout = Duration::from_secs(10);
    config.stop_timeout = Duration::from_secs(5);
    config.probe.period = Duration::from_millis(10);
    config.probe.timeout = Duration::from_secs(1);
    config.probe.failure_threshold = 300;
    config
}

/// The same slots as a config file for the `tryswap` binary.
pub fn config_toml(state_dir: &Path, names: &[String]) -> String {
    let mut text = format!("state_dir = {:?}\n", state_dir.to_string_lossy());
    for name in names {
        let slot = SlotSpec {
            start_timeout: "10s",
            stop_timeout: "5s",
            drain_timeout: "5s",
            log_max_bytes: tryswap::config::DEFAULT_LOG_MAX_BYTES,
            probe_period: "10ms",
            failure_threshold: 300,
            ..SlotSpec::new(name)
        };
        text.push_str(&slot.toml());
    }
    text
}

/// How long fixture plugins configured by [`fixture_config`] initialise before their
/// handshake (0: start at once).
static STARTUP_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes every fixture configured from now on spend `ms` initialising (a realistic plugin
/// that loads data before it serves; the floor and every tryswap path alike).
pub fn set_startup_delay_ms(ms: u64) {
    STARTUP_DELAY_MS.store(ms, std::sync::atomic::Ordering::SeqCst);
}

/// Writes a fixture config whose `Call` replies carry `message`; returns its path.
pub fn fixture_config(dir: &Path, message: &str) -> PathBuf {
    let delay = STARTUP_DELAY_MS.load(std::sync::atomic::Ordering::SeqCst);
    FixtureConfig {
        startup_delay_ms: (delay > 0).then_some(delay),
        ..FixtureConfig::with_message(message)
    }
    .write(&dir.join(format!("{message}.toml")))
    .expect("writing a fixture config")
}

/// The candidate for one reload: the fixture with its own config file.
pub fn candidate(bins: &Bins, dir: &Path, message: &str) -> CandidateSpec {
    CandidateSpec::executable(&bins.fixture).with_config(fixture_config(dir, message))
}

/// The machine the numbers were measured on.
pub fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "unknown".into());
    let rustc = std::process::Command::new(std::env::var_os("RUSTC").unwrap_or("rustc".into()))
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    vec![
        ("cores (nproc)".into(), cores),
        ("memory".into(), memory),
        ("CPU".into(), cpu),
        ("kernel".into(), kernel),
        ("rustc".into(), rustc),
        ("load average at start".into(), load),
    ]
}

/// `VmHWM` (peak resident set) and `VmRSS` of a process, in KiB.
pub fn memory_of(pid: &str) -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets this process's peak RSS to its current RSS (`/proc/self/clear_refs`, value 5).
pub fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
