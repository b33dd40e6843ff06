//! The compiled, immutable `Snapshot` the data plane runs on, and its publisher.
//!
//! `compile` is the one place where a config is judged: every semantic problem is
//! collected with the key it points at, so `weft check`, startup and reload agree.
//! Everything the request path needs is precomputed here (route tables, cluster
//! indices, lowercase header names, resolved endpoint addresses); the request path
//! never parses or allocates config. Workers hold an `Arc<Snapshot>` per connection,
//! so a swap never changes the rules under a request already running.

mod compile;
pub mod fault;
pub mod hashing;
pub mod health;
pub mod rate_limit;
pub mod retry;
mod routes;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use compile::{compile, compile_with};
pub use health::{
    clock_ms, AttemptOutcome, Ejection, EjectionKind, HostHealth, OutlierCounters, OutlierDetection,
};

/// Endpoints found by discovery, by cluster name, as the config would list them.
pub type Discovered = std::collections::BTreeMap<String, Vec<crate::config::EndpointConfig>>;
pub use routes::{
    is_grpc_content_type, HeaderMatchKind, HeaderMatcher, HostMatch, PathMatch, RequestFacts,
    RouteTable,
};

use crate::config::{
    ConfigFile, Http2Config, HttpConfig, IoDriver, LbPolicy, Role, UpstreamProtocol, UringConfig,
};

/// Index of a cluster in `Snapshot::clusters`.
pub type ClusterId = usize;

#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic per process; 0 until published.
    pub version: u64,
    /// FNV-1a of the config text and the files it references: equal config, equal
    /// hash.
    pub config_hash: u64,
    /// `config_hash` with the discovered endpoints folded in: equal hash, nothing to
    /// publish.
    pub content_hash: u64,
    pub role: Role,
    pub source_file: std::path::PathBuf,
    /// The config file's text, for `/config` (which redacts `consul.token`).
    /// Kept as text: a deep copy of the parsed tree would cost every reload. Shared by
    /// the snapshots a discovery change derives from this one.
    pub source_text: Arc<str>,
    pub runtime: RuntimeSettings,
    pub admin: AdminSettings,
    pub http: HttpConfig,
    /// `http.forwarded.trusted_*`, parsed.
    pub trusted_proxies: TrustedProxies,
    /// What serves, but not safely (`weft check` prints them; start and reload log
    /// them).
    pub warnings: Vec<crate::config::ConfigError>,
    pub http2: Http2Config,
    /// Shared, unchanged, by the snapshots a discovery change derives from this one.
    pub listeners: Arc<[Listener]>,
    /// One `Arc` per cluster: a discovery change replaces the clusters it touches and
    /// shares the rest.
    pub clusters: Vec<Arc<Cluster>>,
    pub consul: ConsulSettings,
    /// What a sidecar registers with the Consul agent.
    pub registration: Option<Registration>,
}

/// A cluster's circuit-breaker limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerLimits {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    pub max_requests: u64,
    pub max_retries: u64,
}

/// A counter alone on its cache line: workers on different cores update these, and two
/// on one line would make each update wait for the other core.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PaddedCounter(pub AtomicU64);

/// The state of one cluster that every worker shares: what its circuit breakers count.
/// Admission is exact (`admit`), and a permit goes back to the counter it came from,
/// whatever snapshot is current by then: a reload that changes a limit neither leaks
/// nor double-counts, because the counters themselves outlive it.
#[derive(Debug, Default)]
pub struct ClusterShared {
    /// Each endpoint's health, as the checker and outlier detection found it.
    hosts: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<HostHealth>>>,
    /// What the active checks did.
    pub checks: HealthCounters,
    /// What outlier detection did.
    pub outliers: OutlierCounters,
    /// Picks made in panic mode (too few endpoints eligible: all were used).
    pub panics: PaddedCounter,
    /// Upstream connections open.
    pub connections: PaddedCounter,
    /// Requests waiting for a new upstream connection.
    pub pending: PaddedCounter,
    /// Requests in flight.
    pub requests: PaddedCounter,
    /// Retries in flight.
    pub retries: PaddedCounter,
    /// What the retry policies of requests to the cluster did.
    pub retry: RetryCounters,
}

