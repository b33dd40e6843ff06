//! An X.509 `Name` (a certificate's Subject) as an RFC 4514 string, for the
//! `Subject=` of `x-forwarded-client-cert`.
//!
//! Invariant: the string is printable ASCII (0x20-0x7e) whatever the certificate
//! holds. RFC 4514's specials are escaped with `\`, and every other byte outside that
//! range (controls, non-ASCII UTF-8) as `\HH` hex pairs, which RFC 4514 allows for any
//! character; a value of a string type this does not decode, or an attribute that is
//! not well-formed DER, is written `#HEX` of its DER, as RFC 4514 does for unknown
//! types. So nothing a certificate says can end a header line or pass for another
//! field.

/// The RFC 4514 form (most specific RDN first, `CN=client,O=Example,C=US`) of `name`,
/// the contents of a Name's outer SEQUENCE (as rustls-webpki's `Cert::subject` gives
/// it). `None` when it is not a sequence of RDN sets.
pub fn rfc4514(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (tag, set, after) = tlv(rest)?;
        rest = after;
        if tag != SET {
            return None;
        }
        let mut attrs = Vec::new();
        let mut inner = set;
        while !inner.is_empty() {
            let (tag, attr, after) = tlv(inner)?;
            inner = after;
            if tag != SEQUENCE {
                return None;
            }
            attrs.push(attribute(attr)?);
        }
        rdns.push(attrs.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// One DER TLV at the start of `input`: (tag, contents, what follows). Lengths are
/// definite (DER), at most four bytes long.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

/// `TYPE=value` of one AttributeTypeAndValue.
fn attribute(attr: &[u8]) -> Option<String> {
    let (tag, oid, rest) = tlv(attr)?;
    if tag != OID {
        return None;
    }
    let (value_tag, value, after) = tlv(rest)?;
    if !after.is_empty() {
        return None;
    }
    let mut out = match short_name(oid) {
        Some(name) => name.to_owned(),
        None => dotted(oid)?,
    };
    out.push('=');
    match decode(value_tag, value).filter(|_| short_name(oid).is_some()) {
        Some(text) => escape_into(&mut out, &text),
        None => {
            // RFC 4514 §2.4: types without a short name, and values not understood,
            // as `#` and the hex of the value's whole DER encoding.
            out.push('#');
            let whole = &rest[..rest.len() - after.len()];
            for b in whole {
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
    Some(out)
}

/// The short names RFC 4514 §3 lists (and STREET, UID, which it lists too).
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return None,
    })
}

/// An OID's dotted-decimal form (`1.2.840.113549.1.9.1`).
fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        if acc > (u64::MAX >> 7) {
            return None;
        }
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        } else if i + 1 == oid.len() {
            return None;
        }
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// A directory string's text, for the string types certificates use.
fn decode(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString, NumericString.
        0x0c | 0x13 | 0x16 | 0x1a | 0x12 => String::from_utf8(value.to_vec()).ok(),
        // TeletexString: in practice Latin-1.
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e => {
            if value.len() % 2 != 0 {
                return None;
            }
            let units = value.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        // UniversalString: UCS-4BE.
        0x1c => {
            if value.len() % 4 != 0 {
                return None;
            }
            value
                .chunks(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// Appends `value` escaped as RFC 4514 §2.4 says, and every character outside
/// printable ASCII as `\HH` pairs of its UTF-8 bytes.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if contents.len() < 0x80 {
            out.push(contents.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(contents.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(contents);
        out
    }

    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let attr = [der(OID, oid), der(tag, value)].concat();
        der(SET, &der(SEQUENCE, &attr))
    }

    #[test]
    fn names_read_most_specific_first_with_specials_escaped() {
        let name = [
            rdn(&[0x55, 0x04, 0x06], 0x13, b"US"),
            rdn(&[0x55, 0x04, 0x0a], 0x0c, b"Example, Inc."),
            rdn(&[0x55, 0x04, 0x03], 0x0c, b" web+1 "),
        ]
        .concat();
        assert_eq!(
            rfc4514(&name).unwrap(),
            r"CN=\ web\+1\ ,O=Example\, Inc.,C=US"
        );
    }

    #[test]
    fn nothing_a_certificate_says_leaves_printable_ascii() {
        let name = rdn(
            &[0x55, 0x04, 0x03],
            0x0c,
            "a\r\nx-evil: 1\u{e9}\0".as_bytes(),
        );
        let text = rfc4514(&name).unwrap();
        assert_eq!(text, r"CN=a\0D\0Ax-evil: 1\C3\A9\00");
        assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        // An unknown type, and a value type not decoded: hex of the DER.
        let email = rdn(
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
            0x16,
            b"a@b",
        );
        assert_eq!(rfc4514(&email).unwrap(), "1.2.840.113549.1.9.1=#1603614062");
        let bmp = rdn(&[0x55, 0x04, 0x03], 0x1e, &[0x00, 0x41, 0x00, 0x42]);
        assert_eq!(rfc4514(&bmp).unwrap(), "CN=AB");
    }

    #[test]
    fn malformed_names_are_none() {
        assert_eq!(rfc4514(&[0x31, 0x05, 0x30]), None);
        assert_eq!(rfc4514(&[0x30, 0x00]), None);
        assert_eq!(rfc4514(&[0x31, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(rfc4514(&[]).as_deref(), Some(""));
    }
}
