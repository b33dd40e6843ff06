//! What weft would send on for given HTTP/1.1 bytes, without a socket: the request path
//! (parse the head, route-independent rewrite, frame the body) and the response path
//! as pure functions, for the fuzz targets and the differential tests that check the
//! property request smuggling breaks: what leaves weft is exactly one message, framed
//! as weft decided, for every parser downstream.
//!
//! The steps are the ones the live path takes (`parse_request`, `rewrite`, the chunked
//! parser that walks a forwarded body); only the sockets are left out.

use std::net::SocketAddr;

use bytes::BytesMut;
use weft_mesh::config::ForwardedConfig;
use weft_mesh::fields::Trailers;
use weft_mesh::snapshot::{Forward, HeaderEdits, PathPolicy, TrustedProxies};

use super::facts::Facts;
use super::rewrite::{self, ClientInfo};
use crate::proto::h1::chunked::ChunkedParser;
use crate::proto::h1::head::{parse_request, parse_response, BodyFraming};

/// What weft makes of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refused (weft answers 4xx, or for a response 502 / a closed connection).
    Rejected,
    /// More bytes are needed before weft forwards it whole.
    Incomplete,
    /// Forwarded: the bytes sent on (head and body), the framing weft decided, and the
    /// body's length as carried (chunk data only, for chunked bodies).
    Sent {
        bytes: Vec<u8>,
        framing: BodyFraming,
        body: Vec<u8>,
    },
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;

/// The body behind a head: the bytes forwarded (verbatim, as the live path does) and
/// the decoded content, or why there is none.
fn body(framing: BodyFraming, rest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Outcome> {
    match framing {
        BodyFraming::None => Ok((Vec::new(), Vec::new())),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n).map_err(|_| Outcome::Incomplete)?;
            let raw = rest.get(..n).ok_or(Outcome::Incomplete)?;
            Ok((raw.to_vec(), raw.to_vec()))
        }
        BodyFraming::Chunked => {
            let mut parser = ChunkedParser::new(MAX_TRAILERS, Trailers::Request);
            let mut data = Vec::new();
            let progress = parser
                .feed(rest, |r| data.extend_from_slice(&rest[r]))
                .map_err(|_| Outcome::Rejected)?;
            if !progress.done {
                return Err(Outcome::Incomplete);
            }
            Ok((rest[..progress.consumed].to_vec(), data))
        }
        BodyFraming::UntilClose => Ok((rest.to_vec(), rest.to_vec())),
    }
}

/// The request weft sends upstream for an HTTP/1.1 client's `input` (one message at its
/// front), on a route without edits or rewrites.
pub fn request(input: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(input);
    let head = match parse_request(&mut buf, MAX_HEAD, 100) {
        Ok(Some(h)) => h,
        Ok(None) => return Outcome::Incomplete,
        Err(_) => return Outcome::Rejected,
    };
    let (raw_body, content) = match body(head.framing, &buf) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let facts = Facts::new(&head, PathPolicy::default());
    let forward = Forward {
        targets: Vec::new(),
        total_weight: 0,
        prefix_rewrite: None,
        hash_policy: Vec::new(),
        sticky: None,
    };
    let fwd = ForwardedConfig {
        request_id: false,
        ..ForwardedConfig::default()
    };
    let client = ClientInfo {
        peer: SocketAddr::from(([192, 0, 2, 1], 4000)),
        scheme: "http",
        client_cert: None,
        trust: &TrustedProxies::default(),
        attempt: None,
    };
    let endpoint = SocketAddr::from(([192, 0, 2, 2], 80));
    // A request weft refuses to send on (one that looped back to it) is a 4xx/5xx.
    let Ok(head_bytes) = rewrite::h1_request_head(
        &facts,
        &forward,
        &HeaderEdits::default(),
        &fwd,
        &client,
        endpoint,
        // As a route that allows the upgrade would send it.
        head.is_upgrade(),
    ) else {
        return Outcome::Rejected;
    };
    let mut bytes = head_bytes.to_vec();
    bytes.extend_from_slice(&raw_body);
    Outcome::Sent {
        bytes,
        framing: head.framing,
        body: content,
    }
}

/// How the next hop reads `input` as a request, by weft's own parser, without
/// forwarding it: the one message at its front, its framing and its body. (Forwarding
/// weft's output a second time would stop at the loop check: it carries this process's
/// `Via`.)
pub fn read_request(input: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(input);
    let head = match parse_request(&mut buf, MAX_HEAD, 100) {
        Ok(Some(h)) => h,
        Ok(None) => return Outcome::Incomplete,
        Err(_) => return Outcome::Rejected,
    };
    let (raw_body, content) = match body(head.framing, &buf) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let length = input.len() - buf.len() + raw_body.len();
    Outcome::Sent {
        bytes: input[..length].to_vec(),
        framing: head.framing,
        body: content,
    }
}

/// The response weft sends to an HTTP/1.1 client (kept alive) for an upstream's
/// `input`, answering a GET (or a HEAD with `head_request`).
pub fn response(input: &[u8], head_request: bool) -> Outcome {
    let mut req_buf = BytesMut::from(if head_request {
        &b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"[..]
    } else {
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]
    });
    let Ok(Some(req)) = parse_request(&mut req_buf, MAX_HEAD, 100) else {
        return Outcome::Rejected;
    };
    let mut buf = BytesMut::from(input);
    let resp = match parse_response(&mut buf, MAX_HEAD, head_request) {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Incomplete,
        Err(_) => return Outcome::Rejected,
    };
    if (100..200).contains(&resp.status) {
        // Interim answers are relayed (re-serialised) ahead of the final one.
        return Outcome::Rejected;
    }
    let (raw_body, content) = match body(resp.framing, &buf) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let framing = rewrite::client_framing(&req, &resp, true);
    let edits = rewrite::ResponseEdits {
        route: &HeaderEdits::default(),
        set_cookie: None,
        attempts: None,
        rate: None,
    };
    let mut bytes = rewrite::response_head(&req, &resp, edits, framing, false).to_vec();
    bytes.extend_from_slice(&raw_body);
    Outcome::Sent {
        bytes,
        framing: resp.framing,
        body: content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_goes_on_with_the_framing_weft_decided() {
        let out = request(b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\nabcGET");
        let Outcome::Sent {
            bytes,
            framing,
            body,
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(framing, BodyFraming::Length(3));
        assert_eq!(body, b"abc");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("content-length: 3\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
    }

    #[test]
    fn a_response_without_reason_phrase_gets_weft_s_own() {
        let out = response(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", false);
        let Outcome::Sent { bytes, .. } = out else {
            panic!("{out:?}")
        };
        assert!(bytes.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}
