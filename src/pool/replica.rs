//! A replica as the pool is given it, and its live state.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};

use super::clock::{AtomicMoment, Moment};
use super::standing::Why;
use crate::circuit_breaker::Circuit;
use crate::health::HealthCheck;
use crate::stats::ewma::PeakEwma;
use crate::stats::window::{CountWindow, Sample};
use crate::sync::{AtomicBool, AtomicState, AtomicU64, Ordering, State};

/// One replica of a [`Pool`](super::Pool): a service, a priority tier, a
/// locality and a weight, and optionally an active health check.
///
/// ```
/// use steadfast::pool::Replica;
/// # let client = tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
/// let standby = Replica::new(client).tier(1).zone("eu-west-1b").weight(2);
/// # let _ = standby;
/// ```
#[derive(Debug)]
pub struct Replica<S> {
    pub(super) service: S,
    pub(super) tier: u32,
    pub(super) zone: Option<Arc<str>>,
    pub(super) weight: u32,
    pub(super) check: Option<Arc<dyn HealthCheck>>,
}

impl<S> Replica<S> {
    /// A replica in tier 0 (primary), with no zone, weight 1.
    pub fn new(service: S) -> Self {
        Self {
            service,
            tier: 0,
            zone: None,
            weight: 1,
            check: None,
        }
    }

    /// Its priority tier: 0 is the primary, 1 the standby, and so on.
    #[must_use]
    pub fn tier(mut self, tier: u32) -> Self {
        self.tier = tier;
        self
    }

    /// Its zone (or region): the pool prefers replicas in its own.
    #[must_use]
    pub fn zone(mut self, zone: impl AsRef<str>) -> Self {
        self.zone = Some(Arc::from(zone.as_ref()));
        self
    }

    /// Its weight among replicas of the same tier and zone (at least 1; a
    /// pool given a weight of 0 refuses it with a `ConfigError`): a replica
    /// of weight 2 is chosen as if it had half the load.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same replica over another service: `f` wraps the one it has
    /// (in a timeout, a chaos layer, …); tier, zone, weight and check stay.
    pub fn map_service<S2>(self, f: impl FnOnce(S) -> S2) -> Replica<S2> {
        Replica {
            service: f(self.service),
            tier: self.tier,
            zone: self.zone,
            weight: self.weight,
            check: self.check,
        }
    }

    /// Checks its health actively (see [`health`](crate::health)); the checks
    /// run in the future [`Pool::health_checks`](super::Pool::health_checks)
    /// returns.
    #[must_use]
    pub fn health_check(mut self, check: impl HealthCheck) -> Self {
        self.check = Some(Arc::new(check));
        self
    }
}

/// The decay rate of the latency estimates: the inverse of their time
/// constant, 10 s (tower's and Finagle's peak-EWMA default), per nanosecond.
pub(super) const RATE: f64 = 1.0 / 10e9;

/// How often a replica that failed lately is probed despite its penalty.
/// How often a replica that failed lately is probed despite its penalty,
/// for its first [`FAST_PROBES`] failures in a row: fast enough that a
/// replica failing every call meets the default ejection rule (5 in a row)
/// within 100 ms.
pub(super) const FAST_PROBE_EVERY: Duration = Duration::from_millis(20);

/// Failures in a row probed at the fast pace; after them (when outlier
/// detection did not eject it) the pace halves per failure, down to
/// [`SLOW_PROBE_EVERY`], so a replica that keeps failing costs little.
pub(super) const FAST_PROBES: u64 = 5;

/// The least latency a load estimate is taken for, in nanoseconds: no call
/// over a network takes less than a microsecond, and a replica estimated
/// at nothing (calls that finish at once, in a test with paused time)
/// would otherwise be worth infinitely many turns.
const LEAST_LATENCY_NS: f64 = 1_000.0;

/// How close two costs must be for p2c to count the replicas as equally
/// loaded: see [`ReplicaState::preferred_to`].
pub(super) const EVEN_WITHIN: f64 = 2.0;

/// The slowest probing of a replica that keeps failing.
pub(super) const SLOW_PROBE_EVERY: Duration = Duration::from_secs(1);

