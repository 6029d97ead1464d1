//! The launch pipeline of one generation, free of I/O: verify the stored artifact, launch,
//! journal, validate, journal, probe, journal — and what to undo when a step fails.
//!
//! Reload candidates, config-reload candidates, `start` and recovery's relaunch all bring a
//! generation up through this one order. [`Pipeline::next_effect`] says what comes next;
//! the runtime performs that [`Effect`] and feeds the result back with
//! [`Pipeline::handle`], until the effect is [`Effect::Finish`]. Nothing here blocks or
//! fails: a refused step is an [`Input::Failed`], and the pipeline answers with the cleanup.
//!
//! ```
//! use tryswap_fsm::*;
//! let reload = ReloadId::from_u128(1);
//! let mut p = Pipeline::new(Plan::Reload { reload });
//! assert_eq!(p.next_effect(), Effect::Launch);
//! p.handle(Input::Launched { process: None, log_path: None });
//! assert_eq!(p.next_effect(), Effect::Crashpoint("reload-after-spawn"));
//! ```

use crate::machine::Command;
use crate::types::{
    ArtifactRef, Endpoint, Generation, ProcessIdentity, Reason, ReloadId, Sha256, SlotName, Stage,
};

/// Which generation is brought up, and why: decides what is verified and journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The candidate of a reload, its artifact just copied into the store and hashed by
    /// staging (nothing left to verify). Every step is journaled as it passes.
    Reload {
        /// The reload (already `Staged`).
        reload: ReloadId,
    },
    /// A config reload's candidate: the active generation's stored artifact under the slot's
    /// new config. The stored files are verified first; every step is journaled.
    ConfigReload {
        /// The reload (already `Staged`).
        reload: ReloadId,
        /// The stored artifact.
        artifact: ArtifactRef,
    },
    /// `tryswap start` (and the keep-alive's restart): the active generation relaunched from
    /// the store. Journaled once, as `Relaunched`, when it passed its probe.
    Start {
        /// What the journal knows of the active generation.
        active: Relaunch,
    },
    /// The keep-alive's restart of the stopped active generation: the intent (`Restarting`)
    /// is journaled before anything is spawned, so recovery after a crash mid-restart finds
    /// and stops what the restart spawned; `Relaunched` when it passed its probe, `Stopped`
    /// when it failed.
    Restart {
        /// What the journal knows of the active generation.
        active: Relaunch,
    },
    /// Recovery's relaunch of an active generation recorded running but found dead:
    /// `Stopped(recovered)` and `Relaunched` are journaled in one transaction.
    Recovery {
        /// What the journal knows of the active generation.
        active: Relaunch,
        /// How the generation was found gone (the start of the `Stopped` reason).
        gone: String,
    },
}

/// The active generation a relaunch brings back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relaunch {
    /// The slot.
    pub slot: SlotName,
    /// The active generation.
    pub generation: Generation,
    /// The reload that activated it (its processes carry this tag).
    pub reload: ReloadId,
    /// Its stored artifact.
    pub artifact: ArtifactRef,
    /// Whether the journal records it running (a failed relaunch then records it stopped).
    pub running: bool,
}

/// What the runtime does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Stop processes left over from an earlier run of the generation (tagged with its
    /// reload): a relaunch never runs beside a copy.
    StopLeftovers,
    /// Check that the stored file named by this digest still hashes to it.
    Verify(Sha256),
    /// Start the instance (spawn, build). Answer [`Input::Launched`].
    Launch,
    /// Wait for and check the handshake. Answer [`Input::Validated`].
    Validate,
    /// Run the slot's probe until it passes or fails.
    Probe,
    /// Journal these commands in one transaction.
    Record(Vec<Command>),
    /// A point where crash tests may kill the process (a `fail` failpoint of this name).
    Crashpoint(&'static str),
    /// Stop the launched instance: a step after the launch failed.
    StopLaunched,
    /// Stop whatever a failed launch left behind (processes tagged with the reload).
    StopTagged,
    /// The pipeline is over.
    Finish(Verdict),
}

/// How the pipeline ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The instance runs, validated and probed, and what it must journal is journaled.
    Passed,
    /// A step failed; the instance (if any) is stopped and the failure journaled as the plan
    /// says (relaunches: `Stopped`; candidates: left to the caller, which records `Fail`).
    Failed(Failure),
}

