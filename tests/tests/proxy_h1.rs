//! HTTP/1.1 proxying through the real weft binary: real clients (hyper, curl, raw
//! sockets) against a real upstream (hyper).

use std::net::SocketAddr;
use std::process::Command;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_tests::raw::{self, RawClient};

use weft_tests::upstream::{big_body_byte, sha256_hex, TestUpstream};
use weft_tests::{free_addr, Weft};

struct Setup {
    weft: Weft,
    listen: SocketAddr,
    _api: TestUpstream,
    api_conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn setup() -> Setup {
    let api = TestUpstream::start("api");
    let listen: SocketAddr = free_addr();
    let admin: SocketAddr = free_addr();
    let config = format!(
        r#"
[admin]
address = "{admin}"

[http]
max_request_body_bytes = 20000000

[[listeners]]
name = "public"
address = "{listen}"

  [[listeners.routes]]
  name = "rewritten"
  match = {{ path_prefix = "/old/" }}
  cluster = "api"
  prefix_rewrite = "/new/"
  request_headers = {{ add = {{ "x-added" = "yes" }}, remove = ["x-remove-me"] }}
  response_headers = {{ add = {{ "x-served-by" = "weft" }}, remove = ["x-secret"] }}

  [[listeners.routes]]
  name = "moved"
  match = {{ path = "/moved" }}
  redirect = {{ status = 301, path = "/new-home" }}

  [[listeners.routes]]
  name = "wild"
  match = {{ host = "*.example.com", path_prefix = "/" }}
  direct_response = {{ status = 200, body = "wildcard\n" }}

  [[listeners.routes]]
  name = "only-delete"
  match = {{ path_prefix = "/api/", method = "DELETE" }}
  direct_response = {{ status = 405, body = "no deletes\n" }}

  [[listeners.routes]]
  name = "api"
  match = {{ path_prefix = "/api/" }}
  cluster = "api"

  [[listeners.routes]]
  name = "hello"
  match = {{ path = "/" }}
  direct_response = {{ status = 200, body = "hello from weft\n" }}

[clusters.api]
endpoints = ["{}"]
"#,
        api.addr
    );
    let weft = Weft::start("ingress", &config, admin);
    let api_conns = api.connections.clone();
    Setup {
        weft,
        listen,
        _api: api,
        api_conns,
    }
}

fn dump_header<'a>(dump: &'a str, name: &str) -> Option<&'a str> {
    dump.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_post_and_keep_alive_with_hyper() {
    let s = setup();
    // One explicit client connection: every request must travel on it.
    let stream = tokio::net::TcpStream::connect(s.listen).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..20 {
        let req = hyper::Request::get(format!("/api/item/{i}?q=1"))
            .header("host", "weft.test")
            .body(Full::<bytes::Bytes>::default())
            .unwrap();
        sender.ready().await.unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "api");
        let body = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(
            body.contains(&format!("target=/api/item/{i}?q=1")),
            "{body}"
        );
        assert!(body.contains("method=GET"));
    }
    let req = hyper::Request::post("/api/sha256")
        .header("host", "weft.test")
        .body(Full::from("hello world"))
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{} 11", sha256_hex(b"hello world"))
    );
    assert_eq!(
        s.weft
            .metric(&["weft_accepted_connections_total", "listener=\"public\""]),
        1.0
    );
    // weft kept its upstream connection too (pooled, reused for all 21 requests).
    assert_eq!(
        s.api_conns.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "upstream connection reused"
    );
    assert_eq!(
        s.weft.metric_settled(
            &[
                "weft_requests_total",
                "route=\"api\"",
                "status_class=\"2xx\""
            ],
            21.0
        ),
        21.0
    );

    // The pooled client of hyper works too.
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(format!("http://{}/", s.listen).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "hello from weft\n"
    );
}

