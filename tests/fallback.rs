//! Behaviour of the fallback layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use steadfast::circuit_breaker::CircuitBreakerLayer;
use steadfast::classify::Verdict;
use steadfast::error::{BoxError, CircuitOpen};
use steadfast::fallback::{self, Failure, FallbackLayer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

fn failing() -> impl Service<
    u32,
    Response = String,
    Error = BoxError,
    Future = impl Future<Output = Result<String, BoxError>>,
> + Clone {
    tower::service_fn(|req: u32| async move {
        Err::<String, BoxError>(format!("down for {req}").into())
    })
}

fn working() -> impl Service<
    u32,
    Response = String,
    Error = BoxError,
    Future = impl Future<Output = Result<String, BoxError>>,
> + Clone {
    tower::service_fn(|req: u32| async move { Ok::<_, BoxError>(format!("fresh {req}")) })
}

#[tokio::test]
async fn a_value_answers_a_failed_call_and_success_passes_through() {
    let mut svc = FallbackLayer::new(fallback::value("default".to_owned())).layer(failing());
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "default");
    let mut ok = FallbackLayer::new(fallback::value("default".to_owned())).layer(working());
    assert_eq!(ok.ready().await.unwrap().call(1).await.unwrap(), "fresh 1");
}

#[tokio::test]
async fn a_closure_sees_the_failure_and_may_fail_too() {
    let f = fallback::from_fn(|failure: Failure<String>| match failure {
        Failure::Error(e) if e.to_string().contains('7') => Err("no fallback for 7".into()),
        Failure::Error(e) => Ok(format!("degraded ({e})")),
        _ => Ok("degraded".to_owned()),
    });
    let mut svc = FallbackLayer::new(f).layer(failing());
    assert_eq!(
        svc.ready().await.unwrap().call(1).await.unwrap(),
        "degraded (down for 1)"
    );
    let err = svc.ready().await.unwrap().call(7).await.unwrap_err();
    assert_eq!(err.to_string(), "no fallback for 7");
}

#[tokio::test]
async fn a_service_answers_with_a_copy_of_the_request() {
    let stale =
        tower::service_fn(|req: u32| async move { Ok::<_, BoxError>(format!("stale {req}")) });
    let mut svc = FallbackLayer::new(fallback::service(stale)).layer(failing());
    assert_eq!(svc.ready().await.unwrap().call(9).await.unwrap(), "stale 9");
}

#[tokio::test]
async fn classified_failures_fall_back_too() {
    let five_hundred = tower::service_fn(|_: u32| async { Ok::<_, BoxError>("500".to_owned()) });
    let classify = |r: Result<&String, &BoxError>| match r {
        Ok(s) if s == "500" => Verdict::failure(),
        Ok(_) => Verdict::success(),
        Err(_) => Verdict::retryable_failure(),
    };
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    let f = fallback::from_fn(move |failure: Failure<String>| {
        if let Failure::Response(r) = failure {
            assert_eq!(r, "500");
            seen2.fetch_add(1, Ordering::SeqCst);
        }
        Ok("cached".to_owned())
    });
    let mut svc = FallbackLayer::new(f).classify(classify).layer(five_hundred);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "cached");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_open_circuit_degrades_to_the_fallback() {
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    breaker.circuit().force_open();
    let calls = Arc::new(AtomicU64::new(0));
    let inner = {
        let calls = calls.clone();
        tower::service_fn(move |_: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>("live".to_owned()) }
        })
    };
    let f = fallback::from_fn(|failure: Failure<String>| match failure {
        Failure::Error(e) if e.downcast_ref::<CircuitOpen>().is_some() => {
            Ok("from cache".to_owned())
        }
        _ => Err("unexpected".into()),
    });
    let mut svc = ServiceBuilder::new()
        .layer(FallbackLayer::new(f))
        .layer(breaker)
        .service(inner);
    assert_eq!(
        svc.ready().await.unwrap().call(1).await.unwrap(),
        "from cache"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_service_that_cannot_get_ready_is_answered_by_the_fallback() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, String>();
    handle.send_error("not ready");
    let mut svc = tower_test::mock::Spawn::new(
        FallbackLayer::new(fallback::value("default".to_owned())).layer(mock),
    );
    assert!(matches!(svc.poll_ready(), std::task::Poll::Ready(Ok(()))));
    assert_eq!(svc.call(1).await.unwrap(), "default");
}

#[tokio::test]
async fn a_panic_is_never_hidden() {
    let panicking = tower::service_fn(|_: u32| async {
        panic!("bug in the handler");
        #[allow(unreachable_code)]
        Ok::<String, BoxError>(String::new())
    });
    let mut svc = FallbackLayer::new(fallback::value("default".to_owned())).layer(panicking);
    let fut = svc.ready().await.unwrap().call(1);
    let joined = tokio::spawn(fut).await;
    assert!(joined.unwrap_err().is_panic());
}

#[tokio::test]
async fn served_fallbacks_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        FallbackLayer::new(fallback::value("default".to_owned())).name("profile")
    });
    let mut svc = layer.layer(failing());
    for i in 0..3 {
        svc.ready().await.unwrap().call(i).await.unwrap();
    }
    let mut ok = layer.layer(working());
    ok.ready().await.unwrap().call(1).await.unwrap();
    let served = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| {
            k.key().name() == "steadfast_fallback_served_total"
                && k.key().labels().any(|l| l.value() == "profile")
        })
        .map(|(.., v)| v);
    assert_eq!(served, Some(DebugValue::Counter(3)));
}
