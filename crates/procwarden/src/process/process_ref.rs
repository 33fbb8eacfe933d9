//! A reference to one process that a reused PID cannot fool.

use std::time::Duration;

#[cfg(target_os = "linux")]
use std::os::fd::OwnedFd;
#[cfg(target_os = "linux")]
use std::sync::Arc;

use super::{Pid, ProcessError, Signal};
use crate::sys;

/// One process, named by its PID *and* its start time, and on Linux held by a pidfd.
///
/// A PID alone is not an identity: once a process exits and is reaped, the kernel hands its PID
/// to the next process. A `ProcessRef` never signals that next process. On Linux it signals
/// through a pidfd, which can only reach the process it was opened for; elsewhere it checks the
/// start time just before each signal, which leaves a window of microseconds.
///
/// ```
/// use procwarden::process::{Pid, ProcessRef};
///
/// let me = ProcessRef::new(Pid::this()).unwrap();
/// assert!(me.is_alive());
///
/// // A record (as kept in a state file) of a process that started at another time is refused.
/// assert!(ProcessRef::from_record(Pid::this(), me.start_time() + 1).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct ProcessRef {
    pid: Pid,
    start_time: u64,
    #[cfg(target_os = "linux")]
    pidfd: Option<Arc<OwnedFd>>,
}

impl ProcessRef {
    /// The process that has `pid` now. [`ProcessError::Gone`] if there is none.
    pub fn new(pid: Pid) -> Result<Self, ProcessError> {
        Self::open(pid, None)
    }

    /// The process that had `pid` and started at `start_time`, as recorded earlier from
    /// [`pid`](Self::pid) and [`start_time`](Self::start_time). [`ProcessError::Gone`] if that
    /// process is no longer there, even if another one now has its PID.
    pub fn from_record(pid: Pid, start_time: u64) -> Result<Self, ProcessError> {
        Self::open(pid, Some(start_time))
    }

    /// A reference to a child this process spawned.
    pub fn from_child(child: &std::process::Child) -> Result<Self, ProcessError> {
        let pid = Pid::try_from(child.id()).expect("the kernel hands out valid PIDs");
        Self::new(pid)
    }

    fn open(pid: Pid, expected_start: Option<u64>) -> Result<Self, ProcessError> {
        // The pidfd is opened first and the start time read after: if they agree, the pidfd
        // holds the process the start time describes.
        #[cfg(target_os = "linux")]
        let pidfd = sys::linux::pidfd(pid.as_raw())
            .map_err(|err| ProcessError::from_io(pid, "opening a pidfd", err))?
            .map(Arc::new);
        let info = sys::proc_info(pid.as_raw())
            .map_err(|err| ProcessError::from_io(pid, "reading the process's start time", err))?
            .ok_or(ProcessError::Gone { pid })?;
        if expected_start.is_some_and(|expected| expected != info.start_time) {
            return Err(ProcessError::Gone { pid });
        }
        // If the pidfd's process is not reaped yet, it held the PID all along, so the start time
        // read is its own. Whether it has exited would not tell: one that exits between the read
        // and this check is a zombie, still the process read, though the read saw it running.
        #[cfg(target_os = "linux")]
        if let Some(fd) = &pidfd
            && sys::linux::pidfd_reaped(fd)
                .map_err(|err| ProcessError::from_io(pid, "checking the pidfd", err))?
        {
            return Err(ProcessError::Gone { pid });
        }
        Ok(Self {
            pid,
            start_time: info.start_time,
            #[cfg(target_os = "linux")]
            pidfd,
        })
    }

