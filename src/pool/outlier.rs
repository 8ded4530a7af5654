//! Passive outlier detection in one place: its rules' settings
//! ([`OutlierDetection`]), the judgement of a failed call (failures in a
//! row, the failure rate), ejection (growing periods, a cap on the share
//! ejected), avoiding a replica that asked for it, and the fleet-relative
//! sweep (success rate, latency, ejection decay). The reasons a replica is
//! out are [`Why`](super::Why), in `standing.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::clock::Moment;
use super::config::OUTCOME_WINDOW;
use super::replica::{RATE, ReplicaState};
use super::shared::{Member, Shared, Snapshot};
use super::standing::Why;
use crate::backoff::Backoff;
use crate::error::ConfigError;
use crate::sync::{Ordering, lock};

/// Passive outlier detection: which live outcomes eject a replica, and for
/// how long.
///
/// | rule | default |
/// |---|---|
/// | [`consecutive_failures`](Self::consecutive_failures) | 5 in a row |
/// | [`failure_percentage`](Self::failure_percentage) | 50% of the last 100 calls, once there are 20 |
/// | [`success_rate_stdev`](Self::success_rate_stdev) | below the fleet's mean − 1.9 σ, with 3 replicas of 20 calls each among their last 100 |
/// | [`latency_factor`](Self::latency_factor) | peak-EWMA latency over 5× the fleet median and over 100 ms |
/// | [`ejection`](Self::ejection) | 10 s doubling to 5 min per ejection in a row; one step back per clean interval |
/// | [`max_ejected`](Self::max_ejected) | 50% of the replicas (but always at least one may be) |
/// | [`interval`](Self::interval) | 10 s between sweeps of the fleet rules |
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct OutlierDetection {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failure_percentage: Option<(f64, u32)>,
    pub(crate) success_rate_stdev: Option<(f64, u32, u32)>,
    pub(crate) latency_factor: Option<(f64, Duration)>,
    pub(crate) ejection: Backoff,
    pub(crate) max_ejected: f64,
    pub(crate) interval: Duration,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: Some(5),
            failure_percentage: Some((0.5, 20)),
            success_rate_stdev: Some((1.9, 3, 20)),
            latency_factor: Some((5.0, Duration::from_millis(100))),
            ejection: Backoff::exponential(Duration::from_secs(10), Duration::from_secs(300)),
            max_ejected: 0.5,
            interval: Duration::from_secs(10),
        }
    }
}

impl OutlierDetection {
    /// Ejects after `n` failures in a row (`None` turns the rule off).
    pub fn consecutive_failures(mut self, n: Option<u32>) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// Ejects when at least `rate` of the last 100 calls failed, once there
    /// are `min_calls` of them (at most 100; `None` turns the rule off).
    /// Judged after every call, a success too: the success that brings the
    /// window to `min_calls` may be the one that ejects.
    pub fn failure_percentage(mut self, rule: Option<(f64, u32)>) -> Self {
        self.failure_percentage = rule;
        self
    }

    /// Ejects a replica whose success rate over its last 100 calls is below
    /// the fleet's mean − `factor` × σ, when at least `min_hosts` replicas
    /// had `min_calls` (at most 100) such calls each (`None` turns the rule off). Judged
    /// once per [`interval`](Self::interval).
    pub fn success_rate_stdev(mut self, rule: Option<(f64, u32, u32)>) -> Self {
        self.success_rate_stdev = rule;
        self
    }

    /// Ejects a replica whose latency estimate is over `factor` × the
    /// fleet's median and over `floor` (`None` turns the rule off).
    pub fn latency_factor(mut self, rule: Option<(f64, Duration)>) -> Self {
        self.latency_factor = rule;
        self
    }

    /// How long an ejection lasts: the n-th ejection in a row waits the
    /// schedule's n-th delay.
    pub fn ejection(mut self, backoff: Backoff) -> Self {
        self.ejection = backoff;
        self
    }

    /// The largest share of replicas ejected at once (at least one may be).
    pub fn max_ejected(mut self, share: f64) -> Self {
        self.max_ejected = share;
        self
    }

