//! The values of the file format: durations with units, and rules that can
//! be switched off.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with its units (`"250ms"`, `"1m30s"`); a bare number
/// is refused, since nobody can tell whether it meant seconds or
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Human(pub(super) Duration);

impl Serialize for Human {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `1m 30s` as humantime writes it, without the spaces: the
        // GEP-2257 form, which reads back the same.
        let text = humantime::format_duration(self.0)
            .to_string()
            .replace(' ', "");
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HumanVisitor;

        impl Visitor<'_> for HumanVisitor {
            type Value = Human;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration with its unit, like \"250ms\", \"30s\" or \"1m30s\" (a bare number is not a duration)",
                )
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Human, E> {
                let text = text.trim();
                if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                    // Some formats (YAML) hand a bare number over as text.
                    return Err(E::custom(format!(
                        "a bare number is not a duration: write \"{text}s\" or \"{text}ms\""
                    )));
                }
                humantime::parse_duration(text)
                    .map(Human)
                    .map_err(|err| E::custom(format!("invalid duration {text:?}: {err}")))
            }
        }

        deserializer.deserialize_str(HumanVisitor)
    }
}

/// The word that switches a rule off.
const OFF: &str = "off";

/// The string `"off"`, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Off;

impl Serialize for Off {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(OFF)
    }
}

impl<'de> Deserialize<'de> for Off {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OffVisitor;

        impl Visitor<'_> for OffVisitor {
            type Value = Off;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{OFF:?}")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Off, E> {
                if text == OFF {
                    Ok(Off)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(text), &self))
                }
            }
        }

        deserializer.deserialize_str(OffVisitor)
    }
}

/// A rule's setting, or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "the rule's setting, or \"off\" to switch it off"
)]
pub(super) enum Toggle<T> {
    Off(Off),
    On(T),
}

impl<T> Toggle<T> {
    pub(super) fn from_option(value: Option<T>) -> Self {
        value.map_or(Self::Off(Off), Self::On)
    }

    pub(super) fn into_option(self) -> Option<T> {
        match self {
            Self::Off(Off) => None,
            Self::On(value) => Some(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Duration, String> {
        Human::deserialize(serde_json::Value::String(text.to_owned()))
            .map(|h| h.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn durations_read_with_their_units_and_write_back_the_same() {
        assert_eq!(read("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(read("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(read("1h 2m"), Ok(Duration::from_secs(3_720)));
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(1_500),
            Duration::from_secs(86_400 * 400),
            Duration::MAX,
        ] {
            let text = serde_json::to_value(Human(d)).expect("written");
            let text = text.as_str().expect("a string").to_owned();
            assert_eq!(read(&text), Ok(d), "{text}");
        }
    }

    #[test]
    fn a_bare_number_is_not_a_duration() {
        let err = Human::deserialize(serde_json::json!(5)).expect_err("a number");
        assert!(
            err.to_string().contains("a bare number is not a duration"),
            "{err}"
        );
        assert!(read("5").is_err());
        assert!(read("").is_err());
        assert!(read("-1s").is_err());
    }
}
