//! A retry budget: caps the extra load that retries and hedges add.
//!
//! Every original request deposits into a [`RetryBudget`]; every retry (and
//! every hedge) withdraws. Over any `ttl` window, extra attempts stay below
//! `ratio × requests + min_per_sec × ttl`: the ratio keeps a failing
//! dependency from seeing its load multiplied by `max_attempts`, and the
//! floor lets a client that sends few requests still retry.
//!
//! # Why a budget rather than only a maximum of attempts
//!
//! `max_attempts = 3` triples the load on a dependency exactly when it is
//! failing — the moment it can least take it — and every layer of a call
//! graph multiplies it again. A budget lets retries fix the odd failure (a
//! dropped connection, one bad replica) while capping the total: when
//! everything fails, only a few percent more attempts go out, and the
//! caller gets the real failure at once instead of after the backoffs.
//!
//! # Accuracy
//!
//! Tokens are integers scaled by 1,000 per attempt, so a ratio of 0.6 allows
//! 60% extra attempts (tower's `TpsBudget` truncates `1 / ratio` and lets
//! both 0.6 and 0.9 allow 100%). A withdrawal is checked after it is counted
//! and handed back if it overdrew, so concurrent withdrawals never overdraw
//! (under a race near zero, one may be refused that would have fit).
//!
//! # Cost
//!
//! Deposits go to per-thread shards, so no shared cache line is written on
//! the happy path. Each deposit reads the clock once, to date it to its time
//! bucket (a tenth of the ttl): it then counts for the ttl less at most one
//! bucket, never longer, at any rate of requests.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use steadfast::budget::RetryBudget;
//!
//! let budget = Arc::new(
//!     RetryBudget::builder()
//!         .ttl(Duration::from_secs(10))
//!         .min_per_sec(0)
//!         .ratio(0.6)
//!         .build()?,
//! );
//! for _ in 0..100 {
//!     budget.deposit();
//! }
//! let mut retries = 0;
//! while budget.withdraw() {
//!     retries += 1;
//! }
//! assert_eq!(retries, 60);
//! # Ok::<(), steadfast::error::ConfigError>(())
//! ```

use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Counter;
use tokio::time::Instant;

use crate::error::ConfigError;
use crate::stats::epoch::{self, EpochCounter};
use crate::stats::shard;
use crate::stats::window::bucket_index;
use crate::sync::{AtomicU64, Ordering};

/// Tokens one attempt costs.
const SCALE: u64 = 1_000;
/// Buckets per ttl.
const BUCKETS: u32 = 10;

/// A budget for extra attempts, shared (in an `Arc`) by the retry, hedge and
/// (planned) pool layers of one upstream. See the [module docs](self).
#[derive(Debug)]
pub struct RetryBudget {
    name: std::sync::Arc<str>,
    ttl: Duration,
    /// Swapped whole by [`apply`](Self::apply).
    rates: ArcSwap<Rates>,
    /// What one original request deposits now (the rates' own figure):
    /// every request deposits, so it reads one word rather than the rates
    /// (about 20 ns a call in `benches/overhead`).
    deposit_tokens: AtomicU64,
    base: Instant,
    bucket_nanos: u64,
    shards: Box<[Shard]>,
    exhausted: Counter,
}

/// What a budget earns and allows: the settings [`RetryBudget::apply`]
/// may change, in tokens.
#[derive(Debug)]
struct Rates {
    min_per_sec: u32,
    ratio: f64,
    /// What `min_per_sec` keeps available over a ttl.
    reserve_tokens: u64,
}

impl Rates {
    fn of(settings: &Builder) -> Self {
        Self {
            min_per_sec: settings.min_per_sec,
            ratio: settings.ratio,
            reserve_tokens: u64::from(settings.min_per_sec) * settings.ttl.as_secs() * SCALE,
        }
    }
}

/// One thread group's counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    slots: [Slot; BUCKETS as usize],
}

#[derive(Debug, Default)]
struct Slot {
    deposits: EpochCounter,
    withdrawals: EpochCounter,
}

