//! The `health-checks` scenario: what active HTTP health checks of many endpoints cost
//! the checking process, for weft and for haproxy (nginx's open-source build has no
//! active checks).
//!
//! Each system gets one cluster (backend) of `ENDPOINTS` endpoints, every one checked
//! (`GET /`) every second, and no traffic. The endpoints are addresses of one bench
//! upstream: 127.0.x.y on loopback, or 198.18.x.y in a network namespace of their own
//! (`farhosts`), which keeps their kernel's receive work off the checker's core as a
//! remote host would. After a warm-up the run reads the system's CPU time (on-CPU
//! time from the scheduler, not tick samples: see `procstat::on_cpu_time`) and the
//! upstream's count of requests answered, waits, and reads both again: checks per
//! second are counted at the endpoints, not taken from the checker.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::farhosts::FarHosts;
use crate::procstat;
use crate::run::{http_get, Point, RunOpts, Sample};
use crate::systems::{self, Env, Kind};

/// Endpoints checked.
pub const ENDPOINTS: usize = 1000;

/// Before anything is counted: every endpoint's first check (spread over the first
/// interval) and two more intervals.
const WARMUP: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
pub struct CheckFigures {
    pub endpoints: usize,
    /// Where the endpoints are: `loopback` or `namespace` (over a veth pair).
    pub placement: &'static str,
    /// The checking process's on-CPU time (user + sys) over the run, in % of one core.
    pub core_percent: f64,
}

/// Where the scenario's endpoints can be: loopback always, the namespace where it
/// could be made (root and iproute2).
pub struct Placements {
    pub far: Option<FarHosts>,
}

impl Placements {
    pub fn prepare(opts: &RunOpts) -> Placements {
        if !opts.scenarios.iter().any(|s| s == "health-checks") {
            return Placements { far: None };
        }
        match FarHosts::create(&opts.load_cpus) {
            Ok(far) => Placements { far: Some(far) },
            Err(e) => {
                eprintln!("health-checks: endpoints on loopback only: {e}");
                Placements { far: None }
            }
        }
    }
}

/// The bench upstream on every address of the placement, and the endpoints on it.
struct Endpoints {
    upstream: Child,
    list: Vec<SocketAddr>,
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        let _ = self.upstream.kill();
        let _ = self.upstream.wait();
    }
}

fn start_endpoints(opts: &RunOpts, far: Option<&FarHosts>) -> Result<Endpoints, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let port = systems::free_port();
    let mut command = match far {
        Some(hosts) => hosts.command(&exe),
        None => std::process::Command::new(&exe),
    };
    let upstream = command
        .args(["upstream", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--cpus", &systems::cpu_list(&opts.load_cpus)])
        .args(["--threads", &opts.load_cpus.len().max(1).to_string()])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("the endpoints' upstream: {e}"))?;
    let list: Vec<SocketAddr> = (0..ENDPOINTS)
        .map(|i| match far {
            Some(_) => FarHosts::endpoint(i, port),
            None => crate::farhosts::nth_address([127, 0], i, port),
        })
        .collect();
    let endpoints = Endpoints { upstream, list };
    let deadline = Instant::now() + Duration::from_secs(5);
    while served(&endpoints).is_none() {
        if Instant::now() > deadline {
            return Err(format!(
                "the endpoints' upstream on {} did not start",
                endpoints.list[0]
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(endpoints)
}

/// Requests the endpoints' upstream has answered so far.
fn served(endpoints: &Endpoints) -> Option<u64> {
    http_get(endpoints.list[0], crate::upstream::SERVED_PATH)?
        .trim()
        .parse()
        .ok()
}

pub fn measure(
    kind: &Kind,
    point: &Point,
    round: usize,
    opts: &RunOpts,
    env: &Env,
    placements: &Placements,
) -> Result<Sample, String> {
    let far = if point.far {
        Some(
            placements
                .far
                .as_ref()
                .ok_or("no network namespace for the far endpoints")?,
        )
    } else {
        None
    };
    let endpoints = start_endpoints(opts, far)?;
    let running = systems::start_checking(kind, env, &endpoints.list).map_err(|e| e.to_string())?;
    let pids = running.pids();
    std::thread::sleep(WARMUP);
    let run = opts
        .duration
        .max(Duration::from_secs(if opts.quick { 2 } else { 10 }));
    let (cpu_before, served_before) = (procstat::on_cpu_time(&pids), served(&endpoints));
    let started = Instant::now();
    std::thread::sleep(run);
    let (cpu_after, served_after) = (procstat::on_cpu_time(&pids), served(&endpoints));
    let elapsed = started.elapsed().as_secs_f64();
    let rss_kib = procstat::rss_kib(&pids);
    running.stop();
    let (Some(before), Some(after)) = (served_before, served_after) else {
        return Err("the endpoints' upstream stopped answering its count".into());
    };
    let checks = after.saturating_sub(before);
    let cpu = cpu_after.saturating_sub(cpu_before);
    let checks_per_s = checks as f64 / elapsed;
    // One check per endpoint per interval, up to 10% later: fewer means checks that
    // did not happen (or did not reach the endpoints).
    let expected = ENDPOINTS as f64 / 1.1;
    let errors = u64::from(checks_per_s < expected * 0.95);
    if errors > 0 {
        eprintln!(
            "health-checks {}: {checks_per_s:.0} checks/s at the endpoints, expected about {expected:.0}",
            kind.name()
        );
    }
    Ok(Sample {
        rps: checks_per_s,
        errors,
        cpu_us_per_req: (checks > 0).then(|| cpu.as_secs_f64() * 1e6 / checks as f64),
        rss_kib: Some(rss_kib),
        checks: Some(CheckFigures {
            endpoints: ENDPOINTS,
            placement: if point.far { "namespace" } else { "loopback" },
            core_percent: cpu.as_secs_f64() * 100.0 / elapsed,
        }),
        ..Sample::at("health-checks", kind.name(), ENDPOINTS, 1, round)
    })
}
