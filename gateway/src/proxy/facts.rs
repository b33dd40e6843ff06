//! What routing and the lifecycle look at in a request, HTTP/1.1 (`Facts`) or HTTP/2
//! (`H2Facts`): host, path, method, headers, and what decides the plan.
//!
//! Host comes from the absolute-form target if there is one (RFC 9112 §3.2.2), else
//! from `Host`; it is lowercased and stripped of its port once per request.

use std::borrow::Cow;
use std::time::Duration;

use http::request::Parts;
use weft_mesh::snapshot::{is_grpc_content_type, PathPolicy, RequestFacts};

use super::flow::SendBudget;
use super::grpc;
use super::rewrite;
use crate::proto::h1::head::{BodyFraming, Head, RequestHead};

/// What the lifecycle asks of a request, whichever protocol carried it.
pub trait Request: RequestFacts {
    /// The authority as the client sent it (with port).
    fn authority(&self) -> &str;
    fn path_and_query(&self) -> &str;
    /// A HEAD request: answers keep their length but carry no body.
    fn head_only(&self) -> bool;
    /// A gRPC call: errors weft makes are gRPC statuses.
    fn is_grpc(&self) -> bool;
    /// The call's `grpc-timeout`.
    fn grpc_timeout(&self) -> Option<Duration>;
    /// The body length the client declared.
    fn declared_length(&self) -> Option<u64>;
    /// What `[listeners.paths]` made of the path.
    fn path_outcome(&self) -> PathOutcome;
    /// The `Upgrade` value of a request that asks to switch protocols (HTTP/1.1 only:
    /// HTTP/2 has no upgrade).
    fn upgrade(&self) -> Option<&[u8]> {
        None
    }
    /// Whether the request has a body (even an empty one, announced).
    fn has_body(&self) -> bool;
    /// The request line and framing as they go upstream (`h1_upstream`: to an HTTP/1.1
    /// one), and the client's end-to-end fields: what a copy of the request is made of.
    fn outgoing(&self, h1_upstream: bool) -> rewrite::Outgoing<'_>;
    fn end_to_end(&self) -> impl Iterator<Item = (&[u8], &[u8])>;
}

/// The header that carries a verified client certificate's identity.
pub const CLIENT_CERT_HEADER: &str = "x-forwarded-client-cert";

pub struct Facts<'a> {
    pub head: &'a RequestHead,
    host: Cow<'a, str>,
    /// Authority as the client sent it (with port), for Host rewriting and redirects.
    pub authority: &'a str,
    /// Path and query, origin-form, as received.
    received_path_and_query: &'a str,
    received_path: &'a str,
    /// The normal form of the path, when it differs (`[listeners.paths]`).
    normalized: Option<Box<NormalTarget>>,
    pub path_outcome: PathOutcome,
    /// A verified client certificate's identity; what `x-forwarded-client-cert` means
    /// to routing (a client-sent header of that name is never believed).
    pub client_cert: Option<&'a str>,
}

impl<'a> Facts<'a> {
    pub fn new(head: &'a RequestHead, paths: PathPolicy) -> Facts<'a> {
        // httparse only accepts visible ASCII (and UTF-8) in the target.
        let target = std::str::from_utf8(head.target()).unwrap_or("/");
        let (uri_authority, path_and_query) = split_absolute(target);
        let authority = match uri_authority {
            Some(a) => a,
            None => head
                .host()
                .and_then(|h| std::str::from_utf8(h).ok())
                .unwrap_or(""),
        };
        let path = path_and_query.split('?').next().unwrap_or("/");
        let (path_outcome, normalized) = normal_target(path, path_and_query, paths);
        Facts {
            head,
            host: normalize_host(authority),
            authority,
            received_path_and_query: path_and_query,
            received_path: path,
            normalized,
            path_outcome,
            client_cert: None,
        }
    }

    /// The path routes see and the upstream receives (normalised), without the query.
    pub fn path(&self) -> &str {
        self.normalized
            .as_ref()
            .map_or(self.received_path, |n| n.path())
    }

    /// The path (normalised) and the query.
    pub fn path_and_query(&self) -> &str {
        self.normalized
            .as_ref()
            .map_or(self.received_path_and_query, |n| &n.path_and_query)
    }
}

/// What `[listeners.paths]` made of a request's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathOutcome {
    Unchanged,
    Rewritten,
    /// It climbs above `/`, or has a `%` without two hex digits: refused (400).
    Refused,
}

/// A normalised path with the query it came with; boxed, because it is rare and an
/// HTTP/2 stream task carries the facts inline.
#[derive(Debug)]
pub struct NormalTarget {
    pub path_and_query: String,
    path_len: usize,
}