/// Builds a [`RetryBudget`]. Defaults: ttl 10 s, `min_per_sec` 10, ratio 0.2
/// (Finagle's and tower's usual values: retries add at most 20% load, and
/// any client may retry 10 times a second).
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) min_per_sec: u32,
    pub(crate) ratio: f64,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            name: "default".into(),
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.2,
        }
    }
}

impl Builder {
    /// Names the budget: the `name` label of its metrics.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = name.as_ref().into();
        self
    }

    /// How long a deposit counts (1 s to 1 hour; default 10 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Extra attempts allowed per second whatever the traffic (default 10).
    pub fn min_per_sec(mut self, n: u32) -> Self {
        self.min_per_sec = n;
        self
    }

    /// Extra attempts allowed per original request, `0..=1000` (default 0.2;
    /// resolution 0.001).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Checks the settings without building the budget (which would
    /// register its metric).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.ttl) {
            return Err(ConfigError::new(
                "ttl",
                format!("must be between 1 s and 1 hour, got {:?}", self.ttl),
            ));
        }
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(ConfigError::new(
                "ratio",
                format!("must be in 0..=1000, got {}", self.ratio),
            ));
        }
        let deposit_tokens = self.deposit_tokens();
        if deposit_tokens == 0 && self.min_per_sec == 0 {
            return Err(ConfigError::new(
                "ratio",
                "and min_per_sec are both zero: the budget would never allow a retry",
            ));
        }
        Ok(())
    }

    /// What one original request deposits, in the budget's fixed point.
    fn deposit_tokens(&self) -> u64 {
        (self.ratio * SCALE as f64).round() as u64
    }

    /// Validates and builds the budget.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the ttl is outside 1 s..=1 h, the ratio is
    /// outside `0..=1000` or not a number, or both the ratio and
    /// `min_per_sec` are zero (no retry could ever happen).
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        self.check()?;
        let shards = shard::count(usize::MAX);
        let ttl_nanos = u64::try_from(self.ttl.as_nanos()).unwrap_or(u64::MAX);
        Ok(RetryBudget {
            exhausted: metrics::counter!("steadfast_budget_exhausted_total", "name" => self.name.clone()),
            deposit_tokens: AtomicU64::new(self.deposit_tokens()),
            rates: ArcSwap::from_pointee(Rates::of(&self)),
            name: self.name,
            ttl: self.ttl,
            base: Instant::now(),
            bucket_nanos: ttl_nanos / u64::from(BUCKETS),
            shards: (0..shards)
                .map(|_| Shard {
                    slots: Default::default(),
                })
                .collect(),
        })
    }
}

/// The refusal of a setting that cannot change at run time.
pub(crate) fn fixed(
    field: &'static str,
    is: impl std::fmt::Display,
    asked: impl std::fmt::Display,
) -> ConfigError {
    ConfigError::new(
        field,
        format!("cannot change at run time (it is {is}, the new settings say {asked})"),
    )
}

impl Default for RetryBudget {
    fn default() -> Self {
        match Builder::default().build() {
            Ok(budget) => budget,
            // The defaults are valid; a test checks it.
            Err(err) => unreachable!("default budget is invalid: {err}"),
        }
    }
}

impl RetryBudget {
    /// A builder with the defaults (ttl 10 s, 10 per second, ratio 0.2).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The budget's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long a deposit counts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Extra attempts allowed per second whatever the traffic.
    pub fn min_per_sec(&self) -> u32 {
        self.rates.load().min_per_sec
    }

    /// Extra attempts allowed per original request.
    pub fn ratio(&self) -> f64 {
        self.rates.load().ratio
    }

