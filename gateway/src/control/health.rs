//! Active health checks (`[clusters.NAME.health_check]`) and outlier detection's
//! sweeps (`[clusters.NAME.outlier_detection]`): one checker for the process, never
//! one per worker, so an endpoint sees one check per interval however many workers
//! there are, and an ejection ends once.
//!
//! The checker is a thread of its own with a small monoio runtime on the workers'
//! driver (io_uring or epoll): a supervisor looks at the published snapshot and keeps
//! one task per checked endpoint (started when an endpoint or its check appears,
//! stopped when it goes, restarted when the check changes). Each task probes on its
//! own schedule and writes the outcome into the endpoint's `HostHealth` flags, which
//! every worker's balancer reads with a relaxed load when it picks: results reach the
//! workers at once, lock-free.
//!
//! Cost: with many endpoints, wakeups and timers are most of what checking costs, so
//! every check waits on one grid of ticks kept by one timer (`grid`), and reads its
//! answer at the next tick of its stride rather than when it lands: a thousand
//! endpoints checked every second make a few dozen wakeups a second, not two thousand.
//!
//! Transitions (Envoy's): a new endpoint is pending and failed until its first result;
//! a success clears both, a failure only `pending`. A failed endpoint needs
//! `healthy_threshold` successes in a row; a healthy one fails after
//! `unhealthy_threshold` network failures or timeouts in a row, or at once on an answer
//! that says it is unwell (an unexpected HTTP status, gRPC NOT_SERVING or an error
//! status).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::h1::head::BodyFraming;
use bytes::{Buf, Bytes};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, IntoPollIo};
use monoio::net::TcpStream;
use weft_mesh::snapshot::health;
use weft_mesh::snapshot::{
    clock_ms, Cluster, Ejection, HealthCheck, HealthProbe, HostHealth, OutlierDetection,
};

use super::Control;
use crate::runtime::driver::Driver;

mod grid;
use grid::{Grid, Pace};

/// How often the supervisor looks for a new snapshot.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// Most bytes of an answer a probe reads.
const MAX_ANSWER: usize = 64 * 1024;

/// Starts the checker thread, on the driver the workers run: over io_uring a check's
/// send and receive are queued operations submitted together with the others due at
/// the same moment, not a syscall each and a readiness round trip.
pub fn start(control: Arc<Control>, driver: Driver) -> io::Result<()> {
    std::thread::Builder::new()
        .name("weft-health".into())
        .spawn(move || {
            // Checks must keep their schedule under load, as the admin's probes do.
            super::defer_to_workers();
            if let Err(e) = driver.block_on(supervise(control)) {
                tracing::error!("health checks: cannot start their {driver} runtime: {e}");
            }
        })?;
    Ok(())
}

/// One endpoint's running check.
struct Running {
    check: Arc<HealthCheck>,
    tls: u64,
    /// A pass returns the endpoint from an outlier ejection.
    uneject: bool,
    stop: Rc<Cell<bool>>,
}

/// One cluster's outlier sweep.
struct Sweeping {
    outlier: Arc<OutlierDetection>,
    stop: Rc<Cell<bool>>,
}

