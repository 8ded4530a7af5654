//! Configuration files (feature `serde`): every builder of the crate read
//! from TOML, YAML, JSON or any other `serde` format, through the same
//! validation as the builder's own `build`.
//!
//! Each builder (and each preset) implements `Deserialize` and
//! `Serialize`; read one with your format's crate, and build it as you
//! would a builder made in code (a classifier or a budget object is set on
//! the builder after reading, as in code):
//!
//! ```
//! use steadfast::circuit_breaker;
//!
//! let file = r#"
//!     name = "payments"
//!     failure_rate = 0.25
//!     window = { span = "30s", buckets = 10 }
//!     open_backoff = { base = "5s", cap = "1m", jitter = "equal" }
//!     max_pushback = "1m30s"
//! "#;
//! let breaker: circuit_breaker::Builder = steadfast::config::from_deserializer(
//!     toml::Deserializer::parse(file)?,
//! )?;
//! let layer = breaker.build()?;
//! assert_eq!(layer.circuit().name(), "payments");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The format
//!
//! - Every field is optional; one left out keeps the builder's default.
//!   An unknown field is an error (a typo is not silently ignored).
//! - Durations are strings with units: `"250ms"`, `"30s"`, `"1m30s"`,
//!   `"2h"` (the grammar of the Gateway API's GEP-2257, which `humantime`
//!   reads, with `us` and `ns` too). A bare number is an error, not
//!   seconds.
//! - A rule that can be switched off takes the string `"off"`
//!   (`failure_rate = "off"`, `deadline = "off"`).
//! - A backoff is `{ constant = "5s" }` or
//!   `{ base = "5s", cap = "1m", factor = 2.0 }`, either with `jitter`
//!   (`"none"`, `"full"`, `"equal"`, `"decorrelated"`) and `seed`.
//! - A breaker's window is `{ size = 100 }` (the last calls) or
//!   `{ span = "30s", buckets = 10 }` (the last span of time).
//! - A hedge delay is a duration (fixed) or a table of the adaptive
//!   delay's settings (`{ quantile = 0.95, floor = "1ms", ceiling = "1s" }`).
//! - A pool's `when_none_healthy` is `"fail_fast"` or `{ wait = "2s" }`.
//!
//! `examples/steadfast.toml` in the repository is a complete file, every
//! field set; a test reads it.
//!
//! # Errors
//!
//! [`from_deserializer`] names the whole path of the field at fault:
//! `upstreams.payments.retry.budget.ratio: must be in 0..=1000, got 1500`.
//! Reading a builder straight with the format's own function works too;
//! its error then names the field within the section only.

mod builders;
mod value;

/// The last refusal of a builder read on this thread: serde carries an
/// error as text only, and this keeps the field it names.
mod refusal {
    use std::cell::RefCell;

    use crate::error::ConfigError;

    thread_local! {
        static LAST: RefCell<Option<ConfigError>> = const { RefCell::new(None) };
    }

    pub(super) fn record(err: ConfigError) {
        LAST.with(|last| *last.borrow_mut() = Some(err));
    }

    pub(super) fn take() -> Option<ConfigError> {
        LAST.with(|last| last.borrow_mut().take())
    }
}

use std::fmt;

use serde::Deserialize;

use crate::error::ConfigError;

/// A configuration file that could not be read: where, and why.
///
/// Its display is `path.to.field: what is wrong` (or only the message, for
/// an error at the top of the file, such as a syntax error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileError {
    path: String,
    message: String,
}

impl ConfigFileError {
    /// The dotted path of the field at fault (empty for the whole file).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigFileError {}

/// Reads `T` (a builder, a preset, or a type of your own holding them)
/// from `deserializer`, with the path of the field at fault in the error.
///
/// # Errors
///
/// A [`ConfigFileError`]: the syntax, an unknown field, a value of the
/// wrong kind (a bare number for a duration), or a value the builder's
/// validation refuses.
pub fn from_deserializer<'de, T, D>(deserializer: D) -> Result<T, ConfigFileError>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    let _ = refusal::take();
    let result = serde_path_to_error::deserialize(deserializer);
    let refused = refusal::take();
    result.map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        located(path, &err.into_inner().to_string(), refused)
    })
}

/// The error for `message` found at `path`. When it is a builder's
/// `refusal` (the format's text holds the refusal's), the path goes on to
/// the field the refusal names, and the message is its rule alone.
fn located(path: String, message: &str, refusal: Option<ConfigError>) -> ConfigFileError {
    match refusal.filter(|r| message.contains(&r.to_string())) {
        Some(refusal) => ConfigFileError {
            path: if path.is_empty() {
                refusal.field().to_owned()
            } else {
                format!("{path}.{}", refusal.field())
            },
            message: refusal.rule().to_owned(),
        },
        None => ConfigFileError {
            path,
            message: message.trim_end().to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_ends_the_path_at_its_field() {
        let ratio = ConfigError::new("ratio", "must be in 0..=1000, got 1500");
        let text = format!("parse error at line 3\n{ratio}\n");
        let err = located(
            "upstreams.payments.retry.budget".to_owned(),
            &text,
            Some(ratio),
        );
        assert_eq!(
            err.to_string(),
            "upstreams.payments.retry.budget.ratio: must be in 0..=1000, got 1500"
        );
        let name = ConfigError::new("name", "must not be empty");
        let err = located(String::new(), &name.to_string(), Some(name));
        assert_eq!(err.to_string(), "name: must not be empty");
        let stale = ConfigError::new("x", "an earlier refusal");
        let err = located("a.b".to_owned(), "unknown field `x`", Some(stale));
        assert_eq!(
            err.to_string(),
            "a.b: unknown field `x`",
            "a refusal not in the text is not used"
        );
    }
}
