//! The keep-alive policy of one slot, free of I/O and clocks: what it saw goes in as an
//! [`Event`] with the time, what to do comes out as [`Action`]s (journal a crash, restart,
//! report, emit an event). The executor in `keepalive/mod.rs` reads the journal and the
//! driver, takes the slot's lock and performs the actions.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;
use tryswap_fsm::{Generation, Reason};

use crate::config::{RestartConfig, RestartPolicy};
use crate::keepalive::{KeepAliveState, MonitorEventKind};

/// A restart the keep-alive waits to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The generation to bring back.
    pub(crate) generation: Generation,
    /// When it is due.
    pub(crate) due: Instant,
    /// The slot's stop count when it was scheduled: a `stop` since cancels it.
    pub(crate) stop_epoch: u64,
    /// 1 for the first attempt after a crash.
    pub(crate) attempt: u32,
}

/// What the keep-alive saw.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// The slot has no active generation.
    NoActive,
    /// The active generation runs.
    Running {
        /// Its generation.
        generation: Generation,
        /// Its pid.
        pid: Option<u32>,
    },
    /// Under the slot's lock: the active generation, journaled running, is gone.
    Crashed {
        /// Its generation.
        generation: Generation,
        /// The process that died.
        pid: Option<u32>,
        /// How it exited, if this process saw it (only a child's parent does).
        exit: Option<ExitStatus>,
        /// The slot's restart settings (`None`: slots registered in code never restart).
        restart: Option<&'a RestartConfig>,
        /// The slot's stop count now.
        stop_epoch: u64,
    },
    /// Under the slot's lock: the active generation (not a baking candidate) still runs
    /// but its periodic probe reached `failure_threshold` (liveness).
    Unhealthy {
        /// Its generation.
        generation: Generation,
        /// Its process.
        pid: Option<u32>,
        /// The last probe error.
        error: String,
        /// The slot's restart settings (`None`: slots registered in code never restart).
        restart: Option<&'a RestartConfig>,
        /// The slot's stop count now.
        stop_epoch: u64,
    },
    /// The active generation is journaled as not running.
    Down {
        /// Its generation.
        generation: Generation,
        /// The slot's restart settings.
        restart: Option<&'a RestartConfig>,
        /// The slot's stop count now.
        stop_epoch: u64,
    },
    /// A restart could not run now (the slot was busy, the journal unreadable): keep it.
    RestartDeferred(Pending),
    /// A restart brought the generation back.
    Restarted {
        /// The restart made.
        pending: Pending,
        /// The new process.
        pid: Option<u32>,
    },
    /// A restart failed.
    RestartFailed {
        /// The restart tried.
        pending: Pending,
        /// Why.
        error: String,
        /// The slot's restart settings.
        restart: &'a RestartConfig,
        /// The slot's stop count now.
        stop_epoch: u64,
    },
}

/// What the keep-alive does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Clean up after the crashed generation and journal it `Stopped` with `reason`.
    JournalCrash {
        /// The generation.
        generation: Generation,
        /// How it ended, and what follows.
        reason: Reason,
    },
    /// Relaunch the generation now, under the slot's lock, unless it runs again, the slot
    /// was stopped since `stop_epoch`, or the monitor is stopping. Answer with
    /// [`Event::Restarted`], [`Event::RestartFailed`] or [`Event::RestartDeferred`].
    Restart(Pending),
    /// Publish a keep-alive event.
    Emit(MonitorEventKind),
    /// Update the slot's reported health.
    Report(Report),
}

/// A change of the slot's reported health (`GET /v1/monitor`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// No active generation.
    Idle,
    /// The active generation runs.
    Running {
        /// What the keep-alive is doing.
        state: KeepAliveState,
        /// The generation.
        generation: Generation,
        /// Its pid.
        pid: Option<u32>,
        /// Crashes and failed restarts since it last ran stably.
        failures: u32,
    },
    /// Not running and not restarted.
    Stopped {
        /// The generation, when newly known.
        generation: Option<Generation>,
    },
    /// A restart is scheduled after `delay`.
    Scheduled {
        /// What the keep-alive is doing.
        state: KeepAliveState,
        /// The backoff delay.
        delay: Duration,
        /// Crashes and failed restarts in a row.
        failures: u32,
    },
    /// A crash or failed restart was counted.
    Failed {
        /// Crashes and failed restarts in a row.
        failures: u32,
        /// What happened.
        error: String,
    },
    /// A restart succeeded.
    Restarted {
        /// What the keep-alive is doing.
        state: KeepAliveState,
        /// The new process.
        pid: Option<u32>,
    },
}

