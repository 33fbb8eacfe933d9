//! `procwarden share`: hold a shared service while a client command runs.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;
use std::time::Duration;

use procwarden::process::{Signal, set_parent_death_signal};
use procwarden::shared::{Readiness, ServiceCommand, SharedService, StateDir};
use tokio::signal::unix::{SignalKind, signal};

use crate::Failure;

/// What `share` was asked to do.
pub struct Share {
    pub name: String,
    pub start: String,
    pub ready: Option<Readiness>,
    pub ready_timeout: Duration,
    pub linger: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub client: Vec<OsString>,
}

/// Holds the service while the client runs and returns the client's exit status (128 + N when
/// a signal N ended it). Signals sent to `share` are passed on to the client; if `share` itself
/// is killed, the kernel gives back its hold and the client gets SIGKILL.
pub async fn run(share: Share, dir: StateDir) -> Result<ExitCode, Failure> {
    let (program, args) = share
        .client
        .split_first()
        .ok_or_else(|| Failure::usage("no client command after --"))?;
    let mut command = ServiceCommand::shell(&share.start).ready_timeout(share.ready_timeout);
    if let Some(ready) = share.ready {
        command = command.ready(ready);
    }
    let service = SharedService::builder(&share.name)
        .state_dir(dir)
        .command(command)
        .linger(share.linger)
        .stop_signal(share.stop_signal)
        .stop_timeout(share.stop_timeout)
        .build()
        .map_err(Failure::usage_from)?;
    let handle = service.acquire().await.map_err(Failure::runtime)?;

    let mut client = std::process::Command::new(program);
    client
        .args(args)
        .env("PROCWARDEN_SERVICE_NAME", &share.name);
    if let Some(pid) = handle.pid() {
        client.env("PROCWARDEN_SERVICE_PID", pid.to_string());
    }
    if let Some(port) = handle.port() {
        client.env("PROCWARDEN_SERVICE_PORT", port.to_string());
    }
    // Nothing may keep using a service no longer held: the client dies with `share`.
    set_parent_death_signal(&mut client, Signal::KILL);
    let mut client = tokio::process::Command::from(client)
        .spawn()
        .map_err(|err| {
            Failure::runtime(format!("cannot run {}: {err}", program.to_string_lossy()))
        })?;
    let status = pass_signals_until_exit(&mut client).await?;
    handle.release().await.map_err(Failure::runtime)?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Waits for the client, passing it the signals that would otherwise end `share` first.
async fn pass_signals_until_exit(
    client: &mut tokio::process::Child,
) -> Result<std::process::ExitStatus, Failure> {
    let install = |kind: SignalKind| {
        signal(kind).map_err(|err| Failure::runtime(format!("installing signal handlers: {err}")))
    };
    let mut interrupt = install(SignalKind::interrupt())?;
    let mut terminate = install(SignalKind::terminate())?;
    let mut hangup = install(SignalKind::hangup())?;
    let mut quit = install(SignalKind::quit())?;
    let pid = client.id();
    loop {
        let signal = tokio::select! {
            status = client.wait() => return status.map_err(|err| Failure::runtime(format!("waiting for the client: {err}"))),
            _ = interrupt.recv() => Signal::INT,
            _ = terminate.recv() => Signal::TERM,
            _ = hangup.recv() => Signal::HUP,
            _ = quit.recv() => Signal::QUIT,
        };
        // The client is our child and not yet reaped, so its PID is still its own.
        if let Some(pid) = pid.and_then(|p| procwarden::process::Pid::try_from(p).ok())
            && let Ok(process) = procwarden::process::ProcessRef::new(pid)
        {
            let _ = process.signal(signal);
        }
    }
}
