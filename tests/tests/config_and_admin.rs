//! `weft check`, startup with bad config, and the admin listener (checked by promtool).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weft_tests::process::weft_output;
use weft_tests::raw;
use weft_tests::upstream::TestUpstream;
use weft_tests::{free_addr, free_port, weft_bin, Weft};

#[test]
fn every_shipped_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let o = weft_output(&["check", "--config", path.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains(": ok"));
        checked += 1;
    }
    assert!(
        checked >= 2,
        "config/ingress.toml and config/sidecar.toml at least"
    );
}

const BAD: &str = r#"
[runtime]
io = "kqueue"
"#;

const BAD_SEMANTICS: &str = r#"
[admin]
address = "nowhere"

[http]
max_header_bytes = 1

[[listeners]]
name = "public"
address = "127.0.0.1:PORT"
routes = [
  { match = { path_prefix = "/api/" }, cluster = "missing" },
  { match = { path_prefix = "/" }, split = [ { cluster = "a", weight = 0 } ] },
  { match = { path_regex = "([" }, direct_response = { status = 200 } },
  { match = { path_prefix = "/" }, colour = "blue", direct_response = { status = 200 } },
]

[clusters.a]
endpoints = ["not-an-address"]
lb = "round_robin"
"#;

#[test]
fn bad_config_lists_every_error_with_file_and_key_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, BAD).unwrap();
    let o = weft_output(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "{}:3:6: runtime.io: unknown variant `kqueue`",
            bad.display()
        )),
        "{err}"
    );

    let port = free_port();
    let text = BAD_SEMANTICS.replace("PORT", &port.to_string());
    let bad2 = dir.path().join("bad2.toml");
    std::fs::write(&bad2, &text).unwrap();
    let o = weft_output(&["check", "--config", bad2.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let f = bad2.display().to_string();
    // The file parses, so the unknown key (with a suggestion) and every semantic
    // error are listed at once, each with the line and column of its key.
    let at = |needle: &str| -> (usize, usize) {
        let line = text
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in the config"));
        let col = text.lines().nth(line).unwrap().find(needle).unwrap();
        (line + 1, col + 1)
    };
    for (key, written) in [
        ("listeners[0].routes[3].colour", "colour"),
        ("admin.address", "address = \"nowhere"),
        ("http.max_header_bytes", "max_header_bytes"),
        ("listeners[0].routes[0].cluster", "cluster = \"missing"),
        ("listeners[0].routes[1].split", "split"),
        ("listeners[0].routes[2].match.path_regex", "path_regex"),
    ] {
        let (line, col) = at(written);
        let needle = format!("{f}:{line}:{col}: {key}:");
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    assert!(
        err.contains(&format!("{f}:")) && err.contains(": clusters.a.endpoints[0]:"),
        "{err}"
    );

    // Starting with it fails the same way and leaves the listener port free.
    let o = Command::new(weft_bin())
        .args(["ingress", "--config", bad2.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("listeners[0].routes[0].cluster"));
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "nothing was bound"
    );
}

#[test]
fn admin_endpoints_and_prometheus_metrics() {
    let app = TestUpstream::start("app");
    let listen: SocketAddr = free_addr();
    let admin: SocketAddr = free_addr();
    let config = format!(
        r#"
[admin]
address = "{admin}"

[[listeners]]
name = "web"
address = "{listen}"
routes = [
  {{ name = "app", match = {{ path_prefix = "/app/" }}, cluster = "app" }},
  {{ name = "down", match = {{ path_prefix = "/down" }}, cluster = "down" }},
]

[clusters.app]
endpoints = ["{}"]

[clusters.down]
endpoints = ["127.0.0.1:{}"]
lb = "p2c_ewma"
[clusters.down.health_check]
kind = "tcp"
interval = "100ms"
[clusters.down.outlier_detection]
consecutive_5xx = 5
"#,
        app.addr,
        free_port()
    );
    let weft = Weft::start("ingress", &config, admin);
    assert_eq!(weft.admin_get("/ready"), (200, "ready\n".into()));
    assert_eq!(weft.admin_get("/live").0, 200);
    let (status, body) = weft.admin_get("/config");
    assert_eq!(status, 200);
    assert!(body.contains("\"version\": 1"), "{body}");
    assert!(body.contains(&listen.to_string()), "{body}");

    for _ in 0..3 {
        raw::exchange(
            listen,
            b"GET /app/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
    }
    raw::exchange(
        listen,
        b"GET /down HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    raw::exchange(
        listen,
        b"GET /none HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    raw::exchange(listen, b"BROKEN\r\n\r\n");
    // Let the connections' tasks finish their bookkeeping.
    std::thread::sleep(Duration::from_millis(100));
    let (_, metrics) = weft.admin_get("/metrics");
    let expect = [
        r#"weft_requests_total{listener="web",route="app",cluster="app",status_class="2xx"} 3"#,
        r#"weft_requests_total{listener="web",route="down",cluster="down",status_class="5xx"} 1"#,
        r#"weft_requests_total{listener="web",route="",cluster="",status_class="4xx"} 1"#,
        r#"weft_upstream_connect_errors_total{cluster="down",reason="refused"} 1"#,
        r#"weft_rejected_requests_total{listener="web",status="400"} 1"#,
        r#"weft_accepted_connections_total{listener="web",protocol="http1"} 6"#,
        r#"weft_open_connections{listener="web",protocol="http1"} 0"#,
        "weft_ready 1",
        r#"weft_cluster_outlier_ejections_active{cluster="down"} 0"#,
        r#"weft_cluster_outlier_ejections_enforced_total{cluster="down",type="consecutive_5xx"} 0"#,
        r#"weft_cluster_membership_endpoints{cluster="down"} 1"#,
    ];
    // Series whose values depend on timing: present, whatever they read.
    let present = [
        r#"weft_cluster_health_check_attempt_total{cluster="down"} "#,
        r#"weft_host_healthy{cluster="down",host="#,
        r#"weft_cluster_lb_healthy_panic_total{cluster="down"} "#,
        &format!(
            r#"weft_upstream_requests_total{{cluster="app",endpoint="{}"}} "#,
            app.addr
        ),
    ];
    for prefix in present {
        assert!(
            metrics.lines().any(|l| l.starts_with(prefix)),
            "missing {prefix:?} in:\n{metrics}"
        );
    }
    for line in expect {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }

    // Real Prometheus tooling accepts the exposition.
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/run installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sigterm_drains_and_exits() {
    let listen: SocketAddr = free_addr();
    let admin: SocketAddr = free_addr();
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\nroutes = [ {{ match = {{ path = \"/\" }}, direct_response = {{ status = 200, body = \"hi\" }} }} ]\n"
    );
    let mut weft = Weft::start("ingress", &config, admin);
    weft.signal(15);
    let status = weft
        .wait_exit(Duration::from_secs(5))
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_and_finishes_in_flight_requests() {
    let app = TestUpstream::start("app");
    let listen: SocketAddr = free_addr();
    let admin: SocketAddr = free_addr();
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\nroutes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"app\" }} ]\n[clusters.app]\nendpoints = [\"{}\"]\n",
        app.addr
    );
    let mut weft = Weft::start("ingress", &config, admin);
    let mut idle = raw::RawClient::new(listen);
    idle.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(idle.read_response().0, 200);
    std::thread::sleep(Duration::from_millis(700)); // past the buffer hold: truly idle
    let mut busy = raw::RawClient::new(listen);
    busy.send(b"GET /sleep/800 HTTP/1.1\r\nHost: a\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    weft.signal(15);
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(
        weft.admin_get("/ready"),
        (503, "draining\n".into()),
        "not ready while draining"
    );
    // The in-flight request completes, and is told the connection closes.
    let (status, head, _) = busy.read_response();
    assert_eq!(status, 200);
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        raw::closed_within(&mut idle.stream, Duration::from_secs(2)),
        "idle connection closed by the drain"
    );
    let status = weft
        .wait_exit(Duration::from_secs(5))
        .expect("exited after the drain");
    assert!(status.success());
}
