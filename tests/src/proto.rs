//! Wire types and gRPC glue of the fixture plugin.
//!
//! This is a hand-written equivalent of what `tonic-build` would generate for
//! `tests/proto/fixture.proto` (protoc is not needed): prost messages, a client
//! for each service, and tower services that a `tonic::transport::Server` can
//! route to.
//!
//! Two services are defined:
//! - `tryswap.fixture.Fixture/Call`, the fixture's tiny application service;
//! - `plugin.GRPCController/Shutdown`, go-plugin's controller, which asks the
//!   plugin to exit.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::{Request, Response, Status};

/// Full name of the fixture's application service.
pub const FIXTURE_SERVICE: &str = "tryswap.fixture.Fixture";
/// Full name of go-plugin's controller service.
pub const CONTROLLER_SERVICE: &str = "plugin.GRPCController";
/// HTTP/2 path of `tryswap.fixture.Fixture/Call`.
pub const CALL_PATH: &str = "/tryswap.fixture.Fixture/Call";
/// HTTP/2 path of `plugin.GRPCController/Shutdown`.
pub const SHUTDOWN_PATH: &str = "/plugin.GRPCController/Shutdown";

/// Request of `Fixture/Call`.
#[derive(Clone, PartialEq, Eq, ::prost::Message)]
pub struct CallRequest {
    /// Echoed back in [`CallReply::payload`].
    #[prost(string, tag = "1")]
    pub payload: ::prost::alloc::string::String,
}

/// Reply of `Fixture/Call`.
#[derive(Clone, PartialEq, Eq, ::prost::Message)]
pub struct CallReply {
    /// The request's payload, unchanged.
    #[prost(string, tag = "1")]
    pub payload: ::prost::alloc::string::String,
    /// The `message` of the plugin's config file (`"default"` without one), so
    /// tests can tell generations apart.
    #[prost(string, tag = "2")]
    pub message: ::prost::alloc::string::String,
    /// Process id of the plugin that answered.
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    /// The app protocol version negotiated at start.
    #[prost(uint32, tag = "4")]
    pub version: u32,
}

/// `plugin.Empty` of go-plugin's controller (wire-identical to
/// `google.protobuf.Empty`).
#[derive(Clone, Copy, PartialEq, Eq, ::prost::Message)]
pub struct Empty {}

/// Client of `tryswap.fixture.Fixture`.
#[derive(Debug, Clone)]
pub struct FixtureClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl FixtureClient<tonic::transport::Channel> {
    /// Wraps a connected channel.
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// Calls `Fixture/Call`.
    pub async fn call(&mut self, request: CallRequest) -> Result<Response<CallReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<CallRequest, CallReply>::default();
        let path = http::uri::PathAndQuery::from_static(CALL_PATH);
        self.inner.unary(Request::new(request), path, codec).await
    }
}

/// Client of go-plugin's `plugin.GRPCController`.
#[derive(Debug, Clone)]
pub struct ControllerClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl ControllerClient<tonic::transport::Channel> {
    /// Wraps a connected channel.
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// Calls `GRPCController/Shutdown`.
    pub async fn shutdown(&mut self) -> Result<Response<Empty>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Empty, Empty>::default();
        let path = http::uri::PathAndQuery::from_static(SHUTDOWN_PATH);
        self.inner.unary(Request::new(Empty {}), path, codec).await
    }
}

/// Server-side behaviour of `tryswap.fixture.Fixture`.
pub trait Fixture: Send + Sync + 'static {
    /// Answers `Fixture/Call`.
    fn call(
        &self,
        request: Request<CallRequest>,
    ) -> impl Future<Output = Result<Response<CallReply>, Status>> + Send;
}

/// Server-side behaviour of go-plugin's `plugin.GRPCController`.
pub trait GrpcController: Send + Sync + 'static {
    /// Answers `GRPCController/Shutdown`; go-plugin exits shortly after.
    fn shutdown(
        &self,
        request: Request<Empty>,
    ) -> impl Future<Output = Result<Response<Empty>, Status>> + Send;
}

/// Routable tower service serving a [`Fixture`] implementation.
#[derive(Debug)]
pub struct FixtureServer<T> {
    inner: Arc<T>,
}

impl<T> FixtureServer<T> {
    /// Serves `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl<T> Clone for FixtureServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> tonic::server::NamedService for FixtureServer<T> {
    const NAME: &'static str = FIXTURE_SERVICE;
}

impl<T, B> tower::Service<http::Request<B>> for FixtureServer<T>
where
    T: Fixture,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            CALL_PATH => {
                let inner = Arc::clone(&self.inner);
                unary(req, move |request: Request<CallRequest>| {
                    let inner = Arc::clone(&inner);
                    async move { inner.call(request).await }
                })
            }
            _ => unimplemented_response(),
        }
    }
}

/// Routable tower service serving a [`GrpcController`] implementation.
#[derive(Debug)]
pub struct ControllerServer<T> {
    inner: Arc<T>,
}

impl<T> ControllerServer<T> {
    /// Serves `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl<T> Clone for ControllerServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> tonic::server::NamedService for ControllerServer<T> {
    const NAME: &'static str = CONTROLLER_SERVICE;
}

impl<T, B> tower::Service<http::Request<B>> for ControllerServer<T>
where
    T: GrpcController,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            SHUTDOWN_PATH => {
                let inner = Arc::clone(&self.inner);
                unary(req, move |request: Request<Empty>| {
                    let inner = Arc::clone(&inner);
                    async move { inner.shutdown(request).await }
                })
            }
            _ => unimplemented_response(),
        }
    }
}

/// Decodes one unary request, runs `handler`, encodes its answer.
fn unary<Req, Resp, B, F, Fut>(
    req: http::Request<B>,
    handler: F,
) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
where
    Req: ::prost::Message + Default + Send + 'static,
    Resp: ::prost::Message + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    F: FnMut(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    Box::pin(async move {
        let codec = tonic_prost::ProstCodec::<Resp, Req>::default();
        let mut grpc = tonic::server::Grpc::new(codec);
        Ok(grpc.unary(tower::service_fn(handler), req).await)
    })
}

/// The answer gRPC servers give to an unknown method.
fn unimplemented_response() -> BoxFuture<http::Response<tonic::body::Body>, Infallible> {
    Box::pin(async move { Ok(Status::unimplemented("unknown method").into_http()) })
}
