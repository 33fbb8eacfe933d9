//! A run's reload requests: they coalesce, and none is lost.
//!
//! The signal lives in the run, not in something every child keeps across its runs: a pool of
//! 100,000 children that are never restarted should not pay an allocation each for it. A
//! request that a run did not take before it ended is carried to the child's next run by its
//! supervisor (see [`ReloadSignal::is_pending`]), as is one made while no run was up.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct ReloadSignal {
    pending: AtomicBool,
    waiters: Notify,
}

impl ReloadSignal {
    /// A signal for a new run; `pending` carries a request its child had not taken yet.
    pub(crate) fn new(pending: bool) -> Self {
        Self {
            pending: AtomicBool::new(pending),
            waiters: Notify::new(),
        }
    }

    /// Requests a reload; requests not yet taken count as one.
    pub(crate) fn request(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.waiters.notify_waiters();
    }

    /// Whether a request is waiting to be taken.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Completes when a request is waiting, and takes it: of several waiters, one completes per
    /// request. Cancel-safe: a request is taken only by the poll that completes.
    pub(crate) async fn requested(&self) {
        loop {
            // Made before the flag is read, so that a request in between still wakes it.
            let notified = self.waiters.notified();
            if self.pending.swap(false, Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_coalesce_and_are_kept_until_taken() {
        let signal = ReloadSignal::new(false);
        signal.request();
        signal.request();
        assert!(signal.is_pending());
        signal.requested().await;
        assert!(!signal.is_pending());
        let again = tokio::time::timeout(Duration::from_millis(20), signal.requested()).await;
        assert!(
            again.is_err(),
            "two requests before the first wait count as one"
        );
    }

    #[tokio::test]
    async fn a_carried_request_is_taken_by_the_first_wait() {
        ReloadSignal::new(true).requested().await;
    }

    #[tokio::test(start_paused = true)]
    async fn one_waiter_completes_per_request() {
        let signal = Arc::new(ReloadSignal::new(false));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let signal = Arc::clone(&signal);
                tokio::spawn(async move { signal.requested().await })
            })
            .collect();
        tokio::task::yield_now().await;
        signal.request();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let done = waiters.iter().filter(|w| w.is_finished()).count();
        assert_eq!(done, 1);
        for waiter in waiters {
            waiter.abort();
        }
    }
}
