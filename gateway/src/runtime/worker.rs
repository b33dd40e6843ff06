//! One worker: a thread with its own monoio runtime, listeners, pool and counters.
//!
//! Everything in `Worker` is owned by its thread (`Rc`, `RefCell`); the only things it
//! shares are read-mostly: the published snapshot (loaded when the version moves) and
//! the `Control` flags the main thread sets. The request path therefore takes no lock
//! and touches no cache line another core writes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use monoio::net::TcpListener;
use weft_mesh::snapshot::{Listener, Snapshot};

use super::wakers::{CoarseTimers, LocalEvent};
use crate::control::{Control, Socket, WorkerMsg};
use crate::observe::metrics::Counters;
use crate::upstream::Upstreams;
use monoio::io::Canceller;

pub struct Worker {
    pub id: usize,
    pub control: Arc<Control>,
    snapshot: RefCell<Rc<Arc<Snapshot>>>,
    pub upstreams: Upstreams,
    /// Buckets of the rate limits scoped to a worker.
    pub rate_limits: crate::proxy::rate_limit::LocalBuckets,
    pub counters: Counters,
    /// Idle-connection deadlines, fired by the housekeeping tick.
    pub idle_timers: CoarseTimers,
    /// Set once when the process starts draining.
    draining: Cell<bool>,
    /// Client connections this worker has open.
    open: Cell<usize>,
    /// Responses sent so far; the housekeeping tick reads it to tell a quiet worker.
    pub answered: Cell<u64>,
    /// Messages from the control thread (listeners added or removed by a reload),
    /// read by the housekeeping tick.
    inbox: mpsc::Receiver<WorkerMsg>,
    /// This worker's accepting listeners, by name.
    listeners: RefCell<HashMap<String, BoundListener>>,
}

/// A listener this worker accepts on: its name (the metrics label), its slot (unique
/// for the process lifetime), and the event that fires when a reload removes it.
#[derive(Clone)]
pub struct BoundListener {
    pub name: Rc<str>,
    pub slot: usize,
    /// Fired when the listener stops (a reload removed it, or the worker drains):
    /// accepting ends and its connections close once idle.
    pub closed: Rc<LocalEvent>,
}

impl BoundListener {
    /// This listener's entry in `snapshot` (its rules and TLS), if the snapshot still
    /// has it. The slot is tried first: it is the index while listeners are unchanged.
    pub fn in_snapshot<'s>(&self, snapshot: &'s Snapshot) -> Option<&'s Listener> {
        snapshot
            .listeners
            .get(self.slot)
            .filter(|l| *l.name == *self.name)
            .or_else(|| snapshot.listeners.iter().find(|l| *l.name == *self.name))
    }
}

