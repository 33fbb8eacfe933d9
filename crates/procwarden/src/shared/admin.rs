//! Looking at and stopping the shared services of a state directory from outside: what
//! `procwarden status` and `procwarden stop` do.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::counter::RefCounter;
use super::service::{Attempt, Inner, info_of, process_of, stop_recorded};
use super::state_file::{self, Phase};
use super::{ServiceInfo, SharedError, StateDir};

/// Where a shared service is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    /// Its first user is starting it.
    Starting,
    /// Running and held.
    Running,
    /// Running, held by nobody: waiting out its linger before the keeper stops it.
    Idle,
    /// Its process is gone; the next user will start it again.
    Dead,
}

impl ServiceState {
    /// The state in lower case, as `procwarden status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Idle => "idle",
            Self::Dead => "dead",
        }
    }
}

/// One shared service, as `procwarden status` shows it.
#[derive(Clone, Debug)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// What its starter recorded.
    pub info: ServiceInfo,
    /// How many handles are live.
    pub holders: u32,
    /// How long since it became ready.
    pub uptime: Option<Duration>,
    /// Where it is in its life.
    pub state: ServiceState,
}

/// The shared services recorded in `dir`, by name.
pub fn list(dir: &StateDir) -> Result<Vec<ServiceStatus>, SharedError> {
    let entries = std::fs::read_dir(dir.path())
        .map_err(|err| SharedError::io("listing the state directory", dir.path(), err))?;
    let mut services = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|err| SharedError::io("listing the state directory", dir.path(), err))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".state")) else {
            continue;
        };
        if crate::name::check(name).is_err() {
            continue;
        }
        let Some(state) = state_file::read(&entry.path())? else {
            continue;
        };
        let holders = match RefCounter::find(dir, name)? {
            Some(counter) => counter.count()?,
            None => 0,
        };
        let alive = process_of(&state).is_some_and(|p| p.is_alive()) || state.pid.is_none();
        let service_state = match (state.phase, alive, holders) {
            (Phase::Starting, true, _) => ServiceState::Starting,
            (_, false, _) => ServiceState::Dead,
            (Phase::Ready, true, 0) => ServiceState::Idle,
            (Phase::Ready, true, _) => ServiceState::Running,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        services.push(ServiceStatus {
            name: name.to_owned(),
            info: info_of(&state),
            holders,
            uptime: (state.phase == Phase::Ready)
                .then(|| Duration::from_secs(now.saturating_sub(state.started_at))),
            state: service_state,
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
}

/// Stops the shared service `name` now, whoever holds it, and removes its state and IPC
/// objects or lock files, whichever backend it uses. Holders keep running; their handles' releases then find nothing to release.
/// Returns whether there was anything to stop.
pub async fn stop_now(dir: &StateDir, name: &str) -> Result<bool, SharedError> {
    let Some(counter) = RefCounter::find(dir, name)? else {
        let path = dir.state_file(name);
        let existed = state_file::read(&path)?.is_some();
        state_file::remove_stopped(&path)?;
        return Ok(existed);
    };
    let counter = Arc::new(counter);
    let guard = match Inner::lock(&counter, false).await? {
        Attempt::Done(guard) => guard,
        // Its keeper removed it meanwhile: stopped already.
        Attempt::Retry => return Ok(true),
    };
    let path = dir.state_file(name);
    if let Some(state) = state_file::read(&path)? {
        stop_recorded(name, &state).await?;
    }
    state_file::remove_stopped(&path)?;
    guard
        .remove_set()
        .map_err(|err| counter.error("removing the semaphore set", err))?;
    Ok(true)
}
