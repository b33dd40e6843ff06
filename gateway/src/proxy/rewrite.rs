//! The heads weft sends on: the request to the upstream, the response to the client.
//!
//! Both drop hop-by-hop headers (and any named in `Connection`), apply the route's
//! header edits, and state framing for the next hop explicitly. Header names and values
//! are copied as received; nothing is re-cased or re-folded.
//!
//! Invariant: the framing a head states is the framing weft decided and will send by,
//! written here from that decision. A received `Content-Length` or `Transfer-Encoding`
//! is never copied, so a head cannot leave with two framings, none, or one that differs
//! from the body that follows it.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use weft_mesh::config::ForwardedConfig;
use weft_mesh::fields;
use weft_mesh::snapshot::{Forward, HeaderEdits, TrustedProxies};

use super::error::ProxyError;
use super::facts::{normal_authority, Facts, H2Facts, CLIENT_CERT_HEADER};
use super::trust;
use crate::proto::h1::head::{
    parse_length, trim, BodyFraming, Head, RequestHead, ResponseHead, Version,
};
use crate::proto::h1::reason;

/// Client-side facts the forwarded-headers need.
pub struct ClientInfo<'a> {
    pub peer: SocketAddr,
    /// `http`, or `https` on TLS listeners.
    pub scheme: &'static str,
    /// The `x-forwarded-client-cert` value to send, when a verified client certificate
    /// is to be forwarded.
    pub client_cert: Option<&'a str>,
    /// Whose forwarding fields are believed (`trust`).
    pub trust: &'a TrustedProxies,
    /// The attempt this is (1 first), sent as `x-weft-attempt-count` when the retry
    /// policy says so.
    pub attempt: Option<u8>,
}

/// The request line and framing of a request going upstream, whatever protocol the
/// client spoke.
pub struct Outgoing<'a> {
    pub method: &'a [u8],
    pub path: &'a str,
    pub path_and_query: &'a str,
    /// Authority the client addressed (Host or :authority); empty if none.
    pub authority: &'a str,
    /// The body goes with the chunked coding (HTTP/1.1 upstreams).
    pub chunked: bool,
    /// The body's length, stated as `content-length` (never together with `chunked`).
    pub length: Option<u64>,
    pub accepts_trailers: bool,
    /// The `Upgrade` protocol, when the client asked to switch protocols.
    pub upgrade: Option<&'a [u8]>,
    /// The protocol weft received the request in, as `Via` names it.
    pub via: ViaVersion,
}

/// The received-protocol of `Via` (RFC 9110 §7.6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViaVersion {
    Http10,
    Http11,
    Http2,
}

/// This process's name in `Via` (`weft-` and 64 random bits): a request that arrives
/// carrying it has come back around (a cluster pointing at weft itself) and is refused
/// with 508 instead of being sent around again.
fn via_token() -> &'static str {
    &via_values()[3]
}

/// This hop's `Via` value for each received protocol, made once (formatting it for
/// every request would cost more than writing it), and the bare token last.
fn via_values() -> &'static [String; 4] {
    static VALUES: std::sync::OnceLock<[String; 4]> = std::sync::OnceLock::new();
    VALUES.get_or_init(|| {
        let token = format!("weft-{:016x}", fastrand::u64(..));
        [
            format!("1.0 {token}"),
            format!("1.1 {token}"),
            format!("2 {token}"),
            token,
        ]
    })
}

impl ViaVersion {
    fn value(self) -> &'static [u8] {
        via_values()[self as usize].as_bytes()
    }
}

/// `n` in decimal, written into `buf` (the formatter costs hundreds of instructions,
/// and on the HTTP/2 path an allocation, per field).
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// A new request id: 128 random bits as 32 lowercase hex digits. Written by hand: the
/// formatter (`{:032x}` of a u128) took ~1,000 instructions a request, a tenth of what
/// weft spends on a proxied HTTP/1.1 request.
fn request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut out = [0u8; 32];
    for digit in out.iter_mut().rev() {
        *digit = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    out
}

/// Whether a `Via` value names this process.
fn names_us(via: &[u8]) -> bool {
    let token = via_token().as_bytes();
    via.windows(token.len()).any(|w| w == token)
}

