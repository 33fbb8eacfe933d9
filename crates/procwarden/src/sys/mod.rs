//! Platform code: the only place in the crate with `unsafe`, behind small safe functions.
//!
//! One file per platform family. The rest of the crate calls what is here and never the
//! operating system directly.

#[cfg(unix)]
mod decimal;
#[cfg(unix)]
pub(crate) mod exec;
#[cfg(unix)]
pub(crate) mod file_keeper;
#[cfg(unix)]
pub(crate) mod keeper;
#[cfg(unix)]
pub(crate) mod unix;

#[cfg(target_os = "linux")]
pub(crate) mod linux;
#[cfg(target_os = "linux")]
pub(crate) mod sysv;

#[cfg(target_vendor = "apple")]
pub(crate) mod apple;

/// What the kernel says of a process: enough to tell it from a later process with the same PID.
#[cfg(unix)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    /// When it started, in a platform unit that only needs to compare equal for the same process.
    pub(crate) start_time: u64,
    /// Whether it has exited and waits to be reaped.
    pub(crate) zombie: bool,
}

/// Reads a process's start time and state; `None` when no process has that PID.
#[cfg(unix)]
pub(crate) fn proc_info(pid: i32) -> std::io::Result<Option<ProcInfo>> {
    #[cfg(target_os = "linux")]
    return linux::proc_info(pid);
    #[cfg(target_vendor = "apple")]
    return apple::proc_info(pid);
    #[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
    {
        let _ = pid;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "reading a process's start time is not implemented on this platform yet",
        ))
    }
}
