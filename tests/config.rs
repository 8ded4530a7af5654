//! Configuration files: the repository's complete example file reads and
//! builds; every config type survives a round trip through TOML, YAML and
//! JSON; and a table of invalid inputs is refused, each with the path of
//! the field at fault and the rule it broke.

#![cfg(all(feature = "serde", feature = "http"))]

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use steadfast::backoff::{Backoff, Jitter};
use steadfast::circuit_breaker::{self, SlidingWindow};
use steadfast::config::{ConfigFileError, from_deserializer};
use steadfast::health::HealthChecks;
use steadfast::hedge::{self, HedgeDelay};
use steadfast::pool::{self, OutlierDetection, Replica, WhenNoneHealthy};
use steadfast::presets::{HttpClient, ReplicaStack};
use steadfast::{CircuitBreakerLayer, HedgeLayer, Pool, RetryLayer, budget, retry};

/// The example file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    upstreams: Upstreams,
    layers: Layers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Upstreams {
    payments: HttpClient,
    search: ReplicaStack,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layers {
    breaker: circuit_breaker::Builder,
    retry: retry::Builder,
    hedge: hedge::Builder,
    budget: budget::Builder,
    pool: pool::Builder,
}

fn toml_file<T: DeserializeOwned>(text: &str) -> Result<T, ConfigFileError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        // A syntax error has no path: only the parser's message.
        panic!("not TOML: {e}")
    })?;
    from_deserializer(de)
}

#[test]
fn the_example_file_reads_and_every_part_builds() {
    let text = include_str!("../examples/steadfast.toml");
    let file: File = toml_file(text).expect("the example file is valid");
    let Layers {
        breaker,
        retry,
        hedge,
        budget,
        pool,
    } = file.layers;
    let layer = breaker.build().expect("the breaker builds");
    assert_eq!(layer.circuit().name(), "db");
    retry.build().expect("the retry builds");
    hedge.build().expect("the hedge builds");
    let budget = budget.build().expect("the budget builds");
    assert_eq!(budget.ratio(), 0.2);
    let replicas = [(
        "a",
        Replica::new(tower::service_fn(|()| async {
            Ok::<_, std::io::Error>(())
        })),
    )];
    let pool = pool.build(replicas).expect("the pool builds");
    assert_eq!(pool.handle().snapshot().len(), 1);
    file.upstreams
        .payments
        .build()
        .expect("the payments preset builds");
    let search = file
        .upstreams
        .search
        .build([(
            "a",
            Replica::new(tower::service_fn(|_: http::Request<String>| async {
                Ok::<_, std::io::Error>(http::Response::new(String::new()))
            })),
        )])
        .expect("the search preset builds");
    assert_eq!(search.budget.ratio(), 0.2);
}

#[test]
fn the_example_file_sets_every_field() {
    // Written back, each section of the example has every field a builder
    // writes: the example leaves none out.
    let text = include_str!("../examples/steadfast.toml");
    let file: File = toml_file(text).expect("valid");
    let written: toml::Value = toml::Value::try_from(serde_json::json!({
        "breaker": file.layers.breaker,
        "retry": file.layers.retry,
        "hedge": file.layers.hedge,
        "budget": file.layers.budget,
        "pool": file.layers.pool,
        "payments": file.upstreams.payments,
        "search": file.upstreams.search,
    }))
    .expect("written");
    let raw: toml::Value = toml::from_str(text).expect("TOML");
    let raw = |section: &str, name: &str| raw[section][name].clone();
    for (name, section) in [
        ("breaker", "layers"),
        ("retry", "layers"),
        ("hedge", "layers"),
        ("budget", "layers"),
        ("pool", "layers"),
        ("payments", "upstreams"),
        ("search", "upstreams"),
    ] {
        let in_file = raw(section, name);
        let in_file = in_file.as_table().expect("a table");
        for key in written[name].as_table().expect("a table").keys() {
            assert!(
                in_file.contains_key(key),
                "{section}.{name}.{key} is not in the example file"
            );
        }
    }
}

