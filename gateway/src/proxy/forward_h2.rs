//! HTTP/1.1 clients forwarded to HTTP/2 upstreams (h1 -> h2 translation).
//!
//! The request goes out as an HTTP/2 stream on the worker's shared connection to the
//! endpoint: `Host` becomes `:authority`, connection-specific headers are dropped, a
//! chunked body is decoded into DATA frames. The response comes back as HTTP/1.1 with
//! its Content-Length when the upstream gave one, chunked otherwise (upstream trailers
//! then ride in the last chunk), or delimited by close for an HTTP/1.0 client. Both
//! bodies move under h2 flow control: a client that reads slowly holds back the
//! upstream's window, never weft's memory.
//!
//! Failure rules are the HTTP/1.1 path's (503/502/504 with a reason, then close), plus:
//! an upstream that refuses the stream (REFUSED_STREAM) gets 503; one that resets it
//! before the head, 502. Protocol upgrades cannot cross to HTTP/2 (501).

use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use weft_mesh::snapshot::{Forward, Route};

use super::facts::Facts;
use super::forward::connect_failure;
use super::http2::{content_length, send_all, Pace, SendError};
use super::rewrite::{self, ClientFraming};
use super::{Exchange, Next};
use crate::observe::metrics::Family;
use crate::proto::h1::body::{copy_body, BodyCopy, BodyError, BodySink};
use crate::proto::h1::chunked::{encode_chunk, last_chunk};
use crate::proto::h1::head::{BodyFraming, Version};
use crate::runtime::wakers::CoarseTimers;
use crate::transport::{ClientStream, Conn};
use crate::upstream::REFUSED_RETRIES;

/// An HTTP/2 request stream as the sink of an HTTP/1.1 request body.
struct StreamSink<'a> {
    stream: &'a mut SendStream<Bytes>,
    timers: &'a CoarseTimers,
    /// The last piece went out with END_STREAM.
    ended: bool,
}

impl BodySink for StreamSink<'_> {
    async fn put(&mut self, piece: Bytes, limit: Duration, last: bool) -> Result<(), BodyError> {
        self.ended = last;
        let pace = Pace::new(self.timers, limit, None);
        match send_all(self.stream, piece, last, &pace).await {
            Ok(()) => Ok(()),
            Err(SendError::Stream(e)) => Err(BodyError::SinkIo(std::io::Error::other(e))),
            Err(SendError::Stalled) => Err(BodyError::SinkStalled),
        }
    }
}