/// What retries did, for `weft_cluster_upstream_rq_retry_*` and
/// `weft_retry_abandoned_total`: rare events, counted where they happen.
#[derive(Debug, Default)]
pub struct RetryCounters {
    /// Attempts made again.
    pub sent: AtomicU64,
    /// Requests that were retried and then answered without failing.
    pub success: AtomicU64,
    /// Failed attempts that would have been retried but had used all `num_retries`.
    pub limit_exceeded: AtomicU64,
    /// Retries that waited the exponential backoff, or a `Retry-After`.
    pub backoff_exponential: AtomicU64,
    pub backoff_ratelimited: AtomicU64,
    /// Requests that could not be retried: the body was past `max_buffered_bytes`.
    pub abandoned_body_too_large: AtomicU64,
}

/// An active health check, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    pub interval: Duration,
    pub unhealthy_interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub initial_jitter: Duration,
    pub interval_jitter_percent: u32,
}

/// What a health check asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// `GET path` with `Host: host`; healthy on a status in one of `expected`
    /// (`[start, end)`).
    Http {
        path: String,
        host: String,
        expected: Vec<(u16, u16)>,
    },
    /// Connect; with `send`, send it, and with `receive`, find it in the answer.
    Tcp { send: Vec<u8>, receive: Vec<u8> },
    /// `grpc.health.v1.Health/Check` for `service`.
    Grpc { service: String, authority: String },
}

/// What the active health checks of a cluster did, for `/metrics`.
#[derive(Debug, Default)]
pub struct HealthCounters {
    pub attempts: AtomicU64,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
}

impl ClusterShared {
    fn hosts_locked(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<SocketAddr, Arc<HostHealth>>> {
        // A panic while holding it cannot leave the map half-changed: entries are
        // inserted or removed whole.
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The health of `address`, made the first time it is asked for: pending (and
    /// failed) until a first result when the cluster is `checked`, healthy otherwise.
    pub fn host(&self, address: SocketAddr, checked: bool) -> Arc<HostHealth> {
        let mut hosts = self.hosts_locked();
        hosts
            .entry(address)
            .or_insert_with(|| Arc::new(HostHealth::new(checked)))
            .clone()
    }

    /// Forgets endpoints `keep` rejects (they left the cluster); one that left ejected
    /// gives its place in `outliers.active` back.
    pub fn retain_hosts(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.hosts_locked().retain(|a, h| {
            let kept = keep(*a);
            if !kept {
                h.uneject(&self.outliers, clock_ms());
            }
            kept
        });
    }

    /// Every ejected endpoint returns (outlier detection was turned off).
    pub fn clear_ejections(&self) {
        let hosts = self.hosts_locked();
        for h in hosts.values() {
            h.uneject(&self.outliers, clock_ms());
        }
    }

    /// The health of each of `addresses` (made as `host` makes them), for a sweep.
    pub fn hosts_of(&self, addresses: &[SocketAddr], checked: bool) -> Vec<Arc<HostHealth>> {
        let mut hosts = self.hosts_locked();
        addresses
            .iter()
            .map(|a| {
                hosts
                    .entry(*a)
                    .or_insert_with(|| Arc::new(HostHealth::new(checked)))
                    .clone()
            })
            .collect()
    }

    /// Every endpoint's active-check result is dropped (checks were turned off).
    pub fn clear_active_results(&self) {
        let hosts = self.hosts_locked();
        for h in hosts.values() {
            h.set_active(true);
        }
    }
}

impl PaddedCounter {
    /// One more, if that stays within `limit`: the permit gives it back when dropped.
    pub fn admit(&self, limit: u64) -> Option<Permit<'_>> {
        // Not `then_some`: it would build (and so drop, giving back) a permit that was
        // never taken.
        if self.try_add(limit) {
            Some(Permit(&self.0))
        } else {
            None
        }
    }

    /// One more if that stays within `limit`; the caller owes a `sub`.
    pub fn try_add(&self, limit: u64) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// One more whatever the limit; the caller owes a `sub`.
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    pub fn sub(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One unit of a breaker's capacity, given back when dropped (made only by `admit`).
#[derive(Debug)]
pub struct Permit<'a>(&'a AtomicU64);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Who may tell weft about the client (`[http.forwarded]` `trusted_hops`,
/// `trusted_sources`): outside this boundary a client's forwarding fields are replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    pub hops: u32,
    pub sources: Vec<IpNet>,
}

impl TrustedProxies {
    /// Whether `ip` is in a trusted network.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.sources.iter().any(|n| n.contains(ip))
    }

    /// Whether what a peer at `ip` says about the request (its `X-Forwarded-Proto`,
    /// `X-Forwarded-Host`, ...) is believed: it is a trusted proxy, or proxies are
    /// trusted by count.
    pub fn vouches_for_peer(&self, ip: IpAddr) -> bool {
        self.hops > 0 || self.trusts(ip)
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `ADDR/PREFIX` or a bare address (all of it).
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an address or ADDRESS/PREFIX network"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits => n,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {bits}")),
            },
        };
        let net = IpNet { addr, prefix };
        if net.masked(addr) != addr {
            return Err(format!(
                "`{text}` has bits set past its prefix: write {}/{prefix}",
                net.masked(addr)
            ));
        }
        Ok(net)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where the admin listener answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub address: SocketAddr,
    /// Serves `/config` and `/metrics` in place of `address`, which then answers only
    /// the probes.
    pub private: Option<AdminBind>,
}

