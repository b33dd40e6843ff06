//! Reading a config file: TOML syntax, types and unknown keys.
//!
//! Every problem is reported as `FILE:LINE:COLUMN: path.to.key: problem` (`locate`).
//! Unknown keys are errors (a typo must never silently fall back to a default), each
//! with the nearest known key; all of them are reported at once, and with the
//! semantic errors when the file parses. Semantic rules (references, ranges,
//! addresses) are checked when the snapshot is compiled, so `weft check`, startup and
//! reload share one code path.

mod duration;
mod locate;
#[cfg(test)]
mod reference;
mod schema;
mod schema_source;

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

impl Role {
    /// As the subcommand spells it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingress => "ingress",
            Role::Sidecar => "sidecar",
        }
    }
}

/// The config `text` with every default filled in, as TOML values (`weft check
/// --effective`, `/config?effective`); None when it does not parse.
pub fn effective(file: &Path, text: &str, role: Role) -> Option<toml::Value> {
    let loaded = parse(file, text, role).ok()?;
    toml::Value::try_from(&loaded.config).ok()
}

/// One problem in one config file, pointing at the key the operator wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// `listeners[0].routes[2].cluster`; empty for a syntax error or an unreadable file.
    pub path: String,
    pub problem: String,
    /// Line and column (1-based) of the key, or of its table when the key is not
    /// written; of the error itself for a syntax error.
    pub at: Option<(usize, usize)>,
    /// The `name` of the route the path goes through, when it has one.
    pub route: Option<String>,
}

impl ConfigError {
    /// An error at `path`; where it is in the file is filled in later (`locate`).
    pub fn new(file: &Path, path: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            path: path.into(),
            problem: problem.into(),
            at: None,
            route: None,
        }
    }
}

/// `FILE:LINE:COLUMN: key.path (route "name"): problem`, the compilers' form, which
/// editors and terminals jump to.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.at {
            write!(f, ":{line}:{column}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        if let Some(route) = &self.route {
            write!(f, " (route {route:?})")?;
        }
        write!(f, ": {}", self.problem)
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

impl ConfigErrors {
    /// The same errors with their lines, columns, routes and suggestions (`text` is
    /// the file's text).
    /// Sorted by where they are, as a compiler lists them.
    pub fn located(mut self, text: &str) -> ConfigErrors {
        locate::locate(&mut self.0, text);
        self.0.sort_by_key(|e| e.at.unwrap_or((usize::MAX, 0)));
        self
    }
}

/// Locates warnings as errors are (`ConfigErrors::located`).
pub fn locate_all(errors: &mut [ConfigError], text: &str) {
    locate::locate(errors, text);
}

/// The parsed file plus what it came from, ready to be compiled into a snapshot.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub file: PathBuf,
    pub role: Role,
    pub source_text: String,
    pub config: ConfigFile,
    /// Unknown keys: the file parsed all the same, so compiling it reports its
    /// semantic errors together with these, and then fails.
    pub unknown_keys: Vec<ConfigError>,
}

/// Reads and parses `file`. Semantic validation happens in `snapshot::compile`.
pub fn load(file: &Path, role: Role) -> Result<LoadedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            file,
            "",
            format!("cannot read: {e}"),
        )])
    })?;
    parse(file, &text, role)
}

/// Parses config text; `file` is used only in error messages.
pub fn parse(file: &Path, text: &str, role: Role) -> Result<LoadedConfig, ConfigErrors> {
    let syntax_error = |e: toml::de::Error| {
        let mut error = ConfigError::new(
            file,
            "",
            format!("{} ({STOPS_HERE})", e.message().trim_end()),
        );
        error.at = e.span().map(|s| locate::line_col(text, s.start));
        ConfigErrors(vec![error])
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
        .map(|path| ConfigError::new(file, path, "unknown key"))
        .collect();
    match parsed {
        Ok(config) => Ok(LoadedConfig {
            file: file.to_owned(),
            role,
            source_text: text.to_owned(),
            config,
            unknown_keys: errors,
        }),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let problem = format!("{} ({STOPS_HERE})", inner.message().trim_end());
            let mut error = if path == "." || path.is_empty() {
                ConfigError::new(file, "", problem)
            } else {
                ConfigError::new(file, path, problem)
            };
            // The parser's own span is the value it refused: more precise than the key.
            error.at = inner.span().map(|s| locate::line_col(text, s.start));
            errors.push(error);
            Err(ConfigErrors(errors).located(text))
        }
    }
}

/// The TOML parser stops at the first syntax or type error: `weft check` promises
/// every error, so it says when more may be hidden behind this one.
const STOPS_HERE: &str = "reading stops here: further errors may follow once this is fixed";

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

    /// The errors of loading and compiling `text`, as printed.
    fn errs(text: &str) -> Vec<String> {
        parse(Path::new("t.toml"), text, Role::Ingress)
            .and_then(|loaded| crate::snapshot::compile(&loaded).map(|_| ()))
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
                "t.toml:3:13: runtime.wrokers: unknown key (did you mean `workers`?)",
                "t.toml:8:42: listeners[0].routes[0].match.hots: unknown key (did you mean `host`?)",
                // The file parsed, so its semantic errors come with the unknown keys.
                "t.toml:9:13: listeners[0].routes[0].cluster: unknown cluster `c`",
            ]
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = errs("[clusters.api]\nendpoints = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", weight = -1 }]\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("t.toml:2:65: clusters.api.endpoints[1]"),
            "{e:?}"
        );
        let e = errs("[clusters.api]\nconnect_timeout = \"5\"\n");
        assert!(
            e[0].starts_with("t.toml:2:19: clusters.api.connect_timeout: "),
            "{e:?}"
        );
        assert!(e[0].contains("no unit"), "{e:?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = errs("[runtime]\nworkers = = 2\n");
        assert!(e[0].starts_with("t.toml:2:"), "{e:?}");
    }

    #[test]
    fn the_issue_example_parses() {
        let text = include_str!("../../../config/ingress.toml");
        let loaded = parse(Path::new("ingress.toml"), text, Role::Ingress).unwrap();
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
    }
}
