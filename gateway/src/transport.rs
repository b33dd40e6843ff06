//! A client or upstream stream with its read buffer, for monoio's owned-buffer I/O.
//!
//! Client streams are plain TCP or TLS (rustls driven through monoio's poll-io and
//! adapted back to owned-buffer I/O by [`PollStream`]); [`ClientStream`] says what the
//! request path may do with each.
//!
//! monoio's `read(buf)` writes from index 0 and would overwrite what the buffer holds,
//! so every read here goes into the spare capacity (`slice_mut(len..cap)`) and appends.
//! A read in flight owns the buffer; if its future is dropped (a timeout) the buffer is
//! lost with it, which is fine because the connection is closed in that case.
//!
//! Idle connections hold no buffer: `fill_within` waits with a cancelable read for a
//! short while (the fast path of busy keep-alive clients), then gives the buffer back,
//! and the caller waits for readiness alone (see `proxy::client_h1::serve_conn`).

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use monoio::BufResult;

/// What the request path needs from a client stream beyond reading and writing.
pub trait ClientStream: AsyncReadRent + AsyncWriteRent {
    /// Plain TCP: an idle connection gives its read buffer back and waits for
    /// readiness alone. Otherwise a read stays in flight while idle.
    const BUFFERLESS_IDLE: bool;
    /// The connection may start with the HTTP/2 preface (h2c with prior knowledge).
    const PRIOR_KNOWLEDGE_H2: bool;
    /// "http" or "https", for the forwarding headers.
    const SCHEME: &'static str;

    /// Reads into `buf` unless `hold` completes first. `Ok(None)`: nothing came; the
    /// buffer is handed back when the read could be cancelled (`None` buffer when not).
    fn read_or_hold<B: IoBufMut>(
        &mut self,
        buf: B,
        hold: impl Future<Output = ()>,
    ) -> impl Future<Output = (io::Result<Option<usize>>, Option<B>)>;

    /// Waits until bytes (or EOF) are ready; only called when `BUFFERLESS_IDLE`.
    fn readable(&mut self) -> impl Future<Output = bool>;
}

impl ClientStream for TcpStream {
    const BUFFERLESS_IDLE: bool = true;
    const PRIOR_KNOWLEDGE_H2: bool = true;
    const SCHEME: &'static str = "http";

    async fn read_or_hold<B: IoBufMut>(
        &mut self,
        buf: B,
        hold: impl Future<Output = ()>,
    ) -> (io::Result<Option<usize>>, Option<B>) {
        let canceller = Canceller::new();
        let (res, buf) = {
            let mut read = std::pin::pin!(self.cancelable_read(buf, canceller.handle()));
            monoio::select! {
                r = &mut read => r,
                _ = hold => {
                    let _ = canceller.cancel();
                    read.await
                }
            }
        };
        match res {
            Ok(n) => (Ok(Some(n)), Some(buf)),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => (Ok(None), Some(buf)),
            Err(e) => (Err(e), Some(buf)),
        }
    }

    async fn readable(&mut self) -> bool {
        TcpStream::readable(self, false).await.is_ok()
    }
}

/// A poll-based stream (rustls over monoio's poll-io) behind monoio's owned-buffer
/// traits. Poll reads move data only when they complete, so dropping one loses nothing.
pub struct PollStream<T>(pub T);

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> ClientStream for PollStream<T> {
    const BUFFERLESS_IDLE: bool = false;
    const PRIOR_KNOWLEDGE_H2: bool = false;
    const SCHEME: &'static str = "https";

    async fn read_or_hold<B: IoBufMut>(
        &mut self,
        buf: B,
        hold: impl Future<Output = ()>,
    ) -> (io::Result<Option<usize>>, Option<B>) {
        monoio::select! {
            r = self.read(buf) => match r {
                (Ok(n), buf) => (Ok(Some(n)), Some(buf)),
                (Err(e), buf) => (Err(e), Some(buf)),
            },
            _ = hold => (Ok(None), None),
        }
    }

    async fn readable(&mut self) -> bool {
        false
    }
}

