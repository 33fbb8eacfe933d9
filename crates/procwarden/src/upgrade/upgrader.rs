//! The upgrader: triggers, the one-at-a-time upgrade, probation, and this generation's end.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::generation::{NewGeneration, Program, handover_accepted, report_ready};
use super::notify::{Notifier, monotonic_usec};
use super::{Listeners, UpgradeError, control, handover, pid_file};
use crate::process::Signal;
use crate::shared::StateDir;
use crate::supervisor::{ChildSpec, Restart, RunOutcome, Supervisor};
use crate::sync::lock;

/// The default readiness deadline of a new generation.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a retiring generation waits for control clients to read the outcome.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// A successful upgrade: the new generation is ready and serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgraded {
    /// The PID of the new generation.
    pub pid: u32,
}

/// Replaces the running program with a new generation of itself, without closing a listening
/// socket, and rolls back when the new generation fails.
///
/// One `Upgrader` per process, built at startup. It holds the [`Listeners`], and listens for
/// the triggers: a signal (SIGUSR2 by default), [`upgrade`](Self::upgrade), and the control
/// socket that `procwarden upgrade` uses. An upgrade:
///
/// 1. starts the program again — the path it was invoked by, resolved at startup, so a deploy
///    by rename or by symbolic link runs the new binary — with the same arguments, this
///    environment, and every listener as an inherited descriptor (`LISTEN_FDS`);
/// 2. waits until the new generation calls [`ready`](Self::ready), up to the readiness
///    deadline. Meanwhile this generation serves as before. If the new one exits, crashes or
///    is late, it is killed and reaped, and this generation carries on;
/// 3. replaces the pid file, tells systemd the new main PID, and stops accepting; with
///    probation, waits that long, and resumes if the new generation dies meanwhile;
/// 4. cancels this generation's wind-down token: finish in-flight work and exit.
///
/// Only one upgrade runs at a time: a trigger during one joins it and gets its outcome.
///
/// Under systemd (`Type=notify`, `NotifyAccess=all`), an upgrade sends `RELOADING=1` with
/// `MONOTONIC_USEC`, then `MAINPID=<new>` with `READY=1` once the new generation is ready
/// (or `READY=1` alone after a rollback). `STOPPING=1` is sent only when a generation stops
/// without a successor: systemd takes `STOPPING=1` as the whole service stopping, whoever
/// sends it, and would stop the new generation too.
///
/// ```no_run
/// use procwarden::upgrade::Upgrader;
///
/// # async fn serve(_: tokio::net::TcpListener, _: tokio_util::sync::CancellationToken) {}
/// #[tokio::main]
/// async fn main() -> Result<(), procwarden::upgrade::UpgradeError> {
///     let upgrader = Upgrader::new()?;
///     let http = upgrader.listeners().tcp("http", "127.0.0.1:8080")?;
///     let wind_down = upgrader.ready()?; // cancelled once a successor took over
///     serve(http, wind_down).await;
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

/// Builds an [`Upgrader`].
#[derive(Debug)]
pub struct UpgraderBuilder {
    executable: Option<PathBuf>,
    args: Option<Vec<OsString>>,
    ready_timeout: Duration,
    probation: Option<Duration>,
    pid_file: Option<PathBuf>,
    signal: Option<Signal>,
    stop_signals: bool,
    control_socket: bool,
    state_dir: Option<PathBuf>,
}

#[derive(Debug)]
struct Inner {
    program: Program,
    ready_timeout: Duration,
    probation: Option<Duration>,
    pid_file: Option<PathBuf>,
    trigger: Option<Signal>,
    state_dir: Option<StateDir>,
    listeners: Listeners,
    /// Where to report readiness, when a previous generation started this one.
    parent: Mutex<Option<OwnedFd>>,
    has_predecessor: bool,
    notifier: Option<Notifier>,
    phase: Mutex<Phase>,
    accepting: watch::Sender<bool>,
    wind_down: CancellationToken,
    /// Control clients still to be answered.
    answering: TaskTracker,
    control_path: Mutex<Option<PathBuf>>,
}

