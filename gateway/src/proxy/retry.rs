//! A request's retry policy at work: whether a failed attempt goes again, when, and
//! with which body.
//!
//! The lifecycle's attempt loop owns the decision; this is what it decides with, kept
//! in the plan so that the relays can ask it the one question only they can answer in
//! time: whether an answer they just read the head of is to be retried (`answer`),
//! before any of it reaches the client. An attempt is made again only when every one
//! of these holds:
//! - the policy names the failure (`retry_on`, `retry_grpc_on`);
//! - the application cannot have acted on it (a connect failure, a refused stream),
//!   or the method is idempotent, the route opted in, or it is a gRPC status;
//! - the request body was not taken yet, or all of it was kept (up to
//!   `max_buffered_bytes`; a longer body is abandoned, counted, and never waited for);
//! - retries are left (`num_retries`; five attempts at most for gRPC), the wait fits
//!   in the route's timeout, and a `Retry-After` is not over `retry_after_max`;
//! - the cluster's budget (or `circuit_breakers.max_retries`) has room: else the
//!   failed attempt's answer stands, and the overflow is counted.
//!
//! Waits are Envoy's fully jittered exponential backoff, or the answer's `Retry-After`
//! jittered up by half. A retry avoids the endpoints that failed where others exist.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_mesh::snapshot::retry::{Failure, RetryBudget, RetryPolicy};
use weft_mesh::snapshot::Cluster;

use super::completion::Progress;
use super::error::ProxyError;
use super::exchange::Exchange;
use super::replay::KeptBody;
use crate::upstream::retry_budget::RatioBudget;

/// The retry state of one exchange with a retry policy.
pub struct Retries<'p> {
    policy: &'p RetryPolicy,
    cluster: &'p Cluster,
    /// Failures after which the application may have acted (answers, resets) may be
    /// retried: the method is idempotent, or the route opted in.
    answers: bool,
    grpc: bool,
    /// The latest retry holds a place in the cluster's retry count (`retries`), given
    /// back on drop. (A flag, not a `Permit`: a `Cell` of a borrow would make the
    /// plan invariant in its lifetime.)
    holding: Cell<bool>,
    /// The wait of a retry a relay decided on an answer, for the loop to take.
    decided: Cell<Option<Duration>>,
    /// When the route's timeout (or the gRPC call's deadline) ends every attempt.
    deadline: Cell<Option<Instant>>,
    /// Endpoints that failed (`previous_hosts`).
    failed: FailedEndpoints,
    retried: Cell<u32>,
}

/// How long an attempt waits for its response head, and the error when that passes;
/// when the clock was read for it, the deadline too (a relay that needs one reads the
/// clock only otherwise).
pub struct HeadWait {
    pub timeout: Duration,
    pub expired: ProxyError,
    pub deadline: Option<Instant>,
}

impl HeadWait {
    pub fn deadline(&self) -> Instant {
        self.deadline
            .unwrap_or_else(|| Instant::now() + self.timeout)
    }
}

