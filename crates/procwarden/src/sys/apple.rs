//! macOS and other Apple platforms: `proc_pidinfo` for a process's identity.

use std::io;
use std::mem::{MaybeUninit, size_of};

use super::ProcInfo;

/// `SZOMB` in `<sys/proc.h>`: the process has exited and waits to be reaped.
const SZOMB: u32 = 5;

/// Reads the start time (microseconds since the epoch) and status from `PROC_PIDTBSDINFO`.
pub(crate) fn proc_info(pid: i32) -> io::Result<Option<ProcInfo>> {
    match proc_info_raw(pid) {
        Ok(info) => Ok(info),
        Err(Some(errno)) => Err(io::Error::from_raw_os_error(errno)),
        Err(None) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short proc_pidinfo answer",
        )),
    }
}

/// [`proc_info`] without allocating, for the keeper after `fork`: `proc_pidinfo` is a thin
/// wrapper over the `proc_info` system call, and this touches only stack memory. `Err` holds the
/// errno, or `None` for a short answer.
pub(crate) fn proc_info_raw(pid: i32) -> Result<Option<ProcInfo>, Option<i32>> {
    let mut info = MaybeUninit::<libc::proc_bsdinfo>::zeroed();
    let size = size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: the buffer is a writable `proc_bsdinfo` of exactly `size` bytes, as the
    // PROC_PIDTBSDINFO flavour requires; the call writes at most that many bytes.
    let written = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            info.as_mut_ptr().cast(),
            size,
        )
    };
    if written <= 0 {
        let errno = io::Error::last_os_error().raw_os_error();
        return match errno {
            Some(libc::ESRCH) => Ok(None),
            _ if written == 0 => Ok(None),
            _ => Err(errno),
        };
    }
    if written != size {
        return Err(None);
    }
    // SAFETY: proc_pidinfo filled all `size` bytes of the zero-initialised struct.
    let info = unsafe { info.assume_init() };
    Ok(Some(ProcInfo {
        start_time: info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
        zombie: info.pbi_status == SZOMB,
    }))
}
