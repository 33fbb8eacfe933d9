//! The keeper: a small process that stops a shared service once nobody holds it.
//!
//! It is forked from a process that uses the service, under the service's lifecycle lock, and
//! then runs only async-signal-safe system calls (the parent may have had other threads holding
//! locks when it forked, so the keeper allocates nothing and takes no lock): it blocks until the
//! holder count is zero, waits out the linger, takes the lifecycle lock, stops the process
//! recorded in the state file, removes that file and the backend's objects, and exits.
//!
//! This file holds what both backends share — the double fork, the detaching, and the stop of
//! the recorded process — and the System V keeper (Linux); the file-lock keeper is in
//! `file_keeper.rs`.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

#[cfg(target_os = "linux")]
use super::decimal::write_decimal;
#[cfg(target_os = "linux")]
use super::sysv::{NOWAIT, UNDO, op, sem};

/// How long the keeper waits for a service to go after SIGKILL.
const AFTER_KILL_MS: i32 = 5_000;

/// What the keeper needs, prepared before the fork.
pub(crate) struct Plan<'a> {
    pub(crate) watch: Watch<'a>,
    pub(crate) linger: Duration,
    pub(crate) state_path: &'a CStr,
}

/// What the keeper watches: the backend's objects.
pub(crate) enum Watch<'a> {
    /// A System V semaphore set, by id.
    #[cfg(target_os = "linux")]
    Set(i32),
    /// The files of the file-lock backend.
    Files(super::file_keeper::Files<'a>),
}

/// Starts a keeper, detached (its own session, reparented to init), and returns once it is on
/// its way. A System V keeper exits by itself if another one already watches the set; a
/// file-lock keeper is given the keeper lock its parent took, so there is never a second one.
pub(crate) fn spawn(plan: &Plan<'_>) -> io::Result<()> {
    let linger = libc::timespec {
        tv_sec: plan.linger.as_secs() as libc::time_t,
        tv_nsec: plan.linger.subsec_nanos() as libc::c_long,
    };
    let watch = &plan.watch;
    let path = plan.state_path.as_ptr();
    // SAFETY: after fork the child runs only async-signal-safe calls (setsid, fork, _exit and,
    // in the keepers' mains, raw system calls on stack memory and on memory prepared before the
    // fork — `watch` and `path` — which stays valid because the child's copy of the address
    // space holds it unchanged).
    let child = unsafe { libc::fork() };
    match child {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: async-signal-safe calls only, as above.
            unsafe {
                libc::setsid();
                if libc::fork() == 0 {
                    match watch {
                        #[cfg(target_os = "linux")]
                        Watch::Set(id) => keeper_main(*id, linger, path),
                        Watch::Files(files) => super::file_keeper::main(files, linger, path),
                    }
                }
                libc::_exit(0)
            }
        }
        intermediate => {
            let mut status = 0;
            loop {
                // SAFETY: waits for our own child, writing its status to a local.
                let reaped = unsafe { libc::waitpid(intermediate, &mut status, 0) };
                if reaped >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    return Ok(());
                }
            }
        }
    }
}

/// This thread's errno, read without allocating.
pub(super) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// How a blocking semaphore wait ended.
#[cfg(target_os = "linux")]
#[derive(PartialEq, Eq)]
enum Wait {
    Done,
    TimedOut,
    /// The set is gone (or never was ours): the keeper's work is over.
    Gone,
}

#[cfg(target_os = "linux")]
fn wait(id: i32, ops: &mut [libc::sembuf], timeout: Option<&libc::timespec>) -> Wait {
    loop {
        let timeout = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: semtimedop with a valid array of `ops.len()` sembufs and a valid (or null)
        // timespec; both live on this stack for the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_semtimedop,
                id,
                ops.as_mut_ptr(),
                ops.len(),
                timeout,
            )
        };
        if result == 0 {
            return Wait::Done;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Wait::TimedOut,
            _ => return Wait::Gone,
        }
    }
}

pub(super) fn exit() -> ! {
    // SAFETY: ends the process without running anything of the parent's.
    unsafe { libc::_exit(0) }
}

