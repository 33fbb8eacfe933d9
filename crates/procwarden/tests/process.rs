//! The `process` module against real processes and real signals.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use procwarden::process::{self, Pid, ProcessError, ProcessRef, Signal, StopOutcome};

/// Every wait in these tests is bounded by this, so a bug fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

/// A child that prints "ready" once its traps are set, then sleeps.
fn spawn_shell(script: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new("/bin/sh")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn /bin/sh");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

fn read_line(reader: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read from child");
    line.trim().to_owned()
}

/// Reaps a child that must already be gone (or kills it, if a test failed before).
fn cleanup(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_zombie_is_not_alive() {
    let child = Command::new("true").spawn().unwrap();
    let process = ProcessRef::from_child(&child).unwrap();
    // The pidfd wakes when `true` exits; it stays a zombie because nobody reaped it yet.
    assert!(process.wait_blocking(Some(BOUND)));
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    assert!(stat.contains(") Z "), "expected a zombie: {stat}");
    assert!(!process.is_alive());
    assert!(!process::is_alive(&process));
    cleanup(child);
}

#[test]
fn a_process_exiting_as_it_is_opened_is_still_found() {
    // Opening over and over while `true` runs and exits puts some opening across the moment of
    // its exit: /proc still says running, the pidfd then says exited. That process is a zombie,
    // not gone; about half of these children met the moment when it was mistaken for reuse.
    for _ in 0..100 {
        let mut child = Command::new("true").spawn().unwrap();
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let process = ProcessRef::from_child(&child)
                .unwrap_or_else(|err| panic!("an unreaped child is never gone: {err}"));
            if !process.is_alive() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "`true` never exited");
        }
        child.wait().unwrap();
    }
}

#[test]
fn a_record_with_another_start_time_is_refused() {
    let child = Command::new("sleep").arg("60").spawn().unwrap();
    let process = ProcessRef::from_child(&child).unwrap();
    let forged = ProcessRef::from_record(process.pid(), process.start_time() + 7);
    assert!(
        matches!(forged, Err(ProcessError::Gone { .. })),
        "{forged:?}"
    );
    let again = ProcessRef::from_record(process.pid(), process.start_time()).unwrap();
    assert!(again.is_alive());
    cleanup(child);
}

#[test]
fn a_reaped_process_is_never_signalled() {
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let process = ProcessRef::from_child(&child).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Its PID may now belong to anyone: nothing may be sent.
    assert!(!process.is_alive());
    assert!(matches!(
        process.terminate(),
        Err(ProcessError::Gone { .. })
    ));
    assert!(matches!(
        process.signal_group(Signal::TERM),
        Err(ProcessError::Gone { .. })
    ));
    assert!(matches!(
        ProcessRef::from_record(process.pid(), process.start_time()),
        Err(ProcessError::Gone { .. })
    ));
}

#[test]
fn invalid_pids_are_refused() {
    for raw in [0i64, -1, -100, i64::from(i32::MAX) + 1, i64::from(u32::MAX)] {
        assert!(Pid::new(raw).is_err(), "{raw}");
    }
    assert!(Pid::new(1).is_ok());
}

#[tokio::test]
async fn stop_returns_when_the_process_exits_on_sigterm() {
    let (child, mut out) = spawn_shell("trap 'exit 0' TERM; echo ready; while :; do sleep 1; done");
    assert_eq!(read_line(&mut out), "ready");
    let process = ProcessRef::from_child(&child).unwrap();
    // An hour of grace: only the exit itself can end this wait within the bound.
    let outcome = tokio::time::timeout(BOUND, process::stop(&process, Duration::from_secs(3600)))
        .await
        .expect("stop woke on the exit")
        .unwrap();
    assert_eq!(outcome, StopOutcome::Exited);
    assert!(!process.is_alive());
    cleanup(child);
}

