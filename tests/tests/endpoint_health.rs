//! Endpoint health (#18): circuit breakers, against an upstream that counts what
//! reaches it at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tests::{free_addr, Weft};

/// An HTTP/1.1 upstream that holds every request `hold`, counting arrivals and the
/// most it held at once.
struct SlowUpstream {
    addr: SocketAddr,
    arrivals: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

impl SlowUpstream {
    fn start(hold: Duration) -> SlowUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let arrivals = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let (a, m) = (arrivals.clone(), most_at_once.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (a, m, now) = (a.clone(), m.clone(), now.clone());
                std::thread::spawn(move || serve(conn, hold, &a, &m, &now));
            }
        });
        SlowUpstream {
            addr,
            arrivals,
            most_at_once,
        }
    }
}

/// The next request head on `conn` (bytes read past it stay in `buf`); `None` once
/// the client is gone.
fn next_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Some(head)
}

fn serve(
    mut conn: TcpStream,
    hold: Duration,
    arrivals: &AtomicUsize,
    most: &AtomicUsize,
    now: &AtomicUsize,
) {
    let mut buf = Vec::new();
    while next_head(&mut conn, &mut buf).is_some() {
        arrivals.fetch_add(1, Ordering::SeqCst);
        let held = now.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(held, Ordering::SeqCst);
        std::thread::sleep(hold);
        now.fetch_sub(1, Ordering::SeqCst);
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

fn config(admin: SocketAddr, listen: SocketAddr, upstream: SocketAddr, max: u32) -> String {
    format!(
        "[admin]\naddress = \"{admin}\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"cb\" }} ]\n\
         [clusters.cb]\nendpoints = [\"{upstream}\"]\n\
         circuit_breakers = {{ max_requests = {max} }}\n"
    )
}

/// `n` requests at once, each on its own connection: their statuses and heads.
fn burst(listen: SocketAddr, n: usize) -> Vec<(u16, String)> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(listen).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let req = format!("GET /r{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
                (status, out)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn count(answers: &[(u16, String)], status: u16) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

/// `max_requests = 10` with 50 slow requests at once over 2 workers: exactly 10 reach
/// the upstream, at most 10 at any moment, the other 40 get 503 overflow with
/// `x-weft-overloaded: true`, counted; the breaker reads open while full and has all
/// its capacity back after.
#[test]
fn a_full_breaker_answers_overflow_and_admits_exactly_its_limit() {
    let upstream = SlowUpstream::start(Duration::from_millis(1500));
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start("ingress", &config(admin, listen, upstream.addr, 10), admin);
    let scrape = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let clusters = weft_tests::process::admin_clusters(admin);
        (weft_tests::process::admin_metrics(admin), clusters)
    });
    let answers = burst(listen, 50);
    assert_eq!(count(&answers, 200), 10, "{answers:?}");
    assert_eq!(count(&answers, 503), 40);
    for (_, out) in answers.iter().filter(|(s, _)| *s == 503) {
        let head = out.to_ascii_lowercase();
        assert!(
            head.contains("x-weft-overloaded: true") && head.contains("x-weft-error: overflow"),
            "{out}"
        );
    }
    assert_eq!(upstream.arrivals.load(Ordering::SeqCst), 10);
    assert_eq!(upstream.most_at_once.load(Ordering::SeqCst), 10);
    let (during, clusters) = scrape.join().unwrap();
    assert!(
        during.contains("weft_cluster_circuit_breaker_open{cluster=\"cb\",resource=\"rq\"} 1"),
        "{during}"
    );
    // `/clusters` while they are held: the breaker full, the 10 in flight at the endpoint.
    let cb = &clusters["clusters"][0];
    assert_eq!(
        cb["circuit_breakers"]["requests"],
        serde_json::json!({"used": 10, "max": 10}),
        "{clusters}"
    );
    assert_eq!(cb["endpoints"][0]["in_flight"], 10, "{clusters}");
    assert_eq!(cb["endpoints"][0]["health"]["active_check"], "unchecked");
    assert_eq!(
        weft.metric(&[
            "weft_cluster_upstream_rq_pending_overflow_total",
            "cluster=\"cb\""
        ]),
        40.0
    );
    assert_eq!(
        weft.metric_settled(
            &[
                "weft_cluster_circuit_breaker_remaining",
                "cluster=\"cb\"",
                "resource=\"rq\""
            ],
            10.0
        ),
        10.0
    );
}

/// A reload that changes the limit while requests are in flight: they keep counting
/// against it (10 in flight under a new limit of 12 leave room for 2), and once they
/// are done every permit is back (12 at once all pass).
#[test]
fn permits_held_across_a_reload_count_against_the_new_limit_and_come_back() {
    let upstream = SlowUpstream::start(Duration::from_millis(2500));
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start("ingress", &config(admin, listen, upstream.addr, 10), admin);
    let first = std::thread::spawn(move || burst(listen, 10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.arrivals.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline, "the first ten did not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&weft.config_path, config(admin, listen, upstream.addr, 12)).unwrap();
    weft.signal(1); // SIGHUP
    let deadline = Instant::now() + Duration::from_secs(5);
    while weft.metric(&["weft_config_reloads_total"]) < 1.0 {
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = burst(listen, 5);
    assert_eq!(count(&second, 200), 2, "{second:?}");
    assert_eq!(count(&second, 503), 3);
    assert_eq!(count(&first.join().unwrap(), 200), 10);
    let remaining = [
        "weft_cluster_circuit_breaker_remaining",
        "cluster=\"cb\"",
        "resource=\"rq\"",
    ];
    assert_eq!(
        weft.metric_settled(&remaining, 12.0),
        12.0,
        "permits leaked"
    );
    let third = burst(listen, 12);
    assert_eq!(count(&third, 200), 12, "{third:?}");
}

/// `max_retries`: an upstream that refuses every stream (REFUSED_STREAM, which weft
/// retries while the body is unsent) gets the retries the breaker allows; with
/// `max_retries = 0` none, the refusal stands (503) and the skipped retry is counted.
#[test]
fn the_retry_breaker_bounds_retries_and_counts_those_it_skips() {
    use weft_tests::h2frames::{frame, serve_connection, upstream};
    // 1 attempt + weft's 2 retries of a refused stream; none past a zero breaker.
    for (max_retries, streams) in [(3, 3), (0, 1)] {
        let seen = Arc::new(AtomicUsize::new(0));
        let counted = seen.clone();
        // RST_STREAM(REFUSED_STREAM = 7) for every request.
        let (up, _) = upstream(move |_, conn| {
            let counted = counted.clone();
            serve_connection(conn, move |stream| {
                counted.fetch_add(1, Ordering::SeqCst);
                frame(0x3, 0, stream, &7u32.to_be_bytes())
            })
        });
        let (admin, listen) = (free_addr(), free_addr());
        let config = config(admin, listen, up, 10)
            .replace(
                "max_requests = 10",
                &format!("max_requests = 10, max_retries = {max_retries}"),
            )
            .replace("endpoints = [", "protocol = \"http2\"\nendpoints = [");
        let weft = Weft::start("ingress", &config, admin);
        let answers = burst(listen, 1);
        assert_eq!(answers[0].0, 503, "{answers:?}");
        assert!(answers[0].1.contains("refused the stream"), "{answers:?}");
        let skipped = weft.metric(&[
            "weft_cluster_upstream_rq_retry_overflow_total",
            "cluster=\"cb\"",
        ]);
        assert_eq!(
            skipped,
            if max_retries == 0 { 1.0 } else { 0.0 },
            "max_retries {max_retries}"
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            streams,
            "max_retries {max_retries}"
        );
    }
}

/// `max_connections = 2` on one worker: 5 slow requests at once open 2 connections and
/// 3 get 503 overflow (weft does not queue for a connection), counted as `cx`
/// overflows; the 2 pooled connections keep their places, and are what the next
/// requests reuse.
#[test]
fn max_connections_counts_every_open_connection_pooled_ones_too() {
    let upstream = SlowUpstream::start(Duration::from_millis(1000));
    let (admin, listen) = (free_addr(), free_addr());
    let config = config(admin, listen, upstream.addr, 100).replace(
        "max_requests = 100",
        "max_requests = 100, max_connections = 2",
    );
    let weft = Weft::start_with("ingress", &config, admin, &["--workers", "1"]);
    let keep_alive = |n: usize| -> Vec<u16> {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut c = weft_tests::raw::RawClient::new(listen);
                    c.send(b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n");
                    c.read_response().0
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let first = keep_alive(5);
    assert_eq!(first.iter().filter(|s| **s == 200).count(), 2, "{first:?}");
    assert_eq!(first.iter().filter(|s| **s == 503).count(), 3, "{first:?}");
    assert_eq!(
        weft.metric(&["weft_cluster_upstream_cx_overflow_total", "cluster=\"cb\""]),
        3.0
    );
    let cx = [
        "weft_cluster_circuit_breaker_remaining",
        "cluster=\"cb\"",
        "resource=\"cx\"",
    ];
    assert_eq!(
        weft.metric_settled(&cx, 0.0),
        0.0,
        "the pooled connections keep their places"
    );
    let again = keep_alive(2);
    assert_eq!(again, [200, 200]);
    assert_eq!(upstream.arrivals.load(Ordering::SeqCst), 4);
}

/// `max_pending_requests = 1`: while one request waits for a connection that does not
/// come (a full accept queue), two more are answered 503 overflow at once.
#[test]
fn max_pending_requests_bounds_requests_waiting_for_a_connection() {
    let hole = weft_tests::upstream::BlackHole::start();
    let (admin, listen) = (free_addr(), free_addr());
    let config = config(admin, listen, hole.addr, 100).replace(
        "max_requests = 100",
        "max_requests = 100, max_pending_requests = 1",
    ) + "connect_timeout = \"1500ms\"\n";
    let weft = Weft::start_with("ingress", &config, admin, &["--workers", "1"]);
    let waiting = std::thread::spawn(move || burst(listen, 1));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let refused = burst(listen, 2);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count(&refused, 503), 2, "{refused:?}");
    assert!(refused
        .iter()
        .all(|(_, out)| out.contains("x-weft-overloaded: true")));
    assert_eq!(
        waiting.join().unwrap()[0].0,
        504,
        "the waiting one times out connecting"
    );
    assert_eq!(
        weft.metric(&[
            "weft_cluster_upstream_rq_pending_overflow_total",
            "cluster=\"cb\""
        ]),
        2.0
    );
}

/// An HTTP/1.1 upstream whose `/healthz` answers `health` (a status) and whose other
/// paths answer `status` with its `name`; it counts the checks and the other requests
/// it gets.
#[derive(Clone)]
struct CheckedUpstream {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    checks: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    served: Arc<AtomicUsize>,
    /// Milliseconds each non-check answer waits.
    delay_ms: Arc<AtomicU64>,
    /// When not 0: every this-many-th non-check answer is a 500 instead of `status`.
    fail_every: Arc<AtomicUsize>,
}

impl CheckedUpstream {
    fn start(name: &'static str) -> CheckedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let up = CheckedUpstream {
            addr: listener.local_addr().expect("addr"),
            health: Arc::new(AtomicU16::new(200)),
            checks: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(AtomicU16::new(200)),
            served: Arc::new(AtomicUsize::new(0)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            fail_every: Arc::new(AtomicUsize::new(0)),
        };
        let shared = up.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let up = shared.clone();
                std::thread::spawn(move || answer_checks(conn, name, &up));
            }
        });
        up
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn answer_checks(mut conn: TcpStream, name: &str, up: &CheckedUpstream) {
    let mut buf = Vec::new();
    while let Some(head) = next_head(&mut conn, &mut buf) {
        let answer = if head.starts_with("GET /healthz ") {
            up.checks.fetch_add(1, Ordering::SeqCst);
            let status = up.health.load(Ordering::SeqCst);
            format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n")
        } else {
            let nth = up.served.fetch_add(1, Ordering::SeqCst) + 1;
            let delay = up.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            let every = up.fail_every.load(Ordering::SeqCst);
            let status = if every > 0 && nth % every == 0 {
                500
            } else {
                up.status.load(Ordering::SeqCst)
            };
            format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{name}",
                name.len()
            )
        };
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// One listener routing everything to cluster `api` of `endpoints`; `more` goes on
/// after the cluster's `endpoints` line (keys, then its sub-tables).
fn cluster_config(
    admin: SocketAddr,
    listen: SocketAddr,
    endpoints: &[SocketAddr],
    more: &str,
) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[admin]\naddress = \"{admin}\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"api\" }} ]\n\
         [clusters.api]\nendpoints = [{}]\n{more}\n",
        list.join(", ")
    )
}

fn checked_config(
    admin: SocketAddr,
    listen: SocketAddr,
    endpoints: &[SocketAddr],
    check: &str,
) -> String {
    cluster_config(
        admin,
        listen,
        endpoints,
        &format!("[clusters.api.health_check]\n{check}"),
    )
}

fn host_healthy(weft: &Weft, host: SocketAddr) -> f64 {
    weft.metric(&[
        "weft_host_healthy",
        "cluster=\"api\"",
        &format!("host=\"{host}\""),
    ])
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Who answered `n` requests, one connection each.
fn answered_by(listen: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let mut c = weft_tests::raw::RawClient::new(listen);
            c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
            let (status, _, body) = c.read_response();
            format!("{status} {}", String::from_utf8_lossy(&body))
        })
        .collect()
}

/// HTTP checks: an endpoint whose `/healthz` turns 503 is out after one check (an
/// unwell answer fails at once), and back after `healthy_threshold` passes; with two
/// workers each endpoint still gets one check per interval.
#[test]
fn http_checks_take_an_endpoint_out_and_back() {
    let (a, b) = (CheckedUpstream::start("a"), CheckedUpstream::start("b"));
    let (admin, listen) = (free_addr(), free_addr());
    let check = "kind = \"http\"\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\n\
                 healthy_threshold = 2\nunhealthy_threshold = 3";
    let weft = Weft::start(
        "ingress",
        &checked_config(admin, listen, &[a.addr, b.addr], check),
        admin,
    );
    wait_for("both healthy", Duration::from_secs(3), || {
        host_healthy(&weft, a.addr) == 1.0 && host_healthy(&weft, b.addr) == 1.0
    });
    let served = answered_by(listen, 10);
    assert!(
        served.iter().any(|s| s == "200 a") && served.iter().any(|s| s == "200 b"),
        "{served:?}"
    );

    a.health.store(503, Ordering::SeqCst);
    let out = wait_for("a out", Duration::from_secs(2), || {
        host_healthy(&weft, a.addr) == 0.0
    });
    assert!(
        out < Duration::from_millis(700),
        "out after {out:?}: more than one check"
    );
    let served = answered_by(listen, 10);
    assert!(served.iter().all(|s| s == "200 b"), "{served:?}");

    let checks_before = a.checks.load(Ordering::SeqCst);
    a.health.store(200, Ordering::SeqCst);
    wait_for("a back", Duration::from_secs(3), || {
        host_healthy(&weft, a.addr) == 1.0
    });
    assert!(
        a.checks.load(Ordering::SeqCst) - checks_before >= 2,
        "back before healthy_threshold passes"
    );
    let served = answered_by(listen, 10);
    assert!(served.iter().any(|s| s == "200 a"), "{served:?}");

    // One checker for the process: about 10 checks in 2 s at 200 ms, not 20.
    let before = b.checks.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(2));
    let made = b.checks.load(Ordering::SeqCst) - before;
    assert!(
        (8..=12).contains(&made),
        "{made} checks in 2 s at a 200 ms interval"
    );
    assert!(weft.metric(&["weft_cluster_health_check_failure_total", "cluster=\"api\""]) >= 1.0);
}

/// HTTP checks go over the cluster's TLS: an endpoint that speaks only TLS (a weft
/// listener terminating it in front of the app) passes its checks, on one kept
/// connection, and fails them once the app's `/healthz` turns 503.
#[test]
fn http_checks_run_over_the_clusters_tls() {
    let pki = weft_tests::pki::Pki::new();
    pki.leaf("api", "api", "DNS:api.test", weft_tests::pki::SERVER);
    let app = CheckedUpstream::start("app");
    let (front_admin, front) = (free_addr(), free_addr());
    let front_weft = Weft::start_in(
        pki.dir.path(),
        "ingress",
        &format!(
            "[admin]\naddress = \"{front_admin}\"\n[[listeners]]\nname = \"tls\"\naddress = \"{front}\"\n\
             tls = {{ certificates = [ {{ cert = \"api.crt\", key = \"api.key\" }} ] }}\n\
             routes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"app\" }} ]\n\
             [clusters.app]\nendpoints = [\"{}\"]\n",
            app.addr
        ),
        front_admin,
    );
    let (admin, listen) = (free_addr(), free_addr());
    let check = "kind = \"http\"\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"500ms\"";
    let config = cluster_config(
        admin,
        listen,
        &[front],
        &format!(
            "tls = {{ ca = \"ca.crt\", sni = \"api.test\" }}\n[clusters.api.health_check]\n{check}"
        ),
    );
    let weft = Weft::start_in(pki.dir.path(), "ingress", &config, admin);
    wait_for("healthy over TLS", Duration::from_secs(3), || {
        host_healthy(&weft, front) == 1.0 && app.checks.load(Ordering::SeqCst) >= 3
    });
    // Every check so far came over one TLS connection to the front.
    let accepted = front_weft.metric(&["weft_accepted_connections_total", "listener=\"tls\""]);
    assert_eq!(accepted, 1.0, "TLS connections the checks opened");
    app.health.store(503, Ordering::SeqCst);
    wait_for("out over TLS", Duration::from_secs(2), || {
        host_healthy(&weft, front) == 0.0
    });
}

/// TCP connect checks: a closed port is out after `unhealthy_threshold` failures and
/// back after `healthy_threshold` passes once it listens again; with every endpoint
/// out and `healthy_panic_threshold = 0`, requests get 503 `no healthy upstream`.
#[test]
fn tcp_checks_follow_a_port_closing_and_reopening() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let serving = std::thread::spawn(move || {
        // Answer the data requests of this test while it listens.
        for conn in listener.incoming().take(1).flatten() {
            let _ = conn;
        }
    });
    let (admin, listen) = (free_addr(), free_addr());
    let check = "kind = \"tcp\"\ninterval = \"150ms\"\ntimeout = \"300ms\"\n\
                 healthy_threshold = 2\nunhealthy_threshold = 3";
    let config = checked_config(admin, listen, &[addr], check).replace(
        "[clusters.api.health_check]",
        "healthy_panic_threshold = 0\n[clusters.api.health_check]",
    );
    let weft = Weft::start("ingress", &config, admin);
    wait_for("healthy", Duration::from_secs(3), || {
        host_healthy(&weft, addr) == 1.0
    });
    // Stop listening: the accept loop ends after one connection, dropping the socket.
    let _ = TcpStream::connect(addr);
    serving.join().unwrap();
    let out = wait_for("out", Duration::from_secs(3), || {
        host_healthy(&weft, addr) == 0.0
    });
    assert!(
        out >= Duration::from_millis(250),
        "out after {out:?}: before 3 failures"
    );
    let mut c = weft_tests::raw::RawClient::new(listen);
    c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    let (status, head, _) = c.read_response();
    assert_eq!(status, 503);
    assert!(head.contains("no healthy upstream"), "{head}");

    let again = TcpListener::bind(addr).expect("the same port again");
    wait_for("back", Duration::from_secs(3), || {
        host_healthy(&weft, addr) == 1.0
    });
    drop(again);
}

