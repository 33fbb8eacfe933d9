//! Shared by the upgrade tests: the example `upgrade_server` run as real processes, their
//! stderr as a stream of events, and clients for each socket they serve.
//!
//! Nothing here waits on a timer for something that has an event: a generation's progress is
//! read from its stderr (`upgrade_server[PID]: ready`, the upgrader's log lines), a process's
//! exit from a pidfd, an upgrade's outcome from the control socket. The only polling left is
//! for states without an event (a control request consumed by the server), and it is bounded.
//! Every wait gives up after [`WAIT`] and fails the test with the servers' stderr.
//!
//! The test process makes itself a child subreaper, so every generation ends as its child once
//! the generation that started it has exited: the tests reap each one they started, and can
//! assert the exit status of generations that outlived their parent.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long any one wait may take before the test fails. A failure bound, never a delay.
pub const WAIT: Duration = Duration::from_secs(30);

// ---- the example binary ----------------------------------------------------------------------

/// The example server, built and up to date.
///
/// `cargo test --workspace` builds examples; `cargo test -p procwarden --test upgrade` does not,
/// so the first call runs `cargo build --example upgrade_server` (a no-op when it is fresh;
/// cargo releases its lock before it runs tests, so this does not deadlock).
pub fn example_binary() -> PathBuf {
    static EXAMPLE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match EXAMPLE.get_or_init(build_example) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn build_example() -> Result<PathBuf, String> {
    const HINT: &str = "build it with `cargo build -p procwarden --example upgrade_server` \
                        (`cargo test --workspace` builds it too)";
    let exe = std::env::current_exe().map_err(|err| format!("current_exe: {err}"))?;
    // target/<profile>/deps/upgrade-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let binary = profile_dir.join("examples").join("upgrade_server");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut command = Command::new(cargo);
        command
            .args([
                "build",
                "--quiet",
                "-p",
                "procwarden",
                "--example",
                "upgrade_server",
            ])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        if let Some(target_dir) = profile_dir.parent() {
            command.arg("--target-dir").arg(target_dir);
        }
        if profile_dir.file_name() == Some(OsStr::new("release")) {
            command.arg("--release");
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("running cargo to build the example failed ({err}); {HINT}"))?;
        if !output.status.success() {
            return Err(format!(
                "`cargo build --example upgrade_server` failed ({}):\n{}\n{HINT}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("{} is missing: {HINT}", binary.display()))
    }
}

// ---- temporary directories -------------------------------------------------------------------

/// A directory of its own for one test, removed with everything in it when dropped. Its path is
/// short, as Unix socket paths inside it must stay under 108 bytes.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pwup-{}-{n}-{tag}", std::process::id()));
        // A leftover of an earlier run whose process had the same PID.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap_or_else(|err| panic!("mkdir {}: {err}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---- the servers' stderr ---------------------------------------------------------------------

/// Every line written to the stderr that all generations of one server share.
#[derive(Default)]
pub struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// Every process holding the write end has exited.
    closed: bool,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: String) {
        self.lock().lines.push(line);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// The whole log, for failure messages.
    pub fn dump(&self) -> String {
        let lines = self.lines();
        format!("---- servers' stderr ----\n{}\n----", lines.join("\n"))
    }

    pub fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.lock()
            .lines
            .iter()
            .filter(|line| matches(line))
            .count()
    }

    /// The first line that `matches`, waiting for it up to [`WAIT`]; fails the test if none
    /// comes or every generation has closed stderr first.
    pub fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut state = self.lock();
        let mut checked = 0;
        let failure = loop {
            if let Some(line) = state.lines[checked..].iter().find(|line| matches(line)) {
                return line.clone();
            }
            checked = state.lines.len();
            if state.closed {
                break "every generation closed stderr";
            }
            let now = Instant::now();
            if now >= deadline {
                break "timed out";
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(state);
        panic!("waiting for {what}: {failure}\n{}", self.dump());
    }

    /// Waits until every process holding the stderr pipe has exited; `false` if one still holds
    /// it after `within`.
    pub fn wait_closed(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut state = self.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Puts the example's own lines back together.
///
/// Every generation writes to the same pipe. A log line of the upgrader (`tracing`) is one
/// `write`, but `eprintln!` writes a line in pieces, so a parent's log line can land inside a
/// child's `upgrade_server[PID]: ready (successor)`. Given each physical line as read, this
/// returns the next complete line: a log line found inside is returned at once, and what came
/// before it is kept in `pending` until the rest of that line arrives.
pub fn deinterleave(pending: &mut String, physical: &str) -> String {
    match log_line_start(physical) {
        Some(at) => {
            pending.push_str(&physical[..at]);
            physical[at..].to_owned()
        }
        None => {
            let mut whole = std::mem::take(pending);
            whole.push_str(physical);
            whole
        }
    }
}

/// Where a `tracing` line (`2026-01-01T00:00:00.000000Z  INFO ...`) starts in `line`.
fn log_line_start(line: &str) -> Option<usize> {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.";
    let bytes = line.as_bytes();
    (0..bytes.len()).find(|&at| {
        let rest = &bytes[at..];
        let shaped = rest.len() > SHAPE.len()
            && SHAPE.iter().zip(rest).all(|(want, got)| match want {
                b'd' => got.is_ascii_digit(),
                other => other == got,
            });
        if !shaped {
            return false;
        }
        let fraction = &rest[SHAPE.len()..];
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        digits > 0 && fraction[digits..].starts_with(b"Z ")
    })
}

/// The PID in a line `upgrade_server[PID]: ...` or `... pid=PID ...`, if any.
fn pids_in(line: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for marker in ["upgrade_server[", "new generation started pid="] {
        if let Some(at) = line.find(marker) {
            let digits: String = line[at + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            pids.extend(digits.parse::<u32>().ok());
        }
    }
    pids
}

// ---- the servers -----------------------------------------------------------------------------

/// The generations of one server: the first, started by the test, and every one started after
/// it. Dropped, it kills whichever of them are still running and reaps them.
pub struct Server {
    /// The first generation: the test's own child.
    pub first: u32,
    /// `PROCWARDEN_STATE_DIR` of every generation (their control sockets are inside).
    pub state_dir: PathBuf,
    log: Arc<Log>,
    /// The PIDs this test has seen exit.
    gone: Mutex<BTreeSet<u32>>,
    /// New generations the test heard of from an upgrade's outcome.
    upgraded_to: Mutex<BTreeSet<u32>>,
}

/// The handover variables a server must not inherit from the test's environment.
const INHERITED: [&str; 6] = [
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "PROCWARDEN_UPGRADE_READY_FD",
    "PROCWARDEN_UPGRADE_PARENT",
];

impl Server {
    /// A command for the example server at `program` (argv[0] is `program` as given).
    pub fn command(program: impl AsRef<OsStr>, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args);
        command
    }

    /// Starts the first generation from `command`, in `dir`, with its own state directory,
    /// stderr piped to the test, and no core dumps (a crash is asked for in some tests).
    pub fn start(mut command: Command, dir: &TempDir) -> Server {
        become_subreaper();
        let state_dir = dir.join("state");
        for key in INHERITED {
            let set_by_test = command.get_envs().any(|(k, v)| k == key && v.is_some());
            if !set_by_test {
                command.env_remove(key);
            }
        }
        command
            .env("PROCWARDEN_STATE_DIR", &state_dir)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
        unsafe {
            command.pre_exec(|| {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {command:?}: {err}"));
        let first = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        // The test reaps this child itself (by PID), as it does the later generations.
        drop(child);
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            let mut pending = String::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        sink.push(deinterleave(&mut pending, text.trim_end()));
                    }
                }
            }
            if !pending.is_empty() {
                sink.push(pending);
            }
            sink.close();
        });
        Server {
            first,
            state_dir,
            log,
            gone: Mutex::new(BTreeSet::new()),
            upgraded_to: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Waits for `upgrade_server[pid]: ready` (a first generation, or one whose parent is gone).
    pub fn wait_ready(&self, pid: u32) {
        let line = format!("upgrade_server[{pid}]: ready");
        self.log
            .wait_for(&format!("`{line}`"), |l| l.ends_with(&line));
    }

    /// Every PID this server's generations have named on stderr, the first included.
    pub fn generations(&self) -> BTreeSet<u32> {
        let mut pids: BTreeSet<u32> = self.log.lines().iter().flat_map(|l| pids_in(l)).collect();
        pids.insert(self.first);
        pids.extend(self.lock_upgraded_to().iter().copied());
        pids
    }

    /// The control socket of generation `pid`.
    pub fn control_socket(&self, pid: u32) -> PathBuf {
        let state = procwarden::shared::StateDir::at(&self.state_dir)
            .unwrap_or_else(|err| panic!("state dir {}: {err}", self.state_dir.display()));
        procwarden::upgrade::control_socket_path(&state, pid)
    }

    /// Asks generation `pid` to upgrade over its control socket (what `procwarden upgrade`
    /// does), and returns the outcome: the new PID, or the error as text.
    pub fn upgrade(&self, pid: u32) -> Result<u32, String> {
        let socket = self.control_socket(pid);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let outcome = runtime.block_on(async {
            tokio::time::timeout(WAIT, procwarden::upgrade::request_upgrade(&socket, pid)).await
        });
        match outcome {
            Ok(Ok(upgraded)) => {
                self.lock_upgraded_to().insert(upgraded.pid);
                Ok(upgraded.pid)
            }
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => panic!(
                "no outcome from PID {pid}'s upgrade within {WAIT:?}\n{}",
                self.log.dump()
            ),
        }
    }

    /// Like [`upgrade`](Self::upgrade), expecting success.
    pub fn upgrade_ok(&self, pid: u32) -> u32 {
        let new = self
            .upgrade(pid)
            .unwrap_or_else(|err| panic!("upgrading PID {pid}: {err}\n{}", self.log.dump()));
        assert_ne!(new, pid, "the new generation has a PID of its own");
        new
    }

    /// Sends `signal` to generation `pid`, one this server started and the test has not seen
    /// exit.
    pub fn signal(&self, pid: u32, signal: libc::c_int) {
        // Every generation is named on stderr (by its parent, when it starts it), though maybe
        // not read yet when the test learns its PID from a control answer.
        if pid != self.first {
            self.log
                .wait_for(&format!("PID {pid} named on stderr"), |line| {
                    pids_in(line).contains(&pid)
                });
        }
        assert!(
            !self.lock_gone().contains(&pid),
            "PID {pid} is not a running generation of this server"
        );
        // SAFETY: kill has no memory effects; the PID is a generation of this test's server.
        let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(
            sent,
            0,
            "kill({pid}, {signal}): {}",
            io::Error::last_os_error()
        );
    }

    fn lock_gone(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.gone.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_upgraded_to(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.upgraded_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until generation `pid` has exited; its status if it was the test's to reap (the
    /// first generation, or a later one whose parent exited before it).
    pub fn wait_exit(&self, pid: u32) -> Option<ExitStatus> {
        let status = wait_exit(pid, WAIT).unwrap_or_else(|err| {
            panic!("waiting for PID {pid} to exit: {err}\n{}", self.log.dump())
        });
        self.lock_gone().insert(pid);
        status
    }

    /// Waits until generation `pid` has exited and asserts that it exited with status 0.
    pub fn expect_clean_exit(&self, pid: u32) {
        let status = self.wait_exit(pid);
        let status = status.unwrap_or_else(|| {
            panic!("PID {pid} was not the test's to reap: its parent still ran when it exited")
        });
        assert!(
            status.success(),
            "PID {pid} {status} instead of exiting 0\n{}",
            self.log.dump()
        );
    }

    /// Ends a server run: each retired generation, in order, exits 0 on its own once its
    /// successor took over; then SIGTERM stops the serving one, which exits 0; no process is
    /// left holding the stderr pipe; and no generation had to abort a child that ignored the
    /// drain.
    pub fn stop_all(&self, retired: &[u32], serving: u32) {
        for pid in retired {
            self.expect_clean_exit(*pid);
        }
        self.signal(serving, libc::SIGTERM);
        self.expect_clean_exit(serving);
        assert!(
            self.log.wait_closed(WAIT),
            "a process still holds the servers' stderr after every generation exited\n{}",
            self.log.dump()
        );
        let aborted = self
            .log
            .count(|line| line.contains("after its grace period"));
        assert_eq!(
            aborted,
            0,
            "a drain had to abort a child\n{}",
            self.log.dump()
        );
    }
}

impl Drop for Server {
    /// Kills and reaps whatever is left of this server: its known generations and their
    /// descendants, nothing else.
    fn drop(&mut self) {
        let mut ours = self.generations();
        for _ in 0..8 {
            let before = ours.len();
            for (pid, ppid, _) in processes() {
                if ours.contains(&ppid) {
                    ours.insert(pid);
                }
            }
            if ours.len() == before {
                break;
            }
        }
        let gone = self.lock_gone().clone();
        let living: Vec<u32> = ours
            .iter()
            .copied()
            .filter(|pid| !gone.contains(pid))
            .filter(|pid| proc_stat(*pid).is_some_and(|(state, _)| state != 'Z'))
            .collect();
        for pid in &living {
            // SAFETY: kill has no memory effects; the PID is this server's generation or its
            // descendant, still running.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        // First let every one exit (so that orphans have been handed to this process), then
        // reap those that are ours.
        let exited: Vec<u32> = ours
            .iter()
            .copied()
            .filter(|pid| !gone.contains(pid))
            .filter(|pid| wait_for_exit(*pid, Duration::from_secs(5)).is_ok())
            .collect();
        for pid in exited {
            let _ = reap(pid);
        }
        let _ = self.log.wait_closed(Duration::from_secs(5));
    }
}

/// Makes this process the reaper of its orphaned descendants, once.
fn become_subreaper() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: prctl with integer arguments only.
        let done = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            done,
            0,
            "PR_SET_CHILD_SUBREAPER: {}",
            io::Error::last_os_error()
        );
    });
}

/// Waits until `pid` has exited (whoever its parent is) without reaping it; `Ok(())` also when
/// it is gone already.
fn wait_for_exit(pid: u32, within: Duration) -> Result<(), String> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(format!("pidfd_open({pid}): {err}"))
        };
    }
    // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd on this stack.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        match ready {
            1 => return Ok(()),
            0 => return Err(format!("PID {pid} still runs after {within:?}")),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("poll on the pidfd of {pid}: {err}"));
                }
            }
        }
    }
}

