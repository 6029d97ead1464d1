//! The one place that knows the byte encoding of everything the journal stores.
//!
//! Records, projections and meta values are encoded with bincode 2 (serde, standard config:
//! little-endian, varint integers) under an explicit size limit of [`LIMIT`] bytes, so a
//! corrupt length prefix can never make the decoder allocate more than that. Changing the
//! encoding (e.g. to postcard) touches this module only.
//!
//! A stored record is `bincode(Record) ++ crc32(bincode(Record))` with the CRC32 (IEEE,
//! `crc32fast`) as 4 big-endian bytes. That CRC is the record's *chain value*: the next
//! record carries it in `prev_chain`, so the CRC of every record covers its predecessor's.

use chrono::Datelike;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::record::{LegacyRecord, Record, LEGACY_RECORD_FORMAT, RECORD_FORMAT};

/// The largest encoded value (record, projection or meta value) the journal writes or reads.
pub const LIMIT: usize = 1 << 20;

/// Length of the CRC trailer of a stored record.
pub const CHAIN_LEN: usize = 4;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Why bytes could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// bincode refused to encode the value.
    #[error("cannot encode {what}: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// bincode's explanation.
        message: String,
    },
    /// The encoded value is larger than [`LIMIT`].
    #[error("encoded {what} is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// What was being encoded.
        what: &'static str,
        /// Its encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid encoding.
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// bincode's (or the type's) explanation.
        message: String,
    },
    /// The value decoded but bytes were left over.
    #[error("cannot decode {what}: {extra} unexpected trailing bytes")]
    Trailing {
        /// What was being decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A stored record is too short to even hold its checksum.
    #[error("stored record is {len} bytes, too short for its {CHAIN_LEN}-byte checksum")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The record's bytes do not match their CRC (a flipped or torn byte).
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC trailer as stored.
        stored: u32,
        /// The CRC of the stored bytes.
        computed: u32,
    },
    /// The record was written in a record format this build does not know.
    #[error(
        "record format {found} is not supported: this build reads formats 1 to {supported}; \
         the journal was written by a newer tryswap"
    )]
    UnknownFormat {
        /// The format the record declares.
        found: u16,
        /// The format this build reads.
        supported: u16,
    },
}

/// Encodes `value` with the journal's bincode configuration; `what` names it in errors.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode {
        what,
        message: e.to_string(),
    })?;
    if bytes.len() > LIMIT {
        return Err(CodecError::TooLarge {
            what,
            len: bytes.len(),
            limit: LIMIT,
        });
    }
    Ok(bytes)
}

/// Decodes a `T` that must use all of `bytes` (never more than [`LIMIT`] allocated); `what`
/// names it in errors.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(|e| {
            CodecError::Decode {
                what,
                message: e.to_string(),
            }
        })?;
    if used != bytes.len() {
        return Err(CodecError::Trailing {
            what,
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Decodes a `T` from the start of `bytes`, ignoring what follows (a format number read
/// before the whole value); `what` names it in errors.
pub fn decode_prefix<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map(|(value, _)| value)
        .map_err(|e| CodecError::Decode {
            what,
            message: e.to_string(),
        })
}

/// Encodes a record as it is stored: the bincode body followed by its CRC32 (big-endian).
///
/// The CRC is the record's chain value (see [`stored_chain`]).
/// Refuses records whose time RFC 3339 cannot carry (years outside 0000..=9999), so the
/// journal never writes a record it could not read back.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, CodecError> {
    let year = record.at.year();
    if !(0..=9999).contains(&year) {
        return Err(CodecError::Encode {
            what: "record",
            message: format!("time {} is outside the years 0000..=9999", record.at),
        });
    }
    let mut bytes = if record.format == LEGACY_RECORD_FORMAT {
        // A format-1 record read back from an old journal: its original bytes.
        encode("record", &LegacyRecord::from(record))?
    } else {
        encode("record", record)?
    };
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    Ok(bytes)
}

/// The chain value of a stored record: its CRC trailer, or `None` if it is too short.
///
/// This does not check the CRC; [`decode_record`] does.
pub fn stored_chain(stored: &[u8]) -> Option<u32> {
    let start = stored.len().checked_sub(CHAIN_LEN)?;
    let mut crc = [0u8; CHAIN_LEN];
    crc.copy_from_slice(&stored[start..]);
    Some(u32::from_be_bytes(crc))
}

/// Decodes a stored record and returns it with its chain value.
pub(crate) fn decode_stored(stored: &[u8]) -> Result<(Record, u32), CodecError> {
    let Some(body_len) = stored.len().checked_sub(CHAIN_LEN) else {
        return Err(CodecError::Truncated { len: stored.len() });
    };
    let body = &stored[..body_len];
    let chain = stored_chain(stored).ok_or(CodecError::Truncated { len: stored.len() })?;
    let computed = crc32fast::hash(body);
    if computed != chain {
        return Err(CodecError::Checksum {
            stored: chain,
            computed,
        });
    }
    // The format is the first field; read it alone so a future format is named as such
    // rather than reported as garbage.
    let (format, _) = bincode::serde::decode_from_slice::<u16, _>(body, config()).map_err(|e| {
        CodecError::Decode {
            what: "record format",
            message: e.to_string(),
        }
    })?;
    let record: Record = match format {
        RECORD_FORMAT => decode("record", body)?,
        LEGACY_RECORD_FORMAT => decode::<LegacyRecord>("record", body)?.into(),
        found => {
            return Err(CodecError::UnknownFormat {
                found,
                supported: RECORD_FORMAT,
            })
        }
    };
    Ok((record, chain))
}

/// Decodes a stored record (body + CRC trailer), checking its CRC and format.
///
/// Any byte string yields a record or an error: never a panic, and never an allocation
/// larger than [`LIMIT`].
pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    decode_stored(bytes).map(|(record, _)| record)
}
