//! The admin listener: /ready, /live, /config, /metrics.
//!
//! Runs on threads of its own with blocking std sockets, so nothing it does can stall
//! a worker. It reads only what workers publish for it: the `Control` flags, the
//! snapshot, and the per-worker counters.
//!
//! What one client can take from it is bounded, so that a slow or hostile client never
//! fails the probes an orchestrator restarts weft on:
//! - each admin socket serves at most `MAX_CONNECTIONS` connections at once, each on
//!   its own thread; one more is answered `503` at once, unread;
//! - each request has one deadline (`REQUEST_DEADLINE`) for its head and its answer,
//!   whatever the client's pace (a byte every second no longer holds a thread);
//! - only an IP-literal or `localhost` `Host` is answered (a DNS-rebinding page in a
//!   browser on this host names its own domain, and gets `403`);
//! - `/config` shows no secrets: `consul.token`, header-edit values and registration
//!   meta are replaced by `<redacted>`;
//! - with `admin.private_address`, `/config` and `/metrics` are answered only there,
//!   and `admin.address` answers the probes alone.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_mesh::snapshot::{AdminBind, Snapshot};

use super::Control;

/// Connections one admin socket serves at once.
pub const MAX_CONNECTIONS: usize = 16;
/// From accept to the last byte of the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A bound admin socket.
pub enum AdminSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds `at`. A unix socket's file is made owner-only (0600); a stale file left by a
/// process that is gone is replaced, one another process still serves is not.
fn bind(at: &AdminBind) -> io::Result<AdminSocket> {
    match at {
        AdminBind::Tcp(a) => TcpListener::bind(a).map(AdminSocket::Tcp),
        AdminBind::Unix(path) => {
            if path.exists() {
                if UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process serves this socket",
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let socket = UnixListener::bind(path)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(AdminSocket::Unix(socket))
        }
    }
}

/// `bind`, unless a predecessor handed this socket over (`control::upgrade`): then it
/// is taken as it is, provided it is bound where `at` says. Non-blocking either way:
/// a process that shares it may take the connection `poll` announced.
pub fn bind_or_take(at: &AdminBind, given: Option<OwnedFd>) -> io::Result<AdminSocket> {
    let socket = take(at, given)?;
    match &socket {
        AdminSocket::Tcp(l) => l.set_nonblocking(true)?,
        AdminSocket::Unix(l) => l.set_nonblocking(true)?,
    }
    Ok(socket)
}

fn take(at: &AdminBind, given: Option<OwnedFd>) -> io::Result<AdminSocket> {
    let Some(fd) = given else {
        return bind(at);
    };
    let socket = match at {
        AdminBind::Tcp(a) => {
            let l = TcpListener::from(fd);
            if l.local_addr()? != *a {
                // The new config moved it: bind where it says now.
                return bind(at);
            }
            AdminSocket::Tcp(l)
        }
        AdminBind::Unix(path) => {
            let l = UnixListener::from(fd);
            if l.local_addr()?.as_pathname() != Some(path.as_path()) {
                return bind(at);
            }
            AdminSocket::Unix(l)
        }
    };
    Ok(socket)
}

impl AdminSocket {
    /// Another descriptor of the same socket, to hand to a successor.
    pub fn copy(&self) -> io::Result<OwnedFd> {
        match self {
            AdminSocket::Tcp(l) => l.try_clone().map(OwnedFd::from),
            AdminSocket::Unix(l) => l.try_clone().map(OwnedFd::from),
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            AdminSocket::Tcp(l) => l.as_raw_fd(),
            AdminSocket::Unix(l) => l.as_raw_fd(),
        }
    }
}

/// Waits up to `limit` for a connection to accept, without taking it: a successor
/// sharing the socket may take it instead.
fn wait_acceptable(socket: &AdminSocket, limit: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: socket.raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid, owned pollfd.
    unsafe { libc::poll(&mut fds, 1, limit.as_millis() as libc::c_int) > 0 }
}

/// What an admin socket answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Everything.
    All,
    /// `/ready` and `/live` only (`admin.address` when a private address is set).
    Probes,
}

