//! A process's end, in words.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::Signal;

/// "exited with status 3", "killed by SIGKILL": how a process ended, for errors and logs.
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(raw)) => match Signal::from_raw(raw) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {raw}"),
        },
        (None, None) => "ended without a status".to_owned(),
    }
}
