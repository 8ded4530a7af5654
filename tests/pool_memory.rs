//! Memory per replica of a pool: at most 4 KiB, measured with a counting
//! allocator over a pool of 10,000 replicas.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

use steadfast::pool::{Pool, Replica};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: defers every operation to `System` unchanged; the byte count is a
// side effect that neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `System.alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_replica_costs_at_most_4_kib() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    const N: usize = 10_000;
    // Ids and services are the caller's: made before counting.
    let ids: Vec<String> = (0..N).map(|i| format!("replica-{i}")).collect();
    let svc = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
    let replicas: Vec<_> = ids
        .into_iter()
        .map(|id| (id, Replica::new(svc).zone("z1")))
        .collect();
    COUNTING.with(|c| c.set(true));
    let pool = Pool::builder().build(replicas).unwrap();
    COUNTING.with(|c| c.set(false));
    let per_replica = LIVE.load(Ordering::Relaxed) as f64 / N as f64;
    println!("memory per replica: {per_replica:.0} bytes (pool of {N})");
    assert!(per_replica <= 4096.0, "{per_replica} bytes per replica");
    drop(pool);
}
