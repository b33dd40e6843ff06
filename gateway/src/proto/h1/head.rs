//! Request and response heads: parsing with httparse, then the framing rules of
//! RFC 9112 that decide how long a message body is.
//!
//! A parsed head keeps its raw bytes (`Bytes`) and ranges into them, so parsing copies
//! nothing. Anything that could let two parties disagree on where a message ends
//! (Content-Length with Transfer-Encoding, differing Content-Lengths, a non-chunked
//! final coding) is rejected here, before a byte is forwarded.
//!
//! Invariants: every range a head holds lies inside its `raw` bytes (httparse may hand
//! back slices that do not, e.g. a static `""` for a reason phrase it will not decode;
//! those become empty ranges), and a `Connection` token never names a field that frames
//! or routes the message (`Content-Length`, `Transfer-Encoding`, `Host`): such tokens
//! are ignored, so no later step can drop the framing weft decided on.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    H10,
    H11,
}

/// How the body that follows a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the upstream closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed request line or header (400).
    Malformed(&'static str),
    /// Head larger than the limit, or too many headers (431).
    TooLarge,
    /// A transfer coding weft does not implement (501).
    UnsupportedEncoding,
    /// An `Expect` other than 100-continue (417).
    UnsupportedExpectation,
}

#[derive(Debug, Clone)]
pub struct HeaderField {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// What the connection-management headers said.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Ranges of extra header names listed in `Connection`, to be dropped.
    pub listed: Vec<Range<usize>>,
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub raw: Bytes,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub version: Version,
    pub headers: Vec<HeaderField>,
    pub framing: BodyFraming,
    pub connection: ConnectionInfo,
    pub host: Option<Range<usize>>,
    pub expect_continue: bool,
    /// The validated `Content-Length`, when the request had one (also `Some(0)`, whose
    /// framing is `None`): what weft writes on, never the fields as received.
    pub content_length: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub raw: Bytes,
    pub status: u16,
    pub reason: Range<usize>,
    pub version: Version,
    pub headers: Vec<HeaderField>,
    pub framing: BodyFraming,
    pub connection: ConnectionInfo,
    /// The validated `Content-Length`, when the response had one.
    pub content_length: Option<u64>,
}

pub trait Head {
    fn raw(&self) -> &[u8];
    fn fields(&self) -> &[HeaderField];

    fn name(&self, f: &HeaderField) -> &[u8] {
        &self.raw()[f.name.clone()]
    }
    fn value(&self, f: &HeaderField) -> &[u8] {
        &self.raw()[f.value.clone()]
    }
    /// First value of the header `name` (any case).
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .iter()
            .find(|f| self.name(f).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| self.value(f))
    }
    /// Whether the header is one weft must not forward: hop-by-hop, or listed in `Connection`.
    fn is_hop_by_hop(&self, f: &HeaderField, connection: &ConnectionInfo) -> bool {
        let n = self.name(f);
        weft_mesh::fields::is_hop_by_hop(n)
            || connection
                .listed
                .iter()
                .any(|r| n.eq_ignore_ascii_case(&self.raw()[r.clone()]))
    }
}

impl Head for RequestHead {
    fn raw(&self) -> &[u8] {
        &self.raw
    }
    fn fields(&self) -> &[HeaderField] {
        &self.headers
    }
}

impl Head for ResponseHead {
    fn raw(&self) -> &[u8] {
        &self.raw
    }
    fn fields(&self) -> &[HeaderField] {
        &self.headers
    }
}

impl RequestHead {
    pub fn method(&self) -> &[u8] {
        &self.raw[self.method.clone()]
    }
    pub fn target(&self) -> &[u8] {
        &self.raw[self.target.clone()]
    }
    pub fn host(&self) -> Option<&[u8]> {
        self.host.clone().map(|r| &self.raw[r])
    }
    /// Keep the client connection open after this exchange?
    pub fn wants_keep_alive(&self) -> bool {
        match self.version {
            Version::H11 => !self.connection.close,
            Version::H10 => self.connection.keep_alive && !self.connection.close,
        }
    }
    pub fn is_upgrade(&self) -> bool {
        self.connection.upgrade && self.header("upgrade").is_some()
    }
}

