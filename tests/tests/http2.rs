//! HTTP/2 clients (h2c with prior knowledge) through weft to HTTP/1.1 upstreams:
//! curl, hyper's h2 client and h2load, with bodies checked by hash.

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use weft_tests::upstream::{big_body_byte, sha256_hex, TestUpstream};
use weft_tests::{free_addr, Weft};

fn setup() -> (Weft, SocketAddr, TestUpstream) {
    let (weft, listen, app, _) = setup_with_h2_upstream();
    (weft, listen, app)
}

/// weft with an HTTP/1.1 upstream under `/api/` and an HTTP/2 (h2c) one under `/h2/`.
fn setup_with_h2_upstream() -> (Weft, SocketAddr, TestUpstream, TestUpstream) {
    let app = TestUpstream::start("app");
    let app2 = TestUpstream::start_h2("app2");
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        r#"
[admin]
address = "{admin}"

[[listeners]]
name = "public"
address = "{listen}"
routes = [
  {{ match = {{ path = "/" }}, direct_response = {{ status = 200, body = "hello over h2\n" }} }},
  {{ match = {{ path_prefix = "/api/" }}, cluster = "app" }},
  {{ match = {{ path_prefix = "/h2/" }}, cluster = "app2", prefix_rewrite = "/" }},
]

[clusters.app]
endpoints = ["{}"]

[clusters.app2]
protocol = "http2"
endpoints = ["{}"]
"#,
        app.addr, app2.addr
    );
    (Weft::start("ingress", &config, admin), listen, app, app2)
}