/// Written and read back in TOML, YAML and JSON, a value writes the same.
fn round_trip<T: Serialize + DeserializeOwned>(value: &T) {
    let first = serde_json::to_value(value).expect("written");
    let toml_text = toml::to_string(value).expect("TOML");
    let from_toml: T = toml::from_str(&toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
    assert_eq!(
        serde_json::to_value(&from_toml).expect("written"),
        first,
        "TOML:\n{toml_text}"
    );
    let yaml_text = serde_yaml::to_string(value).expect("YAML");
    let from_yaml: T =
        serde_yaml::from_str(&yaml_text).unwrap_or_else(|e| panic!("{e}\n{yaml_text}"));
    assert_eq!(
        serde_json::to_value(&from_yaml).expect("written"),
        first,
        "YAML:\n{yaml_text}"
    );
    let json_text = serde_json::to_string(value).expect("JSON");
    let from_json: T = serde_json::from_str(&json_text).expect("JSON");
    assert_eq!(
        serde_json::to_value(&from_json).expect("written"),
        first,
        "JSON:\n{json_text}"
    );
}

#[test]
fn every_config_type_survives_a_round_trip() {
    // Defaults, and settings far from them, extremes included.
    round_trip(&CircuitBreakerLayer::builder());
    round_trip(
        &CircuitBreakerLayer::builder()
            .name("x")
            .no_failure_rate()
            .slow_calls(Duration::from_nanos(1), 1.0)
            .consecutive_failures(1)
            .window(SlidingWindow::time_with_buckets(
                Duration::from_secs(86_400),
                10_000,
            ))
            .min_calls(1)
            .open_backoff(Backoff::constant(Duration::MAX).seed(u64::MAX))
            .half_open_probes(1)
            .max_pushback(Duration::ZERO),
    );
    round_trip(&RetryLayer::builder());
    round_trip(
        &RetryLayer::builder()
            .max_attempts(100)
            .backoff(
                Backoff::exponential(Duration::from_micros(1), Duration::MAX)
                    .factor(1.5)
                    .jitter(Jitter::Decorrelated),
            )
            .deadline(Duration::from_millis(1_500))
            .max_pushback(Duration::MAX)
            .budget(std::sync::Arc::new(
                steadfast::budget::RetryBudget::builder()
                    .ratio(0.0)
                    .min_per_sec(1)
                    .build()
                    .expect("a valid budget"),
            )),
    );
    round_trip(&HedgeLayer::builder());
    round_trip(
        &HedgeLayer::builder()
            .delay(HedgeDelay::Fixed(Duration::from_millis(20)))
            .max_extra_attempts(10),
    );
    round_trip(
        &HedgeLayer::builder().delay(
            HedgeDelay::adaptive()
                .quantile(0.5)
                .floor(Duration::from_nanos(1))
                .ceiling(Duration::MAX)
                .build(),
        ),
    );
    round_trip(
        &steadfast::budget::RetryBudget::builder()
            .ratio(1000.0)
            .ttl(Duration::from_secs(3600)),
    );
    round_trip(&Pool::builder());
    round_trip(
        &Pool::builder()
            .local_zone("z")
            .overprovisioning(100.0)
            .panic_threshold(0.0)
            .failback_after(Duration::ZERO)
            .when_none_healthy(WhenNoneHealthy::Wait(Duration::MAX))
            .outlier(
                OutlierDetection::default()
                    .consecutive_failures(None)
                    .failure_percentage(None)
                    .success_rate_stdev(None)
                    .latency_factor(None),
            )
            .circuit_breaker(CircuitBreakerLayer::builder())
            .health_checks(HealthChecks::default().jitter(0.5))
            .seed(0),
    );
    round_trip(&HttpClient::new("payments"));
    round_trip(&HttpClient::new("payments").total_timeout(Duration::MAX));
    round_trip(&ReplicaStack::new("search"));
    round_trip(
        &ReplicaStack::new("search")
            .hedge(HedgeDelay::Fixed(Duration::from_millis(5)))
            .health_checks(HealthChecks::default())
            .local_zone("a")
            .failback_after(Duration::from_secs(1))
            .circuit_breaker(CircuitBreakerLayer::builder().consecutive_failures(3)),
    );
}

/// Every section an invalid input may sit in, with the path above it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Doc {
    breaker: Option<circuit_breaker::Builder>,
    retry: Option<retry::Builder>,
    hedge: Option<hedge::Builder>,
    budget: Option<budget::Builder>,
    pool: Option<pool::Builder>,
    upstreams: Option<BTreeMap<String, HttpClient>>,
    stacks: Option<BTreeMap<String, ReplicaStack>>,
}

