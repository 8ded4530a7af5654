//! Where a fallback answer comes from.

use std::future::{Future, Ready, ready};

use futures::future::BoxFuture;
use tower::{Service, ServiceExt};

use crate::error::BoxError;

/// Why the fallback is asked to answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure<Res> {
    /// The call failed with this error.
    Error(BoxError),
    /// The call answered, but the classifier calls the answer a failure.
    Response(Res),
}

/// A source of fallback answers.
pub trait Recover<Req, Res> {
    /// What the source keeps of a request before it is sent (a copy, for a
    /// fallback service; nothing for a fixed value).
    type Saved;
    /// The fallback answer.
    type Future: Future<Output = Result<Res, BoxError>>;

    /// Keeps what a fallback answer to `req` will need.
    fn save(&mut self, req: &Req) -> Self::Saved;

    /// Answers instead of a failed call.
    fn recover(&mut self, saved: Self::Saved, failure: Failure<Res>) -> Self::Future;
}

/// Answers with a fixed value; see [`value`].
#[derive(Debug, Clone)]
pub struct Value<T>(T);

/// A fixed answer (cloned each time).
pub fn value<T: Clone>(answer: T) -> Value<T> {
    Value(answer)
}

impl<Req, Res: Clone> Recover<Req, Res> for Value<Res> {
    type Saved = ();
    type Future = Ready<Result<Res, BoxError>>;

    fn save(&mut self, _req: &Req) {}

    fn recover(&mut self, _saved: (), _failure: Failure<Res>) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

/// Answers with a closure of the failure; see [`from_fn`].
#[derive(Debug, Clone)]
pub struct FromFn<F>(F);

/// An answer computed from the [`Failure`] (it may fail too).
pub fn from_fn<F>(f: F) -> FromFn<F> {
    FromFn(f)
}

impl<Req, Res, F> Recover<Req, Res> for FromFn<F>
where
    F: FnMut(Failure<Res>) -> Result<Res, BoxError>,
{
    type Saved = ();
    type Future = Ready<Result<Res, BoxError>>;

    fn save(&mut self, _req: &Req) {}

    fn recover(&mut self, _saved: (), failure: Failure<Res>) -> Self::Future {
        ready((self.0)(failure))
    }
}

/// Answers from another service given a copy of the request; see
/// [`service`].
#[derive(Debug, Clone)]
pub struct ServiceFallback<S>(S);

/// Answers from `svc` (a stale cache, a degraded mode, another region),
/// given a clone of the request.
pub fn service<S>(svc: S) -> ServiceFallback<S> {
    ServiceFallback(svc)
}

impl<Req, Res, S> Recover<Req, Res> for ServiceFallback<S>
where
    Req: Clone + Send + 'static,
    S: Service<Req, Response = Res> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Res: Send + 'static,
{
    type Saved = Req;
    type Future = BoxFuture<'static, Result<Res, BoxError>>;

    fn save(&mut self, req: &Req) -> Req {
        req.clone()
    }

    fn recover(&mut self, saved: Req, _failure: Failure<Res>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.oneshot(saved).await.map_err(Into::into) })
    }
}