/// Admin requests refused, by reason: for `/metrics`.
#[derive(Default)]
struct Refusals {
    busy: AtomicU64,
    deadline: AtomicU64,
    host: AtomicU64,
}

/// Starts one accept thread per admin socket: `public` (at `admin.address`) and the
/// optional `private` one.
pub fn start(
    public: AdminSocket,
    private: Option<AdminSocket>,
    control: Arc<Control>,
) -> io::Result<()> {
    let refusals = Arc::new(Refusals::default());
    let public_scope = if private.is_some() {
        Scope::Probes
    } else {
        Scope::All
    };
    for (socket, scope) in
        std::iter::once((public, public_scope)).chain(private.map(|p| (p, Scope::All)))
    {
        let control = control.clone();
        let refusals = refusals.clone();
        std::thread::Builder::new()
            .name("weft-admin".into())
            .spawn(move || {
                super::defer_to_workers();
                accept_loop(socket, scope, control, refusals)
            })?;
    }
    Ok(())
}

fn accept_loop(socket: AdminSocket, scope: Scope, control: Arc<Control>, refusals: Arc<Refusals>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        // Polled, so that once a successor took the socket over this thread ends
        // (within a quarter second) and leaves every probe to the new process.
        if !wait_acceptable(&socket, Duration::from_millis(250)) {
            if control.handed_off.load(Ordering::Acquire) {
                return;
            }
            continue;
        }
        let accepted = match &socket {
            AdminSocket::Tcp(l) => l.accept().map(|(s, _)| Conn::Tcp(s)),
            AdminSocket::Unix(l) => l.accept().map(|(s, _)| Conn::Unix(s)),
        };
        let mut conn = match accepted {
            Ok(c) => c,
            // The successor took this one.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            refusals.busy.fetch_add(1, Ordering::Relaxed);
            // Unread, and never waited on: the answer fits any socket buffer.
            let _ = conn.set_nonblocking();
            let _ = conn.write_all(&head(503, "text/plain", BUSY.len()));
            let _ = conn.write_all(BUSY.as_bytes());
            continue;
        }
        let (control, refusals, held) = (control.clone(), refusals.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("weft-admin-conn".into())
            .stack_size(512 * 1024)
            .spawn(move || {
                if let Err(e) = serve(conn, scope, &control, &refusals) {
                    tracing::debug!("admin request failed: {e}");
                }
                held.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("admin: cannot start a thread for a connection: {e}");
        }
    }
}

const BUSY: &str = "admin busy: too many connections\n";

/// An accepted admin connection.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(Some(t)),
            Conn::Unix(s) => s.set_write_timeout(Some(t)),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_nonblocking(true),
            Conn::Unix(s) => s.set_nonblocking(true),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

/// Time left before `deadline`, or a `TimedOut` error once there is none.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// The request's head as far as the admin needs it.
struct AdminRequest {
    method: String,
    path: String,
    /// `Some(false)` when a `Host` names something other than an IP literal or
    /// `localhost`; `None` when there is none (HTTP/1.0).
    host_is_local: Option<bool>,
    /// An `Origin` field: a browser's request, maybe from another site's page.
    has_origin: bool,
}

impl AdminRequest {
    /// The path without its query.
    fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// The query (`effective`, `level=debug`), empty when there is none.
    fn query(&self) -> &str {
        self.path.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}

/// Reads one request head by `deadline`; `Ok(None)` when the client closed first.
fn read_head(conn: &mut Conn, deadline: Instant) -> io::Result<Result<Option<AdminRequest>, u16>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        conn.set_read_timeout(left(deadline)?)?;
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(Ok(None));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let mut hosts = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("host"));
                let host_is_local = match (hosts.next(), hosts.next()) {
                    (None, _) => None,
                    (Some(h), None) => Some(is_local_literal(h.value)),
                    (Some(_), Some(_)) => return Ok(Err(400)),
                };
                let has_origin = req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("origin"));
                return Ok(Ok(Some(AdminRequest {
                    method: req.method.unwrap_or_default().to_owned(),
                    path: req.path.unwrap_or_default().to_owned(),
                    host_is_local,
                    has_origin,
                })));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => {}
            _ => return Ok(Err(400)),
        }
    }
}

