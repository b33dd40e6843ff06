//! `weft-bench run`: scenarios x systems x rounds, interleaved, then medians.
//!
//! Within a round every system runs the same scenario point back to back (weft, nginx,
//! haproxy, direct, ...), so slow drifts of a noisy machine hit all systems alike; the
//! report takes the median over rounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use serde::Serialize;

use crate::load::{self, LoadSpec, Windows};
use crate::procstat;
use crate::systems::{self, Env, Kind, Protocol};

pub struct RunOpts {
    pub scenarios: Vec<String>,
    pub systems: Vec<Kind>,
    pub out: PathBuf,
    pub quick: bool,
    pub rounds: usize,
    pub duration: Duration,
    pub proxy_cpus: Vec<usize>,
    pub load_cpus: Vec<usize>,
    pub weft_bin: PathBuf,
    pub weft_pgo_bin: PathBuf,
    pub connections: Vec<usize>,
    pub idle_connections: usize,
}

pub const SCENARIOS: [&str; 16] = [
    "h1-keepalive",
    "h2-multiplexed",
    "h2-multiplexed-h2load",
    "h2-local-response",
    "grpc-unary",
    "tls-h1",
    "tls-handshake",
    "h1-fixed-rate",
    "h1-new-conn",
    "h1-large-body",
    "idle-conns",
    "reload-under-load",
    "reload-swap",
    "discovery-swap",
    "scale",
    "health-checks",
];

/// Concurrent streams per connection in `h2-multiplexed` and `grpc-unary`.
const H2_STREAMS: usize = 10;

/// One measured run of one system at one scenario point.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub scenario: String,
    pub system: String,
    pub connections: usize,
    pub workers: usize,
    pub round: usize,
    pub rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Mean latency, where the generator reports no percentiles (h2load).
    pub mean_latency_us: Option<f64>,
    pub errors: u64,
    /// Proxy CPU (user+sys) per request in microseconds; absent for `direct`.
    pub cpu_us_per_req: Option<f64>,
    pub rss_kib: Option<u64>,
    /// idle-conns: RSS growth per idle connection, bytes.
    pub idle_bytes_per_conn: Option<f64>,
    /// reload-under-load: SIGHUPs sent and the config version reached.
    pub reloads: Option<u64>,
    /// reload-swap: SIGHUP -> new snapshot serving, median and max in milliseconds,
    /// and p99 of the concurrent load without and with swaps.
    pub swap: Option<SwapFigures>,
    /// health-checks: the endpoints, where they are, and the checker's share of a core.
    pub checks: Option<crate::checks::CheckFigures>,
    /// Latency curve for plots: (percentile, microseconds).
    pub curve: Vec<(f64, u64)>,
}

