//! gRPC requests sent again: [`GrpcReplay`], and the two request maps that
//! make a tonic request's body replayable and hand it back to a `Channel`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request};
use http_body::Body;

use crate::attempt::Replay;
use crate::error::BoxError;
use crate::http::{Idempotent, ReplayBody};

/// The header that carries a call's deadline (gRPC over HTTP/2).
const TIMEOUT: &str = "grpc-timeout";
/// The header gRFC A6 sets on a retry or hedge: how many attempts went
/// before it.
const PREVIOUS_ATTEMPTS: &str = "grpc-previous-rpc-attempts";
/// The most digits a `grpc-timeout` value may have.
const MAX_TIMEOUT_DIGITS: u64 = 99_999_999;

/// Wraps a request's body so that it can be sent again ([`ReplayBody`],
/// buffering up to 64 KiB): map requests with it above the retry and hedge
/// layers, and back with [`into_tonic_body`] right above the `Channel`.
///
/// ```
/// use steadfast::classify::GrpcErrorsAsFailures;
/// use steadfast::grpc::{GrpcReplay, GrpcStatusLayer, into_tonic_body, replayable};
/// use steadfast::RetryLayer;
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), steadfast::error::ConfigError> {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let retry = RetryLayer::builder()
///     .name("health")
///     .classify(GrpcErrorsAsFailures::new())
///     .replay(GrpcReplay::new())
///     .build()?;
/// let stack = ServiceBuilder::new()
///     .layer(GrpcStatusLayer::new())
///     .map_request(replayable)
///     .layer(retry)
///     .map_request(into_tonic_body)
///     .service(channel);
/// let client = tonic_health::pb::health_client::HealthClient::new(stack);
/// # drop(client);
/// # Ok(())
/// # }
/// ```
pub fn replayable<B: Body>(req: Request<B>) -> Request<ReplayBody<B>> {
    req.map(ReplayBody::new)
}

/// A request with a replayable body, as the `tonic::body::Body` a
/// `Channel` takes (see [`replayable`]).
pub fn into_tonic_body<B>(req: Request<ReplayBody<B>>) -> Request<tonic::body::Body>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    req.map(tonic::body::Body::new)
}

/// Replays gRPC requests: every method may be sent again (gRFC A6 decides
/// by the status, see
/// [`GrpcErrorsAsFailures`](crate::classify::GrpcErrorsAsFailures)), unless
/// the request carries `Idempotent(false)` or its method is one of those
/// given to [`never`](Self::never).
///
/// Each attempt after the first carries `grpc-previous-rpc-attempts` (how
/// many went before it). The call's `grpc-timeout` is its deadline
/// ([`Replay::time_allowed`]), with the retry layer's own
/// [`deadline`](crate::retry::Builder::deadline), whichever ends first:
/// every attempt carries the time left to it in its `grpc-timeout`
/// ([`Replay::mark_time_left`]), so that the deadline covers every attempt
/// (gRFC A6), and a pool below sends no retry or hedge that would not
/// answer in time (see [deadlines](crate::attempt#deadlines)). The body
/// must be a [`ReplayBody`] ([`replayable`]); a body past its cap is not
/// sent again.
///
/// # Hedging
///
/// A hedge runs beside the attempt it backs up, so it can replay the body
/// only once that attempt has sent all of it. A unary call's body (one
/// message) is sent at once, so its hedges work (tested over two tonic
/// replicas, one hung). A client stream still uploading when the hedge
/// is due is not hedged: its copy is refused and the first attempt goes
/// on alone. Put [`BufferBodyLayer`](super::BufferBodyLayer) above the
/// hedge to read a client stream whole first: it is then sent at once and
/// hedged like a unary call.
#[derive(Debug, Clone, Default)]
pub struct GrpcReplay {
    /// Paths (`/package.Service/Method`) never sent twice.
    never: Arc<[Arc<str>]>,
}

impl GrpcReplay {
    /// Every method replayed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Never sends `path` (`/package.Service/Method`) twice: a method that
    /// must not run more than once, whatever its status says.
    #[must_use]
    pub fn never(self, path: impl AsRef<str>) -> Self {
        let mut never: Vec<Arc<str>> = self.never.iter().cloned().collect();
        never.push(Arc::from(path.as_ref()));
        Self {
            never: never.into(),
        }
    }

    fn allowed<B>(&self, req: &Request<B>) -> bool {
        if let Some(Idempotent(flag)) = req.extensions().get::<Idempotent>() {
            return *flag;
        }
        let path = req.uri().path();
        !self.never.iter().any(|p| **p == *path)
    }
}