impl NormalTarget {
    fn path(&self) -> &str {
        &self.path_and_query[..self.path_len]
    }
}

/// Normalises `path` under the listener's policy; `path_and_query` gives the query.
fn normal_target(
    path: &str,
    path_and_query: &str,
    paths: PathPolicy,
) -> (PathOutcome, Option<Box<NormalTarget>>) {
    if !paths.normalize {
        return (PathOutcome::Unchanged, None);
    }
    match crate::proto::path::normalize(path, paths.merge_slashes) {
        Ok(None) => (PathOutcome::Unchanged, None),
        Ok(Some(normal)) => {
            let path_len = normal.len();
            // `path` is the part of `path_and_query` before its `?`.
            let mut normal = normal;
            normal.push_str(&path_and_query[path.len()..]);
            (
                PathOutcome::Rewritten,
                Some(Box::new(NormalTarget {
                    path_and_query: normal,
                    path_len,
                })),
            )
        }
        Err(_) => (PathOutcome::Refused, None),
    }
}

/// `http://a.b:80/p?q` -> (`Some("a.b:80")`, `/p?q`); origin-form passes through.
fn split_absolute(target: &str) -> (Option<&str>, &str) {
    let rest = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(r) => r,
        None => return (None, target),
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (Some(&rest[..i]), &rest[i..]),
        // `http://host?q` has an empty path, which means `/`.
        Some(i) => (Some(&rest[..i]), "/"),
        None => (Some(rest), "/"),
    }
}

/// Lowercase host without port or a trailing dot; `[v6]` keeps its brackets.
fn normalize_host(authority: &str) -> Cow<'_, str> {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        }
    } else {
        let name = authority.split(':').next().unwrap_or(authority);
        // `admin.example.com.` is the same name, fully qualified: it must meet the same
        // routes (it once went past a host route to whatever matched next).
        name.strip_suffix('.').unwrap_or(name)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// `authority` as it goes upstream: the host as routing saw it (lowercase, without a
/// trailing dot), and the port as sent. Borrowed when it is already so.
pub fn normal_authority(authority: &str) -> Cow<'_, str> {
    // One pass for the common case, an authority already so (it runs per request).
    let mut previous = 0u8;
    let mut normal = true;
    for b in authority.bytes() {
        if b.is_ascii_uppercase() || (b == b':' && previous == b'.') {
            normal = false;
            break;
        }
        previous = b;
    }
    if normal && previous != b'.' {
        return Cow::Borrowed(authority);
    }
    let host = normalize_host(authority);
    let bracketed = authority.starts_with('[');
    let port = if bracketed {
        authority.find("]:").map(|i| &authority[i + 1..])
    } else {
        authority.find(':').map(|i| &authority[i..])
    };
    let unchanged = match port {
        Some(port) => authority.len() == host.len() + port.len(),
        None => authority.len() == host.len(),
    };
    match host {
        Cow::Borrowed(_) if unchanged => Cow::Borrowed(authority),
        host => Cow::Owned(format!("{host}{}", port.unwrap_or(""))),
    }
}

