//! Shared services across real processes: one instance, a kernel-kept count, stops on last
//! release and on SIGKILL of the last user, no leaks.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use procwarden::process::{Pid, ProcessRef};
use procwarden::shared::{RefCounter, ServiceInfo, SharedError, SharedService, StateDir};

const BOUND: Duration = Duration::from_secs(60);

/// A private state directory, removed (with a check that nothing leaked) at the end.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("procwarden-shared-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir }
    }

    fn state_dir(&self) -> StateDir {
        StateDir::at(&self.dir).unwrap()
    }

    fn starts(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("starts"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the service is stopped and unused: no set, no state file.
    fn assert_clean(&self, name: &str) {
        let state_dir = self.state_dir();
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let set = RefCounter::find(&state_dir, name).unwrap();
            let state = self.dir.join(format!("{name}.state")).exists();
            if set.is_none() && !state {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "left behind: set {set:?}, state file {state}"
            );
            // The keeper acts on its own; there is no event in this process to wait on.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The service every test shares: a `sleep` in its own process group, reaped by a thread.
fn service(dir: StateDir, name: &str, starts: PathBuf, linger: Duration) -> SharedService {
    SharedService::builder(name)
        .state_dir(dir)
        .linger(linger)
        .stop_timeout(Duration::from_secs(5))
        .stop_group(true)
        .on_first_acquire(move || {
            let starts = starts.clone();
            async move {
                let mut child = std::process::Command::new("sleep")
                    .arg("600")
                    .process_group(0)
                    .spawn()?;
                let pid = child.id();
                std::thread::spawn(move || child.wait());
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&starts)?;
                writeln!(log, "{pid}")?;
                Ok(ServiceInfo::new(pid, 4000))
            }
        })
        .build()
        .unwrap()
}

use std::os::unix::process::CommandExt;

/// Runs as a user in a re-executed copy of this binary: acquires, prints "held PID", waits for a
/// line on stdin (or its end), releases, prints "released".
#[test]
fn user_role() {
    let Some(dir) = std::env::var_os("PROCWARDEN_TEST_USER_DIR") else {
        return;
    };
    let name = std::env::var("PROCWARDEN_TEST_USER_NAME").unwrap();
    let linger = Duration::from_millis(
        std::env::var("PROCWARDEN_TEST_LINGER_MS")
            .unwrap()
            .parse()
            .unwrap(),
    );
    let dir = PathBuf::from(dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let svc = service(
            StateDir::at(&dir).unwrap(),
            &name,
            dir.join("starts"),
            linger,
        );
        let handle = svc.acquire().await.unwrap();
        println!("held {}", handle.pid().unwrap());
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        handle.release().await.unwrap();
        println!("released");
    });
    std::process::exit(0);
}

struct User {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl User {
    fn spawn(scratch: &Scratch, name: &str, linger: Duration) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "user_role",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env("PROCWARDEN_TEST_USER_DIR", &scratch.dir)
            .env("PROCWARDEN_TEST_USER_NAME", name)
            .env("PROCWARDEN_TEST_LINGER_MS", linger.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line this user prints that starts with `word`, with the rest of it.
    fn expect(&mut self, word: &str) -> String {
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "user ended before {word:?}"
            );
            if let Some(rest) = line.trim().strip_prefix(word) {
                return rest.trim().to_owned();
            }
        }
    }

    fn held_pid(&mut self) -> Pid {
        self.expect("held").parse().unwrap()
    }

    fn release(&mut self) {
        self.stdin.take();
        self.expect("released");
        self.child.wait().unwrap();
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn service_process(pid: Pid) -> ProcessRef {
    ProcessRef::new(pid).expect("the service runs")
}

#[tokio::test]
async fn the_first_acquire_starts_and_the_last_release_stops() {
    let scratch = Scratch::new("basic");
    let svc = service(
        scratch.state_dir(),
        "basic",
        scratch.dir.join("starts"),
        Duration::ZERO,
    );
    let first = svc.acquire().await.unwrap();
    let second = svc.acquire().await.unwrap();
    assert_eq!(first.pid(), second.pid());
    assert_eq!(first.port(), Some(4000));
    assert_eq!(svc.holders().unwrap(), 2);
    let process = service_process(Pid::try_from(first.pid().unwrap()).unwrap());
    first.release().await.unwrap();
    assert!(process.is_alive(), "one holder is left");
    second.release().await.unwrap();
    assert!(!process.is_alive(), "stopped by the last release");
    assert_eq!(scratch.starts().len(), 1);
    scratch.assert_clean("basic");
}

#[test]
fn twenty_users_racing_from_zero_start_it_once() {
    let scratch = Scratch::new("race");
    let mut users: Vec<User> = (0..20)
        .map(|_| User::spawn(&scratch, "race", Duration::ZERO))
        .collect();
    let pids: Vec<Pid> = users.iter_mut().map(User::held_pid).collect();
    assert!(pids.iter().all(|&p| p == pids[0]), "one instance: {pids:?}");
    assert_eq!(scratch.starts().len(), 1, "exactly one start");
    let process = service_process(pids[0]);
    for user in &mut users {
        user.release();
    }
    assert!(
        process.wait_blocking(Some(BOUND)),
        "stopped after the last release"
    );
    scratch.assert_clean("race");
}

#[test]
fn sigkill_of_the_last_user_stops_it_with_nobody_acquiring() {
    let scratch = Scratch::new("killed");
    let linger = Duration::from_millis(200);
    let mut user = User::spawn(&scratch, "killed", linger);
    let process = service_process(user.held_pid());
    user.kill();
    // Stop timeout 5 s; the service stops on SIGTERM, so well within linger + stop timeout.
    assert!(process.wait_blocking(Some(BOUND)), "the keeper stopped it");
    scratch.assert_clean("killed");
}

#[test]
fn a_quick_next_user_finds_it_warm_within_the_linger() {
    let scratch = Scratch::new("warm");
    let linger = Duration::from_secs(2);
    let mut first = User::spawn(&scratch, "warm", linger);
    let pid = first.held_pid();
    first.release();
    let process = service_process(pid);
    assert!(process.is_alive(), "kept warm after the last user left");
    let mut second = User::spawn(&scratch, "warm", linger);
    assert_eq!(second.held_pid(), pid, "same instance");
    assert_eq!(scratch.starts().len(), 1);
    second.release();
    // Nobody comes back: the keeper stops it once the linger is over.
    assert!(process.wait_blocking(Some(BOUND)));
    scratch.assert_clean("warm");
}

#[tokio::test]
async fn a_failed_start_leaves_nothing_and_the_next_user_retries() {
    let scratch = Scratch::new("failed");
    let failing = SharedService::builder("failed")
        .state_dir(scratch.state_dir())
        .on_first_acquire(|| async { Err("the database refused to start".into()) })
        .build()
        .unwrap();
    let err = failing.acquire().await.unwrap_err();
    assert!(matches!(err, SharedError::StartFailed { .. }), "{err}");
    assert!(
        err.to_string().contains("the database refused to start"),
        "{err}"
    );
    assert_eq!(failing.holders().unwrap(), 0, "no reference left");
    let svc = service(
        scratch.state_dir(),
        "failed",
        scratch.dir.join("starts"),
        Duration::ZERO,
    );
    let handle = tokio::time::timeout(BOUND, svc.acquire())
        .await
        .expect("no lock left")
        .unwrap();
    assert_eq!(scratch.starts().len(), 1);
    handle.release().await.unwrap();
    scratch.assert_clean("failed");
}

#[tokio::test]
async fn a_dead_service_is_recovered_once() {
    let scratch = Scratch::new("recover");
    let svc = service(
        scratch.state_dir(),
        "recover",
        scratch.dir.join("starts"),
        Duration::ZERO,
    );
    let first = svc.acquire().await.unwrap();
    let old = service_process(Pid::try_from(first.pid().unwrap()).unwrap());
    old.kill().unwrap();
    assert!(old.wait_blocking(Some(BOUND)));
    let second = svc.acquire().await.unwrap();
    assert_ne!(second.pid(), first.pid(), "a new instance");
    assert_eq!(scratch.starts().len(), 2);
    first.release().await.unwrap();
    second.release().await.unwrap();
    scratch.assert_clean("recover");
}

#[test]
fn a_state_dir_owned_by_someone_else_is_refused() {
    let scratch = Scratch::new("foreign");
    std::fs::create_dir_all(&scratch.dir).unwrap();
    std::os::unix::fs::chown(&scratch.dir, Some(65534), None).unwrap();
    let err = StateDir::at(&scratch.dir).unwrap_err().to_string();
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(
        err.contains(&*scratch.dir.to_string_lossy()),
        "says where: {err}"
    );
    std::os::unix::fs::chown(&scratch.dir, Some(0), None).unwrap();
    std::fs::set_permissions(
        &scratch.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let err = StateDir::at(&scratch.dir).unwrap_err().to_string();
    assert!(err.contains("0755"), "{err}");
}

#[test]
fn bad_names_are_refused_clearly() {
    let scratch = Scratch::new("names");
    for name in ["", "../x", ".hidden", "a/b", &"x".repeat(65)] {
        let err = SharedService::builder(name)
            .state_dir(scratch.state_dir())
            .on_first_acquire(|| async { Ok(ServiceInfo::default()) })
            .build()
            .unwrap_err();
        assert!(
            matches!(err, SharedError::InvalidName { .. }),
            "{name:?}: {err}"
        );
    }
}