/// An admin socket: TCP, or a unix socket at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBind {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for AdminBind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminBind::Tcp(a) => write!(f, "{a}"),
            AdminBind::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A service registration (`PUT /v1/agent/service/register`).
#[derive(Debug, Clone)]
pub struct Registration {
    pub service: String,
    pub id: String,
    pub address: std::net::IpAddr,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: std::collections::BTreeMap<String, String>,
    pub check_interval: Duration,
    pub deregister_critical_after: Duration,
}

/// How to reach the Consul agent.
#[derive(Debug, Clone)]
pub struct ConsulSettings {
    pub address: String,
    /// An inline ACL token (the config's `consul.token`).
    pub token: Option<String>,
    pub token_file: Option<std::path::PathBuf>,
    pub wait: Duration,
    pub tls: Option<Arc<tls::ClusterTls>>,
    /// Bounds on one answer from the agent (`consul.max_response_bytes`, `max_entries`).
    pub max_response_bytes: u64,
    pub max_entries: usize,
}

/// Where a cluster's endpoints are discovered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Discovery {
    /// A watched endpoints file.
    File(std::path::PathBuf),
    Consul(ConsulQuery),
}

/// One Consul health query; clusters asking the same one share a watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsulQuery {
    pub service: String,
    pub passing_only: bool,
    pub tags: Vec<String>,
    pub datacenter: Option<String>,
    pub filter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub workers: Option<usize>,
    pub io: IoDriver,
    pub cpus: Option<Vec<usize>>,
    pub uring: UringConfig,
    pub drain_timeout: Duration,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub role: ListenerRole,
    /// TLS termination, when configured.
    pub tls: Option<tls::ListenerTls>,
    pub paths: PathPolicy,
    /// `[listeners.rate_limit]`: taken from by every request, before its route's.
    pub rate_limit: Option<rate_limit::RateLimit>,
    pub routes: RouteTable,
}

/// How a listener normalises request paths (`[listeners.paths]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    pub normalize: bool,
    /// Only with `normalize`.
    pub merge_slashes: bool,
}

impl Default for PathPolicy {
    /// What a listener does unless its config says otherwise.
    fn default() -> Self {
        PathPolicy {
            normalize: true,
            merge_slashes: true,
        }
    }
}

/// What a listener is for: traffic from outside (`[[listeners]]`), or one side of a
/// sidecar. Policies that differ by side (identity, authorization) read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerRole {
    Ingress,
    /// `[sidecar.inbound]`: the mesh calling this service instance.
    SidecarInbound,
    /// `[sidecar.outbound]`: this instance calling the mesh.
    SidecarOutbound,
}

