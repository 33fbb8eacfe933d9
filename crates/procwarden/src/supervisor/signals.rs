//! Running a tree as a program's main loop: signals in, an exit code out.

use std::process::ExitCode;

use super::{Supervisor, SupervisorError};

/// How a tree run by [`Supervisor::run_until_signal`] ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// Every child stopped for good on its own, or the tree was shut down through a handle.
    Completed,
    /// A signal (SIGINT or SIGTERM) asked for a graceful stop, and the tree stopped.
    Stopped {
        /// The signal's number.
        signal: i32,
    },
    /// A second signal arrived during the graceful stop, and the children were aborted.
    Aborted {
        /// The second signal's number.
        signal: i32,
    },
    /// The tree failed (restart intensity exceeded) or could not run.
    Failed(SupervisorError),
}

impl RunOutcome {
    /// The process exit code for this outcome: 0 for a completed or gracefully stopped tree
    /// (what systemd and Kubernetes expect after SIGTERM), 128 + N after an abort by signal N,
    /// and 1 for a failure.
    ///
    /// ```
    /// use procwarden::supervisor::RunOutcome;
    /// assert_eq!(RunOutcome::Stopped { signal: 15 }.exit_status(), 0);
    /// assert_eq!(RunOutcome::Aborted { signal: 2 }.exit_status(), 130);
    /// ```
    pub fn exit_status(&self) -> u8 {
        match self {
            Self::Completed | Self::Stopped { .. } => 0,
            Self::Aborted { signal } => 128u8.saturating_add(u8::try_from(*signal).unwrap_or(0)),
            Self::Failed(_) => 1,
        }
    }

    /// [`exit_status`](Self::exit_status) as an [`ExitCode`] to return from `main`.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_status())
    }
}

/// What a signal asks of the tree.
enum Request {
    Stop(i32),
    /// Only Unix has a reload signal (SIGHUP).
    #[cfg_attr(not(unix), allow(dead_code))]
    Reload,
}

#[cfg(unix)]
mod listen {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    use super::Request;

    pub(super) struct Signals {
        interrupt: Signal,
        terminate: Signal,
        /// `None` when SIGHUP means something else to the program (an upgrade).
        hangup: Option<Signal>,
    }

    impl Signals {
        pub(super) fn new(reload_on_hangup: bool) -> std::io::Result<Self> {
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                hangup: if reload_on_hangup {
                    Some(signal(SignalKind::hangup())?)
                } else {
                    None
                },
            })
        }

        pub(super) async fn next(&mut self) -> Request {
            let hangup = async {
                match &mut self.hangup {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.interrupt.recv() => Request::Stop(SignalKind::interrupt().as_raw_value()),
                _ = self.terminate.recv() => Request::Stop(SignalKind::terminate().as_raw_value()),
                _ = hangup => Request::Reload,
            }
        }
    }
}

#[cfg(not(unix))]
mod listen {
    use super::Request;

    /// Ctrl-C only: there is no reload signal outside Unix.
    pub(super) struct Signals;

    impl Signals {
        pub(super) fn new(_reload_on_hangup: bool) -> std::io::Result<Self> {
            Ok(Self)
        }

        pub(super) async fn next(&mut self) -> Request {
            match tokio::signal::ctrl_c().await {
                Ok(()) => Request::Stop(2),
                Err(_) => std::future::pending().await,
            }
        }
    }
}

impl Supervisor {
    /// Runs the tree as a program's main loop: SIGINT or SIGTERM stops it gracefully, a second
    /// one aborts the children at once, and SIGHUP reloads it. On platforms other than Unix only
    /// Ctrl-C is handled (stop, then abort); there is no reload signal.
    pub async fn run_until_signal(self) -> RunOutcome {
        self.run_until_signals(true).await
    }

    /// [`run_until_signal`](Self::run_until_signal), with SIGHUP left alone unless
    /// `reload_on_hangup`.
    pub(crate) async fn run_until_signals(self, reload_on_hangup: bool) -> RunOutcome {
        let mut signals = match listen::Signals::new(reload_on_hangup) {
            Ok(signals) => signals,
            Err(source) => {
                return RunOutcome::Failed(SupervisorError::Io {
                    context: "installing signal handlers",
                    source: source.into(),
                });
            }
        };
        let handle = self.handle();
        let run = self.run();
        tokio::pin!(run);
        let mut stopped_by = None;
        let mut aborted_by = None;
        loop {
            tokio::select! {
                result = &mut run => {
                    return match (result, stopped_by, aborted_by) {
                        (Err(SupervisorError::Aborted { .. }), _, Some(signal)) => {
                            RunOutcome::Aborted { signal }
                        }
                        (Err(err), _, _) => RunOutcome::Failed(err),
                        (Ok(()), Some(signal), _) => RunOutcome::Stopped { signal },
                        (Ok(()), None, _) => RunOutcome::Completed,
                    };
                }
                request = signals.next() => match request {
                    Request::Stop(signal) if stopped_by.is_none() => {
                        tracing::info!(signal, "stopping gracefully; signal again to abort");
                        stopped_by = Some(signal);
                        handle.shutdown();
                    }
                    Request::Stop(signal) => {
                        tracing::warn!(signal, "second signal: aborting");
                        aborted_by = Some(signal);
                        handle.abort();
                    }
                    Request::Reload => {
                        tracing::info!("reload requested by signal");
                        let _ = handle.reload();
                    }
                },
            }
        }
    }

    /// Runs the tree from a synchronous `main`: builds a multi-threaded tokio runtime and runs
    /// [`run_until_signal`](Self::run_until_signal) on it.
    ///
    /// ```no_run
    /// use procwarden::{ChildSpec, Supervisor};
    ///
    /// fn main() -> std::process::ExitCode {
    ///     let supervisor = Supervisor::builder("app")
    ///         .child(ChildSpec::new("idle", |ctx| async move {
    ///             ctx.shutdown_requested().await;
    ///             Ok::<(), std::io::Error>(())
    ///         }))
    ///         .build()
    ///         .expect("valid names");
    ///     supervisor.run_blocking().exit_code()
    /// }
    /// ```
    pub fn run_blocking(self) -> RunOutcome {
        match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.run_until_signal()),
            Err(source) => RunOutcome::Failed(SupervisorError::Io {
                context: "building the tokio runtime",
                source: source.into(),
            }),
        }
    }
}