/// Where `part` lies in `base`, or an empty range when it does not lie inside it:
/// httparse returns slices outside the buffer for some inputs (a static `""` for a
/// reason phrase with bytes >= 0x80, a dangling empty slice for a missing one), and
/// subtracting unrelated pointers would give an index anywhere.
fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize);
    match start {
        Some(start)
            if start
                .checked_add(part.len())
                .is_some_and(|end| end <= base.len()) =>
        {
            start..start + part.len()
        }
        _ => 0..0,
    }
}

fn version_of(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::H10
    } else {
        Version::H11
    }
}

/// Header positions as ranges into the head's bytes (`base`).
fn fields(base: &[u8], headers: &[httparse::Header<'_>]) -> Vec<HeaderField> {
    headers
        .iter()
        .map(|h| HeaderField {
            name: offset(base, h.name.as_bytes()),
            value: offset(base, h.value),
        })
        .collect()
}

/// Tries to parse a request head at the front of `buf`. `Ok(None)`: need more bytes.
/// On success the head's bytes are split off `buf`.
pub fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
    max_headers: usize,
) -> Result<Option<RequestHead>, HeadError> {
    // httparse fills a slot array; 1024 is the config's upper bound. Uninitialized
    // slots: initializing 128 of them is 4 KiB of stores on every request.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; 128];
    let mut big_slots;
    let slots: &mut [MaybeUninit<httparse::Header>] = if max_headers <= slots.len() {
        &mut slots[..max_headers]
    } else {
        big_slots = Vec::with_capacity(max_headers);
        big_slots.resize_with(max_headers, MaybeUninit::uninit);
        &mut big_slots
    };
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, slots) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("unsupported HTTP version"))
        }
        Err(_) => return Err(HeadError::Malformed("malformed request line or header")),
    };
    let len = match status {
        httparse::Status::Partial => {
            return if buf.len() >= max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        httparse::Status::Complete(n) => n,
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    // Ranges are checked against the head alone, which is what `raw` will hold.
    let base: &[u8] = &buf[..len];
    let method = offset(base, req.method.unwrap_or_default().as_bytes());
    let target = offset(base, req.path.unwrap_or_default().as_bytes());
    let version = version_of(req.version);
    let headers = fields(base, req.headers);
    let raw = buf.split_to(len).freeze();
    let mut head = RequestHead {
        raw,
        method,
        target,
        version,
        headers,
        framing: BodyFraming::None,
        connection: ConnectionInfo::default(),
        host: None,
        expect_continue: false,
        content_length: None,
    };
    let facts = scan_headers(&head.raw, &head.headers)?;
    if facts.hosts > 1 {
        return Err(HeadError::Malformed("more than one Host header"));
    }
    if head.version == Version::H11 && facts.host.is_none() {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }
    let target = head.target();
    if target.is_empty()
        || !(target[0] == b'/'
            || target == b"*"
            || target.starts_with(b"http://")
            || target.starts_with(b"https://"))
    {
        return Err(HeadError::Malformed(
            "request target must be a path or an absolute URI",
        ));
    }
    head.framing = match (facts.chunked, facts.length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (Some(_), None) if head.version == Version::H10 => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        }
        (Some(true), None) => BodyFraming::Chunked,
        (Some(false), None) => return Err(HeadError::UnsupportedEncoding),
        (None, Some(0)) | (None, None) => BodyFraming::None,
        (None, Some(n)) => BodyFraming::Length(n),
    };
    if let Some(exp) = &facts.expect {
        if exp.eq_ignore_ascii_case(b"100-continue") {
            head.expect_continue = head.version == Version::H11;
        } else {
            return Err(HeadError::UnsupportedExpectation);
        }
    }
    head.host = facts.host;
    head.connection = facts.connection;
    head.content_length = facts.length;
    Ok(Some(head))
}

