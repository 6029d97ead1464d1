//! Section 6: memory and invariants over time.
//!
//! 6a. The journal alone: records appended in a loop, this process's RSS sampled as the
//!     journal grows. Flat once sled's page cache (`cache_capacity`) is full means the
//!     growth is the cache; growing on means a leak.
//! 6b. A bounded soak of `tryswap serve`: many slots, workers doing random reloads,
//!     `kill -9` of active plugins, config reloads (SIGHUP and API) and reads; every second
//!     the daemon's RSS, threads and fds are sampled and the invariants checked; at the end
//!     every slot must settle to exactly one live plugin and `journal verify` must pass.
//!
//! Every loop is bounded in count and time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use tryswap_fsm::{ArtifactRef, Command, Mode, Reason, ReloadId, SlotName};
use tryswap_journal::Journal;
use tryswap_tests::crash::SplitMix64;
use tryswap_tests::TempState;

use crate::daemon::{request, Daemon};
use crate::memory::last_seq;
use crate::report::Table;
use crate::setup::{self, Bins};

/// KiB from `/proc/<pid>/status` (`VmRSS`), thread count and open fds of `pid`.
fn sample(pid: &str) -> (u64, u64, u64) {
    let rss = setup::memory_of(pid).1.unwrap_or(0);
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, threads, fds)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// 6a: RSS of this process while one journal grows to `records` records (bounded by
/// `budget`).
pub fn journal_rss(records: u64, budget: Duration) -> Result<Table, String> {
    let temp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let journal = Journal::open(temp.path()).map_err(|e| e.to_string())?;
    let slots: Vec<SlotName> = (0..20)
        .map(|i| SlotName::new(format!("s{i:02}")).expect("slot name"))
        .collect();
    let mut table = Table::new(
        "6a. Journal alone: RSS as the journal grows",
        &[
            "records",
            "RSS of the process",
            "KiB per record since the previous row",
        ],
    );
    let step = (records / 8).max(1);
    let started = Instant::now();
    let (mut last_records, mut last_rss) = (0, sample("self").0);
    table.row(["0".to_owned(), mib(last_rss), "–".to_owned()]);
    let mut n: u64 = 0;
    while journal.last_seq() < records && started.elapsed() < budget {
        n += 1;
        let slot = slots[(n % slots.len() as u64) as usize].clone();
        let reload = ReloadId::now_v7();
        let mut sha = [0u8; 32];
        sha[..8].copy_from_slice(&n.to_le_bytes());
        let commands = [
            Command::Stage {
                reload,
                slot,
                mode: Mode::Activate,
                artifact: ArtifactRef {
                    sha256: tryswap_fsm::Sha256(sha),
                    config_sha256: None,
                },
            },
            Command::RecordLaunch {
                reload,
                process: None,
                log_path: Some(format!("logs/soak/{n}.log")),
            },
            Command::Fail {
                reload,
                reason: Reason::error("soak: a candidate that never answers its probe"),
            },
        ];
        for command in &commands {
            journal
                .execute(command, Utc::now())
                .map_err(|e| format!("journal: {e}"))?;
        }
        let seq = journal.last_seq();
        if seq / step > last_records / step {
            let rss = sample("self").0;
            let per = (rss as f64 - last_rss as f64) / (seq - last_records) as f64;
            table.row([seq.to_string(), mib(rss), format!("{per:.2}")]);
            (last_records, last_rss) = (seq, rss);
        }
    }
    table.note(format!(
        "{} records in {:.0} s (`Staged`, `Launched`, `RolledBack` over 20 slots). sled's \
         page cache holds recently written pages up to `cache_capacity` ({} MiB, \
         journal/src/journal.rs); the RSS growth per record falls sharply once it is \
         full. A leak would keep the per-record growth constant.",
        journal.last_seq(),
        started.elapsed().as_secs_f64(),
        tryswap_journal::CACHE_CAPACITY / (1024 * 1024),
    ));
    Ok(table)
}

/// What the soak counted.
#[derive(Default)]
struct Counts {
    reloads_ok: AtomicU64,
    reloads_refused: AtomicU64,
    kills: AtomicU64,
    config_reloads: AtomicU64,
    config_refused: AtomicU64,
    reads: AtomicU64,
    compactions: AtomicU64,
    errors: AtomicU64,
}

fn config_with_env(state: &std::path::Path, names: &[String], version: u64) -> String {
    let text = setup::config_toml(state, names);
    // Every slot gets `SOAK = "<version>"`: a config reload relaunches all of them.
    text.replace(
        "\nstart_timeout",
        &format!("\nenv = {{ SOAK = \"{version}\" }}\nstart_timeout"),
    )
}

async fn active_pid(socket: &std::path::Path, slot: &str) -> Option<u32> {
    let (status, body) = request(socket, "GET", &format!("/v1/slots/{slot}"), None)
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["active"]["pid"].as_u64().map(|p| p as u32)
}

/// What the soak's workers share.
struct World {
    bins: Bins,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
    names: Vec<String>,
    daemon_pid: u32,
    /// The config file's version (`SOAK` in every slot's env).
    version: AtomicU64,
    counts: Counts,
    ops: AtomicU64,
    /// Whether 2 % of the operations are `POST /v1/journal/compact`.
    compact: bool,
}

