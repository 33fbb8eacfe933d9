//! Where shared-service state lives, and the checks that keep it private.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::SharedError;

/// The environment variable that names the state directory.
pub const STATE_DIR_ENV: &str = "PROCWARDEN_STATE_DIR";

/// A directory for shared-service state: owned by this user, mode 0700, not a symbolic link.
///
/// Chosen by [`StateDir::from_env`]: `$PROCWARDEN_STATE_DIR`, else
/// `$XDG_RUNTIME_DIR/procwarden`, else `/tmp/procwarden-$UID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The directory the environment names, created if missing.
    pub fn from_env() -> Result<Self, SharedError> {
        Self::at(default_path())
    }

    /// The directory at `path`, created (mode 0700) if missing. Refused when it is a symbolic
    /// link, is owned by another user, or is open to group or others.
    pub fn at(path: impl Into<PathBuf>) -> Result<Self, SharedError> {
        let path = path.into();
        let refuse = |reason: String| SharedError::UnsafeStateDir {
            path: path.clone(),
            reason,
        };
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
        {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(SharedError::io("creating the state directory", &path, err)),
        }
        let meta = fs::symlink_metadata(&path)
            .map_err(|err| SharedError::io("reading the state directory", &path, err))?;
        if meta.file_type().is_symlink() {
            return Err(refuse("it is a symbolic link".into()));
        }
        if !meta.is_dir() {
            return Err(refuse("it is not a directory".into()));
        }
        let me = rustix::process::getuid().as_raw();
        if meta.uid() != me {
            return Err(refuse(format!(
                "it is owned by uid {}, not by uid {me}",
                meta.uid()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "its mode is {mode:04o}; it must not be open to group or others (chmod 700)"
            )));
        }
        // Keys are derived from the path, so every process must see the same one.
        let path = path
            .canonicalize()
            .map_err(|err| SharedError::io("resolving the state directory", &path, err))?;
        Ok(Self { path })
    }

    /// The directory's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn state_file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.state"))
    }

    /// Where a service started by a command writes its output.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.log"))
    }
}

fn default_path() -> PathBuf {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return dir.into();
    }
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&runtime).join("procwarden");
    }
    let uid = rustix::process::getuid().as_raw();
    PathBuf::from(format!("/tmp/procwarden-{uid}"))
}
