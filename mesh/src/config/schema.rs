//! The serde schema of the TOML that operators write.
//!
//! Types here mirror the file one to one, so an error path such as
//! `listeners[0].routes[2].split[1].weight` names exactly what the operator typed.
//! Nothing here is checked beyond its type: cross-field rules live in `validate`,
//! and nothing here is used on the request path (the snapshot compiles it first).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::duration::ConfigDuration;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ConfigFile {
    pub runtime: RuntimeConfig,
    pub admin: AdminConfig,
    pub http: HttpConfig,
    pub http2: Http2Config,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// The sidecar's listeners (`weft sidecar` only).
    pub sidecar: Option<SidecarConfig>,
    /// The Consul agent clusters with `discovery.consul` ask.
    pub consul: ConsulConfig,
}

/// The local Consul agent. The ACL token comes from `token`, `token_file` or the
/// `CONSUL_HTTP_TOKEN` environment variable, in that order; `/config` never shows it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ConsulConfig {
    /// `host:port` of the agent's HTTP API.
    pub address: String,
    /// ACL token sent to the agent (prefer `token_file` or `CONSUL_HTTP_TOKEN`: this one is in the file).
    pub token: Option<String>,
    /// A file holding the ACL token.
    pub token_file: Option<String>,
    /// How long one blocking query may wait for a change (Consul's `wait`).
    pub wait: ConfigDuration,
    /// Talk to the agent over TLS (its HTTPS port): `ca`, `sni`, and `cert`/`key` when
    /// the agent verifies clients.
    pub tls: Option<ClusterTlsConfig>,
    /// Largest answer read from the agent, in bytes; a larger one is an error and the
    /// last good endpoints stay.
    pub max_response_bytes: u64,
    /// Most instances one health answer may list (same rule).
    pub max_entries: usize,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: "127.0.0.1:8500".into(),
            token: None,
            token_file: None,
            tls: None,
            wait: ConfigDuration::from_secs(300),
            max_response_bytes: 16 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// Where a cluster's endpoints come from instead of (or before) `endpoints`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DiscoveryConfig {
    /// A file listing the endpoints (TOML `endpoints = [...]`, or a JSON array of
    /// `{ "address": "host:port", "weight": N }`), watched and re-read on change.
    pub file: Option<String>,
    /// Ask the Consul agent for the passing instances of a service.
    pub consul: Option<ConsulServiceConfig>,
    /// Accept discovered endpoints on loopback (a registry of this host's own services);
    /// refused by default, as weft's own ports and local-only services live there.
    pub allow_loopback: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ConsulServiceConfig {
    /// The Consul service name.
    pub service: String,
    /// Only instances whose checks all pass (`?passing`).
    pub passing_only: bool,
    /// Instances must carry every one of these tags.
    pub tags: Vec<String>,
    /// Another datacenter than the agent's own.
    pub datacenter: Option<String>,
    /// A Consul filter expression, e.g. `Service.Meta.version == "v2"`.
    pub filter: Option<String>,
}

impl Default for ConsulServiceConfig {
    fn default() -> Self {
        ConsulServiceConfig {
            service: String::new(),
            passing_only: true,
            tags: Vec::new(),
            datacenter: None,
            filter: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    #[default]
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Worker threads; `None` means one per CPU of the inherited affinity mask.
    pub workers: Option<usize>,
    /// The I/O driver: `auto` takes io_uring when the kernel allows it, else epoll.
    pub io: IoDriver,
    /// CPUs to pin workers to, in order; default: the inherited affinity mask.
    pub cpus: Option<Vec<usize>>,
    pub uring: UringConfig,
    /// On SIGTERM/SIGINT, how long in-flight requests may take before weft exits anyway
    /// (default 30s).
    pub drain_timeout: Option<ConfigDuration>,
}

/// io_uring ring setup flags. `None` lets `io = "auto"` decide from what the bench
/// measured; `Some(_)` forces the flag (it is still dropped if the kernel rejects it).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct UringConfig {
    /// IORING_SETUP_COOP_TASKRUN; unset: what `auto` measured best (see Internals).
    pub coop_taskrun: Option<bool>,
    /// IORING_SETUP_SINGLE_ISSUER; unset: as `auto` decides.
    pub single_issuer: Option<bool>,
    /// IORING_SETUP_DEFER_TASKRUN; unset: as `auto` decides.
    pub defer_taskrun: Option<bool>,
    /// Submission queue entries per worker ring; unset: 1024.
    pub entries: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminConfig {
    /// `/ready`, `/live`; and `/config`, `/metrics` unless `private_address` is set.
    pub address: String,
    /// Where `/config` and `/metrics` are served instead of `address`: `IP:port`, or
    /// `unix:PATH` for a unix socket (mode 0600; a relative PATH is taken from the
    /// config file's directory). Probes can then be exposed without the config.
    pub private_address: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: "127.0.0.1:9901".into(),
            private_address: None,
        }
    }
}

