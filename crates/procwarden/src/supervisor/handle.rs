//! Controlling a running supervisor from anywhere.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::core::{Msg, Parcel, SlotReport};
use super::pool_drain::PoolDrain;
use super::shutdown_request::{Delivery, ShutdownRequest};
use super::spec::MessageType;
use super::{ChildSpec, ChildStatus, Event, ExitReason, Subscription, SupervisorError};

/// What all supervisors of one tree share.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    /// Made by the first subscriber: the channel's buffer is some 80 KiB, which a tree that no
    /// one observes should not cost.
    events: OnceLock<broadcast::Sender<Event>>,
}

/// How many events a subscriber may fall behind before it misses some.
const EVENT_BUFFER: usize = 1024;

impl Tree {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Whether anyone listens for events.
    pub(crate) fn is_observed(&self) -> bool {
        self.events
            .get()
            .is_some_and(|events| events.receiver_count() > 0)
    }

    pub(crate) fn emit(&self, path: &Arc<str>, kind: impl FnOnce() -> super::EventKind) {
        if let Some(events) = self.events.get()
            && events.receiver_count() > 0
        {
            let _ = events.send(Event {
                path: Arc::clone(path),
                kind: kind(),
            });
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events
            .get_or_init(|| broadcast::Sender::new(EVENT_BUFFER))
            .subscribe()
    }
}

/// A handle to a supervisor: add, remove and restart children, reload, send messages, read the
/// status, subscribe to events, stop.
///
/// Cheap to clone and usable from any task. Calls made before the supervisor starts running wait
/// in its queue and are handled once it does; calls made after it returned fail with
/// [`SupervisorError::NotRunning`].
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    sender: mpsc::UnboundedSender<Msg>,
    shutdown: Arc<ShutdownRequest>,
    drain: Arc<PoolDrain>,
    path: Arc<str>,
    tree: Arc<Tree>,
}

impl SupervisorHandle {
    pub(crate) fn new(
        sender: mpsc::UnboundedSender<Msg>,
        shutdown: Arc<ShutdownRequest>,
        drain: Arc<PoolDrain>,
        path: Arc<str>,
        tree: Arc<Tree>,
    ) -> Self {
        Self {
            sender,
            shutdown,
            drain,
            path,
            tree,
        }
    }

