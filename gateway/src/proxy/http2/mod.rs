//! HTTP/2 clients (h2c with prior knowledge on plain listeners, or TLS with ALPN h2):
//! the connection, its limits and defences, and each stream's routing.
//!
//! One task drives the connection (h2's `accept` loop); every stream gets a task of its
//! own that routes with the snapshot current when it arrived and answers as the h1
//! path does: local responses, or a forwarded exchange, to an HTTP/1.1 upstream
//! (`to_h1`) or an HTTP/2 one (`to_h2`). Bodies stream both ways under h2 flow control:
//! client data is released only once the upstream took it, and data goes to the client
//! only as its window allows, so a slow reader holds back the upstream read instead of
//! growing memory. Errors weft makes on gRPC calls are gRPC statuses (`grpc`).

use std::borrow::Cow;
use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::request::Parts;
use http::Response;
use monoio::io::IntoPollIo;
use weft_mesh::config::UpstreamProtocol;
use weft_mesh::snapshot::{Cluster, Forward, RequestFacts, Route, RouteAction};

use super::connection::ConnectionFacts;
use super::facts::{normalize_host, CLIENT_CERT_HEADER};
use super::{grpc, local, rewrite, Exchange};
use crate::observe::metrics::Family;
use crate::runtime::worker::{BoundListener, Worker};
use crate::transport::{Conn, Replay};

mod send;
mod to_h1;
mod to_h2;

pub(super) use send::{send_all, within, Pace, SendError};
use send::{Metered, SendBudget};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a stream task ended, as the connection's rapid-reset defence counts it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    Done,
    /// The client reset the stream before its exchange finished.
    ClientReset,
}

/// Per-connection stream bookkeeping, shared by the connection task and its streams.
#[derive(Default)]
struct Activity {
    open: Cell<usize>,
    /// When the last stream ended; a connection with no stream for the idle timeout is
    /// sent GOAWAY, as an idle HTTP/1.1 keep-alive connection is closed.
    idle_since: Cell<Option<Instant>>,
    streams: Cell<u64>,
    /// Streams the client reset before their exchange finished, and streams refused
    /// because the client had more in flight than it may (only possible by resetting
    /// streams whose work was still running).
    client_resets: Cell<u64>,
}

impl Activity {
    /// Whether the client has reset so many of its streams that serving it is work for
    /// nothing (CVE-2023-44487): more than the limit, and more than half of all streams.
    fn abusive(&self, max_resets: u32) -> bool {
        let resets = self.client_resets.get();
        resets > u64::from(max_resets) && resets * 2 > self.streams.get()
    }
}

/// Serves an h2c client whose first bytes (the preface) are already in `client.buf`.
pub async fn serve(
    worker: Rc<Worker>,
    bound: BoundListener,
    client: Conn,
    conn: Rc<ConnectionFacts>,
) {
    let Conn { stream, buf } = client;
    let Ok(io) = stream.into_poll_io() else {
        return;
    };
    let io = Replay {
        head: buf,
        inner: io,
    };
    serve_io(worker, bound, io, conn).await
}

