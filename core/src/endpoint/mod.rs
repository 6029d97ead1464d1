//! Stable endpoints for outside callers (DESIGN.md "Stable endpoints for outside callers").
//!
//! A unix-socket slot gets one path that never changes, `<state_dir>/endpoints/<slot>.sock`:
//! a symbolic link to the socket of the generation the journal's active marker names. The
//! marker is the truth and the link follows it: the supervisor re-points the link right
//! after it journals an event that moves the marker or changes the active generation's
//! process (`Activated`, `ActivatedBaking`, `Reverted`, `Relaunched`, `Stopped`), and
//! recovery repairs it. The link is replaced by one `rename(2)` of a freshly made link, so
//! a caller's `connect(2)` resolves either the old target or the new one, never nothing.
//!
//! A slot with no running active generation (stopped, crashed and not yet restarted, or a
//! tcp plugin) has no link: a caller fails fast with `ENOENT` instead of waiting on a
//! socket that nobody serves.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tryswap_fsm::{EventKind, Network, SlotName};
use tryswap_journal::Record;

use crate::supervisor::Supervisor;

pub(crate) mod drain;
pub mod leases;
pub mod tcp;

/// The directory of the stable endpoints, inside the state directory.
pub const ENDPOINTS_DIR: &str = "endpoints";

/// Re-pointing or removing a slot's endpoint link failed.
#[derive(Debug, thiserror::Error)]
#[error("slot {slot}: {op} the endpoint link {}: {source}", path.display())]
pub struct EndpointError {
    /// The slot.
    pub slot: SlotName,
    /// What was attempted.
    pub op: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

/// What [`point_link`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// The link already pointed where it should (or was already absent).
    Unchanged,
    /// The link now points to this socket path.
    Pointed(PathBuf),
    /// The link was removed: no running unix-socket generation.
    Removed,
}

/// The stable unix endpoint of `slot`: `<state_dir>/endpoints/<slot>.sock`.
pub fn unix_path(state_dir: &Path, slot: &SlotName) -> PathBuf {
    state_dir
        .join(ENDPOINTS_DIR)
        .join(format!("{}.sock", slot.as_str()))
}

/// Where the slot's link points now, if it exists.
pub fn link_target(state_dir: &Path, slot: &SlotName) -> Option<PathBuf> {
    std::fs::read_link(unix_path(state_dir, slot)).ok()
}

/// Makes the slot's link point to `target` (atomically: a new link, then `rename(2)` over
/// the old one), or removes it when `target` is `None`.
pub fn point_link(
    state_dir: &Path,
    slot: &SlotName,
    target: Option<&Path>,
) -> Result<LinkChange, EndpointError> {
    let link = unix_path(state_dir, slot);
    let err = |op: &'static str, path: &Path| {
        let slot = slot.clone();
        let path = path.to_path_buf();
        move |source| EndpointError {
            slot,
            op,
            path,
            source,
        }
    };
    let current = std::fs::read_link(&link).ok();
    let Some(target) = target else {
        return match std::fs::remove_file(&link) {
            Ok(()) => Ok(LinkChange::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LinkChange::Unchanged),
            Err(e) => Err(err("removing", &link)(e)),
        };
    };
    if current.as_deref() == Some(target) {
        return Ok(LinkChange::Unchanged);
    }
    let dir = state_dir.join(ENDPOINTS_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(err("creating the directory of", &dir))?;
    let temp = dir.join(format!(
        ".{}.sock.{}.tmp",
        slot.as_str(),
        std::process::id()
    ));
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("removing a stale temporary", &temp)(e)),
    }
    std::os::unix::fs::symlink(target, &temp).map_err(err("creating", &temp))?;
    std::fs::rename(&temp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        err("renaming into", &link)(e)
    })?;
    Ok(LinkChange::Pointed(target.to_path_buf()))
}

/// Whether an event can change where the slot's endpoint must point.
fn moves_endpoint(event: &EventKind) -> bool {
    matches!(
        event,
        EventKind::Activated
            | EventKind::ActivatedBaking { .. }
            | EventKind::Reverted { .. }
            | EventKind::Relaunched { .. }
            | EventKind::Stopped { .. }
    )
}

/// The socket the slot's link must point to, per the journal's active marker.
fn wanted_target(active: Option<&tryswap_fsm::Instance>) -> Option<PathBuf> {
    let active = active.filter(|a| a.running)?;
    let endpoint = active.endpoint.as_ref()?;
    (endpoint.network == Network::Unix).then(|| PathBuf::from(&endpoint.address))
}