/// Where this generation is in its life.
#[derive(Debug)]
enum Phase {
    /// Started; not ready yet.
    Starting,
    Serving,
    /// An upgrade runs; joiners wait on its outcome.
    Upgrading(watch::Receiver<Option<Result<Upgraded, UpgradeError>>>),
    /// A successor took over.
    Retired {
        successor: u32,
    },
    /// Stopping without a successor.
    Stopping,
}

impl Default for UpgraderBuilder {
    fn default() -> Self {
        Self {
            executable: None,
            args: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            probation: None,
            pid_file: None,
            signal: Some(Signal::usr2()),
            stop_signals: true,
            control_socket: true,
            state_dir: None,
        }
    }
}

impl UpgraderBuilder {
    /// The program each new generation runs. Default: the path this one was invoked by
    /// (`argv[0]`, made absolute against the working directory or `PATH` at startup), never
    /// `/proc/self/exe`, which names the old binary after a deploy.
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// The arguments each new generation gets (without `argv[0]`). Default: this one's, as
    /// OS strings, so arguments that are not UTF-8 pass unchanged.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// How long a new generation has to report ready before it is killed. Default 30 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// After the new generation is ready, keep the listeners (without accepting) this long,
    /// and serve again if it dies meanwhile. Default: none.
    pub fn probation(mut self, probation: Duration) -> Self {
        self.probation = Some(probation);
        self
    }

    /// A pid file, written when this generation is ready and replaced with the new PID when a
    /// successor is.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// The signal that triggers an upgrade (SIGUSR2 by default; SIGHUP as reload_self has it),
    /// or `None` for no signal.
    pub fn signal(mut self, signal: Option<Signal>) -> Self {
        self.signal = signal;
        self
    }

    /// Whether SIGTERM and SIGINT cancel the wind-down token (default: yes), so a program
    /// without a supervisor stops on them the same way it retires.
    pub fn stop_on_signals(mut self, stop: bool) -> Self {
        self.stop_signals = stop;
        self
    }

    /// Whether to listen on a control socket for `procwarden upgrade` (default: yes).
    pub fn control_socket(mut self, enabled: bool) -> Self {
        self.control_socket = enabled;
        self
    }

    /// The state directory for the control socket. Default: `PROCWARDEN_STATE_DIR`'s.
    pub fn state_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(path.into());
        self
    }

    /// Takes the inherited listeners and the readiness descriptor from the environment, and
    /// starts listening for the triggers. Must be called inside a tokio runtime, once per
    /// process.
    pub fn build(self) -> Result<Upgrader, UpgradeError> {
        let program = Program {
            path: match self.executable {
                Some(path) => path,
                None => invoked_path()?,
            },
            args: self
                .args
                .unwrap_or_else(|| std::env::args_os().skip(1).collect()),
        };
        let state_dir = if self.control_socket {
            let dir = match self.state_dir {
                Some(path) => StateDir::at(path),
                None => StateDir::from_env(),
            };
            Some(dir.map_err(|err| UpgradeError::Control {
                path: PathBuf::new(),
                reason: err.to_string(),
            })?)
        } else {
            None
        };
        let parent = inherited_ready_fd()?;
        let listeners = Listeners::from_env()?;
        // A successor accepts only once its predecessor has accepted the handover: one that is
        // rejected (late, say) is then killed holding no connection.
        let (accepting, _) = watch::channel(parent.is_none());
        let inner = Arc::new(Inner {
            program,
            ready_timeout: self.ready_timeout,
            probation: self.probation,
            pid_file: self.pid_file,
            trigger: self.signal,
            state_dir,
            listeners,
            has_predecessor: parent.is_some(),
            parent: Mutex::new(parent),
            notifier: Notifier::from_env(),
            phase: Mutex::new(Phase::Starting),
            accepting,
            wind_down: CancellationToken::new(),
            answering: TaskTracker::new(),
            control_path: Mutex::new(None),
        });
        if let Some(signal) = self.signal {
            listen_for_trigger(&inner, signal)?;
        }
        if self.stop_signals {
            listen_for_stop(&inner)?;
        }
        Ok(Upgrader { inner })
    }
}

