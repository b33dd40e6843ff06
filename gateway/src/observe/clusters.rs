//! What the clusters' shared state says, for `/metrics` and the admin's `/clusters`:
//! circuit-breaker occupancy, active health checks, outlier detection and the
//! endpoints each cluster may use.
//!
//! Everything here is read from the counters every worker and the checker share
//! (`ClusterShared`, `HostHealth`) at scrape time; nothing is kept per scrape.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value};

use super::metrics::escape_label_value;
use weft_mesh::snapshot::{clock_ms, Cluster, Discovery, EjectionKind, HostHealth, Snapshot};

/// Every cluster series, in Prometheus' text format.
pub fn metrics(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    breakers(&mut out, snapshot);
    health_checks(&mut out, snapshot);
    outliers(&mut out, snapshot);
    membership(&mut out, snapshot);
    retries(&mut out, snapshot);
    out
}

/// A cluster name as a label value.
fn label(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    escape_label_value(name, &mut out);
    out
}

/// One family with one series per cluster: `values` are (cluster name, value).
pub fn per_cluster<'a>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    family(out, name, kind, help);
    for (cluster, value) in values {
        let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {value}", label(cluster));
    }
}

fn clusters_where(snapshot: &Snapshot, keep: impl Fn(&Cluster) -> bool) -> Vec<&Cluster> {
    snapshot
        .clusters
        .iter()
        .map(|c| &**c)
        .filter(|c| keep(c))
        .collect()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// `weft_cluster_circuit_breaker_open` (1 while full) and `_remaining`, by cluster and
/// resource.
fn breakers(out: &mut String, snapshot: &Snapshot) {
    let resources = |c: &Cluster| {
        [
            ("cx", c.shared.connections.get(), c.breakers.max_connections),
            (
                "rq_pending",
                c.shared.pending.get(),
                c.breakers.max_pending_requests,
            ),
            ("rq", c.shared.requests.get(), c.breakers.max_requests),
            ("rq_retry", c.shared.retries.get(), c.breakers.max_retries),
        ]
    };
    family(out, "weft_cluster_circuit_breaker_open", "gauge", "1 while a cluster's circuit breaker is full (new requests get 503 overflow; retries are not sent), by cluster and resource.");
    for c in &snapshot.clusters {
        for (resource, used, limit) in resources(c) {
            let _ = writeln!(
                out,
                "weft_cluster_circuit_breaker_open{{cluster=\"{}\",resource=\"{resource}\"}} {}",
                label(&c.name),
                u8::from(used >= limit)
            );
        }
    }
    family(
        out,
        "weft_cluster_circuit_breaker_remaining",
        "gauge",
        "What a cluster's circuit breaker still admits, by cluster and resource.",
    );
    for c in &snapshot.clusters {
        for (resource, used, limit) in resources(c) {
            let _ = writeln!(
                out,
                "weft_cluster_circuit_breaker_remaining{{cluster=\"{}\",resource=\"{resource}\"}} {}",
                label(&c.name),
                limit.saturating_sub(used)
            );
        }
    }
}

/// What retries did, by cluster (Envoy's `upstream_rq_retry*`; `_overflow_total` is
/// counted from the completion records), and the requests that could not be retried
/// because their body was past `max_buffered_bytes`.
fn retries(out: &mut String, snapshot: &Snapshot) {
    type Read = fn(&Cluster) -> u64;
    let families: [(&str, &str, Read); 5] = [
        (
            "weft_cluster_upstream_rq_retry_total",
            "Attempts made again (by a retry policy, or after a dead pooled connection or a refused stream), by cluster.",
            |c| c.shared.retry.sent.load(Relaxed),
        ),
        (
            "weft_cluster_upstream_rq_retry_success_total",
            "Retried requests whose last attempt succeeded, by cluster.",
            |c| c.shared.retry.success.load(Relaxed),
        ),
        (
            "weft_cluster_upstream_rq_retry_limit_exceeded_total",
            "Failed attempts not retried because num_retries were used up, by cluster.",
            |c| c.shared.retry.limit_exceeded.load(Relaxed),
        ),
        (
            "weft_cluster_upstream_rq_retry_backoff_exponential_total",
            "Retries that waited the jittered exponential backoff, by cluster.",
            |c| c.shared.retry.backoff_exponential.load(Relaxed),
        ),
        (
            "weft_cluster_upstream_rq_retry_backoff_ratelimited_total",
            "Retries that waited an answer's Retry-After, by cluster.",
            |c| c.shared.retry.backoff_ratelimited.load(Relaxed),
        ),
    ];
    for (name, help, read) in families {
        let values = snapshot.clusters.iter().map(|c| (c.name.as_str(), read(c)));
        per_cluster(out, (name, "counter", help), values);
    }
    family(
        out,
        "weft_retry_abandoned_total",
        "counter",
        "Requests that could no longer be retried, by cluster and reason (body_too_large: past the policy's max_buffered_bytes).",
    );
    for c in &snapshot.clusters {
        let _ = writeln!(
            out,
            "weft_retry_abandoned_total{{cluster=\"{}\",reason=\"body_too_large\"}} {}",
            label(&c.name),
            c.shared.retry.abandoned_body_too_large.load(Relaxed)
        );
    }
}

/// Active health checks by cluster: attempts, successes, failures.
fn health_checks(out: &mut String, snapshot: &Snapshot) {
    let checked = clusters_where(snapshot, |c| c.health_check.is_some());
    if checked.is_empty() {
        return;
    }
    let families: [(&str, &str, fn(&Cluster) -> u64); 3] = [
        (
            "weft_cluster_health_check_attempt_total",
            "Active health checks made, by cluster.",
            |c| c.shared.checks.attempts.load(Relaxed),
        ),
        (
            "weft_cluster_health_check_success_total",
            "Active health checks passed, by cluster.",
            |c| c.shared.checks.successes.load(Relaxed),
        ),
        (
            "weft_cluster_health_check_failure_total",
            "Active health checks failed (unwell answer, no answer or timeout), by cluster.",
            |c| c.shared.checks.failures.load(Relaxed),
        ),
    ];
    for (name, help, read) in families {
        let values = checked.iter().map(|c| (c.name.as_str(), read(c)));
        per_cluster(out, (name, "counter", help), values);
    }
}

/// Outlier detection by cluster: ejections active, detected and enforced by type,
/// refused by `max_ejection_percent`.
fn outliers(out: &mut String, snapshot: &Snapshot) {
    let detecting = clusters_where(snapshot, |c| c.outlier.is_some());
    if detecting.is_empty() {
        return;
    }
    per_cluster(
        out,
        (
            "weft_cluster_outlier_ejections_active",
            "gauge",
            "Endpoints ejected by outlier detection now, by cluster.",
        ),
        detecting
            .iter()
            .map(|c| (c.name.as_str(), c.shared.outliers.active.load(Relaxed))),
    );
    for (name, help, read) in [
        (
            "weft_cluster_outlier_ejections_detected_total",
            "Endpoints found to be outliers, ejected or not (enforcing percentages), by cluster and type.",
            &(|c: &Cluster, k: EjectionKind| c.shared.outliers.detected[k as usize].load(Relaxed))
                as &dyn Fn(&Cluster, EjectionKind) -> u64,
        ),
        (
            "weft_cluster_outlier_ejections_enforced_total",
            "Endpoints ejected by outlier detection, by cluster and type.",
            &|c: &Cluster, k: EjectionKind| c.shared.outliers.enforced[k as usize].load(Relaxed),
        ),
    ] {
        family(out, name, "counter", help);
        for c in &detecting {
            for kind in EjectionKind::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",type=\"{}\"}} {}",
                    label(&c.name),
                    kind.label(),
                    read(c, kind)
                );
            }
        }
    }
    per_cluster(
        out,
        (
            "weft_cluster_outlier_ejections_overflow_total",
            "counter",
            "Ejections max_ejection_percent refused, by cluster.",
        ),
        detecting
            .iter()
            .map(|c| (c.name.as_str(), c.shared.outliers.overflow.load(Relaxed))),
    );
}