/// The backoff before restart attempt number `failures` (1-based): `backoff_initial`,
/// doubled per further failure, capped at `backoff_max`.
pub(crate) fn backoff(restart: &RestartConfig, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    restart
        .backoff_initial
        .saturating_mul(1u32 << doublings)
        .min(restart.backoff_max)
}

/// One slot's keep-alive policy: crash counting, backoff, the pending restart, stability.
#[derive(Debug)]
pub(crate) struct Policy {
    stable_after: Duration,
    failing_after: u32,
    failures: u32,
    pending: Option<Pending>,
    up_since: Option<(Generation, Instant)>,
    crashed_before: Option<Generation>,
}

impl Policy {
    /// A policy that resets the backoff after `stable_after` up, reports failing after
    /// `failing_after` failures in a row, and treats `crashed_before` (a generation whose
    /// crash an earlier process journaled) as crashed.
    pub(crate) fn new(
        stable_after: Duration,
        failing_after: u32,
        crashed_before: Option<Generation>,
    ) -> Policy {
        Policy {
            stable_after,
            failing_after,
            failures: 0,
            pending: None,
            up_since: None,
            crashed_before,
        }
    }

    /// What to do about `event`, seen at `now`.
    pub(crate) fn handle(&mut self, event: Event<'_>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::NoActive => {
                self.pending = None;
                actions.push(Action::Report(Report::Idle));
            }
            Event::Running { generation, pid } => self.running(generation, pid, now, &mut actions),
            Event::Crashed {
                generation,
                pid,
                exit,
                restart,
                stop_epoch,
            } => self.crashed(
                generation,
                pid,
                exit,
                restart,
                stop_epoch,
                now,
                &mut actions,
            ),
            Event::Unhealthy {
                generation,
                pid,
                error,
                restart,
                stop_epoch,
            } => {
                // Kubernetes liveness: restarted under `on-failure` and `always`.
                if let Some(restart) = restart.filter(|r| r.policy != RestartPolicy::Never) {
                    let pid_text = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
                    let reason = Reason::error(format!(
                        "generation {generation}{pid_text} failed its liveness probe and was \
                         stopped to be restarted: {error}"
                    ));
                    let message = reason.message.clone();
                    actions.push(Action::JournalCrash { generation, reason });
                    self.up_since = None;
                    actions.push(Action::Emit(MonitorEventKind::UnhealthyRestart {
                        generation: generation.0,
                        pid,
                        error,
                    }));
                    self.failed(generation, message, &mut actions);
                    self.schedule(restart, generation, 1, stop_epoch, now, &mut actions);
                }
            }
            Event::Down {
                generation,
                restart,
                stop_epoch,
            } => self.down(generation, restart, stop_epoch, now, &mut actions),
            Event::RestartDeferred(pending) => self.pending = Some(pending),
            Event::Restarted { pending, pid } => {
                self.up_since = Some((pending.generation, now));
                actions.push(Action::Report(Report::Restarted {
                    state: self.state_now(),
                    pid,
                }));
                actions.push(Action::Emit(MonitorEventKind::Restarted {
                    generation: pending.generation.0,
                    pid,
                    attempt: pending.attempt,
                }));
            }
            Event::RestartFailed {
                pending,
                error,
                restart,
                stop_epoch,
            } => {
                actions.push(Action::Emit(MonitorEventKind::RestartFailed {
                    generation: pending.generation.0,
                    attempt: pending.attempt,
                    error: error.clone(),
                }));
                self.failed(pending.generation, error, &mut actions);
                let next = pending.attempt + 1;
                self.schedule(
                    restart,
                    pending.generation,
                    next,
                    stop_epoch,
                    now,
                    &mut actions,
                );
            }
        }
        actions
    }

    fn state_now(&self) -> KeepAliveState {
        if self.failures >= self.failing_after {
            KeepAliveState::Failing
        } else if self.pending.is_some() {
            KeepAliveState::Restarting
        } else {
            KeepAliveState::Running
        }
    }

    fn schedule(
        &mut self,
        restart: &RestartConfig,
        generation: Generation,
        attempt: u32,
        stop_epoch: u64,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let delay = backoff(restart, self.failures.max(1));
        self.pending = Some(Pending {
            generation,
            due: now + delay,
            stop_epoch,
            attempt,
        });
        actions.push(Action::Report(Report::Scheduled {
            state: self.state_now(),
            delay,
            failures: self.failures,
        }));
        actions.push(Action::Emit(MonitorEventKind::RestartScheduled {
            generation: generation.0,
            attempt,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }));
    }

    /// Counts a crash or failed restart; reports the slot failing when it crosses the
    /// threshold.
    fn failed(&mut self, generation: Generation, error: String, actions: &mut Vec<Action>) {
        self.failures = self.failures.saturating_add(1);
        actions.push(Action::Report(Report::Failed {
            failures: self.failures,
            error,
        }));
        if self.failures == self.failing_after {
            actions.push(Action::Emit(MonitorEventKind::Failing {
                generation: generation.0,
                consecutive_failures: self.failures,
            }));
        }
    }

    /// The active generation runs: track how long, reset the backoff once it is stable.
    fn running(
        &mut self,
        generation: Generation,
        pid: Option<u32>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.pending = None;
        match self.up_since {
            Some((g, since)) if g == generation => {
                if self.failures > 0 && now.duration_since(since) >= self.stable_after {
                    let was_failing = self.failures >= self.failing_after;
                    self.failures = 0;
                    if was_failing {
                        actions.push(Action::Emit(MonitorEventKind::Stable {
                            generation: generation.0,
                        }));
                    }
                }
            }
            _ => self.up_since = Some((generation, now)),
        }
        actions.push(Action::Report(Report::Running {
            state: self.state_now(),
            generation,
            pid,
            failures: self.failures,
        }));
    }

    /// The journal says the active generation runs, but it does not: journal the crash
    /// and schedule a restart per the policy.
    #[allow(clippy::too_many_arguments)]
    fn crashed(
        &mut self,
        generation: Generation,
        pid: Option<u32>,
        exit: Option<ExitStatus>,
        restart: Option<&RestartConfig>,
        stop_epoch: u64,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let exit_text = exit.map_or_else(|| "exit status unknown".to_owned(), |s| s.to_string());
        let failed = exit.is_none_or(|s| !s.success());
        let policy = restart.map(|r| r.policy);
        let restarts = match policy {
            None | Some(RestartPolicy::Never) => false,
            Some(RestartPolicy::Always) => true,
            Some(RestartPolicy::OnFailure) => failed,
        };
        let pid_text = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
        let reason = if failed {
            Reason::error(format!(
                "generation {generation}{pid_text} exited unexpectedly: {exit_text}"
            ))
        } else if restarts {
            Reason::error(format!(
                "generation {generation}{pid_text} exited ({exit_text}); restart policy always"
            ))
        } else {
            Reason::cancelled(format!(
                "generation {generation}{pid_text} exited ({exit_text}); restart policy {} does not restart it",
                policy.unwrap_or(RestartPolicy::Never).name()
            ))
        };
        let message = reason.message.clone();
        actions.push(Action::JournalCrash { generation, reason });
        self.up_since = None;
        actions.push(Action::Emit(MonitorEventKind::Crashed {
            generation: generation.0,
            pid,
            exit: exit_text,
            restart: restarts,
        }));
        self.failed(generation, message, actions);
        match restart.filter(|_| restarts) {
            Some(restart) => self.schedule(restart, generation, 1, stop_epoch, now, actions),
            None => {
                self.pending = None;
                actions.push(Action::Report(Report::Stopped { generation: None }));
            }
        }
    }

    /// The active generation is journaled as not running.
    fn down(
        &mut self,
        generation: Generation,
        restart: Option<&RestartConfig>,
        stop_epoch: u64,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.up_since = None;
        let restart = restart.filter(|r| r.policy != RestartPolicy::Never);
        let Some(pending) = &self.pending else {
            // Crashed before this monitor started (e.g. a relaunch on recovery failed)?
            let crashed = self.crashed_before.take() == Some(generation);
            match restart.filter(|_| crashed) {
                Some(restart) => {
                    self.failures = self.failures.max(1);
                    self.schedule(restart, generation, 1, stop_epoch, now, actions);
                }
                None => actions.push(Action::Report(Report::Stopped {
                    generation: Some(generation),
                })),
            }
            return;
        };
        let superseded = pending.generation != generation || pending.stop_epoch != stop_epoch;
        if restart.is_none() || superseded {
            self.pending = None;
            actions.push(Action::Report(Report::Stopped { generation: None }));
            return;
        }
        if now >= pending.due {
            if let Some(pending) = self.pending.take() {
                actions.push(Action::Restart(pending));
            }
        }
    }
}

