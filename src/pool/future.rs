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
        tracked: Option<Tracked<Member<K, S>>>,
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
        let replica = self
            .tracked
            .as_ref()
            .map(|t| t.member.state().label.clone());
        f.debug_struct("ResponseFuture")
            .field("replica", &replica)
            .finish_non_exhaustive()
    }
}

/// A call in flight on one replica: counted in its load until it ends.
/// `M` is the replica's `Member`, or the member erased for a call that
/// lives on in its response's body ([`Answered`]).
pub(super) struct Tracked<M: Outcomes + ?Sized> {
    pub(super) member: Arc<M>,
    permit: Option<CircuitPermit>,
    /// The pool's clock: its base, and when the call started on it.
    base: Instant,
    started_ns: u64,
    /// When its replica answered, for a call judged when its response's
    /// body ends (`Classify::defer`): its latency, and a call that answered.
    answered_ns: Option<u64>,
    done: bool,
    /// Whether it is its request's first attempt (or the pool is called
    /// without a retry or hedge above): only such a call, dropped, hints
    /// that its replica is slow. A hedge or retry dropped because an
    /// earlier attempt answered says nothing about its replica.
    first: bool,
}

impl<M: Outcomes + ?Sized> Tracked<M> {
    pub(super) fn new(
        member: Arc<M>,
        permit: Option<CircuitPermit>,
        base: Instant,
        started_ns: u64,
        first: bool,
    ) -> Self {
        member.state().in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            member,
            permit,
            base,
            started_ns,
            answered_ns: None,
            done: false,
            first,
        }
    }
}

impl<M: Outcomes + ?Sized> Drop for Tracked<M> {
    fn drop(&mut self) {
        let state = self.member.state();
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.done {
            if let (Some(circuit), Some(permit)) = (state.breaker(), self.permit) {
                circuit.release(permit);
            }
            // A body dropped before its end: the replica answered, and the
            // call counts as neither.
            if self.answered_ns.is_none() {
                self.cut_short();
            }
        }
    }
}

/// How much of the time a replica takes to answer a call must have run
/// before it is dropped to count as unanswered: one dropped sooner says
/// nothing about the replica.
const UNANSWERED_AFTER: f64 = 0.1;

impl<M: Outcomes + ?Sized> Tracked<M> {
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
        let state = member.state();
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
    pub(super) fn called(
        service: S,
        req: Req,
        tracked: Tracked<Member<K, S>>,
        classifier: C,
    ) -> Self {
        Self {
            kind: Kind::Called {
                call: Oneshot::new(service, req),
            },
            tracked: Some(tracked),
            classifier: Some(classifier),
        }
    }

    /// A call already made, on a service that was ready.
    pub(super) fn calling(call: S::Future, tracked: Tracked<Member<K, S>>, classifier: C) -> Self {
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
/// ([`Classify::defer`]): still counted in its replica's load until then.
/// `None` only if its member was gone, which a call in flight prevents.
struct Answered(Option<Tracked<ErasedMember>>);

impl Answered {
    /// The call in `tracked` (taken from its future, so always `Some`),
    /// answered now, its member erased to live on in the body.
    fn new<K, S>(tracked: Option<Tracked<Member<K, S>>>) -> Self {
        let Some(mut tracked) = tracked else {
            return Self(None);
        };
        let Some(member) = tracked.member.erased.upgrade() else {
            return Self(None);
        };
        let mut permit = tracked.permit.take();
        if let (Some(circuit), Some(permit)) = (member.state().breaker(), permit.as_mut()) {
            circuit.answered(permit);
        }
        // The count in flight moves to the erased call: it counts itself,
        // and `tracked`, done, gives its own back when it drops here.
        let mut answered = Tracked::new(
            member,
            permit,
            tracked.base,
            tracked.started_ns,
            tracked.first,
        );
        answered.answered_ns = Some(crate::stats::nanos_since(tracked.base, Instant::now()));
        tracked.done = true;
        Self(Some(answered))
    }
}

impl AtEnd for Answered {
    fn verdict(mut self, verdict: Verdict) {
        if let Some(mut tracked) = self.0.take() {
            tracked.done = true;
            report(&tracked, verdict);
        }
    }
}

/// Judges a finished call and reports it (once: now, or when its response's
/// body ends), and hands its result on.
fn finish<K, S, C, T, E>(
    tracked: &mut Option<Tracked<Member<K, S>>>,
    classifier: &mut Option<C>,
    mut result: Result<T, E>,
) -> Result<T, BoxError>
where
    C: Classify<T, E>,
    E: Into<BoxError>,
{
    if let Some(classifier) = classifier.take() {
        let deferred = match &mut result {
            Ok(response) => classifier.defer(response, || Answered::new(tracked.take())),
            Err(_) => false,
        };
        if let (false, Some(mut tracked)) = (deferred, tracked.take()) {
            let verdict = classifier.classify(result.as_ref());
            tracked.done = true;
            report(&tracked, verdict);
        }
    }
    result.map_err(Into::into)
}

/// Feeds one finished call to the replica's load estimate, its breaker and
/// outlier detection.
fn report<M: Outcomes + ?Sized>(tracked: &Tracked<M>, verdict: Verdict) {
    let member = &tracked.member;
    let state = member.state();
    let now_ns = crate::stats::nanos_since(tracked.base, Instant::now());
    let answered_ns = tracked.answered_ns.unwrap_or(now_ns);
    let elapsed = answered_ns.saturating_sub(tracked.started_ns) as f64;
    if let (Some(circuit), Some(permit)) = (state.breaker(), tracked.permit) {
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
