use std::fmt;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::config::{Builder, WhenNoneHealthy};
use super::future::{ResponseFuture, Tracked};
use super::handle::PoolHandle;
use super::replica::{Replica, ReplicaState};
use super::shared::{Member, Settings, Shared, Snapshot};
use super::table::Table;
use crate::attempt::{ReplicaId, Tried};
use crate::classify::{Classify, ErrorsAsFailures};
use crate::error::{BoxError, ConfigError, NoHealthyReplica};
use crate::health::HealthChecks;
use crate::rng::Rng;
use crate::sync::AtomicU64;

/// Outcomes each replica keeps for its failure-percentage and success-rate
/// rules: its last this many calls.
pub(super) const OUTCOME_WINDOW: u32 = 100;

/// Replicas a request passes over when their breakers refuse it, before
/// the pool gives up with `NoHealthyReplica`.
const BREAKER_PASSES: usize = 4;

/// How often a pool that waits for a replica (`WhenNoneHealthy::Wait`)
/// looks again when it knows of no time one comes back.
const WAIT_LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(50);

/// Mixed into a seed for the ejection periods' jitter, so that it draws
/// apart from the picks seeded with the same number.
const EJECTION_SEED_SALT: u64 = 0x5eed;

/// A service over replicas that routes each request to a healthy, lightly
/// loaded one; see the [module docs](super).
///
/// Cloning a pool is cheap and every clone shares the replicas' health and
/// load: clone it per task, or put it under retry and hedge layers.
pub struct Pool<K, S, C = ErrorsAsFailures> {
    pub(super) shared: Arc<Shared<K, S>>,
    pub(super) classifier: C,
    pub(super) cached: Arc<Snapshot<K, S>>,
    pub(super) checks: Option<HealthChecks>,
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
            .field("name", &self.shared.settings.name)
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
            checks: self.checks,
            rejected: None,
            waiting: None,
            rng: self.shared.rng.next_u64(),
        }
    }
}

