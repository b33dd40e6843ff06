//! Which forwarding elements weft believes: the trust boundary of `X-Forwarded-For` and
//! `Forwarded` (`[http.forwarded]` `trusted_hops`, `trusted_sources`).
//!
//! A list of forwarding elements is read from the right, the end weft's peer wrote. An
//! element is believed when a trusted proxy vouches for it: the peer for the last one
//! when the peer is in a trusted network, an element naming a trusted network for the
//! one before it, and the first `trusted_hops` from the right whatever they name. The
//! first element nobody vouches for ends the walk: it and everything before it came
//! from the client, and are dropped. With nothing trusted (the default, an edge), a
//! client's list is dropped whole, and the upstream learns only what weft saw.

use std::net::{IpAddr, SocketAddr};

use weft_mesh::snapshot::TrustedProxies;

use crate::proto::h1::head::trim;

/// The part of the comma-separated `list` (fields already joined) that trusted proxies
/// vouch for, its trailing elements; empty when none is. `address_of` finds the address
/// an element names.
pub fn vouched_suffix<'l>(
    trust: &TrustedProxies,
    list: &'l [u8],
    peer: IpAddr,
    address_of: fn(&[u8]) -> Option<IpAddr>,
) -> &'l [u8] {
    let mut vouched_by_network = trust.trusts(peer);
    let mut kept = 0u32;
    let mut start = list.len();
    for (from, element) in elements_from_the_right(list) {
        if element.is_empty() || !(kept < trust.hops || vouched_by_network) {
            break;
        }
        kept += 1;
        start = from;
        vouched_by_network = address_of(element).is_some_and(|ip| trust.trusts(ip));
    }
    trim(&list[start..])
}

/// The elements of a comma-separated list, last first, each with where it starts;
/// commas inside a quoted string (`host="a,b"`) separate nothing.
fn elements_from_the_right(list: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut commas = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in list.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => commas.push(i),
            _ => {}
        }
    }
    let mut end = list.len();
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let from = match commas.pop() {
            Some(comma) => comma + 1,
            None => {
                done = true;
                0
            }
        };
        let element = trim(&list[from..end]);
        end = from.saturating_sub(1);
        Some((from, element))
    })
}

/// The address an `X-Forwarded-For` element names: `192.0.2.1`, `2001:db8::1`, and the
/// `ADDR:PORT` / `[ADDR]:PORT` forms some proxies write.
pub fn xff_address(element: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(element).ok()?;
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// The address a `Forwarded` element's `for=` names (RFC 7239 §6: `for=192.0.2.60`,
/// `for="[2001:db8::1]:4711"`); none for `unknown` and obfuscated names.
pub fn forwarded_for_address(element: &[u8]) -> Option<IpAddr> {
    let pair = element.split(|&b| b == b';').find_map(|pair| {
        let (key, value) = split_once(trim(pair), b'=')?;
        trim(key).eq_ignore_ascii_case(b"for").then(|| trim(value))
    })?;
    let node = pair
        .strip_prefix(b"\"")
        .and_then(|p| p.strip_suffix(b"\""))
        .unwrap_or(pair);
    if let Some(v6) = node.strip_prefix(b"[") {
        let end = v6.iter().position(|&b| b == b']')?;
        let ip = std::str::from_utf8(&v6[..end])
            .ok()?
            .parse::<IpAddr>()
            .ok()?;
        return Some(ip.to_canonical());
    }
    xff_address(node)
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_mesh::snapshot::IpNet;

    fn trust(hops: u32, nets: &[&str]) -> TrustedProxies {
        TrustedProxies {
            hops,
            sources: nets.iter().map(|n| IpNet::parse(n).unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff<'l>(t: &TrustedProxies, list: &'l str, peer: &str) -> &'l str {
        std::str::from_utf8(vouched_suffix(t, list.as_bytes(), ip(peer), xff_address)).unwrap()
    }

    #[test]
    fn nothing_a_client_says_is_believed_at_an_edge() {
        let edge = trust(0, &[]);
        assert_eq!(xff(&edge, "6.6.6.6, 10.0.0.1", "203.0.113.9"), "");
    }

    #[test]
    fn trusted_networks_vouch_for_one_element_each() {
        let lb = trust(0, &["10.0.0.0/8"]);
        // The client forged 6.6.6.6 and a trusted-looking 10.0.0.2; the load balancer
        // (10.0.0.1) appended the address it saw, 198.51.100.7, which ends the walk.
        assert_eq!(
            xff(&lb, "6.6.6.6, 10.0.0.2, 198.51.100.7", "10.0.0.1"),
            "198.51.100.7"
        );
        // Two trusted proxies in a row.
        assert_eq!(
            xff(&lb, "6.6.6.6, 198.51.100.7, 10.0.0.5", "10.0.0.1"),
            "198.51.100.7, 10.0.0.5"
        );
        // An untrusted peer vouches for nothing.
        assert_eq!(xff(&lb, "198.51.100.7", "192.0.2.1"), "");
    }

    #[test]
    fn trusted_hops_count_from_the_right() {
        let one = trust(1, &[]);
        assert_eq!(
            xff(&one, "6.6.6.6, 198.51.100.7", "192.0.2.1"),
            "198.51.100.7"
        );
        let two = trust(2, &[]);
        assert_eq!(
            xff(&two, "6.6.6.6,198.51.100.7, 192.0.2.8", "192.0.2.1"),
            "198.51.100.7, 192.0.2.8"
        );
        assert_eq!(xff(&two, "192.0.2.8", "192.0.2.1"), "192.0.2.8");
        assert_eq!(xff(&one, "6.6.6.6, , 1.1.1.1", "192.0.2.1"), "1.1.1.1");
        assert_eq!(xff(&two, "6.6.6.6, , 1.1.1.1", "192.0.2.1"), "1.1.1.1");
    }

    #[test]
    fn forwarded_elements_name_their_for_and_quotes_hold_commas() {
        let lb = trust(0, &["10.0.0.0/8", "fd00::/8"]);
        let list = r#"for=6.6.6.6;host="a, for=10.0.0.9", for="[fd00::1]:80";proto=https, for=198.51.100.7"#;
        let kept = vouched_suffix(&lb, list.as_bytes(), ip("10.0.0.1"), forwarded_for_address);
        assert_eq!(kept, &b"for=198.51.100.7"[..]);
        let kept = vouched_suffix(
            &lb,
            b"for=1.2.3.4, for=\"[fd00::1]:80\"",
            ip("10.0.0.1"),
            forwarded_for_address,
        );
        assert_eq!(kept, &b"for=1.2.3.4, for=\"[fd00::1]:80\""[..]);
        assert_eq!(forwarded_for_address(b"proto=http;For=unknown"), None);
        assert_eq!(
            forwarded_for_address(b"FOR = \"192.0.2.1:99\""),
            Some(ip("192.0.2.1"))
        );
    }

    #[test]
    fn networks_parse_strictly() {
        assert!(IpNet::parse("10.0.0.0/8").unwrap().contains(ip("10.2.3.4")));
        assert!(!IpNet::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(IpNet::parse("192.0.2.7").unwrap().contains(ip("192.0.2.7")));
        assert!(IpNet::parse("10.0.0.1/8").is_err());
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("example.com").is_err());
        // A v4 peer on a dual-stack socket is seen as ::ffff:a.b.c.d.
        assert!(trust(0, &["10.0.0.0/8"]).trusts(ip("::ffff:10.0.0.1")));
    }
}
