//! Helpers shared by the integration tests: a real HTTP/1 server on loopback
//! whose answers are switched at run time, and a hyper-util client for it.
//!
//! ```ignore
//! mod support;
//! use support::{Reply, TestServer};
//!
//! let server = TestServer::start().await;
//! let client = support::client();
//! server.set_reply(Reply::unavailable_retry_after("120"));
//! let res = client.request(support::get(&server.uri("/"))).await?;
//! assert_eq!(server.requests(), 1);
//! ```
//!
//! A test may also script the next few answers ([`TestServer::fail_first`],
//! [`TestServer::script`]) and have the server read and keep every request
//! it receives, body included ([`TestServer::record`],
//! [`TestServer::received`]); a client for any request body type comes from
//! [`client_for`]. One path may answer apart from the rest
//! ([`TestServer::set_path_reply`], a health endpoint say), requests are
//! counted per path too ([`TestServer::requests_to`]), and a stopped server
//! can be started again on the same port ([`TestServer::start_at`]).
//!
//! # Time
//!
//! Nothing here arms a tokio timer: the server's hyper builder has no timer
//! (and its header read timeout is off), the client has no pool timer, and
//! loopback addresses are IP literals, so no happy-eyeballs delay either.
//! Tests may therefore pause tokio time (`start_paused = true`) and move it
//! with `tokio::time::advance`: with no timer pending, auto-advance never
//! jumps the clock while a request is on the wire.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

pub mod metrics;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The request body the test client sends.
pub type Body = Empty<Bytes>;

/// The hyper-util client the tests wrap in layers.
pub type HttpClient = Client<HttpConnector, Body>;

/// What the [`TestServer`] answers to every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `200 OK`, body `ok`.
    Ok,
    /// The given status, body `error`, with an optional `Retry-After` value
    /// (sent as is, so a test may send garbage or an HTTP-date).
    Status {
        /// The status code.
        status: StatusCode,
        /// The `Retry-After` header value, if any.
        retry_after: Option<String>,
    },
}

impl Reply {
    /// `503 Service Unavailable` without `Retry-After`.
    pub fn unavailable() -> Self {
        Self::status(StatusCode::SERVICE_UNAVAILABLE)
    }

    /// `503 Service Unavailable` with `Retry-After: value`.
    pub fn unavailable_retry_after(value: impl Into<String>) -> Self {
        Self::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(value.into()),
        }
    }

    /// Any status, without `Retry-After`.
    pub fn status(status: StatusCode) -> Self {
        Self::Status {
            status,
            retry_after: None,
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        match self {
            Self::Ok => Response::new(Full::new(Bytes::from_static(b"ok"))),
            Self::Status {
                status,
                retry_after,
            } => {
                let mut res = Response::new(Full::new(Bytes::from_static(b"error")));
                *res.status_mut() = *status;
                if let Some(value) = retry_after {
                    let value = HeaderValue::from_str(value).expect("a valid header value");
                    res.headers_mut().insert(RETRY_AFTER, value);
                }
                res
            }
        }
    }
}

/// A request as the server received it, body read to the end (see
/// [`TestServer::record`]).
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: Method,
    /// The request target, as sent (a path for HTTP/1 origin-form).
    pub uri: Uri,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

#[derive(Debug)]
struct Shared {
    reply: Mutex<Reply>,
    requests: AtomicU64,
    /// Answers for the next requests, one each, before `reply` again.
    script: Mutex<VecDeque<Reply>>,
    /// Whether to read and keep every request (see `TestServer::record`).
    record: AtomicBool,
    received: Mutex<Vec<Received>>,
    /// How long to wait before answering (a tokio sleep: paused time
    /// moves past it when the runtime is idle).
    delay: Mutex<std::time::Duration>,
    /// Answers for requests to one path, ahead of the script and the reply
    /// (empty unless a test sets one).
    path_replies: Mutex<HashMap<String, Reply>>,
    /// Requests received, per path.
    per_path: Mutex<HashMap<String, u64>>,
}

impl Shared {
    /// The answer to the request for `path` that just arrived: the path's
    /// own reply if it has one, else the next scripted one, or else the
    /// current reply.
    fn next_reply(&self, path: &str) -> Reply {
        if let Some(reply) = self.path_replies.lock().unwrap().get(path) {
            return reply.clone();
        }
        match self.script.lock().unwrap().pop_front() {
            Some(reply) => reply,
            None => self.reply.lock().unwrap().clone(),
        }
    }
}

