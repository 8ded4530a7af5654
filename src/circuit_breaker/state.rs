//! The breaker's state machine as one atomic word (private).
//!
//! ```text
//!  63..62  61..60  59........40  39.................................0
//!  mode    state   generation    payload
//!                                  Open:     open-until, ms since the circuit's base instant
//!                                  HalfOpen: probes in flight (20 bits) | successes (20 bits)
//! ```
//!
//! Every transition is one compare-and-swap on the word, so concurrent
//! callers cannot admit more than K probes, cannot trip the same closed
//! period twice, and a late outcome from an earlier period is recognised by
//! its generation and ignored. The generation is 20 bits: it would have to
//! wrap (a million transitions) while one call is in flight to confuse it.
//!
//! Time is passed in as milliseconds since the circuit's base instant, so
//! this file knows nothing of clocks and is model-checked with loom.

use crate::sync::{AtomicU64, Ordering};

const PAYLOAD_BITS: u32 = 40;
const PAYLOAD_MASK: u64 = (1 << PAYLOAD_BITS) - 1;
const GEN_SHIFT: u32 = PAYLOAD_BITS;
pub(crate) const GEN_MASK: u64 = (1 << 20) - 1;
const STATE_SHIFT: u32 = 60;
const MODE_SHIFT: u32 = 62;
const HALF_BITS: u32 = 20;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;

/// The automatic state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// Who decides admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Auto = 0,
    ForcedOpen = 1,
    Disabled = 2,
    MetricsOnly = 3,
}

/// A decoded state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word {
    pub(crate) mode: Mode,
    pub(crate) phase: Phase,
    pub(crate) generation: u32,
    pub(crate) payload: u64,
}

impl Word {
    pub(crate) fn decode(raw: u64) -> Self {
        let mode = match raw >> MODE_SHIFT {
            0 => Mode::Auto,
            1 => Mode::ForcedOpen,
            2 => Mode::Disabled,
            _ => Mode::MetricsOnly,
        };
        let phase = match (raw >> STATE_SHIFT) & 0b11 {
            0 => Phase::Closed,
            1 => Phase::Open,
            _ => Phase::HalfOpen,
        };
        Self {
            mode,
            phase,
            generation: ((raw >> GEN_SHIFT) & GEN_MASK) as u32,
            payload: raw & PAYLOAD_MASK,
        }
    }

    fn encode(self) -> u64 {
        ((self.mode as u64) << MODE_SHIFT)
            | ((self.phase as u64) << STATE_SHIFT)
            | ((u64::from(self.generation) & GEN_MASK) << GEN_SHIFT)
            | (self.payload & PAYLOAD_MASK)
    }

    /// The next period: a new phase and payload, and the next generation.
    fn next(self, phase: Phase, payload: u64) -> Self {
        Self {
            mode: self.mode,
            phase,
            generation: (self.generation + 1) & GEN_MASK as u32,
            payload,
        }
    }

    pub(crate) fn open_until_ms(self) -> u64 {
        self.payload
    }

    /// Probes in flight and successes so far, in half-open.
    pub(crate) fn probes(self) -> (u64, u64) {
        (self.payload >> HALF_BITS, self.payload & HALF_MASK)
    }
}

fn half_open(in_flight: u64, successes: u64) -> u64 {
    (in_flight << HALF_BITS) | successes
}

/// What admission granted: a role and the generation of the period it was
/// granted in, packed in one word so the hot path keeps it in a register.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admit(u64);

/// The role of an admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A normal call in the closed state; its outcome feeds the window.
    Closed,
    /// One of the K half-open probes.
    Probe,
    /// Admitted without a role: disabled mode, or a call metrics-only mode
    /// lets through although the machine would reject it. Records nothing.
    Passive,
}

impl Admit {
    const ROLE_SHIFT: u32 = 32;

    pub(crate) const fn closed(generation: u32) -> Self {
        Self(generation as u64)
    }

