//! The active health check over `grpc.health.v1`: [`GrpcCheck`].

use std::fmt;

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use http_body::Body;
use tokio::sync::Mutex;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::error::BoxError;
use crate::health::HealthCheck;

/// Checks a replica with the gRPC health protocol (`grpc.health.v1`,
/// tonic-health's generated client), over the replica's own channel.
///
/// | answer to `Check` | the replica |
/// |---|---|
/// | `SERVING` | healthy |
/// | `NOT_SERVING`, `SERVICE_UNKNOWN`, `UNKNOWN` | down |
/// | the status `NOT_FOUND` (the server does not know the service) | down |
/// | the status `UNIMPLEMENTED` (the server has no health service: gRFC A17) | healthy |
/// | any other status or error | down |
///
/// [`watching`](Self::watching) keeps a `Watch` stream open instead of
/// calling `Check` every round.
///
/// A check that hangs is bounded by the pool's check timeout
/// ([`HealthChecks::timeout`](crate::health::HealthChecks::timeout)), as
/// every check is.
///
/// ```
/// use steadfast::grpc::GrpcCheck;
/// use steadfast::pool::Replica;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let replica = Replica::new(channel.clone())
///     .health_check(GrpcCheck::new(channel, "search.v1.Search"));
/// # drop(replica);
/// # }
/// ```
pub struct GrpcCheck<T> {
    client: HealthClient<T>,
    service: String,
    /// With [`watching`](GrpcCheck::watching): the `Watch` stream, kept
    /// open from one check to the next.
    watch: Option<Arc<Mutex<Watched>>>,
}

/// A `Watch` stream and the latest status it sent.
#[derive(Default)]
struct Watched {
    stream: Option<tonic::Streaming<HealthCheckResponse>>,
    status: i32,
}

impl<T> fmt::Debug for GrpcCheck<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCheck")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl<T> GrpcCheck<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<BoxError> + Send,
{
    /// Checks `service` (the empty name asks for the server as a whole)
    /// through `channel`.
    pub fn new(channel: T, service: impl Into<String>) -> Self {
        Self {
            client: HealthClient::new(channel),
            service: service.into(),
            watch: None,
        }
    }

    /// Checks with a `Watch` stream instead of a `Check` call on every
    /// round: the stream stays open, and each round reads the statuses the
    /// server sent since the last (a round costs no call while it is
    /// open). A stream that ends or fails is opened again at once, in the
    /// same round; a round whose stream cannot be opened, or sends nothing
    /// before the check timeout, fails. The answers read as for `Check`.
    pub fn watching(channel: T, service: impl Into<String>) -> Self {
        Self {
            watch: Some(Arc::default()),
            ..Self::new(channel, service)
        }
    }
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
enum Down {
    #[error("the health service answered {0}")]
    Status(&'static str),
    #[error("the health check failed with {:?}: {}", .0.code(), .0.message())]
    Call(tonic::Status),
}

/// What an answer to `Check` says of the replica.
fn judge(answer: Result<i32, tonic::Status>) -> Result<(), BoxError> {
    match answer {
        Ok(status) if status == ServingStatus::Serving as i32 => Ok(()),
        Ok(status) => {
            let name =
                ServingStatus::try_from(status).map_or("an unknown status", |s| s.as_str_name());
            Err(Box::new(Down::Status(name)))
        }
        // No health service on the server (gRFC A17): healthy.
        Err(status) if status.code() == Code::Unimplemented => Ok(()),
        Err(status) => Err(Box::new(Down::Call(status))),
    }
}

impl<T> HealthCheck for GrpcCheck<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    T::ResponseBody: Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<BoxError> + Send,
{
    fn check(&self) -> BoxFuture<'static, Result<(), BoxError>> {
        let mut client = self.client.clone();
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        let Some(watch) = self.watch.clone() else {
            return Box::pin(async move {
                let answer = client
                    .check(request)
                    .await
                    .map(|res| res.into_inner().status);
                judge(answer)
            });
        };
        Box::pin(async move {
            // Held for the round: rounds of one replica do not overlap on
            // one stream (a round cut short by the timeout lets go of it).
            let mut watched = watch.lock().await;
            if watched.read_since().is_err() {
                // Ended or failed: opened again now.
                let mut stream = match client.watch(request).await {
                    Ok(res) => res.into_inner(),
                    Err(status) => return judge(Err(status)),
                };
                match stream.message().await {
                    Ok(Some(first)) => {
                        watched.status = first.status;
                        watched.stream = Some(stream);
                    }
                    Ok(None) => return Err("the health stream ended at once".into()),
                    Err(status) => return judge(Err(status)),
                }
            }
            judge(Ok(watched.status))
        })
    }
}

impl Watched {
    /// Reads what the stream sent since the last round, without waiting;
    /// `Err` when there is no stream, or it ended or failed.
    fn read_since(&mut self) -> Result<(), ()> {
        let Some(stream) = &mut self.stream else {
            return Err(());
        };
        loop {
            match stream.message().now_or_never() {
                // Nothing more yet: the stream is open.
                None => return Ok(()),
                Some(Ok(Some(message))) => self.status = message.status,
                Some(Ok(None) | Err(_)) => {
                    self.stream = None;
                    return Err(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_statuses() {
        assert!(judge(Ok(ServingStatus::Serving as i32)).is_ok());
        for down in [
            ServingStatus::NotServing,
            ServingStatus::ServiceUnknown,
            ServingStatus::Unknown,
        ] {
            assert!(judge(Ok(down as i32)).is_err(), "{down:?}");
        }
        assert!(judge(Ok(99)).is_err(), "a status from a newer protocol");
        assert!(judge(Err(tonic::Status::unimplemented("no health service"))).is_ok());
        assert!(judge(Err(tonic::Status::not_found("unknown service"))).is_err());
        assert!(judge(Err(tonic::Status::unavailable("down"))).is_err());
    }
}