/// A change of the periodic probe's verdict on the active generation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HealthChange {
    /// A new generation (or none): no verdict yet.
    Reset,
    /// The probe reached its success threshold.
    Healthy(Generation),
    /// The probe reached its failure threshold.
    Unhealthy(Generation, String),
}

/// The periodic probe's thresholds for one slot: consecutive successes and failures of the
/// current generation, and the verdict last reported.
#[derive(Debug, Default)]
pub(crate) struct Health {
    current: Option<Generation>,
    healthy: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Health {
    /// No generation runs: forget the verdict.
    pub(crate) fn gone(&mut self) -> Option<HealthChange> {
        self.current.take()?;
        self.healthy = None;
        Some(HealthChange::Reset)
    }

    /// `generation` is about to be probed: a new one starts without a verdict.
    pub(crate) fn probing(&mut self, generation: Generation) -> Option<HealthChange> {
        if self.current == Some(generation) {
            return None;
        }
        *self = Health {
            current: Some(generation),
            ..Health::default()
        };
        Some(HealthChange::Reset)
    }

    /// One probe result of the current generation, against the slot's thresholds.
    pub(crate) fn probed(
        &mut self,
        result: Result<(), String>,
        success_threshold: u32,
        failure_threshold: u32,
    ) -> Option<HealthChange> {
        let generation = self.current?;
        match result {
            Ok(()) => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                (self.healthy != Some(true) && self.successes >= success_threshold).then(|| {
                    self.healthy = Some(true);
                    HealthChange::Healthy(generation)
                })
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                (self.healthy != Some(false) && self.failures >= failure_threshold).then(|| {
                    self.healthy = Some(false);
                    HealthChange::Unhealthy(generation, error)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    const G: Generation = Generation(4);

    fn restart(policy: RestartPolicy) -> RestartConfig {
        RestartConfig {
            policy,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_millis(1500),
        }
    }

    fn policy() -> Policy {
        Policy::new(Duration::from_secs(10), 3, None)
    }

    fn killed() -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(9)) // killed by SIGKILL
    }

    fn crash<'a>(restart: &'a RestartConfig, epoch: u64) -> Event<'a> {
        Event::Crashed {
            generation: G,
            pid: Some(42),
            exit: killed(),
            restart: Some(restart),
            stop_epoch: epoch,
        }
    }

    fn clean_exit(restart: &RestartConfig) -> Event<'_> {
        Event::Crashed {
            generation: G,
            pid: None,
            exit: Some(ExitStatus::from_raw(0)),
            restart: Some(restart),
            stop_epoch: 0,
        }
    }

