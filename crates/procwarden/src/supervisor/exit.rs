//! Why a child stopped.

use std::fmt;
use std::sync::Arc;

/// Why one run of a child ended.
///
/// The supervisor decides whether to restart a child from this reason and the child's
/// [`Restart`](crate::Restart) policy; the same value appears in
/// [`ChildStatus::last_exit`](crate::supervisor::ChildStatus::last_exit) and in
/// [`EventKind::Exited`](crate::supervisor::EventKind::Exited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The child returned `Ok(())` without being asked to stop.
    Normal,
    /// The child returned after its supervisor asked it to stop.
    Shutdown,
    /// The child returned an error, or did not become ready within its start timeout.
    Failed(Arc<str>),
    /// The child panicked; the panic message is kept.
    Panicked(Arc<str>),
    /// The child was still running when its grace period ran out and its task was aborted.
    Aborted,
}

impl ExitReason {
    /// Whether this reason counts as a failure for [`Restart::Transient`](crate::Restart::Transient)
    /// children: an error, a panic, or an abort.
    ///
    /// ```
    /// use procwarden::ExitReason;
    /// assert!(!ExitReason::Normal.is_failure());
    /// assert!(!ExitReason::Shutdown.is_failure());
    /// assert!(ExitReason::Failed("boom".into()).is_failure());
    /// ```
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::Panicked(_) | Self::Aborted)
    }

    pub(crate) fn failed(message: impl fmt::Display) -> Self {
        Self::Failed(message.to_string().into())
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Normal => f.write_str("exited normally"),
            Self::Shutdown => f.write_str("stopped on request"),
            Self::Failed(message) => write!(f, "failed: {message}"),
            Self::Panicked(message) => write!(f, "panicked: {message}"),
            Self::Aborted => f.write_str("aborted after its grace period"),
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "a panic with a non-string payload".to_owned(),
        },
    }
}