impl Sample {
    /// A sample of `scenario` for `system` at one point, every figure still empty.
    pub fn at(
        scenario: &str,
        system: String,
        connections: usize,
        workers: usize,
        round: usize,
    ) -> Sample {
        Sample {
            scenario: scenario.into(),
            system,
            connections,
            workers,
            round,
            rps: 0.0,
            p50_us: 0,
            p90_us: 0,
            p99_us: 0,
            p999_us: 0,
            mean_latency_us: None,
            errors: 0,
            cpu_us_per_req: None,
            rss_kib: None,
            idle_bytes_per_conn: None,
            reloads: None,
            swap: None,
            checks: None,
            curve: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SwapFigures {
    pub routes: usize,
    pub clusters: usize,
    pub swaps: usize,
    pub median_ms: f64,
    pub max_ms: f64,
    pub p99_without_swaps_us: u64,
    pub p99_with_swaps_us: u64,
    /// The load beside the swaps: `None` closed loop (both CPUs saturated), else a
    /// fixed rate in requests/s (open loop, headroom left).
    pub rate: Option<f64>,
    /// Latency without and with swaps, for the report to pool over rounds.
    #[serde(skip)]
    pub latency: Option<Arc<[Histogram<u64>; 2]>>,
}

struct Upstreams {
    small: SocketAddr,
    large: SocketAddr,
    children: Vec<Child>,
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_upstreams(opts: &RunOpts) -> std::io::Result<Upstreams> {
    let exe = std::env::current_exe()?;
    let cpus = systems::cpu_list(&opts.load_cpus);
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for body in [64usize, 1 << 20] {
        let port = systems::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(&exe)
            .args([
                "upstream",
                "--listen",
                &addr.to_string(),
                "--body-size",
                &body.to_string(),
                "--cpus",
                &cpus,
            ])
            .args(["--threads", &opts.load_cpus.len().max(1).to_string()])
            .stdout(Stdio::null())
            .spawn()?;
        children.push(child);
        addrs.push(addr);
    }
    for a in &addrs {
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(a).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "bench upstream on {a} did not start"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(Upstreams {
        small: addrs[0],
        large: addrs[1],
        children,
    })
}

/// A private temporary directory, removed on drop.
struct WorkDir(std::path::PathBuf);

impl WorkDir {
    fn new() -> std::io::Result<WorkDir> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(opts: &RunOpts) -> Result<Vec<Sample>, String> {
    procstat::raise_nofile();
    // The harness's own helper threads (reload-swap's SIGHUP sender and its 1 ms probe,
    // reload-under-load's signaller, the CPU sampler, idle-conns' clients) inherit
    // this: they stay off the proxy's CPUs, whose time they would otherwise take and
    // charge to the proxy's latency. Systems under test are started under `taskset`.
    crate::net::pin_to(&opts.load_cpus);
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    // The run's certificates, keys and configs: in a private directory of its own
    // (0700, absolute, as peers resolve relative paths in their configs against their
    // own prefix), removed when the run ends, never beside the results.
    let work = WorkDir::new().map_err(|e| format!("a temporary directory: {e}"))?;
    let env = Env {
        weft_bin: opts.weft_bin.clone(),
        weft_pgo_bin: opts.weft_pgo_bin.clone(),
        proxy_cpus: opts.proxy_cpus.clone(),
        dir: work.0.clone(),
    };
    if opts.scenarios.iter().any(|s| s.starts_with("tls-")) {
        systems::make_tls_cert(&env.dir).map_err(|e| e.to_string())?;
    }
    let ups = start_upstreams(opts).map_err(|e| e.to_string())?;
    let placements = crate::checks::Placements::prepare(opts);
    let mut samples = Vec::new();
    for round in 1..=opts.rounds {
        for scenario in &opts.scenarios {
            for point in points(scenario, opts) {
                for kind in systems_for(scenario, opts) {
                    let s = if scenario == "health-checks" {
                        crate::checks::measure(&kind, &point, round, opts, &env, &placements)
                    } else {
                        measure(scenario, &kind, &point, round, opts, &env, &ups)
                    };
                    match s {
                        Ok(s) => {
                            eprintln!("{}", one_line(&s));
                            samples.push(s);
                        }
                        Err(e) => {
                            eprintln!("round {round} {scenario} {}: skipped: {e}", kind.name())
                        }
                    }
                }
            }
        }
    }
    Ok(samples)
}

/// The open-loop rate of h1-fixed-rate and of reload-swap's second point: ~20% of what
/// one weft worker sustains here; `--quick` uses the smaller one.
const FIXED_RATE: f64 = 20_000.0;
const QUICK_FIXED_RATE: f64 = 5_000.0;

/// A scenario point: connections and workers (and for fixed-rate, the rate; for
/// health-checks, whether the endpoints are in a network namespace of their own).
#[derive(Clone, Debug)]
pub struct Point {
    connections: usize,
    workers: usize,
    rate: Option<f64>,
    pub far: bool,
}

fn points(scenario: &str, opts: &RunOpts) -> Vec<Point> {
    let one = |c: usize| Point {
        connections: c,
        workers: 1,
        rate: None,
        far: false,
    };
    match scenario {
        // Throughput scenarios run at every `--connections` point (50, 400, 2000 by
        // default); the quick smoke check keeps one small point.
        "h1-new-conn" | "h1-large-body" | "tls-handshake" if opts.quick => vec![one(10)],
        "h1-keepalive"
        | "h2-multiplexed"
        | "h2-multiplexed-h2load"
        | "h2-local-response"
        | "grpc-unary"
        | "tls-h1"
        | "h1-new-conn"
        | "h1-large-body"
        | "tls-handshake" => opts.connections.iter().map(|&c| one(c)).collect(),
        "h1-fixed-rate" => vec![Point {
            rate: Some(if opts.quick {
                QUICK_FIXED_RATE
            } else {
                FIXED_RATE
            }),
            ..one(50)
        }],
        "idle-conns" => vec![one(opts.idle_connections)],
        "reload-under-load" => vec![one(50)],
        // Saturated (closed loop) and at a fixed rate that leaves the machine headroom,
        // as production proxies run: the swap's cost differs in kind between the two.
        // The quick smoke check keeps the fixed-rate point only (its swaps land fast).
        "reload-swap" if opts.quick => vec![Point {
            rate: Some(QUICK_FIXED_RATE),
            ..one(50)
        }],
        "reload-swap" => vec![
            one(50),
            Point {
                rate: Some(FIXED_RATE),
                ..one(50)
            },
        ],
        "discovery-swap" => vec![one(1)],
        "scale" => {
            let mut w = 1;
            let mut out = Vec::new();
            while w <= opts.proxy_cpus.len().max(1) {
                out.push(Point {
                    connections: 400,
                    workers: w,
                    rate: None,
                    far: false,
                });
                w *= 2;
            }
            out
        }
        "health-checks" => [false, true]
            .into_iter()
            .map(|far| Point {
                far,
                ..one(crate::checks::ENDPOINTS)
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn systems_for(scenario: &str, opts: &RunOpts) -> Vec<Kind> {
    match scenario {
        // Only weft reloads; scale compares weft with itself (and nginx as the yardstick).
        "reload-under-load" => opts
            .systems
            .iter()
            .filter(|k| matches!(k, Kind::Weft { .. }))
            .cloned()
            .collect(),
        "reload-swap" | "discovery-swap" => opts
            .systems
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    Kind::Weft {
                        driver: "io_uring",
                        ..
                    }
                )
            })
            .cloned()
            .collect(),
        "scale" => opts
            .systems
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    Kind::Weft {
                        driver: "io_uring",
                        ..
                    } | Kind::Nginx
                )
            })
            .cloned()
            .collect(),
        // Active health checks: weft and haproxy (nginx's open-source build has none).
        "health-checks" => opts
            .systems
            .iter()
            .filter(|k| matches!(k, Kind::Weft { .. } | Kind::Haproxy))
            .cloned()
            .collect(),
        // The upstream speaks plain HTTP: no direct row for TLS; and a local answer
        // has no upstream to go direct to.
        "idle-conns" | "tls-h1" | "tls-handshake" | "h2-local-response" => opts
            .systems
            .iter()
            .filter(|k| **k != Kind::Direct)
            .cloned()
            .collect(),
        _ => opts.systems.clone(),
    }
}

fn measure(
    scenario: &str,
    kind: &Kind,
    point: &Point,
    round: usize,
    opts: &RunOpts,
    env: &Env,
    ups: &Upstreams,
) -> Result<Sample, String> {
    if scenario == "reload-swap" {
        return swap_latency(kind, point, round, opts, env, ups.small);
    }
    if scenario == "discovery-swap" {
        return discovery_latency(kind, point, round, opts, env, ups.small);
    }
    let upstream = if scenario == "h1-large-body" {
        ups.large
    } else {
        ups.small
    };
    let protocol = match scenario {
        "h2-multiplexed" | "h2-multiplexed-h2load" | "h2-local-response" => Protocol::H2,
        "grpc-unary" => Protocol::Grpc,
        "tls-h1" | "tls-handshake" => Protocol::Tls,
        _ => Protocol::H1,
    };
    let local = scenario == "h2-local-response";
    let running = systems::start(kind, env, upstream, point.workers, protocol, local)
        .map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], running.port));
    let pids = running.pids();
    let mut sample = Sample::at(
        scenario,
        kind.name(),
        point.connections,
        point.workers,
        round,
    );
    if scenario == "idle-conns" {
        sample.idle_bytes_per_conn = Some(idle_rss(addr, &pids, point.connections)?);
        running.stop();
        return Ok(sample);
    }
    // Warm-up on the measured connections: pools filled, caches hot, thousands of
    // connects and accepts done, before anything is counted. Thousands of concurrent
    // exchanges open as many upstream connections at once, and a handshake that
    // overflows a listen queue is retried after 1 s: those points warm up for 2 s.
    let h2_streams = matches!(protocol, Protocol::H2 | Protocol::Grpc).then_some(H2_STREAMS);
    let concurrent = point.connections * h2_streams.unwrap_or(1);
    let warmup = opts
        .duration
        .mul_f64(0.2)
        .max(Duration::from_millis(if concurrent >= 1000 {
            2000
        } else {
            300
        }));
    let spec = LoadSpec {
        addr,
        connections: point.connections,
        duration: opts.duration,
        warmup,
        rate: point.rate,
        new_connection: scenario == "h1-new-conn" || scenario == "tls-handshake",
        path: "/".into(),
        threads: opts.load_cpus.len().max(1),
        cpus: opts.load_cpus.clone(),
        h2_streams,
        grpc: protocol == Protocol::Grpc,
        tls_ca: (protocol == Protocol::Tls).then(|| env.dir.join("bench-ca.crt")),
        windows: None,
    };
    // The proxy's CPU is read when the warm-up ends, by a thread that waits for it.
    let measure_from = Instant::now() + warmup;
    let cpu_at_start = {
        let pids = pids.clone();
        std::thread::spawn(move || {
            std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
            procstat::cpu_time(&pids)
        })
    };
    let reloader =
        (scenario == "reload-under-load").then(|| reload_loop(&running, warmup, opts.duration));
    let result = if scenario == "h2-multiplexed-h2load" {
        crate::h2load::run(&spec, H2_STREAMS).map(Counted::H2load)
    } else {
        Ok(Counted::Own(load::run(&spec)))
    };
    let cpu_before = cpu_at_start.join().unwrap_or_default();
    let cpu = procstat::cpu_time(&pids).saturating_sub(cpu_before);
    if let Some(r) = reloader {
        let sent = r.join().unwrap_or(0);
        let version = running
            .admin
            .map(|a| admin_metric(a, "weft_config_version"))
            .unwrap_or(0.0);
        if (version as u64) < sent + 1 {
            sample.errors += 1;
            eprintln!("reload-under-load: sent {sent} SIGHUPs but config version is {version}");
        }
        sample.reloads = Some(sent);
    }
    sample.rss_kib = (!pids.is_empty()).then(|| procstat::rss_kib(&pids));
    running.stop();
    let requests = match result? {
        Counted::Own(result) => {
            sample.rps = result.rps();
            sample.p50_us = result.p(50.0);
            sample.p90_us = result.p(90.0);
            sample.p99_us = result.p(99.0);
            sample.p999_us = result.p(99.9);
            sample.errors += result.errors;
            sample.curve = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99]
                .iter()
                .map(|&p| (p, result.p(p)))
                .collect();
            result.requests
        }
        Counted::H2load(result) => {
            sample.rps = result.rps;
            sample.mean_latency_us = result.mean_latency_us;
            sample.errors += result.errors;
            result.requests
        }
    };
    if !pids.is_empty() && requests > 0 {
        sample.cpu_us_per_req = Some(cpu.as_secs_f64() * 1e6 / requests as f64);
    }
    Ok(sample)
}

