//! Forwarding one request to an upstream and its response back.
//!
//! Failure rules, in the order they can happen:
//! - no endpoint: 503; connect refused: 502; connect timeout: 504;
//! - a pooled connection turns out to be dead (the write fails, or the upstream closes
//!   it without answering a request that had no body): retried once on a fresh
//!   connection, because the upstream cannot have acted on it; otherwise 502;
//! - no response head within the route's (or cluster's) request timeout: 504;
//! - the upstream stalls or closes mid-body: the client connection is closed, so a
//!   truncated body is never presented as complete.

use std::time::Instant;

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;
use weft_mesh::config::UpstreamProtocol;
use weft_mesh::snapshot::{Cluster, Forward, Route};

use super::facts::Facts;
use super::rewrite;
use super::{forward_h2, Exchange, Next};
use crate::observe::metrics::Family;
use crate::proto::h1::body::{copy_body, BodyCopy, BodyError};
use crate::proto::h1::head::{parse_response, BodyFraming, RequestHead, ResponseHead, Version};
use crate::transport::{ClientStream, Conn, ReadError};
use crate::upstream::{ConnectError, ConnectFailure, Upstream};

/// Largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const RESPONSE_READ: usize = 16 * 1024;
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Why an attempt did not produce a response head.
enum Failure {
    /// The pooled connection was dead before the upstream saw the request: retry.
    Stale,
    /// Answer the client with this error (and close).
    Respond(u16, &'static str),
    /// The client went away or broke the protocol mid-body; just close.
    ClientGone,
}

pub async fn forward<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    facts: &Facts<'_>,
    route: &std::sync::Arc<Route>,
    fwd: &Forward,
    keep_alive: bool,
) -> Next {
    let head = facts.head;
    let head_only = head.method() == b"HEAD";
    let target = fwd.target(|total| fastrand::u32(0..total));
    let cluster_id = target.cluster;
    let cluster = &x.snapshot.clusters[cluster_id];
    // Every failure answers with a proxy-made error and closes: the request body may be
    // partly unread, so the connection cannot carry another request.
    macro_rules! fail {
        ($status:expr, $why:expr) => {
            x.fail(client, route, cluster_id, $status, $why, head_only)
                .await
        };
    }

    if let (BodyFraming::Length(n), Some(max)) =
        (head.framing, x.snapshot.http.max_request_body_bytes)
    {
        if n > max {
            return fail!(413, "request body larger than http.max_request_body_bytes");
        }
    }
    if cluster.protocol == UpstreamProtocol::Http2 {
        return forward_h2::forward(x, client, facts, route, fwd, cluster_id, keep_alive).await;
    }
    let mut up = match x.worker.upstreams.connect(x.snapshot, cluster_id).await {
        Ok(up) => up,
        Err(e) => {
            let (status, why) = connect_failure(x, cluster_id, &e);
            return fail!(status, why);
        }
    };
    let request: Bytes = rewrite::h1_request_head(
        facts,
        fwd,
        &route.request_headers,
        &x.snapshot.http.forwarded,
        &x.client_info(),
        up.endpoint,
    )
    .freeze();

    let mut continue_sent = false;
    let mut retried = false;
    let response = loop {
        match attempt(
            x,
            client,
            &mut up,
            &request,
            head,
            cluster,
            route,
            &mut continue_sent,
        )
        .await
        {
            Ok(r) => break r,
            Err(Failure::Stale) if up.reused && !retried => {
                retried = true;
                if let Err(e) = x.worker.upstreams.reconnect(cluster, &mut up).await {
                    let (status, why) = connect_failure(x, cluster_id, &e);
                    return fail!(status, why);
                }
            }
            Err(Failure::Stale) => {
                return fail!(502, "upstream closed the connection before responding")
            }
            Err(Failure::Respond(status, why)) => {
                if status == 504 {
                    x.count_upstream(Family::UpstreamTimeouts, cluster_id, "response");
                }
                return fail!(status, why);
            }
            Err(Failure::ClientGone) => {
                x.count_cancelled(Some(route), Some(cluster_id));
                return Next::Close;
            }
        }
    };

    if response.status == 101 {
        if !head.is_upgrade() {
            return fail!(
                502,
                "upstream switched protocols without an upgrade request"
            );
        }
        x.count(Some(route), Some(cluster_id), 101);
        let framing = rewrite::client_framing(head, &response, false);
        let out = rewrite::response_head(head, &response, &route.response_headers, framing, true);
        return if x.send(client, out).await {
            Next::Tunnel(up.conn)
        } else {
            Next::Close
        };
    }

    // A drain that began while the upstream worked still closes this connection.
    let framing = rewrite::client_framing(head, &response, keep_alive && !x.closing());
    let mut out = rewrite::response_head(head, &response, &route.response_headers, framing, false);
    // Small bodies that arrived with the head go out in the same write.
    let body_done = match response.framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) if up.conn.buf.len() as u64 >= n => {
            out.extend_from_slice(&up.conn.buf.split_to(n as usize));
            true
        }
        _ => false,
    };
    x.count(Some(route), Some(cluster_id), response.status);
    if !x.send(client, out).await {
        return Next::Close;
    }
    if !body_done {
        let spec = BodyCopy {
            framing: response.framing,
            max_bytes: None,
            read_timeout: cluster.read_timeout,
            // Like nginx's send_timeout: a client that stops reading is cut off.
            write_timeout: x.snapshot.http.idle_timeout.0,
            dechunk: framing.dechunk,
            max_trailer_bytes: MAX_TRAILER_BYTES,
        };
        match copy_body(&mut up.conn, &mut client.stream, &spec).await {
            Ok(_) => {}
            Err(e) => {
                if matches!(e, BodyError::Stalled) {
                    x.count_upstream(Family::UpstreamTimeouts, cluster_id, "read");
                }
                tracing::debug!(cluster = %cluster.name, "response body aborted: {e:?}");
                return Next::Close;
            }
        }
    }
    if upstream_reusable(head, &response) && up.conn.buf.is_empty() {
        x.worker.upstreams.release(cluster, up);
    }
    if framing.close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

