//! Per-worker endpoint choice for one cluster.
//!
//! `round_robin` is nginx's smooth weighted round robin: with weights 1 and 3 the
//! order is b, a, b, b, ... (never a burst of the heavy endpoint). `random` is weighted
//! random. `least_request` and `p2c_ewma` draw two endpoints and take the cheaper:
//! requests in flight (+1) over weight, and, for `p2c_ewma`, times Linkerd's peak-EWMA
//! latency estimate (30 ms until measured, decaying over 10 s). `ring_hash` and
//! `maglev` look the request's hash key up in the cluster's table (`hashing`), at
//! random without a key. State is owned by the worker (in-flight counts and latency
//! estimates too: no cross-core write per pick); workers do not coordinate, so across
//! workers the weights hold in aggregate.
//!
//! A balancer is built per snapshot, but its endpoints' state is not: it is looked up
//! in the worker's `EndpointTable` by endpoint, so a reload that leaves a cluster's
//! endpoints alone continues the rotation where it was.
//!
//! A pick is a `Lease`: the attempt holds it until it is over, counted in flight at
//! the endpoint meanwhile, and hands its outcome back through it to the endpoint's
//! outlier detection (`finish`). Dropped unfinished (the client went away), it only
//! stops counting.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use weft_mesh::config::LbPolicy;
use weft_mesh::snapshot::health::flag_changes;
use weft_mesh::snapshot::{
    AttemptOutcome, Cluster, ClusterShared, Ejection, HostHealth, OutlierDetection,
};

use super::endpoints::{EndpointState, EndpointTable};

pub struct Balancer {
    cluster: String,
    policy: LbPolicy,
    /// One per endpoint of the cluster, in its order.
    states: Vec<Rc<EndpointState>>,
    /// Each endpoint's health, shared with the health checker and every worker's
    /// outlier detection (and where this worker reports its in-flight counts).
    health: Vec<Arc<HostHealth>>,
    /// Whether picks look at `health`: only when the cluster is checked or has outlier
    /// detection (otherwise picking costs nothing more).
    tracked: bool,
    outlier: Option<Arc<OutlierDetection>>,
    shared: Arc<ClusterShared>,
    panic_threshold: u8,
    /// The eligible endpoints, and whether all are pending, as of `flag_changes()`.
    census: Cell<Census>,
}

#[derive(Clone, Copy)]
struct Census {
    changes: u64,
    eligible: usize,
    all_pending: bool,
}

/// One attempt's endpoint, as picked: see the module's header.
pub struct Lease {
    balancer: Rc<Balancer>,
    index: usize,
    /// When it was picked, for `p2c_ewma`'s latency samples.
    sent: Option<Instant>,
}

impl Lease {
    fn new(balancer: Rc<Balancer>, index: usize, sent: Option<Instant>) -> Lease {
        let state = &balancer.states[index];
        state.in_flight.set(state.in_flight.get() + 1);
        Lease {
            balancer,
            index,
            sent,
        }
    }

