//! Starting a new generation of this program with chosen descriptors at 3, 4, …, and taking
//! such descriptors over at startup (the `LISTEN_FDS` protocol of systemd socket activation).
//!
//! `std::process::Command` cannot do this: it cannot place descriptors at fixed numbers, and the
//! protocol needs the child's own PID in its environment (`LISTEN_PID`), which only the child
//! knows. So this starts the child by hand — `clone(CLONE_VM | CLONE_VFORK)` on Linux, as
//! `posix_spawn` does, `fork` elsewhere — preparing every byte beforehand and running only
//! async-signal-safe calls in the child.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::decimal::write_decimal;

/// The first descriptor of the protocol (after stdin, stdout and stderr).
pub(crate) const FIRST_FD: RawFd = 3;

/// The environment entry whose value the child fills in with its own PID.
const PID_SLOT: &str = "LISTEN_PID=";
/// Room for any PID (at most 10 digits) and the terminating NUL.
const PID_DIGITS: usize = 11;

/// What the child is given: its program, arguments, environment and descriptors.
pub(crate) struct Exec {
    program: CString,
    /// Owns the strings `argv` points into.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    /// Owns the strings `envp` points into, the PID slot last.
    _env: Vec<CString>,
    pid_slot: Vec<u8>,
    envp: Vec<*const libc::c_char>,
    /// The descriptors that become 3, 4, … in the child, in order.
    fds: Vec<RawFd>,
    /// Scratch space for the child's temporary copies of `fds`.
    scratch: Vec<RawFd>,
    /// Where the child reports a failed exec (a byte `E` and the errno, native-endian).
    report: RawFd,
}

// SAFETY: the raw pointers point into the `CString`s and the PID slot owned by the same value;
// moving it moves their heap buffers' owners, not the buffers, and nothing else aliases them.
unsafe impl Send for Exec {}

/// Why a string cannot be given to the child.
fn nul_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} contains a NUL byte"),
    )
}

impl Exec {
    /// Prepares an exec of `program` (an absolute path) with `args` (argv[0] included) and `env`
    /// (`KEY=VALUE` entries, without `LISTEN_PID`), placing `fds` at 3, 4, …; the child's exec
    /// failure is reported on `report`. With `listen_pid`, the child's environment also gets
    /// `LISTEN_PID=<its own PID>`.
    pub(crate) fn new(
        program: OsString,
        args: Vec<OsString>,
        env: Vec<OsString>,
        fds: Vec<BorrowedFd<'_>>,
        report: BorrowedFd<'_>,
        listen_pid: bool,
    ) -> io::Result<Self> {
        let program = CString::new(program.into_vec()).map_err(|_| nul_error("the program"))?;
        let args = to_cstrings(args, "an argument")?;
        let env = to_cstrings(env, "an environment entry")?;
        let mut pid_slot = PID_SLOT.as_bytes().to_vec();
        pid_slot.resize(PID_SLOT.len() + PID_DIGITS, 0);
        let argv = null_terminated(args.iter().map(|arg| arg.as_ptr()));
        let pid_entry = listen_pid.then(|| pid_slot.as_ptr().cast::<libc::c_char>());
        let envp = null_terminated(env.iter().map(|entry| entry.as_ptr()).chain(pid_entry));
        let fds: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        Ok(Self {
            program,
            _args: args,
            argv,
            _env: env,
            pid_slot,
            envp,
            scratch: vec![-1; fds.len()],
            fds,
            report: report.as_raw_fd(),
        })
    }

    /// Starts the child and execs; the child's PID. The child is this process's to reap.
    pub(crate) fn spawn(mut self) -> io::Result<i32> {
        #[cfg(target_os = "linux")]
        return self.spawn_sharing_memory();
        #[cfg(not(target_os = "linux"))]
        self.spawn_forked()
    }

    /// `fork`, then exec in the child.
    #[cfg(not(target_os = "linux"))]
    fn spawn_forked(&mut self) -> io::Result<i32> {
        // SAFETY: after fork the child only makes async-signal-safe calls on memory prepared
        // before the fork (`self`'s buffers, which its copy of the address space holds
        // unchanged) and ends in execve or _exit; it never returns into Rust code.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // SAFETY: in the child, as above.
                unsafe { self.child() }
            }
            pid => Ok(pid),
        }
    }

    /// `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does: the child runs on a stack of
    /// its own in this process's memory until it execs, while the calling thread waits. A
    /// `fork` of a server would copy its page tables and then fault on every page it writes,
    /// stalling it under load just when an upgrade starts.
    #[cfg(target_os = "linux")]
    fn spawn_sharing_memory(&mut self) -> io::Result<i32> {
        const STACK: usize = 128 * 1024;
        let mut stack = vec![0u8; STACK];
        let top = (stack.as_mut_ptr_range().end as usize) & !15;
        // SAFETY: the signal sets are plain values on this stack. Every signal is blocked
        // around the clone so that no handler of this process runs in the child, whose memory
        // is this process's; the child resets the handlers before it unblocks them.
        let (pid, error) = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
            // SAFETY: `child_entry` gets `self`, which outlives the call: with CLONE_VFORK
            // this thread resumes only once the child has exec'd or exited, and `stack` is
            // dropped after that.
            let pid = libc::clone(
                child_entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (self as *mut Self).cast(),
            );
            let error = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
            (pid, error)
        };
        drop(stack);
        if pid == -1 { Err(error) } else { Ok(pid) }
    }

    /// The child's side: descriptors into place, its PID into the environment, then exec.
    ///
    /// # Safety
    /// Only to be called in a freshly forked (or cloned) child.
    unsafe fn child(&mut self) -> ! {
        // SAFETY: every call below is async-signal-safe and works on buffers owned by `self`,
        // sized before the fork.
        unsafe {
            // The parent's runtime may block signals or ignore SIGPIPE (Rust does); the new
            // program starts with defaults, as a shell would give it.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);

            // Copy every source above the target range first, so that placing one never
            // overwrites another still to be placed.
            let count = self.fds.len() as RawFd;
            for (source, copy) in self.fds.iter().zip(self.scratch.iter_mut()) {
                *copy = libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, FIRST_FD + count);
                if *copy < 0 {
                    self.fail();
                }
            }
            for (target, copy) in (FIRST_FD..).zip(self.scratch.iter()) {
                // dup2 clears close-on-exec on the target: exactly these cross the exec.
                if libc::dup2(*copy, target) < 0 {
                    self.fail();
                }
            }
            write_decimal(
                &mut self.pid_slot[PID_SLOT.len()..],
                libc::getpid().unsigned_abs(),
            );
            libc::execve(
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            );
            self.fail()
        }
    }

    /// Reports errno to the parent and exits the child.
    ///
    /// # Safety
    /// Only to be called in the forked child.
    unsafe fn fail(&self) -> ! {
        let errno = super::keeper::errno().to_ne_bytes();
        let message = [b'E', errno[0], errno[1], errno[2], errno[3]];
        // SAFETY: write and _exit are async-signal-safe; `message` lives on this stack.
        unsafe {
            libc::write(self.report, message.as_ptr().cast(), message.len());
            libc::_exit(127)
        }
    }
}

