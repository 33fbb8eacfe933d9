//! `procwarden share`, `status` and `stop`, run as a user would, each test in its own
//! `PROCWARDEN_STATE_DIR`.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use procwarden::process::{Pid, ProcessRef};
use procwarden::shared::{RefCounter, StateDir};

mod common;
use common::{stderr, stdout};

const BOUND: Duration = Duration::from_secs(60);

struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("procwarden-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir }
    }

    fn procwarden(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_procwarden"));
        command.env("PROCWARDEN_STATE_DIR", &self.dir);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.procwarden().args(args).output().unwrap()
    }

    /// Waits until `name` is stopped and unused: no semaphore set, no state file.
    fn assert_clean(&self, name: &str) {
        let deadline = Instant::now() + BOUND;
        loop {
            let dir = StateDir::at(&self.dir).unwrap();
            let set = RefCounter::find(&dir, name).unwrap();
            let state = self.dir.join(format!("{name}.state")).exists();
            if set.is_none() && !state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: set {set:?}, state file {state}"
            );
            // The keeper acts in its own process; nothing here can wait on it.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_client_gets_the_service_and_its_exit_status_is_returned() {
    let scratch = Scratch::new("basic");
    let output = scratch.run(&[
        "share",
        "db",
        "--start",
        "exec sleep 600",
        "--",
        "sh",
        "-c",
        "echo $PROCWARDEN_SERVICE_NAME $PROCWARDEN_SERVICE_PID; exit 7",
    ]);
    assert_eq!(output.status.code(), Some(7), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    let mut words = text.split_whitespace();
    assert_eq!(words.next(), Some("db"));
    let pid: Pid = words.next().unwrap().parse().unwrap();
    // The last (only) holder left: the service was stopped before `share` returned.
    assert!(ProcessRef::new(pid).map_or(true, |p| !p.is_alive()));
    scratch.assert_clean("db");
}

#[test]
fn a_client_killed_by_a_signal_exits_128_plus_n() {
    let scratch = Scratch::new("signal");
    let output = scratch.run(&[
        "share",
        "db",
        "--start",
        "exec sleep 600",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]);
    assert_eq!(
        output.status.code(),
        Some(128 + 15),
        "stderr: {}",
        stderr(&output)
    );
    scratch.assert_clean("db");
}

#[test]
fn the_port_of_a_tcp_probe_reaches_the_client() {
    let scratch = Scratch::new("port");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // python3 is part of the machine image; it is the simplest listener at hand.
    let start = format!(
        "exec python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {port})); s.listen(); time.sleep(600)'"
    );
    let ready = format!("tcp:127.0.0.1:{port}");
    let output = scratch.run(&[
        "share",
        "web",
        "--start",
        &start,
        "--ready",
        &ready,
        "--",
        "sh",
        "-c",
        "echo $PROCWARDEN_SERVICE_PORT",
    ]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output).trim(), port.to_string());
    scratch.assert_clean("web");
}

#[test]
fn killing_share_releases_its_hold_and_ends_its_client() {
    let scratch = Scratch::new("killed");
    let mut share = scratch
        .procwarden()
        .args([
            "share",
            "db",
            "--start",
            "exec sleep 600",
            "--linger",
            "100ms",
            "--",
            "sh",
            "-c",
            "echo $$ $PROCWARDEN_SERVICE_PID; exec sleep 600",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(share.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut pids = line
        .split_whitespace()
        .map(|w| ProcessRef::new(w.parse().unwrap()).unwrap());
    let (client, service) = (pids.next().unwrap(), pids.next().unwrap());
    share.kill().unwrap(); // SIGKILL: no cleanup of its own
    share.wait().unwrap();
    assert!(
        client.wait_blocking(Some(BOUND)),
        "the client died with share"
    );
    assert!(
        service.wait_blocking(Some(BOUND)),
        "the keeper stopped the service"
    );
    scratch.assert_clean("db");
}

#[test]
fn status_and_stop_see_a_held_service() {
    let scratch = Scratch::new("status");
    let mut share = scratch
        .procwarden()
        .args([
            "share",
            "db",
            "--start",
            "exec sleep 600",
            "--",
            "sh",
            "-c",
            "echo held; exec sleep 600",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(share.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");

    let json = scratch.run(&["status", "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[0]["name"], "db");
    assert_eq!(rows[0]["holders"], 1);
    assert_eq!(rows[0]["state"], "running");
    let service =
        ProcessRef::new(Pid::try_from(rows[0]["pid"].as_u64().unwrap()).unwrap()).unwrap();
    let table = stdout(&scratch.run(&["status"]));
    assert!(
        table.starts_with("NAME") && table.contains("db") && table.contains("running"),
        "{table}"
    );

    let stopped = scratch.run(&["stop", "db"]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    assert!(!service.is_alive());
    scratch.assert_clean("db");
    assert!(stdout(&scratch.run(&["status"])).contains("no shared services"));
    share.kill().unwrap();
    share.wait().unwrap();
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let scratch = Scratch::new("usage");
    for args in [
        &[
            "share", "db", "--start", "true", "--linger", "5", "--", "true",
        ][..],
        &["share", "../db", "--start", "true", "--", "true"],
        &[
            "share",
            "db",
            "--start",
            "true",
            "--stop-signal",
            "SIGNOPE",
            "--",
            "true",
        ],
        &[
            "share", "db", "--start", "true", "--ready", "http://x", "--", "true",
        ],
        &["share", "db", "--start", "true"],
    ] {
        let output = scratch.run(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stderr(&output);
        assert!(
            text.starts_with("procwarden: ") || text.starts_with("error: "),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn failures_at_run_time_exit_1_with_one_line() {
    let scratch = Scratch::new("runtime");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ready = format!("tcp:127.0.0.1:{port}");
    let not_found = scratch.run(&[
        "share",
        "db",
        "--start",
        "no-such-program-procwarden",
        "--ready",
        &ready,
        "--",
        "true",
    ]);
    assert_eq!(not_found.status.code(), Some(1));
    let text = stderr(&not_found);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("command not found") && text.contains("db.log"),
        "{text}"
    );
    let never = scratch.run(&[
        "share",
        "db",
        "--start",
        "exec sleep 600",
        "--ready",
        &ready,
        "--ready-timeout",
        "300ms",
        "--",
        "true",
    ]);
    assert_eq!(never.status.code(), Some(1));
    assert!(
        stderr(&never).contains("not ready within 300ms"),
        "{}",
        stderr(&never)
    );
    scratch.assert_clean("db");
}
