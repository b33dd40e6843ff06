//! Request policy (#19): retries with budgets, against a scripted hyper upstream that
//! records what reached it, with curl (HTTP/1.1 and h2c) and tonic as clients.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tests::scripted::{Reply, Script, ScriptedUpstream, Seen};
use weft_tests::upstream::sha256_hex;
use weft_tests::{free_addr, Weft};

/// A config with listener `l` routing everything to cluster `api` (`endpoints`),
/// `route` added to the route's table and `more` after the cluster.
fn config(
    admin: std::net::SocketAddr,
    listen: std::net::SocketAddr,
    endpoints: &[std::net::SocketAddr],
    route: &str,
    more: &str,
) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[admin]\naddress = \"{admin}\"\n[runtime]\nworkers = 2\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         [[listeners.routes]]\nmatch = {{ path_prefix = \"/\" }}\ncluster = \"api\"\n{route}\n\
         [clusters.api]\nendpoints = [{}]\n{more}\n",
        list.join(", ")
    )
}

/// weft on `config(.., endpoints, route, more)`, and its listener.
fn start(
    endpoints: &[std::net::SocketAddr],
    route: &str,
    more: &str,
) -> (Weft, std::net::SocketAddr) {
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &config(admin, listen, endpoints, route, more),
        admin,
    );
    (weft, listen)
}

/// A runtime for the tokio clients (tonic, hyper).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One unary call of `path` with tonic: its status code.
async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
) -> tonic::Code {
    weft_tests::grpc::unary_status(grpc, path, b"hi").await
}

/// A script that answers 200 after `delay`.
fn delayed(delay: Duration) -> Script {
    Arc::new(move |_: &Seen, _: &[Seen]| Reply {
        delay,
        ..Reply::status(200)
    })
}

/// One request with curl (`h2`: h2c with prior knowledge): its status and its
/// response head (lowercased).
fn curl(h2: bool, url: &str, args: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "10"]);
    if h2 {
        cmd.arg("--http2-prior-knowledge");
    }
    let out = cmd.args(args).arg(url).output().expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// The statuses of `urls`, fetched in turn by one curl (one connection, kept alive).