#[test]
fn forwarded_headers_and_hop_by_hop_removal() {
    let s = setup();
    let req = "GET /api/h HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive, x-private\r\n\
               X-Private: secret\r\nKeep-Alive: timeout=5\r\nX-Request-Id: abc-123\r\nX-Custom: kept\r\n\r\n";
    let mut c = RawClient::new(s.listen);
    c.send(req.as_bytes());
    let (status, _, body) = c.read_response();
    let dump = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    // No proxy is trusted: the client's list is replaced by what weft saw.
    assert_eq!(
        dump_header(&dump, "x-forwarded-for"),
        Some("127.0.0.1"),
        "{dump}"
    );
    assert_eq!(dump_header(&dump, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        dump_header(&dump, "x-request-id"),
        Some("abc-123"),
        "incoming request id kept"
    );
    assert_eq!(dump_header(&dump, "x-custom"), Some("kept"));
    assert_eq!(dump_header(&dump, "host"), Some("shop.test"));
    assert_eq!(
        dump_header(&dump, "x-private"),
        None,
        "header named in Connection dropped"
    );
    assert_eq!(dump_header(&dump, "keep-alive"), None);
    // Without an incoming id, weft makes one.
    c.send(b"GET /api/h HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    let (_, _, body) = c.read_response();
    let dump = String::from_utf8(body).unwrap();
    let id = dump_header(&dump, "x-request-id").expect("generated request id");
    assert_eq!(id.len(), 32);
}

#[test]
fn prefix_rewrite_header_edits_redirect_and_matching() {
    let s = setup();
    let mut c = RawClient::new(s.listen);
    c.send(b"GET /old/thing?x=1 HTTP/1.1\r\nHost: a\r\nX-Remove-Me: 1\r\n\r\n");
    let (status, head, body) = c.read_response();
    let dump = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(dump.contains("target=/new/thing?x=1"), "{dump}");
    assert_eq!(dump_header(&dump, "x-added"), Some("yes"));
    assert_eq!(dump_header(&dump, "x-remove-me"), None);
    let head_l = head.to_ascii_lowercase();
    assert!(head_l.contains("x-served-by: weft"), "{head}");
    assert!(!head_l.contains("x-secret"), "{head}");

    c.send(b"GET /moved?keep=1 HTTP/1.1\r\nHost: site.test:8080\r\n\r\n");
    let (status, head, _) = c.read_response();
    assert_eq!(status, 301);
    assert!(
        head.contains("location: http://site.test:8080/new-home?keep=1"),
        "{head}"
    );

    c.send(b"GET /anything HTTP/1.1\r\nHost: Shop.Example.COM\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!((status, body.as_slice()), (200, &b"wildcard\n"[..]));

    c.send(b"DELETE /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
    let (status, _, _) = c.read_response();
    assert_eq!(status, 405);

    c.send(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("no route"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = setup();
    let mut c = RawClient::new(s.listen);
    let mut batch = String::new();
    for i in 0..5 {
        batch += &format!("GET /api/p{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        batch += "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    }
    c.send(batch.as_bytes());
    for i in 0..5 {
        let (status, _, body) = c.read_response();
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains(&format!("target=/api/p{i}\n")));
        let (status, _, body) = c.read_response();
        assert_eq!((status, body.as_slice()), (200, &b"hello from weft\n"[..]));
    }
}

#[test]
fn chunked_download_and_upload_of_10_mib_with_curl() {
    let s = setup();
    const N: usize = 10 * 1024 * 1024;
    let expected: Vec<u8> = (0..N).map(big_body_byte).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("down");
    let st = Command::new("curl")
        .args(["-sS", "--fail", "-o"])
        .arg(&out)
        .arg(format!("http://{}/api/big?n={N}", s.listen))
        .status()
        .unwrap();
    assert!(st.success());
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), N);
    assert_eq!(sha256_hex(&got), sha256_hex(&expected));

    let up = dir.path().join("up");
    std::fs::write(&up, &expected).unwrap();
    let o = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
        ])
        .arg(format!("@{}", up.display()))
        .arg(format!("http://{}/api/sha256", s.listen))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{} {N}", sha256_hex(&expected))
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let s = setup();
    let mut c = RawClient::new(s.listen);
    c.send(b"POST /api/sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let (status, _, _) = c.read_response();
    assert_eq!(
        status, 100,
        "weft sends 100 Continue before the client sends the body"
    );
    c.send(b"hello");
    let (status, _, body) = c.read_response();
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{} 5", sha256_hex(b"hello"))
    );
    // curl waits for the 100 too.
    let o = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "abc",
        ])
        .arg(format!("http://{}/api/sha256", s.listen))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{} 3", sha256_hex(b"abc"))
    );
}

