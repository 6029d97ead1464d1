//! The one executor of the launch pipeline: performs what [`tryswap_fsm::Pipeline`] asks
//! (verify the stored files, stop leftovers, launch, validate, probe, journal, clean up)
//! and feeds the results back. Reloads, config reloads, `start`, the keep-alive's restarts
//! and recovery's relaunches all bring a generation up through [`Supervisor::bring_up`].

use tryswap_fsm::{Cause, Command, Effect, Failure, Input, Pipeline, Plan, Reason, Verdict};
use tryswap_journal::{JournalError, Record};

use crate::blocking::off_worker;
use crate::driver::{Driver, DriverError, Instance, LaunchRequest};
use crate::store::StoreError;
use crate::supervisor::Supervisor;

/// A generation the pipeline brought up: validated, probed, journaled as its plan says.
pub(crate) struct Up {
    /// The running instance.
    pub(crate) instance: Instance,
    /// Leftovers of an earlier run of the generation stopped before the launch.
    pub(crate) leftovers: Vec<u32>,
}

/// Why the pipeline failed. The instance is stopped; a relaunch journaled `Stopped`.
#[derive(Debug)]
pub(crate) struct Down {
    /// The failed step, as the state machine knows it.
    pub(crate) failure: Failure,
    /// The error that failed it.
    pub(crate) error: DownError,
}

/// The error that failed a pipeline step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownError {
    /// A stored file is missing or damaged.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Launch, handshake or probe failed.
    #[error("{0}")]
    Driver(#[from] DriverError),
    /// The journal could not record a step.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
}

impl Down {
    /// The failure as a driver error (what a reload journals as its rollback reason).
    pub(crate) fn driver_error(&self) -> DriverError {
        match &self.error {
            DownError::Driver(e) => e.clone(),
            other => DriverError::error(other.to_string()),
        }
    }
}

impl Supervisor {
    /// Journals `commands` in one transaction without stalling the async worker (a durable
    /// record fdatasyncs).
    pub(crate) async fn record_off_thread(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<Record>, JournalError> {
        off_worker(|| match commands.as_slice() {
            [one] => self.record(one),
            many => self.record_all(many),
        })
    }

    /// Makes everything journaled so far durable, without stalling the async worker.
    pub(crate) async fn flush_off_thread(&self) -> Result<(), JournalError> {
        off_worker(|| self.journal().flush())
    }

    /// Verifies the stored file named by `digest`, without stalling the async worker.
    pub(crate) async fn verify_off_thread(
        &self,
        digest: tryswap_fsm::Sha256,
    ) -> Result<(), StoreError> {
        off_worker(|| self.store().verify(&digest))
    }

    /// Brings up one instance with `driver` per `plan`: the whole launch → journal →
    /// validate → journal → probe → journal order, with every digest check the plan needs.
    /// On failure the instance is stopped (or what its launch left behind).
    pub(crate) async fn bring_up(
        &self,
        driver: &dyn Driver,
        request: &LaunchRequest,
        plan: Plan,
    ) -> Result<Up, Down> {
        let mut pipeline = Pipeline::new(plan);
        let mut instance: Option<Instance> = None;
        let mut leftovers = Vec::new();
        let mut first_error: Option<DownError> = None;
        loop {
            let effect = pipeline.next_effect();
            let result: Result<Input, DownError> = match effect {
                Effect::StopLeftovers => {
                    leftovers = driver.stop_leftovers(&request.reload).await;
                    if !leftovers.is_empty() {
                        tracing::warn!(
                            generation = request.generation.0,
                            pids = ?leftovers,
                            "stopped processes left over from the generation's earlier run before relaunching it"
                        );
                    }
                    Ok(Input::Done)
                }
                Effect::Verify(digest) => self
                    .verify_off_thread(digest)
                    .await
                    .map(|()| Input::Done)
                    .map_err(DownError::from),
                Effect::Launch => match driver.launch(request).await {
                    Ok(launched) => {
                        tracing::info!(pid = launched.pid(), "launched");
                        let input = Input::Launched {
                            process: launched.process.clone(),
                            log_path: launched
                                .log_path
                                .as_ref()
                                .map(|p| p.to_string_lossy().into_owned()),
                        };
                        instance = Some(launched);
                        Ok(input)
                    }
                    Err(e) => Err(e.into()),
                },
                Effect::Validate => match instance.as_mut() {
                    Some(i) => match driver.validate(i).await {
                        Ok(()) => {
                            tracing::info!(
                                address = i.endpoint.as_ref().map(|e| e.address.as_str()),
                                "validated"
                            );
                            Ok(Input::Validated {
                                endpoint: i.endpoint.clone(),
                            })
                        }
                        Err(e) => Err(e.into()),
                    },
                    None => Err(DriverError::error("nothing was launched to validate").into()),
                },
                Effect::Probe => match &instance {
                    Some(i) => match driver.probe(i).await {
                        Ok(()) => {
                            tracing::info!("probed");
                            Ok(Input::Done)
                        }
                        Err(e) => Err(e.into()),
                    },
                    None => Err(DriverError::error("nothing was launched to probe").into()),
                },
                Effect::Record(commands) => self
                    .record_off_thread(commands)
                    .await
                    .map(|_| Input::Done)
                    .map_err(DownError::from),
                Effect::Crashpoint(name) => {
                    fail::fail_point!(name);
                    let _ = name; // inert without the `failpoints` feature
                    Ok(Input::Done)
                }
                Effect::StopLaunched => {
                    if let Some(i) = instance.take() {
                        if let Err(e) = driver.stop(&i).await {
                            tracing::error!(error = %e, "stopping the failed instance");
                        }
                    }
                    Ok(Input::Done)
                }
                Effect::StopTagged => {
                    driver.stop_leftovers(&request.reload).await;
                    Ok(Input::Done)
                }
                Effect::Finish(Verdict::Passed) => {
                    return match instance {
                        Some(instance) => Ok(Up {
                            instance,
                            leftovers,
                        }),
                        None => Err(Down {
                            failure: Failure {
                                stage: tryswap_fsm::Stage::Launched,
                                cause: Cause::Driver,
                                reason: Reason::error("nothing was launched"),
                            },
                            error: DriverError::error("nothing was launched").into(),
                        }),
                    };
                }
                Effect::Finish(Verdict::Failed(failure)) => {
                    let error = first_error.unwrap_or_else(|| {
                        DriverError::error(failure.reason.message.clone()).into()
                    });
                    return Err(Down { failure, error });
                }
            };
            match result {
                Ok(input) => pipeline.handle(input),
                Err(error) => {
                    let (cause, reason) = match &error {
                        DownError::Store(e) => (Cause::Store, Reason::error(format!("store: {e}"))),
                        DownError::Driver(e) => (Cause::Driver, e.reason()),
                        DownError::Journal(e) => {
                            (Cause::Journal, Reason::error(format!("journal: {e}")))
                        }
                    };
                    if first_error.is_none() {
                        first_error = Some(error);
                    } else {
                        tracing::error!(error = %reason.message, "cleaning up after a failed launch");
                    }
                    pipeline.handle(Input::Failed { cause, reason });
                }
            }
        }
    }
}
