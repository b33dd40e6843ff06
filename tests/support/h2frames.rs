//! Raw HTTP/2 frames and HPACK literals, for clients no real one would be: hostile
//! or stalled peers the tests play by hand.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: a literal field without indexing, new name.
pub fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
    out
}

/// HPACK: a header block for `GET http://authority/path` plus `extra` fields.
pub fn get_block(authority: &str, path: &str, extra: &[u8]) -> Vec<u8> {
    // :method GET (static 2), :scheme http (static 6).
    let mut out = vec![0x82, 0x86];
    out.extend(literal(b":path", path.as_bytes()));
    out.extend(literal(b":authority", authority.as_bytes()));
    out.extend_from_slice(extra);
    out
}

/// Reads frames until `done` says it has seen enough (or 10 s pass); returns them as
/// (type, flags, stream, payload).
pub fn read_frames(
    s: &mut TcpStream,
    done: impl Fn(&[(u8, u8, u32, Vec<u8>)]) -> bool,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    while !done(&frames) && started.elapsed() < Duration::from_secs(10) {
        let mut chunk = [0u8; 16384];
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            frames.push((buf[3], buf[4], stream, buf[9..9 + len].to_vec()));
            buf.drain(..9 + len);
        }
    }
    frames
}

/// A raw HTTP/2 server connection: answers SETTINGS and PING, and each request
/// HEADERS with `on_request(stream)`'s frames; ends when the peer closes.
pub fn serve_connection(mut s: std::net::TcpStream, on_request: impl Fn(u32) -> Vec<u8>) {
    use std::io::{Read, Write};
    let _ = s.write_all(&frame(0x4, 0, 0, &[]));
    let mut buf = Vec::new();
    let mut preface_left = 24usize;
    let mut chunk = [0u8; 16384];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let skip = preface_left.min(buf.len());
        buf.drain(..skip);
        preface_left -= skip;
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let reply = match kind {
                0x4 if flags & 1 == 0 => frame(0x4, 1, 0, &[]),
                0x6 if flags & 1 == 0 => frame(0x6, 1, 0, &payload),
                0x1 => on_request(stream),
                _ => continue,
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    }
}

/// A raw HTTP/2 upstream: each connection is served by `serve(index, connection)` on
/// a thread of its own; returns its address and how many connections it took.
pub fn upstream(
    serve: impl Fn(usize, std::net::TcpStream) + Send + Sync + Clone + 'static,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let index = seen.fetch_add(1, Ordering::SeqCst);
            let serve = serve.clone();
            std::thread::spawn(move || serve(index, conn));
        }
    });
    (addr, connections)
}
