//! Section 2: the legacy unload→load strategy vs safe reloads, under continuous calls.
//!
//! Callers loop: pick the plugin (legacy: the host's current pointer; safe: a
//! `Supervisor::lease`), make one gRPC call (`tryswap_tests::call`, a new connection each
//! time, as a host without connection pooling would), count it. After a failed call a
//! caller backs off 1 ms. The gap in service is the longest time between two successful
//! calls (of any caller): per swap, the longest one from the swap's start until the callers
//! made a few calls after it (median over swaps), and over the whole run (max); the same
//! is measured in 50 ms windows without swaps for comparison. After each swap the next one waits until the callers made a few
//! successful calls, for both strategies.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tryswap::report::Outcome;
use tryswap::Supervisor;
use tryswap_fsm::{Endpoint, SlotName};
use tryswap_tests::TempState;

use crate::floor::{self, Launch};
use crate::report::{count, ms, verdict, Samples, Table};
use crate::setup::{self, Bins};

const CALLERS: usize = 4;
/// Successful calls to wait for after each swap before the next one.
const SETTLE_CALLS: usize = 2 * CALLERS;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Hard cap on calls per caller, whatever happens to the stop flag.
const MAX_CALLS_PER_CALLER: u64 = 5_000_000;

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Nanoseconds since `base` of the last successful call (0: none yet).
    last_ok: AtomicU64,
    /// Longest time between two successful calls, in nanoseconds.
    max_gap: AtomicU64,
    /// The same, since the last [`Counters::window`] call.
    window_gap: AtomicU64,
    stop: AtomicBool,
    first_error: Mutex<Option<String>>,
    /// Latency of every successful call since the last [`Counters::take_latencies`].
    latencies: Mutex<Samples>,
}

impl Counters {
    fn take_latencies(&self) -> Samples {
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn ok(&self, base: Instant, latency: Duration) {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(latency);
        let now = base.elapsed().as_nanos() as u64;
        let prev = self.last_ok.swap(now, Ordering::SeqCst);
        if prev > 0 {
            let gap = now.saturating_sub(prev);
            self.max_gap.fetch_max(gap, Ordering::SeqCst);
            self.window_gap.fetch_max(gap, Ordering::SeqCst);
        }
        self.ok.fetch_add(1, Ordering::SeqCst);
    }

    fn failed(&self, error: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(error);
        }
    }

    /// Starts a measurement window: counts and the gap restart now.
    fn restart(&self, base: Instant) {
        self.ok.store(0, Ordering::SeqCst);
        self.failed.store(0, Ordering::SeqCst);
        self.max_gap.store(0, Ordering::SeqCst);
        self.window_gap.store(0, Ordering::SeqCst);
        self.last_ok
            .store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
        *self.first_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The longest gap since the previous call (the first call: since `restart`).
    fn window(&self) -> Duration {
        Duration::from_nanos(self.window_gap.swap(0, Ordering::SeqCst))
    }

    fn snapshot(&self) -> (u64, u64, Duration) {
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            Duration::from_nanos(self.max_gap.load(Ordering::SeqCst)),
        )
    }
}

/// How a caller finds the plugin to call.
#[derive(Clone)]
pub(crate) enum Target {
    /// The host's own pointer (legacy unload→load).
    Legacy(Arc<ArcSwapOption<Endpoint>>),
    /// A lease from an embedded supervisor.
    Safe(Supervisor, SlotName),
    /// One address that never changes (a stable endpoint).
    Fixed(Endpoint),
    /// The address a daemon's status reported, re-read from its admin socket after a
    /// failed call (a host of a daemon without stable endpoints).
    Reread(PathBuf, String, Arc<ArcSwapOption<Endpoint>>),
}

/// The active generation's address per `GET /v1/slots/{slot}` on the admin `socket`.
pub(crate) async fn status_address(socket: &std::path::Path, slot: &str) -> Option<Endpoint> {
    let (_, body) = crate::daemon::request(socket, "GET", &format!("/v1/slots/{slot}"), None)
        .await
        .ok()?;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    let active = &status["active"];
    Some(Endpoint {
        core_version: 1,
        app_version: 1,
        network: match active["network"].as_str()? {
            "unix" => tryswap_fsm::Network::Unix,
            _ => tryswap_fsm::Network::Tcp,
        },
        address: active["address"].as_str()?.to_owned(),
        protocol: tryswap_fsm::Protocol::Grpc,
        server_cert: None,
    })
}