/// Limits and timeouts of the HTTP/1.1 codec, shared by every listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Largest request head (request line + headers); bigger gets 431.
    pub max_header_bytes: usize,
    /// Most headers in one request head; more gets 431.
    pub max_headers: usize,
    /// Largest request body; bigger gets 413. `None`: unlimited (streamed).
    pub max_request_body_bytes: Option<u64>,
    /// Time allowed to receive a whole request head once its first byte arrived.
    pub header_read_timeout: ConfigDuration,
    /// An idle keep-alive client connection is closed after this.
    pub idle_timeout: ConfigDuration,
    /// An upgraded connection (WebSocket) with no byte either way for this long is
    /// closed on both sides.
    pub tunnel_idle_timeout: ConfigDuration,
    pub forwarded: ForwardedConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_request_body_bytes: None,
            header_read_timeout: ConfigDuration::from_secs(10),
            idle_timeout: ConfigDuration::from_secs(60),
            tunnel_idle_timeout: ConfigDuration::from_secs(300),
            forwarded: ForwardedConfig::default(),
        }
    }
}

/// HTTP/2 limits, for client connections (server side) and upstream connections.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Http2Config {
    /// Streams a client may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Largest header list accepted (SETTINGS_MAX_HEADER_LIST_SIZE); bigger is refused.
    pub max_header_list_size: u32,
    /// Flow-control window per stream, in bytes (SETTINGS_INITIAL_WINDOW_SIZE).
    pub initial_stream_window: u32,
    /// Flow-control window per connection, in bytes.
    pub initial_connection_window: u32,
    /// Largest frame payload weft accepts (SETTINGS_MAX_FRAME_SIZE, 16384..=16777215).
    pub max_frame_size: u32,
    /// Send a PING on a client connection this often; `None`: no keepalive pings.
    pub keepalive_interval: Option<ConfigDuration>,
    /// A PING not answered within this closes the connection.
    pub keepalive_timeout: ConfigDuration,
    /// A client that has reset more streams than this, and more than half of all it
    /// opened, is sent GOAWAY(ENHANCE_YOUR_CALM) and closed (rapid-reset defence).
    pub max_reset_streams: u32,
    /// Response data one client connection may have queued in weft, handed on but not
    /// yet written to the client, across all its streams. A client that stops reading
    /// holds at most this much; its streams wait, and are reset after the idle timeout.
    pub max_send_buffer_bytes: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 256,
            max_header_list_size: 64 * 1024,
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 4 * 1024 * 1024,
            max_frame_size: 16 * 1024,
            keepalive_interval: None,
            keepalive_timeout: ConfigDuration::from_secs(20),
            max_reset_streams: 200,
            max_send_buffer_bytes: 1024 * 1024,
        }
    }
}

/// Which client-information headers weft adds to requests it forwards.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ForwardedConfig {
    /// Append the client address to `X-Forwarded-For`.
    pub x_forwarded_for: bool,
    /// Set `X-Forwarded-Proto` to the listener's scheme.
    pub x_forwarded_proto: bool,
    /// Append an RFC 7239 `Forwarded: for=...;proto=...;host=...` element.
    pub forwarded: bool,
    /// Add `x-request-id` when the request has none (an incoming one is kept).
    pub request_id: bool,
    /// Proxies in front of weft, whatever their address, that append the address they
    /// saw: the rightmost this many `X-Forwarded-For` / `Forwarded` elements are
    /// believed (Envoy's `xff_num_trusted_hops`).
    pub trusted_hops: u32,
    /// Networks (`10.0.0.0/8`, `192.0.2.7`, `fd00::/8`) of proxies whose forwarding
    /// fields are believed: a peer there vouches for the element it appended, and an
    /// element naming such a network for the one before it (nginx's
    /// `set_real_ip_from` with `real_ip_recursive`).
    pub trusted_sources: Vec<String>,
}

impl Default for ForwardedConfig {
    fn default() -> Self {
        ForwardedConfig {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            forwarded: false,
            request_id: true,
            trusted_hops: 0,
            trusted_sources: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ListenerConfig {
    /// Unique name: the key of its metrics and of reloads (a renamed listener is a new one).
    pub name: String,
    /// `IP:port` to listen on (every worker binds it with SO_REUSEPORT).
    pub address: String,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTlsConfig>,
    /// How request paths are normalised before routing and forwarding.
    pub paths: PathsConfig,
    /// A token bucket every request of the listener takes from, before its route's.
    pub rate_limit: Option<RateLimitConfig>,
    pub routes: Vec<RouteConfig>,
}

/// `[listeners.paths]`: what a request path is made into before routes see it and the
/// upstream receives it (RFC 3986 §6.2.2), so that `/%61dmin`, `//admin`, `/./admin`
/// and `/x/../admin` all meet the routes for `/admin`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Decode percent-encoded unreserved characters and remove `.` and `..` segments; a
    /// path that climbs above `/` is refused (400).
    pub normalize: bool,
    /// Also merge repeated slashes (`//a` is `/a`), as nginx does by default.
    pub merge_slashes: bool,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            normalize: true,
            merge_slashes: true,
        }
    }
}

