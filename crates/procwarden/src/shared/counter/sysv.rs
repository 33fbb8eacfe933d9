//! The System V backend (Linux, the default there): one semaphore set per service holds the count, the
//! lock, the keeper's presence, a generation number and the service's fingerprint. Every
//! semaphore starts at zero, so a set is usable the moment it exists, and every hold is taken
//! with `SEM_UNDO`, so the kernel gives it back when its process dies, however it dies.

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use crate::sys::sysv::{self, NOWAIT, UNDO, op, sem};

use crate::shared::identity::{Identity, PROBES};
use crate::shared::{SharedError, StateDir};

/// The reference count of one shared service, shared by every process that uses it.
#[derive(Debug)]
pub(crate) struct Counter {
    id: i32,
    key: i32,
    identity: Identity,
    dir: StateDir,
}

/// Whether a set was found or had to be made.
pub(crate) enum Opened {
    Found(Counter),
    Created(Counter),
}

impl Counter {
    /// Opens the counter of service `name` in `dir`, creating it if there is none.
    pub fn open(dir: &StateDir, name: &str) -> Result<Self, SharedError> {
        Ok(match Self::open_or_create(dir, name)? {
            Opened::Found(counter) | Opened::Created(counter) => counter,
        })
    }

    /// Opens the counter of service `name` only if it exists.
    pub fn find(dir: &StateDir, name: &str) -> Result<Option<Self>, SharedError> {
        let identity = identity(dir, name)?;
        let _serial = DirLock::take(dir)?;
        for probe in 0..PROBES {
            let key = identity.key(probe);
            if let Some(id) = open_key(key)?
                && let Found::Ours(counter) = verify(id, key, &identity, dir)?
            {
                return Ok(Some(counter));
            }
        }
        Ok(None)
    }

    pub(crate) fn open_or_create(dir: &StateDir, name: &str) -> Result<Opened, SharedError> {
        let identity = identity(dir, name)?;
        // Creation is serialised per state directory, and every probe is looked at before a
        // set is made, so two processes never make two sets for one service.
        let _serial = DirLock::take(dir)?;
        let mut free = None;
        for probe in 0..PROBES {
            let key = identity.key(probe);
            let found = match open_key(key)? {
                Some(id) => verify(id, key, &identity, dir)?,
                None => Found::Gone,
            };
            match found {
                Found::Ours(counter) => return Ok(Opened::Found(counter)),
                Found::Gone => {
                    free.get_or_insert(key);
                }
                Found::Other => {}
            }
        }
        let Some(key) = free else {
            return Err(SharedError::NoKey {
                name: name.to_owned(),
                probes: PROBES,
            });
        };
        let ipc =
            |err| SharedError::io("creating a semaphore set", format!("key {key:#010x}"), err);
        let id = sysv::create(key).map_err(ipc)?.ok_or_else(|| {
            // Someone outside procwarden took the key between our look and our create.
            ipc(io::Error::from(io::ErrorKind::AlreadyExists))
        })?;
        let [a, b, c] = identity.tag();
        let initial = [0, 0, 0, 0, a, b, c];
        let init = sysv::set_all(id, &initial)
            // A first operation marks the set initialised (its `sem_otime` turns non-zero).
            .and_then(|()| {
                sysv::semop(id, &mut [op(sem::COUNT, 1, 0), op(sem::COUNT, -1, 0)], None)
            });
        if let Err(err) = init {
            let _ = sysv::remove(id);
            return Err(ipc(err));
        }
        Ok(Opened::Created(Self {
            id,
            key,
            identity,
            dir: dir.clone(),
        }))
    }

    /// The number of live handles; 0 once the set has been removed.
    pub fn count(&self) -> Result<u32, SharedError> {
        match sysv::get(self.id, sem::COUNT) {
            Ok(count) => Ok(count.into()),
            Err(err) if sysv::is_removed(&err) => Ok(0),
            Err(err) => Err(self.error("reading the count", err)),
        }
    }

