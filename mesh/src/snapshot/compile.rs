//! Config -> Snapshot, collecting every semantic error with the key it points at.
//!
//! Runs on the control thread (startup, `weft check`, reload), never on a worker.
//! Endpoint host names are resolved here, once, so the request path only ever sees
//! socket addresses.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use regex::Regex;

use super::*;
use crate::config::{
    ClusterConfig, ConfigError, ConfigErrors, EndpointConfig, HeaderEditsConfig, LbPolicy,
    ListenerConfig, LoadedConfig, MatchConfig, PoolConfig, RouteConfig,
};

/// Implicit cluster that a sidecar's inbound listener forwards to.
pub const SIDECAR_APP_CLUSTER: &str = "local_app";

struct Diagnostics<'a> {
    file: &'a std::path::Path,
    errors: Vec<ConfigError>,
    /// What serves, but not safely: printed by `weft check`, logged at start and
    /// reload.
    warnings: Vec<ConfigError>,
}

impl Diagnostics<'_> {
    fn new(file: &std::path::Path) -> Diagnostics<'_> {
        Diagnostics {
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn error(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(ConfigError::new(self.file, path, problem));
    }

    fn warn(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.warnings
            .push(ConfigError::new(self.file, path, problem));
    }
}

/// Validates `loaded` and compiles it. The returned snapshot has version 0; the
/// publisher stamps the real one.
pub fn compile(loaded: &LoadedConfig) -> Result<Snapshot, ConfigErrors> {
    compile_with(loaded, &Discovered::new())
}