impl Worker {
    pub fn new(id: usize, control: Arc<Control>, inbox: mpsc::Receiver<WorkerMsg>) -> Worker {
        let counters = Counters::new(control.registry.worker());
        let snapshot = RefCell::new(Rc::new(control.publisher.load()));
        Worker {
            id,
            control,
            snapshot,
            upstreams: Upstreams::new(),
            rate_limits: Default::default(),
            counters,
            idle_timers: CoarseTimers::default(),
            draining: Cell::new(false),
            open: Cell::new(0),
            answered: Cell::new(0),
            inbox,
            listeners: RefCell::new(HashMap::new()),
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

    /// Serves until the process drains and this worker's connections are done.
    pub async fn run(self: Rc<Self>, sockets: Vec<Socket>) {
        for socket in sockets {
            if !self.listen(socket) {
                return;
            }
        }
        self.control.ready_workers.fetch_add(1, Ordering::AcqRel);
        let mut ticks = 0u32;
        let mut quiet_since = 0u64;
        loop {
            monoio::time::sleep(Duration::from_millis(100)).await;
            ticks = ticks.wrapping_add(1);
            self.idle_timers.fire_expired(std::time::Instant::now());
            self.upstreams.report();
            while let Ok(msg) = self.inbox.try_recv() {
                match msg {
                    WorkerMsg::Listen(socket) => {
                        self.listen(socket);
                    }
                    WorkerMsg::Unlisten(name) => {
                        if let Some(bound) = self.listeners.borrow_mut().remove(&name) {
                            bound.closed.fire();
                        }
                    }
                }
            }
            if ticks % 10 == 0 {
                // mimalloc returns freed pages to the OS lazily, on later allocations; a
                // worker that went quiet would otherwise keep the buffers of its last
                // burst resident, so a quiet worker forces the purge. A busy one does
                // not: a forced purge empties every thread's free pages, and the
                // control thread's next reload then faults its working set back in
                // (a 10,000-route reload: 83 ms of CPU with a forced purge every
                // second, 44 ms without).
                let answered = self.answered.get();
                let quiet = answered == quiet_since;
                quiet_since = answered;
                // SAFETY: mi_collect only touches the calling thread's own heap and
                // the allocator's shared free lists, under its own locks.
                unsafe { libmimalloc_sys::mi_collect(quiet) };
                // In-flight requests to endpoints a reload removed finish on their own
                // connections; only idle ones are closed here.
                let snapshot = self.snapshot();
                self.upstreams
                    .retain_endpoints(|addr| snapshot.has_endpoint(addr));
                self.counters.forget_versions_before(snapshot.version);
            }
            if ticks % 50 == 0 {
                self.upstreams.sweep();
            }
            // Checked a tick after the listeners closed, never in the same one: a
            // connection accepted just before is a spawned task that has not run yet
            // and so is not counted open, and returning now would drop it unserved
            // (a reset, seen across binary upgrades under load).
            if self.draining.get() && self.open.get() == 0 {
                return;
            }
            if !self.draining.get() && self.control.draining.load(Ordering::Acquire) {
                // Draining closes every listener: accept loops end, idle connections
                // close, busy ones close after their response.
                self.draining.set(true);
                for (_, bound) in self.listeners.borrow_mut().drain() {
                    bound.closed.fire();
                }
            }
        }
    }

    /// Starts accepting on a socket; false if monoio cannot take it.
    fn listen(self: &Rc<Self>, socket: Socket) -> bool {
        // A second socket of a listener (one inherited from an old process with more
        // workers) closes with the first.
        let existing = self.listeners.borrow().get(&socket.name).cloned();
        let bound = existing.unwrap_or_else(|| BoundListener {
            name: socket.name.as_str().into(),
            slot: socket.slot,
            closed: Rc::new(LocalEvent::default()),
        });
        match TcpListener::from_std(socket.listener) {
            Ok(l) => {
                self.listeners
                    .borrow_mut()
                    .insert(socket.name, bound.clone());
                monoio::spawn(accept_loop(self.clone(), bound, l));
                true
            }
            Err(e) => {
                tracing::error!(worker = self.id, listener = %bound.name, "cannot register listener: {e}");
                false
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

/// Accepts until the listener closes. An accept in flight then is cancelled and its
/// outcome awaited, not dropped: with io_uring the kernel may have accepted a
/// connection already, and a dropped accept loses it unserved (its descriptor leaks
/// until exit, and the client is reset; seen across binary upgrades under load).
async fn accept_loop(worker: Rc<Worker>, bound: BoundListener, listener: TcpListener) {
    let mut canceller = Canceller::new();
    loop {
        let accept = listener.cancelable_accept(canceller.handle());
        let mut accept = std::pin::pin!(accept);
        let outcome = monoio::select! {
            r = &mut accept => Some(r),
            _ = bound.closed.wait() => None,
        };
        let (accepted, last) = match outcome {
            Some(r) => (r, false),
            None => {
                canceller = canceller.cancel();
                (accept.await, true)
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                crate::proxy::spawn(worker.clone(), bound.clone(), stream, peer);
            }
            Err(_) if last => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(worker = worker.id, listener = %bound.name, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if last {
            return;
        }
    }
}
