//! What keeps a replica out of traffic: one answer, [`ReplicaState::standing`],
//! from which routing ([`routable`](ReplicaState::routable)), the routing
//! table and the snapshots' [`Health`] all derive. A new reason is added
//! here, once.

use std::time::Duration;

use tokio::time::Instant;

use super::clock::Moment;
use super::replica::{Admin, ReplicaState};
use crate::sync::Ordering;

/// How a replica stands, in a [`ReplicaSnapshot`](super::ReplicaSnapshot).
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
    /// Its calls went unanswered, dropped unfinished one after another
    /// (losing to hedges, or given up on) while other replicas answered:
    /// it hangs, or accepts calls and never answers them.
    Unanswered = 8,
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
        Self::Unanswered,
    ];

    fn byte(self) -> u8 {
        self as u8
    }
}

/// What stands between a replica and traffic, at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// Takes traffic.
    Eligible,
    /// Healthy again, but not yet for long enough to take traffic back from
    /// a lower tier (failback hysteresis) until then.
    Recovering(Moment),
    Ejected(Moment),
    Avoided(Moment),
    FailingChecks,
    CircuitOpen,
    Draining,
    Disabled,
}

impl ReplicaState {
    /// Where the replica stands `now`, with `failback` of hysteresis after
    /// any recovery: the first of its [`reasons`](Self::reasons) to be out
    /// of traffic, or eligible.
    #[inline]
    pub(super) fn standing(&self, now: Moment, failback: Duration) -> Standing {
        self.reasons(now, failback)
            .next()
            .unwrap_or(Standing::Eligible)
    }

    /// Every reason it is out of traffic `now`, the most lasting first (an
    /// operator's choice, then failing checks, an ejection, a pushback, an
    /// open breaker, the failback wait). The one place a reason is added.
    pub(super) fn reasons(&self, now: Moment, failback: Duration) -> Reasons<'_> {
        Reasons {
            state: self,
            now,
            failback,
            next: Reason::Admin,
        }
    }

    /// Whether it may take a request now: what [`standing`](Self::standing)
    /// says, without the failback hysteresis (recovering replicas may take
    /// requests; only the tier arithmetic holds them back).
    #[inline]
    pub(super) fn routable(&self, now: Moment) -> bool {
        matches!(self.standing(now, NO_HYSTERESIS), Standing::Eligible)
    }

    /// How it stands, as a snapshot shows it, the first reason it is out
    /// first; `at` turns the pool's moments into `Instant`s.
    pub(super) fn health(
        &self,
        now: Moment,
        failback: Duration,
        at: impl Fn(Moment) -> Instant,
    ) -> Vec<Health> {
        let out: Vec<Health> = self
            .reasons(now, failback)
            .map(|reason| match reason {
                Standing::Eligible => Health::Healthy,
                Standing::Recovering(t) => Health::Recovering { until: at(t) },
                Standing::Ejected(t) => Health::Ejected { until: at(t) },
                Standing::Avoided(t) => Health::Avoided { until: at(t) },
                Standing::FailingChecks => Health::FailingChecks,
                Standing::CircuitOpen => Health::CircuitOpen,
                Standing::Draining => Health::Draining,
                Standing::Disabled => Health::Disabled,
            })
            .collect();
        if !out.is_empty() {
            return out;
        }
        // Routable, but shunned for its failures?
        if self.shunned.load(Ordering::Acquire) {
            return vec![Health::Failing {
                in_a_row: self.consecutive.load(Ordering::Acquire),
            }];
        }
        vec![Health::Healthy]
    }
}

/// The reasons [`ReplicaState::reasons`] looks at, in its order.
#[derive(Debug, Clone, Copy)]
enum Reason {
    Admin,
    Checks,
    Ejection,
    Pushback,
    Breaker,
    Failback,
    Done,
}

/// The reasons a replica is out of traffic, found one at a time: routing
/// needs only the first.
pub(super) struct Reasons<'a> {
    state: &'a ReplicaState,
    now: Moment,
    failback: Duration,
    next: Reason,
}

impl Iterator for Reasons<'_> {
    type Item = Standing;

    #[inline]
    fn next(&mut self) -> Option<Standing> {
        let (state, now) = (self.state, self.now);
        loop {
            let reason = self.next;
            let found = match reason {
                Reason::Admin => {
                    self.next = Reason::Checks;
                    match state.admin.load(Ordering::Acquire) {
                        Admin::Enabled => None,
                        Admin::Disabled => Some(Standing::Disabled),
                        _ => Some(Standing::Draining),
                    }
                }
                Reason::Checks => {
                    self.next = Reason::Ejection;
                    (!state.check_healthy.load(Ordering::Acquire))
                        .then_some(Standing::FailingChecks)
                }
                Reason::Ejection => {
                    self.next = Reason::Pushback;
                    let until = state.ejected_until.load(Ordering::Acquire);
                    (until > now).then_some(Standing::Ejected(until))
                }
                Reason::Pushback => {
                    self.next = Reason::Breaker;
                    let until = state.avoid_until.load(Ordering::Acquire);
                    (until > now).then_some(Standing::Avoided(until))
                }
                Reason::Breaker => {
                    self.next = Reason::Failback;
                    // `breaker()` reads the first cache line's flag first.
                    state
                        .breaker()
                        .is_some_and(|breaker| {
                            matches!(
                                breaker.state(),
                                crate::circuit_breaker::State::Open
                                    | crate::circuit_breaker::State::ForcedOpen
                            )
                        })
                        .then_some(Standing::CircuitOpen)
                }
                Reason::Failback => {
                    self.next = Reason::Done;
                    // Failback hysteresis: counted from the end of the last
                    // trouble.
                    let recovered = state
                        .ejected_until
                        .load(Ordering::Acquire)
                        .max(state.avoid_until.load(Ordering::Acquire))
                        .max(state.check_recovered_at.load(Ordering::Acquire))
                        .max(state.admin_enabled_at.load(Ordering::Acquire));
                    let failed_back = recovered.after(self.failback);
                    (recovered.is_set() && now < failed_back && recovered <= now)
                        .then_some(Standing::Recovering(failed_back))
                }
                Reason::Done => return None,
            };
            if found.is_some() {
                return found;
            }
        }
    }
}

/// A failback time of zero: [`ReplicaState::routable`] ignores hysteresis.
const NO_HYSTERESIS: Duration = Duration::ZERO;
