//! Security II: what a client or an upstream could make weft say or do that it should
//! not. Each test here failed before its fix (the item numbers are issue #17's).

use std::process::Command;
use std::time::Duration;

use weft_tests::raw::{read_until_close, RawClient};
use weft_tests::recording::{RecordingUpstream, SeenRequest};
use weft_tests::{curl_status, free_addr, Weft};

fn one_cluster(
    admin: std::net::SocketAddr,
    listen: std::net::SocketAddr,
    origin: std::net::SocketAddr,
) -> String {
    format!(
        "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [\n\
           {{ match = {{ path_prefix = \"/local\" }}, direct_response = {{ status = 200, body = \"here\" }} }},\n\
           {{ match = {{ path_prefix = \"/\" }}, cluster = \"o\" }},\n\
         ]\n\n[clusters.o]\nendpoints = [\"{origin}\"]\n"
    )
}

/// A config whose route answers 403 to requests with header `name: value` (any of
/// its values) and sends the rest to `origin`; `extra` goes before the listener.
fn deny_on_header(
    (admin, listen, origin): (
        std::net::SocketAddr,
        std::net::SocketAddr,
        std::net::SocketAddr,
    ),
    (name, value): (&str, &str),
    extra: &str,
) -> String {
    format!(
        "[admin]\naddress = \"{admin}\"\n{extra}\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [\n\
           {{ match = {{ path_prefix = \"/\", headers = [{{ name = \"{name}\", value = \"{value}\" }}] }}, direct_response = {{ status = 403 }} }},\n\
           {{ match = {{ path_prefix = \"/\" }}, cluster = \"o\" }},\n\
         ]\n\n[clusters.o]\nendpoints = [\"{origin}\"]\n"
    )
}

/// The statuses of `requests`, sent one after another on one HTTP/2 connection (a
/// CONNECT keeps its request side open, as a tunnel would).
fn h2_statuses(listen: std::net::SocketAddr, requests: Vec<http::Request<()>>) -> Vec<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(listen)
            .await
            .expect("connect");
        let (mut send, conn) = h2::client::handshake(tcp).await.expect("handshake");
        tokio::spawn(conn);
        let mut statuses = Vec::new();
        for req in requests {
            send = send.ready().await.expect("ready");
            let end = req.method() != http::Method::CONNECT;
            let (response, _) = send.send_request(req, end).expect("send");
            statuses.push(response.await.expect("response").status().as_u16());
        }
        statuses
    })
}

/// The status of one HTTP/1.1 request (`GET path`) on a new connection.
fn h1_status(listen: std::net::SocketAddr, path: &str, host: &str) -> u16 {
    let mut c = RawClient::new(listen);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    c.read_response().0
}

