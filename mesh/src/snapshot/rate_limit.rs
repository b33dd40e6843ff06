//! Local rate limits (`rate_limit` on a route, `[listeners.rate_limit]`), compiled,
//! and the token buckets they count with: Envoy's local rate limit.
//!
//! A bucket holds up to `max_tokens`; every `fill_interval` from its first use it gets
//! `tokens_per_fill` back; each request
//! takes one, and a request that finds it empty is over the limit. A bucket is one
//! atomic word (tokens and the fill it last saw), so a process-wide bucket is exact
//! across workers at the cost of one compare-and-swap on a shared line per request, and
//! needs no refill timer. Keyed limits (by source IP, peer identity or a header) keep
//! a bucket per key, at most `max_keys`; past that the least recently used half goes
//! (a bucket that went is full again when its key comes back).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{RateLimitConfig, RateLimitKey, RateLimitScope};

#[derive(Debug)]
pub struct RateLimit {
    pub limits: Limits,
    pub scope: RateLimitScope,
    pub key: RateKey,
    pub max_keys: usize,
    pub status: u16,
    pub grpc_status: u16,
    pub headers: bool,
    /// The process scope's bucket (unkeyed) ...
    pub bucket: Bucket,
    /// ... and its buckets by key.
    pub keyed: Mutex<KeyedBuckets>,
}

/// What a bucket holds and gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_ms: u64,
}

impl Limits {
    /// One worker's share of the limits (`scope = "worker"`), rounded up.
    pub fn share(self, workers: usize) -> Limits {
        let n = workers.max(1) as u32;
        Limits {
            max_tokens: self.max_tokens.div_ceil(n),
            tokens_per_fill: self.tokens_per_fill.div_ceil(n),
            fill_ms: self.fill_ms,
        }
    }
}

/// What a request's bucket is chosen by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    None,
    SourceIp,
    PeerIdentity,
    /// Lowercase.
    Header(String),
}

/// One bucket: tokens left (high half) and the fill it last saw, plus one (low half;
/// 0 is a bucket never taken from, which is full), and when it was first taken from
/// (its fills fall on that time plus multiples of the interval, as a bucket's timer
/// in Envoy starts with it: a burst right after a quiet time is never split by a fill).
#[derive(Debug, Default)]
pub struct Bucket {
    state: AtomicU64,
    first_ms: AtomicU64,
}

/// A token taken: how many are left, and when the next fill comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub remaining: u32,
    pub next_fill_ms: u64,
}

impl Bucket {
    /// Takes a token at `now_ms` (not 0): what is left after it, or, when the bucket
    /// is empty, `Err` with the time to its next fill.
    pub fn take(&self, limits: Limits, now_ms: u64) -> Result<Taken, u64> {
        let now_ms = now_ms.max(1);
        let first = match self.first_ms.load(Ordering::Acquire) {
            0 => {
                match self
                    .first_ms
                    .compare_exchange(0, now_ms, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => now_ms,
                    Err(set) => set,
                }
            }
            set => set,
        };
        let since = now_ms.saturating_sub(first);
        let fill_ms = limits.fill_ms.max(1);
        let next_fill_ms = fill_ms - since % fill_ms;
        let fill = (since / fill_ms).min(u32::MAX as u64 - 1) as u32 + 1;
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let (tokens, seen) = ((state >> 32) as u32, state as u32);
            let tokens = if seen == 0 {
                limits.max_tokens
            } else if fill > seen {
                let back = u64::from(fill - seen) * u64::from(limits.tokens_per_fill);
                (u64::from(tokens) + back).min(u64::from(limits.max_tokens)) as u32
            } else {
                tokens
            };
            if tokens == 0 {
                return Err(next_fill_ms);
            }
            let next = (u64::from(tokens - 1) << 32) | u64::from(fill);
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Taken {
                        remaining: tokens - 1,
                        next_fill_ms,
                    })
                }
                Err(now) => state = now,
            }
        }
    }
}

/// Buckets by key (a hash of it), bounded.
#[derive(Debug, Default)]
pub struct KeyedBuckets {
    buckets: HashMap<u64, (Bucket, u64)>,
}

impl KeyedBuckets {
    /// Takes a token from `key`'s bucket (made full when new) at `now_ms`.
    pub fn take(
        &mut self,
        key: u64,
        limits: Limits,
        max_keys: usize,
        now_ms: u64,
    ) -> Result<Taken, u64> {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= max_keys.max(1) {
            self.evict_older_half();
        }
        let (bucket, used) = self.buckets.entry(key).or_default();
        *used = now_ms;
        bucket.take(limits, now_ms)
    }