/// A real HTTP/1 server on `127.0.0.1` (a port the OS picks), one task per
/// connection. Its answer is switched with [`set_reply`](Self::set_reply)
/// and it counts the requests it received.
///
/// Dropping the handle (or [`shutdown`](Self::shutdown)) stops the accept
/// loop and asks every open connection to close once its current request is
/// answered (idle keep-alive connections close at once).
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it wakes every `changed()` of the server's tasks.
    stop: Option<watch::Sender<()>>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server that answers `200 ok`.
    pub async fn start() -> Self {
        Self::start_with(Reply::Ok).await
    }

    /// Starts a server that answers `reply`.
    pub async fn start_with(reply: Reply) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port");
        Self::serve_on(listener, reply)
    }

    /// Starts a server that answers `200 ok` on `addr`: the address of a
    /// server that was stopped (with [`shutdown`](Self::shutdown), so its
    /// listener is closed), to bring "the same" server back. The port is
    /// bound with `SO_REUSEADDR`, so connections of the old server still in
    /// `TIME_WAIT` do not stand in the way. Its counters start from zero.
    pub async fn start_at(addr: SocketAddr) -> Self {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .expect("a TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(addr)
            .unwrap_or_else(|e| panic!("bind {addr} again: {e}"));
        let listener = socket.listen(1024).expect("listen");
        Self::serve_on(listener, Reply::Ok)
    }

    /// Serves on a bound listener (a task per connection).
    fn serve_on(listener: TcpListener, reply: Reply) -> Self {
        let addr = listener.local_addr().expect("the bound address");
        let shared = Arc::new(Shared {
            reply: Mutex::new(reply),
            requests: AtomicU64::new(0),
            script: Mutex::new(VecDeque::new()),
            record: AtomicBool::new(false),
            received: Mutex::new(Vec::new()),
            delay: Mutex::new(std::time::Duration::ZERO),
            path_replies: Mutex::new(HashMap::new()),
            per_path: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(());
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Self {
            addr,
            shared,
            stop: Some(stop),
            accept: Some(accept),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn uri(&self, path: &str) -> Uri {
        format!("http://{}{path}", self.addr)
            .parse()
            .expect("a valid URI")
    }

    /// Switches what the server answers from the next request on.
    pub fn set_reply(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    /// What the server answers now.
    pub fn reply(&self) -> Reply {
        self.shared.reply.lock().unwrap().clone()
    }

    /// Wait `delay` before answering each request from now on (a slow
    /// replica). The wait is a tokio sleep, the one timer this server arms.
    pub fn set_delay(&self, delay: std::time::Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Answer `200 ok` from now on.
    pub fn set_healthy(&self) {
        self.set_reply(Reply::Ok);
    }

    /// Answer `503` from now on, with `Retry-After: retry_after` if given.
    pub fn set_unavailable(&self, retry_after: Option<&str>) {
        self.set_reply(match retry_after {
            Some(value) => Reply::unavailable_retry_after(value),
            None => Reply::unavailable(),
        });
    }

    /// How many requests the server has received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many requests for `path` (the URI path, query excluded) the
    /// server has received so far; they count in [`requests`](Self::requests)
    /// too.
    pub fn requests_to(&self, path: &str) -> u64 {
        self.shared
            .per_path
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Answers every request for `path` with `reply` from now on, whatever
    /// the script or the server's reply say (a health endpoint that fails
    /// while the rest of the server is fine, say). Scripted answers are
    /// left for the other paths.
    pub fn set_path_reply(&self, path: &str, reply: Reply) {
        self.shared
            .path_replies
            .lock()
            .unwrap()
            .insert(path.to_owned(), reply);
    }

    /// Requests for `path` are answered as any other from now on.
    pub fn clear_path_reply(&self, path: &str) {
        self.shared.path_replies.lock().unwrap().remove(path);
    }

    /// Answers the next requests with `replies`, one each and in order
    /// (after any still scripted), then goes back to the current reply.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    /// Answers the next `n` requests with `reply` (see [`script`](Self::script)),
    /// e.g. `fail_first(2, Reply::unavailable())` on a healthy server.
    pub fn fail_first(&self, n: usize, reply: Reply) {
        self.script(std::iter::repeat_n(reply, n));
    }

    /// From the next request on, reads every request's body to the end
    /// before answering, and keeps the request (see
    /// [`received`](Self::received)). A request whose body fails to arrive
    /// (the client hung up) is not kept, and is answered `400`.
    pub fn record(&self) {
        self.shared.record.store(true, Ordering::SeqCst);
    }

    /// The requests kept since [`record`](Self::record), in arrival order.
    /// A request is kept before it is answered, so once the client has the
    /// answer, the request is here.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The bodies of [`received`](Self::received).
    pub fn bodies(&self) -> Vec<Bytes> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }

    /// Stops the server and waits for its accept loop to end (at once: the
    /// loop only waits on `accept` and the stop signal).
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(accept) = self.accept.take() {
            accept.await.expect("the accept loop does not panic");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Dropping the sender is the stop signal; the tasks end by themselves.
        self.stop.take();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            // Only the sender's drop ends the wait: nothing is ever sent.
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // A connection that failed before it was accepted
                // (reset, out of descriptors): keep serving the others.
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, shared.clone(), stopped.clone()));
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<()>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            shared.requests.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path();
            *shared
                .per_path
                .lock()
                .unwrap()
                .entry(path.to_owned())
                .or_default() += 1;
            let reply = shared.next_reply(path);
            let delay = *shared.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if shared.record.load(Ordering::SeqCst) {
                let (head, body) = req.into_parts();
                let Ok(body) = body.collect().await else {
                    return Ok(Reply::status(StatusCode::BAD_REQUEST).response());
                };
                shared.received.lock().unwrap().push(Received {
                    method: head.method,
                    uri: head.uri,
                    headers: head.headers,
                    body: body.to_bytes(),
                });
            }
            Ok::<_, Infallible>(reply.response())
        }
    });
    let conn = http1::Builder::new()
        // No timer on purpose (see the module docs): say so explicitly.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        // Errors are the client's business (it hung up mid-request).
        _ = conn.as_mut() => {}
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A hyper-util client (HTTP/1, plain TCP, connection pool without timers).
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The same client for another request body type (a streaming body, a
/// `ReplayBody`, …).
pub fn client_for<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// A `GET uri` request with an empty body.
pub fn get(uri: &Uri) -> Request<Body> {
    Request::get(uri.clone())
        .body(Empty::new())
        .expect("a valid request")
}

/// Reads a response's body to the end (which also lets the client reuse
/// the connection) and returns the status and the body.
pub async fn read(res: Response<Incoming>) -> (StatusCode, Bytes) {
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("read the response body")
        .to_bytes();
    (status, body)
}
