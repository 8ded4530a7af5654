//! The shared circuit: state machine, window, counters, metrics and the
//! handle operators use.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::{Config, SlidingWindow};
use super::state::{Admit, Core, GEN_MASK, Mode, Phase, Reject, Role, Transition, Word};
use crate::classify::{Outcome, Verdict};
use crate::error::{CircuitOpen, ConfigError};
use crate::rng::Rng;
use crate::stats::window::{CountWindow, Counts, Sample, TimeWindow, Window};
use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering};

/// The state of a circuit, as [`Circuit::state`] and
/// [`Circuit::subscribe`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are rejected with [`CircuitOpen`] until the open period ends.
    Open,
    /// A few probe calls go through to test the dependency.
    HalfOpen,
    /// An operator isolated the dependency: every call is rejected.
    ForcedOpen,
    /// An operator switched the breaker off: every call goes through and no
    /// outcome is recorded in the window (the call metrics still count).
    Disabled,
}

impl State {
    /// The `state` label value of the `steadfast_circuit_state` gauge.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
        }
    }

    fn of(word: Word) -> Self {
        match (word.mode, word.phase) {
            (Mode::ForcedOpen, _) => Self::ForcedOpen,
            (Mode::Disabled, _) => Self::Disabled,
            (_, Phase::Closed) => Self::Closed,
            (_, Phase::Open) => Self::Open,
            (_, Phase::HalfOpen) => Self::HalfOpen,
        }
    }

    const ALL: [State; 5] = [
        Self::Closed,
        Self::Open,
        Self::HalfOpen,
        Self::ForcedOpen,
        Self::Disabled,
    ];
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time view of a circuit, for status pages and readiness checks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The state.
    pub state: State,
    /// Whether the breaker only records and never rejects
    /// ([`Circuit::metrics_only`]); `state` is then what it would enforce.
    pub metrics_only: bool,
    /// Calls in the sliding window.
    pub calls: u64,
    /// Failures in the sliding window.
    pub failures: u64,
    /// Slow calls in the sliding window.
    pub slow_calls: u64,
    /// Failures in a row, in the closed state.
    pub consecutive_failures: u64,
    /// Trips since the circuit last closed (the open period grows with it).
    pub consecutive_trips: u64,
    /// When an open circuit lets the next probe through.
    pub open_until: Option<Instant>,
}

impl Snapshot {
    /// Failures over calls in the window, when it holds any calls.
    pub fn failure_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.failures as f64 / self.calls as f64)
    }
}

/// The shared state of one circuit breaker, and the handle to it.
///
/// Cheap to clone: every clone, every [`CircuitBreaker`](super::CircuitBreaker)
/// service the layer makes and every clone of those services share one
/// circuit. Use it to read the state, subscribe to changes, and to isolate
/// or release a dependency by hand.
#[derive(Debug, Clone)]
pub struct Circuit {
    pub(super) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    core: Core,
    name: Arc<str>,
    /// The rules and the window they judge, swapped whole by
    /// [`Circuit::apply`].
    rules: ArcSwap<Rules>,
    /// Held by [`Circuit::apply`]: two reloads at once would both carry
    /// the old window's outcomes over.
    reloading: Mutex<()>,
    /// Whether a slow-call rule is on, as the rules say: read by every
    /// admission, kept beside them so that it costs a plain load rather
    /// than a load of the rules (about 20 ns a call in `benches/overhead`).
    timed: AtomicBool,
    /// Instant zero for the state word's millisecond open-until times.
    base: Instant,
    /// `[generation : 32][count : 32]`: failures in a row in the closed
    /// period `generation`; a count of another period reads as zero.
    consecutive: AtomicU64,
    trips: AtomicU64,
    last_open_nanos: AtomicU64,
    rng: Rng,
    watch: watch::Sender<State>,
    /// The generation `watch` last published, guarded by the watch's lock.
    published: AtomicU64,
    metrics: Metrics,
}

#[derive(Debug)]
struct Metrics {
    success: Counter,
    failure: Counter,
    ignored: Counter,
    slow: Counter,
    rejected: Counter,
    states: [Gauge; 5],
}