/// Like `compile`, with the endpoints discovery found for some clusters (by name) in
/// place of the ones the file lists.
pub fn compile_with(
    loaded: &LoadedConfig,
    discovered: &Discovered,
) -> Result<Snapshot, ConfigErrors> {
    let cfg = &loaded.config;
    let mut d = Diagnostics::new(&loaded.file);

    let runtime = compile_runtime(cfg, &mut d);
    let admin = compile_admin(loaded, &mut d);
    check_http(&cfg.http, &mut d);
    let trusted_proxies = compile_trusted_proxies(&cfg.http.forwarded, &mut d);
    check_http2(&cfg.http2, &mut d);
    if cfg.consul.max_response_bytes < 1024 {
        d.error("consul.max_response_bytes", "must be at least 1024");
    }
    if cfg.consul.max_entries == 0 {
        d.error("consul.max_entries", "must be at least 1");
    }

    // Clusters first: routes refer to them by index.
    // Borrowed from the file; only the sidecar's implicit entries are owned.
    let mut cluster_cfgs: Vec<(String, Cow<'_, ClusterConfig>, String)> = cfg
        .clusters
        .iter()
        .map(|(n, c)| (n.clone(), Cow::Borrowed(c), format!("clusters.{n}")))
        .collect();
    let mut listener_cfgs: Vec<(Cow<'_, ListenerConfig>, String)> = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (Cow::Borrowed(l), format!("listeners[{i}]")))
        .collect();

    match (loaded.role, &cfg.sidecar) {
        (Role::Ingress, Some(_)) => d.error(
            "sidecar",
            "a [sidecar] section is only read by `weft sidecar`",
        ),
        (Role::Sidecar, None) => d.error(
            "sidecar",
            "`weft sidecar` needs a [sidecar] section (inbound.app at least)",
        ),
        (Role::Sidecar, Some(sc)) => {
            if cfg.clusters.contains_key(SIDECAR_APP_CLUSTER) {
                d.error(
                    format!("clusters.{SIDECAR_APP_CLUSTER}"),
                    "this cluster name is reserved for the sidecar's local app",
                );
            }
            if sc.inbound.app.is_empty() {
                d.error(
                    "sidecar.inbound.app",
                    "must name the local app, e.g. \"127.0.0.1:8080\"",
                );
            }
            let app = ClusterConfig {
                endpoints: vec![EndpointConfig {
                    address: sc.inbound.app.clone(),
                    weight: 1,
                    ..EndpointConfig::default()
                }],
                protocol: sc.inbound.app_protocol,
                ..ClusterConfig::default()
            };
            cluster_cfgs.push((
                SIDECAR_APP_CLUSTER.to_owned(),
                Cow::Owned(app),
                "sidecar.inbound.app".to_owned(),
            ));
            let inbound = ListenerConfig {
                name: "inbound".into(),
                address: sc.inbound.address.clone(),
                tls: sc.inbound.tls.clone(),
                paths: Default::default(),
                rate_limit: None,
                routes: vec![RouteConfig {
                    name: Some("inbound".into()),
                    cluster: Some(SIDECAR_APP_CLUSTER.into()),
                    ..RouteConfig::default()
                }],
            };
            listener_cfgs.push((Cow::Owned(inbound), "sidecar.inbound".into()));
            // Outbound: the operator's routes first, then one route per cluster,
            // matched by the service name the app puts in `Host`.
            let mut routes = sc.outbound.routes.clone();
            for name in cfg.clusters.keys() {
                routes.push(RouteConfig {
                    name: Some(format!("outbound:{name}")),
                    matcher: MatchConfig {
                        host: Some(name.clone()),
                        ..MatchConfig::default()
                    },
                    cluster: Some(name.clone()),
                    ..RouteConfig::default()
                });
            }
            listener_cfgs.push((
                Cow::Owned(ListenerConfig {
                    name: "outbound".into(),
                    address: sc.outbound.address.clone(),
                    tls: None,
                    paths: Default::default(),
                    rate_limit: None,
                    routes,
                }),
                "sidecar.outbound".into(),
            ));
        }
        (Role::Ingress, None) => {}
    }

    // Before any file is used: one that changes in between is seen as changed by the
    // next reload, never missed.
    let files_digest =
        referenced_files_digest(&listener_cfgs, &cluster_cfgs, &cfg.consul, &loaded.file);
    let clusters: Vec<Cluster> = cluster_cfgs
        .iter()
        .map(|(name, c, path)| compile_cluster(name, c, path, discovered.get(name), &mut d))
        .collect();
    let cluster_ids: BTreeMap<&str, ClusterId> = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();

    if listener_cfgs.is_empty() {
        d.error(
            "listeners",
            "no listener is configured: add at least one [[listeners]]",
        );
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut listeners = Vec::new();
    for (l, path) in &listener_cfgs {
        if l.name.is_empty() {
            d.error(
                format!("{path}.name"),
                "missing: every listener needs a name",
            );
        } else if !names.insert(l.name.clone()) {
            d.error(
                format!("{path}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        let address = parse_listen_address(&l.address, &format!("{path}.address"), &mut d);
        if let Some(a) = address {
            if !addresses.insert(a) {
                d.error(
                    format!("{path}.address"),
                    format!("{a} is already used by another listener"),
                );
            }
            if a == admin.address || admin.private == Some(AdminBind::Tcp(a)) {
                d.error(
                    format!("{path}.address"),
                    format!("{a} is an admin address"),
                );
            }
        }
        let routes_path = if path.starts_with("sidecar.outbound") {
            "sidecar.outbound".to_owned()
        } else {
            path.clone()
        };
        let routes: Vec<Arc<Route>> = l
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Arc::new(compile_route(
                    &l.name,
                    i,
                    r,
                    &format!("{routes_path}.routes[{i}]"),
                    &cluster_ids,
                    &mut d,
                ))
            })
            .collect();
        let tls = l.tls.as_ref().and_then(|t| {
            let base = loaded.file.parent().unwrap_or(std::path::Path::new("."));
            tls::compile_listener_tls(t, base, &format!("{path}.tls"), &mut |k, p| d.error(k, p))
        });
        let role = if path == "sidecar.inbound" {
            ListenerRole::SidecarInbound
        } else if path == "sidecar.outbound" {
            ListenerRole::SidecarOutbound
        } else {
            ListenerRole::Ingress
        };
        if let Some(address) = address {
            listeners.push(Listener {
                name: l.name.clone(),
                address,
                role,
                tls,
                paths: PathPolicy {
                    normalize: l.paths.normalize,
                    merge_slashes: l.paths.normalize && l.paths.merge_slashes,
                },
                rate_limit: l.rate_limit.as_ref().map(|r| {
                    rate_limit::compile(r, &format!("{path}.rate_limit"), &mut |k, p| d.error(k, p))
                }),
                routes: RouteTable::new(routes),
            });
        }
    }

    let consul_tls = cfg.consul.tls.as_ref().and_then(|t| {
        let host = cfg
            .consul
            .address
            .rsplit_once(':')
            .map_or(cfg.consul.address.as_str(), |(h, _)| h);
        let base = loaded.file.parent().unwrap_or(std::path::Path::new("."));
        tls::compile_cluster_tls(
            t,
            crate::config::UpstreamProtocol::Http1,
            host,
            base,
            "consul.tls",
            &mut |k, p| d.error(k, p),
        )
        .map(Arc::new)
    });
    let registration = cfg
        .sidecar
        .as_ref()
        .filter(|_| loaded.role == Role::Sidecar)
        .and_then(|sc| {
            let r = sc.register.as_ref()?;
            compile_registration(r, &sc.inbound.address, &mut d)
        });
    for ((_, _, path), cluster) in cluster_cfgs.iter().zip(&clusters) {
        let from_discovery = cluster.discovery.is_some() && discovered.contains_key(&cluster.name);
        let weft = (&listeners[..], &admin);
        check_endpoints(
            &cluster.endpoints,
            weft,
            cluster,
            from_discovery,
            path,
            &mut d,
        );
    }
    warn_plain_text(cfg, &listeners, loaded.role, &mut d);
    if !d.errors.is_empty() || !loaded.unknown_keys.is_empty() {
        let mut all = loaded.unknown_keys.clone();
        all.append(&mut d.errors);
        return Err(ConfigErrors(all).located(&loaded.source_text));
    }
    crate::config::locate_all(&mut d.warnings, &loaded.source_text);
    let config_hash = fnv1a(loaded.source_text.as_bytes()) ^ files_digest.rotate_left(17);
    Ok(Snapshot {
        version: 0,
        config_hash,
        content_hash: config_hash ^ discovered_hash(discovered),
        registration,
        consul: ConsulSettings {
            address: cfg.consul.address.clone(),
            token: cfg.consul.token.clone(),
            token_file: cfg
                .consul
                .token_file
                .as_ref()
                .map(|f| resolve_relative(&loaded.file, f)),
            wait: cfg.consul.wait.0,
            tls: consul_tls,
            max_response_bytes: cfg.consul.max_response_bytes,
            max_entries: cfg.consul.max_entries,
        },
        role: loaded.role,
        source_file: loaded.file.clone(),
        source_text: Arc::from(loaded.source_text.as_str()),
        runtime,
        admin,
        http: cfg.http.clone(),
        trusted_proxies,
        warnings: d.warnings,
        http2: cfg.http2.clone(),
        listeners: listeners.into(),
        clusters: clusters.into_iter().map(Arc::new).collect(),
    })
}

/// Which of weft's own addresses `endpoint` is, if it is one: a listener (by name) or
/// the admin listener. A listener on an unspecified address (`0.0.0.0`, `[::]`) is
/// reached on loopback at its port too.
fn own_address(
    listeners: &[Listener],
    admin: &AdminSettings,
    endpoint: SocketAddr,
) -> Option<String> {
    let reaches = |bound: SocketAddr| {
        bound.port() == endpoint.port()
            && (bound.ip() == endpoint.ip()
                || (bound.ip().is_unspecified()
                    && (endpoint.ip().is_loopback() || endpoint.ip().is_unspecified())))
    };
    if let Some(l) = listeners.iter().find(|l| reaches(l.address)) {
        return Some(format!("weft's own listener `{}`", l.name));
    }
    let private = match admin.private {
        Some(AdminBind::Tcp(a)) => reaches(a),
        _ => false,
    };
    (reaches(admin.address) || private).then(|| "weft's admin listener".to_owned())
}

fn compile_health_check(
    h: &crate::config::HealthCheckConfig,
    cluster: &str,
    path: &str,
    d: &mut Diagnostics,
) -> Option<HealthCheck> {
    use crate::config::HealthCheckKind;
    let key = |k: &str| format!("{path}.health_check.{k}");
    for (k, v) in [("interval", h.interval), ("timeout", h.timeout)] {
        if v.0.is_zero() {
            d.error(key(k), "must be greater than 0");
        }
    }
    if h.unhealthy_interval.is_some_and(|v| v.0.is_zero()) {
        d.error(key("unhealthy_interval"), "must be greater than 0");
    }
    for (k, v) in [
        ("healthy_threshold", h.healthy_threshold),
        ("unhealthy_threshold", h.unhealthy_threshold),
    ] {
        if v == 0 {
            d.error(key(k), "must be at least 1");
        }
    }
    if h.interval_jitter_percent > 100 {
        d.error(key("interval_jitter_percent"), "is a percentage: 0 to 100");
    }
    let host = h.host.clone().unwrap_or_else(|| cluster.to_owned());
    let probe = match h.kind {
        HealthCheckKind::Http => {
            let Some(p) = &h.path else {
                d.error(key("path"), "an http check needs a path, as \"/healthz\"");
                return None;
            };
            check_path_literal(p, &key("path"), d);
            if !is_valid_host(&host) {
                d.error(key("host"), format!("`{host}` is not a host name"));
            }
            if h.expected_statuses.is_empty() {
                d.error(
                    key("expected_statuses"),
                    "needs at least one [start, end) range",
                );
            }
            for (i, [start, end]) in h.expected_statuses.iter().enumerate() {
                if !(100..600).contains(start) || !(101..=600).contains(end) || start >= end {
                    d.error(
                        format!("{}[{i}]", key("expected_statuses")),
                        "a range is [start, end) within [100, 600), start before end",
                    );
                }
            }
            HealthProbe::Http {
                path: p.clone(),
                host,
                expected: h.expected_statuses.iter().map(|[a, b]| (*a, *b)).collect(),
            }
        }
        HealthCheckKind::Tcp => HealthProbe::Tcp {
            send: h.send.as_bytes().to_vec(),
            receive: h.receive.as_bytes().to_vec(),
        },
        HealthCheckKind::Grpc => {
            if !is_valid_host(&host) {
                d.error(key("host"), format!("`{host}` is not a host name"));
            }
            HealthProbe::Grpc {
                service: h.grpc_service.clone(),
                authority: host,
            }
        }
    };
    Some(HealthCheck {
        probe,
        interval: h.interval.0,
        unhealthy_interval: h.unhealthy_interval.unwrap_or(h.interval).0,
        timeout: h.timeout.0,
        healthy_threshold: h.healthy_threshold.max(1),
        unhealthy_threshold: h.unhealthy_threshold.max(1),
        initial_jitter: h.initial_jitter.0,
        interval_jitter_percent: h.interval_jitter_percent.min(100),
    })
}

/// A Host value a check may send: a reg-name or IP literal, with an optional port.
fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~[]:".contains(&b))
}

fn compile_outlier_detection(
    o: &crate::config::OutlierDetectionConfig,
    path: &str,
    d: &mut Diagnostics,
) -> OutlierDetection {
    use health::{Detector, FailurePercentage, SuccessRate};
    let key = |k: &str| format!("{path}.outlier_detection.{k}");
    let mut detector =
        |threshold_key: &str, threshold: u32, enforcing_key: &str, enforcing: u32| {
            if threshold == 0 {
                d.error(key(threshold_key), "must be at least 1");
            }
            if enforcing > 100 {
                d.error(key(enforcing_key), "is a percentage: 0 to 100");
            }
            Detector {
                threshold: threshold.max(1),
                enforcing: enforcing.min(100),
            }
        };
    let consecutive_5xx = detector(
        "consecutive_5xx",
        o.consecutive_5xx,
        "enforcing_consecutive_5xx",
        o.enforcing_consecutive_5xx,
    );
    let consecutive_gateway = detector(
        "consecutive_gateway_failure",
        o.consecutive_gateway_failure,
        "enforcing_consecutive_gateway_failure",
        o.enforcing_consecutive_gateway_failure,
    );
    let local = detector(
        "consecutive_local_origin_failure",
        o.consecutive_local_origin_failure,
        "enforcing_consecutive_local_origin_failure",
        o.enforcing_consecutive_local_origin_failure,
    );
    for (k, v) in [
        ("interval", o.interval),
        ("base_ejection_time", o.base_ejection_time),
        ("max_ejection_time", o.max_ejection_time),
    ] {
        if v.0.is_zero() {
            d.error(key(k), "must be greater than 0");
        }
    }
    let sr = &o.success_rate;
    let fp = &o.failure_percentage;
    for (k, v) in [
        ("max_ejection_percent", o.max_ejection_percent),
        ("success_rate.enforcing", sr.enforcing),
        ("failure_percentage.enforcing", fp.enforcing),
        ("failure_percentage.threshold", fp.threshold),
    ] {
        if v > 100 {
            d.error(key(k), "is a percentage: 0 to 100");
        }
    }
    for (k, v) in [
        ("success_rate.minimum_hosts", sr.minimum_hosts),
        ("success_rate.request_volume", sr.request_volume),
        ("failure_percentage.minimum_hosts", fp.minimum_hosts),
        ("failure_percentage.request_volume", fp.request_volume),
    ] {
        if v == 0 {
            d.error(key(k), "must be at least 1");
        }
    }
    if !(sr.stdev_factor.is_finite() && sr.stdev_factor >= 0.0) {
        d.error(
            key("success_rate.stdev_factor"),
            "must be a number of standard deviations, 0 or more (Envoy's 1900 is 1.9 here)",
        );
    }
    OutlierDetection {
        consecutive_5xx,
        consecutive_gateway,
        consecutive_local: o.split_external_local_origin_errors.then_some(local),
        interval: o.interval.0,
        base_ejection_time: o.base_ejection_time.0,
        max_ejection_time: o.max_ejection_time.0.max(o.base_ejection_time.0),
        max_ejection_time_jitter: o.max_ejection_time_jitter.0,
        max_ejection_percent: o.max_ejection_percent.min(100),
        always_eject_one_host: o.always_eject_one_host,
        uneject_on_active_success: o.successful_active_health_check_uneject_host,
        success_rate: SuccessRate {
            minimum_hosts: sr.minimum_hosts.max(1),
            request_volume: sr.request_volume.max(1),
            stdev_factor: if sr.stdev_factor.is_finite() {
                sr.stdev_factor.max(0.0)
            } else {
                1.9
            },
            enforcing: sr.enforcing.min(100),
        },
        failure_percentage: FailurePercentage {
            threshold: fp.threshold.min(100),
            minimum_hosts: fp.minimum_hosts.max(1),
            request_volume: fp.request_volume.max(1),
            enforcing: fp.enforcing.min(100),
        },
    }
}

fn compile_breakers(
    b: &crate::config::CircuitBreakersConfig,
    path: &str,
    d: &mut Diagnostics,
) -> BreakerLimits {
    for (key, value) in [
        ("max_connections", b.max_connections),
        ("max_pending_requests", b.max_pending_requests),
        ("max_requests", b.max_requests),
    ] {
        if value == 0 {
            d.error(
                format!("{path}.circuit_breakers.{key}"),
                "must be at least 1 (0 would refuse every request)",
            );
        }
    }
    BreakerLimits {
        max_connections: u64::from(b.max_connections),
        max_pending_requests: u64::from(b.max_pending_requests),
        max_requests: u64::from(b.max_requests),
        max_retries: u64::from(b.max_retries),
    }
}

/// Warns of plain text where a network can read or forge it: a Consul agent off this
/// host without `consul.tls` (its answers decide where traffic goes; its token travels
/// in clear), and a sidecar inbound that takes plain text from other hosts.
fn warn_plain_text(
    cfg: &crate::config::ConfigFile,
    listeners: &[Listener],
    role: Role,
    d: &mut Diagnostics,
) {
    let uses_consul = cfg
        .clusters
        .values()
        .any(|c| c.discovery.as_ref().is_some_and(|dc| dc.consul.is_some()))
        || cfg.sidecar.as_ref().is_some_and(|s| s.register.is_some());
    let agent_host = cfg
        .consul
        .address
        .rsplit_once(':')
        .map_or(cfg.consul.address.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let local_agent = agent_host == "localhost"
        || agent_host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if uses_consul && !local_agent && cfg.consul.tls.is_none() {
        d.warn(
            "consul.address",
            format!(
                "`{}` is not on this host and [consul.tls] is not set: the agent's answers (where traffic goes) and the token travel in plain text",
                cfg.consul.address
            ),
        );
    }
    if role == Role::Sidecar {
        if let Some(inbound) = listeners.iter().find(|l| l.name == "inbound") {
            if inbound.tls.is_none() && !inbound.address.ip().is_loopback() {
                d.warn(
                    "sidecar.inbound.address",
                    format!(
                        "{} takes plain text from other hosts, unauthenticated: set sidecar.inbound.tls (mTLS with client_auth) or bind loopback",
                        inbound.address
                    ),
                );
            }
        }
    }
}

/// Refuses endpoints client traffic must not go to: weft itself (any of its listeners
/// or admin addresses: a loop, or `/config` to the internet), for every endpoint; and
/// for `discovered` ones (a registry entry anyone may have written) the addresses no
/// service instance has (`unroutable`), and loopback unless the cluster allows it.
fn check_endpoints(
    endpoints: &[Endpoint],
    (listeners, admin): (&[Listener], &AdminSettings),
    cluster: &Cluster,
    discovered: bool,
    path: &str,
    d: &mut Diagnostics,
) {
    for (i, e) in endpoints.iter().enumerate() {
        if let Some(own) = own_address(listeners, admin, e.address) {
            d.error(
                format!("{path}.endpoints[{i}]"),
                format!("`{}` is {own}: requests would loop through weft", e.address),
            );
            continue;
        }
        if !discovered {
            continue;
        }
        let ip = e.address.ip().to_canonical();
        let class = unroutable(ip).or_else(|| {
            (ip.is_loopback() && !cluster.discovered_loopback)
                .then_some("loopback (allowed with `discovery.allow_loopback = true`)")
        });
        if let Some(class) = class {
            d.error(
                format!("{path}.endpoints[{i}]"),
                format!(
                    "`{}` is {class}: not an address a service runs at",
                    e.address
                ),
            );
        }
    }
}

/// The kind of address no discovered service instance may have, if `ip` is one: a
/// registry entry pointing there would send client traffic to this host's every
/// address (`0.0.0.0`), to a cloud metadata service (link-local `169.254.169.254`), or
/// to a multicast group. (Loopback is allowed: a local agent's services run there.)
fn unroutable(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        // fe80::/10
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    link_local.then_some("link-local")
}

/// What the discovered endpoints add to a snapshot's `content_hash`.
fn discovered_hash(discovered: &Discovered) -> u64 {
    if discovered.is_empty() {
        0
    } else {
        fnv1a(format!("{discovered:?}").as_bytes())
    }
}

/// What a discovery answer made of a snapshot (`Snapshot::with_discovered`).
pub struct DiscoveredUpdate {
    /// The snapshot to publish; `None` when no served endpoint changed.
    pub snapshot: Option<Snapshot>,
    /// Clusters whose answer was refused, and why: they keep the endpoints they had.
    pub refused: Vec<(String, ConfigErrors)>,
}

impl Snapshot {
    /// The snapshot that serves `discovered` (endpoints by cluster name, as
    /// `compile_with` takes them) in place of this one's, without parsing or compiling
    /// the config again: listeners and routes are shared, clusters whose endpoints did
    /// not change are shared, each changed cluster is copied with its new endpoints. Its
    /// cost grows with the number of clusters (one pointer each), not with the routes
    /// or the config text. A cluster whose answer has an endpoint that does not resolve,
    /// or one no service runs at (`check_endpoints`), keeps its last good endpoints
    /// (`refused`); the other clusters' answers are taken.
    pub fn with_discovered(&self, discovered: &Discovered) -> DiscoveredUpdate {
        let mut refused = Vec::new();
        let mut clusters: Option<Vec<Arc<Cluster>>> = None;
        for (id, cluster) in self.clusters.iter().enumerate() {
            let Some(listed) = discovered
                .get(&cluster.name)
                .filter(|_| cluster.discovery.is_some())
            else {
                continue;
            };
            let mut d = Diagnostics::new(&self.source_file);
            let path = format!("clusters.{} (discovered)", cluster.name);
            let endpoints = compile_endpoints(listed, &path, &mut d);
            let weft = (&self.listeners[..], &self.admin);
            check_endpoints(&endpoints, weft, cluster, true, &path, &mut d);
            if !d.errors.is_empty() {
                refused.push((cluster.name.clone(), ConfigErrors(d.errors)));
                continue;
            }
            if endpoints == cluster.endpoints {
                continue;
            }
            let clusters = clusters.get_or_insert_with(|| self.clusters.clone());
            clusters[id] = Arc::new(Cluster {
                endpoints,
                ..Cluster::clone(cluster)
            });
        }
        let Some(clusters) = clusters else {
            return DiscoveredUpdate {
                snapshot: None,
                refused,
            };
        };
        // What is served: the refused answers are not part of it.
        let served: Cow<'_, Discovered> = if refused.is_empty() {
            Cow::Borrowed(discovered)
        } else {
            let mut served = discovered.clone();
            served.retain(|name, _| refused.iter().all(|(r, _)| r != name));
            Cow::Owned(served)
        };
        let snapshot = Some(Snapshot {
            version: 0,
            config_hash: self.config_hash,
            content_hash: self.config_hash ^ discovered_hash(&served),
            role: self.role,
            source_file: self.source_file.clone(),
            source_text: self.source_text.clone(),
            runtime: self.runtime.clone(),
            admin: self.admin.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            warnings: self.warnings.clone(),
            http: self.http.clone(),
            http2: self.http2.clone(),
            listeners: self.listeners.clone(),
            clusters,
            consul: self.consul.clone(),
            registration: self.registration.clone(),
        });
        DiscoveredUpdate { snapshot, refused }
    }
}

fn compile_runtime(cfg: &ConfigFile, d: &mut Diagnostics) -> RuntimeSettings {
    let r = &cfg.runtime;
    if r.workers == Some(0) {
        d.error("runtime.workers", "must be at least 1");
    }
    if let Some(cpus) = &r.cpus {
        if cpus.is_empty() {
            d.error("runtime.cpus", "must list at least one CPU, or be left out");
        }
        // The check startup makes, made here: `weft check`, a reload and startup
        // refuse the same lists.
        let allowed = crate::host::allowed_cpus();
        if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
            d.error(
                "runtime.cpus",
                format!("CPU {bad} is not in this process's affinity mask (allowed: {allowed:?})"),
            );
        }
    }
    if let Some(e) = r.uring.entries {
        if !(256..=32768).contains(&e) || !e.is_power_of_two() {
            d.error(
                "runtime.uring.entries",
                "must be a power of two between 256 and 32768",
            );
        }
    }
    RuntimeSettings {
        workers: r.workers,
        io: r.io,
        cpus: r.cpus.clone(),
        uring: r.uring.clone(),
        drain_timeout: r
            .drain_timeout
            .as_ref()
            .map_or(std::time::Duration::from_secs(30), |d| d.0),
    }
}

/// The largest `http.max_header_bytes` accepted.
const MAX_HEADER_BYTES_LIMIT: usize = 1 << 20;

fn compile_trusted_proxies(
    f: &crate::config::ForwardedConfig,
    d: &mut Diagnostics,
) -> TrustedProxies {
    let mut sources = Vec::with_capacity(f.trusted_sources.len());
    for (i, text) in f.trusted_sources.iter().enumerate() {
        match IpNet::parse(text) {
            Ok(net) => sources.push(net),
            Err(why) => d.error(format!("http.forwarded.trusted_sources[{i}]"), why),
        }
    }
    if f.trusted_hops > 16 {
        d.error(
            "http.forwarded.trusted_hops",
            "must be at most 16 (proxies in front of weft)",
        );
    }
    TrustedProxies {
        hops: f.trusted_hops,
        sources,
    }
}

fn check_http(h: &crate::config::HttpConfig, d: &mut Diagnostics) {
    // Each connection may hold a head this large while it arrives: an unbounded value
    // let one client make weft hold 110 MiB (nginx's largest buffers are a few KiB,
    // Envoy's limit is 8 MiB).
    if !(1024..=MAX_HEADER_BYTES_LIMIT).contains(&h.max_header_bytes) {
        d.error(
            "http.max_header_bytes",
            format!("must be between 1024 and {MAX_HEADER_BYTES_LIMIT} (1 MiB)"),
        );
    }
    if !(1..=1024).contains(&h.max_headers) {
        d.error("http.max_headers", "must be between 1 and 1024");
    }
    if h.header_read_timeout.0.is_zero() {
        d.error("http.header_read_timeout", "must be greater than 0");
    }
    if h.idle_timeout.0.is_zero() {
        d.error("http.idle_timeout", "must be greater than 0");
    }
    if h.tunnel_idle_timeout.0.is_zero() {
        d.error("http.tunnel_idle_timeout", "must be greater than 0");
    }
}

/// The path a `grpc_service` (and `grpc_method`) match stands for.
fn grpc_path(service: &str, method: Option<&str>, path: &str, d: &mut Diagnostics) -> PathMatch {
    let ident = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && !s.ends_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if !ident(service) {
        d.error(
            format!("{path}.match.grpc_service"),
            format!("`{service}` is not a gRPC service name (package.Service)"),
        );
    }
    match method {
        Some(m) => {
            if !ident(m) || m.contains('.') {
                d.error(
                    format!("{path}.match.grpc_method"),
                    format!("`{m}` is not a gRPC method name"),
                );
            }
            PathMatch::Exact(format!("/{service}/{m}"))
        }
        None => PathMatch::Prefix(format!("/{service}/")),
    }
}

fn grpc_content_type() -> HeaderMatcher {
    HeaderMatcher {
        name: "content-type".into(),
        kind: HeaderMatchKind::Grpc,
        invert: false,
    }
}

fn check_http2(h: &crate::config::Http2Config, d: &mut Diagnostics) {
    // RFC 9113 §6.5.2 bounds.
    const MAX_WINDOW: u32 = (1 << 31) - 1;
    if h.max_concurrent_streams == 0 {
        d.error("http2.max_concurrent_streams", "must be at least 1");
    }
    if h.max_header_list_size < 1024 {
        d.error("http2.max_header_list_size", "must be at least 1024");
    }
    if !(65_535..=MAX_WINDOW).contains(&h.initial_stream_window) {
        d.error(
            "http2.initial_stream_window",
            format!("must be between 65535 and {MAX_WINDOW}"),
        );
    }
    if !(65_535..=MAX_WINDOW).contains(&h.initial_connection_window) {
        d.error(
            "http2.initial_connection_window",
            format!("must be between 65535 and {MAX_WINDOW}"),
        );
    }
    if !(16_384..=16_777_215).contains(&h.max_frame_size) {
        d.error("http2.max_frame_size", "must be between 16384 and 16777215");
    }
    if h.keepalive_interval.is_some_and(|i| i.0.is_zero()) {
        d.error(
            "http2.keepalive_interval",
            "must be greater than 0 (leave it out to send no pings)",
        );
    }
    if h.keepalive_timeout.0.is_zero() {
        d.error("http2.keepalive_timeout", "must be greater than 0");
    }
    if h.max_reset_streams == 0 {
        d.error("http2.max_reset_streams", "must be at least 1");
    }
    if !(16_384..=1 << 30).contains(&h.max_send_buffer_bytes) {
        d.error(
            "http2.max_send_buffer_bytes",
            "must be between 16384 and 1073741824",
        );
    }
}

/// `[admin]`: the probe address and the optional private one for `/config` and
/// `/metrics`.
fn compile_admin(loaded: &LoadedConfig, d: &mut Diagnostics) -> AdminSettings {
    let cfg = &loaded.config.admin;
    let address = parse_listen_address(&cfg.address, "admin.address", d)
        .unwrap_or(([127, 0, 0, 1], 9901).into());
    let private = cfg.private_address.as_deref().and_then(|text| {
        const KEY: &str = "admin.private_address";
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                d.error(
                    KEY,
                    "`unix:` needs a path, as in \"unix:/run/weft/admin.sock\"",
                );
                return None;
            }
            return Some(AdminBind::Unix(resolve_relative(&loaded.file, path)));
        }
        let a = parse_listen_address(text, KEY, d)?;
        if a == address {
            d.error(
                KEY,
                format!("`{a}` is admin.address itself: give another port"),
            );
            return None;
        }
        Some(AdminBind::Tcp(a))
    });
    AdminSettings { address, private }
}

