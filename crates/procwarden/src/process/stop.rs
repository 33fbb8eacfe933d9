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
    /// Sends the first signal; true when there was nothing left to stop.
    fn begin(self, process: &ProcessRef, signal: Signal) -> Result<bool, ProcessError> {
        let sent = match self {
            Self::Process => process.signal(signal),
            Self::Group => process.signal_group(signal),
        };
        match sent {
            Ok(()) => Ok(false),
            Err(ProcessError::Gone { .. }) => Ok(true),
            Err(err) => Err(err),
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
    if target.begin(process, signal)? {
        return Ok(StopOutcome::AlreadyExited);
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
        for delay in group_checks() {
            if !process.is_group_alive() {
                return Ok(outcome);
            }
            tokio::time::sleep(delay).await;
        }
        return group_gone(process, outcome);
    }
    Ok(outcome)
}

fn stop_blocking(
    process: &ProcessRef,
    target: Target,
    signal: Signal,
    grace: Duration,
) -> Result<StopOutcome, ProcessError> {
    if target.begin(process, signal)? {
        return Ok(StopOutcome::AlreadyExited);
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
        for delay in group_checks() {
            if !process.is_group_alive() {
                return Ok(outcome);
            }
            std::thread::sleep(delay);
        }
        return group_gone(process, outcome);
    }
    Ok(outcome)
}

/// The pauses between checks that a group's members are gone after SIGKILL: the kernel gives no
/// handle on a group, so 1 ms doubling up to 20 ms, for [`AFTER_KILL`] in all. Until every member
/// is gone, a new instance could not bind what they hold.
fn group_checks() -> impl Iterator<Item = Duration> {
    let mut waited = Duration::ZERO;
    std::iter::successors(Some(Duration::from_millis(1)), |d| {
        Some((*d * 2).min(Duration::from_millis(20)))
    })
    .take_while(move |delay| {
        waited += *delay;
        waited <= AFTER_KILL
    })
}

/// The last check, once [`group_checks`] ran out.
fn group_gone(process: &ProcessRef, outcome: StopOutcome) -> Result<StopOutcome, ProcessError> {
    if process.is_group_alive() {
        Err(ProcessError::Unkillable { pid: process.pid() })
    } else {
        Ok(outcome)
    }
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
