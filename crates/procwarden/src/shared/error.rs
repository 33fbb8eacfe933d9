//! Errors of the shared-service API.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// What can go wrong when sharing a service between processes. Each message says what and where.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedError {
    /// The service name is not usable.
    #[error("invalid service name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The state directory is not safe to use: owned by someone else, open to others, or a link.
    #[error("refusing state directory {path}: {reason}")]
    UnsafeStateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An IPC object at this service's key belongs to someone else or is open to others.
    #[error("refusing System V semaphore set {id} (key {key:#010x}) for service {name}: {reason}")]
    ForeignIpc {
        /// The service.
        name: String,
        /// The IPC key.
        key: i32,
        /// The set's id.
        id: i32,
        /// What is wrong with it.
        reason: String,
    },
    /// Every key this service may use is taken by other services' sets.
    #[error("no free IPC key for service {name}: all {probes} candidate keys are in use")]
    NoKey {
        /// The service.
        name: String,
        /// How many keys were tried.
        probes: u32,
    },
    /// The state file cannot be read as this version of procwarden writes it.
    #[error("state file {path}: {reason}")]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Starting (or recovering) the service failed; no reference and no lock are left behind.
    #[error("starting shared service {name} failed: {reason}")]
    StartFailed {
        /// The service.
        name: String,
        /// Why, as the start callback said.
        reason: String,
    },
    /// Stopping the service failed.
    #[error("stopping shared service {name} failed: {reason}")]
    StopFailed {
        /// The service.
        name: String,
        /// Why.
        reason: String,
    },
    /// An operating-system call failed.
    #[error("{context} ({path}): {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or object involved.
        path: PathBuf,
        /// The error.
        source: Arc<io::Error>,
    },
}

impl SharedError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}
