//! HTTP helpers (feature `http`): reading `Retry-After`, replayable request
//! bodies, the idempotency rules that decide which requests may be sent
//! twice, and, on the server side, the answer a failed dependency becomes
//! ([`error_response`], [`handle_error`] for axum's `HandleErrorLayer`) and
//! a route that sheds its load while a dependency's circuit is open
//! ([`ShedWhenOpenLayer`]).

mod idempotency;
mod replay;
mod response;
pub mod shed;

pub use self::idempotency::{HttpReplay, Idempotent, TryCloneBody, is_idempotent};
pub use self::replay::{DEFAULT_REPLAY_CAP, ReplayBody};
pub use self::response::{error_response, error_response_for, handle_error};
pub use self::shed::{ShedWhenOpen, ShedWhenOpenLayer};

use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// Reads a `Retry-After` header value (RFC 9110 §10.2.3) as a delay from `now`.
///
/// Both forms are accepted: delay-seconds (`"120"`) and an HTTP-date
/// (`"Fri, 31 Dec 1999 23:59:59 GMT"`). The result is capped at `cap`.
/// Returns `None` — the header is ignored — for anything else: garbage,
/// a negative or fractional number, an empty value, or a date that is not in
/// the future. A number too large for any integer type is capped, not
/// rejected: the server clearly meant "a long time".
///
/// This never panics, whatever the header holds.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use steadfast::http::retry_after;
///
/// let cap = Duration::from_secs(60);
/// let now = SystemTime::now();
/// assert_eq!(retry_after(&HeaderValue::from_static("5"), now, cap), Some(Duration::from_secs(5)));
/// assert_eq!(retry_after(&HeaderValue::from_static("3600"), now, cap), Some(cap));
/// assert_eq!(retry_after(&HeaderValue::from_static("-1"), now, cap), None);
/// ```
pub fn retry_after(value: &HeaderValue, now: SystemTime, cap: Duration) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: delay-seconds. Overflow means "very long": cap it.
        let delay = text.parse::<u64>().map_or(cap, Duration::from_secs);
        return Some(delay.min(cap));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    let delay = date.duration_since(now).ok()?;
    if delay.is_zero() {
        return None;
    }
    Some(delay.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(60);

    fn parse(v: &str, now: SystemTime) -> Option<Duration> {
        retry_after(&HeaderValue::from_str(v).unwrap(), now, CAP)
    }

    #[test]
    fn delay_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse("0", now), Some(Duration::ZERO));
        assert_eq!(parse("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse(" 30 ", now), Some(Duration::from_secs(30)));
        assert_eq!(parse("61", now), Some(CAP));
        assert_eq!(parse("18446744073709551616000", now), Some(CAP));
    }

    #[test]
    fn http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT is the RFC's example.
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse("Mon, 07 Nov 1994 08:49:37 GMT", now), Some(CAP));
        // In the past, or now: ignored.
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:00 GMT", now), None);
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT", now), None);
        // The obsolete forms RFC 9110 asks recipients to accept.
        assert_eq!(
            parse("Sunday, 06-Nov-94 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse("Sun Nov  6 08:50:07 1994", now),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let now = SystemTime::now();
        for v in [
            "",
            "  ",
            "-1",
            "1.5",
            "+3",
            "1e9",
            "soon",
            "30s",
            "Sun, 99 Nov 1994 08:49:37 GMT",
            "\u{7f}",
        ] {
            let Ok(value) = HeaderValue::from_str(v) else {
                continue;
            };
            assert_eq!(retry_after(&value, now, CAP), None, "{v:?}");
        }
        // Not valid UTF-8 / visible ASCII.
        let value = HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap();
        assert_eq!(retry_after(&value, now, CAP), None);
    }
}
