//! HTTP/2 client streams forwarded to HTTP/1.1 upstreams.
//!
//! The request goes out on a pooled connection, body and all, before the response is
//! read (an HTTP/1.1 upstream cannot interleave them usefully); the response body is
//! decoded from its h1 framing into DATA frames as the client's window allows, and
//! chunked trailers become HTTP/2 trailers.

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::Response;
use monoio::io::AsyncWriteRentExt;
use weft_mesh::fields::Trailers;
use weft_mesh::snapshot::Cluster;

use super::{
    client_info, client_pace, client_send_failed, connect_h1, idempotent, retry_after,
    MAX_INTERIM_RESPONSES,
};
use crate::proto::h1::chunked::{encode_chunk, last_chunk, ChunkedParser};
use crate::proto::h1::head::{parse_response, BodyFraming, Head, ResponseHead};
use crate::proxy::completion::Progress;
use crate::proxy::error::ProxyError;
use crate::proxy::exchange::Exchange;
use crate::proxy::facts::H2Facts;
use crate::proxy::flow::{send_all, within, Pace};
use crate::proxy::lifecycle::Plan;
use crate::proxy::retry::HeadWait;
use crate::proxy::rewrite::{self, ResponseEdits};
use crate::transport::ReadError;
use crate::upstream::Upstream;

const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const UPSTREAM_READ: usize = 64 * 1024;

/// One attempt: the request, body and all, to a pooled or fresh connection, then the
/// response relayed into the client's stream.
pub async fn relay(
    x: &Exchange<'_>,
    facts: &H2Facts<'_>,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    sent: &mut Option<SendStream<Bytes>>,
    plan: &Plan<'_>,
    progress: &Progress,
) -> Result<(), ProxyError> {
    let cluster = plan.cluster;
    let route = plan.route;
    let parts = facts.parts;
    let mut up = connect_h1(x, plan, progress).await?;
    // A retry's body is the kept one: the client's stream has ended by then.
    let replay = progress.body_taken.get();
    let has_body = replay || !body.is_end_stream();
    let outgoing = rewrite::h2_outgoing(facts, has_body, true);
    let head = rewrite::request_head(
        &outgoing,
        facts.end_to_end_headers(),
        plan.forward,
        &route.request_headers,
        &x.snapshot.http.forwarded,
        &client_info(x, plan, progress),
        up.endpoint,
    )?;

    // A pooled connection the upstream closed while it idled is `StaleConnection` when
    // the upstream cannot have acted on the request: the head did not go out, or the
    // connection ended before any response byte and the request has no body and an
    // idempotent method (as for HTTP/1.1 clients, `h1_to_h1`).
    let is_head = parts.method == http::Method::HEAD;
    let replayable = !has_body && idempotent(parts.method.as_str().as_bytes());
    if up.conn.stream.write_all(head).await.0.is_err() {
        return Err(ProxyError::StaleConnection);
    }
    if has_body {
        match plan.replayed_body(progress)? {
            Some(kept) => send_kept_body(kept, &mut up, outgoing.chunked, cluster).await?,
            None => {
                send_request_body(x, body, &mut up, outgoing.chunked, plan, progress).await?;
            }
        }
    }
    let wait = plan.head_wait();
    let response = match read_response_head(&mut up, wait, is_head, &cluster.name).await {
        Ok(r) => r,
        Err(None) if replayable => return Err(ProxyError::StaleConnection),
        Err(None) => return Err(ProxyError::ClosedBeforeResponse),
        Err(Some(e)) => return Err(e),
    };
    progress.responded();
    // A gRPC Trailers-Only answer has its status in the head.
    let grpc = facts
        .grpc
        .then(|| response.header("grpc-status"))
        .flatten()
        .and_then(crate::proxy::grpc::status_code);
    if plan.retries_answer(x, progress, (response.status, grpc), || {
        retry_after(&response)
    }) {
        return Err(ProxyError::RetriedAnswer {
            status: response.status,
            grpc,
        });
    }
    let head = h2_response_head(&response, plan.response_edits(progress))
        .ok_or(ProxyError::ResponseHeadNotValidForHttp2)?;
    progress.saw_grpc_status(head.headers());
    let no_body = response.framing == BodyFraming::None;
    progress.began(response.status);
    let send = respond
        .send_response(head, no_body)
        .map_err(|_| ProxyError::ClientGone)?;
    let send = sent.insert(send);
    if !no_body {
        let pace = client_pace(x, facts);
        relay_response_body(&mut up, send, response.framing, cluster, (&pace, progress)).await?;
    }
    let reusable = !response.connection.close
        && response.framing != BodyFraming::UntilClose
        && up.conn.buf.is_empty();
    if reusable {
        x.worker.upstreams.release(cluster, up);
    }
    Ok(())
}

/// Pieces up to this size are copied out of the upstream read buffer; larger ones are
/// split off it without a copy.
const COPY_PIECE_MAX: usize = 4096;

