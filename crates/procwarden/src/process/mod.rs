//! Signal, wait for and stop OS processes without trusting a bare PID or polling.
//!
//! - [`Pid`] is a validated PID: 0, negative values and values above `i32::MAX` are refused,
//!   because `kill(2)` reads them as groups or as "every process".
//! - [`ProcessRef`] names one process by PID and start time, and on Linux holds a pidfd, so a
//!   PID reused by a later process is never signalled, and a zombie is not alive.
//! - [`stop`] sends SIGTERM, waits for the exit (woken by the pidfd on Linux, not a timer), then
//!   SIGKILL; group variants reach the whole process group a process leads.
//! - [`Command`] runs an OS process as a supervised child, so restart policies apply to it.
//!
//! Available on Unix. Start times are read from `/proc` on Linux and `proc_pidinfo` on macOS;
//! other Unix systems compile but [`ProcessRef::new`] reports them unsupported for now. Not
//! available on Windows yet.
//!
//! ```
//! use std::time::Duration;
//! use procwarden::process::{ProcessRef, StopOutcome};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut child = std::process::Command::new("sleep").arg("60").spawn()?;
//! let process = ProcessRef::from_child(&child)?;
//! assert!(procwarden::process::is_alive(&process));
//!
//! let outcome = procwarden::process::stop(&process, Duration::from_secs(5)).await?;
//! assert_eq!(outcome, StopOutcome::Exited);
//! child.wait()?; // reap it: that stays the parent's job
//! assert!(!process.is_alive());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod command;
mod error;
pub(crate) mod exit_status;
mod pid;
mod process_ref;
mod signal;
mod stop;

use std::time::Duration;

pub use command::Command;
pub use error::ProcessError;
pub use pid::{Pid, PidError};
pub use process_ref::ProcessRef;
pub use signal::{Signal, SignalError};
pub use stop::StopOutcome;

/// Makes the kernel send `signal` to the process `command` spawns when the thread that spawned
/// it exits (Linux's `PR_SET_PDEATHSIG`), so it cannot outlive its parent; the process exits at
/// once if its parent is already gone when it starts. Spawn from a thread that lives as long as
/// the parent means to (the main thread, or a current-thread runtime's).
///
/// Linux only: elsewhere this does nothing.
pub fn set_parent_death_signal(command: &mut std::process::Command, signal: Signal) {
    #[cfg(target_os = "linux")]
    crate::sys::linux::set_parent_death_signal(command, signal.as_raw());
    #[cfg(not(target_os = "linux"))]
    let _ = (command, signal);
}

/// Whether the process is running (not exited, not a zombie, its PID not reused).
pub fn is_alive(process: &ProcessRef) -> bool {
    process.is_alive()
}

/// Sends `SIGTERM` to the process.
pub fn terminate(process: &ProcessRef) -> Result<(), ProcessError> {
    process.terminate()
}

/// Sends `SIGKILL` to the process.
pub fn kill(process: &ProcessRef) -> Result<(), ProcessError> {
    process.kill()
}

/// Sends SIGTERM, waits up to `grace` for the process to exit, then SIGKILL.
pub async fn stop(process: &ProcessRef, grace: Duration) -> Result<StopOutcome, ProcessError> {
    process.stop(grace).await
}
