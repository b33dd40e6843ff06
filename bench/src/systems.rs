//! The systems a scenario runs against: `direct` (no proxy), weft on each io driver
//! (and, where `bench/pgo-build.sh` has made one, its profile-guided build), nginx and
//! haproxy — each started pinned to the proxy CPUs with a config written
//! here, stopped after its run.
//!
//! Peer configs aim at a like-for-like comparison: one worker/thread per proxy CPU
//! used, keep-alive to the upstream, access logs off, no headers added.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    /// `pgo`: the profile-guided build (`--weft-pgo-bin`) instead of `--weft-bin`.
    /// `health`: the endpoint-health features all on for the clusters (`-health`):
    /// `lb = "p2c_ewma"`, active HTTP checks every second, outlier detection (the
    /// circuit breakers are always on).
    /// `policy`: request policies on the forwarding route, configured but never
    /// triggering (`-policy`): a retry policy and a process-wide rate limit.
    Weft {
        driver: &'static str,
        pgo: bool,
        health: bool,
        policy: bool,
    },
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn name(&self) -> String {
        match self {
            Kind::Direct => "direct".into(),
            Kind::Weft {
                driver,
                pgo,
                health,
                policy,
            } => format!(
                "weft-{driver}{}{}{}",
                if *pgo { "-pgo" } else { "" },
                if *health { "-health" } else { "" },
                if *policy { "-policy" } else { "" }
            ),
            Kind::Nginx => "nginx".into(),
            Kind::Haproxy => "haproxy".into(),
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        // The inverse of `name`: a weft system may carry the `-pgo`, `-health` and
        // `-policy` suffixes.
        let (name, policy) = match name.strip_suffix("-policy") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let (name, health) = match name.strip_suffix("-health") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let (base, pgo) = match name.strip_suffix("-pgo") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let driver = match base {
            "weft-io_uring" => "io_uring",
            "weft-epoll" => "epoll",
            _ if pgo || health || policy => return None,
            "direct" => return Some(Kind::Direct),
            "nginx" => return Some(Kind::Nginx),
            "haproxy" => return Some(Kind::Haproxy),
            _ => return None,
        };
        Some(Kind::Weft {
            driver,
            pgo,
            health,
            policy,
        })
    }

    /// The weft binary this system runs (the profile-guided build for `-pgo`).
    pub fn weft_bin<'e>(&self, env: &'e Env) -> &'e Path {
        match self {
            Kind::Weft { pgo: true, .. } => &env.weft_pgo_bin,
            _ => &env.weft_bin,
        }
    }

    /// Whether the system can run here (peers are optional Debian packages; the
    /// profile-guided build exists once `bench/pgo-build.sh` has made it).
    pub fn available(&self, weft_pgo_bin: &Path) -> bool {
        match self {
            Kind::Nginx => find_program("nginx").is_some(),
            Kind::Haproxy => find_program("haproxy").is_some(),
            Kind::Weft { pgo: true, .. } => weft_pgo_bin.is_file(),
            _ => true,
        }
    }
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// What the load speaks to the proxy, and so what the proxy speaks upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 both sides.
    H1,
    /// h2c from the clients, HTTP/1.1 to the upstream.
    H2,
    /// gRPC: h2c both sides.
    Grpc,
    /// HTTPS (HTTP/1.1 over TLS, ECDSA P-256) from the clients, plain HTTP/1.1 upstream.
    Tls,
}

/// Writes a bench CA (`bench-ca.crt`) and an ECDSA P-256 certificate it signs for
/// `load::TLS_NAME` (`bench.crt`, `bench.key`, and `bench.pem` with both for haproxy)
/// into `dir`, with the openssl CLI; every proxy serves the same one.
pub fn make_tls_cert(dir: &Path) -> io::Result<()> {
    let name = crate::load::TLS_NAME;
    std::fs::write(
        dir.join("bench.ext"),
        format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"),
    )?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "bench-ca.key",
            "-out",
            "bench-ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=weft bench CA",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "bench.key",
            "-out",
            "bench.csr",
            "-subj",
            "/CN=bench.test",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "bench.csr",
            "-CA",
            "bench-ca.crt",
            "-CAkey",
            "bench-ca.key",
            "-CAcreateserial",
            "-out",
            "bench.crt",
            "-days",
            "2",
            "-extfile",
            "bench.ext",
        ],
    ];
    for args in steps {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!("openssl {} failed", args[0])));
        }
    }
    let mut pem = std::fs::read(dir.join("bench.crt"))?;
    pem.extend(std::fs::read(dir.join("bench.key"))?);
    std::fs::write(dir.join("bench.pem"), pem)
}

