//! The control plane inside the process: what decides how the workers serve, on
//! threads of its own, never on a worker.
//!
//! - `reload`: SIGHUP -> load, compile, bind added listeners, publish;
//! - `discovery`, `consul`: endpoint sources (watched files, Consul health queries)
//!   and the registration of a sidecar's service;
//! - `admin`: the admin listener (/ready /live /config /metrics);
//! - `health`: the active health checks, one checker for the process;
//! - `upgrade`: handing the listening sockets to a new weft binary;
//! - here: `Control`, the state the control plane publishes and workers read (the
//!   snapshot publisher, readiness, reload and discovery status, the mailboxes that
//!   tell workers to listen or stop), and the thread priorities of control work.
//!
//! Arrows run one way: the runtime (workers, signals) calls into the control plane;
//! nothing here imports the runtime. Workers see the control plane's decisions only as
//! a published snapshot and their mailbox.

pub mod admin;
pub mod consul;
pub mod discovery;
pub mod health;
pub mod reload;
pub mod upgrade;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_mesh::config::Role;
use weft_mesh::snapshot::{Publisher, Snapshot};

use crate::observe::metrics::Registry;

/// What the main thread shares with workers and the admin thread. Read-mostly.
pub struct Control {
    pub publisher: Publisher,
    /// Version of the published snapshot; workers compare it per request.
    pub version: AtomicU64,
    pub registry: Registry,
    pub draining: AtomicBool,
    /// A successor took the listening sockets over (`upgrade`); this process drains.
    pub handed_off: AtomicBool,
    pub ready_workers: AtomicUsize,
    pub workers: usize,
    pub role: Role,
    pub reloads: ReloadStatus,
    /// One sender per worker; only the control thread sends (the lock is never contended).
    pub mailboxes: Mutex<Vec<mpsc::Sender<WorkerMsg>>>,
    /// Endpoints found by discovery, and how its sources are doing.
    pub discovery: discovery::DiscoveryState,
    /// Held while a snapshot is compiled and published (reloads and discovery updates
    /// come from different threads).
    pub publishing: Mutex<()>,
    /// When this process started (`process_start_time_seconds`).
    pub started: SystemTime,
    /// `--upgrade-socket`, where a successor may take this process's sockets over.
    pub upgrade_socket: Option<PathBuf>,
}

impl Control {
    /// The control state of a process starting with `first`; `mailboxes` reach the
    /// workers (one per worker, in worker order).
    pub fn new(
        first: Snapshot,
        workers: usize,
        role: Role,
        mailboxes: Vec<mpsc::Sender<WorkerMsg>>,
    ) -> Control {
        Control {
            version: AtomicU64::new(1),
            publisher: Publisher::new(first),
            registry: Registry::default(),
            draining: AtomicBool::new(false),
            handed_off: AtomicBool::new(false),
            ready_workers: AtomicUsize::new(0),
            workers,
            role,
            reloads: ReloadStatus::default(),
            mailboxes: Mutex::new(mailboxes),
            discovery: discovery::DiscoveryState::default(),
            publishing: Mutex::new(()),
            started: SystemTime::now(),
            upgrade_socket: None,
        }
    }

    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
            && self.ready_workers.load(Ordering::Acquire) == self.workers
    }
}

/// A listening socket bound for one worker, with the listener it belongs to.
pub struct Socket {
    /// Unique for the process lifetime (a re-added listener gets a new one): the key of
    /// the listener's metrics series in the workers.
    pub slot: usize,
    pub name: String,
    pub listener: std::net::TcpListener,
}

/// What the control thread tells a worker.
pub enum WorkerMsg {
    /// Start accepting on this socket (a listener added by a reload).
    Listen(Socket),
    /// Stop accepting on the listener of this name and drain its connections.
    Unlisten(String),
}

/// Reload outcomes, for /config and /metrics.
#[derive(Default)]
pub struct ReloadStatus {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// The last attempt, whatever its outcome (None before the first SIGHUP).
    pub last: Mutex<Option<ReloadAttempt>>,
}

/// One reload attempt, as /config shows it.
#[derive(Clone, Debug)]
pub struct ReloadAttempt {
    pub at: SystemTime,
    pub outcome: ReloadOutcome,
}

#[derive(Clone, Debug)]
pub enum ReloadOutcome {
    /// A new config is served, as this version.
    Published(u64),
    /// The file compiled to the config already served.
    Unchanged,
    /// Refused with these errors; the running config stayed.
    Refused(String),
}

impl ReloadStatus {
    pub fn record(&self, outcome: ReloadOutcome) {
        // The counters are `weft_config_reloads_total` (published) and
        // `_reload_failures_total` (refused): a file found unchanged is neither.
        match outcome {
            ReloadOutcome::Published(_) => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            ReloadOutcome::Refused(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            ReloadOutcome::Unchanged => {}
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(ReloadAttempt {
            at: SystemTime::now(),
            outcome,
        });
    }

    /// The `reloads` object of /config: counts, and the last attempt's time, result and
    /// errors (`last_error` only while the last attempt was refused).
    pub fn json(&self) -> serde_json::Value {
        let last = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (attempt, last_error) = match last {
            None => (serde_json::Value::Null, None),
            Some(a) => {
                let (result, version, error) = match a.outcome {
                    ReloadOutcome::Published(v) => ("published", Some(v), None),
                    ReloadOutcome::Unchanged => ("unchanged", None, None),
                    ReloadOutcome::Refused(e) => ("refused", None, Some(e)),
                };
                let unix =
                    a.at.duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                (
                    serde_json::json!({
                        "at": httpdate::fmt_http_date(a.at),
                        "at_unix": unix,
                        "succeeded": error.is_none(),
                        "result": result,
                        "version": version,
                    }),
                    error,
                )
            }
        };
        serde_json::json!({
            "succeeded": self.succeeded.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "last_attempt": attempt,
            "last_error": last_error,
        })
    }
}

/// Frees replaced snapshots once no request holds them, off the workers' threads.
pub fn start_janitor(control: Arc<Control>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("weft-janitor".into())
        .spawn(move || {
            yield_to_workers();
            loop {
                std::thread::sleep(Duration::from_millis(250));
                control.publisher.collect_retired();
            }
        })?;
    Ok(())
}

/// Lets the calling thread run only when no worker wants its CPU (`SCHED_IDLE`, per
/// thread on Linux; nice 19 where that is refused). For the heavy control work:
/// compiling a reload or a discovery update, freeing an old snapshot.
///
/// That work shares cores with the workers, the load they serve and the services
/// beside them. Nice 19 was not enough: a nice-19 thread that is running keeps its CPU
/// until its slice ends (up to a few ms), so every compile showed up as 2x in request
/// p99 (`weft-bench run --scenario reload-swap`). A `SCHED_IDLE` thread is preempted
/// the moment a normal thread wakes on its CPU, and still gets a small share on a
/// saturated machine, so a reload is slowed under full load but never stopped.
/// Threads this one starts inherit the setting.
pub fn yield_to_workers() {
    // SAFETY: a plain syscall on the calling thread; `param` outlives the call.
    let idle = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
    };
    if !idle {
        defer_to_workers();
    }
}

/// Gives the calling thread the lowest normal priority (nice 19, per thread on Linux).
/// For the admin listener: its work is tiny, but a readiness probe must be answered
/// within its timeout even on a saturated machine. Beside a thread that keeps a CPU
/// busy, a `SCHED_IDLE` thread waking from a sleep waited 230 ms for its turn (median
/// of 40, up to 0.7 s); a nice-19 one 2-4 ms.
pub fn defer_to_workers() {
    // SAFETY: a plain syscall on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}
