//! An OS process run as a supervised child.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

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

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Out => "stdout",
            Stream::Err => "stderr",
        }
    }
}

/// Copies lines from the process to this process's stdout or stderr, prefixed with `[path]`.
///
/// Reads to the end whatever happens: a pipe that nobody reads would block the process once full,
/// or kill it with SIGPIPE once closed. So bytes that are not UTF-8 are replaced rather than a
/// reason to stop, a line longer than [`MAX_LINE`] is cut into several, and if this process's
/// own stream fails, the rest is read and dropped, with one warning. Returns once everything
/// read is written, so that draining the forwarders of a run means its output is out.
async fn forward(pipe: impl AsyncRead + Unpin, path: Arc<str>, stream: Stream) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    let mut out = Output::new(stream);
    loop {
        line.clear();
        match read_line(&mut reader, &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(path = %path, "cannot read the process's {}: {err}", stream.name());
                break;
            }
        }
        let text = trim_newline(&line);
        let text = format!("[{path}] {}\n", String::from_utf8_lossy(text));
        out.write(&path, text.as_bytes()).await;
    }
    out.flush(&path).await;
}

/// Longest line forwarded as one; a longer one is forwarded in pieces of this size.
const MAX_LINE: usize = 64 * 1024;

/// Appends the next line, its newline included, to `line`, or at most [`MAX_LINE`] bytes of
/// it; the number of bytes appended, 0 at the end.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let start = line.len();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        let room = MAX_LINE - (line.len() - start);
        let window = &available[..available.len().min(room)];
        let (taken, done) = match window.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (window.len(), window.len() == room),
        };
        line.extend_from_slice(&window[..taken]);
        reader.consume(taken);
        if done {
            break;
        }
    }
    Ok(line.len() - start)
}

/// A line without its `\n` or `\r\n`, as `lines()` would give it.
fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// This process's stdout or stderr, which, once a write fails, takes no more.
struct Output {
    stream: Stream,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    failed: bool,
}

impl Output {
    fn new(stream: Stream) -> Self {
        let writer: Box<dyn AsyncWrite + Send + Unpin> = match stream {
            Stream::Out => Box::new(tokio::io::stdout()),
            Stream::Err => Box::new(tokio::io::stderr()),
        };
        Self {
            stream,
            writer,
            failed: false,
        }
    }

    async fn write(&mut self, path: &str, bytes: &[u8]) {
        if !self.failed {
            let written = self.writer.write_all(bytes).await;
            self.check(path, written);
        }
    }

    /// Waits for what was written to be out: tokio hands writes to a blocking thread.
    async fn flush(&mut self, path: &str) {
        if !self.failed {
            let flushed = self.writer.flush().await;
            self.check(path, flushed);
        }
    }

    fn check(&mut self, path: &str, result: std::io::Result<()>) {
        if let Err(err) = result {
            self.failed = true;
            tracing::warn!(
                path,
                "cannot forward the process's {}: {err}; the rest of it is dropped",
                self.stream.name()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<Vec<u8>> {
        let mut reader = BufReader::with_capacity(16, input);
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            if read_line(&mut reader, &mut line).await.unwrap() == 0 {
                return lines;
            }
            lines.push(line);
        }
    }

    #[tokio::test]
    async fn lines_are_read_across_buffer_refills_and_without_a_final_newline() {
        let input = b"first line, longer than the buffer\nsecond\r\nlast";
        let lines = lines_of(input).await;
        assert_eq!(
            lines,
            [
                b"first line, longer than the buffer\n".to_vec(),
                b"second\r\n".to_vec(),
                b"last".to_vec()
            ]
        );
        assert_eq!(trim_newline(&lines[1]), b"second");
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_cut_into_pieces() {
        let mut input = vec![b'x'; MAX_LINE * 2 + 10];
        input.push(b'\n');
        input.extend_from_slice(b"next\n");
        let lengths: Vec<usize> = lines_of(&input).await.iter().map(Vec::len).collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 11, 5]);
    }
}
