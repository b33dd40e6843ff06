//! The load generator: HTTP/1.1 clients on monoio, one runtime per load CPU.
//!
//! Closed loop: every connection sends its next request as soon as the previous
//! response is complete (maximum throughput). Open loop: requests are due on a fixed
//! schedule (`rate` per second overall, spread over the connections) and latency is
//! measured from when a request was *due*, not when it was sent, so a stall shows up
//! in the percentiles instead of silently lowering the offered load (coordinated
//! omission, corrected the way wrk2 does). Latencies go into HDR histograms (1 us to
//! 60 s, 3 significant digits), one per thread, merged at the end.
//!
//! A run starts with a warm-up on the same connections (`warmup`): nothing is counted
//! until it ends, so connection set-up (thousands of connects and accepts at once),
//! empty pools and cold caches never reach the figures. From then on a completed
//! request counts toward throughput, and its latency is recorded if it was sent (or,
//! open loop, due) after the warm-up: a request in flight across the boundary carries
//! the start-up's queueing.
//!
//! An interleaved comparison (`LoadSpec::windows`) measures two conditions on the same
//! connections, alternating while the load runs, so that drift between two separate
//! runs (the machine, the connections' placement) does not land on one side only:
//! each latency is also recorded under the window its request was sent (or due) in.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub connections: usize,
    /// What is measured: this long after the warm-up.
    pub duration: Duration,
    /// Load before the measurement on the same connections, counted nowhere.
    pub warmup: Duration,
    /// Requests per second in all; `None` runs closed-loop.
    pub rate: Option<f64>,
    /// Open a new connection for every request (and close it after).
    pub new_connection: bool,
    pub path: String,
    pub threads: usize,
    pub cpus: Vec<usize>,
    /// Speak HTTP/2 (h2c, prior knowledge) with this many concurrent streams per
    /// connection; `None` is HTTP/1.1.
    pub h2_streams: Option<usize>,
    /// With `h2_streams`: make gRPC unary calls (a 16-byte message each, success only
    /// with `grpc-status: 0`) instead of GETs.
    pub grpc: bool,
    /// HTTP/1.1 over TLS, trusting this CA certificate (PEM); SNI `bench.test`.
    pub tls_ca: Option<std::path::PathBuf>,
    /// An interleaved comparison: latencies are also kept per window (see the header).
    pub windows: Option<Windows>,
}

/// Which of two alternating conditions is on, set by whoever drives the comparison.
#[derive(Clone, Debug, Default)]
pub struct Windows(Arc<AtomicU8>);

impl Windows {
    /// The condition compared against (e.g. no reloads).
    pub const BASELINE: u8 = 0;
    /// The condition under test (e.g. reloads).
    pub const TREATED: u8 = 1;
    /// Between the two (e.g. the aftermath of a treated window): recorded in neither.
    pub const NEITHER: u8 = 2;

