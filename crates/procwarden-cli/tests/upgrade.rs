//! `procwarden upgrade` against the real example server (`procwarden`'s `upgrade_server`
//! example), each test in its own directory with its own `PROCWARDEN_STATE_DIR`.
//!
//! The server is started from a symbolic link in the test's directory, so that a test can put
//! another "new binary" (a script) behind that path before it asks for an upgrade, as a deploy
//! would. Every process a test started — the first generation and each successor named in its
//! pid file — is killed and reaped when the test ends, passing or failing.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use procwarden::process::{Pid, ProcessRef};

mod common;
use common::{stderr, stdout};

/// The longest any one wait in these tests may take.
const BOUND: Duration = Duration::from_secs(60);

/// The example server, built once per test run (a no-op when it is up to date).
///
/// `cargo test -p procwarden-cli` does not build another package's examples, so this asks
/// cargo for it, in the profile these tests were built in; cargo has released its lock on the
/// target directory by the time tests run.
fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let mut command = Command::new(env!("CARGO"));
        command.args([
            "build",
            "--quiet",
            "-p",
            "procwarden",
            "--example",
            "upgrade_server",
            "--message-format=json",
        ]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let output = command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "building the upgrade_server example failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| message["target"]["name"] == "upgrade_server")
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the upgrade_server executable")
    })
}

