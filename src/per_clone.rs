//! Shared state behind a handle that each service clone owns separately,
//! and tower's "the ready service takes the call" swap.
//!
//! A response future that needs shared state (a policy, a budget) must own
//! a reference to it. If every future cloned the one shared `Arc`, threads
//! would contend on its reference count; with a handle per service clone,
//! a call bumps only its own clone's count.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A per-clone handle on shared `T` (see the module docs).
pub(crate) struct PerClone<T>(Arc<Handle<T>>);

struct Handle<T>(Arc<T>);

impl<T> PerClone<T> {
    pub(crate) fn new(shared: Arc<T>) -> Self {
        Self(Arc::new(Handle(shared)))
    }

    /// A new handle for a cloned service: it starts with its own count.
    pub(crate) fn for_clone(&self) -> Self {
        Self::new(self.0.0.clone())
    }

    /// A reference for one call's future (bumps only this clone's count).
    #[inline]
    pub(crate) fn for_call(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Deref for PerClone<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0.0
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
