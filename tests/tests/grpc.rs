//! gRPC through weft: a tonic client, weft on h2c, and a tonic server on an HTTP/2
//! upstream cluster. All four call kinds, trailers, deadlines, 4 MiB messages,
//! cancellation both ways, the statuses weft makes itself, and a stream that lives
//! through a config reload.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::{Code, Request};
use weft_tests::grpc::{client, GrpcUpstream, RawCodec, ResettingUpstream};
use weft_tests::upstream::sha256_hex;
use weft_tests::{free_addr, free_port, Weft};

fn config(listen: SocketAddr, admin: SocketAddr, app: SocketAddr, resetting: SocketAddr) -> String {
    format!(
        r#"
[admin]
address = "{admin}"

[http]
max_request_body_bytes = 8388608

[[listeners]]
name = "grpc"
address = "{listen}"
routes = [
  {{ name = "slow", match = {{ grpc_service = "test.Echo", grpc_method = "Unary", headers = [{{ name = "x-route", value = "capped" }}] }}, cluster = "app", timeout = "300ms" }},
  {{ name = "cluster-cap", match = {{ grpc_service = "test.Echo", headers = [{{ name = "x-route", value = "cluster-cap" }}] }}, cluster = "brief" }},
  {{ name = "weft-deadline", match = {{ grpc_service = "test.Echo", headers = [{{ name = "x-route", value = "hidden-deadline" }}] }}, cluster = "app", request_headers = {{ remove = ["grpc-timeout"] }} }},
  {{ name = "echo", match = {{ grpc_service = "test.Echo" }}, cluster = "app" }},
  {{ name = "health", match = {{ grpc_service = "grpc.health.v1.Health" }}, cluster = "app" }},
  {{ name = "down", match = {{ grpc_service = "test.Down" }}, cluster = "down" }},
  {{ name = "resets", match = {{ grpc_service = "test.Resets" }}, cluster = "resets" }},
]

[clusters.app]
protocol = "http2"
endpoints = ["{app}"]

# The same app, with a short request timeout: it caps any grpc-timeout.
[clusters.brief]
protocol = "http2"
endpoints = ["{app}"]
request_timeout = "400ms"

[clusters.down]
protocol = "http2"
endpoints = ["127.0.0.1:{down}"]

[clusters.resets]
protocol = "http2"
endpoints = ["{resetting}"]
"#,
        down = free_port(),
    )
}

struct Setup {
    weft: Weft,
    listen: SocketAddr,
    app: GrpcUpstream,
    _resetting: ResettingUpstream,
    rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let app = GrpcUpstream::start();
    let resetting = ResettingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &config(listen, admin, app.addr, resetting.addr),
        admin,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Setup {
        weft,
        listen,
        app,
        _resetting: resetting,
        rt,
    }
}

fn path(p: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(p)
}

#[test]
fn unary_with_metadata_and_a_4_mib_message() {
    let s = setup();
    s.rt.block_on(async {
        let mut c = client(s.listen).await;
        c.ready().await.unwrap();
        let resp = c
            .unary(
                Request::new(Bytes::from_static(b"hello")),
                path("/test.Echo/Unary"),
                RawCodec,
            )
            .await
            .unwrap();
        assert_eq!(resp.metadata().get("x-served-by").unwrap(), "echo");
        assert_eq!(resp.get_ref(), &Bytes::from_static(b"hello"));

        let big: Bytes = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        c.ready().await.unwrap();
        let resp = c
            .unary(
                Request::new(big.clone()),
                path("/test.Echo/Unary"),
                RawCodec,
            )
            .await
            .unwrap();
        assert_eq!(sha256_hex(resp.get_ref()), sha256_hex(&big));
    });
}