/// Item 21: an upstream's own `x-weft-error` would pass for an error weft made (and
/// hide which side failed); it never reaches the client, over either client protocol.
#[test]
fn an_upstreams_x_weft_error_is_dropped() {
    let origin = RecordingUpstream::answering(|_: &SeenRequest| {
        b"HTTP/1.1 200 OK\r\nx-weft-error: no healthy endpoints\r\nx-app: kept\r\ncontent-length: 2\r\n\r\nok".to_vec()
    });
    let (listen, admin) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &one_cluster(admin, listen, origin.addr), admin);
    let mut h1 = RawClient::new(listen);
    h1.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, head, body) = h1.read_response();
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("x-app: kept") && !head.contains("x-weft-error"),
        "{head}"
    );

    let out = Command::new("curl")
        .args(["-s", "-i", "--http2-prior-knowledge", "--max-time", "5"])
        .arg(format!("http://{listen}/b"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(
        text.contains("x-app: kept") && !text.contains("x-weft-error"),
        "{text}"
    );
}

/// Item 11: every interim response an upstream sent was relayed, thousands of them.
/// Past `MAX_INTERIM_RESPONSES` (16) the response is refused as a bad one (502).
#[test]
fn an_upstream_may_not_flood_interim_responses() {
    let origin = RecordingUpstream::answering(|req: &SeenRequest| {
        let n = if req.line.contains("/flood") { 5000 } else { 3 };
        let mut out = b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n".repeat(n);
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        out
    });
    let (listen, admin) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &one_cluster(admin, listen, origin.addr), admin);

    // A few are passed on to an HTTP/1.1 client, then the final answer.
    let mut c = RawClient::new(listen);
    c.send(b"GET /few HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..3 {
        assert_eq!(c.read_response().0, 103);
    }
    assert_eq!(c.read_response().0, 200);

    let mut s = weft_tests::raw::connect(listen);
    std::io::Write::write_all(&mut s, b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let text = read_until_close(&mut s, Duration::from_secs(5));
    let interim = text.matches("HTTP/1.1 103").count();
    assert!(interim <= 16, "{interim} interim responses relayed");
    assert!(
        text.contains("HTTP/1.1 502") && text.contains("too many interim responses"),
        "{}",
        &text[text.len().saturating_sub(400)..]
    );
}

/// Item 10: a local answer kept an HTTP/1.0 keep-alive connection open without saying
/// `Connection: keep-alive`, so the client took the answer to end it.
#[test]
fn local_answers_tell_an_http10_client_its_connection_stays() {
    let origin = RecordingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &one_cluster(admin, listen, origin.addr), admin);
    let mut c = RawClient::new(listen);
    for _ in 0..2 {
        c.send(b"GET /local HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
        let (status, head, body) = c.read_response();
        assert_eq!((status, body.as_slice()), (200, &b"here"[..]), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: keep-alive"),
            "{head}"
        );
    }
}

/// Item 9: what `weft check`, a reload and startup accept must agree and must not let a
/// config inject response fields or unbounded buffers: CR/LF in a direct response's
/// content type or a redirect's host, `max_header_bytes = 2^62`, a CPU outside the
/// affinity mask (startup refused it while `check` passed it).
#[test]
fn check_refuses_header_injection_unbounded_heads_and_absent_cpus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\nroutes = [ { match = { path_prefix = \"/\" }, direct_response = { status = 200, content_type = \"text/plain\\r\\nset-cookie: a=b\" } } ]\n",
            "listeners[0].routes[0].direct_response.content_type: header values cannot contain control characters",
        ),
        (
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\nroutes = [ { match = { path_prefix = \"/\" }, redirect = { host = \"a.example\\r\\nset-cookie: a=b\" } } ]\n",
            "listeners[0].routes[0].redirect.host: ",
        ),
        (
            // A control byte HTTP/2 heads would refuse: the same edit on both protocols.
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\nroutes = [ { match = { path_prefix = \"/\" }, direct_response = { status = 200 }, response_headers = { add = { x-a = \"a\\u0001b\" } } } ]\n",
            "listeners[0].routes[0].response_headers.add.x-a: header values cannot contain control characters",
        ),
        (
            "[http]\nmax_header_bytes = 4611686018427387904\n[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\nroutes = [ { match = { path_prefix = \"/\" }, direct_response = { status = 200 } } ]\n",
            "http.max_header_bytes: must be between 1024 and 1048576",
        ),
        (
            "[runtime]\ncpus = [999]\n[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\nroutes = [ { match = { path_prefix = \"/\" }, direct_response = { status = 200 } } ]\n",
            "runtime.cpus: CPU 999 is not in this process's affinity mask",
        ),
    ];
    for (i, (config, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, config).expect("write");
        let o =
            weft_tests::process::weft_output(&["check", "--config", path.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "case {i} passed check: {err}");
        assert!(err.contains(expected), "case {i}: {err}");
    }
}

/// Item 17: `admin.example.com.` (the same name, fully qualified) went past a route for
/// `admin.example.com` to whatever matched next, in `Host` and in `:authority`.
#[test]
fn a_trailing_dot_in_the_host_meets_the_same_routes() {
    let origin = RecordingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [\n\
           {{ match = {{ host = \"admin.example.com\" }}, direct_response = {{ status = 403, body = \"no\" }} }},\n\
           {{ match = {{ path_prefix = \"/\" }}, cluster = \"o\" }},\n\
         ]\n\n[clusters.o]\nendpoints = [\"{}\"]\n",
        origin.addr
    );
    let _weft = Weft::start("ingress", &config, admin);
    for host in [
        "admin.example.com",
        "admin.example.com.",
        "ADMIN.example.com.:80",
    ] {
        assert_eq!(h1_status(listen, "/x", host), 403, "Host: {host}");
    }
    let status = curl_status(&[
        "--http2-prior-knowledge",
        "--connect-to",
        &format!("admin.example.com.:80:{listen}"),
        "http://admin.example.com./x",
    ]);
    assert_eq!(status, "403");
    assert!(
        origin.request_lines().is_empty(),
        "{:?}",
        origin.request_lines()
    );
    // Hosts that are neither a name nor an IP literal are refused; the upstream gets
    // the host routing saw (lowercase, no trailing dot), port as sent.
    for host in ["evil.example/x", "a b", "a\\b", "x:8o", "\"q\""] {
        assert_eq!(h1_status(listen, "/x", host), 400, "Host: {host}");
    }
    assert_eq!(h1_status(listen, "/x", "Shop.Example.COM.:8080"), 200);
    let requests = origin.requests.lock().unwrap();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].head.contains("host: shop.example.com:8080\r\n"),
        "{}",
        requests[0].head
    );
}

/// Item 8: userinfo in an absolute-form target or in `Host` (`evil@host`), and `GET *`,
/// were accepted and forwarded. They are 400, over HTTP/1.1 and (userinfo in
/// `:authority`) HTTP/2.
#[test]
fn userinfo_and_the_asterisk_form_are_refused() {
    let origin = RecordingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &one_cluster(admin, listen, origin.addr), admin);
    for request in [
        "GET http://evil@origin/x HTTP/1.1\r\nHost: origin\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: evil@origin\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: origin\r\n\r\n",
    ] {
        let mut c = RawClient::new(listen);
        c.send(request.as_bytes());
        let (status, head, _) = c.read_response();
        assert_eq!(status, 400, "{request:?}: {head}");
    }
    let req = http::Request::get("http://evil@origin/x")
        .body(())
        .expect("request");
    assert_eq!(h2_statuses(listen, vec![req]), [400]);
    assert!(
        origin.request_lines().is_empty(),
        "{:?}",
        origin.request_lines()
    );
}

/// Item 18: a cluster pointing back at weft turned one request into thousands of hops
/// and descriptors. `Via` names each weft process; a request that comes back carrying
/// its own name is answered 508 at once, and a cluster whose endpoint is weft's own
/// listener or admin address is refused by `weft check`.
#[test]
fn loops_are_cut_by_via_and_refused_in_config() {
    let (a, b) = (free_addr(), free_addr());
    let (admin_a, admin_b) = (free_addr(), free_addr());
    let via = |admin: std::net::SocketAddr,
               listen: std::net::SocketAddr,
               next: std::net::SocketAddr| {
        format!(
            "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
             routes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"next\" }} ]\n\n\
             [clusters.next]\nendpoints = [\"{next}\"]\n"
        )
    };
    // Two wefts, each the other's upstream.
    let weft_a = Weft::start("ingress", &via(admin_a, a, b), admin_a);
    let weft_b = Weft::start("ingress", &via(admin_b, b, a), admin_b);
    assert_eq!(h1_status(a, "/x", "x"), 508);
    // One round trip: A forwarded once, B once, A refused the second arrival. (Each
    // request is counted when its exchange is over, just after its last byte went to
    // the client: the counts are awaited, not read at once.)
    assert_eq!(weft_a.metric_settled(&["weft_requests_total"], 2.0), 2.0);
    assert_eq!(weft_b.metric_settled(&["weft_requests_total"], 1.0), 1.0);

    // A cluster that is weft's own listener never gets to run.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("self.toml");
    std::fs::write(&path, via(free_addr(), a, a)).expect("write");
    let o = weft_tests::process::weft_output(&["check", "--config", path.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("clusters.next.endpoints[0]") && err.contains("weft's own listener `l`"),
        "{err}"
    );
}

/// Item 16: a route on `x-tenant: blocked` was passed by a second field (`X-Tenant: ok`
/// first) and, over HTTP/2, by the value with whitespace around it. Every value is
/// matched now, and a padded HTTP/2 value is malformed (400).
#[test]
fn header_routes_see_every_value_and_padded_h2_values_are_refused() {
    let origin = RecordingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let config = deny_on_header((admin, listen, origin.addr), ("x-tenant", "blocked"), "");
    let _weft = Weft::start("ingress", &config, admin);
    let mut c = RawClient::new(listen);
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Tenant: ok\r\nX-Tenant: blocked\r\n\r\n");
    assert_eq!(c.read_response().0, 403);
    c.send(b"GET /b HTTP/1.1\r\nHost: x\r\nX-Tenant: ok\r\n\r\n");
    assert_eq!(c.read_response().0, 200);

    let requests = ["blocked ", " blocked", "blocked\t", "blocked"]
        .into_iter()
        .map(|value| {
            http::Request::get("http://x/c")
                .header("x-tenant", value)
                .body(())
                .expect("request")
        })
        .collect();
    let statuses = h2_statuses(listen, requests);
    assert_eq!(statuses, [400, 400, 400, 403]);
    assert_eq!(
        origin.request_lines(),
        ["GET /b"],
        "only the request with no match went on"
    );
}

/// Item 3: a route that answers `/admin` itself was bypassed by other spellings of the
/// same path, over HTTP/1.1 and HTTP/2, and `prefix_rewrite` forwarded dot segments.
/// Paths are normalised before routing and forwarding; one that climbs above `/` is
/// 400; a listener with `paths.normalize = false` keeps them as received.
#[test]
fn every_spelling_of_a_path_meets_its_route() {
    let origin = RecordingUpstream::start();
    let (listen, raw_listen, admin) = (free_addr(), free_addr(), free_addr());
    let routes = "routes = [\n\
           { match = { path_prefix = \"/admin\" }, direct_response = { status = 403 } },\n\
           { match = { path_prefix = \"/api/\" }, cluster = \"o\", prefix_rewrite = \"/v1/\" },\n\
           { match = { path_prefix = \"/\" }, cluster = \"o\" },\n\
         ]";
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n{routes}\n\n\
         [[listeners]]\nname = \"raw\"\naddress = \"{raw_listen}\"\npaths = {{ normalize = false }}\n{routes}\n\n\
         [clusters.o]\nendpoints = [\"{}\"]\n",
        origin.addr
    );
    let weft = Weft::start("ingress", &config, admin);
    let get = |addr, path| h1_status(addr, path, "x");
    for path in [
        "/admin",
        "/%61dmin",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/%2e/admin/",
    ] {
        assert_eq!(get(listen, path), 403, "{path}");
    }
    for path in ["/../admin", "/%2e%2e/admin", "/a/../../admin"] {
        assert_eq!(get(listen, path), 400, "{path}");
    }
    // Forwarded as normalised, the prefix rewrite applied to the normal form.
    assert_eq!(get(listen, "/api/../api/./users//1?q=%2e"), 200);
    assert_eq!(get(listen, "/%7Euser/a"), 200);
    let status = curl_status(&[
        "--http2-prior-knowledge",
        "--path-as-is",
        &format!("http://{listen}/x/../%61dmin"),
    ]);
    assert_eq!(status, "403");
    assert_eq!(
        origin.request_lines(),
        ["GET /v1/users/1?q=%2e", "GET /~user/a"],
        "what the upstream was sent"
    );
    // The listener that opted out keeps paths as received.
    assert_eq!(get(raw_listen, "/%61dmin"), 200);
    assert_eq!(
        origin.request_lines().last().map(String::as_str),
        Some("GET /%61dmin")
    );
    assert_eq!(
        weft.metric_settled(&["weft_normalized_paths_total", "outcome=\"refused\""], 3.0),
        3.0
    );
}

/// Items 6 and 15 (in part): a client's `Transfer_Encoding`, `X_Forwarded_For` or
/// `x_forwarded_client_cert` reached the origin, whose framework (CGI, WSGI, ...) reads
/// `_` as `-` and so believed the client's copy of what weft vouches for. Such
/// underscore spellings of weft-managed fields are dropped, over HTTP/1.1 and HTTP/2.
#[test]
fn underscore_spellings_of_managed_fields_are_dropped() {
    let origin = RecordingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &one_cluster(admin, listen, origin.addr), admin);
    let forged = [
        ("Transfer_Encoding", "chunked"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("x_forwarded_client_cert", "URI=spiffe://mesh/sa/admin"),
        ("X_Forwarded_Proto", "https"),
    ];
    let mut request = String::from("GET /h1 HTTP/1.1\r\nHost: x\r\nX_App_Id: kept\r\n");
    for (n, v) in forged {
        request += &format!("{n}: {v}\r\n");
    }
    request += "\r\n";
    let mut c = RawClient::new(listen);
    c.send(request.as_bytes());
    assert_eq!(c.read_response().0, 200);
    let mut args = vec![
        "-s".to_owned(),
        "-o".into(),
        "/dev/null".into(),
        "--http2-prior-knowledge".into(),
        "-H".into(),
        "X_App_Id: kept".into(),
    ];
    for (n, v) in forged {
        args.push("-H".into());
        args.push(format!("{n}: {v}"));
    }
    args.push(format!("http://{listen}/h2"));
    let out = Command::new("curl").args(&args).output().expect("curl");
    assert!(out.status.success());
    let seen = origin.received_text().to_ascii_lowercase();
    assert_eq!(seen.matches("x_app_id: kept").count(), 2, "{seen}");
    for (n, v) in forged {
        assert!(
            !seen.contains(&n.to_ascii_lowercase()) && !seen.contains(&v.to_ascii_lowercase()),
            "{n} reached the origin:\n{seen}"
        );
    }
}

/// Item 21: interim responses reached HTTP/1.1 clients as the upstream's raw bytes,
/// `Connection`-listed and framing fields included. They are re-serialised as final
/// heads are.
#[test]
fn interim_responses_are_reserialised() {
    let origin = RecordingUpstream::answering(|_: &SeenRequest| {
        let mut out = b"HTTP/1.1 103 Whatever\r\nLink: </s.css>; rel=preload\r\nConnection: x-secret\r\nX-Secret: 1\r\nx-weft-error: forged\r\nContent-Length: 7\r\n\r\n".to_vec();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        out
    });
    let (listen, admin) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &one_cluster(admin, listen, origin.addr), admin);
    let mut c = RawClient::new(listen);
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, head, _) = c.read_response();
    assert_eq!(status, 103, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 103 early hints\r\n"), "{head}");
    assert!(lower.contains("link: </s.css>; rel=preload"), "{head}");
    for gone in ["x-secret", "x-weft-error", "content-length", "connection"] {
        assert!(!lower.contains(gone), "{gone} in {head}");
    }
    let (status, _, body) = c.read_response();
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
}

/// Item 19 (in part): an HTTP/2 CONNECT (no `:path`) was sent on as
/// `CONNECT / HTTP/1.1`, and an HTTP/2 client's cookies, one field each as HTTP/2 has
/// them, reached HTTP/1.1 upstreams as several `cookie` lines. CONNECT is 501 until
/// tunnels over HTTP/2 exist; cookies are joined with "; " (RFC 9113 §8.2.3).
#[test]
fn h2_connect_is_refused_and_split_cookies_are_joined() {
    let origin = RecordingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &one_cluster(admin, listen, origin.addr), admin);
    let connect = http::Request::builder()
        .method("CONNECT")
        .uri("origin:443")
        .body(())
        .expect("request");
    let cookies = http::Request::get("http://x/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(())
        .expect("request");
    assert_eq!(h2_statuses(listen, vec![connect, cookies]), [501, 200]);
    let seen = origin.received_text().to_ascii_lowercase();
    assert!(!seen.contains("connect"), "{seen}");
    assert_eq!(seen.matches("cookie:").count(), 1, "{seen}");
    assert!(seen.contains("cookie: a=1; b=2; c=3\r\n"), "{seen}");
}

/// Item 13: a registry entry may point anywhere; one at the cloud metadata address,
/// `0.0.0.0`, a multicast group or loopback (unless the cluster allows it) made weft
/// send clients' requests there. A discovered endpoint of those kinds is refused like
/// a broken one: the cluster keeps its last good endpoints and its source reads stale.
#[test]
fn discovered_endpoints_may_not_point_at_metadata_or_unspecified_addresses() {
    let origin = RecordingUpstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("eps.toml");
    std::fs::write(&file, format!("endpoints = [\"{}\"]\n", origin.addr)).expect("write");
    std::fs::write(
        dir.path().join("strict.toml"),
        format!("endpoints = [\"{}\"]\n", origin.addr),
    )
    .expect("write");
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [\n\
           {{ match = {{ path_prefix = \"/strict\" }}, cluster = \"strict\" }},\n\
           {{ match = {{ path_prefix = \"/\" }}, cluster = \"d\" }},\n\
         ]\n\n\
         [clusters.d]\ndiscovery = {{ file = \"eps.toml\", allow_loopback = true }}\n\
         [clusters.strict]\ndiscovery = {{ file = \"strict.toml\" }}\n"
    );
    let weft = Weft::start_in(dir.path(), "ingress", &config, admin);
    let get = || h1_status(listen, "/x", "x");
    // The first answers of the sources are published just after the start.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "discovered endpoint not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Loopback only where the cluster allows it: the same entry is refused elsewhere.
    assert_eq!(h1_status(listen, "/strict", "x"), 503);
    assert!(weft
        .admin_get("/config")
        .1
        .contains("is loopback (allowed with"));
    for bad in ["169.254.169.254:80", "0.0.0.0:80"] {
        std::fs::write(&file, format!("endpoints = [\"{bad}\"]\n")).expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while weft.metric(&["weft_discovery_stale", "cluster=\"d\""]) != 1.0 {
            assert!(std::time::Instant::now() < deadline, "{bad} not refused");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(weft.admin_get("/config").1.contains(&format!("`{bad}` is")));
        assert_eq!(get(), 200, "{bad}: the last good endpoint still serves");
        // Back to good, so the next bad one is a change again.
        std::fs::write(&file, format!("endpoints = [\"{}\"]\n", origin.addr)).expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while weft.metric(&["weft_discovery_stale", "cluster=\"d\""]) != 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "good endpoints not taken back"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One raw request to the admin listener with `host` as its Host: (status, body).
fn admin_with_host(admin: std::net::SocketAddr, path: &str, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Item 14: a client trickling a byte a second neither holds the admin listener (the
/// probes are answered meanwhile) nor its own connection past the request deadline;
/// past the connection cap a client is told `503` at once.
#[test]
fn the_admin_listener_outlasts_slow_and_many_clients() {
    use std::io::{Read, Write};
    let (admin, listen, origin) = (free_addr(), free_addr(), free_addr());
    let weft = Weft::start("ingress", &one_cluster(admin, listen, origin), admin);

    let mut slow = std::net::TcpStream::connect(admin).expect("connect");
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut probes = 0;
    while started.elapsed() < Duration::from_secs(8) {
        if slow.write_all(b"G").is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let probe = std::time::Instant::now();
        assert_eq!(weft.admin_get("/ready").0, 200);
        assert!(
            probe.elapsed() < Duration::from_millis(900),
            "a probe waited {:?}",
            probe.elapsed()
        );
        probes += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let held = started.elapsed();
    let _ = slow.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        held < Duration::from_secs(5),
        "the trickling client was held {held:?}"
    );
    assert!(probes >= 3);
    assert_eq!(
        weft.metric(&["weft_admin_refused_total", "reason=\"deadline\""]),
        1.0
    );

    // The cap: idle connections up to it are each held; one more is answered at once.
    let idle: Vec<_> = (0..16)
        .map(|_| std::net::TcpStream::connect(admin).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = std::net::TcpStream::connect(admin).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut out = String::new();
    let _ = extra.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 503"), "{out:?}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(weft.admin_get("/ready").0, 200);
    assert!(weft.metric(&["weft_admin_refused_total", "reason=\"busy\""]) >= 1.0);
}

/// Item 14: a page that rebinds its own name to 127.0.0.1 reads nothing (the admin
/// answers only IP-literal or localhost Hosts), and `/config` shows no secrets.
#[test]
fn the_admin_listener_refuses_rebound_names_and_hides_secrets() {
    let (admin, listen, origin) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n[consul]\ntoken = \"consul-secret\"\n\
         [[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"o\", \
           request_headers = {{ add = {{ authorization = \"Bearer route-secret\" }} }}, \
           response_headers = {{ add = {{ x-api-key = \"key-secret\" }} }} }} ]\n\
         [clusters.o]\nendpoints = [\"{origin}\"]\n"
    );
    let weft = Weft::start("ingress", &config, admin);
    for host in [
        "evil.example",
        "evil.example:9901",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
    ] {
        assert_eq!(admin_with_host(admin, "/config", host).0, 403, "{host}");
    }
    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".into(),
    ] {
        assert_eq!(admin_with_host(admin, "/ready", &host).0, 200, "{host}");
    }
    assert_eq!(
        weft.metric(&["weft_admin_refused_total", "reason=\"host\""]),
        4.0
    );
    let (status, body) = weft.admin_get("/config");
    assert_eq!(status, 200);
    for secret in ["consul-secret", "route-secret", "key-secret"] {
        assert!(!body.contains(secret), "{secret} shown: {body}");
    }
    assert!(
        body.contains("authorization") && body.contains("<redacted>"),
        "{body}"
    );
}

/// Item 14: with `admin.private_address` on a unix socket, `/config` and `/metrics` are
/// answered there only (owner-only file), and `admin.address` keeps the probes.
#[test]
fn config_and_metrics_can_move_to_a_private_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let (admin, listen, origin) = (free_addr(), free_addr(), free_addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    let config = one_cluster(admin, listen, origin).replacen(
        "\n\n[[listeners]]",
        &format!(
            "\nprivate_address = \"unix:{}\"\n\n[[listeners]]",
            socket.display()
        ),
        1,
    );
    let weft = Weft::start("ingress", &config, admin);
    assert_eq!(weft.admin_get("/ready").0, 200);
    assert_eq!(weft.admin_get("/config").0, 404);
    assert_eq!(weft.admin_get("/metrics").0, 404);
    let mode = std::fs::metadata(&socket)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for (path, want) in [("/config", "private_address"), ("/metrics", "weft_workers")] {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "--unix-socket"])
            .arg(&socket)
            .arg(format!("http://localhost{path}"))
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains(want), "{path}: {body}");
    }
    let out = weft_tests::process::weft_output(&[
        "check",
        "--config",
        weft.config_path.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("unix:{}", socket.display())),
        "{text}"
    );
}

/// `subjectAltName` for openssl's extension file: one URI SAN of any bytes, written as
/// raw DER (openssl's own syntax cannot carry CR/LF).
fn raw_uri_san(uri: &[u8]) -> String {
    let name = [&[0x86, uri.len() as u8][..], uri].concat();
    let names = [&[0x30, name.len() as u8][..], &name].concat();
    let hex: String = names.iter().map(|b| format!("{b:02x}")).collect();
    format!("DER:{hex}")
}

/// Item 12: the identity weft vouches for is encoded, never pasted. A CA-signed client
/// certificate whose URI SAN carries CR/LF is refused (counted) and injects nothing; one
/// with XFCC delimiters in its URI gets it quoted, so no element or pair is added; and
/// certificates without SANs are told apart by `Hash=` and `Subject=`.
#[test]
fn forwarded_client_identities_are_encoded_not_pasted() {
    use weft_tests::pki::{Pki, CLIENT, SERVER};
    let pki = Pki::new();
    pki.leaf("server", "edge.test", "DNS:edge.test", SERVER);
    let injected = b"spiffe://mesh/a\r\nx-forwarded-client-cert: URI=spiffe://mesh/sa/admin";
    pki.leaf("crlf", "crlf", &raw_uri_san(injected), CLIENT);
    pki.leaf(
        "delims",
        "delims",
        &raw_uri_san(b"spiffe://mesh/a;URI=spiffe://mesh/sa/admin,By=x"),
        CLIENT,
    );
    pki.leaf("bare1", "bare one", "DNS:unused.test", CLIENT);
    for name in ["nosan1", "nosan2"] {
        pki.leaf_with_extensions(name, "same", "extendedKeyUsage=clientAuth\n", 1);
    }
    let origin = RecordingUpstream::start();
    let (admin, listen) = (free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         tls = {{ certificates = [ {{ cert = \"server.crt\", key = \"server.key\" }} ], \
           client_auth = {{ ca = \"ca.crt\", mode = \"require\" }} }}\n\
         routes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"o\" }} ]\n\
         [clusters.o]\nendpoints = [\"{}\"]\n",
        origin.addr
    );
    let weft = Weft::start_in(pki.dir.path(), "ingress", &config, admin);
    let curl = |cert: &str, flag: &str| {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", flag, "--cacert"])
            .arg(pki.path("ca.crt"))
            .arg("--cert")
            .arg(pki.path(&format!("{cert}.crt")))
            .arg("--key")
            .arg(pki.path(&format!("{cert}.key")))
            .arg("--resolve")
            .arg(format!("edge.test:{}:127.0.0.1", listen.port()))
            .arg(format!("https://edge.test:{}/{cert}", listen.port()))
            .output()
            .expect("curl")
    };
    let xfcc_of = |path: &str| -> Vec<String> {
        let requests = origin.requests.lock().unwrap();
        let seen = requests
            .iter()
            .find(|r| r.line.starts_with(&format!("GET /{path}")))
            .unwrap_or_else(|| panic!("/{path} did not arrive"));
        seen.head
            .lines()
            .filter(|l| {
                l.to_ascii_lowercase()
                    .starts_with("x-forwarded-client-cert:")
            })
            .map(|l| l["x-forwarded-client-cert:".len()..].trim().to_owned())
            .collect()
    };

    for flag in ["--http1.1", "--http2"] {
        assert!(!curl("crlf", flag).status.success(), "{flag}");
    }
    assert!(
        origin.request_lines().is_empty(),
        "{:?}",
        origin.request_lines()
    );
    assert_eq!(
        weft.metric(&[
            "weft_tls_handshake_failures_total",
            "reason=\"unsafe_identity\""
        ]),
        2.0
    );
    assert!(
        weft.log().contains("client certificate refused"),
        "{}",
        weft.log()
    );

    assert!(curl("delims", "--http1.1").status.success());
    let xfcc = xfcc_of("delims");
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    assert!(xfcc[0].starts_with("Hash="), "{xfcc:?}");
    assert!(
        xfcc[0].ends_with(
            r#";Subject="CN=delims";URI="spiffe://mesh/a;URI=spiffe://mesh/sa/admin,By=x""#
        ),
        "{xfcc:?}"
    );

    for cert in ["nosan1", "nosan2", "bare1"] {
        assert!(curl(cert, "--http2").status.success(), "{cert}");
    }
    let (one, two) = (xfcc_of("nosan1"), xfcc_of("nosan2"));
    assert_eq!(one.len(), 1);
    assert!(one[0].ends_with(r#";Subject="CN=same""#), "{one:?}");
    assert_ne!(
        one, two,
        "two certificates without SANs must not share an identity"
    );
    assert!(xfcc_of("bare1")[0].ends_with(r#";Subject="CN=bare one";DNS=unused.test"#));
}

/// Item 15: what a client says about itself in forwarding fields is believed only
/// from behind a trusted proxy. At an edge (the default) the upstream learns what weft
/// saw; with `trusted_sources`, the element a trusted peer appended is kept (and the
/// forged ones before it are not), over HTTP/1.1 and HTTP/2 alike.
#[test]
fn forwarding_fields_are_believed_only_from_trusted_proxies() {
    let forged = [
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-For: 198.51.100.7",
        "Forwarded: for=6.6.6.6;proto=https;host=bank.example",
        "Forwarded: for=198.51.100.7",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: bank.example",
        "X-Forwarded-Port: 443",
        "X-Real-IP: 6.6.6.6",
    ];
    let seen = |trusted: &str| -> Vec<String> {
        let origin = RecordingUpstream::start();
        let (admin, listen) = (free_addr(), free_addr());
        let config = one_cluster(admin, listen, origin.addr).replacen(
            "\n\n[[listeners]]",
            &format!("\n[http.forwarded]\nforwarded = true\n{trusted}\n\n[[listeners]]"),
            1,
        );
        let _weft = Weft::start("ingress", &config, admin);
        for flag in ["--http1.1", "--http2-prior-knowledge"] {
            let mut cmd = Command::new("curl");
            cmd.args(["-s", "-o", "/dev/null", "--max-time", "5", flag]);
            for h in forged {
                cmd.args(["-H", h]);
            }
            assert!(cmd
                .arg(format!("http://{listen}/x"))
                .status()
                .unwrap()
                .success());
        }
        let requests = origin.requests.lock().unwrap();
        assert_eq!(requests.len(), 2);
        requests
            .iter()
            .map(|r| {
                let mut fields: Vec<String> = r
                    .head
                    .lines()
                    .skip(1)
                    .filter(|l| {
                        let l = l.to_ascii_lowercase();
                        l.starts_with("x-forwarded")
                            || l.starts_with("forwarded")
                            || l.starts_with("x-real-ip")
                    })
                    .map(|l| {
                        l.to_ascii_lowercase()
                            .replace(&listen.to_string(), "LISTEN")
                    })
                    .collect();
                fields.sort();
                fields.join("\n")
            })
            .collect()
    };
    let edge = seen("");
    assert_eq!(edge[0], edge[1], "HTTP/1.1 and HTTP/2 differ");
    assert_eq!(
        edge[0],
        "forwarded: for=127.0.0.1;proto=http;host=\"LISTEN\"\nx-forwarded-for: 127.0.0.1\nx-forwarded-proto: http",
        "at an edge"
    );
    let behind = seen("trusted_sources = [\"127.0.0.0/8\"]");
    assert_eq!(behind[0], behind[1], "HTTP/1.1 and HTTP/2 differ");
    assert_eq!(
        behind[0],
        "forwarded: for=127.0.0.1;proto=http;host=\"LISTEN\"\nforwarded: for=198.51.100.7\n\
         x-forwarded-for: 198.51.100.7, 127.0.0.1\nx-forwarded-host: bank.example\n\
         x-forwarded-port: 443\nx-forwarded-proto: https\nx-real-ip: 6.6.6.6",
        "behind a trusted proxy"
    );
}

/// Item 4: only upgrades the route allows are tunnelled (`websocket` by default); an
/// `Upgrade: h2c` is dropped with its `HTTP2-Settings`, so a client cannot speak
/// HTTP/2 to an origin past every route, and any other protocol is refused with 403.
#[test]
fn only_allowed_upgrades_are_forwarded() {
    let origin = RecordingUpstream::start();
    let (admin, listen) = (free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [\n\
           {{ match = {{ path_prefix = \"/foo/\" }}, cluster = \"o\", upgrades = [\"foo\"] }},\n\
           {{ match = {{ path_prefix = \"/\" }}, cluster = \"o\" }},\n\
         ]\n[clusters.o]\nendpoints = [\"{}\"]\n",
        origin.addr
    );
    let _weft = Weft::start("ingress", &config, admin);
    let ask = |path: &str, connection: &str, upgrade: &str| {
        let mut c = RawClient::new(listen);
        c.send(
            format!(
                "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\n\
                 HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
            )
            .as_bytes(),
        );
        let (status, head, _) = c.read_response();
        (status, head)
    };
    for connection in ["Upgrade, HTTP2-Settings", "Upgrade"] {
        assert_eq!(ask("/h2c", connection, "h2c").0, 200);
    }
    let (status, head) = ask("/x", "Upgrade", "foo");
    assert_eq!(status, 403);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-weft-error: this route does not allow"),
        "{head}"
    );
    assert_eq!(ask("/x", "Upgrade", "websocket, h2c").0, 403);
    assert_eq!(ask("/foo/y", "Upgrade", "foo/2").0, 200);

    let requests = origin.requests.lock().unwrap();
    let lines: Vec<&str> = requests.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines,
        ["GET /h2c", "GET /h2c", "GET /foo/y"],
        "refused upgrades never reach the origin"
    );
    for r in &requests[..2] {
        let head = r.head.to_ascii_lowercase();
        assert!(
            !head.contains("upgrade") && !head.contains("http2-settings"),
            "{head}"
        );
    }
    let head = requests[2].head.to_ascii_lowercase();
    assert!(
        head.contains("upgrade: foo/2") && head.contains("connection: upgrade"),
        "{head}"
    );
}

/// Item 5: a tunnel (WebSocket) with no byte either way for `http.tunnel_idle_timeout`
/// is closed; traffic keeps it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_are_closed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = weft_tests::upstream::TestUpstream::start("app");
    let (admin, listen) = (free_addr(), free_addr());
    let config = one_cluster(admin, listen, app.addr).replacen(
        "\n\n[[listeners]]",
        "\n[http]\ntunnel_idle_timeout = \"700ms\"\n\n[[listeners]]",
        1,
    );
    let _weft = Weft::start("ingress", &config, admin);
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{listen}/ws"))
        .await
        .expect("websocket through weft");
    assert_eq!(resp.status(), 101);
    // Busy for three timeouts: never cut.
    for i in 0..10 {
        ws.send(Message::Text(format!("ping {i}"))).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap(), format!("ping {i}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then silent: closed within the timeout (and a little).
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(end.is_ok(), "the idle tunnel stayed open");
    assert!(!matches!(end, Ok(Some(Ok(Message::Text(_))))), "{end:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A GOAWAY frame: the last stream the sender processes, and its error code.
fn goaway(last_stream: u32, code: u32) -> Vec<u8> {
    let mut payload = last_stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    weft_tests::h2frames::frame(0x7, 0, 0, &payload)
}

/// Item 1: a stream above the last-stream-id of an upstream's GOAWAY was never
/// processed (RFC 9113 §6.8), so it goes again on a new connection instead of 502.
#[test]
fn streams_a_goaway_left_unprocessed_go_again() {
    use std::sync::atomic::Ordering;
    let h2_cluster = |admin, listen, upstream| {
        one_cluster(admin, listen, upstream)
            .replace("endpoints = [", "protocol = \"http2\"\nendpoints = [")
    };
    let (upstream, connections) = weft_tests::h2frames::upstream(|index, conn| {
        weft_tests::h2frames::serve_connection(conn, |stream| {
            if index == 0 {
                // "Streams up to one before yours": this one was not processed.
                goaway(stream.saturating_sub(2), 0)
            } else {
                // :status 200 (static index 8), END_HEADERS | END_STREAM.
                weft_tests::h2frames::frame(0x1, 0x5, stream, &[0x88])
            }
        })
    });
    let (admin, listen) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &h2_cluster(admin, listen, upstream), admin);
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let status = curl_status(&[flag, &format!("http://{listen}/x")]);
        assert_eq!(status, "200", "{flag}");
    }
    assert!(connections.load(Ordering::SeqCst) >= 2);

    // A GOAWAY that counts the stream as processed, then a closed connection: that
    // request may have had effects, and is not sent again.
    let (upstream, connections) = weft_tests::h2frames::upstream(|_, conn| {
        let closer = conn.try_clone().unwrap();
        weft_tests::h2frames::serve_connection(conn, |stream| {
            let _ = std::io::Write::write_all(&mut &closer, &goaway(stream, 2));
            let _ = closer.shutdown(std::net::Shutdown::Both);
            Vec::new()
        })
    });
    let (admin, listen) = (free_addr(), free_addr());
    let _weft = Weft::start("ingress", &h2_cluster(admin, listen, upstream), admin);
    assert_eq!(curl_status(&[&format!("http://{listen}/x")]), "502");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "a processed stream went again"
    );
}

/// Item 19: HTTP/2 requests meet the same head limits as HTTP/1.1 ones
/// (`http.max_headers`, `http.max_header_bytes`: 431); a `host` header matcher reads
/// the authority routing uses (`:authority`, an absolute-form target), and an HTTP/2
/// `host` that names another authority than `:authority` is malformed (400).
#[test]
fn http2_heads_meet_the_http1_limits_and_host_means_the_authority() {
    let origin = RecordingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let config = deny_on_header(
        (admin, listen, origin.addr),
        ("host", "admin.example"),
        "[http]\nmax_headers = 20\nmax_header_bytes = 2048\n",
    );
    let _weft = Weft::start("ingress", &config, admin);
    let with_fields = |n: usize, len: usize| {
        let mut b = http::Request::get("http://x/many");
        for i in 0..n {
            b = b.header(format!("x-f{i}"), "v".repeat(len));
        }
        b.body(()).expect("request")
    };
    let get = |uri: &str| http::Request::get(uri).body(()).expect("request");
    let two_hosts = http::Request::get("http://x/two")
        .header("host", "admin.example")
        .body(())
        .expect("request");
    let statuses = h2_statuses(
        listen,
        vec![
            with_fields(18, 10),
            with_fields(21, 10),
            with_fields(5, 500),
            get("http://admin.example/h2"),
            two_hosts,
        ],
    );
    assert_eq!(statuses, [200, 431, 431, 403, 400]);
    // HTTP/1.1: an absolute-form target is the authority, whatever `Host` says.
    assert_eq!(h1_status(listen, "http://admin.example/h1", "x"), 403);
    assert_eq!(h1_status(listen, "/h1", "admin.example"), 403);
    assert_eq!(origin.request_lines(), ["GET /many"]);
}

/// Items 13 and 20: plain text a network could read or forge is said at load: a
/// Consul agent off this host without `consul.tls`, and a sidecar inbound taking plain
/// text from other hosts (`weft check` prints it; start and reload log it).
#[test]
fn plain_text_to_a_remote_agent_or_from_other_hosts_is_warned_of() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("w.toml");
    std::fs::write(
        &file,
        "[consul]\naddress = \"10.1.2.3:8500\"\n[sidecar.inbound]\naddress = \"0.0.0.0:15006\"\n\
         app = \"127.0.0.1:9080\"\n[sidecar.outbound]\naddress = \"127.0.0.1:15001\"\n\
         [clusters.b]\ndiscovery = { consul = { service = \"b\" } }\n",
    )
    .expect("write");
    let out = weft_tests::process::weft_output(&["check", "--config", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: ")
            && text.contains("consul.address: `10.1.2.3:8500` is not on this host"),
        "{text}"
    );
    assert!(
        text.contains("sidecar.inbound.address: 0.0.0.0:15006 takes plain text"),
        "{text}"
    );
    let quiet = std::fs::read_to_string(&file)
        .unwrap()
        .replace("10.1.2.3", "127.0.0.1")
        .replace("0.0.0.0:15006", "127.0.0.1:15006");
    std::fs::write(&file, quiet).expect("write");
    let out = weft_tests::process::weft_output(&["check", "--config", file.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

/// Item 20: a listener with `alpn = ["h2"]` serves no HTTP/1.1, not even to a client
/// that offers no ALPN (counted as `alpn`); and a session ticket outlives a reload (a
/// ticketer made per compile once made every ticket useless after each).
#[test]
fn h2_only_listeners_refuse_http1_and_tickets_outlive_reloads() {
    use weft_tests::pki::{Pki, SERVER};
    let pki = Pki::new();
    pki.leaf("server", "a.test", "DNS:a.test", SERVER);
    let (admin, any, h2_only) = (free_addr(), free_addr(), free_addr());
    let listener = |name: &str, addr: std::net::SocketAddr, alpn: &str, body: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\naddress = \"{addr}\"\n\
             tls = {{ certificates = [ {{ cert = \"server.crt\", key = \"server.key\" }} ]{alpn} }}\n\
             routes = [ {{ match = {{ path_prefix = \"/\" }}, direct_response = {{ status = 200, body = \"{body}\" }} }} ]\n"
        )
    };
    let config = |body: &str| {
        format!(
            "[admin]\naddress = \"{admin}\"\n{}{}",
            listener("any", any, "", body),
            listener("h2", h2_only, ", alpn = [\"h2\"]", body)
        )
    };
    let weft = Weft::start_in(pki.dir.path(), "ingress", &config("v1"), admin);
    let curl = |addr: std::net::SocketAddr, flag: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", flag, "--cacert"])
            .arg(pki.path("ca.crt"))
            .arg("--resolve")
            .arg(format!("a.test:{}:127.0.0.1", addr.port()))
            .arg(format!("https://a.test:{}/", addr.port()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(h2_only, "--http2"), "v1");
    assert_eq!(curl(h2_only, "--no-alpn"), "");
    assert_eq!(curl(any, "--no-alpn"), "v1");
    assert_eq!(
        weft.metric(&[
            "weft_tls_handshake_failures_total",
            "listener=\"h2\"",
            "reason=\"alpn\""
        ]),
        1.0
    );

    let s_client = |args: &[&str]| {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &any.to_string(),
                "-servername",
                "a.test",
                "-tls1_2",
            ])
            .args(args)
            .current_dir(pki.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl");
        let mut out = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = child.wait();
        out
    };
    assert!(s_client(&["-sess_out", "session.pem"]).contains("New, TLS"));
    std::fs::write(&weft.config_path, config("v2")).expect("rewrite config");
    weft.signal(1); // SIGHUP
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while curl(any, "--http1.1") != "v2" {
        assert!(std::time::Instant::now() < deadline, "reload not served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed = s_client(&["-sess_in", "session.pem"]);
    assert!(resumed.contains("Reused, TLS"), "{resumed}");
}
