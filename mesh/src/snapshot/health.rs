//! Endpoint health shared by every worker and the control thread: the flags a balancer
//! reads at each pick, and outlier detection (passive health), fed by the outcome of
//! every attempt.
//!
//! Invariants:
//! - A flag byte is only changed by atomic read-modify-writes, so the checker (active
//!   results), the worker whose attempt ejects an endpoint and the sweep that returns
//!   it never undo each other's bits.
//! - `OutlierCounters::active` counts the endpoints flagged `FAILED_OUTLIER`, exactly:
//!   an ejection takes its place there first (that admission is the
//!   `max_ejection_percent` check), an un-ejection gives it back after clearing the
//!   flag.
//! - The consecutive-failure counters are process-wide: "5 in a row" means 5 whichever
//!   workers saw them. A success writes them only when one is non-zero, so a healthy
//!   endpoint's line is shared read-only by every core, never bounced between them.
//! - Exactly one attempt sees a counter reach its threshold (`fetch_add` returns the
//!   value before), so one detection is one ejection decision.
//! - Times are milliseconds on one process clock (`clock_ms`); ejection ends at the
//!   first sweep past it (Envoy's behaviour: the sweep interval is the resolution).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Changes of any endpoint's flags, in any cluster: a balancer counts the eligible
/// endpoints again only when this moved (flags change rarely: a check's transition,
/// an ejection and its end), so a pick costs one load of it, not one per endpoint.
static FLAG_CHANGES: AtomicU64 = AtomicU64::new(0);

pub fn flag_changes() -> u64 {
    FLAG_CHANGES.load(Ordering::Acquire)
}

fn flags_changed() {
    FLAG_CHANGES.fetch_add(1, Ordering::AcqRel);
}

/// Milliseconds since this process first asked.
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One endpoint's health: written by the checker, by outlier detection, read by every
/// worker's balancer (a relaxed load per pick). Alone on its cache line(s), so two
/// endpoints' counters never make cores wait for each other.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct HostHealth {
    flags: AtomicU8,
    outlier: OutlierState,
    /// What the workers last reported (each tick, for `/clusters`): requests in
    /// flight to the endpoint, all workers together, and a latency estimate (µs).
    in_flight: std::sync::atomic::AtomicI64,
    latency_us: AtomicU64,
}

/// What outlier detection keeps about one endpoint.
#[derive(Debug, Default)]
struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Ejections in a row: the next lasts one base time more. Lowered by one for each
    /// interval spent in service.
    multiplier: AtomicU32,
    /// Ejections since the endpoint appeared.
    ejections: AtomicU64,
    /// While ejected: when the ejection ends. In service: when it came back.
    until_ms: AtomicU64,
    returned_ms: AtomicU64,
    /// Answers in the current interval, and how many succeeded: added by the workers
    /// from their own tallies (`add_interval`), taken by the sweep.
    interval_total: AtomicU64,
    interval_success: AtomicU64,
}

/// How an attempt on an endpoint ended, as outlier detection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// An answer that is not a failure.
    Success,
    /// A 5xx answer, or a gRPC status counted as one; `gateway` for 502, 503 and 504
    /// (gRPC UNAVAILABLE and DEADLINE_EXCEEDED).
    Failed { gateway: bool },
    /// No usable answer, by the endpoint's fault: connect refused or timed out, reset,
    /// no response in time, a broken response.
    LocalOrigin,
}

/// What made an endpoint an outlier: the `type` label of the ejection metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionKind {
    Consecutive5xx = 0,
    Gateway = 1,
    LocalOrigin = 2,
    SuccessRate = 3,
    FailurePercentage = 4,
}

impl EjectionKind {
    pub const ALL: [EjectionKind; 5] = [
        EjectionKind::Consecutive5xx,
        EjectionKind::Gateway,
        EjectionKind::LocalOrigin,
        EjectionKind::SuccessRate,
        EjectionKind::FailurePercentage,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EjectionKind::Consecutive5xx => "consecutive_5xx",
            EjectionKind::Gateway => "gateway",
            EjectionKind::LocalOrigin => "local_origin",
            EjectionKind::SuccessRate => "success_rate",
            EjectionKind::FailurePercentage => "failure_percentage",
        }
    }
}

