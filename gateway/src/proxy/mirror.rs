//! A route's `mirror`: a copy of a share of its requests goes to another cluster, fire
//! and forget (Envoy's request mirror policy).
//!
//! The copy is made once the primary exchange is over, from the request as it went
//! upstream (the same header policy: forwarding fields, the route's edits, its prefix
//! rewrite) and the body the plan kept; it runs as a task of its own on the worker, so
//! the primary answer never waits for it and never sees its errors. It is never
//! retried, its answer is read and dropped, and it counts on the mirror cluster's own
//! breaker, pool and outlier detection. It is skipped (counted) when that breaker is
//! full, when the body was longer than `max_buffered_bytes` (or was not read: the
//! primary failed before it), or when the cluster has no endpoint to use.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::io::AsyncWriteRentExt;
use weft_mesh::config::UpstreamProtocol;
use weft_mesh::snapshot::{AttemptOutcome, Cluster, Mirror, Route};

use super::exchange::Exchange;
use super::facts::Request;
use super::lifecycle::Plan;
use super::rewrite;
use crate::observe::metrics::Family;
use crate::proto::h1::body::{copy_body, BodyCopy, BodyError, BodySink};
use crate::proto::h1::head::parse_response;
use crate::runtime::worker::Worker;
use crate::upstream::Lease;

/// Largest answer head a mirror reads.
const MAX_HEAD: usize = 64 * 1024;

/// Sends the copy of the request, if the route mirrors this one.
pub fn send(x: &Exchange<'_>, plan: &Plan<'_>, mirror: &Mirror, request: &impl Request) {
    if !super::fault::fires(mirror.share) {
        return;
    }
    let route = plan.route;
    let cluster = x.snapshot.clusters[mirror.cluster].clone();
    let counter = Counter::new(x, route);
    let body = match (
        request.has_body(),
        plan.kept.as_ref().and_then(|k| k.kept()),
    ) {
        (false, _) => None,
        (true, Some(kept)) => Some(kept),
        // Past `max_buffered_bytes`, or never read (the primary failed before it).
        (true, None) => return counter.bump(Family::MirrorSkipped, "body_not_kept"),
    };
    // The mirror cluster's own breaker: a full one skips the copy, never queues it.
    if !cluster
        .shared
        .requests
        .try_add(cluster.breakers.max_requests)
    {
        return counter.bump(Family::MirrorSkipped, "overflow");
    }
    let admitted = Admitted(cluster.clone());
    let Ok(lease) = x.worker.upstreams.pick(x.snapshot, mirror.cluster, None) else {
        return counter.bump(Family::MirrorSkipped, "no_endpoint");
    };
    let endpoint = lease.address();
    let h1 = cluster.protocol != UpstreamProtocol::Http2;
    let mut outgoing = request.outgoing(h1);
    // The copy's body is the kept one, whole: its length is known.
    outgoing.chunked = false;
    outgoing.length = body.as_ref().map(|b| b.len() as u64);
    let client = x.client_info();
    let forwarded = &x.snapshot.http.forwarded;
    let edits = &route.request_headers;
    let head = if h1 {
        rewrite::request_head(
            &outgoing,
            request.end_to_end(),
            plan.forward,
            edits,
            forwarded,
            &client,
            endpoint,
        )
        .map(|h| Head::H1(h.freeze()))
    } else {
        let Ok(method) = http::Method::from_bytes(outgoing.method) else {
            return counter.bump(Family::MirrorSkipped, "not_http2");
        };
        rewrite::h2_request(
            &outgoing,
            method,
            request.end_to_end(),
            plan.forward,
            edits,
            forwarded,
            &client,
            endpoint,
            cluster.tls.is_some(),
        )
        .map(Head::H2)
    };
    let Ok(head) = head else {
        return counter.bump(Family::MirrorSkipped, "not_sendable");
    };
    let worker = x.worker.clone();
    monoio::spawn(async move {
        let _admitted = admitted;
        let answered = match head {
            Head::H1(head) => h1_copy(&worker, &cluster, endpoint, head, body).await,
            Head::H2(head) => h2_copy(&worker, &cluster, endpoint, head, body).await,
        };
        finish(lease, answered);
        match answered {
            Some(_) => counter.bump(Family::MirrorSent, ""),
            None => counter.bump(Family::MirrorFailed, ""),
        }
    });
}

/// The copy's head, for its cluster's protocol.
enum Head {
    H1(Bytes),
    H2(http::Request<()>),
}

/// A place in the mirror cluster's `max_requests`, given back when the copy is over.
struct Admitted(Arc<Cluster>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.shared.requests.sub();
    }
}

