//! Percent-encoding (RFC 3986 §2.1): every byte a caller's set does not keep becomes
//! `%XX`. Used for Consul query values (keep the unreserved characters) and gRPC's
//! `grpc-message` (keep printable ASCII except '%'); decoding for admin query values. And the value of one hex digit,
//! which decoding a `%XX` (paths) and a chunk size (chunked bodies) both read.

use std::fmt::Write as _;

/// `s` with every byte `keep` rejects written as `%XX` (upper-case hex).
pub fn encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `s` with each `%XX` decoded (a query value such as `info%2Cweft_gateway%3Ddebug`);
/// None when an escape is broken or the result is not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_digit(*bytes.get(i + 1)?)?;
                let lo = hex_digit(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of a hex digit (either case), `None` for any other byte.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