    pub(crate) const fn probe(generation: u32) -> Self {
        Self((1 << Self::ROLE_SHIFT) | generation as u64)
    }

    pub(crate) const fn passive(generation: u32) -> Self {
        Self((2 << Self::ROLE_SHIFT) | generation as u64)
    }

    pub(crate) const fn role(self) -> Role {
        match self.0 >> Self::ROLE_SHIFT {
            0 => Role::Closed,
            1 => Role::Probe,
            _ => Role::Passive,
        }
    }

    pub(crate) const fn generation(self) -> u32 {
        self.0 as u32
    }
}

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admit")
            .field("role", &self.role())
            .field("generation", &self.generation())
            .finish()
    }
}

/// Why admission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    Open { until_ms: u64 },
    HalfOpenBusy,
    ForcedOpen,
}

/// A transition that took place: publish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: Word,
    pub(crate) to: Word,
}

/// The state word and the probe count it enforces.
#[derive(Debug)]
pub(crate) struct Core {
    word: AtomicU64,
    /// K, changed only by a reload (a half-open circuit then goes on with
    /// the new K: the probes it admitted still count).
    probes: AtomicU64,
}

impl Core {
    /// A closed circuit admitting `probes` (1..2²⁰) probes when half-open.
    pub(crate) fn new(probes: u32) -> Self {
        let closed = Word {
            mode: Mode::Auto,
            phase: Phase::Closed,
            generation: 0,
            payload: 0,
        };
        Self {
            word: AtomicU64::new(closed.encode()),
            probes: AtomicU64::new(Self::k(probes)),
        }
    }

    fn k(probes: u32) -> u64 {
        u64::from(probes).clamp(1, HALF_MASK)
    }

    /// Sets K, for a reload.
    pub(crate) fn set_probes(&self, probes: u32) {
        self.probes.store(Self::k(probes), Ordering::Release);
    }

    fn probes(&self) -> u64 {
        self.probes.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn load(&self) -> Word {
        Word::decode(self.word.load(Ordering::Acquire))
    }

    /// One CAS step: `f` decides the new word from the current one, or
    /// stops with `Err`. Retries while other threads move the word.
    fn update<T>(
        &self,
        mut f: impl FnMut(Word) -> Result<(Word, T), T>,
    ) -> (T, Option<Transition>) {
        let mut raw = self.word.load(Ordering::Acquire);
        loop {
            let from = Word::decode(raw);
            let (to, out) = match f(from) {
                Ok(step) => step,
                Err(out) => return (out, None),
            };
            match self.word.compare_exchange_weak(
                raw,
                to.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let changed = (from.mode, from.phase) != (to.mode, to.phase);
                    return (out, changed.then_some(Transition { from, to }));
                }
                Err(seen) => raw = seen,
            }
        }
    }

    /// The hot path of [`acquire`](Self::acquire): a closed circuit admits
    /// with a single load. `None` means "take the slow path".
    #[inline]
    pub(crate) fn admit_closed(&self) -> Option<Admit> {
        let raw = self.word.load(Ordering::Acquire);
        // Mode Auto (0) or MetricsOnly (3), phase Closed (0).
        let mode = raw >> MODE_SHIFT;
        let closed = (raw >> STATE_SHIFT) & 0b11 == Phase::Closed as u64;
        (closed && (mode == Mode::Auto as u64 || mode == Mode::MetricsOnly as u64))
            .then_some(Admit::closed(((raw >> GEN_SHIFT) & GEN_MASK) as u32))
    }

