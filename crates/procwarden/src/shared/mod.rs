//! One service shared by many independent processes: the first user starts it, the last one
//! stops it, and the kernel cleans up after crashes.
//!
//! The seed is procref, whose design is right and whose implementation breaks; this module keeps
//! its callback names (`on_first_acquire`, `on_last_release`, `on_health_check`, `on_recover`)
//! and keeps every promise it breaks:
//!
//! - **One instance**: per user, state directory and name, whatever the interleaving. "First"
//!   and "last" are decided inside the same atomic semaphore operation that changes the count,
//!   never by a separate read.
//! - **Crash-proof count**: every hold is taken with `SEM_UNDO`, so the kernel gives back the
//!   holds of a process that dies, SIGKILL included.
//! - **Stopped when unused**: a keeper process blocks until the count is zero, waits out the
//!   linger, and stops the service under the lifecycle lock, even if nobody acquires it again.
//!   An acquire that races that stop waits for it, then starts a fresh instance.
//! - **Private and tidy**: semaphore sets are mode 0600 and refused when owned by someone else;
//!   the state file is written atomically (0600, no links followed) in a 0700 directory owned by
//!   the user; once the service is stopped and unused, its set and files are gone.
//!
//! [`SharedService`] is available on Linux (System V semaphores). A portable backend on file
//! locks, for macOS and the BSDs, is not written yet; there this module offers only its
//! descriptive types ([`StateDir`], [`ServiceCommand`], [`Readiness`], [`SharedError`]).

mod error;
mod state_dir;

#[cfg(target_os = "linux")]
mod admin;
// The types describe a service on every Unix; starting one needs a backend (Linux so far).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
mod command;
#[cfg(target_os = "linux")]
mod counter;
#[cfg(target_os = "linux")]
mod identity;
#[cfg(target_os = "linux")]
mod service;
#[cfg(target_os = "linux")]
mod state_file;

#[cfg(target_os = "linux")]
pub use admin::{ServiceState, ServiceStatus, list, stop_now};
pub use command::{Readiness, ServiceCommand};
#[cfg(target_os = "linux")]
pub use counter::RefCounter;
pub use error::SharedError;
#[cfg(target_os = "linux")]
pub use service::{ServiceHandle, ServiceInfo, SharedService, SharedServiceBuilder};
pub use state_dir::{STATE_DIR_ENV, StateDir};
