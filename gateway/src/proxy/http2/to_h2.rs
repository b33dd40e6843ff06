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
//! A gRPC call's `grpc-timeout` bounds the whole call: when it passes, the upstream
//! stream is cancelled and the client gets DEADLINE_EXCEEDED.

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
use weft_mesh::snapshot::{Forward, Route};

use super::{client_send_failed, response_timeout, send_all, within, Abort, H2Facts, Pace};
use crate::observe::metrics::Family;
use crate::proxy::forward::connect_failure;
use crate::proxy::grpc;
use crate::proxy::rewrite;
use crate::proxy::Exchange;
use crate::upstream::REFUSED_RETRIES;

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

/// Why an upstream refused a stream (REFUSED_STREAM): it did no work on it.
const REFUSED: &str = "upstream refused the stream";

pub(super) async fn relay(
    x: &Exchange<'_>,
    facts: &H2Facts<'_>,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    route: &Route,
    fwd: &Forward,
    cluster_id: usize,
) -> Result<u16, Abort> {
    let call_deadline = facts
        .grpc_timeout
        .map(|t| Instant::now() + route.timeout.map_or(t, |r| r.min(t)));
    let bodiless = body.is_end_stream();
    let mut retries = 0;
    loop {
        // The client's response stream, once the head went out: what a deadline ends.
        let mut sent: Option<SendStream<Bytes>> = None;
        let outcome = attempt(
            x,
            facts,
            body,
            respond,
            route,
            fwd,
            cluster_id,
            call_deadline,
            &mut sent,
        )
        .await;
        match (outcome, sent.as_mut()) {
            (Err(Abort::Respond(_, REFUSED)), None) if bodiless && retries < REFUSED_RETRIES => {
                retries += 1;
            }
            // Too late for a Trailers-Only answer: end the call with status trailers.
            (Err(Abort::Respond(status, why)), Some(stream)) => {
                if status == 504 {
                    x.count_upstream(Family::UpstreamTimeouts, cluster_id, "deadline");
                }
                return if facts.grpc {
                    let code = grpc::Code::for_http(status);
                    facts.grpc_status.set(Some(code as u16));
                    let _ = stream.send_trailers(grpc::error_trailers(code, why));
                    Ok(200)
                } else {
                    Err(Abort::Reset(Reason::INTERNAL_ERROR))
                };
            }
            (outcome, _) => return outcome,
        }
    }
}

/// One try: a stream on a shared connection, both directions, until the response ends.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    x: &Exchange<'_>,
    facts: &H2Facts<'_>,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    route: &Route,
    fwd: &Forward,
    cluster_id: usize,
    call_deadline: Option<Instant>,
    sent: &mut Option<SendStream<Bytes>>,
) -> Result<u16, Abort> {
    let cluster = &x.snapshot.clusters[cluster_id];
    let mut slot = x
        .worker
        .upstreams
        .open_h2(x.snapshot, cluster_id)
        .await
        .map_err(|e| {
            let (status, why) = connect_failure(x, cluster_id, &e);
            Abort::Respond(status, why)
        })?;
    let end = body.is_end_stream();
    let request = upstream_request(x, facts, route, fwd, slot.endpoint, !end)?;
    let failed = |e: h2::Error| {
        tracing::debug!(cluster = %cluster.name, "h2 upstream connection failed: {e}");
        Abort::Respond(502, "upstream HTTP/2 connection failed")
    };
    poll_fn(|cx| slot.send.poll_ready(cx))
        .await
        .map_err(failed)?;
    let (response, upstream_body) = slot.send.send_request(request, end).map_err(failed)?;

    let limit = x.snapshot.http.max_request_body_bytes;
    // A call deadline (never later than the route's timeout) covers the head as well.
    let head_timeout = call_deadline
        .is_none()
        .then(|| response_timeout(facts, route, cluster));
    // gRPC streams may sit quiet for long; their deadline is the call's own.
    let stall = (!facts.grpc).then_some(cluster.read_timeout);
    let idle = x.snapshot.http.idle_timeout.0;
    let up_stall = if facts.grpc {
        idle
    } else {
        cluster.read_timeout
    };
    let up_pace = Pace::new(&x.worker.idle_timers, up_stall, None);
    let client_pace = facts.client_pace(x);
    // When the response last moved: a quiet request side is alive while it does.
    let response_moved = Cell::new(Instant::now());
    let pump = pin!(pump_request(
        body,
        upstream_body,
        limit,
        (idle, &response_moved),
        &up_pace
    ));
    let answer = pin!(relay_response(
        response,
        respond,
        sent,
        (route, facts),
        head_timeout,
        stall,
        &client_pace,
        &response_moved,
    ));
    let both = both_directions(pump, answer, end);
    match call_deadline {
        None => both.await,
        Some(at) => match monoio::time::timeout_at(monoio::time::Instant::from_std(at), both).await
        {
            Ok(r) => r,
            Err(_) => Err(Abort::Respond(504, "gRPC deadline exceeded")),
        },
    }
}