fn curl_h2(args: &[&str]) -> (bool, Vec<u8>, String) {
    let o = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Uploads and downloads of 0 B, 1 B and 10 MiB through `base`, checked by hash.
fn bodies_round_trip(curl_args: &[&str], base: &str) {
    let curl = |args: &[&str]| {
        let o = Command::new("curl")
            .arg("-sS")
            .args(curl_args)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let dir = tempfile::tempdir().unwrap();
    for size in [0usize, 1, 10 * 1024 * 1024] {
        let data: Vec<u8> = (0..size).map(big_body_byte).collect();
        let file = dir.path().join(format!("up-{size}"));
        std::fs::write(&file, &data).unwrap();
        let out = curl(&[
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{base}/sha256"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("{} {size}", sha256_hex(&data)),
            "upload {size} via {curl_args:?}"
        );
        if curl_args == ["--http1.0"] {
            continue; // HTTP/1.0 has no chunked coding.
        }
        // Chunked upload (no length) as well.
        let out = curl(&[
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{base}/sha256"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("{} {size}", sha256_hex(&data)),
            "chunked upload {size} via {curl_args:?}"
        );
    }
    for size in [0usize, 1, 10 * 1024 * 1024] {
        let data: Vec<u8> = (0..size).map(big_body_byte).collect();
        let out = curl(&[&format!("{base}/big?n={size}")]);
        assert_eq!(out.len(), size, "download {size} via {curl_args:?}");
        assert_eq!(sha256_hex(&out), sha256_hex(&data), "download {size}");
    }
}

#[test]
fn http1_and_h2_clients_to_an_h2_upstream_with_bodies_of_0_1_and_10_mib() {
    let (_weft, listen, _app, app2) = setup_with_h2_upstream();
    bodies_round_trip(&["--http1.1"], &format!("http://{listen}/h2"));
    bodies_round_trip(&["--http1.0"], &format!("http://{listen}/h2"));
    bodies_round_trip(&["--http2-prior-knowledge"], &format!("http://{listen}/h2"));
    // Every request above shared a handful of multiplexed connections.
    let connections = app2.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(connections <= 2, "{connections} upstream connections");

    // Headers are translated: Host becomes :authority, the upstream sees what the
    // client sent plus the forwarding headers; the response's status passes.
    let o = Command::new("curl")
        .args(["-sS", "--http1.1", "-H", "x-test: 1", "-D", "-"])
        .arg(format!("http://{listen}/h2/status/418"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("HTTP/1.1 418"), "{text}");
    let o = Command::new("curl")
        .args(["-sS", "--http1.1", "-H", "x-test: 1"])
        .arg(format!("http://{listen}/h2/dump"))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(dump.contains("x-test: 1"), "{dump}");
    assert!(dump.contains("x-forwarded-for: 127.0.0.1"), "{dump}");
    // The client's Host became the :authority.
    assert!(
        dump.contains(&format!("target=http://{listen}/dump")),
        "{dump}"
    );
    assert!(dump.contains("version=http/2.0"), "{dump}");
    assert!(!dump.contains("\nhost:"), "{dump}");
}

#[test]
fn curl_prior_knowledge_with_bodies_of_0_1_and_10_mib() {
    let (_weft, listen, _app) = setup();
    let (ok, out, err) = curl_h2(&["-D", "-", &format!("http://{listen}/")]);
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "{err}");
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.ends_with("hello over h2\n"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    for size in [0usize, 1, 10 * 1024 * 1024] {
        let data: Vec<u8> = (0..size).map(big_body_byte).collect();
        let file = dir.path().join(format!("up-{size}"));
        std::fs::write(&file, &data).unwrap();
        let (ok, out, err) = curl_h2(&[
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{listen}/api/sha256"),
        ]);
        assert!(ok, "upload {size}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("{} {size}", sha256_hex(&data)),
            "upload {size}"
        );
        let (ok, out, err) = curl_h2(&[&format!("http://{listen}/api/big?n={size}")]);
        assert!(ok, "download {size}: {err}");
        assert_eq!(out.len(), size);
        assert_eq!(sha256_hex(&out), sha256_hex(&data), "download {size}");
    }
    let (_, out, _) = curl_h2(&["-D", "-", &format!("http://{listen}/nowhere")]);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/2 404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_h2_client_multiplexes_streams_on_one_connection() {
    let (weft, listen, _app) = setup();
    let (sender, _conn) = weft_tests::h2c::connect(listen).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = hyper::Request::post(format!("http://weft.test/api/sha256?i={i}"))
                .body(Full::new(Bytes::from(vec![i as u8; 1000 + i])))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                String::from_utf8_lossy(&body),
                format!("{} {}", sha256_hex(&vec![i as u8; 1000 + i]), 1000 + i)
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        weft.metric(&["weft_accepted_connections_total"]),
        1.0,
        "all streams on one connection"
    );
    assert_eq!(
        weft.metric_settled(
            &[
                "weft_requests_total",
                "cluster=\"app\"",
                "status_class=\"2xx\""
            ],
            50.0
        ),
        50.0
    );
}

#[test]
fn h2load_sees_no_failures() {
    let (_weft, listen, _app) = setup();
    let o = Command::new("h2load")
        .args([
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "10",
            &format!("http://{listen}/api/x"),
        ])
        .output()
        .expect("h2load (nghttp2-client) is installed");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("2000 2xx"), "{text}");
}

#[test]
fn http1_still_works_on_the_same_port() {
    let (_weft, listen, _app) = setup();
    let text = weft_tests::raw::exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("hello over h2\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_goaway_and_weft_exits() {
    let (mut weft, listen, _app) = setup();
    let (mut sender, conn) = weft_tests::h2c::connect(listen).await;
    let req = hyper::Request::get("http://weft.test/")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    weft.signal(15);
    // The idle h2 connection gets GOAWAY and ends; weft then exits cleanly.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "h2 connection still open after the drain began"
    );
    let status =
        tokio::task::spawn_blocking(move || weft.wait_exit(std::time::Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(status.expect("weft exited").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connection_gets_goaway_after_the_idle_timeout() {
    let app = TestUpstream::start("app");
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n[http]\nidle_timeout = \"1s\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\nroutes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"app\" }} ]\n[clusters.app]\nendpoints = [\"{}\"]\n",
        app.addr
    );
    let weft = Weft::start("ingress", &config, admin);
    let (mut sender, conn) = weft_tests::h2c::connect(listen).await;
    // A stream that outlives the idle timeout keeps the connection.
    let req = hyper::Request::get("http://weft.test/api/sleep/1500")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "idle h2 connection was not closed");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(800),
        "closed too early: {:?}",
        started.elapsed()
    );
    // The h2 connection was counted, and is no longer (weft may still be writing its
    // last frames when the client has seen the end).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while weft.metric(&["weft_open_connections"]) != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the h2 connection is still counted open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        weft.metric(&["weft_accepted_connections_total", "protocol=\"http2\""]),
        1.0
    );
}

#[test]
fn h2_errors_are_proper_responses() {
    let app = TestUpstream::start("app");
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        r#"
[admin]
address = "{admin}"

[http]
max_request_body_bytes = 1000

[[listeners]]
name = "l"
address = "{listen}"
routes = [
  {{ match = {{ path_prefix = "/api/" }}, cluster = "app" }},
  {{ match = {{ path_prefix = "/down" }}, cluster = "down" }},
  {{ match = {{ path = "/moved" }}, redirect = {{ status = 308, path = "/new" }} }},
]

[clusters.app]
endpoints = ["{}"]

[clusters.down]
endpoints = ["{}"]
"#,
        app.addr,
        free_addr()
    );
    let _weft = Weft::start("ingress", &config, admin);
    let (_, out, _) = curl_h2(&["-D", "-", &format!("http://{listen}/down")]);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/2 502") && text.contains("x-weft-error: upstream connection failed"),
        "{text}"
    );
    let (_, out, _) = curl_h2(&[
        "-D",
        "-",
        "--data-binary",
        &"a".repeat(5000),
        &format!("http://{listen}/api/sha256"),
    ]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/2 413"), "{text}");
    let (_, out, _) = curl_h2(&["-D", "-", &format!("http://{listen}/moved?x=1")]);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/2 308")
            && text.contains(&format!("location: http://{listen}/new?x=1")),
        "{text}"
    );
}

#[test]
fn a_full_h2_upstream_connection_makes_weft_open_another() {
    let app = TestUpstream::start_h2_limited("narrow", 2);
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        r#"
[admin]
address = "{admin}"

[[listeners]]
name = "l"
address = "{listen}"
routes = [ {{ match = {{ path_prefix = "/" }}, cluster = "narrow" }} ]

[clusters.narrow]
protocol = "http2"
endpoints = ["{}"]
"#,
        app.addr
    );
    let _weft = Weft::start("ingress", &config, admin);
    // Ten slow requests at once, over one h2 client connection.
    let o = Command::new("h2load")
        .args(["-n", "10", "-c", "1", "-m", "10"])
        .arg(format!("http://{listen}/sleep/300"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("10 succeeded"), "{text}");
    // The upstream allows two streams per connection: weft needed at least five.
    let conns = app.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!((5..=10).contains(&conns), "{conns} upstream connections");
}

#[test]
fn keepalive_ping_unanswered_closes_the_connection() {
    use std::io::{Read, Write};
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        r#"
[admin]
address = "{admin}"

[http2]
keepalive_interval = "200ms"
keepalive_timeout = "300ms"
max_concurrent_streams = 77

[[listeners]]
name = "l"
address = "{listen}"
routes = [ {{ match = {{ path = "/" }}, direct_response = {{ status = 200, body = "x" }} }} ]
"#
    );
    let _weft = Weft::start("ingress", &config, admin);
    let mut s = std::net::TcpStream::connect(listen).unwrap();
    // Preface and an empty SETTINGS, and then silence: no ACKs, no PING answers.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "closed after {took:?}"
    );
    // Frames seen: weft's SETTINGS (advertising the configured stream limit), a PING.
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= seen.len() {
        let len = u32::from_be_bytes([0, seen[at], seen[at + 1], seen[at + 2]]) as usize;
        frames.push((
            seen[at + 3],
            seen[at + 9..(at + 9 + len).min(seen.len())].to_vec(),
        ));
        at += 9 + len;
    }
    let settings = &frames.iter().find(|f| f.0 == 0x4).expect("SETTINGS").1;
    let max_streams = settings
        .chunks(6)
        .find(|c| c[..2] == [0, 3])
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    assert_eq!(max_streams, Some(77), "{frames:?}");
    assert!(frames.iter().any(|f| f.0 == 0x6), "no PING: {frames:?}");
}

