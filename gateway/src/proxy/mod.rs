//! The request path: client connections, the one request lifecycle, and the relays
//! between each client and upstream protocol.
//!
//! - `mod.rs` (here): a new connection goes to TLS, or straight to HTTP/1.1;
//! - `tls`: termination, then the protocol ALPN chose;
//! - `client_h1`, `client_h2`: the two client sides (HTTP/1.1 connections, HTTP/2
//!   connections and their streams), each an adapter of the lifecycle;
//! - `lifecycle`: the phases every request goes through, in one place; `exchange`,
//!   `error`, `completion` are its context, its failures and its record;
//! - `relay`: the byte pumps, one per client x upstream pair (`h1_to_h1`, `h1_to_h2`,
//!   `h2_to_h1`, `h2_to_h2`);
//! - `facts`, `rewrite`, `local`, `grpc`, `flow`: what a request says, the header
//!   policy, the answers weft makes, gRPC's rules, HTTP/2 sends under flow control;
//! - `affinity`: a request's hash key for the consistent-hash balancers;
//! - `tunnel`: the bytes of an upgraded connection.
//!
//! Imports run one way: clients -> lifecycle and relays -> exchange, error, completion
//! and the header policy; nothing below imports a client side.

mod affinity;
mod client_h1;
mod client_h2;
mod completion;
pub mod connection;
mod error;
mod exchange;
mod facts;
mod fault;
mod flow;
pub mod forwarded;
mod grpc;
mod identity;
mod lifecycle;
mod local;
mod mirror;
pub(crate) mod rate_limit;
mod relay;
mod replay;
mod retry;
mod rewrite;
mod tls;
mod trust;
mod tunnel;

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::net::TcpStream;

use crate::runtime::worker::{BoundListener, Worker};
use crate::transport::Conn;
use connection::ConnectionFacts;

/// Starts serving a new client connection on `bound`: TLS first where the listener
/// terminates it, then HTTP/1.1 or HTTP/2.
///
/// Plain and TLS connections are separate tasks, so a plain connection's task is only
/// as large as its own future: a TLS future (handshake and rustls state) is many times
/// larger, and one task type for both made every idle plain connection cost 15 KiB.
///
/// A connection accepted on a listener the current snapshot no longer has (a reload
/// removed it, and this worker has not yet stopped accepting on it) is closed unserved:
/// its TLS settings are gone with it, and serving it in plain text would answer a TLS
/// listener's client without TLS.
pub fn spawn(worker: Rc<Worker>, bound: BoundListener, stream: TcpStream, peer: SocketAddr) {
    let snapshot = worker.snapshot();
    let Some(listener) = bound.in_snapshot(&snapshot) else {
        tracing::debug!(%peer, listener = %bound.name, "accepted on a removed listener: closed");
        return;
    };
    let role = listener.role;
    let tls = listener.tls.as_ref().map(|t| tls::Settings {
        server: t.server.clone(),
        handshake_timeout: t.handshake_timeout,
        forward_client_cert: t.forward_client_cert,
    });
    drop(snapshot);
    match tls {
        Some(settings) => {
            monoio::spawn(tls::serve(worker, bound, stream, peer, role, settings));
        }
        None => {
            let local = stream.local_addr().ok();
            let conn = ConnectionFacts::plain(peer, local, bound.name.clone(), role);
            monoio::spawn(client_h1::serve_conn(
                worker,
                bound,
                Conn::new(stream),
                Rc::new(conn),
            ));
        }
    }
}

#[cfg(test)]
pub(crate) use client_h1::tests;
