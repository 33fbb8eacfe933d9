//! OS processes as supervised children: exit statuses become exit reasons, stops reach the
//! whole process group, and the process does not outlive a killed supervisor.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use procwarden::process::{Command, Pid, ProcessRef};
use procwarden::supervisor::Intensity;
use procwarden::{Backoff, ExitReason, Restart, Supervisor};

const BOUND: Duration = Duration::from_secs(30);

async fn run_to_end(supervisor: Supervisor) -> Result<(), procwarden::SupervisorError> {
    tokio::time::timeout(BOUND, supervisor.run())
        .await
        .expect("supervisor returned")
}

#[tokio::test]
async fn a_non_zero_status_is_a_failure_and_is_restarted() {
    let dir = std::env::temp_dir().join(format!("procwarden-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let counter = dir.join("runs");
    // Fails twice, then succeeds: a transient child is restarted until it exits 0.
    let script = format!(
        "echo x >> {0}; test $(wc -l < {0}) -ge 3 || exit 3",
        counter.display()
    );
    let supervisor = Supervisor::builder("jobs")
        .intensity(Intensity::new(10, Duration::from_secs(60)))
        .child(
            Command::shell(script)
                .forward_output(false)
                .child_spec("flaky")
                .restart(Restart::Transient)
                .backoff(Backoff::none()),
        )
        .build()
        .unwrap();
    let mut events = supervisor.handle().subscribe();
    run_to_end(supervisor).await.unwrap();
    let runs = std::fs::read_to_string(&counter).unwrap().lines().count();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(runs, 3);
    let mut exits = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::ZERO, events.recv()).await {
        if let procwarden::supervisor::EventKind::Exited(reason) = event.kind {
            exits.push(reason);
        }
    }
    let failed = ExitReason::Failed("exited with status 3".into());
    assert_eq!(exits, vec![failed.clone(), failed, ExitReason::Normal]);
}

#[tokio::test]
async fn death_by_signal_is_named() {
    let supervisor = Supervisor::builder("jobs")
        .child(
            Command::shell("kill -KILL $$")
                .forward_output(false)
                .child_spec("victim")
                .restart(Restart::Temporary),
        )
        .dynamic()
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = tokio::spawn(supervisor.run());
    let reason = loop {
        let event = tokio::time::timeout(BOUND, events.recv())
            .await
            .unwrap()
            .unwrap();
        if let procwarden::supervisor::EventKind::Exited(reason) = event.kind {
            break reason;
        }
    };
    assert_eq!(reason, ExitReason::Failed("killed by SIGKILL".into()));
    handle.shutdown();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_stops_the_whole_group_and_counts_as_requested() {
    let supervisor = Supervisor::builder("svc")
        .child(
            // The grandchild's PID goes to a file the test reads once both are up.
            Command::shell("sleep 600 & echo $! > \"$PIDFILE\"; wait")
                .env("PIDFILE", pid_file())
                .forward_output(false)
                .grace(Duration::from_secs(5))
                .child_spec("server"),
        )
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = tokio::spawn(supervisor.run());
    let grandchild = tokio::time::timeout(BOUND, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(pid_file())
                && let Ok(pid) = text.trim().parse::<Pid>()
            {
                return pid;
            }
            // The shell writes the file right after it starts; there is no event to wait on.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let grandchild = ProcessRef::new(grandchild).unwrap();
    handle.shutdown();
    tokio::time::timeout(BOUND, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_file(pid_file());
    assert!(
        grandchild.wait_blocking(Some(BOUND)),
        "the grandchild was stopped with its group"
    );
    let mut reasons = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::ZERO, events.recv()).await {
        if let procwarden::supervisor::EventKind::Exited(reason) = event.kind {
            reasons.push(reason);
        }
    }
    assert_eq!(reasons, vec![ExitReason::Shutdown]);
}

fn pid_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("procwarden-cmd-grandchild-{}", std::process::id()))
}

#[tokio::test]
async fn a_missing_program_fails_to_start_with_its_name() {
    let supervisor = Supervisor::builder("jobs")
        .child(
            Command::new("/nonexistent/procwarden-test-program")
                .child_spec("ghost")
                .restart(Restart::Transient)
                .backoff(Backoff::none()),
        )
        .intensity(Intensity::new(2, Duration::from_secs(60)))
        .build()
        .unwrap();
    let err = run_to_end(supervisor).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot start /nonexistent/procwarden-test-program"),
        "{err}"
    );
}

/// Runs in a re-executed copy of this test binary: a supervisor with one command child that
/// prints its PID, then waits to be killed.
#[test]
fn orphan_host() {
    if std::env::var_os("PROCWARDEN_ORPHAN_HOST").is_none() {
        return;
    }
    let supervisor = Supervisor::builder("host")
        .child(
            Command::shell("echo $$; exec sleep 600")
                .forward_output(false)
                .child_spec("sleeper"),
        )
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = runtime.block_on(supervisor.run());
}

#[test]
fn the_process_does_not_outlive_a_killed_supervisor() {
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "orphan_host", "--nocapture", "--test-threads=1"])
        .env("PROCWARDEN_ORPHAN_HOST", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(host.stdout.take().unwrap());
    // The harness prints "test orphan_host ... " and the sleeper's PID follows on that line.
    let sleeper = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "host ended early");
        if let Some(Ok(pid)) = line.split_whitespace().last().map(str::parse::<Pid>) {
            break pid;
        }
    };
    let sleeper = ProcessRef::new(sleeper).unwrap();
    assert!(sleeper.is_alive());
    host.kill().unwrap(); // SIGKILL: no chance to clean up
    host.wait().unwrap();
    assert!(
        sleeper.wait_blocking(Some(BOUND)),
        "the parent-death signal ended it"
    );
    assert!(!sleeper.is_alive());
}

/// Runs in a re-executed copy of this test binary: one command child that writes a line that is
/// not UTF-8, then a line to each stream, and exits; then the supervisor returns.
#[test]
fn talker_host() {
    if std::env::var_os("PROCWARDEN_TALKER_HOST").is_none() {
        return;
    }
    let supervisor = Supervisor::builder("host")
        .child(
            Command::shell("printf 'bad \\377 byte\\n'; echo to-stdout; echo to-stderr >&2")
                .child_spec("talker")
                .restart(Restart::Temporary),
        )
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut events = supervisor.handle().subscribe();
        supervisor.run().await.unwrap();
        // A child that failed to start would end the supervisor just as well: say so.
        let mut exits = Vec::new();
        while let Ok(Ok(event)) = tokio::time::timeout(Duration::ZERO, events.recv()).await {
            if let procwarden::supervisor::EventKind::Exited(reason) = event.kind {
                exits.push(reason);
            }
        }
        assert_eq!(exits, [ExitReason::Normal], "the talker's exits");
    });
}

#[test]
fn output_is_forwarded_line_by_line_with_the_childs_path() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "talker_host", "--nocapture", "--test-threads=1"])
        .env("PROCWARDEN_TALKER_HOST", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with("[host/talker] to-stdout")),
        "stdout: {stdout}"
    );
    // Not UTF-8: replaced, and what follows is still forwarded.
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with("[host/talker] bad \u{FFFD} byte")),
        "stdout: {stdout}"
    );
    assert!(
        stderr.lines().any(|l| l == "[host/talker] to-stderr"),
        "stderr: {stderr}"
    );
    assert!(
        !stdout.contains("to-stderr") && !stderr.contains("to-stdout"),
        "streams kept apart"
    );
}
