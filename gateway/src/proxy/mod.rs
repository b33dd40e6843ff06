//! The request path: one task per client connection, requests answered in order.
//!
//! Phases of one exchange: read the head (idle timeout before its first byte, header
//! timeout for the rest) -> route with the snapshot current at that moment -> answer
//! locally (error, direct response, redirect) or forward -> keep the connection, close
//! it, or turn it into a tunnel. Pipelined requests wait in the read buffer and are
//! parsed after the previous response is complete, so answers keep their order.
//!
//! The connection task itself stays small while idle: the per-request state machine is
//! boxed for the duration of one exchange, and the read buffer is given back while
//! waiting for the next request (see `transport`).

pub mod connection;
mod facts;
mod forward;
mod forward_h2;
pub mod forwarded;
mod grpc;
mod http2;
mod local;
mod rewrite;
mod tls;
mod tunnel;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use weft_mesh::config::HttpConfig;
use weft_mesh::snapshot::{
    is_grpc_content_type, ClusterId, ListenerRole, Route, RouteAction, RouteTable, Snapshot,
};

use crate::observe::metrics::Family;
use crate::proto::h1::head::{parse_request, BodyFraming, Head, HeadError, RequestHead};
use crate::runtime::worker::{BoundListener, Worker};
use crate::transport::{ClientStream, Conn, PollStream, ReadError, UpstreamStream};
use connection::ConnectionFacts;
use facts::Facts;

/// How long a keep-alive connection keeps its read buffer while waiting for the next
/// request; busy clients come back well within it, idle ones then cost no buffer.
const BUFFER_HOLD: Duration = Duration::from_millis(500);

const HEAD_READ: usize = 4096;

/// The `status_class` key of requests the client cancelled (status classes are 1-5).
const CANCELLED_CLASS: u64 = 9;

/// What happens to the client connection after an exchange.
pub enum Next {
    KeepAlive,
    Close,
    /// The upstream switched protocols: relay bytes both ways from now on.
    Tunnel(Conn<UpstreamStream>),
    /// The client opened with the HTTP/2 preface (h2c, prior knowledge).
    Http2,
}

/// Starts serving a new client connection on `bound`: TLS first where the listener
/// terminates it, then HTTP/1.1 or HTTP/2.
///
/// Plain and TLS connections are separate tasks, so a plain connection's task is only
/// as large as its own future: a TLS future (handshake and rustls state) is many times
/// larger, and one task type for both made every idle plain connection cost 15 KiB.
pub fn spawn(worker: Rc<Worker>, bound: BoundListener, stream: TcpStream, peer: SocketAddr) {
    let snapshot = worker.snapshot();
    let listener = bound.in_snapshot(&snapshot);
    let role = listener.map_or(ListenerRole::Ingress, |l| l.role);
    let tls = listener
        .and_then(|l| l.tls.as_ref())
        .map(|t| tls::Settings {
            server: t.server.clone(),
            handshake_timeout: t.handshake_timeout,
            forward_client_cert: t.forward_client_cert,
        });
    drop(snapshot);
    match tls {
        Some(settings) => {
            monoio::spawn(tls::serve(worker, bound, stream, peer, role, settings));
        }
        None => {
            let local = stream.local_addr().ok();
            let conn = ConnectionFacts::plain(peer, local, bound.name.clone(), role);
            monoio::spawn(serve_conn(worker, bound, Conn::new(stream), Rc::new(conn)));
        }
    }
}

/// Where a connection goes when its HTTP/1.1 exchanges are over.
pub enum Handoff<S> {
    Closed,
    /// The client opened with the HTTP/2 preface.
    Http2(Conn<S>),
    /// The upstream switched protocols: relay bytes both ways.
    Tunnel(Conn<S>, Conn<UpstreamStream>),
}

/// Starts what a client connection becomes after HTTP/1.1, as a task of its own: its
/// state never adds to the size of the far more common HTTP/1.1 connection task.
pub trait HandOff: ClientStream + Sized {
    fn hand_off(
        to: Handoff<Self>,
        worker: Rc<Worker>,
        bound: BoundListener,
        conn: Rc<ConnectionFacts>,
    );
}

impl HandOff for TcpStream {
    fn hand_off(
        to: Handoff<Self>,
        worker: Rc<Worker>,
        bound: BoundListener,
        conn: Rc<ConnectionFacts>,
    ) {
        match to {
            Handoff::Closed => {}
            Handoff::Http2(client) => {
                monoio::spawn(http2::serve(worker, bound, client, conn));
            }
            Handoff::Tunnel(client, upstream) => {
                monoio::spawn(tunnel::relay(client, upstream));
            }
        }
    }
}