/// A cluster's outlier counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct OutlierCounters {
    /// Endpoints ejected now.
    pub active: AtomicU64,
    /// Outliers found, by `EjectionKind`, ejected or not.
    pub detected: [AtomicU64; 5],
    /// Ejections made, by `EjectionKind`.
    pub enforced: [AtomicU64; 5],
    /// Ejections `max_ejection_percent` refused.
    pub overflow: AtomicU64,
}

/// `[clusters.NAME.outlier_detection]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub consecutive_5xx: Detector,
    pub consecutive_gateway: Detector,
    /// With `split_external_local_origin_errors`: local-origin failures are counted
    /// apart, here, and not as 5xx.
    pub consecutive_local: Option<Detector>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// At least `base_ejection_time`.
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
    pub uneject_on_active_success: bool,
    pub success_rate: SuccessRate,
    pub failure_percentage: FailurePercentage,
}

/// A consecutive-failure detector: `threshold` in a row find an outlier, ejected in
/// `enforcing` percent of cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detector {
    pub threshold: u32,
    pub enforcing: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SuccessRate {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub stdev_factor: f64,
    pub enforcing: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailurePercentage {
    pub threshold: u32,
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub enforcing: u32,
}

/// What a sweep or a check did to an endpoint, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Ejection {
    Ejected(EjectionKind, Duration),
    Returned,
}

/// An endpoint as outlier detection sees it, for `/clusters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierView {
    pub ejected: bool,
    /// Milliseconds on `clock_ms` when the ejection ends (0 when not ejected).
    pub until_ms: u64,
    pub ejections: u64,
    pub consecutive_5xx: u32,
}

fn percent_roll(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && fastrand::u32(0..100) < percent)
}