/// Runs both directions; the call is over when the response is. A request direction
/// that ends early only matters if the client went away or sent too much.
async fn both_directions(
    mut pump: std::pin::Pin<&mut impl Future<Output = Result<(), PumpEnd>>>,
    mut answer: std::pin::Pin<&mut impl Future<Output = Result<u16, Abort>>>,
    request_done: bool,
) -> Result<u16, Abort> {
    let mut pumping = !request_done;
    poll_fn(|cx| {
        if pumping {
            if let Poll::Ready(end) = pump.as_mut().poll(cx) {
                pumping = false;
                match end {
                    Ok(()) | Err(PumpEnd::Upstream) => {}
                    Err(PumpEnd::Client) => return Poll::Ready(Err(Abort::ClientGone)),
                    Err(PumpEnd::ClientStalled) => return Poll::Ready(Err(Abort::ClientStalled)),
                    Err(PumpEnd::TooLarge) => {
                        return Poll::Ready(Err(Abort::Respond(
                            413,
                            "request body larger than http.max_request_body_bytes",
                        )))
                    }
                }
            }
        }
        answer.as_mut().poll(cx)
    })
    .await
}

fn upstream_request(
    x: &Exchange<'_>,
    facts: &H2Facts<'_>,
    route: &Route,
    fwd: &Forward,
    endpoint: std::net::SocketAddr,
    has_body: bool,
) -> Result<http::Request<()>, Abort> {
    rewrite::h2_request(
        &facts.outgoing(has_body, false),
        facts.parts.method.clone(),
        facts.end_to_end_headers(),
        fwd,
        &route.request_headers,
        &x.snapshot.http.forwarded,
        &x.client_info(),
        endpoint,
    )
    .ok_or(Abort::Respond(
        400,
        "request target not valid for the upstream",
    ))
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
    up_pace: &Pace<'_>,
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
        seen += n as u64;
        if limit.is_some_and(|max| seen > max) {
            return Err(PumpEnd::TooLarge);
        }
        let last = body.is_end_stream();
        send_all(&mut upstream, data, last, up_pace)
            .await
            .map_err(|_| PumpEnd::Upstream)?;
        // Only now may the client send more: the upstream took this piece.
        let _ = body.flow_control().release_capacity(n);
        if last {
            return Ok(());
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => upstream.send_trailers(trailers),
        Ok(None) => upstream.send_data(Bytes::new(), true),
        Err(_) => return Err(PumpEnd::Client),
    }
    .map_err(|_| PumpEnd::Upstream)
}

/// Upstream response (head, body, trailers) to the client stream.
async fn relay_response(
    response: ResponseFuture,
    respond: &mut SendResponse<Bytes>,
    sent: &mut Option<SendStream<Bytes>>,
    (route, facts): (&Route, &H2Facts<'_>),
    head_timeout: Option<Duration>,
    stall: Option<Duration>,
    pace: &Pace<'_>,
    moved: &Cell<Instant>,
) -> Result<u16, Abort> {
    let head = monoio::select! {
        r = response => r,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return Err(Abort::ClientGone),
        _ = sleep_or_never(head_timeout) => {
            return Err(Abort::Respond(504, "upstream response timeout"))
        }
    };
    let (parts, mut upstream) = head.map_err(upstream_reset)?.into_parts();
    let status = parts.status.as_u16();
    let mut builder = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if !route.response_headers.drops(name.as_str().as_bytes()) {
            builder = builder.header(name, value);
        }
    }
    for (name, value) in &route.response_headers.set {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let head = builder
        .body(())
        .map_err(|_| Abort::Respond(502, "upstream response headers not valid"))?;
    let end = upstream.is_end_stream();
    // A Trailers-Only answer carries its grpc-status in the head.
    facts.saw_grpc_status(head.headers());
    let client = respond
        .send_response(head, end)
        .map_err(|_| Abort::ClientGone)?;
    let client = sent.insert(client);
    if end {
        return Ok(status);
    }
    loop {
        let next = monoio::select! {
            d = upstream.data() => d,
            _ = poll_fn(|cx| client.poll_reset(cx)) => return Err(Abort::ClientGone),
            _ = sleep_or_never(stall) => return Err(Abort::Reset(Reason::CANCEL)),
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
                let _ = upstream.flow_control().release_capacity(n);
                if last {
                    return Ok(status);
                }
            }
            Some(Err(e)) => return Err(Abort::Reset(e.reason().unwrap_or(Reason::CANCEL))),
            None => break,
        }
    }
    let ended = upstream.trailers().await;
    pace.finish();
    if let Ok(Some(trailers)) = &ended {
        facts.saw_grpc_status(trailers);
    }
    match ended {
        Ok(Some(trailers)) => client.send_trailers(trailers),
        Ok(None) => client.send_data(Bytes::new(), true),
        Err(e) => return Err(Abort::Reset(e.reason().unwrap_or(Reason::CANCEL))),
    }
    .map_err(|_| Abort::ClientGone)?;
    Ok(status)
}

async fn sleep_or_never(limit: Option<Duration>) {
    match limit {
        Some(t) => monoio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// An upstream stream that failed before its response head.
fn upstream_reset(e: h2::Error) -> Abort {
    tracing::debug!("h2 upstream stream failed: {e}");
    match e.reason() {
        Some(Reason::REFUSED_STREAM) => Abort::Respond(503, REFUSED),
        _ => Abort::Respond(502, "upstream reset the stream"),
    }
}
