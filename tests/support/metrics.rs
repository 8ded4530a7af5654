//! Reading what the crate recorded through `metrics`, by a readable key:
//! `name{label=value,…}` with the labels sorted.

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, Snapshotter};

/// The recorded values, by key.
pub struct Recorded(HashMap<String, DebugValue>);

impl Recorded {
    /// Everything `snapshotter` has seen so far.
    pub fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let key = key.key();
                    let mut labels: Vec<_> = key
                        .labels()
                        .map(|l| format!("{}={}", l.key(), l.value()))
                        .collect();
                    labels.sort();
                    (format!("{}{{{}}}", key.name(), labels.join(",")), value)
                })
                .collect(),
        )
    }

    /// Every key recorded.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The value under `key`; panics with the keys there are if missing.
    pub fn get(&self, key: &str) -> &DebugValue {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("no metric {key}; have {:?}", self.0.keys()))
    }
}