/// What a run's load generator counted.
enum Counted {
    Own(load::LoadResult),
    H2load(crate::h2load::H2loadResult),
}

/// SIGHUPs every 100 ms during the run, alternating two valid configs.
/// Every SIGHUP is confirmed (the served version advances) before the next is sent:
/// signals that arrive during a reload coalesce, so unconfirmed SIGHUPs prove nothing.
fn reload_loop(
    running: &systems::Running,
    warmup: Duration,
    duration: Duration,
) -> std::thread::JoinHandle<u64> {
    let config = running.config.clone();
    let admin = running.admin;
    let pid = running.pids().first().copied();
    let text = config
        .as_ref()
        .and_then(|c| std::fs::read_to_string(c).ok())
        .unwrap_or_default();
    std::thread::spawn(move || {
        let (Some(config), Some(pid)) = (config, pid) else {
            return 0;
        };
        // The two variants differ in one route and in the split weights.
        let other = text.replace("\"/v-a\"", "\"/v-b\"").replace(
            "weight = 90 }, { cluster = \"b\", weight = 10",
            "weight = 10 }, { cluster = \"b\", weight = 90",
        );
        std::thread::sleep(warmup);
        let deadline = Instant::now() + duration;
        let mut sent = 0u64;
        std::thread::sleep(Duration::from_millis(50));
        while Instant::now() + Duration::from_millis(100) < deadline {
            let body = if sent % 2 == 0 { &other } else { &text };
            if std::fs::write(&config, body).is_err() {
                break;
            }
            // SAFETY: kill(2) on the process we started.
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            sent += 1;
            let confirm_by = Instant::now() + Duration::from_secs(2);
            while let Some(a) = admin {
                if admin_metric(a, "weft_config_version") as u64 > sent
                    || Instant::now() > confirm_by
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        sent
    })
}

fn admin_metric(admin: SocketAddr, name: &str) -> f64 {
    http_get(admin, "/metrics")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The body of a one-shot HTTP/1.1 GET (`Connection: close`), or `None` on any failure.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// One keep-alive connection that asks `path` for its body, so polling for a change
/// costs the proxy a request, not a connection (a connection per poll would load the
/// worker whose latency is being measured).
struct Prober {
    addr: SocketAddr,
    path: String,
    conn: Option<std::io::BufReader<TcpStream>>,
}

impl Prober {
    fn new(addr: SocketAddr, path: &str) -> Prober {
        Prober {
            addr,
            path: path.to_owned(),
            conn: None,
        }
    }

    /// The body of one response; `None` (and a fresh connection next time) on any error.
    fn body(&mut self) -> Option<String> {
        let body = self.exchange();
        if body.is_none() {
            self.conn = None;
        }
        body
    }

    fn exchange(&mut self) -> Option<String> {
        use std::io::BufRead;
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            self.conn = Some(std::io::BufReader::new(s));
        }
        let conn = self.conn.as_mut()?;
        conn.get_mut()
            .write_all(format!("GET {} HTTP/1.1\r\nHost: a\r\n\r\n", self.path).as_bytes())
            .ok()?;
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            if conn.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; length?];
        conn.read_exact(&mut body).ok()?;
        String::from_utf8(body).ok()
    }
}

/// Opens `n` connections with one request each, lets them idle, and returns the RSS
/// growth per connection in bytes.
fn idle_rss(addr: SocketAddr, pids: &[u32], n: usize) -> Result<f64, String> {
    let request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
    // One exchange first, so code and allocator warm-up are not counted.
    let mut warm = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    warm.write_all(request).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let _ = warm.read(&mut buf);
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = procstat::rss_kib(pids);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s =
            TcpStream::connect(addr).map_err(|e| format!("connection {}: {e}", conns.len()))?;
        s.write_all(request).map_err(|e| e.to_string())?;
        conns.push(s);
        if conns.len() % 256 == 0 {
            let from = conns.len() - 256;
            for s in &mut conns[from..] {
                let _ = s.read(&mut buf);
            }
        }
    }
    let done = conns.len() - conns.len() % 256;
    for s in &mut conns[done..] {
        let _ = s.read(&mut buf);
    }
    // Past weft's buffer hold and allocator collection, and nginx's/haproxy's timers.
    std::thread::sleep(Duration::from_millis(2500));
    let after = procstat::rss_kib(pids);
    Ok((after.saturating_sub(before)) as f64 * 1024.0 / n as f64)
}

