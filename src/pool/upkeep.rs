//! Keeping the pool's routing current: the snapshot of members a request
//! reads, rebuilt (with its routing table) when health changes or its time
//! runs out, and the subscribers told.

use std::sync::Arc;
use std::time::Duration;

use super::clock::Moment;
use super::replica::Admin;
use super::shared::{Member, Members, Shared, Snapshot};
use super::standing::Standing;
use super::table::{Row, Table};
use crate::sync::{Ordering, lock, try_lock};

/// How long a routing table is trusted without events.
const TABLE_TTL: Duration = Duration::from_millis(100);

/// The pool clock's step: a table is never due again within the moment it
/// was built.
const CLOCK_TICK: Duration = Duration::from_millis(1);

impl<K, S> Shared<K, S> {
    /// The soonest a replica comes back, as a hint for callers.
    pub(super) fn retry_after(&self, snapshot: &Snapshot<K, S>, now: Moment) -> Option<Duration> {
        snapshot.table.next_change.map(|t| now.until(t))
    }

    /// Something about health changed: rebuild the table and tell
    /// subscribers.
    pub(super) fn changed(&self) {
        self.mark_stale();
        self.events.send_modify(|n| *n += 1);
        self.upkeep_due.notify_one();
    }

    /// A request found the table behind the replicas' states: it is rebuilt
    /// (by the next request, or by the upkeep future).
    pub(super) fn stale(&self) {
        self.mark_stale();
        self.upkeep_due.notify_one();
    }

    /// Sets the flag a rebuild takes. A read-modify-write, as the rebuild's
    /// is: of two that race, one reads the other, so the flag is left set
    /// or the rebuild sees the change (loom's partial modification order
    /// could let a plain store and the rebuild's swap both seem last).
    fn mark_stale(&self) {
        self.dirty.swap(true, Ordering::AcqRel);
    }

    /// Whether a [`Pool::upkeep`](super::Pool::upkeep) future runs, and so
    /// requests leave the upkeep to it.
    pub(super) fn kept(&self) -> bool {
        self.keepers.load(Ordering::Acquire) > 0
    }

    /// Whether the table must be rebuilt `now`.
    pub(super) fn table_due(&self, now: Moment) -> bool {
        self.dirty.load(Ordering::Acquire) || now >= self.rebuild_at.load(Ordering::Acquire)
    }

    /// Whether a request `now` runs the fleet sweep itself: when it is due
    /// and no upkeep future does it.
    pub(super) fn request_sweeps(&self, now: Moment) -> bool {
        now >= self.next_sweep.load(Ordering::Acquire) && !self.kept()
    }

    /// The snapshot to route with `now`, rebuilding the table if it
    /// is stale (one thread rebuilds; the others keep the old one). While
    /// an upkeep future runs, a request rebuilds only a table with nothing
    /// in it: it would fail otherwise, and a replica may be back.
    #[inline]
    pub(super) fn refresh(&self, cached: &mut Arc<Snapshot<K, S>>, now: Moment) {
        self.catch_up(cached);
        if self.table_due(now) && (!self.kept() || cached.table.tiers.is_empty()) {
            self.rebuild(now);
            self.catch_up(cached);
        }
    }

    /// Replaces `cached` with the current snapshot if it is older.
    #[inline]
    fn catch_up(&self, cached: &mut Arc<Snapshot<K, S>>) {
        if self.version.load(Ordering::Acquire) != cached.version {
            *cached = lock(&self.current).clone();
        }
    }

    /// Rebuilds the routing table from the replicas' standings now, unless
    /// another thread is building a snapshot (its snapshot will do).
    pub(super) fn rebuild(&self, now: Moment) {
        let Some(_building) = try_lock(&self.building) else {
            return;
        };
        // Taken with a read-modify-write before the standings are read: a
        // change marked after this is either seen below or leaves the flag
        // set for the next rebuild (a plain store could be ordered before
        // a change's flag and lose it).
        self.dirty.swap(false, Ordering::AcqRel);
        let old = lock(&self.current).clone();
        let members = staying(&old.members);
        // One version of the settings for the whole table.
        let settings = self.settings();
        let standings: Vec<Standing> = members
            .iter()
            .map(|m| m.state.standing(now, settings.failback))
            .collect();
        let rows: Vec<Row<'_>> = members
            .iter()
            .zip(&standings)
            .map(|(m, &standing)| Row {
                tier: m.state.tier,
                zone: m.state.zone.as_deref(),
                standing,
            })
            .collect();
        let table = Table::build(
            &rows,
            settings.local_zone.as_deref(),
            settings.overprovisioning,
            settings.panic_threshold,
        );
        for (m, s) in members.iter().zip(&standings) {
            m.state
                .metrics
                .healthy
                .set(if matches!(s, Standing::Eligible) {
                    1.0
                } else {
                    0.0
                });
        }
        let expires = now.after(TABLE_TTL);
        let next = table.next_change.map_or(expires, |t| t.min(expires));
        self.rebuild_at
            .store(next.max(now.after(CLOCK_TICK)), Ordering::Release);
        self.publish(members, table);
    }

