//! `Deserialize` and `Serialize` for every builder: each reads a file
//! section (all fields optional, unknown ones refused) onto the builder's
//! defaults and runs the builder's own check; each writes every setting.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::value::{Human, Toggle};
use crate::backoff::{Backoff, Jitter, Kind};
use crate::budget::{self, RetryBudget};
use crate::circuit_breaker::{self, SlidingWindow};
use crate::error::ConfigError;
use crate::health::HealthChecks;
use crate::hedge::{self, HedgeDelay};
use crate::pool::{self, OutlierDetection, WhenNoneHealthy};
use crate::retry;

/// A builder's refusal as the format's error. The format keeps only its
/// text (with its own context around it), so the refusal itself is also
/// kept for [`from_deserializer`](super::from_deserializer), which ends the
/// path at the field it names.
fn refused<E: serde::de::Error>(err: ConfigError) -> E {
    let error = E::custom(&err);
    super::refusal::record(err);
    error
}

fn human(d: Duration) -> Human {
    Human(d)
}

fn name_of(name: Option<String>, default: &str) -> String {
    name.unwrap_or_else(|| default.to_owned())
}

// ------------------------------------------------------------- backoff

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum JitterFile {
    None,
    Full,
    Equal,
    Decorrelated,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    constant: Option<Human>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<Human>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cap: Option<Human>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jitter: Option<JitterFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

impl Serialize for Backoff {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (constant, base, cap, factor) = match self.kind {
            Kind::Constant(d) => (Some(human(d)), None, None, None),
            Kind::Exponential { base, cap } => {
                (None, Some(human(base)), Some(human(cap)), Some(self.factor))
            }
        };
        let jitter = match self.jitter {
            Jitter::None => JitterFile::None,
            Jitter::Full => JitterFile::Full,
            Jitter::Equal => JitterFile::Equal,
            Jitter::Decorrelated => JitterFile::Decorrelated,
        };
        BackoffFile {
            constant,
            base,
            cap,
            factor,
            jitter: Some(jitter),
            seed: self.seed,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Backoff {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = BackoffFile::deserialize(deserializer)?;
        let mut backoff = match (file.constant, file.base, file.cap) {
            (Some(delay), None, None) => {
                if file.factor.is_some() {
                    return Err(refused(ConfigError::new(
                        "factor",
                        "is for an exponential backoff (base and cap), not a constant one",
                    )));
                }
                Backoff::constant(delay.0)
            }
            (None, Some(base), Some(cap)) => Backoff::exponential(base.0, cap.0),
            (None, _, _) => {
                return Err(refused(ConfigError::new(
                    "base",
                    "and cap make an exponential backoff (or give constant): both are needed",
                )));
            }
            (Some(_), _, _) => {
                return Err(refused(ConfigError::new(
                    "constant",
                    "is a constant backoff: leave out base and cap",
                )));
            }
        };
        if let Some(factor) = file.factor {
            backoff = backoff.factor(factor);
        }
        if let Some(jitter) = file.jitter {
            backoff = backoff.jitter(match jitter {
                JitterFile::None => Jitter::None,
                JitterFile::Full => Jitter::Full,
                JitterFile::Equal => Jitter::Equal,
                JitterFile::Decorrelated => Jitter::Decorrelated,
            });
        }
        if let Some(seed) = file.seed {
            backoff = backoff.seed(seed);
        }
        backoff.validate().map_err(refused)?;
        Ok(backoff)
    }
}

// -------------------------------------------------------------- budget

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ttl: Option<Human>,
    #[serde(default)]
    min_per_sec: Option<u32>,
    #[serde(default)]
    ratio: Option<f64>,
}

impl Serialize for budget::Builder {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BudgetFile {
            name: Some(self.name.to_string()),
            ttl: Some(human(self.ttl)),
            min_per_sec: Some(self.min_per_sec),
            ratio: Some(self.ratio),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for budget::Builder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = BudgetFile::deserialize(deserializer)?;
        let mut b = RetryBudget::builder();
        if let Some(name) = file.name {
            b = b.name(name);
        }
        if let Some(ttl) = file.ttl {
            b = b.ttl(ttl.0);
        }
        if let Some(n) = file.min_per_sec {
            b = b.min_per_sec(n);
        }
        if let Some(ratio) = file.ratio {
            b = b.ratio(ratio);
        }
        b.check().map_err(refused)?;
        Ok(b)
    }
}

/// A built budget as the settings it was built from.
fn budget_settings(budget: &RetryBudget) -> budget::Builder {
    RetryBudget::builder()
        .name(budget.name())
        .ttl(budget.ttl())
        .min_per_sec(budget.min_per_sec())
        .ratio(budget.ratio())
}

/// Builds a budget read with its owner (a retry or hedge layer, a preset),
/// which takes a built one.
fn build_budget<E: serde::de::Error>(settings: budget::Builder) -> Result<Arc<RetryBudget>, E> {
    settings
        .build()
        .map(Arc::new)
        .map_err(|e| refused(e.within("budget")))
}

// ------------------------------------------------------ circuit breaker

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    span: Option<Human>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    buckets: Option<u32>,
}

