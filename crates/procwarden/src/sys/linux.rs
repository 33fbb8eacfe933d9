//! Linux: `/proc` for a process's identity, pidfds for race-free signals and exit notification.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::ProcInfo;

/// Reads `/proc/PID/stat`: the start time (field 22, clock ticks since boot) and the state.
pub(crate) fn proc_info(pid: i32) -> io::Result<Option<ProcInfo>> {
    let text = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        // The process exited between the directory lookup and the read.
        Err(err) if err.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => {
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    parse_stat(&text).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/stat"),
        )
    })
}

/// Parses the fields after the command name, which may itself hold spaces and parentheses.
pub(crate) fn parse_stat(text: &str) -> Option<ProcInfo> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    let state = fields.next()?;
    // Field 3 is the state; the start time is field 22, the 19th after it.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcInfo {
        start_time,
        zombie: matches!(state, "Z" | "X" | "x"),
    })
}

/// Whether any process of group `pgid` is still running (a zombie has exited: its sockets and
/// files are already closed). Scans `/proc`, as the kernel offers no handle on a group.
pub(crate) fn group_has_live_members(pgid: i32) -> io::Result<bool> {
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            // Exited between the listing and the read.
            continue;
        };
        if let Some((state, group)) = state_and_group(&text)
            && group == pgid
            && !matches!(state, "Z" | "X" | "x")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The state (field 3) and process group (field 5) of a `/proc/PID/stat` line.
pub(crate) fn state_and_group(text: &str) -> Option<(&str, i32)> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    let state = fields.next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// Opens a pidfd for `pid`; `None` where the kernel has no pidfds (before 5.3).
pub(crate) fn pidfd(pid: i32) -> io::Result<Option<OwnedFd>> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    match pidfd_open(pid, PidfdFlags::NONBLOCK) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOSYS) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Sends a signal through a pidfd: it can only reach the process the pidfd was opened for.
pub(crate) fn pidfd_signal(fd: &OwnedFd, raw_signal: i32) -> io::Result<()> {
    let signal = Signal::from_named_raw(raw_signal)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    pidfd_send_signal(fd, signal).map_err(io::Error::from)
}

/// Whether the process behind the pidfd has been reaped: exited and waited for, so its PID may
/// already name another process. A zombie is not reaped yet.
///
/// Sends signal 0, which checks that the process can be reached and sends nothing: the kernel
/// answers `ESRCH` once the pidfd's process is detached from its PID, which happens only as it is
/// reaped. Whether the process has exited (a readable pidfd) cannot tell a zombie from that.
pub(crate) fn pidfd_reaped(fd: &OwnedFd) -> io::Result<bool> {
    use std::os::fd::AsRawFd;

    // SAFETY: pidfd_send_signal reads only its arguments: an open descriptor that `fd` keeps
    // open for the call, signal 0, a null siginfo (the kernel then fills one itself) and no flags.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if result == 0 {
        return Ok(false);
    }
    let err = io::Error::last_os_error();
    match rustix::io::Errno::from_io_error(&err) {
        Some(rustix::io::Errno::SRCH) => Ok(true),
        // The process is there, only not ours to signal.
        Some(rustix::io::Errno::PERM) => Ok(false),
        _ => Err(err),
    }
}

/// Waits until the process behind the pidfd exits, up to `timeout` (`None`: for ever);
/// true once it has exited.
pub(crate) fn pidfd_wait(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<bool> {
    let timeout = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    loop {
        match poll(&mut fds, timeout.as_ref()) {
            Ok(ready) => return Ok(ready > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Whether the process behind the pidfd has exited, without waiting.
pub(crate) fn pidfd_exited(fd: &OwnedFd) -> io::Result<bool> {
    pidfd_wait(fd, Some(Duration::ZERO))
}

/// Completes when the process behind the pidfd exits, woken by the runtime's reactor.
///
/// Must run inside a tokio runtime with I/O enabled.
pub(crate) async fn pidfd_exit(fd: &OwnedFd) -> io::Result<()> {
    let dup = fd.as_fd().try_clone_to_owned()?;
    // SAFETY: `dup` is an open descriptor owned by the `AsyncFd` for its whole life: nothing
    // else closes it, and an `OwnedFd` always returns the same descriptor from `as_raw_fd`.
    let watch = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)?;
    // A pidfd turns readable once, when its process exits, and stays so.
    let _guard = watch.readable().await?;
    Ok(())
}

/// Makes the kernel send `raw_signal` to the child when the thread that spawned it exits, and
/// exits the child at once if its parent is already gone by the time it starts.
pub(crate) fn set_parent_death_signal(command: &mut std::process::Command, raw_signal: i32) {
    use std::os::unix::process::CommandExt;

    let parent = rustix::process::getpid();
    let signal = Signal::from_named_raw(raw_signal);
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: prctl(PR_SET_PDEATHSIG) and getppid are plain system calls, and it
    // allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(signal)?;
            // The parent may have died before prctl took effect; then nobody will signal us.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) Z 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1 1";
        let info = parse_stat(stat).unwrap();
        assert_eq!(info.start_time, 987654);
        assert!(info.zombie);
    }

    #[test]
    fn this_group_has_a_live_member() {
        let group = rustix::process::getpgrp().as_raw_nonzero().get();
        assert!(group_has_live_members(group).unwrap());
        assert_eq!(
            state_and_group("7 (a) b) S 1 4242 4242 0"),
            Some(("S", 4242))
        );
    }

    #[test]
    fn a_zombie_is_not_reaped_until_waited_for() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd(child.id() as i32).unwrap().unwrap();
        assert!(pidfd_wait(&fd, Some(Duration::from_secs(30))).unwrap());
        assert!(
            !pidfd_reaped(&fd).unwrap(),
            "an exited, unreaped child is a zombie"
        );
        child.wait().unwrap();
        assert!(pidfd_reaped(&fd).unwrap());
    }

    #[test]
    fn reads_this_process() {
        let info = proc_info(std::process::id() as i32).unwrap().unwrap();
        assert!(!info.zombie);
        assert!(info.start_time > 0);
    }
}
