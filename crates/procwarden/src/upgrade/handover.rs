//! The handover protocol: what one generation tells the next through its environment.
//!
//! Listeners use systemd's socket-activation variables, so a generation started by systemd
//! and one started by its predecessor read them the same way:
//!
//! - `LISTEN_PID`: the PID the descriptors are meant for (a child that is not this PID, such
//!   as a program this one runs, ignores them);
//! - `LISTEN_FDS`: how many descriptors, from 3 on;
//! - `LISTEN_FDNAMES`: their names, separated by `:`.
//!
//! Two more are procwarden's own:
//!
//! - `PROCWARDEN_UPGRADE_READY_FD`: a Unix stream socket on which the new generation reports
//!   ready (one byte, `R`) and the old one accepts the handover (one byte, `G`); it comes
//!   right after the listeners;
//! - `PROCWARDEN_UPGRADE_PARENT`: the PID of the generation that started this one.

use std::ffi::{OsStr, OsString};

use super::UpgradeError;

/// `LISTEN_PID`.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// `LISTEN_FDS`.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// `LISTEN_FDNAMES`.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The descriptor the new generation reports ready on.
pub const READY_FD: &str = "PROCWARDEN_UPGRADE_READY_FD";
/// The PID of the generation that started this one.
pub const PARENT: &str = "PROCWARDEN_UPGRADE_PARENT";

/// The byte a new generation writes when it is ready.
pub(crate) const READY_BYTE: u8 = b'R';
/// The byte the old generation answers once it accepts the handover.
pub(crate) const GO_BYTE: u8 = b'G';

/// The name systemd gives a socket that has none.
const UNNAMED: &str = "unknown";

/// What the environment hands this process: the names of the descriptors at 3, 4, …
///
/// `None` when there is nothing for this process: no `LISTEN_FDS`, or a `LISTEN_PID` that is
/// not `pid` (they were meant for a parent).
pub(crate) fn parse_listen(
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    names: Option<&OsStr>,
    pid: u32,
) -> Result<Option<Vec<String>>, UpgradeError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let listen_pid = number(LISTEN_PID, listen_pid)?;
    if listen_pid != u64::from(pid) {
        return Ok(None);
    }
    let count = usize::try_from(number(LISTEN_FDS, listen_fds)?).unwrap_or(usize::MAX);
    if count > 1024 {
        return Err(bad(LISTEN_FDS, listen_fds, "more than 1024 descriptors"));
    }
    let names = match names {
        None => vec![UNNAMED.to_owned(); count],
        Some(names) => {
            let text = names
                .to_str()
                .ok_or_else(|| bad(LISTEN_FDNAMES, names, "it is not UTF-8"))?;
            let names: Vec<String> = text.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(bad(
                    LISTEN_FDNAMES,
                    OsStr::new(text),
                    &format!("it has {} names for {count} descriptors", names.len()),
                ));
            }
            names
        }
    };
    Ok(Some(names))
}

/// The descriptor named by `PROCWARDEN_UPGRADE_READY_FD`, if any.
pub(crate) fn parse_ready_fd(value: Option<&OsStr>) -> Result<Option<i32>, UpgradeError> {
    value
        .map(|value| {
            let fd = number(READY_FD, value)?;
            i32::try_from(fd).map_err(|_| bad(READY_FD, value, "out of range"))
        })
        .transpose()
}

/// The environment for the next generation: this one's, less every protocol variable, plus
/// the handover for `names` (at 3, 4, …), the readiness descriptor after them, and our PID.
/// `LISTEN_PID` is not among them: the child writes its own.
pub(crate) fn child_env(
    inherited: impl Iterator<Item = (OsString, OsString)>,
    names: &[String],
    parent: u32,
) -> Vec<OsString> {
    let protocol = [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, READY_FD, PARENT];
    let mut env: Vec<OsString> = inherited
        .filter(|(key, _)| !protocol.iter().any(|p| key == p))
        .map(|(key, value)| entry(&key, &value))
        .collect();
    let first = crate::sys::exec::FIRST_FD;
    let ready_fd = first + i32::try_from(names.len()).unwrap_or(i32::MAX);
    env.push(entry(LISTEN_FDS, names.len().to_string()));
    env.push(entry(LISTEN_FDNAMES, names.join(":")));
    env.push(entry(READY_FD, ready_fd.to_string()));
    env.push(entry(PARENT, parent.to_string()));
    env
}

fn entry(key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> OsString {
    let mut entry = key.as_ref().to_owned();
    entry.push("=");
    entry.push(value);
    entry
}

fn number(variable: &'static str, value: &OsStr) -> Result<u64, UpgradeError> {
    value
        .to_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| bad(variable, value, "not a number"))
}

fn bad(variable: &'static str, value: &OsStr, reason: &str) -> UpgradeError {
    UpgradeError::BadEnvironment {
        variable,
        value: value.to_string_lossy().into_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn reads_names_meant_for_this_process() {
        let names = parse_listen(os("42"), os("2"), os("http:admin"), 42).unwrap();
        assert_eq!(names.unwrap(), ["http", "admin"]);
        let unnamed = parse_listen(os("42"), os("1"), None, 42).unwrap();
        assert_eq!(unnamed.unwrap(), ["unknown"]);
    }

    #[test]
    fn ignores_descriptors_meant_for_another_process() {
        assert!(parse_listen(os("41"), os("2"), None, 42).unwrap().is_none());
        assert!(parse_listen(None, os("2"), None, 42).unwrap().is_none());
    }

    #[test]
    fn says_what_is_wrong_and_where() {
        let err = parse_listen(os("42"), os("two"), None, 42).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
        let err = parse_listen(os("42"), os("2"), os("http"), 42).unwrap_err();
        assert!(err.to_string().contains("1 names for 2"), "{err}");
    }

    #[test]
    fn replaces_the_protocol_variables() {
        let inherited = [("PATH", "/bin"), ("LISTEN_FDS", "9"), ("LISTEN_PID", "1")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = child_env(inherited.into_iter(), &["http".into(), "dns".into()], 7);
        let env: Vec<_> = env.iter().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(
            env,
            [
                "PATH=/bin",
                "LISTEN_FDS=2",
                "LISTEN_FDNAMES=http:dns",
                "PROCWARDEN_UPGRADE_READY_FD=5",
                "PROCWARDEN_UPGRADE_PARENT=7"
            ]
        );
    }
}