impl Metrics {
    fn new(name: &Arc<str>) -> Self {
        let calls = |outcome: &'static str| metrics::counter!("steadfast_circuit_calls_total", "name" => name.clone(), "outcome" => outcome);
        Self {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            slow: metrics::counter!("steadfast_circuit_slow_calls_total", "name" => name.clone()),
            rejected: metrics::counter!("steadfast_circuit_rejected_total", "name" => name.clone()),
            states: State::ALL.map(|s| metrics::gauge!("steadfast_circuit_state", "name" => name.clone(), "state" => s.as_str())),
        }
    }

    fn gauge(&self, state: State) -> &Gauge {
        &self.states[State::ALL.iter().position(|s| *s == state).unwrap_or(0)]
    }
}

/// A circuit's validated settings and the window its rate rules judge
/// (none when no rate rule is on).
#[derive(Debug)]
struct Rules {
    config: Config,
    window: Option<Arc<Window>>,
}

impl Rules {
    /// A window for `config`'s rate rules, empty, if a rate rule is on.
    fn window_for(config: &Config, base: Instant) -> Option<Arc<Window>> {
        let window = match config.window {
            SlidingWindow::Count { size } => Window::Count(CountWindow::new(size)),
            SlidingWindow::Time { span, buckets } => {
                Window::Time(TimeWindow::new(base, span, buckets))
            }
        };
        (config.failure_rate.is_some() || config.slow_calls.is_some()).then(|| Arc::new(window))
    }
}

/// Admission taken in `poll_ready`: what the call is, and when it started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Permit {
    pub(super) admit: Admit,
    /// When the call started, in nanoseconds since the circuit's base, or
    /// [`Permit::UNTIMED`] when no slow-call rule needs it. A plain word
    /// keeps the permit two words, cheap to carry in every future.
    pub(super) started: u64,
}

impl Permit {
    pub(super) const UNTIMED: u64 = u64::MAX;

    /// Whether it admits one of the half-open probes.
    pub(super) fn is_probe(&self) -> bool {
        self.admit.role() == Role::Probe
    }

    pub(super) fn untimed(admit: Admit) -> Self {
        Self {
            admit,
            started: Self::UNTIMED,
        }
    }
}

impl Circuit {
    pub(super) fn new(config: Config) -> Self {
        let base = Instant::now();
        let window = Rules::window_for(&config, base);
        let timed = config.slow_calls.is_some();
        let metrics = Metrics::new(&config.name);
        metrics.gauge(State::Closed).set(1.0);
        let (watch, _) = watch::channel(State::Closed);
        Self {
            shared: Arc::new(Shared {
                core: Core::new(config.half_open_probes),
                rng: config.open_backoff.rng(),
                name: config.name.clone(),
                rules: ArcSwap::from_pointee(Rules { config, window }),
                reloading: Mutex::new(()),
                timed: AtomicBool::new(timed),
                base,
                consecutive: AtomicU64::new(0),
                trips: AtomicU64::new(0),
                last_open_nanos: AtomicU64::new(0),
                watch,
                published: AtomicU64::new(0),
                metrics,
            }),
        }
    }

    /// The circuit's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state.
    ///
    /// An open circuit whose period is over reads as open until a call (or
    /// this method) moves it to half-open: the crate runs no timer of its own.
    pub fn state(&self) -> State {
        let shared = &self.shared;
        let word = shared.core.load();
        if word.phase == Phase::Open && shared.now_ms() >= word.open_until_ms() {
            return State::HalfOpen;
        }
        State::of(word)
    }

    /// A snapshot of the state and the window's counts.
    pub fn snapshot(&self) -> Snapshot {
        let shared = &self.shared;
        let now = Instant::now();
        let word = shared.core.load();
        let counts = shared
            .rules
            .load()
            .window
            .as_ref()
            .map_or(Counts::default(), |w| w.counts(|| now));
        Snapshot {
            state: self.state(),
            metrics_only: word.mode == Mode::MetricsOnly,
            calls: counts.calls,
            failures: counts.failures,
            slow_calls: counts.slow,
            consecutive_failures: shared.consecutive_count(word.generation),
            consecutive_trips: shared.trips.load(Ordering::Acquire),
            open_until: (word.phase == Phase::Open
                && matches!(word.mode, Mode::Auto | Mode::MetricsOnly))
            // Open for good: shown 30 years out, as tokio does.
            .then(|| crate::stats::later(shared.base, Duration::from_millis(word.open_until_ms()))),
        }
    }

