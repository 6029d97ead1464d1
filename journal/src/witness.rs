//! The witness file: the last durably committed sequence number and its chain value, kept
//! outside sled so a lost or replaced tail of sled's data is detected at open.
//!
//! Layout: two 32-byte slots. Each slot is `"TSWJWIT1"` (8 bytes), seq (u64 BE), chain
//! (u32 BE), 4 zero bytes, CRC32 of the preceding 24 bytes (u32 BE), 4 zero bytes. Writes
//! alternate between the slots and are `fdatasync`ed in place, so a write torn by a power
//! loss damages at most the slot being written; the other still holds the previous
//! (smaller, hence still true) witness. Reading takes the valid slot with the larger seq.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::JournalError;

const MAGIC: &[u8; 8] = b"TSWJWIT1";
const SLOT_LEN: usize = 32;
const FILE_LEN: usize = 2 * SLOT_LEN;

/// A durable point of the journal: every record up to `seq` survived a flush and sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WitnessMark {
    /// Last durable sequence number (0: nothing yet).
    pub seq: u64,
    /// Chain value of the record `seq` (0 when `seq` is 0).
    pub chain: u32,
}

/// The open witness file.
#[derive(Debug)]
pub(crate) struct Witness {
    path: PathBuf,
    file: File,
    /// The mark last written or read, and the slot holding it.
    current: WitnessMark,
    slot: usize,
}

fn encode_slot(mark: WitnessMark) -> [u8; SLOT_LEN] {
    let mut buf = [0u8; SLOT_LEN];
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&mark.seq.to_be_bytes());
    buf[16..20].copy_from_slice(&mark.chain.to_be_bytes());
    let crc = crc32fast::hash(&buf[..24]);
    buf[24..28].copy_from_slice(&crc.to_be_bytes());
    buf
}

