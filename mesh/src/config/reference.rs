//! The README's table of every config key, made from the schema's own source (field,
//! type, first sentence of its doc comment) and defaults (the effective config of a
//! file with every block present), and checked to be current: the table cannot fall
//! behind the schema. `WEFT_BLESS=1 cargo test -p weft-mesh reference` rewrites it.

use std::collections::BTreeMap;
use std::path::Path;

use super::schema_source::{structs, Field, SCHEMA};
const README: &str = include_str!("../../../README.md");
const START: &str =
    "<!-- reference:start (generated: WEFT_BLESS=1 cargo test -p weft-mesh reference) -->";
const END: &str = "<!-- reference:end -->";

/// Every block present, with only what serde requires: its effective form has every
/// default.
const SAMPLE: &str = r#"
[[listeners]]
name = "l"
address = "127.0.0.1:1"
tls = { certificates = [{ cert = "c", key = "k" }], client_auth = { ca = "a" } }
rate_limit = { max_tokens = 1, fill_interval = "1s" }
[[listeners.routes]]
match = { path_prefix = "/", headers = [{ name = "h" }], cookie = [{ name = "c" }], query = [{ name = "q" }] }
cluster = "c"
direct_response = { status = 200 }
redirect = { }
split = [{ cluster = "c" }]
hash_policy = [{ header = "h", cookie = { name = "c" } }]
retry = { backoff = {} }
fault = { delay = { fixed = "1s" }, abort = { http_status = 503 } }
rate_limit = { max_tokens = 1, fill_interval = "1s" }
sticky = { header = "h" }
mirror = { cluster = "c" }
[clusters.c]
endpoints = ["127.0.0.1:2"]
tls = { }
discovery = { consul = { service = "s" } }
health_check = { }
outlier_detection = { }
retry = { }
retry_budget = { }
[sidecar]
register = { service = "s" }
[sidecar.inbound]
tls = { certificates = [{ cert = "c", key = "k" }] }
[consul]
tls = { }
"#;

/// snake_case enums of the schema, by name: their variants as TOML spells them.
fn parse_enums() -> BTreeMap<String, Vec<String>> {
    let mut enums = BTreeMap::new();
    let lines: Vec<&str> = SCHEMA.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line
            .trim()
            .strip_prefix("pub enum ")
            .and_then(|r| r.strip_suffix(" {"))
        else {
            continue;
        };
        let snake =
            (i.saturating_sub(3)..i).any(|j| lines[j].contains("rename_all = \"snake_case\""));
        if !snake {
            continue;
        }
        let variants = lines[i + 1..]
            .iter()
            .map(|l| l.trim())
            .take_while(|l| *l != "}")
            .filter(|l| !l.starts_with("//") && !l.starts_with('#'))
            .map(|l| l.trim_end_matches(','))
            .filter(|v| !v.is_empty() && v.chars().all(char::is_alphanumeric))
            .map(|v| format!("\"{}\"", snake_case(v)))
            .collect();
        enums.insert(name.to_owned(), variants);
    }
    enums
}

