//! Per-worker keep-alive connection pool, keyed by endpoint address.
//!
//! Owned by one worker (`RefCell`, no lock). Idle connections hold no read buffer.
//! A connection is handed out only if it is still alive: one that expired
//! (`idle_timeout`) is dropped at checkout, and one that sat idle longer than
//! `PEEK_AFTER` is probed with a non-blocking `MSG_PEEK` that sees a FIN the upstream
//! sent meanwhile. Upstreams close idle connections after seconds, not milliseconds, so
//! a connection parked moments ago skips the probe (a syscall per request under load);
//! the rare close that races a checkout is handled by the proxy's one safe retry. A sweeper closes expired connections in the background
//! so idle sockets do not linger on the upstream.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{ConnectionPermit, PoolKey};
use crate::keyhash::BuildKeyHasher;
use crate::transport::{Conn, UpstreamStream};

/// Connections idle for less than this are handed out without a liveness probe.
const PEEK_AFTER: Duration = Duration::from_millis(200);

struct IdleConn {
    conn: Conn<UpstreamStream>,
    /// Its place in the cluster's `max_connections`, given back when it is closed.
    permit: ConnectionPermit,
    since: Instant,
    /// The cluster's idle timeout when the connection was parked.
    idle_timeout: Duration,
}

#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<PoolKey, Vec<IdleConn>, BuildKeyHasher>>,
}

impl Pool {
    /// Most recently used live connection to `endpoint`, if any.
    pub fn checkout(&self, key: PoolKey) -> Option<(Conn<UpstreamStream>, ConnectionPermit)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            let idle = now.duration_since(c.since);
            if idle < c.idle_timeout && (idle < PEEK_AFTER || is_open(&c.conn)) {
                return Some((c.conn, c.permit));
            }
        }
        None
    }

    /// Parks a connection whose exchange ended cleanly and that may be reused.
    pub fn checkin(
        &self,
        key: PoolKey,
        (mut conn, permit): (Conn<UpstreamStream>, ConnectionPermit),
        max_idle: usize,
        idle_timeout: Duration,
    ) {
        if max_idle == 0 || !conn.buf.is_empty() {
            return;
        }
        conn.release_buffer();
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() >= max_idle {
            list.remove(0);
        }
        list.push(IdleConn {
            conn,
            permit,
            since: Instant::now(),
            idle_timeout,
        });
    }

    /// Closes connections idle past their timeout; run periodically by the worker.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|c| now.duration_since(c.since) < c.idle_timeout);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Closes the idle connections of endpoints `keep` rejects (endpoints a reload removed).
    pub fn retain_endpoints(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.idle.borrow_mut().retain(|(addr, _), _| keep(*addr));
    }
}

/// True unless the peer has closed (EOF or reset) or sent unsolicited bytes.
fn is_open(conn: &Conn<UpstreamStream>) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: recv into a valid 1-byte stack buffer on a socket fd we own; MSG_PEEK
    // leaves the data in the socket and MSG_DONTWAIT never blocks the worker.
    let n = unsafe {
        libc::recv(
            conn.stream.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}