/// An IP literal (`127.0.0.1`, `[::1]`) or `localhost`, with or without a port: what
/// a probe, a scraper or an operator's curl sends, and what a rebinding page cannot.
fn is_local_literal(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    if let Some(rest) = value.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, port)) => {
                (port.is_empty() || port.starts_with(':')) && ip.parse::<Ipv6Addr>().is_ok()
            }
            None => false,
        };
    }
    let host = value.rsplit_once(':').map_or(value, |(h, _)| h);
    host.parse::<Ipv4Addr>().is_ok() || host.eq_ignore_ascii_case("localhost")
}

fn serve(mut conn: Conn, scope: Scope, control: &Control, refusals: &Refusals) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let request = match read_head(&mut conn, deadline) {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(status)) => {
            return respond(&mut conn, deadline, status, "text/plain", "bad request\n")
        }
        Err(e) if timed_out(&e) => {
            refusals.deadline.fetch_add(1, Ordering::Relaxed);
            // A second of grace to say why; the client may not be reading either.
            let grace = Instant::now() + Duration::from_secs(1);
            return respond(
                &mut conn,
                grace,
                408,
                "text/plain",
                "request head not received in time\n",
            );
        }
        Err(e) => return Err(e),
    };
    if request.host_is_local == Some(false) {
        refusals.host.fetch_add(1, Ordering::Relaxed);
        return respond(
            &mut conn,
            deadline,
            403,
            "text/plain",
            "the admin listener answers only an IP-literal or localhost Host\n",
        );
    }
    let path = request.route();
    if request.method == "POST" && path == "/logging" && scope == Scope::All {
        return change_logging(&mut conn, deadline, &request);
    }
    if request.method != "GET" && request.method != "HEAD" {
        return respond(
            &mut conn,
            deadline,
            405,
            "text/plain",
            "only GET (and POST /logging)\n",
        );
    }
    if scope == Scope::Probes && matches!(path, "/config" | "/metrics" | "/clusters" | "/logging") {
        return respond(
            &mut conn,
            deadline,
            404,
            "text/plain",
            "not here: /config, /metrics and /clusters are served on admin.private_address\n",
        );
    }
    match path {
        "/live" => respond(&mut conn, deadline, 200, "text/plain", "live\n"),
        "/logging" => {
            let body = format!("level: {}\n", crate::observe::log::level());
            respond(&mut conn, deadline, 200, "text/plain", &body)
        }
        "/ready" => {
            if control.ready() {
                respond(&mut conn, deadline, 200, "text/plain", "ready\n")
            } else if control.draining.load(Ordering::Acquire) {
                respond(&mut conn, deadline, 503, "text/plain", "draining\n")
            } else {
                respond(&mut conn, deadline, 503, "text/plain", "starting\n")
            }
        }
        "/config" => {
            let snap = control.publisher.load();
            let shown = if request.query().split('&').any(|p| p == "effective") {
                effective(&snap)
            } else {
                redacted(&snap.source_text)
            };
            let body = serde_json::json!({
                "version": snap.version,
                "reloads": control.reloads.json(),
                "upgrade_socket": control.upgrade_socket.as_ref().map(|p| p.display().to_string()),
                "discovery": control.discovery.status(),
                "content_hash": format!("{:016x}", snap.content_hash),
                "file": snap.source_file.display().to_string(),
                "role": snap.role.name(),
                "config": shown,
            });
            let text = serde_json::to_string_pretty(&body)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            respond(&mut conn, deadline, 200, "application/json", &(text + "\n"))
        }
        "/clusters" => {
            let body = crate::observe::clusters::clusters_json(&control.publisher.load());
            let text = serde_json::to_string_pretty(&body)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            respond(&mut conn, deadline, 200, "application/json", &(text + "\n"))
        }
        "/metrics" => {
            let version = control.version.load(Ordering::Acquire) as i64;
            let ready = control.ready() as i64;
            let workers = control.workers as i64;
            let reloaded = control.reloads.succeeded.load(Ordering::Relaxed) as i64;
            let refused = control.reloads.failed.load(Ordering::Relaxed) as i64;
            let body = control.registry.render(&[
                (
                    "weft_config_reloads_total",
                    "Reloads that published a new config.",
                    "counter",
                    reloaded,
                ),
                (
                    "weft_config_reload_failures_total",
                    "Reloads refused (invalid config, bind failure); the running config stayed.",
                    "counter",
                    refused,
                ),
                (
                    "weft_config_version",
                    "Version of the config snapshot being served.",
                    "gauge",
                    version,
                ),
                (
                    "weft_ready",
                    "1 when every listener is bound on every worker and not draining.",
                    "gauge",
                    ready,
                ),
                ("weft_workers", "Worker threads.", "gauge", workers),
            ]);
            let body = body
                + &discovery_metrics(&control.discovery.status())
                + &crate::observe::clusters::metrics(&control.publisher.load())
                + &crate::observe::routes::metrics(&control.publisher.load())
                + &refusal_metrics(refusals)
                + &crate::observe::process::metrics(control.started);
            respond(&mut conn, deadline, 200, "text/plain; version=0.0.4", &body)
        }
        _ => respond(
            &mut conn,
            deadline,
            404,
            "text/plain",
            "not found: try /ready /live /config /clusters /metrics /logging\n",
        ),
    }
}

