//! Streaming a message body from one connection to another, never buffering it whole.
//!
//! The source's read buffer already holds whatever arrived behind the head; those bytes
//! go first, then the body is read and written piece by piece, so memory per exchange
//! is bounded by one read buffer whatever the body size. Chunked bodies pass through
//! as they came (trailers included) while `ChunkedParser` finds their end; only a
//! HTTP/1.0 client, which cannot read the chunked coding, gets the decoded data.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::io::AsyncWriteRent;
use monoio::io::AsyncWriteRentExt;
use weft_mesh::fields::Trailers;

use super::chunked::{ChunkError, ChunkedParser};
use super::head::BodyFraming;
use crate::transport::Conn;

#[derive(Debug)]
pub enum BodyError {
    /// The source closed before the body was complete.
    SourceClosed,
    SourceIo(io::Error),
    SinkIo(io::Error),
    TooLarge,
    Malformed(ChunkError),
    /// The source sent nothing for longer than the read timeout.
    Stalled,
    /// The sink took nothing for longer than the write timeout (a reader that stopped
    /// reading must not hold the exchange, and its upstream connection, forever).
    SinkStalled,
}

/// How to copy one body.
pub struct BodyCopy {
    pub framing: BodyFraming,
    /// Refuse bodies longer than this (`TooLarge`), counting as they stream.
    pub max_bytes: Option<u64>,
    /// Longest wait for the next piece from the source.
    pub read_timeout: Duration,
    /// Longest wait for the sink to take one piece.
    pub write_timeout: Duration,
    /// Send only chunk data (for a HTTP/1.0 client of a chunked response).
    pub dechunk: bool,
    pub max_trailer_bytes: usize,
    /// Whose trailer section it is: a request's may not carry what weft vouches for.
    pub trailers: Trailers,
}

const READ_CHUNK: usize = 64 * 1024;

/// Where a copied body goes: the next hop's socket, or an HTTP/2 stream.
pub trait BodySink {
    /// Takes one piece (`last` when it ends the body), or fails with `SinkStalled` if
    /// that takes longer than `limit`.
    fn put(
        &mut self,
        piece: Bytes,
        limit: Duration,
        last: bool,
    ) -> impl std::future::Future<Output = Result<(), BodyError>>;
}

impl<S: AsyncWriteRent> BodySink for S {
    async fn put(&mut self, piece: Bytes, limit: Duration, _last: bool) -> Result<(), BodyError> {
        match monoio::time::timeout(limit, self.write_all(piece)).await {
            Ok((res, _)) => res.map(|_| ()).map_err(BodyError::SinkIo),
            Err(_) => Err(BodyError::SinkStalled),
        }
    }
}

/// Copies the body; returns the number of body bytes written to `sink`.
pub async fn copy_body<R: monoio::io::AsyncReadRent>(
    src: &mut Conn<R>,
    sink: &mut impl BodySink,
    spec: &BodyCopy,
) -> Result<u64, BodyError> {
    let mut written = 0u64;
    let mut seen = 0u64;
    let mut chunked = ChunkedParser::new(spec.max_trailer_bytes, spec.trailers);
    let mut remaining = match spec.framing {
        BodyFraming::None => return Ok(0),
        BodyFraming::Length(n) => n,
        _ => u64::MAX,
    };
    if let (BodyFraming::Length(n), Some(max)) = (spec.framing, spec.max_bytes) {
        if n > max {
            return Err(BodyError::TooLarge);
        }
    }
    loop {
        if src.buf.is_empty() {
            let n = src.fill_with_timeout(READ_CHUNK, spec.read_timeout).await?;
            if n == 0 {
                return if spec.framing == BodyFraming::UntilClose {
                    Ok(written)
                } else {
                    Err(BodyError::SourceClosed)
                };
            }
        }
        let (take, done, out) = match spec.framing {
            BodyFraming::Length(_) => {
                let take = (src.buf.len() as u64).min(remaining) as usize;
                remaining -= take as u64;
                (take, remaining == 0, None)
            }
            BodyFraming::Chunked => {
                let mut decoded = spec.dechunk.then(BytesMut::new);
                let window = &src.buf[..];
                let progress = chunked
                    .feed(window, |r| {
                        if let Some(d) = decoded.as_mut() {
                            d.extend_from_slice(&window[r]);
                        }
                    })
                    .map_err(BodyError::Malformed)?;
                (
                    progress.consumed,
                    progress.done,
                    decoded.map(BytesMut::freeze),
                )
            }
            _ => (src.buf.len(), false, None),
        };
        seen += take as u64;
        if spec.max_bytes.is_some_and(|max| seen > max) {
            return Err(BodyError::TooLarge);
        }
        let piece: Bytes = src.buf.split_to(take).freeze();
        let piece = out.unwrap_or(piece);
        if !piece.is_empty() {
            written += piece.len() as u64;
            sink.put(piece, spec.write_timeout, done).await?;
        }
        if done {
            return Ok(written);
        }
    }
}

impl From<crate::transport::ReadError> for BodyError {
    fn from(e: crate::transport::ReadError) -> Self {
        match e {
            crate::transport::ReadError::TimedOut => BodyError::Stalled,
            crate::transport::ReadError::Io(e) => BodyError::SourceIo(e),
        }
    }
}
