//! What the clusters' shared state says, for `/metrics`: circuit-breaker occupancy,
//! active health checks, outlier detection and the endpoints each cluster may use.
//!
//! Everything here is read from the counters every worker and the checker share
//! (`ClusterShared`, `HostHealth`) at scrape time; nothing is kept per scrape.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use weft_mesh::snapshot::{Cluster, EjectionKind, Snapshot};

/// Every cluster series, in Prometheus' text format.
pub fn metrics(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    breakers(&mut out, snapshot);
    health_checks(&mut out, snapshot);
    outliers(&mut out, snapshot);
    membership(&mut out, snapshot);
    out
}

/// A cluster name as a label value.
fn label(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
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
    family(out, "weft_cluster_circuit_breaker_remaining", "gauge", "What a cluster's circuit breaker still admits, by cluster and resource.");
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

/// Active health checks by cluster: attempts, successes, failures.
fn health_checks(out: &mut String, snapshot: &Snapshot) {
    let checked: Vec<&Cluster> = snapshot
        .clusters
        .iter()
        .map(|c| &**c)
        .filter(|c| c.health_check.is_some())
        .collect();
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
        family(out, name, "counter", help);
        for c in &checked {
            let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {}", label(&c.name), read(c));
        }
    }
}

/// Outlier detection by cluster: ejections active, detected and enforced by type,
/// refused by `max_ejection_percent`.
fn outliers(out: &mut String, snapshot: &Snapshot) {
    let detecting: Vec<&Cluster> = snapshot
        .clusters
        .iter()
        .map(|c| &**c)
        .filter(|c| c.outlier.is_some())
        .collect();
    if detecting.is_empty() {
        return;
    }
    family(out, "weft_cluster_outlier_ejections_active", "gauge", "Endpoints ejected by outlier detection now, by cluster.");
    for c in &detecting {
        let n = c.shared.outliers.active.load(Relaxed);
        let _ = writeln!(out, "weft_cluster_outlier_ejections_active{{cluster=\"{}\"}} {n}", label(&c.name));
    }
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
    family(out, "weft_cluster_outlier_ejections_overflow_total", "counter", "Ejections max_ejection_percent refused, by cluster.");
    for c in &detecting {
        let n = c.shared.outliers.overflow.load(Relaxed);
        let _ = writeln!(out, "weft_cluster_outlier_ejections_overflow_total{{cluster=\"{}\"}} {n}", label(&c.name));
    }
}

/// For clusters whose endpoints' health is tracked (checks or outlier detection): the
/// endpoints, how many may be used, each one's state, and the picks made in panic.
fn membership(out: &mut String, snapshot: &Snapshot) {
    let tracked: Vec<&Cluster> = snapshot
        .clusters
        .iter()
        .map(|c| &**c)
        .filter(|c| c.health_check.is_some() || c.outlier.is_some())
        .collect();
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
    family(out, "weft_cluster_membership_total", "gauge", "Endpoints of a cluster, by cluster.");
    for (c, v) in tracked.iter().zip(&views) {
        let _ = writeln!(out, "weft_cluster_membership_total{{cluster=\"{}\"}} {}", label(&c.name), v.len());
    }
    family(out, "weft_cluster_membership_healthy", "gauge", "Endpoints of a cluster that may be sent traffic (passing checks, not ejected), by cluster.");
    for (c, v) in tracked.iter().zip(&views) {
        let healthy = v.iter().filter(|(_, ok)| *ok).count();
        let _ = writeln!(out, "weft_cluster_membership_healthy{{cluster=\"{}\"}} {healthy}", label(&c.name));
    }
    family(out, "weft_cluster_lb_healthy_panic_total", "counter", "Endpoint picks made in panic mode (fewer eligible endpoints than healthy_panic_threshold: all were used), by cluster.");
    for c in &tracked {
        let _ = writeln!(out, "weft_cluster_lb_healthy_panic_total{{cluster=\"{}\"}} {}", label(&c.name), c.shared.panics.get());
    }
    family(out, "weft_host_healthy", "gauge", "1 while an endpoint may be sent traffic (passing its health checks, not ejected; 0 while failed, ejected or not yet checked), by cluster and host.");
    for (c, v) in tracked.iter().zip(&views) {
        for (address, ok) in v {
            let _ = writeln!(out, "weft_host_healthy{{cluster=\"{}\",host=\"{address}\"}} {}", label(&c.name), u8::from(*ok));
        }
    }
}
