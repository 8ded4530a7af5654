//! The pool's configuration: a builder validated when built.

use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::clock::{AtomicMoment, Moment};
use super::outlier::OutlierDetection;
use super::replica::{Replica, ReplicaState};
use super::service::Pool;
use super::shared::{Member, Settings, Shared, Snapshot};
use super::table::Table;
use crate::rng::Rng;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Mutex};

use crate::circuit_breaker;
use crate::classify::ErrorsAsFailures;
use crate::error::ConfigError;
use crate::health::HealthChecks;

/// What a pool does when no replica can take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenNoneHealthy {
    /// Fail at once with [`NoHealthyReplica`](crate::error::NoHealthyReplica).
    FailFast,
    /// Wait up to this long for one to come back, then fail.
    Wait(Duration),
}

/// Builds a [`Pool`](super::Pool); see [`Pool::builder`](super::Pool::builder).
///
/// | setting | default | why |
/// |---|---|---|
/// | [`name`](Self::name) | `"default"` | the `name` label of metrics and events |
/// | [`local_zone`](Self::local_zone) | none | prefer replicas in the caller's zone |
/// | [`overprovisioning`](Self::overprovisioning) | 1.4 | Envoy's: a tier 72% healthy still takes all its traffic |
/// | [`panic_threshold`](Self::panic_threshold) | 0.5 | below half healthy, spread over all rather than crush the few |
/// | [`failback_after`](Self::failback_after) | 10 s | a recovered replica proves itself before taking traffic back |
/// | [`when_none_healthy`](Self::when_none_healthy) | fail fast | a caller's own timeout is the better judge of waiting |
/// | [`outlier`](Self::outlier) | see [`OutlierDetection`] | eject replicas that fail or lag |
/// | [`max_pushback`](Self::max_pushback) | 60 s | avoid a replica that asked for it, but not for a day |
/// | [`failure_penalty`](Self::failure_penalty) | 1 s | a failure must never make a replica look fast |
/// | [`circuit_breaker`](Self::circuit_breaker) | none | a breaker per replica, from one builder |
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder<C = ErrorsAsFailures> {
    pub(crate) name: Arc<str>,
    pub(super) classifier: C,
    pub(crate) local_zone: Option<Arc<str>>,
    pub(crate) overprovisioning: f64,
    pub(crate) panic_threshold: f64,
    pub(crate) failback_after: Duration,
    pub(crate) when_none_healthy: WhenNoneHealthy,
    pub(crate) outlier: OutlierDetection,
    pub(crate) max_pushback: Duration,
    pub(crate) failure_penalty: Duration,
    pub(crate) breaker: Option<circuit_breaker::Builder>,
    pub(crate) health_checks: Option<HealthChecks>,
    pub(crate) seed: Option<u64>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            classifier: ErrorsAsFailures,
            local_zone: None,
            overprovisioning: 1.4,
            panic_threshold: 0.5,
            failback_after: Duration::from_secs(10),
            when_none_healthy: WhenNoneHealthy::FailFast,
            outlier: OutlierDetection::default(),
            max_pushback: Duration::from_secs(60),
            failure_penalty: Duration::from_secs(1),
            breaker: None,
            health_checks: None,
            seed: None,
        }
    }
}

