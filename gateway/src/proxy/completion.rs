//! The completion record: what became of one request, made exactly once when its
//! exchange is over, at the same point for HTTP/1.1 and HTTP/2 clients.
//!
//! Every request counter is fed from it (requests by status class, gRPC calls by
//! grpc-status, upstream connect errors and timeouts by reason); access logs and trace
//! spans are to be made from the same record, so they can never disagree with the
//! metrics about a request.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use weft_mesh::snapshot::{AttemptOutcome, ClusterId, Route};

use super::error::{Breaker, ProxyError};
use super::exchange::Exchange;
use crate::observe::metrics::Family;
use crate::upstream::Lease;

/// The `status_class` key of requests the client cancelled (status classes are 1-5).
const CANCELLED_CLASS: u64 = 9;

/// Whether this request's record carries times: reading the clock four times costs
/// ~130 ns a request on these machines (1% of a gRPC call through weft), so it is read
/// only while something reads the times: the `weft::completion` trace line today; access
/// logs and trace spans, when they come, switch it on the same way.
fn timed() -> bool {
    tracing::enabled!(target: "weft::completion", tracing::Level::TRACE)
}

/// What the attempts of one exchange did: what retries are decided on, and what the
/// completion record reports. Cells, because both directions of a relay write it.
pub struct Progress {
    /// When the request began, if anything reads the record's times (see `timed`).
    pub started: Option<Instant>,
    pub attempts: Cell<u8>,
    /// The endpoint of the latest attempt.
    pub endpoint: Cell<Option<SocketAddr>>,
    /// The latest attempt's hold on its endpoint, until the attempt is over.
    lease: Cell<Option<Lease>>,
    /// The latest attempt's connection came from the pool.
    pub reused: Cell<bool>,
    /// The next attempt must connect afresh to `endpoint` (its pooled one had died).
    pub fresh: Cell<bool>,
    /// Some of the request body was taken from the client: it cannot be sent again.
    pub body_taken: Cell<bool>,
    /// A retry was due but the cluster's retry breaker was full: the error stood.
    pub retry_overflow: Cell<bool>,
    /// weft told an HTTP/1.1 client `100 Continue` (once per exchange).
    pub continue_sent: Cell<bool>,
    /// The status sent to the client: the response has begun.
    pub status: Cell<Option<u16>>,
    /// The grpc-status the client was sent (weft's, or the upstream's head or trailers).
    pub grpc_status: Cell<Option<u16>>,
    /// When the upstream connection was had and its response head came, in
    /// microseconds from `started` (0: not yet): a stream task carries this struct.
    connected_us: Cell<u32>,
    first_byte_us: Cell<u32>,
    /// Request body bytes taken from the client, response body bytes given to it.
    pub body_in: Cell<u64>,
    pub body_out: Cell<u64>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            started: timed().then(Instant::now),
            attempts: Cell::new(0),
            endpoint: Cell::new(None),
            lease: Cell::new(None),
            reused: Cell::new(false),
            fresh: Cell::new(false),
            body_taken: Cell::new(false),
            retry_overflow: Cell::new(false),
            continue_sent: Cell::new(false),
            status: Cell::new(None),
            grpc_status: Cell::new(None),
            connected_us: Cell::new(0),
            first_byte_us: Cell::new(0),
            body_in: Cell::new(0),
            body_out: Cell::new(0),
        }
    }

    /// An attempt was given its endpoint.
    pub fn leased(&self, lease: Lease) {
        self.endpoint.set(Some(lease.address()));
        self.lease.set(Some(lease));
    }

    /// The attempt's endpoint is done with: `outcome` goes to its outlier detection.
    pub fn end_attempt(&self, outcome: Option<AttemptOutcome>) {
        if let Some(lease) = self.lease.take() {
            lease.finish(outcome);
        }
    }

    /// An attempt has its upstream connection (or stream) to its endpoint.
    pub fn connected(&self, reused: bool) {
        self.reused.set(reused);
        self.connected_us.set(self.micros_now());
    }

    /// Microseconds since the request started, at least 1 (0 means "not yet" or "not
    /// timed").
    fn micros_now(&self) -> u32 {
        self.started.map_or(0, |t| {
            let us = t.elapsed().as_micros();
            u32::try_from(us).unwrap_or(u32::MAX).max(1)
        })
    }

    fn at(&self, us: u32) -> Option<Instant> {
        let started = self.started?;
        (us > 0).then(|| started + std::time::Duration::from_micros(u64::from(us)))
    }

    /// The upstream's response head arrived.
    pub fn responded(&self) {
        self.first_byte_us.set(self.micros_now());
        if let Some(lease) = self.lease.take() {
            lease.responded();
            self.lease.set(Some(lease));
        }
    }

    /// The response head went to the client with `status`.
    pub fn began(&self, status: u16) {
        self.status.set(Some(status));
    }

    pub fn took(&self, n: usize) {
        self.body_taken.set(true);
        self.body_in.set(self.body_in.get() + n as u64);
    }

    pub fn gave(&self, n: usize) {
        self.body_out.set(self.body_out.get() + n as u64);
    }

    /// Notes the grpc-status in `fields` (a head or trailers going to the client).
    pub fn saw_grpc_status(&self, fields: &http::HeaderMap) {
        if let Some(code) = fields
            .get("grpc-status")
            .and_then(|v| super::grpc::status_code(v.as_bytes()))
        {
            self.grpc_status.set(Some(code));
        }
    }
}