/// `POST /logging?level=FILTER`: the log filter, changed at once (`debug`, `warn`,
/// `info,weft_gateway::control=debug`). A browser's request (one with `Origin`) is
/// refused: another site's page must not be able to turn logging up.
fn change_logging(conn: &mut Conn, deadline: Instant, request: &AdminRequest) -> io::Result<()> {
    if request.has_origin {
        return respond(conn, deadline, 403, "text/plain", "not from a browser\n");
    }
    let Some(level) = request
        .query()
        .split('&')
        .find_map(|p| p.strip_prefix("level="))
    else {
        return respond(
            conn,
            deadline,
            400,
            "text/plain",
            "say ?level=FILTER (e.g. debug)\n",
        );
    };
    let level = crate::proto::percent::decode(level).unwrap_or_else(|| level.to_owned());
    match crate::observe::log::set_level(&level) {
        Ok(()) => respond(
            conn,
            deadline,
            200,
            "text/plain",
            &format!("level: {level}\n"),
        ),
        Err(e) => respond(conn, deadline, 400, "text/plain", &format!("{e}\n")),
    }
}

/// The config as JSON-ready TOML, with secrets replaced by `<redacted>`:
/// `consul.token`, the values of route header edits (`authorization: Bearer ..`,
/// API keys) and of `sidecar.register.meta`.
fn redacted(text: &str) -> toml::Value {
    match toml::from_str::<toml::Value>(text) {
        Ok(value) => redact(value),
        Err(_) => toml::Value::String("<config text not shown: it did not parse>".into()),
    }
}

/// The config as served, every default filled in (`/config?effective`), redacted as
/// `redacted` does.
fn effective(snap: &Snapshot) -> toml::Value {
    match weft_mesh::config::effective(&snap.source_file, &snap.source_text, snap.role) {
        Some(value) => redact(value),
        None => toml::Value::String("<effective config not shown: it did not parse>".into()),
    }
}

