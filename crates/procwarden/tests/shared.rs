//! Shared services across real processes: one instance, a kernel-kept count, stops on last
//! release and on SIGKILL of the last user, no leaks. Every scenario runs once per backend:
//! `sysv::…` and `files::…`.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use procwarden::process::{Pid, ProcessRef};
use procwarden::shared::{
    BACKEND_ENV, Backend, RefCounter, ServiceInfo, SharedError, SharedService, StateDir,
};

const BOUND: Duration = Duration::from_secs(60);

/// Runs each scenario once per backend, as `sysv::NAME` and `files::NAME`.
macro_rules! on_each_backend {
    ($($kind:ident $test:ident),* $(,)?) => {
        on_each_backend!(@backend sysv, Backend::SystemV; $($kind $test),*);
        on_each_backend!(@backend files, Backend::FileLocks; $($kind $test),*);
    };
    (@backend $module:ident, $backend:expr; $($kind:ident $test:ident),*) => {
        mod $module {
            use super::*;
            $(
                #[test]
                fn $test() {
                    on_each_backend!(@run $kind super::$test($backend));
                }
            )*
        }
    };
    (@run sync $call:expr) => {
        $call
    };
    (@run async $call:expr) => {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on($call)
    };
}

on_each_backend! {
    async the_first_acquire_starts_and_the_last_release_stops,
    sync twenty_users_racing_from_zero_start_it_once,
    sync sigkill_of_the_last_user_stops_it_with_nobody_acquiring,
    sync a_quick_next_user_finds_it_warm_within_the_linger,
    sync a_user_back_within_the_linger_gets_a_whole_linger_again,
    sync the_count_follows_holders_that_die,
    async a_failed_start_leaves_nothing_and_the_next_user_retries,
    async a_dead_service_is_recovered_once,
    async a_command_is_ready_when_its_port_answers,
    async a_command_that_exits_or_is_never_ready_fails_and_leaves_nothing,
    async sigkill_of_the_starting_user_lets_the_next_one_start_it_once,
    async an_acquire_racing_a_slow_stop_waits_for_it_then_starts_fresh,
    async stop_now_stops_a_held_service_and_cleans_up,
}

/// The value of [`BACKEND_ENV`] that selects `backend` in a child process.
fn env_value(backend: Backend) -> &'static str {
    match backend {
        Backend::SystemV => "sysv",
        _ => "files",
    }
}

/// A private state directory, removed (with a check that nothing leaked) at the end.
struct Scratch {
    dir: PathBuf,
    backend: Backend,
}

