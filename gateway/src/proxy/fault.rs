//! A route's `fault` at work, in the lifecycle's request-policy phase: before any
//! upstream is chosen, a share of the requests waits the configured delay, and a share
//! is answered with the configured error (delay first when both fire; an abort never
//! reaches an upstream, and stands unless the retry policy has `retry_injected`: then
//! the lifecycle takes it as the first attempt's answer).
//!
//! With `allow_header_control`, the request's `x-weft-fault-*` headers choose the
//! faults instead (Envoy's header faults): `x-weft-fault-delay-request` (milliseconds),
//! `x-weft-fault-abort-request` (an HTTP status), `x-weft-fault-abort-grpc-request` (a
//! gRPC status), and `-percentage` variants of the delay and the abort, each capped by
//! the configured percentage. A request without them gets no fault.
//!
//! `max_active_faults` counts the faults in progress in the whole process (an atomic
//! admission, as the circuit breakers'); a fault past it is not injected, and counted.

use std::time::Duration;

use weft_mesh::snapshot::fault::{share, Fault, FaultAbort, MILLION};
use weft_mesh::snapshot::{RequestFacts, Route};

use super::error::ProxyError;
use super::exchange::Exchange;
use crate::observe::metrics::Family;

const DELAY_HEADER: &str = "x-weft-fault-delay-request";
const DELAY_PERCENT_HEADER: &str = "x-weft-fault-delay-request-percentage";
const ABORT_HEADER: &str = "x-weft-fault-abort-request";
const ABORT_GRPC_HEADER: &str = "x-weft-fault-abort-grpc-request";
const ABORT_PERCENT_HEADER: &str = "x-weft-fault-abort-request-percentage";

/// Longest delay a header may ask for.
const MAX_HEADER_DELAY: Duration = Duration::from_secs(3600);

/// Applies the route's fault to the request: waits its delay, if one fires, and
/// returns its abort, if one fires.
pub async fn inject(
    x: &Exchange<'_>,
    route: &Route,
    fault: &Fault,
    request: &impl RequestFacts,
) -> Option<ProxyError> {
    if !fault.applies_to(request) {
        return None;
    }
    let (delay, abort) = if fault.header_control {
        (header_delay(fault, request), header_abort(fault, request))
    } else {
        (
            fault.delay.filter(|d| fires(d.share)).map(|d| d.fixed),
            fault.abort.filter(|a| fires(a.share)),
        )
    };
    if delay.is_none() && abort.is_none() {
        return None;
    }
    let limit = fault.max_active.unwrap_or(u64::MAX);
    let Some(_active) = fault.active.admit(limit) else {
        count(x, route, Family::FaultOverflows);
        return None;
    };
    if let Some(wait) = delay {
        count(x, route, Family::FaultDelays);
        monoio::time::sleep(wait).await;
    }
    let abort = abort?;
    count(x, route, Family::FaultAborts);
    Some(ProxyError::FaultAbort {
        status: abort.http_status,
        grpc: abort.grpc_status,
    })
}

/// Whether something that happens to `share` millionths of the requests (a fault, a
/// mirror's copy) happens to this one.
pub(super) fn fires(share: u32) -> bool {
    share >= MILLION || fastrand::u32(0..MILLION) < share
}

/// A header's value as a number.
fn number(request: &impl RequestFacts, name: &str) -> Option<u64> {
    let v = std::str::from_utf8(request.header(name)?).ok()?.trim();
    v.parse().ok()
}

/// The share a `-percentage` header asks for, capped by the configured one.
fn capped_share(request: &impl RequestFacts, header: &str, configured: u32) -> u32 {
    let asked = request
        .header(header)
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<f64>().ok())
        .map_or(MILLION, share);
    asked.min(configured)
}

fn header_delay(fault: &Fault, request: &impl RequestFacts) -> Option<Duration> {
    let configured = fault.delay?;
    let ms = number(request, DELAY_HEADER)?;
    let wait = Duration::from_millis(ms).min(MAX_HEADER_DELAY);
    fires(capped_share(
        request,
        DELAY_PERCENT_HEADER,
        configured.share,
    ))
    .then_some(wait)
}

fn header_abort(fault: &Fault, request: &impl RequestFacts) -> Option<FaultAbort> {
    let configured = fault.abort?;
    let http = number(request, ABORT_HEADER)
        .filter(|s| (200..=599).contains(s))
        .map(|s| s as u16);
    let grpc = number(request, ABORT_GRPC_HEADER)
        .filter(|c| *c <= 16)
        .map(|c| c as u16);
    if http.is_none() && grpc.is_none() {
        return None;
    }
    let share = capped_share(request, ABORT_PERCENT_HEADER, configured.share);
    fires(share).then_some(FaultAbort {
        // A gRPC abort is HTTP 200 with the status, as Envoy's.
        http_status: http.unwrap_or(200),
        grpc_status: grpc,
        share,
    })
}

fn count(x: &Exchange<'_>, route: &Route, family: Family) {
    let key = [
        x.snapshot.version,
        route as *const Route as u64,
        x.bound.slot as u64,
        0,
    ];
    x.worker.counters.bump(family, key, || {
        vec![
            ("listener", x.bound.name.to_string()),
            ("route", route.name.clone()),
        ]
    });
}