impl Upgrader {
    /// An upgrader with the defaults: SIGUSR2 triggers, a 30 s readiness deadline, no
    /// probation, no pid file, the control socket on.
    pub fn new() -> Result<Self, UpgradeError> {
        Self::builder().build()
    }

    /// A builder to change the defaults.
    pub fn builder() -> UpgraderBuilder {
        UpgraderBuilder::default()
    }

    /// This generation's listening sockets.
    pub fn listeners(&self) -> &Listeners {
        &self.inner.listeners
    }

    /// Whether a previous generation started this one.
    pub fn has_predecessor(&self) -> bool {
        self.inner.has_predecessor
    }

    /// Reports this generation ready: it holds its listeners and has started. Returns the
    /// token cancelled when this generation should wind down (a successor took over, or a
    /// stop signal came).
    ///
    /// A first generation writes the pid file and tells systemd `READY=1`; a successor tells
    /// the generation that started it, which does both once it accepts the handover — and only
    /// then does the successor's [`is_accepting`](Self::is_accepting) turn true. Calling it
    /// again returns the same token.
    pub fn ready(&self) -> Result<CancellationToken, UpgradeError> {
        let inner = &self.inner;
        if !matches!(*lock(&inner.phase), Phase::Starting) {
            return Ok(inner.wind_down.clone());
        }
        if let Some(dir) = &inner.state_dir {
            self.serve_control(dir)?;
        }
        // Serving before the predecessor hears of it: once it answers "ok" to whoever asked,
        // this generation must take the next upgrade request.
        {
            let mut phase = lock(&inner.phase);
            if matches!(*phase, Phase::Starting) {
                *phase = Phase::Serving;
            }
        }
        let parent = lock(&inner.parent).take();
        match parent.and_then(report_ready) {
            Some(handshake) => {
                let inner = Arc::clone(inner);
                tokio::spawn(async move {
                    if !handover_accepted(handshake).await {
                        tracing::warn!(
                            "the previous generation went away before accepting; serving alone"
                        );
                        inner.speak_for_itself().await;
                    }
                    inner.start_accepting();
                });
            }
            None => {
                // A first generation, or one whose parent is gone: it speaks for itself.
                if let Some(path) = &inner.pid_file {
                    pid_file::write(path, std::process::id())?;
                }
                inner.notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
                inner.start_accepting();
            }
        }
        Ok(inner.wind_down.clone())
    }

    /// Starts an upgrade, or joins the one running, and returns its outcome: `Ok` once the new
    /// generation is ready (and, with probation, survived it); an error when it failed and this
    /// generation carries on, or when this one cannot upgrade (not ready yet, or retired).
    pub async fn upgrade(&self) -> Result<Upgraded, UpgradeError> {
        let mut outcome = self.start_or_join()?;
        let result = outcome.wait_for(Option::is_some).await;
        match result {
            Ok(done) => done.clone().unwrap_or(Err(UpgradeError::Abandoned)),
            Err(_) => Err(UpgradeError::Abandoned),
        }
    }

    /// The token cancelled when this generation should wind down.
    pub fn wind_down(&self) -> CancellationToken {
        self.inner.wind_down.clone()
    }

    /// The successor's PID, once one took over.
    pub fn successor(&self) -> Option<u32> {
        match *lock(&self.inner.phase) {
            Phase::Retired { successor } => Some(successor),
            _ => None,
        }
    }

    /// Whether this generation should accept new connections now: not while a successor is on
    /// probation, nor once it has taken over.
    pub fn is_accepting(&self) -> bool {
        *self.inner.accepting.borrow()
    }