fn parse_listen_address(text: &str, path: &str, d: &mut Diagnostics) -> Option<SocketAddr> {
    if text.is_empty() {
        d.error(path, "missing: write an address such as \"127.0.0.1:8080\"");
        return None;
    }
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            d.error(
                path,
                format!(
                    "`{text}` is not an IP:port address (listeners bind IP addresses, not names)"
                ),
            );
            None
        }
    }
}

/// A cluster's endpoints as the request path uses them: resolved addresses, weights
/// checked (`path` is the cluster's key).
fn compile_endpoints(listed: &[EndpointConfig], path: &str, d: &mut Diagnostics) -> Vec<Endpoint> {
    let mut endpoints = Vec::with_capacity(listed.len());
    for (i, e) in listed.iter().enumerate() {
        let epath = if path.starts_with("sidecar") {
            path.to_owned()
        } else {
            format!("{path}.endpoints[{i}]")
        };
        if e.weight == 0 {
            d.error(format!("{epath}.weight"), "must be > 0");
        }
        match resolve_endpoint(&e.address) {
            Ok(address) => endpoints.push(Endpoint {
                address,
                weight: e.weight.max(1),
            }),
            Err(problem) => d.error(epath, problem),
        }
    }
    endpoints
}

fn compile_cluster(
    name: &str,
    c: &ClusterConfig,
    path: &str,
    discovered: Option<&Vec<EndpointConfig>>,
    d: &mut Diagnostics,
) -> Cluster {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        d.error(
            path,
            "cluster names may use letters, digits, '-', '_' and '.' only",
        );
    }
    let discovery = c
        .discovery
        .as_ref()
        .and_then(|dc| compile_discovery(dc, d.file, &format!("{path}.discovery"), d));
    if c.endpoints.is_empty() && c.discovery.is_none() {
        d.error(
            format!("{path}.endpoints"),
            "a cluster needs at least one endpoint (or discovery)",
        );
    }
    // Discovered endpoints replace the listed ones; until discovery answers, the listed
    // ones (possibly none: 503) serve.
    let listed = discovered.unwrap_or(&c.endpoints);
    let endpoints = compile_endpoints(listed, path, d);
    // Built here, off the workers, whenever the endpoints change (reload, discovery).
    let weighted: Vec<(SocketAddr, u32)> =
        endpoints.iter().map(|e| (e.address, e.weight)).collect();
    let hash_table = match c.lb {
        LbPolicy::RingHash => Some(Arc::new(hashing::HashTable::ring(&weighted))),
        LbPolicy::Maglev => Some(Arc::new(hashing::HashTable::maglev(&weighted))),
        _ => None,
    };
    for (key, dur) in [
        ("connect_timeout", c.connect_timeout),
        ("request_timeout", c.request_timeout),
        ("read_timeout", c.read_timeout),
    ] {
        if dur.0.is_zero() {
            d.error(format!("{path}.{key}"), "must be greater than 0");
        }
    }
    let PoolConfig {
        max_idle,
        idle_timeout,
    } = &c.pool;
    let tls = c.tls.as_ref().and_then(|t| {
        // The default name to verify: the first endpoint's host as written.
        let first = c
            .endpoints
            .first()
            .map(|e| {
                e.address
                    .rsplit_once(':')
                    .map_or(e.address.as_str(), |(h, _)| h)
            })
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let base = d.file.parent().unwrap_or(std::path::Path::new("."));
        tls::compile_cluster_tls(
            t,
            c.protocol,
            first,
            base,
            &format!("{path}.tls"),
            &mut |k, p| d.error(k, p),
        )
    });
    Cluster {
        name: name.to_owned(),
        endpoints,
        protocol: c.protocol,
        tls,
        discovery,
        discovered_loopback: c.discovery.as_ref().is_some_and(|dc| dc.allow_loopback),
        breakers: compile_breakers(&c.circuit_breakers, path, d),
        shared: Arc::new(ClusterShared::default()),
        health_check: c
            .health_check
            .as_ref()
            .and_then(|h| compile_health_check(h, name, path, d))
            .map(Arc::new),
        panic_threshold: {
            if c.healthy_panic_threshold > 100 {
                d.error(
                    format!("{path}.healthy_panic_threshold"),
                    "is a percentage: 0 to 100",
                );
            }
            c.healthy_panic_threshold.min(100)
        },
        outlier: c
            .outlier_detection
            .as_ref()
            .map(|o| Arc::new(compile_outlier_detection(o, path, d))),
        hash_table,
        retry: c.retry.as_ref().map(|r| {
            Arc::new(retry::compile_policy(
                r,
                &format!("{path}.retry"),
                &mut |k, p| d.error(k, p),
            ))
        }),
        retry_budget: c.retry_budget.as_ref().map(|b| {
            retry::compile_budget(b, &format!("{path}.retry_budget"), &mut |k, p| {
                d.error(k, p)
            })
        }),
        lb: c.lb,
        connect_timeout: c.connect_timeout.0,
        request_timeout: c.request_timeout.0,
        read_timeout: c.read_timeout.0,
        pool_max_idle: *max_idle,
        pool_idle_timeout: idle_timeout.0,
    }
}