    /// How often the fleet-relative rules are evaluated (and ejection
    /// counts decay).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let within = |e: ConfigError| e.within("outlier");
        if self.consecutive_failures == Some(0) {
            return Err(within(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            )));
        }
        if let Some((rate, min_calls)) = self.failure_percentage {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(within(ConfigError::new(
                    "failure_percentage",
                    format!("rate must be in (0, 1], got {rate}"),
                )));
            }
            never_more_than_the_window("failure_percentage", min_calls).map_err(within)?;
        }
        if let Some((_, _, min_calls)) = self.success_rate_stdev {
            never_more_than_the_window("success_rate_stdev", min_calls).map_err(within)?;
        }
        if let Some((factor, hosts, _)) = self.success_rate_stdev {
            if !(factor > 0.0 && factor.is_finite()) || hosts < 2 {
                return Err(within(ConfigError::new(
                    "success_rate_stdev",
                    format!(
                        "needs a positive factor and at least 2 hosts, got {factor} and {hosts}"
                    ),
                )));
            }
        }
        if let Some((factor, _)) = self.latency_factor {
            if !(factor > 1.0 && factor.is_finite()) {
                return Err(within(ConfigError::new(
                    "latency_factor",
                    format!("must be above 1, got {factor}"),
                )));
            }
        }
        self.ejection
            .validate()
            .map_err(|e| within(e.within("ejection")))?;
        if self.ejection.base().is_zero() {
            return Err(within(ConfigError::new(
                "ejection",
                "must not give a zero ejection",
            )));
        }
        if !(self.max_ejected >= 0.0 && self.max_ejected <= 1.0) {
            return Err(within(ConfigError::new(
                "max_ejected",
                format!("must be in 0..=1, got {}", self.max_ejected),
            )));
        }
        if self.interval < Duration::from_millis(10) {
            return Err(within(ConfigError::new(
                "interval",
                "must be at least 10 ms",
            )));
        }
        Ok(())
    }
}

