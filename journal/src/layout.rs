//! The on-disk layout: file and tree names, key encodings, meta keys, and typed access to
//! stored values (every value goes through `codec`).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use tryswap_fsm::{ArtifactRef, Generation, ReloadId, SlotName};

use crate::codec;
use crate::error::JournalError;
use crate::projection::{ReloadView, SlotView};

/// The lock file in the journal directory (holds the owner's pid).
pub const LOCK_FILE: &str = "journal.lock";
/// The witness file in the journal directory.
pub const WITNESS_FILE: &str = "witness";
/// The sled directory inside the journal directory.
pub const SLED_DIR: &str = "sled";

/// Tree of records: key = sequence number as u64 big-endian.
pub const EVENTS: &str = "events";
/// Tree of slot projections: key = slot name (UTF-8).
pub const SLOTS: &str = "slots";
/// Tree of reload projections: key = reload id (16 bytes).
pub const RELOADS: &str = "reloads";
/// Tree of journal-wide values; see `docs/journal.md`.
pub const META: &str = "meta";
/// Tree of slot histories: key = slot name, a 0 byte, generation as u64 big-endian (so a
/// slot's entries are together, in generation order); value = the generation's artifact.
pub const HISTORY: &str = "history";

/// The journal format this build writes and reads (meta key `format`). Format 1 kept each
/// slot's history inside its projection; a format 1 sled is converted once at open (its
/// files backed up, then derived again from the log).
pub const JOURNAL_FORMAT: u16 = 2;

pub(crate) const KEY_FORMAT: &[u8] = b"format";
pub(crate) const KEY_NEXT_SEQ: &[u8] = b"next_seq";
pub(crate) const KEY_LAST_CHAIN: &[u8] = b"last_chain";
pub(crate) const KEY_BASE_SEQ: &[u8] = b"base_seq";
pub(crate) const KEY_BASE_CHAIN: &[u8] = b"base_chain";
/// Present while a compaction removes the records it dropped from `events`, after its
/// transaction moved the base (value: the new base seq). An open for writing that finds it
/// derives sled again from the log (a crash interrupted the removal).
pub(crate) const KEY_PURGING: &[u8] = b"purging";
pub(crate) const PREFIX_BASE_SLOT: &[u8] = b"base/slot/";
pub(crate) const PREFIX_BASE_RELOAD: &[u8] = b"base/reload/";

/// The key of the record with sequence number `seq`.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence number an `events` key encodes, if it is 8 bytes long.
pub(crate) fn seq_of_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The key of a slot's projection.
pub fn slot_key(name: &SlotName) -> &[u8] {
    name.as_str().as_bytes()
}

/// The key of a reload's projection.
pub fn reload_key(id: &ReloadId) -> [u8; 16] {
    *id.as_bytes()
}

/// The key of generation `generation` in slot `name`'s history.
pub fn history_key(name: &SlotName, generation: Generation) -> Vec<u8> {
    let mut key = history_prefix(name);
    key.extend_from_slice(&generation.0.to_be_bytes());
    key
}

/// The prefix every history key of slot `name` starts with (slot names hold no 0 byte).
pub(crate) fn history_prefix(name: &SlotName) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.as_str().len() + 9);
    key.extend_from_slice(slot_key(name));
    key.push(0);
    key
}

/// The generation a history key names, if it has the shape [`history_key`] gives.
pub(crate) fn generation_of_key(key: &[u8]) -> Option<Generation> {
    let at = key.iter().position(|b| *b == 0)?;
    let bytes: [u8; 8] = key.get(at + 1..)?.try_into().ok()?;
    Some(Generation(u64::from_be_bytes(bytes)))
}

/// Encodes a history entry's value.
pub(crate) fn encode_history(artifact: &ArtifactRef) -> Result<Vec<u8>, JournalError> {
    encode_value("history entry", artifact)
}

pub(crate) fn base_slot_key(name: &SlotName) -> Vec<u8> {
    [PREFIX_BASE_SLOT, slot_key(name)].concat()
}

