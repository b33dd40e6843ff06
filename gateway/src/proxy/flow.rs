//! Sending DATA on an h2 stream without letting a peer that stops reading hold memory
//! or an exchange forever.
//!
//! Two bounds, both needed because h2 buffers per stream and a client may announce
//! windows of 2^31-1, so flow control alone holds nothing back:
//! - **Bytes per client connection** (`http2.max_send_buffer_bytes`): a `SendBudget`
//!   counts the DATA streams handed to h2 against the bytes the connection actually
//!   wrote to its socket (`Metered` counts them). A stream waits while the difference
//!   is at the cap, so what one connection queues is the cap plus at most one piece.
//!   Data h2 drops unwritten (a stream reset with data queued) is never written, so a
//!   stream that ends without finishing gives back what it handed (`Pace`'s drop), and
//!   a connection with no stream open starts counting afresh: the estimate can err
//!   low for a moment, never stay high and wedge a connection that reads again.
//! - **Time without progress** (`Pace::stall`, the idle timeout for clients): a wait
//!   for flow-control capacity or for room in the budget that lasts longer fails with
//!   `SendError::Stalled`, and the caller resets the stream, which frees what h2
//!   buffered for it and the upstream connection behind it.
//!
//! The fast path takes no timer: a deadline is armed only once a wait begins.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{Reason, SendStream};

use crate::runtime::wakers::{CoarseTimers, LocalSignal};

/// DATA a client connection's streams handed to h2 against what it wrote out.
pub struct SendBudget {
    cap: u64,
    /// Bytes handed to h2 and not yet written to the socket (an estimate: frame
    /// headers and control frames count as written too, so it errs towards room).
    queued: Cell<u64>,
    /// Since when streams have waited for room with nothing written to the socket
    /// (the client reading nothing); cleared by every write. Set by the first waiter,
    /// so the clock is read only when a wait begins, never per write.
    unread_since: Cell<Option<Instant>>,
    progress: LocalSignal,
}

impl SendBudget {
    pub fn new(cap: u64) -> SendBudget {
        SendBudget {
            cap,
            queued: Cell::new(0),
            unread_since: Cell::new(None),
            progress: LocalSignal::default(),
        }
    }

    #[cfg(test)]
    fn queued(&self) -> u64 {
        self.queued.get()
    }

    fn has_room(&self) -> bool {
        self.queued.get() < self.cap
    }

    fn handed(&self, n: usize) {
        self.queued.set(self.queued.get() + n as u64);
    }

    fn wrote(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.unread_since.set(None);
        if self.queued.get() > 0 {
            self.queued.set(self.queued.get().saturating_sub(n as u64));
            self.progress.notify();
        }
    }

    /// Gives back what a stream that ended unfinished handed (h2 dropped its queue).
    fn forgive(&self, n: u64) {
        self.queued.set(self.queued.get().saturating_sub(n));
        self.progress.notify();
    }

    /// No stream is open: what is still queued belongs to finished streams, which
    /// h2 writes or drops; count afresh.
    pub fn settle(&self) {
        self.queued.set(0);
    }
}

/// A client connection's transport, counting what h2 writes into its budget.
pub struct Metered<T> {
    pub inner: T,
    pub budget: Rc<SendBudget>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Metered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Metered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.budget.wrote(n);
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.budget.wrote(n);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How long a send on one stream may wait for the peer, and the connection budget it
/// draws on (client connections only; an upstream connection is shared and bounded by
/// h2's per-stream buffer and the cluster's timeouts).
pub struct Pace<'a> {
    timers: &'a CoarseTimers,
    stall: Duration,
    budget: Option<&'a SendBudget>,
    /// What this stream handed to h2, and whether it handed its end.
    handed: Cell<u64>,
    finished: Cell<bool>,
}

impl Drop for Pace<'_> {
    fn drop(&mut self) {
        if let (Some(b), false) = (self.budget, self.finished.get()) {
            b.forgive(self.handed.get());
        }
    }
}

#[derive(Debug)]
pub enum SendError {
    /// No window and no room in the budget for longer than `Pace::stall`.
    Stalled,
    /// The stream or connection failed.
    Stream(h2::Error),
}

impl<'a> Pace<'a> {
    pub fn new(timers: &'a CoarseTimers, stall: Duration, budget: Option<&'a SendBudget>) -> Self {
        Pace {
            timers,
            stall,
            budget,
            handed: Cell::new(0),
            finished: Cell::new(false),
        }
    }