/// What an operator (or discovery) made of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admin {
    Enabled,
    /// Finishing its calls, taking no new ones.
    Draining,
    Disabled,
    /// Removed by discovery: drains, then leaves the pool.
    Removed,
}

impl State for Admin {
    const ALL: &'static [Self] = &[Self::Enabled, Self::Draining, Self::Disabled, Self::Removed];

    fn byte(self) -> u8 {
        self as u8
    }
}

/// Live health and load of one replica, shared by every clone of the pool
/// and by the health-check driver.
///
/// What a pick reads of a candidate (its load, and whether it may take
/// traffic), and what every call updates (`in_flight`, `latency`,
/// `consecutive`), comes first and fits in the first cache line (`repr(C)`
/// keeps the order, `align(64)` starts it on a line): with thousands of
/// replicas a pick touches two such lines and nothing else of its
/// candidates, except their breaker when replicas have one and their label
/// when a retry must avoid replicas it tried. The chosen replica's call
/// also touches the second line (outcome window, answer latency, the
/// selections counter).
#[derive(Debug)]
#[repr(C, align(64))]
pub(super) struct ReplicaState {
    pub(super) in_flight: AtomicU64,
    /// The load estimate: every call, failures at a penalty.
    pub(super) latency: PeakEwma,
    /// Failures in a row.
    pub(super) consecutive: AtomicU64,
    /// When it was last chosen: a penalised replica is probed again when
    /// it has not been for a while.
    pub(super) last_pick_ns: AtomicU64,
    /// Until when it is ejected, or avoided ([`Moment::NEVER`]: not).
    pub(super) ejected_until: AtomicMoment,
    pub(super) avoid_until: AtomicMoment,
    pub(super) weight: u32,
    pub(super) admin: AtomicState<Admin>,
    /// The active check's verdict: passing (or no check) or failing.
    pub(super) check_healthy: AtomicBool,
    /// Whether `breaker` is set: a pick reads the breaker only then.
    has_breaker: bool,
    // End of the first cache line. The second holds what a finished call
    // also touches: the outcome window's counters, the answer latency and
    // the selections counter.
    /// The last calls' outcomes, for the failure-percentage rule.
    pub(super) window: CountWindow,
    /// How fast it answers when it succeeds: what the latency-outlier rule
    /// judges (a penalty for a failure is not slowness). Updated lossily: a
    /// statistic compared across the fleet once per interval.
    pub(super) answer_latency: PeakEwma,
    pub(super) selections: Counter,
    // Cold.
    pub(super) metrics: ReplicaMetrics,
    pub(super) label: Arc<str>,
    pub(super) tier: u32,
    pub(super) zone: Option<Arc<str>>,
    pub(super) check: Option<Arc<dyn HealthCheck>>,
    breaker: Option<Circuit>,
    pub(super) ejections: AtomicU64,
    /// Since when the active check says healthy again.
    pub(super) check_recovered_at: AtomicMoment,
    /// Since when an operator enabled it again.
    pub(super) admin_enabled_at: AtomicMoment,
    /// Why it was last made unhealthy.
    pub(super) why: AtomicState<Why>,
    /// Whether its latest calls failed and were counted at the failure
    /// penalty, with no success (or ejection) since: the penalty then keeps
    /// traffic away from it, which a snapshot reports as `Failing`.
    pub(super) shunned: AtomicBool,
}

#[derive(Debug)]
pub(super) struct ReplicaMetrics {
    pub(super) healthy: Gauge,
    pub(super) ejections: Counter,
    pub(super) unejections: Counter,
}