impl<B> Replay<Request<ReplayBody<B>>> for GrpcReplay {
    fn replay(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        if !self.allowed(req) {
            return None;
        }
        let body = req.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }

    fn mark(&self, req: &mut Request<ReplayBody<B>>, number: u32) {
        if number > 1 {
            req.headers_mut()
                .insert(PREVIOUS_ATTEMPTS, HeaderValue::from(number - 1));
        }
    }

    /// The caller's deadline, from its `grpc-timeout` (unreadable: none).
    fn time_allowed(&self, req: &Request<ReplayBody<B>>) -> Option<Duration> {
        req.headers().get(TIMEOUT).and_then(parse_timeout)
    }

    fn mark_time_left(&self, req: &mut Request<ReplayBody<B>>, left: Duration) {
        // At least a nanosecond: a deadline already passed is the server's
        // to refuse (the retry layer stops retries before it).
        let left = left.max(Duration::from_nanos(1));
        req.headers_mut().insert(TIMEOUT, encode_timeout(left));
    }
}

/// A `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`); `None` for anything else.
fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3_600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value: the finest unit whose count fits in 8
/// digits, rounded up (a server never gets less time than is left).
fn encode_timeout(d: Duration) -> HeaderValue {
    let nanos = d.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let count = nanos.div_ceil(per);
        if count <= u128::from(MAX_TIMEOUT_DIGITS) {
            return HeaderValue::from_str(&format!("{count}{unit}"))
                .unwrap_or(HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("a value")
    }

    #[test]
    fn timeouts_read_and_write() {
        assert_eq!(parse_timeout(&value("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_timeout(&value("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_timeout(&value("99999999H")),
            Some(Duration::from_secs(99_999_999 * 3_600))
        );
        for bad in ["", "S", "5", "5s", "-1S", "123456789S", "1.5S", "5SS"] {
            assert_eq!(parse_timeout(&value(bad)), None, "{bad:?}");
        }
        assert_eq!(encode_timeout(Duration::from_nanos(1)), "1n");
        assert_eq!(encode_timeout(Duration::from_millis(4_999)), "4999000u");
        assert_eq!(encode_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(encode_timeout(Duration::from_secs(86_400)), "86400000m");
        assert_eq!(encode_timeout(Duration::MAX), "99999999H");
        for d in [
            Duration::from_nanos(7),
            Duration::from_millis(1_234),
            Duration::from_secs(90_000),
        ] {
            let back = parse_timeout(&encode_timeout(d)).expect("readable");
            assert!(back >= d, "{d:?} came back as {back:?}");
        }
    }

    #[test]
    fn attempts_carry_the_time_left_and_their_predecessors() {
        let replay = GrpcReplay::new().never("/shop.v1.Checkout/Pay");
        let mut first = Request::post("http://x/grpc.health.v1.Health/Check")
            .header(TIMEOUT, "2S")
            .body(ReplayBody::new(http_body_util::Full::new(
                Bytes::from_static(b"m"),
            )))
            .expect("a request");
        assert_eq!(replay.time_allowed(&first), Some(Duration::from_secs(2)));
        replay.mark(&mut first, 1);
        assert!(first.headers().get(PREVIOUS_ATTEMPTS).is_none());
        let mut second = replay.replay(&first).expect("replayable");
        replay.mark(&mut second, 2);
        replay.mark_time_left(&mut second, Duration::from_millis(1_500));
        assert_eq!(second.headers()[PREVIOUS_ATTEMPTS], "1");
        assert_eq!(second.headers()[TIMEOUT], "1500000u");
        let mut third = replay.replay(&second).expect("replayable");
        replay.mark(&mut third, 3);
        replay.mark_time_left(&mut third, Duration::ZERO);
        assert_eq!(third.headers()[PREVIOUS_ATTEMPTS], "2");
        assert_eq!(third.headers()[TIMEOUT], "1n", "past the deadline");
        let mut garbled = replay.replay(&first).expect("replayable");
        garbled
            .headers_mut()
            .insert(TIMEOUT, HeaderValue::from_static("soon"));
        assert_eq!(replay.time_allowed(&garbled), None);

        let pay = Request::post("http://x/shop.v1.Checkout/Pay")
            .body(ReplayBody::new(http_body_util::Full::new(Bytes::new())))
            .expect("a request");
        assert!(replay.replay(&pay).is_none(), "never sent twice");
        let mut opted_out = replay.replay(&first).expect("replayable");
        opted_out.extensions_mut().insert(Idempotent(false));
        assert!(replay.replay(&opted_out).is_none(), "Idempotent(false)");
    }
}
