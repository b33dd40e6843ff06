//! After `101 Switching Protocols` (WebSocket and other upgrades) the exchange is no
//! longer HTTP: bytes are relayed both ways until both sides have closed.
//!
//! A half-close is passed on (EOF from one side shuts down writing to the other), so
//! protocols that finish with a half-close still see every byte.

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};

use monoio::io::IntoPollIo;

use bytes::BytesMut;

use crate::transport::{Conn, PollStream, UpstreamStream};

const RELAY_BUF: usize = 16 * 1024;

pub async fn relay(client: Conn, upstream: Conn<UpstreamStream>) {
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
            return copy_both(client, client_early, tls.0, upstream_early).await;
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
    monoio::join!(pump(client_r, upstream_w), pump(upstream_r, client_w));
}

async fn pump(mut from: impl AsyncReadRent, mut to: impl AsyncWriteRent) {
    let mut buf = Vec::with_capacity(RELAY_BUF);
    loop {
        let (res, b) = from.read(buf).await;
        buf = b;
        match res {
            Ok(n) if n > 0 => {}
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
pub async fn relay_poll<T>(client: Conn<PollStream<T>>, upstream: Conn<UpstreamStream>)
where
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
                copy_both(client, client_early, s, upstream_early).await;
            }
        }
        UpstreamStream::Tls(tls) => copy_both(client, client_early, tls.0, upstream_early).await,
    }
}

/// Relays between two poll-based streams, after handing each the other's early bytes.
async fn copy_both<A, B>(
    mut client: A,
    client_early: BytesMut,
    mut upstream: B,
    upstream_early: BytesMut,
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
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
