//! Request smuggling and response splitting through weft, tried as the attacks were:
//! raw bytes from the client, an origin that reads requests the lenient way nginx does
//! (`RecordingUpstream`), and assertions on the bytes that origin received. A route
//! answers `/admin` with 403 itself; no attack may get a request for it past weft.

use std::net::SocketAddr;
use std::time::Duration;

use weft_tests::raw::{self, RawClient};
use weft_tests::recording::{echo_line, RecordingUpstream, SeenRequest};
use weft_tests::{free_addr, Weft};

struct Setup {
    weft: Weft,
    listen: SocketAddr,
    origin: RecordingUpstream,
}

fn setup_with(origin: RecordingUpstream) -> Setup {
    let listen = free_addr();
    let admin = free_addr();
    let config = format!(
        r#"
[admin]
address = "{admin}"

[http]
idle_timeout = "3s"

[[listeners]]
name = "edge"
address = "{listen}"
routes = [
  {{ match = {{ path_prefix = "/admin" }}, direct_response = {{ status = 403, body = "no\n" }} }},
  {{ match = {{ path_prefix = "/" }}, cluster = "origin" }},
]

[clusters.origin]
endpoints = ["{}"]
"#,
        origin.addr
    );
    // One worker: the follow-up request must meet the same pooled upstream connection.
    let weft = Weft::start_with("ingress", &config, admin, &["--workers", "1"]);
    Setup {
        weft,
        listen,
        origin,
    }
}

fn setup() -> Setup {
    setup_with(RecordingUpstream::start())
}

fn no_admin_request_reached(origin: &RecordingUpstream) {
    let lines = origin.request_lines();
    assert!(
        lines.iter().all(|l| !l.contains("/admin")),
        "the origin read a smuggled request: {lines:?}\nbytes: {:?}",
        origin.received_text()
    );
}

