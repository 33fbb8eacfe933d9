//! `RefCounter`: how many handles of a shared service are live, across processes, crashes
//! included; plus the lifecycle lock and the keeper that acts when the count reaches zero.
//!
//! Two backends keep the same promises (see [`Backend`]): System V semaphores (`sysv.rs`,
//! Linux, the default there) and `flock(2)` files (`files.rs`, every Unix). Every process that
//! shares a service must use the same backend for it.

mod files;
#[cfg(target_os = "linux")]
mod sysv;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::{SharedError, StateDir};

/// The environment variable that chooses the backend where there is a choice (Linux): `files`
/// for [`Backend::FileLocks`], `sysv` for `Backend::SystemV` (the default).
pub const BACKEND_ENV: &str = "PROCWARDEN_SHARED_BACKEND";

/// How the processes sharing a service count their holds and take its lifecycle lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// One System V semaphore set per service; holds taken with `SEM_UNDO`. Joining and leaving
    /// a running service are one system call each. Linux only, and the default there.
    #[cfg(target_os = "linux")]
    SystemV,
    /// `flock(2)` on files in the state directory; every live handle keeps two descriptors.
    /// Portable: the only backend on other Unix systems. Every acquire and release takes the
    /// lifecycle lock.
    FileLocks,
}

impl Backend {
    /// The backend [`BACKEND_ENV`] names, else the platform's default.
    pub fn from_env() -> Self {
        match std::env::var(BACKEND_ENV).as_deref() {
            Ok("files") => Self::FileLocks,
            #[cfg(target_os = "linux")]
            Ok("sysv") => Self::SystemV,
            Ok("") | Err(_) => Self::default(),
            Ok(other) => {
                tracing::warn!(
                    "{BACKEND_ENV}={other:?} is not a backend here; using {:?}",
                    Self::default()
                );
                Self::default()
            }
        }
    }
}

impl Default for Backend {
    /// System V on Linux, file locks elsewhere.
    fn default() -> Self {
        #[cfg(target_os = "linux")]
        return Self::SystemV;
        #[cfg(not(target_os = "linux"))]
        return Self::FileLocks;
    }
}

/// The reference count of one shared service, shared by every process that uses it.
#[derive(Debug)]
pub struct RefCounter(Kind);

#[derive(Debug)]
enum Kind {
    #[cfg(target_os = "linux")]
    SystemV(Arc<sysv::Counter>),
    FileLocks(Arc<files::Counter>),
}

/// One handle's hold on the count.
#[derive(Debug)]
pub(crate) enum Hold {
    /// Kept by the kernel (`SEM_UNDO`): nothing to own.
    #[cfg(target_os = "linux")]
    SystemV,
    /// Two locked descriptors; dropping them leaves.
    FileLocks(files::Hold),
}

