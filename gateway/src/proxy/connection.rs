//! What is known about one client connection, found out once: at accept (addresses,
//! listener, scheme) and after the TLS handshake (SNI, ALPN, the verified client
//! certificate's identity as typed values). Every phase of every request on the
//! connection reads these facts; none goes back to the socket or the TLS session.
//!
//! Held in an `Rc` by the connection's task (and its HTTP/2 streams); never shared
//! across workers.

use std::sync::Arc;

use crate::observe::metrics::Family;
use crate::runtime::worker::{BoundListener, Worker};
use std::net::SocketAddr;
use std::rc::Rc;

use weft_mesh::snapshot::ListenerRole;

pub use super::identity::PeerIdentity;

/// A client connection's facts.
#[derive(Debug)]
pub struct ConnectionFacts {
    pub peer: SocketAddr,
    /// The address the client connected to (`None` if the socket could not say).
    pub local: Option<SocketAddr>,
    /// The listener's name.
    pub listener: Rc<str>,
    /// Ingress, sidecar inbound or sidecar outbound.
    pub role: ListenerRole,
    /// `http`, or `https` on a TLS listener.
    pub scheme: &'static str,
    pub tls: Option<TlsFacts>,
    /// Buckets of the rate limits scoped to a connection.
    pub rate_limits: super::rate_limit::LocalBuckets,
}

/// What the TLS handshake settled.
#[derive(Debug)]
pub struct TlsFacts {
    /// The server name the client asked for.
    pub sni: Option<String>,
    /// The protocol ALPN chose (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The verified client certificate's identity, when the client presented one.
    pub peer_identity: Option<PeerIdentity>,
    /// Send the identity upstream as `x-forwarded-client-cert` (the listener's
    /// `tls.forward_client_cert`).
    pub forward_client_cert: bool,
}

impl ConnectionFacts {
    /// A connection without TLS.
    pub fn plain(
        peer: SocketAddr,
        local: Option<SocketAddr>,
        listener: Rc<str>,
        role: ListenerRole,
    ) -> Self {
        ConnectionFacts {
            peer,
            local,
            listener,
            role,
            scheme: "http",
            tls: None,
            rate_limits: Default::default(),
        }
    }

    /// The verified client certificate's `x-forwarded-client-cert` value: what routing
    /// matches that header against (a client-sent header of that name is never
    /// believed).
    pub fn client_cert(&self) -> Option<&str> {
        let identity = self.tls.as_ref()?.peer_identity.as_ref()?;
        Some(identity.xfcc.as_str())
    }

    /// The value to send upstream as `x-forwarded-client-cert`, if the listener
    /// forwards it.
    pub fn forwarded_client_cert(&self) -> Option<&str> {
        self.tls
            .as_ref()
            .filter(|t| t.forward_client_cert)
            .and_then(|_| self.client_cert())
    }
}

/// A client connection counted in `weft_open_connections`: dropping it lowers the gauge.
pub(crate) struct OpenConnection(Arc<crate::observe::metrics::Cell>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.sub(1);
    }
}

/// Counts a client connection in `weft_accepted_connections_total` and
/// `weft_open_connections` by listener and protocol, until the result is dropped.
pub(crate) fn count_connection(
    worker: &Worker,
    bound: &BoundListener,
    protocol: &'static str,
) -> OpenConnection {
    let key = [bound.slot as u64, protocol.as_ptr() as u64, 0, 0];
    let labels = || {
        vec![
            ("listener", bound.name.to_string()),
            ("protocol", protocol.to_owned()),
        ]
    };
    worker
        .counters
        .bump(Family::AcceptedConnections, key, labels);
    let open = worker.counters.cell(Family::OpenConnections, key, labels);
    open.add(1);
    OpenConnection(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_typed_and_forwarded_only_when_asked() {
        let id = PeerIdentity::new(
            &[1],
            "CN=web".into(),
            vec!["spiffe://mesh/sa/web".into()],
            vec!["web.mesh".into()],
        )
        .unwrap();
        let mut conn = ConnectionFacts::plain(
            "127.0.0.1:1".parse().unwrap(),
            None,
            "l".into(),
            ListenerRole::Ingress,
        );
        assert_eq!(conn.client_cert(), None);
        conn.tls = Some(TlsFacts {
            sni: Some("a.test".into()),
            alpn: Some(b"h2".to_vec()),
            peer_identity: Some(id),
            forward_client_cert: false,
        });
        assert_eq!(
            conn.client_cert(),
            Some(r#"Hash=01;Subject="CN=web";URI=spiffe://mesh/sa/web;DNS=web.mesh"#)
        );
        assert_eq!(conn.forwarded_client_cert(), None);
    }
}