fn one_line(s: &Sample) -> String {
    let mut line = format!(
        "round {} {:<17} {:<14} c={:<5} w={} ",
        s.round, s.scenario, s.system, s.connections, s.workers
    );
    if let Some(w) = &s.swap {
        line += &format!(
            "{} swaps with {} routes / {} clusters: median {:.1} ms, max {:.1} ms; p99 {} us without swaps, {} us with",
            w.swaps, w.routes, w.clusters, w.median_ms, w.max_ms, w.p99_without_swaps_us, w.p99_with_swaps_us
        );
        return line;
    }
    if let Some(c) = &s.checks {
        line += &format!(
            "{} endpoints on {}: {:.0} checks/s, {:.2}% of a core, {:.1} us/check, errors {}",
            c.endpoints,
            c.placement,
            s.rps,
            c.core_percent,
            s.cpu_us_per_req.unwrap_or(f64::NAN),
            s.errors
        );
        return line;
    }
    if let Some(b) = s.idle_bytes_per_conn {
        line += &format!("{b:.0} bytes/idle connection");
        return line;
    }
    line += &match s.mean_latency_us {
        Some(mean) => format!(
            "{:>9.0} req/s mean {mean:>6.0}us errors {}",
            s.rps, s.errors
        ),
        None => format!(
            "{:>9.0} req/s p50 {:>6}us p99 {:>6}us errors {}",
            s.rps, s.p50_us, s.p99_us, s.errors
        ),
    };
    if let Some(c) = s.cpu_us_per_req {
        line += &format!(" cpu/req {c:.2}us");
    }
    if let Some(r) = s.reloads {
        line += &format!(" reloads {r}");
    }
    line
}