/// Where the headers of a head being built go: an HTTP/1.1 head as bytes, or the
/// header map of an HTTP/2 request.
pub trait HeaderSink {
    fn header(&mut self, name: &[u8], value: &[u8]);
    fn header_fmt(&mut self, name: &[u8], value: fmt::Arguments<'_>);
    /// Whether several `cookie` fields must go out as one: HTTP/1.1 has one `Cookie`
    /// line, HTTP/2 splits it into a field per cookie (RFC 9113 §8.2.3).
    fn joins_cookies(&self) -> bool {
        false
    }
}

/// Values are written as given, so each must already be a valid field value (no
/// control byte: a CR/LF would end the line), as `http::HeaderValue` makes sure on the
/// HTTP/2 path: parsed fields are (httparse and h2 refuse the rest), config values are
/// checked at load, and what weft makes from outside input is checked where it is made
/// (`field_value`).
impl HeaderSink for BytesMut {
    fn header(&mut self, name: &[u8], value: &[u8]) {
        push_header(self, name, value);
    }
    fn header_fmt(&mut self, name: &[u8], value: fmt::Arguments<'_>) {
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
        let _ = self.write_fmt(value);
        self.extend_from_slice(b"\r\n");
    }
    fn joins_cookies(&self) -> bool {
        true
    }
}

/// The fields of an HTTP/2 response head (names and values were checked where they came
/// from: the upstream's head by h2 or the parser, a route's edits at config load).
impl HeaderSink for http::HeaderMap {
    fn header(&mut self, name: &[u8], value: &[u8]) {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            self.append(n, v);
        }
    }
    fn header_fmt(&mut self, name: &[u8], value: fmt::Arguments<'_>) {
        self.header(name, value.to_string().as_bytes());
    }
}

/// A route's header edits on any head, request or response, HTTP/1.1 or HTTP/2: the
/// builder keeps each received field the edits do not drop (`HeaderEdits::drops`),
/// then this appends the edits' own fields. The one place a route's `set` is written.
pub fn append_edits(edits: &HeaderEdits, sink: &mut impl HeaderSink) {
    for (name, value) in &edits.set {
        sink.header(name.as_bytes(), value.as_bytes());
    }
}

/// What a response gets besides the fields it came with: the route's edits, the
/// `Set-Cookie` a cookie hash policy made for this request (`proxy::affinity`), and
/// the attempts it took, when the retry policy says so.
#[derive(Clone, Copy)]
pub struct ResponseEdits<'a> {
    pub route: &'a HeaderEdits,
    pub set_cookie: Option<&'a str>,
    pub attempts: Option<u8>,
    /// A rate limit's `x-ratelimit-*`.
    pub rate: Option<super::rate_limit::RateHeaders>,
}

/// The attempt a request is, upstream, and the attempts it took, back to the client.
pub const ATTEMPT_COUNT_HEADER: &str = "x-weft-attempt-count";

impl ResponseEdits<'_> {
    pub fn drops(&self, name: &[u8]) -> bool {
        self.route.drops(name)
    }

    /// Appends the route's fields, then the cookie (appended, never replacing the
    /// upstream's own `Set-Cookie`s).
    pub fn append(&self, sink: &mut impl HeaderSink) {
        append_edits(self.route, sink);
        if let Some(cookie) = self.set_cookie {
            sink.header(b"set-cookie", cookie.as_bytes());
        }
        let mut digits = [0u8; 10];
        if let Some(n) = self.attempts {
            sink.header(
                ATTEMPT_COUNT_HEADER.as_bytes(),
                decimal(u32::from(n), &mut digits),
            );
        }
        if let Some(rate) = self.rate {
            let values = [rate.limit.get(), rate.remaining, rate.reset_secs];
            for (name, value) in super::local::RATE_FIELDS.iter().zip(values) {
                sink.header(name.as_bytes(), decimal(value, &mut digits));
            }
        }
    }
}

/// Headers of a request to an HTTP/2 upstream: lowercase names, no connection-specific
/// fields (RFC 9113 §8.2.2), and `host` turned into the `:authority`.
#[derive(Default)]
pub struct H2Headers {
    pub map: http::HeaderMap,
    pub authority: Option<String>,
}

impl HeaderSink for H2Headers {
    fn header(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"host") {
            self.authority = Some(String::from_utf8_lossy(value).into_owned());
            return;
        }
        if fields::is_connection_specific(name)
            && !(name.eq_ignore_ascii_case(b"te") && value.eq_ignore_ascii_case(b"trailers"))
        {
            return;
        }
        // Names and values that cannot travel in HTTP/2 were refused when parsed; a
        // route's edits are validated at config load.
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            self.map.append(n, v);
        }
    }
    fn header_fmt(&mut self, name: &[u8], value: fmt::Arguments<'_>) {
        self.header(name, value.to_string().as_bytes());
    }
}

