//! gRPC client side: talk to a plugin at the address from its handshake line.
//!
//! Every function takes a `network` (`"tcp"` or `"unix"`, the handshake's
//! NETWORK-TYPE), an `address` (NETWORK-ADDR) and a `timeout` that bounds the
//! whole operation, connection included.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::{CallReply, CallRequest, ControllerClient, FixtureClient};

pub use tonic_health::pb::health_check_response::ServingStatus;

/// Why a call to a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `network` is neither `tcp` nor `unix`.
    #[error("unsupported network {network:?} for address {address}")]
    UnsupportedNetwork {
        /// The network given.
        network: String,
        /// The address given.
        address: String,
    },
    /// The address cannot be made into an endpoint URI.
    #[error("invalid {network} address {address}: {source}")]
    InvalidAddress {
        /// The network given.
        network: String,
        /// The address given.
        address: String,
        /// The URI error.
        source: tonic::transport::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {network} {address}: {source}")]
    Connect {
        /// The network given.
        network: String,
        /// The address given.
        address: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The RPC returned a non-OK status.
    #[error("{method} on {network} {address} failed: {status}")]
    Rpc {
        /// The full method, e.g. `/grpc.health.v1.Health/Check`.
        method: &'static str,
        /// The network given.
        network: String,
        /// The address given.
        address: String,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The health reply carried a status number outside the enum.
    #[error("health of {service:?} on {address}: unknown status number {value}")]
    UnknownStatus {
        /// The service asked about.
        service: String,
        /// The address given.
        address: String,
        /// The raw enum number.
        value: i32,
    },
    /// Connection plus RPC took longer than the timeout.
    #[error("{what} on {network} {address} timed out after {timeout:?}")]
    Timeout {
        /// What was attempted.
        what: &'static str,
        /// The network given.
        network: String,
        /// The address given.
        address: String,
        /// The timeout given.
        timeout: Duration,
    },
}

impl ClientError {
    /// The gRPC status, if the server answered with an error.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// Connects a channel to a plugin over `tcp` (`host:port`) or `unix` (socket
/// path). Fails fast if nothing listens; bounded by `timeout`.
pub async fn connect(
    network: &str,
    address: &str,
    timeout: Duration,
) -> Result<Channel, ClientError> {
    bounded("connect", network, address, timeout, async {
        connect_inner(network, address, timeout).await
    })
    .await
}

async fn connect_inner(
    network: &str,
    address: &str,
    timeout: Duration,
) -> Result<Channel, ClientError> {
    let invalid = |source| ClientError::InvalidAddress {
        network: network.to_owned(),
        address: address.to_owned(),
        source,
    };
    let connect_err = |source| ClientError::Connect {
        network: network.to_owned(),
        address: address.to_owned(),
        source,
    };
    match network {
        "tcp" => {
            let endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(invalid)?
                .connect_timeout(timeout)
                .timeout(timeout);
            endpoint.connect().await.map_err(connect_err)
        }
        "unix" => {
            // The URI is ignored by the connector; it only has to be valid.
            let endpoint = Endpoint::from_static("http://plugin.invalid")
                .connect_timeout(timeout)
                .timeout(timeout);
            let path = address.to_owned();
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(connect_err)
        }
        other => Err(ClientError::UnsupportedNetwork {
            network: other.to_owned(),
            address: address.to_owned(),
        }),
    }
}

async fn bounded<T>(
    what: &'static str,
    network: &str,
    address: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            what,
            network: network.to_owned(),
            address: address.to_owned(),
            timeout,
        }),
    }
}

fn rpc_error(
    method: &'static str,
    network: &str,
    address: &str,
) -> impl FnOnce(tonic::Status) -> ClientError {
    let network = network.to_owned();
    let address = address.to_owned();
    move |status| ClientError::Rpc {
        method,
        network,
        address,
        status,
    }
}

/// Calls `tryswap.fixture.Fixture/Call` with `payload`.
pub async fn call(
    network: &str,
    address: &str,
    payload: &str,
    timeout: Duration,
) -> Result<CallReply, ClientError> {
    bounded("Fixture/Call", network, address, timeout, async {
        let channel = connect_inner(network, address, timeout).await?;
        let reply = FixtureClient::new(channel)
            .call(CallRequest {
                payload: payload.to_owned(),
            })
            .await
            .map_err(rpc_error(crate::proto::CALL_PATH, network, address))?;
        Ok(reply.into_inner())
    })
    .await
}

/// Asks `grpc.health.v1.Health/Check` about `service` (go-plugin serves
/// `"plugin"`). An unknown service is a [`ClientError::Rpc`] with code
/// `NotFound`.
pub async fn health(
    network: &str,
    address: &str,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, ClientError> {
    const METHOD: &str = "/grpc.health.v1.Health/Check";
    bounded("Health/Check", network, address, timeout, async {
        let channel = connect_inner(network, address, timeout).await?;
        let reply = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(rpc_error(METHOD, network, address))?;
        let value = reply.into_inner().status;
        ServingStatus::try_from(value).map_err(|_| ClientError::UnknownStatus {
            service: service.to_owned(),
            address: address.to_owned(),
            value,
        })
    })
    .await
}

/// Calls go-plugin's `plugin.GRPCController/Shutdown`; a go-plugin plugin
/// exits shortly after answering.
pub async fn shutdown(network: &str, address: &str, timeout: Duration) -> Result<(), ClientError> {
    bounded(
        "GRPCController/Shutdown",
        network,
        address,
        timeout,
        async {
            let channel = connect_inner(network, address, timeout).await?;
            ControllerClient::new(channel)
                .shutdown()
                .await
                .map_err(rpc_error(crate::proto::SHUTDOWN_PATH, network, address))?;
            Ok(())
        },
    )
    .await
}