async fn supervise(control: Arc<Control>) {
    let mut running: HashMap<(String, SocketAddr), Running> = HashMap::new();
    let mut sweeping: HashMap<String, Sweeping> = HashMap::new();
    let mut seen = None;
    let grid = Grid::start();
    loop {
        let snapshot = control.publisher.load();
        if seen != Some(snapshot.version) {
            seen = Some(snapshot.version);
            let mut wanted = HashSet::new();
            for cluster in &snapshot.clusters {
                let addresses: HashSet<SocketAddr> =
                    cluster.endpoints.iter().map(|e| e.address).collect();
                cluster.shared.retain_hosts(|a| addresses.contains(&a));
                supervise_sweep(&control, cluster, &mut sweeping);
                let Some(check) = &cluster.health_check else {
                    // Checks turned off by a reload: what they found no longer holds.
                    cluster.shared.clear_active_results();
                    continue;
                };
                let tls = cluster.tls.as_ref().map_or(0, |t| t.identity);
                let uneject = cluster
                    .outlier
                    .as_ref()
                    .is_some_and(|o| o.uneject_on_active_success);
                for e in &cluster.endpoints {
                    let key = (cluster.name.clone(), e.address);
                    if let Some(r) = running.get(&key) {
                        if *r.check == **check && r.tls == tls && r.uneject == uneject {
                            wanted.insert(key);
                            continue;
                        }
                        r.stop.set(true);
                    }
                    let stop = Rc::new(Cell::new(false));
                    monoio::spawn(check_endpoint(
                        e.address,
                        cluster.clone(),
                        check.clone(),
                        // Paced for the shorter of its two intervals.
                        Pace::new(
                            grid.clone(),
                            check.interval.min(check.unhealthy_interval),
                            check.timeout,
                        ),
                        uneject,
                        stop.clone(),
                    ));
                    let check = check.clone();
                    running.insert(
                        key.clone(),
                        Running {
                            check,
                            tls,
                            uneject,
                            stop,
                        },
                    );
                    wanted.insert(key);
                }
            }
            running.retain(|key, r| {
                let keep = wanted.contains(key);
                if !keep {
                    r.stop.set(true);
                }
                keep
            });
            sweeping.retain(|name, s| {
                let keep = snapshot.cluster_by_name(name).is_some();
                if !keep {
                    s.stop.set(true);
                }
                keep
            });
        }
        drop(snapshot);
        grid.after(SUPERVISE_EVERY).await;
    }
}

/// Keeps `cluster`'s outlier sweep running as its config says: started with outlier
/// detection, restarted when it changes, stopped (every ejection ended) without it.
fn supervise_sweep(
    control: &Arc<Control>,
    cluster: &Cluster,
    sweeping: &mut HashMap<String, Sweeping>,
) {
    let current = sweeping.get(&cluster.name);
    match &cluster.outlier {
        None => {
            if let Some(s) = sweeping.remove(&cluster.name) {
                s.stop.set(true);
            }
            // Turned off by a reload: its ejections no longer hold.
            cluster.shared.clear_ejections();
        }
        Some(od) if current.is_some_and(|s| *s.outlier == **od) => {}
        Some(od) => {
            if let Some(s) = current {
                s.stop.set(true);
            }
            let stop = Rc::new(Cell::new(false));
            monoio::spawn(sweep_outliers(
                control.clone(),
                cluster.name.clone(),
                od.clone(),
                stop.clone(),
            ));
            let outlier = od.clone();
            sweeping.insert(cluster.name.clone(), Sweeping { outlier, stop });
        }
    }
}

/// Every `interval`: ejections that are over end, and the interval's answers are judged
/// (`weft_mesh::snapshot::health::sweep`), for the cluster as the current snapshot has it.
async fn sweep_outliers(
    control: Arc<Control>,
    name: String,
    od: Arc<OutlierDetection>,
    stop: Rc<Cell<bool>>,
) {
    loop {
        monoio::time::sleep(od.interval).await;
        if stop.get() {
            return;
        }
        let snapshot = control.publisher.load();
        let Some(id) = snapshot.cluster_by_name(&name) else {
            return;
        };
        let cluster = &snapshot.clusters[id];
        let addresses: Vec<SocketAddr> = cluster.endpoints.iter().map(|e| e.address).collect();
        let hosts = cluster
            .shared
            .hosts_of(&addresses, cluster.health_check.is_some());
        let view: Vec<(SocketAddr, &HostHealth)> = addresses
            .iter()
            .copied()
            .zip(hosts.iter().map(|h| &**h))
            .collect();
        let changes = health::sweep(&view, &od, &cluster.shared.outliers, clock_ms());
        for (endpoint, change) in changes {
            match change {
                Ejection::Ejected(kind, time) => {
                    tracing::warn!(cluster = %name, %endpoint, "outlier detection: ejected for {} ({})", weft_mesh::config::ConfigDuration(time), kind.label())
                }
                Ejection::Returned => {
                    tracing::info!(cluster = %name, %endpoint, "outlier detection: ejection over, back in service")
                }
            }
        }
    }
}

