//! A damaged journal. sled's files are derived from the segment log: whatever happens to
//! them (flipped or truncated bytes, a lost tail, a damaged config or snapshot), the next
//! command heals them from the log with a loud warning and no durable record is lost. A
//! damaged witness, or a log damaged before its last durable point, is refused by every
//! command that opens the journal with exit 4 and a message naming what and where; nothing
//! panics; no plugin is started; `journal export --salvage` prints every record before the
//! damage.

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
                walk(&path, root, out);
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
    // One-shot commands leave sled closed (they write the log alone): `recover` opens
    // sled, which catches up with the log, so sled's files hold each step's records.
    let step = |config: &Path| {
        assert_eq!(h.activate("demo", config).code, 0);
        for args in [&["stop", "demo"][..], &["recover"]] {
            let run = h.tryswap(args);
            assert_eq!(run.code, 0, "{run:?}");
        }
    };
    step(&v1);
    let older = h.state.join("journal-older");
    copy_dir(&journal, &older);
    step(&v2);
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

/// Runs `status`, every command that opens the journal for writing, `journal verify` and
/// the reads of the log, and checks each refuses with exit 4 and a pointer to `journal
/// verify`.
fn assert_refused(f: &Fixture, what: &str) -> Vec<Refusal> {
    let v3 = f.h.fixture_config("v3", &FixtureConfig::with_message("v3"));
    let activate = reload_args("activate", "demo", &v3);
    let commands: Vec<Vec<String>> = vec![
        vec!["status".into()],
        activate,
        vec!["recover".into()],
        vec!["start".into(), "demo".into()],
        vec!["journal".into(), "verify".into()],
        // The lock-free reads of the log are as strict as an open.
        vec!["events".into()],
        vec!["journal".into(), "show".into()],
        vec![
            "journal".into(),
            "replay".into(),
            "--until".into(),
            "1".into(),
        ],
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

/// Offset of the middle of sled's own log in its data file (the log starts at 0; the rest
/// of the 512 KiB segment is zeros).
fn log_middle(journal: &Path) -> usize {
    let db = std::fs::read(journal.join("sled/db")).unwrap();
    let end = db.iter().rposition(|&b| b != 0).expect("a non-empty log");
    assert!(end > 1000, "sled's log is unexpectedly small ({end} bytes)");
    end / 2
}

/// The segment log's only segment.
fn segment(journal: &Path) -> PathBuf {
    journal.join("log").join(format!("{:020}.seg", 1))
}

/// Whether `path` (relative to the journal) is one of sled's files (derived data).
fn is_sled(path: &Path) -> bool {
    path.starts_with("sled")
}

#[test]
fn damage_to_sleds_files_is_healed_from_the_log_with_every_record() {
    let f = fixture();
    let middle = log_middle(&f.pristine);
    type Damage = Box<dyn Fn(&Fixture)>;
    let cases: Vec<(String, Damage)> = vec![
        (
            "sled snapshot byte flipped".into(),
            Box::new(|f: &Fixture| flip(&snapshot(&f.journal), 20)),
        ),
        (
            "sled snapshot truncated".into(),
            Box::new(|f: &Fixture| truncate(&snapshot(&f.journal), 10)),
        ),
        (
            format!("sled log byte {middle} flipped"),
            Box::new(move |f: &Fixture| flip(&f.journal.join("sled/db"), middle)),
        ),
        (
            format!("sled log truncated to {middle} bytes"),
            Box::new(move |f: &Fixture| truncate(&f.journal.join("sled/db"), middle as u64)),
        ),
        (
            "sled config byte flipped".into(),
            Box::new(|f: &Fixture| flip(&f.journal.join("sled/conf"), 5)),
        ),
        (
            "sled's files from before the last reload".into(),
            Box::new(|f: &Fixture| {
                std::fs::remove_dir_all(f.journal.join("sled")).unwrap();
                copy_dir(&f.older.join("sled"), &f.journal.join("sled"));
            }),
        ),
        (
            "sled's files deleted".into(),
            Box::new(|f: &Fixture| std::fs::remove_dir_all(f.journal.join("sled")).unwrap()),
        ),
    ];
    let log = std::fs::read(segment(&f.pristine)).unwrap();
    for (what, damage) in &cases {
        restore(&f.pristine, &f.journal);
        damage(&f);
        let recover = tryswap_env(&f.h, &["recover"], &[]);
        assert_no_panic(what, &recover);
        assert_eq!(recover.code(), Some(0), "{what}: {recover:?}");
        let verify = tryswap_env(&f.h, &["journal", "verify"], &[]);
        assert_eq!(verify.code(), Some(0), "{what}: {verify:?}");
        let history = tryswap_env(&f.h, &["--json", "history", "demo"], &[]);
        assert_eq!(
            history.json()["reloads"].as_array().map(Vec::len),
            Some(2),
            "{what}: the history lost reloads: {history:?}"
        );
        assert_eq!(
            std::fs::read(segment(&f.journal)).unwrap(),
            log,
            "{what}: the log was rewritten"
        );
        assert!(
            f.h.state.processes().is_empty(),
            "{what}: a stopped plugin was started"
        );
    }
}

#[test]
fn a_damaged_witness_is_refused_and_nothing_is_rewritten() {
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
    ];
    for (what, damage) in &cases {
        restore(&f.pristine, &f.journal);
        damage(&f);
        let before = files(&f.journal);
        for refusal in assert_refused(&f, what) {
            assert!(
                refusal.changed.iter().all(|p| is_sled(p)),
                "{what}: {:?} rewrote {:?}",
                refusal.run,
                refusal.changed
            );
        }
        for path in changed(&before, &files(&f.journal)) {
            assert!(is_sled(&path), "{what}: {} was rewritten", path.display());
        }
    }
}

#[test]
fn a_log_damaged_before_its_durable_point_is_refused_naming_seq_and_offset_and_salvaged() {
    let f = fixture();
    restore(&f.pristine, &f.journal);
    let export = tryswap_env(&f.h, &["journal", "export"], &[]);
    assert_eq!(export.code(), Some(0), "{export:?}");
    let all: Vec<&str> = export.stdout.lines().collect();
    assert!(all.len() > 8, "{export:?}");
    let len = std::fs::metadata(segment(&f.journal)).unwrap().len() as usize;
    let middle = len / 2;
    flip(&segment(&f.journal), middle);
    let before = files(&f.journal);
    let refusals = assert_refused(&f, "log byte flipped");
    let status = &refusals[0].run.stderr;
    assert!(
        status.contains("seq ") && status.contains("byte ") && status.contains("--salvage"),
        "the refusal does not name the seq and offset: {status}"
    );
    for path in changed(&before, &files(&f.journal)) {
        assert!(is_sled(&path), "{} was rewritten", path.display());
    }
    // Salvage: every record before the damage, exactly as export printed them, then exit 4.
    let salvage = tryswap_env(&f.h, &["journal", "export", "--salvage"], &[]);
    assert_no_panic("salvage", &salvage);
    assert_eq!(salvage.code(), Some(4), "{salvage:?}");
    let salvaged: Vec<&str> = salvage.stdout.lines().collect();
    assert!(
        !salvaged.is_empty() && salvaged.len() < all.len(),
        "{salvage:?}"
    );
    assert_eq!(salvaged, all[..salvaged.len()]);
    assert!(
        salvage
            .stderr
            .contains(&format!("seq {}", salvaged.len() + 1)),
        "{salvage:?}"
    );
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
    let recover = tryswap_env(&f.h, &["recover"], &[]);
    assert_eq!(recover.code(), Some(0), "{recover:?}");
    assert!(
        !unfinished.exists(),
        "the unfinished snapshot is still there"
    );
    let verify = tryswap_env(&f.h, &["journal", "verify"], &[]);
    assert_eq!(verify.code(), Some(0), "{verify:?}");
    let history = tryswap_env(&f.h, &["--json", "history", "demo"], &[]);
    assert_eq!(history.code(), Some(0), "{history:?}");
    assert_eq!(
        history.json()["reloads"].as_array().map(Vec::len),
        Some(2),
        "the history lost reloads: {history:?}"
    );
}