    /// Admits a call or says why not. `now_ms` is read only when the
    /// circuit is open (to see whether the open period is over).
    #[inline]
    pub(crate) fn acquire(
        &self,
        now_ms: impl Fn() -> u64,
    ) -> (Result<Admit, Reject>, Option<Transition>) {
        // Closed: the hot path, a single load.
        if let Some(admit) = self.admit_closed() {
            return (Ok(admit), None);
        }
        self.update(|w| {
            // Metrics-only: run the machine, record what would have
            // happened, reject nothing.
            let reject = |why| match w.mode {
                Mode::MetricsOnly => Err(Ok(Admit::passive(w.generation))),
                _ => Err(Err(why)),
            };
            match w.mode {
                Mode::ForcedOpen => Err(Err(Reject::ForcedOpen)),
                Mode::Disabled => Err(Ok(Admit::passive(w.generation))),
                Mode::Auto | Mode::MetricsOnly => match w.phase {
                    Phase::Closed => Err(Ok(Admit::closed(w.generation))),
                    Phase::Open if now_ms() >= w.open_until_ms() => {
                        // Open -> HalfOpen: the period is over; this call is the first probe.
                        let to = w.next(Phase::HalfOpen, half_open(1, 0));
                        Ok((to, Ok(Admit::probe(to.generation))))
                    }
                    Phase::Open => reject(Reject::Open {
                        until_ms: w.open_until_ms(),
                    }),
                    Phase::HalfOpen => {
                        let (in_flight, successes) = w.probes();
                        if in_flight + successes < self.probes() {
                            let to = Word {
                                payload: half_open(in_flight + 1, successes),
                                ..w
                            };
                            Ok((to, Ok(Admit::probe(w.generation))))
                        } else {
                            reject(Reject::HalfOpenBusy)
                        }
                    }
                },
            }
        })
    }

    /// Closed -> Open, if the circuit is still in the closed period
    /// `generation`. Only one of several racing failures wins.
    pub(crate) fn trip_closed(&self, generation: u32, until_ms: u64) -> Option<Transition> {
        self.trip(generation, Phase::Closed, until_ms)
    }

    /// HalfOpen -> Open: a probe failed.
    pub(crate) fn trip_half_open(&self, generation: u32, until_ms: u64) -> Option<Transition> {
        self.trip(generation, Phase::HalfOpen, until_ms)
    }

    fn trip(&self, generation: u32, phase: Phase, until_ms: u64) -> Option<Transition> {
        self.update(|w| {
            if w.generation != generation || w.phase != phase {
                return Err(());
            }
            Ok((w.next(Phase::Open, until_ms.min(PAYLOAD_MASK)), ()))
        })
        .1
    }

    /// A probe of `generation` succeeded. Calls `before_close` before the
    /// transition to Closed is published, so the window is clean by the time
    /// closed-state calls are admitted.
    pub(crate) fn probe_succeeded(
        &self,
        generation: u32,
        before_close: impl Fn(),
    ) -> Option<Transition> {
        self.update(|w| {
            if w.generation != generation || w.phase != Phase::HalfOpen {
                return Err(());
            }
            let (in_flight, successes) = w.probes();
            if successes + 1 >= self.probes() {
                // HalfOpen -> Closed: K probes succeeded.
                before_close();
                Ok((w.next(Phase::Closed, 0), ()))
            } else {
                Ok((
                    Word {
                        payload: half_open(in_flight.saturating_sub(1), successes + 1),
                        ..w
                    },
                    (),
                ))
            }
        })
        .1
    }

    /// A probe of `generation` ended without a verdict (cancelled or
    /// ignored): its slot goes back.
    pub(crate) fn release_probe(&self, generation: u32) {
        self.update(|w| {
            if w.generation != generation || w.phase != Phase::HalfOpen {
                return Err(());
            }
            let (in_flight, successes) = w.probes();
            Ok((
                Word {
                    payload: half_open(in_flight.saturating_sub(1), successes),
                    ..w
                },
                (),
            ))
        });
    }

    /// Sets the mode, keeping the automatic phase (a half-open circuit
    /// forgets its probes: they belong to the previous generation).
    pub(crate) fn set_mode(&self, mode: Mode) -> Option<Transition> {
        self.update(|w| {
            if w.mode == mode {
                return Err(());
            }
            let payload = if w.phase == Phase::HalfOpen {
                0
            } else {
                w.payload
            };
            Ok((
                Word {
                    mode,
                    ..w.next(w.phase, payload)
                },
                (),
            ))
        })
        .1
    }