/// The path (and query) sent upstream: the route's prefix rewrite applied.
pub fn upstream_target<'a>(req: &Outgoing<'a>, forward: &Forward) -> Cow<'a, str> {
    match &forward.prefix_rewrite {
        Some((prefix, repl)) if req.path.starts_with(prefix.as_str()) => {
            Cow::Owned(format!("{repl}{}", &req.path_and_query[prefix.len()..]))
        }
        _ => Cow::Borrowed(req.path_and_query),
    }
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
    client: &ClientInfo<'_>,
    endpoint: SocketAddr,
) -> Result<BytesMut, ProxyError> {
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(req.method);
    out.extend_from_slice(b" ");
    out.extend_from_slice(upstream_target(req, forward).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    request_headers(req, headers, edits, fwd, client, endpoint, &mut out)?;
    if req.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(proto) = req.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        push_header(&mut out, b"upgrade", proto);
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// The end-to-end headers of a forwarded request, whatever protocol carries them:
/// the client's (less Host and what the route drops), then Host, the forwarding
/// headers, the request id, `Via`, the route's additions and `te: trailers`. A request
/// whose `Via` names this process is `LoopDetected` (found while its fields are copied
/// anyway: no extra pass).
///
/// The forwarding headers say what weft saw, after what trusted proxies said
/// (`trust`): of a client's `X-Forwarded-For` and `Forwarded` (all their fields, as one
/// list each) only the elements trusted proxies vouch for go on; its
/// `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Port` and `X-Real-IP` only
/// from a trusted peer.
pub fn request_headers<'h>(
    req: &Outgoing<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    edits: &HeaderEdits,
    fwd: &ForwardedConfig,
    client: &ClientInfo<'_>,
    endpoint: SocketAddr,
    out: &mut impl HeaderSink,
) -> Result<(), ProxyError> {
    // Lists the client split over several fields, as one (copied only once a second
    // field arrives: the common single field is borrowed).
    let mut prior_xff: Option<Cow<'h, [u8]>> = None;
    let mut prior_forwarded: Option<Cow<'h, [u8]>> = None;
    let mut prior_proto: Option<&'h [u8]> = None;
    let mut has_request_id = false;
    let peer_vouched = client.trust.vouches_for_peer(client.peer.ip());
    // Cookies for an HTTP/1.1 head, joined with "; ".
    let join_cookies = out.joins_cookies();
    let mut cookies: Option<Cow<'h, [u8]>> = None;
    for (name, value) in headers {
        if join_cookies && name.eq_ignore_ascii_case(b"cookie") && !edits.drops(name) {
            join(&mut cookies, value, b"; ");
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") && names_us(value) {
            return Err(ProxyError::LoopDetected);
        }
        if fields::aliases_vouched(name) {
            // `X_Forwarded_For` and friends: what the origin's framework reads as the
            // field weft vouches for.
            continue;
        }
        if edits.drops(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"content-length")
        {
            // Host is written below, from the authority routing used; the length from
            // the framing weft decided.
            continue;
        }
        if fwd.x_forwarded_for && name.eq_ignore_ascii_case(b"x-forwarded-for") {
            join(&mut prior_xff, value, b", ");
            continue;
        }
        if name.eq_ignore_ascii_case(b"forwarded") {
            join(&mut prior_forwarded, value, b", ");
            continue;
        }
        if fwd.x_forwarded_proto && name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            prior_proto = prior_proto.or(Some(value));
            continue;
        }
        if !peer_vouched
            && (name.eq_ignore_ascii_case(b"x-forwarded-host")
                || name.eq_ignore_ascii_case(b"x-forwarded-port")
                || name.eq_ignore_ascii_case(b"x-real-ip"))
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") {
            has_request_id = true;
        }
        if name.eq_ignore_ascii_case(CLIENT_CERT_HEADER.as_bytes())
            || name.eq_ignore_ascii_case(ATTEMPT_COUNT_HEADER.as_bytes())
        {
            // Only weft vouches for a client certificate, and counts its attempts.
            continue;
        }
        out.header(name, value);
    }
    if let Some(cookies) = &cookies {
        out.header(b"cookie", cookies);
    }
    if let Some(cert) = client.client_cert.filter(|c| field_value(c.as_bytes())) {
        out.header(CLIENT_CERT_HEADER.as_bytes(), cert.as_bytes());
    }
    if let Some(n) = req.length.filter(|_| !req.chunked) {
        out.header_fmt(b"content-length", format_args!("{n}"));
    }
    if req.authority.is_empty() {
        // A request without any authority (HTTP/1.0) names the endpoint it goes to.
        out.header_fmt(b"host", format_args!("{endpoint}"));
    } else {
        // The host routing saw (lowercase, no trailing dot), so the upstream's virtual
        // hosts see the name weft's routes did.
        out.header(b"host", normal_authority(req.authority).as_bytes());
    }
    let ip = client.peer.ip();
    if fwd.x_forwarded_for {
        let prior = vouched(&prior_xff, client, trust::xff_address);
        if prior.is_empty() {
            out.header_fmt(b"x-forwarded-for", format_args!("{ip}"));
        } else {
            out.header_fmt(
                b"x-forwarded-for",
                format_args!("{}, {ip}", String::from_utf8_lossy(prior)),
            );
        }
    }
    if fwd.x_forwarded_proto {
        match prior_proto.filter(|_| peer_vouched) {
            Some(proto) => out.header(b"x-forwarded-proto", proto),
            None => out.header(b"x-forwarded-proto", client.scheme.as_bytes()),
        }
    }
    let prior_forwarded = vouched(&prior_forwarded, client, trust::forwarded_for_address);
    if !prior_forwarded.is_empty() {
        // This hop's element, if any, follows in a field of its own: one list.
        out.header(b"forwarded", prior_forwarded);
    }
    if fwd.forwarded {
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let host_ok = !req.authority.is_empty()
            && req
                .authority
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"');
        if host_ok {
            out.header_fmt(
                b"forwarded",
                format_args!(
                    "for={node};proto={};host=\"{}\"",
                    client.scheme, req.authority
                ),
            );
        } else {
            out.header_fmt(
                b"forwarded",
                format_args!("for={node};proto={}", client.scheme),
            );
        }
    }
    if fwd.request_id && !has_request_id {
        out.header(b"x-request-id", &request_id());
    }
    // The client's own `Via` fields went through above; this hop is one more.
    out.header(b"via", req.via.value());
    if let Some(n) = client.attempt {
        let mut digits = [0u8; 10];
        out.header(
            ATTEMPT_COUNT_HEADER.as_bytes(),
            decimal(u32::from(n), &mut digits),
        );
    }
    append_edits(edits, out);
    if req.accepts_trailers {
        // TE is hop-by-hop, but "trailers" holds for the next hop too: weft passes
        // trailers through.
        out.header(b"te", b"trailers");
    }
    Ok(())
}