#[derive(Debug)]
pub struct Route {
    /// Operator-given name, or `LISTENER#INDEX`; the metrics label.
    pub name: String,
    pub host: HostMatch,
    pub path: PathMatch,
    pub method: Option<String>,
    pub headers: Vec<HeaderMatcher>,
    pub cookies: Vec<routes::CookieMatcher>,
    pub query: Vec<routes::QueryMatcher>,
    pub action: RouteAction,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub timeout: Option<Duration>,
    /// Protocols an `Upgrade` may switch to (lowercase tokens, `websocket` by default).
    pub upgrades: Vec<String>,
    /// The route's own retry policy (else its cluster's applies).
    pub retry: Option<Arc<retry::RetryPolicy>>,
    /// Delays and aborts injected into a share of the requests.
    pub fault: Option<fault::Fault>,
    pub rate_limit: Option<rate_limit::RateLimit>,
    /// A copy of a share of the requests to another cluster.
    pub mirror: Option<Mirror>,
}

/// `mirror`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirror {
    pub cluster: ClusterId,
    /// In millionths (`fault::share`).
    pub share: u32,
    pub max_buffered_bytes: usize,
}

#[derive(Debug)]
pub enum RouteAction {
    Forward(Forward),
    Direct(DirectResponse),
    Redirect(Redirect),
}

#[derive(Debug)]
pub struct Forward {
    /// One target, or several for a weighted split.
    pub targets: Vec<SplitTarget>,
    pub total_weight: u32,
    /// `(matched prefix, replacement)` when the route rewrites the path.
    pub prefix_rewrite: Option<(String, String)>,
    /// The request's hash key for consistent-hash clusters (empty: none).
    pub hash_policy: Vec<hashing::HashPolicy>,
    /// A split picks by this value, when the request has it (`sticky`).
    pub sticky: Option<Sticky>,
}

/// What a sticky split picks by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// Lowercase.
    Header(String),
    Cookie(String),
}

#[derive(Debug)]
pub struct SplitTarget {
    pub cluster: ClusterId,
    pub weight: u32,
}

impl Forward {
    /// The target for one request; `roll(n)` returns a uniformly random number in
    /// `0..n` and is only called when there is a split to choose from.
    pub fn target(&self, roll: impl FnOnce(u32) -> u32) -> &SplitTarget {
        match self.targets.as_slice() {
            [only] => only,
            _ => self.target_for(roll(self.total_weight.max(1))),
        }
    }

    /// The roll of a sticky split for `value`: one of 10,000 buckets by its xxHash64,
    /// scaled to the weights, so a value lands on the same target on every worker and
    /// every weft with this split.
    pub fn sticky_roll(&self, value: &[u8]) -> u32 {
        let bucket = hashing::hash(value) % 10_000;
        (bucket * u64::from(self.total_weight.max(1)) / 10_000) as u32
    }

    /// Picks a target from a uniformly random `roll` in `0..total_weight`.
    pub fn target_for(&self, mut roll: u32) -> &SplitTarget {
        for t in &self.targets {
            if roll < t.weight {
                return t;
            }
            roll -= t.weight;
        }
        // Unreachable for roll < total_weight; the last target is a safe answer.
        &self.targets[self.targets.len() - 1]
    }
}

#[derive(Debug)]
pub struct DirectResponse {
    pub status: u16,
    /// Shared, never copied per request.
    pub body: Arc<[u8]>,
    pub content_type: String,
}

#[derive(Debug)]
pub struct Redirect {
    pub status: u16,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<(String, String)>,
    pub strip_query: bool,
}

#[derive(Debug, Default)]
pub struct HeaderEdits {
    /// `(lowercase name, value)`: replaces any header of that name.
    pub set: Vec<(String, String)>,
    /// Lowercase names.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Whether a header of this name is dropped (removed, or replaced by `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .chain(self.set.iter().map(|(n, _)| n))
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints, when configured.
    pub tls: Option<tls::ClusterTls>,
    /// Where the endpoints are discovered, when they are.
    pub discovery: Option<Discovery>,
    /// Discovered endpoints may be on loopback (`discovery.allow_loopback`).
    pub discovered_loopback: bool,
    /// `circuit_breakers`: the limits this snapshot sets.
    pub breakers: BreakerLimits,
    /// What every worker counts for this cluster (breaker occupancy), kept across the
    /// snapshots that have a cluster of this name (`Snapshot::inherit_shared`).
    pub shared: Arc<ClusterShared>,
    /// `health_check`, when the endpoints are checked.
    pub health_check: Option<Arc<HealthCheck>>,
    /// `healthy_panic_threshold`, a percentage.
    pub panic_threshold: u8,
    /// `outlier_detection`, when it is on.
    pub outlier: Option<Arc<OutlierDetection>>,
    /// `lb = "ring_hash" | "maglev"`: the table over `endpoints`, built with them.
    pub hash_table: Option<Arc<hashing::HashTable>>,
    /// `retry`: the policy of routes to this cluster that have none of their own.
    pub retry: Option<Arc<retry::RetryPolicy>>,
    /// `retry_budget`: in place of `circuit_breakers.max_retries` when set.
    pub retry_budget: Option<retry::RetryBudget>,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub read_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
}