    /// The supervisor's path from the root of its tree.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn shared_path(&self) -> &Arc<str> {
        &self.path
    }

    pub(crate) fn tree(&self) -> &Arc<Tree> {
        &self.tree
    }

    pub(crate) fn shutdown_request(&self) -> &Arc<ShutdownRequest> {
        &self.shutdown
    }

    pub(crate) fn pool_drain(&self) -> &PoolDrain {
        &self.drain
    }

    /// Sends without waiting; a supervisor that is gone needs no notice.
    pub(crate) fn notify(&self, msg: Msg) {
        let _ = self.sender.send(msg);
    }

    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T, SupervisorError>>) -> Msg,
    ) -> Result<T, SupervisorError> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(msg(reply)).map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())?
    }

    fn gone(&self) -> SupervisorError {
        SupervisorError::NotRunning {
            path: self.path.to_string(),
        }
    }

    /// Adds a child at the end of the start order and starts it (after the children before it
    /// are ready). Resolves once the child is accepted.
    ///
    /// Refused with [`SupervisorError::Stopping`] while the supervisor stops, and with
    /// [`SupervisorError::DuplicateName`] or [`SupervisorError::InvalidName`] for a bad name.
    pub async fn add(&self, spec: ChildSpec) -> Result<(), SupervisorError> {
        let spec = Box::new(spec);
        self.ask(|reply| Msg::Add { spec, reply }).await
    }

    /// Adds several children at the end of the start order, in one exchange with the
    /// supervisor rather than one each, and starts them as [`add`](Self::add) does: a pool
    /// starts them all at once. Resolves once they are accepted.
    ///
    /// All or none: if one of them is refused — for a bad name, a name already taken or taken
    /// earlier in the batch, or because the supervisor stops — none is added, and the error
    /// names the first refused. Adding no children succeeds at once.
    ///
    /// ```
    /// use procwarden::{ChildSpec, Supervisor};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let supervisor = Supervisor::builder("pool").dynamic().build()?;
    /// let handle = supervisor.handle();
    /// let running = tokio::spawn(supervisor.run());
    ///
    /// let worker = |name: String| {
    ///     ChildSpec::new(name, |ctx| async move {
    ///         ctx.shutdown_requested().await;
    ///         Ok::<(), std::io::Error>(())
    ///     })
    /// };
    /// handle.add_all((0..3).map(|i| worker(format!("w{i}")))).await?;
    /// assert_eq!(handle.status().await?.children.len(), 3);
    ///
    /// // "w1" is taken: neither child is added.
    /// assert!(handle.add_all([worker("w3".into()), worker("w1".into())]).await.is_err());
    /// assert_eq!(handle.status().await?.children.len(), 3);
    ///
    /// handle.shutdown();
    /// running.await.unwrap()?;
    /// # Ok::<(), procwarden::SupervisorError>(())
    /// # }).unwrap();
    /// ```
    pub async fn add_all(
        &self,
        specs: impl IntoIterator<Item = ChildSpec>,
    ) -> Result<(), SupervisorError> {
        let specs: Vec<ChildSpec> = specs.into_iter().collect();
        if specs.is_empty() {
            return Ok(());
        }
        self.ask(|reply| Msg::AddAll { specs, reply }).await
    }

    /// Stops the child gracefully, removes it, and returns why its last run ended.
    pub async fn remove(&self, name: &str) -> Result<ExitReason, SupervisorError> {
        let name = name.to_owned();
        self.ask(|reply| Msg::Remove { name, reply }).await
    }

    /// Stops the child gracefully and starts it again at once: no backoff, and it does not count
    /// toward the restart intensity. A stopped child is simply started.
    pub async fn restart(&self, name: &str) -> Result<(), SupervisorError> {
        let name = name.to_owned();
        self.ask(|reply| Msg::Restart { name, reply }).await
    }

    /// Asks every running child of the tree below this supervisor to reload
    /// ([`Context::reload_requested`](crate::Context::reload_requested)). Never waits; requests
    /// coalesce but are never lost, even for a child that is restarting.
    pub fn reload(&self) -> Result<(), SupervisorError> {
        self.sender.send(Msg::Reload).map_err(|_| self.gone())
    }

    /// Asks the supervisor to stop all its children gracefully, in reverse start order, and
    /// return. Never waits; see [`closed`](Self::closed).
    pub fn shutdown(&self) {
        // The first child to stop may be told directly; it then tells the supervisor.
        if let Delivery::Message = self.shutdown.request() {
            self.notify(Msg::Shutdown);
        }
    }

    /// Aborts every child's task at once and makes the supervisor return
    /// [`SupervisorError::Aborted`].
    pub fn abort(&self) {
        self.notify(Msg::Abort);
    }

    /// Completes once the supervisor has returned.
    pub async fn closed(&self) {
        self.sender.closed().await;
    }

    /// Delivers `message` to the child at `path`, relative to this supervisor (`"db/pool"`) or
    /// from the root (`"root/db/pool"`).
    ///
    /// The child must have declared `M` with [`ChildSpec::messages`]. The message goes into the
    /// child's mailbox, which survives restarts: a child that is restarting receives it once it
    /// runs again. A child that has stopped for good refuses it with
    /// [`SupervisorError::ChildStopped`].
    pub async fn send<M: Send + 'static>(
        &self,
        path: &str,
        message: M,
    ) -> Result<(), SupervisorError> {
        let (target, name) = self.resolve_parent(path).await?;
        let message: Box<dyn Any + Send> = Box::new(message);
        target
            .ask(|reply| {
                Msg::Deliver(Box::new(Parcel {
                    name,
                    message,
                    kind: MessageType::of::<M>(),
                    reply,
                }))
            })
            .await
    }

    /// The status of this supervisor and, recursively, of all its children.
    pub async fn status(&self) -> Result<ChildStatus, SupervisorError> {
        let report = self.ask(|reply| Msg::Status { reply }).await?;
        let mut node = report.own;
        node.children = Vec::with_capacity(report.children.len());
        for child in report.children {
            node.children.push(child.into_status().await);
        }
        Ok(node)
    }

    /// Streams the lifecycle events of this supervisor's subtree.
    ///
    /// Subscribe before a dynamic pool is stopped to see each of its children exit: a pool that
    /// stops with no subscriber counts its children out without reporting each one.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.tree.subscribe(),
            prefix: Arc::clone(&self.path),
        }
    }

    /// The handle of the nested supervisor at `path` (relative to this one).
    pub async fn nested(&self, path: &str) -> Result<SupervisorHandle, SupervisorError> {
        let mut handle = self.clone();
        for name in self.relative_segments(path) {
            let name = name.to_owned();
            handle = handle.ask(|reply| Msg::Nested { name, reply }).await?;
        }
        Ok(handle)
    }

    /// The supervisor that holds the last segment of `path`, and that segment.
    async fn resolve_parent(
        &self,
        path: &str,
    ) -> Result<(SupervisorHandle, String), SupervisorError> {
        let segments: Vec<&str> = self.relative_segments(path).collect();
        let Some((last, parents)) = segments.split_last() else {
            return Err(SupervisorError::NoSuchChild {
                path: path.to_owned(),
            });
        };
        let target = self.nested(&parents.join("/")).await?;
        Ok((target, (*last).to_owned()))
    }

    fn relative_segments<'p>(&self, path: &'p str) -> impl Iterator<Item = &'p str> {
        let relative = path
            .strip_prefix(&*self.path)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(path);
        relative.split('/').filter(|s| !s.is_empty())
    }
}

impl SlotReport {
    fn into_status(self) -> futures_util::future::BoxFuture<'static, ChildStatus> {
        Box::pin(async move {
            let mut status = self.status;
            if let Some(nested) = self.nested
                && let Ok(inner) = nested.status().await
            {
                status.children = inner.children;
            }
            status
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::EventKind;

    #[test]
    fn a_tree_makes_its_event_channel_for_its_first_subscriber() {
        let tree = Tree::new();
        let path: Arc<str> = "root/a".into();
        tree.emit(&path, || {
            unreachable!("no one listens: the event is not even made")
        });
        assert!(tree.events.get().is_none());

        let mut receiver = tree.subscribe();
        assert!(tree.is_observed());
        tree.emit(&path, || EventKind::Ready);
        let event = receiver
            .try_recv()
            .expect("the event after the subscription");
        assert_eq!(&*event.path, "root/a");
        assert!(matches!(event.kind, EventKind::Ready));

        drop(receiver);
        assert!(!tree.is_observed());
    }
}
