//! The health checker's clock. Every wait of every check (until its next check, until
//! its answer has landed, until its deadline) ends on one grid of `TICK`s kept by one
//! timer, so a thousand endpoints checked every second cost the checker a few dozen
//! wakeups a second and a single timer, rather than a wakeup per answer and two to
//! three timers per check in the runtime's wheel (measured with the `health-checks`
//! bench: the wheel cascading a thousand cold timer entries was the largest
//! user-space cost of checking).
//!
//! A check paces itself on a stride of the grid (`Pace`): checks of an endpoint start
//! `interval` apart, on the stride nearest to that, and the stride is at most a
//! twentieth of the interval and a tenth of the timeout (but at least one tick), so a
//! schedule slips by no more than 5% and an answer is read no later than a tenth of
//! its timeout after it could have been (an answer to a check whose timeout is under
//! ten strides is read when it lands). Strides are multiples of one tick counted from
//! one epoch, so checks of different strides still wake together.
//!
//! Invariants: single-threaded (the checker's runtime, hence `Rc`). A waiter is woken
//! once the grid has reached its tick, never before. The ticker's timer is set for the
//! earliest tick anyone waits for; a waiter that wants an earlier one wakes the ticker
//! to set it again; with nobody waiting there is no timer.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One tick of the grid: the finest a check's wait can be.
pub const TICK: Duration = Duration::from_millis(10);
/// The coarsest stride a check paces itself on.
const MAX_STRIDE: Tick = 10;

/// A point on the grid: ticks since its epoch.
pub type Tick = u64;

pub struct Grid {
    epoch: Instant,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// The last tick the ticker reached: every waiter for it or before has been woken.
    reached: Tick,
    waiting: BTreeMap<Tick, Vec<Waker>>,
    /// The ticker's task, woken to set its timer again.
    ticker: Option<Waker>,
    /// The tick the ticker's timer is set for (`None`: no timer).
    planned: Option<Tick>,
}

impl Grid {
    /// A grid whose ticker runs as a task of the current (monoio) runtime.
    pub fn start() -> Rc<Grid> {
        let grid = Rc::new(Grid {
            epoch: Instant::now(),
            state: RefCell::default(),
        });
        monoio::spawn(Ticker {
            grid: grid.clone(),
            sleep: Box::pin(monoio::time::sleep(Duration::ZERO)),
            woken: Vec::new(),
        });
        grid
    }

    /// The tick `at` falls on, rounded up: a wait for it never ends before `at`.
    pub fn tick_at(&self, at: Instant) -> Tick {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        since.div_ceil(TICK.as_nanos()) as Tick
    }

    /// The tick the grid has reached: where a waiter it woke stands.
    pub fn reached(&self) -> Tick {
        self.state.borrow().reached
    }

    /// Waits until the grid reaches `tick` (at once where it has).
    pub fn until(self: &Rc<Self>, tick: Tick) -> Until {
        Until {
            grid: self.clone(),
            tick,
            registered: None,
        }
    }

    /// Waits `wait`, or up to `MAX_STRIDE` ticks more: the checker's own waits (its
    /// supervisor's) share the checks' wakeups, which every stride meets there.
    pub fn after(self: &Rc<Self>, wait: Duration) -> Until {
        let tick = self.tick_at(Instant::now() + wait);
        self.until(tick.div_ceil(MAX_STRIDE) * MAX_STRIDE)
    }

    fn instant(&self, tick: Tick) -> monoio::time::Instant {
        let at = self.epoch + Duration::from_nanos(tick.saturating_mul(TICK.as_nanos() as u64));
        monoio::time::Instant::from_std(at)
    }

    /// The last tick whose moment has passed.
    fn now(&self) -> Tick {
        let since = self.epoch.elapsed().as_nanos();
        (since / TICK.as_nanos()) as Tick
    }
}

/// `Grid::until`'s future.
pub struct Until {
    grid: Rc<Grid>,
    tick: Tick,
    registered: Option<Waker>,
}

