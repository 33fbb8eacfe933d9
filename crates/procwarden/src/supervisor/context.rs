//! What a running child sees of its supervisor.

use crate::sync::lock;
use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use smol_str::SmolStr;
use tokio::sync::{Mutex as AsyncMutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::SupervisorHandle;
use super::core::Msg;
use super::handle::Tree;
use super::run_signals::RunSignals;
use super::spec::MessageType;

/// A child's view of its supervisor, for one run of the child.
///
/// Through it the child says when it is ready, learns that it should stop or reload, receives
/// messages, and spawns tasks that are stopped with it. It is cheap to clone.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Run>,
}

/// One run (incarnation) of a child.
///
/// It holds what the child sees of itself, so that a child needs no other allocation than its
/// run and its task; what must outlive a run is kept by the supervisor's slot, and handed to
/// the next run (a pending reload), or shared with every run when the child has any (see
/// [`Lasting`]).
pub(crate) struct Run {
    name: SmolStr,
    /// Made from the supervisor's path when first needed.
    path: OnceLock<Box<str>>,
    /// Whether it is asked to stop, or to reload.
    pub(crate) signals: RunSignals,
    lasting: Option<Arc<Lasting>>,
    pub(crate) key: usize,
    pub(crate) generation: u64,
    ready_sent: AtomicBool,
    supervisor: Arc<SupervisorHandle>,
    /// The tasks the run spawned, until the run is over.
    spawned: Mutex<Option<JoinSet<()>>>,
    /// The run is over: its tasks were drained or aborted, and no more are taken. Changed and
    /// read under the lock of `spawned`.
    closed: AtomicBool,
    /// Set to end the run's task at its next poll. The supervisor keeps this rather than the
    /// task's `AbortHandle`, which would keep the task's memory allocated until the supervisor
    /// lets go of it: this way a task is freed when it ends, by the worker that ran it.
    aborted: AtomicBool,
    /// The run's task, to wake when it is aborted, or told to stop by a handle directly.
    task_waker: AtomicWaker,
    /// Whether the run's task is being polled: a poll may block its thread, so a handle does not
    /// count on such a run to pass a shutdown request on.
    in_poll: AtomicBool,
    /// Whether the run's task has ended.
    ended: AtomicBool,
    /// Whether the run's exit is on its way to the supervisor, as a message.
    reported: AtomicBool,
}

/// What a child keeps across its runs when it has any: a mailbox, or the handle of the
/// supervisor it runs. Made only for a child that accepts messages or is a supervisor.
pub(crate) struct Lasting {
    pub(crate) mailbox: Option<Mailbox>,
    /// The handle of the supervisor this child runs, while it runs.
    nested: Option<Mutex<Option<SupervisorHandle>>>,
}

/// A child's queue of messages; it survives restarts.
pub(crate) struct Mailbox {
    pub(crate) accepts: MessageType,
    pub(crate) sender: mpsc::UnboundedSender<Box<dyn Any + Send>>,
    receiver: AsyncMutex<mpsc::UnboundedReceiver<Box<dyn Any + Send>>>,
}

impl Mailbox {
    pub(crate) fn new(accepts: MessageType) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            accepts,
            sender,
            receiver: AsyncMutex::new(receiver),
        }
    }

    /// Messages still waiting, when no run is reading them.
    pub(crate) fn unread(&self) -> usize {
        self.receiver.try_lock().map(|rx| rx.len()).unwrap_or(0)
    }
}

impl Lasting {
    /// What a child with this spec keeps across its runs, if anything.
    pub(crate) fn of(accepts: Option<MessageType>, is_supervisor: bool) -> Option<Arc<Self>> {
        (accepts.is_some() || is_supervisor).then(|| {
            Arc::new(Self {
                mailbox: accepts.map(Mailbox::new),
                nested: is_supervisor.then(|| Mutex::new(None)),
            })
        })
    }

    /// The handle of the supervisor this child runs, if it is one and is running.
    pub(crate) fn nested_handle(&self) -> Option<SupervisorHandle> {
        self.nested.as_ref().and_then(|cell| lock(cell).clone())
    }
}

