//! Verify: re-fold the events and compare with everything stored.

use std::collections::BTreeMap;

use tryswap_fsm::{check, ReloadId, SlotName};

use crate::codec;
use crate::error::JournalError;
use crate::journal::{lock, tail_findings, witness_findings};
use crate::layout::{
    decode_value, describe_key, generation_of_key, seq_of_key, Meta, EVENTS, HISTORY, META,
    PREFIX_BASE_RELOAD, PREFIX_BASE_SLOT, RELOADS, SLOTS, WITNESS_FILE,
};
use crate::projection::{BaseSlot, History, ReloadView, ReplayState, SlotView};
use crate::record::Record;
use crate::replay::slot_name_of;
use crate::report::{Problem, ProblemKind, VerifyReport};
use crate::segment_log::{LogDamage, LogItem, LogItems, LogReader, LOG_DIR};
use crate::witness;
use crate::Journal;

pub(crate) struct Findings(pub(crate) Vec<Problem>);

impl Findings {
    /// A problem of a file (or tree) as a whole, or of the record `seq` in it, with no slot
    /// or reload named.
    pub(crate) fn of_file(
        &mut self,
        kind: ProblemKind,
        file: &str,
        seq: Option<u64>,
        detail: impl Into<String>,
    ) {
        self.push(kind, file, seq, None, None, detail);
    }

    pub(crate) fn push(
        &mut self,
        kind: ProblemKind,
        tree: &str,
        seq: Option<u64>,
        slot: Option<SlotName>,
        reload: Option<ReloadId>,
        detail: impl Into<String>,
    ) {
        self.0.push(Problem {
            kind,
            tree: tree.to_owned(),
            seq,
            slot,
            reload,
            detail: detail.into(),
        });
    }
}

pub(crate) fn slot_differences(stored: &SlotView, folded: &SlotView) -> String {
    let mut parts = Vec::new();
    if stored.slot.active != folded.slot.active {
        parts.push("active marker");
    }
    if stored.slot.in_flight != folded.slot.in_flight {
        parts.push("in-flight reload");
    }
    if stored.slot.next_generation != folded.slot.next_generation {
        parts.push("next generation");
    }
    if stored.slot.retiring != folded.slot.retiring {
        parts.push("retiring generations");
    }
    if stored.slot.name != folded.slot.name {
        parts.push("name");
    }
    if stored.active_since != folded.active_since {
        parts.push("active_since");
    }
    if stored.updated != folded.updated {
        parts.push("updated");
    }
    format!(
        "stored projection differs from the fold of the events in: {}",
        parts.join(", ")
    )
}

pub(crate) fn reload_differences(stored: &ReloadView, folded: &ReloadView) -> String {
    let mut parts = Vec::new();
    if stored.reload.state != folded.reload.state {
        parts.push(format!(
            "state (stored {}, fold {})",
            stored.reload.state.name(),
            folded.reload.state.name()
        ));
    }
    if stored.reload != folded.reload && stored.reload.state == folded.reload.state {
        parts.push("reload facts".to_owned());
    }
    if stored.stages != folded.stages {
        parts.push("stage marks".to_owned());
    }
    if stored.created != folded.created {
        parts.push("created".to_owned());
    }
    if stored.finished != folded.finished {
        parts.push("finished".to_owned());
    }
    format!(
        "stored projection differs from the fold of the events in: {}",
        parts.join(", ")
    )
}

/// Checks the record stored at `seq`, after the compaction base, against the state before it — its
/// `prev_chain` against `prev_chain` (the chain value of the record before, `None` when it
/// is unknown) and that it is a legal transition — and folds it into `state`.
pub(crate) fn check_and_fold(
    state: &mut ReplayState,
    seq: u64,
    record: &Record,
    prev_chain: Option<u32>,
    found: &mut Findings,
) {
    let at = |found: &mut Findings, kind, detail: String| {
        let (slot, reload) = (Some(record.slot.clone()), Some(record.reload));
        found.push(kind, EVENTS, Some(seq), slot, reload, detail);
    };
    if let Some(chain_before) = prev_chain {
        if record.prev_chain != chain_before {
            at(
                found,
                ProblemKind::ChainBroken,
                format!(
                    "prev_chain {:#010x} but the record before has chain {chain_before:#010x}",
                    record.prev_chain
                ),
            );
        }
    }
    if let Err(illegal) = check(&*state, &record.event()) {
        at(
            found,
            ProblemKind::Illegal,
            format!(
                "{} is not a legal transition here: {illegal}",
                record.event.name()
            ),
        );
    }
    state.apply(record);
}

