//! The HTTP/1.1 client side: one task per client connection, requests answered in
//! order, each through `lifecycle::run` with this file as its HTTP/1.1 adapter.
//!
//! A connection's turns: wait for a request (idle timeout before its first byte, header
//! timeout for the rest) -> read its head -> the lifecycle -> keep the connection, close
//! it, or hand it on (h2c preface, or a tunnel after `101`). Pipelined requests wait in
//! the read buffer and are parsed after the previous response is complete, so answers
//! keep their order.
//!
//! The connection task itself stays small while idle: the per-request state machine is
//! boxed for the duration of one turn, and the read buffer is given back while waiting
//! for the next request (see `transport`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use weft_mesh::config::HttpConfig;

use super::client_h2;
use super::completion::Progress;
use super::connection::{count_connection, ConnectionFacts};
use super::error::ProxyError;
use super::exchange::Exchange;
use super::facts::{Facts, Request};
use super::lifecycle::{self, ClientSide, LocalAnswer, Plan};
use super::local::{self, Persistence};
use super::relay::{self, write_to_client};
use super::tunnel;
use crate::observe::metrics::Family;
use crate::proto::h1::head::{parse_request, BodyFraming, RequestHead, Version};
use crate::runtime::worker::{BoundListener, Worker};
use crate::transport::{ClientStream, Conn, PollStream, ReadError, UpstreamStream};
use weft_mesh::config::UpstreamProtocol;

pub use super::relay::Next;

/// How long a keep-alive connection keeps its read buffer while waiting for the next
/// request; busy clients come back well within it, idle ones then cost no buffer.
const BUFFER_HOLD: Duration = Duration::from_millis(500);

const HEAD_READ: usize = 4096;

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
                monoio::spawn(client_h2::serve(worker, bound, client, conn));
            }
            Handoff::Tunnel(client, upstream) => {
                let idle = worker.snapshot().http.tunnel_idle_timeout.0;
                monoio::spawn(tunnel::relay(client, upstream, idle));
            }
        }
    }
}

impl<T> HandOff for PollStream<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    fn hand_off(to: Handoff<Self>, worker: Rc<Worker>, _: BoundListener, _: Rc<ConnectionFacts>) {
        // ALPN, not a preface, picks HTTP/2 over TLS: `Http2` cannot happen here.
        if let Handoff::Tunnel(client, upstream) = to {
            let idle = worker.snapshot().http.tunnel_idle_timeout.0;
            monoio::spawn(tunnel::relay_poll(client, upstream, idle));
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
                    // keep-alive connections at once; a connection whose first request
                    // has not arrived yet was accepted to be served, and is (within
                    // the header timeout): in a binary upgrade the old process still
                    // accepts until the new one serves.
                    _ = bound.closed.wait(), if !first => false,
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
    worker: &Rc<Worker>,
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
    let x = Exchange::new(worker, &snapshot, bound, conn);
    let head = match read_head(client, http).await {
        Ok(Some(h)) => h,
        Ok(None) => return Turn::Done(Next::Close),
        Err(error) => {
            // A head weft cannot read is no request: counted apart, by status.
            let status = error.status();
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
            let out = local::error(error, Persistence::Close, false);
            write_to_client(&x, client, out).await;
            return Turn::Done(Next::Close);
        }
    };
    Turn::Done(H1Exchange::run(&x, client, &head).await)
}

/// Whether a new connection opened with the HTTP/2 preface (reading more while what
/// arrived so far could still be one).
/// One deadline for the whole preface: a client dripping it a byte at a time gets no
/// more time than one sending it at once.
async fn is_h2_preface<S: ClientStream>(client: &mut Conn<S>, http: &HttpConfig) -> bool {
    let deadline = Instant::now() + http.header_read_timeout.0;
    while client.buf.len() < client_h2::PREFACE.len() && client_h2::PREFACE.starts_with(&client.buf)
    {
        match client.fill_until(HEAD_READ, deadline).await {
            Ok(n) if n > 0 => {}
            _ => return false,
        }
    }
    client.buf.starts_with(client_h2::PREFACE)
}

/// Completes the head whose first bytes are in the buffer; `None` when the client
/// closed first.
async fn read_head<S: ClientStream>(
    client: &mut Conn<S>,
    http: &HttpConfig,
) -> Result<Option<RequestHead>, ProxyError> {
    // The clock is read only when a head arrives in pieces.
    let mut deadline = None;
    loop {
        match parse_request(&mut client.buf, http.max_header_bytes, http.max_headers) {
            Ok(Some(head)) => return Ok(Some(head)),
            Ok(None) => {}
            Err(e) => return Err(ProxyError::BadHead(e)),
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + http.header_read_timeout.0);
        match client.fill_until(HEAD_READ, deadline).await {
            Ok(0) | Err(ReadError::Io(_)) => return Ok(None),
            Ok(_) => {}
            Err(ReadError::TimedOut) => return Err(ProxyError::HeadTimeout),
        }
    }
}

/// An HTTP/1.1 request, as the lifecycle sees it.
struct H1Exchange<'c, S> {
    client: &'c mut Conn<S>,
    facts: Facts<'c>,
    /// The client may keep the connection after this exchange.
    keep_alive: bool,
    /// An answer made before the request body was read closes the connection: the
    /// unread body would be taken for the next request.
    close_local: bool,
}

