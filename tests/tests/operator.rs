//! What a new operator hits: a port another weft holds, binary upgrades with no
//! refused connection, `Date` on weft's own answers, reload truths on /config,
//! process metrics, `--help` and `weft check` output.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tests::process::weft_output;
use weft_tests::{free_addr, weft_bin, Weft};

fn direct_config(admin: SocketAddr, listen: SocketAddr, body: &str) -> String {
    direct_config_on("auto", admin, listen, body)
}

/// `direct_config` with `runtime.io = io`.
fn direct_config_on(io: &str, admin: SocketAddr, listen: SocketAddr, body: &str) -> String {
    format!(
        r#"
[runtime]
io = "{io}"

[admin]
address = "{admin}"

[[listeners]]
name = "edge"
address = "{listen}"
routes = [
  {{ match = {{ path_prefix = "/" }}, direct_response = {{ status = 200, body = "{body}" }} }},
]
"#
    )
}

/// Starts `weft ingress` on `config` and waits for it to exit (at most 10 s).
fn run_to_exit(config: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weft.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(weft_bin())
        .arg("ingress")
        .arg("--config")
        .arg(&path)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, String::new())
}

#[test]
fn a_second_weft_on_a_listener_port_refuses_to_start() {
    let (admin, listen) = (free_addr(), free_addr());
    let first = Weft::start("ingress", &direct_config(admin, listen, "first"), admin);
    let (code, err) = run_to_exit(&direct_config(free_addr(), listen, "second"), &[]);
    assert_eq!(code, Some(1), "the second weft must exit 1: {err}");
    assert!(
        err.contains(&format!("{listen} is in use by another process")),
        "{err}"
    );
    assert!(
        err.contains("--upgrade-socket"),
        "says how to replace it: {err}"
    );
    // The first one took every connection, and still does.
    for _ in 0..20 {
        assert_eq!(get_body(listen).as_deref(), Some("first"));
    }
    drop(first);
}

#[test]
fn a_reload_adding_a_port_another_process_holds_is_refused() {
    let (admin, listen) = (free_addr(), free_addr());
    let held = std::net::TcpListener::bind(free_addr()).expect("bind");
    let taken = held.local_addr().expect("addr");
    let weft = Weft::start("ingress", &direct_config(admin, listen, "one"), admin);
    let added = format!(
        "{}\n[[listeners]]\nname = \"more\"\naddress = \"{taken}\"\nroutes = [{{ match = {{ path_prefix = \"/\" }}, direct_response = {{ status = 204 }} }}]\n",
        direct_config(admin, listen, "one")
    );
    std::fs::write(&weft.config_path, added).expect("write");
    weft.signal(libc_sighup());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut config = String::new();
    while Instant::now() < deadline {
        config = weft.admin_get("/config").1;
        if config.contains("in use by another process") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        config.contains(&format!("{taken} is in use by another process")),
        "{config}"
    );
    assert_eq!(get_body(listen).as_deref(), Some("one"));
}

fn libc_sighup() -> i32 {
    1
}

/// One request on a connection of its own: the body of a 200, else None.
fn get_body(addr: SocketAddr) -> Option<String> {
    fetch(addr).ok()
}

/// One request on a connection of its own: the body of a 200, else what went wrong.
fn fetch(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e} after {out:?}"))?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_owned()),
        _ => Err(format!("answer: {out:?}")),
    }
}

/// A private directory and the path of an upgrade socket in it.
fn upgrade_socket() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("upgrade.sock");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (dir, path)
}

#[test]
fn a_binary_upgrade_under_load_refuses_and_fails_nothing() {
    upgrade_under_load("auto");
}

/// The accept loops end differently with readiness (epoll) and completions (io_uring).
#[test]
fn a_binary_upgrade_on_epoll_refuses_and_fails_nothing() {
    upgrade_under_load("epoll");
}

