//! The failed state of a journal handle, shared by every [`crate::JournalStore`]: once a
//! sync fails (or a caller says one did), every later write and flush is refused with
//! [`JournalError::Failed`] until the journal is reopened, and the first cause is kept.

use std::path::Path;
use std::sync::Mutex;

use crate::error::JournalError;

/// Why the handle failed, once it did.
#[derive(Debug, Default)]
pub(crate) struct HandleFailure(Mutex<Option<String>>);

impl HandleFailure {
    fn cause_slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the handle of the journal in `dir` failed (keeping an earlier cause) and
    /// returns the error every later write gets.
    pub(crate) fn fail(&self, dir: &Path, cause: &str) -> JournalError {
        let cause = self
            .cause_slot()
            .get_or_insert_with(|| cause.to_owned())
            .clone();
        tracing::error!(dir = %dir.display(), %cause, "journal failed: refusing writes until it is reopened");
        JournalError::Failed {
            dir: dir.to_path_buf(),
            cause,
        }
    }

    /// `Ok` unless the handle failed.
    pub(crate) fn check(&self, dir: &Path) -> Result<(), JournalError> {
        match self.cause_slot().as_ref() {
            Some(cause) => Err(JournalError::Failed {
                dir: dir.to_path_buf(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Why the handle failed, if it did.
    pub(crate) fn cause(&self) -> Option<String> {
        self.cause_slot().clone()
    }
}
