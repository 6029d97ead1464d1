//! Reads straight from the segment log, the journal's source of truth: no lock, no sled,
//! nothing written (DESIGN.md "Journal, second form": read commands change nothing and need
//! no exclusive lock). `tryswap events`, `journal show`, `journal export`, `journal replay`
//! and, while another process holds the journal, `journal verify` use them, so they answer
//! at once while a one-shot `activate` or a daemon holds it.
//!
//! Every read is as strict as an open: the witness (the durable point) is read first, then
//! the log once. Damage at or before the witness's seq, a log that ends before it, or
//! another record there is [`JournalError::Corrupt`] naming the seq and byte offset. After
//! the durable point the log is read as far as it is intact: a complete frame is a committed
//! record (a writer commits, then appends), a frame cut short is a write in progress (or a
//! crash's unflushed tail, which the next open cuts) and ends the read.
//!
//! A compaction running meanwhile replaces the log's segments; a read that loses a segment
//! to it starts again (at most [`ATTEMPTS`] times), without handing out a record twice.

use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::layout::WITNESS_FILE;
use crate::projection::ReplayState;
use crate::rebuild::{check_log, scan_with, LogScan};
use crate::record::Record;
use crate::report::{ProblemKind, VerifyReport};
use crate::segment_log::{LogBase, LogItem, LogReader, LOG_DIR};
use crate::verify::{check_and_fold, Findings};
use crate::witness::{self, WitnessMark};

/// How many times a read starts again when a compaction replaced the segments under it.
const ATTEMPTS: usize = 3;

/// What a lock-free read of the log covered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogRead {
    /// Records handed out.
    pub records: u64,
    /// The log's compaction base (0: none).
    pub base_seq: u64,
    /// The last record read.
    pub last_seq: u64,
    /// The last durable record (the witness) when the read started.
    pub durable_seq: u64,
}

/// The durable point of the journal in `dir` (nothing durable yet when it has no witness);
/// [`JournalError::Corrupt`] naming the file when the witness is damaged.
fn durable_point(dir: &Path) -> Result<WitnessMark, JournalError> {
    Ok(witness::read(&dir.join(WITNESS_FILE), dir)?
        .map(|(mark, _)| mark)
        .unwrap_or_default())
}

/// Reads the log once, handing each good item to `each`: what was found, or `None` when a
/// compaction replaced the segments while they were read. [`JournalError::Missing`] when
/// the journal has no log (one written before the log existed: the caller reads it through
/// sled).
fn pass(
    dir: &Path,
    mark: WitnessMark,
    each: &mut dyn FnMut(Option<&LogItem>) -> Result<(), JournalError>,
) -> Result<Option<(LogScan, LogReader)>, JournalError> {
    let reader = LogReader::open(dir)?;
    if !reader.exists() {
        return Err(JournalError::Missing(format!(
            "the journal in {} has no log ({} holds no segment)",
            dir.display(),
            dir.join(LOG_DIR).display()
        )));
    }
    let scan = scan_with(&reader, mark.seq, None, |item| each(Some(item)))?;
    if scan.damage.is_some() && LogReader::open(dir)?.segments() != reader.segments() {
        return Ok(None);
    }
    Ok(Some((scan, reader)))
}

/// [`pass`] until no compaction moved the segments: `each` gets every good item, and `None`
/// before every pass after the first (start again).
fn read(
    dir: &Path,
    mark: WitnessMark,
    mut each: impl FnMut(Option<&LogItem>) -> Result<(), JournalError>,
) -> Result<(LogScan, LogReader), JournalError> {
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tracing::debug!(dir = %dir.display(), attempt, "the log was compacted while read: reading it again");
            each(None)?;
        }
        if let Some(found) = pass(dir, mark, &mut each)? {
            return Ok(found);
        }
    }
    Err(JournalError::io(
        "reading the log",
        dir.join(LOG_DIR),
        std::io::Error::other(format!(
            "its segments were replaced {ATTEMPTS} times while read (compactions running)"
        )),
    ))
}

/// Reads the log of `dir` strictly: the durable point from the witness, every good item
/// handed to `each` ([`read`]: `None` before a pass that starts again), then the log
/// refused if it lost or damaged what was durable ([`strict`]). Returns the durable point
/// and what the read found. What every lock-free read of the log goes through.
pub(crate) fn read_strictly(
    dir: &Path,
    each: impl FnMut(Option<&LogItem>) -> Result<(), JournalError>,
) -> Result<(WitnessMark, LogScan), JournalError> {
    let mark = durable_point(dir)?;
    let found = read(dir, mark, each)?;
    strict(dir, mark, &found)?;
    Ok((mark, found.0))
}

/// Refuses a log that lost or damaged what the witness says was durable (see the module's
/// documentation); damage after it ends the read quietly.
fn strict(
    dir: &Path,
    mark: WitnessMark,
    (scan, reader): &(LogScan, LogReader),
) -> Result<(), JournalError> {
    check_log(dir, reader, scan, mark)?;
    if let Some(damage) = &scan.damage {
        tracing::debug!(%damage, durable = mark.seq, "the log's read ends at a frame after its durable point (a write in progress or an unflushed tail)");
    }
    Ok(())
}

fn output_error(e: std::io::Error) -> JournalError {
    JournalError::io("writing a record", PathBuf::from("<output>"), e)
}

