//! HTTP/2 client streams relayed to HTTP/2 upstreams, stream to stream.
//!
//! The request body and the response run at the same time (gRPC client, server and
//! bidirectional streaming need both directions open at once). Each direction moves
//! DATA only as the receiving side's window allows and releases the sending side's
//! window only once the data went on, so neither end can grow weft's memory. Trailers
//! pass through unchanged both ways.
//!
//! Cancellation crosses weft: a client reset drops the upstream stream (h2 resets it
//! with CANCEL), and an upstream reset resets the client stream with the same reason.
//! A gRPC call's `grpc-timeout` (the plan's call deadline) bounds the whole call: when
//! it passes, the upstream stream is cancelled and the client gets DEADLINE_EXCEEDED.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::Response;

use super::{client_info, client_pace, client_send_failed, open_h2, upstream_stream_failed};
use crate::proxy::completion::Progress;
use crate::proxy::error::ProxyError;
use crate::proxy::exchange::Exchange;
use crate::proxy::facts::H2Facts;
use crate::proxy::flow::{send_all, within, Pace};
use crate::proxy::lifecycle::Plan;
use crate::proxy::retry::HeadWait;
use crate::proxy::rewrite;
use crate::upstream::GoAwayWatch;

/// How long a retriable answer waits for the rest of a request body it came before.
const BODY_SETTLE: Duration = Duration::from_millis(250);

/// Why the request direction stopped.
enum PumpEnd {
    /// Client reset or broke its stream.
    Client,
    /// The client sent nothing for the idle timeout.
    ClientStalled,
    /// The upstream stopped taking the request (it may still answer).
    Upstream,
    /// Over `http.max_request_body_bytes`.
    TooLarge,
}

/// One attempt: a stream on a shared connection, both directions, until the response
/// ends.
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
    let mut slot = open_h2(x, plan, progress).await?;
    // A retry's body is the kept one: the client's stream has ended by then.
    let replay = progress.body_taken.get();
    let end = !replay && body.is_end_stream();
    let request = rewrite::h2_request(
        &rewrite::h2_outgoing(facts, !end, false),
        facts.parts.method.clone(),
        facts.end_to_end_headers(),
        plan.forward,
        &plan.route.request_headers,
        &x.snapshot.http.forwarded,
        &client_info(x, plan, progress),
        slot.endpoint,
        plan.cluster.tls.is_some(),
    )?;
    let failed = |e: h2::Error| {
        tracing::debug!(cluster = %cluster.name, "h2 upstream connection failed: {e}");
        ProxyError::UpstreamConnectionFailed
    };
    poll_fn(|cx| slot.send.poll_ready(cx))
        .await
        .map_err(failed)?;
    let (response, upstream_body) = slot.send.send_request(request, end).map_err(failed)?;

    let limit = x.snapshot.http.max_request_body_bytes;
    // A call deadline (never later than the route's timeout) covers the head as well,
    // unless the retry policy gives each attempt less.
    let wait = plan.head_wait();
    let head_timeout = match wait.expired {
        ProxyError::PerTryTimeout => Some(wait),
        _ if plan.call_deadline.is_none() => Some(wait),
        _ => None,
    };
    // gRPC streams may sit quiet for long; their deadline is the call's own.
    let stall = (!facts.grpc).then_some(cluster.read_timeout);
    let idle = x.snapshot.http.idle_timeout.0;
    let up_stall = if facts.grpc {
        idle
    } else {
        cluster.read_timeout
    };
    let up_pace = Pace::new(&x.worker.idle_timers, up_stall, None);
    let client_pace = client_pace(x, facts);
    // When the response last moved: a quiet request side is alive while it does.
    let response_moved = Cell::new(Instant::now());
    let pump = pin!(async {
        match replay {
            // Boxed: only retries pay for it in the stream task.
            true => {
                Box::pin(async {
                    let kept = plan.replayed_body(progress).ok().flatten();
                    let mut upstream = upstream_body;
                    match kept {
                        Some(kept) => send_all(&mut upstream, kept, true, &up_pace)
                            .await
                            .map_err(|_| PumpEnd::Upstream),
                        // Never: a retry is decided only with the body kept.
                        None => Err(PumpEnd::Upstream),
                    }
                })
                .await
            }
            false => {
                pump_request(
                    body,
                    upstream_body,
                    limit,
                    (idle, &response_moved),
                    (&up_pace, progress, plan),
                )
                .await
            }
        }
    });
    let answer = pin!(relay_response(
        (response, &slot.goaway),
        respond,
        sent,
        (x, plan, progress),
        (head_timeout, stall),
        &client_pace,
        &response_moved,
    ));
    let both = both_directions(pump, answer, end);
    match plan.call_deadline {
        None => both.await,
        Some(at) => match monoio::time::timeout_at(monoio::time::Instant::from_std(at), both).await
        {
            Ok(r) => r,
            Err(_) => Err(ProxyError::GrpcDeadline),
        },
    }
}