    pub fn enter(&self, window: u8) {
        self.0.store(window, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub bytes: u64,
    /// With `LoadSpec::windows`: latency per window, baseline then treated.
    pub by_window: Option<Box<[Histogram<u64>; 2]>>,
}

impl LoadResult {
    fn empty() -> LoadResult {
        LoadResult {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            bytes: 0,
            by_window: None,
        }
    }

    /// A connection's (or stream's) result. Its per-window histograms are made now,
    /// at the start of the warm-up: each is ~150 KB to zero, and made on the first
    /// measured request they stalled the generator for 30 ms at 50 connections.
    fn for_connection(shared: &Shared) -> LoadResult {
        let mut out = LoadResult::empty();
        if shared.windows.is_some() {
            out.windows_mut();
        }
        out
    }

    fn merge(&mut self, other: &LoadResult) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.bytes += other.bytes;
        let _ = self.latency.add(&other.latency);
        if let Some(theirs) = &other.by_window {
            for (m, t) in self.windows_mut().iter_mut().zip(theirs.iter()) {
                let _ = m.add(t);
            }
        }
    }

    /// Counts one completed exchange, and its latency if it began in the measured
    /// period (see the module header), under `window` too if that is one.
    fn completed(&mut self, shared: &Shared, sent: Instant, window: u8, body: u64) {
        if Instant::now() < shared.measure_from {
            return;
        }
        self.requests += 1;
        self.bytes += body;
        if sent >= shared.measure_from {
            let us = sent.elapsed().as_micros().max(1) as u64;
            let _ = self.latency.record(us);
            // `window` is NEITHER unless the run compares windows (`Shared::window`).
            if window < Windows::NEITHER {
                let _ = self.windows_mut()[usize::from(window)].record(us);
            }
        }
    }

    fn windows_mut(&mut self) -> &mut [Histogram<u64>; 2] {
        self.by_window
            .get_or_insert_with(|| Box::new([histogram(), histogram()]))
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Latency at a percentile, in microseconds.
    pub fn p(&self, pct: f64) -> u64 {
        self.latency.value_at_quantile(pct / 100.0)
    }

    /// Latency at a percentile within one window of an interleaved comparison.
    pub fn window_p(&self, window: u8, pct: f64) -> Option<u64> {
        let h = self.by_window.as_ref()?.get(usize::from(window))?;
        (!h.is_empty()).then(|| h.value_at_quantile(pct / 100.0))
    }
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("hdr histogram"))
}

/// Per-connection receive buffer; larger responses grow it.
const RECV_BUF: usize = 16 * 1024;

pub fn run(spec: &LoadSpec) -> LoadResult {
    let threads = spec.threads.max(1).min(spec.connections.max(1));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let spec = spec.clone();
            // Connections and rate are split evenly; the first threads take the remainder.
            let conns = spec.connections / threads + usize::from(t < spec.connections % threads);
            let rate = spec
                .rate
                .map(|r| r * conns as f64 / spec.connections as f64);
            std::thread::spawn(move || {
                if let Some(&cpu) = spec.cpus.get(t % spec.cpus.len().max(1)) {
                    crate::net::pin(cpu);
                }
                let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("runtime");
                rt.block_on(thread_load(spec, conns, rate))
            })
        })
        .collect();
    let mut total = LoadResult::empty();
    for h in handles {
        if let Ok(r) = h.join() {
            total.merge(&r);
        }
    }
    total.elapsed = started
        .elapsed()
        .saturating_sub(spec.warmup)
        .min(spec.duration)
        .max(Duration::from_millis(1));
    total
}

struct Shared {
    /// Leaked once per thread: monoio writes need an owned buffer, and a `'static`
    /// slice is one without a copy per request.
    request: &'static [u8],
    addr: SocketAddr,
    /// The warm-up ends here; nothing before counts.
    measure_from: Instant,
    deadline: Instant,
    new_connection: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    windows: Option<Windows>,
}

impl Shared {
    /// The window a request sent now belongs to.
    fn window(&self) -> u8 {
        self.windows
            .as_ref()
            .map_or(Windows::NEITHER, |w| w.0.load(Ordering::Relaxed))
    }
}

/// The name the bench's TLS certificate is for.
pub const TLS_NAME: &str = "bench.test";

/// A client config trusting only `ca` (aws-lc-rs, as weft uses).
fn tls_client(ca: &std::path::Path) -> Option<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).ok()? {
        roots.add(c.ok()?).ok()?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every new connection is a full handshake: what `tls-handshake` measures.
    config.resumption = rustls::client::Resumption::disabled();
    Some(Arc::new(config))
}

