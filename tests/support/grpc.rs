//! gRPC test upstreams and clients, all tonic (no code generation: messages are raw
//! bytes through a pass-through codec, so the wire format is exactly tonic's).
//!
//! `GrpcUpstream` serves `grpc.health.v1.Health` (tonic-health) and `test.Echo`:
//! - `Unary`: echoes the message (after `x-sleep-ms` milliseconds, if asked);
//! - `Collect` (client streaming): answers `"<messages> <bytes>"`;
//! - `Repeat` (server streaming): sends N messages `msg-i` for a request `"N"`; `"N!"`
//!   then ends with FAILED_PRECONDITION and a custom trailer; `"forever"` streams until
//!   the client goes away, which `cancelled` counts;
//! - `Chat` (bidirectional): answers each message with `echo:<message>`;
//! - `Ticker` (bidirectional): sends `tick-i` every 200 ms whatever the client sends,
//!   until the client ends its side;
//! - `Fail`: FAILED_PRECONDITION with message `nope` and trailer `x-custom: kept`.
//!
//! While `failing` is set, `Unary` answers UNAVAILABLE (Trailers-Only: the status in
//! the response head) and `Repeat` ends its messages with UNAVAILABLE (in trailers).

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_util::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::background::Background;

/// Largest message either side accepts in these tests.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Messages are the raw bytes of the gRPC message frames.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A closure as a tower service, which tonic's server traits are implemented for.
#[derive(Clone)]
struct Handler<F>(F);

impl<F, Req, Resp, Fut> tower_service::Service<Req> for Handler<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>>,
{
    type Response = Resp;
    type Error = Status;
    type Future = Fut;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

type MessageStream = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, Status>> + Send>>;

#[derive(Clone)]
struct Echo {
    cancelled: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let cancelled = self.cancelled.clone();
        let failing = self.failing.load(Ordering::SeqCst);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            let path = req.uri().path().to_owned();
            Ok(match path.as_str() {
                "/test.Echo/Unary" if failing => {
                    Status::unavailable("failing on purpose").into_http()
                }
                "/test.Echo/Unary" => grpc.unary(Handler(unary), req).await,
                "/test.Echo/Collect" => grpc.client_streaming(Handler(collect), req).await,
                "/test.Echo/Repeat" => {
                    let handler = Handler(move |r| repeat(r, cancelled.clone(), failing));
                    grpc.server_streaming(handler, req).await
                }
                "/test.Echo/Chat" => grpc.streaming(Handler(chat), req).await,
                "/test.Echo/Ticker" => grpc.streaming(Handler(ticker), req).await,
                "/test.Echo/Fail" => grpc.unary(Handler(fail), req).await,
                _ => Status::unimplemented(path).into_http(),
            })
        })
    }
}