/// TLS termination. Relative file paths are relative to the config file's directory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ListenerTlsConfig {
    /// Certificate chains with their keys (PEM; RSA, ECDSA or Ed25519). The SNI names
    /// each serves are its SAN DNS names (wildcards included); the first is the default
    /// for clients that send no SNI or an unknown one.
    pub certificates: Vec<CertificateConfig>,
    /// Protocols offered by ALPN, in preference order: "h2", "http/1.1".
    pub alpn: Vec<String>,
    /// "1.2" (default) or "1.3".
    pub min_version: String,
    /// Cipher suites to offer, by IANA name (e.g. "TLS13_AES_128_GCM_SHA256",
    /// "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"); default: rustls' safe set.
    pub cipher_suites: Option<Vec<String>>,
    /// An SNI no certificate covers: "default" (serve the first) or "reject".
    pub unknown_sni: UnknownSni,
    /// Verify client certificates.
    pub client_auth: Option<ClientAuthConfig>,
    /// Send a verified client certificate's identity upstream as
    /// `x-forwarded-client-cert: URI=...;DNS=...` (routes can match that header either
    /// way; a client-sent one is always dropped).
    pub forward_client_cert: bool,
    /// A handshake not done within this is abandoned.
    pub handshake_timeout: ConfigDuration,
}

impl Default for ListenerTlsConfig {
    fn default() -> Self {
        ListenerTlsConfig {
            certificates: Vec::new(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            min_version: "1.2".into(),
            cipher_suites: None,
            unknown_sni: UnknownSni::Default,
            client_auth: None,
            forward_client_cert: true,
            handshake_timeout: ConfigDuration::from_secs(10),
        }
    }
}

/// TLS to a cluster's endpoints. Relative paths are relative to the config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterTlsConfig {
    /// CA bundle (PEM) the upstream's certificate must chain to; default: the system
    /// bundle (/etc/ssl/certs/ca-certificates.crt).
    pub ca: Option<String>,
    /// The name sent as SNI and verified in the upstream's certificate; default: the
    /// endpoint's host name, or its IP address.
    pub sni: Option<String>,
    /// Client certificate and key, for mTLS to the upstream.
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSni {
    #[default]
    Default,
    Reject,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first (a relative path is taken from the config file's directory).
    pub cert: String,
    /// PEM private key of the leaf.
    pub key: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ClientAuthConfig {
    /// CA bundle (PEM) client certificates must chain to.
    pub ca: String,
    /// `require`: no verified certificate, no connection; `optional`: verified when sent.
    pub mode: ClientAuthMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// A verified client certificate is required.
    #[default]
    Require,
    /// Verified if presented; clients without one are served too.
    Optional,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteConfig {
    /// Name in metrics, logs and error messages (default: `LISTENER#INDEX`).
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// Forward to this cluster.
    pub cluster: Option<String>,
    /// Forward to one of these clusters, at random by weight (or by `sticky`).
    pub split: Option<Vec<SplitConfig>>,
    /// Answer here, without an upstream.
    pub direct_response: Option<DirectResponseConfig>,
    /// Answer with a redirect.
    pub redirect: Option<RedirectConfig>,
    /// Replaces the matched `path_prefix` before forwarding.
    pub prefix_rewrite: Option<String>,
    pub request_headers: HeaderEditsConfig,
    pub response_headers: HeaderEditsConfig,
    /// Overrides the cluster's `request_timeout` for this route.
    pub timeout: Option<ConfigDuration>,
    /// Protocols an HTTP/1.1 `Upgrade` may switch to on this route (default
    /// `["websocket"]`; `[]` refuses every upgrade). `h2c` is never one: an `Upgrade:
    /// h2c` is dropped and the request goes on as plain HTTP/1.1.
    pub upgrades: Option<Vec<String>>,
    /// What a request's hash key is made of, for a cluster with `lb = "ring_hash"` or
    /// `"maglev"`: the parts found, in order, combined; none found picks at random.
    pub hash_policy: Vec<HashPolicyConfig>,
    /// When and how often a failed attempt is made again (replaces the cluster's
    /// `retry` for this route).
    pub retry: Option<RetryConfig>,
    /// Delays and aborts injected into a share of the route's requests.
    pub fault: Option<FaultConfig>,
    /// A token bucket the route's requests take from; an empty one answers 429.
    pub rate_limit: Option<RateLimitConfig>,
    /// A `split` picks by this header's (or cookie's) value rather than at random: the
    /// same value lands on the same side on every worker and every weft.
    pub sticky: Option<StickyConfig>,
    /// A copy of a share of the requests goes to another cluster, its answer dropped.
    pub mirror: Option<MirrorConfig>,
}

/// `mirror = { cluster, percent, max_buffered_bytes }`: Envoy's request mirror policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// The cluster the copies go to.
    pub cluster: String,
    /// Share of requests copied, 0 to 100.
    pub percent: f64,
    /// A request body is kept this far for the copy; a longer one is not mirrored.
    pub max_buffered_bytes: u64,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            cluster: String::new(),
            percent: 100.0,
            max_buffered_bytes: 64 * 1024,
        }
    }
}

/// `sticky = { header = ".." }` or `{ cookie = ".." }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StickyConfig {
    /// The request header whose value picks the side.
    pub header: Option<String>,
    /// The cookie whose value picks the side.
    pub cookie: Option<String>,
}