impl Serialize for SlidingWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let file = match *self {
            SlidingWindow::Count { size } => WindowFile {
                size: Some(size),
                span: None,
                buckets: None,
            },
            SlidingWindow::Time { span, buckets } => WindowFile {
                size: None,
                span: Some(human(span)),
                buckets: Some(buckets),
            },
        };
        file.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SlidingWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = WindowFile::deserialize(deserializer)?;
        match (file.size, file.span, file.buckets) {
            (Some(size), None, None) => Ok(SlidingWindow::count(size)),
            (None, Some(span), buckets) => Ok(match buckets {
                Some(buckets) => SlidingWindow::time_with_buckets(span.0, buckets),
                None => SlidingWindow::time(span.0),
            }),
            (Some(_), _, _) => Err(refused(ConfigError::new(
                "size",
                "is a window of the last calls: leave out span and buckets",
            ))),
            (None, None, _) => Err(refused(ConfigError::new(
                "size",
                "or span is needed: the last calls, or the last span of time",
            ))),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlowCallsFile {
    threshold: Human,
    rate: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    failure_rate: Option<Toggle<f64>>,
    #[serde(default)]
    slow_calls: Option<Toggle<SlowCallsFile>>,
    #[serde(default)]
    consecutive_failures: Option<Toggle<u32>>,
    #[serde(default)]
    window: Option<SlidingWindow>,
    #[serde(default)]
    min_calls: Option<u32>,
    #[serde(default)]
    open_backoff: Option<Backoff>,
    #[serde(default)]
    half_open_probes: Option<u32>,
    #[serde(default)]
    max_pushback: Option<Human>,
}

impl<C> Serialize for circuit_breaker::Builder<C> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BreakerFile {
            name: Some(self.name.to_string()),
            failure_rate: Some(Toggle::from_option(self.failure_rate)),
            slow_calls: Some(Toggle::from_option(self.slow_calls.map(
                |(threshold, rate)| SlowCallsFile {
                    threshold: human(threshold),
                    rate,
                },
            ))),
            consecutive_failures: Some(Toggle::from_option(self.consecutive_failures)),
            window: Some(self.window),
            min_calls: Some(self.min_calls),
            open_backoff: Some(self.open_backoff),
            half_open_probes: Some(self.half_open_probes),
            max_pushback: Some(human(self.max_pushback)),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for circuit_breaker::Builder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = BreakerFile::deserialize(deserializer)?;
        let mut b = circuit_breaker::CircuitBreakerLayer::builder();
        if let Some(name) = file.name {
            b = b.name(name);
        }
        if let Some(rate) = file.failure_rate {
            b.failure_rate = rate.into_option();
        }
        if let Some(slow) = file.slow_calls {
            b.slow_calls = slow.into_option().map(|s| (s.threshold.0, s.rate));
        }
        if let Some(n) = file.consecutive_failures {
            b.consecutive_failures = n.into_option();
        }
        if let Some(window) = file.window {
            b = b.window(window);
        }
        if let Some(n) = file.min_calls {
            b = b.min_calls(n);
        }
        if let Some(backoff) = file.open_backoff {
            b = b.open_backoff(backoff);
        }
        if let Some(n) = file.half_open_probes {
            b = b.half_open_probes(n);
        }
        if let Some(max) = file.max_pushback {
            b = b.max_pushback(max.0);
        }
        b.check().map_err(refused)?;
        Ok(b)
    }
}