/// Tries to parse a response head at the front of `buf`; `request_method` and the status
/// decide whether a body follows (HEAD, 1xx, 204, 304 have none).
pub fn parse_response(
    buf: &mut BytesMut,
    max_head: usize,
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; 128];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed response from upstream")),
    };
    // Ranges are checked against the head alone, which is what `raw` will hold.
    let base: &[u8] = &buf[..len];
    let status = resp.code.unwrap_or(0);
    // Three digits are not enough: `020` parses, and weft would send on a status line
    // (`HTTP/1.1 20`) no client can read. RFC 9110 §15: 100-599 are defined; a
    // three-digit code above is passed on (its class is unknown, not malformed).
    if !(100..=999).contains(&status) {
        return Err(HeadError::Malformed("invalid status code from upstream"));
    }
    let reason = offset(base, resp.reason.unwrap_or_default().as_bytes());
    let version = version_of(resp.version);
    let headers = fields(base, resp.headers);
    // A copy, not `split_to`: the head can outlive this exchange (h2 queues it until
    // its connection task writes), and a split would share the read buffer's allocation
    // with it, so the pooled connection's next read would allocate a new buffer.
    let raw = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    let facts = scan_headers(&raw, &headers)?;
    let no_body = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        BodyFraming::None
    } else {
        match (facts.chunked, facts.length) {
            (Some(_), Some(_)) => {
                return Err(HeadError::Malformed(
                    "upstream sent both Content-Length and Transfer-Encoding",
                ))
            }
            (Some(true), None) => BodyFraming::Chunked,
            // A non-chunked final coding on a response: the body ends at close.
            (Some(false), None) => BodyFraming::UntilClose,
            (None, Some(0)) => BodyFraming::None,
            (None, Some(n)) => BodyFraming::Length(n),
            (None, None) => BodyFraming::UntilClose,
        }
    };
    let mut connection = facts.connection;
    if version == Version::H10 && !connection.keep_alive {
        connection.close = true;
    }
    Ok(Some(ResponseHead {
        raw,
        status,
        reason,
        version,
        headers,
        framing,
        connection,
        content_length: facts.length,
    }))
}

#[derive(Default)]
struct HeaderFacts {
    /// `Some(true)`: chunked is the final (and only) coding; `Some(false)`: something else.
    chunked: Option<bool>,
    length: Option<u64>,
    host: Option<Range<usize>>,
    hosts: usize,
    expect: Option<Vec<u8>>,
    connection: ConnectionInfo,
}

