//! Restart policies and strategies, after Erlang/OTP.

use super::ExitReason;

/// When a child that stopped is started again (OTP's `restart` child option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Always restarted, whatever the reason it stopped.
    #[default]
    Permanent,
    /// Restarted only after a failure: an error, a panic or an abort, never after a normal exit.
    Transient,
    /// Never restarted. Once it stops it is removed from its supervisor.
    Temporary,
}

impl Restart {
    /// Whether a child with this policy is restarted after it stopped for `reason`.
    ///
    /// ```
    /// use procwarden::{ExitReason, Restart};
    /// assert!(Restart::Permanent.restarts_after(&ExitReason::Normal));
    /// assert!(!Restart::Transient.restarts_after(&ExitReason::Normal));
    /// assert!(Restart::Transient.restarts_after(&ExitReason::Aborted));
    /// assert!(!Restart::Temporary.restarts_after(&ExitReason::Panicked("x".into())));
    /// ```
    pub fn restarts_after(self, reason: &ExitReason) -> bool {
        match self {
            Self::Permanent => true,
            Self::Transient => reason.is_failure(),
            Self::Temporary => false,
        }
    }
}

/// Which children a supervisor restarts when one of them must be restarted
/// (OTP's restart strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Restart only the child that stopped.
    #[default]
    OneForOne,
    /// Stop every other child (in reverse start order), then start them all again in order.
    OneForAll,
    /// Stop the children started after the one that stopped (in reverse order), then start it and
    /// them again in order.
    RestForOne,
}
