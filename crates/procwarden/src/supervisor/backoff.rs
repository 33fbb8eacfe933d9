//! Delays between restarts.

use std::time::Duration;

/// How long a child waits before each restart: exponential, capped, with jitter, and reset once the
/// child has run stably.
///
/// The first restart waits `initial`; each following one multiplies the previous delay by
/// `factor`, up to `max`. A random fraction of up to `jitter` of the delay is added or removed so
/// that children failing together do not restart together. A child that ran for at least
/// `reset_after` before stopping starts again from `initial`.
///
/// ```
/// use std::time::Duration;
/// use procwarden::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
///     .jitter(0.0)
///     .reset_after(Duration::from_secs(30));
/// assert_eq!(backoff.delay(0), Duration::from_millis(100));
/// assert_eq!(backoff.delay(3), Duration::from_millis(800));
/// assert_eq!(backoff.delay(20), Duration::from_secs(10));
/// assert_eq!(Backoff::none().delay(5), Duration::ZERO);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    reset_after: Duration,
}

impl Backoff {
    /// Restart at once, every time (OTP's behaviour). The restart intensity still applies.
    pub const fn none() -> Self {
        Self {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            factor: 1.0,
            jitter: 0.0,
            reset_after: Duration::ZERO,
        }
    }

    /// Delays doubling from `initial` up to `max`, with 10% jitter, reset after 30 s of stable running.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            factor: 2.0,
            jitter: 0.1,
            reset_after: Duration::from_secs(30),
        }
    }

    /// Sets the growth factor between successive delays (at least 1).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Sets the jitter as a fraction of each delay, clamped to `0.0..=1.0`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Sets how long a child must run before its next failure counts as a first one again.
    pub fn reset_after(mut self, stable: Duration) -> Self {
        self.reset_after = stable;
        self
    }

    /// How long a child must run stably before its delay resets.
    pub fn stable_period(&self) -> Duration {
        self.reset_after
    }

    /// The delay before restart number `attempt` (0 for the first), without jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        if !grown.is_finite() || grown >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(grown)
        }
    }

    /// The delay before restart number `attempt`, with jitter applied.
    pub fn jittered_delay(&self, attempt: u32) -> Duration {
        let delay = self.delay(attempt);
        if self.jitter == 0.0 || delay.is_zero() {
            return delay;
        }
        let spread = (fastrand::f64() * 2.0 - 1.0) * self.jitter;
        delay.mul_f64(1.0 + spread)
    }
}

impl Backoff {
    /// [`Backoff::default`], for specs to refer to rather than hold a copy.
    pub(crate) const DEFAULT: Self = Self {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
        factor: 2.0,
        jitter: 0.1,
        reset_after: Duration::from_secs(30),
    };
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s, 10% jitter, reset after 30 s of stable running.
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_documented_exponential_backoff() {
        let documented = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(Backoff::default(), documented);
    }
}