/// Serves an HTTP/2 client on any transport (h2c, or TLS after ALPN chose h2).
pub async fn serve_io<T>(
    worker: Rc<Worker>,
    bound: BoundListener,
    io: T,
    client: Rc<ConnectionFacts>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Every client connection counts, h2c and TLS-h2 alike; the gauge is lowered
    // however this function returns.
    let _open = super::count_connection(&worker, &bound, "http2");
    let snapshot = worker.snapshot();
    let limits = &snapshot.http2;
    let budget = Rc::new(SendBudget::new(u64::from(limits.max_send_buffer_bytes)));
    let io = Metered {
        inner: io,
        budget: budget.clone(),
    };
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(limits.max_concurrent_streams)
        // h2's own per-stream queue: never more than the whole connection may hold.
        .max_send_buffer_size(limits.max_send_buffer_bytes as usize)
        .max_header_list_size(limits.max_header_list_size)
        .initial_window_size(limits.initial_stream_window)
        .initial_connection_window_size(limits.initial_connection_window)
        .max_frame_size(limits.max_frame_size)
        .handshake::<_, Bytes>(io);
    // The preface and SETTINGS phase has a deadline of its own: a client that chose h2
    // (by ALPN or by the first bytes of its preface) and then sends nothing is closed.
    let preface_deadline = worker
        .idle_timers
        .deadline(Instant::now() + snapshot.http.header_read_timeout.0);
    let mut conn = monoio::select! {
        r = handshake => match r {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("h2 handshake failed: {e}");
                return;
            }
        },
        _ = preface_deadline => {
            tracing::debug!(peer = %client.peer, "h2 client sent no preface in time");
            return;
        }
    };
    let activity = Rc::new(Activity {
        idle_since: Cell::new(Some(Instant::now())),
        ..Activity::default()
    });
    let spawn_stream = |req, respond| {
        let activity = activity.clone();
        let budget = budget.clone();
        activity.open.set(activity.open.get() + 1);
        activity.idle_since.set(None);
        activity.streams.set(activity.streams.get() + 1);
        let task = stream_task(
            worker.clone(),
            bound.clone(),
            client.clone(),
            budget.clone(),
            req,
            respond,
        );
        monoio::spawn(async move {
            if task.await == StreamEnd::ClientReset {
                activity.client_resets.set(activity.client_resets.get() + 1);
            }
            activity.open.set(activity.open.get() - 1);
            if activity.open.get() == 0 {
                activity.idle_since.set(Some(Instant::now()));
                budget.settle();
            }
        });
    };
    let idle_timeout = snapshot.http.idle_timeout.0;
    let drain_grace = snapshot.http.header_read_timeout.0;
    let max_resets = limits.max_reset_streams;
    let max_streams = limits.max_concurrent_streams as usize;
    let keepalive = keepalive(
        conn.ping_pong(),
        limits.keepalive_interval.map(|d| d.0),
        limits.keepalive_timeout.0,
    );
    let mut keepalive = std::pin::pin!(keepalive);
    drop(snapshot);
    // The timers outlive the accept loop's turns (one turn per stream): the idle check
    // is re-armed only when it fires, from when the connection last went idle.
    let idle_check = |since: Option<Instant>| {
        let since = since.unwrap_or_else(Instant::now);
        worker.idle_timers.deadline(since + idle_timeout)
    };
    let mut idle = std::pin::pin!(idle_check(activity.idle_since.get()));
    let mut closed = std::pin::pin!(bound.closed.wait());
    loop {
        if activity.abusive(max_resets) {
            tracing::debug!(peer = %client.peer, "h2 client resets most of its streams; closing the connection");
            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            return flush_goaway(&worker, conn).await;
        }
        let accepted = monoio::select! {
            r = conn.accept() => r,
            // Draining or listener removed: GOAWAY, then let open streams finish.
            _ = &mut closed => break,
            _ = &mut keepalive => {
                tracing::debug!(peer = %client.peer, "h2 client did not answer a keepalive PING");
                return;
            }
            _ = &mut idle => {
                let since = activity.idle_since.get();
                if since.is_some_and(|t| t.elapsed() >= idle_timeout) {
                    break;
                }
                idle.set(idle_check(since));
                continue;
            }
        };
        match accepted {
            // h2 counts a reset stream as closed at once, while its exchange may still
            // be at work: a client cannot get more work in flight than its stream limit.
            Some(Ok((_, mut respond))) if activity.open.get() >= max_streams => {
                respond.send_reset(Reason::REFUSED_STREAM);
                activity.streams.set(activity.streams.get() + 1);
                activity.client_resets.set(activity.client_resets.get() + 1);
            }
            Some(Ok((req, respond))) => spawn_stream(req, respond),
            Some(Err(e)) => {
                tracing::debug!("h2 connection error: {e}");
                return;
            }
            None => return,
        }
    }
    conn.graceful_shutdown();
    // Draining: open streams finish. h2 waits for the peer to acknowledge the shutdown
    // PING before its final GOAWAY; a peer that never does is not waited for once no
    // stream is left and it has had `header_read_timeout` to answer.
    loop {
        let grace = worker.idle_timers.deadline(Instant::now() + drain_grace);
        let accepted = monoio::select! {
            r = conn.accept() => r,
            _ = grace => {
                if activity.open.get() == 0 {
                    return;
                }
                continue;
            }
        };
        match accepted {
            Some(Ok((req, respond))) => spawn_stream(req, respond),
            _ => return,
        }
    }
}

