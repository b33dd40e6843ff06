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

/// The request line and framing of a request going upstream, whatever protocol the
/// client spoke.
pub struct Outgoing<'a> {
    pub method: &'a [u8],
    pub path: &'a str,
    pub path_and_query: &'a str,
    /// Authority the client addressed (Host or :authority); empty if none.
    pub authority: &'a str,
    pub chunked: bool,
    pub accepts_trailers: bool,
    /// The `Upgrade` protocol, when the client asked to switch protocols.
    pub upgrade: Option<&'a [u8]>,
}

/// The HTTP/1.1 request head for the upstream. `headers` are the client's end-to-end
/// headers (hop-by-hop ones already filtered out by the caller, which knows its
/// protocol); this adds Host, the forwarding headers, the request id and the route's
/// edits, and states the framing.
pub fn request_head<'h>(
    req: &Outgoing<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    forward: &Forward,
    edits: &HeaderEdits,
    fwd: &ForwardedConfig,
    client: &ClientInfo,
    endpoint: SocketAddr,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(req.method);
    out.extend_from_slice(b" ");
    match &forward.prefix_rewrite {
        Some((prefix, repl)) if req.path.starts_with(prefix.as_str()) => {
            out.extend_from_slice(repl.as_bytes());
            out.extend_from_slice(req.path_and_query[prefix.len()..].as_bytes());
        }
        _ => out.extend_from_slice(req.path_and_query.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let mut prior_xff: Option<&[u8]> = None;
    let mut has_request_id = false;
    for (name, value) in headers {
        if edits.drops(name) || name.eq_ignore_ascii_case(b"host") {
            // Host is written below, from the authority routing used.
            continue;
        }
        if fwd.x_forwarded_for && name.eq_ignore_ascii_case(b"x-forwarded-for") {
            prior_xff = Some(value);
            continue;
        }
        if fwd.x_forwarded_proto && name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") {
            has_request_id = true;
        }
        push_header(&mut out, name, value);
    }
    if req.authority.is_empty() {
        // A request without any authority (HTTP/1.0) names the endpoint it goes to.
        let _ = write!(out, "host: {endpoint}\r\n");
    } else {
        push_header(&mut out, b"host", req.authority.as_bytes());
    }
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
        if !req.authority.is_empty()
            && req
                .authority
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"')
        {
            let _ = write!(out, ";host=\"{}\"", req.authority);
        }
        out.extend_from_slice(b"\r\n");
    }
    if fwd.request_id && !has_request_id {
        let _ = write!(out, "x-request-id: {:032x}\r\n", fastrand::u128(..));
    }
    for (name, value) in &edits.set {
        push_header(&mut out, name.as_bytes(), value.as_bytes());
    }
    if req.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if req.accepts_trailers {
        // TE is hop-by-hop, but "trailers" holds for the next hop too: weft passes
        // trailers through.
        out.extend_from_slice(b"te: trailers\r\n");
    }
    if let Some(proto) = req.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        push_header(&mut out, b"upgrade", proto);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The upstream request head for an HTTP/1.1 client's request.
pub fn h1_request_head(
    facts: &Facts<'_>,
    forward: &Forward,
    edits: &HeaderEdits,
    fwd: &ForwardedConfig,
    client: &ClientInfo,
    endpoint: SocketAddr,
) -> BytesMut {
    let head = facts.head;
    let accepts_trailers = head.version == Version::H11
        && head
            .fields()
            .iter()
            .filter(|f| head.name(f).eq_ignore_ascii_case(b"te"))
            .any(|f| {
                head.value(f)
                    .split(|&b| b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"trailers"))
            });
    let req = Outgoing {
        method: head.method(),
        path: facts.path,
        path_and_query: facts.path_and_query,
        authority: facts.authority,
        chunked: head.framing == BodyFraming::Chunked,
        accepts_trailers,
        upgrade: if head.is_upgrade() {
            head.header("upgrade")
        } else {
            None
        },
    };
    let headers = head
        .headers
        .iter()
        .filter(|f| !head.is_hop_by_hop(f, &head.connection))
        // weft answered a 100-continue itself.
        .filter(|f| !(head.expect_continue && head.name(f).eq_ignore_ascii_case(b"expect")))
        .map(|f| (head.name(f), head.value(f)));
    request_head(&req, headers, forward, edits, fwd, client, endpoint)
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
