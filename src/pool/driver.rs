//! The futures a pool's owner runs: active health checks and membership
//! updates from discovery. The crate never spawns them itself.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tower::discover::{Change, Discover};

use super::clock::Moment;
use super::config::member;
use super::replica::{Admin, Replica, ReplicaState};
use super::service::Pool;
use super::shared::{Member, Shared};
use super::standing::Why;
use crate::error::BoxError;
use crate::health::HealthChecks;
use crate::rng::Rng;
use crate::sync::{Ordering, lock};

/// A replica's check history.
#[derive(Debug)]
struct Track {
    /// When its next check may start.
    next_at: Instant,
    passes: u32,
    fails: u32,
    /// Its checks in flight.
    running: u32,
    /// When the check whose result was applied last started: a result of a
    /// check started earlier is stale (a hung check timing out after a
    /// later one passed) and is dropped.
    applied_since: Option<Instant>,
}

/// The most checks of one replica in flight at once: a replica out of
/// traffic is checked every unhealthy interval even while an earlier check
/// hangs, up to this many.
const MAX_CHECKS_IN_FLIGHT: u32 = 3;

/// A check's result: the replica's label, when the check started, whether
/// it passed.
type CheckResult = (Arc<str>, Instant, bool);

impl<K, S, C> Pool<K, S, C>
where
    K: Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// Runs the active health checks of every replica that has one (see
    /// [`Replica::health_check`]), on the schedule given to the builder's
    /// `health_checks`, until every clone of the pool and every handle is
    /// dropped. Spawn it, or drive it with the rest of your tasks.
    ///
    /// A check that hangs past its timeout, or errs, is a failed check.
    /// Each replica is checked on its own schedule: a check that hangs
    /// holds up no other replica's. A replica out of traffic is checked
    /// every unhealthy interval even while an earlier check of it still
    /// hangs (up to three at once), so a replica that comes back while a
    /// check of it hangs is seen within one unhealthy interval, not after
    /// the hung check's timeout; the newest check's result wins.
    pub fn health_checks(&self) -> impl Future<Output = ()> + Send + 'static {
        let weak: Weak<Shared<K, S>> = Arc::downgrade(&self.shared);
        let rng = Rng::from_entropy();
        async move {
            let mut tracks: HashMap<Arc<str>, Track> = HashMap::new();
            let mut running: FuturesUnordered<BoxFuture<'static, CheckResult>> =
                FuturesUnordered::new();
            loop {
                let Some(shared) = weak.upgrade() else { return };
                // Read each round: a reload may change the schedule.
                let config = shared.settings().checks.unwrap_or_default();
                let snapshot = lock(&shared.current).clone();
                let now = Instant::now();
                // When the next check may start, of the replicas that can
                // start one then.
                let mut next = crate::stats::later(now, config.interval);
                for member in snapshot.members.iter() {
                    let state = &member.state;
                    let Some(check) = &state.check else { continue };
                    let track = tracks.entry(state.label.clone()).or_insert(Track {
                        next_at: now,
                        passes: 0,
                        fails: 0,
                        running: 0,
                        applied_since: None,
                    });
                    let down = out_of_traffic(&shared, state, now);
                    let may_start =
                        track.running == 0 || (down && track.running < MAX_CHECKS_IN_FLIGHT);
                    if !may_start {
                        // Its check in flight ends first; then it is looked at.
                        continue;
                    }
                    if track.next_at > now {
                        next = next.min(track.next_at);
                        continue;
                    }
                    track.running += 1;
                    track.next_at = crate::stats::later(now, jittered(&config, down, &rng));
                    if down && track.running < MAX_CHECKS_IN_FLIGHT {
                        next = next.min(track.next_at);
                    }
                    let run = check.check();
                    let (label, timeout) = (state.label.clone(), config.timeout);
                    running.push(Box::pin(async move {
                        let passed = matches!(tokio::time::timeout(timeout, run).await, Ok(Ok(())));
                        (label, now, passed)
                    }));
                }
                // Forget replicas that left the pool.
                tracks.retain(|label, _| snapshot.members.iter().any(|m| m.state.label == *label));
                drop(snapshot);
                drop(shared);
                // Wake at least once a second to notice the pool is gone.
                let wake = tokio::time::sleep_until(next.min(now + Duration::from_secs(1)));
                let done = {
                    let mut wake = std::pin::pin!(wake);
                    futures::future::poll_fn(|cx| {
                        if let Poll::Ready(Some(done)) = running.poll_next_unpin(cx) {
                            return Poll::Ready(Some(done));
                        }
                        wake.as_mut().poll(cx).map(|()| None)
                    })
                    .await
                };
                let Some((label, started, passed)) = done else {
                    continue;
                };
                let Some(shared) = weak.upgrade() else { return };
                let config = shared.settings().checks.unwrap_or_default();
                let snapshot = lock(&shared.current).clone();
                let Some(track) = tracks.get_mut(&label) else {
                    continue;
                };
                track.running = track.running.saturating_sub(1);
                if track.applied_since.is_some_and(|since| started < since) {
                    continue;
                }
                track.applied_since = Some(started);
                if let Some(member) = snapshot.members.iter().find(|m| m.state.label == label) {
                    apply_check(&shared, &member.state, track, passed, &config, &rng);
                }
            }
        }
    }
}