#[test]
fn head_204_and_304_have_no_body_and_keep_the_connection() {
    let s = setup();
    let mut c = RawClient::new(s.listen);
    c.send(b"HEAD /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
    // The upstream's Content-Length is kept, no body follows: the next response parses.
    let mut buf = String::new();
    for path in ["/api/status/204", "/api/status/304"] {
        buf += &format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    buf += "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    c.send(buf.as_bytes());
    let text = raw::read_until_close(&mut c.stream, std::time::Duration::from_millis(800));
    let statuses: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 200 OK"
        ],
        "{text}"
    );
    assert!(text.ends_with("hello from weft\n"), "{text}");
}

#[test]
fn http10_client_gets_a_decoded_body_and_close() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let (body, head) = (dir.path().join("body"), dir.path().join("head"));
    let st = Command::new("curl")
        .args(["-sS", "--fail", "--http1.0", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .arg(format!("http://{}/api/big?n=100000", s.listen))
        .status()
        .unwrap();
    assert!(st.success());
    let head = std::fs::read_to_string(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let expected: Vec<u8> = (0..100000).map(big_body_byte).collect();
    assert_eq!(std::fs::read(body).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_upgrade() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = setup();
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/api/ws", s.listen))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        ws.send(Message::Text(format!("ping {i}"))).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap(), format!("ping {i}"));
    }
    let big = vec![7u8; 200_000];
    ws.send(Message::Binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data(), big);
    ws.close(None).await.unwrap();
}

#[test]
fn trailers_pass_through_chunked_bodies_both_ways() {
    let s = setup();
    let mut c = RawClient::new(s.listen);
    c.send(b"POST /api/sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 42\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{} 5 x-sum=42", sha256_hex(b"hello"))
    );

    let text = raw::exchange(
        s.listen,
        b"GET /api/trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    );
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{text}");
    assert!(
        lower.ends_with("0\r\nx-checksum: abc123\r\n\r\n"),
        "{text:?}"
    );
}

#[test]
fn forwarded_header_and_header_and_regex_matching() {
    let api = TestUpstream::start("api");
    let listen: SocketAddr = free_addr();
    let admin: SocketAddr = free_addr();
    let config = format!(
        r#"
[admin]
address = "{admin}"

[http.forwarded]
x_forwarded_for = false
forwarded = true
request_id = false

[[listeners]]
name = "public"
address = "{listen}"
routes = [
  {{ name = "canary", match = {{ path_prefix = "/", headers = [ {{ name = "x-canary", value = "1" }} ] }}, direct_response = {{ status = 200, body = "canary\n" }} }},
  {{ name = "ids", match = {{ path_regex = "^/items/[0-9]+$" }}, cluster = "api" }},
  {{ name = "rest", match = {{ path_prefix = "/" }}, direct_response = {{ status = 418, body = "rest\n" }} }},
]

[clusters.api]
endpoints = ["{}"]
"#,
        api.addr
    );
    let _weft = Weft::start("ingress", &config, admin);
    let mut c = RawClient::new(listen);
    c.send(b"GET /items/42 HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    let (status, _, body) = c.read_response();
    let dump = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        dump_header(&dump, "forwarded"),
        Some("for=127.0.0.1;proto=http;host=\"shop.test\""),
        "{dump}"
    );
    assert_eq!(
        dump_header(&dump, "x-forwarded-for"),
        None,
        "disabled in config"
    );
    assert_eq!(
        dump_header(&dump, "x-request-id"),
        None,
        "disabled in config"
    );
    c.send(b"GET /items/42x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response().0, 418);
    c.send(b"GET /items/42 HTTP/1.1\r\nHost: a\r\nX-Canary: 1\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!((status, body.as_slice()), (200, &b"canary\n"[..]));
}
