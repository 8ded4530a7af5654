//! gRPC integration (feature `grpc`): a stack's errors as the
//! `tonic::Status` a generated client hands its caller, the active
//! health check over `grpc.health.v1` ([`GrpcCheck`]), and a server's own
//! health status kept in step with its dependencies ([`HealthSync`]).
//!
//! A tonic client is generic over any `Service<http::Request<tonic::body::Body>>`,
//! so steadfast's layers sit between a generated client and a `Channel` (one
//! `Endpoint::connect_lazy` channel per replica in a `Pool`). Classify with
//! [`GrpcErrorsAsFailures`](crate::classify::GrpcErrorsAsFailures), and put
//! [`GrpcStatusLayer`] on top, right under the generated client:
//!
//! ```
//! use steadfast::classify::GrpcErrorsAsFailures;
//! use steadfast::grpc::GrpcStatusLayer;
//! use steadfast::CircuitBreakerLayer;
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("health")
//!     .classify(GrpcErrorsAsFailures::new())
//!     .build()?;
//! let stack = ServiceBuilder::new()
//!     .layer(GrpcStatusLayer::new())
//!     .layer(breaker)
//!     .service(channel);
//! let client = tonic_health::pb::health_client::HealthClient::new(stack);
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! Without [`GrpcStatusLayer`], tonic turns any error it does not know
//! (`CircuitOpen`, `NoHealthyReplica`, a timeout) into `UNKNOWN`, and any
//! error from `poll_ready` into `UNKNOWN` too; with it, the caller sees
//! what happened, and when to come back.

mod buffer;
mod check;
mod health_sync;
mod replay;
mod status;

pub use self::buffer::{BufferBody, BufferBodyLayer, DEFAULT_MAX_WAIT};
pub use self::check::GrpcCheck;
pub use self::health_sync::HealthSync;
pub use self::replay::{GrpcReplay, into_tonic_body, replayable};
pub use self::status::{GrpcStatus, GrpcStatusLayer, ResponseFuture, status_for};
