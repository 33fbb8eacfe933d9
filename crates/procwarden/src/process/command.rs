//! An OS process run as a supervised child.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

use super::{ProcessRef, Signal};
use crate::supervisor::{BoxError, ChildSpec, Context, Shutdown};

/// A command run as a child of a [`Supervisor`](crate::Supervisor): started in its own process
/// group, stopped as a group (stop signal, grace period, SIGKILL), its output forwarded line by
/// line with the child's path, and its exit status turned into the child's exit reason, so the
/// supervisor's restart policies apply to OS processes.
///
/// - Exit status 0 is a normal exit; any other status, or death by a signal, is a failure.
/// - When the supervisor asks the child to stop, the group gets the stop signal (SIGTERM by
///   default), then SIGKILL after the grace period (10 s by default); the child counts as
///   stopped on request whatever status the process then exits with.
/// - On Linux, the process gets SIGKILL (configurable) if the thread that spawned it dies, so
///   it does not outlive a supervisor that was killed.
///
/// ```
/// use procwarden::process::Command;
/// use procwarden::{Restart, Supervisor};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let supervisor = Supervisor::builder("jobs")
///     .child(Command::new("true").child_spec("once").restart(Restart::Transient))
///     .build()?;
/// // `true` exits 0, the transient child is not restarted, and the supervisor returns.
/// supervisor.run().await?;
/// # Ok::<(), procwarden::SupervisorError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    current_dir: Option<PathBuf>,
    stop_signal: Signal,
    grace: Duration,
    parent_death_signal: Option<Signal>,
    forward_output: bool,
}

impl Command {
    /// A command that runs `program` (looked up in `PATH` as the shell would).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            stop_signal: Signal::TERM,
            grace: Duration::from_secs(10),
            parent_death_signal: Some(Signal::KILL),
            forward_output: true,
        }
    }

    /// A command run through `/bin/sh -c`.
    pub fn shell(script: impl AsRef<OsStr>) -> Self {
        Self::new("/bin/sh").arg("-c").arg(script)
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the process (it inherits the rest).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Sets the signal sent to the process group to ask it to stop. Default: SIGTERM.
    pub fn stop_signal(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Sets how long the group has after the stop signal before SIGKILL. Default: 10 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets the signal the process gets when its parent dies (Linux only; ignored elsewhere);
    /// `None` lets it outlive its parent. Default: SIGKILL.
    pub fn parent_death_signal(mut self, signal: Option<Signal>) -> Self {
        self.parent_death_signal = signal;
        self
    }

    /// Whether to forward the process's stdout and stderr, each line prefixed with the child's
    /// path (default), or to let it inherit this process's.
    pub fn forward_output(mut self, forward: bool) -> Self {
        self.forward_output = forward;
        self
    }

    /// The child spec that runs this command, named `name`. Its grace period is this command's
    /// plus a margin for the SIGKILL, so the supervisor never aborts the wait for the exit.
    pub fn child_spec(self, name: impl Into<String>) -> ChildSpec {
        let margin = Duration::from_secs(5);
        let grace = self.grace.saturating_add(margin);
        let command = Arc::new(self);
        ChildSpec::new(name, move |ctx| {
            let command = Arc::clone(&command);
            async move { command.run(ctx).await }
        })
        .shutdown(Shutdown::Timeout(grace))
    }

    fn to_tokio(&self) -> tokio::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        if let Some(signal) = self.parent_death_signal {
            super::set_parent_death_signal(&mut command, signal);
        }
        let output = || {
            if self.forward_output {
                Stdio::piped()
            } else {
                Stdio::inherit()
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output());
        let mut command = tokio::process::Command::from(command);
        // If the run is aborted, the process must not be left running unsupervised.
        command.kill_on_drop(true);
        command
    }

    /// One run: spawn, forward output, wait for the exit or the stop request.
    async fn run(&self, ctx: Context) -> Result<(), BoxError> {
        let mut child = self
            .to_tokio()
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", self.program.to_string_lossy()))?;
        let pid = child
            .id()
            .ok_or("the process exited before it could be watched")?;
        let process = ProcessRef::new(super::Pid::try_from(pid)?)?;
        if let Some(stdout) = child.stdout.take() {
            ctx.spawn(forward(stdout, Arc::from(ctx.path()), Stream::Out));
        }
        if let Some(stderr) = child.stderr.take() {
            ctx.spawn(forward(stderr, Arc::from(ctx.path()), Stream::Err));
        }
        tracing::debug!(pid, "started {}", self.program.to_string_lossy());
        tokio::select! {
            status = child.wait() => judge(status?),
            () = ctx.shutdown_requested() => {
                let outcome = process.stop_group(self.stop_signal, self.grace).await?;
                tracing::debug!(pid, ?outcome, "stopped");
                child.wait().await?;
                Ok(())
            }
        }
    }
}

/// A status of 0 is success; anything else is the child's failure, said plainly.
fn judge(status: ExitStatus) -> Result<(), BoxError> {
    if status.success() {
        return Ok(());
    }
    Err(super::exit_status::describe(status).into())
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// Copies lines from the process to this process's stdout or stderr, prefixed with `[path]`.
async fn forward(pipe: impl AsyncRead + Unpin, path: Arc<str>, stream: Stream) {
    let mut lines = BufReader::new(pipe).lines();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Ok(Some(line)) = lines.next_line().await {
        let text = format!("[{path}] {line}\n");
        let written = match stream {
            Stream::Out => stdout.write_all(text.as_bytes()).await,
            Stream::Err => stderr.write_all(text.as_bytes()).await,
        };
        if written.is_err() {
            return;
        }
    }
}
