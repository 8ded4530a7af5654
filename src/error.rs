//! Errors: the boxed error layers return, configuration errors, and the
//! small concrete failures the crate's layers produce on their own.
//!
//! A layer that adds no failure of its own passes the inner error through
//! unchanged. A layer that can fail on its own (the circuit breaker rejects
//! calls) returns [`BoxError`], tower's convention, so stacks compose with
//! `tower::timeout`, `tower::limit` and axum's `HandleErrorLayer`. Find the
//! crate's own failure with [`downcast_ref`](std::error::Error):
//!
//! ```
//! use steadfast::error::{BoxError, CircuitOpen};
//!
//! fn is_open(err: &BoxError) -> bool {
//!     err.downcast_ref::<CircuitOpen>().is_some()
//! }
//! # assert!(!is_open(&"other".into()));
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// The type-erased error returned by layers that can fail on their own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A configuration value broke a rule; names the field and the rule.
///
/// Every builder in the crate validates when it is built and returns this
/// instead of panicking or silently clamping the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{field}` {rule}")]
pub struct ConfigError {
    field: Cow<'static, str>,
    rule: Cow<'static, str>,
}

impl ConfigError {
    /// A new error for `field` breaking `rule` (for example
    /// `ConfigError::new("failure_rate", "must be in 0..=1, got 1.5")`).
    pub fn new(field: impl Into<Cow<'static, str>>, rule: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The configuration field that is invalid, as the builder method names it.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule the value broke, in words.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// Prefixes the field with the name of the enclosing setting
    /// (`open_backoff` + `factor` gives `open_backoff.factor`).
    pub(crate) fn within(self, parent: &'static str) -> Self {
        Self {
            field: Cow::Owned(format!("{parent}.{}", self.field)),
            rule: self.rule,
        }
    }
}

/// The circuit breaker rejected the call without sending it.
///
/// Returned while a circuit is open, forced open, or half-open with all its
/// probe slots taken. [`retry_after`](Self::retry_after) says when the circuit
/// may admit calls again, where that is known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("circuit `{name}` is open")]
pub struct CircuitOpen {
    name: Arc<str>,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) fn new(name: Arc<str>, retry_after: Option<Duration>) -> Self {
        Self { name, retry_after }
    }

    /// The name given to the circuit breaker.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long until the circuit lets a probe through, when known.
    ///
    /// `None` when the circuit is forced open by an operator, or half-open
    /// and waiting for its probes to finish.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// No replica of a pool could take the request.
///
/// Every replica is ejected, failing its health checks, avoided after a
/// server's pushback, drained or disabled — or the pool is empty.
/// [`retry_after`](Self::retry_after) says when the first may be back, where
/// that is known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no healthy replica in pool `{name}`")]
pub struct NoHealthyReplica {
    name: Arc<str>,
    retry_after: Option<Duration>,
}

impl NoHealthyReplica {
    pub(crate) fn new(name: Arc<str>, retry_after: Option<Duration>) -> Self {
        Self { name, retry_after }
    }

    /// The name given to the pool.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long until the first replica may take requests again, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_field_and_rule() {
        let err = ConfigError::new("factor", "must be at least 1, got 0.5").within("open_backoff");
        assert_eq!(err.field(), "open_backoff.factor");
        assert_eq!(
            err.to_string(),
            "invalid configuration: `open_backoff.factor` must be at least 1, got 0.5"
        );
    }

    #[test]
    fn circuit_open_is_a_box_error() {
        let err: BoxError = Box::new(CircuitOpen::new("db".into(), Some(Duration::from_secs(3))));
        let open = err.downcast_ref::<CircuitOpen>().expect("a CircuitOpen");
        assert_eq!(open.name(), "db");
        assert_eq!(open.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(err.to_string(), "circuit `db` is open");
    }
}
