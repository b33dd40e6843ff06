//! Coarse per-worker deadlines for idle connections.
//!
//! monoio's `Sleep` is 640 bytes and lives inline in the future that awaits it, so a
//! timer per idle connection would dominate what an idle connection costs. Idle
//! timeouts do not need millisecond precision: a `Deadline` here is a slot in a
//! worker-owned slab (a few dozen bytes), and the worker's housekeeping tick wakes the
//! expired ones. Precision is the tick (100 ms); a dropped `Deadline` frees its slot.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

#[derive(Default)]
pub struct CoarseTimers {
    slots: RefCell<Slots>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<(Instant, Waker)>>,
    free: Vec<usize>,
}

impl CoarseTimers {
    /// A future that completes at (or up to one tick after) `at`.
    pub fn deadline(&self, at: Instant) -> Deadline<'_> {
        Deadline {
            timers: self,
            at,
            slot: None,
        }
    }

    /// Wakes every deadline that has passed; called by the worker's tick.
    pub fn fire_expired(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            for entry in slots.entries.iter_mut() {
                if entry.as_ref().is_some_and(|(at, _)| *at <= now) {
                    if let Some((_, waker)) = entry.take() {
                        expired.push(waker);
                    }
                }
            }
        }
        // Wake outside the borrow: a woken future may register again.
        for w in expired {
            w.wake();
        }
    }

    pub fn pending(&self) -> usize {
        self.slots
            .borrow()
            .entries
            .iter()
            .filter(|e| e.is_some())
            .count()
    }
}

pub struct Deadline<'a> {
    timers: &'a CoarseTimers,
    at: Instant,
    slot: Option<usize>,
}

impl Future for Deadline<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            self.release();
            return Poll::Ready(());
        }
        let entry = Some((self.at, cx.waker().clone()));
        let mut slots = self.timers.slots.borrow_mut();
        match self.slot {
            Some(i) => slots.entries[i] = entry,
            None => {
                let i = match slots.free.pop() {
                    Some(i) => {
                        slots.entries[i] = entry;
                        i
                    }
                    None => {
                        slots.entries.push(entry);
                        slots.entries.len() - 1
                    }
                };
                drop(slots);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Deadline<'_> {
    fn release(&mut self) {
        if let Some(i) = self.slot.take() {
            let mut slots = self.timers.slots.borrow_mut();
            slots.entries[i] = None;
            slots.free.push(i);
        }
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_after_deadline_and_frees_slots() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let timers = std::rc::Rc::new(CoarseTimers::default());
            let t2 = timers.clone();
            monoio::spawn(async move {
                loop {
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    t2.fire_expired(Instant::now());
                }
            });
            let started = Instant::now();
            timers.deadline(started + Duration::from_millis(50)).await;
            assert!(started.elapsed() >= Duration::from_millis(50));
            assert_eq!(timers.pending(), 0);
            {
                let d = timers.deadline(Instant::now() + Duration::from_secs(60));
                let mut d = std::pin::pin!(d);
                let waker = futures_noop_waker();
                let mut cx = Context::from_waker(&waker);
                assert!(d.as_mut().poll(&mut cx).is_pending());
                assert_eq!(timers.pending(), 1);
            }
            assert_eq!(timers.pending(), 0, "dropping a deadline frees its slot");
        });
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }
}