/// A rule's minimum of calls, which the window of a replica's last
/// [`OUTCOME_WINDOW`] calls must be able to hold, or the rule could never
/// judge.
fn never_more_than_the_window(rule: &'static str, min_calls: u32) -> Result<(), ConfigError> {
    if min_calls > OUTCOME_WINDOW {
        return Err(ConfigError::new(
            rule,
            format!(
                "needs {min_calls} calls, more than the {OUTCOME_WINDOW} a replica's window holds: the rule could never judge"
            ),
        ));
    }
    Ok(())
}

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
        now: Moment,
        why: Why,
    ) -> bool {
        if state.ejected_until.load(Ordering::Acquire) > now {
            return false;
        }
        let n = snapshot.members.len();
        let ejected = snapshot
            .members
            .iter()
            .filter(|m| m.state.ejected_until.load(Ordering::Acquire) > now)
            .count();
        let allowed = ((n as f64 * self.settings().outlier.max_ejected).floor() as usize).max(1);
        if ejected + 1 > allowed {
            return false;
        }
        let count = state.ejections.fetch_add(1, Ordering::AcqRel);
        let backoff = &self.settings().outlier.ejection;
        let period = backoff.delay(
            u32::try_from(count).unwrap_or(u32::MAX),
            backoff.base(),
            &self.ejection_rng,
        );
        state
            .ejected_until
            .store(now.after(period), Ordering::Release);
        state.why.store(why, Ordering::Release);
        // It comes back with a clean load estimate: the failures that got it
        // ejected must not keep it out after the ejection (nothing updates
        // the estimate while it takes no traffic).
        state.latency.reset(self.ns(Instant::now()), 0.0);
        state.metrics.ejections.increment(1);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            pool = &*self.settings().name,
            replica = &*state.label,
            ?why,
            ?period,
            "replica ejected"
        );
        self.changed();
        true
    }

    /// Ends `state`'s ejection `now`, if it is ejected: its active check
    /// passes, which says more than the failures that ejected it did. Its
    /// failures in a row are forgotten, and the next ejection still lasts
    /// longer (the count decays as usual).
    pub(super) fn uneject(&self, state: &ReplicaState, now: Moment) {
        if state.ejected_until.load(Ordering::Acquire) <= now {
            return;
        }
        state.ejected_until.store(now, Ordering::Release);
        state.consecutive.store(0, Ordering::Release);
        state.shunned.store(false, Ordering::Release);
        state.metrics.unejections.increment(1);
        #[cfg(feature = "tracing")]
        tracing::info!(
            pool = &*self.settings().name,
            replica = &*state.label,
            "replica back from its ejection: its health check passes"
        );
        self.changed();
    }

    /// Avoids a replica that asked for it (`503` + `Retry-After`).
    pub(super) fn avoid(&self, state: &ReplicaState, now: Moment, pushback: Duration) {
        let pushback = pushback.min(self.settings().max_pushback);
        if pushback.is_zero() {
            return;
        }
        let until = now.after(pushback);
        if state.avoid_until.fetch_max(until, Ordering::AcqRel) < until {
            state.why.store(Why::Pushback, Ordering::Release);
            state.latency.reset(self.ns(Instant::now()), 0.0);
            #[cfg(feature = "tracing")]
            tracing::info!(
                pool = &*self.settings().name,
                replica = &*state.label,
                ?pushback,
                "replica asked to be avoided"
            );
            self.changed();
        }
    }

    /// The fleet-relative rules (success rate, latency), and ejection
    /// decay, once per interval.
    pub(super) fn sweep(&self, snapshot: &Snapshot<K, S>, now: Moment) {
        let outlier = &self.settings().outlier;
        let next = self.next_sweep.load(Ordering::Acquire);
        if now < next
            || self
                .next_sweep
                .compare_exchange(
                    next,
                    now.after(outlier.interval),
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
            .filter(|m| m.state.routable(now))
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
                        self.eject(snapshot, &m.state, now, Why::SuccessRate);
                    }
                }
            }
        }
        if let Some((factor, floor)) = outlier.latency_factor {
            // Judged on how fast replicas answered successfully, only those
            // that answered during this interval and have a history: a
            // replica that got no traffic (ejected, avoided) is not judged
            // on old data.
            let now_ns = now.nanos();
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
                        self.eject(snapshot, &m.state, now, Why::Latency);
                    }
                }
            }
        }
        for m in snapshot.members.iter() {
            let s = &m.state;
            // Decay: a replica not ejected for a whole interval steps back
            // one ejection.
            let until = s.ejected_until.load(Ordering::Acquire);
            if until.after(outlier.interval) <= now && s.ejections.load(Ordering::Acquire) > 0 {
                let _ = s
                    .ejections
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
        }
    }

    /// A call of `state`'s replica dropped unanswered at `now_ns` after it
    /// ran about as long as the replica usually takes. A replica that hangs
    /// fails nothing, it never answers: such calls count with its failures
    /// in a row, for the same rule ([`consecutive_failures`]), and steer
    /// traffic away and probe it as failures do. It is ejected only while
    /// another replica answers: callers giving up on every replica at once
    /// (their own deadline, a storm of cancellations) say nothing about
    /// one of them. And only once it has been silent for [`SILENT_FOR`] (or
    /// twice its answer latency, if longer): a busy replica stalls for a
    /// few milliseconds now and then (a scheduler, a collector), and at
    /// thousands of requests a second hedges cut short five of its calls
    /// within such a stall.
    ///
    /// [`consecutive_failures`]: OutlierDetection::consecutive_failures
    pub(super) fn on_unanswered(&self, state: &ReplicaState, now_ns: u64) {
        let in_a_row = state.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        state.shunned.store(true, Ordering::Release);
        let due = self
            .settings()
            .outlier
            .consecutive_failures
            .is_some_and(|n| in_a_row >= u64::from(n));
        if !due || !silent_long_enough(state, now_ns) {
            return;
        }
        let snapshot = lock(&self.current).clone();
        if !others_answer(&snapshot, state, now_ns) {
            return;
        }
        self.eject_now(
            &snapshot,
            state,
            Moment::from_nanos(now_ns),
            Why::Unanswered,
        );
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
        let now = Moment::from_nanos(now_ns);
        let settings = self.settings();
        match pushback {
            // Honoured by avoiding the replica for that long: its latency
            // estimate is not inflated too, or it would stay out long after.
            Some(pushback) => {
                state.latency.observe(now_ns, elapsed, RATE);
                self.avoid(state, now, pushback);
            }
            // A failure must never make a replica look fast: it counts as at
            // least the penalty latency.
            None => {
                state.latency.observe(
                    now_ns,
                    elapsed.max(settings.failure_penalty.as_nanos() as f64),
                    RATE,
                );
                state.shunned.store(true, Ordering::Release);
            }
        }
        let in_a_row = state.record_outcome(true);
        let by_consecutive = settings
            .outlier
            .consecutive_failures
            .is_some_and(|n| in_a_row >= u64::from(n));
        let why = if by_consecutive {
            Some(Why::ConsecutiveFailures)
        } else if failure_rate_exceeded(&settings.outlier, state) {
            Some(Why::FailureRate)
        } else {
            None
        };
        // The failure path may take the lock: the current members decide
        // how many may be ejected at once.
        let sweeps = self.request_sweeps(now);
        if why.is_none() && !sweeps {
            return;
        }
        let snapshot = lock(&self.current).clone();
        if let Some(why) = why {
            self.eject_now(&snapshot, state, now, why);
        }
        if sweeps {
            self.sweep(&snapshot, now);
        }
    }

    /// A successful call of `state`'s replica, its outcome recorded, ending
    /// at `now_ns`: the failure-percentage rule is judged again, for a
    /// success may be the call that brings the window to the rule's
    /// minimum of calls. Call it only while the window holds a failure.
    pub(super) fn on_success_after_failures(&self, state: &ReplicaState, now_ns: u64) {
        if failure_rate_exceeded(&self.settings().outlier, state) {
            let snapshot = lock(&self.current).clone();
            self.eject_now(
                &snapshot,
                state,
                Moment::from_nanos(now_ns),
                Why::FailureRate,
            );
        }
    }

    /// Ejects `state`'s replica for `why` by a rule of its own calls; an
    /// ejection starts its count of failures in a row again.
    fn eject_now(&self, snapshot: &Snapshot<K, S>, state: &ReplicaState, now: Moment, why: Why) {
        if self.eject(snapshot, state, now, why) {
            state.consecutive.store(0, Ordering::Release);
            state.shunned.store(false, Ordering::Release);
        }
    }
}