/// The first `n` bytes of `buf` as a DATA frame payload. h2 holds a payload until the
/// connection task writes it, after this exchange has handed the connection back to
/// the pool; a split-off payload would keep the read buffer's allocation shared, and
/// the connection's next read would allocate a fresh 64 KiB buffer. Copying a small
/// payload keeps the buffer this connection's own, to be reused.
fn take_piece(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_PIECE_MAX {
        let piece = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        piece
    } else {
        buf.split_to(n).freeze()
    }
}

/// The h2 response head for an HTTP/1.1 upstream's: names lowercased, hop-by-hop
/// fields and the route's removals dropped, its additions appended. Values are slices
/// of the received head, not copies; the map is filled in place (`Response::builder`
/// moves its whole state on every header).
fn h2_response_head(response: &ResponseHead, edits: ResponseEdits<'_>) -> Option<Response<()>> {
    let mut head = Response::new(());
    *head.status_mut() = http::StatusCode::from_u16(response.status).ok()?;
    let headers = head.headers_mut();
    headers.reserve(response.headers.len() + edits.route.set.len() + 1);
    // The received length field, reused as is when it states the length weft decided
    // (the common case): a slice of the head, not a newly formatted value.
    let mut received_length = None;
    for f in &response.headers {
        let name = response.name(f);
        if weft_mesh::fields::is_framing(name) {
            if name.eq_ignore_ascii_case(b"content-length") {
                received_length = Some(f.value.clone());
            }
            continue;
        }
        if response.is_hop_by_hop(f, &response.connection)
            || edits.drops(name)
            || weft_mesh::fields::is_weft_made(name)
        {
            continue;
        }
        let value = response.raw.slice(f.value.clone());
        headers.append(
            http::HeaderName::from_bytes(name).ok()?,
            http::HeaderValue::from_maybe_shared(value).ok()?,
        );
    }
    edits.append(headers);
    if let Some(n) = rewrite::stated_length(response) {
        let same = received_length
            .map(|r| response.raw.slice(r))
            .filter(|v| rewrite::states_exactly(v, n));
        let value = match same {
            Some(v) => http::HeaderValue::from_maybe_shared(v).ok()?,
            None => n.into(),
        };
        headers.append(http::header::CONTENT_LENGTH, value);
    }
    Some(head)
}

/// A retry's request body: the one the first attempt kept, framed as that one was.
async fn send_kept_body(
    kept: Bytes,
    up: &mut Upstream,
    chunked: bool,
    cluster: &Cluster,
) -> Result<(), ProxyError> {
    let mut out = BytesMut::new();
    if chunked {
        if !kept.is_empty() {
            out.extend_from_slice(&encode_chunk(&kept));
        }
        out.extend_from_slice(&last_chunk(None, Trailers::Request));
    } else {
        out.extend_from_slice(&kept);
    }
    match monoio::time::timeout(cluster.read_timeout, up.conn.stream.write_all(out)).await {
        Ok((Ok(_), _)) => Ok(()),
        Ok((Err(_), _)) => Err(ProxyError::ClosedDuringRequest),
        Err(_) => Err(ProxyError::UpstreamNotReading),
    }
}

async fn send_request_body(
    x: &Exchange<'_>,
    body: &mut RecvStream,
    up: &mut Upstream,
    chunked: bool,
    plan: &Plan<'_>,
    progress: &Progress,
) -> Result<(), ProxyError> {
    let cluster = plan.cluster;
    let limit = x.snapshot.http.max_request_body_bytes;
    let idle = x.snapshot.http.idle_timeout.0;
    let mut seen = 0u64;
    // A client that stops sending its body would pin this upstream connection: each
    // piece must come within the idle timeout.
    while let Some(data) = within(&x.worker.idle_timers, idle, body.data())
        .await
        .ok_or(ProxyError::ClientStalled)?
    {
        let data = data.map_err(|_| ProxyError::ClientGone)?;
        let n = data.len();
        progress.took(n);
        seen += n as u64;
        if limit.is_some_and(|max| seen > max) {
            return Err(ProxyError::BodyTooLarge);
        }
        plan.keep_body(&data);
        let piece = if chunked { encode_chunk(&data) } else { data };
        if n > 0 {
            match monoio::time::timeout(cluster.read_timeout, up.conn.stream.write_all(piece)).await
            {
                Ok((Ok(_), _)) => {}
                Ok((Err(_), _)) => return Err(ProxyError::ClosedDuringRequest),
                Err(_) => return Err(ProxyError::UpstreamNotReading),
            }
        }
        // Only now may the client send more: the upstream took this piece.
        let _ = body.flow_control().release_capacity(n);
    }
    if chunked {
        let trailers = within(&x.worker.idle_timers, idle, body.trailers())
            .await
            .ok_or(ProxyError::ClientStalled)?
            .ok()
            .flatten();
        // Trailers are not kept: a request that had them is not sent again.
        if trailers.is_some() {
            plan.abandon_body();
        }
        if up
            .conn
            .stream
            .write_all(last_chunk(trailers.as_ref(), Trailers::Request))
            .await
            .0
            .is_err()
        {
            return Err(ProxyError::ClosedDuringRequest);
        }
    }
    plan.body_complete();
    Ok(())
}