async fn unary(req: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    let sleep = req
        .metadata()
        .get("x-sleep-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(ms) = sleep {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = Response::new(req.into_inner());
    resp.metadata_mut()
        .insert("x-served-by", MetadataValue::from_static("echo"));
    Ok(resp)
}

async fn collect(req: Request<Streaming<Bytes>>) -> Result<Response<Bytes>, Status> {
    let mut stream = req.into_inner();
    let (mut count, mut bytes) = (0usize, 0usize);
    while let Some(msg) = stream.message().await? {
        count += 1;
        bytes += msg.len();
    }
    Ok(Response::new(Bytes::from(format!("{count} {bytes}"))))
}

async fn repeat(
    req: Request<Bytes>,
    cancelled: Arc<AtomicUsize>,
    failing: bool,
) -> Result<Response<MessageStream>, Status> {
    let ask = String::from_utf8_lossy(req.get_ref()).into_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Status>>(4);
    tokio::spawn(async move {
        if ask == "forever" {
            for i in 0.. {
                if tx.send(Ok(Bytes::from(format!("msg-{i}")))).await.is_err() {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let fail = ask.ends_with('!');
        let n: usize = ask.trim_end_matches('!').parse().unwrap_or(0);
        for i in 0..n {
            if tx.send(Ok(Bytes::from(format!("msg-{i}")))).await.is_err() {
                return;
            }
        }
        if fail {
            let _ = tx
                .send(Err(failed_precondition("stopped on purpose")))
                .await;
        } else if failing {
            let _ = tx
                .send(Err(Status::unavailable("failing on purpose")))
                .await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Response::new(Box::pin(stream) as MessageStream))
}

async fn chat(req: Request<Streaming<Bytes>>) -> Result<Response<MessageStream>, Status> {
    let stream = req.into_inner().map(|m| {
        m.map(|m| {
            let mut out = bytes::BytesMut::from(&b"echo:"[..]);
            out.extend_from_slice(&m);
            out.freeze()
        })
    });
    Ok(Response::new(Box::pin(stream) as MessageStream))
}

async fn ticker(req: Request<Streaming<Bytes>>) -> Result<Response<MessageStream>, Status> {
    let mut inbound = req.into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Status>>(4);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for i in 0.. {
            tokio::select! {
                _ = tick.tick() => {
                    if tx.send(Ok(Bytes::from(format!("tick-{i}")))).await.is_err() {
                        return;
                    }
                }
                m = inbound.next() => if !matches!(m, Some(Ok(_))) { return },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Response::new(Box::pin(stream) as MessageStream))
}

async fn fail(_: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    Err(failed_precondition("nope"))
}

fn failed_precondition(message: &str) -> Status {
    let mut meta = tonic::metadata::MetadataMap::new();
    meta.insert("x-custom", MetadataValue::from_static("kept"));
    Status::with_metadata(tonic::Code::FailedPrecondition, message, meta)
}

/// tonic gRPC server on its own thread and runtime; stopped on drop.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    /// `Repeat("forever")` streams that ended because the client went away.
    pub cancelled: Arc<AtomicUsize>,
    /// Fail `Unary` and `Repeat` with UNAVAILABLE (see the module's header).
    pub failing: Arc<AtomicBool>,
    pub health: tonic_health::server::HealthReporter,
    _server: Background,
}

impl GrpcUpstream {
    pub fn start() -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind grpc upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let cancelled = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let echo = Echo {
            cancelled: cancelled.clone(),
            failing: failing.clone(),
        };
        let (health_tx, health_rx) = std::sync::mpsc::channel();
        let server = Background::spawn(2, move |stopped| async move {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter.set_serving::<Echo>().await;
            let _ = health_tx.send(reporter);
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(echo)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        let health = health_rx.recv().expect("health reporter");
        GrpcUpstream {
            addr,
            cancelled,
            failing,
            health,
            _server: server,
        }
    }
}

/// The request and path of one call, once the channel is ready for it.
async fn call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    message: &'static [u8],
) -> (tonic::Request<bytes::Bytes>, http::uri::PathAndQuery) {
    grpc.ready().await.expect("ready");
    (
        tonic::Request::new(bytes::Bytes::from_static(message)),
        http::uri::PathAndQuery::from_static(path),
    )
}

/// One unary call of `path` with `message`: the status it ended with.
pub async fn unary_status(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    message: &'static [u8],
) -> tonic::Code {
    let (request, path) = call(grpc, path, message).await;
    match grpc.unary(request, path, RawCodec).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

/// One server-streaming call of `path` with `message`, read to its end: the status
/// it ended with (from the head, or the trailers after its messages).
pub async fn streaming_status(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    message: &'static [u8],
) -> tonic::Code {
    let (request, path) = call(grpc, path, message).await;
    let mut stream = match grpc.server_streaming(request, path, RawCodec).await {
        Ok(stream) => stream.into_inner(),
        Err(s) => return s.code(),
    };
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return tonic::Code::Ok,
            Err(s) => return s.code(),
        }
    }
}

/// A tonic client channel to `addr` (h2c) with generous message limits.
pub async fn client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to weft");
    tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// An h2 upstream that answers every stream with a gRPC response head, one message,
/// and then resets the stream with CANCEL.
pub struct ResettingUpstream {
    pub addr: SocketAddr,
    _server: Background,
}

impl ResettingUpstream {
    pub fn start() -> ResettingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let server = Background::spawn(1, move |mut stopped| async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => break,
                    a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                };
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(stream).await else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let head = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/grpc")
                                .body(())
                                .expect("response");
                            let Ok(mut send) = respond.send_response(head, false) else {
                                return;
                            };
                            let mut frame = bytes::BytesMut::new();
                            frame.put_u8(0);
                            frame.put_u32(5);
                            frame.extend_from_slice(b"first");
                            let _ = send.send_data(frame.freeze(), false);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            send.send_reset(h2::Reason::CANCEL);
                        });
                    }
                });
            }
        });
        ResettingUpstream {
            addr,
            _server: server,
        }
    }
}
