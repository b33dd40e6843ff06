//! A TCP stream with its read buffer, for monoio's owned-buffer I/O.
//!
//! monoio's `read(buf)` writes from index 0 and would overwrite what the buffer holds,
//! so every read here goes into the spare capacity (`slice_mut(len..cap)`) and appends.
//! A read in flight owns the buffer; if its future is dropped (a timeout) the buffer is
//! lost with it, which is fine because the connection is closed in that case.
//!
//! Idle connections hold no buffer: `fill_within` waits with a cancelable read for a
//! short while (the fast path of busy keep-alive clients), then gives the buffer back,
//! and the caller waits for readiness alone (see `proxy::serve`).

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

    /// Reads the first bytes of the next message, holding a read buffer until `hold`
    /// completes. `Ok(Some(0))`: the peer closed. `Ok(None)`: nothing came; the buffer
    /// was given back, so the caller can wait for readiness alone, which holds none.
    pub async fn fill_within(
        &mut self,
        hold: impl std::future::Future<Output = ()>,
    ) -> Result<Option<usize>, ReadError> {
        let canceller = Canceller::new();
        let slice = self.spare(INITIAL_READ);
        let (res, slice) = {
            let mut read = std::pin::pin!(self.stream.cancelable_read(slice, canceller.handle()));
            monoio::select! {
                r = &mut read => r,
                _ = hold => {
                    let _ = canceller.cancel();
                    read.await
                }
            }
        };
        self.buf = slice.into_inner();
        match res {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                self.release_buffer();
                Ok(None)
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Drops the read buffer's memory if it holds nothing (before pooling or idling).
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}

/// A poll-based stream (for `h2`) that first yields bytes already read from it.
///
/// The connection's first bytes are read the monoio way (to see whether they are the
/// HTTP/2 preface); they are replayed to h2 before anything new is read.
pub struct Replay<T> {
    pub head: BytesMut,
    pub inner: T,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Replay<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Replay<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
