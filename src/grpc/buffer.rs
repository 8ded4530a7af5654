//! A request's body read whole before the call: [`BufferBodyLayer`], so
//! that a hedge can replay a client stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::http::DEFAULT_REPLAY_CAP;
use crate::per_clone::take_ready;

/// How long [`BufferBodyLayer`] waits for a body to end, by default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(100);

/// Reads each request's whole body (up to a size and a wait) before calling
/// the service below, so that a hedge can run beside the first attempt.
///
/// A hedge replays the request's body ([`ReplayBody`](crate::http::ReplayBody)),
/// which it can only do once the first attempt has sent all of it. A unary
/// call's one message is sent at once; a client stream is sent as the
/// caller produces it, and while it is still uploading when the hedge is
/// due, the hedge is refused (see [`GrpcReplay`](super::GrpcReplay)). Put
/// this layer above the hedge (right under [`GrpcStatusLayer`](super::GrpcStatusLayer),
/// or over a [`ReplicaStack::build_grpc`](crate::presets::ReplicaStack::build_grpc)
/// service) and a client stream is read first, then sent from memory at
/// once, and hedged like a unary call.
///
/// The cost is the wait: the call starts when the caller's stream ends. So
/// the layer waits at most [`max_wait`](Self::max_wait) (default 100 ms)
/// and buffers at most [`max_bytes`](Self::max_bytes) (default 64 KiB, the
/// replay cap): past either, the call starts with what was read, the rest
/// streams after it, and that call is not hedged. A bidirectional stream,
/// whose caller waits for the server's messages before it sends more,
/// starts after the wait. `Duration::MAX` waits for the end however long
/// it takes; zero takes only what is there already.
///
/// ```
/// use steadfast::grpc::BufferBodyLayer;
/// use steadfast::presets::ReplicaStack;
/// use steadfast::pool::Replica;
/// use tower::Layer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), steadfast::error::ConfigError> {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let parts = ReplicaStack::new("uploads").build_grpc([("a", Replica::new(channel))])?;
/// let stack = BufferBodyLayer::new().layer(parts.service);
/// # drop(stack);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferBodyLayer {
    max_bytes: usize,
    max_wait: Duration,
}

impl Default for BufferBodyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl BufferBodyLayer {
    /// Up to 64 KiB, for up to 100 ms.
    pub const fn new() -> Self {
        Self {
            max_bytes: DEFAULT_REPLAY_CAP,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    /// The most bytes read before the call (default 64 KiB, the replay
    /// cap: a body larger than that cannot be replayed anyway).
    #[must_use]
    pub const fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// The longest wait for the body to end before the call starts
    /// (default 100 ms).
    #[must_use]
    pub const fn max_wait(mut self, max: Duration) -> Self {
        self.max_wait = max;
        self
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            settings: *self,
        }
    }
}

/// The service of [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    settings: BufferBodyLayer,
}

impl<S> Service<Request<tonic::body::Body>> for BufferBody<S>
where
    S: Service<Request<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        // The ready service takes this call, after the body is read.
        let mut inner = take_ready(&mut self.inner);
        let settings = self.settings;
        Box::pin(async move {
            let req = read_ahead(req, settings).await;
            inner.call(req).await
        })
    }
}

/// `req` with its body read ahead: what came within the settings' wait and
/// size, then the rest of the body, if any.
async fn read_ahead(
    req: Request<tonic::body::Body>,
    settings: BufferBodyLayer,
) -> Request<tonic::body::Body> {
    let (parts, mut body) = req.into_parts();
    let until = crate::stats::later(Instant::now(), settings.max_wait);
    let mut read = VecDeque::new();
    let mut bytes = 0;
    let rest = loop {
        if bytes > settings.max_bytes {
            break Some(body);
        }
        // Cancel safe: a frame not yet read stays in the body.
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(until, next).await {
            Err(_waited) => break Some(body),
            Ok(None) => break None,
            Ok(Some(Ok(frame))) => {
                bytes += frame.data_ref().map_or(0, Buf::remaining);
                read.push_back(Ok(frame));
            }
            // Passed on in its place: the call fails as it would have.
            Ok(Some(Err(status))) => {
                read.push_back(Err(status));
                break None;
            }
        }
    };
    Request::from_parts(parts, tonic::body::Body::new(ReadAhead { read, rest }))
}