pub(super) fn check_name(name: &str) -> Result<(), SharedError> {
    crate::name::check(name).map_err(|reason| SharedError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

impl RefCounter {
    /// Opens the counter of service `name` in `dir` with the backend [`Backend::from_env`]
    /// chooses, creating it if there is none.
    pub fn open(dir: &StateDir, name: &str) -> Result<Self, SharedError> {
        Self::open_with(dir, name, Backend::from_env())
    }

    /// Opens the counter of service `name` in `dir` with `backend`, creating it if there is none
    /// (a file-lock counter makes its files when first locked).
    pub fn open_with(dir: &StateDir, name: &str, backend: Backend) -> Result<Self, SharedError> {
        Ok(Self(match backend {
            #[cfg(target_os = "linux")]
            Backend::SystemV => Kind::SystemV(Arc::new(sysv::Counter::open(dir, name)?)),
            Backend::FileLocks => {
                check_name(name)?;
                Kind::FileLocks(Arc::new(files::Counter::new(dir, name)))
            }
        }))
    }

    /// Opens the counter of service `name` only if it exists, with whichever backend made it.
    pub fn find(dir: &StateDir, name: &str) -> Result<Option<Self>, SharedError> {
        if let Some(found) = Self::find_with(dir, name, Backend::FileLocks)? {
            return Ok(Some(found));
        }
        #[cfg(target_os = "linux")]
        if let Some(found) = Self::find_with(dir, name, Backend::SystemV)? {
            return Ok(Some(found));
        }
        Ok(None)
    }

    pub(crate) fn find_with(
        dir: &StateDir,
        name: &str,
        backend: Backend,
    ) -> Result<Option<Self>, SharedError> {
        Ok(match backend {
            #[cfg(target_os = "linux")]
            Backend::SystemV => {
                sysv::Counter::find(dir, name)?.map(|c| Self(Kind::SystemV(Arc::new(c))))
            }
            Backend::FileLocks => {
                check_name(name)?;
                let counter = files::Counter::new(dir, name);
                counter
                    .exists()?
                    .then(|| Self(Kind::FileLocks(Arc::new(counter))))
            }
        })
    }

    /// The backend that keeps this count.
    pub fn backend(&self) -> Backend {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(_) => Backend::SystemV,
            Kind::FileLocks(_) => Backend::FileLocks,
        }
    }

    /// The number of live handles; 0 once the service's set or files have been removed.
    pub fn count(&self) -> Result<u32, SharedError> {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(c) => c.count(),
            Kind::FileLocks(c) => c
                .count()
                .map_err(|err| c.error("counting the holders", err)),
        }
    }

    /// The IPC key of the semaphore set (System V backend).
    pub fn key(&self) -> Option<i32> {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(c) => Some(c.key()),
            Kind::FileLocks(_) => None,
        }
    }

    /// The semaphore set's id, as `ipcs -s` shows it (System V backend).
    pub fn id(&self) -> Option<i32> {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(c) => Some(c.id()),
            Kind::FileLocks(_) => None,
        }
    }

    pub(crate) fn error(&self, context: &'static str, err: io::Error) -> SharedError {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(c) => c.error(context, err),
            Kind::FileLocks(c) => c.error(context, err),
        }
    }

    /// Whether an error from this counter means its set or files were removed under us: start
    /// over with a fresh one.
    pub(crate) fn is_removed(&self, err: &io::Error) -> bool {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(_) => crate::sys::sysv::is_removed(err),
            Kind::FileLocks(_) => files::is_removed(err),
        }
    }

    /// Joins as one more holder, in one atomic step, only if the service is running as of
    /// `generation` and no lifecycle operation is under way. `None` means: take the slow path
    /// (always, with file locks).
    pub(crate) fn join_if_current(&self, generation: u16) -> io::Result<Option<Hold>> {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(c) => Ok(c.join_if_current(generation)?.then_some(Hold::SystemV)),
            Kind::FileLocks(_) => {
                let _ = generation;
                Ok(None)
            }
        }
    }

    /// Leaves as a holder in one atomic step, only if others remain and no lifecycle operation
    /// is under way. `Some(hold)` gives the hold back: this may be the last one, take the slow
    /// path (always, with file locks).
    pub(crate) fn leave_if_not_last(&self, hold: Hold) -> io::Result<Option<Hold>> {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(c) => Ok((!c.leave_if_not_last()?).then_some(hold)),
            Kind::FileLocks(_) => Ok(Some(hold)),
        }
    }

    /// Leaves as a holder, whatever the count: the keeper acts if it reaches zero.
    pub(crate) fn leave(&self, hold: Hold) -> io::Result<()> {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(c) => c.leave(),
            Kind::FileLocks(_) => {
                drop(hold);
                Ok(())
            }
        }
    }

    /// Takes the lifecycle lock, blocking the thread until it is free. Released when the guard
    /// drops, or by the kernel if this process dies. With `create` false, a file-lock service
    /// whose files are gone is reported removed instead of being made anew.
    pub(crate) fn lock(&self, create: bool) -> io::Result<LockGuard> {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Kind::SystemV(c) => c.lock().map(LockGuard::SystemV),
            Kind::FileLocks(c) => c.lock(create).map(LockGuard::FileLocks),
        }
    }
}

/// The lifecycle lock, held: the service can be started, checked, recovered or stopped.
pub(crate) enum LockGuard {
    #[cfg(target_os = "linux")]
    SystemV(sysv::LockGuard),
    FileLocks(files::LockGuard),
}

impl LockGuard {
    pub(crate) fn join(&self) -> io::Result<Hold> {
        match self {
            #[cfg(target_os = "linux")]
            Self::SystemV(g) => g.join().map(|()| Hold::SystemV),
            Self::FileLocks(g) => g.join().map(Hold::FileLocks),
        }
    }

    pub(crate) fn leave(&self, hold: Hold) -> io::Result<()> {
        match (self, hold) {
            #[cfg(target_os = "linux")]
            (Self::SystemV(g), Hold::SystemV) => g.leave(),
            (Self::FileLocks(g), Hold::FileLocks(hold)) => g.leave(hold),
            // A hold always comes from its own counter; dropping it is all there is to do.
            #[cfg(target_os = "linux")]
            _ => Ok(()),
        }
    }

    pub(crate) fn count(&self) -> io::Result<u32> {
        match self {
            #[cfg(target_os = "linux")]
            Self::SystemV(g) => g.count().map(u32::from),
            Self::FileLocks(g) => g.count(),
        }
    }

    /// What the fast path compares with (always 0 with file locks, which have none).
    pub(crate) fn generation(&self) -> io::Result<u16> {
        match self {
            #[cfg(target_os = "linux")]
            Self::SystemV(g) => g.generation(),
            Self::FileLocks(_) => Ok(0),
        }
    }

    /// Marks a change of the service (started, recovered, stopped): cached knowledge of it in
    /// other processes stops matching. Returns the new generation.
    pub(crate) fn bump_generation(&self) -> io::Result<u16> {
        match self {
            #[cfg(target_os = "linux")]
            Self::SystemV(g) => g.bump_generation(),
            Self::FileLocks(_) => Ok(0),
        }
    }

    /// Starts a keeper unless one is watching.
    pub(crate) fn ensure_keeper(&self, linger: Duration) -> Result<(), SharedError> {
        match self {
            #[cfg(target_os = "linux")]
            Self::SystemV(g) => g.ensure_keeper(linger),
            Self::FileLocks(g) => g.ensure_keeper(linger),
        }
    }

    /// Removes the set or files: every process waiting on them wakes and starts over.
    pub(crate) fn remove_set(self) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Self::SystemV(g) => g.remove_set(),
            Self::FileLocks(g) => g.remove_set(),
        }
    }
}