// --------------------------------------------------------------- retry

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<budget::Builder>,
    #[serde(default)]
    max_pushback: Option<Human>,
    #[serde(default)]
    deadline: Option<Toggle<Human>>,
}

impl<C, R> Serialize for retry::Builder<C, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RetryFile {
            name: Some(self.name.to_string()),
            max_attempts: Some(self.max_attempts),
            backoff: Some(self.backoff),
            budget: self.budget.as_deref().map(budget_settings),
            max_pushback: Some(human(self.max_pushback)),
            deadline: Some(Toggle::from_option(self.deadline.map(human))),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for retry::Builder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = RetryFile::deserialize(deserializer)?;
        let mut b = crate::RetryLayer::builder();
        if let Some(name) = &file.name {
            b = b.name(name);
        }
        if let Some(n) = file.max_attempts {
            b = b.max_attempts(n);
        }
        if let Some(backoff) = file.backoff {
            b = b.backoff(backoff);
        }
        if let Some(max) = file.max_pushback {
            b = b.max_pushback(max.0);
        }
        if let Some(deadline) = file.deadline {
            b.deadline = deadline.into_option().map(|d| d.0);
        }
        b.check().map_err(refused)?;
        if let Some(settings) = file.budget {
            b = b.budget(build_budget(settings)?);
        }
        Ok(b)
    }
}

// --------------------------------------------------------------- hedge

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdaptiveFile {
    #[serde(default)]
    quantile: Option<f64>,
    #[serde(default)]
    floor: Option<Human>,
    #[serde(default)]
    ceiling: Option<Human>,
    #[serde(default)]
    window: Option<Human>,
    #[serde(default)]
    min_samples: Option<u64>,
    #[serde(default)]
    initial: Option<Human>,
}

#[derive(Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a fixed delay (a duration, like \"20ms\"), or a table of the adaptive delay's settings"
)]
enum DelayFile {
    Fixed(Human),
    Adaptive(AdaptiveFile),
}

impl Serialize for HedgeDelay {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let file = match *self {
            HedgeDelay::Fixed(d) => DelayFile::Fixed(human(d)),
            HedgeDelay::Adaptive {
                quantile,
                floor,
                ceiling,
                window,
                min_samples,
                initial,
            } => DelayFile::Adaptive(AdaptiveFile {
                quantile: Some(quantile),
                floor: Some(human(floor)),
                ceiling: Some(human(ceiling)),
                window: Some(human(window)),
                min_samples: Some(min_samples),
                initial: Some(human(initial)),
            }),
        };
        file.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for HedgeDelay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match DelayFile::deserialize(deserializer)? {
            DelayFile::Fixed(d) => HedgeDelay::Fixed(d.0),
            DelayFile::Adaptive(file) => {
                let mut a = HedgeDelay::adaptive();
                if let Some(q) = file.quantile {
                    a = a.quantile(q);
                }
                if let Some(d) = file.floor {
                    a = a.floor(d.0);
                }
                if let Some(d) = file.ceiling {
                    a = a.ceiling(d.0);
                }
                if let Some(d) = file.window {
                    a.window = d.0;
                }
                if let Some(n) = file.min_samples {
                    a.min_samples = n;
                }
                if let Some(d) = file.initial {
                    a.initial = d.0;
                }
                a.build()
            }
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HedgeFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    delay: Option<HedgeDelay>,
    #[serde(default)]
    max_extra_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<budget::Builder>,
}

impl<C, R> Serialize for hedge::Builder<C, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        HedgeFile {
            name: Some(self.name.to_string()),
            delay: Some(self.delay),
            max_extra_attempts: Some(self.max_extra_attempts),
            budget: self.budget.as_deref().map(budget_settings),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for hedge::Builder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = HedgeFile::deserialize(deserializer)?;
        let mut b = crate::HedgeLayer::builder();
        if let Some(name) = &file.name {
            b = b.name(name);
        }
        if let Some(delay) = file.delay {
            b = b.delay(delay);
        }
        if let Some(n) = file.max_extra_attempts {
            b = b.max_extra_attempts(n);
        }
        b.check().map_err(refused)?;
        if let Some(settings) = file.budget {
            b = b.budget(build_budget(settings)?);
        }
        Ok(b)
    }
}

