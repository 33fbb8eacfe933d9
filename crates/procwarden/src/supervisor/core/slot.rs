//! One child's place in its supervisor.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::context::{Lasting, Mailbox};
use super::super::supervisor::Definition;
use super::super::{
    ChildSpec, ChildState, ChildStatus, Context, ExitReason, SupervisorError, SupervisorHandle,
};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, SupervisorError>>;

/// A child as its supervisor keeps it, across its runs.
pub(super) struct Slot {
    /// Position in the start order; never reused.
    pub(super) seq: u64,
    /// The spec of a child added at run time; the definition's children have theirs at their
    /// position there, which is their sequence number (see [`Slot::spec`]).
    added: Option<Box<ChildSpec>>,
    /// What the child keeps across its runs, when it has any.
    pub(super) lasting: Option<Arc<Lasting>>,
    /// A reload request for the child's next run: made while no run was up, or not taken by
    /// the last one.
    pub(super) reload: bool,
    pub(super) state: State,
    /// Identifies the current run, or the current backoff; messages and timers that carry an
    /// older one are stale.
    pub(super) generation: u64,
    /// The run in progress: through it the child is told to stop, or aborted.
    pub(super) live: Option<Context>,
    pub(super) restarts: u32,
    /// Consecutive restarts since the child last ran stably; drives the backoff.
    pub(super) attempt: u32,
    pub(super) since: Option<Instant>,
    pub(super) last_exit: Option<ExitReason>,
}

/// The spec of the child with sequence number `seq`: its own when it was added at run time,
/// else the definition's at that position (the first children are numbered in order, from 0).
pub(super) fn spec_of<'a>(
    seq: u64,
    added: Option<&'a ChildSpec>,
    definition: &'a Definition,
) -> &'a ChildSpec {
    added.unwrap_or_else(|| &definition.children[seq as usize])
}

pub(super) enum State {
    /// Not running; in the start queue, or waiting for its group restart.
    Waiting,
    Starting,
    Running,
    Stopping(After),
    Backoff(Instant),
    /// Ended for good.
    Stopped,
}

/// What to do once a child that is being stopped has stopped.
pub(super) enum After {
    /// Nothing more: a shutdown or a group restart decides.
    Nothing,
    Remove(Reply<ExitReason>),
    Restart(Reply<()>),
    /// It did not become ready in time: it failed to start, for this reason.
    Fail(ExitReason),
}

impl Slot {
    pub(super) fn new(
        seq: u64,
        added: Option<Box<ChildSpec>>,
        lasting: Option<Arc<Lasting>>,
    ) -> Self {
        Self {
            seq,
            added,
            lasting,
            reload: false,
            state: State::Waiting,
            generation: 0,
            live: None,
            restarts: 0,
            attempt: 0,
            since: None,
            last_exit: None,
        }
    }

    /// The child's spec, kept by the slot or by the supervisor's definition.
    pub(super) fn spec<'a>(&'a self, definition: &'a Definition) -> &'a ChildSpec {
        spec_of(self.seq, self.added.as_deref(), definition)
    }

    /// The child's path under the supervisor at `parent`; made anew each time, for events, errors
    /// and logs.
    pub(super) fn path(&self, parent: &str, definition: &Definition) -> String {
        format!("{parent}/{}", self.spec(definition).name)
    }

    pub(super) fn mailbox(&self) -> Option<&Mailbox> {
        self.lasting.as_ref().and_then(|l| l.mailbox.as_ref())
    }

    /// The handle of the supervisor this child runs, if it is one and is running.
    pub(super) fn nested_handle(&self) -> Option<SupervisorHandle> {
        self.lasting.as_ref().and_then(|l| l.nested_handle())
    }

    pub(super) fn order(&self, key: usize) -> (u64, usize) {
        (self.seq, key)
    }

    pub(super) fn is_up(&self) -> bool {
        matches!(self.state, State::Starting | State::Running)
    }

    /// The child's status, under the supervisor at `parent`.
    pub(super) fn status(
        &self,
        now: Instant,
        definition: &Definition,
        parent: &str,
    ) -> ChildStatus {
        let state = match self.state {
            State::Waiting => ChildState::Waiting,
            State::Starting => ChildState::Starting,
            State::Running => ChildState::Running,
            // A silent pool's stop is not told of the ends of runs (see `pool_drain`).
            State::Stopping(_) if self.live.as_ref().is_some_and(|l| l.run().has_ended()) => {
                ChildState::Stopped
            }
            State::Stopping(_) => ChildState::Stopping,
            State::Backoff(until) => ChildState::Restarting { until },
            State::Stopped if self.last_exit.as_ref().is_some_and(ExitReason::is_failure) => {
                ChildState::Failed
            }
            State::Stopped => ChildState::Stopped,
        };
        ChildStatus {
            name: Arc::from(&*self.spec(definition).name),
            path: self.path(parent, definition).into(),
            state,
            restarts: self.restarts,
            uptime: self
                .live
                .as_ref()
                .and(self.since)
                .map(|since| now.saturating_duration_since(since)),
            last_exit: self.last_exit.clone(),
            children: Vec::new(),
        }
    }
}
