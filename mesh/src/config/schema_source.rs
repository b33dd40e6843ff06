//! The config schema read from its own source text (`schema.rs`): every struct's
//! fields with their TOML key (after a `rename`), Rust type, doc comment and whether
//! serde requires them. For what must follow the schema without a list kept by hand:
//! the "did you mean" of unknown keys (`locate`) and the README's reference table
//! (`reference`). Read only when needed (an error, a test), never on a good load.

use std::collections::BTreeMap;

/// The schema's source.
pub(crate) const SCHEMA: &str = include_str!("schema.rs");

/// One field of a schema struct. The type, doc and requiredness are read by the
/// reference table's test only; a build without tests reads just the key.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Field {
    /// The TOML key: the field's name, or its `#[serde(rename = "..")]`.
    pub key: &'static str,
    pub ty: &'static str,
    /// Its doc comment, lines joined by spaces.
    pub doc: String,
    /// Neither the struct nor the field has `#[serde(default ..)]`, and it is no
    /// `Option`.
    pub required: bool,
}

/// Every `pub struct` of the schema with its fields, in order, by struct name.
pub(crate) fn structs() -> BTreeMap<&'static str, Vec<Field>> {
    let mut structs = BTreeMap::new();
    let lines: Vec<&'static str> = SCHEMA.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let defaulted = (i.saturating_sub(3)..i).any(|j| lines[j].contains("#[serde(default"));
        if let Some(name) = line
            .strip_prefix("pub struct ")
            .and_then(|r| r.strip_suffix(" {"))
        {
            let mut fields = Vec::new();
            let (mut doc, mut rename, mut field_default) = (String::new(), None, false);
            i += 1;
            while i < lines.len() && lines[i].trim() != "}" {
                let l = lines[i].trim();
                if let Some(d) = l.strip_prefix("///") {
                    doc.push_str(d.trim());
                    doc.push(' ');
                } else if let Some(r) = l.strip_prefix("#[serde(rename = \"") {
                    rename = r.split('"').next();
                } else if l.starts_with("#[serde(default") {
                    field_default = true;
                } else if let Some((f, ty)) =
                    l.strip_prefix("pub ").and_then(|r| r.split_once(": "))
                {
                    let ty = ty.trim_end_matches(',');
                    fields.push(Field {
                        key: rename.take().unwrap_or(f),
                        required: !defaulted && !field_default && !ty.starts_with("Option<"),
                        ty,
                        doc: doc.trim().to_owned(),
                    });
                    doc.clear();
                    field_default = false;
                }
                i += 1;
            }
            structs.insert(name.trim_end_matches("<T>"), fields);
        }
        i += 1;
    }
    structs
}