impl Run {
    /// The next run of the child named `name`; `reload` carries a request its last run did not
    /// take.
    pub(crate) fn new(
        name: SmolStr,
        lasting: Option<Arc<Lasting>>,
        reload: bool,
        key: usize,
        generation: u64,
        supervisor: Arc<SupervisorHandle>,
    ) -> Self {
        Self {
            name,
            path: OnceLock::new(),
            signals: RunSignals::new(reload),
            lasting,
            key,
            generation,
            ready_sent: AtomicBool::new(false),
            supervisor,
            spawned: Mutex::new(None),
            closed: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            task_waker: AtomicWaker::new(),
            in_poll: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            reported: AtomicBool::new(false),
        }
    }

    /// The child's path from the root, such as `root/db/pool`.
    pub(crate) fn path(&self) -> &str {
        self.path
            .get_or_init(|| format!("{}/{}", self.supervisor.path(), self.name).into())
    }

    /// The child's mailbox, if it accepts messages.
    fn mailbox(&self) -> Option<&Mailbox> {
        self.lasting.as_ref().and_then(|l| l.mailbox.as_ref())
    }

    /// Ends the run's task at its next poll, whatever it is waiting for.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.wake_task();
    }

    /// Polls the run's task once more, whatever it is waiting for.
    pub(crate) fn wake_task(&self) {
        self.task_waker.wake();
    }

    /// Marks the start and the end of a poll of the run's task.
    pub(crate) fn set_in_poll(&self, in_poll: bool) {
        self.in_poll.store(in_poll, Ordering::SeqCst);
    }

    /// Whether the run's task is being polled right now.
    pub(crate) fn in_poll(&self) -> bool {
        self.in_poll.load(Ordering::SeqCst)
    }

    /// Records that the run's task is over, and lets go of its waker: the supervisor keeps the
    /// run, and the waker would keep the finished task's memory allocated until then.
    pub(crate) fn release_task(&self) {
        self.ended.store(true, Ordering::Release);
        drop(self.task_waker.take());
    }

    /// Whether the run's task is over.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Records that the run's exit is being sent to the supervisor; set just before the message.
    pub(crate) fn set_reported(&self) {
        self.reported.store(true, Ordering::Release);
    }

    /// Whether the run's exit message was sent (or is being sent), so that the supervisor will
    /// hear of the exit without further ado.
    pub(crate) fn is_reported(&self) -> bool {
        self.reported.load(Ordering::Acquire)
    }

    /// Whether the run was aborted; if not, `cx` is woken when it is.
    pub(crate) fn poll_aborted(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.aborted.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.task_waker.register(cx.waker());
        // Checked again: an abort between the first check and the registration woke no one.
        if self.aborted.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ends the run's tasks: aborts those still running (the run itself was aborted, or they were
    /// drained already) and refuses new ones. A spawned task may hold a clone of the context, so
    /// this cannot be left to the context's drop.
    pub(crate) fn close_spawned(&self) {
        let set = {
            let mut spawned = lock(&self.spawned);
            self.closed.store(true, Ordering::Relaxed);
            spawned.take()
        };
        drop(set);
    }

    /// Waits for the tasks this run spawned, including any they spawn while being drained.
    pub(crate) fn poll_drain_spawned(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        loop {
            let joined = {
                let mut spawned = lock(&self.spawned);
                let Some(set) = spawned.as_mut() else {
                    return Poll::Ready(());
                };
                match std::task::ready!(set.poll_join_next(cx)) {
                    Some(joined) => joined,
                    None => {
                        *spawned = None;
                        return Poll::Ready(());
                    }
                }
            };
            if let Err(err) = joined
                && err.is_panic()
            {
                let message = super::exit::panic_message(err.into_panic());
                tracing::error!(path = %self.path(), "task spawned by child panicked: {message}");
            }
        }
    }
}

impl Context {
    pub(crate) fn new(run: Run) -> Self {
        Self {
            inner: Arc::new(run),
        }
    }

    pub(crate) fn run(&self) -> &Run {
        &self.inner
    }

    /// The run, without keeping it alive.
    pub(crate) fn downgrade(&self) -> Weak<Run> {
        Arc::downgrade(&self.inner)
    }

    /// The child's name within its supervisor.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The child's path from the root of the tree, such as `root/db/pool`.
    pub fn path(&self) -> &str {
        self.inner.path()
    }