fn curl_codes(urls: &[String]) -> Vec<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code}\n"]);
    for url in urls {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd.output().expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The first request of each `x-key` fails with `status`; later ones pass.
fn first_fails(status: u16) -> Script {
    Arc::new(move |req: &Seen, all: &[Seen]| {
        let before = all.iter().filter(|s| s.key == req.key).count();
        Reply::status(if before == 1 { status } else { 200 })
    })
}

fn always(status: u16) -> Script {
    Arc::new(move |_: &Seen, _: &[Seen]| Reply::status(status))
}

fn attempts_seen(up: &ScriptedUpstream, key: &str) -> Vec<String> {
    up.seen_with(key)
        .into_iter()
        .map(|s| s.attempt.unwrap_or_default())
        .collect()
}

/// A 503 then a 200: the client sees the 200 and that it took two attempts, the
/// upstream sees attempts 1 and 2, for every client and upstream protocol pair.
#[test]
fn an_answer_503_then_200_is_retried_on_every_protocol_pair() {
    for upstream_h2 in [false, true] {
        let up = ScriptedUpstream::start(upstream_h2, first_fails(503));
        let (admin, listen) = (free_addr(), free_addr());
        let protocol = if upstream_h2 {
            "protocol = \"http2\""
        } else {
            ""
        };
        let weft = Weft::start(
            "ingress",
            &config(
                admin,
                listen,
                &[up.addr],
                "retry = { retry_on = [\"gateway-error\"], num_retries = 2, attempt_count_header = true }",
                protocol,
            ),
            admin,
        );
        for client_h2 in [false, true] {
            let key = format!("k-{upstream_h2}-{client_h2}");
            let (status, head) = curl(
                client_h2,
                &format!("http://{listen}/x"),
                &["-H", &format!("x-key: {key}")],
            );
            let pair = format!("client h2 {client_h2}, upstream h2 {upstream_h2}");
            assert_eq!(status, 200, "{pair}: {head}");
            assert_eq!(
                header(&head, "x-weft-attempt-count"),
                Some("2"),
                "{pair}: {head}"
            );
            assert_eq!(attempts_seen(&up, &key), ["1", "2"], "{pair}");
        }
        assert_eq!(
            weft.metric(&["weft_cluster_upstream_rq_retry_total", "cluster=\"api\""]),
            2.0
        );
        assert_eq!(
            weft.metric_settled(
                &[
                    "weft_cluster_upstream_rq_retry_success_total",
                    "cluster=\"api\""
                ],
                2.0
            ),
            2.0
        );
    }
}

/// A POST whose first endpoint refuses the connection goes to the next one with the
/// same 1 KiB body (checksummed where it arrives); the application never saw the
/// first attempt, so the method does not matter.
#[test]
fn a_post_whose_connect_fails_is_sent_again_with_its_body() {
    let up = ScriptedUpstream::start(false, always(200));
    let dead = free_addr();
    let (weft, listen) = start(
        &[dead, up.addr],
        "retry = { retry_on = [\"connect-failure\"], attempt_count_header = true }",
        "",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let body: Vec<u8> = (0..1024).map(|_| fastrand::u8(..)).collect();
    let file = dir.path().join("body");
    std::fs::write(&file, &body).expect("body");
    let data = format!("@{}", file.display());
    let mut second = 0;
    for client_h2 in [false, true] {
        for i in 0..6 {
            let key = format!("post-{client_h2}-{i}");
            let (status, head) = curl(
                client_h2,
                &format!("http://{listen}/upload"),
                &["-H", &format!("x-key: {key}"), "--data-binary", &data],
            );
            assert_eq!(status, 200, "{head}");
            let seen = up.seen_with(&key);
            assert_eq!(seen.len(), 1, "{key}");
            assert_eq!(seen[0].method, "POST");
            assert_eq!(seen[0].body_sha256, sha256_hex(&body), "{key}");
            if seen[0].attempt.as_deref() == Some("2") {
                second += 1;
            }
        }
    }
    // Round robin over the two: about half went to the dead one first.
    assert!(second >= 3, "{second} of 12 were retried");
    assert_eq!(
        weft.metric(&["weft_cluster_upstream_rq_retry_total", "cluster=\"api\""]),
        f64::from(second)
    );
}

/// A body past `max_buffered_bytes` (64 KiB by default) is not kept: its 503 stands
/// and is counted; a 1 KiB one is sent again whole.
#[test]
fn bodies_past_max_buffered_bytes_are_not_retried_and_counted() {
    let up = ScriptedUpstream::start(false, always(503));
    let (weft, listen) = start(
        &[up.addr],
        "retry = { retry_on = [\"5xx\"], retry_non_idempotent = true }",
        "",
    );
    let dir = tempfile::tempdir().expect("tmp");
    for client_h2 in [false, true] {
        for (size, attempts) in [(100 * 1024, 1), (1024, 2)] {
            let body: Vec<u8> = (0..size).map(|_| fastrand::u8(..)).collect();
            let file = dir.path().join(format!("body-{size}"));
            std::fs::write(&file, &body).expect("body");
            let key = format!("big-{client_h2}-{size}");
            let (status, head) = curl(
                client_h2,
                &format!("http://{listen}/upload"),
                &[
                    "-H",
                    &format!("x-key: {key}"),
                    "--data-binary",
                    &format!("@{}", file.display()),
                ],
            );
            assert_eq!(status, 503, "{head}");
            let seen = up.seen_with(&key);
            assert_eq!(seen.len(), attempts, "{key}");
            assert!(seen.iter().all(|s| s.body_sha256 == sha256_hex(&body)));
        }
    }
    assert_eq!(
        weft.metric(&[
            "weft_retry_abandoned_total",
            "cluster=\"api\"",
            "reason=\"body_too_large\""
        ]),
        2.0
    );
}

/// With three retries, the gaps between attempts fall in Envoy's jittered bounds:
/// [0, 25), [0, 75) and [0, 175) ms (plus what an attempt itself takes here; all but
/// three of the 90, and those within twice their bound), and the third averages about
/// half its bound.
#[test]
fn backoff_gaps_fall_within_their_jitter_bounds() {
    let up = ScriptedUpstream::start(false, always(503));
    let (_weft, listen) = start(
        &[up.addr],
        "retry = { retry_on = [\"5xx\"], num_retries = 3 }",
        "",
    );
    let runs = 30;
    let mut third = Vec::new();
    // What an attempt itself may take on a loaded 2-core machine, besides its wait;
    // a few gaps may take more (a preempted curl or upstream: measured up to 36 ms more
    // beside two CPU hogs), none a whole further bound.
    let slack = Duration::from_millis(30);
    let mut late = Vec::new();
    for i in 0..runs {
        let key = format!("gap-{i}");
        let (status, _) = curl(
            i % 2 == 1,
            &format!("http://{listen}/g"),
            &["-H", &format!("x-key: {key}")],
        );
        assert_eq!(status, 503);
        let seen = up.seen_with(&key);
        assert_eq!(seen.len(), 4, "{key}");
        for (n, bound) in [(1, 25), (2, 75), (3, 175)] {
            let (gap, bound) = (seen[n].at - seen[n - 1].at, Duration::from_millis(bound));
            assert!(gap < bound * 2 + slack, "{key}: retry {n} waited {gap:?}");
            if gap >= bound + slack {
                late.push(format!("{key}: retry {n} waited {gap:?}"));
            }
        }
        third.push((seen[3].at - seen[2].at).as_secs_f64() * 1000.0);
    }
    assert!(
        late.len() <= 3,
        "{} of {} gaps past their bound: {late:?}",
        late.len(),
        runs * 3
    );
    let mean = third.iter().sum::<f64>() / third.len() as f64;
    // Uniform on [0, 175): mean 87.5, its standard error over 30 runs about 9 ms.
    assert!(
        (45.0..135.0).contains(&mean),
        "third gaps average {mean:.1} ms"
    );
}

/// A ratio budget of 20% with no free retries: when every first attempt fails,
/// about one in five is retried and the rest are counted as overflow.
#[test]
fn a_ratio_budget_holds_retries_to_a_fifth_of_requests() {
    let up = ScriptedUpstream::start(false, always(503));
    let (weft, listen) = start(
        &[up.addr],
        "retry = { retry_on = [\"5xx\"] }",
        "[clusters.api.retry_budget]\nkind = \"ratio\"\nratio = 0.2\nmin_per_sec = 0",
    );
    let requests = 500;
    let url = format!("http://{listen}/b");
    // Four connections, so both workers take part.
    let batches: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let urls: Vec<String> = (0..requests / 4).map(|_| url.clone()).collect();
                curl_codes(&urls).iter().filter(|c| *c == "503").count()
            })
        })
        .collect();
    let failed: usize = batches.into_iter().map(|b| b.join().expect("batch")).sum();
    assert_eq!(failed, requests);
    let retried = weft.metric(&["weft_cluster_upstream_rq_retry_total", "cluster=\"api\""]);
    let overflow = weft.metric(&[
        "weft_cluster_upstream_rq_retry_overflow_total",
        "cluster=\"api\"",
    ]);
    assert!((95.0..=105.0).contains(&retried), "{retried} retries");
    assert_eq!(retried + overflow, requests as f64);
    assert_eq!(up.seen().len() as f64, requests as f64 + retried);
}