impl<T> HandOff for PollStream<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    fn hand_off(to: Handoff<Self>, _: Rc<Worker>, _: BoundListener, _: Rc<ConnectionFacts>) {
        // ALPN, not a preface, picks HTTP/2 over TLS: `Http2` cannot happen here.
        if let Handoff::Tunnel(client, upstream) = to {
            monoio::spawn(tunnel::relay_poll(client, upstream));
        }
    }
}

/// Serves a client's HTTP/1.1 exchanges (plain TCP or TLS), then hands the connection
/// on when it turns into h2c or a tunnel. The connection's whole task while idle.
pub async fn serve_conn<S: HandOff>(
    worker: Rc<Worker>,
    bound: BoundListener,
    mut client: Conn<S>,
    conn: Rc<ConnectionFacts>,
) {
    // A plain connection may still turn out to be h2c (its first bytes say): it is
    // counted once its first turn has shown it is not, and h2 counts its own.
    let mut open = (!S::PRIOR_KNOWLEDGE_H2).then(|| count_connection(&worker, &bound, "http1"));
    worker.connection_opened();

    let mut first = true;
    let handoff = loop {
        // Everything a request needs lives in this box for the length of one turn, so
        // a connection that sits idle costs only this small outer loop.
        let turn = Box::pin(turn(&worker, &bound, &mut client, &conn, first)).await;
        if open.is_none() && !matches!(turn, Turn::Done(Next::Http2)) {
            open = Some(count_connection(&worker, &bound, "http1"));
        }
        match turn {
            Turn::Idle { left } if S::BUFFERLESS_IDLE => {
                let deadline = worker.idle_timers.deadline(Instant::now() + left);
                let readable = monoio::select! {
                    r = client.stream.readable() => r,
                    _ = deadline => false,
                    // Draining, or a reload that removed the listener, closes idle
                    // keep-alive connections at once.
                    _ = bound.closed.wait() => false,
                };
                if !readable {
                    break Handoff::Closed;
                }
                // Bytes (or EOF) are waiting: the next turn reads them at once.
            }
            Turn::Done(Next::KeepAlive) if !bound.closed.fired() => first = false,
            Turn::Done(Next::Http2) => break Handoff::Http2(client),
            Turn::Done(Next::Tunnel(upstream)) => break Handoff::Tunnel(client, upstream),
            Turn::Idle { .. } | Turn::Done(_) => break Handoff::Closed,
        }
    };
    // An HTTP/1.1 connection ends here (h2 counts itself; a tunnel is no longer HTTP).
    drop(open);
    worker.connection_closed();
    S::hand_off(handoff, worker, bound, conn);
}

/// A client connection counted in `weft_open_connections`: dropping it lowers the gauge.
pub(crate) struct OpenConnection(Arc<crate::observe::metrics::Cell>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.sub(1);
    }
}

/// Counts a client connection in `weft_accepted_connections_total` and
/// `weft_open_connections` by listener and protocol, until the result is dropped.
pub(crate) fn count_connection(
    worker: &Worker,
    bound: &BoundListener,
    protocol: &'static str,
) -> OpenConnection {
    let key = [bound.slot as u64, protocol.as_ptr() as u64, 0, 0];
    let labels = || {
        vec![
            ("listener", bound.name.to_string()),
            ("protocol", protocol.to_owned()),
        ]
    };
    worker
        .counters
        .bump(Family::AcceptedConnections, key, labels);
    let open = worker.counters.cell(Family::OpenConnections, key, labels);
    open.add(1);
    OpenConnection(open)
}

enum Turn {
    /// No request arrived while the read buffer was held; wait (bufferless) for up
    /// to `left` more.
    Idle {
        left: Duration,
    },
    Done(Next),
}

