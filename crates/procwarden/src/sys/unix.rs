//! Signals by PID and process group, common to every Unix.

use std::io;

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

fn pid(raw: i32) -> io::Result<Pid> {
    Pid::from_raw(raw).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

fn signal_of(raw: i32) -> io::Result<Signal> {
    Signal::from_named_raw(raw).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `kill(pid, sig)`.
pub(crate) fn kill(raw_pid: i32, raw_signal: i32) -> io::Result<()> {
    kill_process(pid(raw_pid)?, signal_of(raw_signal)?).map_err(io::Error::from)
}

/// `killpg(pgid, sig)`.
pub(crate) fn kill_group(raw_pgid: i32, raw_signal: i32) -> io::Result<()> {
    kill_process_group(pid(raw_pgid)?, signal_of(raw_signal)?).map_err(io::Error::from)
}

/// Whether any process (a zombie included) is in group `pgid`: `kill(-pgid, 0)`.
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub(crate) fn group_exists(raw_pgid: i32) -> bool {
    pid(raw_pgid).is_ok_and(|pgid| rustix::process::test_kill_process_group(pgid).is_ok())
}

/// The raw number of a named signal on this platform.
pub(crate) fn raw_signal(name: &str) -> Option<i32> {
    let signal = match name {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "KILL" => Signal::KILL,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "PIPE" => Signal::PIPE,
        "ALRM" => Signal::ALARM,
        "TERM" => Signal::TERM,
        "CONT" => Signal::CONT,
        "STOP" => Signal::STOP,
        "TSTP" => Signal::TSTP,
        "WINCH" => Signal::WINCH,
        "ABRT" => Signal::ABORT,
        _ => return None,
    };
    Some(signal.as_raw())
}

/// Whether `raw` is a signal this platform names.
pub(crate) fn is_named_signal(raw: i32) -> bool {
    Signal::from_named_raw(raw).is_some()
}
