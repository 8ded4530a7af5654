//! The pool's handle: snapshots, operator controls, change subscription.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::clock::Moment;
use super::config::Builder;
use super::replica::Admin;
use super::shared::{Member, Shared};
use super::standing::{Health, Why};
use crate::error::ConfigError;
use crate::sync::{Ordering, lock};

/// Watches and steers a [`Pool`](super::Pool)'s replicas; cheap to clone.
#[derive(Debug)]
pub struct PoolHandle<K, S> {
    pub(super) shared: Arc<Shared<K, S>>,
}

impl<K, S> Clone for PoolHandle<K, S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

/// One replica, as [`PoolHandle::snapshot`] saw it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplicaSnapshot<K> {
    /// Its id.
    pub id: K,
    /// Its tier (0 = primary).
    pub tier: u32,
    /// Its zone, if it has one.
    pub zone: Option<Arc<str>>,
    /// How it stands: the first of `reasons`.
    pub health: Health,
    /// Every reason it is out of traffic, the most lasting first (an
    /// ejection under failing checks shows both); `[health]` when it is
    /// healthy or failing.
    pub reasons: Vec<Health>,
    /// Why it was last made unhealthy.
    pub why: Why,
    /// How fast it answers successfully (a peak-EWMA estimate).
    pub latency: Duration,
    /// Calls in flight.
    pub in_flight: u64,
    /// Ejections in a row (the next ejection lasts longer).
    pub ejections: u64,
}

impl<K: Clone + PartialEq, S: Clone> PoolHandle<K, S> {
    /// Every replica's state now.
    pub fn snapshot(&self) -> Vec<ReplicaSnapshot<K>> {
        let shared = &self.shared;
        let now = shared.now();
        let at = |moment: Moment| moment.instant(shared.base);
        let current = lock(&shared.current).clone();
        current
            .members
            .iter()
            .map(|m| {
                let s = &m.state;
                let reasons = s.health(now, shared.settings().failback, at);
                ReplicaSnapshot {
                    id: m.id.clone(),
                    tier: s.tier,
                    zone: s.zone.clone(),
                    health: reasons[0],
                    reasons,
                    why: s.why.load(Ordering::Acquire),
                    latency: Duration::from_nanos(s.answer_latency.get() as u64),
                    in_flight: s.in_flight.load(Ordering::Acquire),
                    ejections: s.ejections.load(Ordering::Acquire),
                }
            })
            .collect()
    }

    /// A receiver that changes whenever a replica's health changes
    /// (an ejection, a pushback, a check result, an operator's action, a
    /// membership change); read [`snapshot`](Self::snapshot) then. Ejections
    /// that simply expire are seen at the next snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.events.subscribe()
    }

    /// Drains a replica: its calls in flight finish, no new ones go there.
    /// Returns whether the id was found.
    pub fn drain(&self, id: &K) -> bool {
        self.set_admin(id, Admin::Draining)
    }

    /// Disables a replica: no new calls go there.
    pub fn disable(&self, id: &K) -> bool {
        self.set_admin(id, Admin::Disabled)
    }

    /// Enables a drained or disabled replica (after the failback time if it
    /// is in a higher tier than the one taking traffic).
    pub fn enable(&self, id: &K) -> bool {
        self.set_admin(id, Admin::Enabled)
    }

    /// Takes new settings at run time, keeping what the pool learnt: its
    /// replicas' ejections, load estimates, failures in a row, check
    /// results and operator states stay, and the new rules judge them from
    /// the next outcome (the tier shares and locality from the next routing
    /// table, built at once). Each replica's circuit breaker, if the pool
    /// has them, takes the new breaker settings the same way
    /// ([`Circuit::apply`](crate::circuit_breaker::Circuit::apply)); the
    /// health checks' future takes a new schedule at its next round. The
    /// classifier and the seed are the builder's and do not change.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for settings the builder's `build` refuses, or that
    /// cannot change at run time: the name (metrics are labelled with it),
    /// and whether replicas have breakers (their settings may change). The
    /// pool then keeps its settings.
    pub fn apply<C>(&self, settings: &Builder<C>) -> Result<(), ConfigError> {
        settings.validate()?;
        let shared = &self.shared;
        let next = settings.settings();
        let now = shared.settings();
        if next.name != now.name {
            return Err(crate::budget::fixed("name", &now.name, &next.name));
        }
        if next.breaker.is_some() != now.breaker.is_some() {
            return Err(ConfigError::new(
                "circuit_breaker",
                "cannot be added or removed at run time (its settings can change)",
            ));
        }
        let members = lock(&shared.current).members.clone();
        if let Some(breaker) = &next.breaker {
            // Valid (checked with the pool's settings above): each circuit
            // takes them under its own name.
            let named: Vec<_> = members
                .iter()
                .map(|m| {
                    breaker
                        .clone()
                        .name(format!("{}/{}", next.name, m.state.label))
                })
                .collect();
            for (member, settings) in members.iter().zip(&named) {
                if let Some(circuit) = member.state.breaker() {
                    circuit.apply(settings)?;
                }
            }
        }
        shared.settings.store(Arc::new(next));
        shared.changed();
        Ok(())
    }

    fn set_admin(&self, id: &K, admin: Admin) -> bool {
        let shared = &self.shared;
        let Some(member) = self.find(id) else {
            return false;
        };
        let state = &member.state;
        let before = state.admin.swap(admin, Ordering::AcqRel);
        if admin == Admin::Enabled && before != Admin::Enabled {
            state
                .admin_enabled_at
                .store(shared.now(), Ordering::Release);
        }
        if admin != Admin::Enabled {
            state.why.store(Why::Operator, Ordering::Release);
        }
        #[cfg(feature = "tracing")]
        tracing::info!(
            pool = &*shared.settings().name,
            replica = &*state.label,
            ?admin,
            "replica state set by operator"
        );
        shared.changed();
        true
    }

    fn find(&self, id: &K) -> Option<Arc<Member<K, S>>> {
        let current = lock(&self.shared.current).clone();
        current.members.iter().find(|m| m.id == *id).cloned()
    }
}
