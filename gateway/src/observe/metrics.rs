//! Per-worker counters, summed only when Prometheus scrapes.
//!
//! Invariant: the request path touches only memory its own worker owns. Each worker has
//! a `WorkerMetrics`; a series (one label set) is registered in it the first time the
//! worker sees that label set — the only moment a lock is taken — and the worker then
//! caches the series' `Arc<Cell>` by a small integer key. Bumping a counter is a
//! relaxed load and store by the one thread that writes it (no atomic read-modify-write,
//! no contention); the admin thread only reads. Counters are never reset, so a series
//! lives as long as the process, across config reloads.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::keyhash::BuildKeyHasher;

/// A value written by one worker thread and read by the admin thread.
#[derive(Default)]
pub struct Cell(AtomicU64);

impl Cell {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a plain load + store is exact and cheaper than fetch_add.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The metric families weft exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Requests answered, by listener, route, cluster and status class.
    Requests,
    /// Failed upstream connection attempts, by cluster and reason.
    UpstreamConnectErrors,
    /// Upstream exchanges that ran out of time, by cluster and phase.
    UpstreamTimeouts,
    /// Client connections open now, by listener and protocol (a gauge).
    OpenConnections,
    /// Client connections accepted, by listener and protocol.
    AcceptedConnections,
    /// Requests refused before routing (bad request, too large, ...), by listener and status.
    RejectedRequests,
    /// TLS handshakes that failed, by listener and reason.
    TlsHandshakeFailures,
    /// gRPC calls answered, by listener, route, cluster and the grpc-status the client
    /// got (`weft_requests_total` counts them too, by HTTP status class: 2xx for most).
    GrpcRequests,
    /// Request paths `[listeners.paths]` rewrote or refused, by listener and outcome.
    NormalizedPaths,
    /// Requests a cluster's full breaker (`max_requests`, `max_pending_requests`)
    /// answered 503, by cluster.
    RequestOverflows,
    /// Requests answered 503 because the cluster's `max_connections` was reached.
    ConnectionOverflows,
    /// Retries a cluster's full retry breaker (`max_retries`) did not send, by cluster.
    RetryOverflows,
    /// Requests that reached an endpoint, by cluster and endpoint (the last attempt's).
    EndpointRequests,
    /// Requests a route's `fault` delayed, answered with an abort, or left alone
    /// because `max_active_faults` were in progress, by route.
    FaultDelays,
    FaultAborts,
    FaultOverflows,
    /// Requests a rate limit let through, or answered over the limit, by listener,
    /// route (empty for the listener's own limit) and scope.
    RateLimitOk,
    RateLimitLimited,
    /// Mirrored copies answered, skipped (by reason) and failed, by listener and route.
    MirrorSent,
    MirrorSkipped,
    MirrorFailed,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Requests => "weft_requests_total",
            Family::UpstreamConnectErrors => "weft_upstream_connect_errors_total",
            Family::UpstreamTimeouts => "weft_upstream_timeouts_total",
            Family::OpenConnections => "weft_open_connections",
            Family::AcceptedConnections => "weft_accepted_connections_total",
            Family::RejectedRequests => "weft_rejected_requests_total",
            Family::TlsHandshakeFailures => "weft_tls_handshake_failures_total",
            Family::GrpcRequests => "weft_grpc_requests_total",
            Family::NormalizedPaths => "weft_normalized_paths_total",
            Family::RequestOverflows => "weft_cluster_upstream_rq_pending_overflow_total",
            Family::ConnectionOverflows => "weft_cluster_upstream_cx_overflow_total",
            Family::RetryOverflows => "weft_cluster_upstream_rq_retry_overflow_total",
            Family::EndpointRequests => "weft_upstream_requests_total",
            Family::FaultDelays => "weft_route_fault_delays_injected_total",
            Family::FaultAborts => "weft_route_fault_aborts_injected_total",
            Family::FaultOverflows => "weft_route_fault_overflow_total",
            Family::RateLimitOk => "weft_rate_limit_ok_total",
            Family::RateLimitLimited => "weft_rate_limit_limited_total",
            Family::MirrorSent => "weft_route_mirror_sent_total",
            Family::MirrorSkipped => "weft_route_mirror_skipped_total",
            Family::MirrorFailed => "weft_route_mirror_failed_total",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Family::Requests => "Requests answered, by listener, route, cluster and status class.",
            Family::UpstreamConnectErrors => {
                "Upstream connection attempts that failed, by cluster and reason."
            }
            Family::UpstreamTimeouts => "Upstream exchanges that timed out, by cluster and phase.",
            Family::OpenConnections => {
                "Client connections open now, by listener and protocol (http1, http2)."
            }
            Family::AcceptedConnections => {
                "Client connections accepted, by listener and protocol (http1, http2)."
            }
            Family::RejectedRequests => "Requests refused before routing, by listener and status.",
            Family::TlsHandshakeFailures => "TLS handshakes that failed, by listener and reason.",
            Family::GrpcRequests => {
                "gRPC calls answered, by listener, route, cluster and grpc-status."
            }
            Family::NormalizedPaths => {
                "Request paths normalised (rewritten) or refused, by listener and outcome."
            }
            Family::RequestOverflows => {
                "Requests answered 503 because the cluster's max_requests or max_pending_requests breaker was full, by cluster."
            }
            Family::ConnectionOverflows => {
                "Requests answered 503 because the cluster's max_connections breaker was full, by cluster."
            }
            Family::RetryOverflows => {
                "Retries not sent because the cluster's retry breaker (max_retries) was full, by cluster."
            }
            Family::EndpointRequests => {
                "Requests that reached an upstream endpoint, by cluster and endpoint (the last attempt's)."
            }
            Family::FaultDelays => "Requests a route's fault delayed, by listener and route.",
            Family::FaultAborts => {
                "Requests a route's fault answered with an error (never sent upstream), by listener and route."
            }
            Family::FaultOverflows => {
                "Faults not injected because max_active_faults were in progress, by listener and route."
            }
            Family::RateLimitOk => {
                "Requests a rate limit let through, by listener, route (empty: the listener's limit) and scope."
            }
            Family::RateLimitLimited => {
                "Requests answered over a rate limit, by listener, route (empty: the listener's limit) and scope."
            }
            Family::MirrorSent => "Mirrored copies the mirror cluster answered, by listener and route.",
            Family::MirrorSkipped => {
                "Mirrored copies not sent, by listener, route and reason (overflow, body_not_kept, no_endpoint, not_sendable, not_http2)."
            }
            Family::MirrorFailed => {
                "Mirrored copies that got no answer (connect failed, timed out, broken), by listener and route."
            }
        }
    }
    /// Whether this family's keys start with the snapshot version (their other parts
    /// are indices into that snapshot).
    fn keyed_by_version(self) -> bool {
        matches!(
            self,
            Family::Requests
                | Family::UpstreamConnectErrors
                | Family::UpstreamTimeouts
                | Family::GrpcRequests
                | Family::RequestOverflows
                | Family::ConnectionOverflows
                | Family::RetryOverflows
                | Family::EndpointRequests
                | Family::FaultDelays
                | Family::FaultAborts
                | Family::FaultOverflows
                | Family::RateLimitOk
                | Family::RateLimitLimited
                | Family::MirrorSent
                | Family::MirrorSkipped
                | Family::MirrorFailed
        )
    }
    fn kind(self) -> &'static str {
        match self {
            Family::OpenConnections => "gauge",
            _ => "counter",
        }
    }
    const ALL: [Family; 21] = [
        Family::Requests,
        Family::UpstreamConnectErrors,
        Family::UpstreamTimeouts,
        Family::OpenConnections,
        Family::AcceptedConnections,
        Family::RejectedRequests,
        Family::TlsHandshakeFailures,
        Family::GrpcRequests,
        Family::NormalizedPaths,
        Family::RequestOverflows,
        Family::ConnectionOverflows,
        Family::RetryOverflows,
        Family::EndpointRequests,
        Family::FaultDelays,
        Family::FaultAborts,
        Family::FaultOverflows,
        Family::RateLimitOk,
        Family::RateLimitLimited,
        Family::MirrorSent,
        Family::MirrorSkipped,
        Family::MirrorFailed,
    ];
}