impl<T: tokio::io::AsyncRead + Unpin> AsyncReadRent for PollStream<T> {
    async fn read<B: IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        let total = buf.bytes_total();
        // SAFETY: `write_ptr` is valid for `bytes_total` bytes, which ReadBuf treats as
        // uninitialized; only the `n` bytes it filled are then marked initialized.
        let spare = unsafe {
            std::slice::from_raw_parts_mut(buf.write_ptr().cast::<MaybeUninit<u8>>(), total)
        };
        let mut read_buf = tokio::io::ReadBuf::uninit(spare);
        let res = poll_fn(|cx| Pin::new(&mut self.0).poll_read(cx, &mut read_buf)).await;
        let n = read_buf.filled().len();
        match res {
            Ok(()) => {
                // SAFETY: ReadBuf filled exactly `n` bytes from the start.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<B: IoVecBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        // SAFETY: the first iovec, as a plain buffer, lives as long as `buf`.
        let n = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(raw) => self.read(raw).await.0,
            None => Ok(0),
        };
        if let Ok(n) = n {
            // SAFETY: `n` bytes of the first iovec were written.
            unsafe { buf.set_init(n) };
        }
        (n, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> AsyncWriteRent for PollStream<T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: `read_ptr` is valid for `bytes_init` bytes while we hold `buf`.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = poll_fn(|cx| Pin::new(&mut self.0).poll_write(cx, data)).await;
        // TLS keeps records it could not write yet; push them out now, as a socket write
        // would have.
        let res = match res {
            Ok(n) => poll_fn(|cx| Pin::new(&mut self.0).poll_flush(cx))
                .await
                .map(|()| n),
            Err(e) => Err(e),
        };
        (res, buf)
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: the first iovec, as a plain buffer, lives as long as `buf`.
        let res = match unsafe { RawBuf::new_from_iovec(&buf) } {
            Some(raw) => self.write(raw).await.0,
            None => Ok(0),
        };
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| Pin::new(&mut self.0).poll_flush(cx)).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        poll_fn(|cx| Pin::new(&mut self.0).poll_shutdown(cx)).await
    }
}

#[derive(Debug)]
pub enum ReadError {
    TimedOut,
    Io(io::Error),
}

/// TLS to an upstream: rustls (tokio-rustls) over monoio's poll-io.
pub type TlsToUpstream =
    tokio_rustls::client::TlsStream<monoio::net::tcp::stream_poll::TcpStreamPoll>;

/// An upstream connection: plain TCP, or TLS where the cluster asks for it.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<PollStream<TlsToUpstream>>),
}

impl AsyncReadRent for UpstreamStream {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(s) => s.read(buf).await,
        }
    }
    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf).await,
            UpstreamStream::Tls(s) => s.write(buf).await,
        }
    }
    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            UpstreamStream::Plain(s) => s.writev(buf).await,
            UpstreamStream::Tls(s) => s.writev(buf).await,
        }
    }
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush().await,
            UpstreamStream::Tls(s) => s.flush().await,
        }
    }
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.shutdown().await,
            UpstreamStream::Tls(s) => s.shutdown().await,
        }
    }
}

impl std::os::fd::AsRawFd for UpstreamStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            UpstreamStream::Plain(s) => s.as_raw_fd(),
            UpstreamStream::Tls(s) => s.0.get_ref().0.as_raw_fd(),
        }
    }
}

pub struct Conn<S = TcpStream> {
    pub stream: S,
    pub buf: BytesMut,
}

/// Buffers released while idle are this size when taken back.
const INITIAL_READ: usize = 4096;

impl<S: AsyncReadRent> Conn<S> {
    pub fn new(stream: S) -> Conn<S> {
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
        match Instant::now().checked_add(limit) {
            Some(deadline) => self.fill_until(want, deadline).await,
            // A limit past the clock's range is no limit.
            None => self.fill(want).await.map_err(ReadError::Io),
        }
    }

    /// Like `fill_with_timeout`, against a deadline that may span several reads (a
    /// head arriving in pieces): the caller reads the clock once, and a deadline
    /// already past times out at once.
    pub async fn fill_until(&mut self, want: usize, deadline: Instant) -> Result<usize, ReadError> {
        let at = monoio::time::Instant::from_std(deadline);
        match monoio::time::timeout_at(at, self.fill(want)).await {
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
    ) -> Result<Option<usize>, ReadError>
    where
        S: ClientStream,
    {
        let slice = self.spare(INITIAL_READ);
        let (res, slice) = self.stream.read_or_hold(slice, hold).await;
        self.buf = slice.map(SliceMut::into_inner).unwrap_or_default();
        match res {
            Ok(Some(n)) => Ok(Some(n)),
            Ok(None) => {
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

/// A poll-based stream that shows every byte read from it to `on_read` as it passes
/// (a tunnel noting when it last moved, an upstream h2 connection's frame walk for
/// GOAWAY); writes go through untouched.
pub struct ReadTap<T, F> {
    pub inner: T,
    pub on_read: F,
}

impl<T: tokio::io::AsyncRead + Unpin, F: FnMut(&[u8]) + Unpin> tokio::io::AsyncRead
    for ReadTap<T, F>
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            (this.on_read)(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin, F: Unpin> tokio::io::AsyncWrite for ReadTap<T, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