impl Scratch {
    fn new(test: &str, backend: Backend) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "procwarden-shared-{test}-{}-{}",
            env_value(backend),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir, backend }
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

    /// Waits until the service is stopped and unused: no set, no state file, no lock files.
    fn assert_clean(&self, name: &str) {
        let state_dir = self.state_dir();
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let set = RefCounter::find(&state_dir, name).unwrap();
            let files: Vec<String> = [
                "state",
                "log",
                "lock",
                "holders",
                "keeper",
                "gen",
                "holders.d",
            ]
            .iter()
            .map(|suffix| format!("{name}.{suffix}"))
            .filter(|file| std::fs::symlink_metadata(self.dir.join(file)).is_ok())
            .collect();
            if set.is_none() && files.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "left behind: set {set:?}, files {files:?}"
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
fn service(
    dir: StateDir,
    name: &str,
    starts: PathBuf,
    linger: Duration,
    backend: Backend,
) -> SharedService {
    SharedService::builder(name)
        .state_dir(dir)
        .backend(backend)
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

/// Runs as a user in a re-executed copy of this binary: acquires (with the backend the
/// environment chooses), prints "held PID", waits for a line on stdin (or its end), releases,
/// prints "released".
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
            Backend::from_env(),
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
            .env(BACKEND_ENV, env_value(scratch.backend))
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

async fn the_first_acquire_starts_and_the_last_release_stops(backend: Backend) {
    let scratch = Scratch::new("basic", backend);
    let svc = service(
        scratch.state_dir(),
        "basic",
        scratch.dir.join("starts"),
        Duration::ZERO,
        backend,
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

fn twenty_users_racing_from_zero_start_it_once(backend: Backend) {
    let scratch = Scratch::new("race", backend);
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

fn sigkill_of_the_last_user_stops_it_with_nobody_acquiring(backend: Backend) {
    let scratch = Scratch::new("killed", backend);
    let linger = Duration::from_millis(200);
    let mut user = User::spawn(&scratch, "killed", linger);
    let process = service_process(user.held_pid());
    user.kill();
    // Stop timeout 5 s; the service stops on SIGTERM, so well within linger + stop timeout.
    assert!(process.wait_blocking(Some(BOUND)), "the keeper stopped it");
    scratch.assert_clean("killed");
}

fn a_quick_next_user_finds_it_warm_within_the_linger(backend: Backend) {
    let scratch = Scratch::new("warm", backend);
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

fn a_user_back_within_the_linger_gets_a_whole_linger_again(backend: Backend) {
    let scratch = Scratch::new("relinger", backend);
    let linger = Duration::from_secs(4);
    let mut first = User::spawn(&scratch, "relinger", linger);
    let pid = first.held_pid();
    first.release();
    let first_left = std::time::Instant::now();
    let process = service_process(pid);
    // Halfway through the linger, a second user comes and goes.
    std::thread::sleep(linger / 2);
    let mut second = User::spawn(&scratch, "relinger", linger);
    assert_eq!(second.held_pid(), pid, "same instance");
    second.release();
    // The first user's linger is over; the second's (which began at least `linger / 2` later)
    // is not, so the service still runs.
    let check = first_left + linger + Duration::from_millis(500);
    std::thread::sleep(check.saturating_duration_since(std::time::Instant::now()));
    assert!(
        process.is_alive(),
        "the linger runs from the last departure"
    );
    assert_eq!(scratch.starts().len(), 1);
    assert!(
        process.wait_blocking(Some(BOUND)),
        "stopped after the linger"
    );
    scratch.assert_clean("relinger");
}

fn the_count_follows_holders_that_die(backend: Backend) {
    let scratch = Scratch::new("count", backend);
    let svc = service(
        scratch.state_dir(),
        "count",
        scratch.dir.join("starts"),
        Duration::ZERO,
        backend,
    );
    let mut first = User::spawn(&scratch, "count", Duration::ZERO);
    let mut second = User::spawn(&scratch, "count", Duration::ZERO);
    let pid = first.held_pid();
    assert_eq!(second.held_pid(), pid, "one instance");
    assert_eq!(svc.holders().unwrap(), 2);
    first.kill();
    assert_eq!(
        svc.holders().unwrap(),
        1,
        "the dead user's hold is given back"
    );
    let listed = procwarden::shared::list(&scratch.state_dir()).unwrap();
    assert_eq!((listed.len(), listed[0].holders), (1, 1));
    let process = service_process(pid);
    assert!(process.is_alive(), "one holder is left");
    second.release();
    assert!(
        process.wait_blocking(Some(BOUND)),
        "stopped after the last release"
    );
    scratch.assert_clean("count");
}

async fn a_failed_start_leaves_nothing_and_the_next_user_retries(backend: Backend) {
    let scratch = Scratch::new("failed", backend);
    let failing = SharedService::builder("failed")
        .state_dir(scratch.state_dir())
        .backend(backend)
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
        backend,
    );
    let handle = tokio::time::timeout(BOUND, svc.acquire())
        .await
        .expect("no lock left")
        .unwrap();
    assert_eq!(scratch.starts().len(), 1);
    handle.release().await.unwrap();
    scratch.assert_clean("failed");
}

async fn a_dead_service_is_recovered_once(backend: Backend) {
    let scratch = Scratch::new("recover", backend);
    let svc = service(
        scratch.state_dir(),
        "recover",
        scratch.dir.join("starts"),
        Duration::ZERO,
        backend,
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
    let scratch = Scratch::new("foreign", Backend::default());
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
    let scratch = Scratch::new("names", Backend::default());
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

// ---- services that are one command -------------------------------------------------------------

use procwarden::shared::{Readiness, ServiceCommand, ServiceState};

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs as a TCP service in a re-executed copy of this binary: listens, accepts for ever.
#[test]
fn tcp_service_role() {
    let Some(port) = std::env::var_os("PROCWARDEN_TEST_TCP_PORT") else {
        return;
    };
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port.to_str().unwrap().parse().unwrap()))
            .unwrap();
    for stream in listener.incoming() {
        drop(stream);
    }
}

fn tcp_service_script(port: u16) -> String {
    format!(
        "PROCWARDEN_TEST_TCP_PORT={port} exec {} --exact tcp_service_role --test-threads=1 -q",
        std::env::current_exe().unwrap().display()
    )
}

fn command_service(scratch: &Scratch, name: &str, command: ServiceCommand) -> SharedService {
    SharedService::builder(name)
        .state_dir(scratch.state_dir())
        .backend(scratch.backend)
        .stop_timeout(Duration::from_secs(5))
        .command(command)
        .build()
        .unwrap()
}

async fn a_command_is_ready_when_its_port_answers(backend: Backend) {
    let scratch = Scratch::new("tcp", backend);
    let port = free_port();
    let svc = command_service(
        &scratch,
        "tcp",
        ServiceCommand::shell(tcp_service_script(port)).ready(Readiness::Tcp {
            host: "127.0.0.1".into(),
            port,
        }),
    );
    let handle = svc.acquire().await.unwrap();
    assert_eq!(handle.port(), Some(port));
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("ready means it answers");
    let listed = procwarden::shared::list(&scratch.state_dir()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].holders, listed[0].state),
        ("tcp", 1, ServiceState::Running)
    );
    assert_eq!(listed[0].info.port(), Some(port));
    let process = service_process(Pid::try_from(handle.pid().unwrap()).unwrap());
    handle.release().await.unwrap();
    assert!(!process.is_alive());
    scratch.assert_clean("tcp");
}

async fn a_command_that_exits_or_is_never_ready_fails_and_leaves_nothing(backend: Backend) {
    let scratch = Scratch::new("never", backend);
    let port = free_port();
    let exits = command_service(
        &scratch,
        "exits",
        ServiceCommand::shell("exit 3").ready(Readiness::Tcp {
            host: "127.0.0.1".into(),
            port,
        }),
    );
    let err = exits.acquire().await.unwrap_err().to_string();
    assert!(err.contains("exited before it was ready"), "{err}");
    let slow = command_service(
        &scratch,
        "slow",
        ServiceCommand::shell("exec sleep 600")
            .ready(Readiness::Tcp {
                host: "127.0.0.1".into(),
                port,
            })
            .ready_timeout(Duration::from_millis(300)),
    );
    let err = slow.acquire().await.unwrap_err().to_string();
    assert!(
        err.contains("not ready within 300ms") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(exits.holders().unwrap() + slow.holders().unwrap(), 0);
    assert!(!scratch.dir.join("exits.state").exists() && !scratch.dir.join("slow.state").exists());
    // A failed start keeps the log its error names, and nothing else.
    for name in ["exits", "slow"] {
        let log = scratch.dir.join(format!("{name}.log"));
        assert!(log.exists(), "{name}: the log the error names is kept");
        std::fs::remove_file(log).unwrap();
        scratch.assert_clean(name);
    }
}

/// Runs as a user whose service never becomes ready (the test kills it while it starts).
#[test]
fn stuck_starter_role() {
    let Some(dir) = std::env::var_os("PROCWARDEN_TEST_STUCK_DIR") else {
        return;
    };
    let port: u16 = std::env::var("PROCWARDEN_TEST_STUCK_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let svc = SharedService::builder("stuck")
            .state_dir(StateDir::at(PathBuf::from(dir)).unwrap())
            .backend(Backend::from_env())
            .command(
                ServiceCommand::shell("exec sleep 600")
                    .ready(Readiness::Tcp {
                        host: "127.0.0.1".into(),
                        port,
                    })
                    .ready_timeout(Duration::from_secs(600)),
            )
            .build()
            .unwrap();
        let _ = svc.acquire().await;
    });
}

async fn sigkill_of_the_starting_user_lets_the_next_one_start_it_once(backend: Backend) {
    let scratch = Scratch::new("stuck", backend);
    let port = free_port();
    let mut starter = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stuck_starter_role", "--test-threads=1", "-q"])
        .env("PROCWARDEN_TEST_STUCK_DIR", &scratch.dir)
        .env("PROCWARDEN_TEST_STUCK_PORT", port.to_string())
        .env(BACKEND_ENV, env_value(backend))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The starter records the half-started service before it waits for it: wait for that.
    let state = scratch.dir.join("stuck.state");
    let deadline = std::time::Instant::now() + BOUND;
    let half_started = loop {
        if let Ok(text) = std::fs::read_to_string(&state)
            && text.contains("phase = \"starting\"")
        {
            let line = text.lines().find(|l| l.starts_with("pid = ")).unwrap();
            break service_process(line["pid = ".len()..].parse().unwrap());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the starter never recorded its start"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    starter.kill().unwrap();
    starter.wait().unwrap();
    let svc = command_service(
        &scratch,
        "stuck",
        ServiceCommand::shell(tcp_service_script(port)).ready(Readiness::Tcp {
            host: "127.0.0.1".into(),
            port,
        }),
    );
    let handle = tokio::time::timeout(BOUND, svc.acquire())
        .await
        .expect("the lock was given back")
        .unwrap();
    assert!(
        !half_started.is_alive(),
        "the half-started instance was stopped first"
    );
    assert_ne!(handle.pid(), Some(half_started.pid().as_raw() as u32));
    handle.release().await.unwrap();
    scratch.assert_clean("stuck");
}

async fn an_acquire_racing_a_slow_stop_waits_for_it_then_starts_fresh(backend: Backend) {
    let scratch = Scratch::new("slowstop", backend);
    let port = free_port();
    // Ignores SIGTERM: the stop takes its whole timeout, then SIGKILL.
    let script = format!(
        "trap '' TERM; {}",
        tcp_service_script(port).replacen("exec ", "", 1)
    );
    let make = || {
        SharedService::builder("slowstop")
            .state_dir(scratch.state_dir())
            .backend(backend)
            .stop_timeout(Duration::from_millis(500))
            .command(ServiceCommand::shell(script.clone()).ready(Readiness::Tcp {
                host: "127.0.0.1".into(),
                port,
            }))
            .build()
            .unwrap()
    };
    let (first, second) = (make(), make());
    let handle = first.acquire().await.unwrap();
    let old = service_process(Pid::try_from(handle.pid().unwrap()).unwrap());
    let stopping = tokio::spawn(handle.release());
    // Give the release a head start into its stop; if the acquire wins the race instead, it
    // simply joins the running instance before the release, and the release is not the last.
    tokio::task::yield_now().await;
    let again = tokio::time::timeout(BOUND, second.acquire())
        .await
        .unwrap()
        .unwrap();
    stopping.await.unwrap().unwrap();
    if again.pid() != Some(old.pid().as_raw() as u32) {
        // A fresh instance: it must have started only after the old one was gone (same port).
        assert!(!old.is_alive(), "no overlap");
    }
    let current = service_process(Pid::try_from(again.pid().unwrap()).unwrap());
    assert!(current.is_alive());
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the live instance answers");
    again.release().await.unwrap();
    assert!(!current.is_alive());
    scratch.assert_clean("slowstop");
}

async fn stop_now_stops_a_held_service_and_cleans_up(backend: Backend) {
    let scratch = Scratch::new("stopnow", backend);
    let svc = service(
        scratch.state_dir(),
        "stopnow",
        scratch.dir.join("starts"),
        Duration::ZERO,
        backend,
    );
    let handle = svc.acquire().await.unwrap();
    let process = service_process(Pid::try_from(handle.pid().unwrap()).unwrap());
    assert!(
        procwarden::shared::stop_now(&scratch.state_dir(), "stopnow")
            .await
            .unwrap()
    );
    assert!(!process.is_alive());
    scratch.assert_clean("stopnow");
    handle
        .release()
        .await
        .expect("releasing a stopped service is fine");
    assert!(
        !procwarden::shared::stop_now(&scratch.state_dir(), "stopnow")
            .await
            .unwrap()
    );
}
