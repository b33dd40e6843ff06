//! The `Date` field of the answers weft makes itself.
//!
//! RFC 9110 §6.6.1: a server with a clock sends `Date` on its answers; a proxy's own
//! answers (errors, direct responses, redirects, the admin pages) are its own, so they
//! carry one, as nginx's and Envoy's do. Forwarded answers keep the upstream's.
//!
//! Formatting an IMF-fixdate per answer is wasted work: each thread keeps the text of
//! the current second and makes it anew only when the second changes.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

thread_local! {
    static CURRENT: RefCell<(u64, HeaderValue)> =
        RefCell::new((u64::MAX, HeaderValue::from_static("")));
}

/// The `Date` value for now, e.g. `Tue, 01 Dec 2026 17:05:32 GMT`.
pub fn now() -> HeaderValue {
    let clock = SystemTime::now();
    let second = clock
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CURRENT.with(|cell| {
        let mut current = cell.borrow_mut();
        if current.0 != second {
            let text = httpdate::fmt_http_date(clock);
            // An IMF-fixdate is plain ASCII; the fallback cannot be reached.
            current.1 = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
            current.0 = second;
        }
        current.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_an_imf_fixdate_of_now() {
        let value = now();
        let text = value.to_str().expect("ascii");
        assert_eq!(text.len(), 29, "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
        let parsed = httpdate::parse_http_date(text).expect("parses back");
        let age = SystemTime::now()
            .duration_since(parsed)
            .expect("not in the future");
        assert!(age.as_secs() <= 2, "{text}");
    }
}
