//! Active health checks: probe each replica of a pool on a schedule.
//!
//! A [`HealthCheck`] answers "is this replica up?"; built-ins check a TCP
//! connect ([`TcpCheck`]) and an HTTP `GET` ([`HttpCheck`], feature
//! `http`). A pool runs them in the future
//! [`Pool::health_checks`](crate::pool::Pool::health_checks) returns, which
//! you spawn or drive yourself — the crate never spawns tasks behind your
//! back. The schedule is [`HealthChecks`]: an interval with jitter, a
//! faster one while a replica is down, a timeout, and how many results in a
//! row change the verdict.
//!
//! A check that hangs past its timeout, or a server that answers garbage,
//! is a failed check; it never stalls the pool.
//!
//! The gRPC `grpc.health.v1` check comes with the gRPC integration (planned).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use steadfast::health::{HealthChecks, TcpCheck};
//! use steadfast::pool::{Pool, Replica};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let client = tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
//! let pool = Pool::builder()
//!     .health_checks(HealthChecks::default().interval(Duration::from_secs(5)))
//!     .build([("db-1", Replica::new(client).health_check(TcpCheck::new("127.0.0.1:5432".parse()?)))])?;
//! let checks = tokio::spawn(pool.health_checks());
//! # checks.abort();
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::error::{BoxError, ConfigError};

/// Checks whether one replica is up.
pub trait HealthCheck: fmt::Debug + Send + Sync + 'static {
    /// Runs one check: `Ok` if the replica is healthy. The pool bounds it
    /// with a timeout.
    fn check(&self) -> BoxFuture<'static, Result<(), BoxError>>;
}

/// Healthy when a TCP connection to the address opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpCheck {
    addr: SocketAddr,
}

impl TcpCheck {
    /// A check that connects to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }
}

impl HealthCheck for TcpCheck {
    fn check(&self) -> BoxFuture<'static, Result<(), BoxError>> {
        let addr = self.addr;
        Box::pin(async move {
            tokio::net::TcpStream::connect(addr).await?;
            Ok(())
        })
    }
}

#[cfg(feature = "http")]
mod http_check;
#[cfg(feature = "http")]
pub use self::http_check::{HttpCheck, Status};

/// When and how a pool runs its health checks.
///
/// | setting | default |
/// |---|---|
/// | [`interval`](Self::interval) | 5 s, ± 10% jitter |
/// | [`unhealthy_interval`](Self::unhealthy_interval) | 500 ms while a replica is out of traffic (failing its checks, or ejected) |
/// | [`timeout`](Self::timeout) | 1 s |
/// | [`healthy_threshold`](Self::healthy_threshold) | 2 passes in a row to come back |
/// | [`unhealthy_threshold`](Self::unhealthy_threshold) | 3 failures in a row to go down |
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct HealthChecks {
    pub(crate) interval: Duration,
    pub(crate) unhealthy_interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) healthy_threshold: u32,
    pub(crate) unhealthy_threshold: u32,
    pub(crate) jitter: f64,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            unhealthy_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            jitter: 0.1,
        }
    }
}

impl HealthChecks {
    /// Time between checks of a healthy replica.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Time between checks of a replica out of traffic (failing its
    /// checks, or ejected): how soon its recovery is seen.
    pub fn unhealthy_interval(mut self, interval: Duration) -> Self {
        self.unhealthy_interval = interval;
        self
    }

    /// How long one check may take before it counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Passes in a row that bring a failing replica back.
    pub fn healthy_threshold(mut self, n: u32) -> Self {
        self.healthy_threshold = n;
        self
    }

    /// Failures in a row that take a replica down.
    pub fn unhealthy_threshold(mut self, n: u32) -> Self {
        self.unhealthy_threshold = n;
        self
    }

    /// Spreads checks by ± this share of the interval (0..=0.5), so a fleet
    /// of callers does not probe in lockstep.
    pub fn jitter(mut self, share: f64) -> Self {
        self.jitter = share;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let within = |e: ConfigError| e.within("health_checks");
        if self.interval.is_zero() || self.unhealthy_interval.is_zero() {
            return Err(within(ConfigError::new(
                "interval",
                "must be greater than zero",
            )));
        }
        if self.timeout.is_zero() {
            return Err(within(ConfigError::new(
                "timeout",
                "must be greater than zero",
            )));
        }
        if self.healthy_threshold == 0 || self.unhealthy_threshold == 0 {
            return Err(within(ConfigError::new(
                "healthy_threshold",
                "thresholds must be at least 1",
            )));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(within(ConfigError::new(
                "jitter",
                format!("must be in 0..=0.5, got {}", self.jitter),
            )));
        }
        Ok(())
    }
}