/// Reaps `pid` if it is an exited child of this process; `None` if it is not this process's
/// child (its parent reaped it, or will).
fn reap(pid: u32) -> Option<ExitStatus> {
    let mut status = 0;
    // SAFETY: waitpid writes the status to a local. The caller saw `pid` exit, so this does not
    // block for long: it returns the zombie's status, or ECHILD if `pid` is not ours.
    let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    (reaped == pid as libc::pid_t).then(|| ExitStatus::from_raw(status))
}

/// Waits until `pid` exits and reaps it if it is this process's child.
pub fn wait_exit(pid: u32, within: Duration) -> Result<Option<ExitStatus>, String> {
    wait_for_exit(pid, within)?;
    Ok(reap(pid))
}

// ---- /proc -----------------------------------------------------------------------------------

/// The state letter and the parent PID of `pid`, if it exists.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every process: (PID, parent PID, state).
pub fn processes() -> Vec<(u32, u32, char)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| proc_stat(pid).map(|(state, ppid)| (pid, ppid, state)))
        .collect()
}

/// The zombie children of `parent`.
pub fn zombie_children(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, ppid, state)| *ppid == parent && *state == 'Z')
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Asserts that `parent` has no zombie child.
pub fn assert_no_zombie_children(parent: u32, log: &Log) {
    let zombies = zombie_children(parent);
    assert!(
        zombies.is_empty(),
        "PID {parent} left zombie children {zombies:?}\n{}",
        log.dump()
    );
}

