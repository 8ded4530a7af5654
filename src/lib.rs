#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

pub mod attempt;
pub mod backoff;
pub mod budget;
pub mod chaos;
pub mod circuit_breaker;
pub mod classify;
#[cfg(feature = "serde")]
pub mod config;
pub mod error;
pub mod fallback;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod health;
pub mod hedge;
#[cfg(feature = "http")]
pub mod http;
pub mod pool;
#[cfg(feature = "http")]
pub mod presets;
pub mod reload;
pub mod retry;

mod builder;
mod per_clone;
mod rng;
mod stats;
mod sync;

pub use self::builder::ServiceBuilderExt;
pub use self::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use self::error::BoxError;
pub use self::hedge::{Hedge, HedgeLayer};
pub use self::pool::Pool;
pub use self::retry::{Retry, RetryLayer};