/// Drives a connection that was shut down abruptly until its GOAWAY is written (or for
/// a second at most), dropping any stream it still yields.
async fn flush_goaway<T>(worker: &Worker, mut conn: h2::server::Connection<T, Bytes>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = worker
        .idle_timers
        .deadline(Instant::now() + std::time::Duration::from_secs(1));
    let flush = async { while let Some(Ok(_)) = conn.accept().await {} };
    monoio::select! {
        _ = flush => {}
        _ = deadline => {}
    }
}

/// Resolves when the client fails to answer a PING within `timeout`; pings every
/// `interval` (never resolves when keepalive is off).
async fn keepalive(
    pings: Option<h2::PingPong>,
    interval: Option<std::time::Duration>,
    timeout: std::time::Duration,
) {
    let (Some(mut pings), Some(interval)) = (pings, interval) else {
        return std::future::pending().await;
    };
    loop {
        monoio::time::sleep(interval).await;
        if pings.send_ping(h2::Ping::opaque()).is_err() {
            return;
        }
        match monoio::time::timeout(timeout, poll_fn(|cx| pings.poll_pong(cx))).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// Routing facts of an HTTP/2 request.
struct H2Facts<'a> {
    parts: &'a Parts,
    host: Cow<'a, str>,
    authority: &'a str,
    path: &'a str,
    path_and_query: &'a str,
    /// A gRPC call: errors weft makes are gRPC statuses.
    grpc: bool,
    /// The call's `grpc-timeout`.
    grpc_timeout: Option<Duration>,
    /// A verified client certificate's identity (see `facts::CLIENT_CERT_HEADER`).
    client_cert: Option<&'a str>,
    /// What the connection's streams may queue for the client.
    send_budget: &'a SendBudget,
    /// The grpc-status the client was sent (weft's own, or the upstream's in its
    /// head or trailers), for `weft_grpc_requests_total`.
    grpc_status: Cell<Option<u16>>,
}

impl<'a> H2Facts<'a> {
    fn new(parts: &'a Parts, send_budget: &'a SendBudget) -> H2Facts<'a> {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let grpc = grpc::is_grpc(&parts.headers);
        H2Facts {
            parts,
            host: normalize_host(authority),
            authority,
            path: parts.uri.path(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
            grpc,
            grpc_timeout: grpc.then(|| grpc::timeout(&parts.headers)).flatten(),
            client_cert: None,
            send_budget,
            grpc_status: Cell::new(None),
        }
    }

    /// Notes the grpc-status in `fields` (a head or trailers going to the client).
    fn saw_grpc_status(&self, fields: &http::HeaderMap) {
        if let Some(code) = fields
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            self.grpc_status.set(Some(code));
        }
    }

    /// How sends to this client are paced: its connection's budget, and the idle
    /// timeout as the longest wait for it to read.
    fn client_pace<'x>(&'x self, x: &'x Exchange<'_>) -> Pace<'x> {
        Pace::new(
            &x.worker.idle_timers,
            x.snapshot.http.idle_timeout.0,
            Some(self.send_budget),
        )
    }

    /// The client's `content-length` (h2 checked it against the DATA it carries).
    fn declared_length(&self) -> Option<u64> {
        content_length(&self.parts.headers)
    }

    /// The request line and framing of this request as it goes upstream. A body of
    /// unknown length goes to an HTTP/1.1 upstream (`h1`) with the chunked coding; a
    /// request without a body states a length only if the client did (as 0, what
    /// follows).
    fn outgoing(&self, has_body: bool, h1: bool) -> rewrite::Outgoing<'a> {
        let parts = self.parts;
        let declared = self.declared_length();
        rewrite::Outgoing {
            method: parts.method.as_str().as_bytes(),
            path: self.path,
            path_and_query: self.path_and_query,
            authority: self.authority,
            chunked: h1 && has_body && declared.is_none(),
            length: if has_body {
                declared
            } else {
                declared.map(|_| 0)
            },
            accepts_trailers: parts
                .headers
                .get(http::header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")),
            upgrade: None,
        }
    }

    /// The client's end-to-end headers (none that describe the connection).
    fn end_to_end_headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.parts
            .headers
            .iter()
            // The same hop-by-hop set as an HTTP/1.1 client's (`proxy-authorization`
            // and `trailer` included); HTTP/2 has no `Connection` to list more.
            .filter(|(n, _)| !weft_mesh::fields::is_hop_by_hop(n.as_str().as_bytes()))
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