fn upgrade_under_load(io: &str) {
    let (admin, listen) = (free_addr(), free_addr());
    let (_socket_dir, upgrade) = upgrade_socket();
    let upgrade = upgrade.as_str();
    let extra = ["--workers", "2", "--upgrade-socket", upgrade];
    let mut old = Weft::start_with(
        "ingress",
        &direct_config_on(io, admin, listen, "old"),
        admin,
        &extra,
    );

    // Four clients, each a new connection per request: every accept queue is in play.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed, from_new) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, failed, from_new) = (
                stop.clone(),
                served.clone(),
                failed.clone(),
                from_new.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match fetch(listen).as_deref() {
                        Ok("old") => served.fetch_add(1, Ordering::Relaxed),
                        Ok("new") => {
                            from_new.fetch_add(1, Ordering::Relaxed);
                            served.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            eprintln!("FAILED: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = served.load(Ordering::Relaxed);
    assert!(before > 0, "the load runs against the old process");

    // The new process (its config says "new"), as a new binary would be started.
    let new = Weft::start_with(
        "ingress",
        &direct_config_on(io, admin, listen, "new"),
        admin,
        &extra,
    );
    let exited = old.wait_exit(Duration::from_secs(15));
    assert!(
        exited.map(|s| s.success()).unwrap_or(false),
        "the old process drains and exits 0 ({exited:?}):\n{}",
        old.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let (served, failed, from_new) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        from_new.load(Ordering::Relaxed),
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed or were refused across the upgrade\nold:\n{}\nnew:\n{}",
        served + failed,
        old.log(),
        new.log()
    );
    assert!(from_new > 0, "the new process served ({served} in all)");
    assert!(
        old.log()
            .contains("upgrade: the new process serves the listeners now"),
        "{}",
        old.log()
    );
    assert!(new.log().contains("upgrade: took over"), "{}", new.log());
    // The admin port went over too, and the next upgrade can follow.
    let (status, config) = new.admin_get("/config");
    assert_eq!(status, 200);
    assert!(config.contains("\"upgrade_socket\""), "{config}");
    assert!(std::path::Path::new(upgrade).exists());
}

#[test]
fn a_stale_upgrade_socket_file_is_replaced() {
    let (admin, listen) = (free_addr(), free_addr());
    let (_socket_dir, path) = upgrade_socket();
    let path = std::path::PathBuf::from(path);
    // A socket file whose process is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let weft = Weft::start_with(
        "ingress",
        &direct_config(admin, listen, "fresh"),
        admin,
        &[
            "--workers",
            "1",
            "--upgrade-socket",
            path.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(get_body(listen).as_deref(), Some("fresh"));
    // The file is the running weft's now: a successor can connect.
    let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
        .expect("socket");
    probe
        .connect(&socket2::SockAddr::unix(&path).expect("address"))
        .expect("the running weft answers on the upgrade socket");
    drop(weft);
}

#[test]
fn weft_made_answers_carry_a_date() {
    let (admin, listen) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &direct_config(admin, listen, "ok"), admin);
    let url = format!("http://{listen}/");
    for http in ["--http1.1", "--http2-prior-knowledge"] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                http,
                &url,
            ])
            .output()
            .expect("curl");
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let date = head
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .unwrap_or_else(|| panic!("{http}: no date in\n{head}"));
        assert!(date.trim().ends_with(" gmt"), "{http}: {date}");
    }
    // A 400 for a malformed request too.
    let mut s = TcpStream::connect(listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(out.to_lowercase().contains("\r\ndate: "), "{out}");
    // And the admin pages.
    let mut s = TcpStream::connect(admin).expect("connect");
    s.write_all(b"GET /live HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("\r\ndate: "), "{out}");
}

#[test]
fn help_describes_every_option() {
    for sub in ["ingress", "sidecar", "check"] {
        let o = weft_output(&[sub, "--help"]);
        let text = String::from_utf8_lossy(&o.stdout);
        // Text beside the option, or (clap's layout for long texts) on the next line,
        // indented deeper.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let option = line.trim_start();
            // `-c`, `--config`; not a `- value: text` item of a possible-values list.
            if !option.starts_with('-') || option[1..].starts_with(' ') {
                continue;
            }
            let beside = option.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
            let indent = line.len() - option.len();
            let below = lines.get(i + 1).is_some_and(|next| {
                let t = next.trim_start();
                !t.is_empty() && !t.starts_with('-') && next.len() - t.len() > indent
            });
            assert!(
                beside || below,
                "weft {sub} --help: no text for {line:?}\n{text}"
            );
        }
    }
}

/// /config's `reloads` shows the last attempt: a refused one with its errors, and a
/// later one that found the file back as served clears them.
#[test]
fn reload_status_tells_the_last_attempt() {
    let (admin, listen) = (free_addr(), free_addr());
    let good = direct_config(admin, listen, "one");
    let weft = Weft::start("ingress", &good, admin);
    let reloads = |weft: &Weft| -> serde_json::Value {
        let (_, body) = weft.admin_get("/config");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        json["reloads"].clone()
    };
    assert!(reloads(&weft)["last_attempt"].is_null());
    // The status once the last attempt's result reads `result` (or after 5 s).
    let wait_for = |weft: &Weft, result: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = reloads(weft);
            if r["last_attempt"]["result"] == result || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    std::fs::write(
        &weft.config_path,
        good.replace("status = 200", "status = 2000"),
    )
    .expect("write");
    weft.signal(1);
    let refused = wait_for(&weft, "refused");
    assert_eq!(refused["last_attempt"]["result"], "refused", "{refused}");
    assert_eq!(refused["last_attempt"]["succeeded"], false, "{refused}");
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("status"),
        "{refused}"
    );

    // Put back as it was: the reload finds it unchanged, and the error is gone.
    std::fs::write(&weft.config_path, &good).expect("write");
    weft.signal(1);
    let fixed = wait_for(&weft, "unchanged");
    assert_eq!(fixed["last_attempt"]["result"], "unchanged", "{fixed}");
    // Neither published nor refused: the counters (and their metrics) stay.
    assert_eq!(
        (fixed["succeeded"].as_u64(), fixed["failed"].as_u64()),
        (Some(0), Some(1)),
        "{fixed}"
    );
    assert_eq!(fixed["last_attempt"]["succeeded"], true, "{fixed}");
    assert!(fixed["last_error"].is_null(), "{fixed}");
    let at = fixed["last_attempt"]["at_unix"].as_u64().expect("at_unix");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(now.abs_diff(at) <= 5, "{fixed}");
    assert!(fixed["last_attempt"]["at"]
        .as_str()
        .unwrap_or("")
        .ends_with(" GMT"));
    assert_eq!(get_body(listen).as_deref(), Some("one"));
}