/// Reports every slot of the fold that has no projection.
pub(crate) fn missing_slots(folded: BTreeMap<SlotName, SlotView>, found: &mut Findings) {
    for name in folded.into_keys() {
        let detail = "events touch this slot but it has no projection";
        found.push(
            ProblemKind::ProjectionMissing,
            SLOTS,
            None,
            Some(name),
            None,
            detail,
        );
    }
}

/// Reports every reload of the fold that has no projection.
/// Compares every slot's stored history with the fold's, entry by entry.
pub(crate) fn history_differences(
    stored: &BTreeMap<SlotName, History>,
    folded: &BTreeMap<SlotName, History>,
    found: &mut Findings,
) {
    let empty = History::new();
    let names: std::collections::BTreeSet<&SlotName> = stored.keys().chain(folded.keys()).collect();
    for name in names {
        let stored = stored.get(name).unwrap_or(&empty);
        let folded = folded.get(name).unwrap_or(&empty);
        if stored == folded {
            continue;
        }
        let generations: std::collections::BTreeSet<_> =
            stored.keys().chain(folded.keys()).collect();
        for generation in generations {
            let (kind, detail) = match (stored.get(generation), folded.get(generation)) {
                (Some(a), Some(b)) if a == b => continue,
                (Some(_), Some(_)) => (
                    ProblemKind::ProjectionMismatch,
                    format!("generation {generation}: stored artifact differs from the fold's"),
                ),
                (Some(_), None) => (
                    ProblemKind::ProjectionExtra,
                    format!("generation {generation}: no event activated it"),
                ),
                (None, _) => (
                    ProblemKind::ProjectionMissing,
                    format!("generation {generation} was activated but has no history entry"),
                ),
            };
            found.push(kind, HISTORY, None, Some(name.clone()), None, detail);
        }
    }
}

pub(crate) fn missing_reloads(folded: BTreeMap<ReloadId, ReloadView>, found: &mut Findings) {
    for (id, view) in folded {
        let detail = "events create this reload but it has no projection";
        let slot = Some(view.reload.slot);
        found.push(
            ProblemKind::ProjectionMissing,
            RELOADS,
            None,
            slot,
            Some(id),
            detail,
        );
    }
}

impl Journal {
    /// Re-folds all events (from the compaction base snapshot) and compares the result with
    /// the stored projections; checks sequence continuity, chain values, that every
    /// record is a legal transition in the state before it, meta, and the witness.
    ///
    /// Damage is reported as [`Problem`]s, not errors; `Err` only when sled itself fails.
    /// Blocks writers while it runs.
    pub fn verify(&self) -> Result<VerifyReport, JournalError> {
        let _writer = lock(&self.writer);
        self.settle()?;
        let mut found = Findings(Vec::new());

        let meta = match Meta::read(&self.meta, &self.dir) {
            Ok(Some(meta)) => meta,
            Ok(None) => {
                if !self.events.is_empty() {
                    found.push(
                        ProblemKind::Meta,
                        META,
                        None,
                        None,
                        None,
                        "tree `meta` has no format version but `events` holds records",
                    );
                }
                Meta::fresh()
            }
            Err(e) => {
                found.push(ProblemKind::Meta, META, None, None, None, e.to_string());
                Meta::fresh()
            }
        };

        let mut state = self.verified_base(&meta, &mut found)?;
        // One pass over the log serves both the events check (a record whose bytes in sled
        // equal the log's is decoded once) and the log check after it.
        let mut log = LogCursor::open(&self.dir);
        let events_checked = self.verify_events(&meta, &mut state, &mut log, &mut found)?;
        self.verify_projections(state, &mut found)?;

        let witness_path = self.dir.join(WITNESS_FILE);
        let mut durable = None;
        match witness::read(&witness_path, &self.dir) {
            Ok(Some((mark, _))) => {
                durable = Some(mark.seq);
                for finding in witness_findings(&self.events, &meta, mark, &witness_path) {
                    found.push(
                        ProblemKind::Witness,
                        WITNESS_FILE,
                        Some(mark.seq),
                        None,
                        None,
                        finding,
                    );
                }
            }
            Ok(None) => found.push(
                ProblemKind::Witness,
                WITNESS_FILE,
                None,
                None,
                None,
                format!("witness file {} is missing", witness_path.display()),
            ),
            Err(e) => found.push(
                ProblemKind::Witness,
                WITNESS_FILE,
                None,
                None,
                None,
                e.to_string(),
            ),
        }
        self.verify_log(&meta, durable, log, &mut found);
        Ok(VerifyReport {
            events_checked,
            base_seq: meta.base_seq,
            last_seq: meta.last_seq(),
            problems: found.0,
        })
    }

