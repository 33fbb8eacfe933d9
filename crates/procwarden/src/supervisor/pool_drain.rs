//! The end of a pool's stop, counted rather than told.
//!
//! A dynamic pool stops all its children at once. If each exit were a message, a pool of 100,000
//! would have its supervisor read 100,000 messages one after the other, only to learn that they
//! are all gone. So a supervisor counts the tasks of its runs, as tokio-util's `TaskTracker`
//! does, and when a pool stops with no one to tell of each exit (no event subscriber, no debug
//! log), its runs end silently and the last one to end wakes the supervisor.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

/// The tasks of a supervisor's runs still alive, and whether their exits go untold.
#[derive(Debug, Default)]
pub(crate) struct PoolDrain {
    tasks: AtomicUsize,
    silent: AtomicBool,
    /// The supervisor, once silent: woken when the last task ends.
    waker: AtomicWaker,
}

impl PoolDrain {
    /// For the supervisor, before it spawns a run's task.
    pub(crate) fn task_started(&self) {
        self.tasks.fetch_add(1, Ordering::Relaxed);
    }

    /// For a run's task as it ends, however it ends.
    pub(crate) fn task_ended(&self) {
        // SeqCst here and in `go_silent`/`poll_drained`: either the last task sees the flag and
        // wakes the supervisor, or the supervisor sees the count at zero.
        if self.tasks.fetch_sub(1, Ordering::SeqCst) == 1 && self.silent.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// For the supervisor of a pool that stops unobserved: from now on runs end without a word.
    pub(crate) fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    /// For a run that ends: whether its supervisor no longer needs to be told.
    pub(crate) fn is_silent(&self) -> bool {
        self.silent.load(Ordering::Acquire)
    }

    /// For the supervisor, once silent: ready when every task has ended; if not, `cx` is woken
    /// when the last one does.
    pub(crate) fn poll_drained(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.is_drained() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Checked again: the last task may have ended before the registration.
        if self.is_drained() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether the pool went silent and all its tasks have ended since.
    pub(crate) fn is_drained(&self) -> bool {
        self.silent.load(Ordering::SeqCst) && self.tasks.load(Ordering::SeqCst) == 0
    }
}