    /// Tells the supervisor that the child can serve. Only the first call counts.
    ///
    /// Children whose spec says [`reports_ready`](crate::ChildSpec::reports_ready) must call it;
    /// for others it changes nothing.
    pub fn ready(&self) {
        if !self.inner.ready_sent.swap(true, Ordering::AcqRel) {
            self.inner.supervisor.notify(Msg::Ready {
                key: self.inner.key,
                generation: self.inner.generation,
            });
        }
    }

    /// Completes when the supervisor asks this child to stop. Cancel-safe.
    pub fn shutdown_requested(&self) -> impl Future<Output = ()> + Send + '_ {
        self.inner.signals.stop_requested()
    }

    /// Whether the supervisor has asked this child to stop.
    pub fn is_shutdown_requested(&self) -> bool {
        self.inner.signals.is_stop_requested()
    }

    /// A token cancelled when this child should stop, to hand to code that takes one. The
    /// first call makes it; later ones return clones of it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.signals.stop_token()
    }

    /// Completes when a reload was requested since the last time it completed.
    ///
    /// Requests coalesce: several reloads before the child looks count as one, but none is lost,
    /// even one requested while the child was restarting. Only one waiter per child is woken.
    pub async fn reload_requested(&self) {
        self.inner.signals.reload_requested().await;
    }

    /// Receives the next message sent to this child with
    /// [`SupervisorHandle::send`](crate::SupervisorHandle::send). Cancel-safe.
    ///
    /// Returns `None` only when the child has been removed from its supervisor.
    ///
    /// # Panics
    ///
    /// If the child's spec did not declare `M` with [`ChildSpec::messages`](crate::ChildSpec::messages):
    /// that is a bug in the program, and like any panic in a child it is reported as the
    /// child's failure.
    pub async fn recv<M: Send + 'static>(&self) -> Option<M> {
        let expected = super::spec::MessageType::of::<M>();
        let mailbox = match self.inner.mailbox() {
            Some(mailbox) if mailbox.accepts == expected => mailbox,
            Some(mailbox) => panic!(
                "child {} accepts messages of type {}, not {}",
                self.path(),
                mailbox.accepts.name(),
                expected.name()
            ),
            None => panic!(
                "child {} declares no message type (ChildSpec::messages)",
                self.path()
            ),
        };
        let message = mailbox.receiver.lock().await.recv().await?;
        Some(*message.downcast::<M>().expect("send checks the type"))
    }

    /// Spawns a task that belongs to this child: when the child's function returns, the child
    /// counts as asked to stop (so these tasks see [`shutdown_requested`](Self::shutdown_requested)
    /// complete) and the supervisor waits for them, within the child's
    /// grace period, before it counts the child as stopped; an abort aborts them too.
    ///
    /// A panic in such a task is logged with the child's path; it does not fail the child. Once
    /// the run is over (its tasks drained or aborted), a task spawned through a leftover clone of
    /// its context is dropped without running.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut spawned = lock(&self.inner.spawned);
        if self.inner.closed.load(Ordering::Relaxed) {
            tracing::debug!(path = %self.inner.path(), "task spawned after its run ended: dropped");
            return;
        }
        let span = tracing::debug_span!("task", path = %self.inner.path());
        let set = spawned.get_or_insert_with(JoinSet::new);
        // Reap what has already finished, so a long-lived child's set does not grow.
        while set.try_join_next().is_some() {}
        set.spawn(task.instrument(span));
    }

    /// A handle to the supervisor this child runs under, to add siblings, reload or stop it.
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.inner.supervisor
    }

    pub(crate) fn tree(&self) -> &Arc<Tree> {
        self.inner.supervisor.tree()
    }

    pub(crate) fn set_nested(&self, handle: Option<SupervisorHandle>) {
        if let Some(cell) = self.inner.lasting.as_ref().and_then(|l| l.nested.as_ref()) {
            *lock(cell) = handle;
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("path", &self.path())
            .field("generation", &self.inner.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run is one of a child's two allocations, like a task of the floor's: a pool of 100,000
    /// should not grow it unnoticed.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_run_is_at_most_192_bytes() {
        assert!(std::mem::size_of::<Run>() <= 192);
    }
}