    /// Reads the segment log through: damage is a problem, and so is a sled holding
    /// records the log does not (a sled behind the log is caught up by the next open for
    /// writing, not a problem).
    ///
    /// Not problems either, because a crash or a power loss leaves them and the next open
    /// for writing repairs them without losing anything durable: damage at the end of the
    /// last segment after `durable` (the witness's seq: an unflushed tail, which that open
    /// cuts), and a sled holding records after both `durable` and the log's end (sled's
    /// own flush got further than the log's unsynced tail; that open derives sled again).
    fn verify_log(&self, meta: &Meta, durable: Option<u64>, log: LogCursor, found: &mut Findings) {
        let (reader, mut items) = match log.log {
            Err(e) => {
                found.push(ProblemKind::Log, LOG_DIR, None, None, None, e);
                return;
            }
            Ok(None) => {
                found.push(
                    ProblemKind::Log,
                    LOG_DIR,
                    None,
                    None,
                    None,
                    "the journal has no log",
                );
                return;
            }
            Ok(Some(read)) => read,
        };
        let damage = log.damage.or_else(|| items.by_ref().find_map(Result::err));
        if let Some(damage) = damage {
            let unflushed_tail = durable.is_some_and(|d| damage.seq > d)
                && reader.segments().last() == Some(&damage.at.segment);
            if unflushed_tail {
                tracing::warn!(
                    dir = %self.dir.display(),
                    %damage,
                    "the log ends with an unflushed tail after its last durable point; the \
                     next open for writing cuts it"
                );
            } else {
                found.push(
                    ProblemKind::Log,
                    LOG_DIR,
                    Some(damage.seq),
                    None,
                    None,
                    damage.to_string(),
                );
                return;
            }
        }
        let (end, tip) = items.position();
        let sled_ahead_of_a_crash = durable.is_some_and(|d| tip.seq >= d);
        if tip.seq < meta.last_seq() && !sled_ahead_of_a_crash {
            found.push(
                ProblemKind::Log,
                LOG_DIR,
                Some(tip.seq + 1),
                None,
                None,
                format!(
                    "the log ends at seq {} (segment {}, byte {}) but sled holds records up to \
                     seq {}",
                    tip.seq,
                    end.segment,
                    end.offset,
                    meta.last_seq()
                ),
            );
        }
    }

