//! After `101 Switching Protocols` (WebSocket and other upgrades) the exchange is no
//! longer HTTP: bytes are relayed both ways until both sides have closed.
//!
//! A half-close is passed on (EOF from one side shuts down writing to the other), so
//! protocols that finish with a half-close still see every byte.
//!
//! A tunnel with no byte either way for `http.tunnel_idle_timeout` is closed on both
//! sides: a WebSocket whose peers vanished without a FIN would otherwise hold two
//! descriptors and a task forever. Traffic in one direction alone keeps it open.

use std::cell::Cell;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};

use monoio::io::IntoPollIo;

use bytes::BytesMut;

use crate::transport::{Conn, PollStream, ReadTap, UpstreamStream};

const RELAY_BUF: usize = 16 * 1024;

/// Returns once `idle` has passed since the last byte a pump read (`last`).
async fn idle_watch(last: &Cell<Instant>, idle: Duration) {
    loop {
        let due = last.get() + idle;
        let now = Instant::now();
        if now >= due {
            tracing::debug!(?idle, "tunnel idle: closed");
            return;
        }
        monoio::time::sleep(due - now).await;
    }
}

pub async fn relay(client: Conn, upstream: Conn<UpstreamStream>, idle: Duration) {
    let Conn {
        stream: client,
        buf: client_early,
    } = client;
    let Conn {
        stream: upstream,
        buf: upstream_early,
    } = upstream;
    let upstream = match upstream {
        UpstreamStream::Plain(s) => s,
        UpstreamStream::Tls(tls) => {
            let Ok(client) = client.into_poll_io() else {
                return;
            };
            return copy_both(client, client_early, tls.0, upstream_early, idle).await;
        }
    };
    let (client_r, mut client_w) = client.into_split();
    let (upstream_r, mut upstream_w) = upstream.into_split();
    // Bytes that arrived behind the heads belong to the new protocol.
    if !upstream_early.is_empty() && client_w.write_all(upstream_early).await.0.is_err() {
        return;
    }
    if !client_early.is_empty() && upstream_w.write_all(client_early).await.0.is_err() {
        return;
    }
    let last = Cell::new(Instant::now());
    monoio::select! {
        _ = async {
            monoio::join!(pump(client_r, upstream_w, &last), pump(upstream_r, client_w, &last))
        } => {}
        _ = idle_watch(&last, idle) => {}
    }
}

async fn pump(mut from: impl AsyncReadRent, mut to: impl AsyncWriteRent, last: &Cell<Instant>) {
    let mut buf = Vec::with_capacity(RELAY_BUF);
    loop {
        let (res, b) = from.read(buf).await;
        buf = b;
        match res {
            Ok(n) if n > 0 => last.set(Instant::now()),
            _ => break,
        }
        let (res, b) = to.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
        buf.clear();
    }
    let _ = to.shutdown().await;
}

/// The same for a TLS client: both sides as poll-based streams (TLS cannot be split
/// into independent halves), copied both ways in one task.
pub async fn relay_poll<T>(
    client: Conn<PollStream<T>>,
    upstream: Conn<UpstreamStream>,
    idle: Duration,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Conn {
        stream: PollStream(client),
        buf: client_early,
    } = client;
    let Conn {
        stream: upstream,
        buf: upstream_early,
    } = upstream;
    match upstream {
        UpstreamStream::Plain(s) => {
            if let Ok(s) = s.into_poll_io() {
                copy_both(client, client_early, s, upstream_early, idle).await;
            }
        }
        UpstreamStream::Tls(tls) => {
            copy_both(client, client_early, tls.0, upstream_early, idle).await
        }
    }
}

/// Relays between two poll-based streams, after handing each the other's early bytes.
async fn copy_both<A, B>(
    mut client: A,
    client_early: BytesMut,
    mut upstream: B,
    upstream_early: BytesMut,
    idle: Duration,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if client.write_all(&upstream_early).await.is_err()
        || upstream.write_all(&client_early).await.is_err()
    {
        return;
    }
    let last = Cell::new(Instant::now());
    let moved = |_: &[u8]| last.set(Instant::now());
    let mut client = ReadTap {
        inner: client,
        on_read: moved,
    };
    let mut upstream = ReadTap {
        inner: upstream,
        on_read: moved,
    };
    monoio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = idle_watch(&last, idle) => {}
    }
}
