//! Classification: what an outcome means for the health of a dependency.
//!
//! Every layer asks the same question of a finished call — was it a success,
//! a failure, or neither; may another attempt help; did the server ask us to
//! back off — and [`Classify`] answers it once for all of them, returning a
//! [`Verdict`].
//!
//! # Why one trait for every layer
//!
//! A circuit breaker, a retry policy and an outlier detector that disagree on
//! what a failure is make a stack that fights itself: the retry layer retries
//! a `503` that the breaker counted as a success. With one classifier per
//! stack, they agree.
//!
//! Built-ins:
//! - [`ErrorsAsFailures`]: `Err` is a retryable failure, `Ok` a success — the
//!   default for services that are not HTTP.
//! - [`ServerErrorsAsFailures`] (feature `http`): `5xx`, `408` and `429` are
//!   failures, `Retry-After` becomes a pushback.
//! - Any closure `Fn(Result<&Res, &E>) -> Verdict`.
//!
//! - `GrpcErrorsAsFailures` (feature `grpc`): the gRPC status of
//!   trailers-only responses and of `tonic::Status` errors, and a status in
//!   trailers when the body ends ([`Classify::defer`]).
//!
//! Slowness is a separate signal: layers that care about it (the breaker's
//! slow-call rate) measure durations themselves.
//!
//! # Example
//!
//! ```
//! use steadfast::classify::{Classify, Verdict};
//!
//! // A database driver whose "not found" is a normal answer, not a failure.
//! #[derive(Debug)]
//! enum DbError { NotFound, Timeout, Broken }
//!
//! let classify = |result: Result<&String, &DbError>| match result {
//!     Ok(_) | Err(DbError::NotFound) => Verdict::success(),
//!     Err(DbError::Timeout) => Verdict::retryable_failure(),
//!     Err(DbError::Broken) => Verdict::failure(),
//! };
//!
//! assert!(classify.classify(Err(&DbError::Timeout)).is_retryable());
//! assert!(classify.classify(Err(&DbError::NotFound)).is_success());
//! assert!(!classify.classify(Err(&DbError::Broken)).is_retryable());
//! ```

#[cfg(feature = "grpc")]
pub(crate) mod grpc;
#[cfg(feature = "http")]
mod http;

#[cfg(feature = "grpc")]
pub use self::grpc::{GrpcErrorsAsFailures, PUSHBACK_HEADER};
#[cfg(feature = "http")]
pub use self::http::ServerErrorsAsFailures;

use std::time::Duration;

/// A classifier's cap on a server's pushback, checked: zero would drop
/// every pushback, which a classifier that reads none does plainly.
#[cfg(feature = "http")]
fn pushback_cap(max: Duration) -> Result<Duration, crate::error::ConfigError> {
    if max.is_zero() {
        return Err(crate::error::ConfigError::new(
            "max_pushback",
            "must be greater than zero",
        ));
    }
    Ok(max)
}

/// Whether an outcome counts for or against the health of a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The dependency did its job (even if the answer was "not found").
    Success,
    /// The dependency failed.
    Failure,
    /// Counts for neither: the call says nothing about the dependency's
    /// health (a request the caller cancelled, a client-side error).
    Ignored,
}

/// The meaning of one finished call: its [`Outcome`], whether another
/// attempt may help, and an optional delay the server asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    outcome: Outcome,
    retryable: bool,
    pushback: Option<Duration>,
}

impl Verdict {
    /// A success.
    pub const fn success() -> Self {
        Self::new(Outcome::Success, false)
    }

    /// A failure that another attempt would not fix.
    pub const fn failure() -> Self {
        Self::new(Outcome::Failure, false)
    }

    /// A failure that another attempt (perhaps on another replica) may fix.
    pub const fn retryable_failure() -> Self {
        Self::new(Outcome::Failure, true)
    }

    /// An outcome that counts for neither success nor failure.
    pub const fn ignored() -> Self {
        Self::new(Outcome::Ignored, false)
    }

    /// A verdict with the given outcome and retryability, and no pushback.
    pub const fn new(outcome: Outcome, retryable: bool) -> Self {
        Self {
            outcome,
            retryable,
            pushback: None,
        }
    }

