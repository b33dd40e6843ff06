//! Upstream side of a worker: which endpoint, and a connection to it.
//!
//! Everything here is per worker: the pool and the balancers are owned, never shared.
//! Balancers are rebuilt when the worker first sees a new snapshot version; the state of
//! their endpoints (`endpoints`) is kept by endpoint and survives reloads.

mod balancer;
mod endpoints;
mod multiplex;
mod pool;
pub mod retry_budget;
pub mod tls;

pub use tls::{TlsFailure, TlsRefusal};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpStream;
use weft_mesh::config::Http2Config;
use weft_mesh::snapshot::{Cluster, ClusterId, ClusterShared, Snapshot};

use crate::keyhash::BuildKeyHasher;

pub use balancer::{Balancer, Lease};
pub use multiplex::{GoAwayWatch, H2Stream, Multiplexed, REFUSED_RETRIES};
pub use pool::Pool;

use crate::transport::{Conn, PollStream, UpstreamStream};

#[derive(Debug)]
pub enum ConnectError {
    NoEndpoints,
    /// No endpoint is healthy, and the cluster's panic threshold is 0.
    NoHealthy,
    /// The connect failed: refused by the endpoint, or no socket could be made here
    /// (`ConnectFailure` tells which).
    Io(io::Error),
    TimedOut,
    /// The HTTP/2 connection preface or SETTINGS exchange failed.
    Handshake(String),
    /// The TLS handshake failed (untrusted or wrong-name certificate, ...).
    Tls(TlsFailure),
    /// A circuit breaker of the cluster is full: no connection was tried.
    Overflow(Breaker),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::NoEndpoints => write!(f, "no endpoints"),
            ConnectError::NoHealthy => write!(f, "no healthy endpoint"),
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::TimedOut => write!(f, "connect timed out"),
            ConnectError::Handshake(why) => write!(f, "HTTP/2 handshake failed: {why}"),
            ConnectError::Tls(failure) => write!(f, "{failure}"),
            ConnectError::Overflow(b) => {
                let limit = match b {
                    Breaker::Requests => "max_requests",
                    Breaker::Pending => "max_pending_requests",
                    Breaker::Connections => "max_connections",
                };
                write!(f, "circuit breaker full: {limit}")
            }
        }
    }
}

/// Which of a cluster's circuit breakers was full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breaker {
    /// `max_requests`: requests in flight.
    Requests,
    /// `max_pending_requests`: requests waiting for a new connection.
    Pending,
    /// `max_connections`: connections open.
    Connections,
}

/// An upstream connection's place in its cluster's `max_connections`, for as long as
/// the connection is open: in use, pooled idle, or carrying HTTP/2 streams. Dropped
/// with the connection. It also counts the connection for this worker and endpoint:
/// a worker with none there may open one past the limit (Envoy's allowance), so a
/// worker is never starved by idle connections the other workers hold.
pub struct ConnectionPermit {
    shared: Arc<ClusterShared>,
    here: Rc<Cell<usize>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.shared.connections.sub();
        self.here.set(self.here.get() - 1);
    }
}

impl Clone for ConnectError {
    fn clone(&self) -> Self {
        match self {
            ConnectError::NoEndpoints => ConnectError::NoEndpoints,
            ConnectError::NoHealthy => ConnectError::NoHealthy,
            // The OS error code survives the copy: it decides the failure's label.
            ConnectError::Io(e) => ConnectError::Io(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            ConnectError::TimedOut => ConnectError::TimedOut,
            ConnectError::Handshake(why) => ConnectError::Handshake(why.clone()),
            ConnectError::Tls(why) => ConnectError::Tls(why.clone()),
            ConnectError::Overflow(b) => ConnectError::Overflow(*b),
        }
    }
}

/// Why a connect failed, as operators need to tell it apart: the endpoint's side
/// (refused, unreachable, reset) or this host's (out of descriptors, out of local
/// ports), which no upstream fix cures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Unreachable,
    Reset,
    /// EMFILE/ENFILE: the process or the system has no descriptor left.
    LocalFdLimit,
    /// EADDRNOTAVAIL: no local port left for this destination.
    LocalPorts,
    Other,
}