/// A client connection the load generator speaks HTTP/1.1 over: plain TCP (monoio's
/// owned-buffer I/O) or TLS (rustls over poll-io).
trait Wire: Sized {
    async fn open(shared: &Shared) -> Option<Self>;
    async fn send(&mut self, data: &'static [u8]) -> Result<(), ()>;
    /// Appends what arrives to `buf`; an error at EOF.
    async fn recv(&mut self, buf: &mut BytesMut) -> Result<(), ()>;
}

impl Wire for TcpStream {
    async fn open(shared: &Shared) -> Option<Self> {
        let s = TcpStream::connect_addr(shared.addr).await.ok()?;
        let _ = s.set_nodelay(true);
        Some(s)
    }
    async fn send(&mut self, data: &'static [u8]) -> Result<(), ()> {
        self.write_all(data).await.0.map(|_| ()).map_err(|_| ())
    }
    async fn recv(&mut self, buf: &mut BytesMut) -> Result<(), ()> {
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        let owned = std::mem::take(buf);
        let (len, cap) = (owned.len(), owned.capacity());
        let (res, slice) = self.read(owned.slice_mut(len..cap)).await;
        *buf = slice.into_inner();
        match res {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(()),
        }
    }
}

struct TlsWire(tokio_rustls::client::TlsStream<monoio::net::tcp::stream_poll::TcpStreamPoll>);

impl Wire for TlsWire {
    async fn open(shared: &Shared) -> Option<Self> {
        use monoio::io::IntoPollIo;
        let s = TcpStream::connect_addr(shared.addr).await.ok()?;
        let _ = s.set_nodelay(true);
        let name = rustls_pki_types::ServerName::try_from(TLS_NAME).ok()?;
        let tls = tokio_rustls::TlsConnector::from(shared.tls.clone()?)
            .connect(name, s.into_poll_io().ok()?)
            .await
            .ok()?;
        Some(TlsWire(tls))
    }
    async fn send(&mut self, data: &'static [u8]) -> Result<(), ()> {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(data).await.map_err(|_| ())?;
        self.0.flush().await.map_err(|_| ())
    }
    async fn recv(&mut self, buf: &mut BytesMut) -> Result<(), ()> {
        use tokio::io::AsyncReadExt;
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        match self.0.read_buf(buf).await {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(()),
        }
    }
}

async fn thread_load(spec: LoadSpec, conns: usize, rate: Option<f64>) -> LoadResult {
    let mut request = format!("GET {} HTTP/1.1\r\nHost: bench\r\n", spec.path);
    if spec.new_connection {
        request += "Connection: close\r\n";
    }
    request += "\r\n";
    let start = Instant::now();
    let shared = Rc::new(Shared {
        request: Box::leak(request.into_bytes().into_boxed_slice()),
        addr: spec.addr,
        measure_from: start + spec.warmup,
        deadline: start + spec.warmup + spec.duration,
        new_connection: spec.new_connection,
        tls: spec.tls_ca.as_deref().and_then(tls_client),
        windows: spec.windows.clone(),
    });
    if let Some(streams) = spec.h2_streams {
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                monoio::spawn(h2_connection(
                    shared.clone(),
                    spec.path.clone(),
                    streams,
                    spec.grpc,
                ))
            })
            .collect();
        let mut out = LoadResult::empty();
        for t in tasks {
            out.merge(&t.await);
        }
        return out;
    }
    // Open loop: connection i sends at start + (i/conns + k) * period.
    let period = rate.map(|r| Duration::from_secs_f64(conns as f64 / r.max(1e-9)));
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let shared = shared.clone();
            let offset = period.map(|p| p.mul_f64(i as f64 / conns as f64));
            let tls = shared.tls.is_some();
            monoio::spawn(async move {
                if tls {
                    connection_loop::<TlsWire>(shared, start, period, offset).await
                } else {
                    connection_loop::<TcpStream>(shared, start, period, offset).await
                }
            })
        })
        .collect();
    let mut out = LoadResult::empty();
    for t in tasks {
        out.merge(&t.await);
    }
    out
}

