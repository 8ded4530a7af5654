//! Behaviour of the chaos layer, with paused time.

use std::time::Duration;

use steadfast::chaos::{ChaosLayer, Injected, Latency};
use steadfast::error::BoxError;
use steadfast::pool::{OutlierDetection, Pool, Replica};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

fn echo() -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = impl Future<Output = Result<u32, BoxError>> + Send,
> + Clone
+ Send
+ Sync {
    tower::service_fn(|x: u32| async move { Ok::<_, BoxError>(x) })
}

#[tokio::test(start_paused = true)]
async fn rates_are_within_statistical_bounds_and_repeatable() {
    let run = |seed| async move {
        let chaos = ChaosLayer::new().seed(seed);
        let h = chaos.handle();
        h.set_error_rate(0.2);
        h.set_refuse_rate(0.1);
        let mut svc = chaos.layer(echo());
        let (mut failed, mut refused) = (0, 0);
        for i in 0..10_000 {
            match svc.ready().await.unwrap().call(i).await {
                Ok(_) => {}
                Err(e) => match e.downcast_ref::<Injected>() {
                    Some(Injected { refused: true }) => refused += 1,
                    Some(_) => failed += 1,
                    None => panic!("{e}"),
                },
            }
        }
        (failed, refused)
    };
    let (failed, refused) = run(1).await;
    // 10,000 draws: 4 standard deviations is about ±160 at 20%, ±120 at 10%.
    assert!((1_840..=2_160).contains(&failed), "{failed}");
    assert!((880..=1_120).contains(&refused), "{refused}");
    assert_eq!(
        run(1).await,
        (failed, refused),
        "the same seed, the same faults"
    );
}

#[tokio::test(start_paused = true)]
async fn off_by_default_and_switchable_at_run_time() {
    let chaos = ChaosLayer::new().seed(3);
    let h = chaos.handle();
    let mut svc = chaos.layer(echo());
    for i in 0..100 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
    }
    h.set_error_rate(1.0);
    assert!(svc.ready().await.unwrap().call(1).await.is_err());
    h.clear();
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn latency_fixed_uniform_and_heavy_tail() {
    let chaos = ChaosLayer::new().seed(5);
    let h = chaos.handle();
    let mut svc = chaos.layer(echo());
    h.set_latency(Latency::Fixed(20 * MS));
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(t0.elapsed(), 20 * MS);

    h.set_latency(Latency::Uniform(10 * MS, 30 * MS));
    for _ in 0..200 {
        let t0 = Instant::now();
        svc.ready().await.unwrap().call(1).await.unwrap();
        let took = t0.elapsed();
        assert!(took >= 10 * MS && took <= 30 * MS, "{took:?}");
    }

    h.set_latency(Latency::HeavyTail {
        base: MS,
        tail: 50 * MS,
        p: 0.01,
    });
    let mut slow = 0;
    for _ in 0..10_000 {
        let t0 = Instant::now();
        svc.ready().await.unwrap().call(1).await.unwrap();
        if t0.elapsed() >= 50 * MS {
            slow += 1;
        }
    }
    assert!((60..=140).contains(&slow), "1% of 10,000: {slow}");
}

#[tokio::test(start_paused = true)]
async fn a_hang_never_completes() {
    let chaos = ChaosLayer::new();
    chaos.handle().set_hang_rate(1.0);
    let mut svc = chaos.layer(echo());
    let fut = svc.ready().await.unwrap().call(1);
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), fut)
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn aimed_at_one_replica_of_a_pool() {
    let chaos = ChaosLayer::new().seed(9);
    chaos.handle().set_refuse_rate(1.0);
    let broken = tower::util::BoxCloneSyncService::new(chaos.layer(echo()));
    let fine = tower::util::BoxCloneSyncService::new(echo());
    let mut pool = Pool::builder()
        .seed(1)
        .failure_penalty(Duration::ZERO)
        .outlier(
            OutlierDetection::default()
                .consecutive_failures(Some(3))
                .max_ejected(1.0),
        )
        .build([
            ("broken", Replica::new(broken)),
            ("a", Replica::new(fine.clone())),
            ("b", Replica::new(fine)),
        ])
        .unwrap();
    let mut failures = 0;
    for i in 0..300 {
        if pool.ready().await.unwrap().call(i).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 3,
        "the broken replica fails until it is ejected; the others never do"
    );
}

#[tokio::test]
async fn a_handle_taken_before_seeding_still_steers_the_layer() {
    let layer = ChaosLayer::new();
    let early = layer.handle();
    let layer = layer.seed(11);
    let mut svc = layer.layer(tower::service_fn(|x: u32| async move {
        Ok::<_, steadfast::error::BoxError>(x)
    }));
    early.set_error_rate(1.0);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.is::<steadfast::chaos::Injected>(), "{err}");
    early.clear();
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
}
