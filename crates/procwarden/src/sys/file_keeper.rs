//! The keeper of the file-lock backend: a process that stops a shared service once no handle
//! holds a shared `flock` on its holders file.
//!
//! Its parent, under the lifecycle lock, takes the exclusive lock on `NAME.keeper` for it and
//! opens for it the holders file and the slots directory; the keeper keeps those three
//! descriptors, closes every other, and from then on runs only async-signal-safe system calls
//! (no allocation, no lock), like the System V keeper:
//!
//! 1. `flock(holders, LOCK_EX)` blocks until no handle holds the file: the count is zero.
//! 2. With a linger, it sleeps until the linger has passed since the later of that moment and
//!    the holders file's modification time (every handle that leaves touches it), so a user who
//!    comes and goes meanwhile gets a whole linger too; a holder found back sends it to step 1.
//! 3. It takes the lifecycle lock (`NAME.lock`, never created here: gone means the service was
//!    removed, and the keeper exits), checks that its files are still the ones at their paths
//!    (if not, the service was removed and any later one has its own keeper: it exits), and
//!    takes `LOCK_EX|LOCK_NB` on the holders file: busy sends it back to step 1.
//! 4. It stops the recorded process as the System V keeper does, removes the state file and the
//!    backend's files under the lock (the lock file last), and exits; the kernel lets go of its
//!    locks. If the process may still run, it keeps everything for the next user to recover.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::decimal::write_decimal;
use super::keeper::{close, detach, errno, exit, name_process, stop_recorded};

/// The files the keeper watches and removes, opened and named before the fork.
pub(crate) struct Files<'a> {
    /// `NAME.keeper`, exclusively locked by the parent on the keeper's behalf.
    pub(crate) keeper: BorrowedFd<'a>,
    /// `NAME.holders`: every live handle holds a shared lock on it.
    pub(crate) holders: BorrowedFd<'a>,
    /// `NAME.holders.d`: one file per live handle, named by a number.
    pub(crate) slots: BorrowedFd<'a>,
    pub(crate) lock_path: &'a CStr,
    pub(crate) keeper_path: &'a CStr,
    pub(crate) holders_path: &'a CStr,
    pub(crate) slots_path: &'a CStr,
}

/// How many missing slot numbers in a row end the sweep of the slots directory. Slots are
/// numbered from 0 without gaps, so one would do; the margin covers gaps a crash might leave.
const SLOT_SWEEP_MARGIN: u32 = 64;

/// The keeper's life, after the fork. Never returns.
pub(super) fn main(
    files: &Files<'_>,
    linger: libc::timespec,
    state_path: *const libc::c_char,
) -> ! {
    let keeper = files.keeper.as_raw_fd();
    let holders = files.holders.as_raw_fd();
    let slots = files.slots.as_raw_fd();
    detach(&[keeper, holders, slots]);
    name_process();
    let linger = nanos(&linger);
    'idle: loop {
        if !flock(holders, libc::LOCK_EX) {
            exit();
        }
        let zero_at = now();
        flock(holders, libc::LOCK_UN);
        loop {
            if linger > 0 {
                linger_out(holders, zero_at, linger);
                if busy(holders) {
                    continue 'idle;
                }
            }
            let Some(lock) = take_lock(files.lock_path) else {
                exit();
            };
            let ours = current(keeper, files.keeper_path)
                && current(holders, files.holders_path)
                && current(slots, files.slots_path);
            if !ours {
                exit();
            }
            if !flock(holders, libc::LOCK_EX | libc::LOCK_NB) {
                release(lock);
                continue 'idle;
            }
            if linger > 0 && remaining(holders, zero_at, linger) > 0 {
                // Someone came and went while we took the lock: their linger first.
                flock(holders, libc::LOCK_UN);
                release(lock);
                continue;
            }
            if stop_recorded(state_path) {
                remove(files, slots, state_path);
            }
            // Exiting lets go of the lifecycle lock, the holders file and the keeper lock.
            exit();
        }
    }
}

/// `flock(fd, operation)`, retried when interrupted; whether it succeeded.
fn flock(fd: i32, operation: i32) -> bool {
    loop {
        // SAFETY: flock takes integers.
        if unsafe { libc::flock(fd, operation) } == 0 {
            return true;
        }
        if errno() != libc::EINTR {
            return false;
        }
    }
}

/// Whether some handle holds the holders file now (checked without waiting).
fn busy(holders: i32) -> bool {
    if flock(holders, libc::LOCK_EX | libc::LOCK_NB) {
        flock(holders, libc::LOCK_UN);
        false
    } else {
        true
    }
}