/// One turn of a connection: wait briefly for a request, read its head, answer it.
async fn turn<S: ClientStream>(
    worker: &Worker,
    bound: &BoundListener,
    client: &mut Conn<S>,
    conn: &ConnectionFacts,
    first: bool,
) -> Turn {
    let snapshot = worker.snapshot();
    let http = &snapshot.http;
    if client.buf.is_empty() {
        // Before the first byte: the header timeout on a new connection, else the idle timeout.
        let wait = if first {
            http.header_read_timeout.0
        } else {
            http.idle_timeout.0
        };
        // A coarse deadline: the hold needs no precision, and a monoio timer per
        // request costs more than a slot in the worker's slab.
        // Streams that cannot wait bufferless hold the read for the whole wait.
        let hold_for = if S::BUFFERLESS_IDLE {
            BUFFER_HOLD.min(wait)
        } else {
            wait
        };
        let hold = worker.idle_timers.deadline(Instant::now() + hold_for);
        match client.fill_within(hold).await {
            Ok(Some(0)) | Err(_) => return Turn::Done(Next::Close),
            Ok(Some(_)) => {}
            Ok(None) => {
                return Turn::Idle {
                    left: wait.saturating_sub(hold_for),
                }
            }
        }
    }
    if S::PRIOR_KNOWLEDGE_H2 && first && is_h2_preface(client, http).await {
        return Turn::Done(Next::Http2);
    }
    let head = match read_head(client, http).await {
        HeadRead::Request(h) => h,
        HeadRead::Closed => return Turn::Done(Next::Close),
        HeadRead::Rejected(status, why) => {
            worker.counters.bump(
                Family::RejectedRequests,
                [bound.slot as u64, status as u64, 0, 0],
                || {
                    vec![
                        ("listener", bound.name.to_string()),
                        ("status", status.to_string()),
                    ]
                },
            );
            let out = local::error(status, why, true, false);
            send_within(worker, &mut client.stream, out, http.idle_timeout.0).await;
            return Turn::Done(Next::Close);
        }
    };
    let exchange = Exchange {
        worker,
        snapshot: &snapshot,
        bound,
        conn,
    };
    Turn::Done(exchange.run(client, head).await)
}

enum HeadRead {
    Request(RequestHead),
    Closed,
    Rejected(u16, &'static str),
}

/// Whether a new connection opened with the HTTP/2 preface (reading more while what
/// arrived so far could still be one).
/// One deadline for the whole preface: a client dripping it a byte at a time gets no
/// more time than one sending it at once.
async fn is_h2_preface<S: ClientStream>(client: &mut Conn<S>, http: &HttpConfig) -> bool {
    let deadline = Instant::now() + http.header_read_timeout.0;
    while client.buf.len() < http2::PREFACE.len() && http2::PREFACE.starts_with(&client.buf) {
        match client.fill_until(HEAD_READ, deadline).await {
            Ok(n) if n > 0 => {}
            _ => return false,
        }
    }
    client.buf.starts_with(http2::PREFACE)
}

/// Completes the head whose first bytes are in the buffer.
async fn read_head<S: ClientStream>(client: &mut Conn<S>, http: &HttpConfig) -> HeadRead {
    // The clock is read only when a head arrives in pieces.
    let mut deadline = None;
    loop {
        match parse_request(&mut client.buf, http.max_header_bytes, http.max_headers) {
            Ok(Some(head)) => return HeadRead::Request(head),
            Ok(None) => {}
            Err(e) => return HeadRead::Rejected(rejection_status(e), rejection_reason(e)),
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + http.header_read_timeout.0);
        match client.fill_until(HEAD_READ, deadline).await {
            Ok(0) | Err(ReadError::Io(_)) => return HeadRead::Closed,
            Ok(_) => {}
            Err(ReadError::TimedOut) => {
                return HeadRead::Rejected(408, "request head not received in time")
            }
        }
    }
}

/// Writes to the client, giving up (false) when it takes nothing for `limit`: a client
/// that stops reading must not pin a task forever. The deadline is a coarse slot in the
/// worker's slab, not a timer, because every response goes through here.
async fn send_within<B: IoBuf, S: ClientStream>(
    worker: &Worker,
    stream: &mut S,
    buf: B,
    limit: Duration,
) -> bool {
    let deadline = worker.idle_timers.deadline(Instant::now() + limit);
    monoio::select! {
        r = stream.write_all(buf) => r.0.is_ok(),
        _ = deadline => false,
    }
}

fn rejection_status(e: HeadError) -> u16 {
    match e {
        HeadError::Malformed(_) => 400,
        HeadError::TooLarge => 431,
        HeadError::UnsupportedEncoding => 501,
        HeadError::UnsupportedExpectation => 417,
    }
}

fn rejection_reason(e: HeadError) -> &'static str {
    match e {
        HeadError::Malformed(why) => why,
        HeadError::TooLarge => "request header section too large",
        HeadError::UnsupportedEncoding => "unsupported transfer coding",
        HeadError::UnsupportedExpectation => "unsupported expectation",
    }
}