    /// Subscribes to state changes. The receiver sees the current state at
    /// once and every later change (a burst of changes may coalesce to the
    /// latest, as with any `watch` channel).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.shared.watch.subscribe()
    }

    /// Isolates the dependency: every call is rejected until
    /// [`reset`](Self::reset) or another mode.
    pub fn force_open(&self) {
        self.shared.set_mode(Mode::ForcedOpen);
    }

    /// Switches the breaker off: every call goes through and no outcome is
    /// recorded, until [`reset`](Self::reset) or another mode.
    pub fn disable(&self) {
        self.shared.set_mode(Mode::Disabled);
    }

    /// A dry run: the breaker counts and changes state as usual (watch it
    /// with [`subscribe`](Self::subscribe) or the metrics) but never rejects.
    pub fn metrics_only(&self) {
        self.shared.set_mode(Mode::MetricsOnly);
    }

    /// Takes new settings at run time, keeping what the circuit learnt: its
    /// state (an open period runs out as it was set), its failures in a row
    /// and its window. A window of another size or kind keeps the most
    /// recent outcomes that fit (see the [module docs](super) on reload);
    /// the rules judge them at the next outcome. The classifier is the
    /// layer's and does not change.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for settings [`Builder::build`](super::Builder::build)
    /// refuses, or a new name (metrics are labelled with it). The circuit
    /// then keeps its settings.
    pub fn apply<C>(&self, settings: &super::Builder<C>) -> Result<(), ConfigError> {
        let config = settings.validate()?;
        let shared = &self.shared;
        if *config.name != *shared.name {
            return Err(crate::budget::fixed("name", &shared.name, &config.name));
        }
        let _reloading = crate::sync::lock(&shared.reloading);
        let old = shared.rules.load_full();
        let window = match (&old.window, Rules::window_for(&config, shared.base)) {
            (Some(kept), Some(_)) if old.config.window == config.window => Some(kept.clone()),
            (Some(from), Some(to)) => {
                // Outcomes recorded while they are carried over go to the
                // old window and are not carried: a reload is rare, and
                // they are a few calls' worth at most.
                from.carry_into(&to, Instant::now());
                Some(to)
            }
            (_, window) => window,
        };
        shared.core.set_probes(config.half_open_probes);
        let timed = config.slow_calls.is_some();
        shared.rules.store(Arc::new(Rules { config, window }));
        shared.timed.store(timed, Ordering::Relaxed);
        Ok(())
    }

    /// Back to normal operation, closed, with an empty window and the open
    /// period back at its first value.
    pub fn reset(&self) {
        let shared = &self.shared;
        shared.clear();
        if let Some(t) = shared.core.reset() {
            shared.publish(t);
        }
    }
}

/// An admission through a circuit used inside the crate (the replica
/// pool's per-replica breakers): complete it, or release it if the call
/// never finished.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CircuitPermit(Permit);

impl CircuitPermit {
    /// Whether it admits one of the half-open probes.
    pub(crate) fn is_probe(&self) -> bool {
        self.0.is_probe()
    }
}

impl Circuit {
    /// Admits one call, or says why not (crate-internal use).
    pub(crate) fn try_acquire(&self) -> Result<CircuitPermit, CircuitOpen> {
        self.shared.acquire().map(|admit| {
            let mut permit = Permit::untimed(admit);
            if self.shared.measures_duration() {
                permit.started = self.shared.clock_ns();
            }
            CircuitPermit(permit)
        })
    }

