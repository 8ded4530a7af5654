//! Outlier detection's judgements: ejecting a replica (growing periods, a
//! cap on the share ejected), avoiding one that asked for it, and the
//! fleet-relative sweep (success rate, latency, ejection decay). The rules'
//! settings are [`OutlierDetection`](super::OutlierDetection); a failed
//! call reaches them from the pool's response future.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::clock;
use super::replica::{RATE, ReplicaState};
use super::shared::{Member, Shared, Snapshot};
use super::standing::{Standing, Why};
use crate::sync::Ordering;

/// Calls a replica needs in its window to be judged by the latency rule.
const MIN_LATENCY_SAMPLES: u64 = 3;

/// Replicas the latency rule needs to judge before a median means anything.
const MIN_LATENCY_FLEET: usize = 3;

impl<K, S> Shared<K, S> {
    /// Ejects a replica for its next ejection period, unless that would
    /// eject more than the allowed share (at least one may always be).
    pub(super) fn eject(
        &self,
        snapshot: &Snapshot<K, S>,
        state: &ReplicaState,
        now_ms: u64,
        why: Why,
    ) -> bool {
        if state.ejected_until.load(Ordering::Acquire) > now_ms {
            return false;
        }
        let n = snapshot.members.len();
        let ejected = snapshot
            .members
            .iter()
            .filter(|m| m.state.ejected_until.load(Ordering::Acquire) > now_ms)
            .count();
        let allowed = ((n as f64 * self.settings.outlier.max_ejected).floor() as usize).max(1);
        if ejected + 1 > allowed {
            return false;
        }
        let count = state.ejections.fetch_add(1, Ordering::AcqRel);
        let backoff = &self.settings.outlier.ejection;
        let period = backoff.delay(
            u32::try_from(count).unwrap_or(u32::MAX),
            backoff.base(),
            &self.ejection_rng,
        );
        let until = clock::after(now_ms, period);
        state.ejected_until.store(until, Ordering::Release);
        state.why.store(why, Ordering::Release);
        // It comes back with a clean load estimate: the failures that got it
        // ejected must not keep it out after the ejection (nothing updates
        // the estimate while it takes no traffic).
        state.latency.reset(self.ns(Instant::now()), 0.0);
        state.metrics.ejections.increment(1);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            pool = &*self.settings.name,
            replica = &*state.label,
            ?why,
            ?period,
            "replica ejected"
        );
        self.changed();
        true
    }

    /// Avoids a replica that asked for it (`503` + `Retry-After`).
    pub(super) fn avoid(&self, state: &ReplicaState, now_ms: u64, pushback: Duration) {
        let pushback = pushback.min(self.settings.max_pushback);
        if pushback.is_zero() {
            return;
        }
        let until = clock::after(now_ms, pushback);
        if state.avoid_until.fetch_max(until, Ordering::AcqRel) < until {
            state.why.store(Why::Pushback, Ordering::Release);
            state.latency.reset(self.ns(Instant::now()), 0.0);
            #[cfg(feature = "tracing")]
            tracing::info!(
                pool = &*self.settings.name,
                replica = &*state.label,
                ?pushback,
                "replica asked to be avoided"
            );
            self.changed();
        }
    }

    /// The fleet-relative rules (success rate, latency), and ejection
    /// decay, once per interval.
    pub(super) fn sweep(&self, snapshot: &Snapshot<K, S>, now_ms: u64) {
        let outlier = &self.settings.outlier;
        let next = self.next_sweep_ms.load(Ordering::Acquire);
        let interval_ms = clock::millis(outlier.interval);
        if now_ms < next
            || self
                .next_sweep_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(interval_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
        {
            return;
        }
        let live: Vec<&Arc<Member<K, S>>> = snapshot
            .members
            .iter()
            .filter(|m| matches!(m.state.standing(now_ms, 0), Standing::Eligible))
            .collect();
        if let Some((factor, min_hosts, min_calls)) = outlier.success_rate_stdev {
            let rates: Vec<(&Arc<Member<K, S>>, f64)> = live
                .iter()
                .filter_map(|m| {
                    // Over its last calls (the window the failure-rate rule
                    // reads too): no counter is written per call for this.
                    let counts = m.state.window.counts();
                    (counts.calls >= u64::from(min_calls)).then(|| {
                        (
                            *m,
                            (counts.calls - counts.failures) as f64 / counts.calls as f64,
                        )
                    })
                })
                .collect();
            if rates.len() >= min_hosts as usize {
                let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / rates.len() as f64;
                let var =
                    rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
                let floor = mean - factor * var.sqrt();
                for (m, rate) in &rates {
                    if *rate < floor {
                        self.eject(snapshot, &m.state, now_ms, Why::SuccessRate);
                    }
                }
            }
        }
        if let Some((factor, floor)) = outlier.latency_factor {
            // Judged on how fast replicas answered successfully, only those
            // that answered during this interval and have a history: a
            // replica that got no traffic (ejected, avoided) is not judged
            // on old data.
            let now_ns = now_ms.saturating_sub(1) * 1_000_000;
            let interval_ns = u64::try_from(outlier.interval.as_nanos()).unwrap_or(u64::MAX);
            let judged: Vec<(&Arc<Member<K, S>>, f64)> = live
                .iter()
                .filter(|m| {
                    m.state.window.counts().calls >= MIN_LATENCY_SAMPLES
                        && m.state.answer_latency.updated_within(now_ns, interval_ns)
                })
                .map(|m| (*m, m.state.answer_latency.get()))
                .collect();
            if judged.len() >= MIN_LATENCY_FLEET {
                let mut latencies: Vec<f64> = judged.iter().map(|(_, l)| *l).collect();
                latencies.sort_by(f64::total_cmp);
                let median = latencies[latencies.len() / 2];
                let floor = floor.as_nanos() as f64;
                for (m, l) in &judged {
                    if *l > factor * median && *l > floor {
                        self.eject(snapshot, &m.state, now_ms, Why::Latency);
                    }
                }
            }
        }
        for m in &snapshot.members {
            let s = &m.state;
            // Decay: a replica not ejected for a whole interval steps back
            // one ejection.
            let until = s.ejected_until.load(Ordering::Acquire);
            if until + interval_ms <= now_ms && s.ejections.load(Ordering::Acquire) > 0 {
                let _ = s
                    .ejections
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
        }
    }

    /// A failed call of `state`'s replica, `elapsed` nanoseconds long,
    /// ending at `now_ns`: its load estimate (at least the penalty, unless
    /// the server asked for a pause, which is honoured by avoiding it), its
    /// outcome, and the rules that judge each call (failures in a row, the
    /// failure rate), which may eject it.
    pub(super) fn on_failure(
        &self,
        state: &ReplicaState,
        now_ns: u64,
        elapsed: f64,
        pushback: Option<Duration>,
    ) {
        let now_ms = Self::ms_of(now_ns);
        match pushback {
            // Honoured by avoiding the replica for that long: its latency
            // estimate is not inflated too, or it would stay out long after.
            Some(pushback) => {
                state.latency.observe(now_ns, elapsed, RATE);
                self.avoid(state, now_ms, pushback);
            }
            // A failure must never make a replica look fast: it counts as at
            // least the penalty latency.
            None => {
                state.latency.observe(
                    now_ns,
                    elapsed.max(self.settings.failure_penalty.as_nanos() as f64),
                    RATE,
                );
                state.shunned.store(true, Ordering::Release);
            }
        }
        let in_a_row = state.record_outcome(true);
        let outlier = &self.settings.outlier;
        let by_consecutive = outlier
            .consecutive_failures
            .is_some_and(|n| in_a_row >= u64::from(n));
        let by_rate = outlier.failure_percentage.is_some_and(|(rate, min_calls)| {
            let counts = state.window.counts();
            counts.calls >= u64::from(min_calls)
                && counts.failures as f64 / counts.calls as f64 >= rate
        });
        if by_consecutive || by_rate {
            let why = if by_consecutive {
                Why::ConsecutiveFailures
            } else {
                Why::FailureRate
            };
            // The failure path may take the lock: the current members decide
            // how many may be ejected at once.
            let snapshot = self.current.lock().map(|s| s.clone());
            if let Ok(snapshot) = snapshot {
                if self.eject(&snapshot, state, now_ms, why) {
                    state.consecutive.store(0, Ordering::Release);
                    state.shunned.store(false, Ordering::Release);
                }
                self.sweep(&snapshot, now_ms);
            }
        } else if now_ms >= self.next_sweep_ms.load(Ordering::Acquire) {
            if let Ok(snapshot) = self.current.lock().map(|s| s.clone()) {
                self.sweep(&snapshot, now_ms);
            }
        }
    }
}