impl Supervisor {
    /// Makes the slot's endpoint link follow the journal's active marker. Errors are
    /// logged: the marker is the truth, and the next re-point or recovery repairs the link.
    pub(crate) fn follow_marker(&self, slot: &SlotName) -> Option<LinkChange> {
        let active = match self.journal().slot(slot) {
            Ok(view) => view.and_then(|v| v.slot.active),
            Err(e) => {
                tracing::warn!(slot = %slot, error = %e, "reading the active marker for the endpoint link");
                return None;
            }
        };
        let target = wanted_target(active.as_ref());
        match point_link(self.state_dir(), slot, target.as_deref()) {
            Ok(change) => {
                if change != LinkChange::Unchanged {
                    tracing::info!(slot = %slot, ?change, "endpoint link follows the active marker");
                }
                Some(change)
            }
            Err(e) => {
                tracing::error!(error = %e, "endpoint link not re-pointed; recovery repairs it");
                None
            }
        }
    }

    /// Re-points the endpoint link of every slot whose marker `records` may have moved.
    pub(crate) fn follow_records(&self, records: &[Record]) {
        let mut done: Vec<&SlotName> = Vec::new();
        for record in records {
            if moves_endpoint(&record.event) && !done.contains(&&record.slot) {
                done.push(&record.slot);
                self.follow_marker(&record.slot);
            }
        }
    }

    /// Repairs every slot's endpoint link from the journal (recovery does this), and removes
    /// links of slots the journal does not know. Returns the slots whose link changed.
    pub fn repair_endpoints(&self) -> Vec<SlotName> {
        let mut changed = Vec::new();
        let mut known = Vec::new();
        match self.journal().slots() {
            Ok(views) => {
                for view in views {
                    let slot = view.slot.name.clone();
                    if let Some(change) = self.follow_marker(&slot) {
                        if change != LinkChange::Unchanged {
                            changed.push(slot.clone());
                        }
                    }
                    known.push(slot);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the slots to repair endpoint links");
                return changed;
            }
        }
        let dir = self.state_dir().join(ENDPOINTS_DIR);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let Some(slot) = name.strip_suffix(".sock") else {
                    continue;
                };
                // Temporary links a crash left behind start with a dot: no slot does.
                let leftover = match SlotName::new(slot) {
                    Ok(slot) => !known.contains(&slot),
                    Err(_) => name.starts_with('.'),
                };
                if leftover || name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        changed
    }

    /// The slot's stable endpoint as reported to callers: the unix link's path while it
    /// exists, else the slot's configured tcp `endpoint`.
    pub fn endpoint(&self, slot: &SlotName) -> Option<String> {
        let link = unix_path(self.state_dir(), slot);
        if std::fs::symlink_metadata(&link).is_ok() {
            return Some(link.display().to_string());
        }
        self.slot_config(slot)
            .and_then(|c| c.endpoint)
            .map(|a| a.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> SlotName {
        SlotName::new("demo").unwrap()
    }

    #[test]
    fn link_is_created_repointed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.sock");
        let b = dir.path().join("b.sock");
        assert_eq!(
            point_link(dir.path(), &slot(), Some(&a)).unwrap(),
            LinkChange::Pointed(a.clone())
        );
        assert_eq!(link_target(dir.path(), &slot()), Some(a.clone()));
        assert_eq!(
            point_link(dir.path(), &slot(), Some(&a)).unwrap(),
            LinkChange::Unchanged
        );
        assert_eq!(
            point_link(dir.path(), &slot(), Some(&b)).unwrap(),
            LinkChange::Pointed(b.clone())
        );
        assert_eq!(link_target(dir.path(), &slot()), Some(b));
        let names: Vec<_> = std::fs::read_dir(dir.path().join(ENDPOINTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("demo.sock")]);
        assert_eq!(
            point_link(dir.path(), &slot(), None).unwrap(),
            LinkChange::Removed
        );
        assert_eq!(link_target(dir.path(), &slot()), None);
        assert_eq!(
            point_link(dir.path(), &slot(), None).unwrap(),
            LinkChange::Unchanged
        );
    }

    #[test]
    fn only_running_unix_generations_get_a_link() {
        use tryswap_fsm::{ArtifactRef, Endpoint, Generation, Protocol, ReloadId, Sha256};
        let mut active = tryswap_fsm::Instance {
            generation: Generation(1),
            artifact: ArtifactRef {
                sha256: Sha256([0; 32]),
                config_sha256: None,
            },
            reload: ReloadId::from_u128(1),
            process: None,
            log_path: None,
            endpoint: Some(Endpoint {
                core_version: 1,
                app_version: 1,
                network: Network::Unix,
                address: "/x/plugin1".into(),
                protocol: Protocol::Grpc,
                server_cert: None,
            }),
            running: true,
        };
        assert_eq!(
            wanted_target(Some(&active)),
            Some(PathBuf::from("/x/plugin1"))
        );
        active.running = false;
        assert_eq!(wanted_target(Some(&active)), None);
        active.running = true;
        if let Some(e) = active.endpoint.as_mut() {
            e.network = Network::Tcp;
        }
        assert_eq!(wanted_target(Some(&active)), None);
        assert_eq!(wanted_target(None), None);
    }
}
