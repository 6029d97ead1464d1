//! The segment log: the journal's source of truth (DESIGN.md "Journal, second form").
//!
//! Every record is appended to `<journal>/log/<first-seq>.seg` before sled's projections
//! are trusted with it; sled holds only what can be derived again from this log. A segment
//! is the 8-byte magic [`SEGMENT_MAGIC`] followed by frames:
//!
//! ```text
//! len: u32 LE (of kind + payload) | crc32c(kind + payload): u32 LE | kind: u8 | payload
//! ```
//!
//! Kinds: [`KIND_RECORD`] (payload: the stored record, bincode body + its CRC32 chain
//! value, exactly as `codec::encode_record` makes it), and the compaction base written at
//! the start of a segment made by compaction: [`KIND_BASE`] (`(seq, chain, slots,
//! reloads)`), then that many [`KIND_BASE_SLOT`] and [`KIND_BASE_RELOAD`] frames (one
//! projection each), then the kept records up to the base, then the records after it.
//! A segment that starts with a base supersedes every segment before it.
//!
//! [`LogReader`] reads the log without any lock and without writing: it is safe to use
//! while a writer appends (it stops at the end it finds). Damage (a torn or flipped frame,
//! a record that does not decode, a gap or a broken chain) ends the iteration with a
//! [`LogDamage`] naming the segment, byte offset and the sequence number expected there.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::JournalError;
use crate::projection::{BaseSlot, History, ReloadView, SlotView};
use crate::record::Record;
use crate::witness::{sync_dir, WitnessMark};

/// The log directory inside the journal directory.
pub const LOG_DIR: &str = "log";
/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"TSWJLOG1";
/// Frame kind: one stored record.
pub const KIND_RECORD: u8 = 1;
/// Frame kind: the head of a compaction base.
pub const KIND_BASE: u8 = 2;
/// Frame kind: one slot projection of a compaction base.
pub const KIND_BASE_SLOT: u8 = 3;
/// Frame kind: one reload projection of a compaction base.
pub const KIND_BASE_RELOAD: u8 = 4;
/// Length of a frame header (length + CRC32C).
pub const FRAME_HEADER: usize = 8;
/// The largest frame body a reader accepts.
const MAX_BODY: usize = codec::LIMIT + 1;

/// CRC32C of frame bodies, slice-by-16 tables (the byte-wise default was a third of a log
/// read's time; same checksum, so segments read and write as before).
const CRC32C: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// The path of the segment whose first record has sequence number `first_seq`.
pub fn segment_path(journal_dir: &Path, first_seq: u64) -> PathBuf {
    journal_dir
        .join(LOG_DIR)
        .join(format!("{first_seq:020}.seg"))
}

/// One frame, ready to append: header and body.
pub(crate) fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + 1 + payload.len());
    let len = (payload.len() + 1) as u32;
    let mut digest = CRC32C.digest();
    digest.update(&[kind]);
    digest.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&digest.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// The head of a compaction base as stored in a [`KIND_BASE`] frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BaseHead {
    pub seq: u64,
    pub chain: u32,
    pub slots: u64,
    pub reloads: u64,
}

/// The frames of a compaction base at `mark` with these projections (each slot with its
/// history, in the layout of [`BaseSlot`]).
pub(crate) fn base_frames(
    mark: WitnessMark,
    slots: &[BaseSlot],
    reloads: &[&ReloadView],
) -> Result<Vec<u8>, JournalError> {
    let head = BaseHead {
        seq: mark.seq,
        chain: mark.chain,
        slots: slots.len() as u64,
        reloads: reloads.len() as u64,
    };
    let mut out = frame(KIND_BASE, &codec::encode("log base", &head)?);
    for view in slots {
        out.extend(frame(
            KIND_BASE_SLOT,
            &codec::encode("log base slot", view)?,
        ));
    }
    for view in reloads {
        out.extend(frame(
            KIND_BASE_RELOAD,
            &codec::encode("log base reload", *view)?,
        ));
    }
    Ok(out)
}

/// Where a frame starts: the segment (by its first sequence number) and the byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LogPosition {
    /// The segment's first sequence number (its file name).
    pub segment: u64,
    /// Byte offset of the frame in that segment.
    pub offset: u64,
}

/// The compaction base a segment starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogBase {
    /// The last sequence number folded into the base.
    pub seq: u64,
    /// Its chain value.
    pub chain: u32,
    /// The slot projections at the base.
    pub slots: Vec<SlotView>,
    /// Every slot's history at the base (a base slot frame carries its slot's history).
    pub history: std::collections::BTreeMap<tryswap_fsm::SlotName, History>,
    /// The kept reload projections at the base.
    pub reloads: Vec<ReloadView>,
}

