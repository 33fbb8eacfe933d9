//! The file-lock backend (every Unix; the only one outside Linux): `flock(2)` on files in the
//! state directory, all created 0600 without following links.
//!
//! - `NAME.lock`, the lifecycle lock: `LOCK_EX`.
//! - `NAME.holders`: every live handle keeps its own descriptor on it with `LOCK_SH`, which the
//!   kernel drops when the process dies, however it dies. The keeper's blocking `LOCK_EX` on it
//!   returns when the count is zero. Leaving touches its modification time, from which the
//!   keeper measures the linger.
//! - `NAME.holders.d/N`: flock holders cannot be counted, so every handle also holds `LOCK_EX`
//!   on one numbered slot file (the lowest free one, taken under the lifecycle lock, so the
//!   numbers have no gaps). The count is the number of slots a probe cannot lock; the file of a
//!   dead holder is simply reused.
//! - `NAME.keeper`: the keeper holds `LOCK_EX` on it while it lives. Its parent takes that lock
//!   before forking it, so there is never a second keeper nor a moment with none.
//!
//! Joining and the other lifecycle steps always take the lock: there is no fast path, so no
//! generation number either. Files are removed only under the lock, the lock file last; whoever
//! takes the lock then checks that the file it locked is still the one at the path (same device
//! and inode, still linked) and otherwise starts over, so nobody works under a removed lock.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{self as rfs, AtFlags, CWD, FlockOperation, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use crate::shared::{SharedError, StateDir};

/// The files of one shared service.
#[derive(Debug)]
pub(crate) struct Counter {
    dir: StateDir,
    name: String,
    lock: PathBuf,
    holders: PathBuf,
    keeper: PathBuf,
    slots: PathBuf,
}

/// Marks an error that means: the service's files were removed under us.
#[derive(Debug)]
struct Removed;

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the service's lock files were removed")
    }
}

impl std::error::Error for Removed {}

fn removed() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, Removed)
}

/// Whether an error says the service's files were removed under us.
pub(crate) fn is_removed(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<Removed>())
}

const FILE: OFlags = OFlags::RDWR.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

fn open(path: &Path, create: bool) -> io::Result<OwnedFd> {
    let flags = if create {
        FILE.union(OFlags::CREATE)
    } else {
        FILE
    };
    Ok(rfs::openat(CWD, path, flags, Mode::RUSR | Mode::WUSR)?)
}

/// The slots directory, created (0700) if missing; a link there is refused.
fn open_slots(path: &Path) -> io::Result<OwnedFd> {
    match rfs::mkdirat(CWD, path, Mode::RWXU) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(err) => return Err(err.into()),
    }
    Ok(rfs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn flock(fd: impl AsFd, operation: FlockOperation) -> io::Result<()> {
    loop {
        match rfs::flock(fd.as_fd(), operation) {
            Err(Errno::INTR) => continue,
            result => return Ok(result?),
        }
    }
}

/// Whether the descriptor is the file at `path` (no link followed), still linked.
fn is_current(fd: impl AsFd, path: &Path) -> io::Result<bool> {
    let open = rfs::fstat(fd)?;
    match rfs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(at_path) => {
            Ok(open.st_dev == at_path.st_dev && open.st_ino == at_path.st_ino && open.st_nlink > 0)
        }
        Err(Errno::NOENT) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

impl Counter {
    /// The counter of service `name` (a checked name) in `dir`; nothing is created yet.
    pub(crate) fn new(dir: &StateDir, name: &str) -> Self {
        let path = |suffix: &str| dir.path().join(format!("{name}.{suffix}"));
        Self {
            dir: dir.clone(),
            name: name.to_owned(),
            lock: path("lock"),
            holders: path("holders"),
            keeper: path("keeper"),
            slots: path("holders.d"),
        }
    }

    /// Whether the service has files: its lock file is made first and removed last.
    pub(crate) fn exists(&self) -> Result<bool, SharedError> {
        match std::fs::symlink_metadata(&self.lock) {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(self.error("looking for the lock file", err)),
        }
    }

    pub(crate) fn error(&self, context: &'static str, err: io::Error) -> SharedError {
        SharedError::io(context, &self.lock, err)
    }

    /// The number of live handles: slots that a probe cannot lock. The probe takes a shared
    /// lock, so two probes never make each other's slot look held.
    pub(crate) fn count(&self) -> io::Result<u32> {
        let entries = match std::fs::read_dir(&self.slots) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        let mut count = 0;
        for entry in entries {
            let entry = entry?;
            let slot = match rfs::openat(
                CWD,
                entry.path(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(slot) => slot,
                // Removed with the service meanwhile.
                Err(Errno::NOENT) => continue,
                Err(err) => return Err(err.into()),
            };
            match flock(&slot, FlockOperation::NonBlockingLockShared) {
                Ok(()) => flock(&slot, FlockOperation::Unlock)?,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => count += 1,
                Err(err) => return Err(err),
            }
        }
        Ok(count)
    }

    /// Takes the lifecycle lock, blocking the thread until it is free; creates the lock file
    /// when `create`, and otherwise fails with a "removed" error when there is none.
    pub(crate) fn lock(self: &Arc<Self>, create: bool) -> io::Result<LockGuard> {
        loop {
            let lock = match open(&self.lock, create) {
                Ok(lock) => lock,
                Err(err) if !create && err.kind() == io::ErrorKind::NotFound => {
                    return Err(removed());
                }
                Err(err) => return Err(err),
            };
            flock(&lock, FlockOperation::LockExclusive)?;
            let guard = LockGuard {
                counter: Arc::clone(self),
                lock,
            };
            if is_current(&guard.lock, &self.lock)? {
                check_owner(&guard.lock)?;
                return Ok(guard);
            }
            // Removed while we waited for it: the guard lets go, and we try the new one.
        }
    }
}

/// The same open file at a descriptor above 2: the keeper points 0, 1 and 2 at /dev/null (a
/// process that closed its standard streams gets them back from `open`).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// Refuses a lock file that another user could have made or could open.
fn check_owner(fd: impl AsFd) -> io::Result<()> {
    let stat = rfs::fstat(fd)?;
    let me = rustix::process::getuid().as_raw();
    let mode = Mode::from_raw_mode(stat.st_mode) & (Mode::RWXU | Mode::RWXG | Mode::RWXO);
    if stat.st_uid != me || mode.intersects(Mode::RWXG | Mode::RWXO) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing a lock file owned by uid {} with mode {:04o}: it must be owned by \
                 uid {me} with mode 0600",
                stat.st_uid,
                mode.bits()
            ),
        ));
    }
    Ok(())
}