impl RequestFacts for H2Facts<'_> {
    fn host(&self) -> &str {
        &self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn method(&self) -> &[u8] {
        self.parts.method.as_str().as_bytes()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        if name.eq_ignore_ascii_case(CLIENT_CERT_HEADER) {
            return self.client_cert.map(str::as_bytes);
        }
        self.parts.headers.get(name).map(|v| v.as_bytes())
    }
}

async fn stream_task(
    worker: Rc<Worker>,
    bound: BoundListener,
    conn: Rc<ConnectionFacts>,
    budget: Rc<SendBudget>,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> StreamEnd {
    let snapshot = worker.snapshot();
    let (parts, body) = req.into_parts();
    let mut facts = H2Facts::new(&parts, &budget);
    facts.client_cert = conn.client_cert();
    let x = Exchange {
        worker: &worker,
        snapshot: &snapshot,
        bound: &bound,
        conn: &conn,
    };
    let head_only = parts.method == http::Method::HEAD;
    let Some(route) = x.routes().and_then(|t| t.find(&facts)) else {
        x.count(None, None, 404);
        reply_error(&mut respond, &facts, 404, "no route for this request");
        if let Some(code) = facts.grpc_status.get() {
            x.count_grpc(None, None, code);
        }
        return StreamEnd::Done;
    };
    match &route.action {
        RouteAction::Direct(d) => {
            x.count(Some(route), None, d.status);
            let extra = local::direct_headers(&route.response_headers);
            reply(
                &mut respond,
                d.status,
                &d.content_type,
                &d.body,
                &extra,
                head_only,
            );
        }
        RouteAction::Redirect(r) => {
            x.count(Some(route), None, r.status);
            let location = local::redirect_location(
                r,
                x.conn.scheme,
                facts.authority,
                facts.path,
                facts.path_and_query,
            );
            reply(
                &mut respond,
                r.status,
                "text/plain",
                b"",
                &[("location", &location)],
                head_only,
            );
        }
        RouteAction::Forward(f) => return forward(&x, &facts, body, respond, route, f).await,
    }
    StreamEnd::Done
}

fn reply(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    head_only: bool,
) {
    let Some(resp) = local_head(status, content_type, body.len(), extra) else {
        respond.send_reset(Reason::INTERNAL_ERROR);
        return;
    };
    let empty = body.is_empty() || head_only;
    if let Ok(mut send) = respond.send_response(resp, empty) {
        if !empty {
            // Local bodies are small; h2 queues what the window does not take yet.
            let _ = send.send_data(Bytes::copy_from_slice(body), true);
        }
    }
}

/// The head of an answer weft makes itself, filled in place: `Response::builder` moves
/// its whole state on every header (a direct response over h2c, 50 x 10, four A/B
/// pairs: 2.48-2.65 us per request with the builder, 2.24-2.55 without).
fn local_head(
    status: u16,
    content_type: &str,
    length: usize,
    extra: &[(&str, &str)],
) -> Option<Response<()>> {
    let mut head = Response::new(());
    *head.status_mut() = http::StatusCode::from_u16(status).ok()?;
    let headers = head.headers_mut();
    headers.reserve(2 + extra.len());
    headers.append(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).ok()?,
    );
    headers.append(http::header::CONTENT_LENGTH, length.into());
    append_fields(headers, extra.iter().copied())?;
    Some(head)
}

/// Appends configured `(name, value)` fields (a route's `set` edits, a direct answer's
/// headers) to an HTTP/2 head; `None` when one is not valid there.
fn append_fields<'a>(
    headers: &mut http::HeaderMap,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<()> {
    for (name, value) in fields {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).ok()?,
            http::HeaderValue::from_str(value).ok()?,
        );
    }
    Some(())
}

