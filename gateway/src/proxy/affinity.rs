//! A request's hash key for the consistent-hash balancers (`lb = "ring_hash" |
//! "maglev"`), made from its route's `hash_policy`: a header's values, a cookie, the
//! client's address or a query parameter, combined in order (Envoy's semantics). A
//! request without any of them has no key and is balanced at random.
//!
//! A cookie policy with a `ttl` makes the cookie for a request that lacks it: a random
//! value, hashed as if the client had sent it, and set on the response, so the
//! client's next requests carry it and land on the same endpoint.

use std::net::IpAddr;

use weft_mesh::fields::{cookie_value, query_value};
use weft_mesh::snapshot::hashing::{combine, hash, HashPolicy, HashSource};

use super::facts::Request;

/// The key, and the `Set-Cookie` value a cookie policy made for the response.
#[derive(Default)]
pub struct Affinity {
    pub key: Option<u64>,
    pub set_cookie: Option<Box<str>>,
}

pub fn affinity(policies: &[HashPolicy], request: &impl Request, client: IpAddr) -> Affinity {
    let mut out = Affinity::default();
    for policy in policies {
        let part = match &policy.source {
            HashSource::Header(name) => header_hash(request, name),
            HashSource::Cookie { name, ttl, path } => match cookie_hash(request, name) {
                Some(h) => Some(h),
                None => ttl.map(|ttl| {
                    let value = format!("{:016x}", fastrand::u64(..));
                    let path = path.as_deref().unwrap_or("/");
                    out.set_cookie = Some(
                        format!(
                            "{name}={value}; Max-Age={}; Path={path}; HttpOnly",
                            ttl.as_secs().max(1)
                        )
                        .into(),
                    );
                    hash(value.as_bytes())
                }),
            },
            HashSource::SourceIp => Some(hash(client.to_string().as_bytes())),
            HashSource::QueryParameter(name) => query_hash(request.path_and_query(), name),
        };
        if let Some(part) = part {
            out.key = Some(combine(out.key, part));
            if policy.terminal {
                break;
            }
        }
    }
    out
}

/// Every value of the header, in order.
fn header_hash(request: &impl Request, name: &str) -> Option<u64> {
    let mut key = None;
    request.any_header(name, |v| {
        key = Some(combine(key, hash(v)));
        false
    });
    key
}

/// The first value of cookie `name`, from any `Cookie` field (HTTP/2 may split them).
fn cookie_hash(request: &impl Request, name: &str) -> Option<u64> {
    let mut found = None;
    request.any_header("cookie", |v| {
        found = cookie_value(v, name).map(hash);
        found.is_some()
    });
    found
}

/// The first value of query parameter `name`, as sent (not percent-decoded).
fn query_hash(path_and_query: &str, name: &str) -> Option<u64> {
    let (_, query) = path_and_query.split_once('?')?;
    query_value(query, name).map(|v| hash(v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_by_name() {
        let h = |q| query_hash(q, "user");
        assert_eq!(h("/a?x=1&user=ann"), Some(hash(b"ann")));
        assert_eq!(h("/a?user=ann&user=bob"), Some(hash(b"ann")));
        assert_eq!(h("/a?username=ann"), None);
        assert_eq!(h("/a"), None);
    }
}
