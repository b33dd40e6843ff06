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

use weft_mesh::config::LbPolicy;
use weft_mesh::snapshot::Cluster;

use super::endpoints::{EndpointState, EndpointTable};

pub struct Balancer {
    policy: LbPolicy,
    /// One per endpoint of the cluster, in its order.
    states: Vec<Rc<EndpointState>>,
}

impl Balancer {
    pub fn new(cluster: &Cluster, table: &EndpointTable) -> Balancer {
        Balancer {
            policy: cluster.lb,
            states: cluster
                .endpoints
                .iter()
                .map(|e| table.state(&cluster.name, e.address))
                .collect(),
        }
    }

    /// Index into `cluster.endpoints`, or `None` for a cluster with no endpoints.
    pub fn pick(&self, cluster: &Cluster) -> Option<usize> {
        let eps = &cluster.endpoints;
        match eps.len() {
            0 => None,
            1 => Some(0),
            _ => match self.policy {
                LbPolicy::Random => {
                    let total: u64 = eps.iter().map(|e| e.weight as u64).sum();
                    let mut roll = fastrand::u64(0..total.max(1));
                    eps.iter().position(|e| {
                        if roll < e.weight as u64 {
                            true
                        } else {
                            roll -= e.weight as u64;
                            false
                        }
                    })
                }
                LbPolicy::RoundRobin => {
                    let cur = &self.states;
                    if cur.len() != eps.len() {
                        return Some(0);
                    }
                    let mut total = 0i64;
                    let mut best = 0usize;
                    for (i, e) in eps.iter().enumerate() {
                        let c = &cur[i].wrr_current;
                        c.set(c.get() + e.weight as i64);
                        total += e.weight as i64;
                        if c.get() > cur[best].wrr_current.get() {
                            best = i;
                        }
                    }
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
        let heavy = (0..10_000).filter(|_| b.pick(&c) == Some(1)).count();
        assert!((8_500..9_500).contains(&heavy), "{heavy}");
    }
}