impl<C> Builder<C> {
    /// Names the pool: the `name` label of its metrics and events.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Arc::from(name.as_ref());
        self
    }

    /// Sets the classifier: what a failure is, for outlier detection. It
    /// must be `Clone` for the pool to be a `Service`: each call's future
    /// carries a copy (classifiers are usually zero-sized; one that holds
    /// an `Arc` pays a reference count per call).
    pub fn classify<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            name: self.name,
            classifier,
            local_zone: self.local_zone,
            overprovisioning: self.overprovisioning,
            panic_threshold: self.panic_threshold,
            failback_after: self.failback_after,
            when_none_healthy: self.when_none_healthy,
            outlier: self.outlier,
            max_pushback: self.max_pushback,
            failure_penalty: self.failure_penalty,
            breaker: self.breaker,
            health_checks: self.health_checks,
            seed: self.seed,
        }
    }

    /// The caller's zone: its replicas are preferred while enough of them
    /// are healthy.
    pub fn local_zone(mut self, zone: impl AsRef<str>) -> Self {
        self.local_zone = Some(Arc::from(zone.as_ref()));
        self
    }

    /// How much healthy capacity a tier is assumed to have spare (≥ 1): a
    /// tier with `h` of its replicas healthy takes `min(1, h × factor)` of
    /// the traffic and the next tier the rest.
    pub fn overprovisioning(mut self, factor: f64) -> Self {
        self.overprovisioning = factor;
        self
    }

    /// Below this share of healthy capacity, traffic is spread over every
    /// enabled replica, healthy or not.
    pub fn panic_threshold(mut self, share: f64) -> Self {
        self.panic_threshold = share;
        self
    }

    /// How long a replica must stay healthy after trouble before it counts
    /// again in the tier arithmetic (failback hysteresis).
    pub fn failback_after(mut self, wait: Duration) -> Self {
        self.failback_after = wait;
        self
    }

    /// What to do when no replica can take a request.
    pub fn when_none_healthy(mut self, policy: WhenNoneHealthy) -> Self {
        self.when_none_healthy = policy;
        self
    }

    /// Sets passive outlier detection.
    pub fn outlier(mut self, outlier: OutlierDetection) -> Self {
        self.outlier = outlier;
        self
    }

    /// Caps how long a replica is avoided after a server's pushback.
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.max_pushback = max;
        self
    }

    /// The latency a failed call counts as in the load estimate, if it was
    /// faster: a replica that fails fast must not look attractive.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// Gives every replica a circuit breaker built from `breaker` (named
    /// `<pool>/<replica>`).
    pub fn circuit_breaker(mut self, breaker: circuit_breaker::Builder) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Sets the schedule of active health checks (see
    /// [`Pool::health_checks`](super::Pool::health_checks)).
    pub fn health_checks(mut self, checks: HealthChecks) -> Self {
        self.health_checks = Some(checks);
        self
    }

    /// Seeds the random choices (for repeatable tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The settings a pool runs with (validated first).
    pub(super) fn settings(&self) -> Settings {
        Settings {
            name: self.name.clone(),
            local_zone: self.local_zone.clone(),
            overprovisioning: self.overprovisioning,
            panic_threshold: self.panic_threshold,
            failback: self.failback_after,
            when_none_healthy: self.when_none_healthy,
            outlier: self.outlier.clone(),
            max_pushback: self.max_pushback,
            failure_penalty: self.failure_penalty,
            breaker: self.breaker.clone(),
            checks: self.health_checks,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if !(self.overprovisioning >= 1.0 && self.overprovisioning <= 100.0) {
            return Err(ConfigError::new(
                "overprovisioning",
                format!("must be in 1..=100, got {}", self.overprovisioning),
            ));
        }
        if !(self.panic_threshold >= 0.0 && self.panic_threshold <= 1.0) {
            return Err(ConfigError::new(
                "panic_threshold",
                format!("must be in 0..=1, got {}", self.panic_threshold),
            ));
        }
        if let WhenNoneHealthy::Wait(d) = self.when_none_healthy {
            if d.is_zero() {
                return Err(ConfigError::new(
                    "when_none_healthy",
                    "a wait must be greater than zero",
                ));
            }
        }
        self.outlier.validate()?;
        if let Some(checks) = &self.health_checks {
            checks.validate()?;
        }
        if let Some(breaker) = &self.breaker {
            // Checked, not built: a circuit registers its metrics.
            breaker.check().map_err(|e| e.within("circuit_breaker"))?;
        }
        Ok(())
    }
}

/// Outcomes each replica keeps for its failure-percentage and success-rate
/// rules: its last this many calls.
pub(super) const OUTCOME_WINDOW: u32 = 100;

/// Mixed into a seed for the ejection periods' jitter, so that it draws
/// apart from the picks seeded with the same number.
const EJECTION_SEED_SALT: u64 = 0x5eed;

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
        K: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static,
        S: Clone + Send + Sync + 'static,
    {
        self.validate()?;
        let base = Instant::now();
        let settings = self.settings();
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
                    Ok(member) => members.push(member),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            Shared {
                settings: ArcSwap::from_pointee(settings),
                base,
                rng: seed.map_or_else(Rng::from_entropy, Rng::new),
                ejection_rng: seed
                    .map_or_else(Rng::from_entropy, |s| Rng::new(s ^ EJECTION_SEED_SALT)),
                current: Mutex::new(Arc::new(Snapshot::new(members, Table::default(), 0))),
                version: AtomicU64::new(0),
                building: Mutex::new(()),
                dirty: AtomicBool::new(true),
                rebuild_at: AtomicMoment::new(Moment::NEVER),
                next_sweep: AtomicMoment::new(Moment::NEVER),
                events,
                keepers: AtomicUsize::new(0),
                upkeep_due: Arc::new(Notify::new()),
            }
        });
        if let Some(error) = error {
            return Err(error);
        }
        shared.rebuild(shared.now());
        let cached = crate::sync::lock(&shared.current).clone();
        Ok(Pool::from_parts(shared, cached, self.classifier))
    }
}

/// A new member of a pool with `settings`: its state (and breaker) for
/// `replica`, which must have a weight of at least 1.
pub(super) fn member<K, S>(
    settings: &Settings,
    id: K,
    replica: Replica<S>,
    pool: Weak<Shared<K, S>>,
) -> Result<Arc<Member<K, S>>, ConfigError>
where
    K: fmt::Display + Send + Sync + 'static,
    S: Send + Sync + 'static,
{
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
    Ok(Arc::new_cyclic(|erased: &Weak<Member<K, S>>| Member {
        id,
        state,
        service: replica.service,
        pool,
        erased: erased.clone(),
    }))
}
