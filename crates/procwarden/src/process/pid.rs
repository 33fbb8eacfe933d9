//! Validated process IDs.

use std::fmt;
use std::num::NonZeroI32;
use std::str::FromStr;

/// A process ID that can name one process: `1..=i32::MAX`.
///
/// PID 0 and negative values mean "my process group" or "every process" to `kill(2)`, and values
/// above `i32::MAX` wrap to negative ones; none of them can name a single process, so none of
/// them is a `Pid`.
///
/// ```
/// use procwarden::process::Pid;
///
/// assert_eq!(Pid::new(42).unwrap().as_raw(), 42);
/// assert!(Pid::new(0).is_err());
/// assert!(Pid::new(-1).is_err());
/// assert!(Pid::new(u32::MAX as i64).is_err());
/// assert!("12x".parse::<Pid>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(NonZeroI32);

/// Why a value is not a [`Pid`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid PID {value}: a PID is a whole number from 1 to 2147483647")]
pub struct PidError {
    value: String,
}

impl Pid {
    /// Checks that `raw` is within `1..=i32::MAX`.
    pub fn new(raw: i64) -> Result<Self, PidError> {
        i32::try_from(raw)
            .ok()
            .filter(|&v| v > 0)
            .and_then(NonZeroI32::new)
            .map(Self)
            .ok_or_else(|| PidError {
                value: raw.to_string(),
            })
    }

    /// This process's PID.
    pub fn this() -> Self {
        Self::new(i64::from(std::process::id())).expect("the kernel hands out valid PIDs")
    }

    /// The PID as the kernel's `pid_t`.
    pub fn as_raw(self) -> i32 {
        self.0.get()
    }
}

impl TryFrom<i32> for Pid {
    type Error = PidError;
    fn try_from(raw: i32) -> Result<Self, PidError> {
        Self::new(raw.into())
    }
}

impl TryFrom<u32> for Pid {
    type Error = PidError;
    fn try_from(raw: u32) -> Result<Self, PidError> {
        Self::new(raw.into())
    }
}

impl TryFrom<i64> for Pid {
    type Error = PidError;
    fn try_from(raw: i64) -> Result<Self, PidError> {
        Self::new(raw)
    }
}

impl TryFrom<u64> for Pid {
    type Error = PidError;
    fn try_from(raw: u64) -> Result<Self, PidError> {
        i64::try_from(raw)
            .map_err(|_| PidError {
                value: raw.to_string(),
            })
            .and_then(Self::new)
    }
}

impl FromStr for Pid {
    type Err = PidError;
    fn from_str(text: &str) -> Result<Self, PidError> {
        text.trim()
            .parse::<i64>()
            .map_err(|_| PidError {
                value: format!("{text:?}"),
            })
            .and_then(Self::new)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pid({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(Pid::new(1).is_ok());
        assert!(Pid::new(i32::MAX.into()).is_ok());
        assert!(Pid::new(i64::from(i32::MAX) + 1).is_err());
        assert!(Pid::try_from(u32::MAX).is_err());
        assert!(Pid::try_from(u64::MAX).is_err());
        assert!(Pid::try_from(-5i32).is_err());
        assert_eq!(" 7 ".parse::<Pid>().unwrap().as_raw(), 7);
        assert!(
            Pid::new(0)
                .unwrap_err()
                .to_string()
                .contains("invalid PID 0")
        );
    }
}
