//! Lifecycle events, streamed to subscribers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::ExitReason;

/// One step in a child's life, as streamed by [`SupervisorHandle::subscribe`](crate::SupervisorHandle::subscribe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The path of the child (or supervisor) the event is about, such as `root/db`.
    pub path: Arc<str>,
    /// What happened.
    pub kind: EventKind,
}

/// What happened to a child.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A run of the child was spawned.
    Starting,
    /// The child reported ready, or was started and does not report readiness.
    Ready,
    /// The child was asked to stop.
    Stopping,
    /// A run of the child ended.
    Exited(ExitReason),
    /// The child will be started again after this delay.
    Restarting {
        /// The backoff before the restart.
        delay: Duration,
    },
    /// The child was removed from its supervisor.
    Removed,
    /// A supervisor exceeded its restart intensity and is stopping its children.
    IntensityExceeded,
}

/// A stream of the [`Event`]s of one subtree.
///
/// Events are kept in a bounded buffer (1,024); a subscriber that falls further behind skips
/// the oldest and is told how many it missed.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) receiver: broadcast::Receiver<Event>,
    pub(crate) prefix: Arc<str>,
}

/// What [`Subscription::recv`] returns when it cannot return an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The subscriber fell behind and this many events were dropped; the next call goes on.
    #[error("missed {0} events")]
    Lagged(u64),
    /// The tree is gone and no more events will come.
    #[error("the supervision tree is gone")]
    Closed,
}

impl Subscription {
    /// The next event of this subtree.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        loop {
            match self.receiver.recv().await {
                Ok(event) if self.covers(&event.path) => return Ok(event),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(RecvError::Closed),
            }
        }
    }

    fn covers(&self, path: &str) -> bool {
        path.strip_prefix(&*self.prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}
