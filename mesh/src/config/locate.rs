//! Where in the file a config error is: the line and column of the key path it names
//! (the TOML parser keeps spans), the route's name on the way there, and for an
//! unknown key the nearest key the schema knows ("did you mean `connect_timeout`?").
//!
//! Run only on errors: a good config never pays for the second parse.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::ConfigError;

/// Fills in `at`, the route name and the suggestion of each error, from `text`.
pub fn locate(errors: &mut [ConfigError], text: &str) {
    let Ok(doc) = DeTable::parse(text) else {
        return;
    };
    for e in errors.iter_mut() {
        if e.path.is_empty() || e.at.is_some() {
            continue;
        }
        let found = find(doc.get_ref(), &segments(&e.path));
        if let Some(span) = found.span {
            e.at = Some(line_col(text, span.start));
        }
        e.route = found.route;
        if e.problem == "unknown key" {
            let key = e.path.rsplit(['.', ']']).next().unwrap_or_default();
            if let Some(near) = nearest_key(key) {
                e.problem = format!("unknown key (did you mean `{near}`?)");
            }
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // Spans fall on token boundaries; a character boundary is made sure of anyway,
    // since any text reaches here (the config fuzz target).
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `listeners[0].routes[2].cluster` -> listeners, 0, routes, 2, cluster.
fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Segment::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

#[derive(Default)]
struct Found {
    /// The deepest part of the path the file has: the key itself when it is written,
    /// else the table it belongs in (a missing key's error points at its table).
    span: Option<Range<usize>>,
    route: Option<String>,
}

fn find(root: &DeTable<'_>, path: &[Segment<'_>]) -> Found {
    let mut found = Found::default();
    let mut table = Some(root);
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    let mut after_routes = false;
    for seg in path {
        let value = match seg {
            Segment::Key(k) => {
                let Some((key, value)) =
                    table.and_then(|t| t.iter().find(|(key, _)| key.get_ref() == k))
                else {
                    break;
                };
                found.span = Some(key.span());
                after_routes = *k == "routes";
                value
            }
            Segment::Index(i) => {
                let Some(value) = array.and_then(|a| a.get(*i)) else {
                    break;
                };
                found.span = Some(value.span());
                value
            }
        };
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => {
                if after_routes && matches!(seg, Segment::Index(_)) {
                    if let Some(DeValue::String(name)) = t
                        .iter()
                        .find(|(k, _)| k.get_ref() == "name")
                        .map(|(_, v)| v.get_ref())
                    {
                        found.route = Some(name.to_string());
                    }
                }
                table = Some(t);
            }
            DeValue::Array(a) => array = Some(&a[..]),
            _ => {}
        }
    }
    found
}

/// The schema's keys (every field of its structs, renames applied), so the list
/// cannot fall behind the schema.
fn known_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = super::schema_source::structs()
        .into_values()
        .flatten()
        .map(|f| f.key)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The known key nearest to `typo`, when it is near enough to be what was meant.
pub fn nearest_key(typo: &str) -> Option<&'static str> {
    let limit = (typo.len() / 3).max(1);
    known_keys()
        .into_iter()
        .map(|k| (edit_distance(typo, k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance, with a swap of two neighbours counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for j in 0..=b.len() {
        rows[0][j] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_the_nearest_known_key() {
        assert_eq!(nearest_key("conect_timeout"), Some("connect_timeout"));
        assert_eq!(nearest_key("wrokers"), Some("workers"));
        assert_eq!(nearest_key("hots"), Some("host"));
        assert_eq!(nearest_key("zzzzzzzz"), None);
        let keys = known_keys();
        for k in [
            "match",
            "endpoints",
            "routes",
            "health_check",
            "max_ejection_percent",
        ] {
            assert!(keys.contains(&k), "{k} not read from the schema");
        }
        assert!(!keys.contains(&"matches"), "the rename wins");
    }

    #[test]
    fn a_path_finds_its_key_and_its_route() {
        let text = "[runtime]\nworkers = 2\n\n[[listeners]]\nname = \"a\"\nroutes = [\n  { name = \"checkout\", cluster = \"x\" },\n]\n";
        let doc = DeTable::parse(text).expect("parses");
        let f = find(doc.get_ref(), &segments("listeners[0].routes[0].cluster"));
        assert_eq!(f.route.as_deref(), Some("checkout"));
        assert_eq!(line_col(text, f.span.expect("found").start), (7, 24));
        let f = find(doc.get_ref(), &segments("runtime.workers"));
        assert_eq!(line_col(text, f.span.expect("found").start), (2, 1));
        // A key not written points at its table.
        let f = find(doc.get_ref(), &segments("runtime.io"));
        assert_eq!(line_col(text, f.span.expect("found").start), (1, 2));
    }
}