impl ReplicaState {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        pool: &Arc<str>,
        label: Arc<str>,
        tier: u32,
        zone: Option<Arc<str>>,
        weight: u32,
        check: Option<Arc<dyn HealthCheck>>,
        breaker: Option<Circuit>,
        window: u32,
    ) -> Self {
        let labels = |name: &'static str| (name, pool.clone(), label.clone());
        let (h, p, r) = labels("steadfast_replica_healthy");
        let healthy = metrics::gauge!(h, "name" => p, "replica" => r);
        healthy.set(1.0);
        let (e, p, r) = labels("steadfast_replica_ejections_total");
        let (s, p2, r2) = labels("steadfast_replica_selections_total");
        let (u, p3, r3) = labels("steadfast_replica_unejections_total");
        Self {
            label,
            tier,
            zone,
            weight,
            check,
            has_breaker: breaker.is_some(),
            breaker,
            in_flight: AtomicU64::new(0),
            // An unknown replica is assumed to answer in 1 ms, tower's
            // default round-trip time.
            latency: PeakEwma::new(1e6),
            answer_latency: PeakEwma::new(0.0),
            consecutive: AtomicU64::new(0),
            window: CountWindow::new(window),
            ejected_until: AtomicMoment::new(Moment::NEVER),
            ejections: AtomicU64::new(0),
            avoid_until: AtomicMoment::new(Moment::NEVER),
            check_healthy: AtomicBool::new(true),
            check_recovered_at: AtomicMoment::new(Moment::NEVER),
            admin: AtomicState::new(Admin::Enabled),
            last_pick_ns: AtomicU64::new(0),
            admin_enabled_at: AtomicMoment::new(Moment::NEVER),
            why: AtomicState::new(Why::None),
            shunned: AtomicBool::new(false),
            selections: metrics::counter!(s, "name" => p2, "replica" => r2),
            metrics: ReplicaMetrics {
                healthy,
                ejections: metrics::counter!(e, "name" => p, "replica" => r),
                unejections: metrics::counter!(u, "name" => p3, "replica" => r3),
            },
        }
    }

    /// Its own circuit breaker, if the pool gives each replica one.
    #[inline]
    pub(super) fn breaker(&self) -> Option<&Circuit> {
        if self.has_breaker {
            self.breaker.as_ref()
        } else {
            None
        }
    }

    /// The cost p2c weighs, latency × (in flight + 1), before its weight:
    /// see [`preferred_to`](Self::preferred_to).
    #[inline]
    fn load(&self, now_ns: u64) -> f64 {
        let in_flight = self.in_flight.load(Ordering::Relaxed) as f64;
        let latency = self.latency.get_at(now_ns, RATE).max(LEAST_LATENCY_NS);
        latency * (in_flight + 1.0)
    }

    /// Whether p2c prefers it to `other`.
    ///
    /// - Two costs (latency × (in flight + 1) / weight) within
    ///   [`EVEN_WITHIN`] of each other count as equal: the one with fewer
    ///   calls in flight goes, or, as many, the one that has waited longer
    ///   since it was last chosen, times its weight. At low load the
    ///   estimates of identical replicas differ by their noise alone, and
    ///   equals take exact turns.
    /// - The costlier of two that also has more calls in flight loses: it is
    ///   busier, not only estimated slower. So does the costlier when
    ///   either failed lately (failures or unanswered calls in a row): such
    ///   a replica gets its traffic as probes
    ///   ([`wants_probe`](Self::wants_probe)), not by turns.
    /// - Otherwise each is scored by how long it has waited, times its
    ///   weight, over its cost, and the higher score goes: each replica is
    ///   chosen at intervals in proportion to its cost, and takes a share
    ///   in inverse proportion to it (an earliest-deadline schedule, as
    ///   Envoy weighs least-request hosts).
    ///
    /// Not the lower cost outright: a replica whose estimate one slow
    /// answer drew up would get nothing until it decayed, so would never
    /// show it is fast again, and at low load p2c herded onto the other
    /// replicas for seconds at a time. Costs and waits are cross-multiplied,
    /// so a pick divides nothing.
    #[inline]
    pub(super) fn preferred_to(&self, other: &Self, now_ns: u64) -> bool {
        let (my_load, their_load) = (self.load(now_ns), other.load(now_ns));
        // Costs, each times the other's weight.
        let mine = my_load * f64::from(other.weight);
        let theirs = their_load * f64::from(self.weight);
        let my_turn = self.waited(now_ns) * f64::from(self.weight);
        let their_turn = other.waited(now_ns) * f64::from(other.weight);
        let my_calls = self.in_flight.load(Ordering::Relaxed);
        let their_calls = other.in_flight.load(Ordering::Relaxed);
        if mine <= theirs * EVEN_WITHIN && theirs <= mine * EVEN_WITHIN {
            if my_calls != their_calls {
                return my_calls < their_calls;
            }
            return my_turn >= their_turn;
        }
        let cheaper = mine <= theirs;
        let costlier_is_busier = if cheaper {
            their_calls > my_calls
        } else {
            my_calls > their_calls
        };
        if costlier_is_busier || self.failing_lately() || other.failing_lately() {
            return cheaper;
        }
        my_turn * their_load >= their_turn * my_load
    }

    /// Whether its latest calls failed or went unanswered, in a row.
    #[inline]
    fn failing_lately(&self) -> bool {
        self.consecutive.load(Ordering::Relaxed) > 0
    }

    /// Nanoseconds since it was last chosen.
    #[inline]
    fn waited(&self, now_ns: u64) -> f64 {
        now_ns.saturating_sub(self.last_pick_ns.load(Ordering::Relaxed)) as f64
    }

    /// Whether it failed lately (failures in a row, not yet ejected) and
    /// has not been chosen for its [`probe_every`] pace: p2c then picks it
    /// as a probe.
    #[inline]
    pub(super) fn wants_probe(&self, now_ns: u64) -> bool {
        let in_a_row = self.consecutive.load(Ordering::Relaxed);
        let idle = now_ns.saturating_sub(self.last_pick_ns.load(Ordering::Relaxed));
        in_a_row > 0 && Duration::from_nanos(idle) >= probe_every(in_a_row)
    }

    pub(super) fn record_outcome(&self, failure: bool) -> u64 {
        self.window.record(Sample {
            failure,
            slow: false,
        });
        if failure {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Release);
                self.shunned.store(false, Ordering::Release);
            }
            0
        }
    }
}

