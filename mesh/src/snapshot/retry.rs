//! Retry policies (`retry` on a route, `[clusters.NAME.retry]`) and retry budgets
//! (`[clusters.NAME.retry_budget]`), compiled: what the lifecycle's attempt loop asks
//! when an attempt failed.
//!
//! A policy says which failures are worth another attempt (Envoy's `retry_on` and
//! `retry_grpc_on` conditions), how many, how long each may wait for its head, and how
//! long to wait between them. Whether a given request may go again also depends on
//! what it is (its method, its body) and on the cluster's budget: those are the
//! lifecycle's to judge, with what this module answers.

use std::time::Duration;

use crate::config::{RetryBudgetConfig, RetryBudgetKind, RetryConfig};

/// What went wrong with an attempt, as `retry_on` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made (refused, timed out, TLS failed): the
    /// request never reached the application.
    ConnectFailure,
    /// The upstream refused the stream (REFUSED_STREAM, or above a GOAWAY's last
    /// stream): it did no work on it.
    RefusedStream,
    /// No answer: the connection closed or the stream was reset before the response
    /// head, or the attempt's `per_try_timeout` passed.
    Reset,
    /// An answer with this status.
    Status(u16),
    /// A gRPC answer with this status in its head (Trailers-Only).
    Grpc(u16),
}

impl Failure {
    /// Whether the application may have acted on the request: only such failures
    /// need an idempotent method (or `retry_non_idempotent`) to be retried.
    pub fn reached_application(self) -> bool {
        !matches!(self, Failure::ConnectFailure | Failure::RefusedStream)
    }
}

/// `retry_on` conditions, as bits.
pub mod on {
    pub const CONNECT_FAILURE: u8 = 1;
    pub const REFUSED_STREAM: u8 = 2;
    pub const RESET: u8 = 4;
    pub const GATEWAY_ERROR: u8 = 8;
    pub const FIVE_XX: u8 = 16;
    pub const RETRIABLE_4XX: u8 = 32;
    pub const RETRIABLE_STATUS_CODES: u8 = 64;

    /// Every condition, with its name in the config.
    pub const NAMES: [(&str, u8); 7] = [
        ("connect-failure", CONNECT_FAILURE),
        ("refused-stream", REFUSED_STREAM),
        ("reset", RESET),
        ("gateway-error", GATEWAY_ERROR),
        ("5xx", FIVE_XX),
        ("retriable-4xx", RETRIABLE_4XX),
        ("retriable-status-codes", RETRIABLE_STATUS_CODES),
    ];
}

/// `retry_grpc_on` names and their codes.
pub const GRPC_NAMES: [(&str, u16); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

/// gRPC's own cap on attempts, the first included (gRFC A6).
pub const MAX_GRPC_ATTEMPTS: u32 = 5;

/// A retry policy, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// `retry_on`, as `on::*` bits.
    pub on: u8,
    pub statuses: Vec<u16>,
    /// `retry_grpc_on`, a bit per code.
    pub grpc_on: u32,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub retry_after_max: Duration,
    pub max_buffered_bytes: usize,
    pub retry_non_idempotent: bool,
    pub attempt_count_header: bool,
    pub previous_hosts: bool,
    pub retry_injected: bool,
}

impl RetryPolicy {
    /// Whether `failure` is one this policy retries.
    pub fn covers(&self, failure: Failure) -> bool {
        let any = |bits: u8| self.on & bits != 0;
        match failure {
            // Envoy: `5xx` and `gateway-error` include failures without an answer.
            Failure::ConnectFailure => any(on::CONNECT_FAILURE | on::FIVE_XX | on::GATEWAY_ERROR),
            Failure::RefusedStream => any(on::REFUSED_STREAM | on::FIVE_XX | on::GATEWAY_ERROR),
            Failure::Reset => any(on::RESET | on::FIVE_XX | on::GATEWAY_ERROR),
            Failure::Status(s) => {
                (s >= 500 && any(on::FIVE_XX))
                    || ((502..=504).contains(&s) && any(on::GATEWAY_ERROR))
                    || (s == 409 && any(on::RETRIABLE_4XX))
                    || (any(on::RETRIABLE_STATUS_CODES) && self.statuses.contains(&s))
            }
            Failure::Grpc(code) => code < 32 && self.grpc_on & (1 << code) != 0,
        }
    }

