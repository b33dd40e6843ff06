//! Raw HTTP/1.1 over a blocking socket, for what real clients refuse to send.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Sends `request` and reads until the peer closes (or `limit` passes).
pub fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = connect(addr);
    s.write_all(request).expect("write");
    read_until_close(&mut s, Duration::from_secs(10))
}

pub fn read_until_close(s: &mut TcpStream, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the peer closed the connection (read returns 0 or reset) within `limit`.
pub fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A kept-alive client socket that may receive several responses in one read.
pub struct RawClient {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl RawClient {
    pub fn new(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: connect(addr),
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn more(&mut self) -> usize {
        let mut buf = [0u8; 16384];
        let n = self.stream.read(&mut buf).unwrap_or(0);
        self.pending.extend_from_slice(&buf[..n]);
        n
    }

    /// Reads one response framed by Content-Length (or without a body):
    /// (status, head text, body). Panics if the connection closes first.
    pub fn read_response(&mut self) -> (u16, String, Vec<u8>) {
        let head_end = loop {
            if let Some(i) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.more() > 0,
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&self.pending)
            );
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        let status = head[9..12].parse().expect("status");
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().expect("length"))
            })
            .unwrap_or(0);
        while self.pending.len() < head_end + len {
            assert!(self.more() > 0, "closed mid-body");
        }
        let body = self.pending[head_end..head_end + len].to_vec();
        self.pending.drain(..head_end + len);
        (status, head, body)
    }
}
