//! The active health check over `grpc.health.v1`: [`GrpcCheck`].

use std::fmt;

use futures::future::BoxFuture;
use http_body::Body;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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
        Box::pin(async move {
            let answer = client
                .check(request)
                .await
                .map(|res| res.into_inner().status);
            judge(answer)
        })
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
