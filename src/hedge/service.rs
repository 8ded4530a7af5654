use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

use super::config::Policy;
use super::future::ResponseFuture;
use crate::attempt::{CloneRequest, Replay, Share};
use crate::classify::{Classify, ErrorsAsFailures};
use crate::per_clone::{PerClone, take_ready};

/// Sends a request again when the first attempt is slow, and answers with
/// the first success; made by [`HedgeLayer`](super::HedgeLayer).
///
/// Errors are the inner service's, unchanged: when every attempt fails the
/// caller gets the last failure.
#[derive(Debug)]
pub struct Hedge<S, C = ErrorsAsFailures, R = CloneRequest> {
    inner: S,
    /// This clone's own handle on the shared policy.
    policy: PerClone<Policy<C, R>>,
}

impl<S: Clone, C, R> Clone for Hedge<S, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.for_clone(),
        }
    }
}

impl<S, C, R> Hedge<S, C, R> {
    pub(super) fn from_policy(inner: S, policy: Arc<Policy<C, R>>) -> Self {
        Self {
            inner,
            policy: PerClone::new(policy),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the layer.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, R, Req> Service<Req> for Hedge<S, C, R>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error>,
    R: Replay<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let policy = &*self.policy;
        // Under a retry, this is the retry's attempt: counted and marked
        // already. Alone, this layer counts and marks the original.
        // The time the request allows is the call's deadline (a hedge has
        // none of its own).
        let deadline = policy
            .replay
            .time_allowed(&req)
            .map(|allowed| crate::stats::later(Instant::now(), allowed));
        let mut share = Share::join(1 + policy.max_extra_attempts, &policy.budget, deadline);
        if share.is_outermost() {
            policy.replay.mark(&mut req, 1);
            if let Some(left) = share.time_left() {
                policy.replay.mark_time_left(&mut req, left);
            }
        }
        // No copy for a request that may not be sent again (the cap of a
        // retry above is spent).
        let template = if share.may_send_more() {
            policy.replay.replay(&req)
        } else {
            None
        };
        // The ready service takes this call and goes to the future for the
        // hedges.
        let mut service = take_ready(&mut self.inner);
        let first = share.call(|| service.call(req));
        let policy = self.policy.for_call();
        ResponseFuture::new(first, service, template, share, policy)
    }
}
