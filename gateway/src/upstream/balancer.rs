//! Per-worker endpoint choice for one cluster.
//!
//! `round_robin` is nginx's smooth weighted round robin: with weights 1 and 3 the
//! order is b, a, b, b, ... (never a burst of the heavy endpoint). `random` is weighted
//! random. State is owned by the worker; workers do not coordinate, so across workers
//! the weights hold in aggregate.
//!
//! A balancer is built per snapshot, but its endpoints' state is not: it is looked up
//! in the worker's `EndpointTable` by endpoint, so a reload that leaves a cluster's
//! endpoints alone continues the rotation where it was.

use std::rc::Rc;
use std::sync::Arc;

use weft_mesh::config::LbPolicy;
use weft_mesh::snapshot::{Cluster, HostHealth};

use super::endpoints::{EndpointState, EndpointTable};

pub struct Balancer {
    policy: LbPolicy,
    /// One per endpoint of the cluster, in its order.
    states: Vec<Rc<EndpointState>>,
    /// Each endpoint's health, shared with the health checker; empty when the cluster
    /// is not checked (and picking costs nothing more).
    health: Vec<Arc<HostHealth>>,
    panic_threshold: u8,
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
        Balancer {
            policy: cluster.lb,
            states: cluster
                .endpoints
                .iter()
                .map(|e| table.state(&cluster.name, e.address))
                .collect(),
            health: if checked {
                cluster
                    .endpoints
                    .iter()
                    .map(|e| cluster.shared.host(e.address, true))
                    .collect()
            } else {
                Vec::new()
            },
            panic_threshold: cluster.panic_threshold,
        }
    }

    /// Index into `cluster.endpoints` of an eligible endpoint (healthy, not pending).
    /// With fewer eligible than `healthy_panic_threshold` percent, or all still
    /// pending their first check, every endpoint is (Envoy's panic mode); a threshold
    /// of 0 never panics and picks nothing when none is eligible.
    pub fn pick(&self, cluster: &Cluster) -> Result<usize, NoPick> {
        if cluster.endpoints.is_empty() {
            return Err(NoPick::NoEndpoints);
        }
        if self.health.len() != cluster.endpoints.len() {
            return self
                .pick_where(cluster, |_| true)
                .ok_or(NoPick::NoEndpoints);
        }
        let eligible = self.health.iter().filter(|h| h.eligible()).count();
        let all = self.health.len();
        if eligible == all {
            return self
                .pick_where(cluster, |_| true)
                .ok_or(NoPick::NoEndpoints);
        }
        let all_pending = self
            .health
            .iter()
            .all(|h| h.flags() & HostHealth::PENDING != 0);
        let panic = all_pending
            || (self.panic_threshold > 0
                && eligible * 100 < all * usize::from(self.panic_threshold));
        if panic {
            return self
                .pick_where(cluster, |_| true)
                .ok_or(NoPick::NoEndpoints);
        }
        self.pick_where(cluster, |i| self.health[i].eligible())
            .ok_or(NoPick::NoHealthy)
    }

    fn pick_where(&self, cluster: &Cluster, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let eps = &cluster.endpoints;
        match eps.len() {
            0 => None,
            1 => ok(0).then_some(0),
            _ => match self.policy {
                LbPolicy::Random => {
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
                LbPolicy::RoundRobin => {
                    let cur = &self.states;
                    if cur.len() != eps.len() {
                        return (0..eps.len()).find(|&i| ok(i));
                    }
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
            },
        }
    }
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
        let picks: Vec<usize> = (0..8).map(|_| b.pick(&c).unwrap()).collect();
        assert_eq!(picks, vec![1, 0, 1, 1, 1, 0, 1, 1]);
    }

    #[test]
    fn a_rebuilt_balancer_continues_the_rotation() {
        let table = EndpointTable::default();
        let c = cluster(&[1, 1], LbPolicy::RoundRobin);
        let first = Balancer::new(&c, &table);
        let before: Vec<usize> = (0..3).map(|_| first.pick(&c).unwrap()).collect();
        // A new snapshot: a new balancer over the same endpoints.
        let second = Balancer::new(&c, &table);
        drop(first);
        let after: Vec<usize> = (0..3).map(|_| second.pick(&c).unwrap()).collect();
        assert_eq!(before, vec![0, 1, 0]);
        assert_eq!(after, vec![1, 0, 1], "the rotation went on where it was");
    }

    #[test]
    fn random_follows_weights() {
        let c = cluster(&[1, 9], LbPolicy::Random);
        let b = Balancer::new(&c, &EndpointTable::default());
        let heavy = (0..10_000).filter(|_| b.pick(&c) == Ok(1)).count();
        assert!((8_500..9_500).contains(&heavy), "{heavy}");
    }
}
