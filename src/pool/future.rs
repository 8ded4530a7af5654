//! The pool's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;
use tower::util::Oneshot;

use super::replica::RATE;
use super::shared::{ErasedMember, Member, Outcomes};
use crate::circuit_breaker::CircuitPermit;
use crate::classify::{AtEnd, Classify, Verdict};
use crate::error::{BoxError, NoHealthyReplica};
use crate::sync::Ordering;

pin_project! {
    /// The response future of [`Pool`](super::Pool).
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the call; the replica's in-flight count and its
    /// breaker's probe slot (if any) are given back, and the time the call
    /// ran counts as a lower bound of the replica's latency (see
    /// [`Pool`](super::Pool)).
    pub struct ResponseFuture<K, S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        kind: Kind<S, Req>,
        tracked: Option<Tracked<K, S>>,
        classifier: Option<C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req>
    where
        S: Service<Req>,
    {
        Called { #[pin] call: Oneshot<S, Req> },
        Calling { #[pin] call: S::Future },
        Rejected { error: Option<NoHealthyReplica> },
    }
}

impl<K, S, Req, C> std::fmt::Debug for ResponseFuture<K, S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let replica = self.tracked.as_ref().map(|t| t.member.state.label.clone());
        f.debug_struct("ResponseFuture")
            .field("replica", &replica)
            .finish_non_exhaustive()
    }
}

/// A call in flight on one replica: counted in its load until it ends.
#[derive(Debug)]
pub(super) struct Tracked<K, S> {
    pub(super) member: Arc<Member<K, S>>,
    permit: Option<CircuitPermit>,
    /// The pool's clock: its base, and when the call started on it.
    base: Instant,
    started_ns: u64,
    done: bool,
    /// Whether it is its request's first attempt (or the pool is called
    /// without a retry or hedge above): only such a call, dropped, hints
    /// that its replica is slow. A hedge or retry dropped because an
    /// earlier attempt answered says nothing about its replica.
    first: bool,
}

impl<K, S> Tracked<K, S> {
    pub(super) fn new(
        member: Arc<Member<K, S>>,
        permit: Option<CircuitPermit>,
        base: Instant,
        started_ns: u64,
        first: bool,
    ) -> Self {
        member.state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            member,
            permit,
            base,
            started_ns,
            done: false,
            first,
        }
    }
}

impl<K, S> Drop for Tracked<K, S> {
    fn drop(&mut self) {
        let state = &self.member.state;
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.done {
            if let (Some(circuit), Some(permit)) = (state.breaker(), self.permit) {
                circuit.release(permit);
            }
            self.cut_short();
        }
    }
}

/// How much of the time a replica takes to answer a call must have run
/// before it is dropped to count as unanswered: one dropped sooner says
/// nothing about the replica.
const UNANSWERED_AFTER: f64 = 0.1;

impl<K, S> Tracked<K, S> {
    /// The call was dropped unfinished (a hedge won elsewhere, the caller
    /// gave up, a timeout above the pool): it would have taken at least as
    /// long as it ran. That lower bound feeds the load estimate when it is
    /// above it, so a replica that hangs loses its traffic after a few
    /// hedges. And a request's first attempt that ran a while, while its
    /// replica answered nothing at all, counts as unanswered, toward
    /// ejection: a replica that is only busy answers its other calls
    /// meanwhile, and a hedge that lost to the attempt before it was not
    /// slow.
    fn cut_short(&self) {
        let member = &self.member;
        let state = &member.state;
        let now_ns = crate::stats::nanos_since(self.base, Instant::now());
        let ran = now_ns.saturating_sub(self.started_ns) as f64;
        state.latency.observe_at_least(now_ns, ran, RATE);
        // Judged against how fast it answers when it does, which calls cut
        // short do not move (the load estimate they raise would make the
        // next loser look early).
        let answers_in = state.answer_latency.get();
        let answered_meanwhile = state.answer_latency.updated_within(now_ns, ran as u64);
        if !self.first || ran < answers_in * UNANSWERED_AFTER || answered_meanwhile {
            return;
        }
        member.on_unanswered(now_ns);
    }
}

impl<K, S, Req, C> ResponseFuture<K, S, Req, C>
where
    S: Service<Req>,
{
    pub(super) fn called(service: S, req: Req, tracked: Tracked<K, S>, classifier: C) -> Self {
        Self {
            kind: Kind::Called {
                call: Oneshot::new(service, req),
            },
            tracked: Some(tracked),
            classifier: Some(classifier),
        }
    }

    /// A call already made, on a service that was ready.
    pub(super) fn calling(call: S::Future, tracked: Tracked<K, S>, classifier: C) -> Self {
        Self {
            kind: Kind::Calling { call },
            tracked: Some(tracked),
            classifier: Some(classifier),
        }
    }

    pub(super) fn rejected(error: NoHealthyReplica) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
            tracked: None,
            classifier: None,
        }
    }
}

impl<K, S, Req, C> Future for ResponseFuture<K, S, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { call } => {
                let result = ready!(call.poll(cx));
                Poll::Ready(finish(this.tracked, this.classifier, result))
            }
            KindProj::Calling { call } => {
                let result = ready!(call.poll(cx));
                Poll::Ready(finish(this.tracked, this.classifier, result))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(err) => Poll::Ready(Err(Box::new(err))),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}