/// A weft config with `routes` exact-path routes over `clusters` clusters, plus a
/// `/probe` route whose body says which variant is serving.
#[allow(clippy::too_many_arguments)]
fn big_config(
    port: u16,
    admin: u16,
    upstream: SocketAddr,
    routes: usize,
    clusters: usize,
    variant: u32,
    worker_cpu: usize,
    discovered_c0: Option<&std::path::Path>,
) -> String {
    let preamble = systems::weft_preamble(&format!("workers = 1\ncpus = [{worker_cpu}]"), admin);
    let mut c = format!(
        "{preamble}\n[[listeners]]\nname = \"bench\"\naddress = \"127.0.0.1:{port}\"\n\n  [[listeners.routes]]\n  match = {{ path = \"/probe\" }}\n  direct_response = {{ status = 200, body = \"variant-{variant}\" }}\n"
    );
    for i in 0..routes {
        let _ = std::fmt::Write::write_fmt(
            &mut c,
            format_args!(
                "\n  [[listeners.routes]]\n  match = {{ path = \"/r{i}\" }}\n  cluster = \"c{}\"\n",
                i % clusters
            ),
        );
    }
    c += "\n  [[listeners.routes]]\n  match = { path_prefix = \"/\" }\n  cluster = \"c0\"\n";
    for i in 0..clusters {
        let _ = match (i, discovered_c0) {
            (0, Some(file)) => std::fmt::Write::write_fmt(
                &mut c,
                format_args!(
                    "\n[clusters.c0]\ndiscovery = {{ file = \"{}\", allow_loopback = true }}\n",
                    file.display()
                ),
            ),
            _ => std::fmt::Write::write_fmt(
                &mut c,
                format_args!("\n[clusters.c{i}]\nendpoints = [\"{upstream}\"]\n"),
            ),
        };
    }
    c
}

