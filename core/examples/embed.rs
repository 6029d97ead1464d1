//! Embedding tryswap in a Rust host: an in-process engine slot and a plugin process slot,
//! both reloaded safely, used through leases, and brought back by recovery after a restart.
//!
//! ```sh
//! cargo run -p tryswap --example embed
//! ```
//!
//! The process slot's plugin is this very binary started with `--plugin`: a minimal
//! go-plugin-style plugin (magic cookie check, handshake line, gRPC health service).
//! docs/embedding.md walks through it.

use std::error::Error;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tryswap::{
    CandidateSpec, Engine, EngineFactory, Outcome, ProbeConfig, ProbeKind, SlotConfig, SlotName,
    Supervisor,
};

/// The in-process engine: prices things at a configured rate.
struct Pricing {
    rate: f64,
}

impl Pricing {
    fn price(&self, amount: f64) -> f64 {
        amount * self.rate
    }
}

#[async_trait]
impl Engine for Pricing {
    async fn start(&self) -> Result<(), String> {
        Ok(()) // Open connections, spawn tasks…
    }

    async fn check(&self) -> Result<(), String> {
        if self.rate > 0.0 {
            Ok(())
        } else {
            Err(format!("rate {} is not positive", self.rate))
        }
    }

    async fn stop(&self) {}
}

/// Builds a [`Pricing`] engine from the staged config file (`rate = 1.1`).
struct PricingFactory;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingConfig {
    rate: f64,
}

#[async_trait]
impl EngineFactory for PricingFactory {
    type Engine = Pricing;

    async fn build(&self, config: &[u8]) -> Result<Pricing, String> {
        let text = std::str::from_utf8(config).map_err(|e| e.to_string())?;
        let config: PricingConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Pricing { rate: config.rate })
    }
}

/// Registers the two slots. Call on every start, before `recover`.
fn register(sup: &Supervisor) -> Result<(SlotName, SlotName), Box<dyn Error>> {
    let pricing = SlotName::new("pricing")?;
    let mut probe = ProbeConfig::default();
    probe.kind = ProbeKind::None; // engines are probed through `Engine::check`
    probe.period = Duration::from_millis(10);
    sup.add_engine_slot(
        pricing.clone(),
        probe,
        Duration::from_secs(5),
        PricingFactory,
    );

    let greeter = SlotName::new("greeter")?;
    let mut slot = SlotConfig::new(greeter.clone());
    slot.args = vec!["--plugin".into()];
    slot.handshake.magic_cookie_key = "EMBED_PLUGIN".into();
    slot.handshake.magic_cookie_value = "greeter".into();
    slot.probe.period = Duration::from_millis(20);
    slot.stop_timeout = Duration::from_secs(2);
    sup.add_process_slot(slot);
    Ok((pricing, greeter))
}

fn config(dir: &Path, name: &str, text: &str) -> Result<CandidateSpec, Box<dyn Error>> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(CandidateSpec {
        executable: None,
        config: Some(path),
    })
}

