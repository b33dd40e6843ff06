//! What a verified client certificate says about its holder, as typed values, and the
//! `x-forwarded-client-cert` (XFCC) element weft vouches for it with.
//!
//! Invariants:
//! - an identity is made only of names whose every byte is printable, non-space ASCII
//!   (0x21-0x7e): rustls-webpki passes any UTF-8 in a URI SAN, and a CR/LF there would
//!   end the header line (a second identity header, or a second request). A certificate
//!   with such a name gets no identity at all, and its connection is refused
//!   (`UnsafeIdentity`): half an identity would let a route believe the other half;
//! - the XFCC value follows Envoy's grammar (`Key=value` pairs joined by `;`; a value
//!   with `,`, `;`, `=` or `"` is double-quoted, with `"` and `\` escaped), so no URI
//!   can add an element or a pair that an Envoy-format parser would believe;
//! - every identity is distinct per certificate: `Hash=` (SHA-256 of the leaf's DER)
//!   and `Subject=` (RFC 4514) come first, so a certificate without SANs is not the
//!   empty identity every other such client shares.

use sha2::{Digest, Sha256};

use crate::proto::x509_name;

/// A verified client certificate's names, and the XFCC value made of them.
#[derive(Debug)]
pub struct PeerIdentity {
    /// URI SANs, SPIFFE IDs among them, in certificate order.
    pub uris: Vec<String>,
    /// DNS SANs, in certificate order.
    pub dns: Vec<String>,
    /// RFC 4514 subject, printable ASCII.
    pub subject: String,
    /// `Hash=..;Subject="..";URI=..;DNS=..`: every URI SAN, then every DNS SAN.
    pub xfcc: String,
}

/// Why a verified certificate gives no identity.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeIdentity {
    #[error("the certificate could not be read for its names")]
    Unreadable,
    #[error("a subjectAltName has bytes outside printable ASCII: {0:?}")]
    Name(String),
}

impl PeerIdentity {
    /// The identity of the verified leaf certificate `der`.
    pub fn of_leaf(der: &rustls_pki_types::CertificateDer<'_>) -> Result<Self, UnsafeIdentity> {
        let cert = webpki::EndEntityCert::try_from(der).map_err(|_| UnsafeIdentity::Unreadable)?;
        let uris: Vec<String> = cert.valid_uri_names().map(str::to_owned).collect();
        let dns: Vec<String> = cert.valid_dns_names().map(str::to_owned).collect();
        let subject = x509_name::rfc4514(cert.subject()).ok_or(UnsafeIdentity::Unreadable)?;
        let hash = Sha256::digest(der.as_ref());
        PeerIdentity::new(&hash, subject, uris, dns)
    }

    /// An identity from its parts (`hash`: the leaf's SHA-256).
    pub fn new(
        hash: &[u8],
        subject: String,
        uris: Vec<String>,
        dns: Vec<String>,
    ) -> Result<Self, UnsafeIdentity> {
        if let Some(bad) = uris
            .iter()
            .chain(&dns)
            .find(|n| n.is_empty() || !n.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        {
            return Err(UnsafeIdentity::Name(bad.clone()));
        }
        let mut xfcc = String::with_capacity(128);
        xfcc.push_str("Hash=");
        for b in hash {
            xfcc.push_str(&format!("{b:02x}"));
        }
        push_pair(&mut xfcc, "Subject", &subject);
        for uri in &uris {
            push_pair(&mut xfcc, "URI", uri);
        }
        for name in &dns {
            push_pair(&mut xfcc, "DNS", name);
        }
        Ok(PeerIdentity {
            uris,
            dns,
            subject,
            xfcc,
        })
    }
}

/// `;KEY=value`, the value quoted when it holds one of XFCC's delimiters.
fn push_pair(out: &mut String, key: &str, value: &str) {
    out.push(';');
    out.push_str(key);
    out.push('=');
    if !value.contains([',', ';', '=', '"']) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(subject: &str, uris: &[&str], dns: &[&str]) -> Result<PeerIdentity, UnsafeIdentity> {
        PeerIdentity::new(
            &[0xab, 0x01],
            subject.into(),
            uris.iter().map(|s| s.to_string()).collect(),
            dns.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn values_with_delimiters_are_quoted_and_escaped() {
        let i = id("CN=web,O=Example", &["spiffe://mesh/sa/web"], &["web.mesh"]).unwrap();
        assert_eq!(
            i.xfcc,
            r#"Hash=ab01;Subject="CN=web,O=Example";URI=spiffe://mesh/sa/web;DNS=web.mesh"#
        );
        let i = id(
            r#"CN=a\"b"#,
            &[r#"urn:x;URI=spiffe://mesh/sa/admin,By="e""#],
            &[],
        )
        .unwrap();
        assert_eq!(
            i.xfcc,
            r#"Hash=ab01;Subject="CN=a\\\"b";URI="urn:x;URI=spiffe://mesh/sa/admin,By=\"e\"""#
        );
        assert_eq!(id("", &[], &[]).unwrap().xfcc, "Hash=ab01;Subject=");
    }

    #[test]
    fn names_outside_printable_ascii_give_no_identity() {
        for bad in [
            "spiffe://mesh/a\r\nx-forwarded-client-cert: URI=spiffe://mesh/sa/admin",
            "spiffe://mesh/a b",
            "spiffe://mesh/\u{e9}",
            "",
        ] {
            assert_eq!(
                id("CN=x", &[bad], &[]).unwrap_err(),
                UnsafeIdentity::Name(bad.into())
            );
        }
    }
}