async fn connection_loop<W: Wire>(
    shared: Rc<Shared>,
    start: Instant,
    period: Option<Duration>,
    offset: Option<Duration>,
) -> LoadResult {
    let mut out = LoadResult::for_connection(&shared);
    let mut stream: Option<W> = None;
    let mut buf = BytesMut::with_capacity(RECV_BUF);
    let mut due = start + offset.unwrap_or_default();
    loop {
        let now = Instant::now();
        if now >= shared.deadline {
            break;
        }
        // Latency counts from when the request was due, so a late response that delays
        // the next request is charged to the server (coordinated omission). The timer's
        // own lateness is not: monoio's timer has millisecond granularity, and a
        // connection that was idle and ready at `due` starts its clock when it wakes.
        let mut sent = match period {
            Some(_) if due > now => {
                monoio::time::sleep(due - now).await;
                Instant::now()
            }
            Some(_) => due,
            None => now,
        };
        if let Some(p) = period {
            due += p;
        }
        let window = shared.window();
        if stream.is_none() {
            match W::open(&shared).await {
                Some(s) => stream = Some(s),
                None => {
                    out.errors += 1;
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            // Closed loop on keep-alive, a request's latency starts when it is sent
            // on an open connection (as wrk and h2load count it); new-connection
            // and open-loop runs keep the connect in.
            if period.is_none() && !shared.new_connection {
                sent = Instant::now();
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        match exchange(s, shared.request, &mut buf).await {
            Ok((status, body, keep)) => {
                if (200..400).contains(&status) {
                    out.completed(&shared, sent, window, body);
                } else {
                    out.errors += 1;
                }
                if !keep || shared.new_connection {
                    stream = None;
                }
            }
            Err(()) => {
                // A failure after the deadline is the run ending, not an error.
                if Instant::now() < shared.deadline {
                    out.errors += 1;
                }
                stream = None;
            }
        }
    }
    out
}

/// One request and its response: (status, body bytes, connection reusable).
async fn exchange<W: Wire>(
    s: &mut W,
    request: &'static [u8],
    buf: &mut BytesMut,
) -> Result<(u16, u64, bool), ()> {
    s.send(request).await?;
    // Consumed responses were split off the front; with the buffer empty, `reserve`
    // rewinds it to the start of its own allocation instead of growing it. Without
    // this every connection reallocated after the same number of requests, all at
    // once: a 0.5 s stall of the whole generator that made p99 at 4,000 connections.
    buf.clear();
    buf.reserve(RECV_BUF);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = resp.code.unwrap_or(0);
                let mut length = None;
                let mut close = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("connection")
                        && h.value.eq_ignore_ascii_case(b"close")
                    {
                        close = true;
                    }
                }
                // The bench upstream always sends Content-Length; anything else is an error.
                let length = length.ok_or(())?;
                let _ = buf.split_to(head_len);
                while buf.len() < length {
                    s.recv(buf).await?;
                }
                let _ = buf.split_to(length);
                return Ok((status, length as u64, !close));
            }
            Ok(httparse::Status::Partial) => s.recv(buf).await?,
            Err(_) => return Err(()),
        }
    }
}

/// One HTTP/2 connection with `streams` closed-loop streams on it (h2 on monoio's
/// poll-io, the same stack weft serves h2 with).
async fn h2_connection(shared: Rc<Shared>, path: String, streams: usize, grpc: bool) -> LoadResult {
    use monoio::io::IntoPollIo;
    let mut out = LoadResult::empty();
    let Ok(stream) = TcpStream::connect_addr(shared.addr).await else {
        out.errors += 1;
        return out;
    };
    let _ = stream.set_nodelay(true);
    let Ok(io) = stream.into_poll_io() else {
        out.errors += 1;
        return out;
    };
    let Ok((sender, conn)) = h2::client::handshake(io).await else {
        out.errors += 1;
        return out;
    };
    monoio::spawn(async move {
        let _ = conn.await;
    });
    let uri: http::Uri = format!("http://bench{path}").parse().unwrap_or_default();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (sender, shared, uri) = (sender.clone(), shared.clone(), uri.clone());
            monoio::spawn(async move {
                let mut out = LoadResult::for_connection(&shared);
                while Instant::now() < shared.deadline {
                    let sent = Instant::now();
                    let window = shared.window();
                    match h2_request(sender.clone(), uri.clone(), grpc).await {
                        Ok((status, bytes)) if (200..400).contains(&status) => {
                            out.completed(&shared, sent, window, bytes);
                        }
                        _ if Instant::now() >= shared.deadline => break,
                        _ => {
                            out.errors += 1;
                            break;
                        }
                    }
                }
                out
            })
        })
        .collect();
    for t in tasks {
        out.merge(&t.await);
    }
    out
}

