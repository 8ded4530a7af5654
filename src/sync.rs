//! A small shim over the atomics the crate's shared state uses, so that the
//! state machines can be model-checked with `loom` under `--cfg steadfast_loom`
//! (a crate-specific cfg: the global `--cfg loom` also changes how tokio builds).

#[cfg(steadfast_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64};

#[cfg(not(steadfast_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64};

pub(crate) use std::sync::atomic::Ordering;