    /// Sets the delay the server asked for before the next attempt.
    #[must_use]
    pub const fn with_pushback(mut self, delay: Duration) -> Self {
        self.pushback = Some(delay);
        self
    }

    /// Sets whether another attempt may help.
    #[must_use]
    pub const fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The outcome.
    pub const fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the outcome is [`Outcome::Success`].
    pub const fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Success)
    }

    /// Whether the outcome is [`Outcome::Failure`].
    pub const fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Failure)
    }

    /// Whether another attempt may help.
    pub const fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The delay the server asked for (`Retry-After`), already capped by the
    /// classifier that read it.
    pub const fn pushback(&self) -> Option<Duration> {
        self.pushback
    }
}

/// Decides what a finished call means.
///
/// Implemented for the built-in classifiers and for every closure
/// `Fn(Result<&Res, &E>) -> Verdict`.
pub trait Classify<Res, E> {
    /// Classifies one finished call.
    fn classify(&self, result: Result<&Res, &E>) -> Verdict;

    /// Defers the verdict on `response` to the end of its body, for a
    /// response whose outcome arrives only then (a gRPC status in trailers,
    /// after the messages): wraps the body so that the [`AtEnd`] made by
    /// `at_end` is told the verdict when the body ends, and returns `true`.
    ///
    /// Returns `false`, without calling `at_end`, when the outcome is known
    /// now, and [`classify`](Self::classify) judges it: the default, and
    /// what every classifier but `GrpcErrorsAsFailures` (feature `grpc`)
    /// does.
    ///
    /// The layers that record outcomes (the circuit breaker, a pool's
    /// replicas) ask it; the layers that decide on an answer (retry,
    /// hedge) do not: a response with data is committed.
    ///
    /// The response's type does not change (its body is wrapped inside its
    /// own type), so a stack's types are the same with or without it.
    ///
    /// (Not for `dyn Classify`, which judges at once.)
    fn defer<J: AtEnd>(&self, response: &mut Res, at_end: impl FnOnce() -> J) -> bool
    where
        Self: Sized,
    {
        let _ = (response, at_end);
        false
    }
}

/// A call whose verdict is told when its response's body ends (see
/// [`Classify::defer`]).
///
/// The layer that recorded the call keeps its part of it (a breaker's
/// admission, a replica's count of calls in flight) in its `AtEnd` until
/// then. Dropped untold (the body dropped before its end), the call counts
/// as neither a success nor a failure.
pub trait AtEnd: Send + 'static {
    /// The verdict, now that the body ended.
    fn verdict(self, verdict: Verdict);
}

impl<F, Res, E> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>) -> Verdict,
{
    fn classify(&self, result: Result<&Res, &E>) -> Verdict {
        self(result)
    }
}

/// `Err` is a retryable failure, `Ok` a success.
///
/// The default classifier for services that are not HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorsAsFailures;

impl ErrorsAsFailures {
    /// The classifier.
    pub const fn new() -> Self {
        Self
    }
}

impl<Res, E> Classify<Res, E> for ErrorsAsFailures {
    fn classify(&self, result: Result<&Res, &E>) -> Verdict {
        match result {
            Ok(_) => Verdict::success(),
            Err(_) => Verdict::retryable_failure(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_as_failures() {
        let c = ErrorsAsFailures::new();
        let ok = Classify::<u8, ()>::classify(&c, Ok(&1));
        assert!(ok.is_success() && !ok.is_retryable());
        let err = Classify::<u8, ()>::classify(&c, Err(&()));
        assert!(err.is_failure() && err.is_retryable());
        assert_eq!(err.pushback(), None);
    }

    #[test]
    fn closures_classify() {
        let c = |r: Result<&u8, &()>| match r {
            Ok(0) => Verdict::ignored(),
            Ok(_) => Verdict::success(),
            Err(()) => Verdict::failure().with_pushback(Duration::from_secs(2)),
        };
        assert_eq!(c.classify(Ok(&0)).outcome(), Outcome::Ignored);
        assert_eq!(
            c.classify(Err(&())).pushback(),
            Some(Duration::from_secs(2))
        );
        assert!(!c.classify(Err(&())).is_retryable());
    }
}