/// A counter back to 0, written only when it is not: see the module's invariants.
fn clear(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

/// One more failure in a row; true for the one that makes `threshold`.
fn one_more(counter: &AtomicU32, threshold: u32) -> bool {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == threshold
}

impl HostHealth {
    /// Checked, and no result yet.
    pub const PENDING: u8 = 1;
    /// The active health check says unhealthy.
    pub const FAILED_ACTIVE: u8 = 2;
    /// Ejected by outlier detection.
    pub const FAILED_OUTLIER: u8 = 4;

    /// Healthy, or pending (and failed) until a first check when `checked`.
    pub fn new(checked: bool) -> HostHealth {
        let h = HostHealth::default();
        if checked {
            h.flags.store(
                HostHealth::PENDING | HostHealth::FAILED_ACTIVE,
                Ordering::Relaxed,
            );
        }
        h
    }

    pub fn flags(&self) -> u8 {
        self.flags.load(Ordering::Relaxed)
    }

    /// May be sent traffic (before the panic rule).
    pub fn eligible(&self) -> bool {
        self.flags() == 0
    }

    /// The active check's result: healthy clears `FAILED_ACTIVE` and `PENDING`;
    /// unhealthy sets `FAILED_ACTIVE` and clears `PENDING`.
    pub fn set_active(&self, healthy: bool) {
        let set = if healthy { 0 } else { Self::FAILED_ACTIVE };
        let before = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |f| {
                Some(f & !(Self::PENDING | Self::FAILED_ACTIVE) | set)
            })
            .unwrap_or_default();
        if before & (Self::PENDING | Self::FAILED_ACTIVE) != set {
            flags_changed();
        }
    }

    /// Feeds an attempt's outcome to the consecutive detectors, and ejects the endpoint
    /// when one of them finds it an outlier (returned, for the log). `hosts`: the
    /// endpoints of its cluster.
    pub fn record(
        &self,
        outcome: AttemptOutcome,
        od: &OutlierDetection,
        counters: &OutlierCounters,
        hosts: usize,
    ) -> Option<Ejection> {
        let o = &self.outlier;
        // Without the split, a local-origin failure is a gateway error (Envoy maps a
        // connect failure to 503, a timeout to 504).
        let outcome = match (outcome, od.consecutive_local) {
            (AttemptOutcome::LocalOrigin, None) => AttemptOutcome::Failed { gateway: true },
            (outcome, _) => outcome,
        };
        match outcome {
            AttemptOutcome::Success => {
                clear(&o.consecutive_5xx);
                clear(&o.consecutive_gateway);
                clear(&o.consecutive_local);
                None
            }
            AttemptOutcome::Failed { gateway } => {
                // An answer came: the connection itself worked.
                clear(&o.consecutive_local);
                let mut ejection = None;
                if !gateway {
                    clear(&o.consecutive_gateway);
                } else if one_more(&o.consecutive_gateway, od.consecutive_gateway.threshold) {
                    let detector = od.consecutive_gateway;
                    ejection = self.detected(EjectionKind::Gateway, detector, od, counters, hosts);
                }
                if one_more(&o.consecutive_5xx, od.consecutive_5xx.threshold) {
                    let detector = od.consecutive_5xx;
                    let kind = EjectionKind::Consecutive5xx;
                    // Counted as detected even when the gateway detector ejected.
                    let five = self.detected(kind, detector, od, counters, hosts);
                    ejection = ejection.or(five);
                }
                ejection
            }
            AttemptOutcome::LocalOrigin => {
                let local = od.consecutive_local?;
                if !one_more(&o.consecutive_local, local.threshold) {
                    return None;
                }
                self.detected(EjectionKind::LocalOrigin, local, od, counters, hosts)
            }
        }
    }

    fn detected(
        &self,
        kind: EjectionKind,
        detector: Detector,
        od: &OutlierDetection,
        counters: &OutlierCounters,
        hosts: usize,
    ) -> Option<Ejection> {
        counters.detected[kind as usize].fetch_add(1, Ordering::Relaxed);
        if !percent_roll(detector.enforcing) {
            return None;
        }
        let ejected = self.eject(od, counters, hosts, clock_ms());
        if ejected.is_some() {
            counters.enforced[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        Some(Ejection::Ejected(kind, ejected?))
    }

    /// Ejects the endpoint unless it is already, or `max_ejection_percent` forbids it
    /// (counted as overflow); returns how long for.
    fn eject(
        &self,
        od: &OutlierDetection,
        counters: &OutlierCounters,
        hosts: usize,
        now: u64,
    ) -> Option<Duration> {
        if self.flags() & Self::FAILED_OUTLIER != 0 {
            return None;
        }
        let hosts = hosts.max(1) as u64;
        let max = u64::from(od.max_ejection_percent);
        // Envoy's rule: the share ejected with this one within the percentage, or none
        // ejected yet and `always_eject_one_host`.
        let admitted = counters
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                ((n + 1) * 100 <= max * hosts || (od.always_eject_one_host && n == 0))
                    .then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            counters.overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let o = &self.outlier;
        let times = o.multiplier.load(Ordering::Relaxed).saturating_add(1);
        let jitter = od.max_ejection_time_jitter.as_millis() as u64;
        let time = od
            .base_ejection_time
            .saturating_mul(times)
            .min(od.max_ejection_time)
            + Duration::from_millis(fastrand::u64(0..=jitter));
        // The end is written before the flag: a sweep that sees the flag sees the end.
        o.until_ms.store(
            now.saturating_add(time.as_millis() as u64),
            Ordering::Release,
        );
        let before = self.flags.fetch_or(Self::FAILED_OUTLIER, Ordering::AcqRel);
        if before & Self::FAILED_OUTLIER != 0 {
            // Another detector ejected it at the same moment.
            counters.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        o.multiplier.store(times, Ordering::Relaxed);
        o.ejections.fetch_add(1, Ordering::Relaxed);
        flags_changed();
        Some(time)
    }

    /// Returns an ejected endpoint to service, its counters cleared; false if it was not
    /// ejected.
    pub fn uneject(&self, counters: &OutlierCounters, now: u64) -> bool {
        let before = self
            .flags
            .fetch_and(!Self::FAILED_OUTLIER, Ordering::AcqRel);
        if before & Self::FAILED_OUTLIER == 0 {
            return false;
        }
        flags_changed();
        counters.active.fetch_sub(1, Ordering::AcqRel);
        let o = &self.outlier;
        for c in [
            &o.consecutive_5xx,
            &o.consecutive_gateway,
            &o.consecutive_local,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        o.until_ms.store(0, Ordering::Relaxed);
        o.returned_ms.store(now, Ordering::Relaxed);
        true
    }

    /// A worker's tally of answers since its last report, for the success-rate and
    /// failure-percentage detectors.
    pub fn add_interval(&self, success: u64, total: u64) {
        let o = &self.outlier;
        o.interval_success.fetch_add(success, Ordering::Relaxed);
        o.interval_total.fetch_add(total, Ordering::Relaxed);
    }

    /// A worker's change in requests in flight since its last report.
    pub fn report_in_flight(&self, change: i64) {
        self.in_flight.fetch_add(change, Ordering::Relaxed);
    }

    /// A worker's latency estimate (`p2c_ewma`).
    pub fn report_latency(&self, estimate: Duration) {
        let us = u64::try_from(estimate.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(us, Ordering::Relaxed);
    }

    /// Requests in flight as of the workers' last reports.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed).max(0)
    }

    /// The latest latency estimate a worker reported, if any.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn outlier_view(&self) -> OutlierView {
        let o = &self.outlier;
        let ejected = self.flags() & Self::FAILED_OUTLIER != 0;
        OutlierView {
            ejected,
            until_ms: if ejected {
                o.until_ms.load(Ordering::Acquire)
            } else {
                0
            },
            ejections: o.ejections.load(Ordering::Relaxed),
            consecutive_5xx: o.consecutive_5xx.load(Ordering::Relaxed),
        }
    }
}

/// One interval's review of a cluster's endpoints (`hosts`, all of them): ejections
/// that are over end, endpoints long enough in service lose one step of their
/// multiplier, and the success-rate and failure-percentage detectors judge the
/// interval's answers. Returns what changed, for the log.
pub fn sweep(
    hosts: &[(SocketAddr, &HostHealth)],
    od: &OutlierDetection,
    counters: &OutlierCounters,
    now: u64,
) -> Vec<(SocketAddr, Ejection)> {
    let mut changed = Vec::new();
    let interval = od.interval.as_millis() as u64;
    for &(address, h) in hosts {
        let o = &h.outlier;
        if h.flags() & HostHealth::FAILED_OUTLIER != 0 {
            if now >= o.until_ms.load(Ordering::Acquire) && h.uneject(counters, now) {
                changed.push((address, Ejection::Returned));
            }
        } else if o.multiplier.load(Ordering::Relaxed) > 0
            && now.saturating_sub(o.returned_ms.load(Ordering::Relaxed)) >= interval
        {
            o.multiplier.fetch_sub(1, Ordering::Relaxed);
            o.returned_ms.store(now, Ordering::Relaxed);
        }
    }
    // This interval's answers, taken from every endpoint (ejected ones too: what they
    // got before their ejection must not count in the next interval).
    let tallies: Vec<(usize, u64, u64)> = hosts
        .iter()
        .enumerate()
        .map(|(i, (_, h))| {
            let o = &h.outlier;
            let total = o.interval_total.swap(0, Ordering::Relaxed);
            let success = o.interval_success.swap(0, Ordering::Relaxed).min(total);
            (i, success, total)
        })
        .filter(|(i, _, _)| hosts[*i].1.flags() & HostHealth::FAILED_OUTLIER == 0)
        .collect();
    let total_hosts = hosts.len();
    let mut judge = |kind: EjectionKind, enforcing: u32, outliers: Vec<usize>| {
        for i in outliers {
            let (address, h) = hosts[i];
            counters.detected[kind as usize].fetch_add(1, Ordering::Relaxed);
            if !percent_roll(enforcing) {
                continue;
            }
            if let Some(time) = h.eject(od, counters, total_hosts, now) {
                counters.enforced[kind as usize].fetch_add(1, Ordering::Relaxed);
                changed.push((address, Ejection::Ejected(kind, time)));
            }
        }
    };
    let sr = &od.success_rate;
    let rated: Vec<(usize, f64)> = tallies
        .iter()
        .filter(|(_, _, total)| *total >= u64::from(sr.request_volume).max(1))
        .map(|&(i, success, total)| (i, success as f64 / total as f64))
        .collect();
    if rated.len() >= sr.minimum_hosts.max(1) as usize {
        let n = rated.len() as f64;
        let mean = rated.iter().map(|(_, r)| r).sum::<f64>() / n;
        let variance = rated.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
        let floor = mean - sr.stdev_factor * variance.sqrt();
        let outliers = rated
            .iter()
            .filter(|(_, r)| *r < floor)
            .map(|(i, _)| *i)
            .collect();
        judge(EjectionKind::SuccessRate, sr.enforcing, outliers);
    }
    let fp = &od.failure_percentage;
    let volume: Vec<&(usize, u64, u64)> = tallies
        .iter()
        .filter(|(_, _, total)| *total >= u64::from(fp.request_volume).max(1))
        .collect();
    if volume.len() >= fp.minimum_hosts.max(1) as usize {
        let outliers = volume
            .iter()
            .filter(|(_, success, total)| {
                (total - success) * 100 >= u64::from(fp.threshold) * total
            })
            .map(|(i, _, _)| *i)
            .collect();
        judge(EjectionKind::FailurePercentage, fp.enforcing, outliers);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: Detector {
                threshold: 5,
                enforcing: 100,
            },
            consecutive_gateway: Detector {
                threshold: 5,
                enforcing: 0,
            },
            consecutive_local: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            always_eject_one_host: true,
            uneject_on_active_success: true,
            success_rate: SuccessRate {
                minimum_hosts: 5,
                request_volume: 100,
                stdev_factor: 1.9,
                enforcing: 100,
            },
            failure_percentage: FailurePercentage {
                threshold: 85,
                minimum_hosts: 5,
                request_volume: 50,
                enforcing: 0,
            },
        }
    }

    const FAIL: AttemptOutcome = AttemptOutcome::Failed { gateway: false };

    #[test]
    fn the_fifth_failure_in_a_row_ejects_and_a_success_resets_the_count() {
        let (od, counters, h) = (od(), OutlierCounters::default(), HostHealth::default());
        for _ in 0..4 {
            h.record(FAIL, &od, &counters, 10);
        }
        h.record(AttemptOutcome::Success, &od, &counters, 10);
        for _ in 0..4 {
            h.record(FAIL, &od, &counters, 10);
        }
        assert!(h.eligible(), "4 in a row after a success");
        h.record(FAIL, &od, &counters, 10);
        assert!(!h.eligible());
        assert_eq!(counters.active.load(Ordering::Relaxed), 1);
        assert_eq!(counters.enforced[0].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ejections_grow_with_the_multiplier_and_end_at_a_sweep() {
        let (od, counters, h) = (od(), OutlierCounters::default(), HostHealth::default());
        let hosts = [("127.0.0.1:1".parse().unwrap(), &h)];
        assert_eq!(
            h.eject(&od, &counters, 10, 0),
            Some(Duration::from_secs(30))
        );
        assert!(sweep(&hosts, &od, &counters, 29_999).is_empty());
        assert_eq!(
            sweep(&hosts, &od, &counters, 30_000),
            vec![(hosts[0].0, Ejection::Returned)]
        );
        assert_eq!(counters.active.load(Ordering::Relaxed), 0);
        assert_eq!(
            h.eject(&od, &counters, 10, 30_001),
            Some(Duration::from_secs(60))
        );
        sweep(&hosts, &od, &counters, 90_001);
        // Two intervals in service: the multiplier is down to 0.
        sweep(&hosts, &od, &counters, 100_001);
        sweep(&hosts, &od, &counters, 110_001);
        assert_eq!(
            h.eject(&od, &counters, 10, 110_002),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn max_ejection_percent_allows_one_unless_strict() {
        let (mut od, counters) = (od(), OutlierCounters::default());
        let (a, b) = (HostHealth::default(), HostHealth::default());
        assert!(
            a.eject(&od, &counters, 3, 0).is_some(),
            "one, whatever the percentage"
        );
        assert!(b.eject(&od, &counters, 3, 0).is_none());
        assert_eq!(counters.overflow.load(Ordering::Relaxed), 1);
        od.always_eject_one_host = false;
        let counters = OutlierCounters::default();
        assert!(HostHealth::default().eject(&od, &counters, 3, 0).is_none());
        od.max_ejection_percent = 50;
        assert!(HostHealth::default().eject(&od, &counters, 4, 0).is_some());
        assert!(HostHealth::default().eject(&od, &counters, 4, 0).is_some());
        assert!(HostHealth::default().eject(&od, &counters, 4, 0).is_none());
    }

    #[test]
    fn gateway_failures_are_detected_but_not_enforced_by_default() {
        let (od, counters, h) = (od(), OutlierCounters::default(), HostHealth::default());
        let bad_gateway = AttemptOutcome::Failed { gateway: true };
        for _ in 0..4 {
            h.record(bad_gateway, &od, &counters, 10);
        }
        assert_eq!(
            counters.detected[EjectionKind::Gateway as usize].load(Ordering::Relaxed),
            0
        );
        h.record(AttemptOutcome::LocalOrigin, &od, &counters, 10);
        assert_eq!(
            counters.detected[EjectionKind::Gateway as usize].load(Ordering::Relaxed),
            1
        );
        // The same five are five 5xx: that detector enforces.
        assert!(!h.eligible());
        assert_eq!(
            counters.enforced[EjectionKind::Gateway as usize].load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn split_local_origin_failures_count_apart() {
        let (mut od, counters, h) = (od(), OutlierCounters::default(), HostHealth::default());
        od.consecutive_local = Some(Detector {
            threshold: 3,
            enforcing: 100,
        });
        for _ in 0..4 {
            h.record(FAIL, &od, &counters, 10);
        }
        h.record(AttemptOutcome::LocalOrigin, &od, &counters, 10);
        assert!(h.eligible(), "a local failure is not a fifth 5xx");
        h.record(AttemptOutcome::LocalOrigin, &od, &counters, 10);
        h.record(AttemptOutcome::LocalOrigin, &od, &counters, 10);
        assert!(!h.eligible());
        assert_eq!(
            counters.enforced[EjectionKind::LocalOrigin as usize].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn success_rate_ejects_the_low_one_among_enough_hosts() {
        let (od, counters) = (od(), OutlierCounters::default());
        let hosts: Vec<HostHealth> = (0..6).map(|_| HostHealth::default()).collect();
        let view: Vec<(SocketAddr, &HostHealth)> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (SocketAddr::from(([127, 0, 0, 1], i as u16 + 1)), h))
            .collect();
        for (i, h) in hosts.iter().enumerate() {
            h.add_interval(if i == 5 { 50 } else { 99 }, 100);
        }
        let changed = sweep(&view, &od, &counters, 1);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, view[5].0);
        assert!(!hosts[5].eligible());
        // With four hosts of volume, nothing is judged.
        let counters = OutlierCounters::default();
        let few: Vec<HostHealth> = (0..4).map(|_| HostHealth::default()).collect();
        let view: Vec<(SocketAddr, &HostHealth)> = few.iter().map(|h| (view[0].0, h)).collect();
        for (i, h) in few.iter().enumerate() {
            h.add_interval(if i == 3 { 10 } else { 99 }, 100);
        }
        assert!(sweep(&view, &od, &counters, 1).is_empty());
    }
}