/// One gRPC message of 16 bytes: the 5-byte frame prefix, then the payload.
const GRPC_MESSAGE: &[u8] = b"\0\0\0\0\x10weft-bench-call!";

/// One GET (or gRPC unary call); the HTTP status (a failed gRPC status counts as 500)
/// and the body bytes.
async fn h2_request(
    sender: h2::client::SendRequest<bytes::Bytes>,
    uri: http::Uri,
    grpc: bool,
) -> Result<(u16, u64), h2::Error> {
    let mut sender = sender.ready().await?;
    let internal = |_| h2::Error::from(h2::Reason::INTERNAL_ERROR);
    let req = if grpc {
        http::Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
    } else {
        http::Request::get(uri).body(())
    }
    .map_err(internal)?;
    let (response, mut request_body) = sender.send_request(req, !grpc)?;
    if grpc {
        request_body.send_data(bytes::Bytes::from_static(GRPC_MESSAGE), true)?;
    }
    let response = response.await?;
    let mut status = response.status().as_u16();
    let grpc_status = |h: &http::HeaderMap| h.get("grpc-status").map(|v| v.as_bytes() == b"0");
    let trailers_only = grpc_status(response.headers());
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if grpc {
        let ok = match trailers_only {
            Some(ok) => ok,
            None => body.trailers().await?.as_ref().and_then(grpc_status) == Some(true),
        };
        if !ok {
            status = 500;
        }
    }
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(windows: Option<Windows>, measure_from: Instant) -> Shared {
        Shared {
            request: b"",
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            measure_from,
            deadline: measure_from + Duration::from_secs(60),
            new_connection: false,
            tls: None,
            windows,
        }
    }

    #[test]
    fn latencies_are_kept_per_window_and_the_gap_in_neither() {
        let start = Instant::now();
        let windows = Windows::default();
        let s = shared(Some(windows.clone()), start);
        let mut a = LoadResult::for_connection(&s);
        let mut b = LoadResult::for_connection(&s);
        for (window, into_b) in [
            (Windows::BASELINE, false),
            (Windows::TREATED, true),
            (Windows::NEITHER, false),
            (Windows::TREATED, false),
        ] {
            windows.enter(window);
            let result = if into_b { &mut b } else { &mut a };
            result.completed(&s, start, s.window(), 1);
        }
        a.merge(&b);
        assert_eq!(a.requests, 4);
        assert_eq!(a.latency.len(), 4);
        let by = a.by_window.as_ref().map(|w| (w[0].len(), w[1].len()));
        assert_eq!(by, Some((1, 2)));
        assert!(a.window_p(Windows::TREATED, 99.0).is_some());
    }

    #[test]
    fn a_run_without_windows_keeps_no_window_histograms() {
        let s = shared(None, Instant::now());
        let mut r = LoadResult::for_connection(&s);
        r.completed(&s, s.measure_from, s.window(), 1);
        assert_eq!(r.latency.len(), 1);
        assert!(r.by_window.is_none());
        assert_eq!(r.window_p(Windows::BASELINE, 50.0), None);
    }

    #[test]
    fn nothing_before_the_warm_up_ends_is_counted() {
        let s = shared(
            Some(Windows::default()),
            Instant::now() + Duration::from_secs(60),
        );
        let mut r = LoadResult::for_connection(&s);
        r.completed(&s, Instant::now(), Windows::BASELINE, 1);
        assert_eq!(r.requests, 0);
        assert_eq!(r.window_p(Windows::BASELINE, 50.0), None);
    }
}
