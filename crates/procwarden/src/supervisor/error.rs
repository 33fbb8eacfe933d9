//! Errors of the supervision API.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use super::ExitReason;

/// Everything that can go wrong when building, controlling or running a supervisor.
///
/// Each message names the supervisor or child it is about by path.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// A child name is not usable.
    #[error("invalid child name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A child of that name already exists in that supervisor.
    #[error("{path} already exists")]
    DuplicateName {
        /// The path the new child would have had.
        path: String,
    },
    /// The supervisor is stopping and takes no new children.
    #[error("supervisor {path} is stopping and cannot take child {child}")]
    Stopping {
        /// The supervisor.
        path: String,
        /// The child that was refused.
        child: String,
    },
    /// The supervisor is no longer running (it returned, or was never started and was dropped).
    #[error("supervisor {path} is not running")]
    NotRunning {
        /// The supervisor.
        path: String,
    },
    /// No child has that path.
    #[error("no child {path}")]
    NoSuchChild {
        /// The path looked up.
        path: String,
    },
    /// A path went through a child that is not a supervisor.
    #[error("{path} is not a supervisor")]
    NotASupervisor {
        /// The child that is not a supervisor.
        path: String,
    },
    /// The child does not accept messages of that type.
    #[error("{path} accepts {expected}, not {got}")]
    WrongMessageType {
        /// The child.
        path: String,
        /// What it accepts (`"none"` when it declares no message type).
        expected: &'static str,
        /// What was sent.
        got: &'static str,
    },
    /// The child has stopped for good and will read no more messages.
    #[error("{path} has stopped and will not run again")]
    ChildStopped {
        /// The child.
        path: String,
    },
    /// Too many restarts within the period: the supervisor stopped its children and failed.
    #[error(
        "supervisor {path} exceeded its restart intensity ({max_restarts} restarts in {period:?}); \
         last failure: {child} {reason}"
    )]
    IntensityExceeded {
        /// The supervisor.
        path: String,
        /// The intensity's restart limit.
        max_restarts: u32,
        /// The intensity's period.
        period: Duration,
        /// The child whose exit went over the limit.
        child: String,
        /// Why it exited.
        reason: ExitReason,
    },
    /// The supervisor was told to abort its children at once (for example by a second signal).
    #[error("supervisor {path} aborted its children")]
    Aborted {
        /// The supervisor.
        path: String,
    },
    /// An operating-system call failed (signal handlers, the runtime).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        source: Arc<std::io::Error>,
    },
}

/// An error and its sources, joined by `": "`.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Many errors repeat their source in their own message; don't say it twice.
        if !text.ends_with(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}
