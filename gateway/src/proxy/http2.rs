//! HTTP/2 clients: h2c with prior knowledge on plain listeners, forwarded to HTTP/1.1
//! upstreams.
//!
//! One task drives the connection (h2's `accept` loop); every stream gets a task of its
//! own that routes with the snapshot current when it arrived and answers as the h1
//! path does: local responses, or a forwarded exchange on a pooled upstream connection.
//! Bodies stream both ways under h2 flow control: client data is released only once
//! the upstream took it, and data goes to the client only as its window allows, so a
//! slow reader holds back the upstream read instead of growing memory.
//!
//! Not yet: h2 upstreams, response trailers towards h2 clients, gRPC specifics.

use std::borrow::Cow;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::request::Parts;
use http::Response;
use monoio::io::{AsyncWriteRentExt, IntoPollIo};
use weft_mesh::snapshot::{Forward, RequestFacts, Route, RouteAction};

use super::facts::normalize_host;
use super::forward::connect_failure;
use super::rewrite;
use super::{local, Exchange};
use crate::observe::metrics::Family;
use crate::proto::h1::chunked::ChunkedParser;
use crate::proto::h1::head::{parse_response, BodyFraming, Head, ResponseHead};
use crate::runtime::worker::{BoundListener, Worker};
use crate::transport::{Conn, ReadError, Replay};
use crate::upstream::Upstream;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Concurrent streams a client may open on one connection.
const MAX_STREAMS: u32 = 256;
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const UPSTREAM_READ: usize = 64 * 1024;

/// Headers that describe a connection, never an HTTP/2 message (RFC 9113 §8.2.2).
fn connection_specific(name: &[u8]) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

pub async fn serve(worker: Rc<Worker>, bound: BoundListener, client: Conn, peer: SocketAddr) {
    let Conn { stream, buf } = client;
    let Ok(io) = stream.into_poll_io() else {
        return;
    };
    let io = Replay {
        head: buf,
        inner: io,
    };
    let mut conn = match h2::server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        .handshake::<_, Bytes>(io)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("h2 handshake failed: {e}");
            return;
        }
    };
    // Streams in flight, and when the last one ended: a connection with no stream for
    // the idle timeout is sent GOAWAY, as an idle HTTP/1.1 keep-alive connection is
    // closed.
    let activity = Rc::new((
        std::cell::Cell::new(0usize),
        std::cell::Cell::new(Instant::now()),
    ));
    let spawn_stream = |req, respond| {
        let activity = activity.clone();
        activity.0.set(activity.0.get() + 1);
        let task = stream_task(worker.clone(), bound.clone(), peer, req, respond);
        monoio::spawn(async move {
            task.await;
            activity.0.set(activity.0.get() - 1);
            activity.1.set(Instant::now());
        });
    };
    let idle_timeout = worker.snapshot().http.idle_timeout.0;
    loop {
        let idle_since = if activity.0.get() == 0 {
            activity.1.get()
        } else {
            Instant::now()
        };
        let idle = worker.idle_timers.deadline(idle_since + idle_timeout);
        let accepted = monoio::select! {
            r = conn.accept() => r,
            // Draining or listener removed: GOAWAY, then let open streams finish.
            _ = bound.closed.wait() => break,
            _ = idle => {
                if activity.0.get() == 0 && activity.1.get().elapsed() >= idle_timeout {
                    break;
                }
                continue;
            }
        };
        match accepted {
            Some(Ok((req, respond))) => spawn_stream(req, respond),
            Some(Err(e)) => {
                tracing::debug!("h2 connection error: {e}");
                return;
            }
            None => return,
        }
    }
    conn.graceful_shutdown();
    while let Some(Ok((req, respond))) = conn.accept().await {
        spawn_stream(req, respond);
    }
}

/// Routing facts of an HTTP/2 request.
struct H2Facts<'a> {
    parts: &'a Parts,
    host: Cow<'a, str>,
    authority: &'a str,
    path: &'a str,
    path_and_query: &'a str,
}

impl<'a> H2Facts<'a> {
    fn new(parts: &'a Parts) -> H2Facts<'a> {
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
        }
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
        self.parts.headers.get(name).map(|v| v.as_bytes())
    }
}

async fn stream_task(
    worker: Rc<Worker>,
    bound: BoundListener,
    peer: SocketAddr,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let snapshot = worker.snapshot();
    let (parts, body) = req.into_parts();
    let facts = H2Facts::new(&parts);
    let x = Exchange {
        worker: &worker,
        snapshot: &snapshot,
        bound: &bound,
        peer,
    };
    let head_only = parts.method == http::Method::HEAD;
    let Some(route) = x.routes().and_then(|t| t.find(&facts)) else {
        x.count(None, None, 404);
        return reply_error(&mut respond, 404, "no route for this request", head_only);
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
            let location =
                local::redirect_location(r, facts.authority, facts.path, facts.path_and_query);
            reply(
                &mut respond,
                r.status,
                "text/plain",
                b"",
                &[("location", &location)],
                head_only,
            );
        }
        RouteAction::Forward(f) => forward(&x, &facts, body, respond, route, f).await,
    }
}

