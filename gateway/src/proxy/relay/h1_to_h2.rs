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
//! Failures are the HTTP/1.1 relay's, plus: an upstream that refuses the stream is
//! `RefusedStream` (the lifecycle may send a bodiless request again); one that resets
//! it is `UpstreamReset`. Protocol upgrades cannot cross to HTTP/2 (`UpgradeToHttp2`).

use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use weft_mesh::fields::Trailers;

use super::h1_to_h1::request_body_error;
use super::{
    client_info, continue_if_expected, open_h2, request_body_copy, upstream_stream_failed,
    write_to_client, Keeping, Next,
};
use crate::proto::h1::body::{copy_body, BodyError, BodySink};
use crate::proto::h1::chunked::{encode_chunk, last_chunk};
use crate::proto::h1::head::{BodyFraming, Version};
use crate::proxy::completion::Progress;
use crate::proxy::error::ProxyError;
use crate::proxy::exchange::Exchange;
use crate::proxy::facts::{content_length, Facts};
use crate::proxy::flow::{send_all, Pace, SendError};
use crate::proxy::lifecycle::Plan;
use crate::proxy::rewrite::{self, ClientFraming};
use crate::runtime::wakers::CoarseTimers;
use crate::transport::{ClientStream, Conn};

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

/// One attempt: the request as a stream on the worker's shared connection to an
/// endpoint, the response back as HTTP/1.1. Returns what the client connection does
/// next.
pub async fn relay<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    facts: &Facts<'_>,
    plan: &Plan<'_>,
    progress: &Progress,
    keep_alive: bool,
) -> Result<Next, ProxyError> {
    let head = facts.head;
    let head_only = head.method() == b"HEAD";
    let cluster = plan.cluster;
    let route = plan.route;
    if plan.upgrade {
        return Err(ProxyError::UpgradeToHttp2);
    }
    let Ok(method) = http::Method::from_bytes(head.method()) else {
        return Err(ProxyError::MethodNotValidForHttp2);
    };
    let has_body = head.framing != BodyFraming::None;
    let outgoing = rewrite::h1_outgoing(facts, false);
    let mut slot = open_h2(x, plan, progress).await?;
    let request = rewrite::h2_request(
        &outgoing,
        method,
        rewrite::h1_headers(head),
        plan.forward,
        &route.request_headers,
        &x.snapshot.http.forwarded,
        &client_info(x, plan, progress),
        slot.endpoint,
        plan.cluster.tls.is_some(),
    )?;
    let opened = match std::future::poll_fn(|cx| slot.send.poll_ready(cx)).await {
        Ok(()) => slot.send.send_request(request, !has_body),
        Err(e) => Err(e),
    };
    let (response, mut upstream_body) = opened.map_err(|e| {
        tracing::debug!(cluster = %cluster.name, "h2 upstream connection failed: {e}");
        ProxyError::UpstreamConnectionFailed
    })?;
    // An upstream may answer before it has read the whole body (and reset the request
    // side); the answer is still relayed, and the connection closed after.
    let mut body_unread = false;
    if has_body {
        let mut sink = StreamSink {
            stream: &mut upstream_body,
            timers: &x.worker.idle_timers,
            ended: false,
        };
        let copied = match plan.replayed_body(progress)? {
            // A retry: the body the first attempt kept, as its DATA.
            Some(kept) => sink.put(kept, plan.cluster.read_timeout, true).await,
            None => {
                continue_if_expected(x, client, head, progress).await?;
                let spec = request_body_copy(x, head, plan, true);
                progress.took(0);
                let mut keeping = Keeping {
                    plan,
                    sink: &mut sink,
                };
                copy_body(client, &mut keeping, &spec).await.map(|n| {
                    progress.took(n as usize);
                    plan.body_complete();
                })
            }
        };
        match copied {
            Ok(()) => {
                if !sink.ended {
                    let _ = upstream_body.send_data(Bytes::new(), true);
                }
            }
            Err(BodyError::SinkIo(_)) => body_unread = true,
            Err(e) => return Err(request_body_error(e)),
        }
    }
    let stream_id = response.stream_id();
    let wait = plan.head_wait();
    let resp = match monoio::time::timeout(wait.timeout, response).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(upstream_stream_failed(e, &slot.goaway, stream_id)),
        Err(_) => return Err(wait.expired),
    };
    progress.responded();
    let (parts, mut upstream) = resp.into_parts();
    let status = parts.status.as_u16();
    let retry_after = || {
        parts
            .headers
            .get(http::header::RETRY_AFTER)
            .map(|v| v.as_bytes())
    };
    if plan.retries_answer(x, progress, (status, None), retry_after) {
        // Dropping the stream resets it (CANCEL): its body is not wanted.
        return Err(ProxyError::RetriedAnswer { status, grpc: None });
    }
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
    let out = rewrite::h1_response_head_from_h2(
        &parts,
        plan.response_edits(progress),
        framing,
        head.version,
    );
    progress.began(status);
    if !write_to_client(x, client, out).await {
        return Err(ProxyError::ClientGone);
    }
    if !no_body {
        relay_body(
            x,
            client,
            &mut upstream,
            framing.chunked,
            cluster.read_timeout,
            progress,
        )
        .await?;
    }
    Ok(if framing.close {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// Upstream DATA (and trailers) to the client, chunk-framed when `chunked`.
async fn relay_body<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    upstream: &mut h2::RecvStream,
    chunked: bool,
    stall: Duration,
    progress: &Progress,
) -> Result<(), ProxyError> {
    loop {
        let next = match monoio::time::timeout(stall, upstream.data()).await {
            Ok(next) => next,
            Err(_) => return Err(ProxyError::ResponseBodyStalled),
        };
        let data = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                return Err(ProxyError::UpstreamReset(
                    e.reason().unwrap_or(h2::Reason::INTERNAL_ERROR),
                ))
            }
            None => break,
        };
        let n = data.len();
        if n == 0 {
            continue;
        }
        let sent = if chunked {
            write_to_client(x, client, encode_chunk(&data)).await
        } else {
            write_to_client(x, client, data).await
        };
        if !sent {
            return Err(ProxyError::ClientGone);
        }
        progress.gave(n);
        // The client took it: the upstream may send more.
        let _ = upstream.flow_control().release_capacity(n);
    }
    if chunked {
        let trailers = upstream.trailers().await.ok().flatten();
        if !write_to_client(x, client, last_chunk(trailers.as_ref(), Trailers::Response)).await {
            return Err(ProxyError::ClientGone);
        }
    }
    Ok(())
}