/// `rate_limit = { .. }` on a route or `[listeners.rate_limit]`: Envoy's local rate
/// limit, a token bucket of `max_tokens` that gets `tokens_per_fill` back every
/// `fill_interval`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Bucket size: the burst allowed.
    pub max_tokens: u32,
    /// Default: `max_tokens`.
    pub tokens_per_fill: Option<u32>,
    /// How often `tokens_per_fill` tokens are added (at least 50ms).
    pub fill_interval: Option<ConfigDuration>,
    /// One bucket for the process, one per worker (its share), or one per connection.
    pub scope: RateLimitScope,
    /// `"none"` (one bucket), `"source_ip"`, `"peer_identity"`, or `{ header = ".." }`:
    /// a bucket per value, at most `max_keys` of them.
    pub key: RateLimitKey,
    /// Most buckets a keyed limit keeps; the least recently used half goes when full.
    pub max_keys: usize,
    /// The status of a request over the limit.
    pub status: u16,
    /// What a gRPC call over the limit gets: `"resource_exhausted"` or `"unavailable"`.
    pub grpc_status: String,
    /// `x-ratelimit-limit`, `-remaining` and `-reset` on the answers that pass too (an
    /// answer over the limit always has them): off by default, as in Envoy (they cost
    /// three fields a response, whose changing values HTTP/2 cannot index).
    pub x_ratelimit_headers: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            max_tokens: 0,
            tokens_per_fill: None,
            fill_interval: None,
            scope: RateLimitScope::Process,
            key: RateLimitKey::Named("none".into()),
            max_keys: 10_000,
            status: 429,
            grpc_status: "resource_exhausted".into(),
            x_ratelimit_headers: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// One bucket for the process, exact across workers.
    #[default]
    Process,
    /// A bucket per worker, with its share of the tokens.
    Worker,
    /// A bucket per client connection.
    Connection,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RateLimitKey {
    Named(String),
    Header { header: String },
}

/// `fault = { delay, abort, headers, max_active_faults, allow_header_control }`:
/// Envoy's HTTP fault filter, per route.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Hold requests before they are forwarded.
    pub delay: Option<FaultDelayConfig>,
    /// Answer requests with an error instead of forwarding them.
    pub abort: Option<FaultAbortConfig>,
    /// Only requests matching every one of these get faults.
    pub headers: Vec<HeaderMatchConfig>,
    /// Faults in progress at once, all workers together; past it none is injected.
    pub max_active_faults: Option<u32>,
    /// `x-weft-fault-*` request headers may ask for faults (within the configured
    /// percentages): for test clients only, never on a route the public reaches.
    pub allow_header_control: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultDelayConfig {
    /// How long a delayed request waits.
    pub fixed: Option<ConfigDuration>,
    /// Share of requests delayed, 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultAbortConfig {
    /// The status of an aborted request (200-599).
    pub http_status: Option<u16>,
    /// For gRPC calls: a Trailers-Only answer with this grpc-status (HTTP/1.1 and
    /// other requests get `http_status`, or 503).
    pub grpc_status: Option<u16>,
    /// Share of requests aborted, 0 to 100.
    pub percent: f64,
}

/// `retry = { ... }` on a route, or `[clusters.NAME.retry]` for the routes to a cluster
/// that set none: Envoy's retry policy, with its names and defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// `connect-failure`, `refused-stream`, `reset`, `gateway-error`, `5xx`,
    /// `retriable-4xx` (409), `retriable-status-codes` (those of
    /// `retriable_status_codes`).
    pub retry_on: Vec<String>,
    /// Statuses `retriable-status-codes` retries.
    pub retriable_status_codes: Vec<u16>,
    /// gRPC statuses of a Trailers-Only answer: `cancelled`, `deadline-exceeded`,
    /// `internal`, `resource-exhausted`, `unavailable`.
    pub retry_grpc_on: Vec<String>,
    /// Attempts after the first (gRPC calls: at most 5 attempts in all).
    pub num_retries: u32,
    /// Each attempt's time for its response head; the route's timeout still covers all.
    pub per_try_timeout: Option<ConfigDuration>,
    /// Fully jittered exponential backoff between attempts.
    pub backoff: BackoffConfig,
    /// A `Retry-After` (seconds) longer than this is not waited for: no retry.
    pub retry_after_max: ConfigDuration,
    /// A request body is kept this far for a retry; a longer one is not retried.
    pub max_buffered_bytes: u64,
    /// Retry answers (a status, a reset) of methods that are not idempotent too.
    pub retry_non_idempotent: bool,
    /// Send `x-weft-attempt-count` upstream and back to the client (off by default, as
    /// Envoy's `include_request_attempt_count`).
    pub attempt_count_header: bool,
    /// A retry goes to another endpoint than the ones that failed, where there is one.
    pub previous_hosts: bool,
    /// An abort the route's `fault` injected counts as the first attempt's answer, and
    /// is retried like one (the retry goes upstream). Off: injected aborts stand.
    pub retry_injected: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            retry_on: Vec::new(),
            retriable_status_codes: Vec::new(),
            retry_grpc_on: Vec::new(),
            num_retries: 1,
            per_try_timeout: None,
            backoff: BackoffConfig::default(),
            retry_after_max: ConfigDuration(std::time::Duration::from_secs(300)),
            max_buffered_bytes: 64 * 1024,
            retry_non_idempotent: false,
            attempt_count_header: false,
            previous_hosts: true,
            retry_injected: false,
        }
    }
}

