//! Section 7: outside callers (issue 13). Callers in this process (not the host that swaps)
//! call a unix-socket plugin on a fresh connection per call while it is swapped, three ways:
//! the legacy unload→load by hand (callers follow the host's pointer); `tryswap serve`
//! without stable endpoints (callers re-read the address from `GET /v1/slots/{slot}` after a
//! failed call: today's way to follow a daemon); and `tryswap serve` with the stable
//! endpoint `<state_dir>/endpoints/<slot>.sock` (callers always dial the link).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde_json::json;
use tryswap_fsm::{Endpoint, Network, Protocol};
use tryswap_tests::{FixtureConfig, FixtureNetwork, TempState};

use crate::daemon::{request, Daemon};
use crate::report::{ms, Samples, Table};
use crate::setup::Bins;
use crate::swaps::{legacy_run, measure, status_address, Run, Target};

const SLOT: &str = "bench";

fn unix_fixture(dir: &std::path::Path, message: &str) -> Result<std::path::PathBuf, String> {
    FixtureConfig {
        network: Some(FixtureNetwork::Unix),
        ..FixtureConfig::with_message(message)
    }
    .write(&dir.join(format!("{message}.toml")))
    .map_err(|e| e.to_string())
}

async fn daemon_reload(
    daemon: &Daemon,
    bins: &Bins,
    config: std::path::PathBuf,
) -> Result<(), String> {
    let body = json!({
        "artifact": bins.fixture.to_string_lossy(),
        "config_file": config.to_string_lossy(),
    });
    let path = format!("/v1/slots/{SLOT}/reloads");
    let (status, text) = request(daemon.socket(), "POST", &path, Some(body)).await?;
    if status != 200 {
        return Err(format!("POST {path}: {status}: {text}"));
    }
    Ok(())
}

/// The daemon strategies: a fresh daemon, a first reload, then `swaps` reloads measured
/// with callers reaching the plugin through `target(daemon)`.
async fn through_daemon(
    bins: &Bins,
    dir: &std::path::Path,
    swaps: usize,
    budget: Duration,
    stable: bool,
) -> Result<Run, String> {
    let daemon = Daemon::start(bins, dir, &[SLOT.to_owned()]).await?;
    daemon_reload(&daemon, bins, unix_fixture(dir, "d0")?).await?;
    let target = if stable {
        let link = daemon
            .state_dir()
            .join("endpoints")
            .join(format!("{SLOT}.sock"));
        Target::Fixed(Endpoint {
            core_version: 1,
            app_version: 1,
            network: Network::Unix,
            address: link.to_string_lossy().into_owned(),
            protocol: Protocol::Grpc,
            server_cert: None,
        })
    } else {
        let first = status_address(daemon.socket(), SLOT).await;
        Target::Reread(
            daemon.socket().to_path_buf(),
            SLOT.to_owned(),
            Arc::new(ArcSwapOption::new(first.map(Arc::new))),
        )
    };
    let daemon = Arc::new(daemon);
    let run = measure(target, swaps, budget, |n| {
        let daemon = Arc::clone(&daemon);
        let config = unix_fixture(dir, &format!("d{n}"));
        async move { daemon_reload(&daemon, bins, config?).await }
    })
    .await;
    if let Ok(daemon) = Arc::try_unwrap(daemon) {
        daemon.stop().await;
    }
    Ok(run)
}

/// Runs section 7 with `swaps` swaps per strategy.
pub async fn run(bins: &Bins, swaps: usize, budget: Duration) -> Result<Vec<Table>, String> {
    let temp = TempState::new().map_err(|e| format!("temp dir: {e}"))?;
    let legacy_dir = temp.join("legacy");
    let legacy = legacy_run(bins, &legacy_dir, swaps, budget, |n| {
        unix_fixture(&legacy_dir, &format!("legacy{n}"))
    })
    .await?;
    let reread = through_daemon(bins, &temp.join("reread"), swaps, budget, false).await?;
    let stable = through_daemon(bins, &temp.join("stable"), swaps, budget, true).await?;
    drop(temp);

    let mut t = Table::new(
        "7. Outside callers: following a swap from another process (unix socket, a connection per call)",
        &[
            "strategy",
            "swaps",
            "calls ok",
            "failed calls",
            "failed per 1,000 swaps",
            "call latency during swaps: p50 / p99",
            "without swaps: p50 / p99",
            "goal",
        ],
    );
    let lat = |s: &Samples| format!("{} / {}", ms(s.p50()), ms(s.p99()));
    for (name, run, goal) in [
        ("legacy unload→load (by hand)", &legacy, false),
        ("daemon, callers re-read the address", &reread, false),
        ("daemon, stable endpoint", &stable, true),
    ] {
        let mut cells = run.count_cells(name);
        cells.extend([
            lat(&run.latencies),
            lat(&run.quiet_latencies),
            run.goal_cell(goal),
        ]);
        t.row(cells);
        if let Some(e) = &run.first_error {
            t.note(format!("{name}: first failed call: {e}"));
        }
    }
    t.note("Four callers in the bench process, each call on a new connection (`tryswap_tests::call`), 1 ms back-off after a failure; the next swap waits until the callers made a few successful calls. Re-read: a caller keeps the address `GET /v1/slots/bench` gave and asks again after a failed call. Stable endpoint: every call dials `<state_dir>/endpoints/bench.sock`; the old generation is stopped once its connections are gone (`drain_timeout` 5 s). The latency columns are the successful calls' latencies while swaps happen vs in the quiet second before: their difference is the latency bump of a swap.");
    Ok(vec![t])
}