fn upstream_reusable(req: &RequestHead, resp: &ResponseHead) -> bool {
    !resp.connection.close && resp.framing != BodyFraming::UntilClose && !req.is_upgrade()
}

pub(super) fn connect_failure(
    x: &Exchange<'_>,
    cluster: usize,
    e: &ConnectError,
) -> (u16, &'static str) {
    match e {
        ConnectError::NoEndpoints => {
            x.count_upstream(Family::UpstreamConnectErrors, cluster, "no_endpoints");
            (503, "no healthy endpoints")
        }
        ConnectError::Io(err) => {
            let failure = ConnectFailure::of(err);
            x.count_upstream(Family::UpstreamConnectErrors, cluster, failure.label());
            let name = &x.snapshot.clusters[cluster].name;
            if !failure.is_local() {
                tracing::debug!(cluster = %name, "upstream connect failed: {err}");
                return (502, "upstream connection failed");
            }
            // This host is short of descriptors or ports: the operator's problem, not the
            // upstream's, and loud, though not once per failed request.
            if shortage_warning_due() {
                tracing::warn!(cluster = %name, "cannot connect upstream: {err} (see weft_upstream_connect_errors_total{{reason=\"{}\"}})", failure.label());
            }
            (503, "no local descriptor or port left to connect upstream")
        }
        ConnectError::Handshake(err) => {
            tracing::debug!(cluster = %x.snapshot.clusters[cluster].name, "upstream h2 handshake failed: {err}");
            x.count_upstream(Family::UpstreamConnectErrors, cluster, "handshake");
            (502, "upstream HTTP/2 handshake failed")
        }
        ConnectError::Tls(err) => {
            tracing::warn!(cluster = %x.snapshot.clusters[cluster].name, "upstream TLS handshake failed: {err}");
            x.count_upstream(Family::UpstreamConnectErrors, cluster, "tls");
            (502, "upstream TLS handshake failed")
        }
        ConnectError::TimedOut => {
            x.count_upstream(Family::UpstreamConnectErrors, cluster, "timeout");
            x.count_upstream(Family::UpstreamTimeouts, cluster, "connect");
            (504, "upstream connect timeout")
        }
    }
}

