//! The journal's error type.

use std::path::PathBuf;

use crate::codec::CodecError;

/// Everything that can go wrong with a journal. Messages name the directory, tree, key,
/// sequence number, slot or reload involved.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another live process (or another open handle in this process) holds the journal.
    #[error("journal {} is locked by {}", dir.display(), match pid {
        Some(pid) => format!("process {pid}"),
        None => "another process (pid unknown)".to_owned(),
    })]
    Locked {
        /// The journal directory.
        dir: PathBuf,
        /// The holder's pid as written in `journal.lock`, if readable.
        pid: Option<u32>,
    },
    /// The journal's files are damaged or inconsistent; nothing was changed.
    #[error("journal {} is corrupt: {what}", dir.display())]
    Corrupt {
        /// The journal directory.
        dir: PathBuf,
        /// What is wrong and what to do about it.
        what: String,
    },
    /// A stored value does not decode.
    #[error("corrupt value in tree `{tree}` at key {key}: {source}")]
    CorruptValue {
        /// The sled tree.
        tree: &'static str,
        /// The key, rendered for humans (`seq 12`, a slot name, a reload id, a meta key).
        key: String,
        /// Why it does not decode.
        source: CodecError,
    },
    /// The journal was written in a journal format this build does not read.
    #[error(
        "journal {} has format {found}; this build reads format {supported} only",
        dir.display()
    )]
    Format {
        /// The journal directory.
        dir: PathBuf,
        /// The format in `meta`.
        found: u16,
        /// The format this build reads.
        supported: u16,
    },
    /// The state machine refused the command; nothing was written.
    #[error("rejected: {0}")]
    Rejected(#[from] tryswap_fsm::Rejected),
    /// A value could not be encoded (e.g. larger than the codec limit); nothing was written.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// `replay` was asked for a point that compaction removed.
    #[error("cannot replay until seq {requested}: history before seq {base} was compacted")]
    Compacted {
        /// The sequence number asked for.
        requested: u64,
        /// The compaction base.
        base: u64,
    },
    /// The journal was opened for inspection only and cannot be written.
    #[error("journal {} was opened read-only for inspection; it cannot be written", dir.display())]
    ReadOnly {
        /// The journal directory.
        dir: PathBuf,
    },
    /// The operation needs sled's index, which this handle did not open (a
    /// [`crate::LogJournal`], opened from the log alone for a one-shot command).
    #[error("journal {}: {what} needs the journal's index, which this handle (opened from the log alone) did not open", dir.display())]
    NeedsIndex {
        /// The journal directory.
        dir: PathBuf,
        /// What was asked for.
        what: String,
    },

    /// Something the caller expected to exist is not in the journal.
    #[error("not in the journal: {0}")]
    Missing(String),
    /// A sync of the journal failed (or failed earlier in this process). Records committed
    /// since the last durable point may or may not be on disk, and the kernel may have
    /// dropped the pages it could not write, so a retried sync proves nothing: the handle
    /// refuses every write and flush until the journal is reopened (which verifies it) and
    /// recovery decides from what is on disk.
    #[error(
        "journal {} failed: {cause}; what is on disk is unknown until the journal is reopened \
         and verified (restart tryswap: its recovery does that)",
        dir.display()
    )]
    Failed {
        /// The journal directory.
        dir: PathBuf,
        /// The sync that failed, with the OS error.
        cause: String,
    },
    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// sled returned an error.
    #[error("sled error in journal {}: {source}", dir.display())]
    Sled {
        /// The journal directory.
        dir: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
}

impl JournalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        JournalError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether the error means the journal's data is damaged (as opposed to being busy,
    /// refusing a command, or an I/O failure): `tryswap journal verify` exits 4 on these.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            JournalError::Corrupt { .. } | JournalError::CorruptValue { .. }
        )
    }
}
