//! weft-bench: measures weft against `direct` and against nginx/haproxy, side by side.
//!
//! `run` starts everything itself (its upstreams, each system under test with a config
//! it writes, its own load generator), interleaves systems per round, and reports
//! medians as a markdown table, results.json and SVG plots. `load` is the bare load
//! generator (to validate it against wrk); `upstream` the bench's upstream server.

mod checks;
mod farhosts;
mod h2load;
mod load;
mod net;
mod procstat;
mod report;
mod run;
mod systems;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "weft-bench", about = "weft's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios against every available system and report.
    Run {
        /// Scenarios to run (default: all): h1-keepalive, h2-multiplexed, h2-multiplexed-h2load, h2-local-response, grpc-unary, tls-h1, tls-handshake, h1-fixed-rate,
        /// h1-new-conn, h1-large-body, idle-conns, reload-under-load, reload-swap, discovery-swap, scale,
        /// health-checks.
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        /// Systems (default: all available): direct, weft-io_uring, weft-epoll, nginx, haproxy;
        /// a weft system with `-health` has the endpoint-health features on, with `-policy`
        /// a retry policy and a rate limit that never trigger (neither by default).
        #[arg(long = "system")]
        systems: Vec<String>,
        /// Where results go (results.json, results.md). Certificates, keys and configs
        /// made for the run live in a private temporary directory, removed at the end.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Smoke check: one short round of every scenario, under a minute.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measured run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Connections for the throughput scenarios (h1-keepalive, h1-new-conn, h1-large-body, h2-multiplexed, h2-multiplexed-h2load, h2-local-response, grpc-unary, tls-h1, tls-handshake).
        #[arg(long, value_delimiter = ',', default_value = "50,400,2000")]
        connections: Vec<usize>,
        #[arg(long, default_value_t = 10_000)]
        idle_connections: usize,
        /// CPUs for the proxy under test (default: the first CPU).
        #[arg(long, value_delimiter = ',')]
        proxy_cpus: Vec<usize>,
        /// CPUs for the load generator and upstreams (default: the others).
        #[arg(long, value_delimiter = ',')]
        load_cpus: Vec<usize>,
        /// The weft binary (default: `weft` next to this executable).
        #[arg(long)]
        weft_bin: Option<PathBuf>,
        /// weft's profile-guided build, the `weft-*-pgo` systems (default: what
        /// `bench/pgo-build.sh` makes, `../pgo/weft` from this executable; those
        /// systems run by default where it exists).
        #[arg(long)]
        weft_pgo_bin: Option<PathBuf>,
    },
    /// Only the load generator, against any HTTP/1.1 server.
    Load {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of load on the same connections before anything is counted.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Requests/s in all (open loop); default closed loop.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        new_connection: bool,
        /// HTTP/2 (h2c) with this many concurrent streams per connection.
        #[arg(long)]
        h2_streams: Option<usize>,
        /// With --h2-streams: gRPC unary calls instead of GETs.
        #[arg(long)]
        grpc: bool,
        /// HTTPS: trust this CA (PEM); the server must have a certificate for bench.test.
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
    },
    /// A fixed-response server to proxy to: HTTP/1.1, h2c and gRPC on one port.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 64)]
        body_size: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// CPUs to pin threads to, comma-separated.
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Upstream {
            listen,
            body_size,
            threads,
            cpus,
        } => {
            match upstream::run(upstream::UpstreamOpts {
                listen,
                body_size,
                threads,
                cpus,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("upstream: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Load {
            addr,
            connections,
            duration,
            warmup,
            rate,
            new_connection,
            h2_streams,
            grpc,
            tls_ca,
            threads,
            cpus,
        } => {
            let spec = load::LoadSpec {
                addr,
                connections,
                duration: Duration::from_secs_f64(duration),
                warmup: Duration::from_secs_f64(warmup),
                rate,
                new_connection,
                path: "/".into(),
                threads,
                cpus,
                h2_streams,
                grpc,
                tls_ca,
                windows: None,
            };
            let r = load::run(&spec);
            println!(
                "{} requests in {:.2}s: {:.0} req/s, p50 {}us p90 {}us p99 {}us p99.9 {}us, errors {}",
                r.requests,
                r.elapsed.as_secs_f64(),
                r.rps(),
                r.p(50.0),
                r.p(90.0),
                r.p(99.0),
                r.p(99.9),
                r.errors
            );
            ExitCode::SUCCESS
        }
        Command::Run {
            scenarios,
            systems,
            out,
            quick,
            rounds,
            duration,
            connections,
            idle_connections,
            proxy_cpus,
            load_cpus,
            weft_bin,
            weft_pgo_bin,
        } => {
            let weft_pgo_bin = weft_pgo_bin.unwrap_or_else(default_weft_pgo_bin);
            run_command(run::RunOpts {
                scenarios: if scenarios.is_empty() {
                    run::SCENARIOS.iter().map(|s| s.to_string()).collect()
                } else {
                    scenarios
                },
                systems: pick_systems(&systems, &weft_pgo_bin),
                out,
                quick,
                rounds: if quick { 1 } else { rounds.max(1) },
                duration: Duration::from_secs_f64(if quick { 0.5 } else { duration }),
                proxy_cpus,
                load_cpus,
                weft_bin: weft_bin.unwrap_or_else(default_weft_bin),
                weft_pgo_bin,
                connections: if quick { vec![50] } else { connections },
                idle_connections: if quick { 1000 } else { idle_connections },
            })
        }
    }
}

fn pick_systems(names: &[String], weft_pgo_bin: &Path) -> Vec<systems::Kind> {
    let names: Vec<&str> = if names.is_empty() {
        let pgo = weft_pgo_bin.is_file().then_some("weft-io_uring-pgo");
        ["direct", "weft-io_uring"]
            .into_iter()
            .chain(pgo)
            .chain(["weft-epoll", "nginx", "haproxy"])
            .collect()
    } else {
        names.iter().map(String::as_str).collect()
    };
    names
        .into_iter()
        .filter_map(|n| match systems::Kind::parse(n) {
            Some(k) if k.available(weft_pgo_bin) => Some(k),
            Some(systems::Kind::Weft { pgo: true, .. }) => {
                let bin = weft_pgo_bin.display();
                eprintln!("{n}: no {bin} (make it with bench/pgo-build.sh), left out");
                None
            }
            Some(_) => {
                eprintln!("{n}: not installed here, left out");
                None
            }
            None => {
                eprintln!("{n}: unknown system, left out");
                None
            }
        })
        .collect()
}

fn default_weft_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("weft")))
        .unwrap_or_else(|| PathBuf::from("weft"))
}