/// Where an exchange went, for its completion record.
#[derive(Default)]
pub struct Decided<'r> {
    pub route: Option<&'r Arc<Route>>,
    pub cluster: Option<ClusterId>,
    pub error: Option<ProxyError>,
    pub grpc: bool,
}

pub struct Completion<'x, 'r> {
    x: &'x Exchange<'r>,
    /// The client protocol (`http1`, `http2`).
    pub protocol: &'static str,
    pub route: Option<&'r Arc<Route>>,
    pub cluster: Option<ClusterId>,
    pub endpoint: Option<SocketAddr>,
    /// The status the client got; `None` when it went away before any.
    pub status: Option<u16>,
    pub error: Option<ProxyError>,
    pub grpc_status: Option<u16>,
    pub attempts: u8,
    /// A retry was refused by the cluster's retry breaker.
    pub retry_overflow: bool,
    pub body_in: u64,
    pub body_out: u64,
    /// The times, when the record is timed (`timed`); `None` otherwise.
    pub started: Option<Instant>,
    pub upstream_connected: Option<Instant>,
    pub first_response_byte: Option<Instant>,
    pub done: Option<Instant>,
}

impl<'x, 'r> Completion<'x, 'r> {
    pub fn new(
        x: &'x Exchange<'r>,
        protocol: &'static str,
        decided: Decided<'r>,
        progress: &Progress,
    ) -> Self {
        let error = decided.error;
        // What the client got: the response it was sent, else weft's error answer. A
        // client that went away got nothing (`cancelled`); one that stalled is cut off
        // and counted as 408, whatever had begun.
        let status = match error {
            Some(ProxyError::ClientGone) => None,
            Some(ProxyError::ClientStalled) => Some(408),
            Some(e) => progress.status.get().or(Some(e.status())),
            None => progress.status.get(),
        };
        // The grpc-status the client saw (a call reset before any is counted by HTTP
        // status alone); what a client that cancels sees is CANCELLED.
        let grpc_status = match error {
            _ if !decided.grpc => None,
            Some(ProxyError::ClientGone) => Some(ProxyError::ClientGone.grpc_code() as u16),
            _ => progress.grpc_status.get(),
        };
        Completion {
            x,
            protocol,
            route: decided.route,
            cluster: decided.cluster,
            endpoint: progress.endpoint.get(),
            retry_overflow: progress.retry_overflow.get(),
            status,
            error,
            grpc_status,
            attempts: progress.attempts.get(),
            body_in: progress.body_in.get(),
            body_out: progress.body_out.get(),
            started: progress.started,
            upstream_connected: progress.at(progress.connected_us.get()),
            first_response_byte: progress.at(progress.first_byte_us.get()),
            done: progress.started.map(|_| Instant::now()),
        }
    }