impl ConnectFailure {
    pub fn of(e: &io::Error) -> ConnectFailure {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => return ConnectFailure::LocalFdLimit,
            Some(libc::EADDRNOTAVAIL) => return ConnectFailure::LocalPorts,
            _ => {}
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                ConnectFailure::Unreachable
            }
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                ConnectFailure::Reset
            }
            io::ErrorKind::AddrNotAvailable => ConnectFailure::LocalPorts,
            _ => ConnectFailure::Other,
        }
    }

    /// The `reason` label of `weft_upstream_connect_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Reset => "reset",
            ConnectFailure::LocalFdLimit => "local_fd_limit",
            ConnectFailure::LocalPorts => "local_ports",
            ConnectFailure::Other => "io",
        }
    }

    /// A shortage on this host, not a fault of the upstream.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            ConnectFailure::LocalFdLimit | ConnectFailure::LocalPorts
        )
    }
}

/// What pooled connections are keyed by: the endpoint, and the identity of the TLS
/// settings used to reach it (0 for plain TCP).
pub type PoolKey = (SocketAddr, u64);

fn pool_key(cluster: &Cluster, endpoint: SocketAddr) -> PoolKey {
    (endpoint, cluster.tls.as_ref().map_or(0, |t| t.identity))
}

/// A connection to an upstream, and whether it came from the pool.
pub struct Upstream {
    pub conn: Conn<UpstreamStream>,
    pub endpoint: SocketAddr,
    pub reused: bool,
    /// Its place in the cluster's `max_connections`, parked with it in the pool.
    pub permit: ConnectionPermit,
}

pub struct Upstreams {
    pub pool: Pool,
    pub h2: Multiplexed,
    balancers: RefCell<(u64, Vec<Option<Rc<Balancer>>>)>,
    /// Endpoint state the balancers of every snapshot share.
    endpoints: endpoints::EndpointTable,
    /// This worker's ratio retry budgets.
    pub ratio_budgets: retry_budget::RatioBudgets,
    /// Connections this worker has open, by endpoint (`ConnectionPermit`).
    open: RefCell<HashMap<PoolKey, Rc<Cell<usize>>, BuildKeyHasher>>,
}

impl Upstreams {
    pub fn new() -> Upstreams {
        Upstreams {
            pool: Pool::default(),
            h2: Multiplexed::default(),
            balancers: RefCell::new((0, Vec::new())),
            endpoints: endpoints::EndpointTable::default(),
            ratio_budgets: retry_budget::RatioBudgets::default(),
            open: RefCell::default(),
        }
    }

    /// A place for one more connection to `key` in `cluster`'s `max_connections`.
    fn admit_connection(
        &self,
        cluster: &Cluster,
        key: PoolKey,
    ) -> Result<ConnectionPermit, ConnectError> {
        let here = self.open.borrow_mut().entry(key).or_default().clone();
        let counter = &cluster.shared.connections;
        if here.get() == 0 {
            counter.add();
        } else if !counter.try_add(cluster.breakers.max_connections) {
            return Err(ConnectError::Overflow(Breaker::Connections));
        }
        here.set(here.get() + 1);
        Ok(ConnectionPermit {
            shared: cluster.shared.clone(),
            here,
        })
    }

    /// The cluster's balancer for this snapshot, built when first used: a snapshot with
    /// a thousand clusters must not cost the first request after a swap a thousand
    /// balancers.
    fn balancer(&self, snapshot: &Snapshot, id: ClusterId) -> Rc<Balancer> {
        let mut b = self.balancers.borrow_mut();
        if b.0 != snapshot.version {
            b.0 = snapshot.version;
            b.1.clear();
            b.1.resize(snapshot.clusters.len(), None);
        }
        b.1[id]
            .get_or_insert_with(|| Rc::new(Balancer::new(&snapshot.clusters[id], &self.endpoints)))
            .clone()
    }

    /// An endpoint of the cluster for one attempt (see `Lease`); `key`: the request's
    /// hash key, for a consistent-hash cluster.
    pub fn pick(
        &self,
        snapshot: &Snapshot,
        id: ClusterId,
        key: Option<u64>,
    ) -> Result<Lease, ConnectError> {
        self.balancer(snapshot, id)
            .pick(&snapshot.clusters[id], key)
            .map_err(|e| match e {
                balancer::NoPick::NoEndpoints => ConnectError::NoEndpoints,
                balancer::NoPick::NoHealthy => ConnectError::NoHealthy,
            })
    }

    /// A pooled or fresh connection to `endpoint` of `cluster`.
    pub async fn connect(
        &self,
        cluster: &Cluster,
        endpoint: SocketAddr,
    ) -> Result<Upstream, ConnectError> {
        if let Some((conn, permit)) = self.pool.checkout(pool_key(cluster, endpoint)) {
            return Ok(Upstream {
                conn,
                endpoint,
                reused: true,
                permit,
            });
        }
        self.fresh(cluster, endpoint).await
    }