/// Starts weft on a big config for the swap scenarios. The worker is pinned to the
/// proxy CPU by the config; the process mask also spans the load CPUs, so the control
/// thread does its work beside the worker, not on its core (a deployment gives the
/// control thread a core of its own the same way).
fn spawn_big_weft(
    kind: &Kind,
    env: &Env,
    opts: &RunOpts,
    config: &std::path::Path,
) -> Result<Child, String> {
    let mask: Vec<String> = opts
        .proxy_cpus
        .iter()
        .chain(&opts.load_cpus)
        .map(|c| c.to_string())
        .collect();
    Command::new("taskset")
        .arg("-c")
        .arg(mask.join(","))
        .arg(kind.weft_bin(env))
        .args(["ingress", "--config"])
        .arg(config)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())
}

/// Endpoint changes per `discovery-swap` round.
const DISCOVERY_CHANGES: usize = 20;

/// Discovery answer -> traffic on the new endpoints, for the 10,000-route, 1,000-cluster
/// config of `reload-swap` whose cluster `c0` is discovered from a watched file.
///
/// Each change rewrites that file (atomically, by rename), alternating the endpoint
/// between the bench upstream (200) and a port nothing listens on (weft answers 502),
/// and times it until a probe of a route to `c0` (polled every 1 ms on one keep-alive
/// connection) shows the other answer. What it includes: the file watch noticing the
/// change, reading it, publishing a snapshot that serves it, and the worker taking it
/// up. No load runs beside it: this is the control plane's cost, not the request path's.
fn discovery_latency(
    kind: &Kind,
    point: &Point,
    round: usize,
    opts: &RunOpts,
    env: &Env,
    upstream: SocketAddr,
) -> Result<Sample, String> {
    let (routes, clusters) = if opts.quick {
        (1_000, 100)
    } else {
        (10_000, 1_000)
    };
    let (port, admin, dead) = (
        systems::free_port(),
        systems::free_port(),
        systems::free_port(),
    );
    let config = env.dir.join("weft-discovery.toml");
    let endpoints = env.dir.join("weft-discovery-c0.toml");
    let write_endpoints = |to: SocketAddr| {
        let staged = endpoints.with_extension("staged");
        std::fs::write(&staged, format!("endpoints = [\"{to}\"]\n"))
            .and_then(|()| std::fs::rename(&staged, &endpoints))
            .map_err(|e| e.to_string())
    };
    write_endpoints(upstream)?;
    let worker_cpu = opts.proxy_cpus.first().copied().unwrap_or(0);
    std::fs::write(
        &config,
        big_config(
            port,
            admin,
            upstream,
            routes,
            clusters,
            0,
            worker_cpu,
            Some(&endpoints),
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut child = spawn_big_weft(kind, env, opts, &config)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut probe = Prober::new(addr, "/r0");
    let serving_upstream =
        |body: &Option<String>| body.as_deref().is_some_and(|b| !b.contains("502"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !serving_upstream(&probe.body()) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("weft with the discovered cluster did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut took = Vec::with_capacity(DISCOVERY_CHANGES);
    let mut errors = 0u64;
    for change in 0..DISCOVERY_CHANGES {
        let to_upstream = change % 2 == 1;
        let to = if to_upstream {
            upstream
        } else {
            SocketAddr::from(([127, 0, 0, 1], dead))
        };
        let t = Instant::now();
        write_endpoints(to)?;
        loop {
            let body = probe.body();
            if body.is_some() && serving_upstream(&body) == to_upstream {
                took.push(t.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                errors += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Past the watcher's coalescing, so each change is seen on its own.
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut sorted = took.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    Ok(Sample {
        errors,
        reloads: Some(took.len() as u64),
        swap: Some(SwapFigures {
            routes,
            clusters,
            swaps: took.len(),
            median_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN),
            max_ms: sorted.last().copied().unwrap_or(f64::NAN),
            p99_without_swaps_us: 0,
            p99_with_swaps_us: 0,
            rate: None,
            latency: None,
        }),
        ..Sample::at("discovery-swap", kind.name(), point.connections, 1, round)
    })
}

/// reload-swap's warm-up before its measured run.
const SWAP_WARMUP: Duration = Duration::from_millis(300);
/// Pause before and after each SIGHUP: a swap every ~0.5 s while swapping.
const SWAP_PAUSE: Duration = Duration::from_millis(250);
/// Swaps per window of swaps.
const SWAPS_PER_WINDOW: usize = 2;

/// SIGHUP -> new snapshot serving, for a config with 10,000 routes and 1,000 clusters,
/// and the p99 of concurrent load with and without swaps.
///
/// One load run alternates windows (see `load::Windows`): quiet, then swaps, then a
/// pause counted in neither (so what a swap leaves behind, such as the janitor freeing
/// the old snapshot, is not charged to the quiet side), and so on. Two separate runs,
/// as this scenario used first, differed by ±20% in p99 with nothing changed between
/// them, more than the 10% the comparison is for.
fn swap_latency(
    kind: &Kind,
    point: &Point,
    round: usize,
    opts: &RunOpts,
    env: &Env,
    upstream: SocketAddr,
) -> Result<Sample, String> {
    // Both sides together, as long as the two runs this replaced; a few swaps (each
    // ~0.5 s with its pauses) even in --quick.
    let run = (opts.duration * 2).max(Duration::from_secs(4));
    let (routes, clusters) = if opts.quick {
        (1_000, 100)
    } else {
        (10_000, 1_000)
    };
    let (port, admin) = (systems::free_port(), systems::free_port());
    let path = env.dir.join("weft-swap.toml");
    let worker_cpu = opts.proxy_cpus.first().copied().unwrap_or(0);
    let write = |variant: u32| {
        std::fs::write(
            &path,
            big_config(
                port, admin, upstream, routes, clusters, variant, worker_cpu, None,
            ),
        )
        .map_err(|e| e.to_string())
    };
    write(0)?;
    let mut child = spawn_big_weft(kind, env, opts, &path)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(addr, "/probe").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("weft with the big config did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let windows = Windows::default();
    let spec = LoadSpec {
        addr,
        connections: point.connections,
        duration: run,
        warmup: SWAP_WARMUP,
        rate: point.rate,
        new_connection: false,
        path: "/r1".into(),
        threads: opts.load_cpus.len().max(1),
        cpus: opts.load_cpus.clone(),
        h2_streams: None,
        grpc: false,
        tls_ca: None,
        windows: Some(windows.clone()),
    };
    // Windows of quiet and of swaps (each swap timed until the probe changes), as long
    // as each other, while the load runs.
    let swapper = {
        let path = path.clone();
        let pid = child.id() as i32;
        let texts: Vec<String> = (1..=2)
            .map(|v| big_config(port, admin, upstream, routes, clusters, v, worker_cpu, None))
            .collect();
        std::thread::spawn(move || {
            let end = Instant::now() + SWAP_WARMUP + run;
            windows.enter(Windows::NEITHER);
            std::thread::sleep(SWAP_WARMUP);
            let mut probe = Prober::new(addr, "/probe");
            let mut took = Vec::new();
            let mut variant = 1usize;
            let mut window = SWAP_PAUSE * 4;
            'run: loop {
                windows.enter(Windows::BASELINE);
                std::thread::sleep(window);
                windows.enter(Windows::TREATED);
                let began = Instant::now();
                for _ in 0..SWAPS_PER_WINDOW {
                    if Instant::now() + SWAP_PAUSE * 3 > end {
                        break 'run;
                    }
                    std::thread::sleep(SWAP_PAUSE);
                    if std::fs::write(&path, &texts[variant - 1]).is_err() {
                        break 'run;
                    }
                    let want = format!("variant-{variant}");
                    let t = Instant::now();
                    // SAFETY: kill(2) on the child we started.
                    unsafe { libc::kill(pid, libc::SIGHUP) };
                    while probe.body().as_deref() != Some(want.as_str())
                        && t.elapsed() < Duration::from_secs(10)
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    took.push(t.elapsed().as_secs_f64() * 1e3);
                    variant = 3 - variant;
                    std::thread::sleep(SWAP_PAUSE);
                }
                window = began.elapsed();
                windows.enter(Windows::NEITHER);
                std::thread::sleep(SWAP_PAUSE);
                if Instant::now() + window * 2 > end {
                    break;
                }
            }
            windows.enter(Windows::NEITHER);
            took
        })
    };
    let both = load::run(&spec);
    let took = swapper.join().unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let swapping = |pct| both.window_p(Windows::TREATED, pct).unwrap_or(0);
    let mut sorted = took.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let swap = SwapFigures {
        routes,
        clusters,
        swaps: took.len(),
        median_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        p99_without_swaps_us: both.window_p(Windows::BASELINE, 99.0).unwrap_or(0),
        p99_with_swaps_us: swapping(99.0),
        rate: point.rate,
        latency: both.by_window.as_deref().map(|w| Arc::new(w.clone())),
    };
    Ok(Sample {
        // Throughput over the whole run; percentiles of the windows with swaps.
        rps: both.rps(),
        p50_us: swapping(50.0),
        p90_us: swapping(90.0),
        p99_us: swapping(99.0),
        p999_us: swapping(99.9),
        errors: both.errors + u64::from(took.is_empty()),
        reloads: Some(took.len() as u64),
        swap: Some(swap),
        ..Sample::at("reload-swap", kind.name(), point.connections, 1, round)
    })
}