    /// Completes when [`is_accepting`](Self::is_accepting) becomes `want`. An accept loop
    /// pauses on it during probation, and keeps watching for its stop while paused: after a
    /// handover (or a stop signal) this generation never accepts again, so a bare
    /// `accepting(true).await` would wait forever.
    ///
    /// ```no_run
    /// # async fn f(upgrader: procwarden::upgrade::Upgrader, listener: tokio::net::TcpListener) {
    /// let wind_down = upgrader.wind_down();
    /// while !wind_down.is_cancelled() {
    ///     tokio::select! {
    ///         biased; // the gate before the listener
    ///         _ = wind_down.cancelled() => break,
    ///         _ = upgrader.accepting(false) => tokio::select! {
    ///             _ = wind_down.cancelled() => break,
    ///             _ = upgrader.accepting(true) => {}
    ///         },
    ///         accepted = listener.accept() => { /* serve it */ }
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn accepting(&self, want: bool) {
        let mut rx = self.inner.accepting.subscribe();
        let _ = rx.wait_for(|now| *now == want).await;
    }

    /// A supervised child that reports this generation ready once it runs: put it last in the
    /// tree, after the children that serve, so that it starts after they are ready.
    pub fn ready_child(&self) -> ChildSpec {
        let upgrader = self.clone();
        ChildSpec::new("upgrade-ready", move |ctx| {
            let upgrader = upgrader.clone();
            async move {
                upgrader.ready()?;
                ctx.shutdown_requested().await;
                Ok::<(), UpgradeError>(())
            }
        })
        .restart(Restart::Temporary)
    }

    /// Runs `supervisor` as this generation's main loop: signals as in
    /// [`Supervisor::run_until_signal`], and a graceful shutdown of the tree when a successor
    /// takes over (the drain). If the upgrade signal is SIGHUP, SIGHUP upgrades instead of
    /// reloading.
    pub async fn run(&self, supervisor: Supervisor) -> RunOutcome {
        let handle = supervisor.handle();
        let wind_down = self.inner.wind_down.clone();
        let drain = tokio::spawn(async move {
            wind_down.cancelled().await;
            handle.shutdown();
        });
        let reload_on_hangup = self.inner.trigger != Some(Signal::HUP);
        let outcome = supervisor.run_until_signals(reload_on_hangup).await;
        drain.abort();
        outcome
    }

    fn start_or_join(
        &self,
    ) -> Result<watch::Receiver<Option<Result<Upgraded, UpgradeError>>>, UpgradeError> {
        let mut phase = lock(&self.inner.phase);
        match &*phase {
            Phase::Starting => Err(UpgradeError::NotReady),
            Phase::Retired { successor } => Err(UpgradeError::Retired {
                successor: *successor,
            }),
            Phase::Stopping => Err(UpgradeError::Abandoned),
            Phase::Upgrading(outcome) => Ok(outcome.clone()),
            Phase::Serving => {
                let (tx, rx) = watch::channel(None);
                *phase = Phase::Upgrading(rx.clone());
                let inner = Arc::clone(&self.inner);
                tokio::spawn(async move {
                    let outcome = inner.attempt().await;
                    inner.conclude(outcome, &tx).await;
                });
                Ok(rx)
            }
        }
    }

    /// Binds the control socket and answers its clients until this generation ends.
    fn serve_control(&self, dir: &StateDir) -> Result<(), UpgradeError> {
        let (listener, path) = control::bind(dir)?;
        *lock(&self.inner.control_path) = Some(path.clone());
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = inner.wind_down.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut stream, _)) = accepted else {
                    continue;
                };
                let inner = Arc::clone(&inner);
                let path = path.clone();
                let answering = inner.answering.clone();
                answering.spawn(async move {
                    let request = control::read_request(&mut stream).await;
                    let outcome = match request.as_deref() {
                        Some("upgrade") => Upgrader { inner }.upgrade().await,
                        _ => Err(UpgradeError::Control {
                            path,
                            reason: format!("unknown request {request:?}; expected \"upgrade\""),
                        }),
                    };
                    control::answer(&mut stream, &outcome).await;
                });
            }
        });
        Ok(())
    }
}