/// The bytes a reg-name may hold besides `%HH` (RFC 3986: unreserved and sub-delims),
/// as a table: this is read for every request's authority.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// Whether `authority` is `host[:port]` with a host that is a reg-name or an IP literal
/// (RFC 3986 §3.2.2), the port digits. What a second parser could read otherwise (a
/// space, a slash, a backslash, a quote) never reaches routing or an upstream. Empty
/// (an HTTP/1.0 request without Host) passes.
pub fn is_valid_authority(authority: &str) -> bool {
    if authority.is_empty() {
        return true;
    }
    let bytes = authority.as_bytes();
    // The host: an IP literal, or a reg-name up to the first `:` (one pass: this runs
    // for every request).
    let host_end = if bytes[0] == b'[' {
        let Some(close) = bytes.iter().position(|&b| b == b']') else {
            return false;
        };
        if authority[1..close].parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        close + 1
    } else {
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b':' {
            let b = bytes[i];
            if !REG_NAME[usize::from(b)] {
                let escape = b == b'%'
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                if !escape {
                    return false;
                }
            }
            i += 1;
        }
        if i == 0 {
            return false;
        }
        i
    };
    match &bytes[host_end..] {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

impl RequestFacts for Facts<'_> {
    fn host(&self) -> &str {
        &self.host
    }
    fn query(&self) -> &str {
        Facts::path_and_query(self)
            .split_once('?')
            .map_or("", |(_, q)| q)
    }
    fn path(&self) -> &str {
        Facts::path(self)
    }
    fn method(&self) -> &[u8] {
        self.head.method()
    }
    /// `host` is the authority routing uses (an absolute-form target's over `Host`).
    fn header(&self, name: &str) -> Option<&[u8]> {
        if name.eq_ignore_ascii_case(CLIENT_CERT_HEADER) {
            return self.client_cert.map(str::as_bytes);
        }
        if name.eq_ignore_ascii_case("host") {
            return Some(self.authority.as_bytes()).filter(|a| !a.is_empty());
        }
        Head::header(self.head, name)
    }
    fn any_header(&self, name: &str, mut pred: impl FnMut(&[u8]) -> bool) -> bool {
        if name.eq_ignore_ascii_case(CLIENT_CERT_HEADER) {
            return self.client_cert.is_some_and(|c| pred(c.as_bytes()));
        }
        if name.eq_ignore_ascii_case("host") {
            return self.header(name).is_some_and(pred);
        }
        let head = self.head;
        head.fields()
            .iter()
            .filter(|f| head.name(f).eq_ignore_ascii_case(name.as_bytes()))
            .any(|f| pred(head.value(f)))
    }
}

impl Request for Facts<'_> {
    fn authority(&self) -> &str {
        self.authority
    }
    fn path_and_query(&self) -> &str {
        Facts::path_and_query(self)
    }
    fn head_only(&self) -> bool {
        self.head.method() == b"HEAD"
    }
    /// Never for HTTP/1.1: a gRPC call over it is refused (`GrpcNeedsHttp2`), and errors
    /// to HTTP/1.1 clients are HTTP errors.
    fn is_grpc(&self) -> bool {
        false
    }
    fn grpc_timeout(&self) -> Option<Duration> {
        None
    }
    fn path_outcome(&self) -> PathOutcome {
        self.path_outcome
    }
    fn upgrade(&self) -> Option<&[u8]> {
        // The `Connection: upgrade` flag first: no field scan for the common request.
        self.head
            .is_upgrade()
            .then(|| self.head.header("upgrade"))
            .flatten()
    }
    fn declared_length(&self) -> Option<u64> {
        match self.head.framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        }
    }
    fn has_body(&self) -> bool {
        self.head.framing != BodyFraming::None
    }
    fn outgoing(&self, _h1_upstream: bool) -> rewrite::Outgoing<'_> {
        rewrite::h1_outgoing(self, false)
    }
    fn end_to_end(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        rewrite::h1_headers(self.head)
    }
}

impl Facts<'_> {
    /// A gRPC content type: a call HTTP/1.1 cannot carry.
    pub fn is_grpc_content(&self) -> bool {
        self.head
            .header("content-type")
            .is_some_and(is_grpc_content_type)
    }
}

/// What routing and relaying look at in an HTTP/2 request.
pub struct H2Facts<'a> {
    pub parts: &'a Parts,
    host: Cow<'a, str>,
    pub authority: &'a str,
    /// A gRPC call: errors weft makes are gRPC statuses.
    pub grpc: bool,
    /// The call's `grpc-timeout`.
    pub grpc_timeout: Option<Duration>,
    /// A verified client certificate's identity (see `facts::CLIENT_CERT_HEADER`).
    pub client_cert: Option<&'a str>,
    /// What the connection's streams may queue for the client.
    pub send_budget: &'a SendBudget,
    /// The normal form of the path, when it differs (`[listeners.paths]`).
    normalized: Option<Box<NormalTarget>>,
    pub path_outcome: PathOutcome,
    /// The stream did not end with its head: a body follows.
    pub has_body: bool,
}

impl<'a> H2Facts<'a> {
    pub fn new(parts: &'a Parts, send_budget: &'a SendBudget, paths: PathPolicy) -> H2Facts<'a> {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let grpc = grpc::is_grpc(&parts.headers);
        let received_path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let (path_outcome, normalized) =
            normal_target(parts.uri.path(), received_path_and_query, paths);
        H2Facts {
            parts,
            host: normalize_host(authority),
            authority,
            grpc,
            grpc_timeout: grpc.then(|| grpc::timeout(&parts.headers)).flatten(),
            client_cert: None,
            send_budget,
            normalized,
            path_outcome,
            has_body: false,
        }
    }

    // Path and query are read from the URI when asked (the normal form only when it
    // differs): a stream task carries this struct, spawned (moved) whole per request.
    /// The path routes see and the upstream receives (normalised), without the query.
    pub fn uri_path(&self) -> &str {
        match &self.normalized {
            Some(n) => n.path(),
            None => self.parts.uri.path(),
        }
    }

    /// The path (normalised) and the query.
    pub fn uri_path_and_query(&self) -> &str {
        match &self.normalized {
            Some(n) => &n.path_and_query,
            None => self.parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        }
    }

    /// The client's `content-length` (h2 checked it against the DATA it carries).
    pub fn declared_length(&self) -> Option<u64> {
        content_length(&self.parts.headers)
    }

    /// The client's end-to-end headers (none that describe the connection).
    pub fn end_to_end_headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.parts
            .headers
            .iter()
            // The same hop-by-hop set as an HTTP/1.1 client's (`proxy-authorization`
            // and `trailer` included); HTTP/2 has no `Connection` to list more.
            .filter(|(n, _)| !weft_mesh::fields::is_hop_by_hop(n.as_str().as_bytes()))
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