    /// Back to automatic and closed, whatever the state.
    pub(crate) fn reset(&self) -> Option<Transition> {
        self.update(|w| {
            Ok((
                Word {
                    mode: Mode::Auto,
                    ..w.next(Phase::Closed, 0)
                },
                (),
            ))
        })
        .1
    }
}

/// The generation of a probe admission; panics on anything else.
#[cfg(test)]
fn probe_gen(r: Result<Admit, Reject>) -> u32 {
    match r {
        Ok(admit) if admit.role() == Role::Probe => admit.generation(),
        other => panic!("expected a probe, got {other:?}"),
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    #[test]
    fn word_round_trips() {
        let w = Word {
            mode: Mode::MetricsOnly,
            phase: Phase::HalfOpen,
            generation: GEN_MASK as u32,
            payload: PAYLOAD_MASK,
        };
        assert_eq!(Word::decode(w.encode()), w);
        let w = Word {
            mode: Mode::Auto,
            phase: Phase::Open,
            generation: 5,
            payload: 123_456,
        };
        assert_eq!(Word::decode(w.encode()), w);
    }

    #[test]
    fn closed_open_half_open_closed() {
        let core = Core::new(2);
        let (r, t) = core.acquire(|| unreachable!("closed never reads the clock"));
        assert_eq!(r, Ok(Admit::closed(0)));
        assert!(t.is_none());

        let t = core.trip_closed(0, 100).expect("trips");
        assert_eq!((t.from.phase, t.to.phase), (Phase::Closed, Phase::Open));
        // A second failure of the same period does not trip again.
        assert!(core.trip_closed(0, 200).is_none());

        assert_eq!(core.acquire(|| 99).0, Err(Reject::Open { until_ms: 100 }));
        let (r, t) = core.acquire(|| 100);
        let generation = probe_gen(r);
        assert_eq!(t.unwrap().to.phase, Phase::HalfOpen);
        assert_eq!(probe_gen(core.acquire(|| 100).0), generation);
        // Exactly two probes.
        assert_eq!(core.acquire(|| 100).0, Err(Reject::HalfOpenBusy));

        assert!(core.probe_succeeded(generation, || {}).is_none());
        // A success frees no slot: K probes in all, not K at a time.
        assert_eq!(core.acquire(|| 100).0, Err(Reject::HalfOpenBusy));
        let t = core.probe_succeeded(generation, || {}).expect("closes");
        assert_eq!(t.to.phase, Phase::Closed);
        assert_eq!(core.load().phase, Phase::Closed);
    }

    #[test]
    fn probe_failure_reopens_and_release_returns_slot() {
        let core = Core::new(1);
        core.trip_closed(0, 10);
        let generation = probe_gen(core.acquire(|| 10).0);
        assert_eq!(core.acquire(|| 10).0, Err(Reject::HalfOpenBusy));
        core.release_probe(generation);
        let generation = probe_gen(core.acquire(|| 10).0);
        let t = core.trip_half_open(generation, 50).expect("reopens");
        assert_eq!(t.to.phase, Phase::Open);
        assert_eq!(core.load().open_until_ms(), 50);
        // Outcomes of the old half-open period change nothing.
        assert!(
            core.probe_succeeded(generation, || panic!("must not close"))
                .is_none()
        );
        core.release_probe(generation);
        assert_eq!(core.load().phase, Phase::Open);
    }

    #[test]
    fn modes() {
        let core = Core::new(1);
        core.set_mode(Mode::ForcedOpen).unwrap();
        assert_eq!(core.acquire(|| 0).0, Err(Reject::ForcedOpen));
        core.set_mode(Mode::Disabled).unwrap();
        assert!(
            core.acquire(|| 0)
                .0
                .is_ok_and(|a| a.role() == Role::Passive)
        );
        core.set_mode(Mode::MetricsOnly).unwrap();
        let generation = core.load().generation;
        core.trip_closed(generation, 1_000).unwrap();
        assert_eq!(core.load().phase, Phase::Open);
        assert!(
            core.acquire(|| 0)
                .0
                .is_ok_and(|a| a.role() == Role::Passive)
        );
        core.reset().unwrap();
        let w = core.load();
        assert_eq!((w.mode, w.phase), (Mode::Auto, Phase::Closed));
    }

    #[test]
    fn mode_change_forgets_half_open_probes() {
        let core = Core::new(1);
        core.trip_closed(0, 0);
        let old = probe_gen(core.acquire(|| 0).0);
        core.set_mode(Mode::MetricsOnly);
        core.set_mode(Mode::Auto);
        // The old probe can never come back to free its slot; it must not hold one.
        let new = probe_gen(core.acquire(|| 0).0);
        assert_ne!(old, new);
    }
}

#[cfg(all(test, steadfast_loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// Two callers race for the single probe slot: exactly one wins.
    #[test]
    fn one_probe_slot_one_winner() {
        loom::model(|| {
            let core = Arc::new(Core::new(1));
            core.trip_closed(0, 0);
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let core = core.clone();
                    thread::spawn(move || core.acquire(|| 0).0.is_ok())
                })
                .collect();
            let admitted = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|ok| *ok)
                .count();
            assert_eq!(admitted, 1);
        });
    }

    /// Two failures of the same closed period race to trip: one transition,
    /// one generation step.
    #[test]
    fn racing_trips_open_once() {
        loom::model(|| {
            let core = Arc::new(Core::new(1));
            let handles: Vec<_> = (0..2)
                .map(|i| {
                    let core = core.clone();
                    thread::spawn(move || core.trip_closed(0, 10 + i).is_some())
                })
                .collect();
            let trips = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|t| *t)
                .count();
            assert_eq!(trips, 1);
            let w = core.load();
            assert_eq!((w.phase, w.generation), (Phase::Open, 1));
        });
    }

    /// A probe is released (cancelled) while another caller asks for a slot
    /// and a third probe succeeds: never more than K in flight, and the
    /// circuit ends closed or half-open with consistent counts.
    #[test]
    fn release_and_success_race_with_admission() {
        loom::model(|| {
            let core = Arc::new(Core::new(2));
            core.trip_closed(0, 0);
            let generation = probe_gen(core.acquire(|| 0).0);
            probe_gen(core.acquire(|| 0).0);
            let releaser = {
                let core = core.clone();
                thread::spawn(move || core.release_probe(generation))
            };
            let succeeder = {
                let core = core.clone();
                thread::spawn(move || core.probe_succeeded(generation, || {}))
            };
            let admitter = {
                let core = core.clone();
                thread::spawn(move || core.acquire(|| 0).0)
            };
            releaser.join().unwrap();
            succeeder.join().unwrap();
            let admitted = admitter.join().unwrap();
            let w = core.load();
            assert_eq!(w.phase, Phase::HalfOpen);
            let (in_flight, successes) = w.probes();
            assert_eq!(successes, 1);
            assert!(in_flight + successes <= 2);
            // The new probe got a slot iff the release came first.
            assert_eq!(in_flight, u64::from(admitted.is_ok()));
        });
    }

    /// A probe success that closes the circuit races an operator forcing it
    /// open: whatever the order, the final state is one of the two, and a
    /// closing never overwrites a forced open.
    #[test]
    fn close_races_force_open() {
        loom::model(|| {
            let core = Arc::new(Core::new(1));
            core.trip_closed(0, 0);
            let generation = probe_gen(core.acquire(|| 0).0);
            let closer = {
                let core = core.clone();
                thread::spawn(move || core.probe_succeeded(generation, || {}))
            };
            core.set_mode(Mode::ForcedOpen);
            closer.join().unwrap();
            assert_eq!(core.load().mode, Mode::ForcedOpen);
            assert_eq!(core.acquire(|| 0).0, Err(Reject::ForcedOpen));
        });
    }
}