impl Inner {
    /// One upgrade, from spawn to the end of probation.
    async fn attempt(&self) -> Result<Upgraded, UpgradeError> {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=upgrading",
            monotonic_usec()
        ));
        let mut child = NewGeneration::spawn(&self.program, &self.listeners).await?;
        let pid = child.pid();
        tracing::info!(pid, program = %self.program.path.display(), "new generation started");
        child
            .wait_ready(&self.program.path, self.ready_timeout)
            .await?;
        let ready_at = Instant::now();
        tracing::info!(pid, "new generation ready");
        self.write_pid_file(pid).await;
        self.notify(&format!(
            "MAINPID={pid}\nREADY=1\nSTATUS=handed over to PID {pid}"
        ));
        self.accepting.send_replace(false);
        if let Some(probation) = self.probation {
            tokio::select! {
                status = child.exited() => {
                    self.write_pid_file(std::process::id()).await;
                    return Err(UpgradeError::FailedProbation { pid, status, after: ready_at.elapsed() });
                }
                () = tokio::time::sleep(probation) => {}
            }
        }
        Ok(Upgraded { pid })
    }

    /// Records the outcome, tells everyone who asked, and on success winds this generation
    /// down once they have heard.
    async fn conclude(
        &self,
        outcome: Result<Upgraded, UpgradeError>,
        tx: &watch::Sender<Option<Result<Upgraded, UpgradeError>>>,
    ) {
        self.record(&outcome);
        let succeeded = outcome.is_ok();
        tx.send_replace(Some(outcome));
        if succeeded {
            self.answering.close();
            let _ = tokio::time::timeout(ANSWER_GRACE, self.answering.wait()).await;
            self.wind_down.cancel();
        }
    }

    /// Moves to the phase an outcome leads to, and on a failure serves again.
    fn record(&self, outcome: &Result<Upgraded, UpgradeError>) {
        let mut phase = lock(&self.phase);
        match outcome {
            Ok(upgraded) => {
                *phase = Phase::Retired {
                    successor: upgraded.pid,
                };
                tracing::info!(successor = upgraded.pid, "upgrade done; winding down");
            }
            // Stopping already: a failed upgrade does not bring this generation back.
            Err(err) if matches!(*phase, Phase::Stopping) => {
                tracing::warn!(error = %err, "upgrade failed while stopping");
            }
            Err(err) => {
                *phase = Phase::Serving;
                drop(phase);
                self.accepting.send_replace(true);
                self.notify(&format!(
                    "MAINPID={}\nREADY=1\nSTATUS=upgrade failed: {err}",
                    std::process::id()
                ));
                tracing::warn!(error = %err, "upgrade failed; this generation carries on");
            }
        }
    }

    /// Opens the accept gate, unless this generation is stopping.
    fn start_accepting(&self) {
        if !matches!(*lock(&self.phase), Phase::Stopping) {
            self.accepting.send_replace(true);
        }
    }

    /// Writes the pid file and tells systemd this process is the service now, for a successor
    /// whose predecessor went away before accepting it.
    async fn speak_for_itself(&self) {
        self.write_pid_file(std::process::id()).await;
        self.notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    }

    /// Replaces the pid file on a blocking thread: file systems can be slow (a network mount),
    /// which must not stall the connections this runtime serves.
    async fn write_pid_file(&self, pid: u32) {
        let Some(path) = self.pid_file.clone() else {
            return;
        };
        let written = tokio::task::spawn_blocking(move || pid_file::write(&path, pid)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "the pid file could not be replaced"),
            Err(err) => tracing::error!(error = %err, "the pid file could not be replaced"),
        }
    }

    fn notify(&self, message: &str) {
        if let Some(notifier) = &self.notifier {
            notifier.send(message);
        }
    }

    /// A stop signal: wind down without a successor, unless one is taking over already.
    fn stop(&self) {
        let mut phase = lock(&self.phase);
        if matches!(*phase, Phase::Retired { .. } | Phase::Stopping) {
            return;
        }
        *phase = Phase::Stopping;
        drop(phase);
        self.notify("STOPPING=1");
        self.accepting.send_replace(false);
        self.wind_down.cancel();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(path) = lock(&self.control_path).take() {
            let _ = std::fs::remove_file(path);
        }
        let phase = lock(&self.phase);
        if matches!(*phase, Phase::Retired { .. }) {
            return;
        }
        if let Some(path) = &self.pid_file {
            pid_file::remove_if_ours(path, std::process::id());
        }
        if !matches!(*phase, Phase::Stopping) {
            self.notify("STOPPING=1");
        }
    }
}

