//! Stopping one child: the stop queue, grace periods and aborts, and what is done once it has
//! stopped.

use std::time::Duration;

use tokio::time::Instant;

use crate::supervisor::{EventKind, ExitReason, Restart, Shutdown};

use super::Core;
use super::slot::{After, State};
use super::timer::{Kind, Timer};

impl Core {
    /// Stops the next child of the stop queue once the previous one has stopped; in a pool,
    /// all at once.
    pub(super) fn advance_stop_queue(&mut self) {
        while self.stopping_now.is_none() {
            let Some((seq, key)) = self.stop_queue.pop() else {
                self.stop_queue_drained();
                return;
            };
            let Some(slot) = self.slots.get(key) else {
                continue;
            };
            if slot.seq == seq && slot.is_up() {
                if !self.definition.dynamic {
                    self.stopping_now = Some(key);
                }
                self.begin_stop(key, After::Nothing);
            }
        }
    }

    fn stop_queue_drained(&mut self) {
        if self.shutting_down() {
            return;
        }
        let Some(group) = self.group.take() else {
            return;
        };
        let delay = if self.slots.contains(group.cause) {
            self.next_delay(group.cause)
        } else {
            Duration::ZERO
        };
        for (seq, key) in group.members {
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            if slot.seq != seq || !matches!(slot.state, State::Waiting) {
                continue;
            }
            if slot.spec(&self.definition).restart == Restart::Temporary {
                self.finish(key);
                continue;
            }
            slot.restarts += 1;
            self.delay_start(key, delay);
        }
        self.pump();
    }

    /// Asks a running child to stop, by its shutdown policy.
    pub(super) fn begin_stop(&mut self, key: usize, after: After) {
        let slot = &mut self.slots[key];
        let Some(live) = &slot.live else { return };
        slot.state = State::Stopping(after);
        match slot.spec(&self.definition).shutdown {
            Shutdown::Brutal => {
                live.run().abort();
                self.exits
                    .push_back((key, slot.generation, ExitReason::Aborted));
            }
            Shutdown::Timeout(grace) => {
                live.run().signals.request_stop();
                // A run whose exit is already on its way has no grace period left to watch:
                // typically the one a handle stopped directly, whose exit woke this loop.
                if !live.run().is_reported() {
                    self.timers.push(Timer {
                        at: Instant::now() + grace,
                        key,
                        generation: slot.generation,
                        kind: Kind::Stop,
                    });
                }
            }
            Shutdown::Infinity => live.run().signals.request_stop(),
        }
        self.emit(key, || EventKind::Stopping);
    }

    /// A child ended for good: removed when temporary or in a pool, kept as stopped otherwise.
    pub(super) fn finish(&mut self, key: usize) {
        let shutting_down = self.shutting_down();
        let slot = &mut self.slots[key];
        let order = slot.order(key);
        self.pending.remove(&order);
        self.unready.remove(&order);
        let removable =
            self.definition.dynamic || slot.spec(&self.definition).restart == Restart::Temporary;
        if removable && !shutting_down {
            self.remove_slot(key);
        } else if !matches!(slot.state, State::Stopped) {
            slot.state = State::Stopped;
            self.active -= 1;
        }
    }

    pub(super) fn remove_slot(&mut self, key: usize) {
        let slot = self.slots.remove(key);
        let order = slot.order(key);
        self.names.remove(&slot.spec(&self.definition).name);
        self.pending.remove(&order);
        self.unready.remove(&order);
        if !matches!(slot.state, State::Stopped) {
            self.active -= 1;
        }
        if let Some(mailbox) = slot.mailbox() {
            let unread = mailbox.unread();
            if unread > 0 {
                let path = slot.path(self.handle.path(), &self.definition);
                tracing::warn!(path, unread, "child removed with unread messages");
            }
        }
        if self.observed {
            self.handle.tree().emit(
                &slot.path(self.handle.path(), &self.definition).into(),
                || EventKind::Removed,
            );
        }
    }

    /// Aborts a child past its grace period; its exit is handled before the next wait.
    pub(super) fn abort(&mut self, key: usize) {
        let slot = &self.slots[key];
        if let Some(live) = &slot.live {
            let path = slot.path(self.handle.path(), &self.definition);
            tracing::warn!(path, "still running after its grace period: aborting");
            live.run().abort();
            self.exits
                .push_back((key, slot.generation, ExitReason::Aborted));
        }
    }

    pub(super) fn abort_pool_stragglers(&mut self, grace: Duration) {
        let stragglers: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, slot)| {
                matches!(slot.state, State::Stopping(_))
                    && slot.spec(&self.definition).shutdown == Shutdown::Timeout(grace)
                    // A silent pool's runs that ended are still `Stopping` here.
                    && slot.live.as_ref().is_some_and(|live| !live.run().has_ended())
            })
            .map(|(key, _)| key)
            .collect();
        for key in stragglers {
            self.abort(key);
        }
    }
}