/// `Connection: Content-Length` once made weft drop the length it framed the body by,
/// so the body reached the origin as a second request.
#[test]
fn connection_naming_content_length_smuggles_nothing() {
    for connection in [
        "Content-Length",
        "close, Content-Length",
        "content-length, host",
    ] {
        let s = setup();
        let smuggled = "GET /admin/secret HTTP/1.1\r\nX-Ignore: ";
        let attack = format!(
            "POST /x HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let mut client = RawClient::new(s.listen);
        client.send(attack.as_bytes());
        let (status, _, body) = client.read_response();
        assert_eq!(status, 200);
        assert_eq!(body, b"POST /x");
        if !connection.contains("close") {
            client.send(b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n");
            let (status, _, body) = client.read_response();
            assert_eq!((status, &body[..]), (200, &b"GET /anything"[..]));
        }
        std::thread::sleep(Duration::from_millis(100));
        no_admin_request_reached(&s.origin);
        let reqs = s.origin.requests.lock().expect("lock").clone();
        let post: &SeenRequest = reqs.first().expect("the origin saw the POST");
        assert!(
            post.head
                .to_ascii_lowercase()
                .contains(&format!("content-length: {}", smuggled.len())),
            "weft states the length it framed by: {:?}",
            post.head
        );
        assert_eq!(post.body, smuggled.as_bytes());
        assert!(post.head.to_ascii_lowercase().contains("host: x"));
    }
}

/// The same rule on the way back: an upstream's `Connection: Content-Length` cannot
/// leave a kept-alive client with an unframed response that swallows the next one.
#[test]
fn upstream_connection_naming_content_length_keeps_responses_apart() {
    let s = setup_with(RecordingUpstream::answering(|req| {
        if req.line.ends_with("/unframed") {
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec()
        } else {
            echo_line(req)
        }
    }));
    let mut client = RawClient::new(s.listen);
    client.send(b"GET /unframed HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, head, body) = client.read_response();
    assert_eq!((status, &body[..]), (200, &b"hello"[..]), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 5"),
        "{head}"
    );
    client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, _, body) = client.read_response();
    assert_eq!((status, &body[..]), (200, &b"GET /next"[..]));
}

/// `Content-Length: 5, 5` is one length: weft sends it once, as a number.
#[test]
fn repeated_content_length_goes_out_once() {
    let s = setup();
    let mut client = RawClient::new(s.listen);
    client.send(
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 05\r\n\r\nhello",
    );
    let (status, _, _) = client.read_response();
    assert_eq!(status, 200);
    let head = s.origin.requests.lock().expect("lock")[0]
        .head
        .to_ascii_lowercase();
    assert_eq!(head.matches("content-length").count(), 1, "{head}");
    assert!(head.contains("content-length: 5\r\n"), "{head}");
}

/// A bare LF right after the last chunk ends the body for nginx but started a trailer
/// line for weft, which then forwarded the next request's bytes as "trailers".
#[test]
fn bare_lf_after_the_last_chunk_is_refused() {
    let s = setup();
    let attack = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\nGET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw::exchange(s.listen, attack);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Another client right after: it must not be handed the smuggled response.
    let mut client = RawClient::new(s.listen);
    client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, _, body) = client.read_response();
    assert_eq!((status, &body[..]), (200, &b"GET /next"[..]));
    std::thread::sleep(Duration::from_millis(100));
    no_admin_request_reached(&s.origin);
    assert!(!s.origin.received_text().contains("/admin"));
}

/// Trailer lines are field lines, and never framing or routing fields.
#[test]
fn trailers_that_frame_or_are_not_fields_are_refused() {
    let s = setup();
    for trailers in [
        "Content-Length: 40\r\n\r\n",
        "Host: admin\r\n\r\n",
        // A request's trailers carry nothing weft vouches for, in any spelling (#17).
        "X-Forwarded-Client-Cert: URI=spiffe://mesh/sa/admin\r\n\r\n",
        "x_forwarded_for: 10.0.0.1\r\n\r\n",
        " folded: x\r\n\r\n",
        "GET /admin/secret HTTP/1.1\r\n\r\n",
    ] {
        let attack = format!(
            "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n{trailers}"
        );
        let answer = raw::exchange(s.listen, attack.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{trailers:?}: {answer}");
    }
    // A real trailer still passes.
    let mut client = RawClient::new(s.listen);
    client.send(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n");
    let (status, _, body) = client.read_response();
    assert_eq!((status, &body[..]), (200, &b"POST /x"[..]));
    std::thread::sleep(Duration::from_millis(100));
    no_admin_request_reached(&s.origin);
}

/// Response splitting by an upstream: a chunked body ended with a bare LF, then a
/// second response. weft must not pass the second one to the client as if it were
/// the answer to the client's next request.
#[test]
fn upstream_bare_lf_after_the_last_chunk_splits_nothing() {
    let s = setup_with(RecordingUpstream::answering(|req| {
        if req.line.ends_with("/split") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret"
                .to_vec()
        } else {
            echo_line(req)
        }
    }));
    let mut client = raw::connect(s.listen);
    use std::io::Write;
    client
        .write_all(b"GET /split HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let got = raw::read_until_close(&mut client, Duration::from_secs(5));
    // The split-off head ("Content-Length: 6") must not reach the client either: a
    // lenient client reads it as the next response and takes the next bytes as its body.
    assert!(
        !got.contains("secret") && !got.contains("Content-Length: 6"),
        "the split-off response reached the client: {got:?}"
    );
    // weft is still serving.
    let mut client = RawClient::new(s.listen);
    client.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.read_response().0, 200);
}

/// A status line without a reason phrase, or with bytes >= 0x80 in it, once made weft
/// index outside the head and abort the whole process.
#[test]
fn reason_phrases_httparse_cannot_slice_do_not_crash_weft() {
    let s = setup_with(RecordingUpstream::answering(|req| {
        match req.line.rsplit('/').next().unwrap_or("") {
            "bare" => b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "latin1" => b"HTTP/1.1 200 Ok\xe9\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "utf8" => "HTTP/1.1 404 N\u{e3}o encontrado\r\nContent-Length: 2\r\n\r\nok"
                .as_bytes()
                .to_vec(),
            // Found by the `rewrite` fuzz target: weft sent on `HTTP/1.1 20`.
            "s020" => b"HTTP/1.1 020\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            _ => echo_line(req),
        }
    }));
    let mut client = RawClient::new(s.listen);
    for (path, status) in [("bare", 200), ("latin1", 200), ("utf8", 404)] {
        client.send(format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let (got, head, body) = client.read_response();
        assert_eq!((got, &body[..]), (status, &b"ok"[..]), "{path}: {head}");
        assert!(head.is_ascii() || path == "utf8", "{head:?}");
    }
    client.send(b"GET /s020 HTTP/1.1\r\nHost: x\r\n\r\n");
    let (got, head, _) = client.read_response();
    assert_eq!(got, 502, "a status below 100 is an invalid head: {head}");
    let mut client = RawClient::new(s.listen);
    // Over HTTP/2 too (the h2 client path parses the same heads).
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{}/bare", s.listen))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(s.weft.admin_get("/live").0, 200);
    client.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.read_response().0, 200);
}
