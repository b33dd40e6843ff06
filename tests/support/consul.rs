//! A Consul HTTP-API test agent: `GET /v1/health/service/<name>` with Consul's JSON
//! shape, `X-Consul-Index`, `?passing` and blocking queries (`index` + `wait`), as
//! ../shared/consul/README.md documents them. Tests add, remove and flip instances, and
//! inject the faults a client must survive. Every request is recorded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::background::Background;

/// What the agent does wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer with an index lower than the last one.
    IndexBackwards,
    /// Answer with `X-Consul-Index: 0`.
    IndexZero,
    /// `500 No cluster leader`.
    ServerError,
    /// Close the connection half way through the body.
    CloseMidBody,
    /// Close every new connection at once, without an answer (the agent is down).
    Down,
    /// Hold every request for a minute (past any client read timeout).
    Stall,
    /// Answer 200 with no Content-Length and stream bytes for as long as the client
    /// reads (at most 1 GiB): an agent, or whoever answers as one, growing its client.
    EndlessBody,
}

#[derive(Debug, Clone)]
struct Instance {
    id: String,
    service: String,
    addr: SocketAddr,
    status: &'static str,
}

struct State {
    index: u64,
    instances: Vec<Instance>,
    fault: Fault,
    /// Every request's target, in order.
    requests: Vec<String>,
    /// Services registered through the agent API, by ID (the JSON as sent).
    registered: HashMap<String, serde_json::Value>,
    /// The `X-Consul-Token` of every request that had one.
    tokens: Vec<String>,
}

pub struct ConsulAgent {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::Notify>,
    _server: Background,
}

impl ConsulAgent {
    pub fn start() -> ConsulAgent {
        Self::start_with(None)
    }

    /// The agent on HTTPS, with this server config.
    pub fn start_tls(tls: rustls::ServerConfig) -> ConsulAgent {
        Self::start_with(Some(Arc::new(tls)))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> ConsulAgent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind agent");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            index: 10,
            instances: Vec::new(),
            fault: Fault::None,
            requests: Vec::new(),
            registered: HashMap::new(),
            tokens: Vec::new(),
        }));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (st, ch) = (state.clone(), changed.clone());
        let server = Background::spawn(1, move |mut stopped| async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => break,
                    a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                };
                let fault = st.lock().unwrap().fault;
                if fault == Fault::Down {
                    drop(stream);
                    continue;
                }
                if fault == Fault::CloseMidBody {
                    tokio::spawn(close_mid_body(stream));
                    continue;
                }
                if fault == Fault::EndlessBody {
                    tokio::spawn(endless_body(stream));
                    continue;
                }
                let (st, ch, tls) = (st.clone(), ch.clone(), tls.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| handle(st.clone(), ch.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(config) => {
                            let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                            else {
                                return;
                            };
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        ConsulAgent {
            addr,
            state,
            changed,
            _server: server,
        }
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.state.lock().unwrap();
        f(&mut s);
        s.index += 1;
        drop(s);
        self.changed.notify_waiters();
    }

    /// Registers a passing instance of `service` at `addr`.
    pub fn add(&self, service: &str, id: &str, addr: SocketAddr) {
        self.change(|s| {
            s.instances.push(Instance {
                id: id.into(),
                service: service.into(),
                addr,
                status: "passing",
            })
        });
    }

    pub fn remove(&self, id: &str) {
        self.change(|s| s.instances.retain(|i| i.id != id));
    }

    /// Sets an instance's check status: "passing", "warning" or "critical".
    pub fn set_status(&self, id: &str, status: &'static str) {
        self.change(|s| {
            for i in s.instances.iter_mut().filter(|i| i.id == id) {
                i.status = status;
            }
        });
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
        // Blocked queries answer now, with the fault.
        self.changed.notify_waiters();
    }

    /// The registration (as sent) of the service with this ID, if registered.
    pub fn registered(&self, id: &str) -> Option<serde_json::Value> {
        self.state.lock().unwrap().registered.get(id).cloned()
    }

    /// The ACL tokens requests carried.
    pub fn tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().tokens.clone()
    }

    /// The targets of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn parse_wait(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().unwrap_or(300);
    match unit {
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => Duration::from_secs(n),
    }
    .min(Duration::from_secs(600))
}