    /// Whether an answer with `status` (and, for gRPC, `grpc` from its head) could be
    /// retried: the relays ask before they pass a response head on.
    pub fn covers_answer(&self, status: u16, grpc: Option<u16>) -> bool {
        self.covers(Failure::Status(status)) || grpc.is_some_and(|g| self.covers(Failure::Grpc(g)))
    }

    /// Attempts in all, the first included, for a gRPC call or not.
    pub fn max_attempts(&self, grpc: bool) -> u32 {
        let all = self.num_retries.saturating_add(1);
        if grpc {
            all.min(MAX_GRPC_ATTEMPTS)
        } else {
            all
        }
    }

    /// The wait before retry `n` (1 for the first retry): a random time in
    /// `[0, min((2^n - 1) * base, max))`, `roll(bound)` drawing uniformly from
    /// `0..bound` microseconds.
    pub fn backoff(&self, n: u32, roll: impl FnOnce(u64) -> u64) -> Duration {
        let base = self.backoff_base.as_micros() as u64;
        let factor = 1u64.checked_shl(n.min(63)).map_or(u64::MAX, |f| f - 1);
        let bound = base
            .saturating_mul(factor)
            .min(self.backoff_max.as_micros() as u64);
        if bound == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(roll(bound))
        }
    }
}

/// What `weft check` prints of a policy, in the config's own spellings.
impl std::fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut on: Vec<String> = on::NAMES
            .iter()
            .filter(|(_, bit)| self.on & bit != 0)
            .map(|(name, _)| (*name).to_owned())
            .collect();
        if !self.statuses.is_empty() {
            on.push(format!("{:?}", self.statuses));
        }
        on.extend(
            GRPC_NAMES
                .iter()
                .filter(|(_, code)| self.grpc_on & (1 << code) != 0)
                .map(|(name, _)| format!("grpc {name}")),
        );
        write!(
            f,
            "retry on {} up to {} time(s), backoff {:?}..{:?}, Retry-After up to {:?}, bodies kept up to {} bytes",
            on.join(", "),
            self.num_retries,
            self.backoff_base,
            self.backoff_max,
            self.retry_after_max,
            self.max_buffered_bytes
        )?;
        if let Some(t) = self.per_try_timeout {
            write!(f, ", per try {t:?}")?;
        }
        if self.retry_non_idempotent {
            write!(f, ", any method")?;
        }
        if self.retry_injected {
            write!(f, ", injected aborts too")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryBudget::Concurrency { percent, min } => write!(
                f,
                "retry budget: concurrency, {percent}% of requests in flight (at least {min})"
            ),
            RetryBudget::Ratio {
                ratio,
                min_per_sec,
                ttl,
            } => write!(
                f,
                "retry budget: ratio, {ratio} per request plus {min_per_sec}/s over {ttl:?}"
            ),
        }
    }
}

/// A cluster's retry budget, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryBudget {
    /// Retries in flight at most `percent` of requests in flight, but at least `min`.
    Concurrency { percent: f64, min: u32 },
    /// Retries at most `ratio` per request over `ttl`, plus `min_per_sec` a second
    /// (each worker keeps its own account, with its share of `min_per_sec`).
    Ratio {
        ratio: f64,
        min_per_sec: u32,
        ttl: Duration,
    },
}

impl RetryBudget {
    /// Whether one more retry fits while `retrying` are in flight among `active`
    /// requests (the concurrency budget; a ratio budget is kept by each worker).
    pub fn concurrency_allows(&self, retrying: u64, active: u64) -> bool {
        match *self {
            RetryBudget::Concurrency { percent, min } => {
                let share = (active as f64 * percent / 100.0) as u64;
                retrying < share.max(u64::from(min))
            }
            RetryBudget::Ratio { .. } => true,
        }
    }
}

