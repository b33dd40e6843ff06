//! Thread-per-core: start the workers, watch signals, stop.
//!
//! The main thread decides the driver, binds every socket (or takes them over from
//! the weft it replaces, `control::upgrade`), starts one pinned worker
//! thread per core and the admin thread, then only waits for signals: SIGHUP reloads the
//! config (a new snapshot is published; workers pick it up on their next request),
//! SIGTERM/SIGINT drain (stop accepting, finish in-flight requests, exit; a second
//! signal exits at once).

pub mod driver;
pub mod wakers;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use weft_mesh::snapshot::{AdminBind, Snapshot};

use crate::control::{
    admin, discovery, reload, start_janitor, upgrade, yield_to_workers, Control, Socket, WorkerMsg,
};
use crate::listen;
use driver::Driver;
use worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {listener:?}: cannot bind {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: io::Error,
    },
    #[error("{key}: cannot bind {address}: {source}")]
    Admin {
        key: &'static str,
        address: String,
        source: io::Error,
    },
    #[error("--upgrade-socket {path}: {source}")]
    Upgrade { path: String, source: io::Error },
    #[error("runtime.cpus: cpu {0} is not in this process's affinity mask")]
    Cpu(usize),
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
}

/// Command-line settings beside the config.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Overrides `runtime.workers`.
    pub workers: Option<usize>,
    /// Where this process answers a successor's upgrade request, and where it asks a
    /// running predecessor for its sockets first (`control::upgrade`).
    pub upgrade_socket: Option<PathBuf>,
}