/// One request/response exchange and everything it needs to know.
pub struct Exchange<'a> {
    pub worker: &'a Worker,
    pub snapshot: &'a Snapshot,
    pub bound: &'a BoundListener,
    /// Who the client is and how it connected: peer, scheme, TLS identity.
    pub conn: &'a ConnectionFacts,
}

impl Exchange<'_> {
    fn routes(&self) -> Option<&RouteTable> {
        self.bound.in_snapshot(self.snapshot).map(|l| &l.routes)
    }

    async fn run<S: ClientStream>(self, client: &mut Conn<S>, head: RequestHead) -> Next {
        let mut facts = Facts::new(&head);
        facts.client_cert = self.conn.client_cert();
        let head_only = head.method() == b"HEAD";
        let keep_alive = head.wants_keep_alive() && !self.closing();
        // An unread request body would be taken for the next request: close instead.
        let close_local = !keep_alive || head.framing != BodyFraming::None;
        if head
            .header("content-type")
            .is_some_and(is_grpc_content_type)
        {
            // gRPC is defined over HTTP/2 only; an HTTP/1.1 gRPC call cannot carry its
            // status trailers reliably, so it is refused rather than half-proxied.
            self.count(None, None, 505);
            let why = "gRPC needs HTTP/2 (h2c prior knowledge, or TLS with ALPN h2)";
            return self
                .answer(
                    client,
                    local::error(505, why, close_local, head_only),
                    close_local,
                )
                .await;
        }
        let Some(route) = self.routes().and_then(|t| t.find(&facts)) else {
            self.count(None, None, 404);
            return self
                .answer(
                    client,
                    local::error(404, "no route for this request", close_local, head_only),
                    close_local,
                )
                .await;
        };
        match &route.action {
            RouteAction::Direct(d) => {
                self.count(Some(route), None, d.status);
                let out = local::direct(
                    d.status,
                    &d.content_type,
                    &d.body,
                    &route.response_headers,
                    close_local,
                    head_only,
                );
                self.answer(client, out, close_local).await
            }
            RouteAction::Redirect(r) => {
                self.count(Some(route), None, r.status);
                let location = local::redirect_location(
                    r,
                    self.conn.scheme,
                    facts.authority,
                    facts.path,
                    facts.path_and_query,
                );
                let out = local::response(
                    r.status,
                    "text/plain",
                    b"",
                    close_local,
                    head_only,
                    &[("location", &location)],
                );
                self.answer(client, out, close_local).await
            }
            RouteAction::Forward(f) => {
                forward::forward(&self, client, &facts, route, f, keep_alive).await
            }
        }
    }

    /// Who the client is, for the forwarding headers.
    fn client_info(&self) -> rewrite::ClientInfo<'_> {
        rewrite::ClientInfo {
            peer: self.conn.peer,
            scheme: self.conn.scheme,
            client_cert: self.conn.forwarded_client_cert(),
        }
    }

    /// Whether this connection must close after the current exchange: the process is
    /// draining, or a reload removed the listener.
    fn closing(&self) -> bool {
        self.bound.closed.fired()
    }

    async fn answer<S: ClientStream>(
        &self,
        client: &mut Conn<S>,
        out: BytesMut,
        close: bool,
    ) -> Next {
        if self.send(client, out).await && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Answers a forwarding failure with a weft-made error and closes: the request body
    /// may be partly unread, so the connection cannot carry another request.
    async fn fail<S: ClientStream>(
        &self,
        client: &mut Conn<S>,
        route: &Arc<Route>,
        cluster: ClusterId,
        status: u16,
        why: &str,
        head_only: bool,
    ) -> Next {
        self.count(Some(route), Some(cluster), status);
        self.send(client, local::error(status, why, true, head_only))
            .await;
        Next::Close
    }

    /// Writes to the client within the idle timeout; false if it failed or stalled.
    async fn send<B: IoBuf, S: ClientStream>(&self, client: &mut Conn<S>, buf: B) -> bool {
        send_within(
            self.worker,
            &mut client.stream,
            buf,
            self.snapshot.http.idle_timeout.0,
        )
        .await
    }

    /// Counts a response by listener, route, cluster and status class.
    fn count(&self, route: Option<&Arc<Route>>, cluster: Option<ClusterId>, status: u16) {
        self.count_class(route, cluster, (status / 100).min(5) as u64);
    }

    /// Counts a request the client gave up on before its response was complete (it
    /// closed the connection or reset the stream): `status_class="cancelled"`, so every
    /// request is counted once, whatever became of it.
    fn count_cancelled(&self, route: Option<&Arc<Route>>, cluster: Option<ClusterId>) {
        self.count_class(route, cluster, CANCELLED_CLASS);
    }

    fn count_class(&self, route: Option<&Arc<Route>>, cluster: Option<ClusterId>, class: u64) {
        self.worker.answered.set(self.worker.answered.get() + 1);
        let class_label = || {
            if class == CANCELLED_CLASS {
                "cancelled".to_owned()
            } else {
                format!("{class}xx")
            }
        };
        self.bump_request(
            Family::Requests,
            route,
            cluster,
            class,
            ("status_class", class_label),
        );
    }

    /// Counts a gRPC call by the grpc-status its client got (beside `count`, which
    /// counts it by HTTP status class).
    fn count_grpc(&self, route: Option<&Arc<Route>>, cluster: Option<ClusterId>, code: u16) {
        let label = || code.to_string();
        self.bump_request(
            Family::GrpcRequests,
            route,
            cluster,
            u64::from(code),
            ("grpc_status", label),
        );
    }

    /// Bumps a per-request family keyed by route and cluster (in this snapshot) and one
    /// more value, labelled `outcome`.
    fn bump_request(
        &self,
        family: Family,
        route: Option<&Arc<Route>>,
        cluster: Option<ClusterId>,
        value: u64,
        outcome: (&'static str, impl FnOnce() -> String),
    ) {
        let route_key = route.map_or(0, |r| Arc::as_ptr(r) as u64);
        let cluster_key = cluster.map_or(0, |c| c as u64 + 1);
        let key = [
            self.snapshot.version,
            route_key,
            cluster_key << 16 | self.bound.slot as u64,
            value,
        ];
        self.worker.counters.bump(family, key, || {
            vec![
                ("listener", self.bound.name.to_string()),
                ("route", route.map(|r| r.name.clone()).unwrap_or_default()),
                (
                    "cluster",
                    cluster
                        .map(|c| self.snapshot.clusters[c].name.clone())
                        .unwrap_or_default(),
                ),
                (outcome.0, (outcome.1)()),
            ]
        });
    }

    /// Counts an upstream failure in `family` by cluster and reason.
    fn count_upstream(&self, family: Family, cluster: ClusterId, reason: &'static str) {
        let key = [
            self.snapshot.version,
            cluster as u64,
            reason.as_ptr() as u64,
            0,
        ];
        self.worker.counters.bump(family, key, || {
            let label = if family == Family::UpstreamTimeouts {
                "phase"
            } else {
                "reason"
            };
            vec![
                ("cluster", self.snapshot.clusters[cluster].name.clone()),
                (label, reason.to_owned()),
            ]
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{mpsc, Arc};

    use weft_mesh::config::{self, Role};
    use weft_mesh::snapshot;

    use super::*;
    use crate::runtime::driver::Driver;
    use crate::runtime::wakers::LocalEvent;
    use crate::runtime::Control;

    /// A worker on a one-listener config (listener "l", slot 0), for tests that build
    /// a task to weigh it.
    pub(crate) fn test_worker() -> (Rc<Worker>, BoundListener) {
        const CONFIG: &str = "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\
            routes = [ { match = { path_prefix = \"/\" }, direct_response = { status = 200 } } ]\n";
        let loaded = config::parse(std::path::Path::new("t.toml"), CONFIG, Role::Ingress)
            .expect("config parses");
        let first = snapshot::compile(&loaded).expect("config compiles");
        let control = Arc::new(Control::new(
            first,
            1,
            Driver::Epoll,
            Role::Ingress,
            Vec::new(),
        ));
        let (_tx, rx) = mpsc::channel();
        let worker = Rc::new(Worker::new(0, control, rx));
        let bound = BoundListener {
            name: "l".into(),
            slot: 0,
            closed: Rc::new(LocalEvent::default()),
        };
        (worker, bound)
    }

    /// Every idle keep-alive connection is one of these tasks, so its size is most of
    /// what an idle connection costs. It once grew from ~700 bytes to 15 KiB unnoticed
    /// (a TLS future inlined into every plain connection's task); this keeps it small.
    #[test]
    fn a_plain_connection_task_stays_small() {
        let (worker, bound) = test_worker();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let conn =
                ConnectionFacts::plain(addr, None, bound.name.clone(), ListenerRole::Ingress);
            let conn = Rc::new(conn);
            let task = serve_conn(worker, bound, Conn::new(stream), conn);
            let size = std::mem::size_of_val(&task);
            assert!(size <= 1024, "a plain connection's task is {size} bytes");
        });
    }
}
