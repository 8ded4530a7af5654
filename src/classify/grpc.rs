//! The classifier for gRPC responses (feature `grpc`).

use std::any::Any;
use std::error::Error;
use std::time::Duration;

use http::HeaderMap;
use tonic::Code;

use super::{Classify, Verdict};
use crate::error::{BoxError, ConfigError};

/// The header a gRPC server sends with a trailers-only response to say
/// when (and whether) to retry (gRFC A6).
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// A set of gRPC status codes (there are 17, `OK` to `UNAUTHENTICATED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Codes(u32);

impl Codes {
    const fn of(codes: &[Code]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < codes.len() {
            bits |= 1 << codes[i] as u32;
            i += 1;
        }
        Self(bits)
    }

    const fn with(self, code: Code) -> Self {
        Self(self.0 | 1 << code as u32)
    }

    const fn contains(self, code: Code) -> bool {
        self.0 & (1 << code as u32) != 0
    }
}

/// The codes that say the server failed (rather than the caller): they
/// count against its health.
const FAILURES: Codes = Codes::of(&[
    Code::Unavailable,
    Code::DeadlineExceeded,
    Code::ResourceExhausted,
    Code::Internal,
    Code::Unknown,
    Code::DataLoss,
]);

/// The failures another attempt may fix, by default (gRFC A6 leaves the
/// list to the service; `UNAVAILABLE` is the one every service agrees on).
const RETRYABLE: Codes = Codes::of(&[Code::Unavailable]);

/// Classifies gRPC calls by their status, as gRPC defines it.
///
/// | status | outcome | another attempt |
/// |---|---|---|
/// | `OK`, or no status yet (it comes in the trailers, after the messages) | success | — |
/// | `UNAVAILABLE` | failure | yes (and the codes added with [`retry_on`](Self::retry_on)) |
/// | `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` | failure | no |
/// | `CANCELLED` | neither | no |
/// | the caller's own errors (`INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED`, …) | success: the server did its job | no |
///
/// The status is read from a *trailers-only* response: HTTP 200 with
/// `grpc-status` in the headers, what a server sends for an error before
/// any message. Once headers without a status arrive, messages follow and
/// the call is committed: it is not retried (gRFC A6), and its status
/// comes in the trailers. A response that is not HTTP 200 (a proxy
/// answered) is mapped as gRPC maps HTTP statuses (502, 503, 504 and 429
/// to `UNAVAILABLE`). A malformed `grpc-status` reads as `UNKNOWN`;
/// nothing in the headers can make this panic.
///
/// An error instead of a response is read for a `tonic::Status` (the error
/// itself or in its chain of sources): its code decides as above. A
/// timeout is a retryable `DEADLINE_EXCEEDED`-like failure (the attempt, not
/// the server's answer, ran out of time); any other error (a transport
/// error, a refused connection) is a retryable failure, as `UNAVAILABLE`.
///
/// Pushback (gRFC A6): `grpc-retry-pushback-ms` with a non-negative number
/// of milliseconds is the delay before the next attempt (capped at
/// [`max_pushback`](Self::max_pushback)); a negative, unparseable or
/// repeated value means *do not retry*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcErrorsAsFailures {
    retryable: Codes,
    max_pushback: Duration,
}

impl Default for GrpcErrorsAsFailures {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcErrorsAsFailures {
    /// `UNAVAILABLE` retryable; pushback capped at 60 s.
    pub const fn new() -> Self {
        Self {
            retryable: RETRYABLE,
            max_pushback: Duration::from_secs(60),
        }
    }

    /// Also retries `code` (a failure then, whatever it is otherwise: a
    /// service that answers `ABORTED` for a lost race may want it retried).
    #[must_use]
    pub const fn retry_on(mut self, code: Code) -> Self {
        self.retryable = self.retryable.with(code);
        self
    }

    /// Caps the delay a server's pushback may ask for.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for zero (which would ignore every pushback; use a
    /// classifier that reads none instead).
    pub fn max_pushback(mut self, max: Duration) -> Result<Self, ConfigError> {
        self.max_pushback = super::pushback_cap(max)?;
        Ok(self)
    }

