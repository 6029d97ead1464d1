//! Draining outside callers from a retiring generation (DESIGN.md "Draining outside
//! callers"): once the marker has moved away from it, a generation is stopped only when
//! the established connections of callers outside tryswap are gone (they follow the
//! endpoint to the new generation as they reconnect) or `drain_timeout` passes. Then the
//! driver stops it gracefully: go-plugin's `GRPCController/Shutdown` (GOAWAY: running calls
//! end, long-lived connections move on) or SIGTERM, and SIGKILL after `stop_timeout`.

use std::time::Duration;

use tokio::time::Instant;

use crate::driver::{Instance, StopOutcome};
use crate::supervisor::SlotRuntime;

/// How often the connections of a draining generation are counted.
const POLL: Duration = Duration::from_millis(20);

/// How a retired generation ended, as reload results and events say it.
pub(crate) fn ended(outcome: StopOutcome, left: usize) -> &'static str {
    match outcome {
        StopOutcome::Killed => "killed",
        _ if left > 0 => "timed_out",
        _ => "drained",
    }
}

/// Waits until no outside caller holds a connection to `instance` (per its driver) or
/// `deadline` passes; returns the connections left (0 when drained, or when the driver
/// cannot count them).
pub(crate) async fn wait_unconnected(
    rt: &SlotRuntime,
    instance: &Instance,
    deadline: Instant,
) -> usize {
    loop {
        let held = match rt.driver.outside_connections(instance) {
            Some(n) => n,
            None => return 0,
        };
        if held == 0 {
            return 0;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                generation = instance.generation.0,
                held,
                "drain timeout passed with outside connections still open; stopping anyway"
            );
            return held;
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_names_how_the_generation_went() {
        assert_eq!(ended(StopOutcome::Graceful, 0), "drained");
        assert_eq!(ended(StopOutcome::AlreadyGone, 0), "drained");
        assert_eq!(ended(StopOutcome::Graceful, 2), "timed_out");
        assert_eq!(ended(StopOutcome::Killed, 0), "killed");
    }
}