/// At most one warning a second per worker about a local shortage: at thousands of
/// failed connects a second, a line each would bury everything else in the log.
fn shortage_warning_due() -> bool {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1));
        if due {
            last.set(Some(now));
        }
        due
    })
}

/// Methods whose request may be sent again when a reused connection died before
/// answering (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
    )
}

/// Sends the request (head, then body) and reads the final response head.
#[allow(clippy::too_many_arguments)]
async fn attempt<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    up: &mut Upstream,
    request: &Bytes,
    head: &RequestHead,
    cluster: &Cluster,
    route: &Route,
    continue_sent: &mut bool,
) -> Result<ResponseHead, Failure> {
    if up.conn.stream.write_all(request.clone()).await.0.is_err() {
        return Err(Failure::Stale);
    }
    let has_body = head.framing != BodyFraming::None;
    if has_body {
        if head.expect_continue && !*continue_sent {
            *continue_sent = true;
            if !x.send(client, &b"HTTP/1.1 100 Continue\r\n\r\n"[..]).await {
                return Err(Failure::ClientGone);
            }
        }
        let http = &x.snapshot.http;
        let spec = BodyCopy {
            framing: head.framing,
            max_bytes: http.max_request_body_bytes,
            read_timeout: http.idle_timeout.0,
            write_timeout: cluster.read_timeout,
            dechunk: false,
            max_trailer_bytes: http.max_header_bytes,
        };
        match copy_body(client, &mut up.conn.stream, &spec).await {
            Ok(_) => {}
            Err(BodyError::TooLarge) => {
                return Err(Failure::Respond(
                    413,
                    "request body larger than http.max_request_body_bytes",
                ))
            }
            Err(BodyError::Malformed(_)) => {
                return Err(Failure::Respond(400, "malformed chunked request body"))
            }
            Err(BodyError::Stalled) => {
                return Err(Failure::Respond(408, "request body not received in time"))
            }
            Err(BodyError::SinkIo(_)) => {
                return Err(Failure::Respond(
                    502,
                    "upstream closed the connection during the request",
                ))
            }
            Err(BodyError::SinkStalled) => {
                return Err(Failure::Respond(
                    504,
                    "upstream stopped reading the request body",
                ))
            }
            Err(BodyError::SourceClosed | BodyError::SourceIo(_)) => {
                return Err(Failure::ClientGone)
            }
        }
    }

    let retryable = !has_body && idempotent(head.method());
    let deadline = Instant::now() + route.timeout.unwrap_or(cluster.request_timeout);
    let mut received = false;
    loop {
        match parse_response(
            &mut up.conn.buf,
            MAX_RESPONSE_HEAD,
            head.method() == b"HEAD",
        ) {
            Ok(Some(r)) if (100..200).contains(&r.status) && r.status != 101 => {
                // Interim responses go to HTTP/1.1 clients; weft's own 100 already did.
                let ours = r.status == 100 && *continue_sent;
                if head.version == Version::H11 && !ours && !x.send(client, r.raw).await {
                    return Err(Failure::ClientGone);
                }
                continue;
            }
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(_) => return Err(Failure::Respond(502, "invalid response head from upstream")),
        }
        match up.conn.fill_until(RESPONSE_READ, deadline).await {
            Ok(n) if n > 0 => received = true,
            Ok(_) | Err(ReadError::Io(_)) if !received && retryable => return Err(Failure::Stale),
            Ok(_) | Err(ReadError::Io(_)) => {
                return Err(Failure::Respond(
                    502,
                    "upstream closed the connection before responding",
                ))
            }
            Err(ReadError::TimedOut) => {
                return Err(Failure::Respond(504, "upstream response timeout"))
            }
        }
    }
}