    /// Loads the base snapshot, reporting damaged entries instead of failing.
    fn verified_base(
        &self,
        meta: &Meta,
        found: &mut Findings,
    ) -> Result<ReplayState, JournalError> {
        let mut state = ReplayState {
            seq: meta.base_seq,
            ..ReplayState::default()
        };
        for item in self.meta.scan_prefix(PREFIX_BASE_SLOT) {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let name = slot_name_of(&key[PREFIX_BASE_SLOT.len()..]);
            match decode_value::<BaseSlot>(META, &key, &bytes) {
                Ok(base) if Some(base.name()) == name.as_ref() => {
                    let (view, history) = base.split();
                    if !history.is_empty() {
                        state.history.insert(view.slot.name.clone(), history);
                    }
                    state.slots.insert(view.slot.name.clone(), view);
                }
                Ok(base) => found.push(
                    ProblemKind::Base,
                    META,
                    None,
                    Some(base.name().clone()),
                    None,
                    format!(
                        "key {} holds the view of slot {}",
                        describe_key(META, &key),
                        base.name()
                    ),
                ),
                Err(e) => found.push(ProblemKind::Base, META, None, name, None, e.to_string()),
            }
        }
        for item in self.meta.scan_prefix(PREFIX_BASE_RELOAD) {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let id = ReloadId::from_slice(&key[PREFIX_BASE_RELOAD.len()..]).ok();
            match decode_value::<ReloadView>(META, &key, &bytes) {
                Ok(view) if Some(view.reload.id) == id => {
                    state.reloads.insert(view.reload.id, view);
                }
                Ok(view) => found.push(
                    ProblemKind::Base,
                    META,
                    None,
                    Some(view.reload.slot.clone()),
                    Some(view.reload.id),
                    format!(
                        "key {} holds the view of reload {}",
                        describe_key(META, &key),
                        view.reload.id
                    ),
                ),
                Err(e) => found.push(ProblemKind::Base, META, None, None, id, e.to_string()),
            }
        }
        Ok(state)
    }

    /// Checks every record and folds those after the base into `state`.
    fn verify_events(
        &self,
        meta: &Meta,
        state: &mut ReplayState,
        log: &mut LogCursor,
        found: &mut Findings,
    ) -> Result<u64, JournalError> {
        let mut checked = 0u64;
        // The next seq expected after the base, and the chain value of the one before it
        // (`None` after a record that did not decode).
        let mut expected = meta.base_seq + 1;
        let mut prev_chain = Some(meta.base_chain);
        // Kept records before the base: the previous one's seq and chain.
        let mut kept_prev: Option<(u64, u32)> = None;
        for item in self.events.iter() {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let Some(seq) = seq_of_key(&key) else {
                found.push(
                    ProblemKind::Undecodable,
                    EVENTS,
                    None,
                    None,
                    None,
                    format!(
                        "key {} is not a sequence number",
                        describe_key(EVENTS, &key)
                    ),
                );
                continue;
            };
            let decoded = match log.same_record(seq, &bytes) {
                Some(decoded) => Ok(decoded),
                None => codec::decode_stored(&bytes),
            };
            if seq > meta.base_seq && seq != expected {
                found.push(
                    ProblemKind::Gap,
                    EVENTS,
                    Some(seq),
                    None,
                    None,
                    if seq > expected {
                        format!("records {expected}..={} are missing", seq - 1)
                    } else {
                        format!("expected seq {expected}")
                    },
                );
                prev_chain = None;
            }
            let (record, chain) = match decoded {
                Ok(decoded) => decoded,
                Err(e) => {
                    found.push(
                        ProblemKind::Undecodable,
                        EVENTS,
                        Some(seq),
                        None,
                        None,
                        e.to_string(),
                    );
                    if seq > meta.base_seq {
                        expected = seq + 1;
                        prev_chain = None;
                    } else {
                        kept_prev = None;
                    }
                    continue;
                }
            };
            checked += 1;
            if record.seq != seq {
                found.push(
                    ProblemKind::SeqMismatch,
                    EVENTS,
                    Some(seq),
                    Some(record.slot.clone()),
                    Some(record.reload),
                    format!("key seq {seq} holds the record of seq {}", record.seq),
                );
            }
            if seq <= meta.base_seq {
                if let Some((prev_seq, chain_before)) = kept_prev {
                    if prev_seq + 1 == seq && record.prev_chain != chain_before {
                        found.push(
                            ProblemKind::ChainBroken,
                            EVENTS,
                            Some(seq),
                            Some(record.slot.clone()),
                            Some(record.reload),
                            format!(
                                "prev_chain {:#010x} but seq {prev_seq} has chain {chain_before:#010x}",
                                record.prev_chain
                            ),
                        );
                    }
                }
                if seq == meta.base_seq && chain != meta.base_chain {
                    found.push(
                        ProblemKind::ChainBroken,
                        EVENTS,
                        Some(seq),
                        Some(record.slot.clone()),
                        Some(record.reload),
                        format!(
                            "chain {chain:#010x} but the compaction base records {:#010x}",
                            meta.base_chain
                        ),
                    );
                }
                kept_prev = Some((seq, chain));
                continue;
            }
            check_and_fold(state, seq, &record, prev_chain, found);
            expected = seq + 1;
            prev_chain = Some(chain);
        }
        let last = expected - 1;
        if last != meta.last_seq() {
            found.push(
                ProblemKind::Meta,
                META,
                Some(last),
                None,
                None,
                format!(
                    "events end at seq {last} but `meta` says {}",
                    meta.last_seq()
                ),
            );
        } else if let Some(chain) = prev_chain {
            if chain != meta.last_chain {
                found.push(
                    ProblemKind::Meta,
                    META,
                    Some(last),
                    None,
                    None,
                    format!(
                        "the last record has chain {chain:#010x} but `meta` says {:#010x}",
                        meta.last_chain
                    ),
                );
            }
        }
        for finding in tail_findings(&self.events, meta) {
            if !found.0.iter().any(|p| p.kind == ProblemKind::Meta) {
                found.push(ProblemKind::Meta, META, None, None, None, finding);
            }
        }
        Ok(checked)
    }