fn compile_registration(
    r: &crate::config::RegisterConfig,
    inbound: &str,
    d: &mut Diagnostics,
) -> Option<Registration> {
    let path = "sidecar.register";
    if r.service.is_empty() {
        d.error(
            format!("{path}.service"),
            "missing: the service name to register",
        );
        return None;
    }
    let listen: SocketAddr = inbound.parse().ok()?;
    let address = match &r.address {
        Some(a) => match a.parse() {
            Ok(ip) => ip,
            Err(_) => {
                d.error(
                    format!("{path}.address"),
                    format!("`{a}` is not an IP address"),
                );
                return None;
            }
        },
        None if listen.ip().is_unspecified() => {
            d.error(
                format!("{path}.address"),
                "sidecar.inbound.address listens on all addresses: say which one to register",
            );
            return None;
        }
        None => listen.ip(),
    };
    Some(Registration {
        service: r.service.clone(),
        id: r
            .id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", r.service, listen.port())),
        address,
        port: listen.port(),
        tags: r.tags.clone(),
        meta: r.meta.clone(),
        check_interval: r.check_interval.0,
        deregister_critical_after: r.deregister_critical_after.0,
    })
}

fn compile_discovery(
    dc: &crate::config::DiscoveryConfig,
    file: &std::path::Path,
    path: &str,
    d: &mut Diagnostics,
) -> Option<Discovery> {
    match (&dc.file, &dc.consul) {
        (Some(f), None) => Some(Discovery::File(resolve_relative(file, f))),
        (None, Some(q)) => {
            if q.service.is_empty() {
                d.error(
                    format!("{path}.consul.service"),
                    "missing: the Consul service name",
                );
                return None;
            }
            Some(Discovery::Consul(ConsulQuery {
                service: q.service.clone(),
                passing_only: q.passing_only,
                tags: q.tags.clone(),
                datacenter: q.datacenter.clone(),
                filter: q.filter.clone(),
            }))
        }
        _ => {
            d.error(path.to_owned(), "use exactly one of file and consul");
            None
        }
    }
}

