//! Per-worker state about upstream endpoints that must outlive snapshots: a reload or a
//! discovery change builds new balancers, but the state of an endpoint that is still
//! there is found again by its key and kept: the balancer's position, the requests in
//! flight there, and the tally of answers not yet reported to outlier detection.
//!
//! Keyed by the endpoint itself (cluster name and address), never by an index into a
//! snapshot. Owned by its worker (`Rc`, `Cell`): nothing here is shared across cores.
//! Entries no balancer refers to any more are dropped by the housekeeping tick.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What a worker knows about one endpoint of one cluster.
#[derive(Debug)]
pub struct EndpointState {
    pub address: SocketAddr,
    /// Smooth weighted round robin's running weight.
    pub wrr_current: Cell<i64>,
    /// This worker's attempts on the endpoint not yet over (`Lease`s held), and how
    /// many it last reported to the endpoint's shared health.
    pub in_flight: Cell<u32>,
    pub reported_in_flight: Cell<u32>,
    /// Answers since the last report to the endpoint's shared health, and how many
    /// succeeded: outlier detection's success rate is fed from these, once a tick,
    /// not by a shared write per request.
    pub answers: Cell<u64>,
    pub successes: Cell<u64>,
    /// `p2c_ewma`'s peak-EWMA latency estimate, in nanoseconds, as of `rtt_at`.
    rtt_ns: Cell<f64>,
    rtt_at: Cell<Instant>,
}

/// What a latency estimate starts at before its first sample (Linkerd's default RTT).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast an estimate forgets (Linkerd's decay).
const RTT_DECAY: Duration = Duration::from_secs(10);

impl EndpointState {
    fn new(address: SocketAddr) -> EndpointState {
        EndpointState {
            address,
            wrr_current: Cell::new(0),
            in_flight: Cell::new(0),
            reported_in_flight: Cell::new(0),
            answers: Cell::new(0),
            successes: Cell::new(0),
            rtt_ns: Cell::new(DEFAULT_RTT.as_nanos() as f64),
            rtt_at: Cell::new(Instant::now()),
        }
    }

    /// The latency estimate at `now`: decayed toward 0 since its last update, so an
    /// endpoint that was slow is tried again after a while.
    pub fn rtt_estimate(&self, now: Instant) -> f64 {
        let decayed = self.rtt_ns.get() * self.decay(now);
        self.rtt_ns.set(decayed);
        self.rtt_at.set(now);
        decayed
    }

    /// The latency estimate now, without updating it (for reports).
    pub fn rtt_now(&self) -> Duration {
        Duration::from_nanos((self.rtt_ns.get() * self.decay(Instant::now())) as u64)
    }

    /// A latency sample: a peak replaces the estimate at once; otherwise it is blended
    /// in by the time since the last update.
    pub fn observe_rtt(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let estimate = self.rtt_ns.get();
        if rtt > estimate {
            self.rtt_ns.set(rtt);
        } else {
            let keep = self.decay(now);
            self.rtt_ns.set(estimate * keep + rtt * (1.0 - keep));
        }
        self.rtt_at.set(now);
    }

    fn decay(&self, now: Instant) -> f64 {
        let elapsed = now
            .saturating_duration_since(self.rtt_at.get())
            .as_secs_f64();
        (-elapsed / RTT_DECAY.as_secs_f64()).exp()
    }

    /// The tally since the last call, emptied.
    pub fn take_tally(&self) -> (u64, u64) {
        (self.successes.take(), self.answers.take())
    }
}

#[derive(Default)]
pub struct EndpointTable {
    states: RefCell<HashMap<(Rc<str>, SocketAddr), Rc<EndpointState>>>,
}

impl EndpointTable {
    /// The state of `address` in `cluster`, made the first time it is asked for.
    pub fn state(&self, cluster: &str, address: SocketAddr) -> Rc<EndpointState> {
        let mut states = self.states.borrow_mut();
        if let Some(s) = states.get(&(Rc::from(cluster), address)) {
            return s.clone();
        }
        let s = Rc::new(EndpointState::new(address));
        states.insert((Rc::from(cluster), address), s.clone());
        s
    }

    /// Forgets endpoints no balancer refers to (they left every snapshot in use).
    pub fn sweep(&self) {
        self.states
            .borrow_mut()
            .retain(|_, s| Rc::strong_count(s) > 1);
    }

    pub fn len(&self) -> usize {
        self.states.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_found_again_by_its_endpoint_and_swept_when_unused() {
        let table = EndpointTable::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let held = table.state("api", a);
        held.wrr_current.set(7);
        assert_eq!(table.state("api", a).wrr_current.get(), 7);
        assert_eq!(table.state("other", a).wrr_current.get(), 0);
        table.sweep();
        assert_eq!(table.len(), 1, "only the state still held survives");
        drop(held);
        table.sweep();
        assert_eq!(table.len(), 0);
    }
}