#[cfg(target_os = "linux")]
fn keeper_main(id: i32, linger: libc::timespec, state_path: *const libc::c_char) -> ! {
    detach(&[]);
    name_process();
    if wait(
        id,
        &mut [op(sem::KEEPER, 0, NOWAIT), op(sem::KEEPER, 1, UNDO)],
        None,
    ) != Wait::Done
    {
        exit();
    }
    let lingers = linger.tv_sec > 0 || linger.tv_nsec > 0;
    loop {
        if wait(id, &mut [op(sem::COUNT, 0, 0)], None) == Wait::Gone {
            exit();
        }
        if lingers {
            // Wait for the count to become non-zero again, up to the linger.
            match wait(
                id,
                &mut [op(sem::COUNT, -1, 0), op(sem::COUNT, 1, 0)],
                Some(&linger),
            ) {
                Wait::Done => continue,
                Wait::Gone => exit(),
                Wait::TimedOut => {}
            }
        }
        if wait(id, &mut [op(sem::LOCK, 0, 0), op(sem::LOCK, 1, UNDO)], None) != Wait::Done {
            exit();
        }
        // SAFETY: GETVAL takes no pointer.
        let count = unsafe { libc::semctl(id, sem::COUNT.into(), libc::GETVAL) };
        if count != 0 {
            wait(id, &mut [op(sem::LOCK, -1, UNDO)], None);
            continue;
        }
        if !stop_recorded(state_path) {
            // It may still run: keep its record and set, so the next user stops it first.
            wait(id, &mut [op(sem::LOCK, -1, UNDO)], None);
            exit();
        }
        // SAFETY: unlink of a NUL-terminated path; semctl IPC_RMID takes no pointer.
        unsafe {
            unlink_record(state_path);
            libc::semctl(id, 0, libc::IPC_RMID);
        }
        exit();
    }
}

/// Names the keeper `pw-keeper` where the platform lets a process rename itself cheaply.
pub(super) fn name_process() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"pw-keeper".as_ptr())
    };
}

/// Points stdin, stdout and stderr at /dev/null, closes every other descriptor but those in
/// `keep` (so the keeper holds no pipe, socket or lock of its parent open), and restores
/// default signal handling.
pub(super) fn detach(keep: &[i32]) {
    // SAFETY: open, dup2 and close are async-signal-safe and take only a static NUL-terminated
    // path and integers.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    // The descriptors to keep, in order, on the stack.
    let mut kept = [i32::MAX; 4];
    for (slot, &fd) in kept.iter_mut().zip(keep) {
        *slot = fd;
    }
    kept.sort_unstable();
    let mut from = 3;
    for fd in kept {
        if fd == i32::MAX {
            break;
        }
        if fd >= from {
            close_range(from, fd - 1);
            from = fd + 1;
        }
    }
    close_range(from, i32::MAX);
    // SAFETY: sigaction and sigprocmask are async-signal-safe and take only stack data.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..32 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Closes descriptors `first..=last` (an empty range does nothing).
fn close_range(first: i32, last: i32) {
    if first > last {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: close_range takes integers.
    if unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) } == 0 {
        return;
    }
    // SAFETY: sysconf takes an integer and is async-signal-safe.
    let open_max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let limit = if open_max <= 0 {
        4096
    } else {
        open_max.min(65_536) as i32
    };
    for fd in first..=last.min(limit) {
        // SAFETY: closes a descriptor the keeper does not use (closing a free one is harmless).
        unsafe { libc::close(fd) };
    }
}

/// The fields of a state file the keeper needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) pid: i32,
    pub(crate) start_time: u64,
    pub(crate) stop_signal: i32,
    pub(crate) stop_timeout_ms: i32,
    pub(crate) group: bool,
}