/// A body whose first frames were read ahead.
struct ReadAhead {
    read: VecDeque<Result<Frame<Bytes>, tonic::Status>>,
    rest: Option<tonic::body::Body>,
}

impl Body for ReadAhead {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: usize = self
            .read
            .iter()
            .filter_map(|frame| frame.as_ref().ok()?.data_ref().map(Buf::remaining))
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let read = read as u64;
        // The upper bound first: `SizeHint` asserts lower <= upper.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint.set_lower(rest.lower().saturating_add(read));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    type Frames = Vec<Result<Frame<Bytes>, tonic::Status>>;

    fn data(s: &'static str) -> Result<Frame<Bytes>, tonic::Status> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    /// A body of `frames`, one every `every`.
    fn slow_body(frames: Frames, every: Duration) -> tonic::body::Body {
        let stream = futures::stream::unfold(frames.into_iter(), move |mut frames| async move {
            tokio::time::sleep(every).await;
            frames.next().map(|frame| (frame, frames))
        });
        tonic::body::Body::new(http_body_util::StreamBody::new(stream))
    }

    async fn collect(body: tonic::body::Body) -> Result<Bytes, tonic::Status> {
        Ok(body.collect().await?.to_bytes())
    }

    fn frames() -> Frames {
        vec![data("a"), data("bb"), data("ccc")]
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_in_time_is_read_whole() {
        let req = Request::new(slow_body(frames(), Duration::from_millis(10)));
        let started = Instant::now();
        let req = read_ahead(req, BufferBodyLayer::new()).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(40),
            "read to its end"
        );
        let body = req.into_body();
        assert_eq!(body.size_hint().exact(), Some(6));
        assert_eq!(collect(body).await.expect("the body"), "abbccc");
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_wait_or_the_size_the_rest_streams() {
        // 100 ms: the first three frames of four, 40 ms apart, are not all
        // read in time; the rest follows.
        let four = || {
            let mut four = frames();
            four.push(data("dddd"));
            four
        };
        let req = Request::new(slow_body(four(), Duration::from_millis(40)));
        let started = Instant::now();
        let req = read_ahead(req, BufferBodyLayer::new()).await;
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(collect(req.into_body()).await.expect("all"), "abbcccdddd");

        let req = Request::new(slow_body(four(), Duration::from_millis(1)));
        let req = read_ahead(req, BufferBodyLayer::new().max_bytes(2)).await;
        assert_eq!(collect(req.into_body()).await.expect("all"), "abbcccdddd");

        // Forever: to the end, however long.
        let req = Request::new(slow_body(frames(), Duration::from_secs(3_600)));
        let layer = BufferBodyLayer::new().max_wait(Duration::MAX);
        let started = Instant::now();
        let req = read_ahead(req, layer).await;
        assert_eq!(started.elapsed(), Duration::from_secs(4 * 3_600));
        assert_eq!(collect(req.into_body()).await.expect("all"), "abbccc");

        // Zero: only what is there already.
        let req = Request::new(slow_body(frames(), Duration::from_millis(10)));
        let started = Instant::now();
        let req = read_ahead(req, BufferBodyLayer::new().max_wait(Duration::ZERO)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(collect(req.into_body()).await.expect("all"), "abbccc");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_in_the_body_is_passed_on() {
        let failing = vec![data("a"), Err(tonic::Status::cancelled("gone"))];
        let req = Request::new(slow_body(failing, Duration::from_millis(1)));
        let req = read_ahead(req, BufferBodyLayer::new()).await;
        let err = collect(req.into_body()).await.expect_err("the error");
        assert_eq!(err.code(), tonic::Code::Cancelled);
    }
}
