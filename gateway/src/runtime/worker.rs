//! One worker: a thread with its own monoio runtime, listeners, pool and counters.
//!
//! Everything in `Worker` is owned by its thread (`Rc`, `RefCell`); the only things it
//! shares are read-mostly: the published snapshot (loaded when the version moves) and
//! the `Control` flags the main thread sets. The request path therefore takes no lock
//! and touches no cache line another core writes.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;
use weft_mesh::snapshot::Snapshot;

use super::wakers::{CoarseTimers, LocalEvent};
use super::{Control, Socket};
use crate::observe::metrics::Counters;
use crate::upstream::Upstreams;

pub struct Worker {
    pub id: usize,
    pub control: Arc<Control>,
    snapshot: RefCell<Rc<Arc<Snapshot>>>,
    pub upstreams: Upstreams,
    pub counters: Counters,
    /// Idle-connection deadlines, fired by the housekeeping tick.
    pub idle_timers: CoarseTimers,
    /// Fired once when the process starts draining.
    pub drain: LocalEvent,
    /// Client connections this worker has open.
    open: Cell<usize>,
}

/// A listener socket as bound at startup: its name (the metrics label) and slot.
#[derive(Clone)]
pub struct BoundListener {
    pub name: Rc<str>,
    /// Position in the startup config; the listener keeps it for the process lifetime.
    pub slot: usize,
}

impl Worker {
    pub fn new(id: usize, control: Arc<Control>) -> Worker {
        let counters = Counters::new(control.registry.worker());
        let snapshot = RefCell::new(Rc::new(control.publisher.load()));
        Worker {
            id,
            control,
            snapshot,
            upstreams: Upstreams::new(),
            counters,
            idle_timers: CoarseTimers::default(),
            drain: LocalEvent::default(),
            open: Cell::new(0),
        }
    }

    /// The current snapshot. A request keeps the `Rc` it got for its whole life, so a
    /// reload never changes the rules under it.
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        let published = self.control.version.load(Ordering::Acquire);
        if self.snapshot.borrow().version != published {
            *self.snapshot.borrow_mut() = Rc::new(self.control.publisher.load());
        }
        self.snapshot.borrow().clone()
    }

    pub fn draining(&self) -> bool {
        self.drain.fired()
    }

    /// Serves until the process drains and this worker's connections are done.
    pub async fn run(self: Rc<Self>, sockets: Vec<Socket>) {
        for socket in sockets {
            let bound = BoundListener {
                name: socket.name.into(),
                slot: socket.slot,
            };
            match TcpListener::from_std(socket.listener) {
                Ok(l) => {
                    monoio::spawn(accept_loop(self.clone(), bound, l));
                }
                Err(e) => {
                    tracing::error!(worker = self.id, listener = %bound.name, "cannot register listener: {e}");
                    return;
                }
            }
        }
        self.control.ready_workers.fetch_add(1, Ordering::AcqRel);
        let mut ticks = 0u32;
        loop {
            monoio::time::sleep(Duration::from_millis(100)).await;
            ticks = ticks.wrapping_add(1);
            self.idle_timers.fire_expired(std::time::Instant::now());
            if ticks % 10 == 0 {
                // mimalloc returns freed pages to the OS lazily, on later allocations; a
                // worker that went quiet would otherwise keep the buffers of its last
                // burst resident. Once a second is cheap and keeps idle RSS honest.
                // SAFETY: mi_collect only touches the calling thread's own heap.
                unsafe { libmimalloc_sys::mi_collect(false) };
            }
            if ticks % 50 == 0 {
                self.upstreams.pool.sweep();
            }
            if !self.drain.fired() && self.control.draining.load(Ordering::Acquire) {
                self.drain.fire();
            }
            if self.drain.fired() && self.open.get() == 0 {
                return;
            }
        }
    }

    pub fn connection_opened(&self) {
        self.open.set(self.open.get() + 1);
    }
    pub fn connection_closed(&self) {
        self.open.set(self.open.get().saturating_sub(1));
    }
}

async fn accept_loop(worker: Rc<Worker>, bound: BoundListener, listener: TcpListener) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = worker.drain.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(crate::proxy::serve(
                    worker.clone(),
                    bound.clone(),
                    stream,
                    peer,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(worker = worker.id, listener = %bound.name, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
