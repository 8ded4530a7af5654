//! A stack's errors as `tonic::Status`: [`status_for`], and the layer that
//! applies it to every call.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::classify::PUSHBACK_HEADER;
use crate::classify::grpc::{is_timeout, status_code_in};
use crate::error::{BoxError, CircuitOpen, NoHealthyReplica};

/// The `tonic::Status` for a stack's error.
///
/// | error (anywhere in its chain of sources) | status |
/// |---|---|
/// | a `tonic::Status` | that status |
/// | [`CircuitOpen`], [`NoHealthyReplica`] | `UNAVAILABLE`, with `grpc-retry-pushback-ms` from their hint when there is one |
/// | a timeout (tower's or tokio's `Elapsed`) | `DEADLINE_EXCEEDED` |
/// | an I/O error (a refused or reset connection), or what tonic itself maps to `UNAVAILABLE` | `UNAVAILABLE` |
/// | anything else | `UNKNOWN`, with the error's text |
///
/// The message names the circuit or pool for the crate's own errors.
pub fn status_for(err: BoxError) -> Status {
    let err = match err.downcast::<Status>() {
        Ok(status) => return *status,
        Err(err) => err,
    };
    if let Some(status) = crate_status(err.as_ref()) {
        return status;
    }
    if let Some(code) = status_code_in(err.as_ref()) {
        return Status::new(code, err.to_string());
    }
    if is_timeout(err.as_ref()) {
        return Status::deadline_exceeded(err.to_string());
    }
    if has_io_error(err.as_ref()) {
        return Status::unavailable(err.to_string());
    }
    match Status::try_from_error(err) {
        Ok(status) => status,
        Err(err) => Status::unknown(err.to_string()),
    }
}

/// The status for one of the crate's own refusals in `err`'s chain.
fn crate_status(err: &(dyn Error + 'static)) -> Option<Status> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(open) = err.downcast_ref::<CircuitOpen>() {
            return Some(unavailable(open.to_string(), open.retry_after()));
        }
        if let Some(none) = err.downcast_ref::<NoHealthyReplica>() {
            return Some(unavailable(none.to_string(), none.retry_after()));
        }
        next = err.source();
    }
    None
}

/// `UNAVAILABLE` with `message`, and the pushback gRFC A6 defines when the
/// time to come back is known (in whole milliseconds, rounded up).
fn unavailable(message: String, retry_after: Option<Duration>) -> Status {
    let mut metadata = MetadataMap::new();
    if let Some(delay) = retry_after {
        let ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        metadata.insert(PUSHBACK_HEADER, MetadataValue::from(ms));
    }
    Status::with_metadata(Code::Unavailable, message, metadata)
}

fn has_io_error(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<std::io::Error>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// Makes [`GrpcStatus`] services: every error of the stack below becomes a
/// `tonic::Status` ([`status_for`]), and none is returned from
/// `poll_ready`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcStatusLayer {
    _private: (),
}

impl GrpcStatusLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

impl<S> Layer<S> for GrpcStatusLayer {
    type Service = GrpcStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcStatus {
            inner,
            not_ready: None,
        }
    }
}

/// Answers every error of the service below with a `tonic::Status`, the
/// one a generated tonic client passes on to its caller; made by
/// [`GrpcStatusLayer`].
///
/// An error from the service's `poll_ready` is not returned there (tonic
/// would turn it into `UNKNOWN`): the service reports itself ready, and the
/// next call fails with that error's status instead.
pub struct GrpcStatus<S> {
    inner: S,
    /// The error `poll_ready` met, for the next call to return.
    not_ready: Option<Status>,
}

impl<S: fmt::Debug> fmt::Debug for GrpcStatus<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcStatus")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for GrpcStatus<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            // A clone starts clean: its own poll_ready decides.
            not_ready: None,
        }
    }
}

impl<S, Req> Service<Req> for GrpcStatus<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Status;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                // Ready, with the error kept for the call.
                self.not_ready = Some(status_for(err.into()));
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.not_ready.take() {
            Some(status) => ResponseFuture {
                state: State::Failed {
                    status: Some(status),
                },
            },
            None => ResponseFuture {
                state: State::Called {
                    future: self.inner.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`GrpcStatus`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Failed { status: Option<Status> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => future.poll(cx).map_err(|e| status_for(e.into())),
            StateProj::Failed { status } => match status.take() {
                Some(status) => Poll::Ready(Err(status)),
                None => panic!("`GrpcStatus`'s future polled after it completed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tower::{ServiceExt, service_fn};

    use super::*;

    fn pushback_of(status: &Status) -> Option<String> {
        status
            .metadata()
            .get(PUSHBACK_HEADER)
            .map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn each_error_as_its_status() {
        let open = status_for(Box::new(CircuitOpen::new(
            Arc::from("db"),
            Some(Duration::from_micros(2_500_100)),
        )));
        assert_eq!(open.code(), Code::Unavailable);
        assert_eq!(open.message(), "circuit `db` is open");
        assert_eq!(pushback_of(&open).as_deref(), Some("2501"), "rounded up");
        let none = status_for(Box::new(NoHealthyReplica::new(Arc::from("fleet"), None)));
        assert_eq!((none.code(), pushback_of(&none)), (Code::Unavailable, None));
        let elapsed = status_for(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(elapsed.code(), Code::DeadlineExceeded);
        let io = status_for(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(io.code(), Code::Unavailable);
        let own = status_for(Box::new(Status::permission_denied("no")));
        assert_eq!((own.code(), own.message()), (Code::PermissionDenied, "no"));
        let other = status_for("something else".into());
        assert_eq!(other.code(), Code::Unknown);
        let open_for_good = status_for(Box::new(CircuitOpen::new(
            Arc::from("db"),
            Some(Duration::MAX),
        )));
        assert_eq!(pushback_of(&open_for_good), Some(u64::MAX.to_string()));
    }

    #[tokio::test]
    async fn an_error_from_poll_ready_comes_with_the_call() {
        #[derive(Clone)]
        struct NeverReady;
        impl Service<()> for NeverReady {
            type Response = ();
            type Error = BoxError;
            type Future = std::future::Ready<Result<(), BoxError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Err(Box::new(NoHealthyReplica::new(
                    Arc::from("fleet"),
                    Some(Duration::from_secs(1)),
                ))))
            }
            fn call(&mut self, (): ()) -> Self::Future {
                unreachable!("never ready")
            }
        }
        let mut svc = GrpcStatusLayer::new().layer(NeverReady);
        let ready = std::future::poll_fn(|cx| svc.poll_ready(cx)).await;
        assert!(ready.is_ok(), "ready: the error waits for the call");
        let status = svc.call(()).await.expect_err("the error");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(pushback_of(&status).as_deref(), Some("1000"));
        let ok = GrpcStatusLayer::new()
            .layer(service_fn(|()| async { Ok::<_, BoxError>(7) }))
            .oneshot(())
            .await
            .expect("passed through");
        assert_eq!(ok, 7);
    }
}
