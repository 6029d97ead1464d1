//! An outside caller of a plugin, for the stable-endpoint tests and the bench: calls
//! `Fixture/Call` in a loop through one address until its stdin closes, then prints one
//! JSON line: `{"ok":n,"failed":n,"errors":[…],"pids":[…],"latencies_us":[…]}`.
//!
//! `--connection fresh` dials for every call (resolving a unix endpoint's link each time);
//! `--connection long` keeps one channel (tonic reconnects it through the same address
//! when the server closes it, e.g. after go-plugin's graceful shutdown), and retries once a
//! call that provably never left it (as grpc-go does; counted in `transparent_retries`).

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tryswap_tests::proto::{CallRequest, FixtureClient};

#[derive(Parser)]
struct Args {
    /// `unix` or `tcp`.
    #[arg(long)]
    network: String,
    /// The socket path or host:port to call.
    #[arg(long)]
    address: String,
    /// `fresh` (a connection per call) or `long` (one channel for every call).
    #[arg(long, default_value = "fresh")]
    connection: String,
    /// Per-call timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Keep every call's latency in the output.
    #[arg(long)]
    latencies: bool,
    /// Pause between calls in milliseconds (pacing, so callers do not take every CPU).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

/// Whether a failed call provably never reached the server: hyper cancelled the request
/// before writing it because the connection was closing (after a GOAWAY). grpc-go retries
/// exactly these calls transparently (gRFC A6 "transparent retry"); tonic does not, so
/// this caller does, once, and counts it.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::SeqCst);
        });
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    let mut pids = BTreeSet::new();
    let mut latencies = Vec::new();
    let mut channel = None;
    let mut n = 0u64;
    let mut retried = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let payload = format!("call-{n}");
        let began = Instant::now();
        let result = if args.connection == "long" {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let ch = match &channel {
                    Some(ch) => Ok(ch),
                    None => tryswap_tests::connect(&args.network, &args.address, timeout)
                        .await
                        .map(|c| &*channel.insert(c)),
                };
                let ch = match ch {
                    Ok(ch) => ch.clone(),
                    Err(e) => break Err(e.to_string()),
                };
                let call = tokio::time::timeout(
                    timeout,
                    FixtureClient::new(ch).call(CallRequest {
                        payload: payload.clone(),
                    }),
                )
                .await;
                match call {
                    Err(_) => break Err("timed out".to_owned()),
                    Ok(Ok(reply)) => break Ok(reply.into_inner()),
                    Ok(Err(status)) if attempt == 1 && never_sent(&status) => {
                        retried += 1;
                        channel = None;
                    }
                    Ok(Err(status)) => break Err(status.to_string()),
                }
            }
        } else {
            tryswap_tests::call(&args.network, &args.address, &payload, timeout)
                .await
                .map_err(|e| e.to_string())
        };
        match result {
            Ok(reply) if reply.payload == payload => {
                ok += 1;
                pids.insert(reply.pid);
                if args.latencies {
                    latencies.push(began.elapsed().as_micros() as u64);
                }
            }
            Ok(reply) => {
                failed += 1;
                errors.push(format!("wrong payload {:?}", reply.payload));
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 20 {
                    errors.push(e);
                }
                // A dead channel is dialed afresh for the next call.
                channel = None;
            }
        }
        if args.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "ok": ok, "failed": failed, "errors": errors, "transparent_retries": retried,
            "pids": pids, "latencies_us": latencies,
        })
    );
}