/// gRPC checks against tonic-health: NOT_SERVING takes the endpoint out, SERVING
/// brings it back; a service the server does not know counts as unhealthy.
#[test]
fn grpc_checks_follow_the_stock_health_service() {
    let app = weft_tests::grpc::GrpcUpstream::start();
    let (admin, listen) = (free_addr(), free_addr());
    let check = "kind = \"grpc\"\ngrpc_service = \"test.Echo\"\ninterval = \"200ms\"\n\
                 timeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1";
    let config = checked_config(admin, listen, &[app.addr], check)
        .replace("endpoints = [", "protocol = \"http2\"\nendpoints = [");
    let weft = Weft::start("ingress", &config, admin);
    wait_for("serving", Duration::from_secs(3), || {
        host_healthy(&weft, app.addr) == 1.0
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let health = app.health.clone();
    rt.block_on(
        health
            .clone()
            .set_service_status("test.Echo", tonic_health::ServingStatus::NotServing),
    );
    wait_for("not serving", Duration::from_secs(3), || {
        host_healthy(&weft, app.addr) == 0.0
    });
    rt.block_on(health.set_service_status("test.Echo", tonic_health::ServingStatus::Serving));
    wait_for("serving again", Duration::from_secs(3), || {
        host_healthy(&weft, app.addr) == 1.0
    });

    let (admin, listen) = (free_addr(), free_addr());
    let unknown = checked_config(
        admin,
        listen,
        &[app.addr],
        &check.replace("test.Echo", "no.Such"),
    )
    .replace("endpoints = [", "protocol = \"http2\"\nendpoints = [");
    let weft = Weft::start("ingress", &unknown, admin);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        host_healthy(&weft, app.addr),
        0.0,
        "an unknown service passed"
    );
}

fn outlier_metric(weft: &Weft, name: &str, kind: Option<&str>) -> f64 {
    let kind = kind.map(|k| format!("type=\"{k}\""));
    let mut parts = vec![name, "cluster=\"api\""];
    if let Some(k) = &kind {
        parts.push(k);
    }
    weft.metric(&parts)
}

/// One request on its own connection (so the two workers share them): its status
/// and head.
fn one_request(listen: SocketAddr) -> (u16, String) {
    let mut c = weft_tests::raw::RawClient::new(listen);
    c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    let (status, head, _) = c.read_response();
    (status, head)
}

fn status_of_one(listen: SocketAddr) -> u16 {
    one_request(listen).0
}

/// Sends requests until `done`, or panics after `limit`; returns when it was done.
fn send_until(listen: SocketAddr, limit: Duration, mut done: impl FnMut() -> bool) -> Instant {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}");
        status_of_one(listen);
    }
    Instant::now()
}