#[test]
fn process_metrics_and_build_info_are_scraped() {
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start("ingress", &direct_config(admin, listen, "ok"), admin);
    let rss = weft.metric(&["process_resident_memory_bytes "]);
    let kib = weft.rss_kib() as f64 * 1024.0;
    assert!(rss > 0.0 && (rss - kib).abs() < kib * 0.5, "{rss} vs {kib}");
    assert!(
        weft.metric(&["process_open_fds "]) >= 4.0,
        "listeners and admin at least"
    );
    assert!(weft.metric(&["process_max_fds "]) >= 1024.0);
    let started = weft.metric(&["process_start_time_seconds "]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(now - started >= 0.0 && now - started < 60.0, "{started}");
    assert!(weft.metric(&["process_cpu_seconds_total "]) >= 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        weft.metric(&[&format!("weft_build_info{{version=\"{version}\"}}")]),
        1.0
    );
}

/// The shipped man page is the CLI's own (regenerate: `weft manpage > config/weft.1`),
/// and it renders.
#[test]
fn the_shipped_man_page_is_current_and_renders() {
    let generated = weft_output(&["manpage"]);
    assert!(generated.status.success());
    let shipped = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/weft.1"))
        .expect("config/weft.1");
    assert!(
        shipped == generated.stdout,
        "config/weft.1 is stale: run `weft manpage > config/weft.1`"
    );
    let text = String::from_utf8_lossy(&generated.stdout);
    for part in [
        "WEFT INGRESS",
        "WEFT SIDECAR",
        "WEFT CHECK",
        "upgrade\\-socket",
        "SIGHUP",
    ] {
        assert!(text.contains(part), "{part} missing");
    }
    let rendered = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(&generated.stdout)?;
            child.wait_with_output()
        });
    let out = rendered.expect("run groff (package groff-base)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "groff: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `weft check` speaks the config's own words (no Rust names), tells TLS and timeouts,
/// and `--effective` / `/config?effective` show every default filled in.
#[test]
fn check_speaks_the_configs_words_and_shows_the_effective_config() {
    let (admin, listen) = (free_addr(), free_addr());
    let config = format!(
        "{}\n[clusters.api]\nendpoints = [\"127.0.0.1:9\"]\nlb = \"least_request\"\nconnect_timeout = \"250ms\"\n",
        direct_config(admin, listen, "ok")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("weft.toml");
    std::fs::write(&file, &config).expect("write");
    let path = file.to_str().expect("utf-8");
    let out = weft_output(&["check", "--config", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(": ok (ingress)"), "{text}");
    assert!(
        text.contains("listener edge on") && text.contains("plain HTTP"),
        "{text}"
    );
    assert!(
        text.contains("cluster api: least_request, http1, plain"),
        "{text}"
    );
    assert!(
        text.contains("timeouts: connect 250ms, request 15s, read 60s"),
        "{text}"
    );
    for rust in [
        "Ingress",
        "LeastRequest",
        "Some(",
        "Duration",
        "nothing was started",
    ] {
        assert!(!text.contains(rust), "{rust} in:\n{text}");
    }

    let out = weft_output(&["check", "--config", path, "--effective"]);
    assert!(out.status.success());
    let effective: toml::Value =
        toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("effective config is TOML");
    assert_eq!(
        effective["clusters"]["api"]["connect_timeout"].as_str(),
        Some("250ms")
    );
    assert_eq!(
        effective["clusters"]["api"]["read_timeout"].as_str(),
        Some("60s")
    );
    assert_eq!(
        effective["http"]["max_header_bytes"].as_integer(),
        Some(32768)
    );

    let weft = Weft::start("ingress", &config, admin);
    let (_, body) = weft.admin_get("/config?effective");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["config"]["http"]["idle_timeout"], "60s", "{body}");
    assert_eq!(json["role"], "ingress");
    let (_, plain) = weft.admin_get("/config");
    let json: serde_json::Value = serde_json::from_str(&plain).expect("json");
    assert!(
        json["config"]["http"].is_null(),
        "as written: no [http] table"
    );
}

/// `--log-format json` writes one JSON object per line; the level changes at run time
/// on the admin port; a refused reload is one line, whatever its number of errors.
#[test]
fn logs_are_json_lines_and_their_level_changes_at_run_time() {
    let (admin, listen) = (free_addr(), free_addr());
    let good = direct_config(admin, listen, "ok");
    let weft = Weft::start_with(
        "ingress",
        &good,
        admin,
        &["--workers", "1", "--log-format", "json"],
    );
    // Two errors: one refusal line.
    std::fs::write(
        &weft.config_path,
        good.replace("status = 200", "status = 2000") + "\n[clusters.x]\nendpoints = []\n",
    )
    .expect("write");
    weft.signal(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !weft.log().contains("reload refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = weft.log();
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
    }
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    let refusal: serde_json::Value = serde_json::from_str(refusals[0]).expect("json");
    assert_eq!(refusal["fields"]["errors"], 2, "{refusal}");
    let message = refusal["fields"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("status") && message.contains("clusters.x.endpoints"),
        "{message}"
    );

    // A broken HTTP/2 connection is logged at debug: not while the level is info.
    let broken_h2 = || {
        let mut s = TcpStream::connect(listen).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let _ = s.write_all(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x09\x00\x00\x00\x00\x00garbage!",
        );
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    };
    broken_h2();
    let post = |path: &str, extra: &str| -> String {
        let mut s = TcpStream::connect(admin).expect("admin");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: 0\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(!weft.log().contains("\"DEBUG\""));
    let answer = post("/logging?level=debug", "");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(weft.admin_get("/logging").1, "level: debug\n");
    broken_h2();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !weft.log().contains("\"DEBUG\"") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(weft.log().contains("\"DEBUG\""), "{}", weft.log());
    // A bad filter is refused and the level stays; a browser cannot change it.
    assert!(post("/logging?level=%5Bbroken", "").starts_with("HTTP/1.1 400 "));
    let answer = post("/logging?level=trace", "Origin: http://evil.example\r\n");
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert_eq!(weft.admin_get("/logging").1, "level: debug\n");
    assert!(post("/logging?level=info", "").starts_with("HTTP/1.1 200 "));
}

/// The shipped two-sidecar example runs as its header says: the script makes the
/// mesh CA and certificates, orders' app reaches billing's app over mTLS (by
/// `Host: billing` and as an HTTP proxy), and billing's app learns the caller.
#[test]
fn the_shipped_mesh_example_runs_with_its_certificate_script() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/mesh");
    let dir = tempfile::tempdir().expect("tempdir");
    let made = Command::new("sh")
        .arg(shipped.join("make-certs.sh"))
        .arg(dir.path().join("certs"))
        .output()
        .expect("run make-certs.sh");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let app = weft_tests::upstream::TestUpstream::start("billing-app");
    // The example's fixed ports, moved to free ones for the test.
    let mut ports = std::collections::HashMap::new();
    for port in ["16000", "16001", "16006", "17000", "17001", "17006", "9090"] {
        ports.insert(format!("127.0.0.1:{port}"), free_addr().to_string());
    }
    ports.insert("127.0.0.1:9091".to_owned(), app.addr.to_string());
    let text = |name: &str| {
        let mut t = std::fs::read_to_string(shipped.join(name)).expect("example config");
        for (from, to) in &ports {
            t = t.replace(&format!("\"{from}\""), &format!("\"{to}\""));
        }
        t
    };
    let addr = |p: &str| -> SocketAddr { ports[&format!("127.0.0.1:{p}")].parse().expect("addr") };
    let _billing = Weft::start_in(dir.path(), "sidecar", &text("billing.toml"), addr("17000"));
    let orders_dir = dir.path().join("orders");
    std::fs::create_dir(&orders_dir).expect("dir");
    std::os::unix::fs::symlink(dir.path().join("certs"), orders_dir.join("certs")).expect("link");
    let _orders = Weft::start_in(&orders_dir, "sidecar", &text("orders.toml"), addr("16000"));
    let outbound = addr("16001");
    for how in [
        vec![
            "-H".to_owned(),
            "host: billing".to_owned(),
            format!("http://{outbound}/invoice/7"),
        ],
        vec![
            "-x".to_owned(),
            format!("http://{outbound}"),
            "http://billing/invoice/7".to_owned(),
        ],
    ] {
        let o = Command::new("curl")
            .arg("-sS")
            .args(&how)
            .output()
            .expect("curl");
        let dump = String::from_utf8_lossy(&o.stdout);
        assert!(dump.contains("upstream=billing-app"), "{how:?}: {dump}");
        assert!(dump.contains("URI=spiffe://mesh/orders"), "{how:?}: {dump}");
    }
    // Without a mesh certificate the billing inbound lets nothing in.
    let o = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{}/", addr("17006")))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "000");
}

/// A certificate weft itself loads is described in words, with the fix, and never as
/// a "peer" certificate (an X.509 v1 certificate as a listener's and as a cluster's
/// client certificate).
#[test]
fn own_certificate_problems_are_said_in_words() {
    let pki = weft_tests::pki::Pki::new();
    let dir = &pki.dir;
    pki.openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=old",
        "-keyout",
        "old.key",
        "-out",
        "old.csr",
    ]);
    // No extensions file: OpenSSL writes an X.509 v1 certificate.
    pki.openssl(&[
        "x509", "-req", "-in", "old.csr", "-signkey", "old.key", "-days", "5", "-out", "old.crt",
    ]);
    let config = format!(
        "[[listeners]]\nname = \"l\"\naddress = \"{}\"\ntls = {{ certificates = [{{ cert = \"old.crt\", key = \"old.key\" }}] }}\nroutes = [ {{ match = {{ path_prefix = \"/\" }}, direct_response = {{ status = 200 }} }} ]\n\
         [clusters.c]\nendpoints = [\"127.0.0.1:9\"]\ntls = {{ cert = \"old.crt\", key = \"old.key\", sni = \"c\" }}\n",
        free_addr()
    );
    let file = dir.path().join("weft.toml");
    std::fs::write(&file, config).expect("write");
    let o = weft_output(&["check", "--config", file.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let fix = "an X.509 v1 certificate: re-issue it as v3, with a subjectAltName";
    assert!(
        err.lines()
            .any(|l| l.contains("listeners[0].tls.certificates[0]") && l.contains(fix)),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("clusters.c.tls.cert") && l.contains("old.crt") && l.contains(fix)),
        "{err}"
    );
    for debug in ["peer", "Other(", "UnsupportedCertVersion"] {
        assert!(!err.contains(debug), "{debug} in:\n{err}");
    }
}

/// A new weft that fails to start after it was handed the sockets (here: its config
/// wants a port another process holds) changes nothing: the old one serves on, and a
/// later, good start still takes over from it.
#[test]
fn a_failed_upgrade_leaves_the_old_weft_serving() {
    let (admin, listen) = (free_addr(), free_addr());
    let (_socket_dir, upgrade) = upgrade_socket();
    let extra = ["--workers", "1", "--upgrade-socket", upgrade.as_str()];
    let mut old = Weft::start_with(
        "ingress",
        &direct_config(admin, listen, "old"),
        admin,
        &extra,
    );
    let held = std::net::TcpListener::bind(free_addr()).expect("bind");
    let bad = format!(
        "{}\n[[listeners]]\nname = \"more\"\naddress = \"{}\"\nroutes = [{{ match = {{ path_prefix = \"/\" }}, direct_response = {{ status = 204 }} }}]\n",
        direct_config(admin, listen, "bad"),
        held.local_addr().expect("addr")
    );
    let (code, err) = run_to_exit(&bad, &extra);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is in use by another process"), "{err}");
    for _ in 0..20 {
        assert_eq!(get_body(listen).as_deref(), Some("old"));
    }
    assert!(
        old.wait_exit(Duration::from_millis(300)).is_none(),
        "the old one still runs"
    );
    let _new = Weft::start_with(
        "ingress",
        &direct_config(admin, listen, "new"),
        admin,
        &extra,
    );
    assert!(
        old.wait_exit(Duration::from_secs(15)).is_some(),
        "{}",
        old.log()
    );
    assert_eq!(get_body(listen).as_deref(), Some("new"));
}
