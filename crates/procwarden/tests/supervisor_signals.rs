//! `Supervisor::run_until_signal` (through `run_blocking`) with real signals sent to a real
//! process.
//!
//! Each test re-executes this test binary so that it runs only [`signal_child_process`], with
//! [`SCENARIO`] set: that function builds a tree, runs it with `Supervisor::run_blocking()` and
//! exits with the outcome's exit status. The tree prints `PW:` lines on its stdout, which the
//! test reads through a pipe to know when to send each signal; nothing waits on a timer, and
//! every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use procwarden::{ChildSpec, Context, Supervisor};

/// Set (to a scenario name) in the environment of the re-executed test binary.
const SCENARIO: &str = "PROCWARDEN_SIGNALS_TEST_SCENARIO";

/// The name of the test that becomes the child process.
const CHILD_TEST: &str = "signal_child_process";

/// How long the test waits for any one thing from the child process.
const WAIT: Duration = Duration::from_secs(60);

/// The leaves of the scenarios' tree, in start order.
const LEAVES: [&str; 3] = ["root/first", "root/sub/inner", "root/last"];

// ---- the child process -----------------------------------------------------------------------

fn say(line: &str) {
    println!("PW:{line}");
}

/// A leaf that reports its start, every reload, and its stop.
fn leaf(name: &str) -> ChildSpec {
    ChildSpec::new(name, |ctx: Context| async move {
        say(&format!("started {}", ctx.path()));
        loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown_requested() => break,
                () = ctx.reload_requested() => say(&format!("reload {}", ctx.path())),
            }
        }
        say(&format!("stopping {}", ctx.path()));
        // Stopping takes a moment: a yield lets anything that is wrongly stopping at the same
        // time show up between these two lines.
        tokio::task::yield_now().await;
        say(&format!("stopped {}", ctx.path()));
        Ok::<(), std::io::Error>(())
    })
}

/// A leaf that reports its start, then ignores the request to stop (for an hour of grace).
fn slow_leaf(name: &str) -> ChildSpec {
    ChildSpec::new(name, |ctx: Context| async move {
        say(&format!("started {}", ctx.path()));
        ctx.shutdown_requested().await;
        say(&format!("stopping {}", ctx.path()));
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    })
    .shutdown_timeout(Duration::from_secs(3600))
}

fn tree(scenario: &str) -> Supervisor {
    let last = match scenario {
        "graceful" => leaf("last"),
        "slow" => slow_leaf("last"),
        other => panic!("unknown scenario {other}"),
    };
    Supervisor::builder("root")
        .child(leaf("first"))
        .child(ChildSpec::supervisor(
            Supervisor::builder("sub")
                .child(leaf("inner"))
                .build()
                .expect("valid names"),
        ))
        .child(last)
        .build()
        .expect("valid names")
}

/// The child process: does nothing unless re-executed by a test with [`SCENARIO`] set.
#[test]
fn signal_child_process() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let outcome = tree(&scenario).run_blocking();
    say(&format!("outcome {outcome:?}"));
    std::process::exit(i32::from(outcome.exit_status()));
}

// ---- the test side -----------------------------------------------------------------------------

/// A child process running a scenario, killed and reaped if the test fails half-way.
struct Scenario {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    reaped: bool,
}

impl Scenario {
    fn start(scenario: &str) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(SCENARIO, scenario)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the test binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test name ... " on the same line before ours.
                if let Some(at) = line.find("PW:")
                    && tx.send(line[at + 3..].to_owned()).is_err()
                {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stderr,
            reaped: false,
        }
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\nlines seen: {:#?}\nstderr so far:\n{}",
            self.seen,
            self.stderr.lock().unwrap()
        );
    }

    /// Reads lines until `done` returns true for one, which it returns.
    fn read_until(&mut self, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if done(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("timed out waiting for {what}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("the process closed its output before {what}"))
                }
            }
        }
    }

    fn expect(&mut self, wanted: &str) {
        self.read_until(wanted, |line| line == wanted);
    }

    /// Waits for a line for each of `wanted`, in any order.
    fn expect_all(&mut self, wanted: &[String]) {
        let mut missing: Vec<&String> = wanted.iter().collect();
        while !missing.is_empty() {
            let line = self.read_until(&format!("{missing:?}"), |line| {
                missing.iter().any(|w| *w == line)
            });
            missing.retain(|w| **w != line);
        }
    }

    fn started(&mut self) {
        let started: Vec<String> = LEAVES.iter().map(|l| format!("started {l}")).collect();
        self.expect_all(&started);
    }

    /// Sends `signal` (a name such as `TERM`) to the child process, and to nothing else.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Reads the rest of the output, then reaps the process.
    fn finish(&mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.fail("timed out waiting for the process to exit")
                }
            }
        }
        // Its stdout is closed: it has exited (or is exiting), so this does not block for long.
        let status = self.child.wait().expect("waiting for the child process");
        self.reaped = true;
        (status, self.seen.clone())
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if !self.reaped {
            // Only ever the process this test spawned.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lines about stopping, in order.
fn stop_lines(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("stopping ") || l.starts_with("stopped "))
        .collect()
}

fn graceful_stop_order() -> Vec<String> {
    LEAVES
        .iter()
        .rev()
        .flat_map(|l| [format!("stopping {l}"), format!("stopped {l}")])
        .collect()
}

fn assert_graceful_stop(signal: &str, number: i32) {
    let mut child = Scenario::start("graceful");
    child.started();
    child.signal(signal);
    let (status, lines) = child.finish();
    assert_eq!(
        stop_lines(&lines),
        graceful_stop_order(),
        "children stop in reverse start order, one after the other"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("outcome Stopped {{ signal: {number} }}").as_str()),
        "{lines:#?}"
    );
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigterm_stops_the_tree_gracefully_in_reverse_order_and_exits_0() {
    assert_graceful_stop("TERM", 15);
}

#[test]
fn sigint_stops_the_tree_gracefully_in_reverse_order_and_exits_0() {
    assert_graceful_stop("INT", 2);
}

#[test]
fn a_second_sigterm_aborts_a_slow_stop_at_once_and_exits_143() {
    let mut child = Scenario::start("slow");
    child.started();
    child.signal("TERM");
    // The last child is asked first, and takes (up to) an hour.
    child.expect("stopping root/last");
    child.signal("TERM");
    let (status, lines) = child.finish();
    assert_eq!(
        stop_lines(&lines),
        ["stopping root/last"],
        "after the second signal the others are aborted, not asked to stop"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("outcome Aborted { signal: 15 }"),
        "{lines:#?}"
    );
    assert_eq!(status.code(), Some(128 + 15), "{status}");
}

#[test]
fn sighup_reloads_every_child_and_the_process_keeps_running() {
    let mut child = Scenario::start("graceful");
    child.started();
    let reloads: Vec<String> = LEAVES.iter().map(|l| format!("reload {l}")).collect();
    child.signal("HUP");
    child.expect_all(&reloads);
    assert!(child.is_running(), "SIGHUP must not stop the process");
    // A second one is not lost either.
    child.signal("HUP");
    child.expect_all(&reloads);
    assert!(child.is_running(), "SIGHUP must not stop the process");

    child.signal("TERM");
    let (status, lines) = child.finish();
    assert_eq!(stop_lines(&lines), graceful_stop_order());
    let reloads_seen = lines.iter().filter(|l| l.starts_with("reload ")).count();
    assert_eq!(reloads_seen, 2 * LEAVES.len(), "{lines:#?}");
    assert_eq!(status.code(), Some(0), "{status}");
}
