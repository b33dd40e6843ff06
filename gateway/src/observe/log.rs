//! The process log: one line per event on stderr, as text or JSON, filtered by
//! `WEFT_LOG` (an `EnvFilter` directive list, `info` by default) and changed at run
//! time on the admin port (`POST /logging?level=debug`, as Envoy's admin does).
//!
//! The filter sits behind a reload handle, so a change takes effect at once on every
//! thread; events are never formatted on a worker for a level that is off.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `TIME LEVEL target: message key=value`, coloured on a terminal.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for log
    /// shippers.
    Json,
}

struct Filter {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The directives in force, as given.
    current: std::sync::Mutex<String>,
}

static FILTER: OnceLock<Filter> = OnceLock::new();

/// Installs the process's logger. Call once, first thing.
pub fn init(format: Format) {
    let directives = std::env::var("WEFT_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output: Box<dyn Layer<_> + Send + Sync> = match format {
        Format::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        Format::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    let _ = FILTER.set(Filter {
        handle,
        current: std::sync::Mutex::new(directives),
    });
}

/// The filter directives in force.
pub fn level() -> String {
    FILTER
        .get()
        .map(|f| {
            f.current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
        .unwrap_or_default()
}

/// Replaces the filter (`debug`, `warn,weft_gateway::control=debug`); the old one
/// stays when `directives` does not parse.
pub fn set_level(directives: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("`{directives}`: {e}"))?;
    let f = FILTER.get().ok_or("no logger installed")?;
    f.handle.reload(filter).map_err(|e| e.to_string())?;
    *f.current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = directives.to_owned();
    tracing::info!(filter = directives, "log level changed");
    Ok(())
}