#[test]
fn invalid_inputs_are_refused_naming_the_field() {
    // (input, the path of the field at fault, words of the message)
    let cases: &[(&str, &str, &str)] = &[
        // Durations.
        (
            "[breaker]\nmax_pushback = 60",
            "breaker.max_pushback",
            "bare number",
        ),
        (
            "[breaker]\nmax_pushback = \"60\"",
            "breaker.max_pushback",
            "bare number",
        ),
        (
            "[breaker]\nmax_pushback = \"a minute\"",
            "breaker.max_pushback",
            "invalid duration",
        ),
        (
            "[breaker]\nmax_pushback = \"-1s\"",
            "breaker.max_pushback",
            "invalid duration",
        ),
        ("[retry]\ndeadline = 5", "retry.deadline", "\"off\""),
        // Unknown fields, everywhere.
        (
            "[breaker]\nfailure_ratee = 0.5",
            "breaker.failure_ratee",
            "unknown field",
        ),
        (
            "[retry]\nbackoff = { base = \"1s\", cap = \"2s\", jiter = \"full\" }",
            "retry.backoff.jiter",
            "unknown field",
        ),
        (
            "[pool.outlier]\nejections = 3",
            "pool.outlier.ejections",
            "unknown field",
        ),
        (
            "[upstreams.payments]\nretries = 3",
            "upstreams.payments.retries",
            "unknown field",
        ),
        (
            "[stacks.search.hedge]\nquantile = 0.9",
            "stacks.search.hedge.quantile",
            "unknown field",
        ),
        ("[nonsense]\nx = 1", "nonsense", "unknown field"),
        // The breaker's rules.
        (
            "[breaker]\nfailure_rate = 1.5",
            "breaker.failure_rate",
            "must be in (0, 1]",
        ),
        (
            "[breaker]\nfailure_rate = 0",
            "breaker.failure_rate",
            "must be in (0, 1]",
        ),
        (
            "[breaker]\nfailure_rate = \"of\"",
            "breaker.failure_rate",
            "\"off\"",
        ),
        (
            "[breaker]\nfailure_rate = \"off\"",
            "breaker.failure_rate",
            "at least one rule must be on",
        ),
        (
            "[breaker]\nslow_calls = { threshold = \"0s\", rate = 0.5 }",
            "breaker.slow_calls.threshold",
            "greater than zero",
        ),
        (
            "[breaker]\nconsecutive_failures = 0",
            "breaker.consecutive_failures",
            "at least 1",
        ),
        (
            "[breaker]\nwindow = { size = 0 }",
            "breaker.window.size",
            "must be in 1..=",
        ),
        (
            "[breaker]\nwindow = { size = 10 }\nmin_calls = 11",
            "breaker.min_calls",
            "at most the window size",
        ),
        (
            "[breaker]\nwindow = { size = 10, span = \"1s\" }",
            "breaker.window.size",
            "leave out span",
        ),
        (
            "[breaker]\nwindow = {}",
            "breaker.window.size",
            "or span is needed",
        ),
        (
            "[breaker]\nwindow = { span = \"5ms\", buckets = 10 }",
            "breaker.window.span",
            "at least 1 ms",
        ),
        (
            "[breaker]\nhalf_open_probes = 0",
            "breaker.half_open_probes",
            "must be in 1..=",
        ),
        (
            "[breaker]\nname = \"\"",
            "breaker.name",
            "must not be empty",
        ),
        (
            "[breaker]\nopen_backoff = { constant = \"0s\" }",
            "breaker.open_backoff",
            "zero open period",
        ),
        (
            "[breaker]\nmin_calls = -1",
            "breaker.min_calls",
            "invalid value",
        ),
        // Backoffs.
        (
            "[retry]\nbackoff = { base = \"2s\", cap = \"1s\" }",
            "retry.backoff.cap",
            "at least the base",
        ),
        (
            "[retry]\nbackoff = { base = \"1s\", cap = \"2s\", factor = 0.5 }",
            "retry.backoff.factor",
            "at least 1",
        ),
        (
            "[retry]\nbackoff = { base = \"1s\" }",
            "retry.backoff.base",
            "both are needed",
        ),
        (
            "[retry]\nbackoff = { constant = \"1s\", base = \"1s\" }",
            "retry.backoff.constant",
            "leave out base",
        ),
        (
            "[retry]\nbackoff = { constant = \"1s\", factor = 3.0 }",
            "retry.backoff.factor",
            "exponential",
        ),
        (
            "[retry]\nbackoff = { base = \"1s\", cap = \"2s\", jitter = \"some\" }",
            "retry.backoff.jitter",
            "unknown variant",
        ),
        // Retry, hedge, budget.
        (
            "[retry]\nmax_attempts = 0",
            "retry.max_attempts",
            "must be in 1..=100",
        ),
        (
            "[retry]\nmax_attempts = 101",
            "retry.max_attempts",
            "must be in 1..=100",
        ),
        (
            "[retry]\ndeadline = \"0s\"",
            "retry.deadline",
            "greater than zero",
        ),
        (
            "[retry.budget]\nratio = 1500",
            "retry.budget.ratio",
            "must be in 0..=1000",
        ),
        (
            "[retry.budget]\nttl = \"0s\"",
            "retry.budget.ttl",
            "between 1 s and 1 hour",
        ),
        (
            "[budget]\nratio = 0\nmin_per_sec = 0",
            "budget.ratio",
            "never allow a retry",
        ),
        (
            "[hedge]\nmax_extra_attempts = 11",
            "hedge.max_extra_attempts",
            "must be in 1..=10",
        ),
        (
            "[hedge]\ndelay = \"0s\"",
            "hedge.delay",
            "greater than zero",
        ),
        (
            "[hedge]\ndelay = { quantile = 1.0 }",
            "hedge.delay.quantile",
            "must be in (0, 1)",
        ),
        (
            "[hedge]\ndelay = { floor = \"2s\", ceiling = \"1s\" }",
            "hedge.delay.ceiling",
            "at least the floor",
        ),
        ("[hedge]\ndelay = 20", "hedge.delay", "a fixed delay"),
        // The pool.
        (
            "[pool]\noverprovisioning = 0.5",
            "pool.overprovisioning",
            "must be in 1..=100",
        ),
        (
            "[pool]\npanic_threshold = 2",
            "pool.panic_threshold",
            "must be in 0..=1",
        ),
        (
            "[pool]\nwhen_none_healthy = { wait = \"0s\" }",
            "pool.when_none_healthy",
            "greater than zero",
        ),
        (
            "[pool]\nwhen_none_healthy = \"wait\"",
            "pool.when_none_healthy.wait",
            "expected newtype variant",
        ),
        (
            "[pool]\nwhen_none_healthy = \"sometimes\"",
            "pool.when_none_healthy",
            "unknown variant",
        ),
        (
            "[pool.outlier]\nconsecutive_failures = 0",
            "pool.outlier.consecutive_failures",
            "at least 1",
        ),
        (
            "[pool.outlier]\nfailure_percentage = { rate = 2.0, min_calls = 20 }",
            "pool.outlier.failure_percentage",
            "rate must be in (0, 1]",
        ),
        (
            "[pool.outlier]\nfailure_percentage = { rate = 0.5 }",
            "pool.outlier.failure_percentage",
            "\"off\"",
        ),
        (
            "[pool.health_checks]\ninterval = \"0s\"",
            "pool.health_checks.interval",
            "greater than zero",
        ),
        (
            "[pool.health_checks]\njitter = 0.9",
            "pool.health_checks.jitter",
            "must be in 0..=0.5",
        ),
        (
            "[pool.circuit_breaker]\nfailure_rate = 7",
            "pool.circuit_breaker.failure_rate",
            "must be in (0, 1]",
        ),
        // The presets.
        (
            "[upstreams.payments]\ntotal_timeout = \"1s\"\nattempt_timeout = \"2s\"",
            "upstreams.payments.attempt_timeout",
            "below the total timeout",
        ),
        (
            "[upstreams.payments]\nbreaker_window = \"1s\"",
            "upstreams.payments.breaker_window",
            "twice the attempt timeout",
        ),
        // Twice an attempt timeout past half of what a duration holds:
        // refused, not an overflow.
        (
            "[upstreams.payments]\ntotal_timeout = \"500000000000years\"\nattempt_timeout = \"300000000000years\"",
            "upstreams.payments.breaker_window",
            "twice the attempt timeout",
        ),
        (
            "[upstreams.payments.budget]\nratio = -1",
            "upstreams.payments.budget.ratio",
            "must be in 0..=1000",
        ),
        (
            "[stacks.search]\nmax_attempts = 1000",
            "stacks.search.max_attempts",
            "must be in 1..=100",
        ),
        (
            "[stacks.search.hedge]\ndelay = { quantile = 0 }",
            "stacks.search.hedge.delay.quantile",
            "must be in (0, 1)",
        ),
        (
            "[stacks.search.outlier]\nmax_ejected = 2",
            "stacks.search.outlier.max_ejected",
            "must be in",
        ),
    ];
    assert!(cases.len() >= 30);
    for &(input, path, words) in cases {
        let err = toml_file::<Doc>(input)
            .map(|_| ())
            .expect_err(&format!("refused: {input}"));
        assert_eq!(err.path(), path, "the path for {input:?}: {err}");
        assert!(
            err.message().contains(words),
            "the message for {input:?}: {err}"
        );
    }
}

#[test]
fn the_error_reads_as_path_and_rule() {
    let err = toml_file::<Doc>("[upstreams.payments.budget]\nratio = 1500").expect_err("refused");
    assert_eq!(
        err.to_string(),
        "upstreams.payments.budget.ratio: must be in 0..=1000, got 1500"
    );
    // The same from JSON and YAML.
    let json = r#"{ "upstreams": { "payments": { "budget": { "ratio": 1500 } } } }"#;
    let err = from_deserializer::<Doc, _>(&mut serde_json::Deserializer::from_str(json))
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "upstreams.payments.budget.ratio: must be in 0..=1000, got 1500"
    );
    let yaml = "stacks:\n  search:\n    total_timeout: 90\n";
    let err =
        from_deserializer::<Doc, _>(serde_yaml::Deserializer::from_str(yaml)).expect_err("refused");
    assert_eq!(err.path(), "stacks.search.total_timeout");
    assert!(
        err.message().contains("a bare number is not a duration"),
        "{err}"
    );
}