#[tokio::test]
async fn stop_kills_a_process_that_ignores_sigterm() {
    let (child, mut out) = spawn_shell("trap '' TERM; echo ready; while :; do sleep 1; done");
    assert_eq!(read_line(&mut out), "ready");
    let process = ProcessRef::from_child(&child).unwrap();
    let outcome = tokio::time::timeout(BOUND, process.stop(Duration::from_millis(100)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, StopOutcome::Killed);
    assert!(!process.is_alive());
    cleanup(child);
}

#[tokio::test]
async fn stop_of_an_exited_process_sends_nothing() {
    let mut child = Command::new("true").spawn().unwrap();
    let process = ProcessRef::from_child(&child).unwrap();
    child.wait().unwrap();
    assert_eq!(
        process.stop(Duration::from_secs(1)).await.unwrap(),
        StopOutcome::AlreadyExited
    );
}

#[tokio::test]
async fn stop_group_reaches_the_grandchildren() {
    let (child, mut out) = spawn_shell("sleep 60 & echo $!; echo ready; wait");
    let grandchild: Pid = read_line(&mut out).parse().unwrap();
    assert_eq!(read_line(&mut out), "ready");
    let leader = ProcessRef::from_child(&child).unwrap();
    let grandchild = ProcessRef::new(grandchild).unwrap();
    assert!(grandchild.is_alive());
    let outcome = tokio::time::timeout(
        BOUND,
        leader.stop_group(Signal::TERM, Duration::from_secs(10)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(outcome, StopOutcome::Exited);
    // Not our child, so nobody reaps it but init: wait for the exit itself.
    assert!(grandchild.wait_blocking(Some(BOUND)));
    assert!(!grandchild.is_alive());
    cleanup(child);
}

#[test]
fn group_signals_need_a_group_leader() {
    let child = Command::new("sleep").arg("60").spawn().unwrap(); // shares our group
    let process = ProcessRef::from_child(&child).unwrap();
    assert!(matches!(
        process.signal_group(Signal::TERM),
        Err(ProcessError::NotGroupLeader { .. })
    ));
    assert!(process.is_alive(), "nothing was sent");
    cleanup(child);
}

#[test]
fn stop_blocking_waits_for_the_exit() {
    let (child, mut out) = spawn_shell("trap 'exit 0' TERM; echo ready; while :; do sleep 1; done");
    assert_eq!(read_line(&mut out), "ready");
    let process = ProcessRef::from_child(&child).unwrap();
    assert_eq!(
        process.stop_blocking(Duration::from_secs(3600)).unwrap(),
        StopOutcome::Exited
    );
    cleanup(child);
}

#[test]
fn signals_by_name_and_number() {
    assert_eq!("TERM".parse::<Signal>().unwrap(), Signal::TERM);
    assert_eq!("sigkill".parse::<Signal>().unwrap(), Signal::KILL);
    assert_eq!("USR2".parse::<Signal>().unwrap(), Signal::usr2());
    assert!("0".parse::<Signal>().is_err());
    assert!("".parse::<Signal>().is_err());
    let err = "NOPE".parse::<Signal>().unwrap_err().to_string();
    assert!(err.contains("NOPE"), "{err}");
}

#[tokio::test]
async fn stop_group_returns_only_once_every_member_has_exited() {
    // The leader exits on SIGTERM at once; a member ignores it and holds on until SIGKILL.
    let (child, mut out) = spawn_shell(
        "(trap '' TERM; exec sleep 600) & echo $!; trap 'exit 0' TERM; echo ready; wait",
    );
    let member: Pid = read_line(&mut out).parse().unwrap();
    assert_eq!(read_line(&mut out), "ready");
    let leader = ProcessRef::from_child(&child).unwrap();
    let member = ProcessRef::new(member).unwrap();
    let outcome = tokio::time::timeout(
        BOUND,
        leader.stop_group(Signal::TERM, Duration::from_secs(10)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(outcome, StopOutcome::Exited);
    // Not "soon after": at the moment stop_group returns (what it held, a port, is free).
    assert!(!member.is_alive(), "a member outlived the group stop");
    cleanup(child);
}

#[test]
fn group_variants_reach_every_member() {
    let (child, mut out) = spawn_shell("sleep 600 & echo $!; echo ready; wait");
    let member = ProcessRef::new(read_line(&mut out).parse().unwrap()).unwrap();
    assert_eq!(read_line(&mut out), "ready");
    let leader = ProcessRef::from_child(&child).unwrap();
    assert!(leader.is_group_alive());
    leader.kill_group().unwrap();
    assert!(
        member.wait_blocking(Some(BOUND)),
        "the member got SIGKILL too"
    );
    assert!(leader.wait_blocking(Some(BOUND)));
    // Both exited: what is left is at most zombies, which run nothing.
    assert!(!leader.is_group_alive());
    assert!(matches!(
        leader.terminate_group(),
        Err(ProcessError::Gone { .. })
    ));
    cleanup(child);
}
