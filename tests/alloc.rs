//! A closed circuit breaker, and a request through `presets::HttpClient`
//! and `presets::ReplicaStack` whose first attempt succeeds, allocate
//! nothing per call.
//!
//! A counting global allocator counts the allocations made on the test
//! thread while a flag is up; everything runs in one `#[test]`, so no other
//! test of this binary runs alongside it, and the flag is thread-local, so
//! the harness's own threads are not counted either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use steadfast::circuit_breaker::{CircuitBreakerLayer, SlidingWindow, State};
use tower::{Layer, Service};

/// The system allocator, counting allocations (`realloc` and
/// `alloc_zeroed` go through `alloc` by default) made while
/// [`COUNTING`] is set on the allocating thread.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: defers every operation to `System` unchanged; the count is a side
// effect that neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the thread-local may be gone while a thread exits.
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// An inner service that answers at once.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u64) -> Self::Future {
        ready(Ok(x))
    }
}

/// One call driven by hand with a no-op waker: ready, call, poll.
fn call_once<S>(svc: &mut S, x: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(ready) = svc.poll_ready(&mut cx) else {
        panic!("a closed breaker around a ready service is ready");
    };
    ready.expect("ready");
    let fut = pin!(svc.call(x));
    match fut.poll(&mut cx) {
        Poll::Ready(out) => out.expect("instant success"),
        Poll::Pending => panic!("an instant call completes on first poll"),
    }
}

const WARM_UP: u64 = 200;
const CALLS: u64 = 10_000;

/// Allocations over `CALLS` closed, successful calls after a warm-up.
fn happy_path_allocations(layer: &CircuitBreakerLayer) -> usize {
    let mut svc = layer.layer(Echo);
    for i in 0..WARM_UP {
        assert_eq!(call_once(&mut svc, i), i);
    }
    let n = allocations(|| {
        for i in 0..CALLS {
            black_box(call_once(&mut svc, black_box(i)));
        }
    });
    assert_eq!(layer.circuit().state(), State::Closed);
    n
}

/// The presets over an HTTP upstream (feature `http`).
#[cfg(feature = "http")]
mod presets {
    use super::*;

    /// An HTTP upstream that answers `200` at once.
    #[derive(Debug, Clone, Copy)]
    struct Upstream;

    type HttpRequest = http::Request<String>;
    type HttpResponse = http::Response<String>;

    impl Service<HttpRequest> for Upstream {
        type Response = HttpResponse;
        type Error = Infallible;
        type Future = Ready<Result<HttpResponse, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: HttpRequest) -> Self::Future {
            ready(Ok(http::Response::new(String::new())))
        }
    }

    /// A request whose own copy is free (a static URI, no headers): what is
    /// counted is the stack's cost alone. (Copying a request with headers for
    /// replay costs a clone of its header map.)
    fn request() -> HttpRequest {
        http::Request::new(String::new())
    }

    /// One HTTP call driven by hand: ready, call, poll once.
    fn http_call_once<S>(svc: &mut S, req: HttpRequest) -> HttpResponse
    where
        S: Service<HttpRequest, Response = HttpResponse>,
        S::Error: std::fmt::Debug,
    {
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(ready) = svc.poll_ready(&mut cx) else {
            panic!("a stack over a ready service is ready");
        };
        ready.expect("ready");
        let fut = pin!(svc.call(req));
        match fut.poll(&mut cx) {
            Poll::Ready(out) => out.expect("an instant success"),
            Poll::Pending => panic!("an instant call completes on first poll"),
        }
    }

    /// Allocations over `CALLS` successful calls through `svc` after a warm-up.
    fn http_allocations<S>(svc: &mut S) -> usize
    where
        S: Service<HttpRequest, Response = HttpResponse>,
        S::Error: std::fmt::Debug,
    {
        for _ in 0..WARM_UP {
            assert_eq!(http_call_once(svc, request()).status(), 200);
        }
        let requests: Vec<HttpRequest> = (0..CALLS).map(|_| request()).collect();
        allocations(|| {
            for req in requests {
                black_box(http_call_once(svc, black_box(req)));
            }
        })
    }

    pub(super) fn presets_do_not_allocate() {
        use steadfast::pool::Replica;
        use steadfast::presets::{HttpClient, ReplicaStack};

        // The presets' timeouts need tokio's timer; time stands still, so the
        // pool's periodic upkeep (table rebuilds, sweeps) does not run while
        // counting.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let _entered = rt.enter();

        let layer = HttpClient::new("alloc").build().expect("valid preset");
        let mut client = layer.layer(Upstream);
        let n = http_allocations(&mut client);
        assert_eq!(n, 0, "HttpClient: {n} allocations over {CALLS} calls");

        let parts = ReplicaStack::new("alloc")
            .build([
                ("a", Replica::new(Upstream)),
                ("b", Replica::new(Upstream)),
                ("c", Replica::new(Upstream)),
            ])
            .expect("valid preset");
        let mut stack = parts.service;
        let n = http_allocations(&mut stack);
        assert_eq!(n, 0, "ReplicaStack: {n} allocations over {CALLS} calls");
    }
}

// One test: nothing else in this binary runs while it counts.
#[test]
fn closed_happy_path_does_not_allocate() {
    // The counter sees what this thread allocates, and only while counting.
    assert_eq!(allocations(|| drop(black_box(Box::new(7u64)))), 1);
    assert_eq!(allocations(|| {}), 0);

    let cases = [
        ("default (count window)", CircuitBreakerLayer::builder()),
        (
            "time window",
            CircuitBreakerLayer::builder().window(SlidingWindow::time(Duration::from_secs(10))),
        ),
        (
            "every rule on",
            CircuitBreakerLayer::builder()
                .consecutive_failures(5)
                .slow_calls(Duration::from_secs(1), 0.5),
        ),
    ];
    for (name, builder) in cases {
        let layer = builder.build().expect("valid config");
        let n = happy_path_allocations(&layer);
        assert_eq!(
            n, 0,
            "{name}: {n} allocations over {CALLS} closed successful calls, expected none"
        );
    }
    #[cfg(feature = "http")]
    presets::presets_do_not_allocate();
}
