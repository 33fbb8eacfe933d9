//! Errors of the process API.

use std::io;
use std::sync::Arc;

use super::Pid;

/// What can go wrong when naming, signalling or waiting for a process.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The process has exited, or its PID now belongs to another process; nothing was signalled.
    #[error("process {pid} is gone: it exited, or its PID now belongs to another process")]
    Gone {
        /// The PID.
        pid: Pid,
    },
    /// The process belongs to someone this process may not signal.
    #[error("not permitted to signal process {pid}")]
    PermissionDenied {
        /// The PID.
        pid: Pid,
    },
    /// A process-group operation was asked of a process that does not lead its group.
    #[error("process {pid} does not lead a process group, so its group is not signalled")]
    NotGroupLeader {
        /// The PID.
        pid: Pid,
    },
    /// The process was still there after SIGKILL and a further wait.
    #[error("process {pid} did not exit after SIGKILL")]
    Unkillable {
        /// The PID.
        pid: Pid,
    },
    /// Another operating-system error.
    #[error("{context} for process {pid}: {source}")]
    Io {
        /// The PID.
        pid: Pid,
        /// What was being done.
        context: &'static str,
        /// The error.
        source: Arc<io::Error>,
    },
}

impl ProcessError {
    /// Maps an OS error from an operation on `pid`, by its meaning.
    pub(crate) fn from_io(pid: Pid, context: &'static str, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(code) if code == rustix::io::Errno::SRCH.raw_os_error() => Self::Gone { pid },
            Some(code) if code == rustix::io::Errno::PERM.raw_os_error() => {
                Self::PermissionDenied { pid }
            }
            _ => Self::Io {
                pid,
                context,
                source: Arc::new(err),
            },
        }
    }
}
