//! One request's world: the worker it runs on, the snapshot it started with, its
//! listener and its client connection. Every phase and every relay reads it; it holds
//! nothing that changes during the exchange.

use std::rc::Rc;

use weft_mesh::snapshot::{Listener, PathPolicy, RouteTable, Snapshot};

use super::connection::ConnectionFacts;
use super::rewrite;
use crate::runtime::worker::{BoundListener, Worker};

/// One request's world: the worker it runs on, the snapshot it started with (held for
/// its whole life, reloads notwithstanding), its listener and its connection.
pub struct Exchange<'a> {
    /// Counted, so that work outliving the exchange (a mirror) can take it along.
    pub worker: &'a Rc<Worker>,
    pub snapshot: &'a Snapshot,
    pub bound: &'a BoundListener,
    /// Who the client is and how it connected: peer, scheme, TLS identity.
    pub conn: &'a ConnectionFacts,
    /// The listener's entry in `snapshot`, found once (`None` once a reload removed it).
    listener: Option<&'a Listener>,
}

impl<'a> Exchange<'a> {
    pub fn new(
        worker: &'a Rc<Worker>,
        snapshot: &'a Snapshot,
        bound: &'a BoundListener,
        conn: &'a ConnectionFacts,
    ) -> Exchange<'a> {
        Exchange {
            worker,
            snapshot,
            bound,
            conn,
            listener: bound.in_snapshot(snapshot),
        }
    }

    pub fn routes(&self) -> Option<&'a RouteTable> {
        self.listener.map(|l| &l.routes)
    }

    /// The listener's `rate_limit`, if it has one.
    pub fn rate_limit(&self) -> Option<&'a weft_mesh::snapshot::rate_limit::RateLimit> {
        self.listener.and_then(|l| l.rate_limit.as_ref())
    }

    /// How this listener normalises request paths.
    pub fn paths(&self) -> PathPolicy {
        self.listener.map(|l| l.paths).unwrap_or_default()
    }

    /// Who the client is, for the forwarding headers.
    pub fn client_info(&self) -> rewrite::ClientInfo<'_> {
        rewrite::ClientInfo {
            peer: self.conn.peer,
            scheme: self.conn.scheme,
            client_cert: self.conn.forwarded_client_cert(),
            trust: &self.snapshot.trusted_proxies,
            attempt: None,
        }
    }

    /// Whether this connection must close after the current exchange: the process is
    /// draining, or a reload removed the listener.
    pub fn closing(&self) -> bool {
        self.bound.closed.fired()
    }
}