/// Where and how systems run.
pub struct Env {
    pub weft_bin: PathBuf,
    pub weft_pgo_bin: PathBuf,
    pub proxy_cpus: Vec<usize>,
    pub dir: PathBuf,
}

/// What a started system needs to be measured and stopped.
pub struct Running {
    pub port: u16,
    pub admin: Option<SocketAddr>,
    pub config: Option<PathBuf>,
    child: Option<Child>,
}

impl Running {
    /// The system's processes (the proxy and any workers it forked).
    pub fn pids(&self) -> Vec<u32> {
        self.child
            .as_ref()
            .map(|c| crate::procstat::tree(c.id()))
            .unwrap_or_default()
    }

    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM for a clean drain, then insist.
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback port free right now, for a system or upstream to listen on.
///
/// Not one the kernel hands out for `:0`: those come from the ephemeral range, which
/// the load generator's thousands of outgoing connections draw their source ports from
/// too, so such a port could be taken between this check and the child's bind. These
/// come from below the ephemeral range (32768 up, by default), and below the range the
/// integration tests pick from (12000-32000), since `cargo test` runs the harness test
/// beside them. Successive calls walk the range, so a port just freed is not reused
/// at once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 8_000;
    const SPAN: u32 = 4_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(397) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    (0..SPAN)
        .map(|_| (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        // All taken: let the kernel pick, and accept the small race.
        .unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or(0)
        })
}