/// Which part of the runtime refused a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The artifact store: a stored file is missing or no longer hashes to its digest.
    Store,
    /// The driver: launch, handshake or probe failed.
    Driver,
    /// The journal could not record a step.
    Journal,
}

/// A failed step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The stage the instance did not reach.
    pub stage: Stage,
    /// Who refused it.
    pub cause: Cause,
    /// Why, as the runtime said it.
    pub reason: Reason,
}

/// The result of an effect, fed back with [`Pipeline::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The effect was performed (verify, record, stop, crashpoint).
    Done,
    /// The instance was launched.
    Launched {
        /// Its process, if it is one.
        process: Option<ProcessIdentity>,
        /// Its log file.
        log_path: Option<String>,
    },
    /// The handshake was accepted.
    Validated {
        /// Where it serves.
        endpoint: Option<Endpoint>,
    },
    /// The effect failed.
    Failed {
        /// Who refused it.
        cause: Cause,
        /// Why.
        reason: Reason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    StopLeftovers,
    Verify(usize),
    Launch,
    Validate,
    Probe,
    RecordLaunch,
    RecordHandshake,
    RecordProbe,
    RecordRelaunch,
    RecordIntent,
    Crashpoint(&'static str),
    StopLaunched,
    StopTagged,
    RecordStopped,
    Finish,
}

/// One generation brought up: the plan, how far it got, and what it learned on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    plan: Plan,
    digests: Vec<Sha256>,
    steps: Vec<Step>,
    at: usize,
    process: Option<ProcessIdentity>,
    log_path: Option<String>,
    endpoint: Option<Endpoint>,
    failure: Option<Failure>,
}

impl Plan {
    fn crashpoints(&self) -> Crashpoints {
        match self {
            Plan::Reload { .. } => Crashpoints {
                after_spawn: Some("reload-after-spawn"),
                after_launched: Some("reload-after-launched"),
                before_validated: Some("reload-before-validated"),
                after_validated: Some("reload-after-validated"),
                before_probed: Some("reload-before-probed"),
                after_probed: Some("reload-after-probed"),
                after_relaunched: None,
                before_rollback_stop: Some("rollback-before-stop"),
                after_intent: None,
            },
            Plan::ConfigReload { .. } => Crashpoints {
                after_spawn: Some("config-after-spawn"),
                after_launched: Some("config-after-launched"),
                before_validated: None,
                after_validated: Some("config-after-validated"),
                before_probed: None,
                after_probed: Some("config-after-probed"),
                after_relaunched: None,
                before_rollback_stop: None,
                after_intent: None,
            },
            Plan::Start { .. } => Crashpoints::default(),
            Plan::Restart { .. } => Crashpoints {
                after_intent: Some("restart-after-intent"),
                after_spawn: Some("restart-after-spawn"),
                after_relaunched: Some("restart-after-relaunched"),
                ..Crashpoints::default()
            },
            Plan::Recovery { .. } => Crashpoints {
                after_spawn: Some("recover-after-relaunch-spawn"),
                after_relaunched: Some("recover-after-relaunched"),
                ..Crashpoints::default()
            },
        }
    }

    fn relaunch(&self) -> Option<&Relaunch> {
        match self {
            Plan::Start { active } | Plan::Restart { active } | Plan::Recovery { active, .. } => {
                Some(active)
            }
            Plan::Reload { .. } | Plan::ConfigReload { .. } => None,
        }
    }

    /// Every stored file the plan launches that must be verified first: the executable and
    /// the config of an artifact taken from the store. A fresh reload's artifact was hashed
    /// as it was staged.
    fn digests(&self) -> Vec<Sha256> {
        let artifact = match self {
            Plan::Reload { .. } => return Vec::new(),
            Plan::ConfigReload { artifact, .. } => artifact,
            Plan::Start { active } | Plan::Restart { active } | Plan::Recovery { active, .. } => {
                &active.artifact
            }
        };
        let mut digests = vec![artifact.sha256];
        if let Some(config) = artifact.config_sha256.filter(|c| *c != artifact.sha256) {
            digests.push(config);
        }
        digests
    }
}

