//! Ratio retry budgets (`retry_budget.kind = "ratio"`), Linkerd's: each request puts
//! `ratio` of a retry into the account, each retry takes one out, and `min_per_sec`
//! retries a second are free; what was put in more than `ttl` ago has lapsed.
//!
//! Each worker keeps its own account per cluster, with its share of `min_per_sec`:
//! a ratio does not depend on how requests spread over cores, and a per-worker account
//! needs no write another core reads on every request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use weft_mesh::snapshot::ClusterShared;

/// The window is kept in this many slices: what lapses, lapses a slice at a time.
const SLICES: usize = 10;

/// One account.
#[derive(Debug)]
pub struct RatioBudget {
    ratio: f64,
    /// Free retries over the whole window.
    reserve: f64,
    slice: Duration,
    /// Requests and retries per slice, the current one at `at`.
    slices: [(u32, u32); SLICES],
    at: usize,
    started: Instant,
}

impl RatioBudget {
    pub fn new(ratio: f64, min_per_sec: f64, ttl: Duration, now: Instant) -> RatioBudget {
        RatioBudget {
            ratio,
            reserve: min_per_sec * ttl.as_secs_f64(),
            slice: ttl / SLICES as u32,
            slices: [(0, 0); SLICES],
            at: 0,
            started: now,
        }
    }

    /// Moves the window to `now`, clearing the slices that lapsed.
    fn advance(&mut self, now: Instant) {
        let mut passed =
            now.saturating_duration_since(self.started).as_nanos() / self.slice.as_nanos().max(1);
        if passed == 0 {
            return;
        }
        self.started += self.slice * passed.min(u32::MAX as u128) as u32;
        while passed > 0 {
            self.at = (self.at + 1) % SLICES;
            self.slices[self.at] = (0, 0);
            passed -= 1;
            if passed as usize >= SLICES {
                // Everything lapsed: the rest of the loop would only clear cleared ones.
                self.slices = [(0, 0); SLICES];
                break;
            }
        }
    }

    /// A request (not a retry) was made.
    pub fn deposit(&mut self, now: Instant) {
        self.advance(now);
        let s = &mut self.slices[self.at].0;
        *s = s.saturating_add(1);
    }

    /// Takes one retry out, if the account has one.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        self.advance(now);
        let (requests, retries) = self.slices.iter().fold((0u64, 0u64), |(a, b), (r, t)| {
            (a + *r as u64, b + *t as u64)
        });
        let balance = self.reserve + self.ratio * requests as f64 - retries as f64;
        if balance < 1.0 {
            return false;
        }
        let t = &mut self.slices[self.at].1;
        *t = t.saturating_add(1);
        true
    }
}

/// A worker's accounts, by cluster (its shared state, which outlives snapshots).
#[derive(Default)]
pub struct RatioBudgets {
    accounts: RefCell<HashMap<usize, (Weak<ClusterShared>, RatioBudget)>>,
}

impl RatioBudgets {
    /// Runs `f` on the cluster's account, opened with `open` when it has none.
    pub fn with<T>(
        &self,
        cluster: &Arc<ClusterShared>,
        open: impl FnOnce() -> RatioBudget,
        f: impl FnOnce(&mut RatioBudget) -> T,
    ) -> T {
        let mut accounts = self.accounts.borrow_mut();
        let key = Arc::as_ptr(cluster) as usize;
        if !accounts.contains_key(&key) {
            // Accounts of clusters that are gone go when a new one opens.
            accounts.retain(|_, (shared, _)| shared.strong_count() > 0);
        }
        let entry = accounts
            .entry(key)
            .or_insert_with(|| (Arc::downgrade(cluster), open()));
        f(&mut entry.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_ratio_of_requests() {
        let t0 = Instant::now();
        let mut b = RatioBudget::new(0.2, 0.0, Duration::from_secs(10), t0);
        let mut retried = 0;
        for _ in 0..1000 {
            b.deposit(t0);
            if b.withdraw(t0) {
                retried += 1;
            }
        }
        assert_eq!(retried, 200);
    }

    #[test]
    fn the_reserve_is_free_and_old_requests_lapse() {
        let t0 = Instant::now();
        let mut b = RatioBudget::new(0.5, 1.0, Duration::from_secs(10), t0);
        // 10 free retries over the window.
        assert_eq!((0..20).filter(|_| b.withdraw(t0)).count(), 10);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!((0..20).filter(|_| b.withdraw(t0)).count(), 5);
        // Eleven seconds on, the window is empty again: only the reserve.
        let later = t0 + Duration::from_secs(11);
        assert_eq!((0..20).filter(|_| b.withdraw(later)).count(), 10);
    }
}
