//! A layer's error as the HTTP answer a server gives its own caller.

use std::error::Error;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::error::{BoxError, CircuitOpen, NoHealthyReplica};

/// What a failed call to a dependency means for the caller of this server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    /// What failed, in a few words (the body, with the dependency named).
    reason: String,
}

/// The answer for `err`: the first error in its chain of sources that the
/// crate or tower knows decides it.
fn answer(err: &(dyn Error + 'static)) -> Answer {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(open) = err.downcast_ref::<CircuitOpen>() {
            return Answer::open(open);
        }
        if let Some(none) = err.downcast_ref::<NoHealthyReplica>() {
            return Answer {
                status: StatusCode::SERVICE_UNAVAILABLE,
                retry_after: none.retry_after(),
                reason: none.to_string(),
            };
        }
        if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
            return Answer {
                status: StatusCode::GATEWAY_TIMEOUT,
                retry_after: None,
                reason: "upstream timed out".to_owned(),
            };
        }
        next = err.source();
    }
    Answer {
        status: StatusCode::BAD_GATEWAY,
        retry_after: None,
        reason: "upstream failed".to_owned(),
    }
}

/// `Retry-After` in delay-seconds (RFC 9110 §10.2.3) for `delay`, rounded
/// up: a caller told to come back after 0.2 s waits a whole second rather
/// than come back too early.
fn delay_seconds(delay: Duration) -> HeaderValue {
    let whole = delay.as_secs();
    let seconds = if delay.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    };
    HeaderValue::from(seconds)
}

impl Answer {
    fn open(open: &CircuitOpen) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: open.retry_after(),
            reason: open.to_string(),
        }
    }

    fn into_response(self, dependency: Option<&str>) -> Response<String> {
        let body = match dependency {
            Some(name) => format!("{name}: {}\n", self.reason),
            None => format!("{}\n", self.reason),
        };
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(delay) = self.retry_after {
            headers.insert(RETRY_AFTER, delay_seconds(delay));
        }
        res
    }
}

/// The HTTP answer for a failed call to a dependency: what a server sends
/// its own caller when a steadfast stack in front of that dependency fails.
///
/// | error (anywhere in its chain of sources) | status | `Retry-After` |
/// |---|---|---|
/// | [`CircuitOpen`] | 503 Service Unavailable | the circuit's hint, when known |
/// | [`NoHealthyReplica`] | 503 Service Unavailable | when the first replica may be back, when known |
/// | a timeout (tower's or tokio's `Elapsed`: a total or attempt timeout) | 504 Gateway Timeout | — |
/// | anything else (the dependency's own error) | 502 Bad Gateway | — |
///
/// `Retry-After` is in delay-seconds, rounded up. The body is one line of
/// plain text that names what failed: the circuit or pool by its name
/// (`circuit `payments` is open`), otherwise `upstream timed out` or
/// `upstream failed`; [`error_response_for`] puts the dependency's name in
/// front. The dependency's own error text is not sent: it may say more about
/// the inside of the system than its callers should see.
///
/// A spent retry budget is not an error of its own: the retry and hedge
/// layers then return the last real outcome (a response passes through as
/// it is, an error is answered by the rule above).
///
/// For axum's `HandleErrorLayer` use [`handle_error`]; in a handler, use it
/// as the error of `map_err` (an `http::Response` is already axum's
/// `IntoResponse`):
///
/// ```
/// use http::StatusCode;
/// use steadfast::error::BoxError;
/// use steadfast::http::error_response;
///
/// let err: BoxError = Box::new(tower::timeout::error::Elapsed::new());
/// let res = error_response(err);
/// assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
/// assert_eq!(res.body(), "upstream timed out\n");
/// ```
pub fn error_response(err: BoxError) -> Response<String> {
    answer(err.as_ref()).into_response(None)
}

/// [`error_response`] with `dependency` named in the body
/// (`payments: upstream timed out`).
pub fn error_response_for(dependency: &str, err: BoxError) -> Response<String> {
    answer(err.as_ref()).into_response(Some(dependency))
}

/// The answer of a route that sheds its load while `open`'s circuit is
/// open: what [`error_response`] answers for the same refusal.
pub(super) fn shed_response(open: &CircuitOpen) -> Response<String> {
    Answer::open(open).into_response(None)
}

/// [`error_response`] as the function of axum's `HandleErrorLayer`, which
/// wants one that returns a future.
///
/// ```
/// use axum::Router;
/// use axum::body::Body;
/// use axum::error_handling::HandleErrorLayer;
/// use http::{Request, Response};
/// use tower::ServiceBuilder;
///
/// # let stack = tower::service_fn(|_: Request<Body>| async {
/// #     Ok::<_, steadfast::BoxError>(Response::new(String::new()))
/// # });
/// // `stack`: a steadfast stack in front of a dependency, proxied as is.
/// let app: Router = Router::new().route_service(
///     "/search",
///     ServiceBuilder::new()
///         .layer(HandleErrorLayer::new(steadfast::http::handle_error))
///         .service(stack),
/// );
/// # drop(app);
/// ```
pub async fn handle_error(err: BoxError) -> Response<String> {
    error_response(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn status_and_retry_after(err: BoxError) -> (StatusCode, Option<String>, String) {
        let res = error_response(err);
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().expect("ascii").to_owned());
        (res.status(), retry_after, res.into_body())
    }

    #[test]
    fn an_open_circuit_is_503_with_its_hint_rounded_up() {
        let err = CircuitOpen::new(Arc::from("payments"), Some(Duration::from_millis(2_100)));
        assert_eq!(
            status_and_retry_after(Box::new(err)),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("3".to_owned()),
                "circuit `payments` is open\n".to_owned()
            )
        );
    }

    #[test]
    fn no_hint_no_header() {
        let err = NoHealthyReplica::new(Arc::from("search"), None);
        let (status, retry_after, body) = status_and_retry_after(Box::new(err));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after, None);
        assert_eq!(body, "no healthy replica in pool `search`\n");
    }

    #[test]
    fn hints_at_the_extremes_are_whole_seconds() {
        assert_eq!(delay_seconds(Duration::ZERO), "0");
        assert_eq!(delay_seconds(Duration::from_nanos(1)), "1");
        assert_eq!(delay_seconds(Duration::from_secs(5)), "5");
        assert_eq!(delay_seconds(Duration::MAX), u64::MAX.to_string().as_str());
    }

    #[test]
    fn timeouts_are_504_and_the_rest_502() {
        let tower: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(error_response(tower).status(), StatusCode::GATEWAY_TIMEOUT);
        let other: BoxError = "connection refused by 10.0.0.7".into();
        let res = error_response_for("payments", other);
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(res.body(), "payments: upstream failed\n", "no inner detail");
    }

    #[test]
    fn the_chain_of_sources_is_searched() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapped(#[source] CircuitOpen);
        let err = Wrapped(CircuitOpen::new(Arc::from("db"), None));
        assert_eq!(
            error_response(Box::new(err)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