#[tokio::test]
async fn trailers_of_an_http1_chunked_response_reach_h2_clients() {
    let (_weft, listen, _app) = setup();
    let (mut sender, _conn) = weft_tests::h2c::connect(listen).await;
    let req = hyper::Request::get("http://weft.test/api/trailers")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"part one, part two")
    );
}

/// Every client connection is counted, with its protocol: a live h2c connection is in
/// `weft_open_connections{protocol="http2"}` (it once read 0) and in the accepted total,
/// beside HTTP/1.1 connections under `protocol="http1"`.
#[test]
fn h2c_connections_are_counted_with_their_protocol() {
    use http_body_util::Empty;
    let app = weft_tests::upstream::TestUpstream::start("app");
    let (listen, admin) = (weft_tests::free_addr(), weft_tests::free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\nroutes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"app\" }} ]\n\n[clusters.app]\nendpoints = [\"{}\"]\n",
        app.addr
    );
    let weft = weft_tests::Weft::start("ingress", &config, admin);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut send, conn) = weft_tests::h2c::connect::<Empty<bytes::Bytes>>(listen).await;
        let req = http::Request::get(format!("http://{listen}/status/200"))
            .body(Empty::new())
            .unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 200);
        let h1 = std::net::TcpStream::connect(listen).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let open = |p: &str| weft.metric(&["weft_open_connections", &format!("protocol=\"{p}\"")]);
        assert_eq!(open("http2"), 1.0, "{}", weft.admin_get("/metrics").1);
        assert_eq!(open("http1"), 1.0);
        let accepted = weft.metric(&["weft_accepted_connections_total", "protocol=\"http2\""]);
        assert_eq!(accepted, 1.0);
        drop(h1);
        drop(send);
        let _ = conn.await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while open("http2") + open("http1") > 0.0 {
            assert!(std::time::Instant::now() < deadline, "gauges not lowered");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
}
