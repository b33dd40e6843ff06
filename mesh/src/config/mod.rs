//! Reading a config file: TOML syntax, types and unknown keys.
//!
//! Every problem is reported as `FILE: path.to.key: problem`. Unknown keys are errors
//! (a typo must never silently fall back to a default), and all of them are reported at
//! once. Semantic rules (references, ranges, addresses) are checked when the snapshot is
//! compiled, so `weft check`, startup and reload share one code path.

mod duration;
mod schema;

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

pub use duration::{parse_duration, ConfigDuration};
pub use schema::*;

/// Which subcommand reads the file: a sidecar needs a `[sidecar]` section, an ingress
/// must not have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingress,
    Sidecar,
}

/// One problem in one config file, pointing at the key the operator wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// `listeners[0].routes[2].cluster`, or `line 4, column 7` for syntax errors.
    pub path: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.path,
                self.problem
            )
        }
    }
}

/// All problems found in one attempt to load a config; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The parsed file plus what it came from, ready to be compiled into a snapshot.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub file: PathBuf,
    pub role: Role,
    pub source_text: String,
    pub config: ConfigFile,
}

/// Reads and parses `file`. Semantic validation happens in `snapshot::compile`.
pub fn load(file: &Path, role: Role) -> Result<LoadedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            path: String::new(),
            problem: format!("cannot read: {e}"),
        }])
    })?;
    parse(file, &text, role)
}

/// Parses config text; `file` is used only in error messages.
pub fn parse(file: &Path, text: &str, role: Role) -> Result<LoadedConfig, ConfigErrors> {
    let syntax_error = |e: toml::de::Error| {
        let path = e
            .span()
            .map(|s| line_col(text, s.start))
            .unwrap_or_default();
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            path,
            problem: format!("{} ({STOPS_HERE})", e.message().trim_end()),
        }])
    };
    // Valid files (every reload of a good config) take the fast way: serde_ignored
    // alone. Only a file that fails is parsed again with the key path tracked for the
    // error message, which costs 15% more (10,000 routes: 18 -> 15 ms).
    let mut unknown = Vec::new();
    let parsed: Result<ConfigFile, _> = {
        let de = toml::Deserializer::parse(text).map_err(syntax_error)?;
        let mut note_unknown = |path: serde_ignored::Path| unknown.push(render_ignored_path(&path));
        ConfigFile::deserialize(serde_ignored::Deserializer::new(de, &mut note_unknown))
    };
    let parsed = match parsed {
        Ok(config) => Ok(config),
        Err(_) => {
            unknown.clear();
            let de = toml::Deserializer::parse(text).map_err(syntax_error)?;
            let mut note_unknown =
                |path: serde_ignored::Path| unknown.push(render_ignored_path(&path));
            let tracked = serde_ignored::Deserializer::new(de, &mut note_unknown);
            serde_path_to_error::deserialize(tracked)
        }
    };
    let mut errors: Vec<ConfigError> = unknown
        .into_iter()
        .map(|path| ConfigError {
            file: file.to_owned(),
            path,
            problem: "unknown key".into(),
        })
        .collect();
    match parsed {
        Ok(config) if errors.is_empty() => Ok(LoadedConfig {
            file: file.to_owned(),
            role,
            source_text: text.to_owned(),
            config,
        }),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let problem = format!("{} ({STOPS_HERE})", inner.message().trim_end());
            let path = if path == "." || path.is_empty() {
                inner
                    .span()
                    .map(|s| line_col(text, s.start))
                    .unwrap_or_default()
            } else {
                path
            };
            errors.push(ConfigError {
                file: file.to_owned(),
                path,
                problem,
            });
            Err(ConfigErrors(errors))
        }
    }
}

/// The TOML parser stops at the first syntax or type error: `weft check` promises
/// every error, so it says when more may be hidden behind this one.
const STOPS_HERE: &str = "reading stops here: further errors may follow once this is fixed";

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    format!("line {line}, column {col}")
}

fn render_ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", render_ignored_path(parent)),
        P::Map { parent, key } => {
            let p = render_ignored_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            render_ignored_path(parent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        parse(Path::new("t.toml"), text, Role::Ingress)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let e = errs(
            r#"
            [runtime]
            wrokers = 2
            [[listeners]]
            name = "a"
            address = "127.0.0.1:1"
            [[listeners.routes]]
            match = { path_prefix = "/", hots = "x" }
            cluster = "c"
            "#,
        );
        assert_eq!(
            e,
            vec![
                "t.toml: runtime.wrokers: unknown key",
                "t.toml: listeners[0].routes[0].match.hots: unknown key"
            ]
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = errs("[clusters.api]\nendpoints = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", weight = -1 }]\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("t.toml: clusters.api.endpoints[1]"),
            "{e:?}"
        );
        let e = errs("[clusters.api]\nconnect_timeout = \"5\"\n");
        assert!(
            e[0].starts_with("t.toml: clusters.api.connect_timeout: "),
            "{e:?}"
        );
        assert!(e[0].contains("no unit"), "{e:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = errs("[runtime]\nworkers = = 2\n");
        assert!(e[0].starts_with("t.toml: line 2, column"), "{e:?}");
    }

    #[test]
    fn the_issue_example_parses() {
        let text = include_str!("../../../config/ingress.toml");
        parse(Path::new("ingress.toml"), text, Role::Ingress).unwrap();
    }
}