pub(crate) fn base_reload_key(id: &ReloadId) -> Vec<u8> {
    [PREFIX_BASE_RELOAD, &reload_key(id)[..]].concat()
}

/// Decodes the record stored in tree `events` under `key`; a record that does not decode
/// is [`JournalError::CorruptValue`] naming its key.
pub(crate) fn decode_event(key: &[u8], bytes: &[u8]) -> Result<crate::Record, JournalError> {
    codec::decode_record(bytes).map_err(|source| JournalError::CorruptValue {
        tree: EVENTS,
        key: describe_key(EVENTS, key),
        source,
    })
}

/// Renders a key of `tree` for error messages.
pub(crate) fn describe_key(tree: &str, key: &[u8]) -> String {
    match tree {
        EVENTS => match seq_of_key(key) {
            Some(seq) => format!("seq {seq}"),
            None => format!("{key:02x?} (not an 8-byte sequence number)"),
        },
        RELOADS => match ReloadId::from_slice(key) {
            Ok(id) => format!("reload {id}"),
            Err(_) => format!("{key:02x?} (not a 16-byte reload id)"),
        },
        HISTORY => match (key.iter().position(|b| *b == 0), generation_of_key(key)) {
            (Some(at), Some(generation)) => format!(
                "{} generation {generation}",
                String::from_utf8_lossy(&key[..at])
            ),
            _ => format!("{key:02x?} (not a slot name, 0 and a generation)"),
        },
        _ => {
            if let Some(rest) = key.strip_prefix(PREFIX_BASE_RELOAD) {
                if let Ok(id) = ReloadId::from_slice(rest) {
                    return format!("base/reload/{id}");
                }
            }
            match std::str::from_utf8(key) {
                Ok(text) => format!("{text:?}"),
                Err(_) => format!("{key:02x?}"),
            }
        }
    }
}

/// Decodes a stored value of `tree` at `key`, naming both on failure.
pub(crate) fn decode_value<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, JournalError> {
    codec::decode(tree_value_name(tree, key), bytes).map_err(|source| corrupt(tree, key, source))
}

/// The first fields of a stored value (a prefix of its type, e.g. `(ReloadId, SlotName)`
/// of a reload view), the rest left unread; errors as [`decode_value`]'s.
pub(crate) fn decode_value_prefix<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, JournalError> {
    codec::decode_prefix(tree_value_name(tree, key), bytes)
        .map_err(|source| corrupt(tree, key, source))
}

fn corrupt(tree: &'static str, key: &[u8], source: codec::CodecError) -> JournalError {
    JournalError::CorruptValue {
        tree,
        key: describe_key(tree, key),
        source,
    }
}

fn tree_value_name(tree: &str, key: &[u8]) -> &'static str {
    match tree {
        SLOTS => "slot view",
        RELOADS => "reload view",
        EVENTS => "record",
        HISTORY => "history entry",
        _ if key.starts_with(PREFIX_BASE_SLOT) => "base slot view",
        _ if key.starts_with(PREFIX_BASE_RELOAD) => "base reload view",
        _ => "meta value",
    }
}

/// Encodes a value for storage.
pub(crate) fn encode_value<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, JournalError> {
    Ok(codec::encode(what, value)?)
}

/// A meta key and its encoded value.
pub(crate) type MetaEntry = (&'static [u8], Vec<u8>);

/// The journal-wide values in `meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub format: u16,
    pub next_seq: u64,
    pub last_chain: u32,
    pub base_seq: u64,
    pub base_chain: u32,
}

impl Meta {
    pub(crate) fn fresh() -> Meta {
        Meta {
            format: JOURNAL_FORMAT,
            next_seq: 1,
            last_chain: 0,
            base_seq: 0,
            base_chain: 0,
        }
    }

