//! The byte pumps of one attempt, one file per cell of the client x upstream grid:
//! `h1_to_h1`, `h1_to_h2`, `h2_to_h1`, `h2_to_h2` (client protocol first).
//!
//! A relay moves a request and its response between one client and one upstream
//! connection or stream, as fast as its protocol pair allows (the raw HTTP/1.1
//! passthrough, the HTTP/2 flow-control loops). It decides nothing the lifecycle
//! decides: no retry, no counting, no error answer, no timeout choice. It reports a
//! failure as a `ProxyError` and what it did in `Progress`, and reads its timeouts from
//! the `Plan`.

pub mod h1_to_h1;
pub mod h1_to_h2;
pub mod h2_to_h1;
pub mod h2_to_h2;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRentExt;
use weft_mesh::fields::Trailers;

use super::completion::Progress;
use super::error::ProxyError;
use super::exchange::Exchange;
use super::facts::H2Facts;
use super::flow::{Pace, SendError};
use super::lifecycle::Plan;
use bytes::Bytes;

use super::rewrite;
use crate::proto::h1::body::{BodyCopy, BodyError, BodySink};
use crate::proto::h1::head::{Head, RequestHead, ResponseHead};
use crate::transport::{ClientStream, Conn, UpstreamStream};
use crate::upstream::{ConnectError, ConnectFailure, GoAwayWatch, H2Stream, Upstream};

/// Interim (1xx) responses an upstream may send before its final one: a few are what
/// 100 Continue and 103 Early Hints need; thousands only make weft relay work.
pub const MAX_INTERIM_RESPONSES: usize = 16;

/// What happens to an HTTP/1.1 client connection after an exchange.
pub enum Next {
    KeepAlive,
    Close,
    /// The upstream switched protocols: relay bytes both ways from now on.
    Tunnel(Conn<UpstreamStream>),
    /// The client opened with the HTTP/2 preface (h2c, prior knowledge).
    Http2,
}

/// A pooled or fresh HTTP/1.1 connection to an endpoint of the plan's cluster; a fresh
/// one to the same endpoint when the lifecycle retries after a dead pooled one.
async fn connect_h1(
    x: &Exchange<'_>,
    plan: &Plan<'_>,
    progress: &Progress,
) -> Result<Upstream, ProxyError> {
    let upstreams = &x.worker.upstreams;
    let connected = match progress.endpoint.get() {
        Some(endpoint) if progress.fresh.replace(false) => {
            upstreams.connect_fresh(plan.cluster, endpoint).await
        }
        _ => {
            let endpoint = pick(x, plan, progress)?;
            upstreams.connect(plan.cluster, endpoint).await
        }
    };
    let up = connected.map_err(|e| connect_error(x, plan, &e))?;
    progress.connected(up.reused);
    Ok(up)
}

/// The attempt's endpoint, leased to it in `progress`. A retry picks again (a few
/// times, not a scan) rather than go back to an endpoint that failed this request.
fn pick(x: &Exchange<'_>, plan: &Plan<'_>, progress: &Progress) -> Result<SocketAddr, ProxyError> {
    let pick = || {
        x.worker
            .upstreams
            .pick(x.snapshot, plan.cluster_id, plan.hash_key())
            .map_err(|e| connect_error(x, plan, &e))
    };
    let mut lease = pick()?;
    if let Some(retry) = &plan.retry {
        for _ in 0..3 {
            if !retry.avoids(lease.address()) {
                break;
            }
            lease = pick()?;
        }
    }
    let endpoint = lease.address();
    progress.leased(lease);
    Ok(endpoint)
}

/// A stream slot on a shared HTTP/2 connection to an endpoint of the plan's cluster.
async fn open_h2(
    x: &Exchange<'_>,
    plan: &Plan<'_>,
    progress: &Progress,
) -> Result<H2Stream, ProxyError> {
    let endpoint = pick(x, plan, progress)?;
    let slot = x
        .worker
        .upstreams
        .open_h2(plan.cluster, endpoint, &x.snapshot.http2)
        .await
        .map_err(|e| connect_error(x, plan, &e))?;
    progress.connected(false);
    Ok(slot)
}

/// The error of a failed connect, logged as its side needs.
fn connect_error(x: &Exchange<'_>, plan: &Plan<'_>, e: &ConnectError) -> ProxyError {
    let error = ProxyError::from(e);
    let name = &plan.cluster.name;
    match e {
        // This host is short of descriptors or ports: the operator's problem, not the
        // upstream's, and loud, though not once per failed request.
        ConnectError::Io(err) if ConnectFailure::of(err).is_local() => {
            if shortage_warning_due() {
                tracing::warn!(cluster = %name, "cannot connect upstream: {err} (see weft_upstream_connect_errors_total{{reason=\"{}\"}})", error.label());
            }
        }
        ConnectError::Tls(failure) => warn_tls(name, failure),
        _ => {
            tracing::debug!(cluster = %name, peer = %x.conn.peer, "upstream connect failed: {e:?}")
        }
    }
    error
}