/// One handle's hold: a shared lock on the holders file and an exclusive lock on a slot.
/// Dropping it leaves.
#[derive(Debug)]
pub(crate) struct Hold {
    holders: OwnedFd,
    slot: OwnedFd,
}

impl Drop for Hold {
    fn drop(&mut self) {
        // Record the departure for the keeper's linger, then let go (explicitly: a child forked
        // and not yet exec'd may share these descriptors for a moment).
        let now = Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_OMIT,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_NOW,
            },
        };
        let _ = rfs::futimens(&self.holders, &now);
        let _ = flock(&self.slot, FlockOperation::Unlock);
        let _ = flock(&self.holders, FlockOperation::Unlock);
    }
}

/// The lifecycle lock, held.
pub(crate) struct LockGuard {
    counter: Arc<Counter>,
    lock: OwnedFd,
}

impl LockGuard {
    /// Joins as one more holder.
    pub(crate) fn join(&self) -> io::Result<Hold> {
        let holders = open(&self.counter.holders, true)?;
        // Only the keeper ever holds it exclusively without the lifecycle lock, and only for an
        // instant; waiting without blocking keeps us out of any queue behind it.
        let mut tries = 0u32;
        loop {
            match flock(&holders, FlockOperation::NonBlockingLockShared) {
                Ok(()) => break,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    tries += 1;
                    if tries < 100 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Err(err) => return Err(err),
            }
        }
        let slots = open_slots(&self.counter.slots)?;
        for number in 0..u32::MAX {
            let slot = rfs::openat(
                &slots,
                number.to_string(),
                FILE.union(OFlags::CREATE),
                Mode::RUSR | Mode::WUSR,
            )?;
            match flock(&slot, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Hold { holders, slot }),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::other("no free holder slot"))
    }

    /// Leaves as a holder; a "removed" error if the hold belongs to files removed since.
    pub(crate) fn leave(&self, hold: Hold) -> io::Result<()> {
        let current = is_current(&hold.holders, &self.counter.holders)?;
        drop(hold);
        if current { Ok(()) } else { Err(removed()) }
    }

    pub(crate) fn count(&self) -> io::Result<u32> {
        self.counter.count()
    }