/// What one probe found.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Healthy,
    /// The endpoint answered that it is unwell: failed at once.
    Unwell,
    /// No usable answer (refused, reset, timed out): counts toward the threshold.
    NoAnswer,
}

async fn check_endpoint(
    address: SocketAddr,
    cluster: Arc<Cluster>,
    check: Arc<HealthCheck>,
    pace: Pace,
    uneject: bool,
    stop: Rc<Cell<bool>>,
) {
    let host = cluster.shared.host(address, true);
    let counters = &cluster.shared.checks;
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut http = HttpCheckState::new(&check, pace.clone());
    let mut due = pace.first(jittered(Duration::ZERO, check.initial_jitter));
    loop {
        pace.until(due).await;
        if stop.get() {
            return;
        }
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let outcome = pace
            .within(check.timeout, probe(address, &cluster, &check, &mut http))
            .await
            // A timed-out exchange leaves its connection behind (it was taken).
            .unwrap_or(Outcome::NoAnswer);
        if stop.get() {
            return;
        }
        let was = host.flags();
        match outcome {
            Outcome::Healthy => {
                counters.successes.fetch_add(1, Ordering::Relaxed);
                failures = 0;
                passes += 1;
                if was & HostHealth::PENDING != 0 || passes >= check.healthy_threshold {
                    host.set_active(true);
                }
                if uneject && host.uneject(&cluster.shared.outliers, clock_ms()) {
                    tracing::info!(cluster = %cluster.name, endpoint = %address, "outlier detection: a passing health check ended the ejection");
                }
            }
            Outcome::Unwell | Outcome::NoAnswer => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                passes = 0;
                failures += 1;
                if outcome == Outcome::Unwell
                    || was & HostHealth::PENDING != 0
                    || failures >= check.unhealthy_threshold
                {
                    host.set_active(false);
                }
            }
        }
        let now = host.flags();
        if now != was && (now ^ was) & HostHealth::FAILED_ACTIVE != 0 {
            let state = if now & HostHealth::FAILED_ACTIVE == 0 {
                "healthy"
            } else {
                "unhealthy"
            };
            tracing::info!(cluster = %cluster.name, endpoint = %address, ?outcome, "health check: {state}");
        }
        let interval = if now & HostHealth::FAILED_ACTIVE == 0 {
            check.interval
        } else {
            check.unhealthy_interval
        };
        // Checks start `interval` apart, however long this one took.
        let spread = interval * check.interval_jitter_percent / 100;
        due = pace.next(due, jittered(interval, spread));
    }
}

/// `base` plus up to `spread` at random.
fn jittered(base: Duration, spread: Duration) -> Duration {
    let extra = fastrand::u64(0..=spread.as_micros() as u64);
    base + Duration::from_micros(extra)
}

/// A transport a check speaks HTTP/1.1 over in poll form (TLS).
trait CheckIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> CheckIo for T {}

/// An HTTP check's connection, kept open between checks (as Envoy's are): a check is
/// then one write and one read, not a TCP (and TLS) handshake and a close, which is
/// most of what checking costs (measured: 1,000 endpoints at 1 s took 19% of a core
/// with a connection per check).
enum CheckConnection {
    /// Plain TCP in monoio's own form: over io_uring a send and a receive are queued
    /// operations, not a syscall each.
    Plain(TcpStream),
    /// TLS, on the poll form the TLS stream is built on.
    Poll(Box<dyn CheckIo>),
}

impl CheckConnection {
    async fn send(&mut self, request: &Bytes) -> bool {
        use tokio::io::AsyncWriteExt;
        match self {
            // A `Bytes` clone is a reference count, not a copy of the request.
            CheckConnection::Plain(stream) => stream.write_all(request.clone()).await.0.is_ok(),
            CheckConnection::Poll(io) => io.write_all(request).await.is_ok(),
        }
    }

