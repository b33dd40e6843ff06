//! The process's own metrics, in the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), so existing
//! dashboards and alerts work unchanged; and `weft_build_info`.
//!
//! Read from /proc/self at scrape time, on the admin thread: nothing is counted on the
//! request path. A value /proc does not give (another OS, a sandbox) is left out rather
//! than shown as 0.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The families, as Prometheus text. `started` is the process's start.
pub fn metrics(started: SystemTime) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, kind: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu = match (field(14), field(15)) {
        (Some(user), Some(system)) if ticks > 0 => Some((user + system) / ticks as f64),
        _ => None,
    };
    family(
        "process_cpu_seconds_total",
        "User and system CPU time spent, in seconds.",
        "counter",
        cpu,
    );
    family(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        field(24)
            .filter(|_| page > 0)
            .map(|pages| pages * page as f64),
    );
    family(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        field(23),
    );
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    family(
        "process_open_fds",
        "Open file descriptors (sockets included).",
        "gauge",
        open,
    );
    family(
        "process_max_fds",
        "The limit on open file descriptors (the soft limit weft raised at start).",
        "gauge",
        max_fds(),
    );
    let start = started
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64());
    family(
        "process_start_time_seconds",
        "When the process started, in seconds since the Unix epoch.",
        "gauge",
        start,
    );
    let _ = writeln!(
        out,
        "# HELP weft_build_info The running build: always 1, with its version.\n# TYPE weft_build_info gauge\nweft_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

fn max_fds() -> Option<f64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid, owned struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    Some(lim.rlim_cur as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_reads_a_plausible_value() {
        let text = metrics(SystemTime::now());
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name) && !l.starts_with('#'))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        };
        assert!(value("process_resident_memory_bytes ") > 1e5);
        assert!(value("process_open_fds ") >= 3.0);
        assert!(value("process_cpu_seconds_total ") >= 0.0);
        assert!(value("process_start_time_seconds ") > 1.7e9);
        assert!(text.contains("weft_build_info{version=\""), "{text}");
    }
}
