//! How a request is copied for another attempt, and how attempts are marked.

use std::sync::{Arc, Mutex};

/// Copies a request for another attempt, or says it must not be sent again.
///
/// The retry layer asks for a copy before the first attempt is sent (so it
/// keeps one to replay) and again before each retry, so a copy can be
/// refused late — a [`ReplayBody`](crate::http::ReplayBody) that passed its
/// cap during the first attempt refuses then.
///
/// Built-ins: [`CloneRequest`] for any `Clone` request, and (feature
/// `http`) [`HttpReplay`](crate::http::HttpReplay), which also applies the
/// idempotency rules and marks each attempt with an [`Attempt`].
pub trait Replay<Req> {
    /// A copy of `req` for another attempt, or `None` when it must not be
    /// sent again.
    fn replay(&self, req: &Req) -> Option<Req>;

    /// Marks `req` as attempt `number` (1 for the first) before it is sent.
    /// The default does nothing.
    fn mark(&self, req: &mut Req, number: u32) {
        let _ = (req, number);
    }
}

/// Replays any `Clone` request by cloning it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloneRequest;

impl CloneRequest {
    /// The strategy.
    pub const fn new() -> Self {
        Self
    }
}

impl<Req: Clone> Replay<Req> for CloneRequest {
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// Marks an HTTP request with its attempt number and the replicas tried so
/// far, as a request extension.
///
/// The retry and hedge layers set the number; a replica pool below them
/// records the replica each attempt went to (with [`Attempt::record`]) and
/// reads [`Attempt::tried`] to send the next attempt elsewhere. Copies of one
/// request share the record of tried replicas.
#[derive(Debug, Clone)]
pub struct Attempt {
    number: u32,
    tried: Arc<Mutex<Vec<Arc<str>>>>,
}

impl Attempt {
    /// The first attempt of a request.
    pub fn first() -> Self {
        Self {
            number: 1,
            tried: Arc::default(),
        }
    }

    /// The same request, attempt `number`.
    #[must_use]
    pub fn with_number(&self, number: u32) -> Self {
        Self {
            number,
            tried: self.tried.clone(),
        }
    }

    /// The attempt number, 1 for the first.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Whether this is a retry or a hedge rather than the first attempt.
    pub fn is_repeat(&self) -> bool {
        self.number > 1
    }

    /// The replicas earlier attempts of this request went to.
    pub fn tried(&self) -> Vec<Arc<str>> {
        self.tried.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records that an attempt of this request went to `replica`.
    pub fn record(&self, replica: Arc<str>) {
        self.tried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(replica);
    }
}