pub async fn forward<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    facts: &Facts<'_>,
    route: &std::sync::Arc<Route>,
    fwd: &Forward,
    cluster_id: usize,
    keep_alive: bool,
) -> Next {
    let head = facts.head;
    let head_only = head.method() == b"HEAD";
    let cluster = &x.snapshot.clusters[cluster_id];
    macro_rules! fail {
        ($status:expr, $why:expr) => {
            x.fail(client, route, cluster_id, $status, $why, head_only)
                .await
        };
    }
    if head.is_upgrade() {
        return fail!(
            501,
            "protocol upgrades cannot be forwarded to an HTTP/2 upstream"
        );
    }
    let Ok(method) = http::Method::from_bytes(head.method()) else {
        return fail!(400, "method not valid for an HTTP/2 upstream");
    };
    let has_body = head.framing != BodyFraming::None;
    let outgoing = rewrite::h1_outgoing(facts);
    let mut retries = 0;
    // A refused bodiless request is sent again (RFC 9113 §8.7: the upstream did no
    // work on it); one whose body was already streamed cannot be.
    let (resp, _slot, body_unread) = loop {
        let mut slot = match x.worker.upstreams.open_h2(x.snapshot, cluster_id).await {
            Ok(s) => s,
            Err(e) => {
                let (status, why) = connect_failure(x, cluster_id, &e);
                return fail!(status, why);
            }
        };
        let Some(request) = rewrite::h2_request(
            &outgoing,
            method.clone(),
            rewrite::h1_headers(head),
            fwd,
            &route.request_headers,
            &x.snapshot.http.forwarded,
            &x.client_info(),
            slot.endpoint,
        ) else {
            return fail!(400, "request target not valid for an HTTP/2 upstream");
        };
        let opened = match std::future::poll_fn(|cx| slot.send.poll_ready(cx)).await {
            Ok(()) => slot.send.send_request(request, !has_body),
            Err(e) => Err(e),
        };
        let (response, mut upstream_body) = match opened {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(cluster = %cluster.name, "h2 upstream connection failed: {e}");
                return fail!(502, "upstream HTTP/2 connection failed");
            }
        };
        // An upstream may answer before it has read the whole body (and reset the
        // request side); the answer is still relayed, and the connection closed after.
        let mut body_unread = false;
        if has_body {
            if head.expect_continue && !x.send(client, &b"HTTP/1.1 100 Continue\r\n\r\n"[..]).await
            {
                return Next::Close;
            }
            let http = &x.snapshot.http;
            let spec = BodyCopy {
                framing: head.framing,
                max_bytes: http.max_request_body_bytes,
                read_timeout: http.idle_timeout.0,
                write_timeout: cluster.read_timeout,
                dechunk: true,
                max_trailer_bytes: http.max_header_bytes,
            };
            let mut sink = StreamSink {
                stream: &mut upstream_body,
                timers: &x.worker.idle_timers,
                ended: false,
            };
            match copy_body(client, &mut sink, &spec).await {
                Ok(_) => {
                    if !sink.ended {
                        let _ = upstream_body.send_data(Bytes::new(), true);
                    }
                }
                Err(BodyError::TooLarge) => {
                    return fail!(413, "request body larger than http.max_request_body_bytes")
                }
                Err(BodyError::Malformed(_)) => {
                    return fail!(400, "malformed chunked request body")
                }
                Err(BodyError::Stalled) => return fail!(408, "request body not received in time"),
                Err(BodyError::SourceClosed | BodyError::SourceIo(_)) => {
                    x.count_cancelled(Some(route), Some(cluster_id));
                    return Next::Close;
                }
                Err(BodyError::SinkStalled) => {
                    return fail!(504, "upstream stopped reading the request body")
                }
                Err(BodyError::SinkIo(_)) => body_unread = true,
            }
        }
        let timeout = route.timeout.unwrap_or(cluster.request_timeout);
        match monoio::time::timeout(timeout, response).await {
            Ok(Ok(r)) => break (r, slot, body_unread),
            Ok(Err(e)) => {
                tracing::debug!(cluster = %cluster.name, "h2 upstream stream failed: {e}");
                if e.reason() != Some(h2::Reason::REFUSED_STREAM) {
                    return fail!(502, "upstream reset the stream");
                }
                if has_body || retries == REFUSED_RETRIES {
                    return fail!(503, "upstream refused the stream");
                }
                retries += 1;
            }
            Err(_) => {
                x.count_upstream(Family::UpstreamTimeouts, cluster_id, "response");
                return fail!(504, "upstream response timeout");
            }
        }
    };
    let (parts, mut upstream) = resp.into_parts();
    let status = parts.status.as_u16();
    let no_body = head_only || status == 204 || status == 304;
    let mut parts = parts;
    if !no_body && upstream.is_end_stream() {
        // An empty body without a length still needs one to end on HTTP/1.1.
        parts
            .headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert(http::HeaderValue::from_static("0"));
    }
    // h2 checked the value against the DATA it carries; one value is stated.
    let declared = content_length(&parts.headers);
    let unframed = !no_body && declared.is_none();
    let keep = keep_alive && !body_unread && !x.closing();
    let framing = ClientFraming {
        chunked: unframed && head.version == Version::H11,
        dechunk: false,
        close: !keep || (unframed && head.version == Version::H10),
        length: declared.filter(|_| status != 204),
    };
    let out =
        rewrite::h1_response_head_from_h2(&parts, &route.response_headers, framing, head.version);
    x.count(Some(route), Some(cluster_id), status);
    if !x.send(client, out).await {
        return Next::Close;
    }
    if !no_body {
        if let Err(why) = relay_body(
            x,
            client,
            &mut upstream,
            framing.chunked,
            cluster.read_timeout,
        )
        .await
        {
            tracing::debug!(cluster = %cluster.name, "response body aborted: {why}");
            return Next::Close;
        }
    }
    if framing.close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// Upstream DATA (and trailers) to the client, chunk-framed when `chunked`.
async fn relay_body<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    upstream: &mut h2::RecvStream,
    chunked: bool,
    stall: Duration,
) -> Result<(), &'static str> {
    loop {
        let next = match monoio::time::timeout(stall, upstream.data()).await {
            Ok(next) => next,
            Err(_) => return Err("upstream stalled"),
        };
        let data = match next {
            Some(Ok(d)) => d,
            Some(Err(_)) => return Err("upstream reset the stream"),
            None => break,
        };
        let n = data.len();
        if n == 0 {
            continue;
        }
        let sent = if chunked {
            x.send(client, encode_chunk(&data)).await
        } else {
            x.send(client, data).await
        };
        if !sent {
            return Err("client stopped reading");
        }
        // The client took it: the upstream may send more.
        let _ = upstream.flow_control().release_capacity(n);
    }
    if chunked {
        let trailers = upstream.trailers().await.ok().flatten();
        if !x.send(client, last_chunk(trailers.as_ref())).await {
            return Err("client stopped reading");
        }
    }
    Ok(())
}