/// A per-try timeout of 200 ms within a route timeout of 1 s moves a request that
/// reached a slow endpoint to the other one, in time.
#[test]
fn a_per_try_timeout_moves_a_slow_request_to_another_endpoint() {
    let slow = ScriptedUpstream::start(false, delayed(Duration::from_secs(2)));
    let fast = ScriptedUpstream::start(false, always(200));
    let (_weft, listen) = start(&[slow.addr, fast.addr], "timeout = \"1s\"\nretry = { retry_on = [\"reset\"], per_try_timeout = \"200ms\", attempt_count_header = true }", "");
    let mut moved = 0;
    for i in 0..6 {
        let key = format!("slow-{i}");
        let started = Instant::now();
        let (status, head) = curl(
            i % 2 == 0,
            &format!("http://{listen}/s"),
            &["-H", &format!("x-key: {key}")],
        );
        let took = started.elapsed();
        assert_eq!(status, 200, "{head}");
        assert!(took < Duration::from_secs(1), "{key} took {took:?}");
        if header(&head, "x-weft-attempt-count") == Some("2") {
            moved += 1;
            assert_eq!(slow.seen_with(&key).len(), 1);
        }
        assert_eq!(fast.seen_with(&key).len(), 1);
    }
    assert!(moved >= 2, "{moved} of 6 moved");
}

/// gRPC: a Trailers-Only UNAVAILABLE is retried (on the other endpoint); an
/// UNAVAILABLE in trailers after a message is the application's answer, never retried.
#[test]
fn grpc_unavailable_is_retried_only_from_a_trailers_only_answer() {
    use weft_tests::grpc::{client, GrpcUpstream};
    let good = GrpcUpstream::start();
    let bad = GrpcUpstream::start();
    bad.failing.store(true, Ordering::SeqCst);
    let (weft, listen) = start(
        &[good.addr, bad.addr],
        "retry = { retry_grpc_on = [\"unavailable\"] }",
        "protocol = \"http2\"",
    );
    let rt = runtime();
    let (unary, streamed) = rt.block_on(async {
        let mut grpc = client(listen).await;
        let mut unary = Vec::new();
        for _ in 0..10 {
            unary.push(self::unary(&mut grpc, "/test.Echo/Unary").await);
        }
        let mut streamed = Vec::new();
        for _ in 0..10 {
            let code =
                weft_tests::grpc::streaming_status(&mut grpc, "/test.Echo/Repeat", b"2").await;
            streamed.push(code);
        }
        (unary, streamed)
    });
    assert!(unary.iter().all(|c| *c == tonic::Code::Ok), "{unary:?}");
    let retried = weft.metric(&["weft_cluster_upstream_rq_retry_total", "cluster=\"api\""]);
    assert!(retried >= 3.0, "{retried} unary calls retried");
    let failed = streamed
        .iter()
        .filter(|c| **c == tonic::Code::Unavailable)
        .count();
    assert!(failed >= 3, "{streamed:?}");
    assert_eq!(
        weft.metric(&["weft_cluster_upstream_rq_retry_total", "cluster=\"api\""]),
        retried,
        "a status after data is never retried"
    );
}

