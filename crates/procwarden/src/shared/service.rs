//! `SharedService`: acquire a service that many processes share; the first starts it, the last
//! one's departure stops it.

use crate::sync::lock;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::counter::{Backend, Hold, LockGuard, RefCounter};
use super::state_file::{self, Phase, StateFile};
use super::{ServiceCommand, SharedError, StateDir};
use crate::process::{Pid, ProcessRef, Signal};
use crate::supervisor::BoxError;

/// What the processes sharing a service know of it: its process, its port, anything else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pid: Option<u32>,
    port: Option<u16>,
    metadata: BTreeMap<String, String>,
}

impl ServiceInfo {
    /// A service run by process `pid`, listening on `port`.
    pub fn new(pid: u32, port: u16) -> Self {
        Self {
            pid: Some(pid),
            port: Some(port),
            metadata: BTreeMap::new(),
        }
    }

    /// A service run by process `pid`, with no port.
    pub fn with_pid(pid: u32) -> Self {
        Self {
            pid: Some(pid),
            ..Self::default()
        }
    }

    /// Adds a piece of metadata (a socket path, a version, …) for the other users to read.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The service's process, if it has one.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The service's port, if it has one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The metadata the starting process recorded.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
}

type StartFn = Arc<dyn Fn() -> BoxFuture<'static, Result<ServiceInfo, BoxError>> + Send + Sync>;
type StopFn = Arc<dyn Fn(ServiceInfo) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type CheckFn = Arc<dyn Fn(ServiceInfo) -> BoxFuture<'static, bool> + Send + Sync>;
type RecoverFn =
    Arc<dyn Fn(ServiceInfo) -> BoxFuture<'static, Result<ServiceInfo, BoxError>> + Send + Sync>;

/// How the first user starts the service.
enum Start {
    Callback(StartFn),
    Command(ServiceCommand),
}

/// Builds a [`SharedService`]; see [`SharedService::builder`].
#[must_use]
pub struct SharedServiceBuilder {
    name: String,
    dir: Option<StateDir>,
    start: Option<Start>,
    on_last_release: Option<StopFn>,
    on_health_check: Option<CheckFn>,
    on_recover: Option<RecoverFn>,
    linger: Duration,
    stop_signal: Signal,
    stop_timeout: Duration,
    group: bool,
    backend: Option<Backend>,
}