/// The failpoint names of one plan, where it has them.
#[derive(Clone, Copy, Default)]
struct Crashpoints {
    after_intent: Option<&'static str>,
    after_spawn: Option<&'static str>,
    after_launched: Option<&'static str>,
    before_validated: Option<&'static str>,
    after_validated: Option<&'static str>,
    before_probed: Option<&'static str>,
    after_probed: Option<&'static str>,
    after_relaunched: Option<&'static str>,
    before_rollback_stop: Option<&'static str>,
}

impl Pipeline {
    /// A pipeline at its first step.
    pub fn new(plan: Plan) -> Pipeline {
        let digests = plan.digests();
        let points = plan.crashpoints();
        let mut steps = Vec::with_capacity(16);
        let crash = |steps: &mut Vec<Step>, point: Option<&'static str>| {
            steps.extend(point.map(Step::Crashpoint));
        };
        if matches!(plan, Plan::Restart { .. }) {
            steps.push(Step::RecordIntent);
            crash(&mut steps, points.after_intent);
        }
        if plan.relaunch().is_some() {
            steps.push(Step::StopLeftovers);
        }
        steps.extend((0..digests.len()).map(Step::Verify));
        steps.push(Step::Launch);
        crash(&mut steps, points.after_spawn);
        if plan.relaunch().is_some() {
            steps.extend([Step::Validate, Step::Probe, Step::RecordRelaunch]);
            crash(&mut steps, points.after_relaunched);
        } else {
            steps.push(Step::RecordLaunch);
            crash(&mut steps, points.after_launched);
            steps.push(Step::Validate);
            crash(&mut steps, points.before_validated);
            steps.push(Step::RecordHandshake);
            crash(&mut steps, points.after_validated);
            steps.push(Step::Probe);
            crash(&mut steps, points.before_probed);
            steps.push(Step::RecordProbe);
            crash(&mut steps, points.after_probed);
        }
        steps.push(Step::Finish);
        Pipeline {
            plan,
            digests,
            steps,
            at: 0,
            process: None,
            log_path: None,
            endpoint: None,
            failure: None,
        }
    }

    /// The plan this pipeline follows.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The failure that ended the pipeline (or is being cleaned up after), if any.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// What the runtime does next. Calling it again without [`Pipeline::handle`] returns the
    /// same effect.
    pub fn next_effect(&self) -> Effect {
        let step = self.steps.get(self.at).copied().unwrap_or(Step::Finish);
        match step {
            Step::StopLeftovers => Effect::StopLeftovers,
            Step::Verify(i) => match self.digests.get(i) {
                Some(digest) => Effect::Verify(*digest),
                None => Effect::Finish(self.verdict()),
            },
            Step::Launch => Effect::Launch,
            Step::Validate => Effect::Validate,
            Step::Probe => Effect::Probe,
            Step::RecordLaunch | Step::RecordHandshake | Step::RecordProbe => {
                Effect::Record(vec![self.candidate_record(step)])
            }
            Step::RecordRelaunch => Effect::Record(self.relaunch_records()),
            Step::RecordIntent => Effect::Record(self.intent_records()),
            Step::RecordStopped => Effect::Record(self.stopped_records()),
            Step::Crashpoint(name) => Effect::Crashpoint(name),
            Step::StopLaunched => Effect::StopLaunched,
            Step::StopTagged => Effect::StopTagged,
            Step::Finish => Effect::Finish(self.verdict()),
        }
    }

    /// Feeds back the result of the effect [`Pipeline::next_effect`] returned.
    pub fn handle(&mut self, input: Input) {
        let step = self.steps.get(self.at).copied().unwrap_or(Step::Finish);
        if step == Step::Finish {
            return;
        }
        match input {
            Input::Failed { cause, reason } => return self.fail(step, cause, reason),
            Input::Launched { process, log_path } => {
                self.process = process;
                self.log_path = log_path;
            }
            Input::Validated { endpoint } => self.endpoint = endpoint,
            Input::Done => {}
        }
        self.at += 1;
    }

    fn verdict(&self) -> Verdict {
        match &self.failure {
            Some(failure) => Verdict::Failed(failure.clone()),
            None => Verdict::Passed,
        }
    }

    /// The stage an instance reaches by passing `step`.
    fn stage_of(step: Step) -> Stage {
        match step {
            Step::RecordIntent
            | Step::StopLeftovers
            | Step::Verify(_)
            | Step::Launch
            | Step::RecordLaunch => Stage::Launched,
            Step::Validate | Step::RecordHandshake => Stage::Validated,
            Step::Probe | Step::RecordProbe | Step::RecordRelaunch => Stage::Probed,
            Step::Crashpoint(_)
            | Step::StopLaunched
            | Step::StopTagged
            | Step::RecordStopped
            | Step::Finish => Stage::Probed,
        }
    }

    /// A step failed: replace the rest of the plan with its cleanup.
    fn fail(&mut self, step: Step, cause: Cause, reason: Reason) {
        if self.failure.is_some() {
            // The cleanup itself failed: the runtime reports it; nothing more to undo here.
            self.at += 1;
            return;
        }
        let launched = self.steps[..self.at].contains(&Step::Launch);
        let mut rest = Vec::new();
        if cause == Cause::Driver {
            rest.extend(
                self.plan
                    .crashpoints()
                    .before_rollback_stop
                    .map(Step::Crashpoint),
            );
        }
        if launched {
            rest.push(Step::StopLaunched);
        } else if step == Step::Launch {
            rest.push(Step::StopTagged);
        }
        let journal_failed = cause == Cause::Journal;
        // A restart's journaled intent counts as running: its failure is journaled `Stopped`.
        let running = self.plan.relaunch().is_some_and(|r| r.running)
            || self.steps[..self.at].contains(&Step::RecordIntent);
        if running && !journal_failed {
            rest.push(Step::RecordStopped);
        }
        rest.push(Step::Finish);
        self.failure = Some(Failure {
            stage: Self::stage_of(step),
            cause,
            reason,
        });
        self.steps.truncate(self.at);
        self.steps.extend(rest);
    }

    fn candidate_record(&self, step: Step) -> Command {
        let reload = match &self.plan {
            Plan::Reload { reload } | Plan::ConfigReload { reload, .. } => *reload,
            Plan::Start { active } | Plan::Restart { active } | Plan::Recovery { active, .. } => {
                active.reload
            }
        };
        match step {
            Step::RecordLaunch => Command::RecordLaunch {
                reload,
                process: self.process.clone(),
                log_path: self.log_path.clone(),
            },
            Step::RecordHandshake => Command::RecordHandshake {
                reload,
                endpoint: self.endpoint.clone(),
            },
            _ => Command::RecordProbe { reload },
        }
    }

    fn relaunch_records(&self) -> Vec<Command> {
        let mut records = Vec::with_capacity(2);
        let Some(active) = self.plan.relaunch() else {
            return records;
        };
        if let Plan::Recovery { gone, .. } = &self.plan {
            records.push(Command::Stop {
                slot: active.slot.clone(),
                generation: active.generation,
                reason: Reason::recovered(format!("{gone}; relaunched from the store")),
            });
        }
        records.push(Command::Relaunch {
            slot: active.slot.clone(),
            generation: active.generation,
            process: self.process.clone(),
            log_path: self.log_path.clone(),
            endpoint: self.endpoint.clone(),
        });
        records
    }

    fn intent_records(&self) -> Vec<Command> {
        self.plan
            .relaunch()
            .map(|active| Command::Restart {
                slot: active.slot.clone(),
                generation: active.generation,
            })
            .into_iter()
            .collect()
    }

    fn stopped_records(&self) -> Vec<Command> {
        let (Some(active), Some(failure)) = (self.plan.relaunch(), &self.failure) else {
            return Vec::new();
        };
        let error = &failure.reason.message;
        let reason = match &self.plan {
            Plan::Recovery { gone, .. } => {
                Reason::recovered(format!("{gone}; relaunch failed: {error}"))
            }
            _ => Reason::error(format!("relaunch failed: {error}")),
        };
        vec![Command::Stop {
            slot: active.slot.clone(),
            generation: active.generation,
            reason,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Sha256 {
        Sha256([n; 32])
    }

    fn active(running: bool, config: Option<Sha256>) -> Relaunch {
        Relaunch {
            slot: SlotName::new("demo").unwrap(),
            generation: Generation(3),
            reload: ReloadId::from_u128(9),
            artifact: ArtifactRef {
                sha256: digest(1),
                config_sha256: config,
            },
            running,
        }
    }

    fn candidate() -> Pipeline {
        Pipeline::new(Plan::Reload {
            reload: ReloadId::from_u128(1),
        })
    }

    /// Fails the effects `at` picks with `cause`, answers the others as passed.
    fn failing(
        at: fn(&Effect) -> bool,
        cause: Cause,
        reason: Reason,
    ) -> impl FnMut(&Effect) -> Input {
        move |e| {
            if at(e) {
                Input::Failed {
                    cause,
                    reason: reason.clone(),
                }
            } else {
                ok(e)
            }
        }
    }

    /// Runs the pipeline, answering every effect with `answer`; returns the effects seen.
    fn run(mut p: Pipeline, mut answer: impl FnMut(&Effect) -> Input) -> Vec<Effect> {
        let mut seen = Vec::new();
        for _ in 0..64 {
            let effect = p.next_effect();
            seen.push(effect.clone());
            if matches!(effect, Effect::Finish(_)) {
                return seen;
            }
            p.handle(answer(&effect));
        }
        panic!("the pipeline did not finish: {seen:?}");
    }

    fn ok(effect: &Effect) -> Input {
        match effect {
            Effect::Launch => Input::Launched {
                process: None,
                log_path: Some("log".into()),
            },
            Effect::Validate => Input::Validated { endpoint: None },
            _ => Input::Done,
        }
    }

    fn names(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Record(cmds) => format!(
                    "record {}",
                    cmds.iter().map(Command::name).collect::<Vec<_>>().join("+")
                ),
                Effect::Crashpoint(name) => format!("crash {name}"),
                Effect::Verify(d) => format!("verify {}", d.0[0]),
                Effect::Finish(Verdict::Passed) => "passed".to_owned(),
                Effect::Finish(Verdict::Failed(f)) => format!("failed {:?}", f.cause),
                other => format!("{other:?}").to_lowercase(),
            })
            .collect()
    }

    #[test]
    fn a_reload_candidate_journals_every_step_after_it_passes() {
        let effects = run(candidate(), ok);
        assert_eq!(
            names(&effects),
            [
                "launch",
                "crash reload-after-spawn",
                "record record-launch",
                "crash reload-after-launched",
                "validate",
                "crash reload-before-validated",
                "record record-handshake",
                "crash reload-after-validated",
                "probe",
                "crash reload-before-probed",
                "record record-probe",
                "crash reload-after-probed",
                "passed"
            ]
        );
    }

    #[test]
    fn a_config_reload_candidate_verifies_the_stored_executable_and_config_first() {
        let effects = run(
            Pipeline::new(Plan::ConfigReload {
                reload: ReloadId::from_u128(1),
                artifact: ArtifactRef {
                    sha256: digest(1),
                    config_sha256: Some(digest(2)),
                },
            }),
            ok,
        );
        let names = names(&effects);
        assert_eq!(names[..3], ["verify 1", "verify 2", "launch"]);
        assert!(names.contains(&"crash config-after-probed".to_owned()));
    }

    #[test]
    fn start_verifies_every_stored_file_including_the_config() {
        let effects = run(
            Pipeline::new(Plan::Start {
                active: active(false, Some(digest(2))),
            }),
            ok,
        );
        assert_eq!(
            names(&effects),
            [
                "stopleftovers",
                "verify 1",
                "verify 2",
                "launch",
                "validate",
                "probe",
                "record relaunch",
                "passed"
            ]
        );
    }

    #[test]
    fn a_damaged_config_stops_start_before_anything_is_launched() {
        let mut p = Pipeline::new(Plan::Start {
            active: active(true, Some(digest(2))),
        });
        let effects = run(
            p.clone(),
            failing(
                |e| *e == Effect::Verify(digest(2)),
                Cause::Store,
                Reason::error("store: config is corrupt"),
            ),
        );
        assert_eq!(
            names(&effects),
            [
                "stopleftovers",
                "verify 1",
                "verify 2",
                "record stop",
                "failed Store"
            ]
        );
        // The journal records the running generation stopped, saying why.
        p.handle(Input::Done);
        p.handle(Input::Done);
        p.handle(Input::Failed {
            cause: Cause::Store,
            reason: Reason::error("config is corrupt"),
        });
        let Effect::Record(cmds) = p.next_effect() else {
            panic!("expected a record");
        };
        let Command::Stop { reason, .. } = &cmds[0] else {
            panic!("expected Stop: {cmds:?}");
        };
        assert_eq!(reason.message, "relaunch failed: config is corrupt");
    }

    #[test]
    fn a_restart_journals_its_intent_before_anything_is_spawned() {
        let effects = run(
            Pipeline::new(Plan::Restart {
                active: active(false, None),
            }),
            ok,
        );
        assert_eq!(
            names(&effects),
            [
                "record restart",
                "crash restart-after-intent",
                "stopleftovers",
                "verify 1",
                "launch",
                "crash restart-after-spawn",
                "validate",
                "probe",
                "record relaunch",
                "crash restart-after-relaunched",
                "passed"
            ]
        );
    }

    #[test]
    fn a_failed_restart_journals_the_generation_stopped_again() {
        let effects = run(
            Pipeline::new(Plan::Restart {
                active: active(false, None),
            }),
            failing(
                |e| *e == Effect::Probe,
                Cause::Driver,
                Reason::error("probe failed"),
            ),
        );
        assert_eq!(
            names(&effects)[effects.len() - 3..],
            ["stoplaunched", "record stop", "failed Driver"]
        );
        // A journal that refuses the intent: nothing spawned, nothing more journaled.
        let effects = run(
            Pipeline::new(Plan::Restart {
                active: active(false, None),
            }),
            failing(
                |e| matches!(e, Effect::Record(_)),
                Cause::Journal,
                Reason::error("disk full"),
            ),
        );
        assert_eq!(names(&effects), ["record restart", "failed Journal"]);
    }

    #[test]
    fn recovery_journals_stopped_and_relaunched_together() {
        let effects = run(
            Pipeline::new(Plan::Recovery {
                active: active(true, None),
                gone: "gone".into(),
            }),
            ok,
        );
        assert_eq!(
            names(&effects),
            [
                "stopleftovers",
                "verify 1",
                "launch",
                "crash recover-after-relaunch-spawn",
                "validate",
                "probe",
                "record stop+relaunch",
                "crash recover-after-relaunched",
                "passed"
            ]
        );
    }

    #[test]
    fn a_failed_probe_stops_the_candidate_and_leaves_the_rollback_to_the_caller() {
        let effects = run(
            candidate(),
            failing(
                |e| matches!(e, Effect::Probe),
                Cause::Driver,
                Reason::timeout("probe timed out"),
            ),
        );
        let names = names(&effects);
        assert_eq!(
            names[names.len() - 3..],
            [
                "crash rollback-before-stop",
                "stoplaunched",
                "failed Driver"
            ]
        );
        let Some(Effect::Finish(Verdict::Failed(failure))) = effects.last() else {
            panic!("expected a failure");
        };
        assert_eq!(failure.stage, Stage::Probed);
        assert_eq!(failure.reason, Reason::timeout("probe timed out"));
    }

    #[test]
    fn a_failed_launch_stops_what_is_tagged_with_the_reload() {
        let effects = run(
            candidate(),
            failing(
                |e| matches!(e, Effect::Launch),
                Cause::Driver,
                Reason::error("no such file"),
            ),
        );
        assert_eq!(
            names(&effects),
            [
                "launch",
                "crash rollback-before-stop",
                "stoptagged",
                "failed Driver"
            ]
        );
    }

    #[test]
    fn a_journal_failure_stops_the_instance_without_journaling_more() {
        let effects = run(
            Pipeline::new(Plan::Start {
                active: active(true, None),
            }),
            failing(
                |e| matches!(e, Effect::Record(_)),
                Cause::Journal,
                Reason::error("disk full"),
            ),
        );
        let names = names(&effects);
        assert_eq!(
            names[names.len() - 3..],
            ["record relaunch", "stoplaunched", "failed Journal"]
        );
    }

    #[test]
    fn a_failed_cleanup_still_finishes_with_the_first_failure() {
        let mut p = candidate();
        p.handle(Input::Launched {
            process: None,
            log_path: None,
        });
        p.handle(Input::Done);
        p.handle(Input::Failed {
            cause: Cause::Journal,
            reason: Reason::error("disk full"),
        });
        assert_eq!(p.next_effect(), Effect::StopLaunched);
        p.handle(Input::Failed {
            cause: Cause::Driver,
            reason: Reason::error("stop failed"),
        });
        let Effect::Finish(Verdict::Failed(failure)) = p.next_effect() else {
            panic!("expected the end");
        };
        assert_eq!(failure.cause, Cause::Journal);
        assert_eq!(failure.stage, Stage::Launched);
    }
}