/// The request line and framing of this request as it goes upstream. A body of
/// unknown length goes to an HTTP/1.1 upstream (`h1`) with the chunked coding; a
/// request without a body states a length only if the client did (as 0, what
/// follows).
pub fn h2_outgoing<'f>(facts: &'f H2Facts<'_>, has_body: bool, h1: bool) -> Outgoing<'f> {
    let parts = facts.parts;
    let declared = facts.declared_length();
    Outgoing {
        method: parts.method.as_str().as_bytes(),
        path: facts.uri_path(),
        path_and_query: facts.uri_path_and_query(),
        authority: facts.authority,
        chunked: h1 && has_body && declared.is_none(),
        length: if has_body {
            declared
        } else {
            declared.map(|_| 0)
        },
        accepts_trailers: parts
            .headers
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")),
        upgrade: None,
        via: ViaVersion::Http2,
    }
}

/// The request line and framing of an HTTP/1.1 client's request; its `Upgrade` goes
/// on when `upgrade` (the lifecycle allowed it).
pub fn h1_outgoing<'f>(facts: &'f Facts<'_>, upgrade: bool) -> Outgoing<'f> {
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
    Outgoing {
        method: head.method(),
        path: facts.path(),
        path_and_query: facts.path_and_query(),
        authority: facts.authority,
        chunked: head.framing == BodyFraming::Chunked,
        length: match head.framing {
            BodyFraming::Length(n) => Some(n),
            // An announced empty body keeps its `content-length: 0`.
            BodyFraming::None => head.content_length,
            BodyFraming::Chunked | BodyFraming::UntilClose => None,
        },
        accepts_trailers,
        upgrade: if upgrade {
            head.header("upgrade")
        } else {
            None
        },
        via: match head.version {
            Version::H10 => ViaVersion::Http10,
            _ => ViaVersion::Http11,
        },
    }
}

