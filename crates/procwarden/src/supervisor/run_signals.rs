//! What one run of a child is asked to do: stop, or reload.
//!
//! Two flags and one `Notify` that live in the run itself. Not a `CancellationToken` per run:
//! a token is an allocation of its own, and a child token registers with its parent under the
//! parent's lock, so a pool of 100,000 would pay for 100,000 of each to start and to stop. A
//! `CancellationToken` is made only for a child that asks for one
//! ([`Context::shutdown_token`](super::Context::shutdown_token)), and is cancelled with the run.
//!
//! Nor a signal that outlives the run: a pool of children that are never restarted should not
//! pay an allocation each for it. A reload that a run did not take before it ended is carried
//! to the child's next run by its supervisor (see [`RunSignals::is_reload_pending`]), as is one
//! made while no run was up.
//!
//! The two requests share one `Notify`, 32 bytes that every run would otherwise hold twice: a
//! waiter for one request may be woken by the other, and then waits again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering, fence};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const STOP: u8 = 1;
const RELOAD: u8 = 2;

#[derive(Debug, Default)]
pub(crate) struct RunSignals {
    /// [`STOP`] once the run is asked to stop; [`RELOAD`] while a reload request waits.
    requested: AtomicU8,
    /// Wakes every waiter, for either request; each checks for its own.
    waiters: Notify,
    /// Made on demand, for code that takes a token to stop.
    token: OnceLock<CancellationToken>,
}

impl RunSignals {
    /// The signals of a new run; `reload` carries a request its child had not taken yet.
    pub(crate) fn new(reload: bool) -> Self {
        Self {
            requested: AtomicU8::new(if reload { RELOAD } else { 0 }),
            ..Self::default()
        }
    }

    /// Asks the run to stop; asking again changes nothing.
    pub(crate) fn request_stop(&self) {
        if self.requested.fetch_or(STOP, Ordering::SeqCst) & STOP != 0 {
            return;
        }
        self.waiters.notify_waiters();
        // Pairs with the fence in `stop_token`: either this sees the token, or its maker sees
        // the flag, so that no token made during a stop stays uncancelled.
        fence(Ordering::SeqCst);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
    }

    /// Whether the run was asked to stop.
    pub(crate) fn is_stop_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst) & STOP != 0
    }

    /// Completes once the run is asked to stop. Cancel-safe.
    pub(crate) async fn stop_requested(&self) {
        loop {
            // Made before the flag is read: `notify_waiters` wakes every `Notified` made before
            // it, polled or not, so a request between the read and the first poll is not missed.
            let notified = self.waiters.notified();
            if self.is_stop_requested() {
                return;
            }
            notified.await;
        }
    }

    /// A token cancelled when the run is asked to stop (at once, if it already was).
    pub(crate) fn stop_token(&self) -> CancellationToken {
        let token = self.token.get_or_init(CancellationToken::new);
        fence(Ordering::SeqCst);
        if self.is_stop_requested() {
            token.cancel();
        }
        token.clone()
    }

    /// Requests a reload; requests not yet taken count as one.
    pub(crate) fn request_reload(&self) {
        self.requested.fetch_or(RELOAD, Ordering::SeqCst);
        self.waiters.notify_waiters();
    }

    /// Whether a reload request is waiting to be taken.
    pub(crate) fn is_reload_pending(&self) -> bool {
        self.requested.load(Ordering::SeqCst) & RELOAD != 0
    }

    /// Completes when a reload request is waiting, and takes it: of several waiters, one
    /// completes per request. Cancel-safe: a request is taken only by the poll that completes.
    pub(crate) async fn reload_requested(&self) {
        loop {
            // Made before the flag is read, so that a request in between still wakes it.
            let notified = self.waiters.notified();
            if self.requested.fetch_and(!RELOAD, Ordering::SeqCst) & RELOAD != 0 {
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

    #[tokio::test]
    async fn a_stop_waiter_made_before_the_request_completes() {
        let signals = Arc::new(RunSignals::default());
        let waiting = tokio::spawn({
            let signals = Arc::clone(&signals);
            async move { signals.stop_requested().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        signals.request_stop();
        waiting.await.unwrap();
        // And one made after it returns at once.
        signals.stop_requested().await;
    }

    #[test]
    fn a_token_is_cancelled_whenever_it_was_made() {
        let signals = RunSignals::default();
        let before = signals.stop_token();
        assert!(!before.is_cancelled());
        signals.request_stop();
        assert!(before.is_cancelled());
        assert!(signals.stop_token().is_cancelled());
    }

    #[test]
    fn a_token_made_while_the_stop_is_requested_is_cancelled() {
        // Both orders, raced many times: the token never ends up uncancelled.
        for _ in 0..2_000 {
            let signals = Arc::new(RunSignals::default());
            let maker = std::thread::spawn({
                let signals = Arc::clone(&signals);
                move || signals.stop_token()
            });
            signals.request_stop();
            assert!(maker.join().unwrap().is_cancelled());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reload_requests_coalesce_and_are_kept_until_taken() {
        let signals = RunSignals::new(false);
        signals.request_reload();
        signals.request_reload();
        assert!(signals.is_reload_pending());
        signals.reload_requested().await;
        assert!(!signals.is_reload_pending());
        let again = tokio::time::timeout(Duration::from_millis(20), signals.reload_requested());
        assert!(
            again.await.is_err(),
            "two requests before the first wait count as one"
        );
    }

    #[tokio::test]
    async fn a_carried_reload_request_is_taken_by_the_first_wait() {
        RunSignals::new(true).reload_requested().await;
    }

    #[tokio::test(start_paused = true)]
    async fn one_reload_waiter_completes_per_request() {
        let signals = Arc::new(RunSignals::new(false));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let signals = Arc::clone(&signals);
                tokio::spawn(async move { signals.reload_requested().await })
            })
            .collect();
        tokio::task::yield_now().await;
        signals.request_reload();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let done = waiters.iter().filter(|w| w.is_finished()).count();
        assert_eq!(done, 1);
        for waiter in waiters {
            waiter.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_completes_only_its_own_waiters() {
        let signals = Arc::new(RunSignals::new(false));
        let stop = tokio::spawn({
            let signals = Arc::clone(&signals);
            async move { signals.stop_requested().await }
        });
        let reload = tokio::spawn({
            let signals = Arc::clone(&signals);
            async move { signals.reload_requested().await }
        });
        tokio::task::yield_now().await;

        signals.request_reload();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(reload.is_finished());
        assert!(
            !stop.is_finished(),
            "a reload does not complete a stop wait"
        );
        assert!(!signals.is_stop_requested());

        let reload = tokio::spawn({
            let signals = Arc::clone(&signals);
            async move { signals.reload_requested().await }
        });
        tokio::task::yield_now().await;
        signals.request_stop();
        stop.await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!reload.is_finished(), "a stop does not take a reload");
        assert!(!signals.is_reload_pending());
        reload.abort();
    }
}