    /// Takes new settings at run time, keeping the balance: what was
    /// deposited stays deposited, what was withdrawn stays withdrawn, and
    /// the new ratio applies to the requests from now on (the reserve of
    /// `min_per_sec` is the new one at once).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for settings [`Builder::build`] refuses, or that
    /// cannot change at run time: the name (metrics are labelled with it)
    /// and the ttl (it sets the window's buckets). The budget then keeps
    /// its settings.
    pub fn apply(&self, settings: &Builder) -> Result<(), ConfigError> {
        settings.check()?;
        if *settings.name != *self.name {
            return Err(fixed("name", &self.name, &settings.name));
        }
        if settings.ttl != self.ttl {
            return Err(fixed(
                "ttl",
                format!("{:?}", self.ttl),
                format!("{:?}", settings.ttl),
            ));
        }
        self.rates.store(std::sync::Arc::new(Rates::of(settings)));
        self.deposit_tokens
            .store(settings.deposit_tokens(), Ordering::Relaxed);
        Ok(())
    }

    #[inline]
    fn shard(&self) -> &Shard {
        &self.shards[shard::index() & (self.shards.len() - 1)]
    }

    /// The index of the time bucket the clock is in now.
    fn bucket_now(&self) -> u64 {
        bucket_index(self.base, Instant::now(), self.bucket_nanos)
    }

    /// Records an original request: it earns `ratio` of an extra attempt.
    #[inline]
    pub fn deposit(&self) {
        // In tokens, at the ratio of the time: a ratio changed later
        // applies to later requests only.
        let tokens = self.deposit_tokens.load(Ordering::Relaxed);
        if tokens == 0 {
            return;
        }
        let idx = self.bucket_now();
        let slot = &self.shard().slots[(idx % u64::from(BUCKETS)) as usize];
        slot.deposits.add(epoch::tag(idx), tokens);
    }

    /// Takes one extra attempt from the budget; `false` when it is spent.
    ///
    /// A refused withdrawal is counted in `steadfast_budget_exhausted_total`.
    pub fn withdraw(&self) -> bool {
        let idx = self.bucket_now();
        let tag = epoch::tag(idx);
        let slot = &self.shard().slots[(idx % u64::from(BUCKETS)) as usize];
        slot.withdrawals.add(tag, 1);
        // Counted first, checked after: if this withdrawal overdrew, it goes
        // back. Of two racing withdrawals the later sees both, so the budget
        // is never overdrawn.
        if self.balance_at(tag) >= 0 {
            return true;
        }
        slot.withdrawals.sub(tag, 1);
        self.exhausted.increment(1);
        #[cfg(feature = "tracing")]
        tracing::debug!(budget = &*self.name, "retry budget exhausted");
        false
    }

    /// Gives back a withdrawal that was not spent after all (an attempt
    /// admitted and then not sent), from the current bucket's withdrawals:
    /// the bucket it was taken in, unless a bucket edge fell in between.
    pub(crate) fn give_back(&self) {
        let idx = self.bucket_now();
        let slot = &self.shard().slots[(idx % u64::from(BUCKETS)) as usize];
        slot.withdrawals.sub(epoch::tag(idx), 1);
    }

    /// How many extra attempts the budget would allow now.
    pub fn available(&self) -> u64 {
        let tag = epoch::tag(self.bucket_now());
        u64::try_from(self.balance_at(tag)).map_or(0, |b| b / SCALE)
    }