#[test]
fn client_server_and_bidirectional_streaming() {
    let s = setup();
    s.rt.block_on(async {
        let mut c = client(s.listen).await;

        // Client streaming: 100 messages of 1 KiB.
        let messages = tokio_stream::iter((0..100).map(|_| Bytes::from(vec![7u8; 1024])));
        c.ready().await.unwrap();
        let resp = c
            .client_streaming(Request::new(messages), path("/test.Echo/Collect"), RawCodec)
            .await
            .unwrap();
        assert_eq!(resp.into_inner(), Bytes::from_static(b"100 102400"));

        // Server streaming.
        c.ready().await.unwrap();
        let mut stream = c
            .server_streaming(
                Request::new(Bytes::from_static(b"50")),
                path("/test.Echo/Repeat"),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            got.push(m);
        }
        assert_eq!(got.len(), 50);
        assert_eq!(got[49], Bytes::from_static(b"msg-49"));

        // Bidirectional, in lock step: each answer arrives before the next question is
        // sent, so both directions are open at once through weft.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        c.ready().await.unwrap();
        tx.send(Bytes::from_static(b"q0")).await.unwrap();
        let mut answers = c
            .streaming(
                Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                path("/test.Echo/Chat"),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        for i in 0..30 {
            let a = tokio::time::timeout(Duration::from_secs(5), answers.message())
                .await
                .expect("answer in time")
                .unwrap()
                .unwrap();
            assert_eq!(a, Bytes::from(format!("echo:q{i}")));
            tx.send(Bytes::from(format!("q{}", i + 1))).await.unwrap();
        }
        let last = answers.message().await.unwrap().unwrap();
        assert_eq!(last, Bytes::from_static(b"echo:q30"));
        drop(tx);
        assert!(
            answers.message().await.unwrap().is_none(),
            "clean end after half-close"
        );
    });
}

#[test]
fn error_statuses_and_custom_trailers_pass_unchanged() {
    let s = setup();
    s.rt.block_on(async {
        let mut c = client(s.listen).await;
        c.ready().await.unwrap();
        let err = c
            .unary(
                Request::new(Bytes::new()),
                path("/test.Echo/Fail"),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(err.message(), "nope");
        assert_eq!(err.metadata().get("x-custom").unwrap(), "kept");

        // Trailers after messages: two messages, then the status.
        c.ready().await.unwrap();
        let mut stream = c
            .server_streaming(
                Request::new(Bytes::from_static(b"2!")),
                path("/test.Echo/Repeat"),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            stream.message().await.unwrap().unwrap(),
            Bytes::from_static(b"msg-0")
        );
        assert_eq!(
            stream.message().await.unwrap().unwrap(),
            Bytes::from_static(b"msg-1")
        );
        let err = stream.message().await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(err.message(), "stopped on purpose");
        assert_eq!(err.metadata().get("x-custom").unwrap(), "kept");
    });
}

#[test]
fn tonic_health_check_and_watch() {
    let s = setup();
    s.rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.listen))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "test.Echo".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            resp.get_ref().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        let mut watch = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: "test.Echo".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, 1, "SERVING");
        s.app
            .health
            .set_service_status("test.Echo", tonic_health::ServingStatus::NotServing)
            .await;
        let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("watch update in time")
            .unwrap()
            .unwrap();
        assert_eq!(next.status, 2, "NOT_SERVING");
    });
}

