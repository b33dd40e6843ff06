//! A test server's thread: its own tokio runtime running until the handle drops, then
//! told to stop and joined, so nothing outlives the test that started it.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs `serve(stopped)` on a new thread, on a current-thread runtime, or on one
    /// with `workers` threads when more than one; `stopped` completes when the handle
    /// drops, and `serve` should return then.
    pub fn spawn<F, Fut>(workers: usize, serve: F) -> Background
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let mut builder = if workers > 1 {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            let rt = builder.enable_all().build().expect("runtime");
            rt.block_on(serve(stopped));
        });
        Background {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