/// The raw `argv` of `pid`, NUL-separated as the kernel keeps it.
pub fn cmdline(pid: u32) -> Vec<u8> {
    fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_else(|err| panic!("cmdline {pid}: {err}"))
}

/// The environment entries of `pid`, as bytes.
pub fn environ(pid: u32) -> Vec<Vec<u8>> {
    let raw = fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|err| panic!("environ {pid}: {err}"));
    raw.split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The (device, inode) of the file `pid` executes.
pub fn exe_identity(pid: u32) -> (u64, u64) {
    file_identity(Path::new(&format!("/proc/{pid}/exe")))
}

pub fn file_identity(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).unwrap_or_else(|err| panic!("stat {}: {err}", path.display()));
    (meta.dev(), meta.ino())
}

/// The inodes of the sockets `pid` holds open.
pub fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&dir).unwrap_or_else(|err| panic!("{dir}: {err}"));
    entries
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| socket_inode(&target))
        .collect()
}

/// The inode in a descriptor link `socket:[INODE]`.
pub fn socket_inode(link: &Path) -> Option<u64> {
    let text = link.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// (local port, inode) of each IPv4 socket in `/proc/net/<table>` (`tcp` or `udp`) that is
/// one of `held` and, if `state` is given, in that state. The table can be long (sockets in
/// TIME_WAIT), so lines are rejected before anything is parsed.
fn inet_sockets(table: &str, held: &BTreeSet<u64>, state: Option<&str>) -> Vec<(u16, u64)> {
    let text = fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let local = fields.nth(1)?;
            let socket_state = fields.nth(1)?;
            if state.is_some_and(|want| socket_state != want) {
                return None;
            }
            let inode: u64 = fields.nth(5)?.parse().ok()?;
            if !held.contains(&inode) {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            Some((port, inode))
        })
        .collect()
}

