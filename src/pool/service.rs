use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::Service;

use super::clock::Moment;
use super::config::{Builder, WhenNoneHealthy};
use super::future::{ResponseFuture, Tracked};
use super::handle::PoolHandle;
use super::select::Pick;
use super::shared::{Member, Shared, Snapshot};
use crate::attempt::{ReplicaId, Tried};
use crate::circuit_breaker::CircuitPermit;
use crate::classify::{Classify, ErrorsAsFailures};
use crate::error::{BoxError, NoHealthyReplica};

/// Replicas a request passes over when their breakers refuse it, before
/// the pool gives up with `NoHealthyReplica`.
const BREAKER_PASSES: usize = 4;

/// How often a pool that waits for a replica (`WhenNoneHealthy::Wait`)
/// looks again when it knows of no time one comes back.
const WAIT_LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(50);

/// A service over replicas that routes each request to a healthy, lightly
/// loaded one; see the [module docs](super).
///
/// Cloning a pool is cheap and every clone shares the replicas' health and
/// load: clone it per task, or put it under retry and hedge layers.
pub struct Pool<K, S, C = ErrorsAsFailures> {
    pub(super) shared: Arc<Shared<K, S>>,
    pub(super) classifier: C,
    pub(super) cached: Arc<Snapshot<K, S>>,
    /// Set by `poll_ready` when no replica can take the next request.
    /// Boxed: the healthy path clears and reads it as one word.
    rejected: Option<Box<NoHealthyReplica>>,
    /// While waiting for a replica (`WhenNoneHealthy::Wait`): since when, and
    /// the timer for the next look.
    waiting: Option<(Instant, Pin<Box<Sleep>>)>,
    /// This clone's own random state (SplitMix64): picks touch no shared
    /// cache line. Seeded from the pool's seed, so a seeded clone repeats.
    rng: u64,
}

impl<K, S, C> fmt::Debug for Pool<K, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.settings().name)
            .field("replicas", &self.cached.members.len())
            .finish_non_exhaustive()
    }
}

impl<K: Clone, S: Clone, C: Clone> Clone for Pool<K, S, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
            cached: self.cached.clone(),
            rejected: None,
            waiting: None,
            rng: self.shared.rng.next_u64(),
        }
    }
}

impl<K, S, C> Pool<K, S, C> {
    /// A pool over `shared`, seeing `cached` (made by the builder).
    pub(super) fn from_parts(
        shared: Arc<Shared<K, S>>,
        cached: Arc<Snapshot<K, S>>,
        classifier: C,
    ) -> Self {
        Self {
            classifier,
            rng: shared.rng.next_u64(),
            shared,
            cached,
            rejected: None,
            waiting: None,
        }
    }
}

