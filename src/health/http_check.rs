use std::fmt;
use std::marker::PhantomData;
use std::ops::RangeInclusive;

use futures::future::BoxFuture;
use http::{Request, Response, StatusCode, Uri};
use tower::{Service, ServiceExt};

use super::HealthCheck;
use crate::error::BoxError;

/// Healthy when `GET uri` answers an expected status (2xx by default),
/// sent through your own HTTP client (a hyper-util `Client`, a
/// `tonic::transport::Channel` …), so TLS and proxies work as for real calls.
///
/// ```
/// use steadfast::health::HttpCheck;
/// # let client = tower::service_fn(|_: http::Request<String>| async {
/// #     Ok::<_, std::io::Error>(http::Response::new(()))
/// # });
/// let check: HttpCheck<_, String> = HttpCheck::new(client, "http://10.0.0.7:8080/healthz".parse().unwrap())
///     .expect_statuses(200..=204);
/// # let _ = check;
/// ```
pub struct HttpCheck<S, B> {
    client: S,
    uri: Uri,
    expected: RangeInclusive<u16>,
    body: PhantomData<fn() -> B>,
}

/// What a response says about health: its status.
pub trait Status {
    /// The response's status.
    fn status(&self) -> StatusCode;
}

impl<T> Status for Response<T> {
    fn status(&self) -> StatusCode {
        Response::status(self)
    }
}

impl<S, B> fmt::Debug for HttpCheck<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCheck")
            .field("uri", &self.uri)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl<S, B> HttpCheck<S, B> {
    /// A check that sends `GET uri` (with an empty, default body) through
    /// `client` and expects a 2xx.
    pub fn new(client: S, uri: Uri) -> Self {
        Self {
            client,
            uri,
            expected: 200..=299,
            body: PhantomData,
        }
    }

    /// The statuses that mean healthy.
    #[must_use]
    pub fn expect_statuses(mut self, statuses: RangeInclusive<u16>) -> Self {
        self.expected = statuses;
        self
    }
}

/// The replica answered a status outside the expected range.
#[derive(Debug, thiserror::Error)]
#[error("health check answered {0}")]
struct UnexpectedStatus(StatusCode);

impl<S, B> HealthCheck for HttpCheck<S, B>
where
    S: Service<Request<B>> + Clone + Send + Sync + 'static,
    S::Response: Status + Send,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Default + Send + 'static,
{
    fn check(&self) -> BoxFuture<'static, Result<(), BoxError>> {
        let client = self.client.clone();
        let mut req = Request::new(B::default());
        *req.uri_mut() = self.uri.clone();
        let expected = self.expected.clone();
        Box::pin(async move {
            let res = client.oneshot(req).await.map_err(Into::into)?;
            if expected.contains(&res.status().as_u16()) {
                Ok(())
            } else {
                Err(UnexpectedStatus(res.status()).into())
            }
        })
    }
}
