//! Path normalisation on any path: the result is itself normal (normalising it again
//! changes nothing), starts with `/`, has no `.` or `..` segment and (merging) no empty
//! one inside, and a path refused for climbing above `/` really has more `..` than
//! segments before them (at least, it has a `..`, written out or encoded).
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_gateway::proto::path::{normalize, PathError};

fuzz_target!(|input: &[u8]| {
    let Some((&flag, rest)) = input.split_first() else {
        return;
    };
    // Paths reach weft as visible ASCII.
    if !rest.iter().all(|b| b.is_ascii_graphic()) {
        return;
    }
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let merge = flag & 1 == 1;
    match normalize(path, merge) {
        Ok(None) => {}
        Ok(Some(out)) => {
            assert!(out.starts_with('/'), "{path:?} -> {out:?}");
            assert_eq!(normalize(&out, merge), Ok(None), "{path:?} -> {out:?} is not normal");
            let inner: Vec<&str> = out[1..].split('/').collect();
            for (i, s) in inner.iter().enumerate() {
                assert!(*s != "." && *s != "..", "{path:?} -> {out:?}");
                if merge && i + 1 < inner.len() {
                    assert!(!s.is_empty(), "{path:?} -> {out:?}");
                }
            }
        }
        Err(PathError::BadPercentEncoding) => assert!(path.contains('%')),
        Err(PathError::EscapesRoot) => {
            // A `..` written out or percent-encoded (`%2e` is `.`).
            let lower = path.to_ascii_lowercase();
            assert!(
                lower.contains("..") || lower.contains("%2e"),
                "{path:?} refused without `..`"
            )
        }
    }
});