/// The TCP listening sockets `pid` holds: (port, inode).
pub fn tcp_listeners_of(pid: u32) -> Vec<(u16, u64)> {
    const LISTEN: &str = "0A";
    inet_sockets("tcp", &socket_inodes(pid), Some(LISTEN))
}

/// The UDP sockets `pid` holds: (port, inode).
pub fn udp_sockets_of(pid: u32) -> Vec<(u16, u64)> {
    inet_sockets("udp", &socket_inodes(pid), None)
}

/// The inode of the Unix stream socket listening at `path`.
pub fn unix_listener_inode(path: &Path) -> Option<u64> {
    const ACCEPTING: &str = "00010000";
    let text = fs::read_to_string("/proc/net/unix").ok()?;
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3) == Some(&ACCEPTING);
        (listening && fields.get(7).map(Path::new) == Some(path))
            .then(|| fields.get(6)?.parse().ok())
            .flatten()
    })
}

// ---- HTTP, UDP and control clients -----------------------------------------------------------

/// What a response said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The PID in the body `pid <PID>\n`.
    pub pid: u32,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// An HTTP/1.1 client connection, keep-alive.
pub struct Http<S> {
    stream: S,
    buffer: Vec<u8>,
}

const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: procwarden-test\r\n";

impl Http<TcpStream> {
    pub fn tcp(port: u16) -> io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        Ok(Self::new(stream))
    }
}

