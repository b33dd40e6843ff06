//! The request body as kept for a second sending: a retry's, a mirror's.
//!
//! The body streams upstream as it comes (never held back for this); a copy is kept
//! beside it up to a limit. Past the limit the copy is dropped and the body can be
//! sent only once (counted by whoever needed it); a body with trailers is not kept
//! either (a second sending would lose them).

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

pub struct KeptBody {
    limit: usize,
    state: RefCell<State>,
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
        }
    }

    /// Keeps a piece taken from the client.
    pub fn keep(&self, piece: &[u8]) {
        let mut state = self.state.borrow_mut();
        if let State::Keeping(kept) = &mut *state {
            if kept.len() + piece.len() > self.limit {
                *state = State::Abandoned { too_large: true };
            } else {
                kept.extend_from_slice(piece);
            }
        }
    }

    /// The whole body was taken (and kept, if it fit).
    pub fn complete(&self) {
        let mut state = self.state.borrow_mut();
        if let State::Keeping(kept) = &mut *state {
            *state = State::Kept(kept.split().freeze());
        }
    }

    /// The body cannot be sent again as kept (it had trailers).
    pub fn abandon(&self) {
        let mut state = self.state.borrow_mut();
        if !matches!(*state, State::Abandoned { .. }) {
            *state = State::Abandoned { too_large: false };
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
}
