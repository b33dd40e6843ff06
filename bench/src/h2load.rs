//! h2load (Debian package nghttp2-client) as the load generator of the
//! `h2-multiplexed-h2load` scenario: the h2c point measured with a client nobody here
//! wrote, as the HTTP/2 issue specifies, beside the same point on the harness's own
//! generator.
//!
//! h2load runs timing-based (`-D`) with a warm-up (`--warm-up-time`) on the connections
//! it then measures, so its counts cover the same window as the proxy CPU the harness
//! reads. It reports mean latency, not percentiles; the samples carry no percentiles.

use std::process::Command;
use std::time::Duration;

use crate::load::LoadSpec;

/// What h2load counted over its measured window.
#[derive(Debug, PartialEq)]
pub struct H2loadResult {
    pub requests: u64,
    pub rps: f64,
    /// Failed, errored and timed-out requests, and responses other than 2xx.
    pub errors: u64,
    pub mean_latency_us: Option<f64>,
}

/// Runs h2load on the load CPUs against `spec.addr` (h2c with prior knowledge):
/// `spec.connections` connections x `streams` concurrent streams, GETs of `spec.path`.
pub fn run(spec: &LoadSpec, streams: usize) -> Result<H2loadResult, String> {
    if crate::systems::find_program("h2load").is_none() {
        return Err("h2load is not installed (Debian package nghttp2-client)".into());
    }
    let cpus = crate::systems::cpu_list(&spec.cpus);
    // h2load wants at least one connection per thread.
    let threads = spec.threads.clamp(1, spec.connections.max(1));
    let mut cmd = if cpus.is_empty() {
        Command::new("h2load")
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", &cpus, "h2load"]);
        c
    };
    cmd.args([
        "-c",
        &spec.connections.to_string(),
        "-m",
        &streams.to_string(),
        "-t",
        &threads.to_string(),
        "-D",
        &millis(spec.duration),
        "--warm-up-time",
        &millis(spec.warmup),
        &format!("http://{}{}", spec.addr, spec.path),
    ]);
    let out = cmd.output().map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "h2load exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&text, spec.duration)
}

/// A duration as h2load reads it: it takes units, but no fractions ("0.5" is refused).
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Reads h2load's summary: the `requests:` and `status codes:` lines, and the mean of
/// `time for request:`. Requests are the 2xx responses of the measured window.
pub fn parse(text: &str, duration: Duration) -> Result<H2loadResult, String> {
    let line = |prefix: &str| {
        text.lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(prefix))
            .ok_or_else(|| format!("h2load printed no `{prefix}` line"))
    };
    let count = |l: &str, what: &str| -> Result<u64, String> {
        l.split(',')
            .map(str::trim)
            .find_map(|part| {
                let (n, name) = part
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .split_once(' ')?;
                (name == what).then(|| n.parse::<u64>().ok()).flatten()
            })
            .ok_or_else(|| format!("h2load line `{l}` has no count of `{what}`"))
    };
    let requests = line("requests:")?;
    let statuses = line("status codes:")?;
    let succeeded = count(requests, "succeeded")?;
    let errors = count(requests, "failed")?
        + count(requests, "errored")?
        + count(requests, "timeout")?
        + count(statuses, "3xx")?
        + count(statuses, "4xx")?
        + count(statuses, "5xx")?;
    let done_2xx = count(statuses, "2xx")?;
    let mean_latency_us = line("time for request:")
        .ok()
        .and_then(|l| l.split_whitespace().nth(5).and_then(duration_us));
    let requests = succeeded.min(done_2xx);
    Ok(H2loadResult {
        requests,
        rps: requests as f64 / duration.as_secs_f64(),
        errors,
        mean_latency_us,
    })
}

/// "212us", "3.03ms", "1.2s" as microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let (n, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else {
        (s.strip_suffix('s')?, 1e6)
    };
    n.parse::<f64>().ok().map(|v| v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h2load 1.52.0's summary (Debian 12), 50 connections x 10 streams, -D 2,
    /// --warm-up-time 1, against the bench upstream.
    const OUTPUT: &str = "\
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 3.00s, 327355.00 req/s, 26.22MB/s
requests: 654710 total, 654710 started, 654710 done, 654710 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 654710 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 52.45MB (54995640) total, 1.89MB (1984600) headers (space savings 93.75%), 60.55MB (63494400) data
                     min         max         mean         sd        +/- sd
time for request:      212us      3.03ms      1.37ms       441us    73.76%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :    6438.84     6663.96     6546.07       50.82    68.00%
";

    #[test]
    fn reads_counts_rate_and_mean_latency() {
        let r = parse(OUTPUT, Duration::from_secs(2)).expect("parses");
        assert_eq!(r.requests, 654_710);
        assert_eq!(r.errors, 0);
        assert!((r.rps - 327_355.0).abs() < 1.0, "{}", r.rps);
        assert_eq!(r.mean_latency_us, Some(1370.0));
    }

    #[test]
    fn failures_and_non_2xx_are_errors() {
        let text = OUTPUT
            .replace(
                "654710 succeeded, 0 failed, 0 errored, 0 timeout",
                "654700 succeeded, 4 failed, 2 errored, 1 timeout",
            )
            .replace(
                "654710 2xx, 0 3xx, 0 4xx, 0 5xx",
                "654690 2xx, 0 3xx, 0 4xx, 10 5xx",
            );
        let r = parse(&text, Duration::from_secs(2)).expect("parses");
        assert_eq!(r.errors, 4 + 2 + 1 + 10);
        assert_eq!(r.requests, 654_690, "only 2xx responses count");
    }

    #[test]
    fn output_without_a_summary_is_an_error() {
        let err = parse("connect to 127.0.0.1:1 failed", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("requests:"), "{err}");
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(duration_us("441us"), Some(441.0));
        assert_eq!(duration_us("3.03ms"), Some(3030.0));
        assert_eq!(duration_us("1.5s"), Some(1_500_000.0));
        assert_eq!(duration_us("fast"), None);
    }
}