    /// The endpoint's response head came: a latency sample, for `p2c_ewma`.
    pub fn responded(&self) {
        if let Some(sent) = self.sent {
            let now = Instant::now();
            self.balancer.states[self.index].observe_rtt(now - sent, now);
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.balancer.states[self.index].address
    }

    /// The attempt is over; its outcome (none when it says nothing of the endpoint:
    /// the client went away, a breaker refused) feeds outlier detection.
    pub fn finish(self, outcome: Option<AttemptOutcome>) {
        let b = &self.balancer;
        let (Some(outcome), Some(od)) = (outcome, &b.outlier) else {
            return;
        };
        let state = &b.states[self.index];
        // Split, a local-origin failure is not an answer of the application's: the
        // success rate is of answers only.
        if outcome != AttemptOutcome::LocalOrigin || od.consecutive_local.is_none() {
            state.answers.set(state.answers.get() + 1);
            if outcome == AttemptOutcome::Success {
                state.successes.set(state.successes.get() + 1);
            }
        }
        let Some(health) = b.health.get(self.index) else {
            return;
        };
        let ejected = health.record(outcome, od, &b.shared.outliers, b.states.len());
        if let Some(Ejection::Ejected(kind, time)) = ejected {
            tracing::warn!(
                cluster = %b.cluster,
                endpoint = %state.address,
                "outlier detection: ejected for {time:?} ({})",
                kind.label()
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let state = &self.balancer.states[self.index];
        state.in_flight.set(state.in_flight.get().saturating_sub(1));
    }
}

/// Why no endpoint was picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoPick {
    /// The cluster has none.
    NoEndpoints,
    /// None is eligible, and the panic threshold is 0.
    NoHealthy,
}

impl Balancer {
    pub fn new(cluster: &Cluster, table: &EndpointTable) -> Balancer {
        let checked = cluster.health_check.is_some();
        let addresses: Vec<SocketAddr> = cluster.endpoints.iter().map(|e| e.address).collect();
        Balancer {
            cluster: cluster.name.clone(),
            policy: cluster.lb,
            states: addresses
                .iter()
                .map(|&a| table.state(&cluster.name, a))
                .collect(),
            health: cluster.shared.hosts_of(&addresses, checked),
            tracked: checked || cluster.outlier.is_some(),
            outlier: cluster.outlier.clone(),
            shared: cluster.shared.clone(),
            panic_threshold: cluster.panic_threshold,
            census: Cell::new(Census {
                changes: u64::MAX,
                eligible: 0,
                all_pending: false,
            }),
        }
    }

    /// The eligible endpoints, counted again only when some endpoint's flags changed.
    fn census(&self) -> Census {
        let changes = flag_changes();
        let cached = self.census.get();
        if cached.changes == changes {
            return cached;
        }
        let census = Census {
            changes,
            eligible: self.health.iter().filter(|h| h.eligible()).count(),
            all_pending: self
                .health
                .iter()
                .all(|h| h.flags() & HostHealth::PENDING != 0),
        };
        self.census.set(census);
        census
    }

    /// An eligible endpoint (healthy, not pending, not ejected), leased to one attempt.
    /// With fewer eligible than `healthy_panic_threshold` percent, or all still
    /// pending their first check, every endpoint is (Envoy's panic mode, counted); a
    /// threshold of 0 never panics and picks nothing when none is eligible.
    /// `key`: the request's hash key, for the consistent-hash policies.
    pub fn pick(self: &Rc<Self>, cluster: &Cluster, key: Option<u64>) -> Result<Lease, NoPick> {
        // Only the latency-aware policy reads the clock.
        let now = (self.policy == LbPolicy::P2cEwma).then(Instant::now);
        let index = self.pick_index(cluster, key, now)?;
        Ok(Lease::new(self.clone(), index, now))
    }

    /// Reports what this worker saw of each endpoint to its shared health (a worker's
    /// housekeeping tick): answers for outlier detection's success rate, the change
    /// in requests in flight, the latency estimate.
    pub fn report(&self) {
        for (state, health) in self.states.iter().zip(&self.health) {
            if self.outlier.is_some() {
                let (successes, answers) = state.take_tally();
                if answers > 0 {
                    health.add_interval(successes, answers);
                }
            }
            let (now, reported) = (state.in_flight.get(), state.reported_in_flight.get());
            if now != reported {
                health.report_in_flight(i64::from(now) - i64::from(reported));
                state.reported_in_flight.set(now);
            }
            if self.policy == LbPolicy::P2cEwma {
                health.report_latency(state.rtt_now());
            }
        }
    }

    fn pick_index(
        &self,
        cluster: &Cluster,
        key: Option<u64>,
        now: Option<Instant>,
    ) -> Result<usize, NoPick> {
        if cluster.endpoints.is_empty() {
            return Err(NoPick::NoEndpoints);
        }
        if !self.tracked || self.health.len() != cluster.endpoints.len() {
            return self
                .pick_where(cluster, key, now, |_| true)
                .ok_or(NoPick::NoEndpoints);
        }
        let Census {
            eligible,
            all_pending,
            ..
        } = self.census();
        let all = self.health.len();
        if eligible == all {
            return self
                .pick_where(cluster, key, now, |_| true)
                .ok_or(NoPick::NoEndpoints);
        }
        let panic = all_pending
            || (self.panic_threshold > 0
                && eligible * 100 < all * usize::from(self.panic_threshold));
        if panic {
            if !all_pending {
                self.shared.panics.add();
            }
            return self
                .pick_where(cluster, key, now, |_| true)
                .ok_or(NoPick::NoEndpoints);
        }
        self.pick_where(cluster, key, now, |i| self.health[i].eligible())
            .ok_or(NoPick::NoHealthy)
    }

    fn pick_where(
        &self,
        cluster: &Cluster,
        key: Option<u64>,
        now: Option<Instant>,
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let eps = &cluster.endpoints;
        match eps.len() {
            0 => None,
            1 => ok(0).then_some(0),
            _ => match self.policy {
                LbPolicy::Random => weighted_random(cluster, &ok),
                LbPolicy::RoundRobin => self.round_robin(cluster, &ok),
                LbPolicy::LeastRequest => self.two_choices(eps.len(), &ok, |i| {
                    f64::from(self.states[i].in_flight.get() + 1) / f64::from(eps[i].weight.max(1))
                }),
                LbPolicy::P2cEwma => {
                    let now = now.unwrap_or_else(Instant::now);
                    self.two_choices(eps.len(), &ok, |i| {
                        let state = &self.states[i];
                        state.rtt_estimate(now) * f64::from(state.in_flight.get() + 1)
                            / f64::from(eps[i].weight.max(1))
                    })
                }
                LbPolicy::RingHash | LbPolicy::Maglev => match (key, &cluster.hash_table) {
                    (Some(key), Some(table)) => table.find(key, &ok),
                    // No key (or no table): Envoy picks at random.
                    _ => weighted_random(cluster, &ok),
                },
            },
        }
    }

    /// Smooth weighted round robin (nginx's).
    fn round_robin(&self, cluster: &Cluster, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let (eps, cur) = (&cluster.endpoints, &self.states);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, e) in eps.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            let c = &cur[i].wrr_current;
            c.set(c.get() + e.weight as i64);
            total += e.weight as i64;
            if best.is_none_or(|b| c.get() > cur[b].wrr_current.get()) {
                best = Some(i);
            }
        }
        let best = best?;
        let c = &cur[best].wrr_current;
        c.set(c.get() - total);
        Some(best)
    }