// --------------------------------------------------------- health checks

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksFile {
    #[serde(default)]
    interval: Option<Human>,
    #[serde(default)]
    unhealthy_interval: Option<Human>,
    #[serde(default)]
    timeout: Option<Human>,
    #[serde(default)]
    healthy_threshold: Option<u32>,
    #[serde(default)]
    unhealthy_threshold: Option<u32>,
    #[serde(default)]
    jitter: Option<f64>,
}

impl Serialize for HealthChecks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ChecksFile {
            interval: Some(human(self.interval)),
            unhealthy_interval: Some(human(self.unhealthy_interval)),
            timeout: Some(human(self.timeout)),
            healthy_threshold: Some(self.healthy_threshold),
            unhealthy_threshold: Some(self.unhealthy_threshold),
            jitter: Some(self.jitter),
        }
        .serialize(serializer)
    }
}

/// Read without a check of its own: the pool (or preset) that runs the
/// checks validates them, naming them `health_checks.…`.
impl<'de> Deserialize<'de> for HealthChecks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = ChecksFile::deserialize(deserializer)?;
        let mut c = HealthChecks::default();
        if let Some(d) = file.interval {
            c = c.interval(d.0);
        }
        if let Some(d) = file.unhealthy_interval {
            c = c.unhealthy_interval(d.0);
        }
        if let Some(d) = file.timeout {
            c = c.timeout(d.0);
        }
        if let Some(n) = file.healthy_threshold {
            c = c.healthy_threshold(n);
        }
        if let Some(n) = file.unhealthy_threshold {
            c = c.unhealthy_threshold(n);
        }
        if let Some(j) = file.jitter {
            c = c.jitter(j);
        }
        Ok(c)
    }
}

