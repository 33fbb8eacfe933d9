//! The state file of a shared service: what it is and how to stop it, written atomically.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic_file::Durability;

use super::SharedError;

/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 1;

/// Whether the recorded process is still starting or is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    /// Spawned by `starter`, not yet ready. Seen under the lifecycle lock, it means the starter
    /// died mid-start.
    Starting,
    Ready,
}

/// The recorded state. The keeper reads the top-level integer fields without a TOML parser, so
/// they stay plain `key = number` lines before any table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub(crate) version: u32,
    pub(crate) phase: Phase,
    pub(crate) pid: Option<i32>,
    pub(crate) start_time: Option<u64>,
    pub(crate) port: Option<u16>,
    pub(crate) stop_signal: i32,
    pub(crate) stop_timeout_ms: u64,
    pub(crate) group: bool,
    /// The process that started the service.
    pub(crate) starter: i32,
    pub(crate) starter_start_time: u64,
    /// Seconds since the epoch when it became ready.
    pub(crate) started_at: u64,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
}

/// Writes `state` to `path` atomically: a new 0600 file beside it, synced, then renamed over it.
/// Readers see the old file or the new one, never a part.
pub(crate) fn write(path: &Path, state: &StateFile) -> Result<(), SharedError> {
    let text = toml::to_string(state).map_err(|err| SharedError::BadStateFile {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    crate::atomic_file::write(path, text.as_bytes(), 0o600, Durability::Synced)
        .map_err(|err| SharedError::io("writing the state file", path, err))
}

/// Reads the state file at `path`; `None` if there is none. Links are not followed.
pub(crate) fn read(path: &Path) -> Result<Option<StateFile>, SharedError> {
    let mut text = String::new();
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    match opened {
        Ok(mut file) => file
            .read_to_string(&mut text)
            .map_err(|err| SharedError::io("reading the state file", path, err))?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(SharedError::io("opening the state file", path, err)),
    };
    let bad = |reason: String| SharedError::BadStateFile {
        path: path.to_owned(),
        reason,
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let versioned: Versioned = toml::from_str(&text).map_err(|err| bad(err.to_string()))?;
    if versioned.version != VERSION {
        return Err(bad(format!(
            "written in format version {}, this procwarden reads version {VERSION}",
            versioned.version
        )));
    }
    toml::from_str(&text)
        .map(Some)
        .map_err(|err| bad(err.to_string()))
}

/// Removes the state file; absent is fine. (After a failed start: its log stays, for reading.)
pub(crate) fn remove(path: &Path) -> Result<(), SharedError> {
    remove_files(&[path.to_owned()])
}

/// Removes the state file of a stopped service and its log beside it (`NAME.log`).
pub(crate) fn remove_stopped(path: &Path) -> Result<(), SharedError> {
    remove_files(&[path.to_owned(), path.with_extension("log")])
}

fn remove_files(files: &[std::path::PathBuf]) -> Result<(), SharedError> {
    for file in files {
        match fs::remove_file(file) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(SharedError::io(
                    "removing the state file",
                    file.clone(),
                    err,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        StateFile {
            version: VERSION,
            phase: Phase::Ready,
            pid: Some(4242),
            start_time: Some(77),
            port: Some(5432),
            stop_signal: 15,
            stop_timeout_ms: 2500,
            group: true,
            starter: 10,
            starter_start_time: 11,
            started_at: 1_700_000_000,
            metadata: BTreeMap::from([("pid".to_owned(), "not a number".to_owned())]),
        }
    }

    #[test]
    fn round_trips_and_the_keeper_can_read_it() {
        let dir = std::env::temp_dir().join(format!("procwarden-sf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.state");
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(sample()));
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let raw = fs::read(&path).unwrap();
        let recorded = crate::sys::keeper::parse_recorded(&raw).unwrap();
        assert_eq!((recorded.pid, recorded.start_time), (4242, 77));
        assert_eq!(
            (
                recorded.stop_signal,
                recorded.stop_timeout_ms,
                recorded.group
            ),
            (15, 2500, true)
        );
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_other_versions_and_links() {
        let dir = std::env::temp_dir().join(format!("procwarden-sf2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.state");
        fs::write(&path, "version = 9\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(read(&path).is_err(), "a link is not followed");
        fs::remove_dir_all(&dir).unwrap();
    }
}