    /// The refusal a call would meet now, without asking for a probe: a
    /// circuit open before its period ends (with the time left), or forced
    /// open. `None` while it is closed, half-open (or due to be), disabled,
    /// or only recording.
    #[cfg(feature = "http")]
    pub(crate) fn refusal(&self) -> Option<CircuitOpen> {
        let shared = &self.shared;
        let word = shared.core.load();
        let retry_after = match (word.mode, word.phase) {
            (Mode::ForcedOpen, _) => None,
            (Mode::Auto, Phase::Open) => {
                let left = word.open_until_ms().checked_sub(shared.now_ms())?;
                if left == 0 {
                    return None;
                }
                Some(Duration::from_millis(left))
            }
            _ => return None,
        };
        Some(CircuitOpen::new(shared.name.clone(), retry_after))
    }

    /// An admitted call answered and is judged when its response's body
    /// ends (see [`Shared::answered`]).
    pub(crate) fn answered(&self, permit: &mut CircuitPermit) {
        self.shared.answered(&mut permit.0);
    }

    /// Records the outcome of an admitted call.
    pub(crate) fn complete(&self, permit: CircuitPermit, verdict: Verdict) {
        self.shared.complete(&permit.0, verdict);
    }

    /// Gives back an admission whose call never finished.
    pub(crate) fn release(&self, permit: CircuitPermit) {
        self.shared.release(permit.0);
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.clock_ns() / 1_000_000
    }

    /// Nanoseconds since the circuit's base.
    pub(super) fn clock_ns(&self) -> u64 {
        crate::stats::nanos_since(self.base, Instant::now())
    }

    pub(super) fn measures_duration(&self) -> bool {
        self.timed.load(Ordering::Relaxed)
    }

    /// Admission, in `poll_ready`.
    #[inline]
    pub(super) fn acquire(&self) -> Result<Admit, CircuitOpen> {
        let (result, transition) = self.core.acquire(|| self.now_ms());
        if let Some(t) = transition {
            self.publish(t);
        }
        result.map_err(|why| {
            self.metrics.rejected.increment(1);
            let retry_after = match why {
                Reject::Open { until_ms } => Some(Duration::from_millis(
                    until_ms.saturating_sub(self.now_ms()),
                )),
                Reject::HalfOpenBusy | Reject::ForcedOpen => None,
            };
            CircuitOpen::new(self.name.clone(), retry_after)
        })
    }

    /// Whether a permit taken earlier still belongs to the current period.
    #[inline]
    pub(super) fn is_current(&self, admit: Admit) -> bool {
        self.core.load().generation == admit.generation()
    }

    /// A call finished with `verdict`.
    #[inline]
    pub(super) fn complete(&self, permit: &Permit, verdict: Verdict) {
        // The healthy path: a success in the closed state that would change
        // nothing recorded. Loads only, so threads sharing the circuit do
        // not contend.
        let rules = self.rules.load();
        if verdict.is_success()
            && permit.admit.role() == Role::Closed
            && rules.config.slow_calls.is_none()
            && self.success_changes_nothing(&rules)
        {
            self.metrics.success.increment(1);
            return;
        }
        self.complete_slow(&rules, *permit, verdict);
    }

    #[inline]
    fn success_changes_nothing(&self, rules: &Rules) -> bool {
        let window = match rules.window.as_deref() {
            None => true,
            Some(Window::Count(w)) => w.full_of_successes(),
            Some(Window::Time(_)) => false,
        };
        window && self.consecutive.load(Ordering::Acquire) & u64::from(u32::MAX) == 0
    }

    fn complete_slow(&self, rules: &Rules, permit: Permit, verdict: Verdict) {
        let slow = match rules.config.slow_calls {
            Some((threshold, _)) if permit.started != Permit::UNTIMED => {
                let elapsed = self.clock_ns().saturating_sub(permit.started);
                u128::from(elapsed) >= threshold.as_nanos()
            }
            _ => false,
        };
        let failure = match verdict.outcome() {
            Outcome::Success => {
                self.metrics.success.increment(1);
                false
            }
            Outcome::Failure => {
                self.metrics.failure.increment(1);
                true
            }
            _ => {
                self.metrics.ignored.increment(1);
                self.release(permit);
                return;
            }
        };
        if slow {
            self.metrics.slow.increment(1);
        }
        let generation = permit.admit.generation();
        match permit.admit.role() {
            Role::Closed => self.closed_outcome(rules, generation, failure, slow, verdict),
            Role::Probe if failure || slow => {
                // HalfOpen -> Open: a probe failed (a slow probe counts as one).
                self.open(rules, generation, Phase::HalfOpen, verdict.pushback());
            }
            Role::Probe => {
                if let Some(t) = self.core.probe_succeeded(generation, || self.clear()) {
                    self.publish(t);
                }
            }
            Role::Passive => {}
        }
    }

