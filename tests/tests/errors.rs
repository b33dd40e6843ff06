//! Bad input and failing upstreams: every case gets the right status (or a closed
//! connection), never a hang, and weft keeps serving afterwards.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use weft_tests::raw::{self, RawClient};
use weft_tests::upstream::{BlackHole, Misbehavior, RawUpstream, TestUpstream};
use weft_tests::{free_addr, free_port, Weft};

struct Setup {
    weft: Weft,
    listen: SocketAddr,
    _keep: (
        TestUpstream,
        RawUpstream,
        RawUpstream,
        RawUpstream,
        BlackHole,
        RawUpstream,
    ),
    once: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn setup() -> Setup {
    let app = TestUpstream::start("app");
    let mid_body = RawUpstream::start(Misbehavior::CloseMidBody);
    let mid_chunk = RawUpstream::start(Misbehavior::CloseMidChunked);
    let silent = RawUpstream::start(Misbehavior::Silent);
    let once = RawUpstream::start(Misbehavior::OneRequestPerConnection);
    let hole = BlackHole::start();
    let refused = format!("127.0.0.1:{}", free_port());
    let listen: SocketAddr = free_addr();
    let admin: SocketAddr = free_addr();
    let config = format!(
        r#"
[admin]
address = "{admin}"

[http]
max_header_bytes = 4096
max_request_body_bytes = 1000
header_read_timeout = "1s"
idle_timeout = "2s"

[[listeners]]
name = "edge"
address = "{listen}"
routes = [
  {{ match = {{ path_prefix = "/app/" }}, cluster = "app" }},
  {{ match = {{ path_prefix = "/refused" }}, cluster = "refused" }},
  {{ match = {{ path_prefix = "/blackhole" }}, cluster = "blackhole" }},
  {{ match = {{ path_prefix = "/silent" }}, cluster = "silent" }},
  {{ match = {{ path_prefix = "/midbody" }}, cluster = "midbody" }},
  {{ match = {{ path_prefix = "/midchunk" }}, cluster = "midchunk" }},
  {{ match = {{ path_prefix = "/once" }}, cluster = "once" }},
]

[clusters.app]
endpoints = ["{app}"]

[clusters.refused]
endpoints = ["{refused}"]

[clusters.blackhole]
endpoints = ["{hole}"]
connect_timeout = "300ms"

[clusters.silent]
endpoints = ["{silent}"]
request_timeout = "500ms"

[clusters.midbody]
endpoints = ["{mid_body}"]

[clusters.midchunk]
endpoints = ["{mid_chunk}"]

[clusters.once]
endpoints = ["{once}"]
"#,
        app = app.addr,
        hole = hole.addr,
        silent = silent.addr,
        mid_body = mid_body.addr,
        mid_chunk = mid_chunk.addr,
        once = once.addr,
    );
    let weft = Weft::start("ingress", &config, admin);
    let once_conns = once.connections.clone();
    Setup {
        weft,
        listen,
        _keep: (app, mid_body, mid_chunk, silent, hole, once),
        once: once_conns,
    }
}

fn status_of(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn assert_rejected(listen: SocketAddr, request: &[u8], status: u16) {
    let text = raw::exchange(listen, request);
    assert_eq!(
        status_of(&text),
        status,
        "request {:?} got {text:?}",
        String::from_utf8_lossy(request)
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

#[test]
fn malformed_requests_get_4xx_or_501_and_close() {
    let s = setup();
    let l = s.listen;
    assert_rejected(l, b"GARBAGE\r\n\r\n", 400);
    assert_rejected(l, b"GET /app/x HTTP/1.1\r\nHost a\r\n\r\n", 400);
    assert_rejected(l, b"GET /app/x HTTP/1.1\r\n\r\n", 400); // no Host
    assert_rejected(l, b"GET /app/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    assert_rejected(
        l,
        b"GET /app/x HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n",
        400,
    );
    assert_rejected(
        l,
        b"GET /app/x HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n",
        400,
    );
    assert_rejected(l, b"GET /app/x HTTP/3.0\r\nHost: a\r\n\r\n", 400);
    // Smuggling vectors.
    assert_rejected(l, b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    assert_rejected(
        l,
        b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    );
    assert_rejected(
        l,
        b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
        400,
    );
    assert_rejected(
        l,
        b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        400,
    );
    assert_rejected(
        l,
        b"POST /app/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    );
    assert_rejected(
        l,
        b"POST /app/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        501,
    );
    assert_rejected(
        l,
        b"GET /app/x HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n",
        417,
    );
    // Header section over max_header_bytes (4096).
    let big = format!(
        "GET /app/x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    assert_rejected(l, big.as_bytes(), 431);
    // Body over max_request_body_bytes (1000): declared, and discovered while streaming.
    let body = "a".repeat(1001);
    assert_rejected(
        l,
        format!("POST /app/sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n{body}")
            .as_bytes(),
        413,
    );
    assert_rejected(
        l,
        format!("POST /app/sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n{body}\r\n0\r\n\r\n").as_bytes(),
        413,
    );
    assert_rejected(
        l,
        b"POST /app/sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    );
    // Still serving, and the rejections were counted.
    let text = raw::exchange(
        l,
        b"GET /app/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(
        s.weft
            .metric(&["weft_rejected_requests_total", "status=\"400\""])
            >= 7.0
    );
}

#[test]
fn upstream_failures_map_to_502_503_504() {
    let s = setup();
    let l = s.listen;
    let text = raw::exchange(l, b"GET /refused HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status_of(&text), 502, "{text}");
    assert!(
        text.contains("x-weft-error: upstream connection failed"),
        "{text}"
    );

    let started = Instant::now();
    let text = raw::exchange(l, b"GET /blackhole HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status_of(&text), 504, "{text}");
    assert!(text.contains("connect timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let text = raw::exchange(l, b"GET /silent HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status_of(&text), 504, "{text}");
    assert!(text.contains("upstream response timeout"), "{text}");

    assert_eq!(
        s.weft.metric(&[
            "weft_upstream_connect_errors_total",
            "cluster=\"refused\"",
            "reason=\"refused\""
        ]),
        1.0
    );
    assert_eq!(
        s.weft.metric(&[
            "weft_upstream_timeouts_total",
            "cluster=\"blackhole\"",
            "phase=\"connect\""
        ]),
        1.0
    );
    assert_eq!(
        s.weft.metric(&[
            "weft_upstream_timeouts_total",
            "cluster=\"silent\"",
            "phase=\"response\""
        ]),
        1.0
    );
    assert_eq!(
        s.weft.metric(&[
            "weft_requests_total",
            "cluster=\"refused\"",
            "status_class=\"5xx\""
        ]),
        1.0
    );
}

#[test]
fn upstream_closing_mid_response_closes_the_client() {
    let s = setup();
    for path in ["/midbody", "/midchunk"] {
        let o = Command::new("curl")
            .args(["-sS", "-o", "/dev/null"])
            .arg(format!("http://{}{path}", s.listen))
            .output()
            .unwrap();
        // curl 18: "transfer closed with outstanding read data remaining".
        assert_eq!(
            o.status.code(),
            Some(18),
            "{path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn dead_pooled_connection_is_retried_once_on_a_fresh_one() {
    let s = setup();
    let mut c = RawClient::new(s.listen);
    for i in 0..3 {
        c.send(b"GET /once HTTP/1.1\r\nHost: a\r\n\r\n");
        let (status, _, body) = c.read_response();
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"fresh\n"[..]),
            "request {i}"
        );
    }
    // Each request found its pooled connection dead and went out again on a new one.
    assert_eq!(s.once.load(std::sync::atomic::Ordering::SeqCst), 3);
    // A request with a body cannot be replayed: 502.
    c.send(b"POST /once HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
    let (status, _, _) = c.read_response();
    assert_eq!(status, 502);
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let s = setup();
    // Slowloris: a head that never completes is answered 408 after header_read_timeout (1s).
    let mut slow = raw::connect(s.listen);
    slow.write_all(b"GET /app/x HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    let started = Instant::now();
    let text = raw::read_until_close(&mut slow, Duration::from_secs(5));
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A connection that never sends anything is closed too.
    let mut silent = raw::connect(s.listen);
    assert!(raw::closed_within(&mut silent, Duration::from_secs(4)));
    // An idle keep-alive connection is closed after idle_timeout (2s).
    let mut c = RawClient::new(s.listen);
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response().0, 200);
    let started = Instant::now();
    assert!(raw::closed_within(&mut c.stream, Duration::from_secs(5)));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let app = TestUpstream::start("app");
    let (listen, admin) = (weft_tests::free_addr(), weft_tests::free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n[http]\nidle_timeout = \"1s\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\nroutes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"app\" }} ]\n[clusters.app]\nendpoints = [\"{}\"]\n",
        app.addr
    );
    let weft = Weft::start("ingress", &config, admin);
    // Ask for 64 MiB and never read: socket buffers fill, weft's writes stall.
    let mut c = raw::connect(listen);
    c.write_all(b"GET /big?n=67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    std::thread::sleep(Duration::from_millis(500));
    while weft.metric(&["weft_open_connections"]) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "stalled client still holds its connection"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(c);
}

/// `Max open files` (soft, hard) of a process, from /proc/PID/limits.
fn open_files_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    (values.next().unwrap(), values.next().unwrap())
}

/// One worker started under `prlimit --nofile=SOFT:HARD`, forwarding everything to
/// `upstream` (1 s request timeout); returns it and its listener.
fn weft_with_open_files(soft: u64, hard: u64, upstream: SocketAddr) -> (Weft, SocketAddr) {
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\nroutes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"up\" }} ]\n[clusters.up]\nendpoints = [\"{upstream}\"]\nrequest_timeout = \"1s\"\n"
    );
    let nofile = format!("--nofile={soft}:{hard}");
    let weft = Weft::start_under(
        &["prlimit", &nofile],
        "ingress",
        &config,
        admin,
        &["--workers", "1"],
    );
    (weft, listen)
}

#[test]
fn the_open_files_soft_limit_is_raised_to_the_hard_limit() {
    let (_, our_hard) = open_files_limits("self");
    let hard = our_hard.min(4096);
    let soft = hard / 4;
    let app = TestUpstream::start("app");
    let (weft, _) = weft_with_open_files(soft, hard, app.addr);
    assert_eq!(
        open_files_limits(&weft.pid().to_string()),
        (hard, hard),
        "started at {soft}:{hard}"
    );
    assert!(
        weft.log().contains(&format!("open_files={hard}")),
        "{}",
        weft.log()
    );
}

#[test]
fn out_of_descriptors_is_a_local_503_not_an_upstream_fault() {
    const LIMIT: usize = 64;
    // Holds every connection weft opens to it, so each one keeps its descriptor.
    let silent = RawUpstream::start(Misbehavior::Silent);
    let (weft, listen) = weft_with_open_files(LIMIT as u64, LIMIT as u64, silent.addr);
    let in_use = std::fs::read_dir(format!("/proc/{}/fd", weft.pid()))
        .expect("fd dir")
        .count();
    // Clients take all but a few descriptors; their requests then need one each.
    let clients = LIMIT - in_use - 6;
    let mut conns: Vec<RawClient> = (0..clients).map(|_| RawClient::new(listen)).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while weft.metric(&["weft_open_connections"]) < clients as f64 {
        assert!(
            Instant::now() < deadline,
            "weft did not accept every client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in &mut conns {
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    let mut local = 0;
    for c in &mut conns {
        let (status, head, _) = c.read_response();
        match status {
            503 => {
                assert!(head.contains("no local descriptor or port left"), "{head}");
                local += 1;
            }
            // The few that got a descriptor wait on the silent upstream.
            504 => {}
            other => panic!("unexpected {other}: {head}"),
        }
    }
    assert!(local >= clients / 2, "{local} of {clients} were local 503s");
    drop(conns);
    // (Admin's accept needs a descriptor too; the clients' are given back by now.)
    let (_, failures) = weft.admin_get("/metrics");
    assert!(
        failures.contains(
            r#"weft_upstream_connect_errors_total{cluster="up",reason="local_fd_limit"}"#
        ),
        "{failures}"
    );
    assert!(!failures.contains(r#"reason="refused""#), "{failures}");
    assert!(
        weft.log().contains("cannot connect upstream"),
        "{}",
        weft.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pooled_connection_is_retried_once_for_http2_clients_too() {
    let s = setup();
    // One h2 connection, so one worker and one pool: three GETs, then a POST. (curl
    // cannot carry several requests on one h2c connection: 7.88 fails the second.)
    let (mut sender, _conn) = weft_tests::h2c::connect(s.listen).await;
    let mut call = |method: &str, body: &'static [u8]| {
        let req = hyper::Request::builder()
            .method(method)
            .uri("http://a/once")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let sent = sender.send_request(req);
        async move {
            let resp = sent.await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    for i in 0..3 {
        assert_eq!(
            call("GET", b"").await,
            (200, "fresh\n".into()),
            "request {i}"
        );
    }
    // Each GET found its pooled connection dead and went out again on a new one.
    assert_eq!(s.once.load(std::sync::atomic::Ordering::SeqCst), 3);
    // A request with a body cannot be replayed: 502, with the reason.
    let (status, body) = call("POST", b"hi").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream closed the connection"), "{body}");
}
