//! The common case: a shared service that is one command, ready when a probe says so.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use crate::supervisor::BoxError;

/// Reports the status of a spawned service once a thread of this process has reaped it.
pub(crate) type Exit = tokio::sync::oneshot::Receiver<std::process::ExitStatus>;

/// Why a start failed when the process ended before it was ready.
pub(crate) fn exited_early(
    status: Option<std::process::ExitStatus>,
    log: &std::path::Path,
) -> BoxError {
    match status {
        Some(status) => format!(
            "it exited before it was ready ({}); see its log {}",
            describe(status),
            log.display()
        ),
        None => format!(
            "it exited before it was ready; see its log {}",
            log.display()
        ),
    }
    .into()
}

/// A process's end, in words, with a hint for the commonest failure.
fn describe(status: std::process::ExitStatus) -> String {
    let words = crate::process::exit_status::describe(status);
    if status.code() == Some(127) {
        format!("{words}: command not found")
    } else {
        words
    }
}

/// When a service started by a [`ServiceCommand`] counts as ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as the process is spawned.
    Started,
    /// Once a TCP connection to `host:port` succeeds.
    Tcp {
        /// The host, such as `127.0.0.1`.
        host: String,
        /// The port.
        port: u16,
    },
    /// Once this shell command exits 0.
    Command(OsString),
}

impl Readiness {
    /// Parses `tcp:HOST:PORT` (the CLI's `--ready`), or `cmd:SHELL COMMAND`.
    ///
    /// ```
    /// use procwarden::shared::Readiness;
    /// assert_eq!(
    ///     "tcp:127.0.0.1:5432".parse::<Readiness>().unwrap(),
    ///     Readiness::Tcp { host: "127.0.0.1".into(), port: 5432 }
    /// );
    /// assert!("tcp:localhost".parse::<Readiness>().is_err());
    /// assert!("http://x".parse::<Readiness>().is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(address) = text.strip_prefix("tcp:") {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| format!("{text:?}: expected tcp:HOST:PORT"))?;
            let port = port
                .parse()
                .map_err(|_| format!("{text:?}: {port:?} is not a port number"))?;
            if host.is_empty() {
                return Err(format!("{text:?}: the host is empty"));
            }
            return Ok(Self::Tcp {
                host: host.trim_matches(['[', ']']).to_owned(),
                port,
            });
        }
        if let Some(command) = text.strip_prefix("cmd:") {
            return Ok(Self::Command(command.into()));
        }
        Err(format!("{text:?}: expected tcp:HOST:PORT or cmd:COMMAND"))
    }

    /// The port, for a TCP probe.
    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Tcp { port, .. } => Some(*port),
            _ => None,
        }
    }
}

impl std::str::FromStr for Readiness {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

/// A service that is one shell command: started through `/bin/sh -c` in its own process group
/// (so the whole group is stopped), its output written to `NAME.log` in the state directory
/// (started afresh at each start, removed with the state when the service is stopped; kept
/// after a failed start, which names it), ready when its [`Readiness`] probe passes within the
/// ready timeout.
#[derive(Clone, Debug)]
pub struct ServiceCommand {
    pub(crate) script: OsString,
    pub(crate) ready: Readiness,
    pub(crate) ready_timeout: Duration,
}

impl ServiceCommand {
    /// The service `script`, run by `/bin/sh -c`, ready once started.
    pub fn shell(script: impl AsRef<OsStr>) -> Self {
        Self {
            script: script.as_ref().to_owned(),
            ready: Readiness::Started,
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// Sets when it counts as ready.
    pub fn ready(mut self, ready: Readiness) -> Self {
        self.ready = ready;
        self
    }

    /// Sets how long it may take to become ready (default 30 s); past it the start has failed
    /// and the process group is killed.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Spawns the command in its own process group, its output written to `log`. The process is
    /// reaped by a thread of this process if it ends while this process lives (its status comes
    /// back through the receiver); otherwise by init.
    pub(crate) fn spawn(&self, log: &std::path::Path) -> Result<(u32, Exit), BoxError> {
        let output = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(log)
            .map_err(|err| format!("cannot open the log {}: {err}", log.display()))?;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.script)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .map_err(|err| format!("cannot run /bin/sh: {err}"))?;
        let pid = child.id();
        let (report, exit) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    let _ = report.send(status);
                }
            })?;
        Ok((pid, exit))
    }

    /// Waits until the probe passes, the process exits (a failure), or the timeout passes.
    pub(crate) async fn wait_ready(
        &self,
        exit: Exit,
        log: &std::path::Path,
    ) -> Result<(), BoxError> {
        let probe = async {
            let mut delay = Duration::from_millis(5);
            loop {
                if self.probe().await {
                    return;
                }
                // A readiness probe has nothing to wait on but the service itself.
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
        };
        tokio::select! {
            () = probe => Ok(()),
            status = exit => Err(exited_early(status.ok(), log)),
            () = tokio::time::sleep(self.ready_timeout) => Err(format!(
                "it was not ready within {:?} ({})",
                self.ready_timeout,
                self.describe_probe()
            )
            .into()),
        }
    }

    async fn probe(&self) -> bool {
        match &self.ready {
            Readiness::Started => true,
            Readiness::Tcp { host, port } => tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .is_ok(),
            Readiness::Command(script) => tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|status| status.success()),
        }
    }

    fn describe_probe(&self) -> String {
        match &self.ready {
            Readiness::Started => "started".into(),
            Readiness::Tcp { host, port } => format!("no TCP connection to {host}:{port}"),
            Readiness::Command(script) => format!("{} did not exit 0", script.to_string_lossy()),
        }
    }
}
