//! Per-worker HTTP/2 upstream connections, shared by all of a worker's requests to an
//! endpoint.
//!
//! A connection carries as many streams at once as the upstream's
//! SETTINGS_MAX_CONCURRENT_STREAMS allows. A request takes a slot ([`H2Stream`], given
//! back on drop) on the first live connection with one free, and opens another
//! connection only when every connection to that endpoint is full. Requests that find
//! no room while a connection to the endpoint is being opened wait for that one rather
//! than each opening their own (a burst would otherwise open a connection per request,
//! which is what multiplexing is meant to avoid). h2 spawns nothing:
//! each connection's driver is a task on the worker, and when it ends (GOAWAY, reset,
//! error) the connection is marked dead and leaves the list at the next checkout. The
//! worker's sweep closes connections that carried no stream for the cluster's pool idle
//! timeout; dropping the last `SendRequest` lets h2 close them cleanly.
//!
//! A GOAWAY from the upstream takes its connection out of the list at once (no new
//! stream may go on it), and its last-stream-id is kept (`GoAwayWatch`): h2 fails the
//! streams above it with the same error as those the connection later drops, and only
//! the former were never processed (RFC 9113 §6.8), so only they may go again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use weft_mesh::config::Http2Config;
use weft_mesh::snapshot::Cluster;

use super::{Breaker, ConnectError, ConnectionPermit, PoolKey};
use crate::keyhash::BuildKeyHasher;
use crate::runtime::wakers::LocalEvent;
use crate::transport::ReadTap;

/// A refused bodiless request is sent again, this many times at most (RFC 9113 §8.7: a
/// refused stream was not processed, so the request may be retried; one whose body was
/// already streamed cannot be). Refusals happen when streams went out before the
/// upstream's SETTINGS said how many it takes.
pub const REFUSED_RETRIES: usize = 2;

/// What an upstream's GOAWAY said: the last stream it processes, if one came.
#[derive(Clone, Default)]
pub struct GoAwayWatch(Rc<Cell<Option<u32>>>);

impl GoAwayWatch {
    /// Whether the upstream said it would not process `stream` (its id is above the
    /// last-stream-id of a GOAWAY): the request may be sent again elsewhere.
    pub fn unprocessed(&self, stream: h2::StreamId) -> bool {
        self.0.get().is_some_and(|last| u32::from(stream) > last)
    }

    fn went_away(&self, last_stream_id: u32) {
        // A second GOAWAY may only lower it (RFC 9113 §6.8).
        let last = self
            .0
            .get()
            .map_or(last_stream_id, |l| l.min(last_stream_id));
        self.0.set(Some(last));
    }
}

struct H2Conn {
    send: SendRequest<Bytes>,
    goaway: GoAwayWatch,
    /// Its place in the cluster's `max_connections`, until the last stream lets go.
    _permit: ConnectionPermit,
    /// Streams this worker has open on the connection.
    active: Cell<usize>,
    dead: Rc<Cell<bool>>,
    idle_since: Cell<Instant>,
    idle_timeout: Duration,
}

impl H2Conn {
    fn has_room(&self) -> bool {
        !self.dead.get() && self.active.get() < self.send.current_max_send_streams()
    }
}

/// One stream's slot on a shared connection; `send` opens the stream.
pub struct H2Stream {
    pub send: SendRequest<Bytes>,
    pub endpoint: SocketAddr,
    /// The connection's GOAWAY, for streams that fail.
    pub goaway: GoAwayWatch,
    conn: Rc<H2Conn>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let left = self.conn.active.get() - 1;
        self.conn.active.set(left);
        if left == 0 {
            self.conn.idle_since.set(Instant::now());
        }
    }
}

/// A connection being opened, which requests arriving meanwhile wait for.
#[derive(Default)]
struct Opening {
    done: LocalEvent,
    outcome: RefCell<Option<Result<Rc<H2Conn>, ConnectError>>>,
}

/// Marks a connection attempt as under way; when dropped (done, or abandoned because
/// the request that started it went away) it wakes the waiters, which then find the
/// connection, the error, or nothing and try themselves.
struct OpeningGuard<'a> {
    owner: &'a Multiplexed,
    key: PoolKey,
    opening: Rc<Opening>,
}