impl<'p> Retries<'p> {
    pub fn new(
        policy: &'p RetryPolicy,
        cluster: &'p Cluster,
        method: &[u8],
        grpc: bool,
        call_deadline: Option<Instant>,
    ) -> Retries<'p> {
        let answers = policy.retry_non_idempotent || super::relay::idempotent(method);
        Retries {
            policy,
            cluster,
            answers,
            grpc,
            holding: Cell::new(false),
            decided: Cell::new(None),
            deadline: Cell::new(call_deadline),
            failed: FailedEndpoints::default(),
            retried: Cell::new(0),
        }
    }

    /// Whether `x-weft-attempt-count` goes upstream and back.
    pub fn counts_attempts(&self) -> bool {
        self.policy.attempt_count_header
    }

    /// The head wait of this attempt: its `per_try_timeout`, within what is left of
    /// the route's `timeout`, which starts when the first attempt waits.
    pub fn head_wait(&self, response_timeout: Duration) -> HeadWait {
        let now = Instant::now();
        let end = match self.deadline.get() {
            Some(end) => end,
            None => {
                self.deadline.set(Some(now + response_timeout));
                now + response_timeout
            }
        };
        let left = end.saturating_duration_since(now);
        let (timeout, expired) = match self.policy.per_try_timeout {
            Some(per_try) if per_try < left => (per_try, ProxyError::PerTryTimeout),
            _ => (left, ProxyError::ResponseTimeout),
        };
        HeadWait {
            timeout,
            expired,
            deadline: Some(now + timeout),
        }
    }

    /// Whether a retry may resend the body after it was sent (an answer or a reset
    /// could be retried): then the plan keeps a copy, up to `max_buffered_bytes`.
    pub fn keeps_body(&self) -> bool {
        self.answers || self.grpc
    }

    /// The most of a body kept for a retry.
    pub fn max_buffered_bytes(&self) -> usize {
        self.policy.max_buffered_bytes
    }

    /// Whether the route's injected aborts are retried (`retry_injected`).
    pub fn retries_injected(&self) -> bool {
        self.policy.retry_injected
    }

    /// Whether the policy names an answer like this one at all (before anything else
    /// of it is looked at).
    pub fn may_retry_answer(&self, status: u16, grpc: Option<u16>) -> bool {
        self.policy.covers_answer(status, grpc)
    }

    /// Whether an answer whose head is `status` (and `grpc`, a gRPC status in that
    /// head), with `retry_after`, goes again instead of to the client. Asked by the
    /// relays before they pass the head on; a yes has taken the budget and set the wait.
    pub fn answer(
        &self,
        x: &Exchange<'_>,
        (progress, kept): (&Progress, Option<&KeptBody>),
        status: u16,
        grpc: Option<u16>,
        retry_after: Option<&[u8]>,
    ) -> bool {
        let p = self.policy;
        let failure = if p.covers(Failure::Status(status)) {
            Failure::Status(status)
        } else {
            match grpc {
                Some(code) if p.covers(Failure::Grpc(code)) => Failure::Grpc(code),
                _ => return false,
            }
        };
        let pushback = match retry_after {
            None => Pushback::Backoff,
            Some(v) => match parse_retry_after(v) {
                Some(d) if d <= p.retry_after_max => Pushback::After(d),
                // Longer than weft waits, or unreadable: the answer stands.
                _ => return false,
            },
        };
        match self.decide(x, (progress, kept), failure, pushback) {
            Some(wait) => {
                self.decided.set(Some(wait));
                true
            }
            None => false,
        }
    }

    /// Whether a failed attempt (`failure`) goes again, and after how long.
    pub fn error(
        &self,
        x: &Exchange<'_>,
        (progress, kept): (&Progress, Option<&KeptBody>),
        failure: Failure,
    ) -> Option<Duration> {
        self.decide(x, (progress, kept), failure, Pushback::Backoff)
    }

    /// The wait of the retry a relay decided on an answer.
    pub fn take_decided(&self) -> Option<Duration> {
        self.decided.take()
    }

    /// Retries made so far.
    pub fn retried(&self) -> u32 {
        self.retried.get()
    }

    /// `endpoint` failed: later attempts avoid it where they can.
    pub fn failed_at(&self, endpoint: SocketAddr) {
        if self.policy.previous_hosts {
            self.failed.record(endpoint);
        }
    }

    /// Whether an attempt should pick again rather than use `endpoint`.
    pub fn avoids(&self, endpoint: SocketAddr) -> bool {
        self.failed.contains(endpoint)
    }

    fn decide(
        &self,
        x: &Exchange<'_>,
        (progress, kept): (&Progress, Option<&KeptBody>),
        failure: Failure,
        pushback: Pushback,
    ) -> Option<Duration> {
        let p = self.policy;
        if !p.covers(failure) {
            return None;
        }
        let grpc_answer = self.grpc && matches!(failure, Failure::Grpc(_));
        if failure.reached_application() && !self.answers && !grpc_answer {
            return None;
        }
        if progress.body_taken.get() && kept.and_then(KeptBody::kept).is_none() {
            return None;
        }
        let counters = &self.cluster.shared.retry;
        if self.retried.get() + 1 >= p.max_attempts(self.grpc) {
            count(&counters.limit_exceeded);
            return None;
        }
        let (wait, kind) = match pushback {
            Pushback::Backoff => (
                p.backoff(self.retried.get() + 1, |bound| fastrand::u64(0..bound)),
                &counters.backoff_exponential,
            ),
            // Jittered up to half again, as Envoy does, so that the clients told the
            // same time do not all come back at once.
            Pushback::After(d) => (
                d + d.mul_f64(fastrand::f64() * 0.5),
                &counters.backoff_ratelimited,
            ),
        };
        if self
            .deadline
            .get()
            .is_some_and(|end| Instant::now() + wait >= end)
        {
            return None;
        }
        if !self.admit(x) {
            // Counted by the completion record (`_retry_overflow_total`).
            progress.retry_overflow.set(true);
            return None;
        }
        count(kind);
        count(&counters.sent);
        self.retried.set(self.retried.get() + 1);
        Some(wait)
    }

    /// A place in the cluster's retry budget (or `max_retries`) for one more retry.
    fn admit(&self, x: &Exchange<'_>) -> bool {
        let shared = &self.cluster.shared;
        let limit = match self.cluster.retry_budget {
            None => self.cluster.breakers.max_retries,
            Some(budget @ RetryBudget::Concurrency { .. }) => {
                let retrying = shared.retries.0.load(Ordering::Relaxed);
                let active = shared.requests.0.load(Ordering::Relaxed);
                if !budget.concurrency_allows(retrying, active) {
                    return false;
                }
                u64::MAX
            }
            Some(RetryBudget::Ratio {
                ratio,
                min_per_sec,
                ttl,
            }) => {
                let workers = x.worker.control.workers.max(1) as f64;
                let share = (f64::from(min_per_sec) / workers).ceil();
                let now = Instant::now();
                let open = || RatioBudget::new(ratio, share, ttl, now);
                if !x
                    .worker
                    .upstreams
                    .ratio_budgets
                    .with(&self.cluster.shared, open, |b| b.withdraw(now))
                {
                    return false;
                }
                u64::MAX
            }
        };
        if !shared.retries.try_add(limit) {
            return false;
        }
        // The previous retry's place goes back as this one's is taken.
        if self.holding.replace(true) {
            shared.retries.sub();
        }
        true
    }

    /// A request (not a retry) was made: it pays into a ratio budget.
    pub fn deposit(&self, x: &Exchange<'_>) {
        if let Some(RetryBudget::Ratio {
            ratio,
            min_per_sec,
            ttl,
        }) = self.cluster.retry_budget
        {
            let workers = x.worker.control.workers.max(1) as f64;
            let share = (f64::from(min_per_sec) / workers).ceil();
            let now = Instant::now();
            let open = || RatioBudget::new(ratio, share, ttl, now);
            x.worker
                .upstreams
                .ratio_budgets
                .with(&self.cluster.shared, open, |b| b.deposit(now));
        }
    }

    /// The exchange is over: a retried request that ended well counts as a success; a
    /// body too large to keep made the request one that could not be retried.
    pub fn finish(&self, succeeded: bool, kept: Option<&KeptBody>) {
        if self.retried.get() > 0 && succeeded {
            count(&self.cluster.shared.retry.success);
        }
        if self.keeps_body() && kept.is_some_and(KeptBody::too_large) {
            count(&self.cluster.shared.retry.abandoned_body_too_large);
        }
    }
}

