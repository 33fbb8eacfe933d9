//! The supervisor's event loop.
//!
//! One task owns all of a supervisor's state and reacts to messages: child runs report that they
//! are ready or have exited, handles ask for changes, and timers fire. Nothing polls, and each
//! event touches only the child it is about (the start order lives in ordered sets, so finding
//! the next child to start or stop is logarithmic, never a scan).

mod exits;
mod requests;
mod shutdown;
mod slot;
mod start;
mod stopping;
mod timer;

use std::any::Any;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use slab::Slab;
use smol_str::SmolStr;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use self::slot::{After, Reply, Slot, State};
use self::timer::{Kind, Timers};
use super::intensity::RestartLog;
use super::spec::MessageType;
use super::supervisor::Definition;
use super::{
    ChildSpec, ChildStatus, Context, EventKind, ExitReason, SupervisorError, SupervisorHandle,
};

/// Everything a supervisor's loop reacts to.
pub(crate) enum Msg {
    Ready {
        key: usize,
        generation: u64,
    },
    Exited {
        key: usize,
        generation: u64,
        reason: ExitReason,
    },
    // Boxed, as is a parcel: the largest variant sizes every message, exits included, and a pool
    // stops with one exit message per child.
    Add {
        spec: Box<ChildSpec>,
        reply: Reply<()>,
    },
    AddAll {
        specs: Vec<ChildSpec>,
        reply: Reply<()>,
    },
    Remove {
        name: String,
        reply: Reply<ExitReason>,
    },
    Restart {
        name: String,
        reply: Reply<()>,
    },
    Reload,
    Deliver(Box<Parcel>),
    Nested {
        name: String,
        reply: Reply<SupervisorHandle>,
    },
    Status {
        reply: Reply<StatusReport>,
    },
    Shutdown,
    Abort,
}

/// A typed message for one child, on its way through the supervisor.
pub(crate) struct Parcel {
    pub(crate) name: String,
    pub(crate) message: Box<dyn Any + Send>,
    pub(crate) kind: MessageType,
    pub(crate) reply: Reply<()>,
}

/// A supervisor's answer to a status request: itself, and its children with the handles of
/// those that are running supervisors, for the caller to ask in turn.
pub(crate) struct StatusReport {
    pub(crate) own: ChildStatus,
    pub(crate) children: Vec<SlotReport>,
}

pub(crate) struct SlotReport {
    pub(crate) status: ChildStatus,
    pub(crate) nested: Option<SupervisorHandle>,
}

/// At most this many messages are handled per wake, so that exits and the end of a shutdown
/// are seen between them even under a flood.
const MAX_BATCH: usize = 256;

/// What woke the event loop.
enum Wake {
    /// A message, and maybe more queued behind it.
    Messages(Option<Msg>),
    Timer,
    /// A silent pool's last task ended.
    Drained,
    ParentStop,
    ParentReload,
}

/// The children being restarted together under `OneForAll` or `RestForOne`.
struct Group {
    members: BTreeSet<(u64, usize)>,
    /// The child whose failure caused it; its backoff sets the delay.
    cause: usize,
}

pub(crate) struct Core {
    definition: Arc<Definition>,
    handle: Arc<SupervisorHandle>,
    receiver: mpsc::UnboundedReceiver<Msg>,
    /// The context this supervisor runs under, when it is nested.
    parent: Option<Context>,
    slots: Slab<Slot>,
    /// Children added at run time, by name; the first children are found through the
    /// definition's index.
    names: HashMap<SmolStr, usize>,
    next_seq: u64,
    next_generation: u64,
    /// Children waiting to be started, in start order.
    pending: BTreeSet<(u64, usize)>,
    /// Children expected to become ready (starting, or waiting out a backoff): no child after
    /// the first of them starts before it is ready.
    unready: BTreeSet<(u64, usize)>,
    timers: Timers,
    restart_log: RestartLog,
    group: Option<Group>,
    /// Children with a run, in start order, when they start one by one: the last one up is the
    /// first a shutdown stops.
    live_order: BTreeSet<(u64, usize)>,
    /// The run published as the one a handle may stop directly, by key and generation.
    published_first: Option<(usize, u64)>,
    /// Children still to be stopped one by one, in start order (the last is stopped first).
    stop_queue: Vec<(u64, usize)>,
    /// The child the stop queue is waiting for.
    stopping_now: Option<usize>,
    /// Exits decided here rather than reported by a task (aborts), handled before the next wait.
    exits: VecDeque<(usize, u64, ExitReason)>,
    /// Set once shutting down, with the result to return.
    outcome: Option<Result<(), SupervisorError>>,
    /// Children not stopped for good.
    active: usize,
    /// Children with a task.
    live: usize,
    started: Instant,
    /// Whether the supervisor has yet to report itself ready.
    announce: bool,
    /// Whether anyone listens for events, read once per batch of messages.
    observed: bool,
}