impl Endpoint {
    /// This endpoint as a config entry (what discovery hands to `compile_with`).
    pub fn as_config(&self) -> crate::config::EndpointConfig {
        crate::config::EndpointConfig {
            address: self.address.to_string(),
            weight: self.weight,
            tags: Vec::new(),
            meta: Default::default(),
        }
    }
}

impl Snapshot {
    /// Whether any cluster still sends traffic to `addr` (pooled connections to
    /// endpoints that left are closed).
    pub fn has_endpoint(&self, addr: SocketAddr) -> bool {
        self.clusters
            .iter()
            .any(|c| c.endpoints.iter().any(|e| e.address == addr))
    }

    pub fn cluster_by_name(&self, name: &str) -> Option<ClusterId> {
        self.clusters.iter().position(|c| c.name == name)
    }

    /// Takes over `previous`'s shared state for every cluster of the same name, so that
    /// breaker occupancy (requests still in flight on `previous`) carries into this
    /// snapshot's limits. For a freshly compiled snapshot, before it is published.
    pub fn inherit_shared(&mut self, previous: &Snapshot) {
        for cluster in &mut self.clusters {
            if let Some(id) = previous.cluster_by_name(&cluster.name) {
                Arc::make_mut(cluster).shared = previous.clusters[id].shared.clone();
            }
        }
    }
}

/// Holds the active snapshot; the control thread publishes, workers load.
///
/// Replaced snapshots are retired here rather than dropped by whoever lets go last:
/// freeing a config with thousands of routes takes milliseconds, and that must not
/// happen on a worker between two requests. `collect_retired` (a control-side thread)
/// frees those that no request holds any more.
pub struct Publisher {
    current: ArcSwap<Snapshot>,
    next_version: AtomicU64,
    retired: std::sync::Mutex<Vec<Arc<Snapshot>>>,
}

impl Publisher {
    pub fn new(mut first: Snapshot) -> Publisher {
        first.version = 1;
        Publisher {
            current: ArcSwap::from_pointee(first),
            next_version: AtomicU64::new(2),
            retired: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Cheap read for hot paths that only need to compare versions.
    pub fn peek(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Publishes `next` with a fresh version; returns that version.
    pub fn publish(&self, mut next: Snapshot) -> u64 {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        next.version = version;
        // `swap` settles arc-swap's outstanding loans, so after it the retired Arc's
        // strong count says exactly who still holds the old snapshot.
        let old = self.current.swap(Arc::new(next));
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(old);
        version
    }

    /// Frees retired snapshots nobody uses any more; returns how many are still held.
    pub fn collect_retired(&self) -> usize {
        let mut retired = self
            .retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (free, keep): (Vec<_>, Vec<_>) =
            retired.drain(..).partition(|s| Arc::strong_count(s) == 1);
        *retired = keep;
        drop(retired);
        drop(free);
        self.retired.lock().map(|r| r.len()).unwrap_or(0)
    }
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod breaker_tests {
    use super::PaddedCounter;

    #[test]
    fn admission_is_exact_and_a_refusal_gives_nothing_back() {
        let c = PaddedCounter::default();
        let held: Vec<_> = (0..3)
            .map(|_| c.admit(3).expect("within the limit"))
            .collect();
        assert!(c.admit(3).is_none());
        assert!(c.admit(3).is_none());
        assert_eq!(c.get(), 3, "a refusal must not lower the count");
        drop(held);
        assert_eq!(c.get(), 0);
    }
}
