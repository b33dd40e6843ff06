//! The bench's upstream: a minimal monoio server answering every request with a fixed
//! body, fast enough that it is never what a benchmark measures.
//!
//! HTTP/1.1 with keep-alive and pipelining (request bodies, Content-Length only, are
//! read and discarded), and h2c with prior knowledge on the same port (the preface
//! decides). Over h2 a gRPC call (`content-type: application/grpc`) gets the body as
//! one gRPC message and `grpc-status: 0` trailers. One thread per `--threads`, each
//! with its own SO_REUSEPORT socket, optionally pinned.
//!
//! `GET /bench-upstream/served` answers how many HTTP/1.1 requests the server has
//! answered (itself not counted): what the health-checks scenario counts checks by,
//! at the endpoint. Each thread counts in a slot of its own, so counting adds no
//! cross-core traffic to the throughput scenarios.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

pub struct UpstreamOpts {
    pub listen: SocketAddr,
    pub body_size: usize,
    pub threads: usize,
    pub cpus: Vec<usize>,
}

pub fn run(opts: UpstreamOpts) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        opts.body_size
    )
    .into_bytes();
    response.extend((0..opts.body_size).map(|i| b'a' + (i % 26) as u8));
    let response: &'static [u8] = Box::leak(response.into_boxed_slice());
    let body = Bytes::from_static(&response[response.len() - opts.body_size..]);
    let mut message = BytesMut::with_capacity(5 + opts.body_size);
    message.put_u8(0);
    message.put_u32(opts.body_size as u32);
    message.extend_from_slice(&body);
    let bodies = Bodies {
        plain: body,
        grpc: message.freeze(),
    };
    let threads = opts.threads.max(1);
    let served: Served = (0..threads).map(|_| Slot::default()).collect();
    let mut handles = Vec::new();
    for t in 0..threads {
        let socket = crate::net::bind_reuseport(opts.listen)?;
        let bodies = bodies.clone();
        let served = served.clone();
        let cpu = opts.cpus.get(t % opts.cpus.len().max(1)).copied();
        handles.push(std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                crate::net::pin(cpu);
            }
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(socket).expect("listener");
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let counter = Counter {
                        served: served.clone(),
                        mine: t,
                    };
                    monoio::spawn(serve(stream, response, bodies.clone(), counter));
                }
            });
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The path whose answer is the count of requests served.
pub const SERVED_PATH: &str = "/bench-upstream/served";

/// One thread's count, on a cache line of its own.
#[derive(Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

type Served = Arc<[Slot]>;

/// A connection's view of the counts: its thread's slot to add to, every slot to sum.
struct Counter {
    served: Served,
    mine: usize,
}

impl Counter {
    fn count(&self) {
        // Only this thread writes its slot: a plain load and store, no locked add.
        let slot = &self.served[self.mine].0;
        slot.store(slot.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.served
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// The fixed body, plain and as one gRPC message.
#[derive(Clone)]
struct Bodies {
    plain: Bytes,
    grpc: Bytes,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn serve(mut stream: TcpStream, response: &'static [u8], bodies: Bodies, counter: Counter) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(response.len() * 4);
    let mut skip_body = 0usize;
    let mut first = true;
    let mut close = false;
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        if first {
            if buf.len() < PREFACE.len() && PREFACE.starts_with(&buf) {
                continue;
            }
            first = false;
            if buf.starts_with(PREFACE) {
                return serve_h2(stream, buf.freeze(), bodies).await;
            }
        }
        loop {
            if skip_body > 0 {
                let take = skip_body.min(buf.len());
                let _ = buf.split_to(take);
                skip_body -= take;
                if skip_body > 0 {
                    break;
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    skip_body = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0);
                    if req.path == Some(SERVED_PATH) {
                        let total = counter.total().to_string();
                        // A one-shot question: answered, then the connection closes.
                        close = true;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                            total.len()
                        );
                        out.extend_from_slice(head.as_bytes());
                        out.extend_from_slice(total.as_bytes());
                    } else {
                        counter.count();
                        out.extend_from_slice(response);
                    }
                    let _ = buf.split_to(n);
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            let (res, back) = stream.write_all(out).await;
            out = back;
            out.clear();
            if res.is_err() || close {
                return;
            }
        }
    }
}

/// h2c: every stream answered with the fixed body; gRPC calls as one message plus
/// `grpc-status: 0`.
async fn serve_h2(stream: TcpStream, head: Bytes, bodies: Bodies) {
    use monoio::io::IntoPollIo;
    let Ok(io) = stream.into_poll_io() else {
        return;
    };
    let io = Prefixed { head, inner: io };
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let bodies = bodies.clone();
        monoio::spawn(async move {
            let grpc = req
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let mut body = req.into_body();
            while let Some(Ok(d)) = body.data().await {
                let _ = body.flow_control().release_capacity(d.len());
            }
            let mut head = http::Response::builder().status(200);
            head = head.header(
                "content-type",
                if grpc {
                    "application/grpc"
                } else {
                    "text/plain"
                },
            );
            let Ok(head) = head.body(()) else { return };
            let Ok(mut send) = respond.send_response(head, false) else {
                return;
            };
            if grpc {
                let _ = send.send_data(bodies.grpc, false);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = send.send_trailers(trailers);
            } else {
                let _ = send.send_data(bodies.plain, true);
            }
        });
    }
}

/// Bytes read while looking for the preface, replayed before the socket.
struct Prefixed<T> {
    head: Bytes,
    inner: T,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let piece = self.head.split_to(n);
            buf.put_slice(&piece);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
