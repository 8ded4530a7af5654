//! A small shim over the atomics the crate's shared state uses, so that the
//! state machines can be model-checked with `loom` under `--cfg steadfast_loom`
//! (a crate-specific cfg: the global `--cfg loom` also changes how tokio builds).

#[cfg(steadfast_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, AtomicUsize};
#[cfg(steadfast_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(steadfast_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, AtomicUsize};
#[cfg(not(steadfast_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;

/// Locks `mutex`, recovering it if a thread panicked while holding it: the
/// one rule for poisoned locks. The crate's locks guard values replaced
/// whole (an `Arc` swapped in, a buffer handed on), so what a panicking
/// holder left is the previous value, still consistent; refusing to go on
/// would stop health checks, snapshots and updates for good.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Like [`lock`], without waiting: `None` while another thread holds it.
pub(crate) fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// A small enum kept in an atomic byte. Implement it for the enum (its
/// values in byte order), and [`AtomicState`] stores and loads it: no state
/// of the crate is an integer with constants beside it.
pub(crate) trait State: Copy + 'static {
    /// Every value, in the order of their bytes: the byte of `ALL[i]` is `i`.
    const ALL: &'static [Self];

    /// The value's byte: its place in [`ALL`](Self::ALL).
    fn byte(self) -> u8;
}

/// An atomic [`State`].
#[derive(Debug)]
pub(crate) struct AtomicState<T> {
    byte: AtomicU8,
    state: std::marker::PhantomData<T>,
}

impl<T: State> AtomicState<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            byte: AtomicU8::new(value.byte()),
            state: std::marker::PhantomData,
        }
    }

    fn value(byte: u8) -> T {
        // Every byte stored came from `State::byte`, so it is in `ALL`.
        T::ALL.get(usize::from(byte)).copied().unwrap_or(T::ALL[0])
    }

    pub(crate) fn load(&self, order: Ordering) -> T {
        Self::value(self.byte.load(order))
    }

    pub(crate) fn store(&self, value: T, order: Ordering) {
        self.byte.store(value.byte(), order);
    }

    pub(crate) fn swap(&self, value: T, order: Ordering) -> T {
        Self::value(self.byte.swap(value.byte(), order))
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Light {
        Red,
        Amber,
        Green,
    }

    impl State for Light {
        const ALL: &'static [Self] = &[Self::Red, Self::Amber, Self::Green];

        fn byte(self) -> u8 {
            self as u8
        }
    }

    #[test]
    fn every_value_round_trips() {
        let light = AtomicState::new(Light::Red);
        for &value in Light::ALL {
            light.store(value, Ordering::Relaxed);
            assert_eq!(light.load(Ordering::Relaxed), value);
        }
        assert_eq!(light.swap(Light::Amber, Ordering::Relaxed), Light::Green);
        assert_eq!(light.load(Ordering::Relaxed), Light::Amber);
    }
}