    /// Makes `members` and `table` the current snapshot, at the next
    /// version. The caller holds `building`.
    pub(super) fn publish(&self, members: Members<K, S>, table: Table) {
        let version = self.version.load(Ordering::Acquire) + 1;
        let next = Arc::new(Snapshot::new(members, table, version));
        let replaced = std::mem::replace(&mut *lock(&self.current), next);
        self.version.store(version, Ordering::Release);
        // Dropped outside the lock: the last copy of a snapshot lets go of
        // every member.
        drop(replaced);
    }
}

/// The members that stay: all of them (the same list) unless a removed
/// replica has finished its calls and leaves.
fn staying<K, S>(members: &Members<K, S>) -> Members<K, S> {
    let leaves = |m: &Arc<Member<K, S>>| {
        m.state.admin.load(Ordering::Acquire) == Admin::Removed
            && m.state.in_flight.load(Ordering::Acquire) == 0
    };
    if !members.iter().any(leaves) {
        return members.clone();
    }
    members.iter().filter(|m| !leaves(m)).cloned().collect()
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use crate::pool::{Pool, Replica};
    use crate::sync::{Ordering, lock};

    #[test]
    fn a_lock_poisoned_by_a_panic_is_recovered() {
        let service = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
        let pool = Pool::builder()
            .build([("a", Replica::new(service)), ("b", Replica::new(service))])
            .unwrap();
        let shared = pool.shared.clone();
        let poisoned = std::thread::spawn(move || {
            let _held = shared.current.lock().unwrap();
            panic!("a thread panics while holding the pool's lock");
        })
        .join();
        assert!(poisoned.is_err() && pool.shared.current.is_poisoned());
        let handle = pool.handle();
        assert_eq!(handle.snapshot().len(), 2, "snapshots go on");
        assert!(handle.disable(&"a"), "operator controls go on");
        pool.shared.rebuild(pool.shared.now());
        assert_eq!(handle.snapshot().len(), 2);
    }

    type Echo = tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, std::io::Error>>>;

    fn echo_pool() -> Pool<&'static str, Echo> {
        let echo: Echo = tower::service_fn(|x| std::future::ready(Ok(x)));
        Pool::builder()
            .build([("a", Replica::new(echo)), ("b", Replica::new(echo))])
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_upkeep_future_requests_leave_rebuilds_to_it() {
        use tower::{Service, ServiceExt};

        let mut pool = echo_pool();
        let shared = pool.shared.clone();
        let upkeep = tokio::spawn(pool.upkeep());
        tokio::task::yield_now().await;
        assert!(shared.kept(), "the upkeep future counts itself");

        let before = shared.version.load(Ordering::Acquire);
        assert!(pool.handle().disable(&"a"));
        // No other task runs between these calls (one thread, no await
        // that yields): the requests route with the table they have...
        for _ in 0..10 {
            let ready = futures::FutureExt::now_or_never(pool.ready())
                .unwrap()
                .unwrap();
            assert_eq!(
                futures::FutureExt::now_or_never(ready.call(1))
                    .unwrap()
                    .unwrap(),
                1
            );
        }
        assert_eq!(
            shared.version.load(Ordering::Acquire),
            before,
            "a request rebuilt"
        );
        assert!(shared.dirty.load(Ordering::Acquire));
        // ...and the upkeep future, woken, rebuilds.
        tokio::task::yield_now().await;
        assert_eq!(shared.version.load(Ordering::Acquire), before + 1);
        assert!(!shared.dirty.load(Ordering::Acquire));

        // A table with nothing in it is rebuilt by the request that finds
        // it so, rather than failing while a replica is back.
        assert!(pool.handle().disable(&"b"));
        tokio::task::yield_now().await;
        assert!(lock(&shared.current).table.tiers.is_empty());
        assert!(pool.handle().enable(&"a"));
        let ready = futures::FutureExt::now_or_never(pool.ready())
            .unwrap()
            .unwrap();
        assert_eq!(
            futures::FutureExt::now_or_never(ready.call(2))
                .unwrap()
                .unwrap(),
            2
        );

        // With the pool gone, the upkeep future ends (and stops counting).
        drop((pool, shared));
        tokio::time::timeout(std::time::Duration::from_secs(1), upkeep)
            .await
            .expect("the upkeep future ends with its pool")
            .unwrap();
    }
}
