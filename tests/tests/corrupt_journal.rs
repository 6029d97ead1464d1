//! A damaged journal: truncated or flipped bytes in sled's files, a damaged witness, a lost
//! tail. Every command that opens the journal refuses with exit 4 and a message that points
//! to `tryswap journal verify` / `export`; nothing panics; no plugin is started; and
//! tryswap never rewrites the damaged files (sled repairs its log in place while opening, so
//! tryswap keeps a copy from before the open: see
//! `the_files_as_they_were_before_a_refused_open_are_kept`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tryswap_tests::crash::{reload_args, tryswap_env, Exit};
use tryswap_tests::harness::{copy_dir, Harness};
use tryswap_tests::FixtureConfig;

/// A state dir with two reloads in its journal and no plugin running, plus a pristine copy
/// of the journal after the first reload (`older`) and after both (`pristine`).
struct Fixture {
    h: Harness,
    journal: PathBuf,
    pristine: PathBuf,
    older: PathBuf,
}

fn restore(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    copy_dir(from, to);
}

/// Every file under `dir` (but the lock file, which each open rewrites with its pid).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                // tryswap's own copy of sled's files from before a refused open.
                if entry.file_name() != "sled.preopen" {
                    walk(&path, root, out);
                }
            } else if entry.file_name() != "journal.lock" {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn changed(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<PathBuf> {
    let mut names: Vec<&PathBuf> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .cloned()
        .collect()
}

fn fixture() -> Fixture {
    let h = Harness::demo();
    let journal = h.state_dir.join("journal");
    let v1 = h.fixture_config("v1", &FixtureConfig::with_message("v1"));
    let v2 = h.fixture_config("v2", &FixtureConfig::with_message("v2"));
    assert_eq!(h.activate("demo", &v1).code, 0);
    let stop = h.tryswap(&["stop", "demo"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let older = h.state.join("journal-older");
    copy_dir(&journal, &older);
    assert_eq!(h.activate("demo", &v2).code, 0);
    let stop = h.tryswap(&["stop", "demo"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(h.state.processes().is_empty(), "a plugin still runs");
    let pristine = h.state.join("journal-pristine");
    copy_dir(&journal, &pristine);
    Fixture {
        h,
        journal,
        pristine,
        older,
    }
}

fn assert_no_panic(what: &str, run: &Exit) {
    for needle in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !run.stderr.contains(needle) && !run.stdout.contains(needle),
            "{what}: {needle:?} in the output: {run:?}"
        );
    }
}

/// What one refused command printed and which files changed while it ran.
struct Refusal {
    run: Exit,
    changed: Vec<PathBuf>,
}

/// Runs every command that opens the journal for writing, then `journal verify`, and checks
/// each refuses with exit 4 and a pointer to `journal verify`.
fn assert_refused(f: &Fixture, what: &str) -> Vec<Refusal> {
    let v3 = f.h.fixture_config("v3", &FixtureConfig::with_message("v3"));
    let activate = reload_args("activate", "demo", &v3);
    let commands: Vec<Vec<String>> = vec![
        vec!["status".into()],
        activate,
        vec!["recover".into()],
        vec!["start".into(), "demo".into()],
        vec!["journal".into(), "verify".into()],
    ];
    let mut outputs = Vec::new();
    for args in commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = format!("{what}: tryswap {}", args.join(" "));
        let before = files(&f.journal);
        let run = tryswap_env(&f.h, &args, &[]);
        let changed = changed(&before, &files(&f.journal));
        assert_no_panic(&name, &run);
        assert_eq!(
            run.code(),
            Some(4),
            "{name}: expected exit 4 (corrupt): {run:?}"
        );
        let text = format!("{}{}", run.stdout, run.stderr);
        // `journal verify` itself lists the problems; the others point to it.
        let pointer = args[0] == "journal" || text.contains("tryswap journal verify");
        assert!(
            text.contains("corrupt") && pointer,
            "{name}: the message does not say what to do: {run:?}"
        );
        outputs.push(Refusal { run, changed });
    }
    assert!(
        f.h.state.processes().is_empty(),
        "{what}: a plugin was started from a corrupt journal: {:?}",
        f.h.state.processes()
    );
    outputs
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn is_sled_snapshot(path: &Path) -> bool {
    path.parent() == Some(Path::new("sled"))
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("snap."))
}

/// sled's snapshot file (`snap.<lsn>`).
fn snapshot(journal: &Path) -> PathBuf {
    std::fs::read_dir(journal.join("sled"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap."))
        })
        .expect("sled writes a snapshot file")
}

/// Offset of the middle of sled's log in its data file (the log starts at 0; the rest of
/// the 512 KiB segment is zeros).
fn log_middle(journal: &Path) -> usize {
    let db = std::fs::read(journal.join("sled/db")).unwrap();
    let end = db.iter().rposition(|&b| b != 0).expect("a non-empty log");
    assert!(end > 1000, "sled's log is unexpectedly small ({end} bytes)");
    end / 2
}

#[test]
fn damaged_witness_snapshot_or_lost_tail_is_refused_and_nothing_is_rewritten() {
    let f = fixture();
    type Damage = Box<dyn Fn(&Fixture)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "both witness slots flipped",
            Box::new(|f: &Fixture| {
                flip(&f.journal.join("witness"), 12);
                flip(&f.journal.join("witness"), 44);
            }),
        ),
        (
            "witness truncated to 10 bytes",
            Box::new(|f: &Fixture| truncate(&f.journal.join("witness"), 10)),
        ),
        (
            "sled snapshot byte flipped",
            Box::new(|f: &Fixture| flip(&snapshot(&f.journal), 20)),
        ),
        (
            "sled snapshot truncated",
            Box::new(|f: &Fixture| truncate(&snapshot(&f.journal), 10)),
        ),
        (
            "lost tail (sled's files from before the last reload, witness from after)",
            Box::new(|f: &Fixture| {
                std::fs::remove_dir_all(f.journal.join("sled")).unwrap();
                copy_dir(&f.older.join("sled"), &f.journal.join("sled"));
            }),
        ),
    ];
    for (what, damage) in &cases {
        restore(&f.pristine, &f.journal);
        damage(&f);
        let before = files(&f.journal);
        let outputs = assert_refused(&f, what);
        // Neither tryswap nor sled rewrites the log, the witness or the config. Where the
        // damage is found only after sled opened (a lost tail; `journal verify` reading
        // what it can), sled may have written a fresh snapshot of its own index: derived
        // data, rebuilt from the log.
        let after = files(&f.journal);
        for path in changed(&before, &after) {
            assert!(
                is_sled_snapshot(&path),
                "{what}: {} was rewritten",
                path.display()
            );
        }
        if !what.starts_with("lost tail") {
            for refusal in &outputs[..outputs.len() - 1] {
                assert!(
                    refusal.changed.is_empty(),
                    "{what}: files were rewritten: {:?}",
                    refusal.changed
                );
            }
        }
        if what.starts_with("lost tail") {
            let status = &outputs[0].run;
            assert!(
                status.stderr.contains("missing") || status.stderr.contains("lost"),
                "{what}: the message does not name the lost tail: {status:?}"
            );
        }
        // The salvage path: export reads what it can, like verify.
        let export = tryswap_env(&f.h, &["journal", "export"], &[]);
        assert_no_panic(what, &export);
        for path in changed(&after, &files(&f.journal)) {
            assert!(
                is_sled_snapshot(&path),
                "{what}: journal export rewrote {}",
                path.display()
            );
        }
    }
}

#[test]
fn a_damaged_sled_log_is_refused_and_never_silently_accepted() {
    let f = fixture();
    let middle = log_middle(&f.journal);
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(String, Damage)> = vec![
        (
            format!("sled log byte {middle} flipped"),
            Box::new(move |j: &Path| flip(&j.join("sled/db"), middle)),
        ),
        (
            format!("sled log truncated to {middle} bytes"),
            Box::new(move |j: &Path| truncate(&j.join("sled/db"), middle as u64)),
        ),
    ];
    for (what, damage) in &cases {
        restore(&f.pristine, &f.journal);
        damage(&f.journal);
        let before = files(&f.journal);
        // Twice: whatever sled does to its log while opening, the damage is never accepted.
        assert_refused(&f, what);
        assert_refused(&f, what);
        let after = files(&f.journal);
        for path in changed(&before, &after) {
            // sled may zero its own log from the damaged message on (see the ignored test
            // below); tryswap's files and sled's snapshot and config stay as they were.
            assert_eq!(
                path,
                Path::new("sled/db"),
                "{what}: {} was rewritten",
                path.display()
            );
            let (old, new) = (&before[&path], &after[&path]);
            let rewritten = old
                .iter()
                .zip(new.iter())
                .filter(|(o, n)| o != n)
                .all(|(_, n)| *n == 0);
            assert!(
                rewritten,
                "{what}: sled/db bytes were replaced by something else than zeros"
            );
        }
    }
}

/// sled zeroes its log after a damaged message while opening, before tryswap can check
/// anything. tryswap therefore copies sled's files to `sled.preopen` before every open and
/// keeps the copy when the open is refused: the damaged bytes, and the records after the
/// damage, are never lost.
#[test]
fn the_files_as_they_were_before_a_refused_open_are_kept() {
    let f = fixture();
    restore(&f.pristine, &f.journal);
    let middle = log_middle(&f.journal);
    flip(&f.journal.join("sled/db"), middle);
    let damaged = std::fs::read(f.journal.join("sled/db")).unwrap();
    let refusals = assert_refused(&f, "sled log byte flipped");
    assert!(
        refusals.iter().all(|r| r.run.stderr.contains("sled.preopen")
            || r.run.stdout.contains("sled.preopen")),
        "the refusal does not point to the preserved copy"
    );
    // The first refused open made the copy; later ones kept it.
    let kept = std::fs::read(f.journal.join("sled.preopen/db")).unwrap();
    assert_eq!(
        kept, damaged,
        "the pre-open copy is not the damaged original"
    );
}

#[test]
fn a_damaged_sled_config_file_is_refused_without_a_panic() {
    let f = fixture();
    restore(&f.pristine, &f.journal);
    flip(&f.journal.join("sled/conf"), 5);
    let before = files(&f.journal);
    for args in [&["status"][..], &["recover"], &["journal", "verify"]] {
        let run = tryswap_env(&f.h, args, &[]);
        assert_no_panic("sled/conf flipped", &run);
        assert_ne!(
            run.code(),
            Some(0),
            "sled/conf flipped: {args:?} succeeded: {run:?}"
        );
        assert!(
            run.stderr.contains("journal"),
            "sled/conf flipped: the error does not name the journal: {run:?}"
        );
    }
    assert!(changed(&before, &files(&f.journal)).is_empty());
    assert!(f.h.state.processes().is_empty());
}

/// sled writes a snapshot as `snap.<lsn>.generating` and renames it when complete, but reads
/// `.generating` files as snapshots when it opens. A snapshot write cut short — tryswap
/// killed while sled opens or closes, or a full disk (tests/tests/full_disk.rs) — must not
/// make the journal unopenable: the unfinished file is removed, nothing else changes.
#[test]
fn an_unfinished_sled_snapshot_does_not_make_the_journal_unopenable() {
    let f = fixture();
    restore(&f.pristine, &f.journal);
    let unfinished = f.journal.join("sled/snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&unfinished, b"").unwrap();
    let before = files(&f.journal);
    let verify = tryswap_env(&f.h, &["journal", "verify"], &[]);
    assert_eq!(verify.code(), Some(0), "{verify:?}");
    assert!(
        !unfinished.exists(),
        "the unfinished snapshot is still there"
    );
    let mut expected = before.clone();
    expected.remove(Path::new("sled/snap.FFFFFFFFFFFFFFFF.generating"));
    let after = files(&f.journal);
    for path in changed(&expected, &after) {
        assert!(is_sled_snapshot(&path), "{} was rewritten", path.display());
    }
    let history = tryswap_env(&f.h, &["--json", "history", "demo"], &[]);
    assert_eq!(history.code(), Some(0), "{history:?}");
    assert_eq!(
        history.json()["reloads"].as_array().map(Vec::len),
        Some(2),
        "the history lost reloads: {history:?}"
    );
}