/// The state at a compaction base.
pub(crate) fn base_state(base: &LogBase) -> ReplayState {
    let mut state = ReplayState {
        seq: base.seq,
        ..ReplayState::default()
    };
    for view in &base.slots {
        state.slots.insert(view.slot.name.clone(), view.clone());
    }
    for view in &base.reloads {
        state.reloads.insert(view.reload.id, view.clone());
    }
    state.history = base
        .history
        .iter()
        .filter(|(_, history)| !history.is_empty())
        .map(|(slot, history)| (slot.clone(), history.clone()))
        .collect();
    state
}

/// Hands every record of the journal in `dir` with sequence number `from_seq` or later to
/// `write`, in order, from the log (records kept by a compaction from before its base
/// included, as [`crate::Journal::events`] gives them). Needs no lock and writes nothing;
/// strict as described in the module documentation (on damage before the durable point
/// the records before it were handed out, then the error). An error from `write` ends the
/// read with that error (as [`JournalError::Io`]).
pub fn read_records(
    dir: &Path,
    from_seq: u64,
    mut write: impl FnMut(&Record) -> std::io::Result<()>,
) -> Result<LogRead, JournalError> {
    let mut handed = 0u64;
    // The last seq handed out: a pass after a compaction skips what was handed before.
    let mut done: Option<u64> = None;
    let (mark, scan) = read_strictly(dir, |item| {
        let record = match item {
            None | Some(LogItem::Base(_)) => return Ok(()),
            Some(LogItem::Kept(record)) | Some(LogItem::Record { record, .. }) => record,
        };
        if record.seq < from_seq || done.is_some_and(|d| record.seq <= d) {
            return Ok(());
        }
        write(record).map_err(output_error)?;
        handed += 1;
        done = Some(done.map_or(record.seq, |d| d.max(record.seq)));
        Ok(())
    })?;
    Ok(LogRead {
        records: handed,
        base_seq: scan.base.seq,
        last_seq: scan.tip.seq,
        durable_seq: mark.seq,
    })
}

/// The state of every slot and reload after record `until_seq`, folded from the log (the
/// compaction base, then the records after it), as [`crate::Journal::replay`] gives it
/// from sled. Needs no lock and writes nothing; strict (the whole log is read).
/// [`JournalError::Compacted`] if `until_seq` is before the compaction base.
pub fn replay_log(dir: &Path, until_seq: u64) -> Result<ReplayState, JournalError> {
    let mut state = ReplayState::default();
    let (_, scan) = read_strictly(dir, |item| {
        match item {
            None => state = ReplayState::default(),
            Some(LogItem::Base(base)) => state = base_state(base),
            Some(LogItem::Record { record, .. }) if record.seq <= until_seq => state.apply(record),
            Some(_) => {}
        }
        Ok(())
    })?;
    let base = scan.base.seq;
    if until_seq < base {
        return Err(JournalError::Compacted {
            requested: until_seq,
            base,
        });
    }
    Ok(state)
}

/// `verify` of the log alone, for when another process holds the journal (sled's index is
/// then not compared): every frame reads and chains (damage is a problem naming its seq
/// and byte offset), every record is a legal transition in the state the ones before it
/// left (folded from the compaction base), and the log holds what the witness says was
/// durable. A frame cut short after the durable point is a write in progress, not a
/// problem. Needs no lock and writes nothing. `Err` only when the log cannot be listed.
pub fn verify_log(dir: &Path) -> Result<VerifyReport, JournalError> {
    let mut found = Findings(Vec::new());
    let witness_path = dir.join(WITNESS_FILE);
    let mark = match witness::read(&witness_path, dir) {
        Ok(Some((mark, _))) => mark,
        Ok(None) => WitnessMark::default(),
        Err(e) => {
            found.of_file(ProblemKind::Witness, WITNESS_FILE, None, e.to_string());
            WitnessMark::default()
        }
    };
    let mut state = ReplayState::default();
    let mut illegal = Findings(Vec::new());
    let mut checked = 0u64;
    let (scan, reader) = read(dir, mark, |item| {
        match item {
            None => {
                state = ReplayState::default();
                illegal = Findings(Vec::new());
                checked = 0;
            }
            Some(LogItem::Base(base)) => state = base_state(base),
            Some(LogItem::Kept(_)) => checked += 1,
            Some(LogItem::Record { record, .. }) => {
                checked += 1;
                // The reader checked the sequence and the chain already.
                check_and_fold(&mut state, record.seq, record, None, &mut illegal);
            }
        }
        Ok(())
    })?;
    if let Err(e) = check_log(dir, &reader, &scan, mark) {
        let what = match e {
            JournalError::Corrupt { what, .. } => what,
            other => other.to_string(),
        };
        let seq = scan.damage.as_ref().map_or(mark.seq, |d| d.seq);
        found.of_file(ProblemKind::Log, LOG_DIR, Some(seq), what);
    } else if let Some(damage) = scan.damage.as_ref().filter(|_| !found.0.is_empty()) {
        // Without a readable witness there is no durable point to excuse a damaged end.
        found.of_file(
            ProblemKind::Log,
            LOG_DIR,
            Some(damage.seq),
            damage.to_string(),
        );
    }
    if scan.tip.seq > 0 && !witness_path.exists() {
        let missing = format!("witness file {} is missing", witness_path.display());
        found.of_file(ProblemKind::Witness, WITNESS_FILE, None, missing);
    }
    found.0.extend(illegal.0);
    Ok(VerifyReport {
        events_checked: checked,
        base_seq: scan.base.seq,
        last_seq: scan.tip.seq,
        problems: found.0,
    })
}
