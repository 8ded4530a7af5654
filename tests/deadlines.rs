//! A call's deadline through retry, hedge and pool (paused time): every
//! attempt carries the time left, and no repeat goes to a replica that
//! would not answer before the deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use steadfast::attempt::Replay;
use steadfast::backoff::Backoff;
use steadfast::error::BoxError;
use steadfast::hedge::HedgeDelay;
use steadfast::pool::Replica;
use steadfast::{HedgeLayer, Pool, RetryLayer};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A request that may say how long it allows, and is told the time left.
#[derive(Debug, Clone, Default)]
struct Job {
    allowed: Option<Duration>,
    left: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct JobReplay;

impl Replay<Job> for JobReplay {
    fn replay(&self, job: &Job) -> Option<Job> {
        Some(job.clone())
    }

    fn time_allowed(&self, job: &Job) -> Option<Duration> {
        job.allowed
    }

    fn mark_time_left(&self, job: &mut Job, left: Duration) {
        job.left = Some(left);
    }
}

/// How a replica answers: after a while, with an answer or a failure.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Answer(Duration),
    Fail(Duration),
}

/// A replica: its mode, the attempts it got, and the time left each said.
#[derive(Clone)]
struct Backend {
    mode: Arc<Mutex<Mode>>,
    lefts: Arc<Mutex<Vec<Option<Duration>>>>,
    calls: Arc<AtomicUsize>,
}

