//! Bad and abusive HTTP/2 clients, on raw frames where no well-behaved client would go:
//! malformed requests get a stream error that leaves the connection's other streams
//! alone, malformed frames a connection error (GOAWAY), and rapid reset
//! (CVE-2023-44487) and CONTINUATION floods are bounded and cut off, while every other
//! client is served as usual.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_tests::h2frames::{frame, get_block, literal, read_frames};
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

fn rst_code(frames: &[(u8, u8, u32, Vec<u8>)], stream: u32) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == 0x3 && f.2 == stream)
        .map(|f| u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]))
}

fn answered_200(frames: &[(u8, u8, u32, Vec<u8>)], stream: u32) -> bool {
    // :status 200 is HPACK static entry 8.
    frames
        .iter()
        .any(|f| f.0 == 0x1 && f.2 == stream && f.3.first() == Some(&0x88))
}

const PROTOCOL_ERROR: u32 = 0x1;

#[test]
fn malformed_requests_are_stream_errors_and_other_streams_carry_on() {
    let (_weft, listen, _app) = setup();
    let authority = listen.to_string();
    let mut s = TcpStream::connect(listen).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let end = 0x1 | 0x4; // END_STREAM | END_HEADERS
                         // 1: a connection-specific header (RFC 9113 §8.2.2): a stream error.
    out.extend(frame(
        0x1,
        end,
        1,
        &get_block(
            &authority,
            "/api/status/200",
            &literal(b"connection", b"keep-alive"),
        ),
    ));
    // 3: TE other than "trailers" (§8.2.2): a stream error.
    out.extend(frame(
        0x1,
        end,
        3,
        &get_block(&authority, "/api/status/200", &literal(b"te", b"gzip")),
    ));
    // 5: a valid request on the same connection.
    out.extend(frame(
        0x1,
        end,
        5,
        &get_block(&authority, "/api/status/200", &[]),
    ));
    s.write_all(&out).unwrap();
    let frames = read_frames(&mut s, |f| {
        [1, 3].iter().all(|id| rst_code(f, *id).is_some()) && answered_200(f, 5)
    });
    for id in [1, 3] {
        assert_eq!(
            rst_code(&frames, id),
            Some(PROTOCOL_ERROR),
            "stream {id}: {frames:?}"
        );
    }
    assert!(
        answered_200(&frames, 5),
        "the valid stream was not answered: {frames:?}"
    );
    assert!(
        !frames.iter().any(|f| f.0 == 0x7),
        "no GOAWAY for stream errors"
    );

    // An oversized header list (over http2.max_header_list_size, 64 KiB here) is
    // refused without taking the connection down: the next stream still works.
    let big_value = "v".repeat(16000);
    let mut block = get_block(&authority, "/api/status/200", &[]);
    for i in 0..5 {
        // Literal, new name, value length over 127: HPACK integer with 7-bit prefix.
        block.extend_from_slice(&[0x00, 3]);
        block.extend_from_slice(format!("x-{i}").as_bytes());
        block.push(0x7f);
        let mut rest = big_value.len() - 127;
        while rest >= 128 {
            block.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        block.push(rest as u8);
        block.extend_from_slice(big_value.as_bytes());
    }
    let mut out = Vec::new();
    // Split over HEADERS + CONTINUATIONs of at most 16 KiB (the default frame size).
    let pieces: Vec<&[u8]> = block.chunks(16000).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let kind = if i == 0 { 0x1 } else { 0x9 };
        let flags = if i == 0 { 0x1 } else { 0 } | if last { 0x4 } else { 0 };
        out.extend(frame(kind, flags, 7, piece));
    }
    out.extend(frame(
        0x1,
        end,
        9,
        &get_block(&authority, "/api/status/200", &[]),
    ));
    s.write_all(&out).unwrap();
    let frames = read_frames(&mut s, |f| {
        answered_200(f, 9) || f.iter().any(|f| f.0 == 0x7)
    });
    assert!(
        !answered_200(&frames, 7),
        "an oversized header list was served: {frames:?}"
    );
    assert!(
        answered_200(&frames, 9),
        "the next stream was not answered: {frames:?}"
    );
}

/// The h2 crate treats a header block it cannot decode into a valid request (an unknown
/// pseudo-header, an uppercase field name) as a connection error, which RFC 9113 §5.4.1
/// allows for any stream error: GOAWAY(PROTOCOL_ERROR) for that connection, no effect
/// on any other.
#[test]
fn undecodable_header_blocks_end_only_their_connection() {
    let (_weft, listen, _app) = setup();
    let authority = listen.to_string();
    for extra in [literal(b":foo", b"bar"), literal(b"X-Upper", b"1")] {
        let mut s = TcpStream::connect(listen).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out.extend(frame(
            0x1,
            0x5,
            1,
            &get_block(&authority, "/api/status/200", &extra),
        ));
        s.write_all(&out).unwrap();
        let frames = read_frames(&mut s, |f| f.iter().any(|f| f.0 == 0x7));
        let goaway = frames.iter().find(|f| f.0 == 0x7).expect("GOAWAY");
        let code = u32::from_be_bytes([goaway.3[4], goaway.3[5], goaway.3[6], goaway.3[7]]);
        assert_eq!(code, PROTOCOL_ERROR, "{frames:?}");
        bystander_ok(listen);
    }
}

#[test]
fn malformed_frames_are_connection_errors() {
    let (_weft, listen, _app) = setup();
    // DATA on stream 0, and WINDOW_UPDATE with a zero increment on the connection.
    for bad in [frame(0x0, 0, 0, b"x"), frame(0x8, 0, 0, &[0, 0, 0, 0])] {
        let mut s = TcpStream::connect(listen).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out.extend(bad);
        s.write_all(&out).unwrap();
        let frames = read_frames(&mut s, |f| f.iter().any(|f| f.0 == 0x7));
        let goaway = frames.iter().find(|f| f.0 == 0x7).expect("GOAWAY");
        let code = u32::from_be_bytes([goaway.3[4], goaway.3[5], goaway.3[6], goaway.3[7]]);
        assert_eq!(code, PROTOCOL_ERROR, "{frames:?}");
    }
    bystander_ok(listen);
}