fn decode_slot(buf: &[u8]) -> Option<WitnessMark> {
    if buf.len() < SLOT_LEN || &buf[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(buf[24..28].try_into().ok()?);
    if crc != crc32fast::hash(&buf[..24]) {
        return None;
    }
    Some(WitnessMark {
        seq: u64::from_be_bytes(buf[8..16].try_into().ok()?),
        chain: u32::from_be_bytes(buf[16..20].try_into().ok()?),
    })
}

/// Reads the witness at `path`: `Ok(None)` if the file does not exist or is empty; an
/// error naming the file if it exists but no slot is valid.
pub(crate) fn read(path: &Path, dir: &Path) -> Result<Option<(WitnessMark, usize)>, JournalError> {
    let mut bytes = Vec::with_capacity(FILE_LEN);
    match File::open(path) {
        Ok(file) => {
            file.take(FILE_LEN as u64)
                .read_to_end(&mut bytes)
                .map_err(|e| JournalError::io("reading witness", path, e))?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::io("opening witness", path, e)),
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let best = bytes
        .chunks(SLOT_LEN)
        .enumerate()
        .filter_map(|(i, chunk)| decode_slot(chunk).map(|m| (m, i)))
        .max_by_key(|(m, _)| m.seq);
    match best {
        Some(found) => Ok(Some(found)),
        None => Err(JournalError::Corrupt {
            dir: dir.to_path_buf(),
            what: format!(
                "witness file {} is unreadable (no valid slot); nothing was changed; \
                 verifying the journal checks the events themselves",
                path.display()
            ),
        }),
    }
}

/// Syncs directory `dir` so a file created or renamed in it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("syncing directory", dir, e))
}

impl Witness {
    /// Opens the witness for writing, creating it (holding `initial`) if `existing` is
    /// `None`.
    pub(crate) fn open(
        path: &Path,
        existing: Option<(WitnessMark, usize)>,
        initial: WitnessMark,
    ) -> Result<Witness, JournalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| JournalError::io("opening witness", path, e))?;
        let mut witness = Witness {
            path: path.to_path_buf(),
            file,
            current: WitnessMark::default(),
            slot: 1,
        };
        match existing {
            Some((mark, slot)) => {
                witness.current = mark;
                witness.slot = slot;
            }
            None => {
                // Fresh file: both slots, synced with its directory entry.
                let mut buf = [0u8; FILE_LEN];
                buf[..SLOT_LEN].copy_from_slice(&encode_slot(initial));
                witness
                    .file
                    .write_all_at(&buf, 0)
                    .and_then(|()| witness.file.sync_all())
                    .map_err(|e| JournalError::io("writing witness", path, e))?;
                if let Some(parent) = path.parent() {
                    sync_dir(parent)?;
                }
                witness.current = initial;
                witness.slot = 0;
            }
        }
        Ok(witness)
    }

    /// One durable point, group-committed. With `skip_covered`, nothing is done when a
    /// flush that started after `tip` was appended already covered it (`Ok(None)`).
    /// Otherwise `sync` makes every appended record durable, then the witness moves to the
    /// later of `tip` and `latest` (the last record appended), which is returned: the
    /// callers that waited for this flush find their records durable without a sync of
    /// their own. An error names the seq that was being made durable; the caller fails its
    /// handle with it (a retried sync proves nothing).
    pub(crate) fn group_commit(
        &mut self,
        tip: WitnessMark,
        latest: WitnessMark,
        skip_covered: bool,
        sync: impl FnOnce() -> Result<(), JournalError>,
    ) -> Result<Option<WitnessMark>, String> {
        if skip_covered && self.current.seq >= tip.seq {
            return Ok(None);
        }
        let target = if latest.seq > tip.seq { latest } else { tip };
        let synced = sync().and_then(|()| {
            if target.seq > self.current.seq {
                self.write(target)?;
            }
            Ok(())
        });
        match synced {
            Ok(()) => Ok(Some(target)),
            Err(e) => Err(format!("making seq {} durable: {e}", target.seq)),
        }
    }

    /// Durably records `mark` (call only after the records up to `mark.seq` are synced).
    pub(crate) fn write(&mut self, mark: WitnessMark) -> Result<(), JournalError> {
        let slot = 1 - self.slot.min(1);
        let offset = (slot * SLOT_LEN) as u64;
        self.file
            .write_all_at(&encode_slot(mark), offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| JournalError::io("writing witness", &self.path, e))?;
        self.slot = slot;
        self.current = mark;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_reject_damage() {
        let mark = WitnessMark {
            seq: 0x0102_0304_0506_0708,
            chain: 0xdead_beef,
        };
        let buf = encode_slot(mark);
        assert_eq!(decode_slot(&buf), Some(mark));
        for i in 0..28 {
            let mut bad = buf;
            bad[i] ^= 0x40;
            assert_eq!(decode_slot(&bad), None, "flipped byte {i}");
        }
        assert_eq!(decode_slot(&buf[..20]), None);
    }

    #[test]
    fn alternating_writes_keep_the_newest_and_survive_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness");
        let mut w = Witness::open(&path, None, WitnessMark::default()).unwrap();
        for seq in 1..=5u64 {
            w.write(WitnessMark {
                seq,
                chain: seq as u32 * 3,
            })
            .unwrap();
            let (read_back, _) = read(&path, dir.path()).unwrap().unwrap();
            assert_eq!(read_back.seq, seq);
        }
        // Tear the newest slot: the previous mark remains.
        let (_, slot) = read(&path, dir.path()).unwrap().unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 7], (slot * SLOT_LEN + 10) as u64)
            .unwrap();
        let (mark, _) = read(&path, dir.path()).unwrap().unwrap();
        assert_eq!(mark, WitnessMark { seq: 4, chain: 12 });
        // Both torn: an error naming the file.
        f.write_all_at(&[0xff; 7], ((1 - slot) * SLOT_LEN + 10) as u64)
            .unwrap();
        let err = read(&path, dir.path()).unwrap_err();
        assert!(err.to_string().contains("witness"), "{err}");
    }
}