    /// The PID.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// When the process started, in a platform unit (clock ticks since boot on Linux,
    /// microseconds since the epoch on macOS). Keep it with the PID to find the process again
    /// with [`from_record`](Self::from_record).
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Whether the process is running: not exited, not a zombie, and not replaced by another
    /// process with the same PID.
    pub fn is_alive(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            return !sys::linux::pidfd_exited(fd).unwrap_or(true);
        }
        self.still_ours()
    }

    /// Whether the PID still names this process, and it has not exited.
    fn still_ours(&self) -> bool {
        matches!(
            sys::proc_info(self.pid.as_raw()),
            Ok(Some(info)) if info.start_time == self.start_time && !info.zombie
        )
    }

    /// Sends `signal` to the process. [`ProcessError::Gone`] if it has exited or its PID was
    /// reused; nothing is sent then.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        let pid = self.pid;
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            if sys::linux::pidfd_exited(fd).unwrap_or(false) {
                return Err(ProcessError::Gone { pid });
            }
            return sys::linux::pidfd_signal(fd, signal.as_raw())
                .map_err(|err| ProcessError::from_io(pid, "sending a signal", err));
        }
        if !self.still_ours() {
            return Err(ProcessError::Gone { pid });
        }
        sys::unix::kill(pid.as_raw(), signal.as_raw())
            .map_err(|err| ProcessError::from_io(pid, "sending a signal", err))
    }

    /// Sends `SIGTERM`.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        self.signal(Signal::TERM)
    }

    /// Sends `SIGKILL`.
    pub fn kill(&self) -> Result<(), ProcessError> {
        self.signal(Signal::KILL)
    }

    /// Sends `signal` to the process group this process leads (a process spawned with
    /// `process_group(0)` leads its own). [`ProcessError::NotGroupLeader`] if it leads none.
    pub fn signal_group(&self, signal: Signal) -> Result<(), ProcessError> {
        let pid = self.pid;
        if !self.is_alive() {
            return Err(ProcessError::Gone { pid });
        }
        let raw = rustix::process::Pid::from_raw(pid.as_raw()).expect("a Pid is positive");
        match rustix::process::getpgid(Some(raw)) {
            Ok(group) if group == raw => {}
            Ok(_) => return Err(ProcessError::NotGroupLeader { pid }),
            Err(err) => {
                return Err(ProcessError::from_io(
                    pid,
                    "reading the process group",
                    err.into(),
                ));
            }
        }
        sys::unix::kill_group(pid.as_raw(), signal.as_raw())
            .map_err(|err| ProcessError::from_io(pid, "signalling the process group", err))
    }

    /// Sends `SIGTERM` to the process group this process leads.
    pub fn terminate_group(&self) -> Result<(), ProcessError> {
        self.signal_group(Signal::TERM)
    }

    /// Sends `SIGKILL` to the process group this process leads.
    pub fn kill_group(&self) -> Result<(), ProcessError> {
        self.signal_group(Signal::KILL)
    }

    /// Whether any process of the group this process leads (its id as group id) still runs;
    /// zombies do not count on Linux, where `/proc` tells them apart.
    pub fn is_group_alive(&self) -> bool {
        #[cfg(target_os = "linux")]
        return crate::sys::linux::group_has_live_members(self.pid.as_raw()).unwrap_or(false);
        #[cfg(not(target_os = "linux"))]
        return crate::sys::unix::group_exists(self.pid.as_raw());
    }

    /// Completes when the process exits. On Linux the pidfd wakes the task; elsewhere it
    /// checks with a backoff from 1 ms up to 50 ms. Must run inside a tokio runtime with I/O
    /// and time enabled.
    pub async fn exited(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd
            && sys::linux::pidfd_exit(fd).await.is_ok()
        {
            return;
        }
        let mut delay = Duration::from_millis(1);
        while self.is_alive() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Blocks the thread until the process exits or `timeout` passes (`None`: for ever);
    /// true once it has exited.
    pub fn wait_blocking(&self, timeout: Option<Duration>) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd
            && let Ok(exited) = sys::linux::pidfd_wait(fd, timeout)
        {
            return exited;
        }
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut delay = Duration::from_millis(1);
        loop {
            if !self.is_alive() {
                return true;
            }
            let now = std::time::Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            let step = deadline.map_or(delay, |d| delay.min(d - now));
            std::thread::sleep(step);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }
}