/// Killing one of three gRPC endpoints under steady load from tonic clients, with
/// gRPC health checks and a retry policy: not one call fails.
#[test]
fn killing_one_of_three_grpc_endpoints_with_retries_loses_no_call() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Mutex;
    use weft_tests::grpc::{client, GrpcUpstream};
    let mut ups: Vec<Option<GrpcUpstream>> = (0..3).map(|_| Some(GrpcUpstream::start())).collect();
    let addrs: Vec<_> = ups.iter().flatten().map(|u| u.addr).collect();
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &config(
            admin,
            listen,
            &addrs,
            "",
            "protocol = \"http2\"\n\
             [clusters.api.health_check]\nkind = \"grpc\"\ninterval = \"500ms\"\ntimeout = \"250ms\"\nunhealthy_threshold = 1\n\
             [clusters.api.retry]\nretry_on = [\"connect-failure\", \"reset\", \"refused-stream\"]\n\
             retry_grpc_on = [\"unavailable\"]\nnum_retries = 2\n\
             [clusters.api.circuit_breakers]\nmax_retries = 32",
        ),
        admin,
    );
    std::thread::sleep(Duration::from_millis(700));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (failures, answered, stop) = (failures.clone(), answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let tasks: Vec<_> = (0..3)
                    .map(|_| {
                        let (failures, answered, stop) =
                            (failures.clone(), answered.clone(), stop.clone());
                        tokio::spawn(async move {
                            let mut grpc = client(listen).await;
                            while !stop.load(Ordering::SeqCst) {
                                let code = unary(&mut grpc, "/test.Echo/Unary").await;
                                if code != tonic::Code::Ok {
                                    failures.lock().expect("failures").push(format!("{code:?}"));
                                }
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    let before = answered.load(Ordering::SeqCst);
    ups[0] = None;
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::SeqCst);
    load.join().expect("load");
    let after = answered.load(Ordering::SeqCst) - before;
    assert!(after > 200, "too little load to judge: {after} calls");
    let failures = failures.lock().expect("failures").clone();
    let retried = weft.metric(&["weft_cluster_upstream_rq_retry_total", "cluster=\"api\""]);
    assert!(
        failures.is_empty(),
        "{} of {after} calls failed after the kill ({retried} retries): {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // The kill did cut calls off: they were made again.
    assert!(retried >= 1.0, "no call was retried");
}

/// `h2load` (HTTP/2, or `--h1`) against `url`: the responses by status class.
fn h2load(url: &str, requests: usize, h1: bool, headers: &[&str]) -> [usize; 6] {
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", &requests.to_string(), "-c", "4", "-m", "4"]);
    if h1 {
        cmd.arg("--h1");
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("h2load said: {text}"));
    // "status codes: 7000 2xx, 0 3xx, 0 4xx, 3000 5xx"
    let mut classes = [0usize; 6];
    for part in line.trim_start_matches("status codes:").split(',') {
        let mut words = part.split_whitespace();
        if let (Some(n), Some(class)) = (words.next(), words.next()) {
            if let (Ok(n), Some(c)) = (n.parse::<usize>(), class.chars().next()) {
                classes[c.to_digit(10).unwrap_or(0) as usize] = n;
            }
        }
    }
    classes
}

/// A route whose every request is aborted with 503: the upstream gets none, and
/// `aborts_injected` counts them all, from both client protocols.
#[test]
fn a_full_abort_never_reaches_the_upstream() {
    let up = ScriptedUpstream::start(false, always(200));
    let (weft, listen) = start(
        &[up.addr],
        "name = \"faulty\"\nfault = { abort = { http_status = 503, percent = 100.0 } }",
        "",
    );
    let url = format!("http://{listen}/a");
    let h2 = h2load(&url, 500, false, &[]);
    let h1 = h2load(&url, 500, true, &[]);
    assert_eq!((h2[5], h1[5]), (500, 500), "h2 {h2:?} h1 {h1:?}");
    let (status, head) = curl(false, &url, &[]);
    assert_eq!(status, 503);
    assert_eq!(header(&head, "x-weft-error"), Some("fault injected"));
    assert!(up.seen().is_empty(), "the upstream got {}", up.seen().len());
    assert_eq!(
        weft.metric_settled(
            &["weft_route_fault_aborts_injected_total", "route=\"faulty\""],
            1001.0
        ),
        1001.0
    );
}

/// A 30% abort over 10,000 requests aborts 30% +- 1.5%.
#[test]
fn a_thirty_percent_abort_holds_its_share() {
    let up = ScriptedUpstream::start(false, always(200));
    let (_weft, listen) = start(
        &[up.addr],
        "fault = { abort = { http_status = 503, percent = 30.0 } }",
        "",
    );
    let url = format!("http://{listen}/a");
    let h2 = h2load(&url, 5000, false, &[]);
    let h1 = h2load(&url, 5000, true, &[]);
    let aborted = h2[5] + h1[5];
    assert_eq!(h2[2] + h1[2] + aborted, 10_000);
    assert!(
        (2850..=3150).contains(&aborted),
        "{aborted} of 10000 aborted"
    );
    assert_eq!(up.seen().len(), 10_000 - aborted);
}

/// A 100 ms delay on every request shows in the median; with `max_active_faults = 2`,
/// five requests at once get two delays and three overflows.
#[test]
fn delays_show_in_the_median_and_stop_at_max_active_faults() {
    let up = ScriptedUpstream::start(false, always(200));
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &format!(
            "{}\n[[listeners.routes]]\nname = \"few\"\nmatch = {{ path_prefix = \"/few\" }}\ncluster = \"api\"\n\
             fault = {{ delay = {{ fixed = \"1s\", percent = 100.0 }}, max_active_faults = 2 }}\n",
            config(
                admin,
                listen,
                &[up.addr],
                "fault = { delay = { fixed = \"100ms\", percent = 100.0 } }",
                "",
            )
            .replace(
                "[[listeners.routes]]\nmatch = { path_prefix = \"/\" }",
                "[[listeners.routes]]\nname = \"slow\"\nmatch = { path_prefix = \"/slow\" }",
            )
        ),
        admin,
    );
    let mut took: Vec<Duration> = (0..15)
        .map(|i| {
            let started = Instant::now();
            let (status, _) = curl(i % 2 == 0, &format!("http://{listen}/slow"), &[]);
            assert_eq!(status, 200);
            started.elapsed()
        })
        .collect();
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median >= Duration::from_millis(100) && median < Duration::from_millis(180),
        "median {median:?}"
    );
    let at_once: Vec<_> = (0..5)
        .map(|i| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let (status, _) = curl(i % 2 == 0, &format!("http://{listen}/few"), &[]);
                (status, started.elapsed())
            })
        })
        .collect();
    let results: Vec<(u16, Duration)> = at_once
        .into_iter()
        .map(|t| t.join().expect("curl"))
        .collect();
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let delayed = results
        .iter()
        .filter(|(_, t)| *t >= Duration::from_millis(900))
        .count();
    assert_eq!(delayed, 2, "{results:?}");
    assert_eq!(
        weft.metric(&["weft_route_fault_overflow_total", "route=\"few\""]),
        3.0
    );
    assert_eq!(
        weft.metric(&["weft_route_fault_active", "route=\"few\""]),
        0.0
    );
}