    /// Feeds the counters from the record.
    pub fn count(&self) {
        let x = self.x;
        x.worker.answered.set(x.worker.answered.get() + 1);
        let class = self
            .status
            .map_or(CANCELLED_CLASS, |s| u64::from((s / 100).min(5)));
        let class_label = || {
            if class == CANCELLED_CLASS {
                "cancelled".to_owned()
            } else {
                format!("{class}xx")
            }
        };
        self.bump_request(Family::Requests, class, ("status_class", class_label));
        if let Some(code) = self.grpc_status {
            let label = || code.to_string();
            self.bump_request(
                Family::GrpcRequests,
                u64::from(code),
                ("grpc_status", label),
            );
        }
        if let (Some(cluster), Some(endpoint)) = (self.cluster, self.endpoint) {
            self.count_endpoint(cluster, endpoint);
        }
        // A retry not sent: the failed attempt's answer (or error) stood.
        if let (true, Some(cluster)) = (self.retry_overflow, self.cluster) {
            self.count_cluster(Family::RetryOverflows, cluster);
        }
        let (Some(error), Some(cluster)) = (self.error, self.cluster) else {
            return;
        };
        match error {
            ProxyError::Overflow(Breaker::Connections) => {
                self.count_cluster(Family::ConnectionOverflows, cluster)
            }
            // Envoy's `upstream_rq_pending_overflow` counts both.
            ProxyError::Overflow(_) => self.count_cluster(Family::RequestOverflows, cluster),
            _ => {}
        }
        if let Some(reason) = error.connect_label() {
            self.count_upstream(Family::UpstreamConnectErrors, cluster, "reason", reason);
        }
        if let Some(phase) = error.timeout_phase() {
            self.count_upstream(Family::UpstreamTimeouts, cluster, "phase", phase);
        }
        tracing::debug!(
            cluster = %x.snapshot.clusters[cluster].name,
            reason = error.label(),
            side = ?error.side(),
            attempts = self.attempts,
            "exchange failed: {error}"
        );
    }

    /// The record as one trace line (`RUST_LOG=weft::completion=trace`): every field,
    /// durations from the request's start, until access logs are made from it.
    pub fn trace(&self) {
        let since = |t: Option<Instant>| Some(t?.duration_since(self.started?));
        tracing::trace!(
            target: "weft::completion",
            listener = %self.x.bound.name,
            peer = %self.x.conn.peer,
            protocol = self.protocol,
            route = self.route.map(|r| r.name.as_str()),
            cluster = self.cluster.map(|c| self.x.snapshot.clusters[c].name.as_str()),
            endpoint = ?self.endpoint,
            status = self.status,
            grpc_status = self.grpc_status,
            error = self.error.map(ProxyError::label),
            attempts = self.attempts,
            body_in = self.body_in,
            body_out = self.body_out,
            connected = ?since(self.upstream_connected),
            first_byte = ?since(self.first_response_byte),
            done = ?since(self.done),
            "request complete"
        );
    }

    /// Bumps a per-request family keyed by route and cluster (in this snapshot) and one
    /// more value, labelled `outcome`.
    fn bump_request(
        &self,
        family: Family,
        value: u64,
        outcome: (&'static str, impl FnOnce() -> String),
    ) {
        let x = self.x;
        let route_key = self.route.map_or(0, |r| Arc::as_ptr(r) as u64);
        let cluster_key = self.cluster.map_or(0, |c| c as u64 + 1);
        let key = [
            x.snapshot.version,
            route_key,
            cluster_key << 16 | x.bound.slot as u64,
            value,
        ];
        x.worker.counters.bump(family, key, || {
            vec![
                ("listener", x.bound.name.to_string()),
                (
                    "route",
                    self.route.map(|r| r.name.clone()).unwrap_or_default(),
                ),
                (
                    "cluster",
                    self.cluster
                        .map(|c| x.snapshot.clusters[c].name.clone())
                        .unwrap_or_default(),
                ),
                (outcome.0, (outcome.1)()),
            ]
        });
    }

    /// Counts a request that reached `endpoint` of `cluster`.
    fn count_endpoint(&self, cluster: ClusterId, endpoint: SocketAddr) {
        let x = self.x;
        let address = match endpoint {
            SocketAddr::V4(a) => u64::from(a.ip().to_bits()) << 16 | u64::from(a.port()),
            SocketAddr::V6(a) => weft_mesh::snapshot::fnv1a(&a.ip().octets()) ^ u64::from(a.port()),
        };
        let key = [x.snapshot.version, cluster as u64, address, 0];
        x.worker.counters.bump(Family::EndpointRequests, key, || {
            vec![
                ("cluster", x.snapshot.clusters[cluster].name.clone()),
                ("endpoint", endpoint.to_string()),
            ]
        });
    }

    /// Counts an upstream failure in `family` by cluster and `label`.
    fn count_cluster(&self, family: Family, cluster: ClusterId) {
        let x = self.x;
        let key = [x.snapshot.version, cluster as u64, 0, 0];
        x.worker.counters.bump(family, key, || {
            vec![("cluster", x.snapshot.clusters[cluster].name.clone())]
        });
    }

    fn count_upstream(
        &self,
        family: Family,
        cluster: ClusterId,
        label: &'static str,
        value: &'static str,
    ) {
        let x = self.x;
        let key = [x.snapshot.version, cluster as u64, value.as_ptr() as u64, 0];
        x.worker.counters.bump(family, key, || {
            vec![
                ("cluster", x.snapshot.clusters[cluster].name.clone()),
                (label, value.to_owned()),
            ]
        });
    }
}
