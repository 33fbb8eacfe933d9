//! A shutdown request, shared by a supervisor's handles and its event loop.
//!
//! A graceful shutdown starts by stopping one child: the last one started. Passing the request
//! through the supervisor's task first would cost a wake-up of that task before the child even
//! hears of it, and on a busy runtime every extra wake-up is one more chance of a hop to another
//! worker. So the supervisor publishes which run a shutdown would stop first, and
//! [`SupervisorHandle::shutdown`](super::SupervisorHandle::shutdown) tells that run itself. The
//! supervisor learns of the request from the run: by its exit, which wakes the supervisor
//! anyway, or, if it does not exit at once, from its task's next poll, which pokes the
//! supervisor to arm the child's grace period. Every other case — no run published, a pool, a
//! run in the middle of a poll that might never return — takes the plain path: a message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};

use crate::sync::lock;

use super::context::Run;

/// Whether a shutdown was asked for, and the run to stop first when it is.
#[derive(Debug, Default)]
pub(crate) struct ShutdownRequest {
    requested: AtomicBool,
    /// Whether the supervisor knows of the request (it saw the flag, or was poked).
    told: AtomicBool,
    /// The run a shutdown stops first, while the supervisor is quiet enough for a handle to
    /// stop it directly.
    first: Mutex<Option<Weak<Run>>>,
}

/// How a handle's request reaches the supervisor.
pub(crate) enum Delivery {
    /// The first run was told to stop; it tells the supervisor.
    ThroughFirstRun,
    /// The supervisor must be sent the request.
    Message,
}

impl ShutdownRequest {
    /// Records the request and stops the published run if that is safe; says whether the
    /// supervisor still needs a message.
    pub(crate) fn request(&self) -> Delivery {
        // Before the cancellation: whatever the run does about it happens after this store,
        // so the supervisor reading the run's exit also reads the flag.
        self.requested.store(true, Ordering::SeqCst);
        let Some(run) = lock(&self.first).take().and_then(|run| run.upgrade()) else {
            return Delivery::Message;
        };
        run.signals.request_stop();
        // Polled once more even if it does not wait for its token, so that it pokes.
        run.wake_task();
        // A run in the middle of a poll may be blocking its thread, and then would never tell
        // the supervisor, which must arm the grace period itself. Read after the cancellation:
        // a poll that starts later sees it.
        if run.in_poll() {
            Delivery::Message
        } else {
            Delivery::ThroughFirstRun
        }
    }

    /// For the supervisor: whether a shutdown was requested. From the first true answer on, no
    /// run needs to poke it any more.
    pub(crate) fn is_requested(&self) -> bool {
        let requested = self.requested.load(Ordering::SeqCst);
        if requested {
            self.told.store(true, Ordering::Release);
        }
        requested
    }

    /// For a run whose poll did not finish it: whether it must poke the supervisor, which may
    /// not know yet that it was asked to stop. True once at most.
    pub(crate) fn needs_poke(&self) -> bool {
        self.requested.load(Ordering::Acquire) && !self.told.swap(true, Ordering::AcqRel)
    }

    /// For the supervisor: the run a handle may stop directly from now on, if any.
    pub(crate) fn publish(&self, first: Option<Weak<Run>>) {
        *lock(&self.first) = first;
    }
}