/// A call that answered and is judged when its response's body ends
/// ([`Classify::defer`]): its replica (erased, to live on in the body), its
/// breaker permit, and when it started and answered. No longer counted in
/// its replica's load: the replica answered, and a long stream must not
/// make it look busy (nor keep it from taking hedges).
struct Answered {
    member: Arc<ErasedMember>,
    permit: Option<CircuitPermit>,
    times: Times,
    told: bool,
}

/// When a call started and when its replica answered, on the pool's clock.
#[derive(Debug, Clone, Copy)]
struct Times {
    base: Instant,
    started_ns: u64,
    /// `None` until it answered: then it ends (and is judged) at once.
    answered_ns: Option<u64>,
}

impl Times {
    /// The time to the answer, and the time now.
    fn elapsed(&self) -> (f64, u64) {
        let now_ns = crate::stats::nanos_since(self.base, Instant::now());
        let answered_ns = self.answered_ns.unwrap_or(now_ns);
        (answered_ns.saturating_sub(self.started_ns) as f64, now_ns)
    }
}

impl Answered {
    /// The call in `tracked`, answered now, if its member is still there
    /// (a call in flight keeps it). `tracked` ends, done, here.
    fn new<K, S>(mut tracked: Tracked<K, S>) -> Option<Self> {
        let member = tracked.member.erased.upgrade()?;
        let mut permit = tracked.permit.take();
        if let (Some(circuit), Some(permit)) = (member.state().breaker(), permit.as_mut()) {
            circuit.answered(permit);
        }
        tracked.done = true;
        Some(Self {
            member,
            permit,
            times: Times {
                base: tracked.base,
                started_ns: tracked.started_ns,
                answered_ns: Some(crate::stats::nanos_since(tracked.base, Instant::now())),
            },
            told: false,
        })
    }
}

impl AtEnd for Option<Answered> {
    fn verdict(self, verdict: Verdict) {
        if let Some(mut answered) = self {
            answered.told = true;
            report(&*answered.member, answered.permit, answered.times, verdict);
        }
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        if self.told {
            return;
        }
        // The body was dropped before its end: the call counts as neither,
        // but the time its replica took to answer still feeds its load
        // estimate.
        let state = self.member.state();
        if let (Some(circuit), Some(permit)) = (state.breaker(), self.permit) {
            circuit.release(permit);
        }
        let (elapsed, now_ns) = self.times.elapsed();
        state.latency.observe(now_ns, elapsed, RATE);
    }
}

/// Whether a call holds one of its replica's breaker's half-open probes:
/// such a call is judged at its headers, so that a long stream does not
/// hold the breaker half-open.
fn holds_a_probe<K, S>(tracked: Option<&Tracked<K, S>>) -> bool {
    tracked.is_some_and(|t| t.permit.is_some_and(|p| p.is_probe()))
}

/// Judges a finished call and reports it (once: now, or when its response's
/// body ends), and hands its result on.
fn finish<K, S, C, T, E>(
    tracked: &mut Option<Tracked<K, S>>,
    classifier: &mut Option<C>,
    mut result: Result<T, E>,
) -> Result<T, BoxError>
where
    C: Classify<T, E>,
    E: Into<BoxError>,
{
    if let Some(classifier) = classifier.take() {
        let deferred = match &mut result {
            Ok(response) if !holds_a_probe(tracked.as_ref()) => {
                classifier.defer(response, || tracked.take().and_then(Answered::new))
            }
            _ => false,
        };
        if let (false, Some(mut tracked)) = (deferred, tracked.take()) {
            let verdict = classifier.classify(result.as_ref());
            tracked.done = true;
            let times = Times {
                base: tracked.base,
                started_ns: tracked.started_ns,
                answered_ns: None,
            };
            report(&*tracked.member, tracked.permit, times, verdict);
        }
    }
    result.map_err(Into::into)
}

/// Feeds one finished call to the replica's load estimate, its breaker and
/// outlier detection.
fn report<M: Outcomes + ?Sized>(
    member: &M,
    permit: Option<CircuitPermit>,
    times: Times,
    verdict: Verdict,
) {
    let state = member.state();
    let (elapsed, now_ns) = times.elapsed();
    if let (Some(circuit), Some(permit)) = (state.breaker(), permit) {
        circuit.complete(permit, verdict);
    }
    if !verdict.is_failure() {
        if verdict.is_success() && state.consecutive.load(Ordering::Relaxed) > 0 {
            // It answers again after failures (or calls unanswered) in a
            // row: their penalties have done their work. Judged by them it
            // would stay starved of the traffic that shows it is back
            // until they decayed, tens of seconds later.
            state.latency.reset(now_ns, elapsed);
        } else {
            state.latency.observe(now_ns, elapsed, RATE);
        }
        if verdict.is_success() {
            state.answer_latency.observe_lossy(now_ns, elapsed, RATE);
            state.record_outcome(false);
            if state.window.holds_failures() {
                member.on_success_after_failures(now_ns);
            }
        }
        return;
    }
    member.on_failure(now_ns, elapsed, verdict.pushback());
}
