//! HTTP/1.1 clients to HTTP/1.1 upstreams: the raw passthrough.
//!
//! The request head goes out rewritten (`rewrite`), the body is copied as it came (its
//! framing kept), the response head comes back rewritten and its body is copied, or
//! de-chunked for an HTTP/1.0 client. A small body that arrived with the head goes out
//! in the same write. Failures, in the order they can happen:
//! - the head cannot be written to a pooled connection, or it closes without a byte
//!   for a bodiless idempotent request: `StaleConnection` (the upstream cannot have
//!   acted on it; the lifecycle may retry on a fresh connection);
//! - no response head within the plan's response timeout: `ResponseTimeout` (or the
//!   retry policy's `per_try_timeout`: `PerTryTimeout`);
//! - an answer the retry policy sends again: `RetriedAnswer`, before any of it went
//!   to the client (a retry sends the body the first attempt kept).
//! - the upstream stalls or closes mid-body: the client connection is closed, so a
//!   truncated body is never presented as complete.

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;
use weft_mesh::fields::Trailers;

use super::{
    client_info, connect_h1, continue_if_expected, idempotent, request_body_copy, retry_after,
    write_to_client, Keeping, Next, MAX_INTERIM_RESPONSES,
};
use crate::proto::h1::body::{copy_body, BodyCopy, BodyError};
use crate::proto::h1::head::{parse_response, BodyFraming, RequestHead, ResponseHead, Version};
use crate::proxy::completion::Progress;
use crate::proxy::error::ProxyError;
use crate::proxy::exchange::Exchange;
use crate::proxy::facts::Facts;
use crate::proxy::lifecycle::Plan;
use crate::proxy::rewrite;
use crate::transport::{ClientStream, Conn, ReadError};
use crate::upstream::Upstream;

/// Largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const RESPONSE_READ: usize = 16 * 1024;
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// One attempt: the request (head, then body) to a pooled or fresh connection, the
/// response back. Returns what the client connection does next.
pub async fn relay<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    facts: &Facts<'_>,
    plan: &Plan<'_>,
    progress: &Progress,
    keep_alive: bool,
) -> Result<Next, ProxyError> {
    let head = facts.head;
    let cluster = plan.cluster;
    let route = plan.route;
    let mut up = connect_h1(x, plan, progress).await?;
    let request: Bytes = rewrite::h1_request_head(
        facts,
        plan.forward,
        &route.request_headers,
        &x.snapshot.http.forwarded,
        &client_info(x, plan, progress),
        up.endpoint,
        plan.upgrade,
    )?
    .freeze();
    let response = send_request(x, client, &mut up, &request, head, plan, progress).await?;
    progress.responded();
    if plan.retries_answer(x, progress, (response.status, None), || {
        retry_after(&response)
    }) {
        // Its body is not read: the connection goes, not back to the pool.
        return Err(ProxyError::RetriedAnswer {
            status: response.status,
            grpc: None,
        });
    }

    if response.status == 101 {
        if !plan.upgrade {
            return Err(ProxyError::SwitchWithoutUpgrade);
        }
        let framing = rewrite::client_framing(head, &response, false);
        let out = rewrite::response_head(
            head,
            &response,
            plan.response_edits(progress),
            framing,
            true,
        );
        progress.began(101);
        return if write_to_client(x, client, out).await {
            Ok(Next::Tunnel(up.conn))
        } else {
            Err(ProxyError::ClientGone)
        };
    }

    // A drain that began while the upstream worked still closes this connection.
    let framing = rewrite::client_framing(head, &response, keep_alive && !x.closing());
    let mut out = rewrite::response_head(
        head,
        &response,
        plan.response_edits(progress),
        framing,
        false,
    );
    // Small bodies that arrived with the head go out in the same write.
    let body_done = match response.framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) if up.conn.buf.len() as u64 >= n => {
            out.extend_from_slice(&up.conn.buf.split_to(n as usize));
            progress.gave(n as usize);
            true
        }
        _ => false,
    };
    progress.began(response.status);
    if !write_to_client(x, client, out).await {
        return Err(ProxyError::ClientGone);
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
            trailers: Trailers::Response,
        };
        match copy_body(&mut up.conn, &mut client.stream, &spec).await {
            Ok(n) => progress.gave(n as usize),
            Err(e) => return Err(response_body_error(e)),
        }
    }
    if upstream_reusable(head, &response) && up.conn.buf.is_empty() {
        x.worker.upstreams.release(cluster, up);
    }
    Ok(if framing.close {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// What a broken response body means: the upstream stalled or broke it off, or the
/// client stopped taking it.
fn response_body_error(e: BodyError) -> ProxyError {
    match e {
        BodyError::Stalled => ProxyError::ResponseBodyStalled,
        BodyError::SinkStalled => ProxyError::ClientStalled,
        BodyError::SinkIo(_) => ProxyError::ClientGone,
        BodyError::SourceClosed
        | BodyError::SourceIo(_)
        | BodyError::Malformed(_)
        | BodyError::TooLarge => ProxyError::ResponseBodyBroken,
    }
}

fn upstream_reusable(req: &RequestHead, resp: &ResponseHead) -> bool {
    !resp.connection.close && resp.framing != BodyFraming::UntilClose && !req.is_upgrade()
}

/// Sends the request (head, then body) and reads the final response head. A pooled
/// connection found dead before the upstream could have acted on the request is
/// `StaleConnection`: the lifecycle may send it again on a fresh one.
async fn send_request<S: ClientStream>(
    x: &Exchange<'_>,
    client: &mut Conn<S>,
    up: &mut Upstream,
    request: &Bytes,
    head: &RequestHead,
    plan: &Plan<'_>,
    progress: &Progress,
) -> Result<ResponseHead, ProxyError> {
    if up.conn.stream.write_all(request.clone()).await.0.is_err() {
        return Err(ProxyError::StaleConnection);
    }
    let has_body = head.framing != BodyFraming::None;
    if has_body {
        match plan.replayed_body(progress)? {
            // A retry: the body as the first attempt sent it, framing and all.
            Some(kept) => {
                let write = up.conn.stream.write_all(kept);
                match monoio::time::timeout(plan.cluster.read_timeout, write).await {
                    Ok((Ok(_), _)) => {}
                    Ok((Err(_), _)) => return Err(ProxyError::ClosedDuringRequest),
                    Err(_) => return Err(ProxyError::UpstreamNotReading),
                }
            }
            None => {
                continue_if_expected(x, client, head, progress).await?;
                let spec = request_body_copy(x, head, plan, false);
                progress.took(0);
                let mut sink = Keeping {
                    plan,
                    sink: &mut up.conn.stream,
                };
                match copy_body(client, &mut sink, &spec).await {
                    Ok(n) => {
                        progress.took(n as usize);
                        plan.body_complete();
                    }
                    Err(e) => return Err(request_body_error(e)),
                }
            }
        }
    }

    let retryable = !has_body && idempotent(head.method());
    let wait = plan.head_wait();
    let deadline = wait.deadline();
    let mut received = false;
    let mut interim = 0;
    loop {
        match parse_response(
            &mut up.conn.buf,
            MAX_RESPONSE_HEAD,
            head.method() == b"HEAD",
        ) {
            Ok(Some(r)) if (100..200).contains(&r.status) && r.status != 101 => {
                interim += 1;
                if interim > MAX_INTERIM_RESPONSES {
                    return Err(ProxyError::TooManyInterimResponses);
                }
                // Interim responses go to HTTP/1.1 clients; weft's own 100 already did.
                let ours = r.status == 100 && progress.continue_sent.get();
                if head.version == Version::H11
                    && !ours
                    && !write_to_client(x, client, rewrite::interim_head(&r)).await
                {
                    return Err(ProxyError::ClientGone);
                }
                continue;
            }
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(_) => return Err(ProxyError::BadResponseHead),
        }
        let read = up.conn.fill_until(RESPONSE_READ, deadline).await;
        if let Some(refused) = super::tls_refusal(&plan.cluster.name, &read) {
            return Err(refused);
        }
        match read {
            Ok(n) if n > 0 => received = true,
            Ok(_) | Err(ReadError::Io(_)) if !received && retryable => {
                return Err(ProxyError::StaleConnection)
            }
            Ok(_) | Err(ReadError::Io(_)) if !received => {
                return Err(ProxyError::ClosedBeforeResponse)
            }
            Ok(_) | Err(ReadError::Io(_)) => return Err(ProxyError::ClosedDuringResponseHead),
            Err(ReadError::TimedOut) => return Err(wait.expired),
        }
    }
}

/// What a request body that did not make it upstream means.
pub(super) fn request_body_error(e: BodyError) -> ProxyError {
    match e {
        BodyError::TooLarge => ProxyError::BodyTooLarge,
        BodyError::Malformed(_) => ProxyError::MalformedBody,
        BodyError::Stalled => ProxyError::ClientStalled,
        BodyError::SinkIo(_) => ProxyError::ClosedDuringRequest,
        BodyError::SinkStalled => ProxyError::UpstreamNotReading,
        BodyError::SourceClosed | BodyError::SourceIo(_) => ProxyError::ClientGone,
    }
}