    /// The verdict for a call that ended with `code`.
    fn judge(&self, code: Code) -> Verdict {
        if self.retryable.contains(code) {
            return Verdict::retryable_failure();
        }
        if FAILURES.contains(code) {
            return Verdict::failure();
        }
        match code {
            Code::Cancelled => Verdict::ignored(),
            _ => Verdict::success(),
        }
    }

    /// The verdict for a trailers-only response's `headers` with `code`:
    /// with the server's pushback, if it sent one.
    fn with_pushback(&self, verdict: Verdict, headers: &HeaderMap) -> Verdict {
        if !verdict.is_failure() {
            return verdict;
        }
        match pushback(headers) {
            Pushback::None => verdict,
            Pushback::After(delay) => verdict.with_pushback(delay.min(self.max_pushback)),
            Pushback::DoNotRetry => verdict.with_retryable(false),
        }
    }
}

/// The status code of a response, if its headers hold one (trailers-only)
/// or its HTTP status is not 200 (mapped as gRPC maps HTTP statuses).
pub(crate) fn response_code<B>(res: &http::Response<B>) -> Option<Code> {
    if let Some(value) = res.headers().get("grpc-status") {
        return Some(Code::from_bytes(value.as_bytes()));
    }
    let code = match res.status().as_u16() {
        200 => return None,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Some(code)
}

/// What a server's `grpc-retry-pushback-ms` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushback {
    /// No pushback header.
    None,
    /// Retry after this long.
    After(Duration),
    /// Do not retry: a negative, unparseable or repeated value.
    DoNotRetry,
}

fn pushback(headers: &HeaderMap) -> Pushback {
    let mut values = headers.get_all(PUSHBACK_HEADER).iter();
    let Some(value) = values.next() else {
        return Pushback::None;
    };
    if values.next().is_some() {
        return Pushback::DoNotRetry;
    }
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Pushback::DoNotRetry;
    }
    // All digits: a number too large for a u64 still means "a long time".
    Pushback::After(text.parse().map_or(Duration::MAX, Duration::from_millis))
}

/// The code of a `tonic::Status` in `err` or its chain of sources.
pub(crate) fn status_code_in(err: &(dyn Error + 'static)) -> Option<Code> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(status) = err.downcast_ref::<tonic::Status>() {
            return Some(status.code());
        }
        next = err.source();
    }
    None
}

/// Whether `err` or its chain of sources is a timeout (tower's or tokio's).
pub(crate) fn is_timeout(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// An error of any type, as an error whose chain can be read: the types a
/// gRPC stack's layers return (`BoxError`, `tonic::Status`, tower's
/// timeout), found by their type.
fn as_error<E: 'static>(err: &E) -> Option<&(dyn Error + 'static)> {
    let any: &dyn Any = err;
    if let Some(boxed) = any.downcast_ref::<BoxError>() {
        return Some(boxed.as_ref());
    }
    if let Some(status) = any.downcast_ref::<tonic::Status>() {
        return Some(status);
    }
    if let Some(elapsed) = any.downcast_ref::<tower::timeout::error::Elapsed>() {
        return Some(elapsed);
    }
    None
}