impl<'a> OpeningGuard<'a> {
    fn start(owner: &'a Multiplexed, key: PoolKey) -> OpeningGuard<'a> {
        let opening = Rc::new(Opening::default());
        owner.opening.borrow_mut().insert(key, opening.clone());
        OpeningGuard {
            owner,
            key,
            opening,
        }
    }
}

impl Drop for OpeningGuard<'_> {
    fn drop(&mut self) {
        let mut opening = self.owner.opening.borrow_mut();
        if opening
            .get(&self.key)
            .is_some_and(|o| Rc::ptr_eq(o, &self.opening))
        {
            opening.remove(&self.key);
        }
        drop(opening);
        self.opening.done.fire();
    }
}

#[derive(Default)]
pub struct Multiplexed {
    conns: RefCell<HashMap<PoolKey, Vec<Rc<H2Conn>>, BuildKeyHasher>>,
    opening: RefCell<HashMap<PoolKey, Rc<Opening>, BuildKeyHasher>>,
}

impl Multiplexed {
    /// A stream slot to `key`'s endpoint of `cluster`, on a shared connection or a new
    /// one (whose place in `max_connections` `admit` gives). A request that has to
    /// wait for a connection holds one of the cluster's `max_pending_requests`.
    pub async fn open(
        &self,
        key: PoolKey,
        cluster: &Cluster,
        settings: &Http2Config,
        admit: impl FnOnce() -> Result<ConnectionPermit, ConnectError>,
    ) -> Result<H2Stream, ConnectError> {
        let endpoint = key.0;
        if let Some(conn) = self.with_room(key) {
            return Ok(Self::slot(conn, endpoint));
        }
        let limit = cluster.breakers.max_pending_requests;
        let Some(_pending) = cluster.shared.pending.admit(limit) else {
            return Err(ConnectError::Overflow(Breaker::Pending));
        };
        let pending = self.opening.borrow().get(&key).cloned();
        if let Some(opening) = pending {
            opening.done.wait().await;
            if let Some(conn) = self.with_room(key) {
                return Ok(Self::slot(conn, endpoint));
            }
            if let Some(Err(e)) = opening.outcome.borrow().as_ref() {
                return Err(e.clone());
            }
            // Full already: open another below.
        }
        let permit = admit()?;
        let opening = OpeningGuard::start(self, key);
        let outcome = monoio::time::timeout(
            cluster.connect_timeout,
            Self::handshake(endpoint, cluster, settings, permit),
        )
        .await
        .unwrap_or(Err(ConnectError::TimedOut));
        let result = match &outcome {
            Ok(conn) => {
                self.conns
                    .borrow_mut()
                    .entry(key)
                    .or_default()
                    .push(conn.clone());
                // Taken before the waiters wake, so they count this stream.
                Ok(Self::slot(conn.clone(), endpoint))
            }
            Err(e) => Err(e.clone()),
        };
        *opening.opening.outcome.borrow_mut() = Some(outcome);
        result
    }

