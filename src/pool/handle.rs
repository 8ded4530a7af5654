//! The pool's handle: snapshots, operator controls, change subscription.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::replica::{Admin, Standing};
use super::shared::{Member, Shared};
use crate::sync::Ordering;

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

/// How a replica stands, in a [`ReplicaSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Takes traffic.
    Healthy,
    /// Its latest calls failed (`in_a_row` of them) and it is not ejected,
    /// or not yet: the failure penalty steers traffic away from it, and it
    /// gets only a probe now and then, until a success clears it or outlier
    /// detection ejects it.
    Failing {
        /// Its failures in a row.
        in_a_row: u64,
    },
    /// Healthy again after trouble, but waiting out the failback time
    /// before it takes traffic back from a lower tier.
    Recovering {
        /// When it counts as healthy again.
        until: Instant,
    },
    /// Ejected by outlier detection.
    Ejected {
        /// When the ejection ends.
        until: Instant,
    },
    /// Avoided after the server asked for it (`503` + `Retry-After`).
    Avoided {
        /// When it is tried again.
        until: Instant,
    },
    /// Failing its active health checks.
    FailingChecks,
    /// Its circuit breaker is open.
    CircuitOpen,
    /// Drained by an operator (or removed by discovery): finishing its
    /// calls, taking no new ones.
    Draining,
    /// Disabled by an operator.
    Disabled,
}

/// Why a replica was last made unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u8)]
pub enum Why {
    /// Nothing yet.
    None = 0,
    /// Too many failures in a row.
    ConsecutiveFailures = 1,
    /// Too many of its recent calls failed.
    FailureRate = 2,
    /// Its success rate was far below the fleet's.
    SuccessRate = 3,
    /// Its latency was far above the fleet's.
    Latency = 4,
    /// The server asked to be avoided.
    Pushback = 5,
    /// Its active health check failed.
    HealthCheck = 6,
    /// An operator drained or disabled it.
    Operator = 7,
}

impl crate::sync::State for Why {
    const ALL: &'static [Self] = &[
        Self::None,
        Self::ConsecutiveFailures,
        Self::FailureRate,
        Self::SuccessRate,
        Self::Latency,
        Self::Pushback,
        Self::HealthCheck,
        Self::Operator,
    ];

    fn byte(self) -> u8 {
        self as u8
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
    /// How it stands.
    pub health: Health,
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
        let now_ms = shared.now_ms();
        let at = |ms: u64| super::clock::instant(shared.base, ms);
        let Ok(current) = shared.current.lock().map(|c| c.clone()) else {
            return Vec::new();
        };
        current
            .members
            .iter()
            .map(|m| {
                let s = &m.state;
                let health = match s.standing(now_ms, shared.settings.failback_ms) {
                    // Routable, but shunned for its failures.
                    Standing::Eligible if s.shunned.load(Ordering::Acquire) => Health::Failing {
                        in_a_row: s.consecutive.load(Ordering::Acquire),
                    },
                    Standing::Eligible => Health::Healthy,
                    Standing::Recovering(t) => Health::Recovering { until: at(t) },
                    Standing::Ejected(t) => Health::Ejected { until: at(t) },
                    Standing::Avoided(t) => Health::Avoided { until: at(t) },
                    Standing::FailingChecks => Health::FailingChecks,
                    Standing::CircuitOpen => Health::CircuitOpen,
                    Standing::Draining => Health::Draining,
                    Standing::Disabled => Health::Disabled,
                };
                ReplicaSnapshot {
                    id: m.id.clone(),
                    tier: s.tier,
                    zone: s.zone.clone(),
                    health,
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
                .store(shared.now_ms(), Ordering::Release);
        }
        if admin != Admin::Enabled {
            state.why.store(Why::Operator, Ordering::Release);
        }
        #[cfg(feature = "tracing")]
        tracing::info!(
            pool = &*shared.settings.name,
            replica = &*state.label,
            ?admin,
            "replica state set by operator"
        );
        shared.changed();
        true
    }

    fn find(&self, id: &K) -> Option<Arc<Member<K, S>>> {
        let current = self.shared.current.lock().ok()?.clone();
        current.members.iter().find(|m| m.id == *id).cloned()
    }
}