    /// More of the answer, appended to `buf`: false at the connection's end or on an
    /// error.
    async fn read_more(&mut self, buf: &mut bytes::BytesMut) -> bool {
        use monoio::buf::IoBufMut;
        use tokio::io::AsyncReadExt;
        match self {
            CheckConnection::Plain(stream) => {
                buf.reserve(1024);
                // The buffer is lent to the read; a check that times out here leaves
                // it to the driver and the next check starts a new one.
                let owned = std::mem::take(buf);
                let (len, capacity) = (owned.len(), owned.capacity());
                let (read, slice) = stream.read(owned.slice_mut(len..capacity)).await;
                *buf = slice.into_inner();
                matches!(read, Ok(n) if n > 0)
            }
            CheckConnection::Poll(io) => matches!(io.read_buf(buf).await, Ok(n) if n > 0),
        }
    }
}

/// What an HTTP check keeps from one probe to the next: its request, made once, the
/// connection when it can carry the next check, and the buffer answers are read into.
struct HttpCheckState {
    request: Bytes,
    connection: Option<CheckConnection>,
    buffer: bytes::BytesMut,
    /// Where the answer is read: on the check's stride of the grid.
    pace: Pace,
}

impl HttpCheckState {
    fn new(check: &HealthCheck, pace: Pace) -> HttpCheckState {
        let request = match &check.probe {
            HealthProbe::Http { path, host, .. } => Bytes::from(format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weft-health-check\r\n\r\n"
            )),
            _ => Bytes::new(),
        };
        HttpCheckState {
            request,
            connection: None,
            buffer: bytes::BytesMut::new(),
            pace,
        }
    }
}

