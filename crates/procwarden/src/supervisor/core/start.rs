//! Adding children, starting their runs in order, and readiness.

use std::collections::HashSet;
use std::mem;
use std::sync::Arc;

use tokio::time::Instant;

use crate::supervisor::context::{Lasting, Run};
use crate::supervisor::{ChildSpec, Context, EventKind, SupervisorError, name};

use super::Core;
use super::slot::{Slot, State};
use super::timer::{Kind, Timer};

impl Core {
    /// Checks that a child may be added at run time under `name`: the supervisor is not
    /// stopping, and the name is valid and not taken.
    fn check_addable(&self, name: &str) -> Result<(), SupervisorError> {
        if self.shutting_down() {
            return Err(self.stopping_error(name));
        }
        name::validate(name)?;
        if self.find(name).is_some() {
            return Err(self.duplicate_error(name));
        }
        Ok(())
    }

    fn duplicate_error(&self, name: &str) -> SupervisorError {
        SupervisorError::DuplicateName {
            path: format!("{}/{}", self.handle.path(), name),
        }
    }

    /// Gives a child added at run time its slot, once [`check_addable`](Self::check_addable)
    /// has passed.
    fn insert_added(&mut self, spec: Box<ChildSpec>) -> usize {
        let name = spec.name.clone();
        let key = self.insert_slot(Some(spec));
        self.names.insert(name, key);
        key
    }

    /// Gives a child its slot: one added at run time with its own spec, or else the next of the
    /// definition's children, at its position (the builder checked the names, and the
    /// definition's index finds it).
    pub(super) fn insert_slot(&mut self, added: Option<Box<ChildSpec>>) -> usize {
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        let seq = self.next_seq;
        self.next_seq += 1;
        let spec = super::slot::spec_of(seq, added.as_deref(), &self.definition);
        let lasting = Lasting::of(spec.messages, spec.is_supervisor);
        entry.insert(Slot::new(seq, added, lasting));
        self.active += 1;
        key
    }

    pub(super) fn add(&mut self, spec: Box<ChildSpec>) -> Result<(), SupervisorError> {
        self.check_addable(&spec.name)?;
        let key = self.insert_added(spec);
        self.queue_start(key);
        self.pump();
        Ok(())
    }

    /// Adds children at run time, all or none: every name is checked, against the children
    /// there and those before it in the batch, before any child is added. A pool starts them
    /// in one burst, as it does its first children.
    pub(super) fn add_all(&mut self, specs: Vec<ChildSpec>) -> Result<(), SupervisorError> {
        let mut batch = HashSet::with_capacity(specs.len());
        for spec in &specs {
            self.check_addable(&spec.name)?;
            if !batch.insert(&*spec.name) {
                return Err(self.duplicate_error(&spec.name));
            }
        }
        drop(batch);
        self.slots.reserve(specs.len());
        self.names.reserve(specs.len());
        let keys: Vec<usize> = specs
            .into_iter()
            .map(|spec| self.insert_added(Box::new(spec)))
            .collect();
        if self.definition.dynamic {
            self.start_burst(&keys);
        } else {
            self.start_in_order(keys);
        }
        Ok(())
    }

    /// Puts a child in line to start: at once in a pool, in start order otherwise.
    pub(super) fn queue_start(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        slot.state = State::Waiting;
        if self.definition.dynamic {
            self.start(key);
        } else {
            let order = slot.order(key);
            self.pending.insert(order);
        }
    }

    /// Starts new children in order, after those before them and as far as readiness allows,
    /// and queues the rest. A child that can start at once never enters the start queue: a
    /// supervisor whose children do not report readiness allocates none, and has none to free
    /// when it stops.
    pub(super) fn start_in_order(&mut self, keys: Vec<usize>) {
        for key in keys {
            if self.pending.is_empty() && self.unready.is_empty() {
                self.start(key);
            } else {
                self.queue_start(key);
            }
        }
    }

    /// Starts waiting children in order, as far as readiness allows.
    pub(super) fn pump(&mut self) {
        while let Some(&(seq, key)) = self.pending.first() {
            if self.unready.first().is_some_and(|&(first, _)| first < seq) {
                return;
            }
            self.pending.pop_first();
            self.start(key);
        }
    }

    pub(super) fn start(&mut self, key: usize) {
        // Once this run can be seen running, a shutdown must stop it first: a handle must not
        // find the run before it still published.
        self.withdraw_first();
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
    pub(super) fn start_burst(&mut self, keys: &[usize]) {
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

    pub(super) fn mark_ready(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        slot.state = State::Running;
        let order = slot.order(key);
        self.unready.remove(&order);
        self.emit(key, || EventKind::Ready);
    }

    /// A nested supervisor is ready once its first children all are.
    pub(super) fn announce_ready(&mut self) {
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
}
