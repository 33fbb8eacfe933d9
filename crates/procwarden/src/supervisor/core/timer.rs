//! Deadlines the supervisor waits for: start timeouts, grace periods, backoffs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// The child has not become ready in time.
    Start,
    /// The child's grace period is over.
    Stop,
    /// The child's backoff is over.
    Backoff,
    /// The grace period of every child of a pool that was stopping with this timeout is over.
    Pool(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub(super) at: Instant,
    pub(super) key: usize,
    pub(super) generation: u64,
    pub(super) kind: Kind,
}

/// Pending deadlines, earliest first. Entries are never removed early: one whose child has moved
/// on (another generation or state) is ignored when it fires.
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    pub(super) fn push(&mut self, timer: Timer) {
        self.heap.push(Reverse(timer));
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(timer)| timer.at)
    }

    /// Removes and returns the earliest timer due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse(timer)) if timer.at <= now => self.heap.pop().map(|Reverse(t)| t),
            _ => None,
        }
    }
}
