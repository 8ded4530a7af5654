//! loom models of the pool's snapshot protocol and in-flight accounting
//! (`RUSTFLAGS="--cfg steadfast_loom" cargo test --release --lib -- loom_tests`).
//!
//! The pool's flags, counters and locks go through the `sync` shim, so
//! loom explores their interleavings (and the stale values weak orderings
//! allow). Each model ends with every thread joined and one more
//! `refresh`, as the next request would do, and checks that nothing done
//! during the race was lost. Each model fails without the rule it guards
//! (the rebuild's flag taken with a plain store; a membership change made
//! without holding `building`).

use std::sync::Arc;

use loom::thread;

use super::config::member;
use super::driver::update_members;
use super::future::Tracked;
use super::replica::{Admin, Replica};
use super::service::Pool;
use super::shared::{Shared, Snapshot};
use crate::sync::{Ordering, lock};

type Echo = tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, std::io::Error>>>;

fn echo() -> Echo {
    tower::service_fn(|x| std::future::ready(Ok(x)))
}

fn pool(ids: &[&'static str]) -> Pool<&'static str, Echo> {
    Pool::builder()
        .seed(1)
        .build(ids.iter().map(|&id| (id, Replica::new(echo()))))
        .expect("a valid pool")
}

/// The replicas the table routes to, by id.
fn routed(snapshot: &Snapshot<&'static str, Echo>) -> Vec<&'static str> {
    let mut ids: Vec<&'static str> = snapshot
        .table
        .tiers
        .iter()
        .flat_map(|t| &t.zones)
        .flat_map(|z| &z.candidates)
        .map(|&i| snapshot.members[i as usize].id)
        .collect();
    ids.sort_unstable();
    ids
}

/// What the next request would route with, after the race.
fn settled(shared: &Shared<&'static str, Echo>) -> Arc<Snapshot<&'static str, Echo>> {
    let mut cached = lock(&shared.current).clone();
    shared.refresh(&mut cached, shared.now());
    cached
}

/// An operator's change racing a rebuild (a request's, or the upkeep
/// future's) is never lost: the rebuild sees it, or leaves the table
/// marked stale for the next one.
#[test]
fn a_change_racing_a_rebuild_is_not_lost() {
    loom::model(|| {
        let pool = pool(&["a", "b"]);
        let shared = pool.shared.clone();
        let handle = pool.handle();
        let operator = thread::spawn(move || assert!(handle.disable(&"a")));
        let rebuilder = {
            let shared = shared.clone();
            thread::spawn(move || shared.rebuild(shared.now()))
        };
        operator.join().unwrap();
        rebuilder.join().unwrap();
        assert_eq!(routed(&settled(&shared)), ["b"]);
    });
}

/// A replica discovery adds while a rebuild runs stays in the pool: no
/// snapshot built from the old members replaces the one that has it, and
/// versions only grow.
#[test]
fn a_replica_joining_during_a_rebuild_stays() {
    loom::model(|| {
        let pool = pool(&["a"]);
        let shared = pool.shared.clone();
        let joiner = {
            let shared = shared.clone();
            thread::spawn(move || {
                let joined = member(
                    &shared.settings(),
                    "b",
                    Replica::new(echo()),
                    Arc::downgrade(&shared),
                )
                .expect("a valid replica");
                update_members(&shared, |members| members.push(joined));
            })
        };
        let rebuilder = {
            let shared = shared.clone();
            thread::spawn(move || {
                let before = lock(&shared.current).version;
                shared.rebuild(shared.now());
                assert!(lock(&shared.current).version >= before);
            })
        };
        joiner.join().unwrap();
        rebuilder.join().unwrap();
        let snapshot = settled(&shared);
        assert_eq!(snapshot.members.len(), 2, "a snapshot lost the new replica");
        assert_eq!(routed(&snapshot), ["a", "b"]);
        assert_eq!(snapshot.version, shared.version.load(Ordering::Acquire));
    });
}

/// A removed replica leaves only once its calls are over: a rebuild racing
/// the end of its last call keeps it or drops it after, the count never
/// goes wrong, and once the call is over it is gone.
#[test]
fn a_removed_replica_leaves_after_its_last_call() {
    loom::model(|| {
        let pool = pool(&["a", "b"]);
        let shared = pool.shared.clone();
        let a = lock(&shared.current).members[0].clone();
        // Not a first attempt: dropped, it gives its count back and counts
        // as nothing else (a first attempt would count as unanswered too,
        // whose rules read the real clock, which loom cannot replay).
        let call = Tracked::new(a.clone(), None, shared.base, 0, false);
        update_members(&shared, |members| {
            members[0]
                .state
                .admin
                .store(Admin::Removed, Ordering::Release);
        });
        assert_eq!(
            lock(&shared.current).members.len(),
            2,
            "left with a call in flight"
        );
        let caller = thread::spawn(move || drop(call));
        let rebuilder = {
            let shared = shared.clone();
            thread::spawn(move || {
                shared.rebuild(shared.now());
                let current = lock(&shared.current).clone();
                let listed = current.members.iter().any(|m| m.id == "a");
                assert!(
                    listed || a.state.in_flight.load(Ordering::Acquire) == 0,
                    "left while its call was in flight"
                );
                a
            })
        };
        caller.join().unwrap();
        let a = rebuilder.join().unwrap();
        assert_eq!(a.state.in_flight.load(Ordering::Acquire), 0);
        shared.rebuild(shared.now());
        let snapshot = settled(&shared);
        assert!(
            snapshot.members.iter().all(|m| m.id != "a"),
            "a removed replica stayed"
        );
        assert_eq!(routed(&snapshot), ["b"]);
    });
}
