//! A TCP stream with its read buffer, for monoio's owned-buffer I/O.
//!
//! monoio's `read(buf)` writes from index 0 and would overwrite what the buffer holds,
//! so every read here goes into the spare capacity (`slice_mut(len..cap)`) and appends.
//! A read in flight owns the buffer; if its future is dropped (a timeout) the buffer is
//! lost with it, which is fine because the connection is closed in that case.
//!
//! Idle connections hold no buffer: `wait_readable_idle` waits with a cancelable read
//! for a short while (fast path for busy keep-alive clients), then gives the buffer back
//! and waits for readiness alone until the idle timeout.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

#[derive(Debug)]
pub enum ReadError {
    TimedOut,
    Io(io::Error),
}

pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

/// Buffers released while idle are this size when taken back.
const INITIAL_READ: usize = 4096;

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }

    fn spare(&mut self, want: usize) -> SliceMut<BytesMut> {
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        buf.slice_mut(len..cap)
    }

    /// Reads more bytes behind what the buffer holds; `Ok(0)` is end of stream.
    pub async fn fill(&mut self, want: usize) -> io::Result<usize> {
        let slice = self.spare(want);
        let (res, slice) = self.stream.read(slice).await;
        self.buf = slice.into_inner();
        res
    }

    pub async fn fill_with_timeout(
        &mut self,
        want: usize,
        limit: Duration,
    ) -> Result<usize, ReadError> {
        match monoio::time::timeout(limit, self.fill(want)).await {
            Ok(r) => r.map_err(ReadError::Io),
            Err(_) => Err(ReadError::TimedOut),
        }
    }

    /// Waits for the next request on a keep-alive connection and reads its first bytes.
    /// Holds a read buffer only for `hold`; after that, waits for readiness with no
    /// buffer until `idle` has passed in all. `Ok(0)`: the peer closed.
    pub async fn fill_after_idle(
        &mut self,
        hold: Duration,
        idle: Duration,
    ) -> Result<usize, ReadError> {
        if hold >= idle {
            return self.fill_with_timeout(INITIAL_READ, idle).await;
        }
        let canceller = Canceller::new();
        let slice = self.spare(INITIAL_READ);
        let (res, slice) = {
            let mut read = std::pin::pin!(self.stream.cancelable_read(slice, canceller.handle()));
            monoio::select! {
                r = &mut read => r,
                _ = monoio::time::sleep(hold) => {
                    let _ = canceller.cancel();
                    read.await
                }
            }
        };
        self.buf = slice.into_inner();
        match res {
            Ok(n) => return Ok(n),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
        // Idle: give the buffer back and wait for the peer without one.
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        let rest = idle - hold;
        match monoio::time::timeout(rest, self.stream.readable(false)).await {
            Ok(Ok(())) => self.fill_with_timeout(INITIAL_READ, rest).await,
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Err(_) => Err(ReadError::TimedOut),
        }
    }

    /// Drops the read buffer's memory if it holds nothing (before pooling or idling).
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}