    fn down(restart: &RestartConfig, epoch: u64) -> Event<'_> {
        Event::Down {
            generation: G,
            restart: Some(restart),
            stop_epoch: epoch,
        }
    }

    fn restarts(actions: &[Action]) -> Vec<&Pending> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Restart(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn delays(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(MonitorEventKind::RestartScheduled { delay_ms, .. }) => {
                    Some(*delay_ms)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn backoff_doubles_from_the_initial_delay_and_caps_at_the_maximum() {
        let r = restart(RestartPolicy::OnFailure);
        let delays: Vec<u128> = (1..=7).map(|n| backoff(&r, n).as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1500, 1500, 1500, 1500]);
        assert_eq!(backoff(&r, 0).as_millis(), 200);
        assert_eq!(backoff(&r, u32::MAX).as_millis(), 1500);
    }

    #[test]
    fn a_crash_is_journaled_then_restarted_once_the_backoff_passed() {
        let r = restart(RestartPolicy::OnFailure);
        let mut p = policy();
        let t0 = Instant::now();
        let actions = p.handle(crash(&r, 0), t0);
        assert!(
            matches!(&actions[0], Action::JournalCrash { generation, reason } if *generation == G && reason.message.contains("exited unexpectedly")),
            "{actions:?}"
        );
        assert_eq!(delays(&actions), [200]);
        // Not yet due: nothing happens.
        let early = p.handle(down(&r, 0), t0 + Duration::from_millis(199));
        assert!(restarts(&early).is_empty(), "{early:?}");
        let due = p.handle(down(&r, 0), t0 + Duration::from_millis(200));
        assert_eq!(restarts(&due).len(), 1, "{due:?}");
        assert_eq!(restarts(&due)[0].attempt, 1);
    }

    fn unhealthy(restart: &RestartConfig) -> Event<'_> {
        Event::Unhealthy {
            generation: G,
            pid: Some(42),
            error: "NOT_SERVING".into(),
            restart: Some(restart),
            stop_epoch: 0,
        }
    }

    #[test]
    fn a_failed_liveness_probe_stops_and_restarts_with_backoff_unless_the_policy_is_never() {
        for policy in [RestartPolicy::OnFailure, RestartPolicy::Always] {
            let r = restart(policy);
            let mut p = self::policy();
            let t0 = Instant::now();
            let actions = p.handle(unhealthy(&r), t0);
            assert!(
                matches!(&actions[0], Action::JournalCrash { generation, reason } if *generation == G && reason.message.contains("liveness probe")),
                "{actions:?}"
            );
            assert!(
                actions
                    .iter()
                    .any(|a| matches!(a, Action::Emit(MonitorEventKind::UnhealthyRestart { .. }))),
                "{actions:?}"
            );
            assert_eq!(delays(&actions), [200]);
            let due = p.handle(down(&r, 0), t0 + Duration::from_millis(200));
            assert_eq!(restarts(&due).len(), 1, "{due:?}");
            // A second liveness failure after the restart backs off further.
            let again = p.handle(unhealthy(&r), t0 + Duration::from_secs(1));
            assert_eq!(delays(&again), [400]);
        }
        let never = restart(RestartPolicy::Never);
        assert!(policy()
            .handle(unhealthy(&never), Instant::now())
            .is_empty());
    }

    #[test]
    fn failed_restarts_back_off_and_the_slot_is_failing_after_n() {
        let r = restart(RestartPolicy::Always);
        let mut p = policy();
        let mut now = Instant::now();
        let mut all = p.handle(crash(&r, 0), now);
        for _ in 0..4 {
            now += Duration::from_secs(2);
            let due = p.handle(down(&r, 0), now);
            let pending = restarts(&due)[0].clone();
            all.extend(p.handle(
                Event::RestartFailed {
                    pending,
                    error: "no handshake".into(),
                    restart: &r,
                    stop_epoch: 0,
                },
                now,
            ));
        }
        assert_eq!(delays(&all), [200, 400, 800, 1500, 1500]);
        let failing: Vec<_> = all
            .iter()
            .filter(|a| matches!(a, Action::Emit(MonitorEventKind::Failing { .. })))
            .collect();
        assert_eq!(failing.len(), 1, "failing is reported once: {all:?}");
        assert_eq!(p.state_now(), KeepAliveState::Failing);
    }

    #[test]
    fn a_stop_cancels_a_pending_restart() {
        let r = restart(RestartPolicy::OnFailure);
        let mut p = policy();
        let t0 = Instant::now();
        p.handle(crash(&r, 0), t0);
        // The operator stopped the slot (the stop count moved) before the restart was due.
        let later = p.handle(down(&r, 1), t0 + Duration::from_secs(5));
        assert!(restarts(&later).is_empty(), "{later:?}");
        assert_eq!(
            later,
            [Action::Report(Report::Stopped { generation: None })]
        );
        let again = p.handle(down(&r, 1), t0 + Duration::from_secs(10));
        assert!(restarts(&again).is_empty(), "{again:?}");
    }

    #[test]
    fn policy_never_journals_the_crash_and_schedules_nothing() {
        let r = restart(RestartPolicy::Never);
        let mut p = policy();
        let actions = p.handle(crash(&r, 0), Instant::now());
        assert!(delays(&actions).is_empty(), "{actions:?}");
        let clean = clean_exit(&r);
        let actions = p.handle(clean, Instant::now());
        assert!(
            matches!(&actions[0], Action::JournalCrash { reason, .. } if reason.message.contains("restart policy never")),
            "{actions:?}"
        );
        assert_eq!(
            actions.last(),
            Some(&Action::Report(Report::Stopped { generation: None }))
        );
    }

    #[test]
    fn a_clean_exit_is_not_restarted_on_failure_only() {
        let r = restart(RestartPolicy::OnFailure);
        let mut p = policy();
        let actions = p.handle(clean_exit(&r), Instant::now());
        assert!(delays(&actions).is_empty(), "{actions:?}");
    }

    #[test]
    fn a_deferred_restart_is_retried_and_a_stable_run_resets_the_backoff() {
        let r = restart(RestartPolicy::OnFailure);
        let mut p = policy();
        let t0 = Instant::now();
        p.handle(crash(&r, 0), t0);
        let due = p.handle(down(&r, 0), t0 + Duration::from_secs(1));
        let pending = restarts(&due)[0].clone();
        p.handle(Event::RestartDeferred(pending), t0 + Duration::from_secs(1));
        let due = p.handle(down(&r, 0), t0 + Duration::from_secs(2));
        let pending = restarts(&due)[0].clone();
        let up = t0 + Duration::from_secs(2);
        p.handle(
            Event::Restarted {
                pending,
                pid: Some(7),
            },
            up,
        );
        let running = Event::Running {
            generation: G,
            pid: Some(7),
        };
        p.handle(running, up + Duration::from_secs(9));
        assert_eq!(p.failures, 1, "not stable yet");
        let running = Event::Running {
            generation: G,
            pid: Some(7),
        };
        p.handle(running, up + Duration::from_secs(10));
        assert_eq!(p.failures, 0, "stable: backoff reset");
        assert_eq!(
            delays(&p.handle(crash(&r, 0), up + Duration::from_secs(11))),
            [200]
        );
    }

    #[test]
    fn a_crash_journaled_by_an_earlier_process_is_restarted() {
        let r = restart(RestartPolicy::OnFailure);
        let mut p = Policy::new(Duration::from_secs(10), 3, Some(G));
        let actions = p.handle(down(&r, 0), Instant::now());
        assert_eq!(delays(&actions), [200], "{actions:?}");
        // Only once: the next look sees the pending restart, not a new crash.
        let mut q = Policy::new(Duration::from_secs(10), 3, None);
        let actions = q.handle(down(&r, 0), Instant::now());
        assert_eq!(
            actions,
            [Action::Report(Report::Stopped {
                generation: Some(G)
            })]
        );
    }

    #[test]
    fn probe_failures_report_unhealthy_once_at_the_threshold_and_healthy_again() {
        let mut h = Health::default();
        assert_eq!(h.probing(G), Some(HealthChange::Reset));
        assert_eq!(h.probed(Ok(()), 1, 3), Some(HealthChange::Healthy(G)));
        assert_eq!(h.probed(Ok(()), 1, 3), None, "reported once");
        assert_eq!(h.probed(Err("refused".into()), 1, 3), None);
        assert_eq!(h.probed(Err("refused".into()), 1, 3), None);
        assert_eq!(
            h.probed(Err("refused".into()), 1, 3),
            Some(HealthChange::Unhealthy(G, "refused".into()))
        );
        assert_eq!(h.probed(Err("refused".into()), 1, 3), None, "reported once");
        assert_eq!(h.probed(Ok(()), 1, 3), Some(HealthChange::Healthy(G)));
        // A new generation starts without a verdict; none running forgets it.
        assert_eq!(h.probing(Generation(5)), Some(HealthChange::Reset));
        assert_eq!(h.probing(Generation(5)), None);
        assert_eq!(h.gone(), Some(HealthChange::Reset));
        assert_eq!(h.gone(), None);
    }
}
