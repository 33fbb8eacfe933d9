//! Requests from handles: remove, restart, reload, messages, nested handles and status.

use std::any::Any;
use std::mem;
use std::sync::Arc;

use tokio::time::Instant;

use crate::supervisor::spec::MessageType;
use crate::supervisor::{ChildState, ChildStatus, ExitReason, SupervisorError, SupervisorHandle};

use super::slot::{After, Reply, State};
use super::{Core, SlotReport, StatusReport};

impl Core {
    pub(super) fn remove(&mut self, name: &str, reply: Reply<ExitReason>) {
        let Some((key, reply)) = self.changeable(name, reply) else {
            return;
        };
        let slot = &mut self.slots[key];
        match &mut slot.state {
            State::Starting | State::Running => self.begin_stop(key, After::Remove(reply)),
            State::Stopping(After::Remove(_)) => {
                let _ = reply.send(Err(SupervisorError::NoSuchChild {
                    path: slot.path(self.handle.path(), &self.definition),
                }));
            }
            State::Stopping(after) => {
                if let After::Restart(earlier) = mem::replace(after, After::Remove(reply)) {
                    let _ = earlier.send(Err(SupervisorError::NoSuchChild {
                        path: slot.path(self.handle.path(), &self.definition),
                    }));
                }
            }
            State::Waiting | State::Backoff(_) | State::Stopped => {
                let reason = slot.last_exit.clone().unwrap_or(ExitReason::Shutdown);
                self.remove_slot(key);
                let _ = reply.send(Ok(reason));
            }
        }
    }

    pub(super) fn restart_on_demand(&mut self, name: &str, reply: Reply<()>) {
        let Some((key, reply)) = self.changeable(name, reply) else {
            return;
        };
        let slot = &mut self.slots[key];
        match slot.state {
            State::Starting | State::Running => self.begin_stop(key, After::Restart(reply)),
            State::Stopping(After::Remove(_)) => {
                let _ = reply.send(Err(SupervisorError::NoSuchChild {
                    path: slot.path(self.handle.path(), &self.definition),
                }));
            }
            // Already on its way down and back up, or queued to start.
            State::Stopping(_) | State::Waiting => {
                let _ = reply.send(Ok(()));
            }
            State::Backoff(_) | State::Stopped => {
                if matches!(slot.state, State::Stopped) {
                    self.active += 1;
                }
                let order = slot.order(key);
                self.unready.remove(&order);
                self.queue_start(key);
                self.pump();
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// The key of the child named `name`, with `reply` to answer later, if it may be removed or
    /// restarted now: it exists, and the supervisor is not stopping. If not, `reply` is told why.
    fn changeable<T>(&self, name: &str, reply: Reply<T>) -> Option<(usize, Reply<T>)> {
        let checked = self.key_of(name).and_then(|key| {
            if self.shutting_down() {
                Err(self.stopping_error(name))
            } else {
                Ok(key)
            }
        });
        match checked {
            Ok(key) => Some((key, reply)),
            Err(err) => {
                let _ = reply.send(Err(err));
                None
            }
        }
    }

    pub(super) fn stopping_error(&self, child: &str) -> SupervisorError {
        SupervisorError::Stopping {
            path: self.handle.path().to_owned(),
            child: child.to_owned(),
        }
    }

    /// Passes a reload request to every child that runs or will run again. A child restarting
    /// keeps the request for its next run.
    pub(super) fn reload(&mut self) {
        let shutting_down = self.shutting_down();
        for (_, slot) in &mut self.slots {
            let will_see_it = match slot.state {
                State::Starting | State::Running | State::Backoff(_) => true,
                State::Waiting => slot.since.is_some(),
                // On its way down to be started again: its next run gets it.
                State::Stopping(After::Restart(_)) => true,
                State::Stopping(After::Nothing) => !shutting_down,
                State::Stopping(_) | State::Stopped => false,
            };
            match &slot.live {
                Some(live) if will_see_it && slot.is_up() => live.run().signals.request_reload(),
                _ => slot.reload |= will_see_it,
            }
        }
    }

    pub(super) fn deliver(
        &mut self,
        name: &str,
        message: Box<dyn Any + Send>,
        kind: MessageType,
    ) -> Result<(), SupervisorError> {
        let slot = &self.slots[self.key_of(name)?];
        let path = || slot.path(self.handle.path(), &self.definition);
        let mailbox = match slot.mailbox() {
            Some(mailbox) if mailbox.accepts == kind => mailbox,
            other => {
                return Err(SupervisorError::WrongMessageType {
                    path: path(),
                    expected: other.map_or("none", |m| m.accepts.name()),
                    got: kind.name(),
                });
            }
        };
        let ended = matches!(
            slot.state,
            State::Stopped | State::Stopping(After::Remove(_))
        ) || (self.shutting_down() && slot.live.is_none());
        if ended {
            return Err(SupervisorError::ChildStopped { path: path() });
        }
        mailbox
            .sender
            .send(message)
            .map_err(|_| SupervisorError::ChildStopped { path: path() })
    }

    pub(super) fn nested(&self, name: &str) -> Result<SupervisorHandle, SupervisorError> {
        let slot = &self.slots[self.key_of(name)?];
        if !slot.spec(&self.definition).is_supervisor {
            return Err(SupervisorError::NotASupervisor {
                path: slot.path(self.handle.path(), &self.definition),
            });
        }
        slot.nested_handle()
            .ok_or_else(|| SupervisorError::NotRunning {
                path: slot.path(self.handle.path(), &self.definition),
            })
    }

    pub(super) fn status(&self) -> StatusReport {
        let now = Instant::now();
        let mut children: Vec<(u64, SlotReport)> = self
            .slots
            .iter()
            .map(|(_, slot)| {
                let nested = slot
                    .live
                    .as_ref()
                    .filter(|_| slot.spec(&self.definition).is_supervisor)
                    .and_then(|_| slot.nested_handle());
                let report = SlotReport {
                    status: slot.status(now, &self.definition, self.handle.path()),
                    nested,
                };
                (slot.seq, report)
            })
            .collect();
        children.sort_unstable_by_key(|(seq, _)| *seq);
        let own = ChildStatus {
            name: Arc::clone(&self.definition.name),
            path: Arc::clone(self.path()),
            state: if self.shutting_down() {
                ChildState::Stopping
            } else {
                ChildState::Running
            },
            restarts: 0,
            uptime: Some(now.saturating_duration_since(self.started)),
            last_exit: None,
            children: Vec::new(),
        };
        StatusReport {
            own,
            children: children.into_iter().map(|(_, report)| report).collect(),
        }
    }
}
