//! Zero-downtime restart: replace the running binary with a new one without refusing or
//! dropping a connection, and roll back when the new one fails.
//!
//! - [`Listeners`]: listening sockets by name (TCP, Unix stream, UDP), bound once, taken from
//!   systemd socket activation, and inherited by each new generation as descriptors through
//!   the same `LISTEN_FDS` protocol.
//! - [`Upgrader`]: the triggers (a signal, [`Upgrader::upgrade`], the control socket of
//!   `procwarden upgrade`), the readiness handshake with its deadline, rollback, probation, the
//!   pid file, systemd notifications, and this generation's wind-down.
//!
//! A program without a supervisor needs three lines: build the upgrader, ask it for the
//! listeners, and take the wind-down token from [`Upgrader::ready`]. A [`Supervisor`] program
//! runs its tree with [`Upgrader::run`], so that the old generation's drain is its tree's
//! graceful shutdown:
//!
//! ```no_run
//! use procwarden::upgrade::Upgrader;
//! use procwarden::{ChildSpec, Supervisor};
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let upgrader = Upgrader::new().expect("upgrader");
//!     let up = upgrader.clone();
//!     let tree = Supervisor::builder("server")
//!         .child(ChildSpec::new("http", move |ctx| {
//!             let up = up.clone();
//!             async move {
//!                 let http = up.listeners().tcp("http", "127.0.0.1:8080")?;
//!                 ctx.ready();
//!                 loop {
//!                     tokio::select! {
//!                         _ = ctx.shutdown_requested() => return Ok::<(), BoxError>(()),
//!                         accepted = http.accept() => { let _ = accepted?; /* serve it */ }
//!                     }
//!                 }
//!             }
//!         }).reports_ready())
//!         .child(upgrader.ready_child())
//!         .build()
//!         .expect("valid names");
//!     upgrader.run(tree).await.exit_code()
//! }
//! ```
//!
//! Accept a connection only as you are about to serve it: spawn its task, then yield before the
//! next `accept` (as `examples/upgrade_server.rs` does). A connection still in the listener's
//! queue is in the socket that every generation shares, so if a new generation crashes during
//! its probation, the old one serves it; a connection the crashed process had accepted and not
//! yet answered is lost with that process.
//!
//! Unix only: descriptor passing, `fork` and `exec` have no Windows equivalent here yet.
//!
//! [`Supervisor`]: crate::Supervisor

mod control;
mod error;
mod generation;
pub mod handover;
mod listeners;
mod notify;
mod pid_file;
mod upgrader;

pub use control::{control_socket_path, request_upgrade};
pub use error::UpgradeError;
pub use listeners::Listeners;
pub use notify::NOTIFY_SOCKET;
pub use pid_file::read_pid_file;
pub use upgrader::{DEFAULT_READY_TIMEOUT, Upgraded, Upgrader, UpgraderBuilder};
