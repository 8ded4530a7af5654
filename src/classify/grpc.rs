//! The classifier for gRPC responses (feature `grpc`).

use std::any::Any;
use std::error::Error;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::HeaderMap;
use tonic::Code;

use super::{AtEnd, Classify, Verdict};
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
/// | `OK` | success | — |
/// | `UNAVAILABLE` | failure | yes (and the codes added with [`retry_on`](Self::retry_on)) |
/// | `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` | failure | no |
/// | `CANCELLED` | neither | no |
/// | the caller's own errors (`INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED`, …) | success: the server did its job | no |
///
/// The status is read from a *trailers-only* response: HTTP 200 with
/// `grpc-status` in the headers, what a server sends for an error before
/// any message. Once headers without a status arrive, messages follow and
/// the call is committed: it is not retried (gRFC A6), and its status
/// comes in the trailers.
///
/// That status is judged when the body ends ([`Classify::defer`]): the
/// layers that record outcomes (a circuit breaker, a pool's replicas and
/// their outlier detection) wrap a `tonic::body::Body` in place, and are
/// told the trailers' status, the error that cut the body off, or
/// `UNKNOWN` for a body that ended without a status. A body dropped
/// before its end counts as neither; the breaker's slow-call rule and the
/// pool's latency take the time to the headers, not the length of the
/// stream, and an answered stream no longer counts in its replica's load.
/// A breaker's half-open probe is judged at its headers, so that a long
/// stream never holds the breaker half-open. The layers that decide on an answer (retry, hedge) see a
/// committed call as a success. A response that is not HTTP 200 (a proxy
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

/// Whether `err` or its chain of sources is a timeout: tower's, tokio's,
/// or a `Channel`'s own on the call's `grpc-timeout` (which tonic would
/// make `CANCELLED`).
pub(crate) fn is_timeout(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<tower::timeout::error::Elapsed>()
            || err.is::<tokio::time::error::Elapsed>()
            || err.is::<tonic::TimeoutExpired>()
        {
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

/// A gRPC response's body, watched for the status that ends it: told to
/// an [`AtEnd`] from its trailers, or from the error that cut it off.
struct StatusAtEnd<J> {
    inner: tonic::body::Body,
    at_end: Option<J>,
    classifier: GrpcErrorsAsFailures,
}

impl<J: AtEnd> StatusAtEnd<J> {
    fn tell(&mut self, verdict: Verdict) {
        if let Some(at_end) = self.at_end.take() {
            at_end.verdict(verdict);
        }
    }

    /// The verdict of the status in `trailers`. None there is a broken
    /// call, `UNKNOWN` as gRPC reads it.
    fn of_trailers(&self, trailers: &HeaderMap) -> Verdict {
        let code = trailers
            .get("grpc-status")
            .map_or(Code::Unknown, |value| Code::from_bytes(value.as_bytes()));
        self.classifier
            .with_pushback(self.classifier.judge(code), trailers)
    }
}

impl<J: AtEnd> http_body::Body for StatusAtEnd<J> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        // Every field is `Unpin` but the `AtEnd`, which is never pinned.
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let verdict = this.of_trailers(trailers);
                    this.tell(verdict);
                }
            }
            Some(Err(status)) => {
                let verdict = this.classifier.judge(status.code());
                this.tell(verdict);
            }
            // The end without trailers: no status came.
            None => this.tell(this.classifier.judge(Code::Unknown)),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<J> Unpin for StatusAtEnd<J> {}

impl<B: 'static, E: 'static> Classify<http::Response<B>, E> for GrpcErrorsAsFailures {
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