fn reply(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    head_only: bool,
) {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len());
    for (name, value) in extra {
        b = b.header(*name, *value);
    }
    let Ok(resp) = b.body(()) else {
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

fn reply_error(respond: &mut SendResponse<Bytes>, status: u16, why: &str, head_only: bool) {
    let body = local::error_body(status, why);
    reply(
        respond,
        status,
        "text/plain",
        body.as_bytes(),
        &[("x-weft-error", why)],
        head_only,
    );
}

/// Why forwarding stopped early.
enum Abort {
    /// Answer with this error (nothing was sent to the client yet).
    Respond(u16, &'static str),
    /// Too late for a response: reset the stream.
    Reset,
}

async fn forward(
    x: &Exchange<'_>,
    facts: &H2Facts<'_>,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    route: &Arc<Route>,
    fwd: &Forward,
) {
    let target = fwd.target(|total| fastrand::u32(0..total));
    let cluster_id = target.cluster;
    let head_only = facts.parts.method == http::Method::HEAD;
    match exchange(x, facts, &mut body, &mut respond, route, fwd, cluster_id).await {
        Ok(status) => x.count(Some(route), Some(cluster_id), status),
        Err(Abort::Respond(status, why)) => {
            if status == 504 {
                x.count_upstream(Family::UpstreamTimeouts, cluster_id, "response");
            }
            x.count(Some(route), Some(cluster_id), status);
            reply_error(&mut respond, status, why, head_only);
            discard_request_body(x, &mut body).await;
        }
        Err(Abort::Reset) => respond.send_reset(Reason::INTERNAL_ERROR),
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

/// Sends the request upstream and relays the response; returns the status sent.
async fn exchange(
    x: &Exchange<'_>,
    facts: &H2Facts<'_>,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    route: &Route,
    fwd: &Forward,
    cluster_id: usize,
) -> Result<u16, Abort> {
    let cluster = &x.snapshot.clusters[cluster_id];
    let parts = facts.parts;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let (Some(n), Some(max)) = (declared, x.snapshot.http.max_request_body_bytes) {
        if n > max {
            return Err(Abort::Respond(
                413,
                "request body larger than http.max_request_body_bytes",
            ));
        }
    }
    let mut up = x
        .worker
        .upstreams
        .connect(x.snapshot, cluster_id)
        .await
        .map_err(|e| {
            let (status, why) = connect_failure(x, cluster_id, &e);
            Abort::Respond(status, why)
        })?;
    let has_body = !body.is_end_stream();
    let length = parts.headers.get(http::header::CONTENT_LENGTH).is_some();
    let accepts_trailers = parts
        .headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let outgoing = rewrite::Outgoing {
        method: parts.method.as_str().as_bytes(),
        path: facts.path,
        path_and_query: facts.path_and_query,
        authority: facts.authority,
        chunked: has_body && !length,
        accepts_trailers,
        upgrade: None,
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(n, _)| !connection_specific(n.as_str().as_bytes()))
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    let head = rewrite::request_head(
        &outgoing,
        headers,
        fwd,
        &route.request_headers,
        &x.snapshot.http.forwarded,
        &x.client_info(),
        up.endpoint,
    )
    .freeze();

    // A dead pooled connection is replaced once, before any body byte was taken.
    if up.conn.stream.write_all(head.clone()).await.0.is_err() {
        if !up.reused {
            return Err(Abort::Respond(
                502,
                "upstream closed the connection before responding",
            ));
        }
        x.worker
            .upstreams
            .reconnect(cluster, &mut up)
            .await
            .map_err(|e| {
                let (status, why) = connect_failure(x, cluster_id, &e);
                Abort::Respond(status, why)
            })?;
        if up.conn.stream.write_all(head).await.0.is_err() {
            return Err(Abort::Respond(
                502,
                "upstream closed the connection before responding",
            ));
        }
    }
    if has_body {
        send_request_body(x, body, &mut up, outgoing.chunked, cluster).await?;
    }

    let response =
        read_response_head(&mut up, route, cluster, parts.method == http::Method::HEAD).await?;
    let mut builder = Response::builder().status(response.status);
    for f in &response.headers {
        let name = response.name(f);
        if response.is_hop_by_hop(f, &response.connection) || route.response_headers.drops(name) {
            continue;
        }
        builder = builder.header(name, response.value(f));
    }
    for (name, value) in &route.response_headers.set {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let Ok(head) = builder.body(()) else {
        return Err(Abort::Respond(
            502,
            "upstream response headers not valid in HTTP/2",
        ));
    };
    let no_body = response.framing == BodyFraming::None;
    let mut send = respond
        .send_response(head, no_body)
        .map_err(|_| Abort::Reset)?;
    if !no_body {
        relay_response_body(&mut up, &mut send, response.framing, cluster).await?;
    }
    let reusable = !response.connection.close
        && response.framing != BodyFraming::UntilClose
        && up.conn.buf.is_empty();
    if reusable {
        x.worker.upstreams.release(cluster, up);
    }
    Ok(response.status)
}

async fn send_request_body(
    x: &Exchange<'_>,
    body: &mut RecvStream,
    up: &mut Upstream,
    chunked: bool,
    cluster: &weft_mesh::snapshot::Cluster,
) -> Result<(), Abort> {
    let limit = x.snapshot.http.max_request_body_bytes;
    let mut seen = 0u64;
    while let Some(data) = body.data().await {
        let data = data.map_err(|_| Abort::Reset)?;
        let n = data.len();
        seen += n as u64;
        if limit.is_some_and(|max| seen > max) {
            return Err(Abort::Respond(
                413,
                "request body larger than http.max_request_body_bytes",
            ));
        }
        let piece = if chunked {
            let mut framed = BytesMut::with_capacity(n + 16);
            framed.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            framed.extend_from_slice(&data);
            framed.extend_from_slice(b"\r\n");
            framed.freeze()
        } else {
            data
        };
        if n > 0 {
            match monoio::time::timeout(cluster.read_timeout, up.conn.stream.write_all(piece)).await
            {
                Ok((Ok(_), _)) => {}
                Ok((Err(_), _)) => {
                    return Err(Abort::Respond(
                        502,
                        "upstream closed the connection during the request",
                    ))
                }
                Err(_) => {
                    return Err(Abort::Respond(
                        504,
                        "upstream stopped reading the request body",
                    ))
                }
            }
        }
        // Only now may the client send more: the upstream took this piece.
        let _ = body.flow_control().release_capacity(n);
    }
    if chunked {
        let mut last = BytesMut::from(&b"0\r\n"[..]);
        if let Ok(Some(trailers)) = body.trailers().await {
            for (name, value) in &trailers {
                last.extend_from_slice(name.as_str().as_bytes());
                last.extend_from_slice(b": ");
                last.extend_from_slice(value.as_bytes());
                last.extend_from_slice(b"\r\n");
            }
        }
        last.extend_from_slice(b"\r\n");
        if up.conn.stream.write_all(last.freeze()).await.0.is_err() {
            return Err(Abort::Respond(
                502,
                "upstream closed the connection during the request",
            ));
        }
    }
    Ok(())
}

async fn read_response_head(
    up: &mut Upstream,
    route: &Route,
    cluster: &weft_mesh::snapshot::Cluster,
    head_request: bool,
) -> Result<ResponseHead, Abort> {
    let deadline = Instant::now() + route.timeout.unwrap_or(cluster.request_timeout);
    loop {
        match parse_response(&mut up.conn.buf, MAX_RESPONSE_HEAD, head_request) {
            // Interim responses (other than 101, never asked for here) are not relayed.
            Ok(Some(r)) if (100..200).contains(&r.status) => continue,
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(_) => return Err(Abort::Respond(502, "invalid response head from upstream")),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Abort::Respond(504, "upstream response timeout"));
        }
        match up.conn.fill_with_timeout(UPSTREAM_READ, left).await {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(ReadError::Io(_)) => {
                return Err(Abort::Respond(
                    502,
                    "upstream closed the connection before responding",
                ))
            }
            Err(ReadError::TimedOut) => {
                return Err(Abort::Respond(504, "upstream response timeout"))
            }
        }
    }
}

/// Streams the upstream body (decoding chunked) into the h2 stream, as the window allows.
async fn relay_response_body(
    up: &mut Upstream,
    send: &mut SendStream<Bytes>,
    framing: BodyFraming,
    cluster: &weft_mesh::snapshot::Cluster,
) -> Result<(), Abort> {
    let mut remaining = match framing {
        BodyFraming::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunked = ChunkedParser::new(MAX_RESPONSE_HEAD);
    loop {
        if up.conn.buf.is_empty() {
            match up
                .conn
                .fill_with_timeout(UPSTREAM_READ, cluster.read_timeout)
                .await
            {
                Ok(n) if n > 0 => {}
                Ok(_) if framing == BodyFraming::UntilClose => break,
                _ => return Err(Abort::Reset),
            }
        }
        let (data, done) = match framing {
            BodyFraming::Length(_) => {
                let take = (up.conn.buf.len() as u64).min(remaining) as usize;
                remaining -= take as u64;
                (up.conn.buf.split_to(take).freeze(), remaining == 0)
            }
            BodyFraming::Chunked => {
                let mut decoded = BytesMut::new();
                let window = &up.conn.buf[..];
                let progress = chunked
                    .feed(window, |r| decoded.extend_from_slice(&window[r]))
                    .map_err(|_| Abort::Reset)?;
                let _ = up.conn.buf.split_to(progress.consumed);
                (decoded.freeze(), progress.done)
            }
            _ => (up.conn.buf.split().freeze(), false),
        };
        send_all(send, data).await.map_err(|_| Abort::Reset)?;
        if done {
            break;
        }
    }
    send.send_data(Bytes::new(), true).map_err(|_| Abort::Reset)
}

/// Sends `data` as the stream's flow-control window opens.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(0)) => continue,
            Some(Ok(n)) => send.send_data(data.split_to(n.min(data.len())), false)?,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(Reason::CANCEL)),
        }
    }
    Ok(())
}
