//! Client streams over real tonic servers on loopback: a retry replays
//! one, and a hedge can back one up once `BufferBodyLayer` has read it
//! whole. The service is our own, with a codec of raw bytes (no code
//! generation): `/test.Upload/Sum` reads every message of the stream and
//! answers the number of bytes it got.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt;
use futures::future::BoxFuture;
use http::uri::PathAndQuery;
use steadfast::backoff::Backoff;
use steadfast::classify::GrpcErrorsAsFailures;
use steadfast::grpc::{BufferBodyLayer, GrpcReplay, GrpcStatusLayer, into_tonic_body, replayable};
use steadfast::hedge::HedgeDelay;
use steadfast::{HedgeLayer, RetryLayer};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Status, Streaming};
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = tonic::body::Body;

const PATH: &str = "/test.Upload/Sum";

/// Messages as raw bytes.
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What a server does with each upload, and what it saw.
#[derive(Default)]
struct Upload {
    /// Uploads still to answer `UNAVAILABLE`, once read.
    fail_first: AtomicUsize,
    /// Never answers, once it has read the upload.
    hang: AtomicBool,
    /// Each upload's bytes and its `grpc-previous-rpc-attempts`.
    seen: Mutex<Vec<(usize, Option<String>)>>,
}

/// The server's `/test.Upload/Sum`, as tonic's server runs it.
#[derive(Clone)]
struct UploadServer(Arc<Upload>);

impl tonic::server::NamedService for UploadServer {
    const NAME: &'static str = "test.Upload";
}

/// The method itself.
struct Sum(Arc<Upload>);

impl Service<tonic::Request<Streaming<Bytes>>> for Sum {
    type Response = tonic::Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        let upload = self.0.clone();
        let previous = req
            .metadata()
            .get("grpc-previous-rpc-attempts")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let mut stream = req.into_inner();
        Box::pin(async move {
            let mut total = 0;
            while let Some(message) = stream.message().await? {
                total += message.len();
            }
            upload
                .seen
                .lock()
                .expect("not poisoned")
                .push((total, previous));
            let failing = upload
                .fail_first
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(Status::unavailable("not yet"));
            }
            if upload.hang.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            Ok(tonic::Response::new(Bytes::from(total.to_string())))
        })
    }
}

impl Service<http::Request<Body>> for UploadServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let upload = self.0.clone();
        Box::pin(async move {
            if req.uri().path() != PATH {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            Ok(grpc.client_streaming(Sum(upload), req).await)
        })
    }
}

/// A server on a free loopback port.
async fn start() -> (SocketAddr, Arc<Upload>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let upload = Arc::new(Upload::default());
    let service = UploadServer(upload.clone());
    tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    (addr, upload)
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect_lazy()
}

/// Uploads `parts`, one message every `every`, through `service`: the
/// server's answer (the bytes it counted), or the call's status.
async fn upload<S>(service: S, parts: &[&'static str], every: Duration) -> Result<String, Status>
where
    S: tonic::client::GrpcService<Body, ResponseBody = Body>,
    S::Error: Into<steadfast::BoxError>,
{
    let mut grpc = tonic::client::Grpc::new(service);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    let messages = futures::stream::iter(parts.to_vec()).then(move |part| async move {
        tokio::time::sleep(every).await;
        Bytes::from_static(part.as_bytes())
    });
    let answer = grpc
        .client_streaming(
            tonic::Request::new(messages),
            PathAndQuery::from_static(PATH),
            BytesCodec,
        )
        .await?;
    Ok(String::from_utf8_lossy(&answer.into_inner()).into_owned())
}

const PARTS: [&str; 3] = ["a", "bb", "ccc"];

#[tokio::test]
async fn a_retry_replays_a_client_stream() {
    let (addr, server) = start().await;
    server.fail_first.store(1, Ordering::Relaxed);
    let retry = RetryLayer::builder()
        .name("uploads")
        .classify(GrpcErrorsAsFailures::new())
        .replay(GrpcReplay::new())
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .build()
        .expect("a valid retry");
    let stack = ServiceBuilder::new()
        .layer(GrpcStatusLayer::new())
        .map_request(replayable)
        .layer(retry)
        .map_request(into_tonic_body)
        .service(channel(addr));
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        upload(stack, &PARTS, Duration::from_millis(5)),
    )
    .await
    .expect("in time");
    assert_eq!(answer.expect("the retry's answer"), "6");
    let seen = server.seen.lock().expect("not poisoned").clone();
    assert_eq!(
        seen,
        [(6, None), (6, Some("1".to_owned()))],
        "the whole stream, sent again"
    );
}

/// Sends a request's first attempt to `first`, and every later one to
/// `later`, by its `grpc-previous-rpc-attempts`.
#[derive(Clone)]
struct ByAttempt {
    first: Channel,
    later: Channel,
}

impl Service<http::Request<Body>> for ByAttempt {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, tonic::transport::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let channel = match req.headers().contains_key("grpc-previous-rpc-attempts") {
            false => self.first.clone(),
            true => self.later.clone(),
        };
        Box::pin(channel.oneshot(req))
    }
}

#[tokio::test]
async fn a_client_stream_read_whole_first_is_hedged() {
    // The first attempt goes to a server that reads the upload and never
    // answers; a hedge, 50 ms after it, to one that answers. The caller
    // sends a message every 20 ms: still uploading when the hedge is due,
    // so without `BufferBodyLayer` the hedge cannot replay the body and
    // the call waits on the hung server. With it, the stream is read
    // first, sent at once, and the hedge answers.
    let (hung_addr, hung) = start().await;
    let (fast_addr, fast) = start().await;
    hung.hang.store(true, Ordering::Relaxed);
    let hedge = HedgeLayer::builder()
        .name("uploads")
        .classify(GrpcErrorsAsFailures::new())
        .replay(GrpcReplay::new())
        .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
        .build()
        .expect("a valid hedge");
    let replicas = ByAttempt {
        first: channel(hung_addr),
        later: channel(fast_addr),
    };
    let every = Duration::from_millis(20);

    let unbuffered = ServiceBuilder::new()
        .layer(GrpcStatusLayer::new())
        .map_request(replayable)
        .layer(hedge.clone())
        .map_request(into_tonic_body)
        .service(replicas.clone());
    let waited = tokio::time::timeout(
        Duration::from_millis(1_000),
        upload(unbuffered, &PARTS, every),
    )
    .await;
    assert!(
        waited.is_err(),
        "no hedge: the call waits on the hung server"
    );
    assert!(fast.seen.lock().expect("not poisoned").is_empty());

    let buffered = ServiceBuilder::new()
        .layer(GrpcStatusLayer::new())
        .layer(BufferBodyLayer::new().max_wait(Duration::from_secs(1)))
        .map_request(replayable)
        .layer(hedge)
        .map_request(into_tonic_body)
        .service(replicas);
    let answer = tokio::time::timeout(Duration::from_secs(5), upload(buffered, &PARTS, every))
        .await
        .expect("answered in time");
    assert_eq!(answer.expect("the hedge's answer"), "6");
    assert_eq!(
        fast.seen.lock().expect("not poisoned").clone(),
        [(6, Some("1".to_owned()))],
        "the hedge sent the whole stream"
    );
    assert_eq!(
        hung.seen.lock().expect("not poisoned").len(),
        2,
        "both calls' first attempts"
    );
}
