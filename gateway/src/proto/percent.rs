//! Percent-encoding (RFC 3986 §2.1): every byte a caller's set does not keep becomes
//! `%XX`. Used for Consul query values (keep the unreserved characters) and gRPC's
//! `grpc-message` (keep printable ASCII except '%').

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