/// Where a child started by [`Exec::spawn_sharing_memory`] begins.
#[cfg(target_os = "linux")]
extern "C" fn child_entry(exec: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `exec` is the `Exec` the parent passed, alive and left alone while the parent
    // waits. Only async-signal-safe calls follow, on memory prepared before the clone.
    unsafe {
        // The parent's handlers would run on its memory: back to the defaults, keeping what is
        // ignored (as exec itself would).
        for signal in 1..65 {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction != libc::SIG_DFL
                && current.sa_sigaction != libc::SIG_IGN
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        (*exec.cast::<Exec>()).child()
    }
}

fn to_cstrings(strings: Vec<OsString>, what: &str) -> io::Result<Vec<CString>> {
    strings
        .into_iter()
        .map(|s| CString::new(s.into_vec()).map_err(|_| nul_error(what)))
        .collect()
}

fn null_terminated(
    pointers: impl Iterator<Item = *const libc::c_char>,
) -> Vec<*const libc::c_char> {
    pointers.chain(std::iter::once(std::ptr::null())).collect()
}

/// How the child decoded a failed exec from its report: the errno, if the bytes are one.
pub(crate) fn decode_exec_failure(report: &[u8]) -> Option<io::Error> {
    match report {
        [b'E', a, b, c, d, ..] => Some(io::Error::from_raw_os_error(i32::from_ne_bytes([
            *a, *b, *c, *d,
        ]))),
        _ => None,
    }
}

/// Whether this process already took its inherited descriptors: a second taker would own,
/// and later close, descriptors the first one uses.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the `count` descriptors inherited at 3, 4, …, marking them close-on-exec
/// so they do not leak into programs this one runs. Refused after the first call, and when one
/// of them is not open.
pub(crate) fn take_inherited(count: usize) -> io::Result<Vec<OwnedFd>> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the inherited descriptors were already taken in this process",
        ));
    }
    let last = FIRST_FD as usize + count;
    (FIRST_FD as usize..last)
        .map(|raw| take_one(raw as RawFd))
        .collect()
}

/// Takes ownership of the inherited descriptor `raw` (the readiness report).
pub(crate) fn take_inherited_one(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < FIRST_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} is not an inherited one"),
        ));
    }
    take_one(raw)
}

fn take_one(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads flags; on a closed descriptor it fails with EBADF.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("inherited descriptor {raw} is not open"),
        ));
    }
    // SAFETY: setting FD_CLOEXEC on an open descriptor.
    unsafe { libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open, and the protocol hands it to this process alone: `TAKEN`
    // (or the caller, for the single readiness descriptor named by the environment) makes sure
    // nothing else in it claims the same number.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sends SIGKILL to our own unreaped child `pid`.
///
/// The PID cannot have been reused: the child is not reaped until [`reap`] is called.
pub(crate) fn kill_child(pid: i32) -> io::Result<()> {
    super::unix::kill(pid, libc::SIGKILL)
}

/// Blocks until our child `pid` has exited, leaving it unreaped (so its PID stays ours).
pub(crate) fn wait_exit_keeping(pid: i32) -> io::Result<()> {
    loop {
        // SAFETY: waitid with a zeroed siginfo on this stack; WNOWAIT leaves the child waitable.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let result = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if result == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reaps our exited child `pid`; its wait status, or `None` if it has not exited.
pub(crate) fn reap(pid: i32) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: waitpid on our own child, writing its status to a local.
    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match reaped {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(std::process::ExitStatus::from_raw(status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_any_pid_in_decimal() {
        for (value, text) in [(1, "1"), (42, "42"), (i32::MAX, "2147483647")] {
            let mut out = [0xffu8; PID_DIGITS];
            write_decimal(&mut out, value.unsigned_abs());
            let end = out.iter().position(|b| *b == 0).unwrap();
            assert_eq!(&out[..end], text.as_bytes());
        }
    }

    #[test]
    fn decodes_an_exec_failure() {
        let errno = libc::ENOENT.to_ne_bytes();
        let report = [b'E', errno[0], errno[1], errno[2], errno[3]];
        let err = decode_exec_failure(&report).unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(decode_exec_failure(b"R").is_none());
    }
}