    /// Compares the stored projections with the fold.
    fn verify_projections(
        &self,
        mut state: ReplayState,
        found: &mut Findings,
    ) -> Result<(), JournalError> {
        for item in self.slots.iter() {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let name = slot_name_of(&key);
            let stored = match decode_value::<SlotView>(SLOTS, &key, &bytes) {
                Ok(stored) => stored,
                Err(e) => {
                    if let Some(name) = &name {
                        state.slots.remove(name);
                    }
                    found.push(
                        ProblemKind::Undecodable,
                        SLOTS,
                        None,
                        name,
                        None,
                        e.to_string(),
                    );
                    continue;
                }
            };
            match name.as_ref().and_then(|n| state.slots.remove(n)) {
                _ if name.as_ref() != Some(&stored.slot.name) => found.push(
                    ProblemKind::ProjectionMismatch,
                    SLOTS,
                    None,
                    Some(stored.slot.name.clone()),
                    None,
                    format!(
                        "key {} holds the view of slot {}",
                        describe_key(SLOTS, &key),
                        stored.slot.name
                    ),
                ),
                Some(folded) if folded == stored => {}
                Some(folded) => found.push(
                    ProblemKind::ProjectionMismatch,
                    SLOTS,
                    None,
                    name,
                    None,
                    slot_differences(&stored, &folded),
                ),
                None => found.push(
                    ProblemKind::ProjectionExtra,
                    SLOTS,
                    None,
                    name,
                    None,
                    "no event touches this slot",
                ),
            }
        }
        missing_slots(state.slots, found);
        for item in self.reloads.iter() {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let id = ReloadId::from_slice(&key).ok();
            let stored = match decode_value::<ReloadView>(RELOADS, &key, &bytes) {
                Ok(stored) => stored,
                Err(e) => {
                    if let Some(id) = &id {
                        state.reloads.remove(id);
                    }
                    found.push(
                        ProblemKind::Undecodable,
                        RELOADS,
                        None,
                        None,
                        id,
                        e.to_string(),
                    );
                    continue;
                }
            };
            let slot = Some(stored.reload.slot.clone());
            match id.and_then(|id| state.reloads.remove(&id)) {
                _ if id != Some(stored.reload.id) => found.push(
                    ProblemKind::ProjectionMismatch,
                    RELOADS,
                    None,
                    slot,
                    Some(stored.reload.id),
                    format!(
                        "key {} holds the view of reload {}",
                        describe_key(RELOADS, &key),
                        stored.reload.id
                    ),
                ),
                Some(folded) if folded == stored => {}
                Some(folded) => found.push(
                    ProblemKind::ProjectionMismatch,
                    RELOADS,
                    None,
                    slot,
                    id,
                    reload_differences(&stored, &folded),
                ),
                None => found.push(
                    ProblemKind::ProjectionExtra,
                    RELOADS,
                    None,
                    slot,
                    id,
                    "no event created this reload",
                ),
            }
        }
        missing_reloads(state.reloads, found);
        let mut stored: BTreeMap<SlotName, History> = BTreeMap::new();
        for item in self.history.iter() {
            let (key, bytes) = item.map_err(|e| self.sled_err(e))?;
            let name = key
                .iter()
                .position(|b| *b == 0)
                .and_then(|at| slot_name_of(&key[..at]));
            let entry = decode_value(HISTORY, &key, &bytes);
            match (name, generation_of_key(&key), entry) {
                (Some(name), Some(generation), Ok(artifact)) => {
                    stored.entry(name).or_default().insert(generation, artifact);
                }
                (name, _, Err(e)) => found.push(
                    ProblemKind::Undecodable,
                    HISTORY,
                    None,
                    name,
                    None,
                    e.to_string(),
                ),
                (name, _, Ok(_)) => found.push(
                    ProblemKind::Undecodable,
                    HISTORY,
                    None,
                    name,
                    None,
                    format!("malformed key {}", describe_key(HISTORY, &key)),
                ),
            }
        }
        history_differences(&stored, &state.history, found);
        Ok(())
    }
}