async fn host() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");

    // 1. Open the state dir, register slots, recover what a previous run left.
    let sup = Supervisor::open(&state)?;
    let (pricing, greeter) = register(&sup)?;
    let recovered = sup.recover().await?;
    println!(
        "recovery on a fresh state dir: {} actions",
        recovered.actions.len()
    );

    // 2. An in-process engine: activate a config, use it through a lease.
    let report = sup
        .activate(&pricing, config(dir.path(), "v1.toml", "rate = 1.10\n")?)
        .await?;
    assert_eq!(report.outcome, Outcome::Active);
    {
        let lease = sup.lease(&pricing)?;
        let engine = lease.engine::<Pricing>().ok_or("not a Pricing engine")?;
        println!(
            "pricing generation {}: 100 costs {:.2}",
            lease.generation(),
            engine.price(100.0)
        );
    }

    // A bad config fails its probe: rolled back, generation 1 keeps serving.
    let report = sup
        .activate(&pricing, config(dir.path(), "v2.toml", "rate = -1.0\n")?)
        .await?;
    println!(
        "bad pricing config: {:?} at {:?}: {}",
        report.outcome,
        report.failed_stage,
        report.error.as_deref().unwrap_or("")
    );
    assert_eq!(sup.lease(&pricing)?.generation().0, 1);

    // 3. A plugin process (go-plugin handshake, gRPC health probe).
    let plugin = std::env::current_exe()?;
    let report = sup
        .activate(&greeter, CandidateSpec::executable(&plugin))
        .await?;
    assert_eq!(report.outcome, Outcome::Active, "{:?}", report.error);
    {
        let lease = sup.lease(&greeter)?;
        let endpoint = lease.endpoint().ok_or("no endpoint")?;
        println!(
            "greeter generation {} serves on {} {} (pid {:?})",
            lease.generation(),
            endpoint.network,
            endpoint.address,
            lease.instance().pid()
        );
    }
    // Reloading the same plugin: the new process is probed before the swap; the old one
    // is stopped once its leases end.
    let report = sup
        .activate(&greeter, CandidateSpec::executable(&plugin))
        .await?;
    println!(
        "greeter reloaded to generation {:?}, retired {:?}",
        report.candidate.as_ref().map(|c| c.generation),
        report.retired
    );

    // 4. Stop the host. The journal keeps the active markers.
    sup.shutdown().await;
    drop(sup);

    // 5. Start again: recovery relaunches both active generations from the store.
    let sup = Supervisor::open(&state)?;
    let (pricing, greeter) = register(&sup)?;
    for action in sup.recover().await?.actions {
        println!("recovery: {action}");
    }
    println!(
        "after restart: pricing generation {}, greeter generation {}",
        sup.lease(&pricing)?.generation(),
        sup.lease(&greeter)?.generation()
    );
    sup.shutdown().await;
    Ok(())
}

/// The plugin side: what a go-plugin plugin does, in a few lines.
mod plugin {
    use std::error::Error;
    use std::io::Write;

    use tokio::net::TcpListener;
    use tokio::signal::unix::{signal, SignalKind};
    use tonic_health::ServingStatus;

    /// Refuses to run unless started by a host with the right magic cookie.
    fn cookie_ok() -> bool {
        std::env::var("EMBED_PLUGIN").is_ok_and(|v| v == "greeter")
    }

    /// Binds a port in `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT` (as go-plugin does).
    async fn bind() -> Result<TcpListener, Box<dyn Error>> {
        let port = |name: &str, default: u16| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u16>().ok())
                .unwrap_or(default)
        };
        let (min, max) = (
            port("PLUGIN_MIN_PORT", 10000),
            port("PLUGIN_MAX_PORT", 25000),
        );
        let span = u32::from(max.saturating_sub(min)) + 1;
        let start = std::process::id() % span;
        for i in 0..span.min(200) {
            let candidate = min + ((start + i) % span) as u16;
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", candidate)).await {
                return Ok(listener);
            }
        }
        Err(format!("no free port in {min}..={max}").into())
    }

    pub async fn serve() -> Result<(), Box<dyn Error>> {
        if !cookie_ok() {
            eprintln!("This binary is a plugin: it is meant to be started by a tryswap host.");
            std::process::exit(1);
        }
        let listener = bind().await?;
        let address = listener.local_addr()?;
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("plugin", ServingStatus::Serving)
            .await;
        // The handshake: CORE-VERSION|APP-VERSION|NETWORK|ADDRESS|PROTOCOL
        let mut stdout = std::io::stdout();
        writeln!(stdout, "1|1|tcp|{address}|grpc")?;
        stdout.flush()?;
        let mut term = signal(SignalKind::terminate())?;
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    term.recv().await;
                },
            )
            .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    if std::env::args().nth(1).as_deref() == Some("--plugin") {
        return plugin::serve().await;
    }
    host().await
}