fn redact(mut value: toml::Value) -> toml::Value {
    fn redact(v: &mut toml::Value) {
        *v = toml::Value::String("<redacted>".into());
    }
    fn redact_values(table: Option<&mut toml::Value>) {
        if let Some(toml::Value::Table(t)) = table {
            t.iter_mut().for_each(|(_, v)| redact(v));
        }
    }
    fn redact_routes(routes: Option<&mut toml::Value>) {
        let Some(toml::Value::Array(routes)) = routes else {
            return;
        };
        for route in routes {
            for edits in ["request_headers", "response_headers"] {
                redact_values(route.get_mut(edits).and_then(|e| e.get_mut("add")));
            }
        }
    }
    if let Some(token) = value.get_mut("consul").and_then(|c| c.get_mut("token")) {
        redact(token);
    }
    if let Some(toml::Value::Array(listeners)) = value.get_mut("listeners") {
        for l in listeners {
            redact_routes(l.get_mut("routes"));
        }
    }
    if let Some(sidecar) = value.get_mut("sidecar") {
        redact_routes(
            sidecar
                .get_mut("outbound")
                .and_then(|o| o.get_mut("routes")),
        );
        redact_values(sidecar.get_mut("register").and_then(|r| r.get_mut("meta")));
    }
    value
}

/// `weft_admin_refused_total{reason}`.
fn refusal_metrics(r: &Refusals) -> String {
    let name = "weft_admin_refused_total";
    let mut out = format!(
        "# HELP {name} Admin requests refused: busy (over {MAX_CONNECTIONS} connections), deadline (head not received in {}s), host (not an IP literal or localhost).\n# TYPE {name} counter\n",
        REQUEST_DEADLINE.as_secs()
    );
    for (reason, n) in [
        ("busy", &r.busy),
        ("deadline", &r.deadline),
        ("host", &r.host),
    ] {
        out.push_str(&format!(
            "{name}{{reason=\"{reason}\"}} {}\n",
            n.load(Ordering::Relaxed)
        ));
    }
    out
}

/// Per-cluster discovery series: whether the served endpoints are stale, errors, updates.
fn discovery_metrics(
    status: &std::collections::BTreeMap<String, super::discovery::SourceStatus>,
) -> String {
    if status.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let families: [(&str, &str, &str, fn(&super::discovery::SourceStatus) -> u64); 4] = [
        (
            "weft_discovery_stale",
            "1 when a cluster's discovery source failed and its last good endpoints are served.",
            "gauge",
            |s| u64::from(s.stale),
        ),
        (
            "weft_discovery_errors_total",
            "Failed discovery reads, by cluster.",
            "counter",
            |s| s.errors,
        ),
        (
            "weft_discovery_updates_total",
            "Discovery answers applied, by cluster.",
            "counter",
            |s| s.updates,
        ),
        (
            "weft_discovery_endpoints",
            "Endpoints the last good discovery answer listed, by cluster.",
            "gauge",
            |s| s.endpoints as u64,
        ),
    ];
    for (name, help, kind, value) in families {
        let values = status
            .iter()
            .map(|(cluster, s)| (cluster.as_str(), value(s)));
        crate::observe::clusters::per_cluster(&mut out, (name, kind, help), values);
    }
    out
}

fn head(status: u16, content_type: &str, length: usize) -> Vec<u8> {
    let reason = crate::proto::h1::reason(status);
    let date = crate::proto::date::now();
    let date = date.to_str().unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\ndate: {date}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Writes the answer by `deadline`: each write waits at most the time left, so a
/// client that reads a byte at a time cannot stretch it.
fn respond(
    conn: &mut Conn,
    deadline: Instant,
    status: u16,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    for mut bytes in [&head(status, content_type, body.len())[..], body.as_bytes()] {
        while !bytes.is_empty() {
            conn.set_write_timeout(left(deadline)?)?;
            match conn.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    conn.flush()
}
