//! A new generation of this program, seen from the one that started it: spawned with the
//! listeners, watched until it reports ready, exits, or misses its deadline, and reaped.

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
    ready: Option<tokio::net::unix::pipe::Receiver>,
    accepted: bool,
    reaped: bool,
}

impl NewGeneration {
    /// Starts `program` with the listeners at 3, 4, … and the readiness pipe after them.
    pub(crate) fn spawn(program: &Program, listeners: &Listeners) -> Result<Self, UpgradeError> {
        let spawn_error = |source: io::Error| UpgradeError::Spawn {
            path: program.path.clone(),
            source: source.into(),
        };
        let (names, fds) = listeners.handover()?;
        let (ready_read, ready_write) = std::io::pipe().map_err(spawn_error)?;
        let ready_write = OwnedFd::from(ready_write);
        let env = handover::child_env(std::env::vars_os(), &names, std::process::id());
        let mut placed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        placed.push(ready_write.as_fd());
        let argv = std::iter::once(program.path.clone().into_os_string())
            .chain(program.args.iter().cloned())
            .collect();
        let plan = exec::Exec::new(
            program.path.clone().into_os_string(),
            argv,
            env,
            placed,
            ready_write.as_fd(),
            true,
        )
        .map_err(spawn_error)?;
        let pid = plan.spawn().map_err(spawn_error)?;
        // Only the child may hold the write end now, so that its exit closes the pipe.
        drop(ready_write);
        drop(fds);
        let exited = watch_exit(pid);
        let mut generation = Self {
            pid,
            exited,
            ready: None,
            accepted: false,
            reaped: false,
        };
        let ready_read = OwnedFd::from(ready_read);
        generation.ready =
            Some(tokio::net::unix::pipe::Receiver::from_owned_fd(ready_read).map_err(spawn_error)?);
        Ok(generation)
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
                .ready
                .as_mut()
                .expect("the readiness pipe is set at spawn");
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
        self.ready = None;
        if answered && report.first() == Some(&handover::READY_BYTE) {
            self.accepted = true;
            return Ok(());
        }
        if !answered {
            let _ = exec::kill_child(self.pid);
            self.exited().await;
            return Err(UpgradeError::ReadyTimeout {
                pid: self.pid(),
                timeout: deadline,
            });
        }
        // The pipe closed without a ready byte: the child failed to exec or exited.
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

/// Watches for the child's exit on a thread of its own (a blocking wait, portable to every
/// Unix and free of polling). The child is left unreaped for whoever listens; if no one
/// listens any more, the thread reaps it.
fn watch_exit(pid: i32) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("procwarden-gen-{pid}"))
        .spawn(move || {
            let _ = exec::wait_exit_keeping(pid);
            if tx.send(()).is_err() {
                let _ = exec::reap(pid);
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(pid, error = %err, "cannot watch the new generation for exit");
    }
    rx
}

/// Reports readiness to the generation that started this one, on the descriptor it passed.
/// `false` when nobody listens any more (it is gone), so this generation is on its own.
pub(crate) fn report_ready(fd: OwnedFd) -> bool {
    let mut pipe = std::io::PipeWriter::from(fd);
    std::io::Write::write_all(&mut pipe, &[handover::READY_BYTE]).is_ok()
}
