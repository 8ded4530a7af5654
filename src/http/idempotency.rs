//! Which HTTP requests may be sent twice, and how they are copied.

use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Method, Request};

use super::ReplayBody;
use crate::attempt::{Attempt, Replay};
use crate::error::ConfigError;

/// Overrides, for one request, whether it may be sent more than once.
///
/// Insert it as a request extension: `Idempotent(true)` lets a `POST` be
/// retried and hedged; `Idempotent(false)` keeps even a `GET` to one attempt.
///
/// ```
/// use steadfast::http::Idempotent;
///
/// let mut req = http::Request::post("http://payments/charge").body(()).unwrap();
/// req.extensions_mut().insert(Idempotent(true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotent(pub bool);

/// Whether `req` may be sent more than once under the default rules: an
/// RFC 9110 idempotent method (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
/// `DELETE`) or an `Idempotency-Key` header, unless an [`Idempotent`]
/// extension says otherwise.
pub fn is_idempotent<B>(req: &Request<B>) -> bool {
    match req.extensions().get::<Idempotent>() {
        Some(Idempotent(flag)) => *flag,
        None => idempotent_by_rule(req),
    }
}

/// The method and header rule alone, without the per-request override.
fn idempotent_by_rule<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key("idempotency-key")
}

/// A request body that may be copied for another attempt.
///
/// Implemented for every `Clone` body (`Full`, `Empty`, `String`, …) and for
/// [`ReplayBody`], which wraps a streaming body.
pub trait TryCloneBody: Sized {
    /// A copy, or `None` when the body cannot be sent again.
    fn try_clone_body(&self) -> Option<Self>;
}

impl<B: Clone> TryCloneBody for B {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<B> TryCloneBody for ReplayBody<B> {
    fn try_clone_body(&self) -> Option<Self> {
        self.try_clone()
    }
}

/// Replays `http::Request`s: copies the head and the body (see
/// [`TryCloneBody`]), refuses requests that are not idempotent (see
/// [`is_idempotent`]) unless told otherwise, and marks each attempt with an
/// [`Attempt`] extension.
///
/// # Cost
///
/// A copy costs what cloning the head costs (the header map's entries, if
/// any). Marking the first attempt inserts an extension, which allocates;
/// with [`mark_first(false)`](Self::mark_first) (the presets' choice) only
/// repeats carry a mark, and a request whose first attempt succeeds
/// allocates nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpReplay {
    all_methods: bool,
    mark_first: bool,
    /// The header that carries the call's time left, if any (a valid,
    /// lowercase name: checked by `deadline_header`).
    deadline_header: Option<&'static str>,
}

impl Default for HttpReplay {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpReplay {
    /// Idempotent requests only: RFC 9110 methods, `Idempotency-Key`, or an
    /// [`Idempotent`] extension.
    pub const fn new() -> Self {
        Self {
            all_methods: false,
            mark_first: true,
            deadline_header: None,
        }
    }

    /// Every request, whatever its method, unless an `Idempotent(false)`
    /// extension says no. For services whose `POST`s are known to be safe
    /// to repeat.
    pub const fn all_methods() -> Self {
        Self {
            all_methods: true,
            mark_first: true,
            deadline_header: None,
        }
    }

    /// Whether the first attempt carries an [`Attempt`] extension too
    /// (default: yes). Without it, a request with no `Attempt` is a first
    /// attempt, and the first attempt allocates nothing for its mark.
    #[must_use]
    pub const fn mark_first(mut self, mark: bool) -> Self {
        self.mark_first = mark;
        self
    }

    /// Carries the call's deadline in header `name` (off by default), in
    /// whole milliseconds left, as Envoy's `x-envoy-expected-rq-timeout-ms`
    /// does: a request that arrives with it has that long
    /// ([`Replay::time_allowed`]), and every attempt is sent with the time
    /// left to the call's deadline (the earlier of that and the retry
    /// layer's own [`deadline`](crate::retry::Builder::deadline)), so the
    /// server can bound its work, and a pool below sends no retry or hedge
    /// that would not answer in time (see
    /// [deadlines](crate::attempt#deadlines)). A value that is not a
    /// number of milliseconds is ignored.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `name` is not a valid header name in lowercase.
    pub fn deadline_header(mut self, name: &'static str) -> Result<Self, ConfigError> {
        let valid =
            HeaderName::from_bytes(name.as_bytes()).is_ok_and(|parsed| parsed.as_str() == name);
        if !valid {
            return Err(ConfigError::new(
                "deadline_header",
                format!("must be a valid header name in lowercase, got {name:?}"),
            ));
        }
        self.deadline_header = Some(name);
        Ok(self)
    }
}

impl<B: TryCloneBody> Replay<Request<B>> for HttpReplay {
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        let allowed = match req.extensions().get::<Idempotent>() {
            Some(Idempotent(flag)) => *flag,
            None => self.all_methods || idempotent_by_rule(req),
        };
        if !allowed {
            return None;
        }
        let body = req.body().try_clone_body()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }

