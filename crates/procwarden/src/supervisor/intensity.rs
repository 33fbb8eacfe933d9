//! The restart limit that turns a crash loop into a failure of the supervisor.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// At most `max_restarts` restarts within any `period` (OTP's intensity and period).
///
/// One more restart than that, and the supervisor stops all its children and fails; its parent
/// then applies its own restart policy to that failure.
///
/// ```
/// use std::time::Duration;
/// use procwarden::supervisor::Intensity;
///
/// let strict = Intensity::new(1, Duration::from_secs(5));
/// assert_eq!(strict.max_restarts(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intensity {
    max_restarts: u32,
    period: Duration,
}

impl Intensity {
    /// Allows at most `max_restarts` restarts within `period`.
    pub const fn new(max_restarts: u32, period: Duration) -> Self {
        Self {
            max_restarts,
            period,
        }
    }

    /// The number of restarts allowed within one period.
    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// The sliding window in which restarts are counted.
    pub fn period(&self) -> Duration {
        self.period
    }
}

impl Default for Intensity {
    /// 5 restarts within 30 s.
    fn default() -> Self {
        Self::new(5, Duration::from_secs(30))
    }
}

/// The restarts a supervisor made within its current period.
#[derive(Debug)]
pub(crate) struct RestartLog {
    limit: Intensity,
    times: VecDeque<Instant>,
}

impl RestartLog {
    pub(crate) fn new(limit: Intensity) -> Self {
        Self {
            limit,
            times: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; false when it exceeds the intensity.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.times.front() {
            if now.saturating_duration_since(oldest) >= self.limit.period {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.push_back(now);
        self.times.len() <= self.limit.max_restarts as usize
    }
}