/// Runs both directions; the call is over when the response is. A request direction
/// that ends early only matters if the client went away or sent too much.
async fn both_directions(
    mut pump: std::pin::Pin<&mut impl Future<Output = Result<(), PumpEnd>>>,
    mut answer: std::pin::Pin<&mut impl Future<Output = Result<(), ProxyError>>>,
    request_done: bool,
) -> Result<(), ProxyError> {
    let mut pumping = !request_done;
    poll_fn(|cx| {
        if pumping {
            if let Poll::Ready(end) = pump.as_mut().poll(cx) {
                pumping = false;
                match end {
                    Ok(()) | Err(PumpEnd::Upstream) => {}
                    Err(PumpEnd::Client) => return Poll::Ready(Err(ProxyError::ClientGone)),
                    Err(PumpEnd::ClientStalled) => {
                        return Poll::Ready(Err(ProxyError::ClientStalled))
                    }
                    Err(PumpEnd::TooLarge) => return Poll::Ready(Err(ProxyError::BodyTooLarge)),
                }
            }
        }
        answer.as_mut().poll(cx)
    })
    .await
}

/// Client request body (and trailers) to the upstream stream; the upstream must take
/// each piece within `up_pace`'s stall. The client must send its next piece within the
/// idle timeout unless the response moved meanwhile: like Envoy's stream idle timeout,
/// a stream is idle only when neither direction moves (a gRPC stream whose client side
/// is quiet while responses flow is alive).
async fn pump_request(
    body: &mut RecvStream,
    mut upstream: SendStream<Bytes>,
    limit: Option<u64>,
    (idle, response_moved): (Duration, &Cell<Instant>),
    (up_pace, progress, plan): (&Pace<'_>, &Progress, &Plan<'_>),
) -> Result<(), PumpEnd> {
    let mut seen = 0u64;
    loop {
        let next = loop {
            match within(up_pace.timers(), idle, body.data()).await {
                Some(next) => break next,
                None if response_moved.get().elapsed() < idle => {}
                None => return Err(PumpEnd::ClientStalled),
            }
        };
        let Some(data) = next else { break };
        let data = data.map_err(|_| PumpEnd::Client)?;
        let n = data.len();
        progress.took(n);
        seen += n as u64;
        if limit.is_some_and(|max| seen > max) {
            return Err(PumpEnd::TooLarge);
        }
        let last = body.is_end_stream();
        plan.keep_body(&data);
        if last {
            // Before it goes: the upstream may answer the moment it has it, and the
            // answer's retry needs the body kept whole.
            plan.body_complete();
        }
        if send_all(&mut upstream, data, last, up_pace).await.is_err() {
            return Err(keep_rest(body, (up_pace, idle), progress, plan).await);
        }
        // Only now may the client send more: the upstream took this piece.
        let _ = body.flow_control().release_capacity(n);
        if last {
            return Ok(());
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => {
            // Trailers are not kept: a request that had them is not sent again.
            plan.abandon_body();
            upstream.send_trailers(rewrite::request_trailers(trailers))
        }
        Ok(None) => {
            plan.body_complete();
            upstream.send_data(Bytes::new(), true)
        }
        Err(_) => return Err(PumpEnd::Client),
    }
    .map_err(|_| PumpEnd::Upstream)
}

/// The upstream stopped taking the request body (a server that answers at once resets
/// its side): the rest is still read into the kept copy while a retry may need it,
/// never past its limit, so that the answer can be retried.
async fn keep_rest(
    body: &mut RecvStream,
    (pace, idle): (&Pace<'_>, Duration),
    progress: &Progress,
    plan: &Plan<'_>,
) -> PumpEnd {
    while plan.keeping_body() {
        match within(pace.timers(), idle, body.data()).await {
            Some(Some(Ok(data))) => {
                let n = data.len();
                progress.took(n);
                plan.keep_body(&data);
                let _ = body.flow_control().release_capacity(n);
                if body.is_end_stream() {
                    plan.body_complete();
                }
            }
            Some(None) => match body.trailers().await {
                Ok(None) => plan.body_complete(),
                _ => plan.abandon_body(),
            },
            Some(Some(Err(_))) | None => plan.abandon_body(),
        }
    }
    PumpEnd::Upstream
}

/// Upstream response (head, body, trailers) to the client stream.
async fn relay_response(
    (response, goaway): (ResponseFuture, &GoAwayWatch),
    respond: &mut SendResponse<Bytes>,
    sent: &mut Option<SendStream<Bytes>>,
    (x, plan, progress): (&Exchange<'_>, &Plan<'_>, &Progress),
    (head_timeout, stall): (Option<HeadWait>, Option<Duration>),
    pace: &Pace<'_>,
    moved: &Cell<Instant>,
) -> Result<(), ProxyError> {
    let stream_id = response.stream_id();
    let (head_limit, expired) = match head_timeout {
        Some(w) => (Some(w.timeout), w.expired),
        None => (None, ProxyError::ResponseTimeout),
    };
    let head = monoio::select! {
        r = response => r,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return Err(ProxyError::ClientGone),
        _ = sleep_or_never(head_limit) => return Err(expired),
    };
    let (parts, mut upstream) = head
        .map_err(|e| upstream_stream_failed(e, goaway, stream_id))?
        .into_parts();
    progress.responded();
    let status = parts.status.as_u16();
    // A Trailers-Only answer carries its grpc-status in the head.
    let grpc = upstream
        .is_end_stream()
        .then(|| parts.headers.get("grpc-status"))
        .flatten()
        .and_then(|v| crate::proxy::grpc::status_code(v.as_bytes()));
    let retry_after = || {
        parts
            .headers
            .get(http::header::RETRY_AFTER)
            .map(|v| v.as_bytes())
    };
    // A server that refuses a call at once answers before the client's END_STREAM
    // (tonic ends a unary request with an empty DATA frame of its own): the answer can
    // be retried only with the whole body kept, so its last frame gets a moment to come
    // (the request direction runs meanwhile, in this task).
    if plan.body_settling(status, grpc) {
        let _ = monoio::time::timeout(BODY_SETTLE, plan.body_kept()).await;
    }
    if plan.retries_answer(x, progress, (status, grpc), retry_after) {
        // Dropping the stream resets it (CANCEL).
        return Err(ProxyError::RetriedAnswer { status, grpc });
    }
    let edits = plan.response_edits(progress);
    // The received head, less what the route drops, plus what it sets.
    let mut head = Response::new(());
    *head.status_mut() = parts.status;
    let headers = head.headers_mut();
    for (name, value) in &parts.headers {
        let name_bytes = name.as_str().as_bytes();
        if !edits.drops(name_bytes) && !weft_mesh::fields::is_weft_made(name_bytes) {
            headers.append(name, value.clone());
        }
    }
    edits.append(headers);
    let end = upstream.is_end_stream();
    // A Trailers-Only answer carries its grpc-status in the head.
    progress.saw_grpc_status(head.headers());
    progress.began(status);
    let client = respond
        .send_response(head, end)
        .map_err(|_| ProxyError::ClientGone)?;
    let client = sent.insert(client);
    if end {
        return Ok(());
    }
    loop {
        let next = monoio::select! {
            d = upstream.data() => d,
            _ = poll_fn(|cx| client.poll_reset(cx)) => return Err(ProxyError::ClientGone),
            _ = sleep_or_never(stall) => return Err(ProxyError::ResponseBodyStalled),
        };
        match next {
            Some(Ok(data)) => {
                let n = data.len();
                let last = upstream.is_end_stream();
                if !last {
                    moved.set(Instant::now());
                }
                send_all(client, data, last, pace)
                    .await
                    .map_err(client_send_failed)?;
                progress.gave(n);
                let _ = upstream.flow_control().release_capacity(n);
                if last {
                    return Ok(());
                }
            }
            Some(Err(e)) => return Err(reset_mid_body(e)),
            None => break,
        }
    }
    let ended = upstream.trailers().await;
    pace.finish();
    if let Ok(Some(trailers)) = &ended {
        progress.saw_grpc_status(trailers);
    }
    match ended {
        Ok(Some(trailers)) => client.send_trailers(trailers),
        Ok(None) => client.send_data(Bytes::new(), true),
        Err(e) => return Err(reset_mid_body(e)),
    }
    .map_err(|_| ProxyError::ClientGone)?;
    Ok(())
}

async fn sleep_or_never(limit: Option<Duration>) {
    match limit {
        Some(t) => monoio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// An upstream stream reset mid-body: the client's stream is reset with its reason.
fn reset_mid_body(e: h2::Error) -> ProxyError {
    ProxyError::UpstreamReset(e.reason().unwrap_or(Reason::CANCEL))
}