/// One item of the log, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogItem {
    /// A compaction base (only first in a segment).
    Base(LogBase),
    /// A record kept from before the base (compaction keeps the kept reloads' records for
    /// audit; they are not part of the gap-free sequence).
    Kept(Record),
    /// A record of the gap-free sequence, with its chain value and where it starts.
    Record {
        /// The record.
        record: Record,
        /// Its chain value (stored CRC).
        chain: u32,
        /// Where its frame starts.
        at: LogPosition,
    },
}

/// Where and how the log is damaged. Everything before [`LogDamage::at`] was read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("log segment {} is damaged at byte {} (where seq {} should be): {what}", path.display(), at.offset, seq)]
pub struct LogDamage {
    /// The segment file.
    pub path: PathBuf,
    /// Where the damaged frame starts.
    pub at: LogPosition,
    /// The sequence number expected there.
    pub seq: u64,
    /// What is wrong.
    pub what: String,
}

/// A read-only view of a journal's segment log: needs no lock and writes nothing.
#[derive(Clone, Debug)]
pub struct LogReader {
    dir: PathBuf,
    /// First sequence numbers of the segments to read, in order.
    segments: Vec<u64>,
}

/// The segments in `log_dir` by first sequence number, in order (ignoring other files).
pub(crate) fn list_segments(log_dir: &Path) -> Result<Vec<u64>, JournalError> {
    let entries = match std::fs::read_dir(log_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JournalError::io("listing the log", log_dir, e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("listing the log", log_dir, e))?;
        let name = entry.file_name();
        if let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            segments.push(first);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Whether segment `first` starts with a compaction base (reads one frame header).
fn starts_with_base(journal_dir: &Path, first: u64) -> bool {
    let mut head = [0u8; 8 + FRAME_HEADER + 1];
    File::open(segment_path(journal_dir, first))
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[..8] == SEGMENT_MAGIC
        && head[8 + FRAME_HEADER] == KIND_BASE
}

impl LogReader {
    /// The log of the journal in `journal_dir` (an empty log if it has none). Segments
    /// before the newest one that starts with a compaction base are left out.
    pub fn open(journal_dir: &Path) -> Result<LogReader, JournalError> {
        let mut segments = list_segments(&journal_dir.join(LOG_DIR))?;
        if let Some(i) = segments
            .iter()
            .rposition(|first| *first > 1 && starts_with_base(journal_dir, *first))
        {
            segments.drain(..i);
        }
        Ok(LogReader {
            dir: journal_dir.to_path_buf(),
            segments,
        })
    }

    /// Whether the journal has a log at all.
    pub fn exists(&self) -> bool {
        !self.segments.is_empty()
    }

    /// The first sequence numbers of the segments read, in order.
    pub fn segments(&self) -> &[u64] {
        &self.segments
    }

    /// The items of the log in order; the iteration ends after the first damage.
    pub fn items(&self) -> LogItems {
        LogItems {
            dir: self.dir.clone(),
            segments: self.segments.clone(),
            index: 0,
            file: None,
            offset: 0,
            next_seq: 1,
            chain: 0,
            base_pending: None,
            done: false,
            body: Vec::new(),
        }
    }

    /// Every record of the log in order (kept ones before the base included), and the
    /// damage that ended the read, if any.
    pub fn records(&self) -> (Vec<Record>, Option<LogDamage>) {
        let mut records = Vec::new();
        for item in self.items() {
            match item {
                Ok(LogItem::Base(_)) => {}
                Ok(LogItem::Kept(record)) | Ok(LogItem::Record { record, .. }) => {
                    records.push(record)
                }
                Err(damage) => return (records, Some(damage)),
            }
        }
        (records, None)
    }
}

/// The iterator of [`LogReader::items`].
pub struct LogItems {
    dir: PathBuf,
    segments: Vec<u64>,
    index: usize,
    file: Option<BufReader<File>>,
    offset: u64,
    next_seq: u64,
    chain: u32,
    /// A base whose projections are still being read.
    base_pending: Option<(LogBase, u64, u64)>,
    done: bool,
    /// The last frame's body (kind byte + payload), reused from frame to frame.
    body: Vec<u8>,
}

/// What reading one frame gave.
enum Frame {
    End,
    /// The body was read into the buffer given.
    Body,
    Damaged(String),
}

impl LogItems {
    /// The end of what was read so far: the position after the last good frame, the next
    /// sequence number and the chain value of the last record.
    pub fn position(&self) -> (LogPosition, WitnessMark) {
        let segment = self
            .segments
            .get(self.index.min(self.segments.len().saturating_sub(1)))
            .copied()
            .unwrap_or(1);
        (
            LogPosition {
                segment,
                offset: self.offset,
            },
            WitnessMark {
                seq: self.next_seq - 1,
                chain: self.chain,
            },
        )
    }

    fn damage(&mut self, at: LogPosition, what: String) -> LogDamage {
        self.done = true;
        LogDamage {
            path: segment_path(&self.dir, at.segment),
            at,
            seq: self.next_seq,
            what,
        }
    }

    /// The stored bytes of the record the last item returned (a `Kept` or `Record`), exactly
    /// as sled stores them: lets a caller compare instead of decoding twice.
    pub(crate) fn last_record_bytes(&self) -> &[u8] {
        self.body.get(1..).unwrap_or_default()
    }

    fn read_frame(file: &mut BufReader<File>, body: &mut Vec<u8>) -> Frame {
        let mut header = [0u8; FRAME_HEADER];
        let mut got = 0;
        while got < FRAME_HEADER {
            match file.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Frame::End,
                Ok(0) => return Frame::Damaged(format!("a frame header cut after {got} bytes")),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Frame::Damaged(format!("read error: {e}")),
            }
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_BODY {
            return Frame::Damaged(format!("impossible frame length {len}"));
        }
        body.resize(len, 0);
        if let Err(e) = file.read_exact(body) {
            return Frame::Damaged(format!("a frame of {len} bytes cut short ({e})"));
        }
        let computed = CRC32C.checksum(body);
        if computed != crc {
            return Frame::Damaged(format!(
                "frame checksum mismatch (stored {crc:#010x}, computed {computed:#010x})"
            ));
        }
        Frame::Body
    }

    fn next_item(&mut self) -> Option<Result<LogItem, LogDamage>> {
        loop {
            if self.done {
                return None;
            }
            let first = *self.segments.get(self.index)?;
            if self.file.is_none() {
                let path = segment_path(&self.dir, first);
                let at = LogPosition {
                    segment: first,
                    offset: 0,
                };
                let mut file = match File::open(&path) {
                    Ok(file) => BufReader::with_capacity(1 << 16, file),
                    Err(e) => return Some(Err(self.damage(at, format!("cannot open: {e}")))),
                };
                let mut magic = [0u8; 8];
                if file.read_exact(&mut magic).is_err() || &magic != SEGMENT_MAGIC {
                    return Some(Err(
                        self.damage(at, "the segment header is missing or wrong".to_owned())
                    ));
                }
                if self.index > 0 && first != self.next_seq {
                    let what = format!(
                        "the segment starts at seq {first} but the previous one ended at seq {}",
                        self.next_seq - 1
                    );
                    return Some(Err(self.damage(at, what)));
                }
                self.offset = 8;
                self.file = Some(file);
            }
            let at = LogPosition {
                segment: first,
                offset: self.offset,
            };
            let frame = match self.file.as_mut() {
                Some(file) => Self::read_frame(file, &mut self.body),
                None => return None,
            };
            match frame {
                Frame::End => {
                    if let Some((base, ..)) = &self.base_pending {
                        let what = format!("the compaction base at seq {} is cut short", base.seq);
                        return Some(Err(self.damage(at, what)));
                    }
                    self.file = None;
                    self.index += 1;
                    if self.index >= self.segments.len() {
                        self.index = self.segments.len().saturating_sub(1);
                        self.done = true;
                        return None;
                    }
                    continue;
                }
                Frame::Damaged(what) => return Some(Err(self.damage(at, what))),
                Frame::Body => {}
            }
            let body = std::mem::take(&mut self.body);
            let len = body.len() as u64 + FRAME_HEADER as u64;
            let item = self.item(body[0], &body[1..], at);
            self.body = body;
            if item.is_ok() {
                self.offset += len;
            }
            match item {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => continue,
                Err(what) => return Some(Err(self.damage(at, what))),
            }
        }
    }

    /// Interprets one frame; `Ok(None)` for a base projection still being collected.
    fn item(
        &mut self,
        kind: u8,
        payload: &[u8],
        at: LogPosition,
    ) -> Result<Option<LogItem>, String> {
        if let Some((base, slots, reloads)) = self.base_pending.as_mut() {
            if *slots > 0 {
                if kind != KIND_BASE_SLOT {
                    return Err(format!("expected a base slot frame, found kind {kind}"));
                }
                let slot: BaseSlot =
                    codec::decode("log base slot", payload).map_err(|e| e.to_string())?;
                let (view, history) = slot.split();
                base.history.insert(view.slot.name.clone(), history);
                base.slots.push(view);
                *slots -= 1;
            } else if *reloads > 0 {
                if kind != KIND_BASE_RELOAD {
                    return Err(format!("expected a base reload frame, found kind {kind}"));
                }
                base.reloads
                    .push(codec::decode("log base reload", payload).map_err(|e| e.to_string())?);
                *reloads -= 1;
            }
            if *slots == 0 && *reloads == 0 {
                let (base, ..) = self.base_pending.take().ok_or("no pending base")?;
                return Ok(Some(LogItem::Base(base)));
            }
            return Ok(None);
        }
        match kind {
            KIND_BASE => {
                if at.offset != 8 {
                    return Err("a compaction base in the middle of a segment".to_owned());
                }
                let head: BaseHead =
                    codec::decode("log base", payload).map_err(|e| e.to_string())?;
                self.next_seq = head.seq + 1;
                self.chain = head.chain;
                let base = LogBase {
                    seq: head.seq,
                    chain: head.chain,
                    slots: Vec::new(),
                    history: std::collections::BTreeMap::new(),
                    reloads: Vec::new(),
                };
                if head.slots == 0 && head.reloads == 0 {
                    return Ok(Some(LogItem::Base(base)));
                }
                self.base_pending = Some((base, head.slots, head.reloads));
                Ok(None)
            }
            KIND_RECORD => {
                let (record, chain) = codec::decode_stored(payload).map_err(|e| e.to_string())?;
                if record.seq < self.next_seq {
                    return Ok(Some(LogItem::Kept(record)));
                }
                if record.seq != self.next_seq {
                    return Err(format!("found seq {} (a gap)", record.seq));
                }
                if record.prev_chain != self.chain {
                    return Err(format!(
                        "seq {} chains to {:#010x}, but the record before it has chain {:#010x}",
                        record.seq, record.prev_chain, self.chain
                    ));
                }
                self.next_seq += 1;
                self.chain = chain;
                Ok(Some(LogItem::Record { record, chain, at }))
            }
            other => Err(format!("unknown frame kind {other}")),
        }
    }
}

impl Iterator for LogItems {
    type Item = Result<LogItem, LogDamage>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_item()
    }
}

/// The open segment the journal appends to.
#[derive(Debug)]
pub(crate) struct LogWriter {
    path: PathBuf,
    file: File,
    len: u64,
}

impl LogWriter {
    /// Opens segment `first` for appending after byte `end`, cutting anything after it (an
    /// unflushed tail a crash left).
    pub(crate) fn append_to(
        journal_dir: &Path,
        first: u64,
        end: u64,
    ) -> Result<LogWriter, JournalError> {
        let path = segment_path(journal_dir, first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| JournalError::io("opening the log", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| JournalError::io("reading the log's size", &path, e))?
            .len();
        if len > end {
            tracing::warn!(
                path = %path.display(),
                offset = end,
                bytes = len - end,
                "cutting the log's unflushed tail (a crash left it)"
            );
            file.set_len(end)
                .and_then(|()| file.sync_data())
                .map_err(|e| JournalError::io("cutting the log's tail", &path, e))?;
        }
        Ok(LogWriter {
            path,
            file,
            len: end,
        })
    }

    /// Creates segment `first` holding `initial` (a compaction base and kept records, or
    /// nothing), synced, under a temporary name renamed into place, with the directory
    /// synced: a crash leaves either no segment or the whole one.
    pub(crate) fn create(
        journal_dir: &Path,
        first: u64,
        initial: &[u8],
    ) -> Result<LogWriter, JournalError> {
        let log_dir = journal_dir.join(LOG_DIR);
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| JournalError::io("creating the log directory", &log_dir, e))?;
        let path = segment_path(journal_dir, first);
        let tmp = path.with_extension("seg.tmp");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| JournalError::io("creating a log segment", &tmp, e))?;
        file.write_all(SEGMENT_MAGIC)
            .and_then(|()| file.write_all(initial))
            .and_then(|()| file.sync_data())
            .map_err(|e| JournalError::io("writing a log segment", &tmp, e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| JournalError::io("putting a log segment in place", &path, e))?;
        sync_dir(&log_dir)?;
        sync_dir(journal_dir)?;
        Ok(LogWriter {
            path,
            file,
            len: (SEGMENT_MAGIC.len() + initial.len()) as u64,
        })
    }

    /// Appends frames (one write; not synced).
    pub(crate) fn append(&mut self, frames: &[u8]) -> Result<(), JournalError> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(frames, self.len)
            .map_err(|e| JournalError::io("appending to the log", &self.path, e))?;
        self.len += frames.len() as u64;
        Ok(())
    }

    /// Makes everything appended durable (`fdatasync`).
    pub(crate) fn sync(&self) -> Result<(), JournalError> {
        self.file
            .sync_data()
            .map_err(|e| JournalError::io("syncing the log", &self.path, e))
    }

    /// The segment's length so far.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use tryswap_fsm::{ArtifactRef, EventKind, Mode, ReloadId, Sha256, SlotName};

    fn record(seq: u64, prev_chain: u32) -> (Record, Vec<u8>, u32) {
        let record = Record {
            format: crate::record::RECORD_FORMAT,
            seq,
            at: Utc.timestamp_opt(1_700_000_000 + seq as i64, 0).unwrap(),
            reload: ReloadId::from_u128(seq as u128),
            slot: SlotName::new("demo").unwrap(),
            actor: crate::record::Actor::default(),
            reason: None,
            event: EventKind::Staged {
                mode: Mode::Activate,
                generation: tryswap_fsm::Generation(seq),
                artifact: ArtifactRef {
                    sha256: Sha256([seq as u8; 32]),
                    config_sha256: None,
                },
                previous: None,
            },
            prev_chain,
        };
        let stored = codec::encode_record(&record).unwrap();
        let chain = codec::stored_chain(&stored).unwrap();
        (record, stored, chain)
    }

    /// A log of `n` records in one segment; returns the records and frame offsets.
    fn write_log(dir: &Path, n: u64) -> (Vec<Record>, Vec<u64>) {
        let mut writer = LogWriter::create(dir, 1, &[]).unwrap();
        let mut chain = 0;
        let mut records = Vec::new();
        let mut offsets = Vec::new();
        for seq in 1..=n {
            let (r, stored, c) = record(seq, chain);
            offsets.push(writer.len());
            writer.append(&frame(KIND_RECORD, &stored)).unwrap();
            chain = c;
            records.push(r);
        }
        writer.sync().unwrap();
        (records, offsets)
    }

    #[test]
    fn records_round_trip_and_damage_names_seq_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (records, offsets) = write_log(dir.path(), 10);
        let reader = LogReader::open(dir.path()).unwrap();
        assert_eq!(reader.records(), (records.clone(), None));
        // Flip a byte inside record 6.
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[5] as usize + 12] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (read, damage) = LogReader::open(dir.path()).unwrap().records();
        assert_eq!(read, records[..5]);
        let damage = damage.unwrap();
        assert_eq!((damage.seq, damage.at.offset), (6, offsets[5]));
        let text = damage.to_string();
        assert!(
            text.contains("seq 6") && text.contains(&format!("byte {}", offsets[5])),
            "{text}"
        );
        // A cut frame is damage too, and appending after the cut works.
        std::fs::write(&path, &bytes[..offsets[5] as usize + 3]).unwrap();
        let mut items = LogReader::open(dir.path()).unwrap().items();
        assert_eq!(items.by_ref().filter(Result::is_ok).count(), 5);
        let mut writer = LogWriter::append_to(dir.path(), 1, offsets[5]).unwrap();
        writer
            .append(&frame(
                KIND_RECORD,
                &codec::encode_record(&records[5]).unwrap(),
            ))
            .unwrap();
        let (read, damage) = LogReader::open(dir.path()).unwrap().records();
        assert_eq!((read, damage), (records[..6].to_vec(), None));
    }

    #[test]
    fn a_base_segment_supersedes_the_ones_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (records, _) = write_log(dir.path(), 4);
        let chain = codec::stored_chain(&codec::encode_record(&records[3]).unwrap()).unwrap();
        let mut initial = base_frames(WitnessMark { seq: 4, chain }, &[], &[]).unwrap();
        initial.extend(frame(
            KIND_RECORD,
            &codec::encode_record(&records[2]).unwrap(),
        ));
        let mut writer = LogWriter::create(dir.path(), 5, &initial).unwrap();
        let (r5, stored, _) = record(5, chain);
        writer.append(&frame(KIND_RECORD, &stored)).unwrap();
        let reader = LogReader::open(dir.path()).unwrap();
        assert_eq!(reader.segments(), &[5]);
        let items: Vec<_> = reader.items().map(Result::unwrap).collect();
        assert!(matches!(&items[0], LogItem::Base(b) if b.seq == 4 && b.chain == chain));
        assert_eq!(items[1], LogItem::Kept(records[2].clone()));
        assert!(matches!(&items[2], LogItem::Record { record, .. } if *record == r5));
    }
}