/// Retry N waits a random time in `[0, min((2^N - 1) * base, max))`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// First backoff ceiling; each retry doubles it (full jitter).
    pub base: ConfigDuration,
    /// Largest backoff ceiling.
    pub max: ConfigDuration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: ConfigDuration(std::time::Duration::from_millis(25)),
            max: ConfigDuration(std::time::Duration::from_millis(250)),
        }
    }
}

/// `[clusters.NAME.retry_budget]`: how many retries the cluster takes, whatever the
/// routes ask (in place of `circuit_breakers.max_retries`, as in Envoy).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// `concurrency` (Envoy: retries in flight as a share of requests in flight) or `ratio` (Linkerd: retries per request over `ttl`).
    pub kind: RetryBudgetKind,
    /// `concurrency`: retries in flight, as a percentage of requests in flight...
    pub percent: f64,
    /// ... but at least this many.
    pub min_concurrency: u32,
    /// `ratio`: retries per request over the last `ttl`...
    pub ratio: f64,
    /// ... plus this many a second.
    pub min_per_sec: u32,
    /// `ratio`: the window requests and retries are counted over.
    pub ttl: ConfigDuration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            kind: RetryBudgetKind::Concurrency,
            percent: 20.0,
            min_concurrency: 3,
            ratio: 0.2,
            min_per_sec: 10,
            ttl: ConfigDuration(std::time::Duration::from_secs(10)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryBudgetKind {
    /// Envoy's: retries in flight at most `percent` of requests in flight.
    #[default]
    Concurrency,
    /// Linkerd's: retries at most `ratio` of requests, plus `min_per_sec`.
    Ratio,
}

/// One part of a request's hash key: exactly one of `header`, `cookie`, `source_ip`,
/// `query_parameter`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashPolicyConfig {
    /// Hash this request header's value.
    pub header: Option<String>,
    /// Hash this cookie (made with `ttl` when the request has none).
    pub cookie: Option<CookieHashConfig>,
    /// Hash the client's address.
    pub source_ip: bool,
    /// Hash this query parameter's value.
    pub query_parameter: Option<String>,
    /// With a key from this part, the later ones are not looked at.
    pub terminal: bool,
}

/// `cookie = { name, ttl, path }`: with `ttl`, a request without the cookie gets one
/// made for it, set on the response.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CookieHashConfig {
    /// The cookie's name.
    pub name: String,
    /// Set the cookie with this Max-Age when the request has none.
    pub ttl: Option<ConfigDuration>,
    /// The Path of a cookie weft sets.
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct MatchConfig {
    /// Exact host (`api.example.com`) or suffix wildcard (`*.example.com`); port ignored.
    pub host: Option<String>,
    /// The exact path.
    pub path: Option<String>,
    /// A path prefix (`/api/` matches `/api/x`).
    pub path_prefix: Option<String>,
    /// A regular expression the whole path must match.
    pub path_regex: Option<String>,
    /// The request method (`GET`, `POST`, ...).
    pub method: Option<String>,
    /// Header conditions, all of which must hold.
    pub headers: Vec<HeaderMatchConfig>,
    /// gRPC requests (`content-type: application/grpc...`) for this service
    /// (`package.Service`), i.e. paths under `/package.Service/`.
    pub grpc_service: Option<String>,
    /// With `grpc_service`: only this method, i.e. the path `/package.Service/Method`.
    pub grpc_method: Option<String>,
    /// Cookie conditions (`cookie = { name = "canary", exact = "always" }`, or a list).
    pub cookie: OneOrMany<ValueMatchConfig>,
    /// Query parameter conditions, as sent (not percent-decoded).
    pub query: OneOrMany<ValueMatchConfig>,
}

