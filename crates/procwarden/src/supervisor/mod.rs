//! Supervision trees of async services, with Erlang/OTP's restart semantics.
//!
//! A [`Supervisor`] runs named children. Each child is an async function of a [`Context`] (or a
//! [`Service`]), described by a [`ChildSpec`]; a supervisor can itself be a child
//! ([`ChildSpec::supervisor`]), so trees nest and every child has a path such as `root/db/pool`.
//!
//! - **Start order**: children start in order, each after the previous one is ready
//!   ([`Context::ready`]); a dynamic pool ([`SupervisorBuilder::dynamic`]) starts them at once.
//! - **Restarts**: per child [`Restart`] policy, per supervisor [`Strategy`], capped by an
//!   [`Intensity`]; delays follow the child's [`Backoff`]. Past the intensity the supervisor stops
//!   its children and fails, and its parent applies its own policy to that failure.
//! - **Shutdown**: reverse start order, each child with its own grace period ([`Shutdown`]), then
//!   abort; [`Supervisor::run`] returns in every case. As with any tokio task, abort takes effect
//!   when the child's task yields: a child that blocks its thread while handling the request to
//!   stop (a synchronous wait instead of an `.await`) holds up its supervisor until it yields.
//! - **Containment**: an error or a panic, before or after the first `.await`, is that child's
//!   failure; [`ExitReason`] says which.
//! - **Control**: [`SupervisorHandle`] adds, removes and restarts children, reloads, sends typed
//!   messages, reads the [`status`](SupervisorHandle::status) of the whole tree, and streams
//!   [`Event`]s.
//! - **Programs**: [`Supervisor::run_until_signal`] maps SIGINT/SIGTERM/SIGHUP, and
//!   [`Supervisor::run_blocking`] does it from a synchronous `main`.
//!
//! Every child's work is wrapped in a `tracing` span named `child` with its `path`.
//!
//! The supervisor is event-driven: a child's exit wakes it through a channel, never a timer,
//! and each event costs the same whatever the number of children. A dynamic pool that stops with
//! no event subscriber is woken once, by the end of its last child's task, rather than by each
//! exit.

mod backoff;
mod context;
mod core;
mod error;
mod event;
mod exit;
mod handle;
mod index;
mod intensity;
mod launch;
mod name;
mod pool_drain;
mod restart;
mod run_signals;
mod shutdown_request;
mod signals;
mod spec;
mod status;
#[allow(clippy::module_inception)]
mod supervisor;

pub use crate::name::MAX_NAME_LEN;
pub use backoff::Backoff;
pub use context::Context;
pub use error::SupervisorError;
#[cfg(unix)]
pub(crate) use error::chain as error_chain;
pub use event::{Event, EventKind, RecvError, Subscription};
pub use exit::ExitReason;
pub use handle::SupervisorHandle;
pub use intensity::Intensity;
pub use restart::{Restart, Strategy};
pub use signals::RunOutcome;
pub use spec::{BoxError, ChildResult, ChildSpec, Service, Shutdown};
pub use status::{ChildState, ChildStatus};
pub use supervisor::{Supervisor, SupervisorBuilder};
