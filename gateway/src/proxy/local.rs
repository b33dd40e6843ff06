//! Responses weft makes itself: errors, `direct_response`, redirects.
//!
//! Every error weft produces says why in a short text body and in `x-weft-error`,
//! so an operator can tell a proxy-made 502 from an upstream's.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::BytesMut;
use weft_mesh::snapshot::{HeaderEdits, Redirect};

use super::error::ProxyError;
use super::rate_limit::RateHeaders;
use crate::proto::date;
use crate::proto::h1::reason;

/// What a local answer says about its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `connection: close`: the connection ends after this answer.
    Close,
    /// Nothing: an HTTP/1.1 connection stays by default.
    Keep,
    /// `connection: keep-alive`: an HTTP/1.0 client keeps its connection only when the
    /// answer says so (RFC 9112 §9.3), as the forwarded path already tells it.
    KeepAlive10,
}

/// Builds a complete response. `persistence` says whether the connection stays;
/// `head_only` omits the
/// body (HEAD requests) but keeps its length.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    persistence: Persistence,
    head_only: bool,
    extra: &[(&str, &str)],
) -> BytesMut {
    let mut out = BytesMut::with_capacity(128 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ndate: ",
        reason(status),
        body.len()
    );
    out.extend_from_slice(date::now().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    match persistence {
        Persistence::Close => out.extend_from_slice(b"connection: close\r\n"),
        Persistence::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persistence::Keep => {}
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

/// The fields of a proxy-made error answer: its short reason in `x-weft-error`, the
/// fields the error adds (`ProxyError::answer_fields`), and a rate limit's counts.
pub fn error_fields(error: ProxyError) -> Vec<(&'static str, Cow<'static, str>)> {
    let mut fields = vec![("x-weft-error", Cow::Borrowed(error.reason()))];
    fields.extend(
        error
            .answer_fields()
            .iter()
            .map(|(n, v)| (*n, Cow::Borrowed(*v))),
    );
    if let ProxyError::RateLimited {
        limit, reset_secs, ..
    } = error
    {
        fields.extend(rate_fields(RateHeaders {
            limit: std::num::NonZeroU32::new(limit).unwrap_or(std::num::NonZeroU32::MIN),
            remaining: 0,
            reset_secs,
        }));
    }
    fields
}

/// `x-ratelimit-limit`, `-remaining` and `-reset` (draft-ietf-httpapi-ratelimit-headers,
/// as Envoy's local rate limit sends them).
pub fn rate_fields(h: RateHeaders) -> [(&'static str, Cow<'static, str>); 3] {
    [
        (RATE_FIELDS[0], Cow::Owned(h.limit.to_string())),
        (RATE_FIELDS[1], Cow::Owned(h.remaining.to_string())),
        (RATE_FIELDS[2], Cow::Owned(h.reset_secs.to_string())),
    ]
}

/// The names of the rate-limit fields, in the order of their values.
pub const RATE_FIELDS: [&str; 3] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// A proxy-made error: short reason in the body and in `x-weft-error`, and the fields
/// the error adds (`error_fields`).
pub fn error(error: ProxyError, persistence: Persistence, head_only: bool) -> BytesMut {
    let (status, why) = (error.status(), error.reason());
    let body = error_body(status, why);
    let owned = error_fields(error);
    let fields: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    response(
        status,
        "text/plain",
        body.as_bytes(),
        persistence,
        head_only,
        &fields,
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
    persistence: Persistence,
    head_only: bool,
) -> BytesMut {
    response(
        status,
        content_type,
        body,
        persistence,
        head_only,
        &direct_headers(edits),
    )
}

/// The `Location` a redirect route sends this request to.
/// The `Location` of a redirect: the route's scheme, host and path where it sets them,
/// else the request's own (`client_scheme`: `https` on a TLS listener).
pub fn redirect_location(
    r: &Redirect,
    client_scheme: &str,
    authority: &str,
    path: &str,
    path_and_query: &str,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(client_scheme);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: BytesMut) -> String {
        String::from_utf8(b.to_vec()).expect("ascii")
    }

    #[test]
    fn errors_say_why_in_body_and_header() {
        let out = text(error(
            ProxyError::UpstreamConnectionFailed,
            Persistence::Close,
            false,
        ));
        assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
        assert!(
            out.contains("x-weft-error: upstream HTTP/2 connection failed\r\n"),
            "{out}"
        );
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert!(!out.contains("x-weft-overloaded"), "{out}");
        let overflow = text(error(
            ProxyError::Overflow(crate::upstream::Breaker::Requests),
            Persistence::Close,
            false,
        ));
        assert!(
            overflow.starts_with("HTTP/1.1 503 ")
                && overflow.contains("x-weft-error: overflow\r\n")
                && overflow.contains("x-weft-overloaded: true\r\n"),
            "{overflow}"
        );
        let body = "502 Bad Gateway: upstream HTTP/2 connection failed\n";
        assert!(out.ends_with(&format!("\r\n\r\n{body}")), "{out}");
        assert!(
            out.contains(&format!("content-length: {}\r\n", body.len())),
            "{out}"
        );
    }

    #[test]
    fn http10_keep_alive_is_said_and_http11_needs_no_word() {
        let kept = text(response(
            204,
            "text/plain",
            b"",
            Persistence::KeepAlive10,
            false,
            &[],
        ));
        assert!(kept.contains("connection: keep-alive\r\n"), "{kept}");
        let default = text(response(
            204,
            "text/plain",
            b"",
            Persistence::Keep,
            false,
            &[],
        ));
        assert!(!default.contains("connection:"), "{default}");
    }

    #[test]
    fn head_answers_keep_the_length_and_drop_the_body() {
        let out = text(response(
            200,
            "text/plain",
            b"hello",
            Persistence::Keep,
            true,
            &[],
        ));
        assert!(out.contains("content-length: 5\r\n"), "{out}");
        assert!(
            out.contains("\r\ndate: ") && out.contains(" GMT\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\n") && !out.contains("hello"), "{out}");
        assert!(!out.contains("connection:"), "{out}");
    }

    #[test]
    fn direct_responses_carry_the_route_edits_but_their_own_content_type() {
        let edits = HeaderEdits {
            set: vec![
                ("x-served-by".into(), "weft".into()),
                ("content-type".into(), "application/json".into()),
            ],
            remove: Vec::new(),
        };
        let out = text(direct(
            200,
            "text/plain",
            b"ok",
            &edits,
            Persistence::Keep,
            false,
        ));
        assert!(out.contains("x-served-by: weft\r\n"), "{out}");
        assert_eq!(out.matches("content-type").count(), 1, "{out}");
    }

    fn redirect(scheme: Option<&str>, host: Option<&str>, strip_query: bool) -> Redirect {
        Redirect {
            status: 301,
            scheme: scheme.map(str::to_owned),
            host: host.map(str::to_owned),
            path: None,
            prefix_rewrite: Some(("/old/".into(), "/new/".into())),
            strip_query,
        }
    }

    #[test]
    fn redirects_keep_what_the_route_does_not_set() {
        let r = redirect(None, None, false);
        assert_eq!(
            redirect_location(&r, "https", "shop:8443", "/old/a", "/old/a?x=1"),
            "https://shop:8443/new/a?x=1"
        );
        let r = redirect(Some("http"), Some("elsewhere"), true);
        assert_eq!(
            redirect_location(&r, "https", "shop", "/other", "/other?x=1"),
            "http://elsewhere/other"
        );
    }
}