/// Label pairs of one series, in the order they are printed.
pub type Labels = Vec<(&'static str, String)>;

/// One worker's series. Shared with the registry only to be read at scrape time.
#[derive(Default)]
pub struct WorkerMetrics {
    series: Mutex<Vec<(Family, Labels, Arc<Cell>)>>,
}

impl WorkerMetrics {
    fn register(&self, family: Family, labels: Labels) -> Arc<Cell> {
        let cell = Arc::new(Cell::default());
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((family, labels, cell.clone()));
        cell
    }
}

/// Every worker's metrics; the admin thread renders them.
#[derive(Default)]
pub struct Registry {
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
}

impl Registry {
    pub fn worker(&self) -> Arc<WorkerMetrics> {
        let w = Arc::new(WorkerMetrics::default());
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(w.clone());
        w
    }

    /// Sum of a family's series across workers, by label set (for /metrics and tests).
    fn totals(&self) -> BTreeMap<Family, BTreeMap<Labels, u64>> {
        let mut out: BTreeMap<Family, BTreeMap<Labels, u64>> = BTreeMap::new();
        for w in self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (family, labels, cell) in w
                .series
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                *out.entry(*family)
                    .or_default()
                    .entry(labels.clone())
                    .or_default() += cell.get();
            }
        }
        out
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, extra: &[(&str, &str, &str, i64)]) -> String {
        let totals = self.totals();
        let mut out = String::new();
        for family in Family::ALL {
            let name = family.name();
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} {}",
                family.help(),
                family.kind()
            );
            for (labels, value) in totals.get(&family).into_iter().flatten() {
                // Gauges are stored as wrapping u64 increments and decrements.
                let value = if family.kind() == "gauge" {
                    *value as i64 as f64
                } else {
                    *value as f64
                };
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels));
            }
        }
        for (name, help, kind, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

fn render_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"");
        escape_label_value(v, &mut s);
        s.push('"');
    }
    s.push('}');
    s
}