fn scan_headers(raw: &[u8], headers: &[HeaderField]) -> Result<HeaderFacts, HeadError> {
    let mut f = HeaderFacts::default();
    let mut codings = 0usize;
    for h in headers {
        let name = &raw[h.name.clone()];
        let value = &raw[h.value.clone()];
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_length(trim(part))
                    .ok_or(HeadError::Malformed("invalid Content-Length"))?;
                if f.length.is_some_and(|prev| prev != n) {
                    return Err(HeadError::Malformed("conflicting Content-Length values"));
                }
                f.length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value
                .split(|&b| b == b',')
                .map(trim)
                .filter(|c| !c.is_empty())
            {
                codings += 1;
                f.chunked = Some(coding.eq_ignore_ascii_case(b"chunked") && codings == 1);
            }
            if codings == 0 {
                return Err(HeadError::Malformed("empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            f.hosts += 1;
            f.host = Some(h.value.clone());
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    f.connection.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    f.connection.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    f.connection.upgrade = true;
                } else if !token.is_empty() && !weft_mesh::fields::is_managed(token) {
                    // Dropping a framing or routing field after framing by it is how
                    // a body becomes a request: such tokens are ignored.
                    f.connection.listed.push(offset(raw, token));
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            f.expect = Some(trim(value).to_vec());
        }
    }
    // `chunked` must be the last coding: any coding after it makes chunked not final.
    if codings > 1 {
        f.chunked = Some(false);
    }
    Ok(f)
}

/// A `Content-Length` value: decimal digits only, no sign, no overflow.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut b = BytesMut::from(text);
        parse_request(&mut b, 8192, 100)
    }

    #[test]
    fn parses_a_simple_request_and_leaves_the_rest() {
        let mut b = BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nNEXT");
        let h = parse_request(&mut b, 8192, 100).unwrap().unwrap();
        assert_eq!(h.method(), b"GET");
        assert_eq!(h.target(), b"/a?b=1");
        assert_eq!(h.host(), Some(&b"x"[..]));
        assert_eq!(h.header("x-a"), Some(&b"1"[..]));
        assert_eq!(h.framing, BodyFraming::None);
        assert_eq!(&b[..], b"NEXT");
    }

    #[test]
    fn partial_until_complete_then_limits() {
        assert!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let mut b = BytesMut::from(&[b'a'; 9000][..]);
        assert!(parse_request(&mut b, 8192, 100).is_err());
        let mut b = BytesMut::from(
            format!("GET / HTTP/1.1\r\nHost: x\r\nA: {}\r\n", "v".repeat(9000)).as_str(),
        );
        assert_eq!(
            parse_request(&mut b, 8192, 100).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let both =
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(req(both), Err(HeadError::Malformed(_))));
        let two = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(req(two), Err(HeadError::Malformed(_))));
        let same = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(req(same).unwrap().unwrap().framing, BodyFraming::Length(3));
        let signed = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n";
        assert!(matches!(req(signed), Err(HeadError::Malformed(_))));
        let gzip = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(req(gzip).unwrap_err(), HeadError::UnsupportedEncoding);
        let not_last = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(req(not_last).unwrap_err(), HeadError::UnsupportedEncoding);
        let chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(req(chunked).unwrap().unwrap().framing, BodyFraming::Chunked);
    }

    #[test]
    fn bad_bytes_and_missing_host_are_malformed() {
        assert!(matches!(
            req("GET / HTTP/1.1\r\nHost: x\r\nA: b\0c\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            req("GET / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            req("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            req("GET nope HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(
            req("GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n").unwrap_err(),
            HeadError::UnsupportedExpectation
        );
    }

    #[test]
    fn connection_tokens_are_hop_by_hop() {
        let h = req("GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert!(h.connection.close && !h.wants_keep_alive());
        let secret = h.headers.iter().find(|f| h.name(f) == b"X-Secret").unwrap();
        assert!(h.is_hop_by_hop(secret, &h.connection));
        let h10 = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h10.wants_keep_alive());
    }

    #[test]
    fn connection_never_lists_framing_or_routing_fields() {
        let h = req("POST /x HTTP/1.1\r\nHost: x\r\nConnection: close, Content-Length, HOST, transfer-encoding, x-a\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, BodyFraming::Length(3));
        assert_eq!(h.content_length, Some(3));
        let listed: Vec<&[u8]> = h
            .connection
            .listed
            .iter()
            .map(|r| &h.raw[r.clone()])
            .collect();
        assert_eq!(listed, vec![&b"x-a"[..]]);
        for f in &h.headers {
            let name = h.name(f).to_ascii_lowercase();
            if name == b"content-length" || name == b"host" {
                assert!(!h.is_hop_by_hop(f, &h.connection));
            }
        }
    }

    #[test]
    fn reason_phrases_httparse_does_not_slice_become_empty() {
        for text in [
            &b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.1 200 Ok\xe9\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 404 N\u{e3}o encontrado\r\nContent-Length: 2\r\n\r\nok".as_bytes(),
        ] {
            let mut b = BytesMut::from(text);
            let h = parse_response(&mut b, 8192, false).unwrap().unwrap();
            assert!(h.reason.end <= h.raw.len(), "{:?}", h.reason);
            assert_eq!(h.framing, BodyFraming::Length(2));
            assert_eq!(h.content_length, Some(2));
            assert_eq!(&b[..], b"ok");
            for f in &h.headers {
                let _ = (h.name(f), h.value(f));
            }
        }
    }

    #[test]
    fn status_codes_below_100_are_refused() {
        for text in [
            "HTTP/1.1 020\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 000 x\r\n\r\n",
        ] {
            let r = parse_response(&mut BytesMut::from(text), 8192, false);
            assert!(matches!(r, Err(HeadError::Malformed(_))), "{text:?}: {r:?}");
        }
    }

    #[test]
    fn offsets_outside_the_base_are_empty() {
        let base = b"abcdef";
        assert_eq!(offset(base, &base[2..4]), 2..4);
        assert_eq!(offset(base, b""), 0..0);
        assert_eq!(offset(base, &b"elsewhere"[..3]), 0..0);
        assert_eq!(offset(&base[..3], &base[2..5]), 0..0);
    }

    #[test]
    fn response_bodies_follow_method_and_status() {
        let parse = |t: &str, head: bool| {
            parse_response(&mut BytesMut::from(t), 8192, head)
                .unwrap()
                .unwrap()
                .framing
        };
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            BodyFraming::Length(5)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            BodyFraming::None
        );
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n", false),
            BodyFraming::None
        );
        assert_eq!(
            parse(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                false
            ),
            BodyFraming::None
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\n\r\n", false),
            BodyFraming::UntilClose
        );
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            BodyFraming::Chunked
        );
    }
}
