//! Responses weft makes itself: errors, `direct_response`, redirects.
//!
//! Every error weft produces says why in a short text body and in `x-weft-error`,
//! so an operator can tell a proxy-made 502 from an upstream's.

use std::fmt::Write as _;

use bytes::BytesMut;
use weft_mesh::snapshot::{HeaderEdits, Redirect};

use crate::proto::h1::reason;

/// Builds a complete response. `close` adds `connection: close`; `head_only` omits the
/// body (HEAD requests) but keeps its length.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
    head_only: bool,
    extra: &[(&str, &str)],
) -> BytesMut {
    let mut out = BytesMut::with_capacity(128 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// The body of a proxy-made error, whatever the protocol.
pub fn error_body(status: u16, why: &str) -> String {
    format!("{status} {}: {why}\n", reason(status))
}

/// A proxy-made error: short reason in the body and in `x-weft-error`.
pub fn error(status: u16, why: &str, close: bool, head_only: bool) -> BytesMut {
    let body = error_body(status, why);
    response(
        status,
        "text/plain",
        body.as_bytes(),
        close,
        head_only,
        &[("x-weft-error", why)],
    )
}

/// The headers a `direct_response` carries besides content type and length: the route's
/// response header edits, except content-type, which the route's `content_type` states.
pub fn direct_headers(edits: &HeaderEdits) -> Vec<(&str, &str)> {
    edits
        .set
        .iter()
        .filter(|(name, _)| name != "content-type")
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

/// `direct_response` with the route's response header edits applied.
pub fn direct(
    status: u16,
    content_type: &str,
    body: &[u8],
    edits: &HeaderEdits,
    close: bool,
    head_only: bool,
) -> BytesMut {
    response(
        status,
        content_type,
        body,
        close,
        head_only,
        &direct_headers(edits),
    )
}

/// The `Location` a redirect route sends this request to.
pub fn redirect_location(
    r: &Redirect,
    authority: &str,
    path: &str,
    path_and_query: &str,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.host.as_deref().unwrap_or(authority);
    let query = path_and_query.split_once('?').map(|(_, q)| q);
    let path = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => p.clone(),
        (None, Some((prefix, repl))) => match path.strip_prefix(prefix.as_str()) {
            Some(rest) => format!("{repl}{rest}"),
            None => path.to_owned(),
        },
        (None, None) => path.to_owned(),
    };
    match query {
        Some(q) if !r.strip_query && !q.is_empty() => format!("{scheme}://{host}{path}?{q}"),
        _ => format!("{scheme}://{host}{path}"),
    }
}