impl Http<UnixStream> {
    pub fn unix(path: &Path) -> io::Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        Ok(Self::new(stream))
    }
}

impl<S: Read + Write> Http<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    /// One whole request and its response.
    pub fn get(&mut self, close: bool) -> io::Result<Reply> {
        self.start()?;
        self.finish(close)
    }

    /// Sends the head of a request but not the blank line that ends it: the server has the
    /// request in progress until [`finish`](Self::finish).
    pub fn start(&mut self) -> io::Result<()> {
        self.stream.write_all(HEAD)?;
        self.stream.flush()
    }

    /// Ends the request begun by [`start`](Self::start) and reads the response.
    pub fn finish(&mut self, close: bool) -> io::Result<Reply> {
        let end: &[u8] = if close {
            b"Connection: close\r\n\r\n"
        } else {
            b"\r\n"
        };
        self.stream.write_all(end)?;
        self.stream.flush()?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200 ") {
            return Err(bad(format!("unexpected response {head:?}")));
        }
        let header = |name: &str| {
            head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_owned())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("no content-length in {head:?}")))?;
        let close = header("connection").is_some_and(|v| v == "close");
        let total = head_end + 4 + length;
        while self.buffer.len() < total {
            self.fill()?;
        }
        let body: Vec<u8> = self.buffer.drain(..total).skip(head_end + 4).collect();
        Ok(Reply {
            pid: pid_in_body(&body)?,
            close,
        })
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before a whole response",
            ));
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn pid_in_body(body: &[u8]) -> io::Result<u32> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|text| text.strip_prefix("pid ")?.trim_end().parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected body {:?}", String::from_utf8_lossy(body)),
            )
        })
}

