//! One service shared by many independent processes: the first user starts it, the last one
//! stops it, and the kernel cleans up after crashes.
//!
//! The seed is procref, whose design is right and whose implementation breaks; this module keeps
//! its callback names (`on_first_acquire`, `on_last_release`, `on_health_check`, `on_recover`)
//! and keeps every promise it breaks:
//!
//! - **One instance**: per user, state directory and name, whatever the interleaving. "First"
//!   and "last" are decided under the lifecycle lock, or inside the same atomic semaphore
//!   operation that changes the count, never by a separate read.
//! - **Crash-proof count**: every hold is something the kernel gives back when its process dies,
//!   SIGKILL included: a semaphore adjustment taken with `SEM_UNDO`, or a `flock`.
//! - **Stopped when unused**: a keeper process blocks until the count is zero, waits out the
//!   linger, and stops the service under the lifecycle lock, even if nobody acquires it again.
//!   An acquire that races that stop waits for it, then starts a fresh instance.
//! - **Private and tidy**: semaphore sets and lock files are mode 0600 and refused when owned by
//!   someone else or open to others; the state file is written atomically (0600, no links
//!   followed) in a 0700 directory owned by the user; once the service is stopped and unused,
//!   its set or lock files and its state file are gone.
//!
//! Two [`Backend`]s keep these promises. On Linux the default is System V semaphores: joining or
//! leaving a running service is one system call. The portable one, on `flock(2)` files in the
//! state directory, is the only one on macOS and the BSDs, and is chosen on Linux with
//! [`SharedServiceBuilder::backend`] or `PROCWARDEN_SHARED_BACKEND=files`; every acquire and
//! release takes the lifecycle lock. All processes sharing a service must use the same backend.
//! With file locks, a process that forks without `exec` lends its holds to the child until the
//! child exits or execs (descriptors are close-on-exec); semaphore holds are not inherited.

mod admin;
mod command;
mod counter;
mod error;
#[cfg(target_os = "linux")]
mod identity;
mod service;
mod state_dir;
mod state_file;

pub use admin::{ServiceState, ServiceStatus, list, stop_now};
pub use command::{Readiness, ServiceCommand};
pub use counter::{BACKEND_ENV, Backend, RefCounter};
pub use error::SharedError;
pub use service::{ServiceHandle, ServiceInfo, SharedService, SharedServiceBuilder};
pub use state_dir::{STATE_DIR_ENV, StateDir};
