//! Running the weft binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the weft binary, built once per test run (debug profile), or the one
/// `WEFT_TEST_BIN` names: the suite can check a release or profile-guided build too.
pub fn weft_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("WEFT_TEST_BIN") {
            return PathBuf::from(bin);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "weft-gateway", "--bin", "weft"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building weft failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("weft")
    })
    .clone()
}

/// A loopback port nobody listens on right now, and that nothing else will be
/// handed before the test binds it.
///
/// Ports come from below the kernel's ephemeral range (32768 and up by default),
/// so neither a `bind(:0)` nor an outgoing connection's source port can take one
/// between this call and the bind by weft (CI once failed on exactly that). A
/// per-process counter keeps concurrent tests of one binary apart; the pid picks
/// where each binary starts so binaries run side by side rarely meet, and a port
/// someone already holds is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 12_000;
    const SPAN: u32 = 20_000; // 12000..32000
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(397) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

/// A loopback address with a port nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A running weft; killed on drop.
pub struct Weft {
    child: Child,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl Weft {
    /// Writes `config` (which must use `admin` as admin address) and starts
    /// `weft ROLE --config FILE --workers 2`, waiting until /ready says 200.
    pub fn start(role: &str, config: &str, admin: SocketAddr) -> Weft {
        Self::start_with(role, config, admin, &["--workers", "2"])
    }

    pub fn start_with(role: &str, config: &str, admin: SocketAddr, extra: &[&str]) -> Weft {
        Self::start_under(&[], role, config, admin, extra)
    }

    /// Like `start`, with the config file written into `dir` (where relative paths
    /// in it, such as certificates, resolve).
    pub fn start_in(dir: &Path, role: &str, config: &str, admin: SocketAddr) -> Weft {
        Self::start_at(
            Some(dir),
            &[],
            role,
            config,
            admin,
            &["--workers", "2"],
            "info",
        )
    }

    /// Like `start`, logging with `WEFT_LOG=filter` (an `EnvFilter` directive list).
    pub fn start_logging(role: &str, config: &str, admin: SocketAddr, filter: &str) -> Weft {
        Self::start_at(None, &[], role, config, admin, &["--workers", "2"], filter)
    }

    /// Like `start_with`, run under a wrapper command such as `["taskset", "-c", "1"]`.
    pub fn start_under(
        wrapper: &[&str],
        role: &str,
        config: &str,
        admin: SocketAddr,
        extra: &[&str],
    ) -> Weft {
        Self::start_at(None, wrapper, role, config, admin, extra, "info")
    }

    fn start_at(
        config_dir: Option<&Path>,
        wrapper: &[&str],
        role: &str,
        config: &str,
        admin: SocketAddr,
        extra: &[&str],
        log_filter: &str,
    ) -> Weft {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = config_dir.unwrap_or(dir.path()).join("weft.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("weft.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(weft_bin());
                c
            }
            None => Command::new(weft_bin()),
        };
        let child = cmd
            .arg(role)
            .arg("--config")
            .arg(&config_path)
            .args(extra)
            .env("WEFT_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weft");
        let mut w = Weft {
            child,
            admin,
            config_path,
            _dir: dir,
            log_path,
        };
        w.wait_ready();
        w
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("weft exited early ({status}):\n{}", self.log());
            }
            if admin_get(self.admin, "/ready")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("weft did not become ready:\n{}", self.log());
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get(self.admin, path).expect("admin request")
    }

    /// Value of one Prometheus sample line whose name and labels contain all of `parts`.
    pub fn metric(&self, parts: &[&str]) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `metric`, once it reads `want` (or what it reads after 5 s). A request is counted
    /// when its exchange is over, just after its last byte went to the client, so a
    /// client that scrapes the moment it has its answer may be a moment early.
    pub fn metric_settled(&self, parts: &[&str], want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(parts);
            if v == want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("weft's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// `Cpus_allowed_list` of each thread whose name starts with `prefix`.
    pub fn thread_cpus(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let dir = format!("/proc/{}/task", self.child.id());
        for entry in std::fs::read_dir(dir).expect("proc task dir").flatten() {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            let name = field("Name:");
            if name.starts_with(prefix) {
                out.push((name, field("Cpus_allowed_list:")));
            }
        }
        out.sort();
        out
    }

    /// Sends a signal (e.g. libc SIGHUP = 1, SIGTERM = 15).
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; None if it did not within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/metrics` text of the admin listener at `admin` (for a scrape from another
/// thread while a test drives load).
/// The admin's `/clusters`, parsed.
pub fn admin_clusters(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = admin_get(admin, "/clusters").expect("admin request");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/clusters: {e}: {body}"))
}

pub fn admin_metrics(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn admin_get(admin: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `weft ARGS...` to completion.
/// The HTTP status curl got (`%{http_code}`, "000" when it got none), for `args`
/// (options and the URL); at most 5 s.
pub fn curl_status(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn weft_output(args: &[&str]) -> Output {
    Command::new(weft_bin())
        .args(args)
        .output()
        .expect("run weft")
}