/// How long a replica with `in_a_row` failures waits between probes.
fn probe_every(in_a_row: u64) -> Duration {
    let slower = u32::try_from(in_a_row.saturating_sub(FAST_PROBES)).unwrap_or(u32::MAX);
    FAST_PROBE_EVERY
        .checked_mul(1 << slower.min(8))
        .map_or(SLOW_PROBE_EVERY, |pace| pace.min(SLOW_PROBE_EVERY))
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use std::mem::{offset_of, size_of_val};

    use super::*;

    #[test]
    fn a_failing_replica_is_probed_fast_then_ever_slower() {
        let paces: Vec<Duration> = (1..=12).map(probe_every).collect();
        let ms = Duration::from_millis;
        assert_eq!(paces[..5], [FAST_PROBE_EVERY; 5]);
        assert_eq!(paces[5..8], [ms(40), ms(80), ms(160)]);
        assert_eq!(paces[11], SLOW_PROBE_EVERY);
        assert_eq!(probe_every(u64::MAX), SLOW_PROBE_EVERY);
    }

    /// What a pick reads and a finished call writes sits in the first cache
    /// line of the state.
    #[test]
    fn the_hot_fields_share_the_first_cache_line() {
        let s = ReplicaState::new(&Arc::from("p"), Arc::from("r"), 0, None, 1, None, None, 10);
        let ends = [
            offset_of!(ReplicaState, in_flight) + size_of_val(&s.in_flight),
            offset_of!(ReplicaState, latency) + size_of_val(&s.latency),
            offset_of!(ReplicaState, consecutive) + size_of_val(&s.consecutive),
            offset_of!(ReplicaState, last_pick_ns) + size_of_val(&s.last_pick_ns),
            offset_of!(ReplicaState, ejected_until) + size_of_val(&s.ejected_until),
            offset_of!(ReplicaState, avoid_until) + size_of_val(&s.avoid_until),
            offset_of!(ReplicaState, weight) + size_of_val(&s.weight),
            offset_of!(ReplicaState, admin) + size_of_val(&s.admin),
            offset_of!(ReplicaState, check_healthy) + size_of_val(&s.check_healthy),
            offset_of!(ReplicaState, has_breaker) + size_of_val(&s.has_breaker),
        ];
        assert!(ends.iter().all(|&end| end <= 64), "{ends:?}");
        let second = [
            offset_of!(ReplicaState, window) + size_of_val(&s.window),
            offset_of!(ReplicaState, answer_latency) + size_of_val(&s.answer_latency),
            offset_of!(ReplicaState, selections) + size_of_val(&s.selections),
        ];
        assert!(second.iter().all(|&end| end <= 128), "{second:?}");
        assert_eq!(std::mem::align_of::<ReplicaState>(), 64);
    }
}
