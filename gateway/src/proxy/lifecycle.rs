//! The one life of a request, whatever protocols its client and upstream speak.
//!
//! Every request, HTTP/1.1 or HTTP/2, goes through `run`, which reads as its phases:
//!
//! 1. **request**: the client adapter has the head, and the connection facts;
//!    refusals only its protocol makes (gRPC over HTTP/1.1) come first, then what no
//!    protocol may carry (userinfo in the authority, a path that will not normalise);
//! 2. **route**: the listener's route table in the snapshot current at the request;
//! 3. **request policies**: where a policy may hold or answer a request before any
//!    upstream is chosen: the route's `fault` (a delay, an abort), then the listener's
//!    and the route's `rate_limit`; authorization belongs here too;
//! 4. **local answers**: a `direct_response` or `redirect` route answers here;
//! 5. **plan**: the cluster (a split's weighted pick), the response timeout, a gRPC
//!    call's deadline and the hash key of a consistent-hash cluster, chosen once for
//!    every attempt;
//! 6. **request checks**: a declared body over `http.max_request_body_bytes` is 413;
//! 7. **attempts**: the client adapter relays the exchange over the cluster's protocol;
//!    each attempt's outcome goes to its endpoint's outlier detection; a failed
//!    attempt is made again only here: a dead pooled connection or a refused stream
//!    always (`ProxyError::retry`, given what the attempt did, `Progress`), anything
//!    else as the route's (or cluster's) retry policy says (`retry::Retries`, which
//!    the relays also ask about an answer before it reaches the client);
//! 8. **failure**: an error becomes the client's answer in its protocol (an HTTP error,
//!    a gRPC status, a reset, or a closed connection once a response had begun);
//! 9. **completion**: one `Completion` record, at the same point for both client
//!    protocols; the counters are fed from it.
//!
//! Decisions live here; bytes do not. The byte pumps stay specialised per protocol pair
//! (`relay`), and the adapters (`client_h1`, `client_h2`) say how each phase looks on
//! their wire. Dispatch is static: no `dyn` call and no allocation is added per request.

use std::time::{Duration, Instant};

use bytes::Bytes;

use weft_mesh::snapshot::retry::Failure;
use weft_mesh::snapshot::{AttemptOutcome, Cluster, ClusterId};
use weft_mesh::snapshot::{
    DirectResponse, Forward, HeaderEdits, RequestFacts, Route, RouteAction, Sticky,
};

use super::affinity::{affinity, Affinity};
use super::completion::{Completion, Decided, Progress};
use super::error::{Breaker, ProxyError, Retry};
use super::exchange::Exchange;
use super::facts::{is_valid_authority, PathOutcome, Request};
use super::replay::KeptBody;
use super::retry::{HeadWait, Retries};
use super::rewrite::ResponseEdits;
use super::{fault, grpc, local, mirror, rate_limit};
use crate::observe::metrics::Family;
use crate::proto::h1::head::trim;
use crate::upstream::REFUSED_RETRIES;

/// An answer weft makes itself for a route.
pub enum LocalAnswer<'r> {
    Direct(&'r DirectResponse, &'r HeaderEdits),
    Redirect { status: u16, location: String },
}

/// How one client protocol takes part in the lifecycle.
pub trait ClientSide {
    /// The client protocol, as the completion record and the connection metrics name
    /// it (`http1`, `http2`).
    const PROTOCOL: &'static str;
    type Request: Request;
    /// What the client connection does after the exchange (HTTP/1.1: keep alive, close
    /// or tunnel; HTTP/2: how the stream ended, for the rapid-reset defence).
    type Next;

    fn request(&self) -> &Self::Request;