async fn one_call(endpoint: &Endpoint) -> Result<(), String> {
    let network = endpoint.network.to_string();
    tryswap_tests::call(&network, &endpoint.address, "x", CALL_TIMEOUT)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn caller(target: Target, counters: Arc<Counters>, base: Instant) {
    for _ in 0..MAX_CALLS_PER_CALLER {
        if counters.stop.load(Ordering::SeqCst) {
            return;
        }
        let began = Instant::now();
        let result = match &target {
            Target::Legacy(pointer) => match pointer.load_full() {
                Some(endpoint) => one_call(&endpoint).await,
                None => Err("no plugin loaded (between unload and load)".to_owned()),
            },
            Target::Safe(sup, slot) => match sup.lease(slot) {
                Ok(lease) => match lease.endpoint() {
                    Some(endpoint) => one_call(endpoint).await,
                    None => Err("lease without endpoint".to_owned()),
                },
                Err(e) => Err(e.to_string()),
            },
            Target::Fixed(endpoint) => one_call(endpoint).await,
            Target::Reread(_, _, cached) => match cached.load_full() {
                Some(endpoint) => one_call(&endpoint).await,
                None => Err("no address known".to_owned()),
            },
        };
        match result {
            Ok(()) => counters.ok(base, began.elapsed()),
            Err(e) => {
                counters.failed(e);
                if let Target::Reread(socket, slot, cached) = &target {
                    cached.store(status_address(socket, slot).await.map(Arc::new));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// What one strategy did.
pub(crate) struct Run {
    pub(crate) swaps: usize,
    /// Latencies of successful calls while swaps happened.
    pub(crate) latencies: Samples,
    /// Latencies of successful calls in the quiet second before.
    pub(crate) quiet_latencies: Samples,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    gap: Duration,
    baseline_gap: Duration,
    /// The longest gap around each swap (from its start until a few calls after it).
    swap_gaps: Samples,
    /// The longest gap in windows of the same length without swaps.
    quiet_gaps: Samples,
    pub(crate) elapsed: Duration,
    pub(crate) first_error: Option<String>,
    swap_failures: usize,
}

impl Run {
    /// The table cells every strategy row starts with: name, swaps, calls ok, failed
    /// calls, failed per 1,000 swaps.
    pub(crate) fn count_cells(&self, name: &str) -> Vec<String> {
        let per_1000 = self.failed as f64 * 1000.0 / self.swaps.max(1) as f64;
        vec![
            name.to_owned(),
            format!("{} in {:.1} s", self.swaps, self.elapsed.as_secs_f64()),
            count(self.ok as f64),
            count(self.failed as f64),
            count(per_1000),
        ]
    }

    /// The goal cell: "0 failed: met/missed" for the strategy that promises it.
    pub(crate) fn goal_cell(&self, promises: bool) -> String {
        if promises {
            format!("0 failed: {}", verdict(self.failed == 0))
        } else {
            String::new()
        }
    }
}

pub(crate) async fn measure<F, Fut>(
    target: Target,
    swaps: usize,
    budget: Duration,
    mut swap: F,
) -> Run
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let base = Instant::now();
    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        tasks.push(tokio::spawn(caller(
            target.clone(),
            Arc::clone(&counters),
            base,
        )));
    }
    // Baseline: one second of calls without swaps, in 50 ms windows.
    tokio::time::sleep(Duration::from_millis(200)).await;
    counters.restart(base);
    let mut quiet_gaps = Samples::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        quiet_gaps.push(counters.window());
    }
    let (_, _, baseline_gap) = counters.snapshot();
    let quiet_latencies = counters.take_latencies();

    counters.restart(base);
    let started = Instant::now();
    let deadline = started + budget;
    let mut done = 0;
    let mut swap_failures = 0;
    let mut swap_gaps = Samples::new();
    for n in 1..=swaps {
        if Instant::now() >= deadline {
            break;
        }
        counters.window();
        if let Err(e) = swap(n).await {
            swap_failures += 1;
            eprintln!("bench: swap {n} failed: {e}");
        }
        done = n;
        // Let the new plugin serve a few calls before the next swap (bounded), so swaps
        // are spaced alike for both strategies.
        let served = counters.ok.load(Ordering::SeqCst);
        let settle = Instant::now() + Duration::from_secs(5);
        while counters.ok.load(Ordering::SeqCst) < served + SETTLE_CALLS as u64
            && Instant::now() < settle
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        swap_gaps.push(counters.window());
    }
    let elapsed = started.elapsed();
    let (ok, failed, gap) = counters.snapshot();
    let first_error = counters
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    counters.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    Run {
        swaps: done,
        latencies: counters.take_latencies(),
        quiet_latencies,
        ok,
        failed,
        gap,
        baseline_gap,
        swap_gaps,
        quiet_gaps,
        elapsed,
        first_error,
        swap_failures,
    }
}

/// The legacy strategy: the host keeps one pointer; a swap unloads (stops) the old plugin,
/// then loads (spawns, reads the handshake of) the new one, configured by `config(n)`.
pub(crate) async fn legacy_run(
    bins: &Bins,
    dir: &std::path::Path,
    swaps: usize,
    budget: Duration,
    config: impl Fn(usize) -> Result<PathBuf, String>,
) -> Result<Run, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let slot_cfg = setup::slot_config("bench");
    let launch = |n: usize| -> Result<Launch, String> {
        Ok(Launch::for_slot(
            bins.fixture.clone(),
            &slot_cfg,
            &config(n)?,
        ))
    };
    let (first, _) = floor::launch(&launch(0)?, STEP_TIMEOUT).await?;
    let pointer = Arc::new(ArcSwapOption::from_pointee(first.endpoint.clone()));
    let current = Arc::new(tokio::sync::Mutex::new(Some(first)));
    let run = measure(Target::Legacy(Arc::clone(&pointer)), swaps, budget, |n| {
        let pointer = Arc::clone(&pointer);
        let current = Arc::clone(&current);
        let how = launch(n);
        async move {
            let how = how?;
            let mut current = current.lock().await;
            pointer.store(None);
            if let Some(old) = current.take() {
                floor::stop(old, STEP_TIMEOUT).await?;
            }
            let (new, _) = floor::launch(&how, STEP_TIMEOUT).await?;
            pointer.store(Some(Arc::new(new.endpoint.clone())));
            *current = Some(new);
            Ok(())
        }
    })
    .await;
    if let Some(old) = current.lock().await.take() {
        let _ = floor::stop(old, STEP_TIMEOUT).await;
    }
    Ok(run)
}

/// Runs section 2 with `swaps` swaps per strategy.
pub async fn run(bins: &Bins, swaps: usize, budget: Duration) -> Result<Vec<Table>, String> {
    let temp = TempState::new().map_err(|e| format!("temp dir: {e}"))?;

    // Legacy: the host keeps one pointer; a swap unloads (stops) the old plugin, then loads
    // (spawns, reads the handshake of) the new one.
    let legacy_dir = temp.join("legacy");
    let legacy = legacy_run(bins, &legacy_dir, swaps, budget, |n| {
        Ok(setup::fixture_config(&legacy_dir, &format!("legacy{n}")))
    })
    .await?;

    // Safe: the supervisor, callers lease.
    let safe_dir = temp.join("safe");
    std::fs::create_dir_all(&safe_dir).map_err(|e| e.to_string())?;
    let sup = Supervisor::open(safe_dir.join("state")).map_err(|e| e.to_string())?;
    sup.add_process_slot(setup::slot_config("bench"));
    let slot = SlotName::new("bench").map_err(|e| e.to_string())?;
    let report = sup
        .activate(&slot, setup::candidate(bins, &safe_dir, "safe0"))
        .await
        .map_err(|e| e.to_string())?;
    if report.outcome != Outcome::Active {
        return Err(format!("first safe reload: {:?}", report.error));
    }
    let safe = measure(
        Target::Safe(sup.clone(), slot.clone()),
        swaps,
        budget,
        |n| {
            let sup = sup.clone();
            let slot = slot.clone();
            let candidate = setup::candidate(bins, &safe_dir, &format!("safe{n}"));
            async move {
                let report = sup
                    .activate(&slot, candidate)
                    .await
                    .map_err(|e| e.to_string())?;
                match report.outcome {
                    Outcome::Active => Ok(()),
                    _ => Err(format!("rolled back: {:?}", report.error)),
                }
            }
        },
    )
    .await;
    sup.shutdown().await;
    drop(temp);

    let mut t = Table::new(
        format!("2. Unload→load vs safe reload under continuous calls ({CALLERS} callers)"),
        &[
            "strategy",
            "swaps",
            "calls ok",
            "failed calls",
            "failed per 1,000 swaps",
            "gap in service around a swap: median / max",
            "same without swaps: median / max",
            "goal",
        ],
    );
    for (name, run, safe) in [
        ("legacy unload→load (by hand)", &legacy, false),
        ("safe reload (leases)", &safe, true),
    ] {
        let mut cells = run.count_cells(name);
        cells.extend([
            format!(
                "{} / {}",
                ms(run.swap_gaps.p50()),
                ms(run.gap.as_secs_f64() * 1000.0)
            ),
            format!(
                "{} / {}",
                ms(run.quiet_gaps.p50()),
                ms(run.baseline_gap.as_secs_f64() * 1000.0)
            ),
            run.goal_cell(safe),
        ]);
        t.row(cells);
        if let Some(e) = &run.first_error {
            t.note(format!("{name}: first failed call: {e}"));
        }
        if run.swap_failures > 0 {
            t.note(format!("{name}: {} swaps failed", run.swap_failures));
        }
    }
    t.note("Legacy: the host clears its plugin pointer, SIGTERMs the old plugin and waits for it, spawns the new one and reads its handshake, then publishes it. Calls in between fail (1 ms back-off after a failure). Safe: `Supervisor::activate` while callers hold `Supervisor::lease`s; the old generation is stopped only after its last lease ends.");
    Ok(vec![t])
}
