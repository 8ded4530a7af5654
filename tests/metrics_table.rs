//! The README's metrics table is the whole truth: every metric the crate's
//! source names is in it, every row names one the source emits, and the
//! names follow Prometheus' rules (counters end in `_total`, no gauge does).

use std::collections::BTreeSet;
use std::path::Path;

/// The `steadfast_…` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("steadfast_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric names in the library's source (the loom cfg excluded).
fn emitted() -> BTreeSet<String> {
    fn walk(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("the source folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                names.extend(metric_names(&text));
            }
        }
    }
    let mut names = BTreeSet::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut names,
    );
    names.remove("steadfast_loom");
    names
}

/// The table's rows: metric name and type.
fn documented() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let table = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("a Metrics section")
        .split("\n## ")
        .next()
        .expect("its text");
    table
        .lines()
        .filter(|l| l.starts_with("| `steadfast_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect()
}

#[test]
fn every_metric_emitted_is_in_the_table_and_every_row_is_emitted() {
    let rows: BTreeSet<String> = documented().into_iter().map(|(name, _)| name).collect();
    let emitted = emitted();
    assert!(!emitted.is_empty(), "the source names metrics");
    let missing: Vec<_> = emitted.difference(&rows).collect();
    let stale: Vec<_> = rows.difference(&emitted).collect();
    assert!(
        missing.is_empty(),
        "emitted but not in the README's table: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in the README's table but not emitted: {stale:?}"
    );
}

#[test]
fn names_follow_prometheus_rules() {
    for (name, kind) in documented() {
        match kind.as_str() {
            "counter" => assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            ),
            "gauge" => assert!(
                !name.ends_with("_total"),
                "gauge {name} must not end in _total"
            ),
            other => panic!("{name}: unknown type {other}"),
        }
    }
}