    /// Starts a keeper unless one is watching: whoever gets the keeper lock hands it to a new
    /// keeper.
    pub(crate) fn ensure_keeper(&self, linger: Duration) -> Result<(), SharedError> {
        let counter = &self.counter;
        let failed = |err| counter.error("starting the keeper", err);
        let keeper = open(&counter.keeper, true).map_err(failed)?;
        match flock(&keeper, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(failed(err)),
        }
        // Fresh descriptors of the keeper's own; ours close once it has them (closing, not
        // unlocking, leaves the keeper lock with the keeper).
        let keeper = above_stdio(keeper).map_err(failed)?;
        let holders = open(&counter.holders, true)
            .and_then(above_stdio)
            .map_err(failed)?;
        let slots = open_slots(&counter.slots)
            .and_then(above_stdio)
            .map_err(failed)?;
        let c = |path: &Path| {
            CString::new(path.as_os_str().as_bytes())
                .map_err(|_| failed(io::ErrorKind::InvalidInput.into()))
        };
        let state = c(&counter.dir.state_file(&counter.name))?;
        let (lock_path, keeper_path) = (c(&counter.lock)?, c(&counter.keeper)?);
        let (holders_path, slots_path) = (c(&counter.holders)?, c(&counter.slots)?);
        crate::sys::keeper::spawn(&crate::sys::keeper::Plan {
            watch: crate::sys::keeper::Watch::Files(crate::sys::file_keeper::Files {
                keeper: keeper.as_fd(),
                holders: holders.as_fd(),
                slots: slots.as_fd(),
                lock_path: &lock_path,
                keeper_path: &keeper_path,
                holders_path: &holders_path,
                slots_path: &slots_path,
            }),
            linger,
            state_path: &state,
        })
        .map_err(failed)
    }

    /// Removes the service's files, the lock file last, then lets go of the lock: whoever
    /// waits on it finds it removed and starts over.
    pub(crate) fn remove_set(self) -> io::Result<()> {
        let counter = &self.counter;
        let gone = |result: io::Result<()>| match result {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        match std::fs::read_dir(&counter.slots) {
            Ok(entries) => {
                for entry in entries {
                    gone(std::fs::remove_file(entry?.path()))?;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        gone(std::fs::remove_dir(&counter.slots))?;
        gone(std::fs::remove_file(&counter.holders))?;
        gone(std::fs::remove_file(&counter.keeper))?;
        gone(std::fs::remove_file(&counter.lock))
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = flock(&self.lock, FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn counter(test: &str) -> (Scratch, Arc<Counter>) {
        let path =
            std::env::temp_dir().join(format!("procwarden-files-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let dir = StateDir::at(&path).unwrap();
        (Scratch(path), Arc::new(Counter::new(&dir, "svc")))
    }

    #[test]
    fn holds_are_counted_and_their_slots_reused() {
        let (scratch, counter) = counter("count");
        assert_eq!(counter.count().unwrap(), 0);
        assert!(!counter.exists().unwrap());
        let guard = counter.lock(true).unwrap();
        assert!(counter.exists().unwrap());
        let (a, b) = (guard.join().unwrap(), guard.join().unwrap());
        assert_eq!(
            guard.count().unwrap(),
            2,
            "holds of one process count apart"
        );
        drop(a);
        assert_eq!(counter.count().unwrap(), 1);
        let c = guard.join().unwrap();
        assert_eq!(counter.count().unwrap(), 2);
        let slots: Vec<_> = std::fs::read_dir(&counter.slots).unwrap().collect();
        assert_eq!(slots.len(), 2, "the free slot was reused");
        guard.leave(b).unwrap();
        guard.leave(c).unwrap();
        assert_eq!(counter.count().unwrap(), 0);
        guard.remove_set().unwrap();
        assert!(
            std::fs::read_dir(&scratch.0).unwrap().next().is_none(),
            "nothing left"
        );
    }

    #[test]
    fn a_lock_removed_while_waited_for_is_taken_again_fresh() {
        let (_scratch, counter) = counter("relock");
        let first = counter.lock(true).unwrap();
        let hold = first.join().unwrap();
        let waiting = {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || counter.lock(true).map(|guard| rfs::fstat(&guard.lock)))
        };
        std::thread::sleep(Duration::from_millis(50));
        first.remove_set().unwrap();
        let locked = waiting.join().unwrap().unwrap().unwrap();
        let at_path = rfs::statat(CWD, &counter.lock, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(
            (locked.st_dev, locked.st_ino),
            (at_path.st_dev, at_path.st_ino)
        );
        // The old hold belongs to removed files: leaving under the new lock says so.
        let second = counter.lock(true).unwrap();
        assert!(is_removed(&second.leave(hold).unwrap_err()));
        second.remove_set().unwrap();
        assert!(
            is_removed(&counter.lock(false).err().unwrap()),
            "none to take"
        );
    }

    #[test]
    fn a_lock_file_open_to_others_is_refused() {
        let (_scratch, counter) = counter("mode");
        drop(counter.lock(true).unwrap());
        std::fs::set_permissions(
            &counter.lock,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let err = counter.lock(true).err().unwrap().to_string();
        assert!(err.contains("mode 0644"), "{err}");
    }
}
