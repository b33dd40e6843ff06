//! gRPC-specific rules of the HTTP/2 path: which requests are gRPC, their deadline, and
//! the form of the errors weft itself answers them with.
//!
//! A gRPC client reads the outcome of a call from `grpc-status` alone, so an error made
//! by weft is HTTP 200 with a "Trailers-Only" response (one HEADERS frame with
//! END_STREAM carrying `grpc-status` and `grpc-message`), never a bare 5xx.

use std::time::Duration;

use http::HeaderMap;
use weft_mesh::snapshot::is_grpc_content_type;

/// The status codes weft produces (grpc/doc/statuscodes.md); which error gets which is
/// `ProxyError::grpc_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    Internal = 13,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Unavailable = 14,
}

/// The gRPC status a client infers from an HTTP status without one (gRPC's
/// http-grpc-status-mapping.md).
pub fn code_for_http(status: u16) -> u16 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A `grpc-status` value as a code.
pub fn status_code(value: &[u8]) -> Option<u16> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Whether a call that ended with `code` failed, as outlier detection counts it
/// (Linkerd's failure set: UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, DATA_LOSS,
/// PERMISSION_DENIED), and whether as a gateway error (UNAVAILABLE and
/// DEADLINE_EXCEEDED, the 503 and 504 of gRPC). Other codes are the application's
/// answers.
pub fn failure(code: u16) -> Option<bool> {
    match code {
        4 | 14 => Some(true),
        7 | 13 | 15 => Some(false),
        _ => None,
    }
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

/// `grpc-timeout` (`TimeoutValue TimeoutUnit`: at most 8 digits, then one of H M S m u n).
/// `None` when absent or malformed; a malformed value is ignored, as gRPC servers do.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A Trailers-Only response head carrying `code` and `message`.
pub fn error_response(code: u16, message: &str) -> http::Response<()> {
    let mut resp = http::Response::new(());
    *resp.headers_mut() = error_trailers(code, message);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp.headers_mut()
        .insert(http::header::DATE, crate::proto::date::now());
    resp
}

/// The trailers that end a call weft cuts short after the response head went out.
pub fn error_trailers(code: u16, message: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", http::HeaderValue::from(code));
    if let Ok(v) = http::HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    h
}

/// `grpc-message` is percent-encoded UTF-8: everything outside printable ASCII, and '%'.
fn percent_encode(message: &str) -> String {
    crate::proto::percent::encode(message, |b| (0x20..0x7f).contains(&b) && b != b'%')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlier_detection_counts_linkerds_failure_codes() {
        // UNAVAILABLE and DEADLINE_EXCEEDED are gRPC's 503 and 504.
        assert_eq!(failure(14), Some(true));
        assert_eq!(failure(4), Some(true));
        for code in [7, 13, 15] {
            assert_eq!(failure(code), Some(false), "{code}");
        }
        // OK and the application's own answers (NOT_FOUND, FAILED_PRECONDITION, ...).
        for code in [0, 1, 3, 5, 9, 12, 16] {
            assert_eq!(failure(code), None, "{code}");
        }
    }

    fn with_timeout(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().unwrap());
        h
    }

    #[test]
    fn parses_grpc_timeout_units() {
        assert_eq!(
            timeout(&with_timeout("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(timeout(&with_timeout("2M")), Some(Duration::from_secs(120)));
        assert_eq!(timeout(&with_timeout("3S")), Some(Duration::from_secs(3)));
        assert_eq!(
            timeout(&with_timeout("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            timeout(&with_timeout("99999999u")),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout(&with_timeout("5n")), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn refuses_malformed_grpc_timeout() {
        for bad in ["", "S", "100", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(timeout(&with_timeout(bad)), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn percent_encodes_messages() {
        assert_eq!(percent_encode("no route"), "no route");
        assert_eq!(percent_encode("50% off\n"), "50%25 off%0A");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
