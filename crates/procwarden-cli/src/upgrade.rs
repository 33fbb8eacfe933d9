//! `procwarden upgrade`: ask a running program to replace itself with a new generation, and
//! wait for the outcome.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use procwarden::process::{Pid, ProcessError, ProcessRef};
use procwarden::shared::StateDir;
use procwarden::upgrade::{UpgradeError, control_socket_path, read_pid_file, request_upgrade};

use crate::Failure;

/// Asks the process named in `pid_file` to upgrade, through its control socket in `dir`, and
/// waits up to `timeout` for the outcome: exit 0 with the new PID on stdout once the new
/// generation is ready; a run-time failure when the upgrade was rolled back or refused, or when
/// no outcome came in time.
pub async fn run(dir: &StateDir, pid_file: &Path, timeout: Duration) -> Result<ExitCode, Failure> {
    let pid = read_pid_file(pid_file).map_err(Failure::runtime)?;
    let named = || format!("PID {pid} (named in the pid file {})", pid_file.display());
    // read_pid_file only returns PIDs in 1..=i32::MAX, which are all valid.
    let process = Pid::try_from(pid).map_err(Failure::runtime)?;
    match ProcessRef::new(process) {
        Ok(_) => {}
        Err(ProcessError::Gone { .. }) => {
            return Err(Failure::runtime(format!(
                "{} is not running: the pid file is stale",
                named()
            )));
        }
        Err(err) => return Err(Failure::runtime(format!("{}: {err}", named()))),
    }
    let socket = control_socket_path(dir, pid);
    if !socket.exists() {
        return Err(Failure::runtime(format!(
            "{} has no upgrade control socket at {}: it does not run procwarden's Upgrader \
             with its control socket, or it uses another state directory (--state-dir, \
             PROCWARDEN_STATE_DIR)",
            named(),
            socket.display()
        )));
    }
    match tokio::time::timeout(timeout, request_upgrade(&socket, pid)).await {
        Ok(Ok(upgraded)) => {
            println!("upgraded: PID {pid} -> {}", upgraded.pid);
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(UpgradeError::Remote { pid, message })) => Err(Failure::runtime(format!(
            "the upgrade of PID {pid} failed: {message}"
        ))),
        Ok(Err(other)) => Err(Failure::runtime(other)),
        Err(_) => Err(Failure::runtime(format!(
            "no outcome from PID {pid} within {timeout:?} (--timeout); the upgrade may still \
             complete: the pid file {} names the generation that serves",
            pid_file.display()
        ))),
    }
}
