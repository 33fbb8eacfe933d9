//! The control socket: how `procwarden upgrade` asks a running generation to upgrade.
//!
//! Each generation listens on `<state dir>/upgrade/<PID>.sock` (the state directory is
//! `PROCWARDEN_STATE_DIR`'s, private to the user). The protocol is one line each way:
//! the client sends `upgrade`, the server answers `ok <new PID>` or `err <reason>` once the
//! upgrade has an outcome.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{UpgradeError, Upgraded};
use crate::shared::StateDir;

/// The longest request line read; anything longer is not a request.
const MAX_LINE: u64 = 64;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the generation with `pid` listens for control requests, in `state_dir`.
pub fn control_socket_path(state_dir: &StateDir, pid: u32) -> PathBuf {
    state_dir.path().join("upgrade").join(format!("{pid}.sock"))
}

/// Binds this generation's control socket, replacing a stale file a previous process with the
/// same PID left behind.
pub(crate) fn bind(state_dir: &StateDir) -> Result<(UnixListener, PathBuf), UpgradeError> {
    let path = control_socket_path(state_dir, std::process::id());
    let dir = path
        .parent()
        .expect("the socket is inside the upgrade directory");
    StateDir::at(dir).map_err(|err| UpgradeError::Control {
        path: dir.to_owned(),
        reason: err.to_string(),
    })?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(UpgradeError::io(
                "removing the stale control socket",
                &path,
                err,
            ));
        }
    }
    let listener = UnixListener::bind(&path)
        .map_err(|err| UpgradeError::io("binding the control socket", &path, err))?;
    Ok((listener, path))
}

/// A request read from a client, or `None` if it sent nothing usable in time.
pub(crate) async fn read_request(stream: &mut UnixStream) -> Option<String> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream).take(MAX_LINE);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    matches!(read, Ok(Ok(n)) if n > 0).then(|| line.trim().to_owned())
}

/// Answers a client with an upgrade's outcome.
pub(crate) async fn answer(stream: &mut UnixStream, outcome: &Result<Upgraded, UpgradeError>) {
    let line = match outcome {
        Ok(upgraded) => format!("ok {}\n", upgraded.pid),
        Err(err) => format!("err {}\n", err.to_string().replace('\n', " ")),
    };
    let _ = stream.write_all(line.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Asks the generation listening at `socket` to upgrade, and waits for the outcome.
///
/// `pid` is the PID of that generation, for messages. Put a timeout around it if the caller
/// cannot wait for the generation's readiness deadline (and probation).
pub async fn request_upgrade(socket: &Path, pid: u32) -> Result<Upgraded, UpgradeError> {
    let control = |reason: String| UpgradeError::Control {
        path: socket.to_owned(),
        reason,
    };
    let mut stream = UnixStream::connect(socket).await.map_err(|err| {
        control(format!(
            "cannot connect ({err}); is PID {pid} running with procwarden's Upgrader, with the same PROCWARDEN_STATE_DIR?"
        ))
    })?;
    stream
        .write_all(b"upgrade\n")
        .await
        .map_err(|err| control(format!("sending the request: {err}")))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(|err| control(format!("reading the answer: {err}")))?;
    parse_answer(line.trim_end(), pid).map_err(control)?
}

fn parse_answer(line: &str, pid: u32) -> Result<Result<Upgraded, UpgradeError>, String> {
    if let Some(rest) = line.strip_prefix("ok ") {
        let new_pid = rest
            .parse()
            .map_err(|_| format!("unexpected answer {line:?}"))?;
        return Ok(Ok(Upgraded { pid: new_pid }));
    }
    if let Some(message) = line.strip_prefix("err ") {
        return Ok(Err(UpgradeError::Remote {
            pid,
            message: message.to_owned(),
        }));
    }
    if line.is_empty() {
        return Err(format!(
            "PID {pid} closed the connection without an outcome"
        ));
    }
    Err(format!("unexpected answer {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_outcomes_and_refuses_the_rest() {
        assert_eq!(parse_answer("ok 42", 7).unwrap().unwrap().pid, 42);
        let err = parse_answer("err it crashed", 7).unwrap().unwrap_err();
        assert_eq!(err.to_string(), "PID 7: it crashed");
        assert!(
            parse_answer("", 7)
                .unwrap_err()
                .contains("without an outcome")
        );
        assert!(parse_answer("maybe", 7).is_err());
    }
}