/// A gRPC abort is a Trailers-Only answer with the configured status, which a tonic
/// client reports as such.
#[test]
fn a_grpc_abort_reaches_tonic_as_its_status() {
    use weft_tests::grpc::{client, GrpcUpstream};
    let up = GrpcUpstream::start();
    let (_weft, listen) = start(
        &[up.addr],
        "fault = { abort = { grpc_status = 7, percent = 100.0 } }",
        "protocol = \"http2\"",
    );
    let rt = runtime();
    let code = rt.block_on(async { unary(&mut client(listen).await, "/test.Echo/Unary").await });
    assert_eq!(code, tonic::Code::PermissionDenied);
}

/// Header-controlled faults: only where the route allows them, and never more often
/// than its configured percentage (50% here, though the header asks for 100%).
#[test]
fn header_controlled_aborts_are_capped_by_the_route() {
    let up = ScriptedUpstream::start(false, always(200));
    let (admin, listen) = (free_addr(), free_addr());
    let base = config(
        admin,
        listen,
        &[up.addr],
        "fault = { abort = { percent = 50.0 }, allow_header_control = true }",
        "",
    )
    .replace(
        "[[listeners.routes]]\nmatch = { path_prefix = \"/\" }",
        "[[listeners.routes]]\nmatch = { path_prefix = \"/test\" }",
    );
    let cfg = format!(
        "{base}\n[[listeners.routes]]\nmatch = {{ path_prefix = \"/\" }}\ncluster = \"api\"\n\
         fault = {{ abort = {{ http_status = 503, percent = 0.0 }} }}\n"
    );
    let _weft = Weft::start("ingress", &cfg, admin);
    let ask = [
        "x-weft-fault-abort-request: 418",
        "x-weft-fault-abort-request-percentage: 100",
    ];
    let asked = h2load(&format!("http://{listen}/test"), 1000, false, &ask);
    assert!((400..=600).contains(&asked[4]), "{asked:?}");
    let not_asked = h2load(&format!("http://{listen}/test"), 200, true, &[]);
    assert_eq!(not_asked[2], 200, "{not_asked:?}");
    let not_allowed = h2load(&format!("http://{listen}/other"), 200, false, &ask);
    assert_eq!(not_allowed[2], 200, "{not_allowed:?}");
}

/// A process-wide limit of 10 a second, a burst of 50 requests from 4 connections
/// (which SO_REUSEPORT spreads over the 2 workers): exactly 10 pass (the bucket fills a
/// second after its first use, and the burst takes a few milliseconds).
#[test]
fn a_process_rate_limit_is_exact_across_workers() {
    let up = ScriptedUpstream::start(false, always(200));
    let (weft, listen) = start(&[up.addr], "name = \"limited\"\nrate_limit = { max_tokens = 10, tokens_per_fill = 10, fill_interval = \"1s\" }", "");
    let h1 = h2load(&format!("http://{listen}/r"), 50, true, &[]);
    assert_eq!((h1[2], h1[4]), (10, 40), "{h1:?}");
    assert_eq!(up.seen().len(), 10);
    let limited = weft.metric(&[
        "weft_rate_limit_limited_total",
        "route=\"limited\"",
        "scope=\"process\"",
    ]);
    assert_eq!(limited, 40.0);
}

