//! The in-process engine driver: an embedder's engine, built from a staged config, reloaded
//! with the same safe contract as plugin processes.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::ProbeConfig;
use crate::driver::{Driver, DriverError, Instance, LaunchRequest, StopOutcome};

/// An engine the embedder runs inside the host process.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Starts the engine (open connections, spawn tasks). Called once, before probing.
    async fn start(&self) -> Result<(), String>;
    /// One health check; probed with the slot's thresholds.
    async fn check(&self) -> Result<(), String>;
    /// Stops the engine. Called once, after its last lease ended or the drain timed out.
    async fn stop(&self);
}

/// Builds engines from staged config bytes.
#[async_trait]
pub trait EngineFactory: Send + Sync + 'static {
    /// The engine type this factory builds; leases hand it out via `Lease::engine`.
    type Engine: Engine;
    /// Builds an engine from the candidate's config. A failure rolls the reload back.
    async fn build(&self, config: &[u8]) -> Result<Self::Engine, String>;
}

struct EngineHandle<E> {
    engine: Arc<E>,
    stopped: AtomicBool,
}

/// Drives in-process engines: launch = build, validate = start, probe = `check` with the
/// slot's thresholds, stop = `stop`. Engines never outlive the host, so nothing is reattached
/// after a restart: recovery relaunches the active generation from the store instead.
pub struct EngineDriver<F: EngineFactory> {
    factory: F,
    probe: ProbeConfig,
}

impl<F: EngineFactory> EngineDriver<F> {
    /// A driver building engines with `factory`, probing them per `probe`.
    pub fn new(factory: F, probe: ProbeConfig) -> Self {
        EngineDriver { factory, probe }
    }

    fn handle(instance: &Instance) -> Result<&EngineHandle<F::Engine>, DriverError> {
        instance
            .handle
            .as_ref()
            .and_then(|h| h.downcast_ref::<EngineHandle<F::Engine>>())
            .ok_or_else(|| {
                DriverError::error(format!(
                    "slot {}: generation {} has no engine handle",
                    instance.slot, instance.generation
                ))
            })
    }
}

/// Returns the engine of an instance run by an [`EngineDriver`] whose engines are `E`.
pub fn engine_of<E: Engine>(instance: &Instance) -> Option<Arc<E>> {
    instance
        .handle
        .as_ref()
        .and_then(|h| h.downcast_ref::<EngineHandle<E>>())
        .map(|h| Arc::clone(&h.engine))
}

#[async_trait]
impl<F: EngineFactory> Driver for EngineDriver<F> {
    async fn launch(&self, request: &LaunchRequest) -> Result<Instance, DriverError> {
        let path = request
            .config_file
            .as_ref()
            .or(request.executable.as_ref())
            .ok_or_else(|| {
                DriverError::error(format!(
                    "slot {}: an in-process engine needs a config artifact",
                    request.slot
                ))
            })?;
        let bytes = tokio::fs::read(path).await.map_err(|e| {
            DriverError::error(format!("reading staged config {}: {e}", path.display()))
        })?;
        let engine = self.factory.build(&bytes).await.map_err(|e| {
            DriverError::error(format!(
                "slot {}: building the engine failed: {e}",
                request.slot
            ))
        })?;
        let handle: Arc<dyn Any + Send + Sync> = Arc::new(EngineHandle {
            engine: Arc::new(engine),
            stopped: AtomicBool::new(false),
        });
        Ok(Instance {
            slot: request.slot.clone(),
            generation: request.generation,
            reload: request.reload,
            artifact: request.artifact.clone(),
            process: None,
            log_path: None,
            endpoint: None,
            handle: Some(handle),
        })
    }

    async fn validate(&self, instance: &mut Instance) -> Result<(), DriverError> {
        let handle = Self::handle(instance)?;
        handle.engine.start().await.map_err(|e| {
            DriverError::error(format!(
                "slot {}: starting the engine failed: {e}",
                instance.slot
            ))
        })
    }

    async fn probe(&self, instance: &Instance) -> Result<(), DriverError> {
        let engine = Arc::clone(&Self::handle(instance)?.engine);
        crate::probe::run_probe(&self.probe, || {
            let engine = Arc::clone(&engine);
            async move { engine.check().await }
        })
        .await
        .map(|_| ())
        .map_err(|failure| DriverError::error(failure.to_string()))
    }

    async fn stop(&self, instance: &Instance) -> Result<StopOutcome, DriverError> {
        // No handle: the engine lived in a host process that is gone, and so is the engine.
        let Ok(handle) = Self::handle(instance) else {
            return Ok(StopOutcome::AlreadyGone);
        };
        if handle.stopped.swap(true, Ordering::SeqCst) {
            return Ok(StopOutcome::AlreadyGone);
        }
        handle.engine.stop().await;
        Ok(StopOutcome::Graceful)
    }

    fn is_alive(&self, instance: &Instance) -> bool {
        Self::handle(instance).is_ok_and(|h| !h.stopped.load(Ordering::SeqCst))
    }
}
