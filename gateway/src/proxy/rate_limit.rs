//! Local rate limits at work, in the lifecycle's request-policy phase: the listener's
//! bucket first, then the route's; a request that finds one empty is answered there
//! (429 by default, `x-ratelimit-*` and `x-weft-ratelimited: true`; a gRPC call gets
//! RESOURCE_EXHAUSTED or UNAVAILABLE) and reaches no upstream. Answers that pass carry
//! `x-ratelimit-*` only with `x_ratelimit_headers`.
//!
//! Where the bucket lives is the limit's `scope`: in the compiled limit for the
//! process (one atomic word, exact across workers), in the worker (its share of the
//! tokens, nothing shared), or in the client connection. Keyed limits keep a bucket per
//! source IP, peer identity or header value (`rate_limit::KeyedBuckets`, bounded).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;

use weft_mesh::config::RateLimitScope;
use weft_mesh::snapshot::rate_limit::{KeyedBuckets, Limits, RateKey, RateLimit, Taken};
use weft_mesh::snapshot::{clock_ms, RequestFacts, Route};

use super::error::ProxyError;
use super::exchange::Exchange;
use crate::observe::metrics::Family;

/// What `x-ratelimit-*` says of the bucket a request took from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateHeaders {
    /// Never 0 (a bucket holds a token at least): `Option<RateHeaders>` needs no more
    /// room, and a plan carries one.
    pub limit: NonZeroU32,
    pub remaining: u32,
    pub reset_secs: u32,
}

/// Buckets of the limits scoped to a worker, or to a connection: by limit (its
/// address: limits live in `Arc`ed routes and listeners, kept across the snapshots a
/// discovery change derives), then by key.
#[derive(Default, Debug)]
pub struct LocalBuckets {
    by_limit: RefCell<HashMap<usize, KeyedBuckets>>,
}

/// Limits one worker or connection keeps buckets for before it forgets them all (a
/// reload makes new limits; the old ones' buckets would otherwise stay).
const MAX_LIMITS: usize = 4096;

impl LocalBuckets {
    /// Takes a token from `limit`'s bucket for `key`, which holds `limits` (the
    /// worker's share, for a worker-scoped limit).
    fn take(&self, limit: &RateLimit, key: u64, limits: Limits, now_ms: u64) -> Result<Taken, u64> {
        let mut by_limit = self.by_limit.borrow_mut();
        let id = limit as *const RateLimit as usize;
        if !by_limit.contains_key(&id) && by_limit.len() >= MAX_LIMITS {
            by_limit.clear();
        }
        by_limit
            .entry(id)
            .or_default()
            .take(key, limits, limit.max_keys, now_ms)
    }
}

/// Takes a token for the request from `limit`'s bucket: what the answer's
/// `x-ratelimit-*` say (when the limit sends them), or the error over the limit.
pub fn admit(
    x: &Exchange<'_>,
    limit: &RateLimit,
    route: Option<&Route>,
    request: &impl RequestFacts,
) -> Result<Option<RateHeaders>, ProxyError> {
    let now = clock_ms();
    let key = key_of(x, &limit.key, request);
    // What this request's bucket holds: a worker's share, or the whole limit.
    let limits = match limit.scope {
        RateLimitScope::Worker => limit.limits.share(x.worker.control.workers),
        _ => limit.limits,
    };
    let taken = match (limit.scope, &limit.key) {
        (RateLimitScope::Process, RateKey::None) => limit.bucket.take(limits, now),
        (RateLimitScope::Process, _) => limit
            .keyed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(key, limits, limit.max_keys, now),
        (RateLimitScope::Worker, _) => x.worker.rate_limits.take(limit, key, limits, now),
        (RateLimitScope::Connection, _) => x.conn.rate_limits.take(limit, key, limits, now),
    };
    let max = NonZeroU32::new(limits.max_tokens).unwrap_or(NonZeroU32::MIN);
    let secs = |ms: u64| ms.div_ceil(1000).min(u64::from(u32::MAX)) as u32;
    let family = match taken {
        Ok(_) => Family::RateLimitOk,
        Err(_) => Family::RateLimitLimited,
    };
    count(x, limit, route, family);
    match taken {
        Ok(t) => Ok(limit.headers.then_some(RateHeaders {
            limit: max,
            remaining: t.remaining,
            reset_secs: secs(t.next_fill_ms),
        })),
        Err(next_fill_ms) => Err(ProxyError::RateLimited {
            status: limit.status,
            grpc: limit.grpc_status,
            limit: max.get(),
            reset_secs: secs(next_fill_ms),
        }),
    }
}

fn count(x: &Exchange<'_>, limit: &RateLimit, route: Option<&Route>, family: Family) {
    let key = [
        x.snapshot.version,
        limit as *const RateLimit as u64,
        x.bound.slot as u64,
        0,
    ];
    x.worker.counters.bump(family, key, || {
        let scope = match limit.scope {
            RateLimitScope::Process => "process",
            RateLimitScope::Worker => "worker",
            RateLimitScope::Connection => "connection",
        };
        vec![
            ("listener", x.bound.name.to_string()),
            ("route", route.map(|r| r.name.clone()).unwrap_or_default()),
            ("scope", scope.to_owned()),
        ]
    });
}

/// The request's bucket key, hashed.
fn key_of(x: &Exchange<'_>, key: &RateKey, request: &impl RequestFacts) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match key {
        RateKey::None => return 0,
        RateKey::SourceIp => x.conn.peer.ip().hash(&mut h),
        RateKey::PeerIdentity => {
            // The first URI SAN (a SPIFFE ID), else the first DNS SAN, else the
            // subject; a client without a certificate is the anonymous bucket.
            let identity = x
                .conn
                .tls
                .as_ref()
                .and_then(|t| t.peer_identity.as_ref())
                .map(|p| {
                    p.uris
                        .first()
                        .or(p.dns.first())
                        .unwrap_or(&p.subject)
                        .as_str()
                });
            identity.hash(&mut h);
        }
        RateKey::Header(name) => request.header(name).hash(&mut h),
    }
    h.finish()
}