/// `x-ratelimit-remaining` counts down on the answers that pass, and the one over
/// the limit is 429 with `remaining: 0` and the seconds to the next fill; a gRPC call
/// over it gets RESOURCE_EXHAUSTED.
#[test]
fn rate_limit_headers_count_down_and_grpc_is_resource_exhausted() {
    let up = ScriptedUpstream::start(false, always(200));
    let (_weft, listen) = start(
        &[up.addr],
        "rate_limit = { max_tokens = 5, fill_interval = \"30s\", x_ratelimit_headers = true }",
        "",
    );
    for (i, want) in ["4", "3", "2", "1", "0"].iter().enumerate() {
        let (status, head) = curl(i % 2 == 1, &format!("http://{listen}/c"), &[]);
        assert_eq!(status, 200, "{head}");
        assert_eq!(header(&head, "x-ratelimit-limit"), Some("5"));
        assert_eq!(
            header(&head, "x-ratelimit-remaining"),
            Some(*want),
            "{head}"
        );
    }
    let (status, head) = curl(false, &format!("http://{listen}/c"), &[]);
    assert_eq!(status, 429, "{head}");
    assert_eq!(header(&head, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&head, "x-weft-ratelimited"), Some("true"));
    let reset: u32 = header(&head, "x-ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .expect("reset");
    assert!((1..=30).contains(&reset), "{reset}");
    let rt = runtime();
    let code = rt.block_on(async {
        unary(
            &mut weft_tests::grpc::client(listen).await,
            "/test.Echo/Unary",
        )
        .await
    });
    assert_eq!(code, tonic::Code::ResourceExhausted);
}

/// Keyed by source IP, 127.0.0.2 using up its bucket leaves 127.0.0.3's whole.
#[test]
fn a_source_ip_rate_limit_keeps_clients_apart() {
    let up = ScriptedUpstream::start(false, always(200));
    let (_weft, listen) = start(
        &[up.addr],
        "rate_limit = { max_tokens = 3, fill_interval = \"60s\", key = \"source_ip\" }",
        "",
    );
    let url = format!("http://{listen}/ip");
    let from = |ip: &str| -> Vec<u16> {
        (0..5)
            .map(|_| curl(false, &url, &["--interface", ip]).0)
            .collect()
    };
    assert_eq!(from("127.0.0.2"), [200, 200, 200, 429, 429]);
    assert_eq!(from("127.0.0.3"), [200, 200, 200, 429, 429]);
}

/// A listener's limit counts every request of the listener, whatever its route.
#[test]
fn a_listener_rate_limit_covers_every_route() {
    let up = ScriptedUpstream::start(false, always(200));
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = config(admin, listen, &[up.addr], "", "").replace(
        "[[listeners.routes]]",
        "rate_limit = { max_tokens = 4, fill_interval = \"60s\", scope = \"worker\" }\n[[listeners.routes]]",
    );
    let cfg = format!(
        "{cfg}\n[[listeners.routes]]\nmatch = {{ path_prefix = \"/\" }}\ndirect_response = {{ status = 200, body = \"x\" }}\n"
    )
    .replace(
        "match = { path_prefix = \"/\" }\ncluster = \"api\"",
        "match = { path_prefix = \"/up\" }\ncluster = \"api\"",
    );
    let weft = Weft::start("ingress", &cfg, admin);
    // One connection, one worker: its share is 2 of the 4.
    let codes = curl_codes(&[
        format!("http://{listen}/up"),
        format!("http://{listen}/other"),
        format!("http://{listen}/up"),
        format!("http://{listen}/other"),
    ]);
    assert_eq!(codes, ["200", "200", "429", "429"]);
    assert_eq!(
        weft.metric(&["weft_rate_limit_ok_total", "route=\"\"", "scope=\"worker\""]),
        2.0
    );
}

/// Two clusters, v1 and v2, behind a cookie canary route, a query route and a 90/10
/// split (sticky by `x-user-id` when `sticky`).
fn canary_config(
    admin: std::net::SocketAddr,
    listen: std::net::SocketAddr,
    v1: std::net::SocketAddr,
    v2: std::net::SocketAddr,
    sticky: bool,
) -> String {
    let sticky = if sticky {
        "sticky = { header = \"x-user-id\" }"
    } else {
        ""
    };
    format!(
        "[admin]\naddress = \"{admin}\"\n[runtime]\nworkers = 2\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         [[listeners.routes]]\nmatch = {{ path_prefix = \"/\", cookie = {{ name = \"canary\", exact = \"always\" }} }}\ncluster = \"v2\"\n\
         [[listeners.routes]]\nmatch = {{ path_prefix = \"/\", query = [ {{ name = \"version\", exact = \"2\" }} ] }}\ncluster = \"v2\"\n\
         [[listeners.routes]]\nmatch = {{ path_prefix = \"/\" }}\n\
         split = [ {{ cluster = \"v1\", weight = 90 }}, {{ cluster = \"v2\", weight = 10 }} ]\n{sticky}\n\
         [clusters.v1]\nendpoints = [\"{v1}\"]\n[clusters.v2]\nendpoints = [\"{v2}\"]\n"
    )
}

/// A `canary=always` cookie (among others) goes to v2 every time, as does
/// `?version=2`; the rest follows the 90/10 weights.
#[test]
fn a_canary_cookie_goes_to_v2_and_the_rest_follows_the_weights() {
    let v1 = ScriptedUpstream::start(false, always(200));
    let v2 = ScriptedUpstream::start(false, always(200));
    let (admin, listen) = (free_addr(), free_addr());
    let _weft = Weft::start(
        "ingress",
        &canary_config(admin, listen, v1.addr, v2.addr, false),
        admin,
    );
    let url = format!("http://{listen}/page");
    let canary = h2load(&url, 1000, false, &["cookie: a=1; canary=always; b=2"]);
    assert_eq!(canary[2], 1000);
    assert_eq!((v1.seen().len(), v2.seen().len()), (0, 1000));
    let query = h2load(&format!("{url}?x=1&version=2"), 500, true, &[]);
    assert_eq!(query[2], 500);
    assert_eq!((v1.seen().len(), v2.seen().len()), (0, 1500));
    let not_quite = h2load(&url, 10_000, false, &["cookie: canary=sometimes"]);
    assert_eq!(not_quite[2], 10_000);
    let to_v2 = v2.seen().len() - 1500;
    assert!((800..=1200).contains(&to_v2), "{to_v2} of 10000 went to v2");
}

/// With `sticky = { header = "x-user-id" }`, each of 1,000 users lands on one side,
/// whichever of two connections (and so workers) carries its requests, and about a
/// tenth of them on v2.
#[test]
fn a_sticky_split_keeps_each_user_on_one_side() {
    use http_body_util::{BodyExt, Empty};
    let v1 = ScriptedUpstream::start(false, always(200));
    let v2 = ScriptedUpstream::start(false, always(200));
    let (admin, listen) = (free_addr(), free_addr());
    let _weft = Weft::start(
        "ingress",
        &canary_config(admin, listen, v1.addr, v2.addr, true),
        admin,
    );
    let rt = runtime();
    rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..2 {
            let (sender, conn) = weft_tests::h2c::connect::<Empty<bytes::Bytes>>(listen).await;
            std::mem::forget(conn);
            senders.push(sender);
        }
        for user in 0..1000 {
            for (c, sender) in senders.iter_mut().enumerate() {
                let req = hyper::Request::get("http://a/u")
                    .header("x-user-id", format!("user-{user}"))
                    .header("x-key", format!("{user}-{c}"))
                    .body(Empty::new())
                    .expect("request");
                let resp = sender.send_request(req).await.expect("answer");
                assert_eq!(resp.status(), 200);
                let _ = resp.into_body().collect().await;
            }
        }
    });
    let side = |key: &str| -> &str {
        if v2.seen_with(key).is_empty() {
            "v1"
        } else {
            "v2"
        }
    };
    let mut on_v2 = 0;
    for user in 0..1000 {
        let (a, b) = (side(&format!("{user}-0")), side(&format!("{user}-1")));
        assert_eq!(a, b, "user-{user} moved");
        on_v2 += usize::from(a == "v2");
    }
    assert_eq!(v1.seen().len() + v2.seen().len(), 2000);
    assert!((60..=140).contains(&on_v2), "{on_v2} of 1000 users on v2");
}

