//! procwarden manages the whole life of a process and the services it runs.
//!
//! It is built in parts that share one vocabulary:
//!
//! - [`supervisor`]: trees of async services in one process, with Erlang/OTP's restart semantics,
//!   ordered start, graceful stop that always returns, reload, status and signals.
//!
//! - [`process`] (Unix): name, signal, wait for and stop OS processes without trusting a bare
//!   PID or polling.
//!
//! - [`shared`] (Linux): one service shared by many processes, started by the first user and
//!   stopped after the last, crashes included.
//!
//! - [`upgrade`] (Unix): replace the running binary without refusing a connection, handing the
//!   listening sockets to the new generation and rolling back when it fails.
//!
//! Still to come (tracked as an open issue): `scope` (typed factories of daemons).
//!
//! # A supervised tree
//!
//! ```
//! use std::time::Duration;
//! use procwarden::{ChildSpec, Restart, Supervisor};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let supervisor = Supervisor::builder("app")
//!     // Starts first; the web server waits until it says it is ready.
//!     .child(
//!         ChildSpec::new("db", |ctx| async move {
//!             ctx.ready();
//!             ctx.shutdown_requested().await;
//!             Ok::<(), std::io::Error>(())
//!         })
//!         .reports_ready(),
//!     )
//!     .child(
//!         ChildSpec::new("web", |ctx| async move {
//!             loop {
//!                 tokio::select! {
//!                     _ = ctx.shutdown_requested() => return Ok::<(), std::io::Error>(()),
//!                     _ = ctx.reload_requested() => { /* re-read the configuration */ }
//!                 }
//!             }
//!         })
//!         .restart(Restart::Permanent)
//!         .shutdown_timeout(Duration::from_secs(10)),
//!     )
//!     .build()?;
//!
//! let handle = supervisor.handle();
//! let running = supervisor.spawn();
//! handle.reload()?;
//! handle.shutdown(); // web stops first, then db
//! running.await.unwrap()?;
//! # Ok::<(), procwarden::SupervisorError>(())
//! # }).unwrap();
//! ```
//!
//! # Platforms
//!
//! Linux is where procwarden is tested. The supervision tree is portable and builds for macOS and
//! Windows; on Windows, [`Supervisor::run_until_signal`] handles Ctrl-C only (no SIGHUP reload),
//! and the `process` module is not available yet.

#![warn(missing_docs)]

#[cfg(unix)]
mod atomic_file;
mod name;
#[cfg(unix)]
pub mod process;
#[cfg(unix)]
pub mod shared;
pub mod supervisor;
mod sync;
mod sys;
#[cfg(unix)]
pub mod upgrade;

pub use supervisor::{
    Backoff, ChildSpec, Context, ExitReason, Restart, Strategy, Supervisor, SupervisorError,
    SupervisorHandle,
};