/// An error made by weft: a gRPC status for gRPC calls, an HTTP error otherwise.
fn reply_error(respond: &mut SendResponse<Bytes>, facts: &H2Facts<'_>, status: u16, why: &str) {
    if facts.grpc {
        let code = grpc::Code::for_http(status);
        facts.grpc_status.set(Some(code as u16));
        let _ = respond.send_response(grpc::error_response(code, why), true);
        return;
    }
    let body = local::error_body(status, why);
    reply(
        respond,
        status,
        "text/plain",
        body.as_bytes(),
        &[("x-weft-error", why)],
        facts.parts.method == http::Method::HEAD,
    );
}

/// Why forwarding stopped early.
enum Abort {
    /// Answer with this error (nothing was sent to the client yet).
    Respond(u16, &'static str),
    /// Too late for a response: reset the stream.
    Reset(Reason),
    /// The client reset the stream; nothing more to send.
    ClientGone,
    /// The client made no progress (sent no body, read no response) for the idle
    /// timeout: the stream is reset, and counted with the resets it could abuse.
    ClientStalled,
}

/// A `content-length` as an HTTP/2 head carries it (h2 has checked it against the
/// DATA), or `None` when there is none or it does not parse.
pub(super) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// A send to the client that failed: it went away, or stopped reading.
fn client_send_failed(e: SendError) -> Abort {
    match e {
        SendError::Stalled => Abort::ClientStalled,
        SendError::Stream(_) => Abort::ClientGone,
    }
}

/// The exchange with the upstream, boxed: it is kilobytes (10 KiB for an h2 relay),
/// and a stream task must not carry it inline. The box is made here, in a plain
/// function, because an async fn that calls `Box::pin(f(..))` itself keeps room for the
/// unboxed future in its own state: the stream task measured 11 KiB with the box made
/// inline, copied whole on every spawn.
fn upstream_exchange<'a>(
    x: &'a Exchange<'a>,
    facts: &'a H2Facts<'a>,
    body: &'a mut RecvStream,
    respond: &'a mut SendResponse<Bytes>,
    route: &'a Route,
    fwd: &'a Forward,
    cluster_id: usize,
) -> Pin<Box<dyn Future<Output = Result<u16, Abort>> + 'a>> {
    match x.snapshot.clusters[cluster_id].protocol {
        UpstreamProtocol::Http1 => Box::pin(to_h1::exchange(
            x, facts, body, respond, route, fwd, cluster_id,
        )),
        UpstreamProtocol::Http2 => Box::pin(to_h2::relay(
            x, facts, body, respond, route, fwd, cluster_id,
        )),
    }
}

async fn forward(
    x: &Exchange<'_>,
    facts: &H2Facts<'_>,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    route: &Arc<Route>,
    fwd: &Forward,
) -> StreamEnd {
    let target = fwd.target(|total| fastrand::u32(0..total));
    let cluster_id = target.cluster;
    let outcome = match check_declared_length(x, facts) {
        Err(e) => Err(e),
        Ok(()) => {
            upstream_exchange(x, facts, &mut body, &mut respond, route, fwd, cluster_id).await
        }
    };
    match outcome {
        Ok(status) => x.count(Some(route), Some(cluster_id), status),
        Err(Abort::Respond(status, why)) => {
            if status == 504 {
                x.count_upstream(Family::UpstreamTimeouts, cluster_id, "response");
            }
            x.count(Some(route), Some(cluster_id), status);
            reply_error(&mut respond, facts, status, why);
            discard_request_body(x, &mut body).await;
        }
        Err(Abort::Reset(reason)) => respond.send_reset(reason),
        Err(Abort::ClientGone) => {
            x.count_cancelled(Some(route), Some(cluster_id));
            // What a client that cancels sees.
            facts.grpc_status.set(Some(grpc::Code::Cancelled as u16));
            count_grpc_outcome(x, facts, route, cluster_id);
            return StreamEnd::ClientReset;
        }
        Err(Abort::ClientStalled) => {
            tracing::debug!(peer = %x.conn.peer, "h2 stream made no progress for the idle timeout; reset");
            x.count(Some(route), Some(cluster_id), 408);
            respond.send_reset(Reason::CANCEL);
            return StreamEnd::ClientReset;
        }
    }
    count_grpc_outcome(x, facts, route, cluster_id);
    StreamEnd::Done
}

