//! Request path normalisation (RFC 3986 §6.2.2): the path routes match and the
//! upstream receives, one spelling per resource.
//!
//! Without it `/%61dmin`, `//admin`, `/./admin`, `/x/../admin` and `/%2e%2e/admin`
//! each pass a route written for `/admin` while the origin serves `/admin` to all of
//! them. In order: percent-encoded unreserved characters are decoded (and other
//! percent-encodings get uppercase hex), repeated slashes are merged when asked, and
//! `.` / `..` segments are removed (§5.2.4). A path whose `..` climbs above `/` is
//! refused rather than clamped: no origin has a parent of its root, so the request is
//! a probe. So is a `%` without two hex digits after it (what it would become after
//! its neighbours are decoded is up to the next decoder).
//!
//! A path already normal (the common case) is found so by one scan and not copied.

use super::percent::hex_digit;

/// Why a path cannot be normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// `..` segments climb above `/`.
    EscapesRoot,
    /// A `%` not followed by two hex digits. Kept as it is, decoding its neighbours
    /// could make a new encoding of it (`%6%61` -> `%6a`), and a second decoder
    /// downstream would read another path than the routes did.
    BadPercentEncoding,
}

/// The normal form of `path` (without its query), or `None` when it already is.
pub fn normalize(path: &str, merge_slashes: bool) -> Result<Option<String>, PathError> {
    if !path.starts_with('/') || is_normal(path.as_bytes(), merge_slashes) {
        return Ok(None);
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    // Whether the result ends in `/`: a last segment that is empty, `.` or `..` names
    // a directory.
    let mut trailing_slash = false;
    let mut parts = decoded[1..].split('/').peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash = last;
            }
            "" if merge_slashes || last => trailing_slash = last,
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

/// Whether a path needs no work: no percent sign, no dot segment, and (when merging)
/// no empty segment.
fn is_normal(path: &[u8], merge_slashes: bool) -> bool {
    if path.contains(&b'%') {
        return false;
    }
    let last = path.iter().filter(|&&b| b == b'/').count();
    path.split(|&b| b == b'/')
        .enumerate()
        .all(|(i, segment)| match segment {
            b"." | b".." => false,
            // The empty segment before the leading `/`, and a trailing slash's, are fine.
            b"" => i == 0 || i == last || !merge_slashes,
            _ => true,
        })
}

/// `%41` becomes `A` (an unreserved character has one spelling); any other
/// percent-encoding stays encoded, with uppercase hex digits. A `%` not followed by two
/// hex digits is refused.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                return Err(PathError::BadPercentEncoding);
            };
            let (Some(h), Some(l)) = (hex_digit(hi), hex_digit(lo)) else {
                return Err(PathError::BadPercentEncoding);
            };
            let c = h << 4 | l;
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(hi.to_ascii_uppercase() as char);
                out.push(lo.to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        // The path is ASCII (httparse and h2 take only visible ASCII in it), so a byte
        // is a char.
        out.push(b as char);
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, true).map(|n| n.unwrap_or_else(|| p.to_owned()))
    }

    #[test]
    fn every_spelling_of_admin_is_admin() {
        for p in [
            "/admin",
            "/%61dmin",
            "//admin",
            "/./admin",
            "/x/../admin",
            "/%2e/admin",
        ] {
            assert_eq!(norm(p).as_deref(), Ok("/admin"), "{p}");
        }
        assert_eq!(norm("/a/b/../../admin/x").as_deref(), Ok("/admin/x"));
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for p in ["/..", "/../admin", "/%2e%2e/admin", "/a/../../b", "/%2E%2E"] {
            assert_eq!(norm(p), Err(PathError::EscapesRoot), "{p}");
        }
    }

    #[test]
    fn normal_paths_are_not_copied_and_the_rest_is_kept() {
        assert_eq!(normalize("/api/v1/users", true), Ok(None));
        assert_eq!(normalize("/dir/", true), Ok(None));
        assert_eq!(normalize("/", true), Ok(None));
        // Reserved characters stay encoded (a `%2F` is not a segment separator).
        assert_eq!(norm("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(norm("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/%6%61"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a%4"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a/./").as_deref(), Ok("/a/"));
        assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
    }

    #[test]
    fn slashes_are_merged_only_when_asked() {
        assert_eq!(normalize("/a//b", false), Ok(None));
        assert_eq!(
            normalize("/a//b/./c", false),
            Ok(Some("/a//b/c".to_owned()))
        );
        assert_eq!(normalize("/a//b", true), Ok(Some("/a/b".to_owned())));
    }
}