    /// Drops the least recently used half: an insert past the bound costs O(log n)
    /// amortised, not a scan per new key (keys are the client's to choose).
    fn evict_older_half(&mut self) {
        let mut used: Vec<u64> = self.buckets.values().map(|(_, u)| *u).collect();
        let middle = used.len() / 2;
        let (_, cut, _) = used.select_nth_unstable(middle);
        let cut = *cut;
        self.buckets.retain(|_, (_, u)| *u > cut);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Compiles `rate_limit` (at `path`), reporting problems to `error(key, problem)`.
pub fn compile(
    c: &RateLimitConfig,
    path: &str,
    error: &mut dyn FnMut(String, String),
) -> RateLimit {
    if c.max_tokens == 0 {
        error(format!("{path}.max_tokens"), "must be at least 1".into());
    }
    let per_fill = c.tokens_per_fill.unwrap_or(c.max_tokens);
    if c.tokens_per_fill == Some(0) {
        error(
            format!("{path}.tokens_per_fill"),
            "must be at least 1".into(),
        );
    }
    let fill = match c.fill_interval {
        None => {
            error(
                format!("{path}.fill_interval"),
                "is needed (e.g. \"1s\")".into(),
            );
            Duration::from_secs(1)
        }
        Some(f) if f.0 < Duration::from_millis(50) => {
            error(
                format!("{path}.fill_interval"),
                "must be at least 50ms (as in Envoy)".into(),
            );
            Duration::from_millis(50)
        }
        Some(f) => f.0,
    };
    let key = match &c.key {
        RateLimitKey::Named(n) if n == "none" => RateKey::None,
        RateLimitKey::Named(n) if n == "source_ip" => RateKey::SourceIp,
        RateLimitKey::Named(n) if n == "peer_identity" => RateKey::PeerIdentity,
        RateLimitKey::Named(n) => {
            error(
                format!("{path}.key"),
                format!("unknown key `{n}` (known: \"none\", \"source_ip\", \"peer_identity\", {{ header = \"NAME\" }})"),
            );
            RateKey::None
        }
        RateLimitKey::Header { header } => {
            if header.is_empty() || !header.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                error(
                    format!("{path}.key.header"),
                    format!("`{header}` is not a header name"),
                );
            }
            RateKey::Header(header.to_ascii_lowercase())
        }
    };
    if !(400..=599).contains(&c.status) {
        error(
            format!("{path}.status"),
            "must be between 400 and 599".into(),
        );
    }
    let grpc_status = match c.grpc_status.as_str() {
        "resource_exhausted" => 8,
        "unavailable" => 14,
        other => {
            error(
                format!("{path}.grpc_status"),
                format!("`{other}` is neither \"resource_exhausted\" nor \"unavailable\""),
            );
            8
        }
    };
    if c.max_keys == 0 || c.max_keys > 10_000_000 {
        error(
            format!("{path}.max_keys"),
            "must be between 1 and 10000000".into(),
        );
    }
    RateLimit {
        limits: Limits {
            max_tokens: c.max_tokens.max(1),
            tokens_per_fill: per_fill.max(1),
            fill_ms: fill.as_millis().max(1) as u64,
        },
        scope: c.scope,
        key,
        max_keys: c.max_keys.max(1),
        status: c.status,
        grpc_status,
        headers: c.x_ratelimit_headers,
        bucket: Bucket::default(),
        keyed: Mutex::new(KeyedBuckets::default()),
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.limits;
        let scope = match self.scope {
            RateLimitScope::Process => "process",
            RateLimitScope::Worker => "worker",
            RateLimitScope::Connection => "connection",
        };
        write!(
            f,
            "rate limit: {} tokens, {} back every {}ms, per {scope}",
            l.max_tokens, l.tokens_per_fill, l.fill_ms
        )?;
        match &self.key {
            RateKey::None => {}
            RateKey::SourceIp => write!(f, " and source IP")?,
            RateKey::PeerIdentity => write!(f, " and peer identity")?,
            RateKey::Header(h) => write!(f, " and {h}")?,
        }
        write!(f, "; over it {}", self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_A_SECOND: Limits = Limits {
        max_tokens: 10,
        tokens_per_fill: 10,
        fill_ms: 1000,
    };

    #[test]
    fn a_bucket_starts_full_and_fills_on_the_interval() {
        let b = Bucket::default();
        let t0 = 5_300;
        let left: Vec<Option<u32>> = (0..11)
            .map(|_| b.take(TEN_A_SECOND, t0).ok().map(|t| t.remaining))
            .collect();
        assert_eq!(left[0], Some(9));
        assert_eq!(left[9], Some(0));
        assert_eq!(left[10], None);
        // Fills come a whole interval after the first take, not on the clock's second.
        assert_eq!(b.take(TEN_A_SECOND, t0 + 999), Err(1));
        let after = b.take(TEN_A_SECOND, t0 + 1000).expect("filled");
        assert_eq!((after.remaining, after.next_fill_ms), (9, 1000));
        // A long quiet time fills it to the top, not past.
        assert_eq!(
            b.take(TEN_A_SECOND, t0 + 60_500).map(|t| t.remaining),
            Ok(9)
        );
    }

    #[test]
    fn a_shared_bucket_is_exact_across_threads() {
        let b = std::sync::Arc::new(Bucket::default());
        let passed: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..100).filter(|_| b.take(TEN_A_SECOND, 1).is_ok()).count()
                })
            })
            .map(|t| t.join().expect("thread"))
            .sum();
        assert_eq!(passed, 10);
    }

    #[test]
    fn keyed_buckets_are_apart_and_bounded() {
        let mut k = KeyedBuckets::default();
        for _ in 0..10 {
            assert!(k.take(1, TEN_A_SECOND, 4, 1).is_ok());
        }
        assert!(k.take(1, TEN_A_SECOND, 4, 1).is_err());
        assert_eq!(k.take(2, TEN_A_SECOND, 4, 1).map(|t| t.remaining), Ok(9));
        for key in 3..100 {
            let _ = k.take(key, TEN_A_SECOND, 4, key);
        }
        assert!(k.len() <= 4, "{}", k.len());
    }

    #[test]
    fn workers_share_the_limits_rounding_up() {
        let s = TEN_A_SECOND.share(4);
        assert_eq!((s.max_tokens, s.tokens_per_fill), (3, 3));
    }
}