    /// A refusal only this client protocol makes, before routing.
    fn refuse(&self, x: &Exchange<'_>) -> Option<ProxyError>;

    /// Sends a local answer.
    async fn answer(&mut self, x: &Exchange<'_>, answer: LocalAnswer<'_>) -> Self::Next;

    /// One attempt at relaying the exchange over `plan`'s cluster. It notes what it did
    /// in `progress`, and decides nothing the lifecycle decides.
    async fn relay(
        &mut self,
        x: &Exchange<'_>,
        plan: &Plan<'_>,
        progress: &Progress,
    ) -> Result<Self::Next, ProxyError>;

    /// Ends a failed exchange in this protocol: an error answer while nothing of the
    /// response was sent (`progress.status` is `None`), else whatever ends it safely.
    async fn fail(
        &mut self,
        x: &Exchange<'_>,
        error: ProxyError,
        progress: &Progress,
    ) -> Self::Next;
}

/// What the lifecycle decided for a forwarded request; every attempt reads it.
pub struct Plan<'p> {
    pub route: &'p Route,
    pub forward: &'p Forward,
    pub cluster_id: ClusterId,
    pub cluster: &'p Cluster,
    /// How long the upstream has for its response head: the route's timeout (or the
    /// cluster's), shortened by a gRPC call's deadline.
    pub response_timeout: Duration,
    /// When a gRPC call with a `grpc-timeout` must be over, head, bodies and all: its
    /// `grpc-timeout`, capped by the route's timeout (or the cluster's).
    pub call_deadline: Option<Instant>,
    /// The client's `Upgrade` goes upstream: it asked for protocols the route allows
    /// (false too for an `h2c` upgrade, which is dropped).
    pub upgrade: bool,
    /// The request's hash key and a cookie made for it, for a consistent-hash
    /// cluster whose route's `hash_policy` found something (boxed: most plans have
    /// none, and every plan lives in a stream task, whose size is guarded).
    pub affinity: Option<Box<Affinity>>,
    /// The retry policy at work, when the route (or its cluster) has one (boxed, as
    /// `affinity`).
    pub retry: Option<Box<Retries<'p>>>,
    /// What the answer's `x-ratelimit-*` say, when a rate limit sends them.
    pub rate: Option<rate_limit::RateHeaders>,
    /// The request body as kept for a retry or a mirror, when either may send it again.
    pub kept: Option<Box<KeptBody>>,
}

impl Plan<'_> {
    /// What the response gets besides its own fields.
    pub fn response_edits(&self, progress: &Progress) -> ResponseEdits<'_> {
        ResponseEdits {
            route: &self.route.response_headers,
            set_cookie: self.affinity.as_ref().and_then(|a| a.set_cookie.as_deref()),
            attempts: self.attempt_count(progress),
            rate: self.rate,
        }
    }

    /// The `x-weft-attempt-count` of this attempt, when the policy sends it.
    pub fn attempt_count(&self, progress: &Progress) -> Option<u8> {
        self.retry
            .as_ref()
            .filter(|r| r.counts_attempts())
            .map(|_| progress.attempts.get())
    }

    /// The request's hash key, for a consistent-hash cluster; a retry that avoids the
    /// endpoints that failed looks elsewhere on the ring.
    pub fn hash_key(&self) -> Option<u64> {
        let key = self.affinity.as_ref().and_then(|a| a.key)?;
        match self.retry.as_ref().map_or(0, |r| r.retried()) {
            0 => Some(key),
            n => Some(weft_mesh::snapshot::hashing::combine(
                Some(key),
                u64::from(n),
            )),
        }
    }

    /// How long this attempt waits for its response head.
    pub fn head_wait(&self) -> HeadWait {
        match &self.retry {
            Some(r) => r.head_wait(self.response_timeout),
            None => HeadWait {
                timeout: self.response_timeout,
                expired: ProxyError::ResponseTimeout,
                deadline: None,
            },
        }
    }

    /// Whether the relay drops an answer whose head it has (`status`, a gRPC status in
    /// that head, and its `Retry-After`, looked up only if the policy may retry it)
    /// because the policy sends the request again.
    pub fn retries_answer<'h>(
        &self,
        x: &Exchange<'_>,
        progress: &Progress,
        (status, grpc): (u16, Option<u16>),
        retry_after: impl FnOnce() -> Option<&'h [u8]>,
    ) -> bool {
        let Some(r) = &self.retry else {
            return false;
        };
        if !r.may_retry_answer(status, grpc) {
            return false;
        }
        let kept = self.kept.as_deref();
        r.answer(x, (progress, kept), status, grpc, retry_after())
    }

    /// Whether an answer the policy would retry came while the request body is still
    /// being kept (so it cannot be retried yet).
    pub fn body_settling(&self, status: u16, grpc: Option<u16>) -> bool {
        self.retry
            .as_ref()
            .is_some_and(|r| r.may_retry_answer(status, grpc))
            && self.keeping_body()
    }

    /// Until the request body is no longer being kept (at once when it is not).
    pub async fn body_kept(&self) {
        if let Some(kept) = &self.kept {
            kept.wait_settled().await;
        }
    }

    /// Whether the request body is still being kept (not yet whole, not given up).
    pub fn keeping_body(&self) -> bool {
        self.kept.as_ref().is_some_and(|k| !k.settled())
    }

    /// Keeps a piece of the request body for a retry or a mirror.
    pub fn keep_body(&self, piece: &[u8]) {
        if let Some(k) = &self.kept {
            k.keep(piece);
        }
    }

    /// The whole request body was taken from the client.
    pub fn body_complete(&self) {
        if let Some(k) = &self.kept {
            k.complete();
        }
    }

    /// The request body had trailers: it is not sent again.
    pub fn abandon_body(&self) {
        if let Some(k) = &self.kept {
            k.abandon();
        }
    }

    /// The request body a retry sends: `None` on the first attempt (the client's is
    /// read), the kept one after.
    pub fn replayed_body(&self, progress: &Progress) -> Result<Option<Bytes>, ProxyError> {
        if !progress.body_taken.get() {
            return Ok(None);
        }
        self.kept
            .as_ref()
            .and_then(|k| k.kept())
            .map(Some)
            .ok_or(ProxyError::BodyNotKept)
    }
}