/// `target/pgo/weft` when this is `target/release/weft-bench`.
fn default_weft_pgo_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("pgo").join("weft")))
        .unwrap_or_else(|| PathBuf::from("pgo/weft"))
}

fn run_command(mut opts: run::RunOpts) -> ExitCode {
    if opts.systems.is_empty() {
        eprintln!("weft-bench run: none of the systems asked for can run here");
        return ExitCode::FAILURE;
    }
    let cpus = all_cpus();
    if opts.proxy_cpus.is_empty() {
        opts.proxy_cpus = vec![cpus[0]];
    }
    if opts.load_cpus.is_empty() {
        opts.load_cpus = cpus
            .iter()
            .copied()
            .filter(|c| !opts.proxy_cpus.contains(c))
            .collect();
        if opts.load_cpus.is_empty() {
            opts.load_cpus = vec![cpus[0]];
        }
    }
    if !opts.weft_bin.is_file() {
        eprintln!(
            "{}: no weft binary (build it: cargo build --release -p weft-gateway)",
            opts.weft_bin.display()
        );
        return ExitCode::FAILURE;
    }
    let header = format!(
        "{}weft-bench run: proxy CPUs {:?}, load+upstream CPUs {:?}, {} round(s) of {:.1}s, systems {}; {}",
        if opts.quick {
            "SMOKE CHECK (--quick): one short round to show every scenario runs; these figures are not a measurement.\n"
        } else {
            ""
        },
        opts.proxy_cpus,
        opts.load_cpus,
        opts.rounds,
        opts.duration.as_secs_f64(),
        opts.systems.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        machine()
    );
    eprintln!("{header}");
    let samples = match run::run(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{header}\n\n{}", report::markdown(&samples));
    if let Err(e) = report::write_all(&samples, &opts.out, &header) {
        eprintln!("weft-bench: writing results to {}: {e}", opts.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "results: {}/results.json, results.md, *.svg",
        opts.out.display()
    );
    let errors = report::total_errors(&samples);
    if errors > 0 {
        eprintln!("weft-bench: {errors} error(s) during the run");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn all_cpus() -> Vec<usize> {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (0..n).collect()
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|s| s.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} CPUs ({model}), kernel {}",
        all_cpus().len(),
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(kinds: &[systems::Kind]) -> Vec<String> {
        kinds.iter().map(systems::Kind::name).collect()
    }

    #[test]
    fn every_system_name_parses_back_to_itself() {
        for name in [
            "direct",
            "weft-io_uring",
            "weft-epoll",
            "weft-io_uring-pgo",
            "weft-epoll-pgo",
            "weft-io_uring-health",
            "weft-epoll-pgo-health",
            "weft-io_uring-policy",
            "weft-epoll-health-policy",
            "nginx",
            "haproxy",
        ] {
            let kind = systems::Kind::parse(name).expect(name);
            assert_eq!(kind.name(), name);
        }
        assert_eq!(systems::Kind::parse("weft-pgo"), None);
    }

    #[test]
    fn the_pgo_build_runs_by_default_only_where_it_exists() {
        let dir = std::env::temp_dir().join(format!("weft-bench-pgo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bin = dir.join("weft");
        let missing = names(&pick_systems(&[], &bin));
        assert!(missing.contains(&"weft-io_uring".to_string()));
        assert!(!missing.iter().any(|n| n.ends_with("-pgo")), "{missing:?}");
        // Asked for by name, a missing build is left out rather than run.
        let asked = names(&pick_systems(&["weft-io_uring-pgo".to_string()], &bin));
        assert!(asked.is_empty(), "{asked:?}");

        std::fs::write(&bin, b"").expect("write");
        let present = names(&pick_systems(&[], &bin));
        let at = |n: &str| present.iter().position(|p| p == n);
        assert!(at("weft-io_uring-pgo").is_some(), "{present:?}");
        // Beside the plain build, so rounds alternate the two back to back.
        assert_eq!(at("weft-io_uring-pgo"), at("weft-io_uring").map(|i| i + 1));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