impl<B, E: 'static> Classify<http::Response<B>, E> for GrpcErrorsAsFailures {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Verdict {
        match result {
            Ok(res) => match response_code(res) {
                Some(code) => self.with_pushback(self.judge(code), res.headers()),
                None => Verdict::success(),
            },
            Err(err) => match as_error(err) {
                Some(err) if is_timeout(err) => Verdict::retryable_failure(),
                Some(err) => match status_code_in(err) {
                    Some(code) => self.judge(code),
                    None => Verdict::retryable_failure(),
                },
                // A transport error (a refused connection, a reset stream).
                None => Verdict::retryable_failure(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Outcome;

    fn trailers_only(status: &str, pushback: &[&str]) -> http::Response<()> {
        let mut res = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", status);
        for p in pushback {
            res = res.header(PUSHBACK_HEADER, *p);
        }
        res.body(()).expect("a response")
    }

    fn verdict(res: &http::Response<()>) -> Verdict {
        Classify::<_, BoxError>::classify(&GrpcErrorsAsFailures::new(), Ok(res))
    }

    #[test]
    fn each_status_class() {
        let ok = verdict(&trailers_only("0", &[]));
        assert_eq!(ok.outcome(), Outcome::Success);
        let unavailable = verdict(&trailers_only("14", &[]));
        assert!(unavailable.is_failure() && unavailable.is_retryable());
        for code in ["4", "8", "13", "2", "15"] {
            let v = verdict(&trailers_only(code, &[]));
            assert!(v.is_failure() && !v.is_retryable(), "{code}");
        }
        for code in ["3", "5", "6", "7", "9", "10", "11", "12", "16"] {
            assert_eq!(
                verdict(&trailers_only(code, &[])).outcome(),
                Outcome::Success,
                "{code}"
            );
        }
        assert_eq!(
            verdict(&trailers_only("1", &[])).outcome(),
            Outcome::Ignored
        );
        let committed = http::Response::builder()
            .status(200)
            .body(())
            .expect("a response");
        assert_eq!(
            verdict(&committed),
            Verdict::success(),
            "the status is in the trailers"
        );
    }

    #[test]
    fn malformed_statuses_read_as_unknown() {
        for garbage in ["", "abc", "-1", "140", "99", "1 4", "\u{ff}"] {
            let res = http::Response::builder()
                .status(200)
                .header(
                    "grpc-status",
                    http::HeaderValue::from_bytes(garbage.as_bytes()).expect("a value"),
                )
                .body(())
                .expect("a response");
            let v = verdict(&res);
            assert!(v.is_failure() && !v.is_retryable(), "{garbage:?}");
        }
    }

    #[test]
    fn http_statuses_from_a_proxy() {
        for (status, retryable) in [
            (503, true),
            (502, true),
            (504, true),
            (429, true),
            (500, false),
        ] {
            let res = http::Response::builder()
                .status(status)
                .body(())
                .expect("a response");
            let v = verdict(&res);
            assert!(v.is_failure(), "{status}");
            assert_eq!(v.is_retryable(), retryable, "{status}");
        }
        let res = http::Response::builder()
            .status(404)
            .body(())
            .expect("a response");
        assert_eq!(
            verdict(&res).outcome(),
            Outcome::Success,
            "UNIMPLEMENTED: the caller's"
        );
    }

    #[test]
    fn pushback_forms() {
        let v = verdict(&trailers_only("14", &["250"]));
        assert_eq!(
            (v.is_retryable(), v.pushback()),
            (true, Some(Duration::from_millis(250)))
        );
        let v = verdict(&trailers_only("14", &["99999999999999999999999"]));
        assert_eq!(v.pushback(), Some(Duration::from_secs(60)), "capped");
        for bad in [&["-1"][..], &["soon"], &[""], &["1.5"], &["100", "200"]] {
            let v = verdict(&trailers_only("14", bad));
            assert!(v.is_failure() && !v.is_retryable(), "{bad:?}: do not retry");
            assert_eq!(v.pushback(), None);
        }
        let ok = verdict(&trailers_only("0", &["-1"]));
        assert_eq!(
            ok,
            Verdict::success(),
            "pushback on a success means nothing"
        );
    }

    #[test]
    fn errors_are_read_for_a_status() {
        let c = GrpcErrorsAsFailures::new();
        let judge =
            |err: BoxError| Classify::<http::Response<()>, BoxError>::classify(&c, Err(&err));
        let v = judge(Box::new(tonic::Status::unavailable("down")));
        assert!(v.is_failure() && v.is_retryable());
        let v = judge(Box::new(tonic::Status::invalid_argument("bad")));
        assert_eq!(v.outcome(), Outcome::Success);
        let v = judge(Box::new(tower::timeout::error::Elapsed::new()));
        assert!(v.is_failure() && v.is_retryable());
        let v = judge("connection refused".into());
        assert!(v.is_failure() && v.is_retryable());
        let status = tonic::Status::internal("oops");
        let v = Classify::<http::Response<()>, _>::classify(&c, Err(&status));
        assert!(v.is_failure() && !v.is_retryable());
        let v = Classify::<http::Response<()>, _>::classify(&c, Err(&std::io::Error::other("x")));
        assert!(v.is_failure() && v.is_retryable());
        let aborted = GrpcErrorsAsFailures::new().retry_on(Code::Aborted);
        let v = Classify::<_, BoxError>::classify(&aborted, Ok(&trailers_only("10", &[])));
        assert!(v.is_failure() && v.is_retryable());
        assert!(
            GrpcErrorsAsFailures::new()
                .max_pushback(Duration::ZERO)
                .is_err()
        );
    }
}
