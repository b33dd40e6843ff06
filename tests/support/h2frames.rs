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
