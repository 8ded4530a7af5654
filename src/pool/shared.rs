//! The pool's shared state: members, routing table, outlier detection.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::clock;
use super::config::{OutlierDetection, WhenNoneHealthy};
use super::replica::{Admin, ReplicaState};
use super::standing::Standing;
use super::standing::Why;
use super::table::{Row, Table, WHOLE};
use crate::attempt::{ReplicaId, Tried};
use crate::rng::{Rng, below, next_local};
use crate::sync::{AtomicU64, Ordering};

/// Calls a replica needs in its window to be judged by the latency rule.
const MIN_LATENCY_SAMPLES: u64 = 3;

/// Random draws p2c makes when its first two candidates were not both
/// usable; a list no longer than this is then scanned whole, so an untried
/// replica is never overlooked.
const SLOW_PATH_DRAWS: u32 = 8;

/// Replicas the latency rule needs to judge before a median means anything.
const MIN_LATENCY_FLEET: usize = 3;

/// How long a routing table is trusted without events.
const TABLE_TTL_MS: u64 = 100;

/// One member: its state, the service calls go to, and its id.
///
/// One allocation, the state first (`repr(C)`): a pick reaches a
/// candidate's load and health in one step from the snapshot's list, and
/// the winner's service is in the same allocation.
#[derive(Debug)]
#[repr(C)]
pub(super) struct Member<K, S> {
    pub(super) state: ReplicaState,
    pub(super) service: S,
    pub(super) id: K,
    /// The pool, for a failed call's outlier detection (weak: the pool
    /// holds its members).
    pub(super) pool: Weak<Shared<K, S>>,
}

/// The members at one membership version, with the table built for them.
#[derive(Debug)]
pub(super) struct Snapshot<K, S> {
    pub(super) members: Vec<Arc<Member<K, S>>>,
    pub(super) table: Table,
    pub(super) version: u64,
}

impl<K, S> Snapshot<K, S> {
    pub(super) fn new(members: Vec<Arc<Member<K, S>>>, table: Table, version: u64) -> Self {
        Self {
            members,
            table,
            version,
        }
    }
}

/// Settings fixed at build time.
#[derive(Debug)]
pub(super) struct Settings {
    pub(super) name: Arc<str>,
    pub(super) local_zone: Option<Arc<str>>,
    pub(super) overprovisioning: f64,
    pub(super) panic_threshold: f64,
    pub(super) failback_ms: u64,
    pub(super) when_none_healthy: WhenNoneHealthy,
    pub(super) outlier: OutlierDetection,
    pub(super) max_pushback: Duration,
    pub(super) failure_penalty: Duration,
    /// What every replica's breaker is built from, for replicas that join
    /// later (discovery) as for the first ones.
    pub(super) breaker: Option<crate::circuit_breaker::Builder>,
}

/// State shared by every clone of a pool, its handle and its drivers.
#[derive(Debug)]
pub(super) struct Shared<K, S> {
    pub(super) settings: Settings,
    pub(super) base: Instant,
    pub(super) rng: Rng,
    pub(super) ejection_rng: Rng,
    /// The current snapshot; the request path reads it through a cached
    /// `Arc` and takes this lock only when `version` moved.
    pub(super) current: Mutex<Arc<Snapshot<K, S>>>,
    pub(super) version: AtomicU64,
    /// Set when the table must be rebuilt (an ejection, a pushback, a
    /// check result, an operator's change), and when it next must be.
    pub(super) dirty: std::sync::atomic::AtomicBool,
    pub(super) rebuild_at_ms: AtomicU64,
    pub(super) next_sweep_ms: AtomicU64,
    pub(super) events: watch::Sender<u64>,
}

impl<K, S> Shared<K, S> {
    pub(super) fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    pub(super) fn ms(&self, at: Instant) -> u64 {
        Self::ms_of(self.ns(at))
    }

    /// Nanoseconds since the pool's base: the clock of the latency
    /// estimates.
    #[inline]
    pub(super) fn ns(&self, at: Instant) -> u64 {
        crate::stats::nanos_since(self.base, at)
    }

    /// The millisecond clock (zero means "never") at `ns`.
    #[inline]
    pub(super) fn ms_of(ns: u64) -> u64 {
        ns / 1_000_000 + 1
    }

    /// Chooses a replica for a request: a tier and zone by the table's
    /// shares, then the less loaded of two random candidates, avoiding
    /// replicas the request already tried while others exist.
    pub(super) fn choose(
        &self,
        snapshot: &Snapshot<K, S>,
        now_ns: u64,
        now_ms: u64,
        rng: &mut u64,
        tried: &Tried,
    ) -> Option<usize> {
        let r = next_local(rng);
        let candidates = snapshot.table.pick(
            (r % u64::from(WHOLE)) as u32,
            ((r >> 32) % u64::from(WHOLE)) as u32,
        )?;
        if let Some(i) = self.p2c(snapshot, candidates, now_ns, now_ms, rng, tried) {
            return Some(i);
        }
        if !tried.is_empty() {
            // Every candidate of the chosen tier and zone was tried: a retry
            // or hedge goes to an untried replica elsewhere in the table
            // (another zone, the next tier) while one exists...
            for zone in snapshot.table.tiers.iter().flat_map(|t| &t.zones) {
                if let Some(i) = self.p2c(snapshot, &zone.candidates, now_ns, now_ms, rng, tried) {
                    return Some(i);
                }
            }
            // Then the tiers that take no traffic now, lowest first.
            for tier in snapshot.table.spare.chunk_by(|a, b| {
                snapshot.members[*a as usize].state.tier == snapshot.members[*b as usize].state.tier
            }) {
                if let Some(i) = self.p2c(snapshot, tier, now_ns, now_ms, rng, tried) {
                    return Some(i);
                }
            }
            // ...and only then to one it tried before.
            return self.p2c(snapshot, candidates, now_ns, now_ms, rng, &Tried::default());
        }
        None
    }

