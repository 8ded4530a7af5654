use std::sync::Arc;

use tower::Layer;

use super::config::Policy;
use super::{Builder, Retry};
use crate::attempt::CloneRequest;
use crate::classify::ErrorsAsFailures;

/// Wraps services in [`Retry`]; built with [`RetryLayer::builder`].
///
/// Every service the layer makes shares its settings and its budget.
#[derive(Debug)]
pub struct RetryLayer<C = ErrorsAsFailures, R = CloneRequest> {
    policy: Arc<Policy<C, R>>,
}

impl<C, R> Clone for RetryLayer<C, R> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
        }
    }
}

impl RetryLayer {
    /// A builder with the documented defaults (see [`Builder`]).
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C, R> RetryLayer<C, R> {
    pub(super) fn from_policy(policy: Arc<Policy<C, R>>) -> Self {
        Self { policy }
    }

    /// The budget retries draw from.
    pub fn budget(&self) -> &Arc<crate::budget::RetryBudget> {
        &self.policy.budget
    }
}

impl<S, C, R> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_policy(inner, self.policy.clone())
    }
}
