//! Percent-encoding (RFC 3986 §2.1): every byte a caller's set does not keep becomes
//! `%XX`. Used for Consul query values (keep the unreserved characters) and gRPC's
//! `grpc-message` (keep printable ASCII except '%'). And the value of one hex digit,
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

/// The value of a hex digit (either case), `None` for any other byte.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
