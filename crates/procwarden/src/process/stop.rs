//! Stopping a process: a polite signal, a grace period, then SIGKILL.

use std::time::Duration;

use super::{ProcessError, ProcessRef, Signal};

/// How long to wait for a process to go after SIGKILL before giving up on it.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// How a process stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// It had already exited; nothing was sent.
    AlreadyExited,
    /// It exited within its grace period after the stop signal.
    Exited,
    /// It outlived its grace period and was killed with SIGKILL.
    Killed,
}

/// Whether to signal the process alone or the process group it leads.
#[derive(Clone, Copy)]
enum Target {
    Process,
    Group,
}

impl Target {
    fn send(self, process: &ProcessRef, signal: Signal) -> Result<(), ProcessError> {
        match self {
            Self::Process => process.signal(signal),
            Self::Group => process.signal_group(signal),
        }
    }
}

impl ProcessRef {
    /// Sends SIGTERM, waits up to `grace` for the process to exit, then sends SIGKILL. Wakes
    /// when the process exits (pidfd on Linux), not on a timer.
    pub async fn stop(&self, grace: Duration) -> Result<StopOutcome, ProcessError> {
        self.stop_with(Signal::TERM, grace).await
    }

    /// [`stop`](Self::stop) with another first signal (SIGINT, SIGQUIT, …).
    pub async fn stop_with(
        &self,
        signal: Signal,
        grace: Duration,
    ) -> Result<StopOutcome, ProcessError> {
        stop_async(self, Target::Process, signal, grace).await
    }

    /// [`stop_with`](Self::stop_with) for the whole process group this process leads: the first
    /// signal and SIGKILL go to the group; the grace period ends early when the leader exits,
    /// and SIGKILL then reaches any member left behind.
    pub async fn stop_group(
        &self,
        signal: Signal,
        grace: Duration,
    ) -> Result<StopOutcome, ProcessError> {
        stop_async(self, Target::Group, signal, grace).await
    }

    /// [`stop`](Self::stop) that blocks the thread, for code outside an async runtime.
    pub fn stop_blocking(&self, grace: Duration) -> Result<StopOutcome, ProcessError> {
        stop_blocking(self, Target::Process, Signal::TERM, grace)
    }

    /// [`stop_group`](Self::stop_group) that blocks the thread.
    pub fn stop_group_blocking(
        &self,
        signal: Signal,
        grace: Duration,
    ) -> Result<StopOutcome, ProcessError> {
        stop_blocking(self, Target::Group, signal, grace)
    }
}

async fn stop_async(
    process: &ProcessRef,
    target: Target,
    signal: Signal,
    grace: Duration,
) -> Result<StopOutcome, ProcessError> {
    match target.send(process, signal) {
        Err(ProcessError::Gone { .. }) => return Ok(StopOutcome::AlreadyExited),
        other => other?,
    }
    let outcome = match tokio::time::timeout(grace, process.exited()).await {
        Ok(()) => StopOutcome::Exited,
        Err(_) => StopOutcome::Killed,
    };
    finish(process, target, outcome)?;
    if outcome == StopOutcome::Killed
        && tokio::time::timeout(AFTER_KILL, process.exited())
            .await
            .is_err()
    {
        return Err(ProcessError::Unkillable { pid: process.pid() });
    }
    if let Target::Group = target {
        // Until every member is gone, a new instance could not bind what they hold.
        let mut delay = Duration::from_millis(1);
        let deadline = tokio::time::Instant::now() + AFTER_KILL;
        while process.is_group_alive() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::Unkillable { pid: process.pid() });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }
    Ok(outcome)
}

fn stop_blocking(
    process: &ProcessRef,
    target: Target,
    signal: Signal,
    grace: Duration,
) -> Result<StopOutcome, ProcessError> {
    match target.send(process, signal) {
        Err(ProcessError::Gone { .. }) => return Ok(StopOutcome::AlreadyExited),
        other => other?,
    }
    let outcome = if process.wait_blocking(Some(grace)) {
        StopOutcome::Exited
    } else {
        StopOutcome::Killed
    };
    finish(process, target, outcome)?;
    if outcome == StopOutcome::Killed && !process.wait_blocking(Some(AFTER_KILL)) {
        return Err(ProcessError::Unkillable { pid: process.pid() });
    }
    if let Target::Group = target {
        let deadline = std::time::Instant::now() + AFTER_KILL;
        let mut delay = Duration::from_millis(1);
        while process.is_group_alive() {
            if std::time::Instant::now() >= deadline {
                return Err(ProcessError::Unkillable { pid: process.pid() });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }
    Ok(outcome)
}

/// Sends SIGKILL where the stop calls for it: to a process past its grace, and to a group's
/// members left behind by its leader.
fn finish(process: &ProcessRef, target: Target, outcome: StopOutcome) -> Result<(), ProcessError> {
    let result = match (target, outcome) {
        (Target::Process, StopOutcome::Killed) => process.kill(),
        (Target::Group, StopOutcome::Killed) => process.signal_group(Signal::KILL),
        (Target::Group, _) => {
            // The leader is gone; its group id stays reserved while members remain.
            let group = process.pid().as_raw();
            match crate::sys::unix::kill_group(group, Signal::KILL.as_raw()) {
                Err(err) if err.raw_os_error() != Some(rustix::io::Errno::SRCH.raw_os_error()) => {
                    Err(ProcessError::from_io(
                        process.pid(),
                        "killing the process group",
                        err,
                    ))
                }
                _ => Ok(()),
            }
        }
        (Target::Process, _) => Ok(()),
    };
    match result {
        Err(ProcessError::Gone { .. }) => Ok(()),
        other => other,
    }
}
