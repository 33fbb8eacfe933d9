//! A run's exit and what follows from it: a restart by the child's policy and the supervisor's
//! strategy, with backoff, within the restart intensity.

use std::collections::BTreeSet;
use std::mem;
use std::time::Duration;

use tokio::time::Instant;

use crate::supervisor::{EventKind, ExitReason, Strategy, SupervisorError};

use super::slot::{After, State};
use super::timer::{Kind, Timer};
use super::{Core, Group};

impl Core {
    pub(super) fn handle_exits(&mut self) {
        while let Some((key, generation, reason)) = self.exits.pop_front() {
            if self.is_current(key, generation) {
                self.child_exited(key, reason);
            }
        }
    }

    fn child_exited(&mut self, key: usize, reason: ExitReason) {
        let slot = &mut self.slots[key];
        // A reload request the run did not take is its next run's.
        if let Some(run) = slot.live.take() {
            slot.reload |= run.run().signals.is_reload_pending();
        }
        let order = slot.order(key);
        self.live_order.remove(&order);
        let state = mem::replace(&mut slot.state, State::Waiting);
        let reason = match &state {
            State::Stopping(After::Fail(why)) => why.clone(),
            _ => reason,
        };
        slot.last_exit = Some(reason.clone());
        self.live -= 1;
        self.unready.remove(&order);
        tracing::debug!(path = %self.child_path(key), "exited: {reason}");
        self.emit(key, || EventKind::Exited(reason.clone()));
        let queued_stop = self.stopping_now == Some(key);
        if queued_stop {
            self.stopping_now = None;
        }

        match state {
            State::Stopping(After::Remove(reply)) => {
                self.remove_slot(key);
                let _ = reply.send(Ok(reason));
            }
            State::Stopping(After::Restart(reply)) => {
                if self.shutting_down() {
                    self.finish(key);
                } else {
                    self.queue_start(key);
                }
                let _ = reply.send(Ok(()));
            }
            State::Stopping(After::Nothing) if !self.shutting_down() => {
                // Stopped for a group restart: wait for the rest of the group.
                self.unready.insert(order);
            }
            State::Stopping(After::Nothing) => self.finish(key),
            State::Stopping(After::Fail(_)) | State::Starting | State::Running => {
                self.on_exit(key, reason)
            }
            State::Waiting | State::Backoff(_) | State::Stopped => {}
        }
        if queued_stop {
            self.advance_stop_queue();
        }
        self.pump();
    }

    /// A child ended by itself (or failed to start): restart it, and maybe its siblings, by policy.
    fn on_exit(&mut self, key: usize, reason: ExitReason) {
        let slot = &self.slots[key];
        if self.shutting_down() || !slot.spec(&self.definition).restart.restarts_after(&reason) {
            self.finish(key);
            return;
        }
        if !self.restart_log.admit(Instant::now()) {
            let err = SupervisorError::IntensityExceeded {
                path: self.handle.path().to_owned(),
                max_restarts: self.definition.intensity.max_restarts(),
                period: self.definition.intensity.period(),
                child: slot.path(self.handle.path(), &self.definition),
                reason,
            };
            self.emit_own(|| EventKind::IntensityExceeded);
            self.finish(key);
            self.begin_shutdown(Err(err));
            return;
        }
        let seq = slot.seq;
        match self.definition.strategy {
            Strategy::OneForOne => {
                let delay = self.next_delay(key);
                self.slots[key].restarts += 1;
                self.delay_start(key, delay);
            }
            Strategy::OneForAll => {
                let members: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
                self.group_restart(key, members);
            }
            Strategy::RestForOne => {
                let members: Vec<usize> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| s.seq >= seq)
                    .map(|(k, _)| k)
                    .collect();
                self.group_restart(key, members);
            }
        }
    }

    /// The backoff before the next restart of a child, which resets once it ran stably.
    pub(super) fn next_delay(&mut self, key: usize) -> Duration {
        let now = Instant::now();
        let slot = &mut self.slots[key];
        let stable = slot.spec(&self.definition).delays().stable_period();
        if slot
            .since
            .is_some_and(|since| now.saturating_duration_since(since) >= stable)
        {
            slot.attempt = 0;
        }
        let delay = slot
            .spec(&self.definition)
            .delays()
            .jittered_delay(slot.attempt);
        slot.attempt = slot.attempt.saturating_add(1);
        delay
    }

    pub(super) fn delay_start(&mut self, key: usize, delay: Duration) {
        self.emit(key, || EventKind::Restarting { delay });
        if delay.is_zero() {
            self.queue_start(key);
            return;
        }
        let generation = self.next_generation();
        let at = Instant::now() + delay;
        let slot = &mut self.slots[key];
        slot.generation = generation;
        slot.state = State::Backoff(at);
        let order = slot.order(key);
        if !self.definition.dynamic {
            self.unready.insert(order);
        }
        self.timers.push(Timer {
            at,
            key,
            generation,
            kind: Kind::Backoff,
        });
    }

    /// Stops `members` in reverse start order, then starts them again in order. A group already
    /// under way absorbs the new one.
    fn group_restart(&mut self, cause: usize, members: Vec<usize>) {
        let group = self.group.get_or_insert_with(|| Group {
            members: BTreeSet::new(),
            cause,
        });
        group.cause = cause;
        for key in members {
            let slot = &mut self.slots[key];
            let order = slot.order(key);
            match slot.state {
                State::Starting | State::Running => self.stop_queue.push(order),
                State::Waiting | State::Backoff(_) => {
                    slot.state = State::Waiting;
                    self.pending.remove(&order);
                    self.unready.insert(order);
                }
                State::Stopping(_) | State::Stopped => continue,
            }
            group.members.insert(order);
        }
        self.stop_queue.sort_unstable();
        self.stop_queue.dedup();
        self.advance_stop_queue();
    }
}
