//! What HTTP says about header fields, in one place for both planes: the parser and the
//! rewriters of the data plane, and the config validation of the control plane, read
//! the same sets, so a field weft drops on one path is dropped on every path.
//!
//! Names are compared without regard to case; the lists are lowercase.

/// Fields that describe one hop and are never forwarded as received (RFC 9110 §7.6.1),
/// whatever protocol the client spoke. (HTTP/1.1 adds the fields `Connection` names.)
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    // The settings of an `Upgrade: h2c` (RFC 7540 §3.2.1), which weft drops.
    "http2-settings",
];

/// Fields an HTTP/2 message may not carry at all (RFC 9113 §8.2.2); `te` only as
/// `trailers`. A subset of `HOP_BY_HOP`.
pub const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// Fields weft writes from its own decisions (framing and routing), which neither a
/// `Connection` token nor a route's header edits may touch.
pub const MANAGED: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Response fields only weft may write: an upstream's `x-weft-error` would make its own
/// failure look like one weft made (and hide which side failed).
pub const WEFT_MADE: [&str; 2] = ["x-weft-error", "x-weft-attempt-count"];

fn any(list: &[&str], name: &[u8]) -> bool {
    list.iter().any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

pub fn is_hop_by_hop(name: &[u8]) -> bool {
    any(&HOP_BY_HOP, name)
}

pub fn is_connection_specific(name: &[u8]) -> bool {
    any(&CONNECTION_SPECIFIC, name)
}

pub fn is_managed(name: &[u8]) -> bool {
    any(&MANAGED, name)
}

/// Request fields weft writes or vouches for itself (framing, routing, the forwarding
/// headers, the client certificate, `Via`): a client's field that reads as one of them
/// once `_` is read as `-` (`Transfer_Encoding`, `X_Forwarded_For`,
/// `x_forwarded_client_cert`) is dropped, because CGI, WSGI and many frameworks map both
/// spellings to the same variable, and the origin would believe the client's copy.
pub const VOUCHED: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "x-forwarded-client-cert",
    "x-request-id",
    "via",
];

/// Longest name in `VOUCHED` and in `frames_or_routes`: longer names need no
/// comparing.
pub const LONGEST_RULED_NAME: usize = 23;

/// Whether a field is one weft vouches for in a request (any case).
pub fn is_vouched(name: &[u8]) -> bool {
    any(&VOUCHED, name)
}

/// Which trailer fields a section may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trailers {
    /// A response's: any field that does not frame, route or manage the connection.
    Response,
    /// A request's: nor any field weft vouches for, in any spelling: a client's
    /// `x-forwarded-client-cert` must not reach the origin after the body either.
    Request,
}

/// Whether `name` may not appear in a trailer section of this kind.
pub fn forbidden_trailer(name: &[u8], kind: Trailers) -> bool {
    frames_or_routes(name)
        || (kind == Trailers::Request && (is_vouched(name) || aliases_vouched(name)))
}

/// Whether a request field is an underscore spelling of one weft vouches for.
pub fn aliases_vouched(name: &[u8]) -> bool {
    name.contains(&b'_')
        && VOUCHED.iter().any(|v| {
            v.len() == name.len()
                && v.bytes().zip(name).all(|(v, &n)| {
                    let n = if n == b'_' {
                        b'-'
                    } else {
                        n.to_ascii_lowercase()
                    };
                    v == n
                })
        })
}

/// A response field an upstream's response never carries through weft.
pub fn is_weft_made(name: &[u8]) -> bool {
    any(&WEFT_MADE, name)
}

/// Fields that frame a message (`content-length`, `transfer-encoding`): weft writes
/// them from its own decision, never copies them.
pub fn is_framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// Fields that frame or route a message or manage its connection: never in a trailer
/// section (RFC 9110 §6.5.1), never in a route's header edits. (`proxy-authorization`,
/// hop-by-hop but neither, may be set for the next hop.)
pub fn frames_or_routes(name: &[u8]) -> bool {
    is_managed(name) || (is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"proxy-authorization"))
}

/// Whether a route's header edit may name this field.
pub fn is_editable(name: &[u8]) -> bool {
    !frames_or_routes(name)
}

/// The value of cookie `name` in one `Cookie` field (RFC 6265 pairs split by `;`),
/// surrounding quotes trimmed: the first, if the field names it more than once.
pub fn cookie_value<'a>(field: &'a [u8], name: &str) -> Option<&'a [u8]> {
    field.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| match &pair[eq + 1..] {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        })
    })
}

/// The first value of query parameter `name` in a query string (after `?`), as sent
/// (not percent-decoded); a bare `name` has the value `""`.
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cookies_and_query_parameters_are_found_by_name() {
        use super::{cookie_value, query_value};
        let field = b"a=1; canary=\"always\"; b=2";
        assert_eq!(cookie_value(field, "canary"), Some(&b"always"[..]));
        assert_eq!(cookie_value(field, "cana"), None);
        assert_eq!(cookie_value(b"x=1;canary=", "canary"), Some(&b""[..]));
        assert_eq!(query_value("x=1&user=ann&user=bob", "user"), Some("ann"));
        assert_eq!(query_value("username=ann", "user"), None);
        assert_eq!(query_value("debug&x=1", "debug"), Some(""));
    }

    #[test]
    fn underscore_spellings_of_vouched_fields_are_recognised() {
        for n in [
            "Transfer_Encoding",
            "X_Forwarded_For",
            "x_forwarded_client_cert",
            "content_length",
        ] {
            assert!(super::aliases_vouched(n.as_bytes()), "{n}");
        }
        for n in [
            "x-forwarded-for",
            "x_app_id",
            "transfer_encodings",
            "X_Request",
        ] {
            assert!(!super::aliases_vouched(n.as_bytes()), "{n}");
        }
    }

    use super::*;

    #[test]
    fn request_trailers_carry_no_vouched_field() {
        for n in [
            "X-Forwarded-Client-Cert",
            "x_forwarded_for",
            "via",
            "content-length",
        ] {
            assert!(forbidden_trailer(n.as_bytes(), Trailers::Request), "{n}");
        }
        assert!(!forbidden_trailer(b"x-request-id", Trailers::Response));
        assert!(forbidden_trailer(b"host", Trailers::Response));
        assert!(!forbidden_trailer(b"grpc-status", Trailers::Request));
        let longest = VOUCHED.iter().chain(&HOP_BY_HOP).map(|n| n.len()).max();
        assert_eq!(longest, Some(LONGEST_RULED_NAME));
    }

    #[test]
    fn the_sets_nest_as_the_rfcs_say() {
        for f in CONNECTION_SPECIFIC {
            assert!(is_hop_by_hop(f.as_bytes()), "{f}");
        }
        assert!(
            is_hop_by_hop(b"Proxy-Authorization")
                && !is_connection_specific(b"proxy-authorization")
        );
        assert!(is_managed(b"Content-Length") && !is_editable(b"content-length"));
        assert!(!is_editable(b"connection") && !is_editable(b"HOST") && !is_editable(b"te"));
        assert!(is_editable(b"proxy-authorization") && is_editable(b"x-api-key"));
        assert!(
            is_framing(b"Content-Length")
                && is_framing(b"transfer-encoding")
                && !is_framing(b"host")
        );
    }
}