impl Drop for Retries<'_> {
    fn drop(&mut self) {
        if self.holding.get() {
            self.cluster.shared.retries.sub();
        }
    }
}

enum Pushback {
    Backoff,
    After(Duration),
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The endpoints that failed one request, by address: exact, so that a retry never
/// passes over an endpoint that did not fail for one that did. (A 64-bit set of address
/// hashes did: two endpoints sharing a bit, one pair in 64, sent every retry back to
/// the one that failed.) Empty, and unallocated, until an attempt fails.
#[derive(Default)]
struct FailedEndpoints(std::cell::RefCell<Vec<SocketAddr>>);

impl FailedEndpoints {
    fn record(&self, endpoint: SocketAddr) {
        let mut failed = self.0.borrow_mut();
        if !failed.contains(&endpoint) {
            failed.push(endpoint);
        }
    }

    fn contains(&self, endpoint: SocketAddr) -> bool {
        self.0.borrow().contains(&endpoint)
    }
}

/// A `Retry-After` in seconds (RFC 9110 §10.2.3); an HTTP date is not waited for.
fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 9 {
        return None;
    }
    text.parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_endpoints_that_failed_are_avoided() {
        let failed = FailedEndpoints::default();
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        failed.record(at(9001));
        failed.record(at(9001));
        failed.record(at(9002));
        let avoided: Vec<u16> = (1..=u16::MAX).filter(|&p| failed.contains(at(p))).collect();
        assert_eq!(avoided, [9001, 9002]);
    }

    #[test]
    fn retry_after_is_seconds_only() {
        assert_eq!(parse_retry_after(b"2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(b" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(b"-1"), None);
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(b"99999999999"), None);
    }
}