/// One request on a new TCP connection (`Connection: close`); the PID that answered.
pub fn tcp_get(port: u16) -> io::Result<u32> {
    Ok(Http::tcp(port)?.get(true)?.pid)
}

/// One request on a new Unix connection; the PID that answered.
pub fn unix_get(path: &Path) -> io::Result<u32> {
    Ok(Http::unix(path)?.get(true)?.pid)
}

/// One datagram to the UDP listener; the PID that answered.
pub fn udp_ask(port: u16) -> io::Result<u32> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(WAIT))?;
    socket.send_to(b"who serves?", ("127.0.0.1", port))?;
    let mut answer = [0u8; 64];
    let (n, _) = socket.recv_from(&mut answer)?;
    pid_in_body(&answer[..n])
}

/// A control-socket request made by hand (the protocol: `upgrade\n`, answered by one line), for
/// the tests that need to see the server take the request before the upgrade ends.
pub struct ControlRequest {
    stream: UnixStream,
}

impl ControlRequest {
    pub fn send(socket: &Path) -> Self {
        let mut stream = UnixStream::connect(socket)
            .unwrap_or_else(|err| panic!("connecting to {}: {err}", socket.display()));
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.write_all(b"upgrade\n").expect("sending the request");
        Self { stream }
    }

    /// Waits until the server has read the request. No event says so; the bytes still queued
    /// on this socket (`SIOCOUTQ`) do, so this polls them, bounded.
    pub fn wait_taken(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
            let done = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
            assert_eq!(done, 0, "SIOCOUTQ: {}", io::Error::last_os_error());
            if queued == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not read the control request within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether an answer (or the end of the stream) is there to read, without waiting.
    pub fn answered(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on this stack; a zero timeout does not wait.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        assert!(ready >= 0, "poll: {}", io::Error::last_os_error());
        ready == 1
    }

    /// The answer line, waiting for it up to [`WAIT`].
    pub fn answer(self) -> String {
        let mut line = String::new();
        BufReader::new(self.stream)
            .read_line(&mut line)
            .expect("reading the control answer");
        line.trim_end().to_owned()
    }
}

// ---- deploys: scripts, links, a gate ---------------------------------------------------------

/// `path` quoted for a shell script.
pub fn sh_quote(path: &Path) -> String {
    let text = path.to_str().expect("a UTF-8 path for scripts");
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Writes an executable bash script with `body`.
pub fn write_script(path: &Path, body: &str) {
    write_file(path, format!("#!/bin/bash\n{body}\n").as_bytes(), 0o755);
}

/// Writes a new file with `mode`, closing it before returning.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
    file.write_all(contents).expect("writing");
    file.set_permissions(fs::Permissions::from_mode(mode))
        .expect("chmod");
}

/// The script line that runs the example with this script's arguments, keeping argv[0] (the
/// path the script was run by), as a deploy's wrapper would.
pub fn exec_example(extra_args: &str) -> String {
    format!(
        "exec -a \"$0\" {} \"$@\" {extra_args}",
        sh_quote(&example_binary())
    )
}

/// Points the symbolic link `link` at `target`, atomically (a new link renamed over it), as a
/// deploy by symlink swap does.
pub fn point(link: &Path, target: &Path) {
    let mut temp = link.as_os_str().to_owned();
    temp.push(".new");
    let temp = PathBuf::from(temp);
    let _ = fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp)
        .unwrap_or_else(|err| panic!("symlink {}: {err}", temp.display()));
    fs::rename(&temp, link).unwrap_or_else(|err| panic!("rename {}: {err}", link.display()));
}

