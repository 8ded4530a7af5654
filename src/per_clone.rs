//! Shared state behind a handle that each thread's service clones own
//! separately, and tower's "the ready service takes the call" swap.
//!
//! A response future that needs shared state (a policy, a circuit) must own
//! a reference to it. If every future cloned the one shared `Arc`, threads
//! would contend on its reference count. So a service holds a *handle* on
//! the shared state, and a call bumps only the handle's count.
//!
//! Clones share their original's handle: a layer above clones the service
//! for every call (tower's contract, see [`take_ready`]), and a fresh
//! handle per clone would be an allocation per call. A clone that is used
//! on another thread than its handle was made for (a service cloned per
//! task, and the task spawned) takes a handle of its own at its first call
//! there: one allocation, then its calls contend with no other thread's.

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A handle on shared `T` (see the module docs).
pub(crate) struct PerClone<T> {
    handle: Arc<Handle<T>>,
    /// The thread the handle was made for.
    thread: u64,
}

struct Handle<T>(Arc<T>);

/// This thread's number, for telling threads apart cheaply (a
/// `std::thread::ThreadId` costs a reference count to read).
fn this_thread() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static THIS: Cell<u64> = const { Cell::new(0) };
    }
    THIS.with(|this| {
        if this.get() == 0 {
            this.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        this.get()
    })
}

impl<T> PerClone<T> {
    pub(crate) fn new(shared: Arc<T>) -> Self {
        Self {
            handle: Arc::new(Handle(shared)),
            thread: this_thread(),
        }
    }

    /// A handle for a cloned service: the same one, until it is used on
    /// another thread.
    pub(crate) fn for_clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            thread: self.thread,
        }
    }

    /// A reference for one call's future: bumps only this thread's handle.
    #[inline]
    pub(crate) fn for_call(&mut self) -> Self {
        let thread = this_thread();
        if thread != self.thread {
            // First call on another thread: a handle of its own there.
            *self = Self::new(self.handle.0.clone());
        }
        self.for_clone()
    }
}

impl<T> Deref for PerClone<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.handle.0
    }
}

impl<T: fmt::Debug> fmt::Debug for PerClone<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// tower's contract: the service that was polled ready takes the call; a
/// fresh clone stays behind for the next `poll_ready`. Returns the ready one.
#[inline]
pub(crate) fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    #[test]
    fn clones_share_a_handle_until_used_on_another_thread() {
        let mut original = PerClone::new(Arc::new(7));
        let clone = original.for_clone();
        assert!(Arc::ptr_eq(&original.handle, &clone.handle));
        let call = original.for_call();
        assert!(Arc::ptr_eq(&original.handle, &call.handle), "same thread");
        let first = Arc::as_ptr(&original.handle) as usize;
        let mut moved = clone;
        let elsewhere = std::thread::spawn(move || {
            let call = moved.for_call();
            let own = Arc::as_ptr(&moved.handle) as usize != first;
            (own && Arc::ptr_eq(&moved.handle, &call.handle), *call)
        });
        let (own, value) = elsewhere.join().unwrap();
        assert!(own && value == 7, "a handle of its own on its new thread");
    }
}
