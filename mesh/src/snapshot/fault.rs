//! Fault injection (`fault` on a route), compiled: Envoy's HTTP fault filter. A share
//! of the route's requests (those matching its header conditions) waits a fixed delay,
//! is answered with an error without reaching the upstream, or both (delay first).

use std::time::Duration;

use super::{HeaderMatcher, PaddedCounter, RequestFacts};
use crate::config::FaultConfig;

/// Shares are kept in millionths: `percent = 0.0001` is one request in a million.
pub const MILLION: u32 = 1_000_000;

#[derive(Debug)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    pub headers: Vec<HeaderMatcher>,
    pub max_active: Option<u64>,
    pub header_control: bool,
    /// Faults in progress, all workers together (`max_active_faults`). Per snapshot:
    /// a fault holds the snapshot it began under, and gives its place back there.
    pub active: PaddedCounter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelay {
    pub fixed: Duration,
    /// In millionths.
    pub share: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultAbort {
    pub http_status: u16,
    pub grpc_status: Option<u16>,
    /// In millionths.
    pub share: u32,
}

impl Fault {
    /// Whether the request is one the fault applies to (every header condition holds).
    pub fn applies_to(&self, req: &impl RequestFacts) -> bool {
        self.headers.iter().all(|h| h.holds(req))
    }
}

/// A percentage as millionths.
pub fn share(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32
}

/// Compiles `fault` (at `path`) but its header conditions (`headers`, compiled by the
/// caller with the route's), reporting problems to `error(key, problem)`.
pub fn compile(
    c: &FaultConfig,
    headers: Vec<HeaderMatcher>,
    path: &str,
    error: &mut dyn FnMut(String, String),
) -> Fault {
    let mut percent = |p: f64, key: String| {
        if !(0.0..=100.0).contains(&p) {
            error(key, "is a percentage: 0 to 100".into());
        }
        share(p)
    };
    let delay = c.delay.as_ref().map(|d| FaultDelay {
        fixed: d.fixed.map_or(Duration::ZERO, |f| f.0),
        share: percent(d.percent, format!("{path}.delay.percent")),
    });
    let abort = c.abort.as_ref().map(|a| FaultAbort {
        http_status: a.http_status.unwrap_or(503),
        grpc_status: a.grpc_status,
        share: percent(a.percent, format!("{path}.abort.percent")),
    });
    if let Some(d) = &c.delay {
        match d.fixed {
            None if !c.allow_header_control => error(
                format!("{path}.delay.fixed"),
                "is needed (or allow_header_control, for x-weft-fault-delay-request)".into(),
            ),
            Some(f) if f.0.is_zero() => error(
                format!("{path}.delay.fixed"),
                "must be greater than 0".into(),
            ),
            Some(f) if f.0 > Duration::from_secs(3600) => {
                error(format!("{path}.delay.fixed"), "at most 1h".into())
            }
            _ => {}
        }
    }
    if let Some(a) = &c.abort {
        if a.http_status.is_some_and(|s| !(200..=599).contains(&s)) {
            error(
                format!("{path}.abort.http_status"),
                "must be between 200 and 599".into(),
            );
        }
        if a.grpc_status.is_some_and(|s| s > 16) {
            error(
                format!("{path}.abort.grpc_status"),
                "must be a gRPC status code, 0 to 16".into(),
            );
        }
    }
    if delay.is_none() && abort.is_none() {
        error(path.to_owned(), "needs a delay, an abort or both".into());
    }
    if c.max_active_faults == Some(0) {
        error(
            format!("{path}.max_active_faults"),
            "must be at least 1 (remove the fault to inject none)".into(),
        );
    }
    Fault {
        delay,
        abort,
        headers,
        max_active: c.max_active_faults.map(u64::from),
        header_control: c.allow_header_control,
        active: PaddedCounter::default(),
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |share: u32| f64::from(share) / 10_000.0;
        let mut parts = Vec::new();
        if let Some(d) = &self.delay {
            parts.push(format!("delay {:?} for {}%", d.fixed, pct(d.share)));
        }
        if let Some(a) = &self.abort {
            let grpc = a
                .grpc_status
                .map_or(String::new(), |g| format!(" (gRPC {g})"));
            parts.push(format!(
                "abort {}{grpc} for {}%",
                a.http_status,
                pct(a.share)
            ));
        }
        write!(f, "fault: {}", parts.join(", "))?;
        if !self.headers.is_empty() {
            write!(f, ", when {} header condition(s) hold", self.headers.len())?;
        }
        if let Some(m) = self.max_active {
            write!(f, ", at most {m} at once")?;
        }
        if self.header_control {
            write!(f, ", x-weft-fault-* headers obeyed")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_millionths() {
        assert_eq!(share(100.0), MILLION);
        assert_eq!(share(30.0), 300_000);
        assert_eq!(share(0.0001), 1);
        assert_eq!(share(250.0), MILLION);
    }

    #[test]
    fn bad_faults_name_their_keys() {
        let c = FaultConfig {
            delay: Some(crate::config::FaultDelayConfig {
                fixed: None,
                percent: 120.0,
            }),
            abort: Some(crate::config::FaultAbortConfig {
                http_status: Some(700),
                grpc_status: Some(20),
                percent: 1.0,
            }),
            max_active_faults: Some(0),
            ..FaultConfig::default()
        };
        let mut errors = Vec::new();
        compile(&c, Vec::new(), "f", &mut |k, e| {
            errors.push(format!("{k}: {e}"))
        });
        let all = errors.join("\n");
        for key in [
            "f.delay.percent",
            "f.delay.fixed",
            "f.abort.http_status",
            "f.abort.grpc_status",
            "f.max_active_faults",
        ] {
            assert!(all.contains(key), "{key} missing in {all}");
        }
    }
}