/// Runs one request from its head to its completion record.
pub async fn run<C: ClientSide>(x: &Exchange<'_>, client: &mut C) -> C::Next {
    let progress = Progress::new();
    let (next, decided) = decide_and_relay(x, client, &progress).await;
    let record = Completion::new(x, C::PROTOCOL, decided, &progress);
    record.count();
    record.trace();
    next
}

async fn decide_and_relay<'s, C: ClientSide>(
    x: &Exchange<'s>,
    client: &mut C,
    progress: &Progress,
) -> (C::Next, Decided<'s>) {
    let mut decided = Decided {
        grpc: client.request().is_grpc(),
        ..Decided::default()
    };
    macro_rules! fail {
        ($error:expr) => {{
            let error = $error;
            decided.error = Some(error);
            return (client.fail(x, error, progress).await, decided);
        }};
    }
    // Phase 1: the request, and what its protocol cannot carry.
    if let Some(refused) = client.refuse(x) {
        fail!(refused);
    }
    if client.request().authority().contains('@') {
        // Userinfo (`user@host`): deprecated, never sent by a browser, and a way to
        // make two parsers disagree about the host (RFC 9110 §4.2.4).
        fail!(ProxyError::BadRequestTarget(
            "userinfo is not allowed in the request target or Host"
        ));
    }
    if !is_valid_authority(client.request().authority()) {
        fail!(ProxyError::BadRequestTarget(
            "the host is neither a name nor an IP literal"
        ));
    }
    match client.request().path_outcome() {
        PathOutcome::Unchanged => {}
        outcome => {
            count_path(x, outcome);
            if outcome == PathOutcome::Refused {
                fail!(ProxyError::BadRequestTarget(
                    "the path climbs above the root (`..`) or has a bad percent-encoding"
                ));
            }
        }
    }
    // Phase 2: route.
    let Some(route) = x.routes().and_then(|t| t.find(client.request())) else {
        fail!(ProxyError::NoRoute);
    };
    decided.route = Some(route);
    // Phase 3: request policies: the route's fault, then the listener's rate limit
    // and the route's (a delayed request takes its token when it goes on; an aborted
    // one takes none, as in Istio's order of Envoy's filters).
    let mut injected = None;
    if let Some(fault) = &route.fault {
        // Boxed: only requests on routes with a fault pay for its state in their task.
        if let Some(abort) = Box::pin(fault::inject(x, route, fault, client.request())).await {
            // An injected abort stands, unless a retry policy of the route (or of a
            // cluster it forwards to) retries injected aborts: then it is the first
            // attempt's answer.
            if !retries_injected(x, route) {
                fail!(abort);
            }
            injected = Some(abort);
        }
    }
    let mut counted = None;
    let limits = [
        (x.rate_limit(), None),
        (route.rate_limit.as_ref(), Some(&**route)),
    ];
    for (limit, owner) in limits {
        let Some(limit) = limit else { continue };
        match rate_limit::admit(x, limit, owner, client.request()) {
            Ok(headers) => counted = headers.or(counted),
            Err(limited) => fail!(limited),
        }
    }
    // Phase 4: local answers.
    let fwd = match &route.action {
        RouteAction::Direct(d) => {
            progress.began(d.status);
            if !client.request().head_only() {
                progress.gave(d.body.len());
            }
            let next = client
                .answer(x, LocalAnswer::Direct(d, &route.response_headers))
                .await;
            return (next, decided);
        }
        RouteAction::Redirect(r) => {
            let req = client.request();
            let location = local::redirect_location(
                r,
                x.conn.scheme,
                req.authority(),
                req.path(),
                req.path_and_query(),
            );
            progress.began(r.status);
            let answer = LocalAnswer::Redirect {
                status: r.status,
                location,
            };
            return (client.answer(x, answer).await, decided);
        }
        RouteAction::Forward(f) => f,
    };
    let relayed = {
        // Phase 5: plan.
        let plan = plan(x, client.request(), route, fwd, counted);
        decided.cluster = plan.as_ref().ok().map(|p| p.cluster_id);
        // Phase 6: request checks.
        let too_large = client
            .request()
            .declared_length()
            .zip(x.snapshot.http.max_request_body_bytes)
            .is_some_and(|(n, max)| n > max);
        // By reference: a moved-out `Plan` would be held twice across the await (the
        // stream task's size is guarded).
        match &plan {
            Err(e) => Err(*e),
            Ok(_) if too_large => Err(ProxyError::BodyTooLarge),
            // The cluster's breaker: one permit for the whole exchange, all attempts.
            Ok(plan) => match plan
                .cluster
                .shared
                .requests
                .admit(plan.cluster.breakers.max_requests)
            {
                None => Err(ProxyError::Overflow(Breaker::Requests)),
                // Phase 7: attempts; then the copy for a mirror, its own task.
                Some(_admitted) => {
                    let relayed = attempts(x, client, plan, progress, injected).await;
                    let aborted = matches!(relayed, Err(ProxyError::FaultAbort { .. }));
                    if let Some(m) = route.mirror.as_ref().filter(|_| !aborted) {
                        mirror::send(x, plan, m, client.request());
                    }
                    relayed
                }
            },
        }
    };
    // Phase 8: failure.
    match relayed {
        Ok(next) => (next, decided),
        Err(e) => fail!(e),
    }
}

