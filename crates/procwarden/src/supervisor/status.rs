//! A snapshot of a supervision tree.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ExitReason;

/// Where a child is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// Waiting for the children before it to become ready.
    Waiting,
    /// Spawned, not yet ready.
    Starting,
    /// Ready and running.
    Running,
    /// Waiting out its backoff; it will be started again at this instant.
    Restarting {
        /// When the restart is due.
        until: Instant,
    },
    /// Asked to stop, not yet stopped.
    Stopping,
    /// Stopped for good after a normal exit or a shutdown; not going to be restarted.
    Stopped,
    /// Stopped for good after a failure; not going to be restarted.
    Failed,
}

/// One node of [`SupervisorHandle::status`](crate::SupervisorHandle::status): a child, or a
/// supervisor with its children.
#[derive(Clone, Debug)]
pub struct ChildStatus {
    /// The name within its supervisor.
    pub name: Arc<str>,
    /// The path from the root, such as `root/db/pool`.
    pub path: Arc<str>,
    /// Where it is in its life.
    pub state: ChildState,
    /// How many times it has been restarted.
    pub restarts: u32,
    /// How long the current run has been going, when it is running.
    pub uptime: Option<Duration>,
    /// Why its last run ended, if one has.
    pub last_exit: Option<ExitReason>,
    /// Its children, when it is a running supervisor; empty otherwise.
    pub children: Vec<ChildStatus>,
}

impl ChildStatus {
    /// Finds a node by its path relative to this one (`"db/pool"`).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use procwarden::supervisor::{ChildStatus, ChildState};
    /// # let leaf = ChildStatus { name: "pool".into(), path: "root/db/pool".into(),
    /// #   state: ChildState::Running, restarts: 0, uptime: None, last_exit: None, children: vec![] };
    /// # let db = ChildStatus { name: "db".into(), path: "root/db".into(), children: vec![leaf], ..
    /// #   ChildStatus { name: "".into(), path: "".into(), state: ChildState::Running, restarts: 0,
    /// #   uptime: None, last_exit: None, children: vec![] } };
    /// # let root = ChildStatus { name: "root".into(), path: "root".into(), children: vec![db],
    /// #   state: ChildState::Running, restarts: 0, uptime: None, last_exit: None };
    /// assert_eq!(&*root.find("db/pool").unwrap().path, "root/db/pool");
    /// assert!(root.find("db/nope").is_none());
    /// ```
    pub fn find(&self, relative: &str) -> Option<&ChildStatus> {
        relative
            .split('/')
            .filter(|s| !s.is_empty())
            .try_fold(self, |node, name| {
                node.children.iter().find(|c| &*c.name == name)
            })
    }
}