/// Runs weft until SIGTERM/SIGINT. Returns after the drain.
pub fn run(first: Snapshot, overrides: Overrides) -> Result<(), StartError> {
    delay_allocator_purge();
    keep_to_small_pages();
    let open_files = raise_open_files_limit();
    let allowed = listen::allowed_cpus();
    let cpus: Vec<usize> = match &first.runtime.cpus {
        Some(list) => {
            if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(StartError::Cpu(*bad));
            }
            list.clone()
        }
        None => allowed,
    };
    let workers = overrides
        .workers
        .or(first.runtime.workers)
        .unwrap_or(cpus.len())
        .max(1);

    for w in &first.warnings {
        tracing::warn!("{w}");
    }
    let decision = driver::decide(first.runtime.io, &first.runtime.uring);
    if let Some(why) = &decision.downgraded {
        tracing::warn!("{why}");
    }

    // A running weft at the upgrade socket hands its sockets over instead of binding.
    let upgrade_error = |source| StartError::Upgrade {
        path: overrides
            .upgrade_socket
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        source,
    };
    let mut inherited = match &overrides.upgrade_socket {
        Some(path) => upgrade::take_over(path).map_err(upgrade_error)?,
        None => None,
    };
    if let Some(from) = &inherited {
        tracing::info!(
            listeners = from.listeners.len(),
            admin = from.admin.len(),
            "upgrade: took over the running weft's sockets"
        );
    }

    // Bind everything before starting anything, so a conflict leaves nothing behind.
    let mut listeners = reload::BoundSet::inheriting(
        inherited
            .as_mut()
            .map(|i| std::mem::take(&mut i.listeners))
            .unwrap_or_default(),
    );
    let mut sockets: Vec<Vec<Socket>> = (0..workers).map(|_| Vec::new()).collect();
    for l in first.listeners.iter() {
        let per_worker = listeners
            .bind(&l.name, l.address, workers)
            .map_err(|source| StartError::Bind {
                listener: l.name.clone(),
                address: l.address,
                source,
            })?;
        for (mine, theirs) in sockets.iter_mut().zip(per_worker) {
            mine.extend(theirs);
        }
    }
    listeners.close_unclaimed();
    let admin_address = first.admin.address;
    let mut admin_copies: Vec<(&'static str, OwnedFd)> = Vec::new();
    let mut bind_admin = |key, at: &AdminBind| {
        let given = inherited.as_mut().and_then(|i| i.admin_socket(key));
        let socket = admin::bind_or_take(at, given).map_err(|source| StartError::Admin {
            key,
            address: at.to_string(),
            source,
        })?;
        if overrides.upgrade_socket.is_some() {
            let copy = socket.copy().map_err(|source| StartError::Admin {
                key,
                address: at.to_string(),
                source,
            })?;
            admin_copies.push((key, copy));
        }
        Ok::<_, StartError>(socket)
    };
    let admin_socket = bind_admin("admin.address", &AdminBind::Tcp(admin_address))?;
    let private_admin = match &first.admin.private {
        Some(at) => Some(bind_admin("admin.private_address", at)?),
        None => None,
    };

    let role = first.role;
    let drain_timeout = first.runtime.drain_timeout;
    let (mailboxes, inboxes): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::channel::<WorkerMsg>()).unzip();
    let mut control = Control::new(first, workers, role, mailboxes);
    control.upgrade_socket = overrides.upgrade_socket.clone();
    let control = Arc::new(control);
    // Signals first: a SIGHUP or SIGTERM that arrives while workers start is not lost.
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(StartError::Thread)?;

    admin::start(admin_socket, private_admin, control.clone()).map_err(StartError::Thread)?;
    start_janitor(control.clone()).map_err(StartError::Thread)?;
    crate::control::health::start(control.clone(), decision.driver).map_err(StartError::Thread)?;
    let mut threads = Vec::with_capacity(workers);
    for (id, (mine, inbox)) in sockets.into_iter().zip(inboxes).enumerate() {
        let cpu = cpus[id % cpus.len()];
        let control = control.clone();
        let driver = decision.driver;
        let t = std::thread::Builder::new()
            .name(format!("weft-worker-{id}"))
            .spawn(move || worker_thread(id, cpu, driver, control, mine, inbox))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    tracing::info!(role = role.name(), workers, driver = %decision.driver, open_files, admin = %admin_address, listeners = %listeners, "weft started");
    let listeners = Arc::new(Mutex::new(listeners));
    if let Some(path) = overrides.upgrade_socket.clone() {
        // Bound before the predecessor is told to go: once it drains, nothing may fail.
        let pending = upgrade::bind(path).map_err(upgrade_error)?;
        if let Some(from) = inherited.take() {
            // The old process stops accepting once this one's workers accept.
            wait_until_serving(&control);
            from.ready().map_err(upgrade_error)?;
        }
        if let Err(e) = pending.serve(control.clone(), listeners.clone(), admin_copies) {
            // This process serves; only its own successor will have to restart.
            tracing::error!(
                "upgrade socket: {e}; a later upgrade cannot take over from this process"
            );
        }
    }
    // From here this thread only reloads (and starts discovery threads, which inherit).
    yield_to_workers();
    discovery::reconcile(&control);
    discovery::register(&control);

    for signal in signals.forever() {
        match signal {
            SIGHUP => {
                let mut bound = listeners.lock().unwrap_or_else(PoisonError::into_inner);
                reload::apply(&control, &mut bound);
                drop(bound);
                discovery::reconcile(&control);
                discovery::reread_files(&control);
            }
            _ => break,
        }
    }
    tracing::info!("draining: not accepting; closing idle connections; waiting up to {} for in-flight requests (signal again to stop now)", weft_mesh::config::ConfigDuration(drain_timeout));
    control.draining.store(true, Ordering::Release);
    // Leave the registry first, so callers stop picking this instance while it drains;
    // unless a successor took over, which registered the same service.
    if !control.handed_off.load(Ordering::Acquire) {
        discovery::deregister(&control);
    }
    let deadline = Instant::now() + drain_timeout;
    while Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
        if signals.pending().any(|s| s == SIGTERM || s == SIGINT) {
            tracing::warn!("second signal: exiting without waiting for in-flight requests");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits (up to 30 s) until every worker accepts on its sockets.
fn wait_until_serving(control: &Control) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !control.ready() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// mimalloc's `purge_delay` (its index in `mi_option_e`; the crate has no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Holds freed pages for ten seconds before returning them to the OS, unless the
/// operator set `MIMALLOC_PURGE_DELAY`.
///
/// mimalloc's default (10 ms) hands pages back between two bursts of a busy worker,
/// which then faults them in again: about 170 `madvise` calls a second and 4-5% of the
/// CPU per request under `weft-bench run --scenario h2-multiplexed` (10.5 -> 10.0 us,
/// four A/B pairs). A reload is the same story at a larger scale: it frees the old
/// snapshot and builds the next one in the same pages, so with a 1 s delay a reload
/// every ~0.5 s faulted its working set in anew each time (`reload-swap` at 20k req/s:
/// SIGHUP -> serving 73-81 ms with 1 s, 41-53 ms with 5 s, 20 s or never). A quiet
/// worker still forces the purge (see `Worker::run`), so idle memory goes back all
/// the same; a busy process keeps at most ten seconds' worth of freed pages.
fn delay_allocator_purge() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide option before any worker thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
}

/// Turns transparent huge pages off for this process, unless the operator set
/// `MIMALLOC_ALLOW_THP` (mimalloc's own switch; `1` keeps them).
///
/// mimalloc asks for huge pages on its large regions, and a reload that builds a
/// 10,000-route snapshot then faults in 2 MiB pages, each zeroed in one go in the
/// kernel while the workers wait for their turn or for the address-space lock:
/// `reload-swap` at 20k req/s took up to 105-107 ms per swap with huge pages and
/// 48-55 ms without (three alternations). They also cost memory: a huge
/// page counts whole however little of it is used, so an idle keep-alive connection
/// measured 1837-2204 B with them and 1292-1317 B without (`idle-conns`). The request
/// path did not measure faster with them (CPU per request within noise at h1 and h2).
fn keep_to_small_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: a plain prctl on the calling process, before any worker exists; a
        // kernel without the option refuses it and nothing changes.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// Raises this process's soft limit on open files to its hard limit; returns the
/// limit now in force.
///
/// Every proxied exchange holds two descriptors (client and upstream), and service
/// managers commonly start processes at a soft limit of 1024 under a far higher hard
/// one (systemd: 1024 under 524288), which would refuse work at ~500 concurrent
/// exchanges while the system allows many times that. The hard limit stays the
/// operator's cap (`LimitNOFILE=`, `ulimit -Hn`); Go's runtime and haproxy raise
/// theirs the same way. When even the hard limit runs out, upstream connects fail as
/// `weft_upstream_connect_errors_total{reason="local_fd_limit"}` (503) and accepts
/// back off with a warning.
fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on this process into a valid, owned struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    // An unlimited hard limit is still capped by fs.nr_open.
    let cap = if lim.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(lim.rlim_cur)
    } else {
        lim.rlim_max
    };
    if lim.rlim_cur < cap {
        let raised = libc::rlimit {
            rlim_cur: cap,
            ..lim
        };
        // SAFETY: setrlimit on this process from a valid, owned struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return cap;
        }
    }
    lim.rlim_cur
}

/// Ends the process when a worker thread dies by a panic. Release builds abort on a
/// panic anyway; without this, a debug build (or one built with `panic = "unwind"`)
/// would lose the worker's share of the listening sockets while `/ready` and `/live`
/// still said 200, and the orchestrator would never restart it. A bug that panics on
/// input must be loud and restartable, not a silent loss of capacity.
struct WorkerGuard(usize);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                worker = self.0,
                "worker thread panicked; exiting so that a supervisor restarts weft"
            );
            std::process::exit(70);
        }
    }
}

fn worker_thread(
    id: usize,
    cpu: usize,
    driver: Driver,
    control: Arc<Control>,
    listeners: Vec<Socket>,
    inbox: mpsc::Receiver<WorkerMsg>,
) {
    let _guard = WorkerGuard(id);
    if let Err(e) = listen::pin_current_thread(cpu) {
        tracing::warn!(worker = id, cpu, "cannot pin worker: {e}");
    }
    let worker = Rc::new(Worker::new(id, control, inbox));
    if let Err(e) = driver.block_on(worker.run(listeners)) {
        // The probe succeeded with the same settings, so this is resource exhaustion.
        tracing::error!(worker = id, "cannot build the {driver} runtime: {e}");
        std::process::exit(1);
    }
}