/// Phase 7: the attempts, the one place a request is sent again.
async fn attempts<C: ClientSide>(
    x: &Exchange<'_>,
    client: &mut C,
    plan: &Plan<'_>,
    progress: &Progress,
    mut injected: Option<ProxyError>,
) -> Result<C::Next, ProxyError> {
    // A retry without a policy (a dead pooled connection, a refused stream) holds one
    // of the cluster's retry permits (`circuit_breakers.max_retries`); without one, the
    // failed attempt's error stands. A policy's retries hold theirs in `Retries`.
    let mut _retrying = None;
    if let Some(r) = &plan.retry {
        r.deposit(x);
    }
    loop {
        progress.attempts.set(progress.attempts.get() + 1);
        let relayed = match injected.take() {
            // The fault's abort is the first attempt's answer (`retry_injected`).
            Some(abort) => Err(abort),
            None => client.relay(x, plan, progress).await,
        };
        let again = matches!(relayed, Err(e) if may_retry(progress, e));
        // A retry on a fresh connection keeps the endpoint (and its lease): its pooled
        // connection died, not the endpoint.
        if !progress.fresh.get() {
            let outcome = attempt_outcome(&relayed, progress);
            if matches!(outcome, Some(o) if o != AttemptOutcome::Success) {
                if let (Some(r), Some(endpoint)) = (&plan.retry, progress.endpoint.get()) {
                    r.failed_at(endpoint);
                }
            }
            progress.end_attempt(outcome);
        }
        let e = match relayed {
            Ok(next) => {
                if let Some(r) = &plan.retry {
                    let status = progress.status.get().unwrap_or(200);
                    let failed = matches!(
                        answer_outcome(status, progress.grpc_status.get()),
                        AttemptOutcome::Failed { .. }
                    );
                    r.finish(!failed, plan.kept.as_deref());
                }
                return Ok(next);
            }
            Err(e) => e,
        };
        let wait = if again {
            let limit = plan.cluster.breakers.max_retries;
            let Some(permit) = plan.cluster.shared.retries.admit(limit) else {
                progress.retry_overflow.set(true);
                return Err(e);
            };
            _retrying = Some(permit);
            plan.cluster
                .shared
                .retry
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Duration::ZERO
        } else {
            // One retry in flight per request: the fresh connection's permit goes
            // back before the policy asks for its own.
            _retrying = None;
            match policy_retry(x, plan, progress, e) {
                Some(wait) => wait,
                None => {
                    if let Some(r) = &plan.retry {
                        r.finish(false, plan.kept.as_deref());
                    }
                    return Err(e);
                }
            }
        };
        tracing::debug!(cluster = %plan.cluster.name, "attempt failed ({e}); trying again in {wait:?}");
        if !wait.is_zero() {
            // Boxed: only retries pay for the timer in their task.
            Box::pin(monoio::time::sleep(wait)).await;
        }
    }
}