/// The upstream's final response head; `Err(None)` when the connection ended before
/// any response byte.
async fn read_response_head(
    up: &mut Upstream,
    wait: HeadWait,
    head_request: bool,
    cluster: &str,
) -> Result<ResponseHead, Option<ProxyError>> {
    let deadline = wait.deadline();
    let mut received = !up.conn.buf.is_empty();
    let mut interim = 0;
    loop {
        match parse_response(&mut up.conn.buf, MAX_RESPONSE_HEAD, head_request) {
            // Interim responses (other than 101, never asked for here) are not relayed.
            Ok(Some(r)) if (100..200).contains(&r.status) => {
                interim += 1;
                if interim > MAX_INTERIM_RESPONSES {
                    return Err(Some(ProxyError::TooManyInterimResponses));
                }
            }
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(_) => return Err(Some(ProxyError::BadResponseHead)),
        }
        let read = up.conn.fill_until(UPSTREAM_READ, deadline).await;
        if let Some(refused) = super::tls_refusal(cluster, &read) {
            return Err(Some(refused));
        }
        match read {
            Ok(n) if n > 0 => received = true,
            Ok(_) | Err(ReadError::Io(_)) if !received => return Err(None),
            Ok(_) | Err(ReadError::Io(_)) => {
                return Err(Some(ProxyError::ClosedDuringResponseHead))
            }
            Err(ReadError::TimedOut) => return Err(Some(wait.expired)),
        }
    }
}

/// Streams the upstream body (decoding chunked) into the h2 stream, as the window allows.
async fn relay_response_body(
    up: &mut Upstream,
    send: &mut SendStream<Bytes>,
    framing: BodyFraming,
    cluster: &Cluster,
    (pace, progress): (&Pace<'_>, &Progress),
) -> Result<(), ProxyError> {
    let mut remaining = match framing {
        BodyFraming::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunked = ChunkedParser::new(MAX_RESPONSE_HEAD, Trailers::Response);
    let mut trailer_section = Vec::new();
    loop {
        if up.conn.buf.is_empty() {
            match up
                .conn
                .fill_with_timeout(UPSTREAM_READ, cluster.read_timeout)
                .await
            {
                Ok(n) if n > 0 => {}
                Ok(_) if framing == BodyFraming::UntilClose => break,
                Err(ReadError::TimedOut) => return Err(ProxyError::ResponseBodyStalled),
                Ok(_) | Err(ReadError::Io(_)) => return Err(ProxyError::ResponseBodyBroken),
            }
        }
        let (data, done) = match framing {
            BodyFraming::Length(_) => {
                let take = (up.conn.buf.len() as u64).min(remaining) as usize;
                remaining -= take as u64;
                (take_piece(&mut up.conn.buf, take), remaining == 0)
            }
            BodyFraming::Chunked => {
                let mut decoded = BytesMut::new();
                let window = &up.conn.buf[..];
                let progress = chunked
                    .feed_with_trailers(
                        window,
                        |r| decoded.extend_from_slice(&window[r]),
                        |b| trailer_section.push(b),
                    )
                    .map_err(|_| ProxyError::ResponseBodyBroken)?;
                let _ = up.conn.buf.split_to(progress.consumed);
                (decoded.freeze(), progress.done)
            }
            _ => (up.conn.buf.split().freeze(), false),
        };
        // The last piece carries END_STREAM unless trailers follow: no empty DATA frame.
        let fields = if done {
            trailers(&trailer_section)
        } else {
            None
        };
        let end = done && fields.is_none();
        let n = data.len();
        send_all(send, data, end, pace)
            .await
            .map_err(client_send_failed)?;
        progress.gave(n);
        if let Some(t) = fields {
            progress.saw_grpc_status(&t);
            pace.finish();
            return send.send_trailers(t).map_err(|_| ProxyError::ClientGone);
        }
        if done {
            return Ok(());
        }
    }
    // An until-close body ended with the connection.
    pace.finish();
    send.send_data(Bytes::new(), true)
        .map_err(|_| ProxyError::ClientGone)
}

/// A chunked body's trailer section as HTTP/2 trailers: lowercase names, no
/// connection-specific fields; `None` when there are none to send.
fn trailers(section: &[u8]) -> Option<http::HeaderMap> {
    if section.is_empty() {
        return None;
    }
    let mut raw = section.to_vec();
    raw.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(&raw, &mut fields)
    else {
        return None;
    };
    let mut map = http::HeaderMap::new();
    for f in fields.iter() {
        if weft_mesh::fields::is_connection_specific(f.name.as_bytes()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(f.name.as_bytes()),
            http::HeaderValue::from_bytes(f.value),
        ) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}
