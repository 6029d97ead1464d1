//! A slot's history is one key per generation (DESIGN.md "Journal, second form"): the bytes
//! a reload writes do not grow with the number of reloads before it. Alone in its test
//! binary, because it counts every byte this process writes (`wchar` of `/proc/self/io`:
//! sled's pages, the log, the witness and the projection snapshot at each flush).

use std::path::PathBuf;

use chrono::{DateTime, Duration, TimeZone, Utc};
use tryswap_fsm::{
    ArtifactRef, Command, Endpoint, Generation, Mode, Network, ProcessIdentity, Protocol, ReloadId,
    Sha256, SlotName,
};
use tryswap_journal::Journal;

/// Reloads before the first measured window. Until then sled's trees are still growing
/// their index levels, which adds bytes per flushed page: 7.2 KB per reload at reloads
/// 301–600, 8.4 KB at 1,801–2,100, 8.6 KB at 7,801–8,100 (stop 14, /dev/shm; flat once the
/// trees settle, and what a re-encoded history would add grows without end). Also:
/// generation numbers below 251 are one byte shorter (varints).
const WARM_UP: u64 = 2_000;
/// Reloads per measured window.
const WINDOW: u64 = 100;
/// Reloads in all (at least 2,000 after the warm-up).
const RELOADS: u64 = 4_100;
/// Reloads per journal write (`execute_all`), as a daemon's config reload batches commands:
/// it keeps the test fast (one durable point per write) without hiding a
/// growth, since a write that touches the slot would write whatever the slot holds.
const PER_WRITE: u64 = 4;

fn written_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("wchar:"))
        .and_then(|n| n.trim().parse().ok())
}

/// A directory in memory (`/dev/shm`) when there is one, so the test measures bytes, not a
/// disk.
fn scratch() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(&shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn at(step: u64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::milliseconds(step as i64)
}

/// The commands of one activation of `slot` with a new artifact (generation `n`), then the
/// retirement of the generation before: what every reload writes.
fn reload(slot: &SlotName, n: u64) -> Vec<Command> {
    let id = ReloadId::from_u128(u128::from(n) << 64 | 0x7000);
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&n.to_be_bytes());
    let mut commands = vec![
        Command::Stage {
            reload: id,
            slot: slot.clone(),
            mode: Mode::Activate,
            artifact: ArtifactRef {
                sha256: Sha256(digest),
                config_sha256: Some(Sha256([7; 32])),
            },
        },
        Command::RecordLaunch {
            reload: id,
            process: Some(ProcessIdentity {
                pid: 4000 + (n % 1000) as u32,
                start_time: n,
                boot_id: "3f1c0d4e-boot".into(),
            }),
            log_path: Some(format!("logs/demo/{n:06}.log")),
        },
        Command::RecordHandshake {
            reload: id,
            endpoint: Some(Endpoint {
                core_version: 1,
                app_version: 1,
                network: Network::Unix,
                address: format!("/tmp/plugin-{n:06}.sock"),
                protocol: Protocol::Grpc,
                server_cert: None,
            }),
        },
        Command::RecordProbe { reload: id },
        Command::Commit { reload: id },
    ];
    if n > 1 {
        commands.push(Command::Retire {
            slot: slot.clone(),
            generation: Generation(n - 1),
        });
    }
    commands
}

/// Reloads `from..=to` of `slot`, [`PER_WRITE`] to a write.
fn reloads(journal: &Journal, slot: &SlotName, from: u64, to: u64) {
    let mut n = from;
    while n <= to {
        let last = (n + PER_WRITE - 1).min(to);
        let commands: Vec<Command> = (n..=last).flat_map(|k| reload(slot, k)).collect();
        journal.execute_all(&commands, at(n)).unwrap();
        n = last + 1;
    }
}

#[test]
fn bytes_written_per_reload_stay_flat_over_two_thousand_reloads_of_one_slot() {
    let Some(_) = written_bytes() else {
        let why = "/proc/self/io is not readable: cannot count the bytes written";
        assert!(std::env::var_os("TRYSWAP_REQUIRE_ALL").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    };
    let tmp = scratch();
    let journal = Journal::open(&tmp.path().join("journal")).unwrap();
    let slot = SlotName::new("demo").unwrap();
    // Three windows at each end; each end counts its smallest window. sled's background
    // flusher writes whatever pages are dirty when its timer fires, so a window that a
    // loaded machine stretches holds an extra flush or two: noise that only ever adds
    // bytes. A growth with the history is in every window, the smallest included.
    let starts = [WARM_UP, WARM_UP + WINDOW, WARM_UP + 2 * WINDOW];
    let ends = [RELOADS - 3 * WINDOW, RELOADS - 2 * WINDOW, RELOADS - WINDOW];
    let mut windows = Vec::new();
    let mut done = 0;
    for start in starts.into_iter().chain(ends) {
        reloads(&journal, &slot, done + 1, start);
        journal.flush().unwrap();
        let before = written_bytes().unwrap();
        reloads(&journal, &slot, start + 1, start + WINDOW);
        journal.flush().unwrap();
        windows.push((written_bytes().unwrap() - before) as f64 / WINDOW as f64);
        done = start + WINDOW;
    }
    assert_eq!(journal.history(&slot).unwrap().len() as u64, RELOADS);
    let smallest = |w: &[f64]| w.iter().copied().fold(f64::INFINITY, f64::min);
    let (first, last) = (smallest(&windows[..3]), smallest(&windows[3..]));
    let ratio = last / first;
    eprintln!(
        "bytes written per reload: {first:.0} (smallest of reloads {}..={} in windows of \
         {WINDOW}), {last:.0} (smallest of reloads {}..={}): {ratio:.3}x; windows {windows:.0?}",
        WARM_UP + 1,
        WARM_UP + 3 * WINDOW,
        RELOADS - 3 * WINDOW + 1,
        RELOADS
    );
    // Growth is what the test is for; fewer bytes later is sled settling (its pages and
    // segments, no longer masked by a projection snapshot at every durable point). The
    // lower bound only catches a measurement that lost its writes.
    assert!(
        (0.5..=1.1).contains(&ratio),
        "bytes written per reload grew with the history: {first:.0} → {last:.0} ({ratio:.3}x)"
    );
    assert!(journal.verify().unwrap().is_ok());
}