impl Pool<(), ()> {
    /// A builder with the documented defaults (see [`Builder`]).
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C> Builder<C> {
    /// Validates the settings and builds a pool over `replicas`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting, or a replica
    /// whose id is given twice.
    pub fn build<K, S>(
        self,
        replicas: impl IntoIterator<Item = (K, Replica<S>)>,
    ) -> Result<Pool<K, S, C>, ConfigError>
    where
        K: Clone + Eq + Hash + fmt::Display,
        S: Clone,
    {
        self.validate()?;
        let base = Instant::now();
        let settings = Settings {
            name: self.name.clone(),
            local_zone: self.local_zone.clone(),
            overprovisioning: self.overprovisioning,
            panic_threshold: self.panic_threshold,
            failback_ms: super::clock::millis(self.failback_after),
            when_none_healthy: self.when_none_healthy,
            outlier: self.outlier.clone(),
            max_pushback: self.max_pushback,
            failure_penalty: self.failure_penalty,
            breaker: self.breaker.clone(),
        };
        let (events, _) = watch::channel(0);
        let seed = self.seed;
        // Members point back at the pool (weakly): a call's failure reaches
        // outlier detection through its replica.
        let mut error = None;
        let shared = Arc::new_cyclic(|pool| {
            let mut members: Vec<Arc<Member<K, S>>> = Vec::new();
            for (id, replica) in replicas {
                if members.iter().any(|m| m.id == id) {
                    error = Some(ConfigError::new(
                        "replicas",
                        format!("replica `{id}` is given twice"),
                    ));
                    break;
                }
                match member(&settings, id, replica, pool.clone()) {
                    Ok(member) => members.push(Arc::new(member)),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            Shared {
                settings,
                base,
                rng: seed.map_or_else(Rng::from_entropy, Rng::new),
                ejection_rng: seed
                    .map_or_else(Rng::from_entropy, |s| Rng::new(s ^ EJECTION_SEED_SALT)),
                current: Mutex::new(Arc::new(Snapshot::new(members, Table::default(), 0))),
                version: AtomicU64::new(0),
                dirty: std::sync::atomic::AtomicBool::new(true),
                rebuild_at_ms: AtomicU64::new(0),
                next_sweep_ms: AtomicU64::new(0),
                events,
            }
        });
        if let Some(error) = error {
            return Err(error);
        }
        shared.rebuild(shared.now_ms());
        let cached = shared
            .current
            .lock()
            .map_err(|_| ConfigError::new("replicas", "state poisoned"))?
            .clone();
        Ok(Pool {
            classifier: self.classifier,
            rng: shared.rng.next_u64(),
            shared,
            cached,
            checks: self.health_checks,
            rejected: None,
            waiting: None,
        })
    }
}

/// A new member of a pool with `settings`: its state (and breaker) for
/// `replica`, which must have a weight of at least 1.
pub(super) fn member<K: fmt::Display, S>(
    settings: &Settings,
    id: K,
    replica: Replica<S>,
    pool: Weak<Shared<K, S>>,
) -> Result<Member<K, S>, ConfigError> {
    let label: Arc<str> = Arc::from(id.to_string());
    if replica.weight == 0 {
        return Err(ConfigError::new(
            "replicas",
            format!("replica `{label}` has weight 0: a weight must be at least 1"),
        ));
    }
    let breaker = match &settings.breaker {
        Some(b) => Some(b.build_circuit(&format!("{}/{}", settings.name, label))?),
        None => None,
    };
    let state = ReplicaState::new(
        &settings.name,
        label,
        replica.tier,
        replica.zone,
        replica.weight,
        replica.check,
        breaker,
        OUTCOME_WINDOW,
    );
    Ok(Member {
        id,
        state,
        service: replica.service,
        pool,
    })
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
        if !self.cached.table.tiers.is_empty()
            && !shared.dirty.load(std::sync::atomic::Ordering::Acquire)
        {
            self.waiting = None;
            return Poll::Ready(Ok(()));
        }
        let now_ms = shared.now_ms();
        shared.refresh(&mut self.cached, now_ms);
        if !self.cached.table.tiers.is_empty() {
            self.waiting = None;
            // Each request waits only on its own replica's readiness.
            return Poll::Ready(Ok(()));
        }
        let reject = || {
            NoHealthyReplica::new(
                shared.settings.name.clone(),
                shared.retry_after(&self.cached, now_ms),
            )
        };
        match shared.settings.when_none_healthy {
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
                    .retry_after(&self.cached, now_ms)
                    .unwrap_or(WAIT_LOOK_AGAIN)
                    .clamp(std::time::Duration::from_millis(1), bound - waited);
                sleep.as_mut().reset(super::clock::deadline(now, next));
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
        let now_ns = shared.ns(Instant::now());
        let now_ms = Shared::<K, S>::ms_of(now_ns);
        shared.refresh(&mut self.cached, now_ms);
        let snapshot = &self.cached;
        // The fleet rules (success rate, latency) run once per interval.
        if now_ms >= shared.next_sweep_ms.load(crate::sync::Ordering::Acquire) {
            shared.sweep(snapshot, now_ms);
        }
        let rng = &mut self.rng;
        // Under retry and hedge layers, the request's attempt record: the
        // replicas it tried, and where this attempt goes.
        let chosen = crate::attempt::with_tried(|mut tried| {
            let untried = Tried::default();
            // A replica whose breaker refuses is passed over.
            for _ in 0..BREAKER_PASSES {
                let avoid = tried.as_deref().unwrap_or(&untried);
                let i = shared.choose(snapshot, now_ns, now_ms, rng, avoid)?;
                let member = &snapshot.members[i];
                let permit = match member.state.breaker() {
                    Some(circuit) => match circuit.try_acquire() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            shared.changed();
                            continue;
                        }
                    },
                    None => None,
                };
                if let Some(tried) = tried.as_deref_mut() {
                    tried.record(ReplicaId::of(member));
                }
                return Some((member, permit));
            }
            None
        });
        if let Some((member, permit)) = chosen {
            member.state.selections.increment(1);
            member
                .state
                .last_pick_ms
                .store(now_ms, crate::sync::Ordering::Relaxed);
            let tracked = Tracked::new(member.clone(), permit, shared.base, now_ns);
            let service = member.service.clone();
            return ResponseFuture::called(service, req, tracked, self.classifier.clone());
        }
        ResponseFuture::rejected(NoHealthyReplica::new(
            shared.settings.name.clone(),
            shared.retry_after(snapshot, now_ms),
        ))
    }
}