// ---------------------------------------------------- outlier detection

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailurePercentageFile {
    rate: f64,
    min_calls: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuccessRateFile {
    factor: f64,
    min_hosts: u32,
    min_calls: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyFile {
    factor: f64,
    floor: Human,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutlierFile {
    #[serde(default)]
    consecutive_failures: Option<Toggle<u32>>,
    #[serde(default)]
    failure_percentage: Option<Toggle<FailurePercentageFile>>,
    #[serde(default)]
    success_rate_stdev: Option<Toggle<SuccessRateFile>>,
    #[serde(default)]
    latency_factor: Option<Toggle<LatencyFile>>,
    #[serde(default)]
    ejection: Option<Backoff>,
    #[serde(default)]
    max_ejected: Option<f64>,
    #[serde(default)]
    interval: Option<Human>,
}

impl Serialize for OutlierDetection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        OutlierFile {
            consecutive_failures: Some(Toggle::from_option(self.consecutive_failures)),
            failure_percentage: Some(Toggle::from_option(
                self.failure_percentage
                    .map(|(rate, min_calls)| FailurePercentageFile { rate, min_calls }),
            )),
            success_rate_stdev: Some(Toggle::from_option(self.success_rate_stdev.map(
                |(factor, min_hosts, min_calls)| SuccessRateFile {
                    factor,
                    min_hosts,
                    min_calls,
                },
            ))),
            latency_factor: Some(Toggle::from_option(self.latency_factor.map(
                |(factor, floor)| LatencyFile {
                    factor,
                    floor: human(floor),
                },
            ))),
            ejection: Some(self.ejection),
            max_ejected: Some(self.max_ejected),
            interval: Some(human(self.interval)),
        }
        .serialize(serializer)
    }
}

/// Read without a check of its own: the pool (or preset) validates it,
/// naming its rules `outlier.…`.
impl<'de> Deserialize<'de> for OutlierDetection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = OutlierFile::deserialize(deserializer)?;
        let mut o = OutlierDetection::default();
        if let Some(rule) = file.consecutive_failures {
            o = o.consecutive_failures(rule.into_option());
        }
        if let Some(rule) = file.failure_percentage {
            o = o.failure_percentage(rule.into_option().map(|r| (r.rate, r.min_calls)));
        }
        if let Some(rule) = file.success_rate_stdev {
            o = o.success_rate_stdev(
                rule.into_option()
                    .map(|r| (r.factor, r.min_hosts, r.min_calls)),
            );
        }
        if let Some(rule) = file.latency_factor {
            o = o.latency_factor(rule.into_option().map(|r| (r.factor, r.floor.0)));
        }
        if let Some(backoff) = file.ejection {
            o = o.ejection(backoff);
        }
        if let Some(share) = file.max_ejected {
            o = o.max_ejected(share);
        }
        if let Some(d) = file.interval {
            o = o.interval(d.0);
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------- pool

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum WhenNoneHealthyFile {
    FailFast,
    Wait(Human),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local_zone: Option<String>,
    #[serde(default)]
    overprovisioning: Option<f64>,
    #[serde(default)]
    panic_threshold: Option<f64>,
    #[serde(default)]
    failback_after: Option<Human>,
    #[serde(default)]
    when_none_healthy: Option<WhenNoneHealthyFile>,
    #[serde(default)]
    outlier: Option<OutlierDetection>,
    #[serde(default)]
    max_pushback: Option<Human>,
    #[serde(default)]
    failure_penalty: Option<Human>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    circuit_breaker: Option<circuit_breaker::Builder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health_checks: Option<HealthChecks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

impl<C> Serialize for pool::Builder<C> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PoolFile {
            name: Some(self.name.to_string()),
            local_zone: self.local_zone.as_deref().map(str::to_owned),
            overprovisioning: Some(self.overprovisioning),
            panic_threshold: Some(self.panic_threshold),
            failback_after: Some(human(self.failback_after)),
            when_none_healthy: Some(match self.when_none_healthy {
                WhenNoneHealthy::FailFast => WhenNoneHealthyFile::FailFast,
                WhenNoneHealthy::Wait(d) => WhenNoneHealthyFile::Wait(human(d)),
            }),
            outlier: Some(self.outlier.clone()),
            max_pushback: Some(human(self.max_pushback)),
            failure_penalty: Some(human(self.failure_penalty)),
            circuit_breaker: self.breaker.clone(),
            health_checks: self.health_checks,
            seed: self.seed,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for pool::Builder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let file = PoolFile::deserialize(deserializer)?;
        let mut b = crate::Pool::builder();
        if let Some(name) = &file.name {
            b = b.name(name);
        }
        if let Some(zone) = &file.local_zone {
            b = b.local_zone(zone);
        }
        if let Some(f) = file.overprovisioning {
            b = b.overprovisioning(f);
        }
        if let Some(share) = file.panic_threshold {
            b = b.panic_threshold(share);
        }
        if let Some(d) = file.failback_after {
            b = b.failback_after(d.0);
        }
        if let Some(when) = file.when_none_healthy {
            b = b.when_none_healthy(match when {
                WhenNoneHealthyFile::FailFast => WhenNoneHealthy::FailFast,
                WhenNoneHealthyFile::Wait(d) => WhenNoneHealthy::Wait(d.0),
            });
        }
        if let Some(outlier) = file.outlier {
            b = b.outlier(outlier);
        }
        if let Some(d) = file.max_pushback {
            b = b.max_pushback(d.0);
        }
        if let Some(d) = file.failure_penalty {
            b = b.failure_penalty(d.0);
        }
        if let Some(breaker) = file.circuit_breaker {
            b = b.circuit_breaker(breaker);
        }
        if let Some(checks) = file.health_checks {
            b = b.health_checks(checks);
        }
        if let Some(seed) = file.seed {
            b = b.seed(seed);
        }
        b.validate().map_err(refused)?;
        Ok(b)
    }
}

// ------------------------------------------------------------- presets

#[cfg(feature = "http")]
mod presets {
    use super::*;
    use crate::presets::{HttpClient, ReplicaStack};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HttpClientFile {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        total_timeout: Option<Human>,
        #[serde(default)]
        attempt_timeout: Option<Human>,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget: Option<budget::Builder>,
        #[serde(default)]
        breaker_window: Option<Human>,
    }

    impl Serialize for HttpClient {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            HttpClientFile {
                name: Some(self.name.to_string()),
                total_timeout: Some(human(self.total_timeout)),
                attempt_timeout: Some(human(self.attempt_timeout)),
                max_attempts: Some(self.max_attempts),
                budget: self.budget.as_deref().map(budget_settings),
                breaker_window: Some(human(self.breaker_window)),
            }
            .serialize(serializer)
        }
    }

    impl<'de> Deserialize<'de> for HttpClient {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let file = HttpClientFile::deserialize(deserializer)?;
            let mut p = HttpClient::new(name_of(file.name, "default"));
            if let Some(d) = file.total_timeout {
                p = p.total_timeout(d.0);
            }
            if let Some(d) = file.attempt_timeout {
                p = p.attempt_timeout(d.0);
            }
            if let Some(n) = file.max_attempts {
                p = p.max_attempts(n);
            }
            if let Some(d) = file.breaker_window {
                p = p.breaker_window(d.0);
            }
            p.check().map_err(refused)?;
            if let Some(settings) = file.budget {
                p = p.budget(build_budget(settings)?);
            }
            Ok(p)
        }
    }

    /// The hedge of a replica stack: its delay (the rest is the preset's).
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StackHedgeFile {
        #[serde(default)]
        delay: Option<HedgeDelay>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ReplicaStackFile {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        total_timeout: Option<Human>,
        #[serde(default)]
        attempt_timeout: Option<Human>,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        hedge: Option<StackHedgeFile>,
        #[serde(default)]
        outlier: Option<OutlierDetection>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health_checks: Option<HealthChecks>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_zone: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failback_after: Option<Human>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget: Option<budget::Builder>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        circuit_breaker: Option<circuit_breaker::Builder>,
    }

    impl Serialize for ReplicaStack {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            ReplicaStackFile {
                name: Some(self.name.to_string()),
                total_timeout: Some(human(self.total_timeout)),
                attempt_timeout: Some(human(self.attempt_timeout)),
                max_attempts: Some(self.max_attempts),
                hedge: Some(StackHedgeFile {
                    delay: Some(self.hedge),
                }),
                outlier: Some(self.outlier.clone()),
                health_checks: self.checks,
                local_zone: self.local_zone.as_deref().map(str::to_owned),
                failback_after: self.failback_after.map(human),
                budget: self.budget.as_deref().map(budget_settings),
                circuit_breaker: self.breaker.clone(),
            }
            .serialize(serializer)
        }
    }

    impl<'de> Deserialize<'de> for ReplicaStack {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let file = ReplicaStackFile::deserialize(deserializer)?;
            let mut p = ReplicaStack::new(name_of(file.name, "default"));
            if let Some(d) = file.total_timeout {
                p = p.total_timeout(d.0);
            }
            if let Some(d) = file.attempt_timeout {
                p = p.attempt_timeout(d.0);
            }
            if let Some(n) = file.max_attempts {
                p = p.max_attempts(n);
            }
            if let Some(delay) = file.hedge.and_then(|h| h.delay) {
                p = p.hedge(delay);
            }
            if let Some(outlier) = file.outlier {
                p = p.outlier(outlier);
            }
            if let Some(checks) = file.health_checks {
                p = p.health_checks(checks);
            }
            if let Some(zone) = &file.local_zone {
                p = p.local_zone(zone);
            }
            if let Some(d) = file.failback_after {
                p = p.failback_after(d.0);
            }
            if let Some(breaker) = file.circuit_breaker {
                p = p.circuit_breaker(breaker);
            }
            p.check().map_err(refused)?;
            if let Some(settings) = file.budget {
                p = p.budget(build_budget(settings)?);
            }
            Ok(p)
        }
    }
}