impl<'c, S: ClientStream> H1Exchange<'c, S> {
    async fn run(x: &Exchange<'_>, client: &'c mut Conn<S>, head: &'c RequestHead) -> Next {
        let mut facts = Facts::new(head, x.paths());
        facts.client_cert = x.conn.client_cert();
        let keep_alive = head.wants_keep_alive() && !x.closing();
        let mut exchange = H1Exchange {
            client,
            facts,
            keep_alive,
            close_local: !keep_alive || head.framing != BodyFraming::None,
        };
        lifecycle::run(x, &mut exchange).await
    }

    /// What a local answer says about the connection: closing, or staying (in words for
    /// an HTTP/1.0 client, which would otherwise take the answer to end it).
    fn persistence(&self, close: bool) -> Persistence {
        match (close, self.facts.head.version) {
            (true, _) => Persistence::Close,
            (false, Version::H10) => Persistence::KeepAlive10,
            (false, _) => Persistence::Keep,
        }
    }

    /// Writes a whole answer, then keeps the connection or closes it.
    async fn answer_with(&mut self, x: &Exchange<'_>, out: bytes::BytesMut, close: bool) -> Next {
        if write_to_client(x, self.client, out).await && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

impl<'c, S: ClientStream> ClientSide for H1Exchange<'c, S> {
    const PROTOCOL: &'static str = "http1";
    type Request = Facts<'c>;
    type Next = Next;

    fn request(&self) -> &Facts<'c> {
        &self.facts
    }

    /// gRPC is defined over HTTP/2 only; an HTTP/1.1 gRPC call cannot carry its status
    /// trailers reliably, so it is refused rather than half-proxied. `*` for anything
    /// but OPTIONS is 400.
    fn refuse(&self, _: &Exchange<'_>) -> Option<ProxyError> {
        let head = self.facts.head;
        if self.facts.is_grpc_content() {
            Some(ProxyError::GrpcNeedsHttp2)
        } else if head.target() == b"*" && head.method() != b"OPTIONS" {
            // RFC 9112 §3.2.4: the asterisk form is only for a server-wide OPTIONS.
            Some(ProxyError::BadRequestTarget(
                "the asterisk-form target is only for OPTIONS",
            ))
        } else {
            None
        }
    }

    async fn answer(&mut self, x: &Exchange<'_>, answer: LocalAnswer<'_>) -> Next {
        let (close, head_only) = (self.close_local, self.facts.head_only());
        let persist = self.persistence(close);
        let out = match answer {
            LocalAnswer::Direct(d, edits) => local::direct(
                d.status,
                &d.content_type,
                &d.body,
                edits,
                persist,
                head_only,
            ),
            LocalAnswer::Redirect { status, location } => local::response(
                status,
                "text/plain",
                b"",
                persist,
                head_only,
                &[("location", &location)],
            ),
        };
        self.answer_with(x, out, close).await
    }

    async fn relay(
        &mut self,
        x: &Exchange<'_>,
        plan: &Plan<'_>,
        progress: &Progress,
    ) -> Result<Next, ProxyError> {
        let (client, facts, keep) = (&mut *self.client, &self.facts, self.keep_alive);
        match plan.cluster.protocol {
            UpstreamProtocol::Http1 => {
                relay::h1_to_h1::relay(x, client, facts, plan, progress, keep).await
            }
            UpstreamProtocol::Http2 => {
                relay::h1_to_h2::relay(x, client, facts, plan, progress, keep).await
            }
        }
    }

    /// A weft-made error while nothing of the response was sent; then, or once it had
    /// begun, the connection closes unless the error came before any attempt on a
    /// connection that may stay (the request body may be partly unread).
    async fn fail(&mut self, x: &Exchange<'_>, error: ProxyError, progress: &Progress) -> Next {
        if error == ProxyError::ClientGone || progress.status.get().is_some() {
            return Next::Close;
        }
        let close = self.close_local || progress.attempts.get() > 0;
        let persist = self.persistence(close);
        let out = local::error(error, persist, self.facts.head_only());
        self.answer_with(x, out, close).await
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{mpsc, Arc};

    use weft_mesh::config::{self, Role};
    use weft_mesh::snapshot;

    use super::*;
    use crate::control::Control;
    use crate::proxy::connection::ConnectionFacts;
    use crate::runtime::wakers::LocalEvent;
    use weft_mesh::snapshot::ListenerRole;

    /// A worker on a one-listener config (listener "l", slot 0), for tests that build
    /// a task to weigh it.
    pub(crate) fn test_worker() -> (Rc<Worker>, BoundListener) {
        const CONFIG: &str = "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\
            routes = [ { match = { path_prefix = \"/\" }, direct_response = { status = 200 } } ]\n";
        let loaded = config::parse(std::path::Path::new("t.toml"), CONFIG, Role::Ingress)
            .expect("config parses");
        let first = snapshot::compile(&loaded).expect("config compiles");
        let control = Arc::new(Control::new(first, 1, Role::Ingress, Vec::new()));
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

    /// A connection accepted on a listener a reload just removed is closed unserved: it
    /// was once served in plain text even when the listener had been a TLS one.
    #[test]
    fn a_connection_on_a_removed_listener_is_closed_unserved() {
        use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
        let (worker, mut bound) = test_worker();
        bound.name = "removed".into();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("address");
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let (server, peer) = listener.accept().await.expect("accept");
            crate::proxy::spawn(worker, bound, server, peer);
            let (wrote, _) = client
                .write_all(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..])
                .await;
            wrote.expect("write");
            let read = monoio::time::timeout(
                std::time::Duration::from_secs(2),
                client.read(Vec::with_capacity(1024)),
            )
            .await;
            let (n, _) = read.expect("closed, not left open");
            assert_eq!(n.unwrap_or(0), 0, "served");
        });
    }
}