async fn handle(
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::Notify>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req.uri().to_string();
    if state.lock().unwrap().fault == Fault::Stall {
        state.lock().unwrap().requests.push(target.clone());
        tokio::time::sleep(Duration::from_secs(60)).await;
        return Ok(plain(500, "stalled"));
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    state.lock().unwrap().requests.push(target);
    if let Some(t) = req.headers().get("x-consul-token") {
        let t = String::from_utf8_lossy(t.as_bytes()).into_owned();
        state.lock().unwrap().tokens.push(t);
    }
    if req.method() == hyper::Method::PUT {
        use http_body_util::BodyExt;
        if path == "/v1/agent/service/register" {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let Ok(reg) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return Ok(plain(400, "Request decode failed"));
            };
            let id = reg
                .get("ID")
                .or_else(|| reg.get("Name"))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            state.lock().unwrap().registered.insert(id, reg);
            return Ok(plain(200, ""));
        }
        if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
            let removed = state.lock().unwrap().registered.remove(id);
            return Ok(match removed {
                Some(_) => plain(200, ""),
                None => plain(404, &format!("Unknown service ID {id:?}")),
            });
        }
        return Ok(plain(404, "unknown endpoint"));
    }
    let Some(service) = path.strip_prefix("/v1/health/service/") else {
        return Ok(plain(404, "unknown endpoint"));
    };
    let asked: u64 = query_param(&query, "index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let wait = query_param(&query, "wait")
        .map(parse_wait)
        .unwrap_or(Duration::from_secs(300));
    // Blocking query: hold until the index moves past the one asked, or `wait` passes.
    if asked > 0 {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = changed.notified();
            {
                let s = state.lock().unwrap();
                if s.index > asked || !matches!(s.fault, Fault::None | Fault::Stall) {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
    }
    let (fault, index, body) = {
        let s = state.lock().unwrap();
        let passing = query_param(&query, "passing").is_some();
        let entries: Vec<serde_json::Value> = s
            .instances
            .iter()
            .filter(|i| i.service == service && (!passing || i.status == "passing"))
            .map(|i| {
                serde_json::json!({
                    "Node": {"Node": format!("node-{}", i.id), "Address": i.addr.ip().to_string()},
                    "Service": {
                        "ID": i.id, "Service": i.service, "Tags": null, "Meta": null,
                        // Empty: the client must fall back to the node address.
                        "Address": "", "Port": i.addr.port(), "Weights": {"Passing": 1, "Warning": 1}
                    },
                    "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, {"CheckID": format!("service:{}", i.id), "Status": i.status}]
                })
            })
            .collect();
        (s.fault, s.index, serde_json::to_string(&entries).unwrap())
    };
    let index = match fault {
        Fault::IndexBackwards => 1,
        Fault::IndexZero => 0,
        _ => index,
    };
    match fault {
        Fault::ServerError => return Ok(plain(500, "No cluster leader")),
        Fault::Down => return Ok(plain(503, "agent going down")),
        _ => {}
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("x-consul-index", index.to_string().parse().unwrap());
    r.headers_mut()
        .insert("x-consul-knownleader", "true".parse().unwrap());
    Ok(r)
}

/// Reads a request, then answers with a head promising more body than it sends.
async fn close_mid_body(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 99\r\nContent-Length: 400\r\n\r\n[{\"Node\": {\"Address\": \"10.")
        .await;
}

async fn endless_body(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let _ = stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 99\r\n\r\n[",
        )
        .await;
    let filler = vec![b' '; 64 * 1024];
    for _ in 0..16 * 1024 {
        if stream.write_all(&filler).await.is_err() {
            return;
        }
    }
}

fn plain(status: u16, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

/// Which test upstream (its `x-upstream` header) answered each of `n` GETs of `path`
/// on `addr`, and how many requests failed.
pub fn spread(addr: SocketAddr, path: &str, n: usize) -> (HashMap<String, usize>, usize) {
    use std::io::{Read, Write};
    let mut seen = HashMap::new();
    let mut failed = 0;
    for _ in 0..n {
        let answer = std::net::TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        let name = answer
            .ok()
            .filter(|a| a.starts_with("HTTP/1.1 200"))
            .and_then(|a| {
                a.lines()
                    .find_map(|l| l.strip_prefix("x-upstream: ").map(|v| v.trim().to_owned()))
            });
        match name {
            Some(name) => *seen.entry(name).or_insert(0) += 1,
            None => failed += 1,
        }
    }
    (seen, failed)
}