/// How long a replica whose calls go unanswered must have answered nothing
/// before it is ejected for it: a stall shorter than this is not a hang.
pub(super) const SILENT_FOR: Duration = Duration::from_millis(100);

/// Whether `state`'s replica has answered nothing for [`SILENT_FOR`], or for
/// twice the time it takes to answer if that is longer.
fn silent_long_enough(state: &ReplicaState, now_ns: u64) -> bool {
    let silence = SILENT_FOR
        .as_nanos()
        .max(2 * state.answer_latency.get() as u128);
    !state
        .answer_latency
        .updated_within(now_ns, u64::try_from(silence).unwrap_or(u64::MAX))
}

/// How recent another replica's answer must be for an unanswered replica
/// to be ejected.
const ANSWERED_WITHIN: Duration = Duration::from_secs(1);

/// Whether a replica of `snapshot` other than `state`'s answered within
/// [`ANSWERED_WITHIN`] of `now_ns` and has no call unanswered or failed
/// since.
fn others_answer<K, S>(snapshot: &Snapshot<K, S>, state: &ReplicaState, now_ns: u64) -> bool {
    let within = u64::try_from(ANSWERED_WITHIN.as_nanos()).unwrap_or(u64::MAX);
    snapshot.members.iter().any(|m| {
        !std::ptr::eq(&m.state, state)
            && m.state.consecutive.load(Ordering::Acquire) == 0
            && m.state.answer_latency.updated_within(now_ns, within)
    })
}
/// The failure-percentage rule of `outlier` over the replica's last calls.
fn failure_rate_exceeded(outlier: &OutlierDetection, state: &ReplicaState) -> bool {
    outlier.failure_percentage.is_some_and(|(rate, min_calls)| {
        let counts = state.window.counts();
        counts.calls >= u64::from(min_calls) && counts.failures as f64 / counts.calls as f64 >= rate
    })
}