/// Outlier detection: 1 of 5 endpoints answering 500 is ejected after exactly 5
/// failures in a row, counted across the 2 workers (each connection lands on either),
/// gets nothing while ejected, comes back after `base_ejection_time`, and its second
/// ejection lasts twice as long. With 5 endpoints the default `max_ejection_percent`
/// (10) still ejects one (`always_eject_one_host`).
#[test]
fn an_endpoint_answering_500_is_ejected_for_growing_times() {
    let ups: Vec<CheckedUpstream> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(CheckedUpstream::start)
        .collect();
    let bad = ups[0].clone();
    bad.status.store(500, Ordering::SeqCst);
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let (admin, listen) = (free_addr(), free_addr());
    let outlier = "[clusters.api.outlier_detection]\nconsecutive_5xx = 5\ninterval = \"500ms\"\n\
                   base_ejection_time = \"1s\"";
    let weft = Weft::start(
        "ingress",
        &cluster_config(admin, listen, &addrs, outlier),
        admin,
    );

    let limit = Duration::from_secs(10);
    let ejected = send_until(listen, limit, || bad.served() >= 5);
    assert_eq!(bad.served(), 5);
    // Ejected: 0.8 s of requests, none reaches it.
    while ejected.elapsed() < Duration::from_millis(800) {
        assert_eq!(status_of_one(listen), 200);
    }
    assert_eq!(bad.served(), 5, "an ejected endpoint was sent a request");
    assert_eq!(
        outlier_metric(&weft, "weft_cluster_outlier_ejections_active", None),
        1.0
    );
    let clusters = weft_tests::process::admin_clusters(admin);
    let endpoints = clusters["clusters"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .clone();
    let shown = endpoints
        .iter()
        .find(|e| e["address"] == bad.addr.to_string())
        .expect("the bad endpoint");
    assert_eq!(shown["health"]["outlier"], "ejected", "{clusters}");
    assert_eq!(shown["eligible"], false);
    assert_eq!(shown["ejections"], 1);
    let left = shown["ejected_for_ms"].as_u64().expect("ejected_for_ms");
    assert!(left > 0 && left <= 1000, "{left}");
    assert!(
        endpoints
            .iter()
            .filter(|e| e["health"]["outlier"] == "ok")
            .count()
            == 4
    );
    let to_bad = weft.metric_settled(
        &[
            "weft_upstream_requests_total",
            &format!("endpoint=\"{}\"", bad.addr),
        ],
        5.0,
    );
    assert_eq!(to_bad, 5.0, "requests counted for the ejected endpoint");
    let back = send_until(listen, limit, || bad.served() > 5);
    let first = back - ejected;
    // The sweep runs every interval: back within [base, base + interval + slack].
    assert!(
        first >= Duration::from_secs(1) && first < Duration::from_millis(2200),
        "first ejection lasted {first:?}"
    );

    // Failing again at once: ejected again after 5 more, for twice the base.
    let again = send_until(listen, limit, || bad.served() >= 10);
    assert_eq!(bad.served(), 10, "not ejected after 5 more in a row");
    let back = send_until(listen, limit, || bad.served() > 10);
    let second = back - again;
    assert!(
        second >= Duration::from_secs(2) && second < Duration::from_millis(3200),
        "second ejection lasted {second:?} (first {first:?})"
    );
    let enforced = "weft_cluster_outlier_ejections_enforced_total";
    assert_eq!(
        outlier_metric(&weft, enforced, Some("consecutive_5xx")),
        2.0
    );
    assert_eq!(outlier_metric(&weft, enforced, Some("success_rate")), 0.0);
    let (_, text) = weft.admin_get("/metrics");
    assert!(
        text.contains("weft_cluster_membership_endpoints{cluster=\"api\"} 5"),
        "{text}"
    );
}

/// `max_ejection_percent`: of 3 endpoints with 2 failing, the default 10 % ejects one
/// (`always_eject_one_host`) and refuses the other (overflow); with
/// `always_eject_one_host = false` none is ejected.
#[test]
fn max_ejection_percent_bounds_ejections() {
    let ups: Vec<CheckedUpstream> = ["a", "b", "c"]
        .into_iter()
        .map(CheckedUpstream::start)
        .collect();
    for bad in &ups[..2] {
        bad.status.store(503, Ordering::SeqCst);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let outlier =
        "[clusters.api.outlier_detection]\nconsecutive_5xx = 3\nbase_ejection_time = \"30s\"";
    for (always, ejected) in [("true", 1.0), ("false", 0.0)] {
        let (admin, listen) = (free_addr(), free_addr());
        let more = format!("{outlier}\nalways_eject_one_host = {always}");
        let weft = Weft::start(
            "ingress",
            &cluster_config(admin, listen, &addrs, &more),
            admin,
        );
        send_until(listen, Duration::from_secs(10), || {
            ups[..2].iter().all(|u| u.served() >= 3)
        });
        for _ in 0..20 {
            status_of_one(listen);
        }
        let active = outlier_metric(&weft, "weft_cluster_outlier_ejections_active", None);
        assert_eq!(active, ejected, "always_eject_one_host = {always}");
        let overflow = outlier_metric(&weft, "weft_cluster_outlier_ejections_overflow_total", None);
        assert!(
            overflow >= 1.0,
            "always_eject_one_host = {always}: {overflow}"
        );
        for u in &ups {
            u.served.store(0, Ordering::SeqCst);
        }
    }
}

/// The panic threshold with every endpoint ejected: at 50 % both still get traffic
/// (counted as panic picks); at 0 the answer is 503 `no healthy upstream` and neither
/// gets a request.
#[test]
fn with_every_endpoint_ejected_the_panic_threshold_decides() {
    let ups: Vec<CheckedUpstream> = ["a", "b"].into_iter().map(CheckedUpstream::start).collect();
    for u in &ups {
        u.status.store(500, Ordering::SeqCst);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let outlier =
        "[clusters.api.outlier_detection]\nconsecutive_5xx = 3\nbase_ejection_time = \"30s\"\n\
                   max_ejection_percent = 100";
    for panic in [50, 0] {
        let (admin, listen) = (free_addr(), free_addr());
        let more = format!("healthy_panic_threshold = {panic}\n{outlier}");
        let weft = Weft::start(
            "ingress",
            &cluster_config(admin, listen, &addrs, &more),
            admin,
        );
        send_until(listen, Duration::from_secs(10), || {
            outlier_metric(&weft, "weft_cluster_outlier_ejections_active", None) == 2.0
        });
        let before: Vec<usize> = ups.iter().map(|u| u.served()).collect();
        let statuses: Vec<(u16, String)> = (0..10).map(|_| one_request(listen)).collect();
        let after: Vec<usize> = ups.iter().map(|u| u.served()).collect();
        let panics = "weft_cluster_lb_healthy_panic_total";
        if panic == 50 {
            assert!(statuses.iter().all(|(s, _)| *s == 500), "{statuses:?}");
            assert!(
                after[0] > before[0] && after[1] > before[1],
                "panic: both endpoints still served ({before:?} -> {after:?})"
            );
            assert!(outlier_metric(&weft, panics, None) >= 10.0);
        } else {
            for (status, head) in &statuses {
                assert_eq!(*status, 503, "{head}");
                assert!(
                    head.to_ascii_lowercase()
                        .contains("x-weft-error: no healthy upstream"),
                    "{head}"
                );
            }
            assert_eq!(
                before, after,
                "an upstream got a request with no endpoint healthy"
            );
            assert_eq!(outlier_metric(&weft, panics, None), 0.0);
        }
        for u in &ups {
            u.served.store(0, Ordering::SeqCst);
        }
    }
}

/// gRPC calls count by grpc-status: UNAVAILABLE from a Trailers-Only answer (the
/// status in the head) and after a message (in the trailers) eject the endpoint after
/// `consecutive_5xx`; FAILED_PRECONDITION, the application's own answer, does not.
#[test]
fn grpc_statuses_from_heads_or_trailers_feed_outlier_detection() {
    use weft_tests::grpc::{client, streaming_status, unary_status, GrpcUpstream};
    let (good, bad) = (GrpcUpstream::start(), GrpcUpstream::start());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (method, ask) in [
        ("/test.Echo/Unary", &b"hi"[..]),
        ("/test.Echo/Repeat", &b"2"[..]),
    ] {
        let (admin, listen) = (free_addr(), free_addr());
        let more = "protocol = \"http2\"\n[clusters.api.outlier_detection]\nconsecutive_5xx = 3\n\
                    base_ejection_time = \"30s\"\nmax_ejection_percent = 50";
        let weft = Weft::start(
            "ingress",
            &cluster_config(admin, listen, &[good.addr, bad.addr], more),
            admin,
        );
        let codes: Vec<tonic::Code> = rt.block_on(async {
            let mut grpc = client(listen).await;
            for _ in 0..8 {
                let code = unary_status(&mut grpc, "/test.Echo/Fail", b"").await;
                assert_eq!(code, tonic::Code::FailedPrecondition);
            }
            bad.failing.store(true, Ordering::SeqCst);
            let mut codes = Vec::new();
            for _ in 0..20 {
                let code = if method.ends_with("Unary") {
                    unary_status(&mut grpc, method, ask).await
                } else {
                    streaming_status(&mut grpc, method, ask).await
                };
                codes.push(code);
            }
            codes
        });
        let detected = "weft_cluster_outlier_ejections_detected_total";
        assert_eq!(
            outlier_metric(&weft, detected, Some("consecutive_5xx")),
            1.0,
            "{method}: FAILED_PRECONDITION counted"
        );
        let failed = codes
            .iter()
            .filter(|c| **c == tonic::Code::Unavailable)
            .count();
        assert_eq!(failed, 3, "{method}: {codes:?}");
        assert_eq!(
            outlier_metric(&weft, "weft_cluster_outlier_ejections_active", None),
            1.0,
            "{method}"
        );
        bad.failing.store(false, Ordering::SeqCst);
    }
}

/// Requests from `threads` clients at once, `each` one after another on fresh
/// connections (spread over the workers), sending `header`: who answered them.
fn answers_from(listen: SocketAddr, threads: usize, each: usize, header: &str) -> Vec<String> {
    let header = header.to_owned();
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let header = header.clone();
            std::thread::spawn(move || {
                (0..each)
                    .map(|_| {
                        let mut c = weft_tests::raw::RawClient::new(listen);
                        let req = format!("GET /x HTTP/1.1\r\nHost: a\r\n{header}\r\n");
                        c.send(req.as_bytes());
                        let (_, _, body) = c.read_response();
                        String::from_utf8_lossy(&body).into_owned()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect()
}

fn share(answers: &[String], name: &str) -> f64 {
    answers.iter().filter(|a| *a == name).count() as f64 / answers.len() as f64
}

/// `p2c_ewma` learns latency: an endpoint 50 ms slower than two others gets under
/// 10 % of the requests; `least_request` sends few to an endpoint holding long
/// requests (round robin would send it a third).
#[test]
fn latency_and_load_aware_balancers_avoid_the_slow_endpoint() {
    let ups: Vec<CheckedUpstream> = ["slow", "b", "c"]
        .into_iter()
        .map(CheckedUpstream::start)
        .collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();

    ups[0].delay_ms.store(50, Ordering::SeqCst);
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &cluster_config(admin, listen, &addrs, "lb = \"p2c_ewma\""),
        admin,
    );
    let answers = answers_from(listen, 4, 60, "");
    let slow = share(&answers, "slow");
    assert!(
        slow < 0.10,
        "p2c_ewma sent {:.1}% to the slow endpoint",
        slow * 100.0
    );
    // The estimates, as `/clusters` shows them: the slow one's is the highest.
    std::thread::sleep(Duration::from_millis(300));
    let clusters = weft_tests::process::admin_clusters(admin);
    let latency = |i: usize| clusters["clusters"][0]["endpoints"][i]["latency_ms"].as_f64();
    let slow_ms = latency(0).expect("a latency estimate");
    assert!(slow_ms > 20.0 && latency(1) < Some(slow_ms), "{clusters}");
    drop(weft);

    ups[0].delay_ms.store(1000, Ordering::SeqCst);
    let (admin, listen) = (free_addr(), free_addr());
    let _weft = Weft::start(
        "ingress",
        &cluster_config(admin, listen, &addrs, "lb = \"least_request\""),
        admin,
    );
    let answers = answers_from(listen, 10, 10, "");
    let slow = share(&answers, "slow");
    assert!(
        slow < 0.15,
        "least_request sent {:.1}% to the busy endpoint",
        slow * 100.0
    );
    assert!(
        share(&answers, "b") > 0.3 && share(&answers, "c") > 0.3,
        "{answers:?}"
    );
}

/// Who answered each of `keys` (sent as `x-user-id`) over one keep-alive connection.
fn owners(listen: SocketAddr, keys: std::ops::Range<usize>) -> Vec<String> {
    let mut c = weft_tests::raw::RawClient::new(listen);
    keys.map(|k| {
        c.send(format!("GET /x HTTP/1.1\r\nHost: a\r\nx-user-id: user-{k}\r\n\r\n").as_bytes());
        let (_, _, body) = c.read_response();
        String::from_utf8_lossy(&body).into_owned()
    })
    .collect()
}

fn hashed_config(
    admin: SocketAddr,
    listen: SocketAddr,
    endpoints: &[SocketAddr],
    lb: &str,
) -> String {
    cluster_config(admin, listen, endpoints, &format!("lb = \"{lb}\"")).replace(
        "cluster = \"api\" }",
        "cluster = \"api\", hash_policy = [ { header = \"x-user-id\" } ] }",
    )
}

/// `ring_hash`: a key lands on the same endpoint from every connection (so every
/// worker), and when one of 5 endpoints leaves (a reload), only its keys move: about
/// 1/5 of 1,000.
#[test]
fn ring_hash_keeps_keys_in_place() {
    let names = ["a", "b", "c", "d", "e"];
    let ups: Vec<CheckedUpstream> = names.into_iter().map(CheckedUpstream::start).collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let (admin, listen) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.toml");
    std::fs::write(&path, hashed_config(admin, listen, &addrs, "ring_hash")).unwrap();
    let weft = Weft::start_in(
        dir.path(),
        "ingress",
        &std::fs::read_to_string(&path).unwrap(),
        admin,
    );

    let same = answers_from(listen, 4, 5, "x-user-id: user-7\r\n");
    assert!(
        same.iter().all(|a| *a == same[0]),
        "one key, several endpoints: {same:?}"
    );

    let before = owners(listen, 0..1000);
    for name in names {
        let n = before.iter().filter(|o| *o == name).count();
        assert!((100..320).contains(&n), "{name} owns {n} of 1000 keys");
    }
    std::fs::write(
        dir.path().join("weft.toml"),
        hashed_config(admin, listen, &addrs[..4], "ring_hash"),
    )
    .unwrap();
    let version = weft.metric(&["weft_config_version"]);
    weft.signal(1); // SIGHUP
    wait_for("reloaded", Duration::from_secs(5), || {
        weft.metric(&["weft_config_version"]) > version
    });
    let after = owners(listen, 0..1000);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let owned = before.iter().filter(|o| *o == "e").count();
    assert_eq!(moved, owned, "keys of endpoints that stayed moved");
    assert!(after.iter().all(|o| o != "e"));
}

/// `maglev` honours weights 1:2 over 6,000 keys: the heavy share is 2/3 within four
/// standard deviations of a binomial draw (the ports, and so the hashes, change every
/// run; a 5% band failed about one run in fifteen). Ignored weights give 1:1.
#[test]
fn maglev_follows_weights() {
    let ups: Vec<CheckedUpstream> = ["light", "heavy"]
        .into_iter()
        .map(CheckedUpstream::start)
        .collect();
    let (admin, listen) = (free_addr(), free_addr());
    let config = hashed_config(admin, listen, &[ups[0].addr], "maglev").replace(
        &format!("endpoints = [\"{}\"]", ups[0].addr),
        &format!(
            "endpoints = [\"{}\", {{ address = \"{}\", weight = 2 }}]",
            ups[0].addr, ups[1].addr
        ),
    );
    let _weft = Weft::start("ingress", &config, admin);
    let owners = owners(listen, 0..6000);
    let heavy = owners.iter().filter(|o| *o == "heavy").count() as f64;
    let light = owners.iter().filter(|o| *o == "light").count() as f64;
    let ratio = heavy / light;
    let (p, n) = (2.0 / 3.0, heavy + light);
    let spread = 4.0 * (p * (1.0 - p) / n).sqrt();
    let share = heavy / n;
    assert!(
        (share - p).abs() <= spread,
        "heavy:light = {ratio:.3} (heavy share {share:.3}, expected {p:.3} +- {spread:.3})"
    );
}

/// A cookie hash policy with a ttl: a first request gets a `Set-Cookie`, and every
/// request carrying it lands on the same endpoint, from any connection.
#[test]
fn cookie_affinity_sets_and_honours_its_cookie() {
    let ups: Vec<CheckedUpstream> = ["a", "b", "c"]
        .into_iter()
        .map(CheckedUpstream::start)
        .collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let (admin, listen) = (free_addr(), free_addr());
    let config = cluster_config(admin, listen, &addrs, "lb = \"ring_hash\"").replace(
        "cluster = \"api\" }",
        "cluster = \"api\", hash_policy = [ { cookie = { name = \"sticky\", ttl = \"1h\" } } ] }",
    );
    let _weft = Weft::start("ingress", &config, admin);
    let (status, head) = one_request(listen);
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no set-cookie: {head}"));
    assert!(
        cookie.contains("Max-Age=3600") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with("sticky="), "{cookie}");
    let sticky = answers_from(listen, 4, 5, &format!("cookie: other=1; {pair}\r\n"));
    assert!(sticky.iter().all(|a| *a == sticky[0]), "{sticky:?}");
    let (_, again) = {
        let mut c = weft_tests::raw::RawClient::new(listen);
        c.send(format!("GET /x HTTP/1.1\r\nHost: a\r\ncookie: {pair}\r\n\r\n").as_bytes());
        let (s, h, _) = c.read_response();
        (s, h)
    };
    assert!(
        !again.contains("set-cookie"),
        "a cookie was set again: {again}"
    );
    // Several cookies spread over the endpoints.
    let spread: std::collections::HashSet<String> = (0..30)
        .map(|i| answers_from(listen, 1, 1, &format!("cookie: sticky={i:016x}\r\n")).remove(0))
        .collect();
    assert!(spread.len() >= 2, "{spread:?}");
}

/// Killing one of three endpoints under steady load, from HTTP/1.1 and HTTP/2 clients:
/// with active checks (one failed check is enough) and outlier detection, failed
/// requests stop within one health interval of the kill. How many failed before that
/// is printed.
#[test]
fn killing_one_of_three_endpoints_under_load_stops_failures_within_one_interval() {
    kill_one_of_three_under_load(false);
}

/// The same with a retry policy on the cluster (connect failures, resets, gateway
/// errors): not one request fails.
#[test]
fn killing_one_of_three_endpoints_under_load_with_retries_loses_nothing() {
    kill_one_of_three_under_load(true);
}

fn kill_one_of_three_under_load(retries: bool) {
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use weft_tests::upstream::TestUpstream;

    let mut ups: Vec<Option<TestUpstream>> = ["a", "b", "c"]
        .into_iter()
        .map(|n| Some(TestUpstream::start(n)))
        .collect();
    let addrs: Vec<SocketAddr> = ups.iter().flatten().map(|u| u.addr).collect();
    let (admin, listen) = (free_addr(), free_addr());
    let interval = Duration::from_millis(500);
    let more = "[clusters.api.health_check]\nkind = \"http\"\npath = \"/status/200\"\n\
                interval = \"500ms\"\ntimeout = \"250ms\"\nunhealthy_threshold = 1\n\
                [clusters.api.outlier_detection]\nconsecutive_5xx = 3\nmax_ejection_percent = 34";
    // Six clients at once: at the kill, more than Envoy's default of 3 retries are in
    // flight for a moment (measured: 1 request of ~5,500 overflowed in 2 of 6 runs).
    let retry =
        "[clusters.api.retry]\nretry_on = [\"connect-failure\", \"reset\", \"gateway-error\"]\n\
                 num_retries = 2\n[clusters.api.circuit_breakers]\nmax_retries = 32";
    let more = if retries {
        format!("{more}\n{retry}")
    } else {
        more.to_owned()
    };
    let weft = Weft::start(
        "ingress",
        &cluster_config(admin, listen, &addrs, &more),
        admin,
    );
    std::thread::sleep(Duration::from_millis(700));

    let failures: Arc<Mutex<Vec<(Instant, &'static str)>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let h1: Vec<_> = (0..3)
        .map(|_| {
            let (failures, answered, stop) = (failures.clone(), answered.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut c = weft_tests::raw::RawClient::new(listen);
                    for _ in 0..20 {
                        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
                        let (status, head, _) = c.read_response();
                        answered.fetch_add(1, Ordering::SeqCst);
                        if status != 200 {
                            failures.lock().unwrap().push((Instant::now(), "http1"));
                            if head.to_ascii_lowercase().contains("connection: close") {
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let h2 = {
        let (failures, answered, stop) = (failures.clone(), answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (sender, _conn) = weft_tests::h2c::connect::<Empty<bytes::Bytes>>(listen).await;
                let streams: Vec<_> = (0..3)
                    .map(|_| {
                        let mut sender = sender.clone();
                        let (failures, answered, stop) =
                            (failures.clone(), answered.clone(), stop.clone());
                        tokio::spawn(async move {
                            while !stop.load(Ordering::SeqCst) {
                                let req = hyper::Request::get("http://a/x")
                                    .body(Empty::new())
                                    .unwrap();
                                let ok = match sender.send_request(req).await {
                                    Ok(resp) => {
                                        let status = resp.status();
                                        let _ = resp.into_body().collect().await;
                                        status == 200
                                    }
                                    Err(_) => false,
                                };
                                answered.fetch_add(1, Ordering::SeqCst);
                                if !ok {
                                    failures.lock().unwrap().push((Instant::now(), "http2"));
                                }
                            }
                        })
                    })
                    .collect();
                for s in streams {
                    let _ = s.await;
                }
            });
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        failures.lock().unwrap().is_empty(),
        "failures before the kill"
    );
    let before = answered.load(Ordering::SeqCst);
    let killed = Instant::now();
    ups[0] = None;
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::SeqCst);
    for t in h1 {
        t.join().unwrap();
    }
    h2.join().unwrap();
    let failures = failures.lock().unwrap().clone();
    let after = answered.load(Ordering::SeqCst) - before;
    let last = failures
        .iter()
        .map(|(t, _)| *t - killed)
        .max()
        .unwrap_or_default();
    let by = |p: &str| failures.iter().filter(|(_, q)| *q == p).count();
    eprintln!(
        "killed 1 of 3 under load: {} of {after} requests failed after the kill \
         (http1 {}, http2 {}), the last {last:?} after it",
        failures.len(),
        by("http1"),
        by("http2")
    );
    assert!(after > 200, "too little load to judge: {after} requests");
    assert!(
        last < interval + Duration::from_millis(300),
        "failures went on {last:?} after the kill"
    );
    if retries {
        let overflow = weft.metric(&["weft_cluster_upstream_rq_retry_overflow_total"]);
        let limit = weft.metric(&["weft_cluster_upstream_rq_retry_limit_exceeded_total"]);
        assert!(
            failures.is_empty(),
            "{failures:?} (retry overflows {overflow}, limits reached {limit})"
        );
    }
}

/// With active checks, a passing check ends an outlier ejection
/// (`successful_active_health_check_uneject_host`, on by default) long before its
/// `base_ejection_time`; turned off, the ejection runs its time.
#[test]
fn a_passing_health_check_ends_an_ejection() {
    for uneject in [true, false] {
        let ups: Vec<CheckedUpstream> =
            ["a", "b"].into_iter().map(CheckedUpstream::start).collect();
        ups[0].status.store(500, Ordering::SeqCst);
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let (admin, listen) = (free_addr(), free_addr());
        let more = format!(
            "[clusters.api.health_check]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"300ms\"\n\
             [clusters.api.outlier_detection]\nconsecutive_5xx = 3\nbase_ejection_time = \"30s\"\n\
             max_ejection_percent = 50\nsuccessful_active_health_check_uneject_host = {uneject}"
        );
        let weft = Weft::start(
            "ingress",
            &cluster_config(admin, listen, &addrs, &more),
            admin,
        );
        wait_for("both healthy", Duration::from_secs(3), || {
            host_healthy(&weft, addrs[0]) == 1.0 && host_healthy(&weft, addrs[1]) == 1.0
        });
        send_until(listen, Duration::from_secs(10), || {
            outlier_metric(&weft, "weft_cluster_outlier_ejections_active", None) == 1.0
        });
        let ejected = Instant::now();
        let back = || outlier_metric(&weft, "weft_cluster_outlier_ejections_active", None) == 0.0;
        if uneject {
            wait_for("a check ends the ejection", Duration::from_secs(2), back);
            assert!(ejected.elapsed() < Duration::from_secs(2));
        } else {
            std::thread::sleep(Duration::from_millis(1500));
            assert!(
                !back(),
                "the ejection ended without its time and without the switch"
            );
        }
    }
}

/// Success-rate ejection at the sweep: of 6 endpoints with 100+ answers in an interval,
/// the one failing every other request (never 5 in a row) is ejected, the five failing
/// 1 in 100 are not; with 4 such endpoints (under `minimum_hosts`) none is judged.
#[test]
fn the_success_rate_detector_ejects_the_outlier_among_enough_endpoints() {
    for hosts in [6usize, 4] {
        let ups: Vec<CheckedUpstream> = ["a", "b", "c", "d", "e", "f"][..hosts]
            .iter()
            .map(|n| CheckedUpstream::start(n))
            .collect();
        ups[0].fail_every.store(2, Ordering::SeqCst);
        for u in &ups[1..] {
            u.fail_every.store(100, Ordering::SeqCst);
        }
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let (admin, listen) = (free_addr(), free_addr());
        let more =
            "[clusters.api.outlier_detection]\ninterval = \"1s\"\nmax_ejection_percent = 50\n\
                    success_rate = { minimum_hosts = 5, request_volume = 100 }";
        let weft = Weft::start(
            "ingress",
            &cluster_config(admin, listen, &addrs, more),
            admin,
        );
        // Over 100 answers each within an interval, on keep-alive connections; on until
        // a sweep judged them (a slow machine may split a burst over two intervals).
        let burst = || {
            let clients: Vec<_> = (0..2)
                .map(|_| {
                    std::thread::spawn(move || {
                        let mut c = weft_tests::raw::RawClient::new(listen);
                        for _ in 0..150 * hosts / 2 {
                            c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
                            c.read_response();
                        }
                    })
                })
                .collect::<Vec<_>>();
            for c in clients {
                c.join().unwrap();
            }
        };
        let enforced = || {
            outlier_metric(
                &weft,
                "weft_cluster_outlier_ejections_enforced_total",
                Some("success_rate"),
            )
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(7) && enforced() == 0.0 {
            burst();
        }
        if hosts == 6 {
            wait_for("the success-rate sweep", Duration::from_secs(8), || {
                enforced() == 1.0
            });
            let clusters = weft_tests::process::admin_clusters(admin);
            let ejected: Vec<&serde_json::Value> = clusters["clusters"][0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["health"]["outlier"] == "ejected")
                .collect();
            assert_eq!(ejected.len(), 1, "{clusters}");
            assert_eq!(ejected[0]["address"], addrs[0].to_string());
            let five = "weft_cluster_outlier_ejections_detected_total";
            assert_eq!(outlier_metric(&weft, five, Some("consecutive_5xx")), 0.0);
        } else {
            assert_eq!(enforced(), 0.0, "judged with fewer than minimum_hosts");
        }
    }
}