/// A named value's condition: `exact`, `prefix` or `regex` (one of them), or present
/// with none; `invert` makes it hold when the condition does not.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValueMatchConfig {
    /// The cookie's or query parameter's name.
    pub name: String,
    /// The exact value.
    pub exact: Option<String>,
    /// A prefix of the value.
    pub prefix: Option<String>,
    /// A regular expression the whole value must match.
    pub regex: Option<String>,
    /// The condition holds when the value does not match (or is absent).
    pub invert: bool,
}

/// One table, or a list of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(t) => std::slice::from_ref(t),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HeaderMatchConfig {
    /// The header's name (case-insensitive).
    pub name: String,
    /// Exact value. With neither `value` nor `regex`, the header need only be present.
    pub value: Option<String>,
    /// A regular expression the whole value must match.
    pub regex: Option<String>,
    /// Invert: the route matches when the header condition does NOT hold.
    pub invert: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SplitConfig {
    /// A cluster of the split.
    pub cluster: String,
    /// Its share, relative to the other members' weights.
    pub weight: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DirectResponseConfig {
    /// The answer's status (200-599).
    pub status: u16,
    /// The answer's body.
    pub body: String,
    /// The answer's `content-type`.
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RedirectConfig {
    /// 301, 302, 303, 307 or 308 (default 301).
    pub status: Option<u16>,
    /// The `Location`'s scheme (default: the request's).
    pub scheme: Option<String>,
    /// The `Location`'s host (default: the request's).
    pub host: Option<String>,
    /// Replaces the whole path.
    pub path: Option<String>,
    /// Replaces the matched `path_prefix` (like `prefix_rewrite`, for the Location).
    pub prefix_rewrite: Option<String>,
    /// Drop the request's query from the `Location`.
    pub strip_query: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HeaderEditsConfig {
    /// Headers to set (replacing any of the same name).
    pub add: BTreeMap<String, String>,
    /// Header names removed.
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices over requests in flight, weight-aware.
    LeastRequest,
    /// Power of two choices over peak-EWMA latency x requests in flight (Linkerd's).
    P2cEwma,
    /// Ketama consistent hashing on the route's `hash_policy`.
    RingHash,
    /// Maglev consistent hashing on the route's `hash_policy`.
    Maglev,
}

impl LbPolicy {
    /// The config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::Random => "random",
            LbPolicy::LeastRequest => "least_request",
            LbPolicy::P2cEwma => "p2c_ewma",
            LbPolicy::RingHash => "ring_hash",
            LbPolicy::Maglev => "maglev",
        }
    }

    /// Picks by a request's hash key (`hash_policy`).
    pub fn hashes(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }
}

/// How weft talks to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c): multiplexed connections shared by a worker's
    /// requests. gRPC upstreams need this.
    Http2,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// The upstream instances: `"host:port"` (a name is resolved when the config is compiled) or `{ address, weight }`.
    pub endpoints: Vec<EndpointConfig>,
    /// HTTP/1.1 or HTTP/2 (h2c) to the upstreams; gRPC needs `http2`.
    pub protocol: UpstreamProtocol,
    /// Connect to the endpoints over TLS.
    pub tls: Option<ClusterTlsConfig>,
    /// Discover the endpoints (a watched file, or Consul); `endpoints` then serve only
    /// until the first answer.
    pub discovery: Option<DiscoveryConfig>,
    /// How an endpoint is picked.
    pub lb: LbPolicy,
    /// Longest wait for a TCP (and TLS) connect; then 504.
    pub connect_timeout: ConfigDuration,
    /// Time from sending the request until the response head has arrived.
    pub request_timeout: ConfigDuration,
    /// A response body that stalls this long between reads aborts the exchange.
    pub read_timeout: ConfigDuration,
    pub pool: PoolConfig,
    pub circuit_breakers: CircuitBreakersConfig,
    /// Active health checks of every endpoint, from one checker for the process.
    pub health_check: Option<HealthCheckConfig>,
    /// Below this percentage of eligible (healthy) endpoints, balance over all of them
    /// (Envoy's panic threshold); 0 never does, and answers 503 when none is eligible.
    pub healthy_panic_threshold: u8,
    /// Passive health: endpoints whose answers fail are ejected for a while.
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// The retry policy of routes to this cluster that set none.
    pub retry: Option<RetryConfig>,
    /// Caps retries across the cluster, in place of `circuit_breakers.max_retries`.
    pub retry_budget: Option<RetryBudgetConfig>,
}

