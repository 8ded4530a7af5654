//! Keeping the pool's routing current: the snapshot of members a request
//! reads, rebuilt (with its routing table) when health changes or its time
//! runs out, and the subscribers told.

use std::sync::Arc;
use std::time::Duration;

use super::replica::Admin;
use super::shared::{Member, Shared, Snapshot};
use super::standing::Standing;
use super::table::{Row, Table};
use crate::sync::{Ordering, lock, try_lock};

/// How long a routing table is trusted without events.
const TABLE_TTL_MS: u64 = 100;

impl<K, S> Shared<K, S> {
    /// The soonest a replica comes back, as a hint for callers.
    pub(super) fn retry_after(&self, snapshot: &Snapshot<K, S>, now_ms: u64) -> Option<Duration> {
        snapshot
            .table
            .next_change_ms
            .map(|t| Duration::from_millis(t.saturating_sub(now_ms)))
    }

    /// Something about health changed: rebuild the table and tell
    /// subscribers.
    pub(super) fn changed(&self) {
        self.dirty.store(true, crate::sync::Ordering::Release);
        self.events.send_modify(|n| *n += 1);
    }

    /// The snapshot to route with at `now_ms`, rebuilding the table if it
    /// is stale (one thread rebuilds; the others keep the old one).
    #[inline]
    pub(super) fn refresh(&self, cached: &mut Arc<Snapshot<K, S>>, now_ms: u64) {
        let stale = self.dirty.load(crate::sync::Ordering::Acquire)
            || now_ms >= self.rebuild_at_ms.load(Ordering::Acquire);
        if stale {
            self.rebuild(now_ms);
        }
        if self.version.load(Ordering::Acquire) != cached.version {
            *cached = lock(&self.current).clone();
        }
    }

    /// Rebuilds the routing table from the replicas' standings now.
    pub(super) fn rebuild(&self, now_ms: u64) {
        let Some(mut current) = try_lock(&self.current) else {
            return;
        };
        self.dirty.store(false, crate::sync::Ordering::Release);
        let old = current.clone();
        // Removed replicas whose calls have all finished leave the pool.
        let members: Vec<Arc<Member<K, S>>> = old
            .members
            .iter()
            .filter(|m| {
                m.state.admin.load(Ordering::Acquire) != Admin::Removed
                    || m.state.in_flight.load(Ordering::Acquire) > 0
            })
            .cloned()
            .collect();
        let standings: Vec<Standing> = members
            .iter()
            .map(|m| m.state.standing(now_ms, self.settings.failback_ms))
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
            self.settings.local_zone.as_deref(),
            self.settings.overprovisioning,
            self.settings.panic_threshold,
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
        let next = table
            .next_change_ms
            .map_or(now_ms + TABLE_TTL_MS, |t| t.min(now_ms + TABLE_TTL_MS));
        self.rebuild_at_ms
            .store(next.max(now_ms + 1), Ordering::Release);
        let version = self.version.load(Ordering::Acquire) + 1;
        *current = Arc::new(Snapshot::new(members, table, version));
        self.version.store(version, Ordering::Release);
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use crate::pool::{Pool, Replica};

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
        pool.shared.rebuild(pool.shared.now_ms());
        assert_eq!(handle.snapshot().len(), 2);
    }
}
