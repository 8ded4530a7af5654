//! A request body that can be sent again.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;
use crate::sync::Mutex;

/// The default cap on what a [`ReplayBody`] buffers: 64 KiB.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// Wraps a streaming request body so that a retry can send it again.
///
/// The first attempt streams the body as usual while the bytes it sends are
/// kept (a `Bytes` chunk is shared, not copied). [`try_clone`](Self::try_clone)
/// makes a body for the next attempt that replays those bytes, then
/// continues from the original body if the first attempt did not read it
/// all; trailers are replayed too. Past the cap (64 KiB by default) the
/// buffer is dropped and `try_clone` returns `None`: that request is not
/// retried, and the attempt in flight is not harmed.
///
/// Attempts take turns: a replay reads the shared state once the previous
/// attempt has dropped its body (as hyper does when a request is done).
/// While an attempt still reads it (a server answered before reading the
/// whole upload), `try_clone` returns `None`, so the request is not retried;
/// two copies polled at once (which the retry layer never does) make the
/// second fail with an error rather than wait.
///
/// # Example
///
/// ```
/// use http_body_util::{BodyExt, Full};
/// use steadfast::http::ReplayBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let first = ReplayBody::new(Full::new(bytes::Bytes::from_static(b"hello")));
/// let second = first.try_clone().unwrap();
/// assert_eq!(first.collect().await.unwrap().to_bytes(), "hello");
/// assert_eq!(second.collect().await.unwrap().to_bytes(), "hello");
/// # }
/// ```
#[derive(Debug)]
pub struct ReplayBody<B> {
    shared: Arc<Shared<B>>,
    /// The state, while this body is the one being polled.
    state: Option<State<B>>,
    /// How many buffered chunks this body has replayed.
    cursor: usize,
    trailers_sent: bool,
    /// Bytes this body has yielded, for the size hint.
    yielded: u64,
    /// Made by `try_clone`: it must replay from the start.
    replay: bool,
}

#[derive(Debug)]
struct Shared<B> {
    state: Mutex<Option<State<B>>>,
    /// Whether an attempt has started reading and not yet let go of the body.
    held: AtomicBool,
    /// Set once the buffer passed the cap (or the body failed): no more replays.
    capped: AtomicBool,
    cap: usize,
    hint: SizeHint,
}

#[derive(Debug)]
struct State<B> {
    /// The original body, until it ends.
    body: Option<B>,
    chunks: Vec<Bytes>,
    buffered: usize,
    trailers: Option<HeaderMap>,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, buffering up to 64 KiB for replay.
    pub fn new(body: B) -> Self {
        Self::with_cap(body, DEFAULT_REPLAY_CAP)
    }

    /// Wraps `body`, buffering up to `cap` bytes for replay.
    pub fn with_cap(body: B, cap: usize) -> Self {
        let hint = body.size_hint();
        let ended = body.is_end_stream();
        let state = State {
            body: (!ended).then_some(body),
            chunks: Vec::new(),
            buffered: 0,
            trailers: None,
        };
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(Some(state)),
                held: AtomicBool::new(false),
                capped: AtomicBool::new(false),
                cap,
                hint,
            }),
            state: None,
            cursor: 0,
            trailers_sent: false,
            yielded: 0,
            replay: false,
        }
    }
}

impl<B> ReplayBody<B> {
    /// A body for another attempt, or `None` when it cannot be sent again:
    /// the buffer passed its cap, the original body failed, or an earlier
    /// attempt is still reading it (a server that answered before reading
    /// the whole upload) — a retry then is refused rather than fail later.
    pub fn try_clone(&self) -> Option<Self> {
        if self.shared.capped.load(Ordering::Acquire) || self.shared.held.load(Ordering::Acquire) {
            return None;
        }
        Some(Self {
            shared: self.shared.clone(),
            state: None,
            cursor: 0,
            trailers_sent: false,
            yielded: 0,
            replay: true,
        })
    }

    /// Whether the body can still be replayed.
    pub fn is_replayable(&self) -> bool {
        !self.shared.capped.load(Ordering::Acquire)
    }

    fn cap(&self, state: &mut State<B>) {
        self.shared.capped.store(true, Ordering::Release);
        state.chunks = Vec::new();
        state.buffered = 0;
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            // Hand the state to the next attempt.
            let mut slot = crate::sync::lock(&self.shared.state);
            *slot = Some(state);
            self.shared.held.store(false, Ordering::Release);
        }
    }
}

/// A replay was polled after the buffer passed its cap.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the replay cap and cannot be sent again")]
struct ReplayCapped;