/// Reads `key = value` lines without allocating: the state file's top-level integer and boolean
/// fields, as its writer lays them out.
pub(crate) fn parse_recorded(text: &[u8]) -> Option<Recorded> {
    let mut recorded = Recorded {
        stop_signal: libc::SIGTERM,
        stop_timeout_ms: 10_000,
        ..Recorded::default()
    };
    for line in text.split(|&b| b == b'\n') {
        if line.trim_ascii_start().starts_with(b"[") {
            // Tables (metadata) follow the top-level fields and may reuse their names.
            break;
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let key = line[..eq].trim_ascii();
        let value = line[eq + 1..].trim_ascii();
        let number = || -> Option<u64> {
            let text = std::str::from_utf8(value).ok()?;
            text.parse().ok()
        };
        match key {
            b"pid" => recorded.pid = i32::try_from(number()?).ok()?,
            b"start_time" => recorded.start_time = number()?,
            b"stop_signal" => recorded.stop_signal = i32::try_from(number()?).ok()?,
            b"stop_timeout_ms" => {
                recorded.stop_timeout_ms = i32::try_from(number()?).unwrap_or(i32::MAX)
            }
            b"group" => recorded.group = value == b"true",
            _ => {}
        }
    }
    (recorded.pid > 0).then_some(recorded)
}

/// Stops the process the state file records, if it is still the same process; false when it
/// may still be running (then the record and the backend's objects are kept for the next user
/// to recover).
pub(super) fn stop_recorded(state_path: *const libc::c_char) -> bool {
    let mut buffer = [0u8; 4096];
    let Some(length) = read_file(state_path, &mut buffer) else {
        return true;
    };
    let Some(recorded) = parse_recorded(&buffer[..length]) else {
        return true;
    };
    let pidfd = pidfd_open(recorded.pid);
    if pidfd < 0 && errno() == libc::ESRCH {
        return true;
    }
    // With a pidfd (Linux) it holds the recorded process; without one (another Unix, an old
    // kernel, a seccomp filter), the start time is checked again before each signal.
    if start_time(recorded.pid) != Some(recorded.start_time) {
        close(pidfd);
        return true;
    }
    let send = |signal: i32| {
        if pidfd < 0 && start_time(recorded.pid) != Some(recorded.start_time) {
            return;
        }
        if recorded.group {
            // SAFETY: kill takes integers.
            unsafe { libc::kill(-recorded.pid, signal) };
        } else if pidfd >= 0 {
            pidfd_signal(pidfd, signal);
        } else {
            // SAFETY: kill takes integers.
            unsafe { libc::kill(recorded.pid, signal) };
        }
    };
    let gone = |timeout_ms: i32| {
        if pidfd >= 0 {
            exited(pidfd, timeout_ms)
        } else {
            exited_by_proc(recorded.pid, recorded.start_time, timeout_ms)
        }
    };
    send(recorded.stop_signal);
    let mut stopped = gone(recorded.stop_timeout_ms);
    if !stopped {
        send(libc::SIGKILL);
        stopped = gone(AFTER_KILL_MS);
    }
    if recorded.group {
        // SAFETY: kill takes integers; the group id stays reserved while members remain, so
        // this reaches only what the leader left behind.
        unsafe { libc::kill(-recorded.pid, libc::SIGKILL) };
        // The stop is over only when no member runs: a member still dying could hold the
        // port a fresh instance is about to bind.
        stopped &= group_gone(recorded.pid, AFTER_KILL_MS);
    }
    close(pidfd);
    stopped
}

/// Removes the state file `NAME.state` and, if there was one, the service's log `NAME.log`
/// beside it, without allocating. With no record (a failed start removed it), the log stays:
/// the error the starter reported names it.
pub(super) fn unlink_record(state_path: *const libc::c_char) {
    // SAFETY: `state_path` is NUL-terminated; strlen reads up to its NUL.
    let length = unsafe { libc::strlen(state_path) };
    // SAFETY: unlink of a NUL-terminated path.
    if unsafe { libc::unlink(state_path) } != 0 {
        return;
    }
    // SAFETY: the `length` bytes before the NUL are readable.
    let path = unsafe { std::slice::from_raw_parts(state_path.cast::<u8>(), length) };
    let Some(stem) = path.strip_suffix(b".state") else {
        return;
    };
    let mut log = [0u8; 4096];
    if stem.len() + 5 > log.len() {
        return;
    }
    log[..stem.len()].copy_from_slice(stem);
    log[stem.len()..stem.len() + 4].copy_from_slice(b".log");
    // SAFETY: `log` is NUL-terminated (the byte after ".log" is still 0).
    unsafe { libc::unlink(log.as_ptr().cast()) };
}

/// Waits up to `timeout_ms`, checking every 10 ms, until no process of group `pgid` runs.
fn group_gone(pgid: i32, timeout_ms: i32) -> bool {
    let step = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    for _ in 0..timeout_ms / 10 {
        if !group_runs(pgid) {
            return true;
        }
        // SAFETY: nanosleep reads one timespec from the stack.
        unsafe { libc::nanosleep(&step, std::ptr::null_mut()) };
    }
    !group_runs(pgid)
}

/// Whether a process of group `pgid` runs (a zombie does not): `/proc` listed with
/// `getdents64` into a stack buffer, without allocating.
#[cfg(target_os = "linux")]
fn group_runs(pgid: i32) -> bool {
    // SAFETY: open with a static NUL-terminated path.
    let dir = unsafe {
        libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return false;
    }
    let mut entries = [0u8; 4096];
    let mut found = false;
    'listing: loop {
        // SAFETY: getdents64 writes at most `entries.len()` bytes of records to the buffer.
        let length = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                entries.as_mut_ptr(),
                entries.len(),
            )
        };
        if length <= 0 {
            break;
        }
        let mut at = 0;
        while at + 19 < length as usize {
            // A linux_dirent64: inode (8 bytes), offset (8), record length (2), type (1), name.
            let record = usize::from(u16::from_ne_bytes([entries[at + 16], entries[at + 17]]));
            let name = &entries[at + 19..(at + record).min(length as usize)];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(pid) = parse_pid(name) {
                let mut buffer = [0u8; 1024];
                if let Some(text) = read_proc_stat(pid, &mut buffer)
                    && let Some((state, group)) = super::linux::state_and_group(text)
                    && group == pgid
                    && !matches!(state, "Z" | "X" | "x")
                {
                    found = true;
                    break 'listing;
                }
            }
            at += record.max(1);
        }
    }
    close(dir);
    found
}