/// An HTTP/1.1 client's end-to-end headers.
pub fn h1_headers<'h>(head: &'h RequestHead) -> impl Iterator<Item = (&'h [u8], &'h [u8])> {
    head.headers
        .iter()
        .filter(|f| !head.is_hop_by_hop(f, &head.connection))
        // weft answered a 100-continue itself.
        .filter(|f| !(head.expect_continue && head.name(f).eq_ignore_ascii_case(b"expect")))
        .map(|f| (head.name(f), head.value(f)))
}

/// The upstream request head for an HTTP/1.1 client's request.
pub fn h1_request_head(
    facts: &Facts<'_>,
    forward: &Forward,
    edits: &HeaderEdits,
    fwd: &ForwardedConfig,
    client: &ClientInfo<'_>,
    endpoint: SocketAddr,
    upgrade: bool,
) -> Result<BytesMut, ProxyError> {
    let req = h1_outgoing(facts, upgrade);
    request_head(
        &req,
        h1_headers(facts.head),
        forward,
        edits,
        fwd,
        client,
        endpoint,
    )
}

/// The request for an HTTP/2 upstream, from any client: its end-to-end headers with the
/// forwarding headers and the route's edits, the authority, and the rewritten path.
/// `TargetNotValidForHttp2` if the target cannot be written as an HTTP/2 request.
#[allow(clippy::too_many_arguments)]
pub fn h2_request<'h>(
    req: &Outgoing<'_>,
    method: http::Method,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    forward: &Forward,
    edits: &HeaderEdits,
    fwd: &ForwardedConfig,
    client: &ClientInfo<'_>,
    endpoint: SocketAddr,
    upstream_tls: bool,
) -> Result<http::Request<()>, ProxyError> {
    let mut out = H2Headers::default();
    request_headers(req, headers, edits, fwd, client, endpoint, &mut out)?;
    let authority = out.authority.unwrap_or_else(|| endpoint.to_string());
    // `:scheme` names the upstream leg: a TLS upstream checks it against its own.
    let uri = http::Uri::builder()
        .scheme(if upstream_tls { "https" } else { "http" })
        .authority(authority)
        .path_and_query(upstream_target(req, forward).as_ref())
        .build()
        .map_err(|_| ProxyError::TargetNotValidForHttp2)?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .map_err(|_| ProxyError::TargetNotValidForHttp2)?;
    *request.headers_mut() = out.map;
    Ok(request)
}

/// The HTTP/1.1 response head for an HTTP/2 upstream's response: `framing` says how
/// the body travels (the h2 response has none of its own beyond content-length).
pub fn h1_response_head_from_h2(
    resp: &http::response::Parts,
    edits: ResponseEdits<'_>,
    framing: ClientFraming,
    version: Version,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    let status = resp.status.as_u16();
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in &resp.headers {
        let name = name.as_str().as_bytes();
        if !edits.drops(name) && !fields::is_framing(name) && !fields::is_weft_made(name) {
            push_header(&mut out, name, value.as_bytes());
        }
    }
    edits.append(&mut out);
    push_framing(&mut out, framing, version);
    out.extend_from_slice(b"\r\n");
    out
}