/// A digest of the contents of every file the config names (certificates, keys, CA
/// bundles, the system bundle a cluster without `ca` trusts, the Consul token file).
/// It is part of the snapshot's content hash, so a SIGHUP after a certificate was
/// rotated or a CA removed from a bundle publishes, though the TOML text is the same.
fn referenced_files_digest(
    listeners: &[(Cow<'_, ListenerConfig>, String)],
    clusters: &[(String, Cow<'_, ClusterConfig>, String)],
    consul: &crate::config::ConsulConfig,
    file: &std::path::Path,
) -> u64 {
    let mut paths = Vec::new();
    for (l, _) in listeners {
        let Some(tls) = &l.tls else { continue };
        for c in &tls.certificates {
            paths.push(resolve_relative(file, &c.cert));
            paths.push(resolve_relative(file, &c.key));
        }
        if let Some(auth) = &tls.client_auth {
            paths.push(resolve_relative(file, &auth.ca));
        }
    }
    let upstream_tls = clusters
        .iter()
        .filter_map(|(_, c, _)| c.tls.as_ref())
        .chain(consul.tls.as_ref());
    for tls in upstream_tls {
        paths.push(match &tls.ca {
            Some(ca) => resolve_relative(file, ca),
            None => super::tls::SYSTEM_ROOTS.into(),
        });
        for f in tls.cert.iter().chain(&tls.key) {
            paths.push(resolve_relative(file, f));
        }
    }
    if let Some(token) = &consul.token_file {
        paths.push(resolve_relative(file, token));
    }
    paths.iter().fold(0u64, |h, p| {
        // A missing file digests as empty; compiling it reports the error.
        let contents = std::fs::read(p).unwrap_or_default();
        h.rotate_left(7) ^ fnv1a(p.as_os_str().as_encoded_bytes()) ^ fnv1a(&contents)
    })
}

/// `name` relative to the directory of the config `file`.
fn resolve_relative(file: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(name);
    if p.is_absolute() {
        p.to_owned()
    } else {
        file.parent().unwrap_or(std::path::Path::new(".")).join(p)
    }
}

fn resolve_endpoint(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` is not host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("`{text}` is not host:port"));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{host}` resolved to no address")),
        Err(e) => Err(format!("cannot resolve `{host}`: {e}")),
    }
}

fn compile_route(
    listener: &str,
    index: usize,
    r: &RouteConfig,
    path: &str,
    clusters: &BTreeMap<&str, ClusterId>,
    d: &mut Diagnostics,
) -> Route {
    let m = &r.matcher;
    let host = match &m.host {
        None => HostMatch::Any,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            if let Some(suffix) = h.strip_prefix('*') {
                if !suffix.starts_with('.') || suffix.len() < 2 || suffix[1..].contains('*') {
                    d.error(
                        format!("{path}.match.host"),
                        "a wildcard host must look like \"*.example.com\"",
                    );
                }
                HostMatch::Suffix(suffix.to_owned())
            } else {
                if h.is_empty() || h.contains(['*', '/', ' ']) {
                    d.error(
                        format!("{path}.match.host"),
                        format!("`{h}` is not a host name"),
                    );
                }
                HostMatch::Exact(h)
            }
        }
    };
    let path_conditions = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
        m.grpc_service.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if path_conditions > 1 {
        d.error(
            format!("{path}.match"),
            "use only one of path, path_prefix, path_regex and grpc_service",
        );
    }
    if m.grpc_method.is_some() && m.grpc_service.is_none() {
        d.error(
            format!("{path}.match.grpc_method"),
            "needs match.grpc_service",
        );
    }
    let path_match = if let Some(service) = &m.grpc_service {
        grpc_path(service, m.grpc_method.as_deref(), path, d)
    } else if let Some(p) = &m.path {
        check_path_literal(p, &format!("{path}.match.path"), d);
        PathMatch::Exact(p.clone())
    } else if let Some(p) = &m.path_prefix {
        check_path_literal(p, &format!("{path}.match.path_prefix"), d);
        if p == "/" {
            PathMatch::Any
        } else {
            PathMatch::Prefix(p.clone())
        }
    } else if let Some(re) = &m.path_regex {
        match Regex::new(&format!("^(?:{re})$")) {
            Ok(re) => PathMatch::Regex(re),
            Err(e) => {
                d.error(
                    format!("{path}.match.path_regex"),
                    format!("invalid regex: {e}"),
                );
                PathMatch::Any
            }
        }
    } else {
        PathMatch::Any
    };
    let method = m.method.as_ref().map(|mth| {
        if mth.is_empty() || !mth.bytes().all(|b| b.is_ascii_uppercase()) {
            d.error(
                format!("{path}.match.method"),
                format!("`{mth}` is not an HTTP method (write it in capitals, e.g. \"GET\")"),
            );
        }
        mth.clone()
    });
    let mut headers = compile_header_matchers(&m.headers, &format!("{path}.match.headers"), d);
    if m.grpc_service.is_some() {
        headers.push(grpc_content_type());
    }
    let cookies = compile_value_matchers(m.cookie.as_slice(), &format!("{path}.match.cookie"), d)
        .into_iter()
        .map(|(name, value, invert)| routes::CookieMatcher {
            name,
            value,
            invert,
        })
        .collect();
    let query = compile_value_matchers(m.query.as_slice(), &format!("{path}.match.query"), d)
        .into_iter()
        .map(|(name, value, invert)| routes::QueryMatcher {
            name,
            value,
            invert,
        })
        .collect();
    let sticky = r.sticky.as_ref().and_then(|st| {
        let key = format!("{path}.sticky");
        if r.split.is_none() {
            d.error(key.clone(), "only applies to a split");
        }
        match (&st.header, &st.cookie) {
            (Some(h), None) if is_token(h) => Some(Sticky::Header(h.to_ascii_lowercase())),
            (Some(h), None) => {
                d.error(
                    format!("{key}.header"),
                    format!("`{h}` is not a header name"),
                );
                None
            }
            (None, Some(c)) if is_token(c) => Some(Sticky::Cookie(c.clone())),
            (None, Some(c)) => {
                d.error(
                    format!("{key}.cookie"),
                    format!("`{c}` is not a cookie name"),
                );
                None
            }
            _ => {
                d.error(key, "needs exactly one of header and cookie");
                None
            }
        }
    });

    let actions = [
        r.cluster.is_some(),
        r.split.is_some(),
        r.direct_response.is_some(),
        r.redirect.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if actions != 1 {
        d.error(
            path.to_owned(),
            "a route needs exactly one of cluster, split, direct_response and redirect",
        );
    }
    let prefix_for_rewrite =
        |rewrite: &Option<String>, key: &str, d: &mut Diagnostics| -> Option<(String, String)> {
            let to = rewrite.as_ref()?;
            match &m.path_prefix {
                Some(from) => {
                    check_path_literal(to, &format!("{path}.{key}"), d);
                    Some((from.clone(), to.clone()))
                }
                None => {
                    d.error(
                        format!("{path}.{key}"),
                        "needs match.path_prefix (it replaces the matched prefix)",
                    );
                    None
                }
            }
        };
    let cluster_ref = |name: &str, key: String, d: &mut Diagnostics| -> ClusterId {
        match clusters.get(name) {
            Some(id) => *id,
            None => {
                d.error(key, format!("unknown cluster `{name}`"));
                0
            }
        }
    };
    let action = if let Some(c) = &r.cluster {
        let id = cluster_ref(c, format!("{path}.cluster"), d);
        RouteAction::Forward(Forward {
            targets: vec![SplitTarget {
                cluster: id,
                weight: 1,
            }],
            total_weight: 1,
            prefix_rewrite: prefix_for_rewrite(&r.prefix_rewrite, "prefix_rewrite", d),
            hash_policy: compile_hash_policy(&r.hash_policy, path, d),
            sticky: None,
        })
    } else if let Some(split) = &r.split {
        if split.is_empty() {
            d.error(format!("{path}.split"), "must list at least one cluster");
        }
        let mut targets = Vec::new();
        // A member of weight 0 gets no traffic: how a canary is finished or rolled back
        // (Envoy and Istio accept it). Only the total must be positive.
        for (i, s) in split.iter().enumerate() {
            let id = cluster_ref(&s.cluster, format!("{path}.split[{i}].cluster"), d);
            targets.push(SplitTarget {
                cluster: id,
                weight: s.weight,
            });
        }
        let total: u64 = targets.iter().map(|t| t.weight as u64).sum();
        if total == 0 && !split.is_empty() {
            d.error(
                format!("{path}.split"),
                "the weights add up to 0: at least one member needs a weight > 0",
            );
        }
        if total > u32::MAX as u64 {
            d.error(
                format!("{path}.split"),
                "weights add up to more than 4294967295",
            );
        }
        if targets.is_empty() {
            targets.push(SplitTarget {
                cluster: 0,
                weight: 1,
            });
        }
        RouteAction::Forward(Forward {
            total_weight: (total as u32).max(1),
            targets,
            prefix_rewrite: prefix_for_rewrite(&r.prefix_rewrite, "prefix_rewrite", d),
            hash_policy: compile_hash_policy(&r.hash_policy, path, d),
            sticky: sticky.clone(),
        })
    } else if let Some(dr) = &r.direct_response {
        if !(200..=599).contains(&dr.status) {
            d.error(
                format!("{path}.direct_response.status"),
                "must be between 200 and 599",
            );
        }
        if r.prefix_rewrite.is_some() {
            d.error(
                format!("{path}.prefix_rewrite"),
                "only applies to routes that forward",
            );
        }
        if !r.hash_policy.is_empty() {
            d.error(
                format!("{path}.hash_policy"),
                "only applies to routes that forward",
            );
        }
        if let Some(ct) = &dr.content_type {
            check_field_value(ct, &format!("{path}.direct_response.content_type"), d);
        }
        RouteAction::Direct(DirectResponse {
            status: dr.status,
            body: Arc::from(dr.body.as_bytes()),
            content_type: dr
                .content_type
                .clone()
                .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
        })
    } else if let Some(rd) = &r.redirect {
        let status = rd.status.unwrap_or(301);
        if ![301, 302, 303, 307, 308].contains(&status) {
            d.error(
                format!("{path}.redirect.status"),
                "must be 301, 302, 303, 307 or 308",
            );
        }
        if let Some(s) = &rd.scheme {
            if s != "http" && s != "https" {
                d.error(
                    format!("{path}.redirect.scheme"),
                    "must be \"http\" or \"https\"",
                );
            }
        }
        if let Some(p) = &rd.path {
            check_path_literal(p, &format!("{path}.redirect.path"), d);
        }
        if let Some(h) = &rd.host {
            check_authority(h, &format!("{path}.redirect.host"), d);
        }
        if rd.path.is_some() && rd.prefix_rewrite.is_some() {
            d.error(
                format!("{path}.redirect"),
                "use either path or prefix_rewrite, not both",
            );
        }
        RouteAction::Redirect(Redirect {
            status,
            scheme: rd.scheme.clone(),
            host: rd.host.clone(),
            path: rd.path.clone(),
            prefix_rewrite: prefix_for_rewrite(&rd.prefix_rewrite, "redirect.prefix_rewrite", d),
            strip_query: rd.strip_query,
        })
    } else {
        RouteAction::Direct(DirectResponse {
            status: 404,
            body: Arc::from(&b""[..]),
            content_type: String::new(),
        })
    };
    if r.timeout.is_some_and(|t| t.0.is_zero()) {
        d.error(format!("{path}.timeout"), "must be greater than 0");
    }
    let upgrades = match &r.upgrades {
        None => vec!["websocket".to_owned()],
        Some(list) => {
            for (i, token) in list.iter().enumerate() {
                let key = format!("{path}.upgrades[{i}]");
                if token.eq_ignore_ascii_case("h2c") {
                    d.error(key, "`h2c` cannot be allowed: it would let a client speak HTTP/2 to the upstream past every route (an `Upgrade: h2c` is dropped)");
                } else if !is_token(token) {
                    d.error(
                        key,
                        format!("`{token}` is not a protocol name (an HTTP token, as `websocket`)"),
                    );
                }
            }
            list.iter().map(|t| t.to_ascii_lowercase()).collect()
        }
    };
    Route {
        name: r
            .name
            .clone()
            .unwrap_or_else(|| format!("{listener}#{index}")),
        host,
        path: path_match,
        method,
        headers,
        cookies,
        query,
        action,
        request_headers: compile_edits(&r.request_headers, &format!("{path}.request_headers"), d),
        response_headers: compile_edits(
            &r.response_headers,
            &format!("{path}.response_headers"),
            d,
        ),
        timeout: r.timeout.map(|t| t.0),
        upgrades,
        mirror: r.mirror.as_ref().map(|m| {
            let key = format!("{path}.mirror");
            if r.cluster.is_none() && r.split.is_none() {
                d.error(key.clone(), "only applies to routes that forward");
            }
            if !(0.0..=100.0).contains(&m.percent) {
                d.error(format!("{key}.percent"), "is a percentage: 0 to 100");
            }
            if m.max_buffered_bytes > 16 * 1024 * 1024 {
                d.error(
                    format!("{key}.max_buffered_bytes"),
                    "at most 16 MiB: each mirrored request may hold this much",
                );
            }
            Mirror {
                cluster: cluster_ref(&m.cluster, format!("{key}.cluster"), d),
                share: fault::share(m.percent),
                max_buffered_bytes: m.max_buffered_bytes as usize,
            }
        }),
        rate_limit: r.rate_limit.as_ref().map(|c| {
            rate_limit::compile(c, &format!("{path}.rate_limit"), &mut |k, p| d.error(k, p))
        }),
        fault: r.fault.as_ref().map(|c| {
            let key = format!("{path}.fault");
            if r.cluster.is_none() && r.split.is_none() {
                d.error(key.clone(), "only applies to routes that forward");
            }
            let headers = compile_header_matchers(&c.headers, &format!("{key}.headers"), d);
            fault::compile(c, headers, &key, &mut |k, p| d.error(k, p))
        }),
        retry: r.retry.as_ref().map(|c| {
            if r.cluster.is_none() && r.split.is_none() {
                d.error(
                    format!("{path}.retry"),
                    "only applies to routes that forward",
                );
            }
            Arc::new(retry::compile_policy(
                c,
                &format!("{path}.retry"),
                &mut |k, p| d.error(k, p),
            ))
        }),
    }
}

/// Cookie or query parameter conditions at `path`: (name, condition, inverted).
fn compile_value_matchers(
    list: &[crate::config::ValueMatchConfig],
    path: &str,
    d: &mut Diagnostics,
) -> Vec<(String, routes::ValueMatch, bool)> {
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let key = format!("{path}[{i}]");
            if c.name.is_empty() {
                d.error(format!("{key}.name"), "is needed");
            }
            let value = match (&c.exact, &c.prefix, &c.regex) {
                (None, None, None) => routes::ValueMatch::Present,
                (Some(v), None, None) => routes::ValueMatch::Exact(v.clone()),
                (None, Some(p), None) => routes::ValueMatch::Prefix(p.clone()),
                (None, None, Some(re)) => match Regex::new(&format!("^(?:{re})$")) {
                    Ok(re) => routes::ValueMatch::Regex(re),
                    Err(e) => {
                        d.error(format!("{key}.regex"), format!("invalid regex: {e}"));
                        routes::ValueMatch::Present
                    }
                },
                _ => {
                    d.error(key, "use only one of exact, prefix and regex");
                    routes::ValueMatch::Present
                }
            };
            (c.name.clone(), value, c.invert)
        })
        .collect()
}

/// Header conditions (`match.headers`, `fault.headers`) at `path`.
fn compile_header_matchers(
    list: &[crate::config::HeaderMatchConfig],
    path: &str,
    d: &mut Diagnostics,
) -> Vec<HeaderMatcher> {
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let hp = format!("{path}[{i}]");
            if !is_token(&h.name) {
                d.error(
                    format!("{hp}.name"),
                    format!("`{}` is not a header name", h.name),
                );
            }
            let kind = match (&h.value, &h.regex) {
                (Some(_), Some(_)) => {
                    d.error(hp, "use either value or regex, not both");
                    HeaderMatchKind::Present
                }
                (Some(v), None) => HeaderMatchKind::Exact(v.as_bytes().to_vec()),
                (None, Some(re)) => match Regex::new(&format!("^(?:{re})$")) {
                    Ok(re) => HeaderMatchKind::Regex(re),
                    Err(e) => {
                        d.error(format!("{hp}.regex"), format!("invalid regex: {e}"));
                        HeaderMatchKind::Present
                    }
                },
                (None, None) => HeaderMatchKind::Present,
            };
            HeaderMatcher {
                name: h.name.to_ascii_lowercase(),
                kind,
                invert: h.invert,
            }
        })
        .collect()
}