    /// The last sequence number given out (0: none).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Reads the meta values; `Ok(None)` if the journal has no format key at all.
    pub(crate) fn read(tree: &sled::Tree, dir: &Path) -> Result<Option<Meta>, JournalError> {
        let sled_err = |source| JournalError::Sled {
            dir: dir.to_path_buf(),
            source,
        };
        let Some(format) = tree.get(KEY_FORMAT).map_err(sled_err)? else {
            return Ok(None);
        };
        let format: u16 = decode_value(META, KEY_FORMAT, &format)?;
        // An older format is read (the caller converts it); a newer one is refused.
        if format == 0 || format > JOURNAL_FORMAT {
            return Err(JournalError::Format {
                dir: dir.to_path_buf(),
                found: format,
                supported: JOURNAL_FORMAT,
            });
        }
        let get = |key: &'static [u8]| -> Result<sled::IVec, JournalError> {
            tree.get(key)
                .map_err(sled_err)?
                .ok_or_else(|| JournalError::Corrupt {
                    dir: dir.to_path_buf(),
                    what: format!(
                        "tree `meta` has a format but no {:?} key",
                        String::from_utf8_lossy(key)
                    ),
                })
        };
        Ok(Some(Meta {
            format,
            next_seq: decode_value(META, KEY_NEXT_SEQ, &get(KEY_NEXT_SEQ)?)?,
            last_chain: decode_value(META, KEY_LAST_CHAIN, &get(KEY_LAST_CHAIN)?)?,
            base_seq: decode_value(META, KEY_BASE_SEQ, &get(KEY_BASE_SEQ)?)?,
            base_chain: decode_value(META, KEY_BASE_CHAIN, &get(KEY_BASE_CHAIN)?)?,
        }))
    }

    /// The (key, encoded value) pairs of every meta value.
    pub(crate) fn entries(&self) -> Result<Vec<MetaEntry>, JournalError> {
        Ok(vec![
            (KEY_FORMAT, encode_value("meta format", &self.format)?),
            (KEY_NEXT_SEQ, encode_value("meta next_seq", &self.next_seq)?),
            (
                KEY_LAST_CHAIN,
                encode_value("meta last_chain", &self.last_chain)?,
            ),
            (KEY_BASE_SEQ, encode_value("meta base_seq", &self.base_seq)?),
            (
                KEY_BASE_CHAIN,
                encode_value("meta base_chain", &self.base_chain)?,
            ),
        ])
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<JournalError>>;

/// Reads and decodes a value inside a transaction.
pub(crate) fn tx_get<T: DeserializeOwned>(
    tree: &TransactionalTree,
    name: &'static str,
    key: &[u8],
) -> TxResult<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(bytes) => decode_value(name, key, &bytes)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
    }
}

/// Reads a meta value that must exist inside a transaction.
pub(crate) fn tx_meta<T: DeserializeOwned>(
    meta: &TransactionalTree,
    key: &'static [u8],
    dir: &Path,
) -> TxResult<T> {
    tx_get(meta, META, key)?.ok_or_else(|| {
        ConflictableTransactionError::Abort(JournalError::Corrupt {
            dir: dir.to_path_buf(),
            what: format!("tree `meta` has no {:?} key", String::from_utf8_lossy(key)),
        })
    })
}

/// Reads a slot view inside a transaction.
pub(crate) fn tx_slot(slots: &TransactionalTree, name: &SlotName) -> TxResult<Option<SlotView>> {
    tx_get(slots, SLOTS, slot_key(name))
}

/// Reads one history entry inside a transaction.
pub(crate) fn tx_history(
    history: &TransactionalTree,
    name: &SlotName,
    generation: Generation,
) -> TxResult<Option<ArtifactRef>> {
    tx_get(history, HISTORY, &history_key(name, generation))
}

/// Reads a reload view inside a transaction.
pub(crate) fn tx_reload(
    reloads: &TransactionalTree,
    id: &ReloadId,
) -> TxResult<Option<ReloadView>> {
    tx_get(reloads, RELOADS, &reload_key(id))
}