#[test]
fn deadlines_from_grpc_timeout_and_the_route_cap() {
    let s = setup();
    s.rt.block_on(async {
        let mut c = client(s.listen).await;

        // tonic's client enforces its own deadline as well, so this call goes out on a
        // plain h2 client that only sends the header. The route removes grpc-timeout,
        // so the upstream never sees it: only weft can end the call at 200 ms.
        let started = Instant::now();
        let (status, headers) = h2_call(
            s.listen,
            "/test.Echo/Unary",
            &[
                ("grpc-timeout", "200m"),
                ("x-sleep-ms", "3000"),
                ("x-route", "hidden-deadline"),
            ],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(headers.get("grpc-status").unwrap(), "4", "{headers:?}");
        assert!(
            headers
                .get("grpc-message")
                .unwrap()
                .to_str()
                .unwrap()
                .contains("deadline"),
            "{headers:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        // A route without a timeout caps the client's deadline by the cluster's
        // request_timeout (400 ms): `99999999H` once held the call as long as it asked.
        let started = Instant::now();
        let (status, headers) = h2_call(
            s.listen,
            "/test.Echo/Unary",
            &[
                ("grpc-timeout", "99999999H"),
                ("x-sleep-ms", "3000"),
                ("x-route", "cluster-cap"),
            ],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(headers.get("grpc-status").unwrap(), "4", "{headers:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        // A generous client deadline is capped by the route's 300 ms timeout.
        let mut req = Request::new(Bytes::from_static(b"slow"));
        req.set_timeout(Duration::from_secs(30));
        req.metadata_mut()
            .insert("x-sleep-ms", "3000".parse().unwrap());
        req.metadata_mut()
            .insert("x-route", "capped".parse().unwrap());
        let started = Instant::now();
        c.ready().await.unwrap();
        let err = c
            .unary(req, path("/test.Echo/Unary"), RawCodec)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        // Within its deadline a call succeeds.
        let mut req = Request::new(Bytes::from_static(b"quick"));
        req.set_timeout(Duration::from_secs(5));
        req.metadata_mut()
            .insert("x-sleep-ms", "50".parse().unwrap());
        c.ready().await.unwrap();
        let ok = c
            .unary(req, path("/test.Echo/Unary"), RawCodec)
            .await
            .unwrap();
        assert_eq!(ok.into_inner(), Bytes::from_static(b"quick"));
    });
    // Counted by grpc-status, not only as the HTTP 200 class they travel in.
    let grpc = |code: &str| {
        s.weft.metric(&[
            "weft_grpc_requests_total",
            &format!("grpc_status=\"{code}\""),
        ])
    };
    assert_eq!(grpc("4"), 3.0, "{}", s.weft.admin_get("/metrics").1);
    assert_eq!(grpc("0"), 1.0);
}

/// One gRPC call with an empty message on a bare h2 client; returns the HTTP status and
/// the trailers (or, for a Trailers-Only response, the headers).
async fn h2_call(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> (u16, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    let (response, mut body) = send.send_request(req.body(()).unwrap(), false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let resp = response.await.unwrap();
    let status = resp.status().as_u16();
    let (parts, mut recv) = resp.into_parts();
    if recv.is_end_stream() {
        return (status, parts.headers);
    }
    while let Some(d) = recv.data().await {
        let _ = d.unwrap();
    }
    (status, recv.trailers().await.unwrap().unwrap_or_default())
}

#[test]
fn errors_made_by_weft_are_grpc_statuses() {
    let s = setup();
    s.rt.block_on(async {
        let mut c = client(s.listen).await;
        // No route: UNIMPLEMENTED.
        c.ready().await.unwrap();
        let err = c
            .unary(
                Request::new(Bytes::new()),
                path("/nobody.Home/Call"),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
        assert!(err.message().contains("no route"), "{err:?}");

        // Nothing listens behind the cluster: UNAVAILABLE.
        c.ready().await.unwrap();
        let err = c
            .unary(
                Request::new(Bytes::new()),
                path("/test.Down/Call"),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("upstream"), "{err:?}");

        // Over http.max_request_body_bytes (8 MiB): RESOURCE_EXHAUSTED.
        c.ready().await.unwrap();
        let huge = Bytes::from(vec![1u8; 9 * 1024 * 1024]);
        let err = c
            .unary(Request::new(huge), path("/test.Echo/Unary"), RawCodec)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    });
    // gRPC over HTTP/1.1 is refused with a clear error.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "content-type: application/grpc", "--data-binary", "x"])
        .arg(format!("http://{}/test.Echo/Unary", s.listen))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "505");
    let _ = &s.weft;
}

#[test]
fn cancellation_crosses_weft_both_ways() {
    let s = setup();
    s.rt.block_on(async {
        let mut c = client(s.listen).await;
        // Client -> upstream: dropping an endless server stream cancels it upstream.
        c.ready().await.unwrap();
        let mut stream = c
            .server_streaming(
                Request::new(Bytes::from_static(b"forever")),
                path("/test.Echo/Repeat"),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        for _ in 0..3 {
            stream.message().await.unwrap().unwrap();
        }
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.app.cancelled.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "upstream never saw the cancellation"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Upstream -> client: the upstream resets its stream after one message.
        c.ready().await.unwrap();
        let mut stream = c
            .server_streaming(
                Request::new(Bytes::new()),
                path("/test.Resets/Call"),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            stream.message().await.unwrap().unwrap(),
            Bytes::from_static(b"first")
        );
        let err = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("reset reaches the client")
            .unwrap_err();
        assert_eq!(err.code(), Code::Cancelled, "{err:?}");
    });
    // The call the client cancelled is counted (it once was not counted at all).
    let deadline = Instant::now() + Duration::from_secs(5);
    while s
        .weft
        .metric(&["weft_requests_total", "status_class=\"cancelled\""])
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            s.weft.admin_get("/metrics").1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.weft
            .metric(&["weft_grpc_requests_total", "grpc_status=\"1\""])
            >= 1.0
    );
}

#[test]
fn a_stream_outlives_a_config_reload() {
    let s = setup();
    s.rt.block_on(async {
        let mut c = client(s.listen).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tx.send(Bytes::from_static(b"before")).await.unwrap();
        c.ready().await.unwrap();
        let mut answers = c
            .streaming(
                Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                path("/test.Echo/Chat"),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answers.message().await.unwrap().unwrap(),
            Bytes::from_static(b"echo:before")
        );

        // A reload that changes the routes (the stream's own route included).
        let before = s.weft.metric(&["weft_config_version"]);
        let text = std::fs::read_to_string(&s.weft.config_path).unwrap();
        std::fs::write(
            &s.weft.config_path,
            text.replace("name = \"echo\"", "name = \"echo-v2\""),
        )
        .unwrap();
        s.weft.signal(1); // SIGHUP
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.weft.metric(&["weft_config_version"]) <= before {
            assert!(Instant::now() < deadline, "reload not applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        for i in 0..5 {
            tx.send(Bytes::from(format!("after{i}"))).await.unwrap();
            let a = answers.message().await.unwrap().unwrap();
            assert_eq!(a, Bytes::from(format!("echo:after{i}")));
        }
        drop(tx);
        assert!(answers.message().await.unwrap().is_none());

        // New calls use the new snapshot.
        c.ready().await.unwrap();
        c.unary(
            Request::new(Bytes::from_static(b"x")),
            path("/test.Echo/Unary"),
            RawCodec,
        )
        .await
        .unwrap();
    });
    let route_metric = s.weft.admin_get("/metrics").1;
    assert!(route_metric.contains("route=\"echo-v2\""), "{route_metric}");
}