/// The lines that state how the body travels to the client and whether the connection
/// stays open.
fn push_framing(out: &mut BytesMut, framing: ClientFraming, version: Version) {
    if framing.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = framing.length {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    if framing.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::H10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
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
    /// The `content-length` to state (a length-framed body, or the length a bodiless
    /// answer to HEAD or a 304 announces); `None` for chunked or close-delimited ones.
    pub length: Option<u64>,
}

/// Whether `value` is the canonical decimal form of `n` (no sign, space or leading 0):
/// then the received field can be sent on as it is, instead of formatting `n` anew.
pub fn states_exactly(value: &[u8], n: u64) -> bool {
    let no_leading_zero = value.len() == 1 || value.first() != Some(&b'0');
    no_leading_zero && parse_length(value) == Some(n)
}

/// The `content-length` a response from an HTTP/1.1 upstream states to the client:
/// its body's length, or for a response without a body (HEAD, 304) the length it
/// announced. 1xx and 204 responses never carry one (RFC 9110 §8.6).
pub fn stated_length(resp: &ResponseHead) -> Option<u64> {
    match resp.framing {
        BodyFraming::Length(n) => Some(n),
        BodyFraming::None if resp.status >= 200 && resp.status != 204 => resp.content_length,
        _ => None,
    }
}

pub fn client_framing(req: &RequestHead, resp: &ResponseHead, keep_alive: bool) -> ClientFraming {
    let h10 = req.version == Version::H10;
    match resp.framing {
        BodyFraming::Chunked if h10 => ClientFraming {
            chunked: false,
            dechunk: true,
            close: true,
            length: None,
        },
        BodyFraming::Chunked => ClientFraming {
            chunked: true,
            dechunk: false,
            close: !keep_alive,
            length: None,
        },
        BodyFraming::UntilClose => ClientFraming {
            chunked: false,
            dechunk: false,
            close: true,
            length: None,
        },
        BodyFraming::None | BodyFraming::Length(_) => ClientFraming {
            chunked: false,
            dechunk: false,
            close: !keep_alive,
            length: stated_length(resp),
        },
    }
}

pub fn response_head(
    req: &RequestHead,
    resp: &ResponseHead,
    edits: ResponseEdits<'_>,
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
    let mut received_length: &[u8] = b"";
    for f in &resp.headers {
        let name = resp.name(f);
        if fields::is_framing(name) {
            if name.eq_ignore_ascii_case(b"content-length") {
                received_length = resp.value(f);
            }
            continue;
        }
        if resp.is_hop_by_hop(f, &resp.connection)
            || edits.drops(name)
            || fields::is_weft_made(name)
        {
            continue;
        }
        push_header(&mut out, name, resp.value(f));
    }
    edits.append(&mut out);
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(proto) = resp.header("upgrade") {
            push_header(&mut out, b"upgrade", proto);
        }
    } else if framing
        .length
        .is_some_and(|n| states_exactly(received_length, n))
    {
        // The common case: the received length is the one decided; sent on as it is.
        push_header(&mut out, b"content-length", received_length);
        let rest = ClientFraming {
            length: None,
            ..framing
        };
        push_framing(&mut out, rest, req.version);
    } else {
        push_framing(&mut out, framing, req.version);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The part of a client's forwarding `list` (if it sent one) that trusted proxies
/// vouch for, borrowed from it.
fn vouched<'l>(
    list: &'l Option<Cow<'_, [u8]>>,
    client: &ClientInfo<'_>,
    address_of: fn(&[u8]) -> Option<IpAddr>,
) -> &'l [u8] {
    list.as_deref().map_or(&[], |l| {
        trust::vouched_suffix(client.trust, l, client.peer.ip(), address_of)
    })
}

/// Whether `value` may be written as a field value: no control byte but tab (the rule
/// of RFC 9110 §5.5 that `http::HeaderValue` applies). For values weft makes from
/// outside input (a certificate's names), checked however they were made.
fn field_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Appends `value` to the list in `joined` with `separator` (borrowed while one field).
fn join<'h>(joined: &mut Option<Cow<'h, [u8]>>, value: &'h [u8], separator: &[u8]) {
    match joined {
        None => *joined = Some(Cow::Borrowed(value)),
        Some(list) => {
            let list = list.to_mut();
            list.extend_from_slice(separator);
            list.extend_from_slice(value);
        }
    }
}

fn push_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// An HTTP/2 client's trailers as they go on to an HTTP/2 upstream: less any field a
/// request's trailer section may not carry (`fields::Trailers::Request`), as the
/// chunked parser refuses them from an HTTP/1.1 client and `last_chunk` drops them
/// for an HTTP/1.1 upstream.
pub fn request_trailers(mut trailers: http::HeaderMap) -> http::HeaderMap {
    let forbidden: Vec<http::HeaderName> = trailers
        .keys()
        .filter(|n| fields::forbidden_trailer(n.as_str().as_bytes(), fields::Trailers::Request))
        .cloned()
        .collect();
    for name in &forbidden {
        trailers.remove(name);
    }
    trailers
}

