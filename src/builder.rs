//! `ServiceBuilder` methods for the crate's layers.

use tower::ServiceBuilder;
use tower::layer::util::Stack;

use crate::circuit_breaker::CircuitBreakerLayer;
use crate::fallback::FallbackLayer;
use crate::hedge::HedgeLayer;
use crate::retry::RetryLayer;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds the crate's layers to a [`ServiceBuilder`] by name.
///
/// The layers are built (and validated) first, so a stack never holds an
/// invalid configuration. Every method starts with `with_`, so none can be
/// shadowed by one of `ServiceBuilder`'s own (tower's `retry` feature adds
/// an inherent `retry`, which would win over a trait method of that name):
///
/// ```
/// use std::time::Duration;
/// use steadfast::ServiceBuilderExt;
/// use steadfast::circuit_breaker::CircuitBreakerLayer;
/// use steadfast::fallback::{self, FallbackLayer};
/// use steadfast::retry::RetryLayer;
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), steadfast::error::ConfigError> {
/// let svc = ServiceBuilder::new()
///     .with_fallback(FallbackLayer::new(fallback::value(0u64)))
///     .with_retry(RetryLayer::builder().max_attempts(3).build()?)
///     .with_circuit_breaker(CircuitBreakerLayer::builder().name("counter").build()?)
///     .timeout(Duration::from_millis(200))
///     .service_fn(|x: u64| async move { Ok::<_, std::io::Error>(x + 1) });
/// # let _ = svc;
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a circuit breaker.
    fn with_circuit_breaker<C>(
        self,
        layer: CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C>, L>>;
    /// Adds retries under a budget.
    fn with_retry<C, R>(
        self,
        layer: RetryLayer<C, R>,
    ) -> ServiceBuilder<Stack<RetryLayer<C, R>, L>>;
    /// Adds hedged requests.
    fn with_hedge<C, R>(
        self,
        layer: HedgeLayer<C, R>,
    ) -> ServiceBuilder<Stack<HedgeLayer<C, R>, L>>;
    /// Adds a fallback.
    fn with_fallback<F, C>(
        self,
        layer: FallbackLayer<F, C>,
    ) -> ServiceBuilder<Stack<FallbackLayer<F, C>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn with_circuit_breaker<C>(
        self,
        layer: CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C>, L>> {
        self.layer(layer)
    }

    fn with_retry<C, R>(
        self,
        layer: RetryLayer<C, R>,
    ) -> ServiceBuilder<Stack<RetryLayer<C, R>, L>> {
        self.layer(layer)
    }

    fn with_hedge<C, R>(
        self,
        layer: HedgeLayer<C, R>,
    ) -> ServiceBuilder<Stack<HedgeLayer<C, R>, L>> {
        self.layer(layer)
    }

    fn with_fallback<F, C>(
        self,
        layer: FallbackLayer<F, C>,
    ) -> ServiceBuilder<Stack<FallbackLayer<F, C>, L>> {
        self.layer(layer)
    }
}
