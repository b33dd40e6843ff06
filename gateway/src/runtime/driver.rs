//! Which monoio driver the workers run, decided once at startup.
//!
//! monoio's `FusionDriver` picks io_uring by probing only whether io_uring exists, and
//! fails outright when the ring cannot be built with the flags asked for. weft decides
//! itself, in the main thread, before any worker starts: it builds a throwaway ring with
//! the configured setup flags, drops the flags the kernel refuses one at a time, and falls
//! back to epoll when no ring can be built at all (old kernel, seccomp, sysctl
//! `kernel.io_uring_disabled`). The outcome is logged once and exported on /metrics.
//!
//! What `io = "auto"` and unset flags mean comes from bench/ (see the README): io_uring
//! with COOP_TASKRUN + SINGLE_ISSUER. DEFER_TASKRUN is off unless configured: at 400
//! h2 connections x 10 streams it left some connections' completions waiting for
//! several batches (p99 250-680 ms against 90-96 ms without it, same throughput), and
//! without it CPU per request was equal or lower at every point measured.

use std::fmt;

use weft_mesh::config::{IoDriver, UringConfig};

/// Setup flags, in the order they are given up when the kernel refuses them
/// (DEFER_TASKRUN needs SINGLE_ISSUER, so it goes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingFlags {
    pub coop_taskrun: bool,
    pub single_issuer: bool,
    pub defer_taskrun: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring { flags: RingFlags, entries: u32 },
    Epoll,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Driver::Epoll => write!(f, "epoll"),
            Driver::IoUring { flags, entries } => {
                write!(f, "io_uring(entries={entries}")?;
                for (on, name) in [
                    (flags.coop_taskrun, "COOP_TASKRUN"),
                    (flags.single_issuer, "SINGLE_ISSUER"),
                    (flags.defer_taskrun, "DEFER_TASKRUN"),
                ] {
                    if on {
                        write!(f, ",{name}")?;
                    }
                }
                write!(f, ")")
            }
        }
    }
}

const DEFAULT_ENTRIES: u32 = 1024;

/// The flags `auto` uses when the config leaves one unset.
const AUTO_FLAGS: RingFlags = RingFlags {
    coop_taskrun: true,
    single_issuer: true,
    defer_taskrun: false,
};

/// Outcome of the probe: the driver, and why it differs from what was asked, if it does.
pub struct Decision {
    pub driver: Driver,
    pub downgraded: Option<String>,
}

pub fn decide(io: IoDriver, uring: &UringConfig) -> Decision {
    if io == IoDriver::Epoll {
        return Decision {
            driver: Driver::Epoll,
            downgraded: None,
        };
    }
    let mut flags = RingFlags {
        coop_taskrun: uring.coop_taskrun.unwrap_or(AUTO_FLAGS.coop_taskrun),
        single_issuer: uring.single_issuer.unwrap_or(AUTO_FLAGS.single_issuer),
        defer_taskrun: uring.defer_taskrun.unwrap_or(AUTO_FLAGS.defer_taskrun),
    };
    if flags.defer_taskrun && !flags.single_issuer {
        // The kernel requires SINGLE_ISSUER for DEFER_TASKRUN; honour the explicit choice.
        flags.defer_taskrun = false;
    }
    let entries = uring.entries.unwrap_or(DEFAULT_ENTRIES);
    let asked = flags;
    let mut last_err = None;
    loop {
        match probe(flags, entries) {
            Ok(()) => {
                let driver = Driver::IoUring { flags, entries };
                let downgraded = (flags != asked).then(|| {
                    format!(
                        "io_uring refused some setup flags ({}); running {driver}",
                        last_err.unwrap_or_default()
                    )
                });
                return Decision { driver, downgraded };
            }
            Err(e) => last_err = Some(e.to_string()),
        }
        if flags.defer_taskrun {
            flags.defer_taskrun = false;
        } else if flags.single_issuer {
            flags.single_issuer = false;
        } else if flags.coop_taskrun {
            flags.coop_taskrun = false;
        } else {
            break;
        }
    }
    let why = format!(
        "io_uring is unavailable ({}); falling back to the epoll driver",
        last_err.unwrap_or_default()
    );
    Decision {
        driver: Driver::Epoll,
        downgraded: Some(why),
    }
}

impl Driver {
    /// Runs `future` to its end on a runtime of this driver, with timers, built on the
    /// calling thread (an io_uring ring is tied to the thread that made it). An error
    /// is the runtime that could not be built.
    pub fn block_on<F: std::future::Future>(self, future: F) -> std::io::Result<F::Output> {
        match self {
            Driver::IoUring { flags, entries } => {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .enable_timer()
                    .uring_builder(uring_builder(flags))
                    .with_entries(entries)
                    .build()
                    .map(|mut rt| rt.block_on(future))
            }
            Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .map(|mut rt| rt.block_on(future)),
        }
    }
}

pub fn uring_builder(flags: RingFlags) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if flags.coop_taskrun {
        b.setup_coop_taskrun();
    }
    if flags.single_issuer {
        b.setup_single_issuer();
    }
    if flags.defer_taskrun {
        b.setup_defer_taskrun();
    }
    b
}

fn probe(flags: RingFlags, entries: u32) -> std::io::Result<()> {
    // Build on a scratch thread: SINGLE_ISSUER ties a ring to the thread that made it.
    std::thread::spawn(move || uring_builder(flags).build(entries).map(drop))
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("io_uring probe thread panicked")))
}
