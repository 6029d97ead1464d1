//! The tcp stable endpoint: a listener (owned by `tryswap serve`) that forwards each
//! accepted connection to the slot's active generation (over tcp, or to its unix socket).
//!
//! Every forwarded connection holds a [`crate::Lease`] on the generation it was forwarded
//! to, for as long as it stays open: after a swap, new connections go to the new
//! generation, and the old one is stopped only when its forwarded connections have closed
//! or `drain_timeout` passed (then its graceful stop sends GOAWAY through the connection,
//! and an HTTP/2 client reconnects through the endpoint to the new generation).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tryswap_fsm::{Network, SlotName};

use crate::supervisor::Supervisor;

/// A future that resolves when the forwarder must stop.
pub type Cancel = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Why the tcp endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("slot {slot}: binding the endpoint {address}: {source}")]
pub struct BindError {
    /// The slot.
    pub slot: SlotName,
    /// The configured address.
    pub address: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// Binds the slot's tcp endpoint.
pub async fn bind(slot: &SlotName, address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            slot: slot.clone(),
            address,
            source,
        })
}

/// Accepts connections on `listener` and forwards each to the slot's active generation
/// until `cancel` resolves. A connection that arrives while the slot has no active
/// generation is closed at once (the caller fails fast and retries).
pub async fn forward(
    supervisor: Supervisor,
    slot: SlotName,
    listener: TcpListener,
    cancel: Cancel,
) {
    tokio::pin!(cancel);
    loop {
        let accepted = tokio::select! {
            _ = &mut cancel => return,
            a = listener.accept() => a,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off briefly instead of spinning.
                tracing::warn!(slot = %slot, error = %e, "accepting on the tcp endpoint");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let supervisor = supervisor.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            if let Err(why) = forward_one(&supervisor, &slot, client).await {
                tracing::debug!(slot = %slot, %peer, %why, "tcp endpoint connection not forwarded");
            }
        });
    }
}

async fn forward_one(
    supervisor: &Supervisor,
    slot: &SlotName,
    mut client: TcpStream,
) -> Result<(), String> {
    let lease = supervisor.lease(slot).map_err(|e| e.to_string())?;
    let endpoint = lease
        .endpoint()
        .ok_or_else(|| format!("generation {} serves no address", lease.generation()))?;
    let failed = |e: std::io::Error| {
        format!(
            "connecting to generation {} at {}: {e}",
            lease.generation(),
            endpoint.address
        )
    };
    // The lease lives as long as the connection: the generation drains it.
    match endpoint.network {
        Network::Tcp => {
            let mut backend = TcpStream::connect(&endpoint.address)
                .await
                .map_err(failed)?;
            let _ = backend.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        }
        Network::Unix => {
            let mut backend = tokio::net::UnixStream::connect(&endpoint.address)
                .await
                .map_err(failed)?;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        }
    }
    drop(lease);
    Ok(())
}
