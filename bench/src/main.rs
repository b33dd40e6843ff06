//! weft-bench: the benchmark harness. For now: the upstream server the benchmarks
//! proxy to; the load scenarios are driven by bench/foundation.sh (wrk) until the
//! harness grows its own load generator.

mod net;
mod upstream;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "weft-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A fixed-response HTTP/1.1 server to proxy to.
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

fn main() -> std::process::ExitCode {
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
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("upstream: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