fn check_path_literal(p: &str, key: &str, d: &mut Diagnostics) {
    if !p.starts_with('/') {
        d.error(key, format!("`{p}` must start with '/'"));
    } else if p
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        d.error(
            key,
            format!("`{p}` contains a character not allowed in a path"),
        );
    }
}

/// A configured header value (a content type, say): visible characters, spaces and
/// tabs only. CR or LF would end the field and start another one in every response.
/// A route's `hash_policy`: each entry names exactly one source.
fn compile_hash_policy(
    policies: &[crate::config::HashPolicyConfig],
    path: &str,
    d: &mut Diagnostics,
) -> Vec<hashing::HashPolicy> {
    use hashing::{HashPolicy, HashSource};
    let mut out = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let key = format!("{path}.hash_policy[{i}]");
        let named = [
            p.header.is_some(),
            p.cookie.is_some(),
            p.source_ip,
            p.query_parameter.is_some(),
        ];
        if named.iter().filter(|b| **b).count() != 1 {
            d.error(
                key,
                "needs exactly one of header, cookie, source_ip = true, query_parameter",
            );
            continue;
        }
        let source = if let Some(h) = &p.header {
            if !is_token(h) {
                d.error(
                    format!("{key}.header"),
                    format!("`{h}` is not a header name"),
                );
            }
            HashSource::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &p.cookie {
            if !is_token(&c.name) {
                d.error(
                    format!("{key}.cookie.name"),
                    format!("`{}` is not a cookie name", c.name),
                );
            }
            if c.ttl.is_some_and(|t| t.0.is_zero()) {
                d.error(
                    format!("{key}.cookie.ttl"),
                    "must be greater than 0 (leave it out to never set the cookie)",
                );
            }
            if let Some(cookie_path) = &c.path {
                check_path_literal(cookie_path, &format!("{key}.cookie.path"), d);
            }
            HashSource::Cookie {
                name: c.name.clone(),
                ttl: c.ttl.map(|t| t.0),
                path: c.path.clone(),
            }
        } else if let Some(q) = &p.query_parameter {
            if q.is_empty()
                || q.bytes()
                    .any(|b| b"&=#".contains(&b) || !b.is_ascii_graphic())
            {
                d.error(
                    format!("{key}.query_parameter"),
                    format!("`{q}` is not a query parameter name"),
                );
            }
            HashSource::QueryParameter(q.clone())
        } else {
            HashSource::SourceIp
        };
        out.push(HashPolicy {
            source,
            terminal: p.terminal,
        });
    }
    out
}

