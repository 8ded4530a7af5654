//! The pool's shared state: its members and their snapshot, its settings
//! and its clock. What is done with it lives beside: choosing a replica in
//! `select.rs`, outlier detection in `outlier.rs`, keeping the snapshot
//! current in `upkeep.rs`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::clock::{AtomicMoment, Moment};
use super::config::WhenNoneHealthy;
use super::outlier::OutlierDetection;
use super::replica::ReplicaState;
use super::table::Table;
use crate::rng::Rng;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Mutex};

/// One member: its state, the service calls go to, and its id.
///
/// One allocation, the state first (`repr(C)`): a pick reaches a
/// candidate's load and health in one step from the snapshot's list, and
/// the winner's service is in the same allocation.
#[derive(Debug)]
#[repr(C)]
pub(super) struct Member<K, S> {
    pub(super) state: ReplicaState,
    pub(super) service: S,
    pub(super) id: K,
    /// The pool, for a failed call's outlier detection (weak: the pool
    /// holds its members).
    pub(super) pool: Weak<Shared<K, S>>,
    /// Itself, its types erased (see [`Outcomes`]).
    pub(super) erased: Weak<ErasedMember>,
}

/// What a call reports to the member it ran on, reached without the
/// member's id and service types.
///
/// A call judged when its response's body ends lives on in that body
/// (`Classify::defer`), which must be `Send + 'static`. Required of the
/// pool's types, those bounds would reach every service stacked over the
/// pool, and a `&'static str` id would no longer pass through a tonic
/// client's call in a spawned task (rustc cannot prove `'static` of a
/// lifetime it has erased there). So a member is erased once, when it
/// joins, where its types are known to be `Send + Sync + 'static`.
pub(super) trait Outcomes {
    fn state(&self) -> &ReplicaState;
    /// A first attempt dropped unanswered after a while (see
    /// `Tracked::cut_short`).
    fn on_unanswered(&self, now_ns: u64);
    /// A success after failures in the outcome window.
    fn on_success_after_failures(&self, now_ns: u64);
    fn on_failure(&self, now_ns: u64, elapsed: f64, pushback: Option<Duration>);
}

/// A member, as its [`Outcomes`].
pub(super) type ErasedMember = dyn Outcomes + Send + Sync;

impl<K, S> Outcomes for Member<K, S> {
    fn state(&self) -> &ReplicaState {
        &self.state
    }

    // Each needs the pool, gone only if every clone and handle was dropped
    // while the call ran.
    fn on_unanswered(&self, now_ns: u64) {
        if let Some(shared) = self.pool.upgrade() {
            shared.on_unanswered(&self.state, now_ns);
        }
    }

    fn on_success_after_failures(&self, now_ns: u64) {
        if let Some(shared) = self.pool.upgrade() {
            shared.on_success_after_failures(&self.state, now_ns);
        }
    }

    fn on_failure(&self, now_ns: u64, elapsed: f64, pushback: Option<Duration>) {
        if let Some(shared) = self.pool.upgrade() {
            shared.on_failure(&self.state, now_ns, elapsed, pushback);
        }
    }
}

/// A pool's members, in one list that snapshots share while membership
/// does not change: a new snapshot copies one pointer, not one per member,
/// and the last holder of an old snapshot frees one list, not thousands of
/// references.
pub(super) type Members<K, S> = Arc<[Arc<Member<K, S>>]>;

/// The members at one membership version, with the table built for them.
#[derive(Debug)]
pub(super) struct Snapshot<K, S> {
    pub(super) members: Members<K, S>,
    pub(super) table: Table,
    pub(super) version: u64,
}

impl<K, S> Snapshot<K, S> {
    pub(super) fn new(members: impl Into<Members<K, S>>, table: Table, version: u64) -> Self {
        Self {
            members: members.into(),
            table,
            version,
        }
    }
}

/// Settings fixed at build time.
#[derive(Debug)]
pub(super) struct Settings {
    pub(super) name: Arc<str>,
    pub(super) local_zone: Option<Arc<str>>,
    pub(super) overprovisioning: f64,
    pub(super) panic_threshold: f64,
    pub(super) failback: Duration,
    pub(super) when_none_healthy: WhenNoneHealthy,
    pub(super) outlier: OutlierDetection,
    pub(super) max_pushback: Duration,
    pub(super) failure_penalty: Duration,
    /// What every replica's breaker is built from, for replicas that join
    /// later (discovery) as for the first ones.
    pub(super) breaker: Option<crate::circuit_breaker::Builder>,
    /// The active checks' schedule, read by the checks' future each round.
    pub(super) checks: Option<crate::health::HealthChecks>,
}

/// State shared by every clone of a pool, its handle and its drivers.
#[derive(Debug)]
pub(super) struct Shared<K, S> {
    /// Swapped whole by [`PoolHandle::apply`](super::PoolHandle::apply).
    pub(super) settings: ArcSwap<Settings>,
    pub(super) base: Instant,
    pub(super) rng: Rng,
    pub(super) ejection_rng: Rng,
    /// The current snapshot; the request path reads it through a cached
    /// `Arc` and takes this lock only when `version` moved. It is held only
    /// to copy the `Arc` out or to put a new one in, never while one is
    /// built.
    pub(super) current: Mutex<Arc<Snapshot<K, S>>>,
    pub(super) version: AtomicU64,
    /// Held by whoever builds the next snapshot (a rebuild, a membership
    /// change), so that no two build from the same old one and the later
    /// overwrites the earlier.
    pub(super) building: Mutex<()>,
    /// Set when the table must be rebuilt (an ejection, a pushback, a
    /// check result, an operator's change), and when it next must be.
    pub(super) dirty: AtomicBool,
    pub(super) rebuild_at: AtomicMoment,
    /// When the fleet rules are next due.
    pub(super) next_sweep: AtomicMoment,
    pub(super) events: watch::Sender<u64>,
    /// How many [`Pool::upkeep`](super::Pool::upkeep) futures run: while
    /// one does, requests leave the table rebuilds and the fleet sweeps to
    /// it.
    pub(super) keepers: AtomicUsize,
    /// Wakes the upkeep future when the table went stale (shared with it,
    /// so that it can wait without keeping the pool alive).
    pub(super) upkeep_due: Arc<Notify>,
}

impl<K, S> Drop for Shared<K, S> {
    fn drop(&mut self) {
        // The upkeep future waits on this: it wakes, finds the pool gone
        // and ends.
        self.upkeep_due.notify_one();
    }
}

impl<K, S> Shared<K, S> {
    /// The settings now.
    #[inline]
    pub(super) fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// The pool's moment now.
    pub(super) fn now(&self) -> Moment {
        self.moment(Instant::now())
    }

    /// The pool's moment at `at`.
    pub(super) fn moment(&self, at: Instant) -> Moment {
        Moment::from_nanos(self.ns(at))
    }

    /// Nanoseconds since the pool's base: the clock of the latency
    /// estimates.
    #[inline]
    pub(super) fn ns(&self, at: Instant) -> u64 {
        crate::stats::nanos_since(self.base, at)
    }
}
