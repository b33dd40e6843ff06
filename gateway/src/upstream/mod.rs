//! Upstream side of a worker: which endpoint, and a connection to it.
//!
//! Everything here is per worker: the pool and the balancers are owned, never shared.
//! Balancers are rebuilt when the worker first sees a new snapshot version; the state of
//! their endpoints (`endpoints`) is kept by endpoint and survives reloads.

mod balancer;
mod endpoints;
mod multiplex;
mod pool;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use monoio::net::TcpStream;
use weft_mesh::snapshot::tls::ClusterTls;
use weft_mesh::snapshot::{Cluster, ClusterId, Snapshot};

pub use balancer::Balancer;
pub use multiplex::{GoAwayWatch, H2Stream, Multiplexed, REFUSED_RETRIES};
pub use pool::Pool;

use crate::transport::{Conn, PollStream, UpstreamStream};

#[derive(Debug)]
pub enum ConnectError {
    NoEndpoints,
    /// The connect failed: refused by the endpoint, or no socket could be made here
    /// (`ConnectFailure` tells which).
    Io(io::Error),
    TimedOut,
    /// The HTTP/2 connection preface or SETTINGS exchange failed.
    Handshake(String),
    /// The TLS handshake failed (untrusted or wrong-name certificate, ...).
    Tls(String),
}

impl Clone for ConnectError {
    fn clone(&self) -> Self {
        match self {
            ConnectError::NoEndpoints => ConnectError::NoEndpoints,
            // The OS error code survives the copy: it decides the failure's label.
            ConnectError::Io(e) => ConnectError::Io(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            ConnectError::TimedOut => ConnectError::TimedOut,
            ConnectError::Handshake(why) => ConnectError::Handshake(why.clone()),
            ConnectError::Tls(why) => ConnectError::Tls(why.clone()),
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
}

pub struct Upstreams {
    pub pool: Pool,
    pub h2: Multiplexed,
    balancers: RefCell<(u64, Vec<Option<Rc<Balancer>>>)>,
    /// Endpoint state the balancers of every snapshot share.
    endpoints: endpoints::EndpointTable,
}

impl Upstreams {
    pub fn new() -> Upstreams {
        Upstreams {
            pool: Pool::default(),
            h2: Multiplexed::default(),
            balancers: RefCell::new((0, Vec::new())),
            endpoints: endpoints::EndpointTable::default(),
        }
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

    fn pick(&self, snapshot: &Snapshot, id: ClusterId) -> Result<SocketAddr, ConnectError> {
        let cluster = &snapshot.clusters[id];
        let idx = self
            .balancer(snapshot, id)
            .pick(cluster)
            .ok_or(ConnectError::NoEndpoints)?;
        Ok(cluster.endpoints[idx].address)
    }

    /// Picks an endpoint of the cluster and returns a pooled or fresh connection to it.
    pub async fn connect(
        &self,
        snapshot: &Snapshot,
        id: ClusterId,
    ) -> Result<Upstream, ConnectError> {
        let cluster = &snapshot.clusters[id];
        let endpoint = self.pick(snapshot, id)?;
        if let Some(conn) = self.pool.checkout(pool_key(cluster, endpoint)) {
            return Ok(Upstream {
                conn,
                endpoint,
                reused: true,
            });
        }
        let conn = self.fresh(cluster, endpoint).await?;
        Ok(Upstream {
            conn,
            endpoint,
            reused: false,
        })
    }

    /// Picks an endpoint of an HTTP/2 cluster and a stream slot on a connection to it.
    pub async fn open_h2(
        &self,
        snapshot: &Snapshot,
        id: ClusterId,
    ) -> Result<H2Stream, ConnectError> {
        let cluster = &snapshot.clusters[id];
        let endpoint = self.pick(snapshot, id)?;
        self.h2
            .open(
                pool_key(cluster, endpoint),
                cluster.connect_timeout,
                cluster.pool_idle_timeout,
                &snapshot.http2,
                cluster.tls.as_ref(),
            )
            .await
    }

    /// Closes idle connections past their timeout; run periodically by the worker.
    pub fn sweep(&self) {
        self.pool.sweep();
        self.h2.sweep();
        self.endpoints.sweep();
    }

    /// Stops reusing connections to endpoints `keep` rejects (endpoints a reload removed).
    pub fn retain_endpoints(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.pool.retain_endpoints(&keep);
        self.h2.retain_endpoints(keep);
    }

    /// A new connection to `endpoint`, bypassing the pool.
    async fn fresh(
        &self,
        cluster: &Cluster,
        endpoint: SocketAddr,
    ) -> Result<Conn<UpstreamStream>, ConnectError> {
        let connect = async {
            let stream = TcpStream::connect_addr(endpoint)
                .await
                .map_err(ConnectError::Io)?;
            let _ = stream.set_nodelay(true);
            match &cluster.tls {
                None => Ok(UpstreamStream::Plain(stream)),
                Some(tls) => Ok(UpstreamStream::Tls(Box::new(PollStream(
                    tls_connect(tls, stream).await?,
                )))),
            }
        };
        match monoio::time::timeout(cluster.connect_timeout, connect).await {
            Ok(Ok(stream)) => Ok(Conn::new(stream)),
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
        Ok(Upstream {
            conn: self.fresh(cluster, endpoint).await?,
            endpoint,
            reused: false,
        })
    }

    pub fn release(&self, cluster: &Cluster, up: Upstream) {
        self.pool.checkin(
            pool_key(cluster, up.endpoint),
            up.conn,
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

/// The TLS handshake with an upstream, verifying its certificate for the cluster's name.
pub async fn tls_connect(
    tls: &ClusterTls,
    stream: TcpStream,
) -> Result<crate::transport::TlsToUpstream, ConnectError> {
    use monoio::io::IntoPollIo;
    let io = stream.into_poll_io().map_err(ConnectError::Io)?;
    tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(tls.server_name.clone(), io)
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))
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