/// For clusters whose endpoints' health is tracked (checks or outlier detection): the
/// endpoints, how many may be used, each one's state, and the picks made in panic.
fn membership(out: &mut String, snapshot: &Snapshot) {
    let tracked = clusters_where(snapshot, |c| {
        c.health_check.is_some() || c.outlier.is_some()
    });
    if tracked.is_empty() {
        return;
    }
    let views: Vec<Vec<(std::net::SocketAddr, bool)>> = tracked
        .iter()
        .map(|c| {
            let addresses: Vec<_> = c.endpoints.iter().map(|e| e.address).collect();
            let hosts = c.shared.hosts_of(&addresses, c.health_check.is_some());
            addresses
                .into_iter()
                .zip(hosts.iter().map(|h| h.eligible()))
                .collect()
        })
        .collect();
    let named = || {
        tracked
            .iter()
            .zip(&views)
            .map(|(c, v)| (c.name.as_str(), v))
    };
    per_cluster(
        out,
        (
            "weft_cluster_membership_endpoints",
            "gauge",
            "Endpoints of a cluster, by cluster.",
        ),
        named().map(|(name, v)| (name, v.len() as u64)),
    );
    per_cluster(
        out,
        (
            "weft_cluster_membership_healthy",
            "gauge",
            "Endpoints of a cluster that may be sent traffic (passing checks, not ejected), by cluster.",
        ),
        named().map(|(name, v)| (name, v.iter().filter(|(_, ok)| *ok).count() as u64)),
    );
    per_cluster(
        out,
        (
            "weft_cluster_lb_healthy_panic_total",
            "counter",
            "Endpoint picks made in panic mode (fewer eligible endpoints than healthy_panic_threshold: all were used), by cluster.",
        ),
        tracked.iter().map(|c| (c.name.as_str(), c.shared.panics.get())),
    );
    family(out, "weft_host_healthy", "gauge", "1 while an endpoint may be sent traffic (passing its health checks, not ejected; 0 while failed, ejected or not yet checked), by cluster and host.");
    for (c, v) in tracked.iter().zip(&views) {
        for (address, ok) in v {
            let _ = writeln!(
                out,
                "weft_host_healthy{{cluster=\"{}\",host=\"{address}\"}} {}",
                label(&c.name),
                u8::from(*ok)
            );
        }
    }
}

