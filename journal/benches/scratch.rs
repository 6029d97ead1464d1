use std::os::unix::fs::FileExt;
use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("sled")).unwrap();
    let t = db.open_tree("x").unwrap();
    let f = std::fs::File::open(dir.path().join("sled/db")).unwrap();
    let w = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .open(dir.path().join("w"))
        .unwrap();
    w.write_all_at(&[0u8; 64], 0).unwrap();
    w.sync_all().unwrap();
    let (mut a, mut b, mut c) = (0f64, 0f64, 0f64);
    let n = 50;
    for i in 0..n {
        t.insert(format!("k{i}"), vec![1u8; 200]).unwrap();
        let s = Instant::now();
        db.flush().unwrap();
        a += s.elapsed().as_secs_f64();
        let s = Instant::now();
        f.sync_data().unwrap();
        b += s.elapsed().as_secs_f64();
        let s = Instant::now();
        w.write_all_at(&[i as u8; 32], 0).unwrap();
        w.sync_data().unwrap();
        c += s.elapsed().as_secs_f64();
    }
    println!(
        "flush {:.2} ms, sync_data {:.2} ms, witness {:.2} ms",
        a * 1e3 / n as f64,
        b * 1e3 / n as f64,
        c * 1e3 / n as f64
    );
}
