//! Section 8: staging a large executable, against one read + SHA-256 + write pass over it.
//!
//! A reload of a new executable stages it (copy into the store, hashed on the way) and
//! then verifies the stored copy before launching it. The floor is the least any safe
//! store can do: read the file once, hash it, write the copy and fsync it. A one-shot
//! command that stages an unchanged executable should read nothing at all.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::report::{ms, ratio, verdict, Samples, Table};

/// Size of the executable staged: a typical Go plugin.
const SIZE: usize = 12 * 1024 * 1024;
/// Goal: staging a new executable (and verifying the copy) ≤ this × the floor.
const GOAL_NEW: f64 = 1.3;
/// Goal: staging an unchanged executable in a new process ≤ this × one hash of it.
const GOAL_UNCHANGED: f64 = 0.1;

fn write_executable(path: &Path, seed: u64) -> std::io::Result<()> {
    let mut bytes = vec![0u8; SIZE];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    std::fs::write(path, &bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// The floor: one pass reading `src`, hashing it and writing `dst`, then fsync and rename.
fn floor_pass(src: &Path, dir: &Path) -> std::io::Result<()> {
    let mut input = std::fs::File::open(src)?;
    let tmp = dir.join("floor.tmp");
    let mut out = std::fs::File::create(&tmp)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    let digest = hasher.finalize();
    std::fs::rename(&tmp, dir.join(format!("{digest:x}")))
}

fn hash_pass(src: &Path) -> std::io::Result<()> {
    let mut input = std::fs::File::open(src)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut input, &mut hasher)?;
    hasher.finalize();
    Ok(())
}

/// Runs section 7 with `rounds` new executables.
pub fn run(rounds: usize) -> Result<Vec<Table>, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("staging: {what}: {e}");
    let temp = tempfile::tempdir().map_err(|e| err("temp dir", &e))?;
    let floor_dir = temp.path().join("floor");
    std::fs::create_dir(&floor_dir).map_err(|e| err("floor dir", &e))?;
    let src = temp.path().join("plugin");
    let state = temp.path().join("state");
    let (mut floor, mut staged, mut hashed, mut unchanged) = (
        Samples::new(),
        Samples::new(),
        Samples::new(),
        Samples::new(),
    );
    for round in 0..rounds {
        // Interleaved: floor and store see the same page cache and disk state.
        write_executable(&src, round as u64 * 2 + 1).map_err(|e| err("write", &e))?;
        let t = Instant::now();
        floor_pass(&src, &floor_dir).map_err(|e| err("floor", &e))?;
        floor.push(t.elapsed());
        write_executable(&src, round as u64 * 2 + 2).map_err(|e| err("write", &e))?;
        let store = tryswap::Store::open(&state).map_err(|e| err("open store", &e))?;
        let t = Instant::now();
        let digest = store.stage_executable(&src).map_err(|e| err("stage", &e))?;
        store.verify(&digest).map_err(|e| err("verify", &e))?;
        staged.push(t.elapsed());
    }
    // An unchanged executable, staged by one command after another: its stamp must have
    // settled (two seconds) before it can be trusted.
    write_executable(&src, 0).map_err(|e| err("write", &e))?;
    std::thread::sleep(Duration::from_millis(2100));
    tryswap::Store::open(&state)
        .and_then(|s| s.stage_executable(&src))
        .map_err(|e| err("first staging", &e))?;
    for _ in 0..rounds {
        let t = Instant::now();
        hash_pass(&src).map_err(|e| err("hash", &e))?;
        hashed.push(t.elapsed());
        let t = Instant::now();
        let store = tryswap::Store::open(&state).map_err(|e| err("open store", &e))?;
        let digest = store.stage_executable(&src).map_err(|e| err("stage", &e))?;
        store.verify(&digest).map_err(|e| err("verify", &e))?;
        unchanged.push(t.elapsed());
    }

    let mut t = Table::new(
        "8. Staging a 12 MiB executable",
        &["what", "p50", "ratio", "goal", "verdict"],
    );
    t.row([
        "floor: one read + SHA-256 + write + fsync pass".to_owned(),
        ms(floor.p50()),
        "1.00×".to_owned(),
        String::new(),
        String::new(),
    ]);
    let new_ratio = staged.p50() / floor.p50();
    t.row([
        "new executable: stage + verify the stored copy".to_owned(),
        ms(staged.p50()),
        ratio(new_ratio),
        format!("≤ {GOAL_NEW}× floor"),
        verdict(new_ratio <= GOAL_NEW).to_owned(),
    ]);
    t.row([
        "one SHA-256 pass over the file".to_owned(),
        ms(hashed.p50()),
        "1.00×".to_owned(),
        String::new(),
        String::new(),
    ]);
    let unchanged_ratio = unchanged.p50() / hashed.p50();
    t.row([
        "unchanged executable, next command: open store + stage + verify".to_owned(),
        ms(unchanged.p50()),
        ratio(unchanged_ratio),
        format!("≤ {GOAL_UNCHANGED}× one hash (no re-hash)"),
        verdict(unchanged_ratio <= GOAL_UNCHANGED).to_owned(),
    ]);
    t.note(format!(
        "{rounds} rounds, interleaved. The store hashes a new executable while copying it \
         and remembers the stat of the source and of the copy (`store/known.json`), so \
         verifying the copy before launch and staging an unchanged executable in a later \
         command read nothing."
    ));
    Ok(vec![t])
}