impl Backend {
    fn new(mode: Mode) -> Self {
        Self {
            mode: Arc::new(Mutex::new(mode)),
            lefts: Arc::default(),
            calls: Arc::default(),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("not poisoned") = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Service<Job> for Backend {
    type Response = &'static str;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.lefts.lock().expect("not poisoned").push(job.left);
        let mode = *self.mode.lock().expect("not poisoned");
        Box::pin(async move {
            match mode {
                Mode::Answer(after) => {
                    tokio::time::sleep(after).await;
                    Ok("answer")
                }
                Mode::Fail(after) => {
                    tokio::time::sleep(after).await;
                    Err("failed".into())
                }
            }
        })
    }
}

type Fleet = (Pool<&'static str, Backend>, Backend, Backend);

/// A pool over two replicas that have answered in 100 ms, 20 calls each
/// (so the pool knows how long they take).
async fn fleet() -> Fleet {
    let a = Backend::new(Mode::Answer(100 * MS));
    let b = Backend::new(Mode::Answer(100 * MS));
    let mut pool = Pool::builder()
        .name("deadlines")
        .build([
            ("a", Replica::new(a.clone())),
            ("b", Replica::new(b.clone())),
        ])
        .expect("a valid pool");
    while a.calls() < 20 || b.calls() < 20 {
        pool.ready()
            .await
            .expect("ready")
            .call(Job::default())
            .await
            .expect("an answer");
    }
    for backend in [&a, &b] {
        backend.calls.store(0, Ordering::Relaxed);
        backend.lefts.lock().expect("not poisoned").clear();
    }
    (pool, a, b)
}

fn retry(deadline: Duration) -> RetryLayer<steadfast::classify::ErrorsAsFailures, JobReplay> {
    RetryLayer::builder()
        .name("deadlines")
        .replay(JobReplay)
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::ZERO))
        .deadline(deadline)
        .build()
        .expect("a valid retry")
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_would_not_answer_in_time_is_not_sent() {
    // Both replicas fail after 100 ms. With 150 ms for the call, 50 ms are
    // left when the first attempt fails: less than the other replica takes
    // to answer, so the retry is not sent and the caller gets the failure
    // at once. With 500 ms, the retries go.
    let (pool, a, b) = fleet().await;
    a.set(Mode::Fail(100 * MS));
    b.set(Mode::Fail(100 * MS));
    let started = tokio::time::Instant::now();
    let err = retry(150 * MS)
        .layer(pool.clone())
        .oneshot(Job::default())
        .await
        .expect_err("failed");
    assert_eq!(err.to_string(), "failed", "the attempt's own failure");
    assert_eq!(
        started.elapsed(),
        100 * MS,
        "answered when the first failed"
    );
    assert_eq!(a.calls() + b.calls(), 1, "the retry was not sent");

    let (pool, a, b) = fleet().await;
    a.set(Mode::Fail(100 * MS));
    b.set(Mode::Fail(100 * MS));
    let err = retry(500 * MS)
        .layer(pool)
        .oneshot(Job::default())
        .await
        .expect_err("failed");
    assert_eq!(err.to_string(), "failed");
    assert_eq!(a.calls() + b.calls(), 3, "time enough: every retry went");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_would_not_answer_in_time_is_not_sent() {
    // Both replicas turn slow (1 s). The hedge is due after 50 ms: with
    // 120 ms for the call, 70 ms are left, less than the other replica
    // takes, so no hedge goes and the first attempt runs on alone. With
    // 500 ms, the hedge goes.
    let hedge = HedgeLayer::builder()
        .name("deadlines")
        .replay(JobReplay)
        .delay(HedgeDelay::Fixed(50 * MS))
        .build()
        .expect("a valid hedge");
    let (pool, a, b) = fleet().await;
    a.set(Mode::Answer(1_000 * MS));
    b.set(Mode::Answer(1_000 * MS));
    let answer = retry(120 * MS)
        .layer(hedge.layer(pool))
        .oneshot(Job::default())
        .await
        .expect("the first attempt's answer");
    assert_eq!(answer, "answer");
    assert_eq!(a.calls() + b.calls(), 1, "no hedge was sent");

    let (pool, a, b) = fleet().await;
    a.set(Mode::Answer(1_000 * MS));
    b.set(Mode::Answer(1_000 * MS));
    retry(500 * MS)
        .layer(hedge.layer(pool))
        .oneshot(Job::default())
        .await
        .expect("an answer");
    assert_eq!(a.calls() + b.calls(), 2, "time enough: the hedge went");
}

#[tokio::test(start_paused = true)]
async fn every_attempt_carries_the_time_left() {
    // Failures after 100 ms, retried at once: each attempt is told what
    // is left of the call's deadline, the retry's own or the shorter one
    // the request allows.
    let lefts = |a: &Backend, b: &Backend| {
        let mut all: Vec<Duration> = [a, b]
            .iter()
            .flat_map(|s| s.lefts.lock().expect("not poisoned").clone())
            .map(|left| left.expect("told the time left"))
            .collect();
        all.sort_unstable_by(|x, y| y.cmp(x));
        all
    };
    let a = Backend::new(Mode::Fail(100 * MS));
    let b = Backend::new(Mode::Fail(100 * MS));
    let pool = || {
        Pool::builder()
            .name("lefts")
            .build([
                ("a", Replica::new(a.clone())),
                ("b", Replica::new(b.clone())),
            ])
            .expect("a valid pool")
    };
    let _ = retry(1_000 * MS)
        .layer(pool())
        .oneshot(Job::default())
        .await;
    assert_eq!(lefts(&a, &b), [1_000 * MS, 900 * MS, 800 * MS]);

    for backend in [&a, &b] {
        backend.lefts.lock().expect("not poisoned").clear();
    }
    let job = Job {
        allowed: Some(500 * MS),
        left: None,
    };
    let _ = retry(1_000 * MS).layer(pool()).oneshot(job.clone()).await;
    assert_eq!(lefts(&a, &b), [500 * MS, 400 * MS, 300 * MS]);

    // A hedge alone has no deadline of its own: the request's.
    for backend in [&a, &b] {
        backend.lefts.lock().expect("not poisoned").clear();
    }
    let hedge = HedgeLayer::builder()
        .name("lefts")
        .replay(JobReplay)
        .delay(HedgeDelay::Fixed(50 * MS))
        .build()
        .expect("a valid hedge");
    let _ = hedge.layer(pool()).oneshot(job).await;
    assert_eq!(lefts(&a, &b)[0], 500 * MS);
}
