//! A new generation of this program, seen from the one that started it: spawned with the
//! listeners, watched until it reports ready, exits, or misses its deadline, and reaped.
//!
//! The two talk over a socket pair, one byte each way: the new generation sends `R` when it is
//! ready, and the old one answers `G` once it accepts the handover. Until the `G`, the new
//! generation does not accept connections, so one the old generation rejects (late, say) is
//! killed holding none.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::{Listeners, UpgradeError, handover};
use crate::process::exit_status::describe;
use crate::sys::exec;

/// What starts a new generation: the program and its arguments (argv[0] is the program).
#[derive(Clone, Debug)]
pub(crate) struct Program {
    pub(crate) path: std::path::PathBuf,
    pub(crate) args: Vec<OsString>,
}

/// A running new generation, this process's child until it is reaped.
///
/// Dropped before it was accepted as ready, it is killed: a program that stops in the middle of
/// an upgrade must not leave a half-started successor behind.
pub(crate) struct NewGeneration {
    pid: i32,
    /// Fires when the child has exited (it is then a zombie until reaped here).
    exited: oneshot::Receiver<()>,
    /// Our end of the handshake.
    handshake: Option<tokio::net::UnixStream>,
    accepted: bool,
    reaped: bool,
}

impl NewGeneration {
    /// Starts `program` with the listeners at 3, 4, … and its end of the handshake after them.
    pub(crate) async fn spawn(
        program: &Program,
        listeners: &Listeners,
    ) -> Result<Self, UpgradeError> {
        let spawn_error = |source: io::Error| UpgradeError::Spawn {
            path: program.path.clone(),
            source: source.into(),
        };
        let (names, fds) = listeners.handover()?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_error)?;
        let ours = ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours))
            .map_err(spawn_error)?;
        let theirs = OwnedFd::from(theirs);
        let env = handover::child_env(std::env::vars_os(), &names, std::process::id());
        let mut placed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        placed.push(theirs.as_fd());
        let argv = std::iter::once(program.path.clone().into_os_string())
            .chain(program.args.iter().cloned())
            .collect();
        let plan = exec::Exec::new(
            program.path.clone().into_os_string(),
            argv,
            env,
            placed,
            theirs.as_fd(),
            true,
        )
        .map_err(spawn_error)?;
        // The listeners' copies and the child's end stay open until the child has its own.
        let mut held = fds;
        held.push(theirs);
        let (started, exited) = start_and_watch(plan, held).map_err(spawn_error)?;
        let pid = started
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the starting thread ended")))
            .map_err(spawn_error)?;
        Ok(Self {
            pid,
            exited,
            handshake: Some(ours),
            accepted: false,
            reaped: false,
        })
    }

    /// The child's PID.
    pub(crate) fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Waits until the child reports ready. If it exits first or misses `deadline`, it is
    /// killed (if need be) and reaped, and the error says which.
    pub(crate) async fn wait_ready(
        &mut self,
        program: &Path,
        deadline: Duration,
    ) -> Result<(), UpgradeError> {
        let mut report = Vec::new();
        let read = async {
            let pipe = self
                .handshake
                .as_mut()
                .expect("the handshake is set at spawn");
            let mut byte = [0u8; 8];
            loop {
                match pipe.read(&mut byte).await {
                    Ok(0) => return,
                    Ok(n) => {
                        report.extend_from_slice(&byte[..n]);
                        if report.first() == Some(&handover::READY_BYTE) || report.len() >= 5 {
                            return;
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        };
        let answered = tokio::time::timeout(deadline, read).await.is_ok();
        if answered && report.first() == Some(&handover::READY_BYTE) {
            return self.accept().await;
        }
        if !answered {
            // Killed before our end closes: it must not take a closed socket for a parent
            // that died and go on alone.
            let _ = exec::kill_child(self.pid);
            self.handshake = None;
            self.exited().await;
            return Err(UpgradeError::ReadyTimeout {
                pid: self.pid(),
                timeout: deadline,
            });
        }
        self.handshake = None;
        // The socket closed without a ready byte: the child failed to exec or exited.
        let failure = exec::decode_exec_failure(&report);
        let status = self.exited().await;
        match failure {
            Some(source) => Err(UpgradeError::Spawn {
                path: program.to_owned(),
                source: source.into(),
            }),
            None => Err(UpgradeError::ExitedBeforeReady {
                pid: self.pid(),
                status,
            }),
        }
    }

    /// Tells the child its handover is accepted: from now on it accepts connections.
    async fn accept(&mut self) -> Result<(), UpgradeError> {
        use tokio::io::AsyncWriteExt;
        let mut handshake = self
            .handshake
            .take()
            .expect("the handshake is set at spawn");
        if handshake.write_all(&[handover::GO_BYTE]).await.is_err() {
            // It died just after saying it was ready.
            let status = self.exited().await;
            return Err(UpgradeError::ExitedBeforeReady {
                pid: self.pid(),
                status,
            });
        }
        self.accepted = true;
        Ok(())
    }

    /// Waits until the child exits, reaps it, and says how it ended.
    pub(crate) async fn exited(&mut self) -> String {
        let _ = (&mut self.exited).await;
        self.reaped = true;
        match exec::reap(self.pid) {
            Ok(Some(status)) => describe(status),
            Ok(None) => "exited".to_owned(),
            Err(err) => format!("exited (its status could not be read: {err})"),
        }
    }
}

impl Drop for NewGeneration {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if !self.accepted {
            let _ = exec::kill_child(self.pid);
        }
        // From here the watcher reaps the child when it exits, unless it already has exited
        // and told us: then we reap it, as the watcher will not.
        self.exited.close();
        if self.exited.try_recv().is_ok() {
            let _ = exec::reap(self.pid);
        }
    }
}

/// Starts the child on a thread of its own, then watches for its exit there (a blocking wait,
/// portable to every Unix and free of polling). Starting it there keeps the runtime's workers
/// serving while the kernel sets the child up. The child is left unreaped for whoever listens
/// on the second receiver; if no one listens any more, the thread reaps it.
fn start_and_watch(
    plan: exec::Exec,
    held: Vec<OwnedFd>,
) -> io::Result<(oneshot::Receiver<io::Result<i32>>, oneshot::Receiver<()>)> {
    let (started_tx, started) = oneshot::channel();
    let (exited_tx, exited) = oneshot::channel();
    std::thread::Builder::new()
        .name("procwarden-upgrade".to_owned())
        .spawn(move || {
            let spawned = plan.spawn();
            drop(held);
            let pid = match spawned {
                Ok(pid) => pid,
                Err(err) => {
                    let _ = started_tx.send(Err(err));
                    return;
                }
            };
            if started_tx.send(Ok(pid)).is_err() {
                // The upgrade was dropped while the child started: it must not live on.
                let _ = exec::kill_child(pid);
            }
            let _ = exec::wait_exit_keeping(pid);
            if exited_tx.send(()).is_err() {
                let _ = exec::reap(pid);
            }
        })?;
    Ok((started, exited))
}

/// Reports readiness to the generation that started this one, on its end of the handshake.
/// `None` when nobody listens any more (it is gone): this generation is on its own. Otherwise
/// the socket on which the `G` that accepts the handover will come.
pub(crate) fn report_ready(fd: OwnedFd) -> Option<tokio::net::UnixStream> {
    let mut stream = std::os::unix::net::UnixStream::from(fd);
    std::io::Write::write_all(&mut stream, &[handover::READY_BYTE]).ok()?;
    stream.set_nonblocking(true).ok()?;
    tokio::net::UnixStream::from_std(stream).ok()
}

/// Waits for the old generation's answer: `true` when it accepted the handover, `false` when
/// it went away without answering (so this generation is on its own).
pub(crate) async fn handover_accepted(mut handshake: tokio::net::UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(handshake.read(&mut byte).await, Ok(1) if byte[0] == handover::GO_BYTE)
}
