//! The pid file: the PID of the generation that serves, replaced atomically at each handover.

use std::path::Path;

use super::UpgradeError;
use crate::atomic_file::Durability;

/// Writes `pid` to `path`, replacing the file whole, so a reader never sees a partial PID.
///
/// Not synced to disk: a PID means nothing after a reboot, and the handover should not wait
/// for a disk flush.
pub(crate) fn write(path: &Path, pid: u32) -> Result<(), UpgradeError> {
    let contents = format!("{pid}\n");
    crate::atomic_file::write(path, contents.as_bytes(), 0o644, Durability::Volatile)
        .map_err(|err| UpgradeError::io("writing the pid file", path, err))
}

/// Reads the PID in the pid file at `path`.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("pw-doc-pid-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("server.pid");
/// std::fs::write(&path, "4242\n").unwrap();
/// assert_eq!(procwarden::upgrade::read_pid_file(&path).unwrap(), 4242);
/// std::fs::write(&path, "twelve").unwrap();
/// assert!(procwarden::upgrade::read_pid_file(&path).is_err());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn read_pid_file(path: &Path) -> Result<u32, UpgradeError> {
    let bad = |reason: String| UpgradeError::BadPidFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|err| bad(err.to_string()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| bad(format!("{:?} is not a PID", text.trim())))?;
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(bad(format!("{pid} is not a valid PID")));
    }
    Ok(pid)
}

/// Removes the pid file if it still names `pid`: a later generation's file is left alone.
pub(crate) fn remove_if_ours(path: &Path, pid: u32) {
    if read_pid_file(path).is_ok_and(|found| found == pid) {
        let _ = std::fs::remove_file(path);
    }
}
