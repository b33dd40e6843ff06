//! The heads weft sends on: the request to the upstream, the response to the client.
//!
//! Both drop hop-by-hop headers (and any named in `Connection`), apply the route's
//! header edits, and state framing for the next hop explicitly. Header names and values
//! are copied as received; nothing is re-cased or re-folded.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use weft_mesh::config::ForwardedConfig;
use weft_mesh::snapshot::{Forward, HeaderEdits};

use super::facts::Facts;
use crate::proto::h1::head::{trim, BodyFraming, Head, RequestHead, ResponseHead, Version};
use crate::proto::h1::reason;

/// Client-side facts the forwarded-headers need.
pub struct ClientInfo {
    pub peer: SocketAddr,
    /// `http` until TLS termination arrives.
    pub scheme: &'static str,
}

pub fn request_head(
    facts: &Facts<'_>,
    forward: &Forward,
    edits: &HeaderEdits,
    fwd: &ForwardedConfig,
    client: &ClientInfo,
    upstream_host: &str,
) -> BytesMut {
    let head = facts.head;
    let mut out = BytesMut::with_capacity(head.raw.len() + 256);
    out.extend_from_slice(head.method());
    out.extend_from_slice(b" ");
    match &forward.prefix_rewrite {
        Some((prefix, repl)) if facts.path.starts_with(prefix.as_str()) => {
            out.extend_from_slice(repl.as_bytes());
            out.extend_from_slice(facts.path_and_query[prefix.len()..].as_bytes());
        }
        _ => out.extend_from_slice(facts.path_and_query.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let mut prior_xff: Option<&[u8]> = None;
    let mut has_request_id = false;
    let mut accepts_trailers = false;
    for f in &head.headers {
        let name = head.name(f);
        if name.eq_ignore_ascii_case(b"te") {
            // TE is hop-by-hop, but "trailers" holds for the next hop too: weft passes
            // chunked bodies through with their trailers.
            accepts_trailers |= head
                .value(f)
                .split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"trailers"));
        }
        if head.is_hop_by_hop(f, &head.connection) || edits.drops(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            // Written below, from the authority routing used.
            continue;
        }
        if head.expect_continue && name.eq_ignore_ascii_case(b"expect") {
            // weft answered the 100-continue itself.
            continue;
        }
        if fwd.x_forwarded_for && name.eq_ignore_ascii_case(b"x-forwarded-for") {
            prior_xff = Some(head.value(f));
            continue;
        }
        if fwd.x_forwarded_proto && name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") {
            has_request_id = true;
        }
        push_header(&mut out, name, head.value(f));
    }
    let host = if facts.authority.is_empty() {
        upstream_host
    } else {
        facts.authority
    };
    push_header(&mut out, b"host", host.as_bytes());
    let ip = client.peer.ip();
    if fwd.x_forwarded_for {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = prior_xff.filter(|p| !p.is_empty()) {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{ip}\r\n");
    }
    if fwd.x_forwarded_proto {
        let _ = write!(out, "x-forwarded-proto: {}\r\n", client.scheme);
    }
    if fwd.forwarded {
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let _ = write!(out, "forwarded: for={node};proto={}", client.scheme);
        if !facts.authority.is_empty()
            && facts
                .authority
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"')
        {
            let _ = write!(out, ";host=\"{}\"", facts.authority);
        }
        out.extend_from_slice(b"\r\n");
    }
    if fwd.request_id && !has_request_id {
        let _ = write!(out, "x-request-id: {:032x}\r\n", fastrand::u128(..));
    }
    for (name, value) in &edits.set {
        push_header(&mut out, name.as_bytes(), value.as_bytes());
    }
    if head.framing == BodyFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if accepts_trailers && head.version == Version::H11 {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    if head.is_upgrade() {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(proto) = head.header("upgrade") {
            push_header(&mut out, b"upgrade", proto);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// How the response body travels to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFraming {
    /// Pass the upstream's chunked coding through as is.
    pub chunked: bool,
    /// Decode chunked for an HTTP/1.0 client (body then ends at close).
    pub dechunk: bool,
    /// Close the client connection after this response.
    pub close: bool,
}

pub fn client_framing(req: &RequestHead, resp: &ResponseHead, keep_alive: bool) -> ClientFraming {
    let h10 = req.version == Version::H10;
    match resp.framing {
        BodyFraming::Chunked if h10 => ClientFraming {
            chunked: false,
            dechunk: true,
            close: true,
        },
        BodyFraming::Chunked => ClientFraming {
            chunked: true,
            dechunk: false,
            close: !keep_alive,
        },
        BodyFraming::UntilClose => ClientFraming {
            chunked: false,
            dechunk: false,
            close: true,
        },
        BodyFraming::None | BodyFraming::Length(_) => ClientFraming {
            chunked: false,
            dechunk: false,
            close: !keep_alive,
        },
    }
}

pub fn response_head(
    req: &RequestHead,
    resp: &ResponseHead,
    edits: &HeaderEdits,
    framing: ClientFraming,
    upgrade: bool,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(resp.raw.len() + 64);
    let _ = write!(out, "HTTP/1.1 {} ", resp.status);
    let phrase = &resp.raw[resp.reason.clone()];
    if phrase.is_empty() {
        out.extend_from_slice(reason(resp.status).as_bytes());
    } else {
        out.extend_from_slice(phrase);
    }
    out.extend_from_slice(b"\r\n");
    for f in &resp.headers {
        let name = resp.name(f);
        if resp.is_hop_by_hop(f, &resp.connection) || edits.drops(name) {
            continue;
        }
        push_header(&mut out, name, resp.value(f));
    }
    for (name, value) in &edits.set {
        push_header(&mut out, name.as_bytes(), value.as_bytes());
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(proto) = resp.header("upgrade") {
            push_header(&mut out, b"upgrade", proto);
        }
    } else {
        if framing.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if framing.close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if req.version == Version::H10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn push_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