/// Whether `state`'s replica is out of traffic, failing its checks or
/// ejected: it is checked at the faster pace, so its recovery is seen soon.
fn out_of_traffic<K, S>(shared: &Shared<K, S>, state: &ReplicaState, now: Instant) -> bool {
    !state.check_healthy.load(Ordering::Acquire)
        || state.ejected_until.load(Ordering::Acquire) > shared.moment(now)
}

/// Counts one check's result toward the thresholds, and moves the replica
/// in or out of traffic when one is met; a passing check ends an ejection.
/// A replica found out of traffic now has its next check brought forward
/// to the unhealthy interval.
fn apply_check<K, S>(
    shared: &Shared<K, S>,
    state: &ReplicaState,
    track: &mut Track,
    passed: bool,
    config: &HealthChecks,
    rng: &Rng,
) {
    let now = Instant::now();
    if passed {
        track.passes += 1;
        track.fails = 0;
    } else {
        track.fails += 1;
        track.passes = 0;
    }
    let healthy = state.check_healthy.load(Ordering::Acquire);
    if healthy && track.fails >= config.unhealthy_threshold {
        state.check_healthy.store(false, Ordering::Release);
        state.why.store(Why::HealthCheck, Ordering::Release);
        state.latency.reset(shared.ns(now), 0.0);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            pool = &*shared.settings().name,
            replica = &*state.label,
            "replica failed its health checks"
        );
        shared.changed();
    } else if !healthy && track.passes >= config.healthy_threshold {
        state
            .check_recovered_at
            .store(shared.moment(now), Ordering::Release);
        state.check_healthy.store(true, Ordering::Release);
        #[cfg(feature = "tracing")]
        tracing::info!(
            pool = &*shared.settings().name,
            replica = &*state.label,
            "replica passed its health checks"
        );
        shared.changed();
    }
    if passed && state.check_healthy.load(Ordering::Acquire) {
        // As Envoy does: a passing check ends an ejection.
        shared.uneject(state, shared.moment(now));
    }
    if out_of_traffic(shared, state, now) {
        let sooner = crate::stats::later(now, jittered(config, true, rng));
        track.next_at = track.next_at.min(sooner);
    }
}

fn jittered(config: &HealthChecks, down: bool, rng: &Rng) -> Duration {
    let base = if down {
        config.unhealthy_interval
    } else {
        config.interval
    };
    let spread = (rng.next_f64() * 2.0 - 1.0) * config.jitter;
    // Saturating: an interval of `Duration::MAX` stays "never again".
    crate::stats::scaled(base, 1.0 + spread)
}

impl<K, S, C> Pool<K, S, C>
where
    K: Clone + Eq + Hash + std::fmt::Display + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    /// Applies membership changes from `discover` until it ends (or every
    /// clone of the pool is dropped): an inserted replica joins at once; a
    /// removed one drains — its calls in flight finish, no new ones go
    /// there — and then leaves. A new replica under an existing id replaces
    /// it the same way. New replicas get the pool's own settings (their
    /// breakers are built like the first replicas').
    ///
    /// A replica discovery offers that the pool cannot take (a weight of
    /// 0) is passed over, with a `tracing` warning; the others still join.
    ///
    /// # Errors
    ///
    /// The discovery stream's own error, which ends the updates.
    pub fn discover<D>(
        &self,
        discover: D,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static
    where
        D: Discover<Key = K, Service = Replica<S>> + Send + 'static,
        D::Error: Into<BoxError>,
    {
        let weak: Weak<Shared<K, S>> = Arc::downgrade(&self.shared);
        async move {
            let mut discover = std::pin::pin!(discover);
            while let Some(change) =
                futures::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).await
            {
                let Some(shared) = weak.upgrade() else {
                    return Ok(());
                };
                match change.map_err(Into::into)? {
                    Change::Insert(id, replica) => {
                        let joined =
                            member(&shared.settings(), id, replica, Arc::downgrade(&shared));
                        let member = match joined {
                            Ok(member) => member,
                            Err(_refused) => {
                                #[cfg(feature = "tracing")]
                                tracing::warn!(
                                    pool = &*shared.settings().name,
                                    error = %_refused,
                                    "discovered replica refused"
                                );
                                continue;
                            }
                        };
                        update_members(&shared, |members| {
                            for m in members.iter().filter(|m| m.id == member.id) {
                                m.state.admin.store(Admin::Removed, Ordering::Release);
                            }
                            members.push(member);
                        });
                    }
                    Change::Remove(id) => update_members(&shared, |members| {
                        for m in members.iter().filter(|m| m.id == id) {
                            m.state.admin.store(Admin::Removed, Ordering::Release);
                        }
                    }),
                }
            }
            Ok(())
        }
    }
}