    /// A response with headers but no status in them carries its status
    /// in trailers, after its messages: its body, a `tonic::body::Body`
    /// (what a tonic `Channel` answers), is wrapped in place to tell
    /// `at_end` the verdict of that status, or of the error that cuts the
    /// body off. Trailers-only responses and bodies of other types are
    /// judged at once.
    fn defer<J: AtEnd>(&self, response: &mut http::Response<B>, at_end: impl FnOnce() -> J) -> bool
    where
        Self: Sized,
    {
        if response_code(response).is_some() {
            return false;
        }
        let body: &mut dyn Any = response.body_mut();
        let Some(body) = body.downcast_mut::<tonic::body::Body>() else {
            return false;
        };
        // Already over: there are no trailers to wait for.
        if http_body::Body::is_end_stream(body) {
            return false;
        }
        let inner = std::mem::take(body);
        *body = tonic::body::Body::new(StatusAtEnd {
            inner,
            at_end: Some(at_end()),
            classifier: *self,
        });
        true
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

    /// What an [`AtEnd`] was told: `None` while untold, and whether it was
    /// dropped.
    #[derive(Default)]
    struct Told {
        verdict: std::sync::Mutex<Option<Verdict>>,
        dropped: std::sync::atomic::AtomicBool,
    }

    struct Tell(std::sync::Arc<Told>);

    impl AtEnd for Tell {
        fn verdict(self, verdict: Verdict) {
            *self.0.verdict.lock().expect("not poisoned") = Some(verdict);
        }
    }

    impl Drop for Tell {
        fn drop(&mut self) {
            self.0
                .dropped
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    type Frames = Vec<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>;

    /// A response with headers only (no `grpc-status`), its body `frames`,
    /// deferred: what its `AtEnd` was told, if it was deferred.
    fn deferred(
        frames: Frames,
    ) -> (
        http::Response<tonic::body::Body>,
        Option<std::sync::Arc<Told>>,
    ) {
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let mut res = http::Response::new(tonic::body::Body::new(body));
        let told = std::sync::Arc::new(Told::default());
        let deferred =
            Classify::<_, BoxError>::defer(&GrpcErrorsAsFailures::new(), &mut res, || {
                Tell(told.clone())
            });
        (res, deferred.then_some(told))
    }

    fn read_to_end(res: http::Response<tonic::body::Body>) {
        use http_body_util::BodyExt;
        let mut body = res.into_body();
        futures::executor::block_on(async {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        });
    }

    fn data() -> Result<http_body::Frame<bytes::Bytes>, tonic::Status> {
        Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
    }

    fn trailers(status: &'static str) -> Result<http_body::Frame<bytes::Bytes>, tonic::Status> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(status));
        Ok(http_body::Frame::trailers(trailers))
    }

    fn told(told: &Told) -> Option<Verdict> {
        *told.verdict.lock().expect("not poisoned")
    }

    #[test]
    fn a_status_in_trailers_is_told_when_the_body_ends() {
        let (res, t) = deferred(vec![data(), trailers("14")]);
        let t = t.expect("deferred");
        assert_eq!(told(&t), None, "not before the end");
        read_to_end(res);
        let v = told(&t).expect("told");
        assert!(v.is_failure() && v.is_retryable());

        let (res, t) = deferred(vec![data(), trailers("0")]);
        read_to_end(res);
        assert!(told(&t.expect("deferred")).expect("told").is_success());

        let (res, t) = deferred(vec![data(), trailers("5")]);
        read_to_end(res);
        let v = told(&t.expect("deferred")).expect("told");
        assert_eq!(v.outcome(), Outcome::Success, "NOT_FOUND is the caller's");
    }

    #[test]
    fn a_body_cut_off_or_without_a_status_is_a_failure() {
        let (res, t) = deferred(vec![data(), Err(tonic::Status::internal("reset"))]);
        read_to_end(res);
        let v = told(&t.expect("deferred")).expect("told");
        assert!(v.is_failure() && !v.is_retryable());

        // No trailers at all: no status came, UNKNOWN.
        let (res, t) = deferred(vec![data()]);
        read_to_end(res);
        let v = told(&t.expect("deferred")).expect("told");
        assert!(v.is_failure());

        // Trailers without a status (or a garbled one).
        let mut empty = HeaderMap::new();
        empty.insert("grpc-message", http::HeaderValue::from_static("?"));
        let (res, t) = deferred(vec![data(), Ok(http_body::Frame::trailers(empty))]);
        read_to_end(res);
        assert!(told(&t.expect("deferred")).expect("told").is_failure());
        let (res, t) = deferred(vec![data(), trailers("garbage")]);
        read_to_end(res);
        assert!(told(&t.expect("deferred")).expect("told").is_failure());
    }

    #[test]
    fn a_body_dropped_before_its_end_is_told_nothing() {
        let (res, t) = deferred(vec![data(), trailers("14")]);
        let t = t.expect("deferred");
        drop(res);
        assert_eq!(told(&t), None);
        assert!(t.dropped.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn what_is_known_at_once_is_not_deferred() {
        let c = GrpcErrorsAsFailures::new();
        // Trailers-only: the status is in the headers.
        let mut res = trailers_only("14", &[]).map(|()| tonic::body::Body::empty());
        assert!(!Classify::<_, BoxError>::defer(&c, &mut res, || -> Tell {
            unreachable!()
        }));
        // An HTTP error from a proxy.
        let mut res = http::Response::builder()
            .status(503)
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"x"),
            )))
            .expect("a response");
        assert!(!Classify::<_, BoxError>::defer(&c, &mut res, || -> Tell {
            unreachable!()
        }));
        // A body that already ended, and a body of another type.
        let mut res = http::Response::new(tonic::body::Body::empty());
        assert!(!Classify::<_, BoxError>::defer(&c, &mut res, || -> Tell {
            unreachable!()
        }));
        let mut res = http::Response::new(String::from("not a tonic body"));
        assert!(!Classify::<_, BoxError>::defer(&c, &mut res, || -> Tell {
            unreachable!()
        }));
    }
}
