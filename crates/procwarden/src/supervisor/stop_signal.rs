//! How one run of a child is told to stop.
//!
//! A flag and a `Notify` that live in the run itself, rather than a `CancellationToken` per run:
//! a token is an allocation of its own, and a child token registers with its parent under the
//! parent's lock, so a pool of 100,000 would pay for 100,000 of each to start and to stop. A
//! `CancellationToken` is made only for a child that asks for one
//! ([`Context::shutdown_token`](super::Context::shutdown_token)), and is cancelled with the run.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    requested: AtomicBool,
    /// Wakes every waiter once, when the stop is requested.
    waiters: Notify,
    /// Made on demand, for code that takes a token.
    token: OnceLock<CancellationToken>,
}

impl StopSignal {
    /// Asks the run to stop; asking again changes nothing.
    pub(crate) fn request(&self) {
        if self.requested.swap(true, Ordering::SeqCst) {
            return;
        }
        self.waiters.notify_waiters();
        // Pairs with the fence in `token`: either this sees the token, or its maker sees the
        // flag, so that no token made during a stop stays uncancelled.
        fence(Ordering::SeqCst);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
    }

    /// Whether the run was asked to stop.
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Completes once the run is asked to stop. Cancel-safe.
    pub(crate) async fn requested(&self) {
        // Made before the flag is read: `notify_waiters` wakes every `Notified` made before it,
        // polled or not, so a request between the read and the first poll is not missed.
        let notified = self.waiters.notified();
        if self.is_requested() {
            return;
        }
        notified.await;
    }

    /// A token cancelled when the run is asked to stop (at once, if it already was).
    pub(crate) fn token(&self) -> CancellationToken {
        let token = self.token.get_or_init(CancellationToken::new);
        fence(Ordering::SeqCst);
        if self.is_requested() {
            token.cancel();
        }
        token.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_waiter_made_before_the_request_completes() {
        let signal = Arc::new(StopSignal::default());
        let waiting = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.requested().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        signal.request();
        waiting.await.unwrap();
        // And one made after it returns at once.
        signal.requested().await;
    }

    #[test]
    fn a_token_is_cancelled_whenever_it_was_made() {
        let signal = StopSignal::default();
        let before = signal.token();
        assert!(!before.is_cancelled());
        signal.request();
        assert!(before.is_cancelled());
        assert!(signal.token().is_cancelled());
    }

    #[test]
    fn a_token_made_while_the_stop_is_requested_is_cancelled() {
        // Both orders, raced many times: the token never ends up uncancelled.
        for _ in 0..2_000 {
            let signal = Arc::new(StopSignal::default());
            let maker = std::thread::spawn({
                let signal = Arc::clone(&signal);
                move || signal.token()
            });
            signal.request();
            assert!(maker.join().unwrap().is_cancelled());
        }
    }
}
