//! The request body as kept for a second sending: a retry's, a mirror's.
//!
//! The body streams upstream as it comes (never held back for this); a copy is kept
//! beside it up to a limit. Past the limit the copy is dropped and the body can be
//! sent only once (counted by whoever needed it); a body with trailers is not kept
//! either (a second sending would lose them).

use std::cell::{Cell, RefCell, RefMut};
use std::future::Future;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};

pub struct KeptBody {
    limit: usize,
    state: RefCell<State>,
    /// Who waits for keeping to be over (`settled`): woken when it is.
    waiter: Cell<Option<Waker>>,
}

enum State {
    Keeping(BytesMut),
    Kept(Bytes),
    /// Past the limit (`too_large`), or with trailers.
    Abandoned {
        too_large: bool,
    },
}

impl KeptBody {
    pub fn new(limit: usize) -> KeptBody {
        KeptBody {
            limit,
            state: RefCell::new(State::Keeping(BytesMut::new())),
            waiter: Cell::new(None),
        }
    }

    /// Keeps a piece taken from the client.
    pub fn keep(&self, piece: &[u8]) {
        let mut state = self.state.borrow_mut();
        if let State::Keeping(kept) = &mut *state {
            if kept.len() + piece.len() > self.limit {
                self.end(state, State::Abandoned { too_large: true });
            } else {
                kept.extend_from_slice(piece);
            }
        }
    }

    /// The whole body was taken (and kept, if it fit).
    pub fn complete(&self) {
        let mut state = self.state.borrow_mut();
        if let State::Keeping(kept) = &mut *state {
            let whole = kept.split().freeze();
            self.end(state, State::Kept(whole));
        }
    }

    /// The body cannot be sent again as kept (it had trailers).
    pub fn abandon(&self) {
        let state = self.state.borrow_mut();
        if !matches!(*state, State::Abandoned { .. }) {
            self.end(state, State::Abandoned { too_large: false });
        }
    }

    /// The whole body, once it was all taken and kept.
    pub fn kept(&self) -> Option<Bytes> {
        match &*self.state.borrow() {
            State::Kept(b) => Some(b.clone()),
            _ => None,
        }
    }

    /// Whether keeping is over: the body was kept whole, or given up.
    pub fn settled(&self) -> bool {
        !matches!(*self.state.borrow(), State::Keeping(_))
    }

    /// Resolves once keeping is over (`settled`), woken by the call that settles it.
    pub fn wait_settled(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.settled() {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }

    /// Ends keeping as `to`, and wakes whoever waits for that (after the borrow, so
    /// a waiter polled at once can look).
    fn end(&self, mut state: RefMut<'_, State>, to: State) {
        *state = to;
        drop(state);
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    /// Whether the body was longer than the limit.
    pub fn too_large(&self) -> bool {
        matches!(*self.state.borrow(), State::Abandoned { too_large: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_kept_whole_or_not_at_all() {
        let k = KeptBody::new(8);
        k.keep(b"abcd");
        k.keep(b"efgh");
        assert_eq!(k.kept(), None, "not complete yet");
        k.complete();
        assert_eq!(k.kept().as_deref(), Some(&b"abcdefgh"[..]));
        let big = KeptBody::new(8);
        big.keep(b"abcdefghi");
        big.complete();
        assert_eq!((big.kept(), big.too_large()), (None, true));
        let trailed = KeptBody::new(8);
        trailed.keep(b"ab");
        trailed.abandon();
        trailed.complete();
        assert_eq!((trailed.kept(), trailed.too_large()), (None, false));
    }

    #[test]
    fn a_waiter_is_woken_when_keeping_ends() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::task::{Context, Wake};

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        for settle in [KeptBody::complete, KeptBody::abandon] {
            let k = KeptBody::new(8);
            let before = woken.0.load(Ordering::Relaxed);
            let mut wait = std::pin::pin!(k.wait_settled());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            k.keep(b"ab");
            assert_eq!(
                woken.0.load(Ordering::Relaxed),
                before,
                "a piece is not the end"
            );
            settle(&k);
            assert_eq!(woken.0.load(Ordering::Relaxed), before + 1);
            assert!(wait.as_mut().poll(&mut cx).is_ready());
        }
        // Past the limit, keeping ends too.
        let k = KeptBody::new(2);
        let before = woken.0.load(Ordering::Relaxed);
        let mut wait = std::pin::pin!(k.wait_settled());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        k.keep(b"abc");
        assert_eq!(woken.0.load(Ordering::Relaxed), before + 1);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }
}