/// A config whose route to `api` mirrors `percent` of its requests to `shadow`.
fn mirror_config(
    admin: std::net::SocketAddr,
    listen: std::net::SocketAddr,
    primary: std::net::SocketAddr,
    shadow: std::net::SocketAddr,
    percent: f64,
    shadow_more: &str,
) -> String {
    format!(
        "{}\n[clusters.shadow]\nendpoints = [\"{shadow}\"]\n{shadow_more}\n",
        config(
            admin,
            listen,
            &[primary],
            &format!(
                "name = \"mirrored\"\nmirror = {{ cluster = \"shadow\", percent = {percent:.1} }}"
            ),
            "",
        )
    )
}

/// Every request is copied to a mirror that takes 2 s to answer: the primary answers
/// as fast as without it, and the mirror gets each request with its body and its
/// `Host`, from both client protocols.
#[test]
fn a_slow_mirror_never_holds_the_primary() {
    let primary = ScriptedUpstream::start(false, always(200));
    let shadow = ScriptedUpstream::start(true, delayed(Duration::from_secs(2)));
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &mirror_config(
            admin,
            listen,
            primary.addr,
            shadow.addr,
            100.0,
            "protocol = \"http2\"",
        ),
        admin,
    );
    let dir = tempfile::tempdir().expect("tmp");
    let body: Vec<u8> = (0..1024).map(|_| fastrand::u8(..)).collect();
    let file = dir.path().join("body");
    std::fs::write(&file, &body).expect("body");
    let data = format!("@{}", file.display());
    let mut took = Vec::new();
    for i in 0..40 {
        let key = format!("m-{i}");
        let started = Instant::now();
        let (status, _) = curl(
            i % 2 == 1,
            &format!("http://{listen}/m"),
            &[
                "-H",
                &format!("x-key: {key}"),
                "-H",
                "host: shop.example",
                "--data-binary",
                &data,
            ],
        );
        took.push(started.elapsed());
        assert_eq!(status, 200);
    }
    took.sort();
    let p99 = took[took.len() - 1];
    assert!(
        p99 < Duration::from_millis(150),
        "slowest primary answer {p99:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while shadow.seen().len() < 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let copies = shadow.seen();
    assert_eq!(copies.len(), 40);
    assert!(copies.iter().all(|c| c.body_sha256 == sha256_hex(&body)));
    assert!(
        copies.iter().all(|c| c.host == "shop.example"),
        "{:?}",
        copies[0].host
    );
    assert_eq!(primary.seen().len(), 40);
    assert_eq!(
        weft.metric_settled(
            &["weft_route_mirror_sent_total", "route=\"mirrored\""],
            40.0
        ),
        40.0
    );
}

/// A mirror that is down costs the primary nothing; its failures are counted.
#[test]
fn a_dead_mirror_leaves_the_primary_whole() {
    let primary = ScriptedUpstream::start(false, always(200));
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &mirror_config(admin, listen, primary.addr, free_addr(), 100.0, ""),
        admin,
    );
    let answered = h2load(&format!("http://{listen}/d"), 500, false, &[]);
    assert_eq!(answered[2], 500, "{answered:?}");
    let failed = weft.metric_settled(
        &["weft_route_mirror_failed_total", "route=\"mirrored\""],
        500.0,
    );
    assert_eq!(failed, 500.0);
}

