use std::sync::Arc;

use tower::Layer;

use super::config::Policy;
use super::{Builder, Hedge};
use crate::attempt::CloneRequest;
use crate::classify::ErrorsAsFailures;

/// Wraps services in [`Hedge`]; built with [`HedgeLayer::builder`].
///
/// Every service the layer makes shares its settings, its latency
/// histogram and its budget.
#[derive(Debug)]
pub struct HedgeLayer<C = ErrorsAsFailures, R = CloneRequest> {
    policy: Arc<Policy<C, R>>,
}

impl<C, R> Clone for HedgeLayer<C, R> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
        }
    }
}

impl HedgeLayer {
    /// A builder with the documented defaults (see [`Builder`]).
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C, R> HedgeLayer<C, R> {
    pub(super) fn from_policy(policy: Arc<Policy<C, R>>) -> Self {
        Self { policy }
    }

    /// The budget extra attempts draw from.
    pub fn budget(&self) -> &Arc<crate::budget::RetryBudget> {
        &self.policy.budget
    }

    /// The delay a request sent now would wait before its first hedge.
    pub fn current_delay(&self) -> std::time::Duration {
        self.policy.delay(tokio::time::Instant::now())
    }
}

impl<S, C, R> Layer<S> for HedgeLayer<C, R> {
    type Service = Hedge<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::from_policy(inner, self.policy.clone())
    }
}
