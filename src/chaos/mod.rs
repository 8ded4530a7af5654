//! Fault injection for tests, drills and demos: errors, latency, hangs and
//! refused connections, seeded and switchable at run time.
//!
//! [`ChaosLayer`] wraps a service (a whole dependency, or one replica of a
//! [`Pool`](crate::pool::Pool) — wrap that replica's service) and, per call,
//! may:
//! - fail it at once with [`Injected`] (`refused: false`), or as a refused
//!   connection (`refused: true`) — the inner service is not called;
//! - hang it (the future never completes; the caller's timeout must cope);
//! - delay its answer by a [`Latency`] (fixed, uniform, or heavy-tailed).
//!
//! It does nothing unless configured, and everything can be changed while
//! traffic flows, through a [`ChaosHandle`]. With a seed, the same calls get
//! the same faults.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use steadfast::chaos::{ChaosLayer, Latency};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! let chaos = ChaosLayer::new().seed(7);
//! let drill = chaos.handle();
//! let mut svc = ServiceBuilder::new()
//!     .layer(chaos)
//!     .service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
//!
//! assert_eq!(svc.ready().await?.call(1).await?, 1); // off by default
//! drill.set_error_rate(1.0);
//! assert!(svc.ready().await?.call(2).await.is_err());
//! drill.set_error_rate(0.0);
//! drill.set_latency(Latency::Fixed(Duration::from_millis(30)));
//! let t0 = tokio::time::Instant::now();
//! svc.ready().await?.call(3).await?;
//! assert_eq!(t0.elapsed(), Duration::from_millis(30));
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::error::BoxError;
use crate::rng::Rng;
use crate::sync::{self, AtomicState, AtomicU64, Ordering};

/// Injected latency.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Latency {
    /// None added.
    None,
    /// Always this much.
    Fixed(Duration),
    /// Uniform between the two.
    Uniform(Duration, Duration),
    /// `base` for most calls, `tail` for a share `p` of them (a heavy tail).
    HeavyTail {
        /// The usual latency.
        base: Duration,
        /// The tail's latency.
        tail: Duration,
        /// The share of calls in the tail (0..=1).
        p: f64,
    },
}

/// A fault injected by [`Chaos`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", if self.refused { "connection refused (injected)" } else { "injected failure" })]
pub struct Injected {
    /// Made to look like a refused connection rather than a failed call.
    pub refused: bool,
}

#[derive(Debug)]
struct Settings {
    error_rate: AtomicU64,
    refuse_rate: AtomicU64,
    hang_rate: AtomicU64,
    latency_kind: AtomicState<LatencyKind>,
    latency_a: AtomicU64,
    latency_b: AtomicU64,
    latency_p: AtomicU64,
    rng: Rng,
}

/// Which [`Latency`] is set; its durations and share sit beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LatencyKind {
    None,
    Fixed,
    Uniform,
    HeavyTail,
}

impl sync::State for LatencyKind {
    const ALL: &'static [Self] = &[Self::None, Self::Fixed, Self::Uniform, Self::HeavyTail];

    fn byte(self) -> u8 {
        self as u8
    }
}

fn bits(x: f64) -> u64 {
    x.clamp(0.0, 1.0).to_bits()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Changes a [`ChaosLayer`]'s faults while traffic flows; cheap to clone.
#[derive(Debug, Clone)]
pub struct ChaosHandle {
    settings: Arc<Settings>,
}

impl ChaosHandle {
    /// Fails this share of calls (0..=1) with [`Injected`].
    pub fn set_error_rate(&self, rate: f64) {
        self.settings
            .error_rate
            .store(bits(rate), Ordering::Release);
    }

    /// Fails this share of calls as refused connections.
    pub fn set_refuse_rate(&self, rate: f64) {
        self.settings
            .refuse_rate
            .store(bits(rate), Ordering::Release);
    }

    /// Hangs this share of calls forever.
    pub fn set_hang_rate(&self, rate: f64) {
        self.settings.hang_rate.store(bits(rate), Ordering::Release);
    }

    /// Sets the injected latency.
    pub fn set_latency(&self, latency: Latency) {
        let s = &self.settings;
        let (kind, a, b, p) = match latency {
            Latency::None => (LatencyKind::None, Duration::ZERO, Duration::ZERO, 0.0),
            Latency::Fixed(d) => (LatencyKind::Fixed, d, d, 0.0),
            Latency::Uniform(a, b) => (LatencyKind::Uniform, a.min(b), a.max(b), 0.0),
            Latency::HeavyTail { base, tail, p } => (LatencyKind::HeavyTail, base, tail, p),
        };
        s.latency_a.store(nanos(a), Ordering::Release);
        s.latency_b.store(nanos(b), Ordering::Release);
        s.latency_p.store(bits(p), Ordering::Release);
        s.latency_kind.store(kind, Ordering::Release);
    }

    /// Turns every fault off.
    pub fn clear(&self) {
        self.set_error_rate(0.0);
        self.set_refuse_rate(0.0);
        self.set_hang_rate(0.0);
        self.set_latency(Latency::None);
    }
}

/// Wraps services in [`Chaos`]. Every service it makes shares one set of
/// faults, changed through [`handle`](Self::handle).
#[derive(Debug, Clone)]
pub struct ChaosLayer {
    settings: Arc<Settings>,
}

impl Default for ChaosLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ChaosLayer {
    /// A layer that injects nothing until told to.
    pub fn new() -> Self {
        Self {
            settings: Arc::new(Settings {
                error_rate: AtomicU64::new(0),
                refuse_rate: AtomicU64::new(0),
                hang_rate: AtomicU64::new(0),
                latency_kind: AtomicState::new(LatencyKind::None),
                latency_a: AtomicU64::new(0),
                latency_b: AtomicU64::new(0),
                latency_p: AtomicU64::new(0),
                rng: Rng::from_entropy(),
            }),
        }
    }

    /// Seeds the random draws, so a run can be repeated. Handles taken
    /// before and services made before share the seeded draws: the layer,
    /// its handles and its services keep one set of faults whatever order
    /// they are made in.
    #[must_use]
    pub fn seed(self, seed: u64) -> Self {
        self.settings.rng.reseed(seed);
        self
    }

    /// The handle that changes the faults.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            settings: self.settings.clone(),
        }
    }
}