    /// A stream slot on a connection to `endpoint` of an HTTP/2 cluster.
    pub async fn open_h2(
        &self,
        cluster: &Cluster,
        endpoint: SocketAddr,
        settings: &Http2Config,
    ) -> Result<H2Stream, ConnectError> {
        let key = pool_key(cluster, endpoint);
        self.h2
            .open(key, cluster, settings, || {
                self.admit_connection(cluster, key)
            })
            .await
    }

    /// Reports what this worker saw of each endpoint since the last tick to its shared
    /// health (run by the worker's housekeeping tick; see `Balancer::report`).
    pub fn report(&self) {
        for b in self.balancers.borrow().1.iter().flatten() {
            b.report();
        }
    }

    /// Closes idle connections past their timeout; run periodically by the worker.
    pub fn sweep(&self) {
        self.pool.sweep();
        self.h2.sweep();
        self.endpoints.sweep();
        // Endpoints with no connection left, and no permit that could still count one.
        self.open
            .borrow_mut()
            .retain(|_, n| n.get() > 0 || Rc::strong_count(n) > 1);
    }

    /// Stops reusing connections to endpoints `keep` rejects (endpoints a reload removed).
    pub fn retain_endpoints(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.pool.retain_endpoints(&keep);
        self.h2.retain_endpoints(keep);
    }

    /// A new connection to `endpoint`, bypassing the pool. The request waits for it
    /// holding one of the cluster's `max_pending_requests`, and the connection takes a
    /// place in its `max_connections`.
    async fn fresh(
        &self,
        cluster: &Cluster,
        endpoint: SocketAddr,
    ) -> Result<Upstream, ConnectError> {
        let limits = &cluster.breakers;
        let Some(_pending) = cluster.shared.pending.admit(limits.max_pending_requests) else {
            return Err(ConnectError::Overflow(Breaker::Pending));
        };
        let permit = self.admit_connection(cluster, pool_key(cluster, endpoint))?;
        let connect = async {
            let stream = TcpStream::connect_addr(endpoint)
                .await
                .map_err(ConnectError::Io)?;
            let _ = stream.set_nodelay(true);
            match &cluster.tls {
                None => Ok(UpstreamStream::Plain(stream)),
                Some(tls) => Ok(UpstreamStream::Tls(Box::new(PollStream(
                    tls::connect(tls, stream).await?,
                )))),
            }
        };
        match monoio::time::timeout(cluster.connect_timeout, connect).await {
            Ok(Ok(stream)) => Ok(Upstream {
                conn: Conn::new(stream),
                endpoint,
                reused: false,
                permit,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::TimedOut),
        }
    }

    /// A fresh connection to `endpoint`, for a request whose pooled connection to it
    /// was found dead: the endpoint did not fail, its idle connection did.
    pub async fn connect_fresh(
        &self,
        cluster: &Cluster,
        endpoint: SocketAddr,
    ) -> Result<Upstream, ConnectError> {
        self.fresh(cluster, endpoint).await
    }

    pub fn release(&self, cluster: &Cluster, up: Upstream) {
        self.pool.checkin(
            pool_key(cluster, up.endpoint),
            (up.conn, up.permit),
            cluster.pool_max_idle,
            cluster.pool_idle_timeout,
        );
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_name_their_side() {
        let of = |code| ConnectFailure::of(&io::Error::from_raw_os_error(code));
        assert_eq!(of(libc::ECONNREFUSED), ConnectFailure::Refused);
        assert_eq!(of(libc::EHOSTUNREACH), ConnectFailure::Unreachable);
        assert_eq!(of(libc::ECONNRESET), ConnectFailure::Reset);
        assert_eq!(of(libc::EMFILE), ConnectFailure::LocalFdLimit);
        assert_eq!(of(libc::ENFILE), ConnectFailure::LocalFdLimit);
        assert_eq!(of(libc::EADDRNOTAVAIL), ConnectFailure::LocalPorts);
        assert_eq!(of(libc::EPERM), ConnectFailure::Other);
        assert!(of(libc::EMFILE).is_local() && !of(libc::ECONNREFUSED).is_local());
    }

    #[test]
    fn a_copied_connect_error_keeps_its_cause() {
        // Waiters on a shared HTTP/2 connect each get a copy of its error.
        let ConnectError::Io(copy) =
            ConnectError::Io(io::Error::from_raw_os_error(libc::EMFILE)).clone()
        else {
            panic!("variant changed")
        };
        assert_eq!(ConnectFailure::of(&copy), ConnectFailure::LocalFdLimit);
    }
}