    /// Tokens in the window ending at bucket `tag`, after withdrawals.
    fn balance_at(&self, tag: u32) -> i128 {
        let (mut deposits, mut withdrawals) = (0u64, 0u64);
        for shard in self.shards.iter() {
            for slot in &shard.slots {
                deposits += slot.deposits.read(tag, BUCKETS);
                withdrawals += slot.withdrawals.read(tag, BUCKETS);
            }
        }
        i128::from(self.rates.load().reserve_tokens) + i128::from(deposits)
            - i128::from(withdrawals) * i128::from(SCALE)
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn budget(ratio: f64, min_per_sec: u32) -> RetryBudget {
        RetryBudget::builder()
            .ratio(ratio)
            .min_per_sec(min_per_sec)
            .build()
            .unwrap()
    }

    fn drain(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn ratios_mean_what_they_say() {
        for (ratio, expected) in [
            (0.1, 100),
            (0.2, 200),
            (0.6, 600),
            (0.9, 900),
            (1.0, 1000),
            (2.5, 2500),
        ] {
            let b = budget(ratio, 0);
            for _ in 0..1_000 {
                b.deposit();
            }
            assert_eq!(b.available(), expected, "ratio {ratio}");
            assert_eq!(drain(&b), expected, "ratio {ratio}");
            assert_eq!(b.available(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_min_per_sec_times_ttl() {
        let b = budget(0.0, 10);
        assert_eq!(drain(&b), 100);
        let b = budget(0.5, 3);
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(drain(&b), 30 + 5);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_and_withdrawals_expire_after_the_ttl() {
        let b = budget(1.0, 0);
        for _ in 0..50 {
            b.deposit();
        }
        assert_eq!(drain(&b), 50);
        tokio::time::advance(Duration::from_secs(5)).await;
        // A withdrawal (here a refused one) reads the clock, so the deposits
        // that follow land in the current bucket.
        assert!(!b.withdraw());
        for _ in 0..10 {
            b.deposit();
        }
        // The old withdrawals still count: 60 deposited, 50 taken.
        assert_eq!(b.available(), 10);
        tokio::time::advance(Duration::from_secs(6)).await;
        // The first 50 deposits and withdrawals have expired; the last 10 remain.
        assert_eq!(b.available(), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 0);
    }

    /// The peer case: deposits at 0, 301 and 1,102 ms with a 1 s ttl. Each
    /// counts until the end of its 100 ms bucket's ttl: the first until
    /// 1,000 ms, the second until 1,300 ms, the third until 2,100 ms.
    #[tokio::test(start_paused = true)]
    async fn deposits_at_a_steady_low_rate_count_for_their_ttl() {
        let b = RetryBudget::builder()
            .ttl(Duration::from_secs(1))
            .ratio(1.0)
            .min_per_sec(0)
            .build()
            .unwrap();
        let at = |ms: u64| tokio::time::advance(Duration::from_millis(ms));
        b.deposit();
        at(301).await;
        b.deposit();
        assert_eq!(b.available(), 2);
        at(801 - 301 + 198).await; // 999 ms
        assert_eq!(b.available(), 2);
        at(1).await; // 1,000 ms: the first has expired
        assert_eq!(b.available(), 1);
        at(102).await; // 1,102 ms
        b.deposit();
        assert_eq!(b.available(), 2);
        at(197).await; // 1,299 ms
        assert_eq!(b.available(), 2);
        at(1).await; // 1,300 ms
        assert_eq!(b.available(), 1);
        assert!(b.withdraw(), "the third deposit earned a retry");
        assert_eq!(b.available(), 0);
        at(799).await; // 2,099 ms
        assert!(!b.withdraw());
    }

    proptest::proptest! {
        /// Deposits and withdrawals at any times, any rate: the retries
        /// available are exactly what a plain recount of the bucketed
        /// window says, and every deposit counts for at least the ttl less
        /// one bucket and never for the ttl or longer.
        #[test]
        fn the_balance_is_a_recount_of_the_window(
            steps in proptest::collection::vec((0u64..1_500, 0u32..4, proptest::bool::ANY), 1..80),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let ttl = Duration::from_secs(1);
                let bucket_ms = 100;
                let b = RetryBudget::builder().ttl(ttl).ratio(1.0).min_per_sec(0).build().unwrap();
                let start = Instant::now();
                // (bucket, is a deposit) of every granted change.
                let mut log: Vec<(u64, bool)> = Vec::new();
                let mut deposits_ms: Vec<u64> = Vec::new();
                for (pause_ms, deposits, withdraw) in steps {
                    tokio::time::advance(Duration::from_millis(pause_ms)).await;
                    let now_ms = (Instant::now() - start).as_millis() as u64;
                    let bucket = now_ms / bucket_ms;
                    for _ in 0..deposits {
                        b.deposit();
                        log.push((bucket, true));
                        deposits_ms.push(now_ms);
                    }
                    let live = |log: &[(u64, bool)]| {
                        let mut n = 0i64;
                        for (at, deposit) in log {
                            if bucket - at < u64::from(BUCKETS) {
                                n += if *deposit { 1 } else { -1 };
                            }
                        }
                        n
                    };
                    if withdraw {
                        let expected = live(&log) > 0;
                        proptest::prop_assert_eq!(b.withdraw(), expected, "at {} ms", now_ms);
                        if expected {
                            log.push((bucket, false));
                        }
                    }
                    proptest::prop_assert_eq!(b.available() as i64, live(&log).max(0), "at {} ms", now_ms);
                    let counted = log.iter().filter(|(at, d)| *d && bucket - at < u64::from(BUCKETS)).count();
                    let surely = deposits_ms.iter().filter(|t| now_ms - **t < 1_000 - bucket_ms).count();
                    let at_most = deposits_ms.iter().filter(|t| now_ms - **t < 1_000).count();
                    proptest::prop_assert!((surely..=at_most).contains(&counted));
                }
                Ok(())
            })?;
        }
    }

    #[test]
    fn defaults_are_valid_and_invalid_configs_are_named() {
        let b = RetryBudget::default();
        assert_eq!(
            (b.ttl(), b.min_per_sec(), b.ratio()),
            (Duration::from_secs(10), 10, 0.2)
        );
        let field = |b: Builder| b.build().unwrap_err().field().to_owned();
        assert_eq!(
            field(RetryBudget::builder().ttl(Duration::from_millis(10))),
            "ttl"
        );
        assert_eq!(
            field(RetryBudget::builder().ttl(Duration::from_secs(7200))),
            "ttl"
        );
        assert_eq!(field(RetryBudget::builder().ratio(-0.1)), "ratio");
        assert_eq!(field(RetryBudget::builder().ratio(f64::NAN)), "ratio");
        assert_eq!(field(RetryBudget::builder().ratio(1e6)), "ratio");
        assert_eq!(
            field(RetryBudget::builder().ratio(0.0).min_per_sec(0)),
            "ratio"
        );
    }

    /// Many threads withdraw at once from a budget that allows exactly 500:
    /// never more than 500 succeed, and no more than a handful are refused
    /// spuriously.
    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        for _ in 0..20 {
            let b = Arc::new(budget(0.5, 0));
            for _ in 0..1_000 {
                b.deposit();
            }
            let granted: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let b = b.clone();
                        s.spawn(move || (0..200).filter(|_| b.withdraw()).count() as u64)
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert!(granted <= 500, "overdrawn: {granted}");
            // Racing near zero may refuse a few that fit: never more than
            // one per concurrent thread.
            assert!(granted >= 500 - 8, "too many refused: {granted}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn apply_keeps_the_balance_and_refuses_what_cannot_change() {
        let settings = RetryBudget::builder().name("db").ratio(0.5).min_per_sec(0);
        let budget = settings.clone().build().unwrap();
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw());
        assert_eq!(budget.available(), 4);
        // A lower ratio: what was earned stays; new requests earn less.
        budget.apply(&settings.clone().ratio(0.1)).unwrap();
        assert_eq!(budget.ratio(), 0.1);
        assert_eq!(budget.available(), 4, "the balance is kept");
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 5);
        // A reserve applies at once.
        budget
            .apply(&settings.clone().ratio(0.1).min_per_sec(2))
            .unwrap();
        assert_eq!(budget.available(), 5 + 2 * 10);
        // Refused: invalid, or a setting fixed at build. Nothing changes.
        let before = (budget.ratio(), budget.min_per_sec(), budget.available());
        let err = budget.apply(&settings.clone().ratio(-1.0)).unwrap_err();
        assert_eq!(err.field(), "ratio");
        let err = budget.apply(&settings.clone().name("other")).unwrap_err();
        assert_eq!(err.field(), "name");
        let err = budget
            .apply(&settings.clone().ttl(Duration::from_secs(20)))
            .unwrap_err();
        assert_eq!(err.field(), "ttl");
        assert_eq!(
            (budget.ratio(), budget.min_per_sec(), budget.available()),
            before
        );
        // Deposits still leave the window on time.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(budget.available(), 2 * 10);
    }
}
