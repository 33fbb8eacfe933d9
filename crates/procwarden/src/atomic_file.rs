//! Files replaced whole: readers see the old content or the new, never a part.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Whether a replaced file must survive a crash of the machine, or only of processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Synced to disk before the rename: after a power loss the file holds the old content or
    /// the new.
    Synced,
    /// Not synced: the rename alone keeps readers and crashing processes from seeing a part,
    /// but a power loss may leave the file empty. For files that mean nothing after a reboot
    /// (a PID), where a sync would only cost the caller a disk flush.
    Volatile,
}

/// Writes `contents` to `path` atomically: a new file with `mode` beside it, synced if
/// `durability` asks for it, then renamed over it. The temporary file is removed if anything
/// fails.
pub(crate) fn write(
    path: &Path,
    contents: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    let mut temp_name = path.file_name().unwrap_or_default().to_owned();
    temp_name.push(format!(".tmp.{}.{}", std::process::id(), fastrand::u64(..)));
    let temp = path.with_file_name(temp_name);
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        file.write_all(contents)?;
        if durability == Durability::Synced {
            file.sync_all()?;
        }
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "procwarden-atomic-file-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir(&dir).expect("a fresh temp dir");
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("readable")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8")
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn both_durabilities_replace_the_file_whole_and_leave_nothing_beside_it() {
        let dir = temp_dir();
        let path = dir.join("server.pid");
        for (durability, contents) in [
            (Durability::Synced, "1\n"),
            (Durability::Volatile, "123456\n"),
            (Durability::Synced, "7\n"),
        ] {
            write(&path, contents.as_bytes(), 0o644, durability).expect("written");
            assert_eq!(fs::read_to_string(&path).expect("readable"), contents);
            assert_eq!(entries(&dir), ["server.pid"]);
        }
        fs::remove_dir_all(&dir).expect("removed");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_one() {
        let dir = temp_dir();
        let path = dir.join("server.pid");
        write(&path, b"1\n", 0o644, Durability::Volatile).expect("written");
        // A directory where the file should go: the rename fails after the temp file exists.
        let blocked = dir.join("blocked");
        fs::create_dir(&blocked).expect("a directory");
        fs::write(blocked.join("inside"), b"x").expect("a file in it");
        let err = write(&blocked, b"2\n", 0o644, Durability::Volatile).expect_err("refused");
        assert_ne!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert_eq!(entries(&dir), ["blocked", "server.pid"]);
        assert_eq!(fs::read_to_string(&path).expect("readable"), "1\n");
        fs::remove_dir_all(&dir).expect("removed");
    }
}