fn check_field_value(v: &str, key: &str, d: &mut Diagnostics) {
    if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        d.error(
            key,
            "header values cannot contain control characters (CR, LF, NUL, ...)",
        );
    }
}

/// A configured authority (`host` or `host:port`, a `[v6]` literal): the characters of
/// a reg-name, an IP literal and a port (RFC 3986 §3.2.2), nothing that could end the
/// `Location` field or change what it points at (`/`, `?`, `#`, `@`, whitespace).
fn check_authority(a: &str, key: &str, d: &mut Diagnostics) {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b);
    if a.is_empty() || !a.bytes().all(allowed) {
        d.error(
            key,
            format!(
                "`{}` is not a host (letters, digits, '-', '.', ':' and [v6] only)",
                a.escape_debug()
            ),
        );
    }
}

/// RFC 9110 token: what a header name may be made of.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn compile_edits(e: &HeaderEditsConfig, path: &str, d: &mut Diagnostics) -> HeaderEdits {
    let check_name = |name: &str, key: String, d: &mut Diagnostics| {
        if !is_token(name) {
            d.error(key, format!("`{name}` is not a header name"));
        } else if !crate::fields::is_editable(name.as_bytes()) {
            d.error(
                key,
                format!("`{name}` is managed by weft and cannot be edited"),
            );
        }
    };
    let mut set = Vec::new();
    for (name, value) in &e.add {
        check_name(name, format!("{path}.add.{name}"), d);
        // The rule HTTP/2 heads apply (`http::HeaderValue`), so that an edit is the
        // same on both protocols: HTTP/1.1 heads write it as given.
        check_field_value(value, &format!("{path}.add.{name}"), d);
        set.push((name.to_ascii_lowercase(), value.clone()));
    }
    let mut remove = Vec::new();
    for (i, name) in e.remove.iter().enumerate() {
        check_name(name, format!("{path}.remove[{i}]"), d);
        remove.push(name.to_ascii_lowercase());
    }
    HeaderEdits { set, remove }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    fn compile_text(text: &str) -> Result<Snapshot, Vec<String>> {
        let loaded = parse(Path::new("t.toml"), text, Role::Ingress)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        compile(&loaded).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_discovery_change_rebuilds_only_its_cluster() {
        let text = "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
            routes = [ { match = { path_prefix = \"/a\" }, cluster = \"a\" },\n\
                       { match = { path_prefix = \"/b\" }, cluster = \"b\" } ]\n\
            [clusters.a]\nendpoints = [\"127.0.0.1:9001\"]\n\
            [clusters.b]\ndiscovery = { consul = { service = \"b\" }, allow_loopback = true }\n\
            [clusters.c]\ndiscovery = { consul = { service = \"c\" } }\n";
        let snap = compile_text(text).expect("compiles");
        let endpoint = |address: &str| EndpointConfig {
            address: address.into(),
            weight: 1,
            tags: Vec::new(),
            meta: Default::default(),
        };
        let mut found = Discovered::new();
        found.insert("b".into(), vec![endpoint("127.0.0.1:9002")]);
        let next = snap.with_discovered(&found).snapshot.expect("b changed");
        let b = next.cluster_by_name("b").expect("b");
        let a = next.cluster_by_name("a").expect("a");
        assert_eq!(next.clusters[b].endpoints[0].address.port(), 9002);
        assert!(
            Arc::ptr_eq(&next.clusters[a], &snap.clusters[a]),
            "a is shared"
        );
        assert!(
            Arc::ptr_eq(&next.listeners, &snap.listeners),
            "routes are shared"
        );
        assert_ne!(next.content_hash, snap.content_hash);
        // The same answer again changes nothing; a cluster without discovery ignores one.
        assert!(next.with_discovered(&found).snapshot.is_none());
        found.insert("a".into(), vec![endpoint("127.0.0.1:9009")]);
        assert!(next.with_discovered(&found).snapshot.is_none());
        // A metadata-service address, or 0.0.0.0, is refused, and only for its cluster;
        // loopback too where the cluster does not allow it.
        for bad in [
            "169.254.169.254:80",
            "0.0.0.0:80",
            "[fe80::1]:80",
            "224.0.0.1:80",
        ] {
            found.insert("b".into(), vec![endpoint(bad)]);
            found.insert("c".into(), vec![endpoint("10.0.0.3:80")]);
            let update = next.with_discovered(&found);
            assert_eq!(update.refused.len(), 1, "{bad} accepted");
            assert_eq!(update.refused[0].0, "b");
            let taken = update.snapshot.expect("c taken");
            let c = taken.cluster_by_name("c").expect("c");
            assert_eq!(taken.clusters[c].endpoints[0].address.port(), 80);
            let b = taken.cluster_by_name("b").expect("b");
            assert_eq!(
                taken.clusters[b].endpoints[0].address.port(),
                9002,
                "b kept"
            );
        }
        found.insert("c".into(), vec![endpoint("127.0.0.1:80")]);
        let update = next.with_discovered(&found);
        assert!(update
            .refused
            .iter()
            .any(|(n, e)| n == "c" && e.to_string().contains("loopback")));
        // An address that does not resolve is refused, naming the cluster.
        found.insert("b".into(), vec![endpoint("nowhere")]);
        let update = next.with_discovered(&found);
        let (_, errors) = update
            .refused
            .iter()
            .find(|(n, _)| n == "b")
            .expect("refused");
        assert!(errors.to_string().contains("clusters.b"), "{errors}");
    }

    #[test]
    fn listeners_know_their_role() {
        let text = "[sidecar.inbound]\naddress = \"127.0.0.1:15006\"\napp = \"127.0.0.1:9080\"\n\
            [sidecar.outbound]\naddress = \"127.0.0.1:15001\"\n\
            [[listeners]]\nname = \"edge\"\naddress = \"127.0.0.1:8080\"\n\
            routes = [ { match = { path_prefix = \"/\" }, direct_response = { status = 200 } } ]\n";
        let loaded = parse(Path::new("t.toml"), text, Role::Sidecar).expect("parses");
        let snap = compile(&loaded).expect("compiles");
        let role = |name: &str| {
            snap.listeners
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.role)
        };
        assert_eq!(role("inbound"), Some(ListenerRole::SidecarInbound));
        assert_eq!(role("outbound"), Some(ListenerRole::SidecarOutbound));
        assert_eq!(role("edge"), Some(ListenerRole::Ingress));
    }

    struct Req<'a>(&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>);
    impl RequestFacts for Req<'_> {
        fn host(&self) -> &str {
            self.0
        }
        fn path(&self) -> &str {
            self.1
        }
        fn method(&self) -> &[u8] {
            self.2.as_bytes()
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.3
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_bytes())
        }
        fn any_header(&self, name: &str, mut pred: impl FnMut(&[u8]) -> bool) -> bool {
            self.3
                .iter()
                .filter(|(n, _)| *n == name)
                .any(|(_, v)| pred(v.as_bytes()))
        }
        fn query(&self) -> &str {
            ""
        }
    }

    #[test]
    fn outlier_detection_is_validated_and_compiled() {
        let base = "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
            routes = [ { match = { path_prefix = \"/\" }, cluster = \"a\" } ]\n\
            [clusters.a]\nendpoints = [\"127.0.0.1:9001\"]\n[clusters.a.outlier_detection]\n";
        let errors = compile_text(&format!(
            "{base}consecutive_gateway_failure = 0\nenforcing_consecutive_5xx = 101\n\
             base_ejection_time = \"0s\"\nfailure_percentage = {{ threshold = 200, request_volume = 0 }}\n"
        ))
        .expect_err("refused");
        let key = "clusters.a.outlier_detection";
        for want in [
            format!("{key}.consecutive_gateway_failure: must be at least 1"),
            format!("{key}.enforcing_consecutive_5xx: is a percentage"),
            format!("{key}.base_ejection_time: must be greater than 0"),
            format!("{key}.failure_percentage.threshold: is a percentage"),
            format!("{key}.failure_percentage.request_volume: must be at least 1"),
        ] {
            assert!(
                errors.iter().any(|e| e.contains(&want)),
                "{want} in {errors:?}"
            );
        }
        let snap = compile_text(&format!(
            "{base}split_external_local_origin_errors = true\nbase_ejection_time = \"400s\"\n"
        ))
        .expect("compiles");
        let od = snap.clusters[0].outlier.clone().expect("on");
        assert_eq!(od.consecutive_local.map(|d| d.threshold), Some(5));
        assert_eq!(od.consecutive_gateway.enforcing, 0, "Envoy's default");
        assert_eq!(
            od.max_ejection_time,
            Duration::from_secs(400),
            "never shorter than the base"
        );
    }

    #[test]
    fn unknown_keys_and_semantic_errors_are_reported_together() {
        let e = compile_text(
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\nroutes = [ { name = \"shop\", match = { path_prefix = \"/\" }, cluster = \"nope\" } ]\n[clusters.api]\nendpoints = [\"127.0.0.1:2\"]\nconect_timeout = \"1s\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            [
                "t.toml:4:60: listeners[0].routes[0].cluster (route \"shop\"): unknown cluster `nope`",
                "t.toml:7:1: clusters.api.conect_timeout: unknown key (did you mean `connect_timeout`?)",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_paths() {
        let e = compile_text(
            r#"
            [[listeners]]
            name = "public"
            address = "localhost:80"
              [[listeners.routes]]
              match = { path_prefix = "api" }
              cluster = "nope"
              [[listeners.routes]]
              split = [ { cluster = "api", weight = 0 } ]
              direct_response = { status = 200 }
            [clusters.api]
            endpoints = []
            "#,
        )
        .unwrap_err();
        let want = [
            "t.toml:12:13: clusters.api.endpoints: a cluster needs at least one endpoint (or discovery)",
            "t.toml:4:13: listeners[0].address: `localhost:80` is not an IP:port address (listeners bind IP addresses, not names)",
            "t.toml:6:25: listeners[0].routes[0].match.path_prefix: `api` must start with '/'",
            "t.toml:7:15: listeners[0].routes[0].cluster: unknown cluster `nope`",
            "t.toml:8:15: listeners[0].routes[1]: a route needs exactly one of cluster, split, direct_response and redirect",
            "t.toml:9:15: listeners[0].routes[1].split: the weights add up to 0: at least one member needs a weight > 0",
        ];
        for w in want {
            assert!(e.iter().any(|x| x == w), "missing {w:?} in {e:#?}");
        }
    }

    const TABLE: &str = r#"
        [[listeners]]
        name = "l"
        address = "127.0.0.1:1"
          [[listeners.routes]]
          name = "exact"
          match = { path = "/exact" }
          cluster = "a"
          [[listeners.routes]]
          name = "shop-api"
          match = { host = "shop.example.com", path_prefix = "/api/" }
          cluster = "a"
          [[listeners.routes]]
          name = "wild"
          match = { host = "*.example.com", path_prefix = "/api/" }
          cluster = "a"
          [[listeners.routes]]
          name = "post-only"
          match = { path_prefix = "/api/", method = "POST" }
          cluster = "a"
          [[listeners.routes]]
          name = "api"
          match = { path_prefix = "/api/" }
          cluster = "a"
          [[listeners.routes]]
          name = "regex"
          match = { path_regex = "/items/[0-9]+" }
          cluster = "a"
          [[listeners.routes]]
          name = "canary"
          match = { path_prefix = "/", headers = [ { name = "x-canary", value = "1" } ] }
          cluster = "a"
          [[listeners.routes]]
          name = "fallback"
          match = { path_prefix = "/" }
          direct_response = { status = 200, body = "hi" }
        [clusters.a]
        endpoints = ["127.0.0.1:2"]
    "#;

    fn route_name(s: &Snapshot, req: Req) -> String {
        s.listeners[0]
            .routes
            .find(&req)
            .map(|r| r.name.clone())
            .unwrap_or_default()
    }

    #[test]
    fn first_match_in_file_order_across_buckets() {
        let s = compile_text(TABLE).unwrap();
        let r = |host, path, method, h| route_name(&s, Req(host, path, method, h));
        assert_eq!(r("x", "/exact", "GET", vec![]), "exact");
        assert_eq!(r("shop.example.com", "/exact", "GET", vec![]), "exact");
        assert_eq!(r("shop.example.com", "/api/x", "GET", vec![]), "shop-api");
        assert_eq!(r("a.b.example.com", "/api/x", "GET", vec![]), "wild");
        assert_eq!(r("example.com", "/api/x", "POST", vec![]), "post-only");
        assert_eq!(r("other", "/api/x", "GET", vec![]), "api");
        assert_eq!(r("other", "/items/42", "GET", vec![]), "regex");
        assert_eq!(r("other", "/items/4x", "GET", vec![]), "fallback");
        assert_eq!(
            r("other", "/items/4x", "GET", vec![("x-canary", "1")]),
            "canary"
        );
        assert_eq!(r("other", "/exactly", "GET", vec![]), "fallback");
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let s = compile_text(
            r#"
            [[listeners]]
            name = "l"
            address = "127.0.0.1:1"
              [[listeners.routes]]
              match = { host = "a.example", path_prefix = "/x" }
              direct_response = { status = 200 }
            "#,
        )
        .unwrap();
        assert!(s.listeners[0]
            .routes
            .find(&Req("b.example", "/x", "GET", vec![]))
            .is_none());
        assert!(s.listeners[0]
            .routes
            .find(&Req("a.example", "/y", "GET", vec![]))
            .is_none());
    }

    #[test]
    fn split_targets_follow_weights() {
        let f = Forward {
            targets: vec![
                SplitTarget {
                    cluster: 0,
                    weight: 90,
                },
                SplitTarget {
                    cluster: 1,
                    weight: 10,
                },
            ],
            total_weight: 100,
            prefix_rewrite: None,
            hash_policy: Vec::new(),
            sticky: None,
        };
        let hits = (0..100)
            .filter(|&roll| f.target_for(roll).cluster == 1)
            .count();
        assert_eq!(hits, 10);
    }
}