/// An interim (1xx) response for an HTTP/1.1 client, re-serialised as final heads are:
/// weft's status line and the upstream's end-to-end fields, without hop-by-hop, framing
/// or weft-made ones. Relaying the upstream's bytes as received passed on whatever its
/// head carried, `Connection`-listed fields included.
pub fn interim_head(resp: &ResponseHead) -> BytesMut {
    let mut out = BytesMut::with_capacity(resp.raw.len());
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for f in &resp.headers {
        let name = resp.name(f);
        if fields::is_framing(name)
            || fields::is_weft_made(name)
            || resp.is_hop_by_hop(f, &resp.connection)
        {
            continue;
        }
        push_header(&mut out, name, resp.value(f));
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends configured `(name, value)` fields (a route's `set` edits, a local answer's
/// headers) to an HTTP/2 head; `None` when one is not valid there.
pub fn append_fields<'a>(
    headers: &mut http::HeaderMap,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<()> {
    for (name, value) in fields {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).ok()?,
            http::HeaderValue::from_str(value).ok()?,
        );
    }
    Some(())
}

#[cfg(test)]
mod decimal_tests {
    #[test]
    fn decimals() {
        let mut buf = [0u8; 10];
        for n in [0u32, 7, 10, 4096, u32::MAX] {
            assert_eq!(super::decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::h1::head::parse_request;
    use crate::proxy::facts::Facts;
    use weft_mesh::snapshot::PathPolicy;

    /// The head weft sends upstream for `request`, from `peer`, with `fwd`, at an edge
    /// (no proxy trusted).
    fn upstream_head(
        request: &str,
        peer: &str,
        fwd: &ForwardedConfig,
        cert: Option<&str>,
    ) -> String {
        upstream_head_trusting(request, peer, fwd, cert, &TrustedProxies::default())
    }

    fn upstream_head_trusting(
        request: &str,
        peer: &str,
        fwd: &ForwardedConfig,
        cert: Option<&str>,
        trust: &TrustedProxies,
    ) -> String {
        let mut buf = BytesMut::from(request);
        let head = parse_request(&mut buf, 64 * 1024, 100)
            .expect("parses")
            .expect("complete");
        let facts = Facts::new(&head, PathPolicy::default());
        let forward = Forward {
            targets: Vec::new(),
            total_weight: 0,
            prefix_rewrite: None,
            hash_policy: Vec::new(),
            sticky: None,
        };
        let client = ClientInfo {
            peer: peer.parse().expect("peer"),
            scheme: "http",
            client_cert: cert,
            trust,
            attempt: None,
        };
        let out = h1_request_head(
            &facts,
            &forward,
            &HeaderEdits::default(),
            fwd,
            &client,
            "10.0.0.9:8080".parse().expect("endpoint"),
            false,
        )
        .expect("forwardable");
        String::from_utf8(out.to_vec()).expect("ascii")
    }

    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let (a, b) = (request_id(), request_id());
        assert!(a
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn via_names_this_hop_and_a_request_carrying_it_is_a_loop() {
        let out = upstream_head(
            "GET /a HTTP/1.1\r\nHost: shop\r\nVia: 1.1 edge\r\n\r\n",
            "192.0.2.1:5000",
            &defaults(),
            None,
        );
        let ours = format!("via: 1.1 {}\r\n", via_token());
        assert!(
            out.contains("Via: 1.1 edge\r\n") && out.contains(&ours),
            "{out}"
        );
        // The same request coming back through this weft.
        let mut buf = BytesMut::from(out.as_bytes());
        let head = parse_request(&mut buf, 64 * 1024, 100)
            .expect("parses")
            .expect("complete");
        let client = ClientInfo {
            peer: "127.0.0.1:1".parse().expect("peer"),
            scheme: "http",
            client_cert: None,
            trust: &TrustedProxies::default(),
            attempt: None,
        };
        let forward = Forward {
            targets: Vec::new(),
            total_weight: 0,
            prefix_rewrite: None,
            hash_policy: Vec::new(),
            sticky: None,
        };
        let again = h1_request_head(
            &Facts::new(&head, PathPolicy::default()),
            &forward,
            &HeaderEdits::default(),
            &defaults(),
            &client,
            "10.0.0.9:8080".parse().expect("endpoint"),
            false,
        );
        assert_eq!(again.err(), Some(ProxyError::LoopDetected));
    }

    fn defaults() -> ForwardedConfig {
        ForwardedConfig {
            request_id: false,
            ..ForwardedConfig::default()
        }
    }

    #[test]
    fn x_forwarded_for_is_appended_and_proto_replaced() {
        let request = "GET /a HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\r\n";
        // Behind one trusted proxy, its element is kept and this hop's follows.
        let one_hop = TrustedProxies {
            hops: 1,
            sources: Vec::new(),
        };
        let behind = upstream_head_trusting(request, "192.0.2.1:5000", &defaults(), None, &one_hop);
        assert!(
            behind.contains("x-forwarded-for: 1.2.3.4, 192.0.2.1\r\n")
                && behind.contains("x-forwarded-proto: https\r\n"),
            "{behind}"
        );
        // At an edge, what the client said is replaced by what weft saw.
        let out = upstream_head(request, "192.0.2.1:5000", &defaults(), None);
        assert!(out.starts_with("GET /a HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("x-forwarded-for: 192.0.2.1\r\n"), "{out}");
        assert!(out.contains("x-forwarded-proto: http\r\n"), "{out}");
        assert!(
            !out.contains("https"),
            "the client's proto is not passed on: {out}"
        );
        assert_eq!(out.matches("host: shop\r\n").count(), 1, "{out}");
    }

    #[test]
    fn forwarded_names_the_client_and_quotes_v6() {
        let fwd = ForwardedConfig {
            forwarded: true,
            ..defaults()
        };
        let v4 = upstream_head(
            "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "192.0.2.1:1",
            &fwd,
            None,
        );
        assert!(
            v4.contains("forwarded: for=192.0.2.1;proto=http;host=\"a.example\"\r\n"),
            "{v4}"
        );
        let v6 = upstream_head(
            "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "[::1]:1",
            &fwd,
            None,
        );
        assert!(v6.contains("forwarded: for=\"[::1]\";proto=http"), "{v6}");
    }

    #[test]
    fn host_comes_from_the_authority_or_names_the_endpoint() {
        let absolute = upstream_head(
            "GET http://billing:81/x HTTP/1.1\r\nHost: other\r\n\r\n",
            "192.0.2.1:1",
            &defaults(),
            None,
        );
        assert!(absolute.starts_with("GET /x HTTP/1.1\r\n"), "{absolute}");
        assert!(
            absolute.contains("host: billing:81\r\n") && !absolute.contains("other"),
            "{absolute}"
        );
        let h10 = upstream_head("GET / HTTP/1.0\r\n\r\n", "192.0.2.1:1", &defaults(), None);
        assert!(h10.contains("host: 10.0.0.9:8080\r\n"), "{h10}");
    }

    #[test]
    fn te_passes_only_as_trailers_and_hop_by_hop_fields_are_dropped() {
        let out = upstream_head(
            "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers, deflate\r\nConnection: x-hop\r\nX-Hop: 1\r\nProxy-Authorization: secret\r\nKeep-Alive: 5\r\n\r\n",
            "192.0.2.1:1",
            &defaults(),
            None,
        );
        assert!(
            out.contains("te: trailers\r\n") && !out.contains("deflate"),
            "{out}"
        );
        for gone in ["x-hop", "proxy-authorization", "keep-alive", "connection"] {
            assert!(!out.to_ascii_lowercase().contains(gone), "{gone}: {out}");
        }
    }

    #[test]
    fn only_weft_vouches_for_a_client_certificate_and_request_ids_are_kept() {
        let fwd = ForwardedConfig {
            request_id: true,
            ..ForwardedConfig::default()
        };
        let forged = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: URI=spiffe://evil\r\nX-Request-Id: abc\r\n\r\n";
        let none = upstream_head(forged, "192.0.2.1:1", &fwd, None);
        assert!(!none.contains("evil"), "{none}");
        assert!(
            none.contains("X-Request-Id: abc\r\n") && !none.contains("x-request-id"),
            "{none}"
        );
        let vouched = upstream_head(forged, "192.0.2.1:1", &fwd, Some("URI=spiffe://mesh/a"));
        assert!(
            vouched.contains("x-forwarded-client-cert: URI=spiffe://mesh/a\r\n"),
            "{vouched}"
        );
        let fresh = upstream_head(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "192.0.2.1:1",
            &fwd,
            None,
        );
        let id = fresh
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("an id is added");
        assert_eq!(id.len(), 32, "{id}");
    }

    #[test]
    fn a_request_body_is_stated_by_weft() {
        let out = upstream_head(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n",
            "192.0.2.1:1",
            &defaults(),
            None,
        );
        assert!(
            out.contains("content-length: 7\r\n") && !out.contains("007"),
            "{out}"
        );
        let chunked = upstream_head(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "192.0.2.1:1",
            &defaults(),
            None,
        );
        assert!(
            chunked.contains("transfer-encoding: chunked\r\n"),
            "{chunked}"
        );
        assert!(!chunked.contains("content-length"), "{chunked}");
    }

    #[test]
    fn only_a_canonical_length_is_sent_on_as_received() {
        assert!(states_exactly(b"5", 5));
        assert!(states_exactly(b"0", 0));
        assert!(states_exactly(b"1234567", 1_234_567));
        for other in [
            &b"05"[..],
            b"5, 5",
            b" 5",
            b"+5",
            b"",
            b"6",
            b"99999999999999999999999",
        ] {
            assert!(!states_exactly(other, 5), "{other:?}");
        }
    }
}