/// The wait before the retry the policy makes of a failed attempt, if it makes one.
fn policy_retry(
    x: &Exchange<'_>,
    plan: &Plan<'_>,
    progress: &Progress,
    e: ProxyError,
) -> Option<Duration> {
    let r = plan.retry.as_ref()?;
    if let ProxyError::RetriedAnswer { .. } = e {
        return r.take_decided();
    }
    let facts = (progress, plan.kept.as_deref());
    if let ProxyError::FaultAbort { status, grpc } = e {
        let failure = grpc.map_or(Failure::Status(status), Failure::Grpc);
        return r
            .retries_injected()
            .then(|| r.error(x, facts, failure))
            .flatten();
    }
    match e.retry() {
        Retry::Policy(failure) => r.error(x, facts, failure),
        Retry::IfUnsent => r.error(x, facts, Failure::RefusedStream),
        // A fresh connection (or the retry of a dead pooled one) that closed without
        // an answer: a reset, as the policy sees it.
        Retry::IfReused => r.error(x, facts, Failure::Reset),
        Retry::Never => None,
    }
}

/// What an attempt says of its endpoint: an answer by its status (a gRPC call's by
/// its grpc-status, from the head or the trailers), a failure of the endpoint's own
/// (`ProxyError::endpoint_fault`); nothing when the attempt ended for another reason.
fn attempt_outcome<N>(
    relayed: &Result<N, ProxyError>,
    progress: &Progress,
) -> Option<AttemptOutcome> {
    match relayed {
        Ok(_) => Some(answer_outcome(
            progress.status.get().unwrap_or(200),
            progress.grpc_status.get(),
        )),
        Err(ProxyError::RetriedAnswer { status, grpc }) => Some(answer_outcome(*status, *grpc)),
        Err(e) if e.endpoint_fault() => Some(AttemptOutcome::LocalOrigin),
        Err(_) => None,
    }
}

/// What an answer with `status` (and a gRPC call's `grpc` status) says of its endpoint.
fn answer_outcome(status: u16, grpc: Option<u16>) -> AttemptOutcome {
    match (status, grpc) {
        (500.., _) => AttemptOutcome::Failed {
            gateway: (502..=504).contains(&status),
        },
        (_, Some(code)) => match grpc::failure(code) {
            Some(gateway) => AttemptOutcome::Failed { gateway },
            None => AttemptOutcome::Success,
        },
        _ => AttemptOutcome::Success,
    }
}

/// Whether a failed attempt may be made again without a policy, and how: a dead pooled connection once
/// more on a fresh one to the same endpoint, a refused stream while nothing of the body
/// was taken.
fn may_retry(progress: &Progress, error: ProxyError) -> bool {
    let attempts = usize::from(progress.attempts.get());
    match error.retry() {
        Retry::Never => false,
        Retry::IfReused if progress.reused.get() && attempts < 2 => {
            progress.fresh.set(true);
            true
        }
        Retry::IfReused => false,
        Retry::IfUnsent => !progress.body_taken.get() && attempts <= REFUSED_RETRIES,
        Retry::Policy(_) => false,
    }
}

/// Counts a path `[listeners.paths]` rewrote or refused, by listener.
fn count_path(x: &Exchange<'_>, outcome: PathOutcome) {
    let label = match outcome {
        PathOutcome::Refused => "refused",
        _ => "rewritten",
    };
    x.worker.counters.bump(
        Family::NormalizedPaths,
        [x.bound.slot as u64, outcome as u64, 0, 0],
        || {
            vec![
                ("listener", x.bound.name.to_string()),
                ("outcome", label.to_owned()),
            ]
        },
    );
}