    /// An admitted call answered, and its verdict waits for the end of its
    /// response's body (`Classify::defer`): whether it was slow is decided
    /// now, by the time it took to answer, not by how long its body
    /// streams. A call that answered in time stops its clock; one that
    /// was already slow keeps it, and is slow when it completes.
    pub(super) fn answered(&self, permit: &mut Permit) {
        let Some((threshold, _)) = self.rules.load().config.slow_calls else {
            return;
        };
        if permit.started == Permit::UNTIMED {
            return;
        }
        let elapsed = self.clock_ns().saturating_sub(permit.started);
        if u128::from(elapsed) < threshold.as_nanos() {
            permit.started = Permit::UNTIMED;
        }
    }

    /// A call ended without an outcome (its future was dropped, or the
    /// classifier ignored it): a probe's slot goes back.
    pub(super) fn release(&self, permit: Permit) {
        if permit.admit.role() == Role::Probe {
            self.core.release_probe(permit.admit.generation());
        }
    }

    fn closed_outcome(
        &self,
        rules: &Rules,
        generation: u32,
        failure: bool,
        slow: bool,
        verdict: Verdict,
    ) {
        let word = self.core.load();
        if word.generation != generation || word.phase != Phase::Closed {
            // A late outcome of an earlier closed period: it says nothing
            // about the period the circuit is in now.
            return;
        }
        let mut now = None;
        let mut clock = || *now.get_or_insert_with(Instant::now);
        if let Some(window) = &rules.window {
            window.record(&mut clock, Sample { failure, slow });
        }
        let in_a_row = match rules.config.consecutive_failures {
            Some(_) if failure => self.bump_consecutive(generation),
            Some(_) => {
                self.clear_consecutive();
                0
            }
            None => 0,
        };
        let trip = too_many_in_a_row(&rules.config, in_a_row)
            || rules
                .window
                .as_ref()
                .is_some_and(|window| rates_trip(&rules.config, window, clock));
        if trip {
            // Closed -> Open: a rule tripped.
            self.open(rules, generation, Phase::Closed, verdict.pushback());
        }
    }
}

/// The consecutive-failures rule, after `in_a_row` failures in a row.
fn too_many_in_a_row(config: &Config, in_a_row: u64) -> bool {
    config
        .consecutive_failures
        .is_some_and(|n| in_a_row >= u64::from(n))
}

/// The failure-rate and slow-call rules, over the window as it is after
/// the outcome just recorded. Judged after every outcome, a success too:
/// a success may be the call that brings the window to `min_calls`, and
/// in a time window old successes may have just expired. A window that
/// holds no failure and no slow call cannot trip, and is not counted.
fn rates_trip(config: &Config, window: &Window, mut now: impl FnMut() -> Instant) -> bool {
    if !window.holds_bad(&mut now) {
        return false;
    }
    let counts = window.counts(now);
    if counts.calls < u64::from(config.min_calls) {
        return false;
    }
    let share = |n: u64| n as f64 / counts.calls as f64;
    let by_failures = config
        .failure_rate
        .is_some_and(|rate| share(counts.failures) >= rate);
    let by_slowness = config
        .slow_calls
        .is_some_and(|(_, rate)| share(counts.slow) >= rate);
    by_failures || by_slowness
}