/// `[clusters.NAME.outlier_detection]`: Envoy's detectors, with its defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// 5xx answers (and, unless split, local-origin failures) in a row that eject.
    pub consecutive_5xx: u32,
    /// Percentage of such detections that eject (the rest are only counted).
    pub enforcing_consecutive_5xx: u32,
    /// 502/503/504 answers (and, unless split, local-origin failures) in a row.
    pub consecutive_gateway_failure: u32,
    /// Envoy's default: 0, detected and counted but not ejected.
    pub enforcing_consecutive_gateway_failure: u32,
    /// Count local-origin failures (connect refused or timed out, reset, response
    /// timeout) apart from the answers the application gives.
    pub split_external_local_origin_errors: bool,
    /// With the split: local-origin failures in a row that eject.
    pub consecutive_local_origin_failure: u32,
    /// Percentage of local-origin ejections carried out.
    pub enforcing_consecutive_local_origin_failure: u32,
    /// How often ejections are reviewed and the success rates judged.
    pub interval: ConfigDuration,
    /// An ejection lasts this long times the ejections in a row.
    pub base_ejection_time: ConfigDuration,
    /// ... but never longer than this (or `base_ejection_time`, if that is longer).
    pub max_ejection_time: ConfigDuration,
    /// Up to this much longer, at random.
    pub max_ejection_time_jitter: ConfigDuration,
    /// At most this percentage of the cluster's endpoints ejected at once.
    pub max_ejection_percent: u32,
    /// One endpoint may be ejected whatever `max_ejection_percent` allows.
    pub always_eject_one_host: bool,
    /// A passing active health check returns an ejected endpoint at once.
    pub successful_active_health_check_uneject_host: bool,
    pub success_rate: SuccessRateConfig,
    pub failure_percentage: FailurePercentageConfig,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        OutlierDetectionConfig {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            interval: ConfigDuration::from_secs(10),
            base_ejection_time: ConfigDuration::from_secs(30),
            max_ejection_time: ConfigDuration::from_secs(300),
            max_ejection_time_jitter: ConfigDuration::from_secs(0),
            max_ejection_percent: 10,
            always_eject_one_host: true,
            successful_active_health_check_uneject_host: true,
            success_rate: SuccessRateConfig::default(),
            failure_percentage: FailurePercentageConfig::default(),
        }
    }
}

/// Success-rate ejection: an endpoint whose success rate over an interval is below the
/// mean minus `stdev_factor` standard deviations of its cluster's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuccessRateConfig {
    /// Endpoints with `request_volume` answers in the interval needed to judge any.
    pub minimum_hosts: u32,
    /// Answers an endpoint needs in an interval to be judged.
    pub request_volume: u32,
    /// Ejected below the mean success rate minus this many standard deviations.
    pub stdev_factor: f64,
    /// Percentage of success-rate ejections carried out.
    pub enforcing: u32,
}

impl Default for SuccessRateConfig {
    fn default() -> Self {
        SuccessRateConfig {
            minimum_hosts: 5,
            request_volume: 100,
            stdev_factor: 1.9,
            enforcing: 100,
        }
    }
}

/// Failure-percentage ejection: an endpoint failing `threshold` percent of its answers
/// in an interval (off by default: `enforcing = 0`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailurePercentageConfig {
    /// Ejected at this failure percentage or above.
    pub threshold: u32,
    /// Endpoints with enough answers the cluster needs before any is judged.
    pub minimum_hosts: u32,
    /// Answers an endpoint needs in an interval to be judged.
    pub request_volume: u32,
    /// Percentage of failure-percentage ejections carried out.
    pub enforcing: u32,
}

impl Default for FailurePercentageConfig {
    fn default() -> Self {
        FailurePercentageConfig {
            threshold: 85,
            minimum_hosts: 5,
            request_volume: 50,
            enforcing: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
    Grpc,
}

/// `[clusters.NAME.health_check]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` (a GET of `path`), `tcp` (connect, or send/receive bytes) or `grpc` (grpc.health.v1).
    pub kind: HealthCheckKind,
    /// http: the path asked for (required).
    pub path: Option<String>,
    /// http: the Host sent (default: the cluster's name); grpc: the `:authority`.
    pub host: Option<String>,
    /// http: healthy statuses, as `[start, end)` ranges (default `[[200, 201]]`).
    pub expected_statuses: Vec<[u16; 2]>,
    /// grpc: the service name in the HealthCheckRequest (empty: the whole server).
    pub grpc_service: String,
    /// tcp: bytes to send after connecting (empty: connect only).
    pub send: String,
    /// tcp: bytes the answer must contain.
    pub receive: String,
    /// Time from the start of one check of a healthy endpoint to the start of the next.
    pub interval: ConfigDuration,
    /// The same for an unhealthy endpoint (default: `interval`).
    pub unhealthy_interval: Option<ConfigDuration>,
    /// A check not answered within this fails.
    pub timeout: ConfigDuration,
    /// Passes in a row that make a failed endpoint healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// The first check of an endpoint waits up to this long, at random.
    pub initial_jitter: ConfigDuration,
    /// Each wait is longer by up to this percentage of the interval, at random.
    pub interval_jitter_percent: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Http,
            path: None,
            host: None,
            expected_statuses: vec![[200, 201]],
            grpc_service: String::new(),
            send: String::new(),
            receive: String::new(),
            interval: ConfigDuration::from_secs(5),
            unhealthy_interval: None,
            timeout: ConfigDuration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            initial_jitter: ConfigDuration::from_secs(0),
            interval_jitter_percent: 0,
        }
    }
}

