//! Thread-per-core: start the workers, watch signals, stop.
//!
//! The main thread decides the driver, binds every socket, starts one pinned worker
//! thread per core and the admin thread, then only waits for signals: SIGHUP reloads the
//! config (a new snapshot is published; workers pick it up on their next request),
//! SIGTERM/SIGINT drain (stop accepting, finish in-flight requests, exit).

pub mod driver;
pub mod listen;
pub mod wakers;
pub mod worker;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use weft_mesh::config::{self, Role};
use weft_mesh::snapshot::{self, Publisher, Snapshot};

use crate::observe::metrics::Registry;
use driver::Driver;
use worker::Worker;

/// What the main thread shares with workers and the admin thread. Read-mostly.
pub struct Control {
    pub publisher: Publisher,
    /// Version of the published snapshot; workers compare it per request.
    pub version: AtomicU64,
    pub registry: Registry,
    pub draining: AtomicBool,
    pub ready_workers: AtomicUsize,
    pub workers: usize,
    pub driver: Driver,
    pub role: Role,
}

impl Control {
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
            && self.ready_workers.load(Ordering::Acquire) == self.workers
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {listener:?}: cannot bind {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: io::Error,
    },
    #[error("admin: cannot bind {address}: {source}")]
    Admin {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("runtime.cpus: cpu {0} is not in this process's affinity mask")]
    Cpu(usize),
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
}

/// Command-line overrides of the config.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub workers: Option<usize>,
}

/// How long a drain waits for in-flight requests before exiting anyway.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Runs weft until SIGTERM/SIGINT. Returns after the drain.
pub fn run(first: Snapshot, overrides: Overrides) -> Result<(), StartError> {
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

    let decision = driver::decide(first.runtime.io, &first.runtime.uring);
    if let Some(why) = &decision.downgraded {
        tracing::warn!("{why}");
    }

    // Bind everything before starting anything, so a conflict leaves nothing behind.
    let mut sockets: Vec<Vec<Socket>> = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut mine = Vec::new();
        for (slot, l) in first.listeners.iter().enumerate() {
            let s = listen::bind_reuseport(l.address).map_err(|source| StartError::Bind {
                listener: l.name.clone(),
                address: l.address,
                source,
            })?;
            mine.push(Socket {
                slot,
                name: l.name.clone(),
                listener: s,
            });
        }
        sockets.push(mine);
    }
    let admin_address = first.admin_address;
    let admin_socket =
        std::net::TcpListener::bind(admin_address).map_err(|source| StartError::Admin {
            address: admin_address,
            source,
        })?;

    let role = first.role;
    let listeners: Vec<String> = first
        .listeners
        .iter()
        .map(|l| format!("{}={}", l.name, l.address))
        .collect();
    let control = Arc::new(Control {
        publisher: Publisher::new(first),
        version: AtomicU64::new(1),
        registry: Registry::default(),
        draining: AtomicBool::new(false),
        ready_workers: AtomicUsize::new(0),
        workers,
        driver: decision.driver,
        role,
    });
    // Signals first: a SIGHUP or SIGTERM that arrives while workers start is not lost.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(StartError::Thread)?;

    crate::admin::start(admin_socket, control.clone()).map_err(StartError::Thread)?;
    let mut threads = Vec::with_capacity(workers);
    for (id, mine) in sockets.into_iter().enumerate() {
        let cpu = cpus[id % cpus.len()];
        let control = control.clone();
        let t = std::thread::Builder::new()
            .name(format!("weft-worker-{id}"))
            .spawn(move || worker_thread(id, cpu, control, mine))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    tracing::info!(role = ?role, workers, driver = %decision.driver, admin = %admin_address, listeners = ?listeners, "weft started");

    for signal in signals.forever() {
        match signal {
            signal_hook::consts::SIGHUP => reload(&control),
            _ => break,
        }
    }
    tracing::info!(
        "draining: no new connections; waiting up to {DRAIN_GRACE:?} for in-flight requests"
    );
    control.draining.store(true, Ordering::Release);
    let deadline = Instant::now() + DRAIN_GRACE;
    while Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the config file and publishes it if it is valid; keeps the running one if not.
fn reload(control: &Control) {
    let current = control.publisher.load();
    let loaded = match config::load(&current.source_file, current.role) {
        Ok(l) => l,
        Err(errors) => {
            tracing::error!(
                "reload refused, keeping version {}:\n{errors}",
                current.version
            );
            return;
        }
    };
    let next = match snapshot::compile(&loaded) {
        Ok(s) => s,
        Err(errors) => {
            tracing::error!(
                "reload refused, keeping version {}:\n{errors}",
                current.version
            );
            return;
        }
    };
    if next.content_hash == current.content_hash {
        tracing::info!("reload: config unchanged (version {})", current.version);
        return;
    }
    let bound: Vec<_> = current
        .listeners
        .iter()
        .map(|l| (&l.name, l.address))
        .collect();
    let wanted: Vec<_> = next
        .listeners
        .iter()
        .map(|l| (&l.name, l.address))
        .collect();
    if bound != wanted {
        tracing::error!(
            "reload refused: listeners (names or addresses) changed; that needs a restart"
        );
        return;
    }
    let version = control.publisher.publish(next);
    control.version.store(version, Ordering::Release);
    tracing::info!("reload: now serving config version {version}");
}

/// A listening socket bound for one worker, with the listener it belongs to.
pub struct Socket {
    pub slot: usize,
    pub name: String,
    pub listener: std::net::TcpListener,
}

fn worker_thread(id: usize, cpu: usize, control: Arc<Control>, listeners: Vec<Socket>) {
    if let Err(e) = listen::pin_current_thread(cpu) {
        tracing::warn!(worker = id, cpu, "cannot pin worker: {e}");
    }
    let driver = control.driver;
    let worker = Rc::new(Worker::new(id, control));
    let served = match driver {
        Driver::IoUring { flags, entries } => RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .uring_builder(driver::uring_builder(flags))
            .with_entries(entries)
            .build()
            .map(|mut rt| rt.block_on(worker.run(listeners))),
        Driver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(worker.run(listeners))),
    };
    if let Err(e) = served {
        // The probe succeeded with the same settings, so this is resource exhaustion.
        tracing::error!(worker = id, "cannot build the {driver} runtime: {e}");
        std::process::exit(1);
    }
}