/// The log read alongside tree `events` during a verify.
pub(crate) struct LogCursor {
    /// The log and the read of its items; `Ok(None)` when the journal has no log, `Err`
    /// when its directory could not be listed.
    log: Result<Option<(LogReader, LogItems)>, String>,
    /// A record read ahead of sled's, with its chain value and its bytes.
    pending: Option<(Record, u32, Vec<u8>)>,
    /// The damage that ended the read.
    damage: Option<LogDamage>,
}

impl LogCursor {
    fn open(dir: &std::path::Path) -> LogCursor {
        let log = match LogReader::open(dir) {
            Err(e) => Err(e.to_string()),
            Ok(reader) if !reader.exists() => Ok(None),
            Ok(reader) => {
                let items = reader.items();
                Ok(Some((reader, items)))
            }
        };
        LogCursor {
            log,
            pending: None,
            damage: None,
        }
    }

    /// The log's record at `seq`, decoded, with its chain value, if the log holds exactly
    /// `stored` (sled's bytes) there; `None` otherwise (the caller decodes sled's bytes and
    /// judges them). Called with increasing `seq`; log records before `seq` are skipped.
    fn same_record(&mut self, seq: u64, stored: &[u8]) -> Option<(Record, u32)> {
        let Ok(Some((_, items))) = &mut self.log else {
            return None;
        };
        let (pending, damage) = (&mut self.pending, &mut self.damage);
        if let Some((record, ..)) = pending {
            if record.seq > seq {
                return None;
            }
            let (record, chain, bytes) = pending.take()?;
            if record.seq == seq {
                return (bytes == stored).then_some((record, chain));
            }
        }
        while damage.is_none() {
            let (record, chain) = match items.next()? {
                Ok(LogItem::Base(_)) => continue,
                Ok(LogItem::Kept(record)) => {
                    let chain = codec::stored_chain(items.last_record_bytes())?;
                    (record, chain)
                }
                Ok(LogItem::Record { record, chain, .. }) => (record, chain),
                Err(found) => {
                    *damage = Some(found);
                    break;
                }
            };
            match record.seq.cmp(&seq) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return (items.last_record_bytes() == stored).then_some((record, chain));
                }
                std::cmp::Ordering::Greater => {
                    let bytes = items.last_record_bytes().to_vec();
                    *pending = Some((record, chain, bytes));
                    return None;
                }
            }
        }
        None
    }
}