/// A FIFO that holds a new generation (a script reading a line from it) until the test opens
/// the gate. The test keeps it open for reading and writing, so neither side's open blocks and
/// a line written stays until read.
pub struct Gate {
    pub path: PathBuf,
    fifo: fs::File,
}

impl Gate {
    pub fn new(path: PathBuf) -> Self {
        let name = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: mkfifo reads a NUL-terminated path.
        let made = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
        assert_eq!(made, 0, "mkfifo: {}", io::Error::last_os_error());
        let fifo = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("opening the FIFO");
        Self { path, fifo }
    }

    /// Script lines that announce `gate <PID> waiting` on stderr, then wait for the gate.
    pub fn wait_lines(&self) -> String {
        format!(
            "echo \"gate $$ waiting\" >&2\nread -r _ < {}",
            sh_quote(&self.path)
        )
    }

    /// Lets one waiting script through.
    pub fn open(&self) {
        (&self.fifo)
            .write_all(b"go\n")
            .expect("writing to the FIFO");
    }
}

/// The PID in the first log line `gate <PID> waiting` not in `seen`.
pub fn wait_gate(log: &Log, seen: &[u32]) -> u32 {
    let line = log.wait_for("a new generation waiting at the gate", |line| {
        gate_pid(line).is_some_and(|pid| !seen.contains(&pid))
    });
    gate_pid(&line).expect("matched")
}

pub fn gate_pid(line: &str) -> Option<u32> {
    line.strip_prefix("gate ")?
        .strip_suffix(" waiting")?
        .parse()
        .ok()
}

// ---- systemd notifications -------------------------------------------------------------------

/// A stand-in for systemd's notification socket, which learns each sender's PID from the
/// kernel (`SO_PASSCRED`, `SCM_CREDENTIALS`), as systemd does.
pub struct NotifySocket {
    socket: UnixDatagram,
}

impl NotifySocket {
    pub fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("binding the notify socket");
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one int from this stack.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_PASSCRED: {}", io::Error::last_os_error());
        Self { socket }
    }

    /// The next message and its sender's PID, waiting up to [`WAIT`].
    pub fn recv(&self) -> (u32, String) {
        self.receive(Some(WAIT))
            .unwrap_or_else(|| panic!("no notification within {WAIT:?}"))
    }

    /// The next message if one is queued now.
    pub fn try_recv(&self) -> Option<(u32, String)> {
        self.receive(None)
    }

    fn receive(&self, wait: Option<Duration>) -> Option<(u32, String)> {
        if let Some(wait) = wait {
            let mut poll = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one pollfd on this stack.
            if unsafe { libc::poll(&mut poll, 1, millis) } != 1 {
                return None;
            }
        }
        let mut data = [0u8; 4096];
        // u64s keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the fields set below point into this frame.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg writes at most the lengths given into the buffers above.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut message, libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = io::Error::last_os_error();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "recvmsg: {err}");
            return None;
        }
        let mut sender = None;
        // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within
        // msg_controllen; SCM_CREDENTIALS data is a ucred.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&message);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_SOCKET
                    && (*header).cmsg_type == libc::SCM_CREDENTIALS
                {
                    let creds: libc::ucred =
                        std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                    sender = Some(creds.pid as u32);
                }
                header = libc::CMSG_NXTHDR(&message, header);
            }
        }
        let sender = sender.expect("SO_PASSCRED attaches the sender's credentials");
        let text = String::from_utf8_lossy(&data[..n as usize]).into_owned();
        Some((sender, text))
    }
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` has it.
pub fn monotonic_usec() -> u64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

// ---- bytes -----------------------------------------------------------------------------------

/// An OS string from raw bytes.
pub fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

/// `argv` as the kernel keeps it: each argument followed by a NUL.
pub fn nul_joined<'a>(args: impl IntoIterator<Item = &'a OsStr>) -> Vec<u8> {
    let mut out = Vec::new();
    for arg in args {
        out.extend_from_slice(arg.as_bytes());
        out.push(0);
    }
    out
}
