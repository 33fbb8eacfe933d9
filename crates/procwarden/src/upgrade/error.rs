//! What can go wrong in an upgrade, said plainly.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why an upgrade, a listener or the handover failed.
///
/// Cheap to clone: everyone who asked for the same upgrade gets the same error.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// A handover variable in the environment is malformed.
    #[error("bad {variable}={value:?} in the environment: {reason}")]
    BadEnvironment {
        /// The variable, such as `LISTEN_FDS`.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A listener name breaks the naming rule.
    #[error("bad listener name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A listener could not be bound, inherited or handed out.
    #[error("listener {name:?}: {context}: {source}")]
    Listener {
        /// The listener's name.
        name: String,
        /// What was being done.
        context: String,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// The inherited socket with this name is not of the kind asked for.
    #[error("listener {name:?}: the inherited socket is {found}, not {wanted}")]
    WrongKind {
        /// The listener's name.
        name: String,
        /// What the inherited socket is.
        found: String,
        /// What was asked for.
        wanted: &'static str,
    },
    /// An operation on a file or socket failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or socket.
        path: PathBuf,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// The new generation could not be started at all.
    #[error("could not start the new generation from {path}: {source}")]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// The operating system's error (from fork or exec).
        source: Arc<io::Error>,
    },
    /// The new generation exited before it reported ready; this generation carries on.
    #[error(
        "the new generation (PID {pid}) {status} before it was ready; this generation carries on"
    )]
    ExitedBeforeReady {
        /// The new generation's PID.
        pid: u32,
        /// How it ended: "exited with status 1", "killed by SIGSEGV".
        status: String,
    },
    /// The new generation did not report ready in time and was killed; this generation
    /// carries on.
    #[error(
        "the new generation (PID {pid}) was not ready within {timeout:?} and was killed; this generation carries on"
    )]
    ReadyTimeout {
        /// The new generation's PID.
        pid: u32,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// The new generation ended during probation; this generation serves again.
    #[error(
        "the new generation (PID {pid}) {status} {after:?} after it was ready, during probation; this generation serves again"
    )]
    FailedProbation {
        /// The new generation's PID.
        pid: u32,
        /// How it ended.
        status: String,
        /// How long after its readiness.
        after: Duration,
    },
    /// This generation has not reported ready yet, so it cannot hand over.
    #[error("this generation has not reported ready yet")]
    NotReady,
    /// This generation has already handed over; ask its successor.
    #[error("this generation has already handed over to PID {successor}")]
    Retired {
        /// The PID of the generation that took over.
        successor: u32,
    },
    /// The upgrade was abandoned before it had an outcome (the program is shutting down).
    #[error("the upgrade was abandoned: the program is shutting down")]
    Abandoned,
    /// The pid file is missing, unreadable or holds no PID.
    #[error("bad pid file {path}: {reason}")]
    BadPidFile {
        /// The pid file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The control socket could not be reached, or answered something unexpected.
    #[error("upgrade control socket {path}: {reason}")]
    Control {
        /// The control socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The process asked over its control socket reports that the upgrade failed.
    #[error("PID {pid}: {message}")]
    Remote {
        /// The process that was asked.
        pid: u32,
        /// Its account of the failure.
        message: String,
    },
}

impl UpgradeError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn listener(name: &str, context: impl Into<String>, source: io::Error) -> Self {
        Self::Listener {
            name: name.to_owned(),
            context: context.into(),
            source: Arc::new(source),
        }
    }
}
