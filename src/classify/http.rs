//! The classifier for `http::Response`.

use std::time::{Duration, SystemTime};

use super::{Classify, Verdict};
use crate::error::ConfigError;

/// Classifies `http::Response`s by status: server errors are failures.
///
/// | status | outcome | retryable |
/// |---|---|---|
/// | `502`, `503`, `504` | failure | yes |
/// | `408`, `429` | failure | yes |
/// | other `5xx` | failure | no |
/// | everything else (`2xx`, `3xx`, other `4xx`) | success | — |
/// | `Err` (transport error: refused, reset, timeout) | failure | yes |
///
/// A `4xx` other than `408`/`429` is the caller's problem, not the
/// dependency's, so it counts as a success for health. On a failure, a
/// `Retry-After` header (delay-seconds or HTTP-date) becomes the verdict's
/// [`pushback`](Verdict::pushback), capped at
/// [`max_pushback`](Self::max_pushback) (default 60 s); a value that is
/// garbage, negative or in the past is ignored.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use steadfast::classify::{Classify, ServerErrorsAsFailures};
///
/// let classify = ServerErrorsAsFailures::new();
/// let res = http::Response::builder()
///     .status(503)
///     .header("retry-after", "30")
///     .body(())
///     .unwrap();
/// let verdict = Classify::<_, std::io::Error>::classify(&classify, Ok(&res));
/// assert!(verdict.is_failure() && verdict.is_retryable());
/// assert_eq!(verdict.pushback(), Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerErrorsAsFailures {
    max_pushback: Duration,
}

impl Default for ServerErrorsAsFailures {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerErrorsAsFailures {
    /// The classifier, with pushback capped at 60 seconds.
    pub const fn new() -> Self {
        Self {
            max_pushback: Duration::from_secs(60),
        }
    }

    /// Caps the pushback taken from `Retry-After`.
    ///
    /// A server that answers `Retry-After: 86400` should not switch a
    /// dependency off for a day; longer values are cut to this.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `max` is zero (use a classifier that drops the
    /// pushback instead).
    pub fn max_pushback(mut self, max: Duration) -> Result<Self, ConfigError> {
        self.max_pushback = super::pushback_cap(max)?;
        Ok(self)
    }
}

impl<B, E> Classify<http::Response<B>, E> for ServerErrorsAsFailures {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Verdict {
        let res = match result {
            Ok(res) => res,
            Err(_) => return Verdict::retryable_failure(),
        };
        let status = res.status().as_u16();
        let verdict = match status {
            408 | 429 | 502 | 503 | 504 => Verdict::retryable_failure(),
            500..=599 => Verdict::failure(),
            _ => return Verdict::success(),
        };
        match res
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| crate::http::retry_after(v, SystemTime::now(), self.max_pushback))
        {
            Some(delay) => verdict.with_pushback(delay),
            None => verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Outcome;

    fn verdict(status: u16, retry_after: Option<&str>) -> Verdict {
        let mut res = http::Response::builder().status(status);
        if let Some(v) = retry_after {
            res = res.header("retry-after", v);
        }
        let res = res.body(()).unwrap();
        Classify::<_, ()>::classify(&ServerErrorsAsFailures::new(), Ok(&res))
    }

    #[test]
    fn statuses() {
        for s in [200, 201, 204, 301, 304, 400, 401, 403, 404, 409, 422] {
            assert_eq!(verdict(s, None).outcome(), Outcome::Success, "{s}");
        }
        for s in [408, 429, 502, 503, 504] {
            let v = verdict(s, None);
            assert!(v.is_failure() && v.is_retryable(), "{s}");
        }
        for s in [500, 501, 505, 599] {
            let v = verdict(s, None);
            assert!(v.is_failure() && !v.is_retryable(), "{s}");
        }
    }

    #[test]
    fn transport_errors_are_retryable_failures() {
        let v =
            Classify::<http::Response<()>, _>::classify(&ServerErrorsAsFailures::new(), Err(&()));
        assert!(v.is_failure() && v.is_retryable());
    }

    #[test]
    fn retry_after_on_failures_only() {
        assert_eq!(
            verdict(503, Some("7")).pushback(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            verdict(429, Some("1")).pushback(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(verdict(200, Some("7")).pushback(), None);
        assert_eq!(verdict(503, Some("soon")).pushback(), None);
        assert_eq!(verdict(503, Some("-5")).pushback(), None);
        assert_eq!(
            verdict(503, Some("99999999999999999999999")).pushback(),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn max_pushback_is_validated_and_applied() {
        assert_eq!(
            ServerErrorsAsFailures::new()
                .max_pushback(Duration::ZERO)
                .unwrap_err()
                .field(),
            "max_pushback"
        );
        let c = ServerErrorsAsFailures::new()
            .max_pushback(Duration::from_secs(5))
            .unwrap();
        let res = http::Response::builder()
            .status(503)
            .header("retry-after", "30")
            .body(())
            .unwrap();
        assert_eq!(
            Classify::<_, ()>::classify(&c, Ok(&res)).pushback(),
            Some(Duration::from_secs(5))
        );
    }
}
