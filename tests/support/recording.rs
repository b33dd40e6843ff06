//! An HTTP/1.1 upstream that records every byte it receives and reads requests the
//! lenient way nginx does (a bare LF ends a line, RFC 9112 §2.2), so a test sees exactly
//! what a real origin behind weft would take as requests: the request-smuggling tests
//! assert on these bytes, as the attacks do.
//!
//! Each request it reads is answered by the `respond` function of the test (default:
//! `200` with the request line as the body), on the same connection, in order.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the lenient parser read it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// `METHOD target`, without the version.
    pub line: String,
    /// The head as received, request line included.
    pub head: String,
    pub body: Vec<u8>,
}

type Responder = Arc<dyn Fn(&SeenRequest) -> Vec<u8> + Send + Sync>;

pub struct RecordingUpstream {
    pub addr: SocketAddr,
    /// Every byte received, all connections in arrival order of their reads.
    pub received: Arc<Mutex<Vec<u8>>>,
    /// Every request read, in order.
    pub requests: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
}

/// The default answer: 200 with the request line as its body.
pub fn echo_line(req: &SeenRequest) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
        req.line.len(),
        req.line
    )
    .into_bytes()
}

impl RecordingUpstream {
    pub fn start() -> RecordingUpstream {
        RecordingUpstream::answering(echo_line)
    }

    pub fn answering(
        respond: impl Fn(&SeenRequest) -> Vec<u8> + Send + Sync + 'static,
    ) -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recording upstream");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let respond: Responder = Arc::new(respond);
        let (stop2, received2, requests2) = (stop.clone(), received.clone(), requests.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (stop3, rec, reqs, resp) = (
                            stop2.clone(),
                            received2.clone(),
                            requests2.clone(),
                            respond.clone(),
                        );
                        std::thread::spawn(move || serve(s, &stop3, &rec, &reqs, &*resp));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RecordingUpstream {
            addr,
            received,
            requests,
            stop,
        }
    }

    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().expect("lock")).into_owned()
    }

    pub fn request_lines(&self) -> Vec<String> {
        let reqs = self.requests.lock().expect("lock");
        reqs.iter().map(|r| r.line.clone()).collect()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    mut s: TcpStream,
    stop: &AtomicBool,
    received: &Mutex<Vec<u8>>,
    requests: &Mutex<Vec<SeenRequest>>,
    respond: &(dyn Fn(&SeenRequest) -> Vec<u8> + Send + Sync),
) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut pending = Vec::new();
    let mut buf = [0u8; 16384];
    while !stop.load(Ordering::SeqCst) {
        while let Some((req, used)) = lenient_request(&pending) {
            pending.drain(..used);
            let answer = respond(&req);
            requests.lock().expect("lock").push(req);
            if s.write_all(&answer).is_err() {
                return;
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                received.lock().expect("lock").extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// The next line of `data` from `at`, ended by LF with an optional CR before it:
/// (line without its end, index after the end).
fn line(data: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let lf = data[at..].iter().position(|&b| b == b'\n')? + at;
    let end = if lf > at && data[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((&data[at..end], lf + 1))
}

/// One complete request at the front of `data`, read as nginx would: a head ended by
/// an empty line, a body by Content-Length or the chunked coding (bare LFs accepted).
pub fn lenient_request(data: &[u8]) -> Option<(SeenRequest, usize)> {
    let mut at = 0;
    // Empty lines before a request line are skipped (RFC 9112 §2.2).
    let request_line = loop {
        let (l, next) = line(data, at)?;
        at = next;
        if !l.is_empty() {
            break l;
        }
    };
    // Where the request line began: before it and its line end (LF, or CRLF).
    let start = data[..at - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let (l, next) = line(data, at)?;
        at = next;
        if l.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(l).to_ascii_lowercase();
        if let Some(v) = text.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = text.strip_prefix("transfer-encoding:") {
            chunked = v.contains("chunked");
        }
    }
    let head = String::from_utf8_lossy(&data[start..at]).into_owned();
    let mut body = Vec::new();
    if chunked {
        loop {
            let (size_line, next) = line(data, at)?;
            at = next;
            let digits: String = String::from_utf8_lossy(size_line)
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            let size = usize::from_str_radix(&digits, 16).unwrap_or(0);
            if size == 0 {
                // Trailer lines up to an empty one (LF or CRLF).
                loop {
                    let (l, next) = line(data, at)?;
                    at = next;
                    if l.is_empty() {
                        break;
                    }
                }
                break;
            }
            if data.len() < at + size {
                return None;
            }
            body.extend_from_slice(&data[at..at + size]);
            at += size;
            let (_, next) = line(data, at)?;
            at = next;
        }
    } else {
        if data.len() < at + length {
            return None;
        }
        body.extend_from_slice(&data[at..at + length]);
        at += length;
    }
    let text = String::from_utf8_lossy(request_line).into_owned();
    let line = text
        .rsplit_once(' ')
        .map_or(text.clone(), |(l, _)| l.to_owned());
    Some((SeenRequest { line, head, body }, at))
}
