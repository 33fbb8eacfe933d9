//! The supervisor's event loop.
//!
//! One task owns all of a supervisor's state and reacts to messages: child runs report that they
//! are ready or have exited, handles ask for changes, and timers fire. Nothing polls, and each
//! event touches only the child it is about (the start order lives in ordered sets, so finding
//! the next child to start or stop is logarithmic, never a scan).

mod slot;
mod timer;

use std::any::Any;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;
use smol_str::SmolStr;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use self::slot::{After, Reply, Slot, State};
use self::timer::{Kind, Timer, Timers};
use super::context::{Lasting, Run};
use super::intensity::RestartLog;
use super::spec::MessageType;
use super::supervisor::Definition;
use super::{
    ChildSpec, ChildState, ChildStatus, Context, EventKind, ExitReason, Restart, Shutdown,
    Strategy, SupervisorError, SupervisorHandle, name,
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
            self.observed = self.handle.tree().events.receiver_count() > 0;
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
                for key in keys {
                    self.queue_start(key);
                }
                self.pump();
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
                    self.observed = self.handle.tree().events.receiver_count() > 0;
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
            self.observed = self.handle.tree().events.receiver_count() > 0;
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

    // ---- adding, starting, readiness -------------------------------------------------------

    /// Gives a child added at run time its slot; its name must already be valid.
    fn insert(&mut self, spec: Box<ChildSpec>) -> Result<usize, SupervisorError> {
        if self.find(&spec.name).is_some() {
            return Err(SupervisorError::DuplicateName {
                path: format!("{}/{}", self.handle.path(), spec.name),
            });
        }
        let name = spec.name.clone();
        let key = self.insert_slot(Some(spec));
        self.names.insert(name, key);
        Ok(key)
    }

    /// Gives a child its slot: one added at run time with its own spec, or else the next of the
    /// definition's children, at its position (the builder checked the names, and the
    /// definition's index finds it).
    fn insert_slot(&mut self, added: Option<Box<ChildSpec>>) -> usize {
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        let seq = self.next_seq;
        self.next_seq += 1;
        let spec = slot::spec_of(seq, added.as_deref(), &self.definition);
        let lasting = Lasting::of(spec.messages, spec.is_supervisor);
        entry.insert(Slot::new(seq, added, lasting));
        self.active += 1;
        key
    }

    fn add(&mut self, spec: Box<ChildSpec>) -> Result<(), SupervisorError> {
        if self.shutting_down() {
            return Err(SupervisorError::Stopping {
                path: self.handle.path().to_owned(),
                child: spec.name.to_string(),
            });
        }
        name::validate(&spec.name)?;
        let key = self.insert(spec)?;
        self.queue_start(key);
        self.pump();
        Ok(())
    }

    /// Puts a child in line to start: at once in a pool, in start order otherwise.
    fn queue_start(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        slot.state = State::Waiting;
        if self.definition.dynamic {
            self.start(key);
        } else {
            let order = slot.order(key);
            self.pending.insert(order);
        }
    }

    /// Starts waiting children in order, as far as readiness allows.
    fn pump(&mut self) {
        while let Some(&(seq, key)) = self.pending.first() {
            if self.unready.first().is_some_and(|&(first, _)| first < seq) {
                return;
            }
            self.pending.pop_first();
            self.start(key);
        }
    }

    fn start(&mut self, key: usize) {
        let now = Instant::now();
        let ctx = self.prepare(key, now);
        self.handle.pool_drain().task_started();
        self.slots[key]
            .spec(&self.definition)
            .launch
            .launch(ctx.clone());
        self.commit(key, ctx, now);
    }

    /// Starts a pool's first children in three passes — make every context, spawn every task,
    /// then do the bookkeeping — so that the spawns come back to back and the runtime's other
    /// workers keep stealing them instead of parking and being woken for each one.
    fn start_burst(&mut self, keys: &[usize]) {
        let now = Instant::now();
        let prepared: Vec<Context> = keys.iter().map(|&key| self.prepare(key, now)).collect();
        for (ctx, &key) in prepared.iter().zip(keys) {
            self.handle.pool_drain().task_started();
            self.slots[key]
                .spec(&self.definition)
                .launch
                .launch(ctx.clone());
        }
        for (ctx, &key) in prepared.into_iter().zip(keys) {
            self.commit(key, ctx, now);
        }
    }

    /// A new run's context, not yet spawned.
    fn prepare(&mut self, key: usize, now: Instant) -> Context {
        let generation = self.next_generation();
        let slot = &mut self.slots[key];
        slot.generation = generation;
        slot.since = Some(now);
        Context::new(Run::new(
            slot.spec(&self.definition).name.clone(),
            slot.lasting.clone(),
            mem::take(&mut slot.reload),
            key,
            generation,
            Arc::clone(&self.handle),
        ))
    }

    /// Records a run just spawned: it is live, and starting or, if it reports no readiness, ready.
    fn commit(&mut self, key: usize, run: Context, now: Instant) {
        let slot = &mut self.slots[key];
        let generation = slot.generation;
        slot.live = Some(run);
        self.live += 1;
        if !self.definition.dynamic {
            self.live_order.insert(slot.order(key));
        }
        self.emit(key, || EventKind::Starting);
        let slot = &mut self.slots[key];
        if slot.spec(&self.definition).reports_ready {
            slot.state = State::Starting;
            let order = slot.order(key);
            if let Some(timeout) = slot.spec(&self.definition).start_timeout {
                self.timers.push(Timer {
                    at: now + timeout,
                    key,
                    generation,
                    kind: Kind::Start,
                });
            }
            if !self.definition.dynamic {
                self.unready.insert(order);
            }
        } else {
            self.mark_ready(key);
        }
    }

    fn mark_ready(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        slot.state = State::Running;
        let order = slot.order(key);
        self.unready.remove(&order);
        self.emit(key, || EventKind::Ready);
    }

    /// A nested supervisor is ready once its first children all are.
    fn announce_ready(&mut self) {
        if self.announce
            && !self.shutting_down()
            && self.pending.is_empty()
            && self.unready.is_empty()
        {
            self.announce = false;
            match &self.parent {
                // The parent reports the nested supervisor's readiness as its child's.
                Some(parent) => parent.ready(),
                None => self.emit_own(|| EventKind::Ready),
            }
        }
    }

    // ---- exits and restarts ---------------------------------------------------------------

    fn handle_exits(&mut self) {
        while let Some((key, generation, reason)) = self.exits.pop_front() {
            if self.is_current(key, generation) {
                self.child_exited(key, reason);
            }
        }
    }

    fn child_exited(&mut self, key: usize, reason: ExitReason) {
        let slot = &mut self.slots[key];
        // A reload request the run did not take is its next run's.
        if let Some(run) = slot.live.take() {
            slot.reload |= run.run().reload.is_pending();
        }
        let order = slot.order(key);
        self.live_order.remove(&order);
        let state = mem::replace(&mut slot.state, State::Waiting);
        let reason = match &state {
            State::Stopping(After::Fail(why)) => why.clone(),
            _ => reason,
        };
        slot.last_exit = Some(reason.clone());
        self.live -= 1;
        self.unready.remove(&order);
        tracing::debug!(path = %self.child_path(key), "exited: {reason}");
        self.emit(key, || EventKind::Exited(reason.clone()));
        let queued_stop = self.stopping_now == Some(key);
        if queued_stop {
            self.stopping_now = None;
        }

        match state {
            State::Stopping(After::Remove(reply)) => {
                self.remove_slot(key);
                let _ = reply.send(Ok(reason));
            }
            State::Stopping(After::Restart(reply)) => {
                if self.shutting_down() {
                    self.finish(key);
                } else {
                    self.queue_start(key);
                }
                let _ = reply.send(Ok(()));
            }
            State::Stopping(After::Nothing) if !self.shutting_down() => {
                // Stopped for a group restart: wait for the rest of the group.
                self.unready.insert(order);
            }
            State::Stopping(After::Nothing) => self.finish(key),
            State::Stopping(After::Fail(_)) | State::Starting | State::Running => {
                self.on_exit(key, reason)
            }
            State::Waiting | State::Backoff(_) | State::Stopped => {}
        }
        if queued_stop {
            self.advance_stop_queue();
        }
        self.pump();
    }

    /// A child ended by itself (or failed to start): restart it, and maybe its siblings, by policy.
    fn on_exit(&mut self, key: usize, reason: ExitReason) {
        let slot = &self.slots[key];
        if self.shutting_down() || !slot.spec(&self.definition).restart.restarts_after(&reason) {
            self.finish(key);
            return;
        }
        if !self.restart_log.admit(Instant::now()) {
            let err = SupervisorError::IntensityExceeded {
                path: self.handle.path().to_owned(),
                max_restarts: self.definition.intensity.max_restarts(),
                period: self.definition.intensity.period(),
                child: slot.path(self.handle.path(), &self.definition),
                reason,
            };
            self.emit_own(|| EventKind::IntensityExceeded);
            self.finish(key);
            self.begin_shutdown(Err(err));
            return;
        }
        let seq = slot.seq;
        match self.definition.strategy {
            Strategy::OneForOne => {
                let delay = self.next_delay(key);
                self.slots[key].restarts += 1;
                self.delay_start(key, delay);
            }
            Strategy::OneForAll => {
                let members: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
                self.group_restart(key, members);
            }
            Strategy::RestForOne => {
                let members: Vec<usize> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| s.seq >= seq)
                    .map(|(k, _)| k)
                    .collect();
                self.group_restart(key, members);
            }
        }
    }

    /// The backoff before the next restart of a child, which resets once it ran stably.
    fn next_delay(&mut self, key: usize) -> Duration {
        let now = Instant::now();
        let slot = &mut self.slots[key];
        let stable = slot.spec(&self.definition).backoff.stable_period();
        if slot
            .since
            .is_some_and(|since| now.saturating_duration_since(since) >= stable)
        {
            slot.attempt = 0;
        }
        let delay = slot
            .spec(&self.definition)
            .backoff
            .jittered_delay(slot.attempt);
        slot.attempt = slot.attempt.saturating_add(1);
        delay
    }

    fn delay_start(&mut self, key: usize, delay: Duration) {
        self.emit(key, || EventKind::Restarting { delay });
        if delay.is_zero() {
            self.queue_start(key);
            return;
        }
        let generation = self.next_generation();
        let at = Instant::now() + delay;
        let slot = &mut self.slots[key];
        slot.generation = generation;
        slot.state = State::Backoff(at);
        let order = slot.order(key);
        if !self.definition.dynamic {
            self.unready.insert(order);
        }
        self.timers.push(Timer {
            at,
            key,
            generation,
            kind: Kind::Backoff,
        });
    }

    /// Stops `members` in reverse start order, then starts them again in order. A group already
    /// under way absorbs the new one.
    fn group_restart(&mut self, cause: usize, members: Vec<usize>) {
        let group = self.group.get_or_insert_with(|| Group {
            members: BTreeSet::new(),
            cause,
        });
        group.cause = cause;
        for key in members {
            let slot = &mut self.slots[key];
            let order = slot.order(key);
            match slot.state {
                State::Starting | State::Running => self.stop_queue.push(order),
                State::Waiting | State::Backoff(_) => {
                    slot.state = State::Waiting;
                    self.pending.remove(&order);
                    self.unready.insert(order);
                }
                State::Stopping(_) | State::Stopped => continue,
            }
            group.members.insert(order);
        }
        self.stop_queue.sort_unstable();
        self.stop_queue.dedup();
        self.advance_stop_queue();
    }

    /// Stops the next child of the stop queue once the previous one has stopped; in a pool,
    /// all at once.
    fn advance_stop_queue(&mut self) {
        while self.stopping_now.is_none() {
            let Some((seq, key)) = self.stop_queue.pop() else {
                self.stop_queue_drained();
                return;
            };
            let Some(slot) = self.slots.get(key) else {
                continue;
            };
            if slot.seq == seq && slot.is_up() {
                if !self.definition.dynamic {
                    self.stopping_now = Some(key);
                }
                self.begin_stop(key, After::Nothing);
            }
        }
    }

    fn stop_queue_drained(&mut self) {
        if self.shutting_down() {
            return;
        }
        let Some(group) = self.group.take() else {
            return;
        };
        let delay = if self.slots.contains(group.cause) {
            self.next_delay(group.cause)
        } else {
            Duration::ZERO
        };
        for (seq, key) in group.members {
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            if slot.seq != seq || !matches!(slot.state, State::Waiting) {
                continue;
            }
            if slot.spec(&self.definition).restart == Restart::Temporary {
                self.finish(key);
                continue;
            }
            slot.restarts += 1;
            self.delay_start(key, delay);
        }
        self.pump();
    }

    /// Asks a running child to stop, by its shutdown policy.
    fn begin_stop(&mut self, key: usize, after: After) {
        let slot = &mut self.slots[key];
        let Some(live) = &slot.live else { return };
        slot.state = State::Stopping(after);
        match slot.spec(&self.definition).shutdown {
            Shutdown::Brutal => {
                live.run().abort();
                self.exits
                    .push_back((key, slot.generation, ExitReason::Aborted));
            }
            Shutdown::Timeout(grace) => {
                live.run().stop.request();
                // A run whose exit is already on its way has no grace period left to watch:
                // typically the one a handle stopped directly, whose exit woke this loop.
                if !live.run().is_reported() {
                    self.timers.push(Timer {
                        at: Instant::now() + grace,
                        key,
                        generation: slot.generation,
                        kind: Kind::Stop,
                    });
                }
            }
            Shutdown::Infinity => live.run().stop.request(),
        }
        self.emit(key, || EventKind::Stopping);
    }

    /// A child ended for good: removed when temporary or in a pool, kept as stopped otherwise.
    fn finish(&mut self, key: usize) {
        let shutting_down = self.shutting_down();
        let slot = &mut self.slots[key];
        let order = slot.order(key);
        self.pending.remove(&order);
        self.unready.remove(&order);
        let removable =
            self.definition.dynamic || slot.spec(&self.definition).restart == Restart::Temporary;
        if removable && !shutting_down {
            self.remove_slot(key);
        } else if !matches!(slot.state, State::Stopped) {
            slot.state = State::Stopped;
            self.active -= 1;
        }
    }

    fn remove_slot(&mut self, key: usize) {
        let slot = self.slots.remove(key);
        let order = slot.order(key);
        self.names.remove(&slot.spec(&self.definition).name);
        self.pending.remove(&order);
        self.unready.remove(&order);
        if !matches!(slot.state, State::Stopped) {
            self.active -= 1;
        }
        if let Some(mailbox) = slot.mailbox() {
            let unread = mailbox.unread();
            if unread > 0 {
                let path = slot.path(self.handle.path(), &self.definition);
                tracing::warn!(path, unread, "child removed with unread messages");
            }
        }
        if self.observed {
            self.handle.tree().emit(
                &slot.path(self.handle.path(), &self.definition).into(),
                || EventKind::Removed,
            );
        }
    }

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

    /// Aborts a child past its grace period; its exit is handled before the next wait.
    fn abort(&mut self, key: usize) {
        let slot = &self.slots[key];
        if let Some(live) = &slot.live {
            let path = slot.path(self.handle.path(), &self.definition);
            tracing::warn!(path, "still running after its grace period: aborting");
            live.run().abort();
            self.exits
                .push_back((key, slot.generation, ExitReason::Aborted));
        }
    }

    fn abort_pool_stragglers(&mut self, grace: Duration) {
        let stragglers: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, slot)| {
                matches!(slot.state, State::Stopping(_))
                    && slot.spec(&self.definition).shutdown == Shutdown::Timeout(grace)
                    // A silent pool's runs that ended are still `Stopping` here.
                    && slot.live.as_ref().is_some_and(|live| !live.run().has_ended())
            })
            .map(|(key, _)| key)
            .collect();
        for key in stragglers {
            self.abort(key);
        }
    }

    // ---- shutdown ----------------------------------------------------------------------------

    /// Begins the shutdown a handle asked for, if it has not begun; says whether it did now.
    fn take_shutdown_request(&mut self) -> bool {
        if self.shutting_down() || !self.handle.shutdown_request().is_requested() {
            return false;
        }
        self.begin_shutdown(Ok(()));
        true
    }

    /// Tells the handles which run a shutdown would stop first, when they may stop it directly:
    /// the last child up, when nothing else is being stopped in order and it stops gracefully.
    fn publish_first(&mut self) {
        let first = self.first_to_stop();
        if first == self.published_first {
            return;
        }
        self.published_first = first;
        let run = first.and_then(|(key, _)| self.slots[key].live.as_ref().map(Context::downgrade));
        self.handle.shutdown_request().publish(run);
    }

    fn first_to_stop(&self) -> Option<(usize, u64)> {
        let quiet = !self.shutting_down()
            && self.stopping_now.is_none()
            && self.stop_queue.is_empty()
            && self.group.is_none();
        if self.definition.dynamic || !quiet {
            return None;
        }
        let &(_, key) = self.live_order.last()?;
        let slot = &self.slots[key];
        (slot.is_up() && slot.spec(&self.definition).shutdown != Shutdown::Brutal)
            .then_some((key, slot.generation))
    }

    fn begin_shutdown(&mut self, outcome: Result<(), SupervisorError>) {
        match &mut self.outcome {
            Some(existing) => {
                if existing.is_ok() && outcome.is_err() {
                    *existing = outcome;
                }
                return;
            }
            None => self.outcome = Some(outcome),
        }
        tracing::debug!("shutting down");
        self.publish_first();
        if self.parent.is_none() {
            // A nested supervisor's parent reports it stopping, as for any child.
            self.emit_own(|| EventKind::Stopping);
        }
        self.group = None;
        self.pending.clear();
        self.unready.clear();
        if self.definition.dynamic {
            self.stop_pool();
            return;
        }
        self.stop_queue.clear();
        for (key, slot) in &mut self.slots {
            if is_up_at_shutdown(slot, &mut self.active) {
                self.stop_queue.push((slot.seq, key));
            }
        }
        self.stop_queue.sort_unstable();
        self.advance_stop_queue();
    }

    /// Stops every child of a pool at once: every run is told to stop in one pass over the
    /// slots, and one timer per distinct grace period covers them all.
    fn stop_pool(&mut self) {
        let now = Instant::now();
        let mut graces = Vec::new();
        // A child being removed or restarted on demand has a caller waiting for its exit, and
        // one that failed to start has its exit reason still to be recorded.
        let mut awaited = false;
        for (key, slot) in &mut self.slots {
            if !is_up_at_shutdown(slot, &mut self.active) {
                awaited |= matches!(
                    slot.state,
                    State::Stopping(After::Remove(_) | After::Restart(_) | After::Fail(_))
                );
                continue;
            }
            slot.state = State::Stopping(After::Nothing);
            match slot.spec(&self.definition).shutdown {
                Shutdown::Brutal => {
                    if let Some(live) = &slot.live {
                        live.run().abort();
                    }
                    self.exits
                        .push_back((key, slot.generation, ExitReason::Aborted));
                }
                Shutdown::Timeout(grace) if !graces.contains(&grace) => graces.push(grace),
                Shutdown::Timeout(_) | Shutdown::Infinity => {}
            }
        }
        for grace in graces {
            self.timers.push(Timer {
                at: now + grace,
                key: usize::MAX,
                generation: 0,
                kind: Kind::Pool(grace),
            });
        }
        // Before the runs are told to stop, so that no run's exit is told for nothing. With
        // someone to tell of each exit, or waiting for one, every exit stays a message.
        if !awaited && !self.observed && !tracing::enabled!(tracing::Level::DEBUG) {
            self.handle.pool_drain().go_silent();
        }
        for (_, slot) in &self.slots {
            if let Some(live) = &slot.live {
                live.run().stop.request();
            }
        }
    }

    fn abort_all(&mut self) {
        tracing::warn!("aborting all children");
        for (_, slot) in &mut self.slots {
            if let Some(live) = slot.live.take() {
                live.run().abort();
                slot.last_exit = Some(ExitReason::Aborted);
            }
            slot.state = State::Stopped;
        }
        self.live = 0;
        self.active = 0;
        self.live_order.clear();
        self.stop_queue.clear();
        self.stopping_now = None;
        self.exits.clear();
        self.outcome = Some(Err(SupervisorError::Aborted {
            path: self.handle.path().to_owned(),
        }));
    }

    /// The result to return, once there is nothing left to wait for.
    fn finished(&mut self) -> Option<Result<(), SupervisorError>> {
        if self.shutting_down() {
            let all_ended = self.live == 0 || self.handle.pool_drain().is_drained();
            if all_ended && self.stopping_now.is_none() {
                return self.outcome.take();
            }
        } else if !self.definition.dynamic && self.active == 0 {
            return Some(Ok(()));
        }
        None
    }

    // ---- requests from handles ---------------------------------------------------------------

    fn remove(&mut self, name: &str, reply: Reply<ExitReason>) {
        let key = match self.key_of(name) {
            Ok(key) => key,
            Err(err) => {
                let _ = reply.send(Err(err));
                return;
            }
        };
        if self.shutting_down() {
            let _ = reply.send(Err(self.stopping_error(name)));
            return;
        }
        let slot = &mut self.slots[key];
        match &mut slot.state {
            State::Starting | State::Running => self.begin_stop(key, After::Remove(reply)),
            State::Stopping(After::Remove(_)) => {
                let _ = reply.send(Err(SupervisorError::NoSuchChild {
                    path: slot.path(self.handle.path(), &self.definition),
                }));
            }
            State::Stopping(after) => {
                if let After::Restart(earlier) = mem::replace(after, After::Remove(reply)) {
                    let _ = earlier.send(Err(SupervisorError::NoSuchChild {
                        path: slot.path(self.handle.path(), &self.definition),
                    }));
                }
            }
            State::Waiting | State::Backoff(_) | State::Stopped => {
                let reason = slot.last_exit.clone().unwrap_or(ExitReason::Shutdown);
                self.remove_slot(key);
                let _ = reply.send(Ok(reason));
            }
        }
    }

    fn restart_on_demand(&mut self, name: &str, reply: Reply<()>) {
        let key = match self.key_of(name) {
            Ok(key) => key,
            Err(err) => {
                let _ = reply.send(Err(err));
                return;
            }
        };
        if self.shutting_down() {
            let _ = reply.send(Err(self.stopping_error(name)));
            return;
        }
        let slot = &mut self.slots[key];
        match slot.state {
            State::Starting | State::Running => self.begin_stop(key, After::Restart(reply)),
            State::Stopping(After::Remove(_)) => {
                let _ = reply.send(Err(SupervisorError::NoSuchChild {
                    path: slot.path(self.handle.path(), &self.definition),
                }));
            }
            // Already on its way down and back up, or queued to start.
            State::Stopping(_) | State::Waiting => {
                let _ = reply.send(Ok(()));
            }
            State::Backoff(_) | State::Stopped => {
                if matches!(slot.state, State::Stopped) {
                    self.active += 1;
                }
                let order = slot.order(key);
                self.unready.remove(&order);
                self.queue_start(key);
                self.pump();
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn stopping_error(&self, child: &str) -> SupervisorError {
        SupervisorError::Stopping {
            path: self.handle.path().to_owned(),
            child: child.to_owned(),
        }
    }

    /// Passes a reload request to every child that runs or will run again. A child restarting
    /// keeps the request for its next run.
    fn reload(&mut self) {
        let shutting_down = self.shutting_down();
        for (_, slot) in &mut self.slots {
            let will_see_it = match slot.state {
                State::Starting | State::Running | State::Backoff(_) => true,
                State::Waiting => slot.since.is_some(),
                // On its way down to be started again: its next run gets it.
                State::Stopping(After::Restart(_)) => true,
                State::Stopping(After::Nothing) => !shutting_down,
                State::Stopping(_) | State::Stopped => false,
            };
            match &slot.live {
                Some(live) if will_see_it && slot.is_up() => live.run().reload.request(),
                _ => slot.reload |= will_see_it,
            }
        }
    }

    fn deliver(
        &mut self,
        name: &str,
        message: Box<dyn Any + Send>,
        kind: MessageType,
    ) -> Result<(), SupervisorError> {
        let slot = &self.slots[self.key_of(name)?];
        let path = || slot.path(self.handle.path(), &self.definition);
        let mailbox = match slot.mailbox() {
            Some(mailbox) if mailbox.accepts == kind => mailbox,
            other => {
                return Err(SupervisorError::WrongMessageType {
                    path: path(),
                    expected: other.map_or("none", |m| m.accepts.name),
                    got: kind.name,
                });
            }
        };
        let ended = matches!(
            slot.state,
            State::Stopped | State::Stopping(After::Remove(_))
        ) || (self.shutting_down() && slot.live.is_none());
        if ended {
            return Err(SupervisorError::ChildStopped { path: path() });
        }
        mailbox
            .sender
            .send(message)
            .map_err(|_| SupervisorError::ChildStopped { path: path() })
    }

    fn nested(&self, name: &str) -> Result<SupervisorHandle, SupervisorError> {
        let slot = &self.slots[self.key_of(name)?];
        if !slot.spec(&self.definition).is_supervisor {
            return Err(SupervisorError::NotASupervisor {
                path: slot.path(self.handle.path(), &self.definition),
            });
        }
        slot.nested_handle()
            .ok_or_else(|| SupervisorError::NotRunning {
                path: slot.path(self.handle.path(), &self.definition),
            })
    }

    fn status(&self) -> StatusReport {
        let now = Instant::now();
        let mut children: Vec<(u64, SlotReport)> = self
            .slots
            .iter()
            .map(|(_, slot)| {
                let nested = slot
                    .live
                    .as_ref()
                    .filter(|_| slot.spec(&self.definition).is_supervisor)
                    .and_then(|_| slot.nested_handle());
                let report = SlotReport {
                    status: slot.status(now, &self.definition, self.handle.path()),
                    nested,
                };
                (slot.seq, report)
            })
            .collect();
        children.sort_unstable_by_key(|(seq, _)| *seq);
        let own = ChildStatus {
            name: Arc::clone(&self.definition.name),
            path: Arc::clone(self.path()),
            state: if self.shutting_down() {
                ChildState::Stopping
            } else {
                ChildState::Running
            },
            restarts: 0,
            uptime: Some(now.saturating_duration_since(self.started)),
            last_exit: None,
            children: Vec::new(),
        };
        StatusReport {
            own,
            children: children.into_iter().map(|(_, report)| report).collect(),
        }
    }
}

/// Whether a child is to be stopped by a shutdown; one waiting to start (or restart) is
/// stopped for good at once, and leaves the `active` count.
fn is_up_at_shutdown(slot: &mut Slot, active: &mut usize) -> bool {
    match slot.state {
        State::Starting | State::Running => true,
        State::Waiting | State::Backoff(_) => {
            slot.state = State::Stopped;
            *active -= 1;
            false
        }
        State::Stopping(_) | State::Stopped => false,
    }
}

impl Drop for Core {
    /// A supervisor that is itself aborted (or whose runtime shuts down) takes its children with
    /// it rather than leaving them orphaned.
    fn drop(&mut self) {
        self.handle.shutdown_request().publish(None);
        for (_, slot) in &self.slots {
            if let Some(live) = &slot.live {
                live.run().abort();
                live.run().stop.request();
            }
        }
    }
}

#[cfg(test)]
mod tests;