/// The mirror's answer goes to its endpoint's outlier detection, as any answer does.
fn finish(lease: Lease, answered: Option<u16>) {
    lease.finish(Some(match answered {
        Some(status @ 500..) => AttemptOutcome::Failed {
            gateway: (502..=504).contains(&status),
        },
        Some(_) => AttemptOutcome::Success,
        None => AttemptOutcome::LocalOrigin,
    }));
}

/// An HTTP/1.1 copy: the answer's status, once its head came and its body was read
/// (and dropped); `None` when there was no answer in time.
async fn h1_copy(
    worker: &Rc<Worker>,
    cluster: &Cluster,
    endpoint: std::net::SocketAddr,
    head: Bytes,
    body: Option<Bytes>,
) -> Option<u16> {
    let mut up = worker.upstreams.connect(cluster, endpoint).await.ok()?;
    let mut out = BytesMut::from(&head[..]);
    if let Some(b) = &body {
        out.extend_from_slice(b);
    }
    let wrote = monoio::time::timeout(cluster.read_timeout, up.conn.stream.write_all(out)).await;
    if !matches!(wrote, Ok((Ok(_), _))) {
        return None;
    }
    let deadline = std::time::Instant::now() + cluster.request_timeout;
    let response = loop {
        match parse_response(&mut up.conn.buf, MAX_HEAD, false) {
            Ok(Some(r)) if (100..200).contains(&r.status) => continue,
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(_) => return None,
        }
        match up.conn.fill_until(16 * 1024, deadline).await {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
    };
    let spec = BodyCopy {
        framing: response.framing,
        max_bytes: None,
        read_timeout: cluster.read_timeout,
        write_timeout: Duration::from_secs(1),
        dechunk: false,
        max_trailer_bytes: MAX_HEAD,
        trailers: weft_mesh::fields::Trailers::Response,
    };
    // Read whole, so that the connection can serve again.
    if copy_body(&mut up.conn, &mut Discard, &spec).await.is_ok()
        && !response.connection.close
        && up.conn.buf.is_empty()
    {
        worker.upstreams.release(cluster, up);
    }
    Some(response.status)
}

/// An HTTP/2 copy, on the worker's shared connection to the endpoint.
async fn h2_copy(
    worker: &Rc<Worker>,
    cluster: &Cluster,
    endpoint: std::net::SocketAddr,
    head: http::Request<()>,
    body: Option<Bytes>,
) -> Option<u16> {
    let settings = worker.snapshot().http2.clone();
    let mut slot = worker
        .upstreams
        .open_h2(cluster, endpoint, &settings)
        .await
        .ok()?;
    std::future::poll_fn(|cx| slot.send.poll_ready(cx))
        .await
        .ok()?;
    let (response, mut stream) = slot.send.send_request(head, body.is_none()).ok()?;
    if let Some(b) = body {
        // At most `max_buffered_bytes`: h2 holds what the window does not take yet.
        stream.send_data(b, true).ok()?;
    }
    let answer = monoio::time::timeout(cluster.request_timeout, response)
        .await
        .ok()?
        .ok()?;
    let status = answer.status().as_u16();
    let mut answer_body = answer.into_body();
    loop {
        match monoio::time::timeout(cluster.read_timeout, answer_body.data()).await {
            Ok(Some(Ok(data))) => {
                let _ = answer_body.flow_control().release_capacity(data.len());
            }
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => return None,
        }
    }
    Some(status)
}

/// A body sink that drops what it is given.
struct Discard;

impl BodySink for Discard {
    async fn put(&mut self, _: Bytes, _: Duration, _: bool) -> Result<(), BodyError> {
        Ok(())
    }
}

/// Counts a route's mirror outcomes, from the task too.
struct Counter {
    worker: Rc<Worker>,
    key: [u64; 4],
    listener: Rc<str>,
    route: String,
}

impl Counter {
    fn new(x: &Exchange<'_>, route: &Route) -> Counter {
        Counter {
            worker: x.worker.clone(),
            key: [
                x.snapshot.version,
                route as *const Route as u64,
                x.bound.slot as u64,
                0,
            ],
            listener: x.bound.name.clone(),
            route: route.name.clone(),
        }
    }

    fn bump(&self, family: Family, reason: &'static str) {
        let mut key = self.key;
        key[3] = reason.as_ptr() as u64;
        self.worker.counters.bump(family, key, || {
            let mut labels = vec![
                ("listener", self.listener.to_string()),
                ("route", self.route.clone()),
            ];
            if family == Family::MirrorSkipped {
                labels.push(("reason", reason.to_owned()));
            }
            labels
        });
    }
}