/// A gRPC call's grpc-status, counted once its exchange is over (a call whose stream
/// was reset before any status is counted by HTTP status alone).
fn count_grpc_outcome(x: &Exchange<'_>, facts: &H2Facts<'_>, route: &Arc<Route>, cluster: usize) {
    if let (true, Some(code)) = (facts.grpc, facts.grpc_status.get()) {
        x.count_grpc(Some(route), Some(cluster), code);
    }
}

/// How long the upstream has to send the response head: the route's timeout (or the
/// cluster's), shortened by a gRPC call's own deadline.
fn response_timeout(facts: &H2Facts<'_>, route: &Route, cluster: &Cluster) -> Duration {
    let timeout = route.timeout.unwrap_or(cluster.request_timeout);
    match facts.grpc_timeout {
        Some(t) => t.min(timeout),
        None => timeout,
    }
}

/// A declared request body over `http.max_request_body_bytes` is refused up front.
fn check_declared_length(x: &Exchange<'_>, facts: &H2Facts<'_>) -> Result<(), Abort> {
    match (
        facts.declared_length(),
        x.snapshot.http.max_request_body_bytes,
    ) {
        (Some(n), Some(max)) if n > max => Err(Abort::Respond(
            413,
            "request body larger than http.max_request_body_bytes",
        )),
        _ => Ok(()),
    }
}

/// After an early error response, reads and drops what is left of the request body (a
/// bounded amount, for a bounded time), so the stream ends with RST_STREAM(NO_ERROR)
/// once the response is out rather than CANCEL, which clients may take to mean the
/// response is void (RFC 9113 §8.1).
async fn discard_request_body(x: &Exchange<'_>, body: &mut RecvStream) {
    const DISCARD_LIMIT: usize = 1 << 20;
    let deadline = x
        .worker
        .idle_timers
        .deadline(Instant::now() + x.snapshot.http.header_read_timeout.0);
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(data)) = body.data().await {
            seen += data.len();
            let _ = body.flow_control().release_capacity(data.len());
            if seen > DISCARD_LIMIT {
                break;
            }
        }
    };
    monoio::select! {
        _ = drain => {}
        _ = deadline => {}
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use monoio::io::IntoPollIo;
    use monoio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::proxy::tests::test_worker;

    /// Every HTTP/2 request is one of these tasks, spawned (and so moved) whole: its
    /// exchange with the upstream is boxed so that it stays small (inline, the task
    /// measured 11 KiB). This fails if it grows past its budget again.
    #[test]
    fn an_h2_stream_task_stays_small() {
        let (worker, bound) = test_worker();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("address");
            let client = TcpStream::connect(addr).await.expect("connect");
            let (server, peer) = listener.accept().await.expect("accept");
            let client = client.into_poll_io().expect("poll io");
            let server = server.into_poll_io().expect("poll io");
            monoio::spawn(async move {
                let (mut send, conn) = h2::client::handshake(client).await.expect("handshake");
                monoio::spawn(async move {
                    let _ = conn.await;
                });
                let req = http::Request::get("http://l/").body(()).expect("request");
                let (response, _) = send.send_request(req, true).expect("sent");
                let _ = response.await;
                std::future::pending::<()>().await;
            });
            let mut conn = h2::server::Builder::new()
                .handshake::<_, Bytes>(server)
                .await
                .expect("server handshake");
            let (req, respond) = conn.accept().await.expect("a stream").expect("ok");
            let budget = Rc::new(SendBudget::new(1 << 20));
            let role = weft_mesh::snapshot::ListenerRole::Ingress;
            let conn = Rc::new(ConnectionFacts::plain(peer, None, bound.name.clone(), role));
            let task = stream_task(worker, bound, conn, budget, req, respond);
            let size = std::mem::size_of_val(&task);
            // 1152 bytes when this budget was set.
            assert!(size <= 1280, "an h2 stream task is {size} bytes");
        });
    }
}
