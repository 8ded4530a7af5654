use tower::Layer;

use super::{Builder, Circuit, CircuitBreaker};
use crate::classify::ErrorsAsFailures;

/// Wraps services in a [`CircuitBreaker`] that all share one [`Circuit`].
///
/// Built with [`CircuitBreakerLayer::builder`]. Cloning the layer shares the
/// circuit too: every service made by any clone trips and recovers together.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    circuit: Circuit,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A builder with the documented defaults (see [`Builder`]).
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C> CircuitBreakerLayer<C> {
    pub(super) fn from_parts(circuit: Circuit, classifier: C) -> Self {
        Self {
            circuit,
            classifier,
        }
    }

    /// The circuit every service of this layer shares: read its state,
    /// subscribe to changes, force it open.
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.circuit.clone(), self.classifier.clone())
    }
}