/// One random operation of a worker.
async fn operate(rng: &mut SplitMix64, world: &World) {
    let World {
        bins,
        dir,
        socket,
        names,
        daemon_pid,
        version,
        counts,
        ..
    } = world;
    let (dir, socket, daemon_pid) = (dir.as_path(), socket.as_path(), *daemon_pid);
    let slot = &names[rng.below(names.len() as u64) as usize];
    match rng.below(100) {
        0..=39 => {
            let n = rng.next_u64() % 1_000_000;
            let config = setup::fixture_config(dir, &format!("{slot}-soak{n}"));
            let body = json!({"artifact": bins.fixture, "config_file": config});
            match request(
                socket,
                "POST",
                &format!("/v1/slots/{slot}/reloads"),
                Some(body),
            )
            .await
            {
                Ok((200, _)) => counts.reloads_ok.fetch_add(1, Ordering::Relaxed),
                Ok((409 | 422, _)) => counts.reloads_refused.fetch_add(1, Ordering::Relaxed),
                _ => counts.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        40..=54 => {
            if let Some(pid) = active_pid(socket, slot).await {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    counts.kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        55..=64 => {
            let v = version.fetch_add(1, Ordering::SeqCst) + 1;
            let state = dir.join("state");
            let written =
                std::fs::write(dir.join("tryswap.toml"), config_with_env(&state, names, v));
            if written.is_err() {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if v % 2 == 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(daemon_pid as i32),
                    nix::sys::signal::Signal::SIGHUP,
                );
                counts.config_reloads.fetch_add(1, Ordering::Relaxed);
            } else {
                match request(socket, "POST", "/v1/config/reload", Some(json!({}))).await {
                    Ok((200, _)) => counts.config_reloads.fetch_add(1, Ordering::Relaxed),
                    Ok((409 | 422, _)) => counts.config_refused.fetch_add(1, Ordering::Relaxed),
                    _ => counts.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        65..=66 if world.compact => {
            match request(socket, "POST", "/v1/journal/compact", Some(json!({}))).await {
                Ok((200, _)) => counts.compactions.fetch_add(1, Ordering::Relaxed),
                _ => counts.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        _ => {
            let path = match rng.below(3) {
                0 => "/v1/slots".to_owned(),
                1 => "/metrics".to_owned(),
                _ => format!("/v1/slots/{slot}/history"),
            };
            match request(socket, "GET", &path, None).await {
                Ok((200, _)) => counts.reads.fetch_add(1, Ordering::Relaxed),
                _ => counts.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// 6b: the soak. `slots` slots, `workers` workers, at most `max_ops` operations and
/// `duration` of operations (2 % of them journal compactions if `compact`); then up to
/// 60 s for every slot to settle.
pub async fn daemon_soak(
    bins: &Bins,
    slots: usize,
    workers: usize,
    duration: Duration,
    max_ops: u64,
    seed: u64,
    compact: bool,
) -> Result<Vec<Table>, String> {
    let temp = TempState::new().map_err(|e| format!("temp dir: {e}"))?;
    let dir = temp.join("soak");
    let names: Vec<String> = (0..slots).map(|i| format!("s{i:02}")).collect();
    let daemon = Daemon::start(bins, &dir, &names).await?;
    let socket = dir.join("state").join("tryswap.sock");
    std::fs::write(
        dir.join("tryswap.toml"),
        config_with_env(&dir.join("state"), &names, 0),
    )
    .map_err(|e| e.to_string())?;
    let daemon_pid = daemon.pid().ok_or("the daemon has no pid")?;
    for name in &names {
        let config = setup::fixture_config(&dir, &format!("{name}-first"));
        let body = json!({"artifact": bins.fixture, "config_file": config});
        let (status, text) = request(
            &socket,
            "POST",
            &format!("/v1/slots/{name}/reloads"),
            Some(body),
        )
        .await?;
        if status != 200 {
            daemon.stop().await;
            return Err(format!("first activation of {name}: {status} {text}"));
        }
    }

    let deadline = Instant::now() + duration;
    let world = Arc::new(World {
        bins: bins.clone(),
        dir: dir.clone(),
        socket: socket.clone(),
        names,
        daemon_pid,
        version: AtomicU64::new(0),
        counts: Counts::default(),
        ops: AtomicU64::new(0),
        compact,
    });
    let mut tasks = Vec::new();
    for w in 0..workers {
        let world = Arc::clone(&world);
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(seed.wrapping_add(w as u64));
            while Instant::now() < deadline && world.ops.fetch_add(1, Ordering::Relaxed) < max_ops {
                operate(&mut rng, &world).await;
            }
        }));
    }
    let names = &world.names;
    let counts = &world.counts;
    let ops = &world.ops;

    // Every second: the daemon answers, at most two plugins per slot (old + candidate)
    // run, and the daemon's RSS, threads and fds.
    let mut series: Vec<(f64, u64, u64, u64, u64)> = Vec::new();
    let mut violations: Vec<String> = Vec::new();
    let started = Instant::now();
    let pid_text = daemon_pid.to_string();
    while Instant::now() < deadline + Duration::from_secs(1)
        && !tasks.iter().all(tokio::task::JoinHandle::is_finished)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss, threads, fds) = sample(&pid_text);
        let seq = last_seq(&socket).await;
        series.push((started.elapsed().as_secs_f64(), seq, rss, threads, fds));
        match request(&socket, "GET", "/healthz", None).await {
            Ok((200, _)) => {}
            other => violations.push(format!(
                "{:.0} s: /healthz answered {other:?}",
                started.elapsed().as_secs_f64()
            )),
        }
        let plugins = temp
            .processes()
            .into_iter()
            .filter(|&p| p != daemon_pid)
            .count();
        if plugins > 2 * names.len() {
            violations.push(format!(
                "{:.0} s: {plugins} plugin processes for {} slots",
                started.elapsed().as_secs_f64(),
                names.len()
            ));
        }
    }
    for task in tasks {
        let _ = task.await;
    }

    // Settle: every slot has exactly one live plugin, nothing in flight, journal verifies.
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    let mut settled = false;
    while Instant::now() < settle_deadline {
        let mut all = true;
        for name in names.iter() {
            let ok = match request(&socket, "GET", &format!("/v1/slots/{name}"), None).await {
                Ok((200, body)) => serde_json::from_str::<Value>(&body)
                    .is_ok_and(|v| v["active"]["alive"] == true && v["in_flight"].is_null()),
                _ => false,
            };
            all &= ok;
        }
        let plugins = temp
            .processes()
            .into_iter()
            .filter(|&p| p != daemon_pid)
            .count();
        if all && plugins == names.len() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !settled {
        violations.push("the slots did not settle to one live plugin each within 60 s".into());
    }
    let verify = request(&socket, "GET", "/v1/journal/verify", None).await;
    let verified = verify
        .as_ref()
        .ok()
        .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
        .is_some_and(|v| v["problems"].as_array().is_none_or(Vec::is_empty));
    if !verified {
        violations.push(format!("journal verify: {verify:?}"));
    }
    daemon.stop().await;

    let c = counts;
    let mut summary = Table::new("6b. Soak of `tryswap serve`", &["what", "value"]);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
    for (what, value) in [
        ("slots / workers", format!("{} / {workers}", names.len())),
        (
            "operations (bounded by time and count)",
            format!(
                "{} in {:.0} s (limits {max_ops}, {:.0} s); seed {seed}",
                ops.load(Ordering::Relaxed).min(max_ops),
                started.elapsed().as_secs_f64(),
                duration.as_secs_f64()
            ),
        ),
        (
            "reloads active / refused (409, 422)",
            format!("{} / {}", load(&c.reloads_ok), load(&c.reloads_refused)),
        ),
        ("kill -9 of active plugins", load(&c.kills)),
        (
            "config reloads (half SIGHUP) / refused",
            format!("{} / {}", load(&c.config_reloads), load(&c.config_refused)),
        ),
        ("reads (slots, metrics, history)", load(&c.reads)),
        ("journal compactions", load(&c.compactions)),
        ("transport errors", load(&c.errors)),
        ("invariant violations", violations.len().to_string()),
    ] {
        summary.row([what.to_owned(), value]);
    }
    for v in violations.iter().take(5) {
        summary.note(format!("violation: {v}"));
    }
    let mut memory = Table::new(
        "6b. Daemon memory during the soak",
        &["time", "journal records", "RSS", "threads", "fds"],
    );
    let picks = [
        0,
        series.len() / 4,
        series.len() / 2,
        3 * series.len() / 4,
        series.len().saturating_sub(1),
    ];
    let mut last = None;
    for &i in &picks {
        if last == Some(i) {
            continue;
        }
        last = Some(i);
        if let Some((t, seq, rss, threads, fds)) = series.get(i) {
            memory.row([
                format!("{t:.0} s"),
                seq.to_string(),
                mib(*rss),
                threads.to_string(),
                fds.to_string(),
            ]);
        }
    }
    if let (Some(mid), Some(end)) = (series.get(series.len() / 2), series.last()) {
        let records = end.1.saturating_sub(mid.1).max(1);
        memory.note(format!(
            "Second half of the soak: {:+.1} MiB RSS over {} records ({:.2} KiB per record).",
            (end.2 as f64 - mid.2 as f64) / 1024.0,
            records,
            (end.2 as f64 - mid.2 as f64) / records as f64
        ));
    }
    // The flatness check: RSS at the first sample past 1,000 and past 10,000 records.
    let at = |records: u64| series.iter().find(|s| s.1 >= records);
    if let (Some(early), Some(late)) = (at(1_000), at(10_000)) {
        memory.note(format!(
            "RSS at {} records: {}; at {} records: {} ({:+.2} KiB per record in between).",
            early.1,
            mib(early.2),
            late.1,
            mib(late.2),
            (late.2 as f64 - early.2 as f64) / late.1.saturating_sub(early.1).max(1) as f64
        ));
    }
    Ok(vec![summary, memory])
}