/// Limits on what one cluster takes at once, for the whole process (Envoy's circuit
/// breakers; its defaults).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakersConfig {
    /// Upstream connections open to the cluster (in use, pooled or carrying HTTP/2
    /// streams), all workers together.
    pub max_connections: u32,
    /// Requests waiting for a new upstream connection to be made.
    pub max_pending_requests: u32,
    /// Requests in flight to the cluster; one more is answered 503 (overflow).
    pub max_requests: u32,
    /// Attempts made again (a retry) in flight at once; past it the failed attempt's
    /// answer stands.
    pub max_retries: u32,
}

impl Default for CircuitBreakersConfig {
    fn default() -> Self {
        CircuitBreakersConfig {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            endpoints: Vec::new(),
            protocol: UpstreamProtocol::default(),
            tls: None,
            discovery: None,
            lb: LbPolicy::default(),
            connect_timeout: ConfigDuration::from_secs(2),
            request_timeout: ConfigDuration::from_secs(15),
            read_timeout: ConfigDuration::from_secs(60),
            pool: PoolConfig::default(),
            circuit_breakers: CircuitBreakersConfig::default(),
            health_check: None,
            healthy_panic_threshold: 50,
            outlier_detection: None,
            retry: None,
            retry_budget: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct PoolConfig {
    /// Idle keep-alive connections kept per endpoint, per worker.
    pub max_idle: usize,
    /// An idle pooled upstream connection is closed after this.
    pub idle_timeout: ConfigDuration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle: 1024,
            idle_timeout: ConfigDuration::from_secs(30),
        }
    }
}

/// `"127.0.0.1:9000"` or `{ address = "127.0.0.1:9001", weight = 3 }`; in endpoint
/// files also `{ address = "10.0.0.5", port = 9001, tags = [..], meta = {..} }`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndpointConfig {
    pub address: String,
    pub weight: u32,
    /// Labels carried for subset routing; not used for balancing.
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    address: String,
    /// With `port`, `address` is the host alone.
    port: Option<u16>,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;
        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = EndpointConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { address = \"host:port\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointConfig, E> {
                Ok(EndpointConfig {
                    address: v.to_owned(),
                    weight: 1,
                    ..EndpointConfig::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointConfig, A::Error> {
                let t = EndpointTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let address = match t.port {
                    Some(port) if t.address.contains(':') => format!("[{}]:{port}", t.address),
                    Some(port) => format!("{}:{port}", t.address),
                    None => t.address,
                };
                Ok(EndpointConfig {
                    address,
                    weight: t.weight,
                    tags: t.tags,
                    meta: t.meta,
                })
            }
        }
        deserializer.deserialize_any(EndpointVisitor)
    }
}

/// `weft sidecar`: one inbound listener in front of the local app, one outbound
/// listener the app calls, routed by `Host` to the cluster of that name.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SidecarConfig {
    pub inbound: SidecarInbound,
    pub outbound: SidecarOutbound,
    /// Register the local service with the Consul agent (`[consul]`) on start, and
    /// deregister it when draining.
    pub register: Option<RegisterConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RegisterConfig {
    /// The service name this instance registers as.
    pub service: String,
    /// Default: `SERVICE-INBOUNDPORT`.
    pub id: Option<String>,
    /// The address other sidecars reach this one at; default: the inbound listener's
    /// (which then must be a specific IP, not 0.0.0.0).
    pub address: Option<String>,
    /// Tags of the registration.
    pub tags: Vec<String>,
    /// Metadata of the registration (shown redacted on /config).
    pub meta: BTreeMap<String, String>,
    /// The agent checks the inbound listener over TCP this often.
    pub check_interval: ConfigDuration,
    /// A service critical this long is deregistered by the agent.
    pub deregister_critical_after: ConfigDuration,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            service: String::new(),
            id: None,
            address: None,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            check_interval: ConfigDuration::from_secs(10),
            deregister_critical_after: ConfigDuration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SidecarInbound {
    /// Where other sidecars call this instance (`IP:port`).
    pub address: String,
    /// The local application instance, `host:port`.
    pub app: String,
    /// How the sidecar talks to the app (`"http2"` for a gRPC app).
    pub app_protocol: UpstreamProtocol,
    /// TLS on the inbound listener (mTLS between sidecars: `client_auth` with the mesh
    /// CA, and the peers' clusters with `tls.cert`/`tls.key`).
    pub tls: Option<ListenerTlsConfig>,
}

impl Default for SidecarInbound {
    fn default() -> Self {
        SidecarInbound {
            address: "0.0.0.0:15006".into(),
            app: String::new(),
            app_protocol: UpstreamProtocol::default(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SidecarOutbound {
    /// Where the app calls the mesh (loopback).
    pub address: String,
    /// Routes tried before the implicit host -> cluster routes.
    pub routes: Vec<RouteConfig>,
}

impl Default for SidecarOutbound {
    fn default() -> Self {
        SidecarOutbound {
            address: "127.0.0.1:15001".into(),
            routes: Vec::new(),
        }
    }
}