/// Elsewhere: `kill(-pgid, 0)`, which also counts zombies until they are reaped.
#[cfg(not(target_os = "linux"))]
fn group_runs(pgid: i32) -> bool {
    // SAFETY: kill takes integers; signal 0 only checks.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// A decimal PID, from a directory entry's name.
#[cfg(target_os = "linux")]
fn parse_pid(name: &[u8]) -> Option<i32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// A pidfd for `pid`, or -1 (errno set) where there is none.
#[cfg(target_os = "linux")]
fn pidfd_open(pid: i32) -> i32 {
    // SAFETY: pidfd_open takes integers.
    unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32 }
}

/// No pidfds outside Linux: the start-time checks stand in for them.
#[cfg(not(target_os = "linux"))]
fn pidfd_open(_pid: i32) -> i32 {
    -1
}

#[cfg(target_os = "linux")]
fn pidfd_signal(pidfd: i32, signal: i32) {
    // SAFETY: pidfd_send_signal takes integers and a null siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signal,
            std::ptr::null::<u8>(),
            0,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn pidfd_signal(_pidfd: i32, _signal: i32) {}

pub(super) fn close(fd: i32) {
    if fd >= 0 {
        // SAFETY: closes a descriptor this process opened and owns.
        unsafe { libc::close(fd) };
    }
}

/// Without a pidfd: watches the process (`/proc` on Linux, `proc_pidinfo` on macOS) until it has
/// exited (gone, a zombie, or its PID
/// reused), checking every 10 ms, up to `timeout_ms`.
fn exited_by_proc(pid: i32, started: u64, timeout_ms: i32) -> bool {
    let step = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    for _ in 0..=timeout_ms / 10 {
        if start_time(pid) != Some(started) || is_zombie(pid) {
            return true;
        }
        // SAFETY: nanosleep reads one timespec from the stack.
        unsafe { libc::nanosleep(&step, std::ptr::null_mut()) };
    }
    start_time(pid) != Some(started) || is_zombie(pid)
}

/// Waits up to `timeout_ms` for the pidfd to turn readable (its process exited).
fn exited(pidfd: i32, timeout_ms: i32) -> bool {
    let mut fds = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll over one valid pollfd on the stack.
        let ready = unsafe { libc::poll(&mut fds, 1, timeout_ms) };
        if ready >= 0 {
            return ready > 0;
        }
        if errno() != libc::EINTR {
            return false;
        }
    }
}

