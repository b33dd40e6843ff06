//! Live reconfiguration (SIGHUP) under load: no request fails, new rules apply at once,
//! listeners come and go without touching the ones that stay, bad configs are refused.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tests::raw::RawClient;
use weft_tests::upstream::TestUpstream;
use weft_tests::{free_addr, Weft};

struct Variant {
    cluster: &'static str,
    extra_listener: Option<SocketAddr>,
}

fn config(
    admin: SocketAddr,
    main: SocketAddr,
    v1: SocketAddr,
    v2: SocketAddr,
    v: &Variant,
) -> String {
    config_with_grpc(admin, main, v1, v2, None, v)
}

fn config_with_grpc(
    admin: SocketAddr,
    main: SocketAddr,
    v1: SocketAddr,
    v2: SocketAddr,
    grpc: Option<SocketAddr>,
    v: &Variant,
) -> String {
    let grpc_route = if grpc.is_some() {
        "{ match = { grpc_service = \"test.Echo\" }, cluster = \"grpc\" },\n  "
    } else {
        ""
    };
    let mut c = format!(
        r#"
[admin]
address = "{admin}"

[[listeners]]
name = "main"
address = "{main}"
routes = [
  {grpc_route}{{ match = {{ path_prefix = "/" }}, cluster = "{}" }},
]

[clusters.v1]
endpoints = ["{v1}"]

[clusters.v2]
endpoints = ["{v2}"]
"#,
        v.cluster
    );
    if let Some(g) = grpc {
        c += &format!("\n[clusters.grpc]\nprotocol = \"http2\"\nendpoints = [\"{g}\"]\n");
    }
    if let Some(extra) = v.extra_listener {
        c += &format!(
            "\n[[listeners]]\nname = \"extra\"\naddress = \"{extra}\"\nroutes = [ {{ match = {{ path = \"/\" }}, direct_response = {{ status = 200, body = \"extra\" }} }} ]\n"
        );
    }
    c
}

/// Keep-alive clients hammering `addr` until `stop`; counts successes and failures.
fn load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = RawClient::new(addr);
        while !stop.load(Ordering::Relaxed) {
            c.send(b"GET /work HTTP/1.1\r\nHost: a\r\n\r\n");
            let (status, _, body) = c.read_response();
            if status == 200 && body.starts_with(b"upstream=v") {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// An h2c client (hyper) sending GETs on one connection until `stop`.
fn h2_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use http_body_util::{BodyExt, Empty};
            let (mut send, _conn) = weft_tests::h2c::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let req = hyper::Request::get(format!("http://{addr}/work"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let good = match send.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                        status == 200 && body.is_ok_and(|b| b.starts_with(b"upstream=v"))
                    }
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    })
}

/// One bidirectional gRPC stream kept open until `stop`, a message every 20 ms.
fn grpc_stream(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    answers: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use weft_tests::grpc::{client, RawCodec};
            let mut c = client(addr).await;
            let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
            c.ready().await.unwrap();
            tx.send(bytes::Bytes::from_static(b"m0")).await.unwrap();
            let mut replies = c
                .streaming(
                    tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    http::uri::PathAndQuery::from_static("/test.Echo/Chat"),
                    RawCodec,
                )
                .await
                .unwrap()
                .into_inner();
            let mut i = 0u64;
            loop {
                match replies.message().await {
                    Ok(Some(m)) if m == bytes::Bytes::from(format!("echo:m{i}")) => {
                        answers.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                if tx.send(bytes::Bytes::from(format!("m{i}"))).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        });
    })
}