/// The refusal a failed read of an upstream response head carries when the
/// connection is TLS (TLS 1.3 servers refuse a missing client certificate only after
/// the handshake, on the first read), warned about; None for any other outcome.
pub(super) fn tls_refusal(
    cluster: &str,
    read: &Result<usize, crate::transport::ReadError>,
) -> Option<ProxyError> {
    let Err(crate::transport::ReadError::Io(e)) = read else {
        return None;
    };
    let failure = crate::upstream::tls::failure_in(e)?;
    warn_tls(cluster, &failure);
    Some(ProxyError::UpstreamTls(failure.refusal))
}

fn warn_tls(cluster: &str, failure: &crate::upstream::TlsFailure) {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    if once_a_second(&LAST) {
        tracing::warn!(cluster = %cluster, "{failure}");
    }
}

/// At most one warning a second per worker about a local shortage: at thousands of
/// failed connects a second, a line each would bury everything else in the log.
fn shortage_warning_due() -> bool {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    once_a_second(&LAST)
}

/// True at most once a second for one `last` (a per-worker slot).
pub(crate) fn once_a_second(
    last: &'static std::thread::LocalKey<std::cell::Cell<Option<Instant>>>,
) -> bool {
    let now = Instant::now();
    last.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            last.set(Some(now));
        }
        due
    })
}

/// What the request head of this attempt says of its client (and of the attempt).
fn client_info<'x>(
    x: &'x Exchange<'_>,
    plan: &Plan<'_>,
    progress: &Progress,
) -> rewrite::ClientInfo<'x> {
    rewrite::ClientInfo {
        attempt: plan.attempt_count(progress),
        ..x.client_info()
    }
}

/// A request body sink that keeps what it passes on for a retry (`Plan::keep_body`).
struct Keeping<'a, S> {
    plan: &'a Plan<'a>,
    sink: &'a mut S,
}

impl<S: BodySink> BodySink for Keeping<'_, S> {
    async fn put(&mut self, piece: Bytes, limit: Duration, last: bool) -> Result<(), BodyError> {
        self.plan.keep_body(&piece);
        self.sink.put(piece, limit, last).await
    }
}

/// The `Retry-After` of a response head, for the retry policy.
fn retry_after(head: &ResponseHead) -> Option<&[u8]> {
    head.header("retry-after")
}

/// Methods whose request may be sent again when a reused connection died before
/// answering (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
    )
}

/// Writes to an HTTP/1.1 client, giving up (false) when it takes nothing for `limit`:
/// a client that stops reading must not pin a task forever. The deadline is a coarse
/// slot in the worker's slab, not a timer, because every response goes through here.
pub async fn write_to_client<B: IoBuf, S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    buf: B,
) -> bool {
    let limit = x.snapshot.http.idle_timeout.0;
    let deadline = x.worker.idle_timers.deadline(Instant::now() + limit);
    monoio::select! {
        r = client.stream.write_all(buf) => r.0.is_ok(),
        _ = deadline => false,
    }
}

/// How sends to an HTTP/2 client are paced: its connection's budget, and the idle
/// timeout as the longest wait for it to read.
fn client_pace<'x>(x: &'x Exchange<'_>, facts: &'x H2Facts<'_>) -> Pace<'x> {
    Pace::new(
        &x.worker.idle_timers,
        x.snapshot.http.idle_timeout.0,
        Some(facts.send_budget),
    )
}

/// `100 Continue` to an HTTP/1.1 client whose request expects it, once per exchange,
/// just before its body is read.
async fn continue_if_expected<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    head: &RequestHead,
    progress: &Progress,
) -> Result<(), ProxyError> {
    if head.expect_continue
        && !progress.continue_sent.replace(true)
        && !write_to_client(x, client, &b"HTTP/1.1 100 Continue\r\n\r\n"[..]).await
    {
        return Err(ProxyError::ClientGone);
    }
    Ok(())
}

/// How an HTTP/1.1 client's request body is copied upstream: within the body limit,
/// each piece from the client within the idle timeout, into the upstream within the
/// cluster's read timeout; `dechunk` for an HTTP/2 upstream, which frames it itself.
fn request_body_copy(
    x: &Exchange<'_>,
    head: &RequestHead,
    plan: &Plan<'_>,
    dechunk: bool,
) -> BodyCopy {
    let http = &x.snapshot.http;
    BodyCopy {
        framing: head.framing,
        max_bytes: http.max_request_body_bytes,
        read_timeout: http.idle_timeout.0,
        write_timeout: plan.cluster.read_timeout,
        dechunk,
        max_trailer_bytes: http.max_header_bytes,
        trailers: Trailers::Request,
    }
}

/// An upstream stream that failed before its response head: not processed (refused,
/// or above a GOAWAY's last-stream-id), which the lifecycle may send again; or reset.
fn upstream_stream_failed(e: h2::Error, goaway: &GoAwayWatch, stream: h2::StreamId) -> ProxyError {
    tracing::debug!("h2 upstream stream failed: {e}");
    if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        return ProxyError::RefusedStream;
    }
    if e.is_go_away() && e.is_remote() && goaway.unprocessed(stream) {
        return ProxyError::StreamNotProcessed;
    }
    ProxyError::UpstreamReset(e.reason().unwrap_or(h2::Reason::INTERNAL_ERROR))
}

/// A send to an HTTP/2 client that failed: it went away, or stopped reading.
fn client_send_failed(e: SendError) -> ProxyError {
    match e {
        SendError::Stalled => ProxyError::ClientStalled,
        SendError::Stream(_) => ProxyError::ClientGone,
    }
}