    pub fn timers(&self) -> &'a CoarseTimers {
        self.timers
    }

    /// The stream ended normally by another frame than DATA (trailers): what it
    /// handed is h2's to write.
    pub fn finish(&self) {
        self.finished.set(true);
    }

    fn hand(&self, n: usize) {
        if let Some(b) = self.budget {
            b.handed(n);
            self.handed.set(self.handed.get() + n as u64);
        }
    }

    /// Waits until the connection's budget has room (at once, usually). The stall is
    /// the connection's: a client that has read nothing for `stall` stalls every stream
    /// waiting on it, however recently another stream's reset freed room (that frees
    /// memory, not progress).
    async fn room(&self) -> Result<(), SendError> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        while !budget.has_room() {
            let since = match budget.unread_since.get() {
                Some(t) => t,
                None => {
                    let now = Instant::now();
                    budget.unread_since.set(Some(now));
                    now
                }
            };
            let at = since + self.stall;
            if Instant::now() >= at {
                return Err(SendError::Stalled);
            }
            monoio::select! {
                _ = budget.progress.wait() => {}
                _ = self.timers.deadline(at) => {}
            }
        }
        Ok(())
    }

    /// Flow-control capacity for up to `want` bytes.
    async fn capacity(
        &self,
        send: &mut SendStream<Bytes>,
        want: usize,
    ) -> Result<usize, SendError> {
        send.reserve_capacity(want);
        let got = within(
            self.timers,
            self.stall,
            poll_fn(|cx| send.poll_capacity(cx)),
        )
        .await
        .ok_or(SendError::Stalled)?;
        match got {
            Some(Ok(n)) => Ok(n),
            Some(Err(e)) => Err(SendError::Stream(e)),
            None => Err(SendError::Stream(h2::Error::from(Reason::CANCEL))),
        }
    }
}

/// `fut`'s output, or `None` if it is still pending `stall` after it first was. It is
/// polled once before any deadline is armed: most waits are over at once.
pub async fn within<F: Future>(
    timers: &CoarseTimers,
    stall: Duration,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    if let Poll::Ready(v) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Some(v);
    }
    let deadline = timers.deadline(Instant::now() + stall);
    monoio::select! {
        v = fut => Some(v),
        _ = deadline => None,
    }
}

/// Sends `data` as the stream's flow-control window and the connection's budget allow,
/// so a slow reader holds the caller back; with `end`, the last frame ends the stream.
///
/// A small last piece (the whole of most responses) goes to h2 at once, window or not:
/// nothing is read behind it, and the response saves a capacity request and a wake-up.
/// Ending on the last DATA frame rather than an empty one after it matters: h2 peers
/// budget small non-final DATA frames (a flood defence), and a proxy that splits every
/// small message into two frames spends that budget for nothing.
pub async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    pace: &Pace<'_>,
) -> Result<(), SendError> {
    const SMALL_LAST: usize = 16 * 1024;
    loop {
        pace.room().await?;
        if end && data.len() <= SMALL_LAST {
            pace.hand(data.len());
            send.send_data(data, true).map_err(SendError::Stream)?;
            pace.finish();
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let n = pace.capacity(send, data.len()).await?;
        if n == 0 {
            continue;
        }
        let piece = data.split_to(n.min(data.len()));
        let last = end && data.is_empty();
        pace.hand(piece.len());
        send.send_data(piece, last).map_err(SendError::Stream)?;
        if last {
            pace.finish();
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_what_was_handed_against_what_was_written() {
        let b = SendBudget::new(100);
        assert!(b.has_room());
        b.handed(150);
        assert_eq!(b.queued(), 150);
        assert!(!b.has_room());
        b.wrote(60);
        assert_eq!(b.queued(), 90);
        assert!(b.has_room());
        // Frame headers are written too: never below zero.
        b.wrote(500);
        assert_eq!(b.queued(), 0);
    }

    #[test]
    fn an_unfinished_stream_gives_back_what_it_handed() {
        let timers = CoarseTimers::default();
        let b = SendBudget::new(100);
        {
            let pace = Pace::new(&timers, Duration::from_secs(1), Some(&b));
            pace.hand(120);
            assert!(!b.has_room());
        }
        assert_eq!(b.queued(), 0, "a reset stream's queue was dropped by h2");
        {
            let pace = Pace::new(&timers, Duration::from_secs(1), Some(&b));
            pace.hand(70);
            pace.finish();
        }
        assert_eq!(
            b.queued(),
            70,
            "a finished stream's data is still to be written"
        );
        b.settle();
        assert_eq!(b.queued(), 0);
    }
}
