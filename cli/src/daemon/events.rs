//! `GET /v1/events`: server-sent events of every journal record and keep-alive event.
//!
//! - `event: record`, `id: <seq>`, `data: <the record as JSON>` (exactly a line of
//!   `tryswap journal export`, plus the slot's stable `endpoint` on the records that move
//!   the active marker: `activated`, `activated_baking`, `reverted`, `relaunched`). Records come strictly in sequence order with no gap: a
//!   record that overtakes another on the live channel, or a lagging subscriber, is
//!   completed from the journal.
//! - `event: monitor`, `data: <MonitorEvent as JSON>` (crashes, restarts, health changes;
//!   live only: they are not journaled).
//!
//! Query parameters: `from=SEQ` starts with the journal's records from `SEQ`, sent at
//! once, then live ones (default: only what is appended after the request; a
//! `Last-Event-ID: SEQ` header resumes after `SEQ`); `follow=false` ends the stream once the records up
//! to the journal's end at request time are sent (no monitor events then); `slot=NAME`
//! and `reload=ID` filter. The stream also ends when the daemon shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::Event;
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tryswap::MonitorEvent;
use tryswap::Supervisor;
use tryswap_fsm::{EventKind, ReloadId, SlotName};
use tryswap_journal::Record;

/// Which events a subscriber wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this slot.
    pub slot: Option<SlotName>,
    /// Only records of this reload (no monitor events).
    pub reload: Option<ReloadId>,
}

impl Filter {
    fn record(&self, record: &Record) -> bool {
        self.slot.as_ref().is_none_or(|s| s == &record.slot)
            && self.reload.is_none_or(|r| r == record.reload)
    }

    fn monitor(&self, event: &MonitorEvent) -> bool {
        self.reload.is_none() && self.slot.as_ref().is_none_or(|s| s.as_str() == event.slot)
    }
}

struct Feed {
    supervisor: Supervisor,
    records: broadcast::Receiver<Record>,
    monitor: Option<broadcast::Receiver<MonitorEvent>>,
    /// The next record sequence number to deliver.
    next_seq: u64,
    /// Without follow: the last sequence number to deliver.
    until: Option<u64>,
    queue: VecDeque<Record>,
    filter: Filter,
    cancel: CancellationToken,
}

/// A record as an event: its `journal export` line, plus the slot's stable `endpoint` on
/// the records that move the active marker (a commit, a bake's start or revert, a
/// relaunch), so a caller following events knows where to dial without asking `status`.
fn record_event(supervisor: &Supervisor, record: &Record) -> Option<Event> {
    let moves_marker = matches!(
        record.event,
        EventKind::Activated
            | EventKind::ActivatedBaking { .. }
            | EventKind::Reverted { .. }
            | EventKind::Relaunched { .. }
    );
    let endpoint = moves_marker
        .then(|| supervisor.endpoint(&record.slot))
        .flatten();
    match crate::render::record_json(record, endpoint.as_deref()) {
        Ok(data) => Some(
            Event::default()
                .event("record")
                .id(record.seq.to_string())
                .data(data),
        ),
        Err(e) => {
            tracing::error!(seq = record.seq, error = %e.message, "encoding a record for the event stream");
            None
        }
    }
}

fn monitor_event(event: &MonitorEvent) -> Option<Event> {
    match serde_json::to_string(event) {
        Ok(data) => Some(Event::default().event("monitor").data(data)),
        Err(e) => {
            tracing::error!(error = %e, "encoding a monitor event for the event stream");
            None
        }
    }
}

async fn next_monitor(
    rx: &mut Option<broadcast::Receiver<MonitorEvent>>,
) -> Result<MonitorEvent, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Feed {
    /// Queues the journal's records from `next_seq` through `until`.
    fn fill(&mut self, until: u64) {
        if until < self.next_seq {
            return;
        }
        for record in self.supervisor.journal().events(self.next_seq) {
            match record {
                Ok(record) if record.seq > until => break,
                Ok(record) => self.queue.push_back(record),
                Err(e) => tracing::warn!(error = %e, "event stream skips an unreadable record"),
            }
        }
        if self.queue.is_empty() {
            // Compacted away (or unreadable): nothing to send below `until`.
            self.next_seq = until + 1;
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(record) = self.queue.pop_front() {
                if record.seq < self.next_seq {
                    continue;
                }
                self.next_seq = record.seq + 1;
                if self.filter.record(&record) {
                    if let Some(event) = record_event(&self.supervisor, &record) {
                        return Some(event);
                    }
                }
                continue;
            }
            if let Some(until) = self.until {
                if self.next_seq > until || self.cancel.is_cancelled() {
                    return None;
                }
                self.fill(until);
                continue;
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return None,
                received = self.records.recv() => match received {
                    Ok(record) => {
                        if record.seq < self.next_seq {
                            continue;
                        }
                        if record.seq > self.next_seq {
                            self.fill(record.seq - 1);
                        }
                        self.queue.push_back(record);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let last = self.supervisor.journal().last_seq();
                        self.fill(last);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                received = next_monitor(&mut self.monitor) => match received {
                    Ok(event) => {
                        if self.filter.monitor(&event) {
                            if let Some(event) = monitor_event(&event) {
                                return Some(event);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "event stream subscriber missed monitor events");
                    }
                    Err(broadcast::error::RecvError::Closed) => self.monitor = None,
                },
            }
        }
    }
}

/// The event stream of one subscriber. Subscribes at once (before returning), so nothing
/// appended after this call is missed.
pub fn stream(
    supervisor: Supervisor,
    monitor: Option<broadcast::Receiver<MonitorEvent>>,
    from: Option<u64>,
    follow: bool,
    filter: Filter,
    cancel: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let records = supervisor.subscribe();
    let last = supervisor.journal().last_seq();
    let mut feed = Feed {
        records,
        monitor: if follow { monitor } else { None },
        next_seq: from.map_or(last + 1, |f| f.max(1)),
        until: (!follow).then_some(last),
        queue: VecDeque::new(),
        filter,
        cancel,
        supervisor,
    };
    if follow && from.is_some() {
        // The backlog from `from` goes out at once, not with the next appended record.
        feed.fill(last);
    }
    futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    })
}