impl Core {
    pub(crate) fn new(
        definition: Arc<Definition>,
        handle: SupervisorHandle,
        receiver: mpsc::UnboundedReceiver<Msg>,
        parent: Option<Context>,
    ) -> Self {
        let restart_log = RestartLog::new(definition.intensity);
        Self {
            definition,
            handle: Arc::new(handle),
            receiver,
            parent,
            slots: Slab::new(),
            names: HashMap::new(),
            next_seq: 0,
            next_generation: 0,
            pending: BTreeSet::new(),
            unready: BTreeSet::new(),
            timers: Timers::default(),
            restart_log,
            group: None,
            live_order: BTreeSet::new(),
            published_first: None,
            stop_queue: Vec::new(),
            stopping_now: None,
            exits: VecDeque::new(),
            outcome: None,
            active: 0,
            live: 0,
            started: Instant::now(),
            announce: true,
            observed: false,
        }
    }

    fn path(&self) -> &Arc<str> {
        self.handle.shared_path()
    }

    fn shutting_down(&self) -> bool {
        self.outcome.is_some()
    }

    /// The path of the child at `key`, such as `root/db/pool`; made anew each time, for events,
    /// errors and logs.
    fn child_path(&self, key: usize) -> Arc<str> {
        self.slots[key]
            .path(self.handle.path(), &self.definition)
            .into()
    }

    /// Streams an event about the child at `key`, if anyone listens; its path is only made then.
    fn emit(&self, key: usize, kind: impl FnOnce() -> EventKind) {
        if self.observed {
            self.handle.tree().emit(&self.child_path(key), kind);
        }
    }

    /// Streams an event about this supervisor itself, if anyone listens.
    fn emit_own(&self, kind: impl FnOnce() -> EventKind) {
        if self.observed {
            self.handle.tree().emit(self.path(), kind);
        }
    }