/// A label value as the text format writes it inside its quotes: `\`, `"` and newline
/// escaped.
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A worker's handle: a cache from a caller-chosen key to its series.
///
/// Keys are small integers the caller derives from snapshot indices (plus the snapshot
/// version), so the hot path hashes four integers, never a string.
/// Snapshot version and indices that identify a series within one worker.
pub type Key = [u64; 4];

pub struct Counters {
    shared: Arc<WorkerMetrics>,
    cache: RefCell<HashMap<(Family, Key), Arc<Cell>, BuildKeyHasher>>,
    /// This worker's series by label set (only this worker registers into `shared`, so
    /// it can index them without the lock): a new key finds its series in O(1), not by
    /// a scan of every series under the lock.
    by_labels: RefCell<HashMap<(Family, Labels), Arc<Cell>>>,
}

impl Counters {
    pub fn new(shared: Arc<WorkerMetrics>) -> Counters {
        Counters {
            shared,
            cache: RefCell::new(HashMap::default()),
            by_labels: RefCell::new(HashMap::new()),
        }
    }

    /// The series for `key`, registering it with `labels()` on first use.
    pub fn cell(&self, family: Family, key: Key, labels: impl FnOnce() -> Labels) -> Arc<Cell> {
        if let Some(c) = self.cache.borrow().get(&(family, key)) {
            return c.clone();
        }
        // A later snapshot may map a new key to a label set this worker already has.
        let cell = self
            .by_labels
            .borrow_mut()
            .entry((family, labels()))
            .or_insert_with_key(|(family, labels)| self.shared.register(*family, labels.clone()))
            .clone();
        self.cache.borrow_mut().insert((family, key), cell.clone());
        cell
    }

    pub fn bump(&self, family: Family, key: Key, labels: impl FnOnce() -> Labels) {
        // The known-series path adds in place: no reference count taken and dropped.
        if let Some(c) = self.cache.borrow().get(&(family, key)) {
            c.add(1);
            return;
        }
        self.cell(family, key, labels).add(1);
    }

    /// Forgets the keys of snapshots older than `version`, so that reloads (and
    /// discovery updates, which publish snapshots too) do not grow the key cache
    /// without end. The series stay; a request still running on an old snapshot finds
    /// its series again by label set.
    pub fn forget_versions_before(&self, version: u64) {
        self.cache
            .borrow_mut()
            .retain(|(family, key), _| !family.keyed_by_version() || key[0] >= version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(route: &str) -> Labels {
        vec![("route", route.to_owned())]
    }

    #[test]
    fn a_series_outlives_the_snapshot_versions_that_counted_it() {
        let registry = Registry::default();
        let counters = Counters::new(registry.worker());
        // Versions 1 and 2 map route "a" to different keys; both count one series.
        counters.bump(Family::Requests, [1, 7, 0, 2], || labels("a"));
        counters.bump(Family::Requests, [2, 9, 0, 2], || labels("a"));
        counters.bump(Family::Requests, [2, 8, 0, 2], || labels("b"));
        counters.bump(Family::AcceptedConnections, [0, 0, 0, 0], Vec::new);
        counters.forget_versions_before(2);
        assert_eq!(counters.cache.borrow().len(), 3, "version 1's key is gone");
        // A request still running on version 1 counts into the same series again.
        counters.bump(Family::Requests, [1, 7, 0, 2], || labels("a"));
        let totals = registry.totals();
        let requests = &totals[&Family::Requests];
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!(requests[&labels("a")], 3);
        assert_eq!(requests[&labels("b")], 1);
        assert_eq!(totals[&Family::AcceptedConnections][&Vec::new()], 1);
    }
}
