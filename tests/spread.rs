//! How evenly the pool spreads an open-loop load over identical replicas,
//! per second, with paused time: p2c over peak-EWMA alone herds at low
//! load (one replica takes most of each second), which the pool must not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast::pool::{Pool, Replica};
use tokio::time::Instant;
use tower::ServiceExt;

/// Each replica's answers per whole second of the run.
type Seconds = Arc<Mutex<HashMap<(&'static str, u64), u64>>>;

/// A replica answering in `base` plus a jitter of up to `base`, and one
/// call in 50 ten times slower, from its own seeded generator.
fn replica(
    name: &'static str,
    base: Duration,
    seed: u64,
    start: Instant,
    seconds: Seconds,
) -> (
    &'static str,
    Replica<tower::util::BoxCloneSyncService<u64, (), std::io::Error>>,
) {
    let state = Arc::new(AtomicU64::new(seed));
    let service = tower::service_fn(move |_: u64| {
        let state = state.clone();
        let seconds = seconds.clone();
        async move {
            let draw = splitmix(state.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
            let latency = if draw % 50 == 0 {
                base * 10
            } else {
                base + base.mul_f64((draw >> 11) as f64 / (1u64 << 53) as f64)
            };
            tokio::time::sleep(latency).await;
            let second = start.elapsed().as_secs();
            *seconds.lock().unwrap().entry((name, second)).or_default() += 1;
            Ok::<_, std::io::Error>(())
        }
    });
    (
        name,
        Replica::new(tower::util::BoxCloneSyncService::new(service)),
    )
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sends `rate` requests a second for `secs` seconds, open loop, through a
/// pool of replicas answering in `bases` (with weight 1); each replica's
/// share of every second after the first.
async fn shares(
    rate: u64,
    secs: u64,
    bases: &[(&'static str, Duration)],
) -> Vec<HashMap<&'static str, f64>> {
    weighted(
        rate,
        secs,
        &bases.iter().map(|&(n, b)| (n, b, 1)).collect::<Vec<_>>(),
    )
    .await
}

/// As [`shares`], with a weight for each replica.
async fn weighted(
    rate: u64,
    secs: u64,
    fleet: &[(&'static str, Duration, u32)],
) -> Vec<HashMap<&'static str, f64>> {
    let bases: Vec<(&'static str, Duration)> = fleet.iter().map(|&(n, b, _)| (n, b)).collect();
    let start = Instant::now();
    let seconds: Seconds = Arc::default();
    let pool = Pool::builder()
        .name("spread")
        .seed(3)
        .build(bases.iter().enumerate().map(|(i, &(name, base))| {
            let (name, replica) = replica(name, base, i as u64 + 1, start, seconds.clone());
            (name, replica.weight(fleet[i].2))
        }))
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate).unwrap());
    let mut calls = Vec::new();
    for _ in 0..rate * secs {
        tick.tick().await;
        calls.push(tokio::spawn(pool.clone().oneshot(0)));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let seconds = seconds.lock().unwrap();
    (1..secs)
        .map(|s| {
            let total: u64 = bases
                .iter()
                .map(|(n, _)| seconds.get(&(*n, s)).copied().unwrap_or(0))
                .sum();
            bases
                .iter()
                .map(|(n, _)| {
                    (
                        *n,
                        seconds.get(&(*n, s)).copied().unwrap_or(0) as f64 / total as f64,
                    )
                })
                .collect()
        })
        .collect()
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn identical_replicas_each_get_their_share_of_every_second() {
    for rate in [500, 5_000] {
        let fleet = [("a", MS), ("b", MS), ("c", MS)];
        let per_second = shares(rate, 10, &fleet).await;
        let worst = per_second
            .iter()
            .flat_map(|s| s.values())
            .map(|share| (share * 3.0 - 1.0).abs())
            .fold(0.0, f64::max);
        eprintln!("{rate}/s: worst {worst:.3}: {per_second:?}");
        assert!(
            worst <= 0.15,
            "{rate}/s: a share off by {:.0}%",
            worst * 100.0
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_replica_three_times_slower_gets_clearly_less() {
    let fleet = [("a", MS), ("b", MS), ("slow", 3 * MS)];
    let per_second = shares(500, 10, &fleet).await;
    let slow: f64 = per_second.iter().map(|s| s["slow"]).sum::<f64>() / per_second.len() as f64;
    eprintln!("slow share {slow:.3}: {per_second:?}");
    // Each replica takes turns at intervals in proportion to its cost, so
    // the slow one takes about half what each fast one does (an even share
    // would be a third, lowest-cost-wins p2c gave it 4% and herded).
    let fast: f64 =
        per_second.iter().map(|s| s["a"] + s["b"]).sum::<f64>() / (2 * per_second.len()) as f64;
    assert!(
        slow < 0.25 && slow < 0.6 * fast,
        "the slow replica took {:.0}%, each fast one {:.0}%",
        slow * 100.0,
        fast * 100.0
    );
}

#[tokio::test(start_paused = true)]
async fn weights_still_divide_the_traffic() {
    let fleet = [("heavy", MS, 2), ("b", MS, 1), ("c", MS, 1)];
    let per_second = weighted(500, 10, &fleet).await;
    let heavy: f64 = per_second.iter().map(|s| s["heavy"]).sum::<f64>() / per_second.len() as f64;
    eprintln!("heavy share {heavy:.3}");
    assert!(
        (0.42..=0.58).contains(&heavy),
        "weight 2 of 4 took {:.0}%",
        heavy * 100.0
    );
}

/// One answer twenty times slower than the rest draws a replica's
/// estimate up. Picking the lowest cost outright, the pool would send it
/// nothing until the estimate decayed (a 10 s time constant: some twenty
/// seconds), so it could never show it is fast again. It takes turns at a
/// slower pace instead, and its fast answers pull the estimate back: from
/// the next second on, it has its share again.
#[tokio::test(start_paused = true)]
async fn a_replica_drawn_up_by_one_slow_answer_gets_its_share_back() {
    let start = Instant::now();
    let seconds: Seconds = Arc::default();
    let replica = |name: &'static str, slow_call: Option<u64>| {
        let calls = Arc::new(AtomicU64::new(0));
        let seconds = seconds.clone();
        let service = tower::service_fn(move |_: u64| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let seconds = seconds.clone();
            async move {
                let latency = if Some(n) == slow_call { 20 * MS } else { MS };
                tokio::time::sleep(latency).await;
                let second = start.elapsed().as_secs();
                *seconds.lock().unwrap().entry((name, second)).or_default() += 1;
                Ok::<_, std::io::Error>(())
            }
        });
        (
            name,
            Replica::new(tower::util::BoxCloneSyncService::new(service)),
        )
    };
    // About two seconds in, b's 300th answer is its slow one.
    let pool = Pool::builder()
        .name("spike")
        .seed(5)
        .build([
            replica("a", None),
            replica("b", Some(300)),
            replica("c", None),
        ])
        .unwrap();
    let rate = 500;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut calls = Vec::new();
    for _ in 0..rate * 8 {
        tick.tick().await;
        calls.push(tokio::spawn(pool.clone().oneshot(0)));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let seconds = seconds.lock().unwrap();
    for s in 3..8 {
        let counts: Vec<u64> = ["a", "b", "c"]
            .iter()
            .map(|n| seconds.get(&(*n, s)).copied().unwrap_or(0))
            .collect();
        let total: u64 = counts.iter().sum();
        for (name, count) in ["a", "b", "c"].iter().zip(&counts) {
            let off = (*count as f64 * 3.0 / total as f64 - 1.0).abs();
            assert!(off <= 0.15, "second {s}: {name} took {count} of {total}");
        }
    }
}