/// Upgrades on each `signal`, logging the outcome.
fn listen_for_trigger(inner: &Arc<Inner>, signal: Signal) -> Result<(), UpgradeError> {
    let kind = tokio::signal::unix::SignalKind::from_raw(signal.as_raw());
    let mut signals = tokio::signal::unix::signal(kind)
        .map_err(|err| UpgradeError::io("listening for the upgrade signal", PathBuf::new(), err))?;
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = inner.wind_down.cancelled() => return,
                received = signals.recv() => if received.is_none() { return },
            }
            let inner = Arc::clone(&inner);
            tracing::info!(%signal, "upgrade requested by signal");
            tokio::spawn(async move {
                if let Err(err) = (Upgrader { inner }).upgrade().await {
                    tracing::warn!(error = %err, "upgrade by signal failed");
                }
            });
        }
    });
    Ok(())
}

/// Winds down on SIGTERM or SIGINT.
fn listen_for_stop(inner: &Arc<Inner>) -> Result<(), UpgradeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind| {
        signal(kind)
            .map_err(|err| UpgradeError::io("listening for stop signals", PathBuf::new(), err))
    };
    let mut terminate = listen(SignalKind::terminate())?;
    let mut interrupt = listen(SignalKind::interrupt())?;
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        tokio::select! {
            () = inner.wind_down.cancelled() => return,
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        inner.stop();
    });
    Ok(())
}

/// The descriptor a previous generation passed for the readiness report, if any.
fn inherited_ready_fd() -> Result<Option<OwnedFd>, UpgradeError> {
    let value = std::env::var_os(handover::READY_FD);
    let Some(raw) = handover::parse_ready_fd(value.as_deref())? else {
        return Ok(None);
    };
    // The variable is meant for this process only if LISTEN_PID names it, as the listeners are.
    let meant_for_us = std::env::var_os(handover::LISTEN_PID)
        .is_some_and(|pid| pid.to_str() == Some(&std::process::id().to_string()));
    if !meant_for_us {
        return Ok(None);
    }
    crate::sys::exec::take_inherited_one(raw)
        .map(Some)
        .map_err(|err| UpgradeError::BadEnvironment {
            variable: handover::READY_FD,
            value: raw.to_string(),
            reason: err.to_string(),
        })
}

/// The path this program was invoked by, absolute: argv[0] against the working directory if it
/// has a slash, else the first match in `PATH`. Not canonicalized: a symbolic link is followed
/// afresh at each upgrade.
fn invoked_path() -> Result<PathBuf, UpgradeError> {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    resolve_invoked(
        Path::new(&argv0),
        std::env::current_dir().ok().as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
    .ok_or_else(|| UpgradeError::Spawn {
        path: PathBuf::from(&argv0),
        source: Arc::new(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "cannot resolve the path this program was invoked by; set UpgraderBuilder::executable",
        )),
    })
}

pub(crate) fn resolve_invoked(
    argv0: &Path,
    cwd: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if argv0.as_os_str().is_empty() {
        return None;
    }
    if argv0.is_absolute() {
        return Some(argv0.to_owned());
    }
    if argv0.as_os_str().as_bytes().contains(&b'/') {
        return cwd.map(|cwd| cwd.join(argv0));
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(argv0))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_invoked_path_without_following_links() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            resolve_invoked(Path::new("/opt/bin/server"), Some(cwd), None).unwrap(),
            Path::new("/opt/bin/server")
        );
        assert_eq!(
            resolve_invoked(Path::new("./bin/server"), Some(cwd), None).unwrap(),
            Path::new("/srv/app/./bin/server")
        );
        let sh = resolve_invoked(
            Path::new("sh"),
            Some(cwd),
            Some("/nonexistent:/bin".as_ref()),
        );
        assert_eq!(sh.unwrap(), Path::new("/bin/sh"));
        assert!(resolve_invoked(Path::new(""), Some(cwd), None).is_none());
    }
}
