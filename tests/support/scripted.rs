//! A hyper upstream whose answers a test scripts, and which records every request it
//! got: when, its path, its `x-weft-attempt-count`, and its body's checksum. The retry
//! and fault tests read what reached the application from it.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::background::Background;
use crate::upstream::sha256_hex;

/// One request as the upstream got it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Its place among all requests this upstream got (0 first).
    pub index: usize,
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// `x-key`, which tests use to tell their requests apart.
    pub key: String,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: String,
    pub attempt: Option<String>,
    pub body_len: usize,
    pub body_sha256: String,
}

/// What the script answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Waited before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

/// The script: the request, and every request seen before it (this one included).
pub type Script = Arc<dyn Fn(&Seen, &[Seen]) -> Reply + Send + Sync>;

pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: Background,
}

impl ScriptedUpstream {
    /// Serves HTTP/1.1, or HTTP/2 with prior knowledge when `h2`.
    pub fn start(h2: bool, script: Script) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let server = Background::spawn(2, move |mut stopped| async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (record, script) = (record.clone(), script.clone());
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                handle(req, record.clone(), script.clone())
                            });
                            let io = TokioIo::new(stream);
                            if h2 {
                                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .serve_connection(io, service)
                                    .await;
                            } else {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, service)
                                    .await;
                            }
                        });
                    }
                }
            }
        });
        ScriptedUpstream {
            addr,
            seen,
            _server: server,
        }
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// The requests with `x-key: key`, in arrival order.
    pub fn seen_with(&self, key: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.key == key).collect()
    }
}

async fn handle(
    req: Request<Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
    script: Script,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let (key, attempt) = (
        header("x-key").unwrap_or_default(),
        header("x-weft-attempt-count"),
    );
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| header("host"))
        .unwrap_or_default();
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = {
        let mut all = record.lock().expect("seen");
        let seen = Seen {
            index: all.len(),
            at: Instant::now(),
            method,
            path,
            key,
            host,
            attempt,
            body_len: body.len(),
            body_sha256: sha256_hex(&body),
        };
        all.push(seen.clone());
        script(&seen, &all)
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(format!("status {}\n", reply.status))));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::OK);
    for (name, value) in reply.headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    Ok(response)
}