pub(super) fn update_members<K, S>(
    shared: &Shared<K, S>,
    change: impl FnOnce(&mut Vec<Arc<Member<K, S>>>),
) {
    {
        let _building = lock(&shared.building);
        let old = lock(&shared.current).clone();
        let mut members: Vec<Arc<Member<K, S>>> = old.members.to_vec();
        change(&mut members);
        // Members are only added here (removed ones leave in a rebuild), so
        // the old table's indexes still point at the same replicas.
        shared.publish(members.into(), old.table.clone());
    }
    // The table does not know the new replicas: rebuild it now.
    shared.changed();
    shared.rebuild(shared.now());
}

impl<K, S, C> Pool<K, S, C>
where
    K: Send + Sync + 'static,
    S: Send + Sync + 'static,
{
    /// Keeps the pool's routing current off the request path: rebuilds the
    /// routing table when a replica's health changes (or every 100 ms) and
    /// runs the fleet-relative outlier rules once per
    /// [`interval`](super::OutlierDetection::interval), until every clone
    /// of the pool and every handle is dropped. Spawn it, or drive it with
    /// the rest of your tasks.
    ///
    /// Without it, the request that finds the table stale rebuilds it, and
    /// the first request of an interval runs the fleet rules: an
    /// O(replicas) pass inside that request's `call`, about 10 µs at 100
    /// replicas and a millisecond at 10,000 (`cargo bench --bench pool --
    /// upkeep`). While this future runs, requests never do that work: they
    /// route with the table they have (passing over a replica that went
    /// out since, as always) and wake this future instead. A request
    /// still rebuilds a table with nothing in it rather than fail.
    ///
    /// For a pool of a few hundred replicas it makes little difference;
    /// for thousands, spawn it. With it, the fleet rules also run on time
    /// when no request comes.
    pub fn upkeep(&self) -> impl Future<Output = ()> + Send + 'static {
        let weak: Weak<Shared<K, S>> = Arc::downgrade(&self.shared);
        let due = self.shared.upkeep_due.clone();
        async move {
            let Some(_keeper) = Keeper::start(&weak) else {
                return;
            };
            loop {
                // Taken before the work: a change marked during it wakes
                // the wait below at once.
                let woken = due.notified();
                let Some(shared) = weak.upgrade() else { return };
                let now = Instant::now();
                let next = shared.keep(shared.moment(now));
                let wake = next.instant(shared.base).max(now + UPKEEP_MIN_WAIT);
                drop(shared);
                let sleep = tokio::time::sleep_until(wake);
                futures::future::select(std::pin::pin!(woken), std::pin::pin!(sleep)).await;
            }
        }
    }
}

/// The shortest wait of the upkeep future between two rounds: if a
/// request is rebuilding when it is due, it looks again after this rather
/// than spinning.
const UPKEEP_MIN_WAIT: Duration = Duration::from_millis(1);

impl<K, S> Shared<K, S> {
    /// One round of upkeep `now`: the table if it is due, the fleet rules
    /// if their interval is over. Returns when the next round is due.
    fn keep(&self, now: Moment) -> Moment {
        if self.table_due(now) {
            self.rebuild(now);
        }
        if now >= self.next_sweep.load(Ordering::Acquire) {
            let snapshot = lock(&self.current).clone();
            self.sweep(&snapshot, now);
        }
        self.rebuild_at
            .load(Ordering::Acquire)
            .min(self.next_sweep.load(Ordering::Acquire))
    }
}

/// A running upkeep future, counted in `Shared::keepers` while it lives.
struct Keeper<K, S> {
    shared: Weak<Shared<K, S>>,
}

impl<K, S> Keeper<K, S> {
    fn start(shared: &Weak<Shared<K, S>>) -> Option<Self> {
        shared.upgrade()?.keepers.fetch_add(1, Ordering::AcqRel);
        Some(Self {
            shared: shared.clone(),
        })
    }
}

impl<K, S> Drop for Keeper<K, S> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.keepers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