    fn mark(&self, req: &mut Request<B>, number: u32) {
        if number > 1 || self.mark_first {
            req.extensions_mut().insert(Attempt::new(number));
        } else {
            // A first attempt carries no mark, even one it arrived with
            // (from a stack further out): removing allocates nothing.
            req.extensions_mut().remove::<Attempt>();
        }
    }

    fn time_allowed(&self, req: &Request<B>) -> Option<Duration> {
        let value = req.headers().get(self.deadline_header?)?.to_str().ok()?;
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // All digits: a number too large for a u64 still means "a long time".
        Some(value.parse().map_or(Duration::MAX, Duration::from_millis))
    }

    fn mark_time_left(&self, req: &mut Request<B>, left: Duration) {
        if let Some(name) = self.deadline_header {
            // Whole milliseconds, rounded down: the server must not think
            // it has more time than the caller.
            let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            req.headers_mut().insert(name, HeaderValue::from(ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method) -> Request<String> {
        Request::builder()
            .method(method)
            .uri("http://x/")
            .body("b".to_owned())
            .unwrap()
    }

    #[test]
    fn rfc_9110_methods_and_idempotency_key() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_idempotent(&req(m.clone())), "{m}");
            assert!(HttpReplay::new().replay(&req(m)).is_some());
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&req(m.clone())), "{m}");
            assert!(HttpReplay::new().replay(&req(m.clone())).is_none());
            assert!(HttpReplay::all_methods().replay(&req(m)).is_some());
        }
        let mut post = req(Method::POST);
        post.headers_mut()
            .insert("idempotency-key", "abc".parse().unwrap());
        assert!(HttpReplay::new().replay(&post).is_some());
    }

    #[test]
    fn per_request_override() {
        let mut post = req(Method::POST);
        post.extensions_mut().insert(Idempotent(true));
        assert!(HttpReplay::new().replay(&post).is_some());
        let mut get = req(Method::GET);
        get.extensions_mut().insert(Idempotent(false));
        assert!(HttpReplay::new().replay(&get).is_none());
        assert!(HttpReplay::all_methods().replay(&get).is_none());
    }

    #[test]
    fn copies_head_body_and_extensions_and_marks_attempts() {
        let replay = HttpReplay::new();
        let mut original = Request::put("http://x/a?b=c")
            .header("x-h", "1")
            .body("payload".to_owned())
            .unwrap();
        replay.mark(&mut original, 1);
        let mut copy = replay.replay(&original).unwrap();
        assert_eq!(copy.uri(), original.uri());
        assert_eq!(copy.headers()["x-h"], "1");
        assert_eq!(copy.body(), "payload");
        replay.mark(&mut copy, 2);
        let first = original.extensions().get::<Attempt>().unwrap();
        let second = copy.extensions().get::<Attempt>().unwrap();
        assert_eq!((first.number(), second.number()), (1, 2));
    }

    #[test]
    fn without_a_first_mark_only_repeats_are_marked() {
        let replay = HttpReplay::new().mark_first(false);
        let mut original = req(Method::GET);
        original.extensions_mut().insert(Attempt::new(3));
        replay.mark(&mut original, 1);
        assert!(original.extensions().get::<Attempt>().is_none());
        let mut copy = replay.replay(&original).unwrap();
        replay.mark(&mut copy, 2);
        assert_eq!(copy.extensions().get::<Attempt>(), Some(&Attempt::new(2)));
    }

    #[test]
    fn a_deadline_header_is_read_and_written_in_milliseconds() {
        let replay = HttpReplay::new()
            .deadline_header("x-deadline-ms")
            .expect("a valid name");
        let with = |value: &str| {
            let mut r = req(Method::GET);
            r.headers_mut().insert(
                "x-deadline-ms",
                HeaderValue::from_str(value).expect("a value"),
            );
            replay.time_allowed(&r)
        };
        assert_eq!(with("250"), Some(Duration::from_millis(250)));
        assert_eq!(with(" 7 "), Some(Duration::from_millis(7)));
        assert_eq!(with("99999999999999999999999"), Some(Duration::MAX));
        for bad in ["", "-5", "1.5", "5s", "soon"] {
            assert_eq!(with(bad), None, "{bad:?}");
        }
        assert_eq!(replay.time_allowed(&req(Method::GET)), None);
        assert_eq!(
            HttpReplay::new().time_allowed(&req(Method::GET)),
            None,
            "off by default"
        );

        let mut r = req(Method::GET);
        replay.mark_time_left(&mut r, Duration::from_micros(1_500_900));
        assert_eq!(r.headers()["x-deadline-ms"], "1500", "rounded down");
        replay.mark_time_left(&mut r, Duration::MAX);
        assert_eq!(r.headers()["x-deadline-ms"], u64::MAX.to_string().as_str());
        let mut untouched = req(Method::GET);
        HttpReplay::new().mark_time_left(&mut untouched, Duration::from_secs(1));
        assert!(untouched.headers().is_empty());

        for bad in ["X-Deadline", "bad name", "", "x:y"] {
            assert_eq!(
                HttpReplay::new()
                    .deadline_header(bad)
                    .expect_err(bad)
                    .field(),
                "deadline_header"
            );
        }
    }
}
