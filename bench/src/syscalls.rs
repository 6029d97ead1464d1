//! Section 3d: real sync syscalls per reload, counted by `strace -f -c` around one-shot
//! `tryswap activate` processes (the journal's own flush count is section 3a; this is what
//! the kernel sees: sled, the store and the log each sync their files).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::report::{count, Table};
use crate::setup::{self, Bins};

/// The syscalls that make data durable (or start writeback).
const SYNCS: &[&str] = &["fsync", "fdatasync", "sync_file_range", "msync", "syncfs"];

/// `tryswap --config CONFIG args…` with the bench's environment and no terminal; under
/// `strace -f -c -o OUT` (sync syscalls only) when `trace` names `OUT`.
fn tryswap_command(tryswap: &Path, config: &Path, args: &[&str], trace: Option<&Path>) -> Command {
    let mut command = match trace {
        Some(out) => {
            let mut strace = Command::new("strace");
            // Threads are followed; the plugins tryswap starts are let go at their execve
            // (a plugin outlives the command, and strace would wait for it).
            strace
                .args(["-f", "--detach-on=execve", "-c", "-o"])
                .arg(out)
                .arg(format!("-etrace={}", SYNCS.join(",")))
                .arg(tryswap);
            strace
        }
        None => Command::new(tryswap),
    };
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TRYSWAP_STATE_DIR")
        .env_remove("TRYSWAP_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Runs `tryswap args…` under `strace -f -c`; returns calls per sync syscall.
fn traced(
    tryswap: &Path,
    config: &Path,
    args: &[&str],
    out: &Path,
) -> Result<BTreeMap<String, u64>, String> {
    let status = tryswap_command(tryswap, config, args, Some(out))
        .status()
        .map_err(|e| format!("strace: {e} (is strace installed?)"))?;
    if !status.success() {
        return Err(format!("tryswap {} under strace: {status}", args.join(" ")));
    }
    let text = std::fs::read_to_string(out).map_err(|e| format!("strace output: {e}"))?;
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        // `% time  seconds  usecs/call  calls  [errors]  syscall`
        if let Some(name) = words.last().filter(|w| SYNCS.contains(w)) {
            if let Some(n) = words.get(3).and_then(|w| w.parse().ok()) {
                calls.insert((*name).to_owned(), n);
            }
        }
    }
    Ok(calls)
}

/// Runs section 3d with `reloads` one-shot activations.
pub fn run(bins: &Bins, reloads: usize) -> Result<Vec<Table>, String> {
    let tryswap = bins
        .tryswap
        .as_ref()
        .ok_or("the tryswap binary is not built")?;
    let temp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let state = temp.path().join("state");
    let config = temp.path().join("tryswap.toml");
    std::fs::write(&config, setup::config_toml(&state, &["bench".to_owned()]))
        .map_err(|e| format!("writing the config: {e}"))?;
    let fixture = bins.fixture.to_string_lossy().into_owned();
    let out = temp.path().join("strace.txt");
    let activate = |n: usize| -> Result<BTreeMap<String, u64>, String> {
        let file = setup::fixture_config(temp.path(), &format!("sync{n}"));
        let file = file.to_string_lossy().into_owned();
        traced(
            tryswap,
            &config,
            &[
                "--json",
                "activate",
                "bench",
                &fixture,
                "--config-file",
                &file,
            ],
            &out,
        )
    };
    activate(0)?; // the first generation: the journal and the store are created.
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for n in 1..=reloads {
        for (name, calls) in activate(n)? {
            *total.entry(name).or_default() += calls;
        }
    }
    let status = traced(tryswap, &config, &["status"], &out)?;
    let stopped = tryswap_command(tryswap, &config, &["stop", "bench"], None).status();
    if !stopped.is_ok_and(|s| s.success()) {
        eprintln!("bench: section 3d: `tryswap stop bench` failed; a fixture plugin may be left");
    }

    let mut t = Table::new(
        "3d. Sync syscalls per reload (strace -f -c, one-shot `tryswap activate`)",
        &["syscall", "per reload", "per `tryswap status`"],
    );
    for name in SYNCS {
        let per = total.get(*name).copied().unwrap_or(0) as f64 / reloads.max(1) as f64;
        let read = status.get(*name).copied().unwrap_or(0);
        if per > 0.0 || read > 0 {
            t.row([(*name).to_owned(), format!("{per:.1}"), count(read as f64)]);
        }
    }
    let all: u64 = total.values().sum();
    t.row([
        "all".to_owned(),
        format!("{:.1}", all as f64 / reloads.max(1) as f64),
        count(status.values().sum::<u64>() as f64),
    ]);
    t.note(format!(
        "Mean over {reloads} activations of the fixture, each a new `tryswap` process (journal \
         open, recovery, stage, launch, probe, commit, retire), counting the syscalls of the \
         CLI's threads (the plugins it starts are not traced). Section 3a counts the journal's durable points; \
         this counts every file sync the kernel sees."
    ));
    Ok(vec![t])
}
