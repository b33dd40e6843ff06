//! Abusive HTTP/2 clients: rapid reset (CVE-2023-44487) and CONTINUATION floods. weft
//! must bound the work, close the abusive connection, and keep serving everyone else.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_tests::upstream::TestUpstream;
use weft_tests::{free_addr, Weft};

fn setup() -> (Weft, SocketAddr, TestUpstream) {
    let app = TestUpstream::start("app");
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        r#"
[admin]
address = "{admin}"

[http2]
max_concurrent_streams = 100
max_reset_streams = 50

[[listeners]]
name = "public"
address = "{listen}"
routes = [
  {{ match = {{ path_prefix = "/api/" }}, cluster = "app" }},
]

[clusters.app]
endpoints = ["{}"]
"#,
        app.addr
    );
    (Weft::start("ingress", &config, admin), listen, app)
}

/// Another client, at the same time, must be served normally.
fn bystander_ok(listen: SocketAddr) {
    let o = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-m",
            "5",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}"])
        .arg(format!("http://{listen}/api/status/200"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "200",
        "bystander failed"
    );
}

#[test]
fn rapid_reset_closes_the_connection_and_bounds_upstream_work() {
    let (weft, listen, app) = setup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (opened, outcome) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut opened = 0u32;
        // Each stream asks for a slow upstream response and is reset at once.
        for _ in 0..20_000 {
            let Ok(mut send) = send.clone().ready().await else {
                break;
            };
            let req = http::Request::get(format!("http://{listen}/api/sleep/300"))
                .body(())
                .unwrap();
            let Ok((_response, mut body)) = send.send_request(req, false) else {
                break;
            };
            // Late enough that weft has taken the stream and started its work (a
            // stream reset before that is h2's own concern).
            tokio::time::sleep(Duration::from_millis(1)).await;
            body.send_reset(h2::Reason::CANCEL);
            opened += 1;
            if conn.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let outcome = tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("weft closes the abusive connection");
        (opened, outcome)
    });
    let err = outcome.unwrap().expect_err("connection ends in an error");
    // GOAWAY(ENHANCE_YOUR_CALM), unless the close overtook it while the client was
    // still writing (then the client sees the reset socket).
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err:?} after {opened} streams"
    );
    assert!(opened < 20_000, "weft never pushed back ({opened} streams)");
    // Work reached the upstream for at most a bounded number of those streams.
    let upstream_conns = app.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        upstream_conns < 400,
        "{upstream_conns} upstream connections for {opened} resets"
    );
    bystander_ok(listen);
    drop(weft);
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn continuation_flood_is_cut_off() {
    let (weft, listen, _app) = setup();
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                       // HEADERS for stream 1 without END_HEADERS: :method GET (static index 2).
    out.extend(frame(0x1, 0x1, 1, &[0x82]));
    s.write_all(&out).unwrap();
    // An endless header block: literal fields of 100 bytes per CONTINUATION frame.
    let mut field = vec![0x00, 0x03];
    field.extend_from_slice(b"x-a");
    field.push(93);
    field.extend(std::iter::repeat_n(b'a', 93));
    let continuation = frame(0x9, 0, 1, &field);
    let reader = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            // Read until weft closes: a GOAWAY must come, then EOF.
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let started = Instant::now();
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
                assert!(started.elapsed() < Duration::from_secs(10), "never closed");
            }
            seen
        })
    };
    let mut sent = 0usize;
    for _ in 0..200_000 {
        if s.write_all(&continuation).is_err() {
            break;
        }
        sent += 1;
    }
    let seen = reader.join().unwrap();
    assert!(
        sent < 200_000,
        "weft read a flood of {sent} CONTINUATION frames"
    );
    // Somewhere in what came back is a GOAWAY (type 7).
    let mut at = 0;
    let mut goaway = false;
    while at + 9 <= seen.len() {
        let len = u32::from_be_bytes([0, seen[at], seen[at + 1], seen[at + 2]]) as usize;
        goaway |= seen[at + 3] == 0x7;
        at += 9 + len;
    }
    assert!(goaway, "no GOAWAY before the close");
    bystander_ok(listen);
    drop(weft);
}