impl<S> Layer<S> for ChaosLayer {
    type Service = Chaos<S>;

    fn layer(&self, inner: S) -> Chaos<S> {
        Chaos {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// Injects faults into calls of the inner service; made by [`ChaosLayer`].
#[derive(Debug, Clone)]
pub struct Chaos<S> {
    inner: S,
    settings: Arc<Settings>,
}

/// What one call gets.
enum Fault {
    Fail(Injected),
    Hang,
    Delay(Duration),
    None,
}

impl Settings {
    fn rate(v: &AtomicU64) -> f64 {
        f64::from_bits(v.load(Ordering::Acquire))
    }

    fn draw(&self) -> Fault {
        let error = Self::rate(&self.error_rate);
        let refuse = Self::rate(&self.refuse_rate);
        let hang = Self::rate(&self.hang_rate);
        let kind = self.latency_kind.load(Ordering::Acquire);
        if error == 0.0 && refuse == 0.0 && hang == 0.0 && kind == LatencyKind::None {
            return Fault::None;
        }
        let r = self.rng.next_f64();
        if r < refuse {
            return Fault::Fail(Injected { refused: true });
        }
        if r < refuse + error {
            return Fault::Fail(Injected { refused: false });
        }
        if r < refuse + error + hang {
            return Fault::Hang;
        }
        let a = Duration::from_nanos(self.latency_a.load(Ordering::Acquire));
        let b = Duration::from_nanos(self.latency_b.load(Ordering::Acquire));
        let delay = match kind {
            LatencyKind::Fixed => a,
            // Saturating: a span up to `Duration::MAX` must not overflow.
            LatencyKind::Uniform => {
                a.saturating_add(crate::stats::scaled(b - a, self.rng.next_f64()))
            }
            LatencyKind::HeavyTail if self.rng.next_f64() < Self::rate(&self.latency_p) => b,
            LatencyKind::HeavyTail => a,
            LatencyKind::None => Duration::ZERO,
        };
        if delay.is_zero() {
            Fault::None
        } else {
            Fault::Delay(delay)
        }
    }
}

impl<S, Req> Service<Req> for Chaos<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.settings.draw() {
            Fault::Fail(injected) => ResponseFuture::done(Err(injected.into())),
            Fault::Hang => ResponseFuture { state: State::Hang },
            Fault::Delay(delay) => ResponseFuture {
                state: State::Delayed {
                    future: self.inner.call(req),
                    sleep: Box::pin(tokio::time::sleep(delay)),
                    result: None,
                },
            },
            Fault::None => ResponseFuture {
                state: State::Plain {
                    future: self.inner.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`Chaos`].
    pub struct ResponseFuture<F, T> {
        #[pin]
        state: State<F, T>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T> {
        Plain { #[pin] future: F },
        Delayed { #[pin] future: F, sleep: Pin<Box<Sleep>>, result: Option<Result<T, BoxError>> },
        Done { result: Option<Result<T, BoxError>> },
        Hang,
    }
}

impl<F, T> std::fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T> ResponseFuture<F, T> {
    fn done(result: Result<T, BoxError>) -> Self {
        Self {
            state: State::Done {
                result: Some(result),
            },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Plain { future } => future.poll(cx).map_err(Into::into),
            StateProj::Delayed {
                future,
                sleep,
                result,
            } => {
                if result.is_none() {
                    if let Poll::Ready(r) = future.poll(cx) {
                        *result = Some(r.map_err(Into::into));
                    }
                }
                ready!(sleep.as_mut().poll(cx));
                match result.take() {
                    Some(r) => Poll::Ready(r),
                    None => Poll::Pending,
                }
            }
            StateProj::Done { result } => match result.take() {
                Some(r) => Poll::Ready(r),
                None => panic!("ResponseFuture polled after completion"),
            },
            // Injected on purpose: this call never completes.
            StateProj::Hang => Poll::Pending,
        }
    }
}