/// One test's directory: the server's link, its pid file, its state directory and its log.
struct Scratch {
    dir: PathBuf,
    port: u16,
    first: Option<Child>,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "procwarden-cli-upgrade-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            dir,
            port,
            first: None,
        }
    }

    fn state_dir(&self) -> PathBuf {
        // Created by procwarden itself, mode 0700, as a state directory must be.
        self.dir.join("state")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("server.pid")
    }

    /// The path the server runs from: a link to the example, or whatever a test put there.
    fn program(&self) -> PathBuf {
        self.dir.join("upgrade_server")
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the first generation from [`program`](Self::program) and waits until it serves.
    fn start(&mut self, extra: &[&str]) -> u32 {
        let real = server_binary();
        let _ = std::fs::remove_file(self.program());
        std::os::unix::fs::symlink(real, self.program()).unwrap();
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(self.program())
            .args(["--listen", &self.addr().to_string(), "--pid-file"])
            .arg(self.pid_file())
            .args(extra)
            .env("PROCWARDEN_STATE_DIR", self.state_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.first = Some(child);
        let deadline = Instant::now() + BOUND;
        loop {
            if self.pid_in_file() == Some(pid) && self.get().ok() == Some(pid) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Puts a shell script at the server's path: the "new binary" of the next upgrade.
    fn deploy_script(&self, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let script = self.dir.join("next.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Replaced by rename, as a deploy does: the path never goes missing.
        let link = self.dir.join("next.link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&script, &link).unwrap();
        std::fs::rename(&link, self.program()).unwrap();
    }

    fn pid_in_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// One request on a new connection; the PID in the answer.
    fn get(&self) -> std::io::Result<u32> {
        let mut stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let bad = || std::io::Error::other(format!("unexpected response {response:?}"));
        if !response.starts_with("HTTP/1.1 200 ") {
            return Err(bad());
        }
        let body = response.split("\r\n\r\n").nth(1).ok_or_else(bad)?;
        body.trim()
            .strip_prefix("pid ")
            .and_then(|pid| pid.parse().ok())
            .ok_or_else(bad)
    }

    fn procwarden(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_procwarden"))
            .args(args)
            .env("PROCWARDEN_STATE_DIR", self.state_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn upgrade(&self, extra: &[&str]) -> Output {
        let pid_file = self.pid_file();
        let mut args = vec!["upgrade", "--pid-file", pid_file.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.procwarden(&args)
    }

    /// Waits until the first generation has exited, and reaps it.
    fn wait_first_exit(&mut self) {
        let child = self.first.as_mut().expect("started");
        // Not reaped until here, so the reference is to this child, exited or not.
        let process = ProcessRef::from_child(child).unwrap();
        assert!(
            process.wait_blocking(Some(BOUND)),
            "the old generation did not exit"
        );
        child.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A successor named in our pid file runs our link; anything else is not ours.
        if let Some(pid) = self.pid_in_file()
            && let Ok(pid) = Pid::try_from(pid)
            && let Ok(process) = ProcessRef::new(pid)
            && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let needle = format!("PROCWARDEN_STATE_DIR={}", self.state_dir().display());
                env.split(|b| *b == 0).any(|var| var == needle.as_bytes())
            })
        {
            let _ = process.kill();
            process.wait_blocking(Some(BOUND));
        }
        if let Some(mut child) = self.first.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_ready_new_generation_takes_over_and_its_pid_is_printed() {
    let mut scratch = Scratch::new("ok");
    let old = scratch.start(&[]);
    let output = scratch.upgrade(&["--timeout", "30s"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}\nserver log:\n{}",
        stderr(&output),
        scratch.log()
    );
    let new = scratch
        .pid_in_file()
        .expect("the pid file names the new generation");
    assert_ne!(new, old);
    assert_eq!(stdout(&output), format!("upgraded: PID {old} -> {new}\n"));
    assert!(output.stderr.is_empty(), "{}", stderr(&output));
    assert_eq!(scratch.get().unwrap(), new, "the new generation answers");
    scratch.wait_first_exit();
    assert_eq!(scratch.get().unwrap(), new);
}

#[test]
fn a_failing_new_generation_is_rolled_back_and_the_reason_printed() {
    let mut scratch = Scratch::new("rollback");
    let old = scratch.start(&[]);
    scratch.deploy_script("exit 1");
    let output = scratch.upgrade(&[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{}", stdout(&output));
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "expected one line:\n{text}");
    assert!(text.starts_with("procwarden: error: "), "{text}");
    assert!(
        text.contains(&format!("PID {old}"))
            && text.contains("exited with status 1 before it was ready"),
        "{text}"
    );
    assert_eq!(scratch.pid_in_file(), Some(old));
    assert_eq!(
        scratch.get().unwrap(),
        old,
        "the old generation still serves"
    );
}

#[test]
fn no_outcome_within_the_timeout_says_the_upgrade_may_still_complete() {
    let mut scratch = Scratch::new("timeout");
    let old = scratch.start(&[]);
    let real = server_binary().display().to_string();
    scratch.deploy_script(&format!("exec '{real}' \"$@\" --ready-delay 3000"));
    let started = Instant::now();
    let output = scratch.upgrade(&["--timeout", "200ms"]);
    // It gave up at its timeout, long before the new generation could be ready.
    assert!(started.elapsed() < Duration::from_millis(2_500));
    assert_eq!(scratch.pid_in_file(), Some(old));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "expected one line:\n{text}");
    assert!(
        text.contains("no outcome") && text.contains("200ms") && text.contains("may still"),
        "{text}"
    );
    // It does complete, later.
    let deadline = Instant::now() + BOUND;
    while scratch.pid_in_file() == Some(old) {
        assert!(Instant::now() < deadline, "the upgrade never completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    scratch.wait_first_exit();
    assert_eq!(scratch.get().unwrap(), scratch.pid_in_file().unwrap());
}

#[test]
fn a_bad_pid_file_is_named_in_the_error() {
    let scratch = Scratch::new("badfile");
    let path = scratch.pid_file();
    let shown = path.display().to_string();
    let check = |what: &str, says: &[&str]| {
        let output = scratch.upgrade(&[]);
        assert_eq!(output.status.code(), Some(1), "{what}: {output:?}");
        let text = stderr(&output);
        assert_eq!(
            text.lines().count(),
            1,
            "{what}: expected one line:\n{text}"
        );
        assert!(text.starts_with("procwarden: error: "), "{what}: {text}");
        for part in says {
            assert!(
                text.contains(part),
                "{what}: {text:?} does not say {part:?}"
            );
        }
    };
    check("missing", &[&shown, "No such file"]);
    std::fs::write(&path, "twelve\n").unwrap();
    check("not a number", &[&shown, "\"twelve\" is not a PID"]);

    // A PID that ran once and is gone now.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(&path, format!("{}\n", gone.id())).unwrap();
    check("stale", &[&shown, "is not running"]);

    // A live process that does not run an Upgrader: this test.
    std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
    let socket = scratch
        .state_dir()
        .canonicalize()
        .unwrap_or_else(|_| scratch.state_dir())
        .join("upgrade")
        .join(format!("{}.sock", std::process::id()));
    check(
        "no socket",
        &[
            &shown,
            "no upgrade control socket",
            &socket.display().to_string(),
        ],
    );
}

#[test]
fn a_bad_timeout_or_a_missing_pid_file_flag_is_a_usage_error() {
    let scratch = Scratch::new("usage");
    for args in [
        &["upgrade", "--pid-file", "x.pid", "--timeout", "5"][..],
        &["upgrade", "--pid-file", "x.pid", "--timeout", "1.5s"],
        &["upgrade", "--pid-file", "x.pid", "--timeout", "0"],
        &["upgrade", "--pid-file", "x.pid", "--timeout"],
        &["upgrade", "--timeout", "5s"],
    ] {
        let output = scratch.procwarden(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let text = stderr(&output);
        assert_eq!(
            text.lines().count(),
            1,
            "{args:?}: expected one line:\n{text}"
        );
        assert!(text.starts_with("procwarden: error:"), "{args:?}: {text}");
        assert!(output.stdout.is_empty(), "{args:?}: {output:?}");
    }
}