    /// The power of two choices: of two endpoints drawn at random, the one that costs
    /// less (weights are in the cost). Draws are uniform and O(1); a few misses on
    /// endpoints that may not be used fall back to a scan.
    fn two_choices(
        &self,
        n: usize,
        ok: &impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let draw = |not: Option<usize>| {
            (0..8)
                .map(|_| fastrand::usize(0..n))
                .find(|&i| Some(i) != not && ok(i))
                .or_else(|| {
                    let start = fastrand::usize(0..n);
                    (0..n)
                        .map(|k| (start + k) % n)
                        .find(|&i| Some(i) != not && ok(i))
                })
        };
        let a = draw(None)?;
        let Some(b) = draw(Some(a)) else {
            return Some(a);
        };
        Some(if cost(b) < cost(a) { b } else { a })
    }
}

/// Weighted random among the endpoints `ok` accepts.
fn weighted_random(cluster: &Cluster, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let eps = &cluster.endpoints;
    let weight = |i: usize| if ok(i) { eps[i].weight as u64 } else { 0 };
    let total: u64 = (0..eps.len()).map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut roll = fastrand::u64(0..total);
    (0..eps.len()).find(|&i| {
        let w = weight(i);
        if roll < w {
            true
        } else {
            roll -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use weft_mesh::snapshot::Endpoint;

    fn cluster(weights: &[u32], lb: LbPolicy) -> Cluster {
        Cluster {
            name: "c".into(),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Endpoint {
                    address: ([127, 0, 0, 1], i as u16 + 1).into(),
                    weight: w,
                })
                .collect(),
            protocol: Default::default(),
            tls: None,
            discovery: None,
            discovered_loopback: false,
            breakers: weft_mesh::snapshot::BreakerLimits {
                max_connections: 1024,
                max_pending_requests: 1024,
                max_requests: 1024,
                max_retries: 3,
            },
            shared: Default::default(),
            health_check: None,
            panic_threshold: 50,
            outlier: None,
            hash_table: None,
            retry: None,
            retry_budget: None,
            lb,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
            pool_idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let c = cluster(&[1, 3], LbPolicy::RoundRobin);
        let b = Balancer::new(&c, &EndpointTable::default());
        let picks: Vec<usize> = (0..8)
            .map(|_| b.pick_index(&c, None, None).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 0, 1, 1, 1, 0, 1, 1]);
    }

    #[test]
    fn a_rebuilt_balancer_continues_the_rotation() {
        let table = EndpointTable::default();
        let c = cluster(&[1, 1], LbPolicy::RoundRobin);
        let first = Balancer::new(&c, &table);
        let before: Vec<usize> = (0..3)
            .map(|_| first.pick_index(&c, None, None).unwrap())
            .collect();
        // A new snapshot: a new balancer over the same endpoints.
        let second = Balancer::new(&c, &table);
        drop(first);
        let after: Vec<usize> = (0..3)
            .map(|_| second.pick_index(&c, None, None).unwrap())
            .collect();
        assert_eq!(before, vec![0, 1, 0]);
        assert_eq!(after, vec![1, 0, 1], "the rotation went on where it was");
    }

    #[test]
    fn random_follows_weights() {
        let c = cluster(&[1, 9], LbPolicy::Random);
        let b = Balancer::new(&c, &EndpointTable::default());
        let heavy = (0..10_000)
            .filter(|_| b.pick_index(&c, None, None) == Ok(1))
            .count();
        assert!((8_500..9_500).contains(&heavy), "{heavy}");
    }
}