/// Lets go of the lifecycle lock.
fn release(lock: i32) {
    flock(lock, libc::LOCK_UN);
    close(lock);
}

/// Takes the lifecycle lock at `path`, which must exist: opens it, locks it, and checks that
/// the file locked is still the one at the path (whoever removes it holds the lock while
/// unlinking it); `None` once there is none.
fn take_lock(path: &CStr) -> Option<i32> {
    loop {
        // SAFETY: open with a NUL-terminated path and integer flags.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return None;
        }
        if !flock(fd, libc::LOCK_EX) {
            close(fd);
            return None;
        }
        if current(fd, path) {
            return Some(fd);
        }
        close(fd);
    }
}

/// `fstat(fd)`, on the stack.
fn fstat(fd: i32) -> Option<libc::stat> {
    let mut stat = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes one `stat` to a pointer to one.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: filled by fstat.
    Some(unsafe { stat.assume_init() })
}

/// Whether `fd` is the file at `path` (no link followed) and that file is still linked.
fn current(fd: i32, path: &CStr) -> bool {
    let mut at_path = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstatat writes one `stat` to a pointer to one and reads a NUL-terminated path.
    let found = unsafe {
        libc::fstatat(
            libc::AT_FDCWD,
            path.as_ptr(),
            at_path.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } == 0;
    let Some(open) = fstat(fd).filter(|_| found) else {
        return false;
    };
    // SAFETY: filled by fstatat, which succeeded.
    let at_path = unsafe { at_path.assume_init() };
    open.st_dev == at_path.st_dev && open.st_ino == at_path.st_ino && open.st_nlink > 0
}

// `time_t` and `c_long` are narrower than i64 on some targets.
#[allow(clippy::unnecessary_cast)]
fn nanos(time: &libc::timespec) -> i64 {
    (time.tv_sec as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(time.tv_nsec as i64)
}

/// The wall clock, in nanoseconds: what file modification times are measured in.
fn now() -> i64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a pointer to one.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut time) };
    nanos(&time)
}

/// How much of the linger is left: it runs from the later of `zero_at` (when the keeper saw the
/// count reach zero) and the last departure recorded on the holders file.
#[allow(clippy::unnecessary_cast)]
fn remaining(holders: i32, zero_at: i64, linger: i64) -> i64 {
    let left = fstat(holders).map_or(0, |stat| {
        nanos(&libc::timespec {
            tv_sec: stat.st_mtime,
            tv_nsec: stat.st_mtime_nsec as libc::c_long,
        })
    });
    zero_at.max(left).saturating_add(linger) - now()
}

/// Sleeps until the linger is over.
fn linger_out(holders: i32, zero_at: i64, linger: i64) {
    loop {
        let left = remaining(holders, zero_at, linger);
        if left <= 0 {
            return;
        }
        let sleep = libc::timespec {
            tv_sec: (left / 1_000_000_000) as libc::time_t,
            tv_nsec: (left % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: nanosleep reads one timespec from the stack; an interruption just loops.
        unsafe { libc::nanosleep(&sleep, std::ptr::null_mut()) };
    }
}

/// Removes the state file and the backend's files, under the lifecycle lock, the lock last.
fn remove(files: &Files<'_>, slots: i32, state_path: *const libc::c_char) {
    let mut name = [0u8; 12];
    let mut misses = 0;
    let mut slot = 0u32;
    while misses < SLOT_SWEEP_MARGIN {
        write_decimal(&mut name, slot);
        // SAFETY: unlinkat with a directory descriptor and a NUL-terminated name on the stack.
        let removed = unsafe { libc::unlinkat(slots, name.as_ptr().cast(), 0) } == 0;
        misses = if removed { 0 } else { misses + 1 };
        slot += 1;
    }
    // SAFETY: unlink and rmdir of NUL-terminated paths.
    unsafe {
        super::keeper::unlink_record(state_path);
        libc::rmdir(files.slots_path.as_ptr());
        libc::unlink(files.holders_path.as_ptr());
        libc::unlink(files.keeper_path.as_ptr());
        libc::unlink(files.lock_path.as_ptr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_decimal() {
        let mut name = [0xffu8; 12];
        for n in [0, 7, 10, 4_294_967_295] {
            write_decimal(&mut name, n);
            let text = CStr::from_bytes_until_nul(&name).unwrap().to_str().unwrap();
            assert_eq!(text, n.to_string());
        }
    }
}
