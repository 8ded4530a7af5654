//! The futures a pool's owner runs: active health checks and membership
//! updates from discovery. The crate never spawns them itself.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tower::discover::{Change, Discover};

use super::config::member;
use super::replica::{Admin, Replica};
use super::service::Pool;
use super::shared::{Member, Shared, Snapshot};
use super::standing::Why;
use crate::error::BoxError;
use crate::health::HealthChecks;
use crate::rng::Rng;
use crate::sync::{Ordering, lock};

/// A replica's check history.
#[derive(Debug)]
struct Track {
    next_at: Instant,
    passes: u32,
    fails: u32,
}

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
    pub fn health_checks(&self) -> impl Future<Output = ()> + Send + 'static {
        let weak: Weak<Shared<K, S>> = Arc::downgrade(&self.shared);
        let config = self.checks.unwrap_or_default();
        let rng = Rng::from_entropy();
        async move {
            let mut tracks: HashMap<Arc<str>, Track> = HashMap::new();
            loop {
                let Some(shared) = weak.upgrade() else { return };
                let snapshot = lock(&shared.current).clone();
                let now = Instant::now();
                let due: Vec<_> = snapshot
                    .members
                    .iter()
                    .filter_map(|m| Some((m, m.state.check.clone()?)))
                    .filter(|(m, _)| tracks.get(&m.state.label).is_none_or(|t| t.next_at <= now))
                    .collect();
                let results =
                    join_all(due.iter().map(|(_, check)| {
                        let run = check.check();
                        async move {
                            matches!(tokio::time::timeout(config.timeout, run).await, Ok(Ok(())))
                        }
                    }))
                    .await;
                let now = Instant::now();
                for ((member, _), passed) in due.iter().zip(results) {
                    let state = &member.state;
                    let track = tracks.entry(state.label.clone()).or_insert(Track {
                        next_at: now,
                        passes: 0,
                        fails: 0,
                    });
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
                            pool = &*shared.settings.name,
                            replica = &*state.label,
                            "replica failed its health checks"
                        );
                        shared.changed();
                    } else if !healthy && track.passes >= config.healthy_threshold {
                        state
                            .check_recovered_at
                            .store(shared.ms(now), Ordering::Release);
                        state.check_healthy.store(true, Ordering::Release);
                        #[cfg(feature = "tracing")]
                        tracing::info!(
                            pool = &*shared.settings.name,
                            replica = &*state.label,
                            "replica passed its health checks"
                        );
                        shared.changed();
                    }
                    let down = !state.check_healthy.load(Ordering::Acquire);
                    track.next_at = crate::stats::later(now, jittered(&config, down, &rng));
                }
                // Forget replicas that left the pool.
                tracks.retain(|label, _| snapshot.members.iter().any(|m| m.state.label == *label));
                let next = tracks
                    .values()
                    .map(|t| t.next_at)
                    .min()
                    .unwrap_or_else(|| crate::stats::later(now, config.interval));
                drop(snapshot);
                drop(shared);
                // Wake at least once a second to notice the pool is gone.
                tokio::time::sleep_until(next.min(now + Duration::from_secs(1))).await;
            }
        }
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
                        let joined = member(&shared.settings, id, replica, Arc::downgrade(&shared));
                        let member = match joined {
                            Ok(member) => member,
                            Err(_refused) => {
                                #[cfg(feature = "tracing")]
                                tracing::warn!(
                                    pool = &*shared.settings.name,
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
                            members.push(Arc::new(member));
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

fn update_members<K, S>(shared: &Shared<K, S>, change: impl FnOnce(&mut Vec<Arc<Member<K, S>>>)) {
    {
        let mut current = lock(&shared.current);
        let mut members: Vec<Arc<Member<K, S>>> = current.members.clone();
        change(&mut members);
        let version = shared.version.load(Ordering::Acquire) + 1;
        *current = Arc::new(Snapshot::new(members, current.table.clone(), version));
        shared.version.store(version, Ordering::Release);
    }
    // The table indexes the old list: rebuild it now.
    shared.changed();
    shared.rebuild(shared.now_ms());
}