fn wait_version(weft: &Weft, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if weft.metric(&["weft_config_version "]) as u64 >= version {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("config version {version} never served:\n{}", weft.log());
}

fn upstream_of(addr: SocketAddr) -> String {
    let mut c = RawClient::new(addr);
    c.send(b"GET /probe HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let (_, _, body) = c.read_response();
    String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn fifty_reloads_under_load_lose_nothing() {
    let (v1, v2) = (TestUpstream::start("v1"), TestUpstream::start("v2"));
    let (admin, main, extra) = (free_addr(), free_addr(), free_addr());
    let a = Variant {
        cluster: "v1",
        extra_listener: Some(extra),
    };
    let b = Variant {
        cluster: "v2",
        extra_listener: None,
    };
    let grpc = weft_tests::grpc::GrpcUpstream::start();
    let g = Some(grpc.addr);
    let mut weft = Weft::start(
        "ingress",
        &config_with_grpc(admin, main, v1.addr, v2.addr, g, &a),
        admin,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients: Vec<_> = (0..3)
        .map(|_| load(main, stop.clone(), ok.clone(), failed.clone()))
        .collect();
    // HTTP/2 clients (hyper) and one long gRPC stream (tonic) through every reload.
    clients.push(h2_load(main, stop.clone(), ok.clone(), failed.clone()));
    let stream_answers = Arc::new(AtomicU64::new(0));
    clients.push(grpc_stream(
        main,
        stop.clone(),
        stream_answers.clone(),
        failed.clone(),
    ));
    std::thread::sleep(Duration::from_millis(300));

    for i in 0..50u64 {
        let variant = if i % 2 == 0 { &b } else { &a };
        std::fs::write(
            &weft.config_path,
            config_with_grpc(admin, main, v1.addr, v2.addr, g, variant),
        )
        .unwrap();
        weft.signal(1);
        wait_version(&weft, i + 2);
        // New requests follow the new route at once.
        assert_eq!(
            upstream_of(main),
            format!("upstream={}", variant.cluster),
            "after reload {i}"
        );
        // The extra listener exists exactly when the config has it (workers pick up
        // listener changes within their 100 ms tick; the kernel queues meanwhile).
        if variant.extra_listener.is_some() {
            let mut c = RawClient::new(extra);
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            assert_eq!(c.read_response().2, b"extra");
        } else {
            let deadline = Instant::now() + Duration::from_secs(2);
            while TcpStream::connect(extra).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "removed listener still accepts after reload {i}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("load client");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "load actually ran");
    assert!(
        stream_answers.load(Ordering::Relaxed) > 20,
        "the gRPC stream kept answering through the reloads"
    );
    assert_eq!(weft.metric(&["weft_config_reloads_total "]), 50.0);
    assert_eq!(weft.metric(&["weft_config_reload_failures_total "]), 0.0);
    let (_, config_json) = weft.admin_get("/config");
    assert!(config_json.contains("\"version\": 51"), "{config_json}");
    weft.signal(15);
    assert!(weft
        .wait_exit(Duration::from_secs(10))
        .expect("exit")
        .success());
}

#[test]
fn invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let (v1, v2) = (TestUpstream::start("v1"), TestUpstream::start("v2"));
    let (admin, main) = (free_addr(), free_addr());
    let good = config(
        admin,
        main,
        v1.addr,
        v2.addr,
        &Variant {
            cluster: "v1",
            extra_listener: None,
        },
    );
    let weft = Weft::start("ingress", &good, admin);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| load(main, stop.clone(), ok.clone(), failed.clone()))
        .collect();

    let bad = good.replace("cluster = \"v1\"", "cluster = \"nowhere\"");
    std::fs::write(&weft.config_path, bad).unwrap();
    weft.signal(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while weft.metric(&["weft_config_reload_failures_total "]) < 1.0 {
        assert!(Instant::now() < deadline, "reload failure not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(upstream_of(main), "upstream=v1", "old behaviour kept");
    let (_, json) = weft.admin_get("/config");
    assert!(json.contains("\"version\": 1"), "{json}");
    assert!(
        json.contains("listeners[0].routes[0].cluster"),
        "last error shown: {json}"
    );
    assert!(
        weft.log()
            .contains("reload refused, still serving version 1"),
        "{}",
        weft.log()
    );

    // Fixing the file makes the next SIGHUP succeed and clears the error.
    std::fs::write(
        &weft.config_path,
        good.replace("cluster = \"v1\"", "cluster = \"v2\""),
    )
    .unwrap();
    weft.signal(1);
    wait_version(&weft, 2);
    assert_eq!(upstream_of(main), "upstream=v2");
    let (_, json) = weft.admin_get("/config");
    assert!(json.contains("\"last_error\": null"), "{json}");

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("load client");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[test]
fn second_signal_exits_at_once() {
    let v1 = TestUpstream::start("v1");
    let (admin, main) = (free_addr(), free_addr());
    let text = config(
        admin,
        main,
        v1.addr,
        v1.addr,
        &Variant {
            cluster: "v1",
            extra_listener: None,
        },
    )
    .replace("[admin]", "[runtime]\ndrain_timeout = \"60s\"\n\n[admin]");
    let mut weft = Weft::start("ingress", &text, admin);
    // A request that will take longer than the test waits keeps the drain going.
    let mut slow = RawClient::new(main);
    slow.send(b"GET /sleep/20000 HTTP/1.1\r\nHost: a\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    weft.signal(15);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        weft.wait_exit(Duration::from_millis(200)).is_none(),
        "still draining"
    );
    weft.signal(15);
    assert!(
        weft.wait_exit(Duration::from_secs(3)).is_some(),
        "second signal exits at once"
    );
}

/// Endpoint state survives snapshots: a SIGHUP that changes nothing for a cluster does
/// not restart its round robin (it once began again at the first endpoint, so every
/// reload sent two requests in a row to the same one).
#[test]
fn round_robin_continues_across_a_reload() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let (listen, admin) = (free_addr(), free_addr());
    let config = |extra: &str| {
        format!(
            "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\nroutes = [ {extra}{{ match = {{ path_prefix = \"/\" }}, cluster = \"app\" }} ]\n\n[clusters.app]\nendpoints = [\"{}\", \"{}\"]\n",
            a.addr, b.addr
        )
    };
    // One worker: one balancer, so the rotation is exact.
    let weft = Weft::start_with("ingress", &config(""), admin, &["--workers", "1"]);
    // A connection per request: a kept-alive connection's next turn may start on the
    // snapshot from before the reload.
    let ask = || {
        let mut client = RawClient::new(listen);
        client.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, head, _) = client.read_response();
        assert_eq!(status, 200);
        head.lines()
            .find_map(|l| l.strip_prefix("x-upstream: "))
            .expect("x-upstream")
            .trim()
            .to_owned()
    };
    let before: Vec<String> = (0..3).map(|_| ask()).collect();
    let version = weft.metric(&["weft_config_version"]);
    std::fs::write(
        &weft.config_path,
        config("{ match = { path = \"/other\" }, direct_response = { status = 204 } }, "),
    )
    .unwrap();
    weft.signal(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while weft.metric(&["weft_config_version"]) <= version {
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after: Vec<String> = (0..3).map(|_| ask()).collect();
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    for pair in all.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "the rotation restarted at the reload: {all:?}"
        );
    }
}