async fn connect(address: SocketAddr) -> Option<TcpStream> {
    let stream = TcpStream::connect_addr(address).await.ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

/// A new HTTP check connection, over TLS where the cluster uses it.
async fn connect_http(address: SocketAddr, cluster: &Cluster) -> Option<CheckConnection> {
    let stream = connect(address).await?;
    match &cluster.tls {
        None => Some(CheckConnection::Plain(stream)),
        // Boxed, as the probes below: a kept connection rarely needs a new one.
        Some(tls) => Some(CheckConnection::Poll(Box::new(
            Box::pin(crate::upstream::tls::connect(tls, stream))
                .await
                .ok()?,
        ))),
    }
}

/// One check of `address`. The probes that connect every time (TCP, gRPC) and the TLS
/// handshake are boxed: unboxed, their futures (the gRPC one holds an HTTP/2 client
/// over TLS) made every check's future 7 KB, copied at each start, where a kept HTTP
/// check's own is a few hundred bytes.
async fn probe(
    address: SocketAddr,
    cluster: &Cluster,
    check: &HealthCheck,
    http: &mut HttpCheckState,
) -> Outcome {
    match &check.probe {
        HealthProbe::Http { expected, .. } => {
            // A kept connection the endpoint closed while idle is not a failed check:
            // one more try on a new one.
            if let Some(connection) = http.connection.take() {
                if let Some(status) = http_check(connection, http).await {
                    return http_outcome(status, expected);
                }
            }
            let Some(connection) = connect_http(address, cluster).await else {
                return Outcome::NoAnswer;
            };
            http_check(connection, http)
                .await
                .map_or(Outcome::NoAnswer, |s| http_outcome(s, expected))
        }
        HealthProbe::Tcp { send, receive } => Box::pin(tcp(address, send, receive)).await,
        HealthProbe::Grpc { service, authority } => {
            Box::pin(grpc_probe(address, cluster, authority, service)).await
        }
    }
}

/// A gRPC check on a new connection, over the cluster's TLS where it has one.
async fn grpc_probe(
    address: SocketAddr,
    cluster: &Cluster,
    authority: &str,
    service: &str,
) -> Outcome {
    let Some(stream) = connect(address).await else {
        return Outcome::NoAnswer;
    };
    let scheme = if cluster.tls.is_some() {
        "https"
    } else {
        "http"
    };
    match &cluster.tls {
        None => match stream.into_poll_io() {
            Ok(io) => grpc(io, scheme, authority, service).await,
            Err(_) => Outcome::NoAnswer,
        },
        Some(tls) => match crate::upstream::tls::connect(tls, stream).await {
            Ok(io) => grpc(io, scheme, authority, service).await,
            Err(_) => Outcome::NoAnswer,
        },
    }
}

/// Connect only (`send` empty), or send bytes and wait for `receive` among the answer.
async fn tcp(address: SocketAddr, send: &[u8], receive: &[u8]) -> Outcome {
    let Some(mut stream) = connect(address).await else {
        return Outcome::NoAnswer;
    };
    if send.is_empty() && receive.is_empty() {
        return Outcome::Healthy;
    }
    if !send.is_empty() && stream.write_all(send.to_vec()).await.0.is_err() {
        return Outcome::NoAnswer;
    }
    let mut seen = Vec::new();
    while seen.len() < MAX_ANSWER {
        if !receive.is_empty() && seen.windows(receive.len()).any(|w| w == receive) {
            return Outcome::Healthy;
        }
        let (n, buf) = stream.read(Vec::with_capacity(4096)).await;
        match n {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    if receive.is_empty() {
        Outcome::Healthy
    } else {
        Outcome::NoAnswer
    }
}

/// One HTTP/1.1 exchange on `connection`: the final response's status (`None` with
/// no usable answer). The connection goes back into `http` when it can carry the next
/// check (HTTP/1.1, not closing, a body of known length, read whole).
async fn http_check(mut connection: CheckConnection, http: &mut HttpCheckState) -> Option<u16> {
    if !connection.send(&http.request).await {
        return None;
    }
    // The answer is read on the next tick of the stride, with the other checks'
    // answers, rather than each waking the checker when it lands.
    http.pace.settle().await;
    let buf = &mut http.buffer;
    buf.clear();
    let head = loop {
        match crate::proto::h1::head::parse_response(buf, MAX_ANSWER, false) {
            // Interim answers (100, 103) come before the one that counts.
            Ok(Some(head)) if (100..200).contains(&head.status) => continue,
            Ok(Some(head)) => break head,
            Ok(None) if connection.read_more(buf).await => {}
            Ok(None) | Err(_) => return None,
        }
    };
    let status = Some(head.status);
    let keep = head.version == crate::proto::h1::head::Version::H11 && !head.connection.close;
    let rest = match head.framing {
        BodyFraming::None => 0,
        BodyFraming::Length(n) if keep && n <= MAX_ANSWER as u64 => n as usize,
        _ => return status,
    };
    while buf.len() < rest {
        if !connection.read_more(buf).await {
            return status;
        }
    }
    // Bytes past the body would be an answer to nothing: the connection is not reused.
    if keep && buf.len() == rest {
        http.connection = Some(connection);
    }
    status
}

/// A status against the expected ranges (`[start, end)`).
fn http_outcome(status: u16, expected: &[(u16, u16)]) -> Outcome {
    if expected
        .iter()
        .any(|&(start, end)| (start..end).contains(&status))
    {
        Outcome::Healthy
    } else {
        Outcome::Unwell
    }
}

/// The gRPC Health Checking Protocol: `grpc.health.v1.Health/Check` for `service`;
/// healthy only on grpc-status 0 and SERVING.
async fn grpc<T>(io: T, scheme: &str, authority: &str, service: &str) -> Outcome
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let Ok((send, connection)) = h2::client::handshake(io).await else {
        return Outcome::NoAnswer;
    };
    monoio::spawn(async move {
        let _ = connection.await;
    });
    let Ok(mut send) = send.ready().await else {
        return Outcome::NoAnswer;
    };
    let request = http::Request::post(format!(
        "{scheme}://{authority}/grpc.health.v1.Health/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("user-agent", "weft-health-check")
    .body(());
    let Ok(request) = request else {
        return Outcome::NoAnswer;
    };
    let Ok((response, mut body)) = send.send_request(request, false) else {
        return Outcome::NoAnswer;
    };
    if body.send_data(health_request(service), true).is_err() {
        return Outcome::NoAnswer;
    }
    let Ok(response) = response.await else {
        return Outcome::NoAnswer;
    };
    let (parts, mut body) = response.into_parts();
    if parts.headers.contains_key("grpc-status") {
        // Trailers-only: no HealthCheckResponse, so not SERVING (NOT_FOUND for an
        // unknown service).
        return Outcome::Unwell;
    }
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return Outcome::NoAnswer;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(chunk.chunk());
        if message.len() > MAX_ANSWER {
            return Outcome::NoAnswer;
        }
    }
    let ok = match body.trailers().await {
        Ok(Some(t)) => t.get("grpc-status").is_some_and(|s| s.as_bytes() == b"0"),
        _ => return Outcome::NoAnswer,
    };
    if ok && serving(&message) {
        Outcome::Healthy
    } else {
        Outcome::Unwell
    }
}

/// A length-prefixed `HealthCheckRequest { service = 1 }`.
fn health_request(service: &str) -> Bytes {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        encode_varint(service.len() as u64, &mut message);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Whether a length-prefixed `HealthCheckResponse` says SERVING (`status = 1`, field 1
/// as a varint); an empty message is UNKNOWN.
fn serving(framed: &[u8]) -> bool {
    let Some(message) = framed.get(5..) else {
        return false;
    };
    let mut i = 0;
    let mut status = 0u64;
    while i < message.len() {
        let key = message[i];
        i += 1;
        match key {
            0x08 => {
                let mut shift = 0;
                status = 0;
                while i < message.len() {
                    let b = message[i];
                    i += 1;
                    status |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 || shift > 63 {
                        break;
                    }
                }
            }
            // Anything else: not a field this check knows; the answer is not SERVING.
            _ => return false,
        }
    }
    status == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_meet_the_expected_ranges() {
        let ranges = [(200, 300)];
        assert_eq!(http_outcome(204, &ranges), Outcome::Healthy);
        assert_eq!(http_outcome(503, &ranges), Outcome::Unwell);
        assert_eq!(http_outcome(300, &ranges), Outcome::Unwell);
    }

    /// What one check reads of `answer`, and whether its connection is kept.
    fn check_against(answer: &'static [u8]) -> (Option<u16>, bool) {
        use tokio::io::AsyncWriteExt;
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (ours, mut theirs) = tokio::io::duplex(4096);
            // The endpoint reads the request, answers, and closes: a check that reads
            // past the answer sees the end.
            monoio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut request = [0u8; 64];
                let _ = theirs.read(&mut request).await;
                let _ = theirs.write_all(answer).await;
            });
            let mut http = HttpCheckState {
                request: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
                connection: None,
                buffer: bytes::BytesMut::new(),
                // As a check every second with a 500 ms timeout reads its answer.
                pace: Pace::new(
                    Grid::start(),
                    Duration::from_secs(1),
                    Duration::from_millis(500),
                ),
            };
            let status = http_check(CheckConnection::Poll(Box::new(ours)), &mut http).await;
            (status, http.connection.is_some())
        })
    }

    #[test]
    fn http_check_connections_are_kept_only_when_they_can_serve_the_next() {
        assert_eq!(
            check_against(b"HTTP/1.1 204 No Content\r\n\r\n"),
            (Some(204), true)
        );
        assert_eq!(
            check_against(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            ),
            (Some(200), true)
        );
        assert_eq!(
            check_against(b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
            (Some(503), false)
        );
        assert_eq!(
            check_against(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
            (Some(200), false)
        );
        assert_eq!(
            check_against(b"HTTP/1.1 200 OK\r\n\r\nuntil close"),
            (Some(200), false)
        );
        assert_eq!(
            check_against(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"),
            (Some(200), false)
        );
        assert_eq!(check_against(b"garbage\r\n\r\n"), (None, false));
        assert_eq!(check_against(b""), (None, false));
    }

    #[test]
    fn grpc_health_messages() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_request("ab")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        assert!(!serving(&[0, 0, 0, 0, 2, 0x08, 0x02]));
        assert!(!serving(&[0, 0, 0, 0, 0]), "empty is UNKNOWN");
    }
}