impl SharedServiceBuilder {
    /// Starts the service; runs in the first user, under the lifecycle lock, while every other
    /// would-be user waits. Required.
    pub fn on_first_acquire<F, Fut>(mut self, start: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ServiceInfo, BoxError>> + Send + 'static,
    {
        self.start = Some(Start::Callback(Arc::new(move || Box::pin(start()))));
        self
    }

    /// Starts the service as one shell command instead of with `on_first_acquire`: spawned in
    /// its own process group, recorded before it is ready (so that a user killed while starting
    /// it leaves nothing running that the next user does not know of), and ready when its probe
    /// passes. The port of a TCP probe becomes the service's port. Implies
    /// [`stop_group`](Self::stop_group).
    pub fn command(mut self, command: ServiceCommand) -> Self {
        self.start = Some(Start::Command(command));
        self.group = true;
        self
    }

    /// Stops the service; runs in the last user when its [`ServiceHandle::release`] brings the
    /// count to zero and there is no linger. Otherwise — a linger, a handle merely dropped, a
    /// last user killed — the keeper stops the recorded process with the stop signal, the stop
    /// timeout and SIGKILL. Default: that same stop, done here.
    pub fn on_last_release<F, Fut>(mut self, stop: F) -> Self
    where
        F: Fn(ServiceInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_last_release = Some(Arc::new(move |info| Box::pin(stop(info))));
        self
    }

    /// Checks the service for each user that finds it running. Default: its process is alive
    /// (by PID and start time, so a reused PID does not pass).
    pub fn on_health_check<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn(ServiceInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.on_health_check = Some(Arc::new(move |info| Box::pin(check(info))));
        self
    }

    /// Brings an unhealthy service back; runs once, under the lifecycle lock, while the other
    /// users wait. Default: stop what is left of it, then start it again.
    pub fn on_recover<F, Fut>(mut self, recover: F) -> Self
    where
        F: Fn(ServiceInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ServiceInfo, BoxError>> + Send + 'static,
    {
        self.on_recover = Some(Arc::new(move |info| Box::pin(recover(info))));
        self
    }

    /// Keeps the service running this long after the last user leaves, so quick successive
    /// users (test runs) find it warm. Default: none.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The signal that asks the service's process to stop. Default: SIGTERM.
    pub fn stop_signal(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// How long the service has to stop before SIGKILL. Default: 10 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Signals the whole process group the service's process leads (it was spawned with
    /// `process_group(0)`), not just the process. Default: false.
    pub fn stop_group(mut self, group: bool) -> Self {
        self.group = group;
        self
    }

    /// Keeps state in `dir` instead of the one [`StateDir::from_env`] chooses.
    pub fn state_dir(mut self, dir: StateDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Counts holds and locks with `backend` instead of the one [`Backend::from_env`] chooses
    /// (on Linux: System V unless `PROCWARDEN_SHARED_BACKEND=files`). Every process sharing the
    /// service must use the same backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Checks the name and the state directory.
    pub fn build(self) -> Result<SharedService, SharedError> {
        crate::name::check(&self.name).map_err(|reason| SharedError::InvalidName {
            name: self.name.clone(),
            reason,
        })?;
        let start = self.start.ok_or_else(|| SharedError::StartFailed {
            name: self.name.clone(),
            reason: "neither on_first_acquire nor command was given".into(),
        })?;
        let dir = match self.dir {
            Some(dir) => dir,
            None => StateDir::from_env()?,
        };
        Ok(SharedService {
            inner: Arc::new(Inner {
                name: self.name,
                dir,
                start,
                stop: self.on_last_release,
                check: self.on_health_check,
                recover: self.on_recover,
                linger: self.linger,
                stop_signal: self.stop_signal,
                stop_timeout: self.stop_timeout,
                group: self.group,
                backend: self.backend.unwrap_or_else(Backend::from_env),
                counter: Mutex::new(None),
                known: Mutex::new(None),
            }),
        })
    }
}

/// A service shared by independent processes: the first to [`acquire`](Self::acquire) it starts
/// it, the last to let go stops it, and a crash of any of them is cleaned up by the kernel.
///
/// - At most one instance runs per user, state directory and name, whatever the interleaving.
/// - `acquire` returns once the service is ready; concurrent first users wait for one start.
/// - The holder count is kept by the kernel (System V semaphores with `SEM_UNDO`, or `flock`s
///   that die with their process; see [`Backend`]): a user killed with SIGKILL gives back its
///   hold.
/// - When the count reaches zero, by release or by death, a keeper process stops the service
///   after the linger, even if nobody acquires it again, and removes its files and IPC objects.
///
/// ```no_run
/// use std::time::Duration;
/// use procwarden::shared::{ServiceInfo, SharedService};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let svc = SharedService::builder("postgres")
///     .on_first_acquire(|| async {
///         let child = std::process::Command::new("postgres").spawn()?;
///         Ok(ServiceInfo::new(child.id(), 5432))
///     })
///     .linger(Duration::from_secs(5))
///     .build()?;
/// let handle = svc.acquire().await?; // ready when this returns
/// let port = handle.port();
/// handle.release().await?;           // or drop it
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedService {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    name: String,
    dir: StateDir,
    start: Start,
    stop: Option<StopFn>,
    check: Option<CheckFn>,
    recover: Option<RecoverFn>,
    linger: Duration,
    stop_signal: Signal,
    stop_timeout: Duration,
    group: bool,
    backend: Backend,
    /// The set, kept open between acquires; reopened when it was removed.
    counter: Mutex<Option<Arc<RefCounter>>>,
    /// What this process last learned of the running service.
    known: Mutex<Option<Known>>,
}

#[derive(Clone)]
struct Known {
    generation: u16,
    info: ServiceInfo,
    /// The recorded process while it is still the one recorded; `None` also when it is gone.
    process: Option<ProcessRef>,
}

impl Known {
    /// Whether a process was recorded, so that having none now means it died.
    fn expects_process(&self) -> bool {
        self.info.pid.is_some()
    }
}

/// A live hold on a shared service. The service stays up while any handle does.
///
/// Dropping it releases the hold at once (one system call); [`release`](Self::release) also runs
/// `on_last_release` when this was the last hold and there is no linger.
pub struct ServiceHandle {
    inner: Arc<Inner>,
    counter: Arc<RefCounter>,
    info: ServiceInfo,
    /// `None` once released.
    hold: Option<Hold>,
}

/// Something that made the set go away under us: start over with a fresh one.
pub(crate) enum Attempt<T> {
    Done(T),
    Retry,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SharedService {
    /// Starts building the shared service `name` (1 to 64 bytes of `[A-Za-z0-9._-]`, not starting
    /// with a dot).
    pub fn builder(name: impl Into<String>) -> SharedServiceBuilder {
        SharedServiceBuilder {
            name: name.into(),
            dir: None,
            start: None,
            on_last_release: None,
            on_health_check: None,
            on_recover: None,
            linger: Duration::ZERO,
            stop_signal: Signal::TERM,
            stop_timeout: Duration::from_secs(10),
            group: false,
            backend: None,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The number of live handles across all processes.
    pub fn holders(&self) -> Result<u32, SharedError> {
        match RefCounter::find_with(&self.inner.dir, &self.inner.name, self.inner.backend)? {
            Some(counter) => counter.count(),
            None => Ok(0),
        }
    }

    /// Takes a hold on the service, starting it if nobody runs it, and returns once it is ready.
    pub async fn acquire(&self) -> Result<ServiceHandle, SharedError> {
        loop {
            let counter = self.inner.counter()?;
            if let Some(known) = self.inner.known() {
                match counter.join_if_current(known.generation) {
                    Ok(Some(hold)) => {
                        if self.inner.healthy(&known).await {
                            return Ok(self.inner.handle(counter, hold, known.info));
                        }
                        let _ = counter.leave(hold);
                    }
                    Ok(None) => {}
                    Err(err) if counter.is_removed(&err) => {
                        self.inner.forget_counter();
                        continue;
                    }
                    Err(err) => return Err(counter.error("joining", err)),
                }
            }
            match self.inner.acquire_locked(&counter).await? {
                Attempt::Done((known, hold)) => {
                    let info = known.info.clone();
                    *lock(&self.inner.known) = Some(known);
                    return Ok(self.inner.handle(counter, hold, info));
                }
                Attempt::Retry => self.inner.forget_counter(),
            }
        }
    }
}

impl Inner {
    fn counter(&self) -> Result<Arc<RefCounter>, SharedError> {
        let mut slot = lock(&self.counter);
        if let Some(counter) = &*slot {
            return Ok(Arc::clone(counter));
        }
        let counter = Arc::new(RefCounter::open_with(&self.dir, &self.name, self.backend)?);
        *slot = Some(Arc::clone(&counter));
        Ok(counter)
    }

    fn forget_counter(&self) {
        *lock(&self.counter) = None;
        *lock(&self.known) = None;
    }

    fn known(&self) -> Option<Known> {
        lock(&self.known).clone()
    }

    fn handle(
        self: &Arc<Self>,
        counter: Arc<RefCounter>,
        hold: Hold,
        info: ServiceInfo,
    ) -> ServiceHandle {
        ServiceHandle {
            inner: Arc::clone(self),
            counter,
            info,
            hold: Some(hold),
        }
    }

    async fn healthy(&self, known: &Known) -> bool {
        match &self.check {
            Some(check) => check(known.info.clone()).await,
            None => match &known.process {
                Some(process) => process.is_alive(),
                None => !known.expects_process(),
            },
        }
    }

    /// Takes the lifecycle lock without blocking the runtime's worker threads. With `create`
    /// false, a service whose objects are gone is not made anew (`Retry`).
    pub(crate) async fn lock(
        counter: &Arc<RefCounter>,
        create: bool,
    ) -> Result<Attempt<LockGuard>, SharedError> {
        let locking = Arc::clone(counter);
        let locked = tokio::task::spawn_blocking(move || locking.lock(create))
            .await
            .map_err(|err| {
                counter.error("taking the lifecycle lock", std::io::Error::other(err))
            })?;
        match locked {
            Ok(guard) => Ok(Attempt::Done(guard)),
            Err(err) if counter.is_removed(&err) => Ok(Attempt::Retry),
            Err(err) => Err(counter.error("taking the lifecycle lock", err)),
        }
    }

    /// The slow path: under the lock, join, then use, recover or start the service.
    async fn acquire_locked(
        &self,
        counter: &Arc<RefCounter>,
    ) -> Result<Attempt<(Known, Hold)>, SharedError> {
        let guard = match Self::lock(counter, true).await? {
            Attempt::Done(guard) => guard,
            Attempt::Retry => return Ok(Attempt::Retry),
        };
        guard.ensure_keeper(self.linger)?;
        let hold = guard.join().map_err(|err| counter.error("joining", err))?;
        match self.use_or_start(&guard, counter).await {
            Ok(known) => Ok(Attempt::Done((known, hold))),
            Err(err) => {
                // A failed start leaves no reference behind; the lock goes with the guard.
                let _ = guard.leave(hold);
                Err(err)
            }
        }
    }

    async fn use_or_start(
        &self,
        guard: &LockGuard,
        counter: &RefCounter,
    ) -> Result<Known, SharedError> {
        let path = self.dir.state_file(&self.name);
        let generation = guard
            .generation()
            .map_err(|err| counter.error("reading the generation", err))?;
        match state_file::read(&path)? {
            Some(state) if state.phase == Phase::Ready => {
                let known = Known {
                    generation,
                    info: info_of(&state),
                    process: process_of(&state),
                };
                if self.healthy(&known).await {
                    return Ok(known);
                }
                tracing::warn!(service = %self.name, "unhealthy; recovering");
                self.recover(guard, counter, Some(state)).await
            }
            // Under the lock, a service still starting was left so by a starter that died.
            Some(state) => self.recover(guard, counter, Some(state)).await,
            None => self.recover(guard, counter, None).await,
        }
    }

    /// Starts the service, or brings it back when `old` is what is left of it.
    async fn recover(
        &self,
        guard: &LockGuard,
        counter: &RefCounter,
        old: Option<StateFile>,
    ) -> Result<Known, SharedError> {
        let failed = |err: BoxError| SharedError::StartFailed {
            name: self.name.clone(),
            reason: crate::supervisor::error_chain(&*err),
        };
        let info = match (&old, &self.recover) {
            (Some(state), Some(recover)) => recover(info_of(state)).await.map_err(failed)?,
            (Some(state), None) => {
                self.stop_process(state).await?;
                self.start().await.map_err(failed)?
            }
            (None, _) => self.start().await.map_err(failed)?,
        };
        let process = match info.pid {
            Some(pid) => {
                let pid = Pid::try_from(pid).map_err(|err| failed(err.into()))?;
                Some(ProcessRef::new(pid).map_err(|err| failed(err.into()))?)
            }
            None => None,
        };
        let me = ProcessRef::new(Pid::this()).map_err(|err| failed(err.into()))?;
        let state = self.state_for(process.as_ref(), &me, &info);
        state_file::write(&self.dir.state_file(&self.name), &state)?;
        let generation = guard
            .bump_generation()
            .map_err(|err| counter.error("updating the generation", err))?;
        tracing::info!(service = %self.name, pid = ?info.pid, port = ?info.port, "started");
        Ok(Known {
            generation,
            info,
            process,
        })
    }

    async fn start(&self) -> Result<ServiceInfo, BoxError> {
        match &self.start {
            Start::Callback(start) => start().await,
            Start::Command(command) => self.start_command(command).await,
        }
    }

    /// Spawns the command, records it as starting, and waits for its probe. On failure the
    /// process group is stopped and the record removed.
    async fn start_command(&self, command: &ServiceCommand) -> Result<ServiceInfo, BoxError> {
        let log = self.dir.log_file(&self.name);
        let (pid, exit) = command.spawn(&log)?;
        let process = match ProcessRef::new(Pid::try_from(pid)?) {
            Ok(process) => process,
            // Gone already (a missing program exits at once): its reaper has the status.
            Err(_) => return Err(super::command::exited_early(exit.await.ok(), &log)),
        };
        let me = ProcessRef::new(Pid::this())?;
        let path = self.dir.state_file(&self.name);
        let mut state = self.state_for(Some(&process), &me, &ServiceInfo::with_pid(pid));
        state.phase = Phase::Starting;
        state_file::write(&path, &state)?;
        if let Err(err) = command.wait_ready(exit, &log).await {
            let _ = process
                .stop_group(Signal::KILL, Duration::from_secs(5))
                .await;
            let _ = state_file::remove(&path);
            return Err(err);
        }
        let mut info = ServiceInfo::with_pid(pid);
        info.port = command.ready.port();
        Ok(info)
    }

    /// The record of a ready service run by `process`, started by `me`.
    fn state_for(
        &self,
        process: Option<&ProcessRef>,
        me: &ProcessRef,
        info: &ServiceInfo,
    ) -> StateFile {
        StateFile {
            version: state_file::VERSION,
            phase: Phase::Ready,
            pid: process.map(|p| p.pid().as_raw()),
            start_time: process.map(ProcessRef::start_time),
            port: info.port,
            stop_signal: self.stop_signal.as_raw(),
            stop_timeout_ms: self.stop_timeout.as_millis().try_into().unwrap_or(u64::MAX),
            group: self.group,
            starter: me.pid().as_raw(),
            starter_start_time: me.start_time(),
            started_at: now_secs(),
            metadata: info.metadata.clone(),
        }
    }

    async fn stop_process(&self, state: &StateFile) -> Result<(), SharedError> {
        stop_recorded(&self.name, state).await
    }

    /// The last hold is going: stop the service now (no linger) or leave it to the keeper.
    async fn release_last(&self, counter: &Arc<RefCounter>, hold: Hold) -> Result<(), SharedError> {
        let guard = match Self::lock(counter, false).await? {
            Attempt::Done(guard) => guard,
            // The set or files are gone, and our hold with them.
            Attempt::Retry => return Ok(()),
        };
        match guard.leave(hold) {
            Ok(()) => {}
            // Ours were removed (`stop_now`); what runs now is another instance.
            Err(err) if counter.is_removed(&err) => return Ok(()),
            Err(err) => return Err(counter.error("leaving", err)),
        }
        let count = guard
            .count()
            .map_err(|err| counter.error("reading the count", err))?;
        if count > 0 || !self.linger.is_zero() {
            return Ok(());
        }
        let path = self.dir.state_file(&self.name);
        if let Some(state) = state_file::read(&path)? {
            match &self.stop {
                Some(stop) => {
                    stop(info_of(&state))
                        .await
                        .map_err(|err| SharedError::StopFailed {
                            name: self.name.clone(),
                            reason: crate::supervisor::error_chain(&*err),
                        })?
                }
                None => self.stop_process(&state).await?,
            }
            tracing::info!(service = %self.name, "stopped: last user left");
        }
        state_file::remove_stopped(&path)?;
        *lock(&self.known) = None;
        *lock(&self.counter) = None;
        guard
            .remove_set()
            .map_err(|err| counter.error("removing the semaphore set", err))
    }
}

/// Stops the process a state file records, if it is still that process: its stop signal, its
/// stop timeout, then SIGKILL, to the process or to its group.
pub(crate) async fn stop_recorded(name: &str, state: &StateFile) -> Result<(), SharedError> {
    let Some(process) = process_of(state) else {
        return Ok(());
    };
    let signal = Signal::from_raw(state.stop_signal).unwrap_or(Signal::TERM);
    let timeout = Duration::from_millis(state.stop_timeout_ms);
    let stopped = if state.group {
        process.stop_group(signal, timeout).await
    } else {
        process.stop_with(signal, timeout).await
    };
    stopped.map(drop).map_err(|err| SharedError::StopFailed {
        name: name.to_owned(),
        reason: err.to_string(),
    })
}

pub(crate) fn info_of(state: &StateFile) -> ServiceInfo {
    ServiceInfo {
        pid: state.pid.and_then(|p| u32::try_from(p).ok()),
        port: state.port,
        metadata: state.metadata.clone(),
    }
}

/// The recorded process, if it is still the one that was recorded.
pub(crate) fn process_of(state: &StateFile) -> Option<ProcessRef> {
    let pid = Pid::try_from(state.pid?).ok()?;
    ProcessRef::from_record(pid, state.start_time?).ok()
}

impl ServiceHandle {
    /// What the starting process recorded of the service.
    pub fn info(&self) -> &ServiceInfo {
        &self.info
    }

    /// The service's port, if it has one.
    pub fn port(&self) -> Option<u16> {
        self.info.port
    }

    /// The service's process, if it has one.
    pub fn pid(&self) -> Option<u32> {
        self.info.pid
    }

    /// Lets go of the service. If this was the last hold and there is no linger, the service is
    /// stopped (with `on_last_release`) before this returns.
    pub async fn release(mut self) -> Result<(), SharedError> {
        let Some(hold) = self.hold.take() else {
            return Ok(());
        };
        match self.counter.leave_if_not_last(hold) {
            Ok(None) => Ok(()),
            Ok(Some(hold)) => self.inner.release_last(&self.counter, hold).await,
            Err(err) if self.counter.is_removed(&err) => Ok(()),
            Err(err) => Err(self.counter.error("leaving", err)),
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            // One system call (a few with file locks); if this was the last hold, the keeper
            // takes it from here.
            let _ = self.counter.leave(hold);
        }
    }
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("service", &self.inner.name)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SharedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedService")
            .field("name", &self.inner.name)
            .field("state_dir", &self.inner.dir)
            .field("linger", &self.inner.linger)
            .finish_non_exhaustive()
    }
}