    fn with_room(&self, key: PoolKey) -> Option<Rc<H2Conn>> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(&key)?;
        list.retain(|c| !c.dead.get());
        list.iter().find(|c| c.has_room()).cloned()
    }

    fn slot(conn: Rc<H2Conn>, endpoint: SocketAddr) -> H2Stream {
        conn.active.set(conn.active.get() + 1);
        H2Stream {
            send: conn.send.clone(),
            endpoint,
            goaway: conn.goaway.clone(),
            conn,
        }
    }

    async fn handshake(
        endpoint: SocketAddr,
        cluster: &Cluster,
        settings: &Http2Config,
        permit: ConnectionPermit,
    ) -> Result<Rc<H2Conn>, ConnectError> {
        let stream = TcpStream::connect_addr(endpoint)
            .await
            .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        let idle_timeout = cluster.pool_idle_timeout;
        match &cluster.tls {
            Some(tls) => {
                let io = super::tls::connect(tls, stream).await?;
                Self::start(io, endpoint, idle_timeout, settings, permit).await
            }
            None => {
                let io = stream.into_poll_io().map_err(ConnectError::Io)?;
                Self::start(io, endpoint, idle_timeout, settings, permit).await
            }
        }
    }

    /// The HTTP/2 handshake on a connected transport, and its driver task.
    async fn start<T>(
        io: T,
        endpoint: SocketAddr,
        idle_timeout: Duration,
        settings: &Http2Config,
        permit: ConnectionPermit,
    ) -> Result<Rc<H2Conn>, ConnectError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let dead = Rc::new(Cell::new(false));
        let goaway = GoAwayWatch::default();
        let (watch, gone) = (goaway.clone(), dead.clone());
        let mut frames = FrameWalk::default();
        let io = ReadTap {
            inner: io,
            on_read: move |bytes: &[u8]| {
                frames.feed(bytes, |last| {
                    watch.went_away(last);
                    gone.set(true);
                })
            },
        };
        let (send, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(settings.initial_stream_window)
            .initial_connection_window_size(settings.initial_connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_header_list_size(settings.max_header_list_size)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(handshake_error)?;
        let pings = connection.ping_pong();
        let flag = dead.clone();
        monoio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("h2 upstream connection to {endpoint} ended: {e}");
            }
            flag.set(true);
        });
        // Until the upstream's SETTINGS arrive its stream limit is unknown, and streams
        // sent meanwhile may be refused. A peer's SETTINGS come first on the wire, so
        // once a PING round trip is done they have been applied.
        if let Some(mut pings) = pings {
            pings
                .send_ping(h2::Ping::opaque())
                .map_err(|e| ConnectError::Handshake(e.to_string()))?;
            std::future::poll_fn(|cx| pings.poll_pong(cx))
                .await
                .map_err(handshake_error)?;
        }
        Ok(Rc::new(H2Conn {
            send,
            goaway,
            _permit: permit,
            active: Cell::new(0),
            dead,
            idle_since: Cell::new(Instant::now()),
            idle_timeout,
        }))
    }

    /// Closes connections idle past their timeout, and dead ones.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut conns = self.conns.borrow_mut();
        for list in conns.values_mut() {
            list.retain(|c| {
                !c.dead.get()
                    && (c.active.get() > 0
                        || now.duration_since(c.idle_since.get()) < c.idle_timeout)
            });
        }
        conns.retain(|_, list| !list.is_empty());
    }

    /// Stops sharing connections to endpoints `keep` rejects; their open streams finish.
    pub fn retain_endpoints(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.conns.borrow_mut().retain(|(addr, _), _| keep(*addr));
    }
}

/// Walks the frames a server sends (RFC 9113 §4.1: a 9-byte header, then the payload
/// it announces), finding the last-stream-id of each GOAWAY. Payloads are skipped
/// without copying; h2 parses and checks everything itself.
#[derive(Default)]
struct FrameWalk {
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    left: usize,
    /// In a GOAWAY: its last-stream-id so far, and how many of its 4 bytes came.
    goaway: Option<([u8; 4], usize)>,
}

const GOAWAY: u8 = 0x7;

impl FrameWalk {
    fn feed(&mut self, mut data: &[u8], mut on_goaway: impl FnMut(u32)) {
        while !data.is_empty() {
            if self.left > 0 {
                let take = self.left.min(data.len());
                if let Some((id, got)) = &mut self.goaway {
                    let n = (4 - *got).min(take);
                    id[*got..*got + n].copy_from_slice(&data[..n]);
                    *got += n;
                    if *got == 4 {
                        on_goaway(u32::from_be_bytes(*id) & 0x7fff_ffff);
                        self.goaway = None;
                    }
                }
                self.left -= take;
                data = &data[take..];
                continue;
            }
            let n = (9 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 9 {
                self.have = 0;
                let h = self.header;
                self.left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                self.goaway = (h[3] == GOAWAY && self.left >= 8).then_some(([0; 4], 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameWalk;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, 0]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn goaways_are_found_however_the_bytes_are_split() {
        let mut wire = frame(0x4, 0, &[0, 3, 0, 0, 0, 100]);
        wire.extend(frame(0x0, 1, &[7u8; 300]));
        wire.extend(frame(
            0x7,
            0,
            &[0x80, 0, 0, 5, 0, 0, 0, 0, b'b', b'y', b'e'],
        ));
        wire.extend(frame(0x0, 3, b"after"));
        for step in [1, 2, 5, 9, 64, wire.len()] {
            let mut walk = FrameWalk::default();
            let mut seen = Vec::new();
            for piece in wire.chunks(step) {
                walk.feed(piece, |last| seen.push(last));
            }
            assert_eq!(seen, [5], "pieces of {step}");
        }
    }
}

/// A failed HTTP/2 handshake; a TLS refusal under it (a TLS 1.3 server refuses a
/// missing client certificate after the TLS handshake) is said as one.
fn handshake_error(e: h2::Error) -> ConnectError {
    match e.get_io().and_then(super::tls::failure_in) {
        Some(failure) => ConnectError::Tls(failure),
        None => ConnectError::Handshake(e.to_string()),
    }
}