/// Reads a whole small file into `buffer`; `None` if it cannot.
pub(super) fn read_file(path: *const libc::c_char, buffer: &mut [u8]) -> Option<usize> {
    // SAFETY: open/read/close with a NUL-terminated path and a buffer of the given length.
    unsafe {
        let fd = libc::open(path, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let mut length = 0;
        while length < buffer.len() {
            let n = libc::read(
                fd,
                buffer[length..].as_mut_ptr().cast(),
                buffer.len() - length,
            );
            if n <= 0 {
                break;
            }
            length += n as usize;
        }
        libc::close(fd);
        Some(length)
    }
}

/// The start time of `pid` from `/proc/PID/stat`, read without allocating.
fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|info| info.start_time)
}

/// Whether `pid` has exited and waits to be reaped.
fn is_zombie(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|info| info.zombie)
}

/// `/proc/PID/stat`, read and parsed without allocating.
#[cfg(target_os = "linux")]
fn proc_stat(pid: i32) -> Option<super::ProcInfo> {
    let mut buffer = [0u8; 1024];
    super::linux::parse_stat(read_proc_stat(pid, &mut buffer)?)
}

/// Reads `/proc/PID/stat` into `buffer`, without allocating.
#[cfg(target_os = "linux")]
fn read_proc_stat(pid: i32, buffer: &mut [u8; 1024]) -> Option<&str> {
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut at = prefix.len();
    at += write_decimal(&mut path[at..], pid as u32);
    path[at..at + 5].copy_from_slice(b"/stat");
    // The rest of `path` is zeros, so it is NUL-terminated.
    let length = read_file(path.as_ptr().cast(), buffer)?;
    std::str::from_utf8(&buffer[..length]).ok()
}

/// `proc_pidinfo`, a thin wrapper over a system call, with its answer on the stack.
#[cfg(target_vendor = "apple")]
fn proc_stat(pid: i32) -> Option<super::ProcInfo> {
    super::apple::proc_info_raw(pid).ok().flatten()
}

/// No way to read a start time here yet: the recorded process is taken as gone (which is also
/// what `ProcessRef` makes of it on these platforms).
#[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
fn proc_stat(_pid: i32) -> Option<super::ProcInfo> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn sees_a_live_group_and_a_gone_one() {
        let group = rustix::process::getpgrp().as_raw_nonzero().get();
        assert!(group_runs(group));
        assert!(!group_runs(i32::MAX - 7), "no such group");
    }

    #[test]
    fn reads_the_fields_it_needs() {
        let text = b"version = 1\npid = 4242\nstart_time = 99\nstop_signal = 2\nstop_timeout_ms = 1500\ngroup = true\nport = 5432\n\n[metadata]\nx = \"pid = 1\"\npid = 7\n";
        let recorded = parse_recorded(text).unwrap();
        assert_eq!(
            recorded,
            Recorded {
                pid: 4242,
                start_time: 99,
                stop_signal: 2,
                stop_timeout_ms: 1500,
                group: true
            }
        );
        assert!(parse_recorded(b"version = 1\n").is_none());
    }

    #[test]
    fn reads_its_own_start_time() {
        let pid = std::process::id() as i32;
        let expected = super::super::proc_info(pid).unwrap().unwrap().start_time;
        assert_eq!(start_time(pid), Some(expected));
    }
}
