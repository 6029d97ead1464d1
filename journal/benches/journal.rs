//! Performance sanity for the journal (`cargo bench -p tryswap-journal`; plain `main`, no
//! harness): execute latency without a flush, durable flushes and time per reload, and
//! open time of a journal with many events compared with a full scan of them.
//!
//! `TRYSWAP_BENCH_EVENTS` sets the history size (default 100000).

use std::time::{Duration, Instant};

use chrono::Utc;
use tryswap_fsm::{
    ArtifactRef, Command, Generation, Mode, ProcessIdentity, ReloadId, Sha256, SlotName,
};
use tryswap_journal::Journal;

fn artifact(n: u64) -> ArtifactRef {
    ArtifactRef {
        sha256: Sha256([n as u8; 32]),
        config_sha256: None,
    }
}

fn activate(journal: &Journal, slot: &SlotName, n: u64) {
    let id = ReloadId::from_u128(u128::from(n) + 1);
    let now = Utc::now();
    for command in [
        Command::Stage {
            reload: id,
            slot: slot.clone(),
            mode: Mode::Activate,
            artifact: artifact(n),
        },
        Command::RecordLaunch {
            reload: id,
            process: None,
            log_path: None,
        },
        Command::RecordHandshake {
            reload: id,
            endpoint: None,
        },
        Command::RecordProbe { reload: id },
        Command::Commit { reload: id },
    ] {
        journal.execute(&command, now).expect("bench command");
    }
}

fn relaunch(slot: &SlotName, generation: Generation, pid: u32) -> Command {
    Command::Relaunch {
        slot: slot.clone(),
        generation,
        process: Some(ProcessIdentity {
            pid,
            start_time: u64::from(pid),
            boot_id: "bench".into(),
        }),
        log_path: None,
        endpoint: None,
    }
}

fn per_op(total: Duration, n: u64) -> String {
    format!("{:.1} µs", total.as_secs_f64() * 1e6 / n as f64)
}

fn main() {
    let events: u64 = std::env::var("TRYSWAP_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let slot = SlotName::new("bench").expect("slot name");
    {
        let journal = Journal::open(dir.path()).expect("open");

        // Durable flushes and time per successful reload.
        let reloads = 50;
        let started = Instant::now();
        for n in 0..reloads {
            activate(&journal, &slot, n);
        }
        let elapsed = started.elapsed();
        println!(
            "activate (5 events): {} per reload, {} durable flushes per reload",
            per_op(elapsed, reloads),
            journal.flush_count() as f64 / reloads as f64
        );

        // Execute latency without a flush.
        let generation = Generation(reloads);
        let n = 10_000u32;
        let started = Instant::now();
        for pid in 0..n {
            journal
                .execute(&relaunch(&slot, generation, pid), Utc::now())
                .expect("relaunch");
        }
        println!(
            "execute without flush: {}",
            per_op(started.elapsed(), u64::from(n))
        );

        // Grow the history in batches.
        let batch: Vec<Command> = (0..100)
            .map(|pid| relaunch(&slot, generation, pid))
            .collect();
        let started = Instant::now();
        while journal.last_seq() < events {
            journal.execute_all(&batch, Utc::now()).expect("batch");
        }
        println!(
            "appended up to {} events in {:.2} s",
            journal.last_seq(),
            started.elapsed().as_secs_f64()
        );
    }

    let started = Instant::now();
    let journal = Journal::open(dir.path()).expect("reopen");
    let open_time = started.elapsed();
    let started = Instant::now();
    let scanned = journal.events(0).filter(|r| r.is_ok()).count();
    let scan_time = started.elapsed();
    println!(
        "open with {} events: {:.2} ms (a full scan of {scanned} records takes {:.2} ms)",
        journal.last_seq(),
        open_time.as_secs_f64() * 1e3,
        scan_time.as_secs_f64() * 1e3
    );
    let started = Instant::now();
    let report = journal.verify().expect("verify");
    println!(
        "verify of {} events: {:.2} s, ok = {}",
        report.events_checked,
        started.elapsed().as_secs_f64(),
        report.is_ok()
    );
}
