//! Reload at run time, driven by a `tokio::sync::watch` channel of
//! settings: [`follow`].
//!
//! Every handle takes new settings with `apply`, atomically and keeping
//! what it learnt: [`Circuit::apply`](crate::circuit_breaker::Circuit::apply),
//! [`PoolHandle::apply`](crate::pool::PoolHandle::apply),
//! [`RetryBudget::apply`](crate::budget::RetryBudget::apply). Settings that
//! are refused change nothing. Where the settings come from (a file
//! watcher, an admin endpoint, a control plane) is the application's: it
//! sends them into a `watch` channel, and [`follow`] applies each one.
//!
//! ```
//! use steadfast::CircuitBreakerLayer;
//! use steadfast::circuit_breaker;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), steadfast::error::ConfigError> {
//! let settings = CircuitBreakerLayer::builder().name("db");
//! let layer = settings.clone().build()?;
//! let circuit = layer.circuit().clone();
//! let (tx, rx) = tokio::sync::watch::channel(settings.clone());
//! let reload = tokio::spawn(steadfast::reload::follow(
//!     rx,
//!     move |s: &circuit_breaker::Builder| circuit.apply(s),
//!     |err| eprintln!("settings refused, the old ones stay: {err}"),
//! ));
//! let _ = tx.send_replace(settings.failure_rate(0.25));
//! drop(tx); // `follow` ends when the sender is gone
//! reload.await.expect("no panic");
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use tokio::sync::watch;

/// Applies every settings value sent on `settings` after the one it holds
/// when called (the handle was built from that one) with `apply`, and
/// hands a refusal to `refused`; ends when the sender is dropped.
///
/// Values sent faster than they are applied coalesce to the latest, as
/// with any `watch` channel: only the newest settings matter.
pub fn follow<T, E>(
    mut settings: watch::Receiver<T>,
    mut apply: impl FnMut(&T) -> Result<(), E> + Send + 'static,
    mut refused: impl FnMut(E) + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    T: Clone + Send + Sync + 'static,
    E: 'static,
{
    settings.mark_unchanged();
    async move {
        while settings.changed().await.is_ok() {
            // A copy: the channel's lock is not held while the settings are
            // applied (a sender would wait on it).
            let next = settings.borrow_and_update().clone();
            if let Err(err) = apply(&next) {
                refused(err);
            }
        }
    }
}
