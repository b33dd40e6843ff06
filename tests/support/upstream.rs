//! Test upstreams: a hyper server (the well-behaved application) and raw-socket
//! servers that misbehave in one precise way each.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};

use crate::background::Background;

type Body = BoxBody<Bytes, Infallible>;

/// The bytes `/big?n=N` sends: a fixed pattern, so tests can checksum without storing it.
pub fn big_body_byte(i: usize) -> u8 {
    (i.wrapping_mul(31).wrapping_add(i >> 13)) as u8
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hyper HTTP/1.1 server on its own thread and tokio runtime.
///
/// Routes: `/ws` WebSocket echo; `/big?n=N` N pattern bytes, chunked; `/sha256` answers
/// `HEX LEN` of the request body, then ` name=value` per request trailer; `/trailers` a
/// chunked body with an `x-checksum` trailer (sent when the request says `TE: trailers`); `/status/N`; `/sleep/MS`; anything else: a dump of the
/// request as received (method, target, headers), prefixed by `upstream=NAME`.
pub struct TestUpstream {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    _server: Background,
}

impl TestUpstream {
    /// An HTTP/1.1 upstream.
    pub fn start(name: &str) -> TestUpstream {
        Self::start_speaking(name, false, None, None)
    }

    /// The same upstream speaking HTTP/2 with prior knowledge (h2c).
    pub fn start_h2(name: &str) -> TestUpstream {
        Self::start_speaking(name, true, None, None)
    }

    /// The upstream behind TLS (`h2` picks the protocol, announced by ALPN).
    pub fn start_tls(name: &str, h2: bool, mut tls: rustls::ServerConfig) -> TestUpstream {
        tls.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Self::start_speaking(name, h2, None, Some(Arc::new(tls)))
    }

    /// An h2c upstream that allows at most `streams` concurrent streams per connection.
    pub fn start_h2_limited(name: &str, streams: u32) -> TestUpstream {
        Self::start_speaking(name, true, Some(streams), None)
    }

    fn start_speaking(
        name: &str,
        h2: bool,
        max_streams: Option<u32>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let name: Arc<str> = name.into();
        let count = connections.clone();
        let server = Background::spawn(1, move |mut stopped| async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        count.fetch_add(1, Ordering::SeqCst);
                        let name = name.clone();
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            match tls {
                                None => serve_one(stream, name, h2, max_streams).await,
                                Some(config) => {
                                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                                    if let Ok(stream) = acceptor.accept(stream).await {
                                        serve_one(stream, name, h2, max_streams).await;
                                    }
                                }
                            }
                        });
                    }
                }
            }
        });
        TestUpstream {
            addr,
            connections,
            _server: server,
        }
    }
}

/// Serves one connection (plain or TLS) with hyper.
async fn serve_one<T>(stream: T, name: Arc<str>, h2: bool, max_streams: Option<u32>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(name.clone(), req));
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(max_streams)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
    }
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

async fn handle(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    // Routes may sit under an `/api` prefix on the proxy side.
    let full_path = req.uri().path();
    let path = full_path
        .strip_prefix("/api")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(full_path)
        .to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    if path == "/ws" {
        return Ok(websocket(req));
    }
    if path == "/big" {
        let n: usize = query
            .strip_prefix("n=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 20);
        const PIECE: usize = 64 * 1024;
        let pieces = (0..n.div_ceil(PIECE)).map(move |p| {
            let start = p * PIECE;
            let data: Vec<u8> = (start..(start + PIECE).min(n)).map(big_body_byte).collect();
            Ok::<_, Infallible>(Frame::data(Bytes::from(data)))
        });
        let body = StreamBody::new(futures_util::stream::iter(pieces));
        return Ok(Response::new(BodyExt::boxed(body)));
    }
    if path == "/sha256" {
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        let mut trailers = String::new();
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        hasher.update(d);
                        len += d.len();
                    }
                    if let Some(t) = f.trailers_ref() {
                        for (k, v) in t {
                            trailers += &format!(" {k}={}", String::from_utf8_lossy(v.as_bytes()));
                        }
                    }
                }
                Err(e) => return Ok(full(400, format!("body error: {e}"))),
            }
        }
        return Ok(full(
            200,
            format!("{} {len}{trailers}", hex(&hasher.finalize())),
        ));
    }
    if path == "/trailers" {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert(
            "x-checksum",
            hyper::header::HeaderValue::from_static("abc123"),
        );
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"part one,"))),
            Ok(Frame::data(Bytes::from_static(b" part two"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))));
        r.headers_mut().insert(
            "trailer",
            hyper::header::HeaderValue::from_static("x-checksum"),
        );
        return Ok(r);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        let body = if code == 204 || code == 304 {
            String::new()
        } else {
            format!("status {code}\n")
        };
        return Ok(full(code, body));
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Ok(full(200, "slept\n"));
    }
    let mut dump = format!(
        "upstream={name}\nmethod={}\ntarget={}\nversion={:?}\n",
        req.method(),
        req.uri(),
        req.version()
    );
    for (k, v) in req.headers() {
        dump += &format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes()));
    }
    // Drain any body so keep-alive works.
    let _ = req.into_body().collect().await;
    let mut r = full(200, dump);
    r.headers_mut().insert(
        "x-upstream",
        name.parse()
            .unwrap_or(hyper::header::HeaderValue::from_static("?")),
    );
    r.headers_mut().insert(
        "x-secret",
        hyper::header::HeaderValue::from_static("upstream-internal"),
    );
    Ok(r)
}

fn websocket(req: Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return full(400, "not a websocket request");
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = full(101, Bytes::new());
    let h = r.headers_mut();
    h.insert(
        "connection",
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        "upgrade",
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        "sec-websocket-accept",
        accept
            .parse()
            .unwrap_or(hyper::header::HeaderValue::from_static("")),
    );
    r
}

/// How a `RawUpstream` misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Misbehavior {
    /// Announces Content-Length 100000, sends 1000 bytes, closes.
    CloseMidBody,
    /// Sends one chunk of a chunked body, then closes.
    CloseMidChunked,
    /// Reads the request and never answers.
    Silent,
    /// Answers the first request of each connection (keep-alive, body "fresh"), and
    /// closes without answering any later request on it.
    OneRequestPerConnection,
}

/// A raw TCP upstream, one thread per connection.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RawUpstream {
    pub fn start(behavior: Misbehavior) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw upstream");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop2, count) = (stop.clone(), connections.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || misbehave(s, behavior, stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawUpstream {
            addr,
            connections,
            stop,
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one request head (bodies are not expected here).
fn read_head(s: &mut TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    true
}

fn misbehave(mut s: TcpStream, behavior: Misbehavior, stop: Arc<AtomicBool>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    if !read_head(&mut s) {
        return;
    }
    match behavior {
        Misbehavior::CloseMidBody => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            let _ = s.write_all(&[b'x'; 1000]);
        }
        Misbehavior::CloseMidChunked => {
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        }
        Misbehavior::Silent => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Misbehavior::OneRequestPerConnection => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfresh\n");
            // The next request on this connection is read and dropped unanswered.
            let _ = read_head(&mut s);
        }
    }
}

/// A listener whose accept queue is full, so new connections never complete: for
/// connect timeouts. Keep the returned value alive for as long as it is needed.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<socket2::Socket>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        // Fill the accept queue; later SYNs are dropped and connects hang.
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            let _ = s.connect(&addr.into());
            fillers.push(s);
        }
        std::thread::sleep(Duration::from_millis(100));
        BlackHole {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}