    /// The IPC key of the set.
    pub fn key(&self) -> i32 {
        self.key
    }

    /// The set's id, as `ipcs -s` shows it.
    pub fn id(&self) -> i32 {
        self.id
    }

    pub(crate) fn name(&self) -> &str {
        self.identity.name()
    }

    pub(crate) fn error(&self, context: &'static str, err: io::Error) -> SharedError {
        SharedError::io(
            context,
            format!("semaphore set {} of service {}", self.id, self.name()),
            err,
        )
    }

    /// Joins as one more holder, in one atomic step, only if the service is running as of
    /// `generation` and no lifecycle operation is under way. `Ok(false)` means: take the slow
    /// path.
    pub(crate) fn join_if_current(&self, generation: u16) -> io::Result<bool> {
        let g = generation as i16;
        let mut ops = [
            op(sem::LOCK, 0, NOWAIT),
            // COUNT >= 1: someone holds it, so it has been started and not stopped.
            op(sem::COUNT, -1, NOWAIT),
            op(sem::COUNT, 1, 0),
            op(sem::COUNT, 1, UNDO),
            // GEN == generation: what we know of it is current.
            op(sem::GEN, -g, NOWAIT),
            op(sem::GEN, 0, NOWAIT),
            op(sem::GEN, g, 0),
        ];
        match sysv::semop(self.id, &mut ops, None) {
            Ok(()) => Ok(true),
            Err(err) if sysv::is_would_block(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Leaves as a holder in one atomic step, only if others remain and no lifecycle operation
    /// is under way. `Ok(false)` means this would be the last hold: take the slow path.
    pub(crate) fn leave_if_not_last(&self) -> io::Result<bool> {
        let mut ops = [
            op(sem::LOCK, 0, NOWAIT),
            op(sem::COUNT, -1, UNDO),
            op(sem::COUNT, -1, NOWAIT),
            op(sem::COUNT, 1, 0),
        ];
        match sysv::semop(self.id, &mut ops, None) {
            Ok(()) => Ok(true),
            Err(err) if sysv::is_would_block(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Leaves as a holder, whatever the count: the keeper acts if it reaches zero.
    pub(crate) fn leave(&self) -> io::Result<()> {
        sysv::semop(self.id, &mut [op(sem::COUNT, -1, UNDO)], None)
    }

    /// Takes the lifecycle lock, blocking the thread until it is free. Released when the guard
    /// drops, or by the kernel if this process dies.
    pub(crate) fn lock(self: &Arc<Self>) -> io::Result<LockGuard> {
        sysv::semop(
            self.id,
            &mut [op(sem::LOCK, 0, 0), op(sem::LOCK, 1, UNDO)],
            None,
        )?;
        Ok(LockGuard {
            counter: Arc::clone(self),
        })
    }
}

/// The lifecycle lock, held: the service can be started, checked, recovered or stopped.
pub(crate) struct LockGuard {
    counter: Arc<Counter>,
}

impl LockGuard {
    pub(crate) fn join(&self) -> io::Result<()> {
        sysv::semop(self.counter.id, &mut [op(sem::COUNT, 1, UNDO)], None)
    }

    pub(crate) fn leave(&self) -> io::Result<()> {
        self.counter.leave()
    }

    pub(crate) fn count(&self) -> io::Result<u16> {
        sysv::get(self.counter.id, sem::COUNT)
    }

    pub(crate) fn generation(&self) -> io::Result<u16> {
        sysv::get(self.counter.id, sem::GEN)
    }

    /// Marks a change of the service (started, recovered, stopped): cached knowledge of it in
    /// other processes stops matching. Returns the new generation, never 0.
    pub(crate) fn bump_generation(&self) -> io::Result<u16> {
        let current = self.generation()?;
        let next = if current >= 0x7fff { 1 } else { current + 1 };
        let delta = next as i16 - current as i16;
        sysv::semop(self.counter.id, &mut [op(sem::GEN, delta, 0)], None)?;
        Ok(next)
    }

    /// Starts a keeper unless one is watching.
    pub(crate) fn ensure_keeper(&self, linger: Duration) -> Result<(), SharedError> {
        let watched = sysv::get(self.counter.id, sem::KEEPER)
            .map_err(|err| self.counter.error("checking for a keeper", err))?;
        if watched > 0 {
            return Ok(());
        }
        let state = self.counter.dir.state_file(self.counter.name());
        let state = CString::new(state.as_os_str().as_bytes()).map_err(|_| {
            SharedError::io(
                "naming the state file",
                &state,
                io::ErrorKind::InvalidInput.into(),
            )
        })?;
        crate::sys::keeper::spawn(&crate::sys::keeper::Plan {
            watch: crate::sys::keeper::Watch::Set(self.counter.id),
            linger,
            state_path: &state,
        })
        .map_err(|err| self.counter.error("starting the keeper", err))
    }

    /// Removes the set: every process waiting on it wakes and starts over.
    pub(crate) fn remove_set(self) -> io::Result<()> {
        let id = self.counter.id;
        std::mem::forget(self);
        sysv::remove(id)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = sysv::semop(self.counter.id, &mut [op(sem::LOCK, -1, UNDO)], None);
    }
}

fn identity(dir: &StateDir, name: &str) -> Result<Identity, SharedError> {
    super::check_name(name)?;
    let uid = rustix::process::getuid().as_raw();
    Ok(Identity::new(uid, dir.path(), name))
}

fn open_key(key: i32) -> Result<Option<i32>, SharedError> {
    sysv::open(key)
        .map_err(|err| SharedError::io("opening a semaphore set", format!("key {key:#010x}"), err))
}

/// What is at a key.
enum Found {
    Ours(Counter),
    /// Another service's set (or another program's) that landed on the same key.
    Other,
    /// Nothing, or a set removed while we looked at it.
    Gone,
}

/// Checks the set at `key`: ours, another's, gone, or one nobody may trust (an error).
fn verify(id: i32, key: i32, identity: &Identity, dir: &StateDir) -> Result<Found, SharedError> {
    let foreign = |reason: String| SharedError::ForeignIpc {
        name: identity.name().to_owned(),
        key,
        id,
        reason,
    };
    // Its keeper may remove it while we look: then it is gone, not an error.
    let ipc = |err: std::io::Error| {
        if sysv::is_removed(&err) {
            Ok(Found::Gone)
        } else {
            Err(SharedError::io(
                "inspecting a semaphore set",
                format!("key {key:#010x}"),
                err,
            ))
        }
    };
    let mut stat = match sysv::stat(id) {
        Ok(stat) => stat,
        Err(err) => return ipc(err),
    };
    let me = rustix::process::getuid().as_raw();
    if stat.uid != me {
        return Err(foreign(format!(
            "it is owned by uid {}, not by uid {me}",
            stat.uid
        )));
    }
    if stat.mode & 0o777 != 0o600 {
        return Err(foreign(format!(
            "its mode is {:04o}, not 0600",
            stat.mode & 0o777
        )));
    }
    if stat.nsems != sem::COUNT_OF_SEMS as u64 {
        // Another program's set of ours at a colliding key: try the next key.
        return Ok(Found::Other);
    }
    // A creator initialises its set within microseconds; give it a moment.
    for _ in 0..200 {
        if stat.otime != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        stat = match sysv::stat(id) {
            Ok(stat) => stat,
            Err(err) => return ipc(err),
        };
    }
    if stat.otime == 0 {
        // Its creator died before initialising it (we hold the directory lock it held).
        let _ = sysv::remove(id);
        return Ok(Found::Gone);
    }
    let values = match sysv::get_all(id) {
        Ok(values) => values,
        Err(err) => return ipc(err),
    };
    let tag = &values[sem::TAG as usize..];
    if tag != identity.tag() {
        return Ok(Found::Other);
    }
    Ok(Found::Ours(Counter {
        id,
        key,
        identity: identity.clone(),
        dir: dir.clone(),
    }))
}

/// An exclusive `flock` on the state directory, held while sets are looked up or created.
struct DirLock {
    _dir: std::fs::File,
}

impl DirLock {
    fn take(dir: &StateDir) -> Result<Self, SharedError> {
        let file = std::fs::File::open(dir.path())
            .map_err(|err| SharedError::io("opening the state directory", dir.path(), err))?;
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive).map_err(
            |err| SharedError::io("locking the state directory", dir.path(), err.into()),
        )?;
        Ok(Self { _dir: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(test: &str) -> (Scratch, StateDir) {
        let path =
            std::env::temp_dir().join(format!("procwarden-counter-{test}-{}", std::process::id()));
        let dir = StateDir::at(&path).unwrap();
        (Scratch(path), dir)
    }

    #[test]
    fn a_set_owned_by_someone_else_or_open_to_others_is_refused() {
        let (_scratch, dir) = scratch("foreign");
        for (uid, mode, says) in [
            (65534, 0o600, "owned by uid 65534"),
            (0, 0o666, "mode is 0666"),
        ] {
            let counter = Counter::open(&dir, "db").unwrap();
            let me = rustix::process::getuid().as_raw();
            sysv::set_owner(counter.id(), if uid == 0 { me } else { uid }, mode).unwrap();
            let err = Counter::open(&dir, "db").unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, SharedError::ForeignIpc { .. }), "{text}");
            assert!(text.contains(says) && text.contains("db"), "{text}");
            assert!(
                text.contains(&format!("{:#010x}", counter.key())),
                "says where: {text}"
            );
            sysv::remove(counter.id()).unwrap();
        }
    }

    #[test]
    fn a_colliding_key_moves_to_the_next_probe() {
        let (_scratch, dir) = scratch("collide");
        // Occupy the first key of "db" with a set that carries another fingerprint.
        let identity = identity(&dir, "db").unwrap();
        let squatter = sysv::create(identity.key(0)).unwrap().expect("key free");
        sysv::set_all(squatter, &[0, 0, 0, 0, 1, 2, 3]).unwrap();
        sysv::semop(
            squatter,
            &mut [op(sem::COUNT, 1, 0), op(sem::COUNT, -1, 0)],
            None,
        )
        .unwrap();
        let counter = Counter::open(&dir, "db").unwrap();
        assert_eq!(counter.key(), identity.key(1));
        assert_eq!(
            Counter::find(&dir, "db").unwrap().unwrap().id(),
            counter.id(),
            "found again"
        );
        sysv::remove(counter.id()).unwrap();
        sysv::remove(squatter).unwrap();
    }

    #[test]
    fn first_and_last_are_decided_atomically() {
        let (_scratch, dir) = scratch("atomic");
        let counter = Arc::new(Counter::open(&dir, "svc").unwrap());
        // Nobody holds it: the fast path refuses, whatever generation we think it has.
        assert!(!counter.join_if_current(0).unwrap());
        let guard = counter.lock().unwrap();
        guard.join().unwrap();
        let generation = guard.bump_generation().unwrap();
        // The lock is held: even a current generation takes the slow path.
        assert!(!counter.join_if_current(generation).unwrap());
        drop(guard);
        assert!(counter.join_if_current(generation).unwrap());
        assert!(
            !counter.join_if_current(generation + 1).unwrap(),
            "stale knowledge"
        );
        assert_eq!(counter.count().unwrap(), 2);
        assert!(counter.leave_if_not_last().unwrap());
        assert!(
            !counter.leave_if_not_last().unwrap(),
            "the last one must take the slow path"
        );
        assert_eq!(
            counter.count().unwrap(),
            1,
            "a refused leave changes nothing"
        );
        counter.leave().unwrap();
        assert_eq!(counter.count().unwrap(), 0);
        sysv::remove(counter.id()).unwrap();
    }
}