impl RequestFacts for H2Facts<'_> {
    fn host(&self) -> &str {
        &self.host
    }
    fn query(&self) -> &str {
        self.uri_path_and_query()
            .split_once('?')
            .map_or("", |(_, q)| q)
    }
    fn path(&self) -> &str {
        self.uri_path()
    }
    fn method(&self) -> &[u8] {
        self.parts.method.as_str().as_bytes()
    }
    /// `host` is `:authority` (or `host` without one), what routing uses.
    fn header(&self, name: &str) -> Option<&[u8]> {
        if name.eq_ignore_ascii_case(CLIENT_CERT_HEADER) {
            return self.client_cert.map(str::as_bytes);
        }
        if name.eq_ignore_ascii_case("host") {
            return Some(self.authority.as_bytes()).filter(|a| !a.is_empty());
        }
        self.parts.headers.get(name).map(|v| v.as_bytes())
    }
    fn any_header(&self, name: &str, mut pred: impl FnMut(&[u8]) -> bool) -> bool {
        if name.eq_ignore_ascii_case(CLIENT_CERT_HEADER) {
            return self.client_cert.is_some_and(|c| pred(c.as_bytes()));
        }
        if name.eq_ignore_ascii_case("host") {
            return self.header(name).is_some_and(pred);
        }
        self.parts
            .headers
            .get_all(name)
            .iter()
            .any(|v| pred(v.as_bytes()))
    }
}

impl Request for H2Facts<'_> {
    fn authority(&self) -> &str {
        self.authority
    }
    fn path_and_query(&self) -> &str {
        self.uri_path_and_query()
    }
    fn head_only(&self) -> bool {
        self.parts.method == http::Method::HEAD
    }
    fn is_grpc(&self) -> bool {
        self.grpc
    }
    fn grpc_timeout(&self) -> Option<Duration> {
        self.grpc_timeout
    }
    fn declared_length(&self) -> Option<u64> {
        H2Facts::declared_length(self)
    }
    fn path_outcome(&self) -> PathOutcome {
        self.path_outcome
    }
    fn has_body(&self) -> bool {
        self.has_body
    }
    fn outgoing(&self, h1_upstream: bool) -> rewrite::Outgoing<'_> {
        rewrite::h2_outgoing(self, self.has_body, h1_upstream)
    }
    fn end_to_end(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.end_to_end_headers()
    }
}

/// A `content-length` as an HTTP/2 head carries it (h2 has checked it against the
/// DATA), or `None` when there is none or it does not parse.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_and_hosts() {
        assert_eq!(
            split_absolute("http://billing/x?y"),
            (Some("billing"), "/x?y")
        );
        assert_eq!(split_absolute("http://billing"), (Some("billing"), "/"));
        assert_eq!(split_absolute("/a"), (None, "/a"));
        assert_eq!(normalize_host("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(
            normalize_host("Admin.Example.com.:443"),
            "admin.example.com"
        );
        assert_eq!(normalize_host("admin.example.com."), "admin.example.com");
        assert_eq!(
            normal_authority("Admin.Example.com.:8443"),
            "admin.example.com:8443"
        );
        assert!(matches!(
            normal_authority("shop:80"),
            Cow::Borrowed("shop:80")
        ));
        assert_eq!(normal_authority("[::1]:80"), "[::1]:80");
        assert_eq!(normal_authority("A."), "a");
        for good in [
            "shop",
            "shop.example.com:8080",
            "[::1]:443",
            "[2001:db8::1]",
            "a_b.x",
            "x%41",
        ] {
            assert!(is_valid_authority(good), "{good}");
        }
        for bad in [
            "sh op", "a/b", "a\\b", "\"q\"", ":80", "a:8o", "a:123456", "[::1", "[x]", "[::1]x",
            "::1", "a:1:2", "x%4", "h\u{e9}",
        ] {
            assert!(!is_valid_authority(bad), "{bad}");
        }
    }
}