impl Shared {
    fn bump_consecutive(&self, generation: u32) -> u64 {
        let tag = u64::from(generation) & GEN_MASK;
        let mut current = self.consecutive.load(Ordering::Acquire);
        loop {
            let count = if current >> 32 == tag {
                current & u64::from(u32::MAX)
            } else {
                0
            };
            let next = (tag << 32) | (count + 1).min(u64::from(u32::MAX));
            match self.consecutive.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return count + 1,
                Err(seen) => current = seen,
            }
        }
    }

    #[inline]
    fn clear_consecutive(&self) {
        // Read first: on a healthy path the count is already zero and the
        // cache line stays shared between threads.
        if self.consecutive.load(Ordering::Acquire) & u64::from(u32::MAX) != 0 {
            self.consecutive.store(0, Ordering::Release);
        }
    }

    fn consecutive_count(&self, generation: u32) -> u64 {
        let v = self.consecutive.load(Ordering::Acquire);
        if v >> 32 == u64::from(generation) & GEN_MASK {
            v & u64::from(u32::MAX)
        } else {
            0
        }
    }

    /// Opens the circuit from `phase` of `generation`, for the backoff's
    /// next period, lengthened by the server's pushback if that is longer.
    fn open(&self, rules: &Rules, generation: u32, phase: Phase, pushback: Option<Duration>) {
        let trips = self.trips.load(Ordering::Acquire);
        let backoff = &rules.config.open_backoff;
        let previous = Duration::from_nanos(self.last_open_nanos.load(Ordering::Acquire));
        let mut period = backoff.delay(
            u32::try_from(trips).unwrap_or(u32::MAX),
            previous.max(backoff.base()),
            &self.rng,
        );
        if let Some(pushback) = pushback {
            period = period.max(pushback.min(rules.config.max_pushback));
        }
        // Round up: never reopen earlier than the period.
        // Saturating: a period too long for the clock (up to `Duration::MAX`)
        // keeps the circuit open for good.
        let until = Instant::now()
            .saturating_duration_since(self.base)
            .saturating_add(period);
        let until_ms = u64::try_from(until.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let transition = match phase {
            Phase::HalfOpen => self.core.trip_half_open(generation, until_ms),
            _ => self.core.trip_closed(generation, until_ms),
        };
        if let Some(t) = transition {
            // Only the winning thread counts the trip.
            self.trips.store(trips + 1, Ordering::Release);
            self.last_open_nanos.store(
                u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Release,
            );
            self.publish(t);
        }
    }

    /// Empties the window and the counters, before a close or on reset.
    fn clear(&self) {
        // Under the reload lock: a reload carrying the old window over
        // while it is emptied would bring back the outcomes just cleared.
        // A close or a reset is rare; no call waits on it.
        let _reloading = crate::sync::lock(&self.reloading);
        if let Some(window) = &self.rules.load().window {
            window.reset();
        }
        self.consecutive.store(0, Ordering::Release);
        self.trips.store(0, Ordering::Release);
        self.last_open_nanos.store(0, Ordering::Release);
    }

    fn set_mode(&self, mode: Mode) {
        if let Some(t) = self.core.set_mode(mode) {
            self.publish(t);
        }
    }

    /// Tells subscribers, metrics and traces about a transition. Racing
    /// publishers are ordered by generation under the watch's lock, so a
    /// subscriber never sees the circuit go back to an older state.
    fn publish(&self, t: Transition) {
        let to = State::of(t.to);
        let generation = u64::from(t.to.generation);
        self.watch.send_if_modified(|current| {
            let last = self.published.load(Ordering::Relaxed);
            let ahead = generation.wrapping_sub(last) & GEN_MASK;
            if ahead == 0 || ahead > GEN_MASK / 2 {
                return false;
            }
            self.published.store(generation, Ordering::Relaxed);
            let from = *current;
            *current = to;
            self.metrics.gauge(from).set(0.0);
            self.metrics.gauge(to).set(1.0);
            self.trace(from, to, t.to);
            from != to
        });
    }

    #[cfg(feature = "tracing")]
    fn trace(&self, from: State, to: State, word: Word) {
        let name = &*self.name;
        match to {
            State::Open => {
                let open_for =
                    Duration::from_millis(word.open_until_ms().saturating_sub(self.now_ms()));
                tracing::warn!(circuit = name, %from, %to, ?open_for, "circuit opened");
            }
            State::ForcedOpen => tracing::warn!(circuit = name, %from, %to, "circuit forced open"),
            _ => tracing::info!(circuit = name, %from, %to, "circuit state changed"),
        }
    }

    #[cfg(not(feature = "tracing"))]
    fn trace(&self, _from: State, _to: State, _word: Word) {}
}
