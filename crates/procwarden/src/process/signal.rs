//! Signals by name.

use std::fmt;
use std::str::FromStr;

use crate::sys::unix;

/// A Unix signal that this platform names, such as `SIGTERM`.
///
/// Parsed from `TERM`, `SIGTERM`, `term` or `15`:
///
/// ```
/// use procwarden::process::Signal;
///
/// assert_eq!("SIGTERM".parse::<Signal>().unwrap(), Signal::TERM);
/// assert_eq!("hup".parse::<Signal>().unwrap(), Signal::HUP);
/// assert_eq!("9".parse::<Signal>().unwrap(), Signal::KILL);
/// assert!("SIGNOPE".parse::<Signal>().is_err());
/// assert_eq!(Signal::TERM.to_string(), "SIGTERM");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Signal(i32);

/// Why a value is not a [`Signal`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?}: use a name such as TERM, INT, HUP, KILL, USR1, USR2, or its number")]
pub struct SignalError(String);

/// The names [`Signal`] parses and prints, without the `SIG` prefix.
const NAMES: [&str; 14] = [
    "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "PIPE", "ALRM", "TERM", "CONT", "STOP", "TSTP",
    "WINCH", "ABRT",
];

fn named(name: &str) -> Signal {
    Signal(unix::raw_signal(name).expect("every name in NAMES exists on Unix"))
}

impl Signal {
    /// `SIGTERM`: please stop.
    pub const TERM: Self = Self(15);
    /// `SIGKILL`: stop now; cannot be caught.
    pub const KILL: Self = Self(9);
    /// `SIGINT`: interrupted from the terminal.
    pub const INT: Self = Self(2);
    /// `SIGHUP`: by convention, reload.
    pub const HUP: Self = Self(1);
    /// `SIGQUIT`.
    pub const QUIT: Self = Self(3);

    /// `SIGUSR1` (its number differs between platforms).
    pub fn usr1() -> Self {
        named("USR1")
    }

    /// `SIGUSR2` (its number differs between platforms).
    pub fn usr2() -> Self {
        named("USR2")
    }

    /// The signal with this number, if this platform names it.
    pub fn from_raw(raw: i32) -> Result<Self, SignalError> {
        if unix::is_named_signal(raw) {
            Ok(Self(raw))
        } else {
            Err(SignalError(raw.to_string()))
        }
    }

    /// The signal's number on this platform.
    pub fn as_raw(self) -> i32 {
        self.0
    }

    /// The signal's name without the `SIG` prefix, such as `TERM`, when it has one here.
    pub fn name(self) -> Option<&'static str> {
        NAMES
            .into_iter()
            .find(|name| unix::raw_signal(name) == Some(self.0))
    }
}

impl FromStr for Signal {
    type Err = SignalError;

    fn from_str(text: &str) -> Result<Self, SignalError> {
        let error = || SignalError(text.to_owned());
        if let Ok(raw) = text.parse::<i32>() {
            return Self::from_raw(raw).map_err(|_| error());
        }
        let upper = text.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        unix::raw_signal(bare).map(Self).ok_or_else(error)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.0),
        }
    }
}