/// `/clusters`: per cluster, its balancer, breaker occupancy and outlier counts; per
/// endpoint, its weight, its health from each source, whether it may be sent traffic,
/// its ejections, the requests in flight and the latency estimate (as the workers last
/// reported them, every 100 ms).
pub fn clusters_json(snapshot: &Snapshot) -> Value {
    let now = clock_ms();
    let clusters: Vec<Value> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let addresses: Vec<_> = c.endpoints.iter().map(|e| e.address).collect();
            let hosts = c.shared.hosts_of(&addresses, c.health_check.is_some());
            let discovery = match &c.discovery {
                None => "static",
                Some(Discovery::File(_)) => "file",
                Some(Discovery::Consul(_)) => "consul",
            };
            let endpoints: Vec<Value> = c
                .endpoints
                .iter()
                .zip(&hosts)
                .map(|(e, h)| endpoint_json(c, e.address, e.weight, h, discovery, now))
                .collect();
            let breaker = |used: u64, max: u64| json!({ "used": used, "max": max });
            json!({
                "name": c.name,
                "lb": c.lb.name(),
                "healthy_panic_threshold": c.panic_threshold,
                "circuit_breakers": {
                    "connections": breaker(c.shared.connections.get(), c.breakers.max_connections),
                    "pending_requests": breaker(c.shared.pending.get(), c.breakers.max_pending_requests),
                    "requests": breaker(c.shared.requests.get(), c.breakers.max_requests),
                    "retries": breaker(c.shared.retries.get(), c.breakers.max_retries),
                },
                "health_check": c.health_check.is_some(),
                "outlier_detection": c.outlier.as_ref().map(|_| json!({
                    "ejections_active": c.shared.outliers.active.load(Relaxed),
                    "ejections_overflow": c.shared.outliers.overflow.load(Relaxed),
                })),
                "panic_picks": c.shared.panics.get(),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "version": snapshot.version, "clusters": clusters })
}

fn endpoint_json(
    c: &Cluster,
    address: std::net::SocketAddr,
    weight: u32,
    h: &HostHealth,
    discovery: &str,
    now: u64,
) -> Value {
    let flags = h.flags();
    let active = match c.health_check {
        None => "unchecked",
        Some(_) if flags & HostHealth::PENDING != 0 => "pending",
        Some(_) if flags & HostHealth::FAILED_ACTIVE != 0 => "failed",
        Some(_) => "healthy",
    };
    let o = h.outlier_view();
    let outlier = match (&c.outlier, o.ejected) {
        (None, _) => "off",
        (Some(_), true) => "ejected",
        (Some(_), false) => "ok",
    };
    json!({
        "address": address.to_string(),
        "weight": weight,
        "health": {
            // Listed by its source (Consul lists no critical instance).
            "discovery": discovery,
            "active_check": active,
            "outlier": outlier,
        },
        "eligible": h.eligible(),
        "ejections": o.ejections,
        "ejected_for_ms": o.ejected.then(|| o.until_ms.saturating_sub(now)),
        "consecutive_5xx": o.consecutive_5xx,
        "in_flight": h.in_flight(),
        "latency_ms": h.latency().map(|d| d.as_secs_f64() * 1000.0),
    })
}