/// Compiles `retry` (at `path`), reporting problems to `error(key, problem)`.
pub fn compile_policy(
    c: &RetryConfig,
    path: &str,
    error: &mut dyn FnMut(String, String),
) -> RetryPolicy {
    let mut bits = 0;
    for (i, name) in c.retry_on.iter().enumerate() {
        match on::NAMES.iter().find(|(n, _)| n == name) {
            Some((_, b)) => bits |= b,
            None => error(
                format!("{path}.retry_on[{i}]"),
                format!(
                    "unknown condition `{name}` (known: {})",
                    on::NAMES.map(|(n, _)| n).join(", ")
                ),
            ),
        }
    }
    let mut grpc_on = 0u32;
    for (i, name) in c.retry_grpc_on.iter().enumerate() {
        match GRPC_NAMES.iter().find(|(n, _)| n == name) {
            Some((_, code)) => grpc_on |= 1 << code,
            None => error(
                format!("{path}.retry_grpc_on[{i}]"),
                format!(
                    "unknown gRPC status `{name}` (known: {})",
                    GRPC_NAMES.map(|(n, _)| n).join(", ")
                ),
            ),
        }
    }
    if c.retry_on.is_empty() && c.retry_grpc_on.is_empty() {
        error(
            path.to_owned(),
            "names no condition: set retry_on (e.g. [\"connect-failure\", \"gateway-error\"]) or retry_grpc_on".into(),
        );
    }
    for (i, s) in c.retriable_status_codes.iter().enumerate() {
        if !(100..=599).contains(s) {
            error(
                format!("{path}.retriable_status_codes[{i}]"),
                "must be an HTTP status (100-599)".into(),
            );
        }
    }
    if !c.retriable_status_codes.is_empty() && bits & on::RETRIABLE_STATUS_CODES == 0 {
        error(
            format!("{path}.retriable_status_codes"),
            "takes effect only with \"retriable-status-codes\" in retry_on".into(),
        );
    }
    if c.num_retries == 0 {
        error(
            format!("{path}.num_retries"),
            "must be at least 1 (remove the policy to retry nothing)".into(),
        );
    }
    if c.num_retries > 10 {
        error(
            format!("{path}.num_retries"),
            "at most 10: more retries multiply an outage's load".into(),
        );
    }
    if c.per_try_timeout.is_some_and(|t| t.0.is_zero()) {
        error(
            format!("{path}.per_try_timeout"),
            "must be greater than 0".into(),
        );
    }
    if c.backoff.base.0.is_zero() {
        error(
            format!("{path}.backoff.base"),
            "must be greater than 0".into(),
        );
    }
    if c.backoff.max.0 < c.backoff.base.0 {
        error(
            format!("{path}.backoff.max"),
            "must be at least backoff.base".into(),
        );
    }
    if c.max_buffered_bytes > 16 * 1024 * 1024 {
        error(
            format!("{path}.max_buffered_bytes"),
            "at most 16 MiB: each retriable request may hold this much".into(),
        );
    }
    RetryPolicy {
        on: bits,
        statuses: c.retriable_status_codes.clone(),
        grpc_on,
        num_retries: c.num_retries,
        per_try_timeout: c.per_try_timeout.map(|t| t.0),
        backoff_base: c.backoff.base.0,
        backoff_max: c.backoff.max.0,
        retry_after_max: c.retry_after_max.0,
        max_buffered_bytes: c.max_buffered_bytes as usize,
        retry_non_idempotent: c.retry_non_idempotent,
        attempt_count_header: c.attempt_count_header,
        previous_hosts: c.previous_hosts,
        retry_injected: c.retry_injected,
    }
}