impl Pool<(), ()> {
    /// A builder with the documented defaults (see [`Builder`]).
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<K, S, C> Pool<K, S, C>
where
    K: Clone,
    S: Clone,
{
    /// A handle to watch and steer the replicas.
    pub fn handle(&self) -> PoolHandle<K, S> {
        PoolHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<K, S, C, Req> Service<Req> for Pool<K, S, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<K, S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let shared = &self.shared;
        self.rejected = None;
        // The clock is read in `call`, which routes; here only a table that
        // is empty, or known to be stale, needs a fresh look.
        if !self.cached.table.tiers.is_empty() && !shared.dirty.load(crate::sync::Ordering::Acquire)
        {
            self.waiting = None;
            return Poll::Ready(Ok(()));
        }
        let moment = shared.now();
        shared.refresh(&mut self.cached, moment);
        if !self.cached.table.tiers.is_empty() {
            self.waiting = None;
            // Each request waits only on its own replica's readiness.
            return Poll::Ready(Ok(()));
        }
        let reject = || {
            NoHealthyReplica::new(
                shared.settings().name.clone(),
                shared.retry_after(&self.cached, moment),
            )
        };
        match shared.settings().when_none_healthy {
            WhenNoneHealthy::FailFast => {
                self.rejected = Some(Box::new(reject()));
                Poll::Ready(Ok(()))
            }
            WhenNoneHealthy::Wait(bound) => {
                let now = Instant::now();
                let (since, sleep) = self.waiting.get_or_insert_with(|| {
                    (now, Box::pin(tokio::time::sleep(std::time::Duration::ZERO)))
                });
                let waited = now.saturating_duration_since(*since);
                if waited >= bound {
                    self.waiting = None;
                    self.rejected = Some(Box::new(reject()));
                    return Poll::Ready(Ok(()));
                }
                // Look again when a replica may be back, or at the bound.
                let next = shared
                    .retry_after(&self.cached, moment)
                    .unwrap_or(WAIT_LOOK_AGAIN)
                    .clamp(std::time::Duration::from_millis(1), bound - waited);
                sleep.as_mut().reset(crate::stats::later(now, next));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(err) = self.rejected.take() {
            return ResponseFuture::rejected(*err);
        }
        let shared = &self.shared;
        // The clock, read once for the pick (and once more when the call
        // ends), turned into the pool's time once.
        let clock = Instant::now();
        let now_ns = shared.ns(clock);
        let now = Moment::from_nanos(now_ns);
        shared.refresh(&mut self.cached, now);
        let snapshot = &self.cached;
        // The fleet rules (success rate, latency) run once per interval,
        // here unless an upkeep future runs them.
        if shared.request_sweeps(now) {
            shared.sweep(snapshot, now);
        }
        let rng = &mut self.rng;
        let mut declined = false;
        // Under retry and hedge layers, the request's attempt record: the
        // replicas it tried, and where this attempt goes.
        let chosen = crate::attempt::with_tried(|tried| {
            let untried = Tried::default();
            let first = tried.as_deref().is_none_or(Tried::is_empty);
            // The first replica found not ready for this request, and its
            // service: passed over for another, taken (and waited on) if
            // there is none.
            let mut busy: Option<(usize, S)> = None;
            let taken = 'pick: {
                // A replica whose breaker refuses is passed over.
                for _ in 0..BREAKER_PASSES {
                    let avoid = tried.as_deref().unwrap_or(&untried);
                    let mut pick = Pick {
                        snapshot,
                        now_ns,
                        now,
                        tried: avoid,
                        busy: busy.as_ref().map(|&(i, _)| i as u32),
                        stale: false,
                    };
                    let chosen = pick.choose(rng);
                    if pick.stale {
                        shared.stale();
                    }
                    let Some(i) = chosen else { break };
                    let member = &snapshot.members[i];
                    let Some(permit) = admit(member) else {
                        shared.changed();
                        continue;
                    };
                    let mut service = member.service.clone();
                    match ready_now(&mut service) {
                        Poll::Pending if busy.is_none() => {
                            release(member, permit);
                            busy = Some((i, service));
                        }
                        Poll::Ready(Ok(())) => break 'pick Some((i, permit, service, true)),
                        _ => break 'pick Some((i, permit, service, false)),
                    }
                }
                let (i, service) = busy?;
                Some((i, admit(&snapshot.members[i])?, service, false))
            };
            let (i, permit, service, ready) = taken?;
            let member = &snapshot.members[i];
            if let Some(tried) = tried {
                if !first && too_late(member, tried.time_left(clock)) {
                    release(member, permit);
                    tried.decline_too_late();
                    declined = true;
                    return None;
                }
                if tried.is_hedge() && !free_for_a_hedge(member, ready) {
                    release(member, permit);
                    tried.decline_hedge();
                    declined = true;
                    return None;
                }
                tried.record(ReplicaId::of(member));
            }
            Some((member, permit, service, ready, first))
        });
        if let Some((member, permit, mut service, ready, first)) = chosen {
            member.state.selections.increment(1);
            member
                .state
                .last_pick_ns
                .store(now_ns, crate::sync::Ordering::Relaxed);
            let tracked = Tracked::new(member.clone(), permit, shared.base, now_ns, first);
            let classifier = self.classifier.clone();
            // A service found ready is called now; one that was not (or
            // failed) is left to `Oneshot`, which waits on it (or returns
            // its error).
            if ready {
                return ResponseFuture::calling(service.call(req), tracked, classifier);
            }
            return ResponseFuture::called(service, req, tracked, classifier);
        }
        if declined {
            // The hedge layer above drops this unpolled and waits.
            return ResponseFuture::rejected(NoHealthyReplica::new(
                shared.settings().name.clone(),
                None,
            ));
        }
        ResponseFuture::rejected(NoHealthyReplica::new(
            shared.settings().name.clone(),
            shared.retry_after(snapshot, now),
        ))
    }
}

/// Whether `member`, chosen for a hedge, can start it at once: its service
/// is ready and it has no call in flight. A hedge helps when the attempt it
/// races is slow for its replica's own reasons; when every replica is busy
/// (the fleet is saturated), a hedge only adds load, and over HTTP/1 the
/// loser's connection is closed and opened again. So the pool declines it,
/// and the hedge layer tries again after another delay.
fn free_for_a_hedge<K, S>(member: &Member<K, S>, ready: bool) -> bool {
    ready && member.state.in_flight.load(crate::sync::Ordering::Acquire) == 0
}

/// Whether a repeat (a retry or a hedge) with `left` to the call's deadline
/// would come too late from `member`: the time left is less than it
/// typically takes to answer (the pool's estimate of its answers' latency,
/// none before its first answer). Sent, it would only add load.
fn too_late<K, S>(member: &Member<K, S>, left: Option<Duration>) -> bool {
    left.is_some_and(|left| (left.as_nanos() as f64) < member.state.answer_latency.get())
}

/// The breaker's permit for a call to `member`: `Some(None)` without a
/// breaker, `None` if its breaker refuses.
fn admit<K, S>(member: &Member<K, S>) -> Option<Option<CircuitPermit>> {
    match member.state.breaker() {
        Some(circuit) => circuit.try_acquire().ok().map(Some),
        None => Some(None),
    }
}

/// Gives back a permit [`admit`] took, for a call not made.
fn release<K, S>(member: &Member<K, S>, permit: Option<CircuitPermit>) {
    if let (Some(circuit), Some(permit)) = (member.state.breaker(), permit) {
        circuit.release(permit);
    }
}

/// Whether `service` is ready for a call now, asked once without a task to
/// wake: a service that is not ready registers a waker nobody waits on,
/// and that copy is put aside or dropped.
fn ready_now<S: Service<Req>, Req>(service: &mut S) -> Poll<Result<(), S::Error>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    service.poll_ready(&mut cx)
}
