//! The `weft` binary: parse the command line, load and validate the config, run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_gateway::observe::log;
use weft_gateway::runtime::{self, Overrides};
use weft_mesh::config::{self, Role};
use weft_mesh::snapshot::{self, RouteAction, Snapshot};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Edge ingress and service-mesh sidecar: one thread-per-core HTTP proxy engine"
)]
struct Cli {
    /// Log lines as text or as one JSON object per line (level: WEFT_LOG, default
    /// info; at run time: POST /logging?level=LEVEL on the admin port).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: log::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as an edge proxy: terminate client connections on the configured listeners.
    Ingress(RunArgs),
    /// Run beside one service instance: inbound (mesh -> app) and outbound (app -> mesh).
    Sidecar(RunArgs),
    /// Validate a config file: print a summary and exit 0, or every error and exit 1.
    Check {
        /// The config file (TOML) to check.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Check as this role; default: sidecar if the file has a [sidecar] table.
        #[arg(long, value_parser = ["ingress", "sidecar"])]
        role: Option<String>,
        /// Print the config as weft reads it, every default filled in (TOML), instead
        /// of the summary.
        #[arg(long)]
        effective: bool,
    },
    /// Print the man page (roff) to stdout: `weft manpage > /usr/share/man/man1/weft.1`.
    Manpage,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file (TOML). SIGHUP reloads it; `weft check` validates it first.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Worker threads (overrides runtime.workers; default one per CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Unix socket for binary upgrades: a weft started with the same path while
    /// another serves there takes over its listening sockets, and the old one
    /// drains; no connection is refused. Without it, a listener port another process
    /// holds is refused.
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log::init(cli.log_format);
    match cli.command {
        Command::Ingress(args) => run(args, Role::Ingress),
        Command::Sidecar(args) => run(args, Role::Sidecar),
        Command::Manpage => match std::io::Write::write_all(&mut std::io::stdout(), &manpage()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft manpage: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            config,
            role,
            effective,
        } => {
            let role = role.as_deref().map(|r| {
                if r == "sidecar" {
                    Role::Sidecar
                } else {
                    Role::Ingress
                }
            });
            match load(&config, role, true) {
                Ok(snap) if effective => {
                    let value = config::effective(&snap.source_file, &snap.source_text, snap.role);
                    match value.map(|v| toml::to_string_pretty(&v)) {
                        Some(Ok(text)) => {
                            print!("{text}");
                            ExitCode::SUCCESS
                        }
                        _ => {
                            eprintln!("{}: cannot print the effective config", config.display());
                            ExitCode::FAILURE
                        }
                    }
                }
                Ok(snap) => {
                    print!("{}", summary(&snap));
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
    }
}

fn run(args: RunArgs, role: Role) -> ExitCode {
    if args.workers == Some(0) {
        eprintln!("--workers: must be at least 1");
        return ExitCode::FAILURE;
    }
    let snap = match load(&args.config, Some(role), false) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match runtime::run(
        snap,
        Overrides {
            workers: args.workers,
            upgrade_socket: args.upgrade_socket,
        },
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            ExitCode::FAILURE
        }
    }
}

/// weft(1): the synopsis and every subcommand with its options, from the same
/// definitions as `--help`, then signals, files and the exit status.
fn manpage() -> Vec<u8> {
    let cli = <Cli as clap::CommandFactory>::command();
    let top = clap_mangen::Man::new(cli.clone());
    let mut page = Vec::new();
    // Writes into a Vec cannot fail.
    let _ = top.render_title(&mut page);
    let _ = top.render_name_section(&mut page);
    let _ = top.render_synopsis_section(&mut page);
    let _ = top.render_description_section(&mut page);
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        page.extend_from_slice(
            format!(
                ".SH \"WEFT {}\"\n{}\n",
                name.to_uppercase(),
                roff_text(&about)
            )
            .as_bytes(),
        );
        let sub = sub.clone().bin_name(format!("weft {name}"));
        let man = clap_mangen::Man::new(sub);
        let _ = man.render_synopsis_section(&mut page);
        let _ = man.render_options_section(&mut page);
    }
    page.extend_from_slice(MANPAGE_TAIL.as_bytes());
    let _ = top.render_version_section(&mut page);
    page
}

/// Escapes what roff would read as a request or an escape.
fn roff_text(text: &str) -> String {
    let text = text.replace('\\', "\\\\").replace('-', "\\-");
    match text.strip_prefix('.') {
        Some(rest) => format!("\\&.{rest}"),
        None => text,
    }
}

const MANPAGE_TAIL: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the config file: it is compiled as \fBweft check\fR does; a config with errors is refused and the running one stays (see \fB/config\fR on the admin port).
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Drain: stop accepting, finish in-flight requests (up to \fBruntime.drain_timeout\fR), exit 0. A second signal exits at once.
.SH UPGRADING
Start the new binary with the same \fB\-\-config\fR and \fB\-\-upgrade\-socket\fR as the running one. It takes over the listening and admin sockets, and the old process drains and exits once the new one serves; no connection is refused.
.SH ENVIRONMENT
.TP
\fBWEFT_LOG\fR
Log filter (e.g. \fBinfo\fR, \fBweft_gateway=debug\fR); default \fBinfo\fR.
.SH EXIT STATUS
0 after a drain or a successful check; 1 for a config error or a listener that cannot be bound; 70 when a worker thread panicked.
"#;

/// Loads and compiles as `role`; with no role (`weft check` without `--role`), as a
/// sidecar when the file has a [sidecar] table. On failure prints every error as
/// `FILE:LINE:COLUMN: key: problem`, in file order.
fn load(file: &Path, role: Option<Role>, checking: bool) -> Result<Snapshot, ExitCode> {
    let compiled = config::load(file, role.unwrap_or(Role::Ingress)).and_then(|mut loaded| {
        if role.is_none() && loaded.config.sidecar.is_some() {
            loaded.role = Role::Sidecar;
        }
        snapshot::compile(&loaded)
    });
    compiled.map_err(|errors| {
        eprintln!("{errors}");
        // `weft check` starts nothing anyway; a run says that it did not.
        let outcome = if checking {
            ""
        } else {
            "; nothing was started"
        };
        eprintln!("{}: {} error(s){outcome}", file.display(), errors.0.len());
        ExitCode::FAILURE
    })
}

/// A duration as a config writes it (`30s`, `250ms`).
fn dur(d: std::time::Duration) -> String {
    config::ConfigDuration(d).to_string()
}

/// A listener's TLS, for the summary.
fn listener_tls(tls: Option<&weft_mesh::snapshot::tls::ListenerTls>) -> String {
    let Some(t) = tls else {
        return "plain HTTP".to_owned();
    };
    let alpn: Vec<String> = t
        .server
        .alpn_protocols
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let clients = match t.client_auth {
        None => "no client certificates",
        Some(config::ClientAuthMode::Require) => "client certificates required (mTLS)",
        Some(config::ClientAuthMode::Optional) => "client certificates verified if sent",
    };
    format!(
        "TLS for [{}], ALPN [{}], {clients}{}",
        t.names.join(", "),
        alpn.join(", "),
        if t.forward_client_cert {
            ", identity forwarded in x-forwarded-client-cert"
        } else {
            ""
        }
    )
}

fn summary(s: &Snapshot) -> String {
    let mut out = format!("{}: ok ({})\n", s.source_file.display(), s.role.name());
    for l in s.listeners.iter() {
        let paths = match (l.paths.normalize, l.paths.merge_slashes) {
            (false, _) => "paths as received",
            (true, false) => "paths normalised",
            (true, true) => "paths normalised, slashes merged",
        };
        out += &format!(
            "  listener {} on {}: {}, {} route(s), {paths}\n",
            l.name,
            l.address,
            listener_tls(l.tls.as_ref()),
            l.routes.routes.len()
        );
        if let Some(limit) = &l.rate_limit {
            out += &format!("    {limit} (every request)\n");
        }
        for r in &l.routes.routes {
            let action = match &r.action {
                RouteAction::Forward(f) => {
                    let targets: Vec<String> = f
                        .targets
                        .iter()
                        .map(|t| format!("{}={}", s.clusters[t.cluster].name, t.weight))
                        .collect();
                    let mut line = format!("-> {}", targets.join(", "));
                    match &f.sticky {
                        Some(weft_mesh::snapshot::Sticky::Header(h)) => {
                            line += &format!(" (sticky by header {h})")
                        }
                        Some(weft_mesh::snapshot::Sticky::Cookie(c)) => {
                            line += &format!(" (sticky by cookie {c})")
                        }
                        None => {}
                    }
                    if !f.hash_policy.is_empty() {
                        use weft_mesh::snapshot::hashing::HashSource;
                        let parts: Vec<String> = f
                            .hash_policy
                            .iter()
                            .map(|p| {
                                let part = match &p.source {
                                    HashSource::Header(h) => format!("header {h}"),
                                    HashSource::Cookie {
                                        name, ttl: Some(t), ..
                                    } => {
                                        format!("cookie {name} (made, ttl {t:?})")
                                    }
                                    HashSource::Cookie { name, .. } => format!("cookie {name}"),
                                    HashSource::SourceIp => "source ip".to_owned(),
                                    HashSource::QueryParameter(q) => format!("query {q}"),
                                };
                                if p.terminal {
                                    part + " (terminal)"
                                } else {
                                    part
                                }
                            })
                            .collect();
                        line += &format!("; hash key: {}", parts.join(", "));
                    }
                    line
                }
                RouteAction::Direct(d) => format!("direct_response {}", d.status),
                RouteAction::Redirect(r) => format!("redirect {}", r.status),
            };
            out += &format!("    route {}: {action}\n", r.name);
            if let Some(retry) = &r.retry {
                out += &format!("      {retry}\n");
            }
            if let Some(fault) = &r.fault {
                out += &format!("      {fault}\n");
            }
            if let Some(limit) = &r.rate_limit {
                out += &format!("      {limit}\n");
            }
            if let Some(m) = &r.mirror {
                out += &format!(
                    "      mirror: {}% to {}, bodies kept up to {} bytes\n",
                    f64::from(m.share) / 10_000.0,
                    s.clusters[m.cluster].name,
                    m.max_buffered_bytes
                );
            }
        }
    }
    for c in &s.clusters {
        let eps: Vec<String> = c
            .endpoints
            .iter()
            .map(|e| format!("{} (weight {})", e.address, e.weight))
            .collect();
        let protocol = match c.protocol {
            config::UpstreamProtocol::Http1 => "http1",
            config::UpstreamProtocol::Http2 => "http2",
        };
        let tls = match &c.tls {
            None => "plain".to_owned(),
            Some(t) => format!(
                "TLS to {}{}",
                t.server_name.to_str(),
                if t.client.client_auth_cert_resolver.has_certs() {
                    " with a client certificate (mTLS)"
                } else {
                    ""
                }
            ),
        };
        out += &format!(
            "  cluster {}: {}, {protocol}, {tls}, {}\n",
            c.name,
            c.lb.name(),
            eps.join(", ")
        );
        out += &format!(
            "    timeouts: connect {}, request {}, read {}; idle connections: {} for {}\n",
            dur(c.connect_timeout),
            dur(c.request_timeout),
            dur(c.read_timeout),
            c.pool_max_idle,
            dur(c.pool_idle_timeout)
        );
        if let Some(h) = &c.health_check {
            let probe = match &h.probe {
                weft_mesh::snapshot::HealthProbe::Http { path, host, .. } => {
                    format!("http GET {path} (Host: {host})")
                }
                weft_mesh::snapshot::HealthProbe::Tcp { send, .. } if send.is_empty() => {
                    "tcp connect".to_owned()
                }
                weft_mesh::snapshot::HealthProbe::Tcp { .. } => "tcp send/receive".to_owned(),
                weft_mesh::snapshot::HealthProbe::Grpc { service, .. } => {
                    format!("grpc Health/Check {service:?}")
                }
            };
            out += &format!(
                "    health check: {probe} every {} (unhealthy: {}), timeout {}, healthy after {}, unhealthy after {}; panic below {}%\n",
                dur(h.interval), dur(h.unhealthy_interval), dur(h.timeout), h.healthy_threshold, h.unhealthy_threshold, c.panic_threshold
            );
        }
        if let Some(o) = &c.outlier {
            let local = match o.consecutive_local {
                Some(l) => format!(
                    "local-origin failures apart: {} in a row ({}% enforced)",
                    l.threshold, l.enforcing
                ),
                None => "local-origin failures count as 5xx".to_owned(),
            };
            let (sr, fp) = (&o.success_rate, &o.failure_percentage);
            out += &format!(
                "    outlier detection: {} 5xx in a row ({}% enforced), {} gateway errors in a row ({}% enforced), {local}; \
                 success rate below mean - {} stdev over {} hosts of {} answers ({}% enforced); \
                 failure percentage {}% over {} hosts of {} answers ({}% enforced); \
                 every {}, ejected {} x ejections (max {}, jitter {}), at most {}% ejected{}{}\n",
                o.consecutive_5xx.threshold,
                o.consecutive_5xx.enforcing,
                o.consecutive_gateway.threshold,
                o.consecutive_gateway.enforcing,
                sr.stdev_factor,
                sr.minimum_hosts,
                sr.request_volume,
                sr.enforcing,
                fp.threshold,
                fp.minimum_hosts,
                fp.request_volume,
                fp.enforcing,
                dur(o.interval),
                dur(o.base_ejection_time),
                dur(o.max_ejection_time),
                dur(o.max_ejection_time_jitter),
                o.max_ejection_percent,
                if o.always_eject_one_host { " (one always may be)" } else { "" },
                if o.uneject_on_active_success { "; a passing health check returns it" } else { "" },
            );
        }
        if c.health_check.is_none() && c.outlier.is_some() {
            out += &format!("    panic below {}% eligible\n", c.panic_threshold);
        }
        let b = &c.breakers;
        out += &format!(
            "    circuit breakers: max_connections {}, max_pending_requests {}, max_requests {}, max_retries {}\n",
            b.max_connections, b.max_pending_requests, b.max_requests, b.max_retries
        );
        if let Some(retry) = &c.retry {
            out += &format!("    routes without their own: {retry}\n");
        }
        if let Some(budget) = &c.retry_budget {
            out += &format!("    {budget} (in place of max_retries)\n");
        }
    }
    let trust = &s.trusted_proxies;
    if trust.hops == 0 && trust.sources.is_empty() {
        out += "  forwarding fields: no proxy trusted (a client's X-Forwarded-For is replaced)\n";
    } else {
        let nets: Vec<String> = trust.sources.iter().map(ToString::to_string).collect();
        out += &format!(
            "  forwarding fields: trusted from {} hop(s), sources [{}]\n",
            trust.hops,
            nets.join(", ")
        );
    }
    out += &format!("  admin on {}\n", s.admin.address);
    if let Some(private) = &s.admin.private {
        out += &format!(
            "  admin /config and /metrics on {private} (only /ready and /live on {})\n",
            s.admin.address
        );
    }
    for w in &s.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}