/// Compiles `retry_budget` (at `path`).
pub fn compile_budget(
    c: &RetryBudgetConfig,
    path: &str,
    error: &mut dyn FnMut(String, String),
) -> RetryBudget {
    match c.kind {
        RetryBudgetKind::Concurrency => {
            if !(0.0..=100.0).contains(&c.percent) {
                error(
                    format!("{path}.percent"),
                    "is a percentage: 0 to 100".into(),
                );
            }
            RetryBudget::Concurrency {
                percent: c.percent.clamp(0.0, 100.0),
                min: c.min_concurrency,
            }
        }
        RetryBudgetKind::Ratio => {
            if !(0.0..=1000.0).contains(&c.ratio) {
                error(
                    format!("{path}.ratio"),
                    "retries per request: 0 to 1000 (0.2 is 20%)".into(),
                );
            }
            if c.ttl.0 < Duration::from_secs(1) || c.ttl.0 > Duration::from_secs(60) {
                error(format!("{path}.ttl"), "must be between 1s and 60s".into());
            }
            RetryBudget::Ratio {
                ratio: c.ratio.clamp(0.0, 1000.0),
                min_per_sec: c.min_per_sec,
                ttl: c
                    .ttl
                    .0
                    .clamp(Duration::from_secs(1), Duration::from_secs(60)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str], grpc: &[&str]) -> RetryPolicy {
        let c = RetryConfig {
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            retry_grpc_on: grpc.iter().map(|s| s.to_string()).collect(),
            ..RetryConfig::default()
        };
        let mut errors = Vec::new();
        let p = compile_policy(&c, "r", &mut |k, e| errors.push(format!("{k}: {e}")));
        assert!(errors.is_empty(), "{errors:?}");
        p
    }

    #[test]
    fn conditions_cover_what_envoy_says() {
        let gw = policy(&["gateway-error"], &[]);
        assert!(gw.covers(Failure::Status(503)));
        assert!(!gw.covers(Failure::Status(500)));
        assert!(gw.covers(Failure::ConnectFailure));
        assert!(gw.covers(Failure::Reset));
        let cf = policy(&["connect-failure"], &[]);
        assert!(cf.covers(Failure::ConnectFailure));
        assert!(!cf.covers(Failure::Reset));
        assert!(!cf.covers(Failure::Status(503)));
        let any = policy(&["5xx", "retriable-4xx"], &["unavailable"]);
        assert!(any.covers(Failure::Status(500)));
        assert!(any.covers(Failure::Status(409)));
        assert!(!any.covers(Failure::Status(404)));
        assert!(any.covers(Failure::Grpc(14)));
        assert!(!any.covers(Failure::Grpc(13)));
        assert!(any.covers_answer(200, Some(14)));
    }

    #[test]
    fn backoff_is_fully_jittered_and_capped() {
        let p = policy(&["5xx"], &[]);
        // The bound, drawn at its top.
        let top = |n| p.backoff(n, |b| b - 1);
        assert_eq!(top(1), Duration::from_micros(24_999));
        assert_eq!(top(2), Duration::from_micros(74_999));
        assert_eq!(top(3), Duration::from_micros(174_999));
        assert_eq!(top(4), Duration::from_micros(249_999));
        assert_eq!(top(60), Duration::from_micros(249_999));
        assert_eq!(p.backoff(1, |_| 0), Duration::ZERO);
    }

    #[test]
    fn bad_policies_name_their_keys() {
        let c = RetryConfig {
            retry_on: vec!["5xxx".into()],
            retry_grpc_on: vec!["unavailible".into()],
            num_retries: 0,
            retriable_status_codes: vec![700],
            ..RetryConfig::default()
        };
        let mut errors = Vec::new();
        compile_policy(&c, "r", &mut |k, e| errors.push(format!("{k}: {e}")));
        let all = errors.join("\n");
        for key in [
            "r.retry_on[0]",
            "r.retry_grpc_on[0]",
            "r.num_retries",
            "r.retriable_status_codes[0]",
            "r.retriable_status_codes:",
        ] {
            assert!(all.contains(key), "{key} missing in {all}");
        }
    }

    #[test]
    fn grpc_attempts_are_capped_at_five() {
        let mut p = policy(&[], &["unavailable"]);
        p.num_retries = 9;
        assert_eq!(p.max_attempts(true), 5);
        assert_eq!(p.max_attempts(false), 10);
    }

    #[test]
    fn the_concurrency_budget_is_a_share_with_a_floor() {
        let b = RetryBudget::Concurrency {
            percent: 20.0,
            min: 3,
        };
        assert!(b.concurrency_allows(2, 0));
        assert!(!b.concurrency_allows(3, 10));
        assert!(b.concurrency_allows(19, 100));
        assert!(!b.concurrency_allows(20, 100));
    }
}
