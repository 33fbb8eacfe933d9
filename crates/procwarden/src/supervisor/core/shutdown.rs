//! The supervisor's own shutdown: its children stopped in reverse start order, or a pool all at
//! once.

use tokio::time::Instant;

use crate::supervisor::{Context, EventKind, ExitReason, Shutdown, SupervisorError};

use super::Core;
use super::slot::{After, Slot, State};
use super::timer::{Kind, Timer};

impl Core {
    /// Begins the shutdown a handle asked for, if it has not begun; says whether it did now.
    pub(super) fn take_shutdown_request(&mut self) -> bool {
        if self.shutting_down() || !self.handle.shutdown_request().is_requested() {
            return false;
        }
        self.begin_shutdown(Ok(()));
        true
    }

    /// Tells the handles which run a shutdown would stop first, when they may stop it directly:
    /// the last child up, when nothing else is being stopped in order and it stops gracefully.
    pub(super) fn publish_first(&mut self) {
        let first = self.first_to_stop();
        if first == self.published_first {
            return;
        }
        self.published_first = first;
        let run = first.and_then(|(key, _)| self.slots[key].live.as_ref().map(Context::downgrade));
        self.handle.shutdown_request().publish(run);
    }

    /// Takes back the published first run, until the event loop publishes again: for a run
    /// about to start, which a shutdown would have to stop before it.
    pub(super) fn withdraw_first(&mut self) {
        if self.published_first.take().is_some() {
            self.handle.shutdown_request().publish(None);
        }
    }

    fn first_to_stop(&self) -> Option<(usize, u64)> {
        let quiet = !self.shutting_down()
            && self.stopping_now.is_none()
            && self.stop_queue.is_empty()
            && self.group.is_none();
        if self.definition.dynamic || !quiet {
            return None;
        }
        let &(_, key) = self.live_order.last()?;
        let slot = &self.slots[key];
        (slot.is_up() && slot.spec(&self.definition).shutdown != Shutdown::Brutal)
            .then_some((key, slot.generation))
    }

    pub(super) fn begin_shutdown(&mut self, outcome: Result<(), SupervisorError>) {
        match &mut self.outcome {
            Some(existing) => {
                if existing.is_ok() && outcome.is_err() {
                    *existing = outcome;
                }
                return;
            }
            None => self.outcome = Some(outcome),
        }
        tracing::debug!("shutting down");
        self.publish_first();
        if self.parent.is_none() {
            // A nested supervisor's parent reports it stopping, as for any child.
            self.emit_own(|| EventKind::Stopping);
        }
        self.group = None;
        self.pending.clear();
        self.unready.clear();
        if self.definition.dynamic {
            self.stop_pool();
            return;
        }
        self.stop_queue.clear();
        for (key, slot) in &mut self.slots {
            if is_up_at_shutdown(slot, &mut self.active) {
                self.stop_queue.push((slot.seq, key));
            }
        }
        self.stop_queue.sort_unstable();
        self.advance_stop_queue();
    }

    /// Stops every child of a pool at once: every run is told to stop in one pass over the
    /// slots, and one timer per distinct grace period covers them all.
    fn stop_pool(&mut self) {
        let now = Instant::now();
        let mut graces = Vec::new();
        // A child being removed or restarted on demand has a caller waiting for its exit, and
        // one that failed to start has its exit reason still to be recorded.
        let mut awaited = false;
        for (key, slot) in &mut self.slots {
            if !is_up_at_shutdown(slot, &mut self.active) {
                awaited |= matches!(
                    slot.state,
                    State::Stopping(After::Remove(_) | After::Restart(_) | After::Fail(_))
                );
                continue;
            }
            slot.state = State::Stopping(After::Nothing);
            match slot.spec(&self.definition).shutdown {
                Shutdown::Brutal => {
                    if let Some(live) = &slot.live {
                        live.run().abort();
                    }
                    self.exits
                        .push_back((key, slot.generation, ExitReason::Aborted));
                }
                Shutdown::Timeout(grace) if !graces.contains(&grace) => graces.push(grace),
                Shutdown::Timeout(_) | Shutdown::Infinity => {}
            }
        }
        for grace in graces {
            self.timers.push(Timer {
                at: now + grace,
                key: usize::MAX,
                generation: 0,
                kind: Kind::Pool(grace),
            });
        }
        // Before the runs are told to stop, so that no run's exit is told for nothing. With
        // someone to tell of each exit, or waiting for one, every exit stays a message.
        if !awaited && !self.observed && !tracing::enabled!(tracing::Level::DEBUG) {
            self.handle.pool_drain().go_silent();
        }
        for (_, slot) in &self.slots {
            if let Some(live) = &slot.live {
                live.run().signals.request_stop();
            }
        }
    }

    pub(super) fn abort_all(&mut self) {
        tracing::warn!("aborting all children");
        for (_, slot) in &mut self.slots {
            if let Some(live) = slot.live.take() {
                live.run().abort();
                slot.last_exit = Some(ExitReason::Aborted);
            }
            slot.state = State::Stopped;
        }
        self.live = 0;
        self.active = 0;
        self.live_order.clear();
        self.stop_queue.clear();
        self.stopping_now = None;
        self.exits.clear();
        self.outcome = Some(Err(SupervisorError::Aborted {
            path: self.handle.path().to_owned(),
        }));
    }

    /// The result to return, once there is nothing left to wait for.
    pub(super) fn finished(&mut self) -> Option<Result<(), SupervisorError>> {
        if self.shutting_down() {
            let all_ended = self.live == 0 || self.handle.pool_drain().is_drained();
            if all_ended && self.stopping_now.is_none() {
                return self.outcome.take();
            }
        } else if !self.definition.dynamic && self.active == 0 {
            return Some(Ok(()));
        }
        None
    }
}

/// Whether a child is to be stopped by a shutdown; one waiting to start (or restart) is
/// stopped for good at once, and leaves the `active` count.
fn is_up_at_shutdown(slot: &mut Slot, active: &mut usize) -> bool {
    match slot.state {
        State::Starting | State::Running => true,
        State::Waiting | State::Backoff(_) => {
            slot.state = State::Stopped;
            *active -= 1;
            false
        }
        State::Stopping(_) | State::Stopped => false,
    }
}