fn snake_case(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn first_sentence(doc: &str) -> String {
    let doc = doc.trim();
    let end = doc
        .match_indices(". ")
        .map(|(i, _)| i + 1)
        .find(|&i| !doc[..i].ends_with("e.g.") && !doc[..i].ends_with("i.e."))
        .unwrap_or(doc.len());
    doc[..end].replace('|', "\\|")
}

/// `Option<Vec<X>>` -> (X, "[]"-suffix, optional).
fn unwrap_type(ty: &str) -> (&str, &'static str, bool) {
    let mut t = ty;
    let mut optional = false;
    if let Some(inner) = t.strip_prefix("Option<").and_then(|r| r.strip_suffix('>')) {
        t = inner;
        optional = true;
    }
    for (wrapper, suffix) in [
        ("Vec<", "[]"),
        ("OneOrMany<", "[]"),
        ("BTreeMap<String, ", ".NAME"),
    ] {
        if let Some(inner) = t.strip_prefix(wrapper).and_then(|r| r.strip_suffix('>')) {
            return (inner, suffix, optional);
        }
    }
    (t, "", optional)
}

fn type_name(ty: &str, enums: &BTreeMap<String, Vec<String>>) -> String {
    let (inner, suffix, _) = unwrap_type(ty);
    let base = match inner {
        "String" => "string".to_owned(),
        "bool" => "bool".to_owned(),
        "f64" | "f32" => "number".to_owned(),
        "ConfigDuration" => "duration".to_owned(),
        "EndpointConfig" => "\"host:port\" \\| { address, weight }".to_owned(),
        "RateLimitKey" => {
            "\"none\" \\| \"source_ip\" \\| \"peer_identity\" \\| { header }".to_owned()
        }
        t if t.starts_with('u') || t == "usize" || t.starts_with('i') => "integer".to_owned(),
        t => enums
            .get(t)
            .map(|v| v.join(" \\| "))
            .unwrap_or_else(|| t.to_owned()),
    };
    match suffix {
        "[]" => format!("[{base}]"),
        ".NAME" => format!("{{ NAME = {base} }}"),
        _ => base,
    }
}

fn default_at(effective: &toml::Value, path: &[String]) -> Option<String> {
    let mut v = effective;
    for seg in path {
        v = match (seg.as_str(), v) {
            ("[]", toml::Value::Array(a)) => a.first()?,
            (".NAME", toml::Value::Table(t)) => t.values().next()?,
            (key, toml::Value::Table(t)) => t.get(key)?,
            _ => return None,
        };
    }
    match v {
        toml::Value::Table(_) => None,
        toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => None,
        other => Some(format!("`{}`", other).replace('|', "\\|")),
    }
}

fn rows(
    structs: &BTreeMap<&'static str, Vec<Field>>,
    enums: &BTreeMap<String, Vec<String>>,
    (effective, sample): (&toml::Value, &toml::Value),
    ty: &str,
    prefix: &str,
    path: &mut Vec<String>,
    out: &mut String,
) {
    let Some(fields) = structs.get(ty) else {
        return;
    };
    for f in fields {
        let (inner, suffix, optional) = unwrap_type(f.ty);
        let key = format!("{prefix}{}{suffix}", f.key);
        let doc = first_sentence(&f.doc);
        path.push(f.key.to_owned());
        let block = structs.contains_key(inner) && inner != "EndpointConfig";
        if block && !suffix.is_empty() {
            path.push(suffix.to_owned());
        }
        if block {
            let shown = if optional { " (optional block)" } else { "" };
            if !doc.is_empty() || optional {
                out.push_str(&format!("| `{key}` | table{shown} | | {doc} |\n"));
            }
            let next = format!("{key}.");
            rows(structs, enums, (effective, sample), inner, &next, path, out);
        } else {
            // A value the sample had to write is no default (a name, an address).
            let default = if f.required {
                "required".to_owned()
            } else if default_at(sample, path).is_some() {
                String::new()
            } else {
                default_at(effective, path).unwrap_or_else(|| {
                    if optional {
                        "unset".into()
                    } else {
                        String::new()
                    }
                })
            };
            out.push_str(&format!(
                "| `{key}` | {} | {default} | {} |\n",
                type_name(f.ty, enums),
                doc
            ));
        }
        if block && !suffix.is_empty() {
            path.pop();
        }
        path.pop();
    }
}

/// The table, as the README holds it between its markers.
pub fn table() -> String {
    let (structs, enums) = (structs(), parse_enums());
    let effective = super::effective(Path::new("sample.toml"), SAMPLE, super::Role::Sidecar)
        .expect("the sample parses");
    let sample: toml::Value = toml::from_str(SAMPLE).expect("the sample is TOML");
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    let values = (&effective, &sample);
    rows(
        &structs,
        &enums,
        values,
        "ConfigFile",
        "",
        &mut Vec::new(),
        &mut out,
    );
    out
}

#[test]
fn the_readme_reference_is_current() {
    let table = table();
    let (Some(a), Some(b)) = (README.find(START), README.find(END)) else {
        panic!("README.md has no reference markers");
    };
    let current = &README[a + START.len()..b];
    let wanted = format!("\n{table}");
    if current != wanted {
        if std::env::var_os("WEFT_BLESS").is_some() {
            let readme = format!("{}{START}{wanted}{}", &README[..a], &README[b..]);
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"), readme)
                .expect("write README.md");
        } else {
            panic!("README.md's config reference is stale: run WEFT_BLESS=1 cargo test -p weft-mesh reference");
        }
    }
    for key in [
        "`clusters.NAME.connect_timeout`",
        "`listeners[].routes[].match.path_prefix`",
        "`runtime.io`",
    ] {
        assert!(table.contains(key), "{key} missing");
    }
}