    pub(crate) async fn run(mut self) -> Result<(), SupervisorError> {
        let span = tracing::info_span!("supervisor", path = %self.handle.path());
        async move {
            tracing::debug!("starting");
            self.observed = self.handle.tree().is_observed();
            let first = self.definition.children.len();
            self.slots.reserve(first);
            // Made now rather than when the shutdown needs them, which is when time counts.
            self.exits.reserve(1);
            if !self.definition.dynamic {
                self.stop_queue.reserve(first);
            }
            // All slots first, then all spawns back to back: a burst keeps the runtime's other
            // workers busy stealing instead of parking and being woken for each task.
            let keys: Vec<usize> = (0..first).map(|_| self.insert_slot(None)).collect();
            if self.definition.dynamic {
                self.start_burst(&keys);
            } else {
                self.start_in_order(keys);
            }
            let outcome = self.event_loop().await;
            match &outcome {
                Ok(()) => tracing::debug!("stopped"),
                Err(err) => tracing::warn!("stopped: {err}"),
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn event_loop(&mut self) -> Result<(), SupervisorError> {
        let parent = self.parent.clone();
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut armed = None;
        let mut looked = false;
        loop {
            self.handle_exits();
            if let Some(outcome) = self.finished() {
                return outcome;
            }
            self.announce_ready();
            self.publish_first();
            // After publishing: a handle that took the previous run saw no change of ours, and
            // its request is visible here.
            if self.take_shutdown_request() {
                continue;
            }
            let next = self.timers.next_deadline();
            if next != armed {
                if next.is_some() && !looked {
                    // A child asked to stop (or start) usually answers at once. Arming its
                    // deadline wakes the timer driver, so first let it run and read its answer:
                    // woken by the answer itself, or once this worker has nothing else to run.
                    looked = true;
                    let first = tokio::select! {
                        biased;
                        msg = self.receiver.recv() => msg,
                        () = tokio::task::yield_now() => None,
                    };
                    self.observed = self.handle.tree().is_observed();
                    self.handle_queued(first);
                    continue;
                }
                if let Some(at) = next {
                    sleep.as_mut().reset(at);
                }
                armed = next;
            }
            looked = false;
            let stopping = self.shutting_down();
            let drain = self.handle.pool_drain();
            let silent = drain.is_silent();
            let wake = tokio::select! {
                biased;
                msg = self.receiver.recv() => Wake::Messages(msg),
                () = std::future::poll_fn(|cx| drain.poll_drained(cx)), if silent => Wake::Drained,
                () = &mut sleep, if armed.is_some() => Wake::Timer,
                () = async { parent.as_ref().unwrap().shutdown_requested().await },
                    if parent.is_some() && !stopping => Wake::ParentStop,
                () = async { parent.as_ref().unwrap().reload_requested().await },
                    if parent.is_some() => Wake::ParentReload,
            };
            // Checked once per wake, not per event: whoever subscribed before this wake sees
            // everything it causes.
            self.observed = self.handle.tree().is_observed();
            match wake {
                Wake::Messages(first) => self.handle_queued(first),
                Wake::Timer => {
                    armed = None;
                    self.fire_timers();
                }
                // `finished` sees it.
                Wake::Drained => {}
                Wake::ParentStop => self.begin_shutdown(Ok(())),
                Wake::ParentReload => self.reload(),
            }
        }
    }

    /// Handles `first`, then the messages already queued behind it, up to [`MAX_BATCH`]. Read
    /// one at a time rather than into a buffer: a supervisor's wake is most often one message.
    fn handle_queued(&mut self, mut first: Option<Msg>) {
        for _ in 0..MAX_BATCH {
            let Some(msg) = first.take().or_else(|| self.receiver.try_recv().ok()) else {
                return;
            };
            // Before each message: an exit may be the answer to a request that a handle gave
            // the child directly, and belongs to that shutdown.
            self.take_shutdown_request();
            self.handle_msg(msg);
        }
    }

    fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Ready { key, generation } => {
                if self.is_current(key, generation)
                    && matches!(self.slots[key].state, State::Starting)
                {
                    self.mark_ready(key);
                    self.pump();
                }
            }
            Msg::Exited {
                key,
                generation,
                reason,
            } => self.exits.push_back((key, generation, reason)),
            Msg::Add { spec, reply } => {
                let _ = reply.send(self.add(spec));
            }
            Msg::AddAll { specs, reply } => {
                let _ = reply.send(self.add_all(specs));
            }
            Msg::Remove { name, reply } => self.remove(&name, reply),
            Msg::Restart { name, reply } => self.restart_on_demand(&name, reply),
            Msg::Reload => self.reload(),
            Msg::Deliver(parcel) => {
                let Parcel {
                    name,
                    message,
                    kind,
                    reply,
                } = *parcel;
                let _ = reply.send(self.deliver(&name, message, kind));
            }
            Msg::Nested { name, reply } => {
                let _ = reply.send(self.nested(&name));
            }
            Msg::Status { reply } => {
                let _ = reply.send(Ok(self.status()));
            }
            Msg::Shutdown => self.begin_shutdown(Ok(())),
            Msg::Abort => self.abort_all(),
        }
    }

    /// Whether `generation` is the current run of the child at `key`, and that run is live.
    fn is_current(&self, key: usize, generation: u64) -> bool {
        self.slots
            .get(key)
            .is_some_and(|slot| slot.generation == generation && slot.live.is_some())
    }

    fn next_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn key_of(&self, name: &str) -> Result<usize, SupervisorError> {
        self.find(name).ok_or_else(|| SupervisorError::NoSuchChild {
            path: format!("{}/{name}", self.handle.path()),
        })
    }

    fn find(&self, name: &str) -> Option<usize> {
        if let Some(&key) = self.names.get(name) {
            return Some(key);
        }
        // A first child's key and sequence number are its position, for as long as it stays;
        // once removed, its key may hold a child added later, with a later sequence number.
        let definition = &self.definition;
        let position = definition.index.find(name, &definition.children)?;
        self.slots
            .get(position)
            .is_some_and(|slot| slot.seq == position as u64)
            .then_some(position)
    }

    /// Acts on the timers that are due: start timeouts, grace periods, the ends of backoffs,
    /// and a pool's grace.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(timer) = self.timers.pop_due(now) {
            if let Kind::Pool(grace) = timer.kind {
                self.abort_pool_stragglers(grace);
                continue;
            }
            let Some(slot) = self.slots.get(timer.key) else {
                continue;
            };
            if slot.generation != timer.generation {
                continue;
            }
            match (timer.kind, &slot.state) {
                (Kind::Start, State::Starting) => {
                    let timeout = slot
                        .spec(&self.definition)
                        .start_timeout
                        .unwrap_or_default();
                    let why = ExitReason::failed(format!("not ready within {timeout:?}"));
                    let path = slot.path(self.handle.path(), &self.definition);
                    tracing::warn!(path, "not ready within {timeout:?}");
                    self.begin_stop(timer.key, After::Fail(why));
                }
                (Kind::Stop, State::Stopping(_)) => self.abort(timer.key),
                (Kind::Backoff, State::Backoff(_)) => {
                    let order = slot.order(timer.key);
                    self.unready.remove(&order);
                    self.queue_start(timer.key);
                    self.pump();
                }
                _ => {}
            }
        }
    }
}

impl Drop for Core {
    /// A supervisor that is itself aborted (or whose runtime shuts down) takes its children with
    /// it rather than leaving them orphaned.
    fn drop(&mut self) {
        self.handle.shutdown_request().publish(None);
        // After a shutdown every task has ended: a pool that went silent leaves its runs in
        // their slots, and telling each one again would only touch it once more.
        if self.live == 0 || self.handle.pool_drain().is_drained() {
            return;
        }
        for (_, slot) in &self.slots {
            if let Some(live) = &slot.live {
                live.run().abort();
                live.run().signals.request_stop();
            }
        }
    }
}

#[cfg(test)]
mod tests;
