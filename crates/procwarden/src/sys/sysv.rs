//! System V semaphore sets: safe wrappers over `semget`, `semop`/`semtimedop` and `semctl`.

use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

/// Every semaphore a shared service uses, in one set.
pub(crate) mod sem {
    /// Live handles; each holds +1 with SEM_UNDO, so a crash gives it back.
    pub(crate) const COUNT: u16 = 0;
    /// The lifecycle lock: 0 free, 1 held (with SEM_UNDO).
    pub(crate) const LOCK: u16 = 1;
    /// 1 while a keeper process watches the set (with SEM_UNDO).
    pub(crate) const KEEPER: u16 = 2;
    /// Changes whenever the service is started, recovered or stopped.
    pub(crate) const GEN: u16 = 3;
    /// Three semaphores holding 15 bits each of a fingerprint of the service's identity.
    pub(crate) const TAG: u16 = 4;
    /// How many there are.
    pub(crate) const COUNT_OF_SEMS: usize = 7;
}

/// `SEM_UNDO`: the kernel reverses the operation when the process exits.
pub(crate) const UNDO: i16 = libc::SEM_UNDO as i16;
/// `IPC_NOWAIT`: fail with `EAGAIN` instead of blocking.
pub(crate) const NOWAIT: i16 = libc::IPC_NOWAIT as i16;

/// One semaphore operation.
pub(crate) fn op(num: u16, delta: i16, flags: i16) -> libc::sembuf {
    libc::sembuf {
        sem_num: num,
        sem_op: delta,
        sem_flg: flags,
    }
}

/// What `IPC_STAT` says of a set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SetStat {
    pub(crate) uid: u32,
    pub(crate) mode: u16,
    pub(crate) nsems: u64,
    /// Zero until the first `semop`: the creator makes one once the set is initialised.
    pub(crate) otime: i64,
}

/// Creates a set of [`sem::COUNT_OF_SEMS`] semaphores, all 0, mode 0600; `None` if `key` exists.
pub(crate) fn create(key: i32) -> io::Result<Option<i32>> {
    // SAFETY: semget takes plain integers and touches no memory of ours.
    let id = unsafe {
        libc::semget(
            key,
            sem::COUNT_OF_SEMS as libc::c_int,
            libc::IPC_CREAT | libc::IPC_EXCL | 0o600,
        )
    };
    if id >= 0 {
        return Ok(Some(id));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Ok(None),
        _ => Err(err),
    }
}

/// Opens the set of `key`; `None` if there is none.
pub(crate) fn open(key: i32) -> io::Result<Option<i32>> {
    // SAFETY: as in `create`.
    let id = unsafe { libc::semget(key, 0, 0) };
    if id >= 0 {
        return Ok(Some(id));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(err),
    }
}

/// Applies `ops` atomically, all or none; blocks unless an op that cannot proceed has
/// [`NOWAIT`], and at most `timeout` when given (then `EAGAIN`). Retries on `EINTR`.
pub(crate) fn semop(
    id: i32,
    ops: &mut [libc::sembuf],
    timeout: Option<Duration>,
) -> io::Result<()> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let result = match deadline {
            None => {
                // SAFETY: `ops` is a valid, writable array of `ops.len()` sembufs for the call.
                unsafe { libc::semop(id, ops.as_mut_ptr(), ops.len()) }
            }
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let spec = libc::timespec {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                };
                // SAFETY: semtimedop(id, sops, nsops, timeout): `ops` is a valid array of
                // `ops.len()` sembufs and `spec` a valid timespec, both alive for the call.
                unsafe {
                    libc::syscall(
                        libc::SYS_semtimedop,
                        id,
                        ops.as_mut_ptr(),
                        ops.len(),
                        &spec as *const libc::timespec,
                    ) as libc::c_int
                }
            }
        };
        if result == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// The values of all semaphores of the set.
pub(crate) fn get_all(id: i32) -> io::Result<[u16; sem::COUNT_OF_SEMS]> {
    let mut values = [0u16; sem::COUNT_OF_SEMS];
    // SAFETY: GETALL writes `nsems` unsigned shorts to the pointer; every set we open has
    // exactly COUNT_OF_SEMS semaphores (checked by `stat` before use), the array's length.
    let result = unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(values)
}

/// Sets all semaphores of the set.
pub(crate) fn set_all(id: i32, values: &[u16; sem::COUNT_OF_SEMS]) -> io::Result<()> {
    // SAFETY: SETALL reads `nsems` unsigned shorts from the pointer, which has that many.
    let result = unsafe { libc::semctl(id, 0, libc::SETALL, values.as_ptr()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One semaphore's value.
pub(crate) fn get(id: i32, num: u16) -> io::Result<u16> {
    // SAFETY: GETVAL takes no pointer argument.
    let value = unsafe { libc::semctl(id, num.into(), libc::GETVAL) };
    if value < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value as u16)
}

/// The set's owner, mode, size and times.
pub(crate) fn stat(id: i32) -> io::Result<SetStat> {
    let mut ds = MaybeUninit::<libc::semid_ds>::zeroed();
    // SAFETY: IPC_STAT writes one `semid_ds` to the pointer, which points to one.
    let result = unsafe { libc::semctl(id, 0, libc::IPC_STAT, ds.as_mut_ptr()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the zero-initialised struct.
    let ds = unsafe { ds.assume_init() };
    Ok(SetStat {
        uid: ds.sem_perm.uid,
        mode: ds.sem_perm.mode,
        // `sem_nsems` is narrower than u64 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        nsems: u64::from(ds.sem_nsems),
        otime: ds.sem_otime,
    })
}

/// Removes the set; every process blocked on it wakes with `EIDRM`.
pub(crate) fn remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no pointer argument.
    let result = unsafe { libc::semctl(id, 0, libc::IPC_RMID) };
    if result < 0 {
        let err = io::Error::last_os_error();
        // Already gone is what we wanted.
        if matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIDRM)) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

/// Gives the set another owner and mode (for tests of the refusal of foreign sets).
#[cfg(test)]
pub(crate) fn set_owner(id: i32, uid: u32, mode: u16) -> io::Result<()> {
    let mut ds = MaybeUninit::<libc::semid_ds>::zeroed();
    // SAFETY: as in `stat`.
    if unsafe { libc::semctl(id, 0, libc::IPC_STAT, ds.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled by IPC_STAT above.
    let mut ds = unsafe { ds.assume_init() };
    ds.sem_perm.uid = uid;
    ds.sem_perm.mode = mode;
    // SAFETY: IPC_SET reads one `semid_ds` from the pointer.
    if unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an error says the set was removed under us.
pub(crate) fn is_removed(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EIDRM) | Some(libc::EINVAL))
}

/// Whether an error is a refused `IPC_NOWAIT` or an expired timeout.
pub(crate) fn is_would_block(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EAGAIN)
}