    /// Power of two choices among `candidates`: two distinct usable ones,
    /// the cheaper wins. A few more draws if a draw is unusable (it turned
    /// unhealthy since the table was built, or the request tried it).
    fn p2c(
        &self,
        snapshot: &Snapshot<K, S>,
        candidates: &[u32],
        now_ns: u64,
        now_ms: u64,
        rng: &mut u64,
        tried: &Tried,
    ) -> Option<usize> {
        let state = |i: u32| &snapshot.members[i as usize].state;
        let usable = |i: u32| {
            let member = &snapshot.members[i as usize];
            (snapshot.table.panic || member.state.routable(now_ms))
                && (tried.is_empty() || !tried.contains(ReplicaId::of(member)))
        };
        let cheaper = |a: u32, b: u32| {
            let (sa, sb) = (state(a), state(b));
            // A replica that failed lately and has not been tried for a
            // while is probed, penalty or not: without traffic, outlier
            // detection could never see it fail again (and eject it) or
            // succeed (and clear it).
            match (sa.wants_probe(now_ms), sb.wants_probe(now_ms)) {
                (true, false) => return a,
                (false, true) => return b,
                _ => {}
            }
            if sa.cheaper_than(sb, now_ns) { a } else { b }
        };
        let n = u32::try_from(candidates.len()).unwrap_or(u32::MAX);
        // Two distinct positions from one draw, without a division, and
        // both candidates read before either is judged: in a large pool
        // their states are two cache misses, and this way they overlap.
        let draw = next_local(rng);
        let p1 = below(draw as u32, n);
        let p2 = if n > 1 {
            other_than(p1, (draw >> 32) as u32, n)
        } else {
            p1
        };
        let (i1, i2) = (*candidates.get(p1 as usize)?, candidates[p2 as usize]);
        match (usable(i1), n > 1 && usable(i2)) {
            (true, true) => return Some(cheaper(i1, i2) as usize),
            (true, false) if n == 1 => return Some(i1 as usize),
            _ => {}
        }
        if tried.is_empty() {
            // A candidate turned unusable since the table was built.
            self.dirty.store(true, std::sync::atomic::Ordering::Release);
        }
        // The slow path: more draws, then (for small lists) a full scan,
        // so an untried replica is never overlooked.
        let mut first: Option<(u32, u32)> =
            [(p1, i1), (p2, i2)].into_iter().find(|&(_, i)| usable(i));
        let draws = if n <= SLOW_PATH_DRAWS {
            SLOW_PATH_DRAWS + n
        } else {
            SLOW_PATH_DRAWS
        };
        for attempt in 0..draws {
            let pos = if attempt >= SLOW_PATH_DRAWS {
                // The full scan of a short list, position by position.
                attempt - SLOW_PATH_DRAWS
            } else {
                let draw = next_local(rng) as u32;
                match first {
                    Some((p, _)) if n > 1 => other_than(p, draw, n),
                    _ => below(draw, n),
                }
            };
            let i = candidates[pos as usize];
            if !usable(i) {
                continue;
            }
            match first {
                None => {
                    first = Some((pos, i));
                    if n == 1 {
                        break;
                    }
                }
                Some((_, f)) if f != i => return Some(cheaper(f, i) as usize),
                Some(_) => {}
            }
        }
        first.map(|(_, i)| i as usize)
    }

    /// The soonest a replica comes back, as a hint for callers.
    pub(super) fn retry_after(&self, snapshot: &Snapshot<K, S>, now_ms: u64) -> Option<Duration> {
        snapshot
            .table
            .next_change_ms
            .map(|t| Duration::from_millis(t.saturating_sub(now_ms)))
    }

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

    /// Something about health changed: rebuild the table and tell
    /// subscribers.
    pub(super) fn changed(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        self.events.send_modify(|n| *n += 1);
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
}

/// A uniform position below `n` (at least 2) other than `p`, from 32
/// random bits, without a division.
#[inline]
fn other_than(p: u32, bits: u32, n: u32) -> u32 {
    let q = p + 1 + below(bits, n - 1);
    if q >= n { q - n } else { q }
}

impl<K, S> Shared<K, S> {
    /// The snapshot to route with at `now_ms`, rebuilding the table if it
    /// is stale (one thread rebuilds; the others keep the old one).
    #[inline]
    pub(super) fn refresh(&self, cached: &mut Arc<Snapshot<K, S>>, now_ms: u64) {
        let stale = self.dirty.load(std::sync::atomic::Ordering::Acquire)
            || now_ms >= self.rebuild_at_ms.load(Ordering::Acquire);
        if stale {
            self.rebuild(now_ms);
        }
        if self.version.load(Ordering::Acquire) != cached.version {
            if let Ok(current) = self.current.lock() {
                *cached = current.clone();
            }
        }
    }

    /// Rebuilds the routing table from the replicas' standings now.
    pub(super) fn rebuild(&self, now_ms: u64) {
        let Ok(mut current) = self.current.try_lock() else {
            return;
        };
        self.dirty
            .store(false, std::sync::atomic::Ordering::Release);
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