impl Future for Until {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut state = this.grid.state.borrow_mut();
        if state.reached >= this.tick {
            return Poll::Ready(());
        }
        // Registered once: a task polls with the same waker each time (a different one
        // registers again; the old one would only wake its task for nothing).
        if this
            .registered
            .as_ref()
            .is_none_or(|w| !w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            state
                .waiting
                .entry(this.tick)
                .or_default()
                .push(waker.clone());
            this.registered = Some(waker);
            if state.planned.is_none_or(|planned| planned > this.tick) {
                if let Some(ticker) = &state.ticker {
                    ticker.wake_by_ref();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Until {
    /// A wait given up (a check's deadline when the check is done) leaves nothing
    /// behind: no wakeup for nothing, no timer for a tick nobody waits for.
    fn drop(&mut self) {
        let Some(mine) = self.registered.take() else {
            return;
        };
        let Ok(mut state) = self.grid.state.try_borrow_mut() else {
            return;
        };
        if state.reached >= self.tick {
            return;
        }
        let Some(bucket) = state.waiting.get_mut(&self.tick) else {
            return;
        };
        if let Some(i) = bucket.iter().position(|w| w.will_wake(&mine)) {
            bucket.swap_remove(i);
        }
        if bucket.is_empty() {
            state.waiting.remove(&self.tick);
            if state.planned == Some(self.tick) {
                if let Some(ticker) = &state.ticker {
                    ticker.wake_by_ref();
                }
            }
        }
    }
}

/// The task that moves the grid on: it sleeps until the earliest tick waited for and
/// wakes everyone waiting up to it.
struct Ticker {
    grid: Rc<Grid>,
    sleep: Pin<Box<monoio::time::Sleep>>,
    /// The wakers of one tick, kept to spare an allocation each time.
    woken: Vec<Waker>,
}

impl Future for Ticker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut timer_rang = None;
        loop {
            let planned = {
                let mut state = this.grid.state.borrow_mut();
                if state
                    .ticker
                    .as_ref()
                    .is_none_or(|w| !w.will_wake(cx.waker()))
                {
                    state.ticker = Some(cx.waker().clone());
                }
                // The timer's word counts even if the clock reads a hair short of it.
                let now = this.grid.now().max(timer_rang.unwrap_or(0));
                let reached = state.reached.max(now);
                state.reached = reached;
                while let Some(due) = state.waiting.first_entry() {
                    if *due.key() > reached {
                        break;
                    }
                    this.woken.append(&mut due.remove());
                }
                state.planned = state.waiting.first_key_value().map(|(&tick, _)| tick);
                state.planned
            };
            // Outside the borrow: a woken task runs later, but a waker may be anything.
            for waker in this.woken.drain(..) {
                waker.wake();
            }
            let Some(tick) = planned else {
                return Poll::Pending;
            };
            let at = this.grid.instant(tick);
            if this.sleep.deadline() != at {
                this.sleep.as_mut().reset(at);
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            timer_rang = Some(tick);
        }
    }
}

/// How one check waits on the grid: its stride, and whether it reads answers late.
#[derive(Clone)]
pub struct Pace {
    grid: Rc<Grid>,
    stride: Tick,
    /// Answers are read at the next stride after the request went rather than when
    /// they land: only where that delay is at most a tenth of the timeout.
    settle: bool,
}

impl Pace {
    pub fn new(grid: Rc<Grid>, interval: Duration, timeout: Duration) -> Pace {
        let finest = (interval / 20).min(timeout / 10);
        let stride = ((finest.as_nanos() / TICK.as_nanos()) as Tick).clamp(1, MAX_STRIDE);
        Pace {
            grid,
            stride,
            settle: timeout >= TICK * stride as u32 * 10,
        }
    }

    /// The stride's first tick at or after `tick`.
    fn on_stride(&self, tick: Tick) -> Tick {
        tick.div_ceil(self.stride) * self.stride
    }

    /// When the first check is due: `delay` from now.
    pub fn first(&self, delay: Duration) -> Tick {
        self.on_stride(self.grid.tick_at(Instant::now() + delay))
    }

    /// When the check after the one due at `due` is: `wait` after it, on the nearest
    /// tick of the stride, and after the grid's present.
    pub fn next(&self, due: Tick, wait: Duration) -> Tick {
        let ticks = (wait.as_nanos() + TICK.as_nanos() / 2) / TICK.as_nanos();
        let planned = due.saturating_add(ticks as Tick);
        let nearest = (planned + self.stride / 2) / self.stride * self.stride;
        nearest.max(self.on_stride(self.grid.reached() + 1))
    }

    /// Waits until `tick`.
    pub fn until(&self, tick: Tick) -> Until {
        self.grid.until(tick)
    }

    /// `probe`'s outcome, or `None` once `timeout` has passed (at the tick after it):
    /// a deadline on the grid, not a timer of its own in the runtime's wheel, which
    /// wakes to cascade it however soon it is cancelled.
    pub async fn within<F: Future>(&self, timeout: Duration, probe: F) -> Option<F::Output> {
        let mut probe = std::pin::pin!(probe);
        let mut deadline = self.grid.until(self.grid.tick_at(Instant::now() + timeout));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = probe.as_mut().poll(cx) {
                return Poll::Ready(Some(outcome));
            }
            Pin::new(&mut deadline).poll(cx).map(|()| None)
        })
        .await
    }

    /// Where answers settle: waits until the next tick of the stride.
    pub async fn settle(&self) {
        if self.settle {
            self.grid
                .until(self.on_stride(self.grid.reached() + 1))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// `future` on an epoll runtime with timers, as the checker runs where io_uring
    /// is missing.
    fn block_on<F: Future>(future: F) -> F::Output {
        crate::runtime::driver::Driver::Epoll
            .block_on(future)
            .expect("runtime")
    }

    #[test]
    fn waiters_wake_in_order_and_never_before_their_tick() {
        block_on(async {
            let grid = Grid::start();
            let order = Rc::new(RefCell::new(Vec::new()));
            let base = grid.tick_at(Instant::now());
            let mut tasks = Vec::new();
            // Registered latest first: the ticker must set its timer earlier each time.
            for ticks in [9u64, 3, 6, 1] {
                let (grid, order) = (grid.clone(), order.clone());
                tasks.push(monoio::spawn(async move {
                    let tick = base + ticks;
                    grid.until(tick).await;
                    let late = grid.tick_at(Instant::now());
                    assert!(late >= tick, "woken at tick {late} for {tick}");
                    order.borrow_mut().push(ticks);
                }));
            }
            for task in tasks {
                task.await;
            }
            assert_eq!(*order.borrow(), [1, 3, 6, 9]);
            assert_eq!(grid.state.borrow().planned, None, "nobody waits: no timer");
        });
    }

    #[test]
    fn a_wait_for_a_tick_passed_ends_at_once_and_a_dropped_wait_harms_nothing() {
        block_on(async {
            let grid = Grid::start();
            let now = grid.tick_at(Instant::now());
            grid.until(now + 2).await;
            let started = Instant::now();
            grid.until(now).await;
            assert!(started.elapsed() < TICK);
            let dropped = monoio::time::timeout(TICK, grid.until(now + 50)).await;
            assert!(dropped.is_err());
            let woke = Rc::new(Cell::new(false));
            let flag = woke.clone();
            let g = grid.clone();
            monoio::spawn(async move {
                g.until(now + 5).await;
                flag.set(true);
            })
            .await;
            assert!(woke.get());
        });
    }

    #[test]
    fn a_check_paces_on_a_stride_of_its_interval_and_timeout() {
        block_on(async {
            let grid = Grid::start();
            let pace = |interval: u64, timeout: u64| {
                Pace::new(
                    grid.clone(),
                    Duration::from_millis(interval),
                    Duration::from_millis(timeout),
                )
            };
            let p = pace(1000, 500);
            assert_eq!((p.stride, p.settle), (5, true));
            let p = pace(5000, 1000);
            assert_eq!((p.stride, p.settle), (MAX_STRIDE, true));
            let p = pace(1000, 50);
            assert_eq!(
                (p.stride, p.settle),
                (1, false),
                "a short timeout reads at once"
            );
            let p = pace(100, 500);
            assert_eq!((p.stride, p.settle), (1, true));
            // Start to start: `interval` apart exactly where it is a whole stride, and
            // on the stride's nearest tick otherwise.
            let p = pace(1000, 500);
            let due = p.first(Duration::ZERO);
            assert_eq!(due % 5, 0);
            assert_eq!(p.next(due, Duration::from_millis(1000)), due + 100);
            assert_eq!(p.next(due, Duration::from_millis(1020)), due + 100);
            assert_eq!(p.next(due, Duration::from_millis(1030)), due + 105);
            // A check that ran past its next start goes again at the next stride.
            let reached = grid.reached();
            assert!(p.next(0, Duration::ZERO) > reached);
        });
    }

    #[test]
    fn a_deadline_cuts_a_probe_short_and_leaves_nothing_behind_when_it_is_met() {
        block_on(async {
            let grid = Grid::start();
            let pace = Pace::new(
                grid.clone(),
                Duration::from_secs(1),
                Duration::from_millis(500),
            );
            let never = std::future::pending::<()>();
            let started = Instant::now();
            assert_eq!(pace.within(Duration::from_millis(30), never).await, None);
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(30) && took < Duration::from_millis(30) + TICK * 5,
                "{took:?}"
            );
            let quick = monoio::time::sleep(Duration::from_millis(5));
            assert_eq!(pace.within(Duration::from_secs(60), quick).await, Some(()));
            // Let the ticker see the deadline go.
            monoio::time::sleep(TICK * 2).await;
            let state = grid.state.borrow();
            assert!(
                state.waiting.is_empty(),
                "the met deadline is not waited for"
            );
            assert_eq!(state.planned, None, "and no timer is set for it");
        });
    }
}