fn wait_port(port: u16, child: &mut Child) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(io::Error::other(format!("exited early: {status}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::other(format!("port {port} never opened")))
}

/// A CPU list as `taskset -c` takes it: "0,2,3".
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What every bench config of weft starts with: the runtime lines given, the admin
/// address, and no forwarding headers (the peers add none either).
pub fn weft_preamble(runtime: &str, admin: u16) -> String {
    format!(
        "[runtime]\n{runtime}\n\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\n[http.forwarded]\nx_forwarded_for = false\nx_forwarded_proto = false\nrequest_id = false\n"
    )
}

/// Where a system's answers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Forwarded to the bench upstream, over HTTP/2 (h2c) when `h2`.
    Upstream { addr: SocketAddr, h2: bool },
    /// Made by the proxy itself: status 200, `text/plain`, `LOCAL_BODY`. What the
    /// client side of a protocol costs, without an upstream exchange.
    Local,
}

/// The body of a proxy's own answer: 64 bytes, as the upstream's small response.
pub const LOCAL_BODY: &str = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl";

/// The weft config for a bench run; `variant` flips the route set used by reload runs;
/// `health` turns the endpoint-health features on for the clusters, `policy` the
/// request policies on the forwarding route (`Kind::Weft`).
#[allow(clippy::too_many_arguments)]
pub fn weft_config(
    port: u16,
    admin: u16,
    target: Target,
    driver: &str,
    workers: usize,
    variant: bool,
    tls: Option<&Path>,
    (health, policy): (bool, bool),
) -> String {
    // Both variants route everything to the upstream; they differ in routes and weights
    // so a reload really swaps the table.
    let (w1, w2, extra) = if variant {
        (90, 10, "/v-a")
    } else {
        (10, 90, "/v-b")
    };
    let preamble = weft_preamble(&format!("workers = {workers}\nio = \"{driver}\""), admin);
    let tls = tls
        .map(|dir| {
            format!(
                "tls = {{ certificates = [ {{ cert = \"{}\", key = \"{}\" }} ], alpn = [\"http/1.1\"] }}\n",
                dir.join("bench.crt").display(),
                dir.join("bench.key").display()
            )
        })
        .unwrap_or_default();
    let (catch_all, clusters) = match target {
        Target::Local => (
            format!("direct_response = {{ status = 200, body = \"{LOCAL_BODY}\" }}"),
            String::new(),
        ),
        Target::Upstream { addr, h2 } => {
            let protocol = if h2 { "http2" } else { "http1" };
            let cluster = |name: &str| {
                let mut c = format!("\n[clusters.{name}]\nendpoints = [\"{addr}\"]\nprotocol = \"{protocol}\"\npool = {{ max_idle = 4096 }}\n");
                if health {
                    c += &format!(
                        "lb = \"p2c_ewma\"\n[clusters.{name}.health_check]\nkind = \"http\"\npath = \"/\"\ninterval = \"1s\"\n\
                         [clusters.{name}.outlier_detection]\nconsecutive_5xx = 5\ninterval = \"1s\"\n"
                    );
                }
                c
            };
            // Configured, never triggering: nothing fails, and the bucket never empties.
            let policies = if policy {
                ", retry = { retry_on = [\"connect-failure\", \"refused-stream\", \"gateway-error\"], num_retries = 2 }, \
                 rate_limit = { max_tokens = 1000000000, fill_interval = \"1s\" }"
            } else {
                ""
            };
            (
                format!("split = [ {{ cluster = \"a\", weight = {w1} }}, {{ cluster = \"b\", weight = {w2} }} ]{policies}"),
                cluster("a") + &cluster("b"),
            )
        }
    };
    format!(
        r#"{preamble}
[[listeners]]
name = "bench"
address = "127.0.0.1:{port}"
{tls}routes = [
  {{ match = {{ path = "{extra}" }}, direct_response = {{ status = 200, body = "variant" }} }},
  {{ match = {{ path_prefix = "/" }}, {catch_all} }},
]
{clusters}"#
    )
}

/// Starts `kind`; for h2 and gRPC the peers' listeners speak HTTP/2 with prior knowledge
/// (weft detects it on any plain listener), and for gRPC every proxy speaks h2c upstream.
/// `local`: the proxy answers itself (`Target::Local`) instead of forwarding.
pub fn start(
    kind: &Kind,
    env: &Env,
    upstream: SocketAddr,
    workers: usize,
    protocol: Protocol,
    local: bool,
) -> io::Result<Running> {
    if *kind == Kind::Direct {
        if local {
            return Err(io::Error::other("direct has no answer of its own"));
        }
        return Ok(Running {
            port: upstream.port(),
            admin: None,
            config: None,
            child: None,
        });
    }
    let port = free_port();
    let cpus = cpu_list(&env.proxy_cpus);
    let d = env.dir.display();
    let (nginx_h2, haproxy_h2) = match protocol {
        Protocol::H1 => (String::new(), String::new()),
        Protocol::H2 | Protocol::Grpc => (" http2".into(), " proto h2".into()),
        Protocol::Tls => (
            format!(" ssl;\n    ssl_certificate {d}/bench.crt;\n    ssl_certificate_key {d}/bench.key;\n    ssl_session_tickets on"),
            format!(" ssl crt {d}/bench.pem alpn http/1.1"),
        ),
    };
    let grpc = protocol == Protocol::Grpc;
    let nginx_location = if local {
        format!("default_type text/plain; return 200 \"{LOCAL_BODY}\";")
    } else if grpc {
        "grpc_pass grpc://up;".to_string()
    } else {
        "proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on;".to_string()
    };
    let haproxy_answer = if local {
        format!(
            "  http-request return status 200 content-type text/plain string \"{LOCAL_BODY}\"\n"
        )
    } else {
        "  default_backend be\n".to_string()
    };
    let haproxy_server_h2 = if grpc { " proto h2" } else { "" };
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(&cpus)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut admin = None;
    let config;
    match kind {
        Kind::Direct => unreachable!("handled above"),
        Kind::Weft {
            driver,
            health,
            policy,
            ..
        } => {
            let admin_port = free_port();
            admin = Some(SocketAddr::from(([127, 0, 0, 1], admin_port)));
            let path = env.dir.join(format!("{}.toml", kind.name()));
            std::fs::write(
                &path,
                weft_config(
                    port,
                    admin_port,
                    if local {
                        Target::Local
                    } else {
                        Target::Upstream {
                            addr: upstream,
                            h2: grpc,
                        }
                    },
                    driver,
                    workers,
                    true,
                    (protocol == Protocol::Tls).then_some(env.dir.as_path()),
                    (*health, *policy),
                ),
            )?;
            cmd.arg(kind.weft_bin(env))
                .arg("ingress")
                .arg("--config")
                .arg(&path)
                .env("WEFT_LOG", "warn");
            config = Some(path);
        }
        Kind::Nginx => {
            let dir = env.dir.join(format!("nginx-{port}"));
            std::fs::create_dir_all(&dir)?;
            let d = dir.display();
            let conf = format!(
                "worker_processes {workers};\ndaemon off;\nerror_log {d}/error.log crit;\npid {d}/nginx.pid;\n\
                 worker_rlimit_nofile 65536;\nevents {{ worker_connections 30000; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 upstream up {{ server {upstream}; keepalive 4096; keepalive_requests 1000000; }}\n\
                 server {{\n    listen 127.0.0.1:{port} reuseport{nginx_h2};\n    keepalive_requests 1000000;\n\
                 location / {{ {nginx_location} }}\n  }}\n}}\n"
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, conf)?;
            let nginx =
                find_program("nginx").ok_or_else(|| io::Error::other("nginx not installed"))?;
            cmd.arg(nginx).arg("-c").arg(&path).arg("-p").arg(&dir);
            config = Some(path);
        }
        Kind::Haproxy => {
            // haproxy refuses to start when maxconn needs more descriptors than allowed.
            let maxconn = (crate::procstat::raise_nofile() / 2)
                .saturating_sub(100)
                .clamp(1000, 30000);
            let conf = format!(
                "global\n  nbthread {workers}\n  maxconn {maxconn}\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n\
                 frontend fe\n  bind 127.0.0.1:{port}{haproxy_h2}\n{haproxy_answer}\
                 backend be\n  server up {upstream}{haproxy_server_h2}\n"
            );
            let path = env.dir.join(format!("haproxy-{port}.cfg"));
            std::fs::write(&path, conf)?;
            let haproxy =
                find_program("haproxy").ok_or_else(|| io::Error::other("haproxy not installed"))?;
            cmd.arg(haproxy).arg("-f").arg(&path);
            config = Some(path);
        }
    }
    let mut child = cmd.spawn()?;
    wait_port(port, &mut child)?;
    Ok(Running {
        port,
        admin,
        config,
        child: Some(child),
    })
}

/// The health-checks scenario's check interval in seconds, the same for every system,
/// as are its 500 ms timeout and a spread of up to 10% (haproxy's `spread-checks`).
const CHECK_INTERVAL_S: u32 = 1;

/// Starts `kind` (weft or haproxy) with one cluster (backend) of `endpoints`, each
/// HTTP-checked (`GET /`) every second, and nothing sent to it otherwise.
pub fn start_checking(kind: &Kind, env: &Env, endpoints: &[SocketAddr]) -> io::Result<Running> {
    let port = free_port();
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(cpu_list(&env.proxy_cpus))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let interval = CHECK_INTERVAL_S;
    let (admin, path) = match kind {
        Kind::Weft { driver, .. } => {
            let admin_port = free_port();
            let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
            let preamble = weft_preamble(&format!("workers = 1\nio = \"{driver}\""), admin_port);
            let config = format!(
                "{preamble}\n[[listeners]]\nname = \"bench\"\naddress = \"127.0.0.1:{port}\"\n\
                 routes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"checked\" }} ]\n\n\
                 [clusters.checked]\nendpoints = [{}]\n\n[clusters.checked.health_check]\n\
                 kind = \"http\"\npath = \"/\"\ninterval = \"{interval}s\"\ntimeout = \"500ms\"\n\
                 interval_jitter_percent = 10\ninitial_jitter = \"{interval}s\"\n",
                list.join(", ")
            );
            let path = env.dir.join(format!("{}-checking.toml", kind.name()));
            std::fs::write(&path, config)?;
            cmd.arg(kind.weft_bin(env))
                .args(["ingress", "--config"])
                .arg(&path)
                .env("WEFT_LOG", "warn");
            (Some(SocketAddr::from(([127, 0, 0, 1], admin_port))), path)
        }
        Kind::Haproxy => {
            let mut config = format!(
                "global\n  nbthread 1\n  maxconn {}\n  spread-checks 10\n\
                 defaults\n  mode http\n  timeout connect 500ms\n  timeout check 500ms\n  timeout client 60s\n  timeout server 60s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
                 backend be\n  option httpchk GET /\n",
                endpoints.len() * 2 + 1000
            );
            for (i, e) in endpoints.iter().enumerate() {
                config += &format!("  server s{i} {e} check inter {interval}s\n");
            }
            let path = env.dir.join(format!("haproxy-checking-{port}.cfg"));
            std::fs::write(&path, config)?;
            let haproxy =
                find_program("haproxy").ok_or_else(|| io::Error::other("haproxy not installed"))?;
            cmd.arg(haproxy).arg("-f").arg(&path);
            (None, path)
        }
        _ => return Err(io::Error::other("no active health checks")),
    };
    let mut child = cmd.spawn()?;
    wait_port(port, &mut child)?;
    Ok(Running {
        port,
        admin,
        config: Some(path),
        child: Some(child),
    })
}
