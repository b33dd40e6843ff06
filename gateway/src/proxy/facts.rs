//! What routing looks at in a request: host, path, method, headers.
//!
//! Host comes from the absolute-form target if there is one (RFC 9112 §3.2.2), else
//! from `Host`; it is lowercased and stripped of its port once per request.

use std::borrow::Cow;

use weft_mesh::snapshot::RequestFacts;

use crate::proto::h1::head::{Head, RequestHead};

/// The header that carries a verified client certificate's identity.
pub const CLIENT_CERT_HEADER: &str = "x-forwarded-client-cert";

pub struct Facts<'a> {
    pub head: &'a RequestHead,
    host: Cow<'a, str>,
    /// Authority as the client sent it (with port), for Host rewriting and redirects.
    pub authority: &'a str,
    /// Path and query, origin-form.
    pub path_and_query: &'a str,
    pub path: &'a str,
    /// A verified client certificate's identity; what `x-forwarded-client-cert` means
    /// to routing (a client-sent header of that name is never believed).
    pub client_cert: Option<&'a str>,
}

impl<'a> Facts<'a> {
    pub fn new(head: &'a RequestHead) -> Facts<'a> {
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
        Facts {
            head,
            host: normalize_host(authority),
            authority,
            path_and_query,
            path,
            client_cert: None,
        }
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

/// Lowercase host without port; `[v6]` keeps its brackets.
pub(super) fn normalize_host(authority: &str) -> Cow<'_, str> {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        }
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

impl RequestFacts for Facts<'_> {
    fn host(&self) -> &str {
        &self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn method(&self) -> &[u8] {
        self.head.method()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        if name.eq_ignore_ascii_case(CLIENT_CERT_HEADER) {
            return self.client_cert.map(str::as_bytes);
        }
        Head::header(self.head, name)
    }
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
    }
}