/// A replay was polled while an earlier attempt still held the body.
#[derive(Debug, thiserror::Error)]
#[error("request body replayed while an earlier attempt still holds it")]
struct ReplayBusy;

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.state.is_none() {
            // Take the state once, not per frame: the lock is never held
            // across polls and is taken twice per attempt at most.
            let mut slot = crate::sync::lock(&this.shared.state);
            this.state = slot.take();
            if this.state.is_some() {
                this.shared.held.store(true, Ordering::Release);
            }
        }
        let Some(mut state) = this.state.take() else {
            return Poll::Ready(Some(Err(ReplayBusy.into())));
        };
        if this.replay && this.yielded == 0 && this.cursor == 0 && !this.is_replayable() {
            // Cloned before the buffer passed its cap: the start is gone.
            this.state = Some(state);
            return Poll::Ready(Some(Err(ReplayCapped.into())));
        }
        let result = this.poll_state(&mut state, cx);
        this.state = Some(state);
        result
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            Some(state) => {
                state.body.is_none()
                    && self.cursor >= state.chunks.len()
                    && (self.trailers_sent || state.trailers.is_none())
            }
            None => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.shared.hint.exact() {
            Some(total) => SizeHint::with_exact(total.saturating_sub(self.yielded)),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(self.shared.hint.lower().saturating_sub(self.yielded));
                hint
            }
        }
    }
}

impl<B> ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_state(
        &mut self,
        state: &mut State<B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Replay what an earlier attempt read.
        if let Some(chunk) = state.chunks.get(self.cursor) {
            self.cursor += 1;
            self.yielded += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(body) = state.body.as_mut() else {
            // The original has ended: its trailers, then the end.
            if !self.trailers_sent {
                self.trailers_sent = true;
                if let Some(trailers) = &state.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                }
            }
            return Poll::Ready(None);
        };
        // Everything buffered has been replayed: read on from the original.
        match Pin::new(body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.body = None;
                // An earlier attempt may have read the trailers already.
                if !self.trailers_sent {
                    self.trailers_sent = true;
                    if let Some(trailers) = &state.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                    }
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                // A replay could not reproduce a failed body.
                self.cap(state);
                state.body = None;
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    self.yielded += chunk.len() as u64;
                    if !self.shared.capped.load(Ordering::Acquire) {
                        if state.buffered + chunk.len() > self.shared.cap {
                            self.cap(state);
                        } else {
                            state.buffered += chunk.len();
                            state.chunks.push(chunk.clone());
                        }
                    }
                    self.cursor = state.chunks.len();
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        state.trailers = Some(trailers.clone());
                        self.trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    // Neither data nor trailers: a frame kind this version
                    // of http-body does not know. Pass nothing on.
                    Err(_) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn stream(
        chunks: Vec<&'static str>,
        trailers: bool,
    ) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailers {
            let mut map = HeaderMap::new();
            map.insert("x-checksum", "abc".parse().unwrap());
            frames.push(Ok(Frame::trailers(map)));
        }
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn replays_data_and_trailers() {
        let first = ReplayBody::new(stream(vec!["a", "bc", "def"], true));
        let second = first.try_clone().unwrap();
        let collected = first.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "abcdef");
        let third = second.try_clone().unwrap();
        let collected = second.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "abcdef");
        assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn a_replay_continues_where_the_first_attempt_stopped() {
        let mut first = ReplayBody::new(stream(vec!["a", "b", "c"], false));
        let second = first.try_clone().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        // The first attempt gives up after one chunk (the server answered early).
        drop(first);
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abc");
    }

    #[tokio::test]
    async fn past_the_cap_nothing_is_replayed_and_the_first_attempt_is_whole() {
        let first = ReplayBody::with_cap(stream(vec!["12345", "67890", "x"], false), 8);
        let early = first.try_clone().unwrap();
        assert!(first.is_replayable());
        let sent = first.collect().await.unwrap().to_bytes();
        assert_eq!(sent, "1234567890x");
        assert!(!early.is_replayable());
        assert!(early.try_clone().is_none());
    }

    #[tokio::test]
    async fn size_hints_and_end_of_stream_are_forwarded() {
        let body = ReplayBody::new(Full::new(Bytes::from_static(b"hello")));
        assert_eq!(body.size_hint().exact(), Some(5));
        let clone = body.try_clone().unwrap();
        assert_eq!(clone.size_hint().exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        let mut clone = clone;
        assert!(!clone.is_end_stream());
        clone.frame().await.unwrap().unwrap();
        assert!(clone.is_end_stream());
        assert_eq!(clone.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_replay_polled_while_the_first_attempt_holds_the_body_fails() {
        let mut first = ReplayBody::new(stream(vec!["a", "b"], false));
        let second = first.try_clone().unwrap();
        first.frame().await.unwrap().unwrap();
        // No new copy while the first attempt reads the body...
        assert!(first.try_clone().is_none());
        // ...and a copy made before is polled in vain.
        let err = second.collect().await.unwrap_err();
        assert!(err.to_string().contains("earlier attempt"), "{err}");
        drop(first);
    }

    #[tokio::test]
    async fn copies_wait_for_the_attempt_reading_the_body_to_let_go() {
        let mut first = ReplayBody::new(stream(vec!["a", "b"], false));
        let template = first.try_clone().unwrap();
        first.frame().await.unwrap().unwrap();
        assert!(
            template.try_clone().is_none(),
            "the first attempt still reads it"
        );
        drop(first);
        let replay = template.try_clone().expect("free again");
        assert_eq!(replay.collect().await.unwrap().to_bytes(), "ab");
    }

    #[tokio::test]
    async fn a_failed_body_is_not_replayed() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err("reset".into()),
        ];
        let first = ReplayBody::new(StreamBody::new(futures::stream::iter(frames)));
        assert!(first.collect().await.is_err());
    }
}