/// A 25% mirror copies 25% +- 2.5% of 4,000 requests; a mirror cluster whose
/// breaker is full skips the copy, counted.
#[test]
fn a_quarter_mirror_holds_its_share_and_a_full_breaker_skips() {
    let primary = ScriptedUpstream::start(false, always(200));
    let shadow = ScriptedUpstream::start(false, always(200));
    let (admin, listen) = (free_addr(), free_addr());
    let _weft = Weft::start(
        "ingress",
        &mirror_config(admin, listen, primary.addr, shadow.addr, 25.0, ""),
        admin,
    );
    h2load(&format!("http://{listen}/q"), 4000, true, &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = shadow.seen().len();
        if now == last {
            break;
        }
        last = now;
    }
    assert!((900..=1100).contains(&last), "{last} of 4000 mirrored");

    let slow = ScriptedUpstream::start(false, delayed(Duration::from_millis(500)));
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &mirror_config(
            admin,
            listen,
            primary.addr,
            slow.addr,
            100.0,
            "circuit_breakers = { max_requests = 2 }",
        ),
        admin,
    );
    let answered = h2load(&format!("http://{listen}/b"), 20, false, &[]);
    assert_eq!(answered[2], 20);
    let skipped = weft.metric(&[
        "weft_route_mirror_skipped_total",
        "route=\"mirrored\"",
        "reason=\"overflow\"",
    ]);
    assert!(skipped >= 10.0, "{skipped} skipped");
}

/// Bad policies are refused by `weft check` with `FILE: key: problem`, every one of
/// them, and good ones are printed in the config's spellings.
#[test]
fn bad_policies_are_refused_with_their_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("weft.toml");
    let bad = "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\
        [[listeners.routes]]\nmatch = { path_prefix = \"/\", cookie = { name = \"c\", exact = \"a\", regex = \"b\" } }\n\
        cluster = \"api\"\n\
        retry = { retry_on = [\"5xxx\"], num_retries = 0 }\n\
        fault = { abort = { http_status = 700, percent = 120.0 } }\n\
        rate_limit = { max_tokens = 0, fill_interval = \"10ms\", key = \"who\" }\n\
        mirror = { cluster = \"nowhere\" }\n\
        [[listeners.routes]]\nmatch = { path_prefix = \"/s\" }\ncluster = \"api\"\nsticky = { header = \"x-u\" }\n\
        [clusters.api]\nendpoints = [\"127.0.0.1:2\"]\n\
        [clusters.api.retry_budget]\nkind = \"ratio\"\nratio = -1.0\n";
    std::fs::write(&file, bad).expect("config");
    let out =
        weft_tests::process::weft_output(&["check", "--config", file.to_str().expect("path")]);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for key in [
        "listeners[0].routes[0].match.cookie[0]: use only one of exact, prefix and regex",
        "listeners[0].routes[0].retry.retry_on[0]: unknown condition `5xxx`",
        "listeners[0].routes[0].retry.num_retries: must be at least 1",
        "listeners[0].routes[0].fault.abort.http_status: must be between 200 and 599",
        "listeners[0].routes[0].fault.abort.percent: is a percentage",
        "listeners[0].routes[0].rate_limit.max_tokens: must be at least 1",
        "listeners[0].routes[0].rate_limit.fill_interval: must be at least 50ms",
        "listeners[0].routes[0].rate_limit.key: unknown key `who`",
        "listeners[0].routes[0].mirror.cluster: unknown cluster `nowhere`",
        "listeners[0].routes[1].sticky: only applies to a split",
        "clusters.api.retry_budget.ratio: retries per request",
    ] {
        let prefix = format!("{}:", file.display());
        assert!(
            text.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(&format!(": {key}"))),
            "{key} missing in:\n{text}"
        );
    }
}

/// With `retry_injected`, a fault's abort is the first attempt's answer and is
/// retried (upstream): every request of a 50% abort route passes; without it, about
/// half stand as 503.
#[test]
fn injected_aborts_are_retried_only_when_the_route_says_so() {
    let up = ScriptedUpstream::start(false, always(200));
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = config(
        admin,
        listen,
        &[up.addr],
        "fault = { abort = { http_status = 503, percent = 50.0 } }\n\
         retry = { retry_on = [\"gateway-error\"], retry_injected = true }",
        // 16 requests in flight, half of them retried: more than the default 3 at once.
        "circuit_breakers = { max_retries = 100 }",
    )
    .replace(
        "match = { path_prefix = \"/\" }",
        "match = { path_prefix = \"/retried\" }",
    );
    let cfg = format!(
        "{cfg}\n[[listeners.routes]]\nmatch = {{ path_prefix = \"/\" }}\ncluster = \"api\"\n\
         fault = {{ abort = {{ http_status = 503, percent = 50.0 }} }}\n\
         retry = {{ retry_on = [\"gateway-error\"] }}\n"
    );
    // The second route must come before the clusters: rebuild the file in order.
    let (head, clusters) = cfg.split_once("[clusters.api]").expect("clusters");
    let (clusters, second) = clusters
        .split_once("\n[[listeners.routes]]")
        .expect("second");
    let cfg = format!("{head}[[listeners.routes]]{second}\n[clusters.api]{clusters}\n");
    let _weft = Weft::start("ingress", &cfg, admin);
    let retried = h2load(&format!("http://{listen}/retried"), 400, false, &[]);
    assert_eq!(retried[2], 400, "{retried:?}");
    let standing = h2load(&format!("http://{listen}/other"), 400, true, &[]);
    assert!((140..=260).contains(&standing[5]), "{standing:?}");
}