/// Chooses the cluster, the timeouts and the upgrade every attempt of a forwarded
/// request keeps; an upgrade the route does not allow is refused here.
fn plan<'p>(
    x: &Exchange<'p>,
    request: &impl Request,
    route: &'p Route,
    fwd: &'p Forward,
    rate: Option<rate_limit::RateHeaders>,
) -> Result<Plan<'p>, ProxyError> {
    let cluster_id = fwd.target(|total| match sticky_roll(fwd, request) {
        Some(roll) => roll,
        None => fastrand::u32(0..total),
    });
    let cluster_id = cluster_id.cluster;
    let cluster = &x.snapshot.clusters[cluster_id];
    let timeout = route.timeout.unwrap_or(cluster.request_timeout);
    // A client's `grpc-timeout` may shorten the configured timeout, never lengthen it:
    // `99999999H` to a silent upstream must not hold the call for as long as it asks.
    let grpc_timeout = request.grpc_timeout().map(|t| t.min(timeout));
    let call_deadline = grpc_timeout.map(|t| Instant::now() + t);
    let retry = route
        .retry
        .as_ref()
        .or(cluster.retry.as_ref())
        .map(|policy| {
            Box::new(Retries::new(
                policy,
                cluster,
                request.method(),
                request.is_grpc(),
                call_deadline,
            ))
        });
    // A retry that may resend the body, and a mirror, keep it: the larger limit.
    let keep = [
        retry
            .as_ref()
            .filter(|r| r.keeps_body())
            .map(|r| r.max_buffered_bytes()),
        route.mirror.map(|m| m.max_buffered_bytes),
    ]
    .into_iter()
    .flatten()
    .max();
    Ok(Plan {
        route,
        forward: fwd,
        cluster_id,
        cluster,
        response_timeout: grpc_timeout.unwrap_or(timeout),
        call_deadline,
        upgrade: allowed_upgrade(route, request.upgrade())?,
        affinity: if cluster.lb.hashes() && !fwd.hash_policy.is_empty() {
            let found = affinity(&fwd.hash_policy, request, x.conn.peer.ip());
            found.key.map(|_| Box::new(found))
        } else {
            None
        },
        rate,
        retry,
        kept: keep
            .filter(|_| request.has_body())
            .map(|limit| Box::new(KeptBody::new(limit))),
    })
}

/// Whether a retry policy of the route, or of a cluster it forwards to, retries the
/// aborts its fault injects (`retry_injected`).
fn retries_injected(x: &Exchange<'_>, route: &Route) -> bool {
    let RouteAction::Forward(fwd) = &route.action else {
        return false;
    };
    route.retry.as_ref().map_or_else(
        || {
            fwd.targets.iter().any(|t| {
                x.snapshot.clusters[t.cluster]
                    .retry
                    .as_ref()
                    .is_some_and(|p| p.retry_injected)
            })
        },
        |p| p.retry_injected,
    )
}

/// The roll of a sticky split (`sticky`) for the request's header or cookie, when it
/// has one; without, the split picks at random.
fn sticky_roll(fwd: &Forward, request: &impl Request) -> Option<u32> {
    match fwd.sticky.as_ref()? {
        Sticky::Header(name) => request.header(name).map(|v| fwd.sticky_roll(v)),
        Sticky::Cookie(name) => {
            let mut roll = None;
            request.any_header("cookie", |field| {
                roll = weft_mesh::fields::cookie_value(field, name).map(|v| fwd.sticky_roll(v));
                roll.is_some()
            });
            roll
        }
    }
}

/// Whether the client's `Upgrade` (`asked`) goes upstream. Every protocol it lists must be one
/// the route allows (`upgrades`, by name: `websocket/13` is `websocket`). A lone `h2c`
/// is dropped, as a server may ignore an upgrade (RFC 9110 §7.8): an origin that
/// accepted it would speak HTTP/2 with the client past every route of this listener.
/// (`h2c` among other protocols is refused with them: it is never allowed.)
fn allowed_upgrade(route: &Route, asked: Option<&[u8]>) -> Result<bool, ProxyError> {
    let Some(value) = asked else {
        return Ok(false);
    };
    let names = value
        .split(|&b| b == b',')
        .map(|t| trim(t).split(|&b| b == b'/').next().map_or(&b""[..], trim));
    let (mut h2c, mut allowed, mut refused) = (false, false, false);
    for name in names {
        if name.eq_ignore_ascii_case(b"h2c") {
            h2c = true;
        } else if route
            .upgrades
            .iter()
            .any(|u| name.eq_ignore_ascii_case(u.as_bytes()))
        {
            allowed = true;
        } else {
            refused = true;
        }
    }
    match (h2c, allowed, refused) {
        (true, false, false) => Ok(false),
        (false, true, false) => Ok(true),
        _ => Err(ProxyError::UpgradeNotAllowed),
    }
}
