//! Zero-downtime upgrades (`procwarden::upgrade`) with real processes, signals and sockets.
//!
//! Each test runs `examples/upgrade_server` (see its doc comment) in a temporary directory of
//! its own, with its own `PROCWARDEN_STATE_DIR`, and drives it as an operator would: requests
//! on its sockets, upgrades through the control socket or SIGUSR2, deploys by rename or by
//! symbolic link. A test that needs the new generation to behave differently points the path
//! the server was started from at a script: one that exits, one that adds flags to the real
//! binary (`exec -a "$0" …`, so argv[0] stays the deployed path), or one that waits at a FIFO
//! (the "gate") so the test can act while an upgrade is in progress.
//!
//! Synchronisation is on events (stderr lines, control-socket answers, pidfds); see
//! `common/mod.rs`. Linux only: the tests read `/proc` and use `SCM_CREDENTIALS` and pidfds.

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use procwarden::upgrade::read_pid_file;

/// The one TCP port generation `pid` listens on.
fn tcp_port(pid: u32) -> u16 {
    match tcp_listeners_of(pid)[..] {
        [(port, _)] => port,
        ref other => panic!("PID {pid} listens on {other:?}, not one TCP port"),
    }
}

/// The PID in an upgrade error: `... the new generation (PID 1234) ...`.
fn pid_in_error(err: &str) -> u32 {
    let at = err
        .find("(PID ")
        .unwrap_or_else(|| panic!("no PID in {err:?}"));
    err[at + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no PID in {err:?}"))
}

fn pid_file_names(path: &Path) -> u32 {
    read_pid_file(path).unwrap_or_else(|err| panic!("{err}"))
}

/// The lines of a notification, for order-insensitive checks within one datagram.
fn fields(message: &str) -> Vec<&str> {
    message.lines().collect()
}

/// The value of `KEY=` in a notification.
fn field<'m>(message: &'m str, key: &str) -> Option<&'m str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// Checks a `RELOADING=1` notification sent between the monotonic instants `before` and `after`.
fn assert_reloading(message: &str, before: u64, after: u64) {
    assert_eq!(fields(message).first(), Some(&"RELOADING=1"), "{message:?}");
    let usec: u64 = field(message, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {message:?}"));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not the time of the request ({before}..={after})"
    );
    assert!(field(message, "MAINPID").is_none(), "{message:?}");
    assert!(!fields(message).contains(&"READY=1"), "{message:?}");
}

/// No control socket is left in the state directory once every generation has exited.
fn assert_no_control_sockets(server: &Server) {
    let dir = server.state_dir.join("upgrade");
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .filter_map(|entry| Some(entry.ok()?.file_name()))
        .collect();
    assert!(left.is_empty(), "control sockets left behind: {left:?}");
}

/// Starts the example from `program` with `args` and waits until it is ready.
fn start(program: &Path, args: &[&str], dir: &TempDir) -> Server {
    let server = Server::start(Server::command(program, args), dir);
    server.wait_ready(server.first);
    server
}

/// A symbolic link `<dir>/server` to the example: the path the tests start servers from, and
/// point elsewhere to deploy.
fn deploy_path(dir: &TempDir) -> std::path::PathBuf {
    let program = dir.join("server");
    point(&program, &example_binary());
    program
}

#[test]
fn stderr_lines_split_by_another_process_are_put_back_together() {
    let log_line = "2026-11-23T02:42:44.962614Z  INFO new generation ready pid=15666";
    let mut pending = String::new();
    let first = deinterleave(&mut pending, &format!("upgrade_server[{log_line}"));
    assert_eq!(first, log_line);
    assert_eq!(pending, "upgrade_server[");
    let whole = deinterleave(&mut pending, "15666]: ready (successor)");
    assert_eq!(whole, "upgrade_server[15666]: ready (successor)");
    assert!(pending.is_empty());
    assert_eq!(deinterleave(&mut pending, log_line), log_line);
    assert_eq!(
        deinterleave(&mut pending, "gate 12 waiting"),
        "gate 12 waiting"
    );
}

// ---- 1. every kind of socket ----------------------------------------------------------------

#[test]
fn tcp_unix_and_udp_sockets_are_handed_over_and_requests_in_flight_finish() {
    let dir = TempDir::new("kinds");
    let unix_path = dir.join("http.sock");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--udp",
        "127.0.0.1:0",
        "--unix",
        unix_path.to_str().expect("UTF-8"),
    ];
    let server = start(&example_binary(), &args, &dir);
    let gen1 = server.first;
    let [(tcp_port, tcp_inode)] = tcp_listeners_of(gen1)[..] else {
        panic!("one TCP listener expected: {:?}", tcp_listeners_of(gen1));
    };
    let [(udp_port, udp_inode)] = udp_sockets_of(gen1)[..] else {
        panic!("one UDP socket expected: {:?}", udp_sockets_of(gen1));
    };
    let unix_inode = unix_listener_inode(&unix_path).expect("the Unix listener");
    assert!(socket_inodes(gen1).contains(&unix_inode));

    // Connections the first generation has accepted (a whole request on each proves it), each
    // with a second request begun and left unfinished across the upgrade.
    let mut tcp_old = Http::tcp(tcp_port).expect("TCP connect");
    assert_eq!(tcp_old.get(false).expect("TCP request").pid, gen1);
    let mut unix_old = Http::unix(&unix_path).expect("Unix connect");
    assert_eq!(unix_old.get(false).expect("Unix request").pid, gen1);
    assert_eq!(udp_ask(udp_port).expect("UDP request"), gen1);
    tcp_old.start().expect("TCP request head");
    unix_old.start().expect("Unix request head");

    let gen2 = server.upgrade_ok(gen1);

    // The new generation holds the very sockets the first one bound: same inodes, and no new
    // TCP listener of its own.
    let held = socket_inodes(gen2);
    for (kind, inode) in [("TCP", tcp_inode), ("Unix", unix_inode), ("UDP", udp_inode)] {
        assert!(
            held.contains(&inode),
            "PID {gen2} lacks the {kind} socket {inode}"
        );
    }
    assert_eq!(tcp_listeners_of(gen2), [(tcp_port, tcp_inode)]);
    assert_eq!(udp_sockets_of(gen2), [(udp_port, udp_inode)]);

    // The requests in flight are answered by the generation that accepted them.
    assert_eq!(tcp_old.finish(false).expect("TCP in flight").pid, gen1);
    assert_eq!(unix_old.finish(false).expect("Unix in flight").pid, gen1);
    drop((tcp_old, unix_old));

    // The old generation drains and exits 0; then the new one alone serves the same port,
    // path and UDP socket.
    server.expect_clean_exit(gen1);
    let drained = format!("upgrade_server[{gen1}]: drained; PID {gen2} serves now");
    server
        .log()
        .wait_for(&drained, |line| line.ends_with(&drained));
    assert_eq!(tcp_get(tcp_port).expect("TCP after"), gen2);
    assert_eq!(unix_get(&unix_path).expect("Unix after"), gen2);
    assert_eq!(udp_ask(udp_port).expect("UDP after"), gen2);

    server.stop_all(&[], gen2);
    assert_no_control_sockets(&server);
}

// ---- 2. no refusal under load ---------------------------------------------------------------

/// How many requests the load threads have completed, with a wake-up for each.
#[derive(Default)]
struct Progress {
    done: Mutex<usize>,
    changed: Condvar,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self) {
        *self.lock() += 1;
        self.changed.notify_all();
    }

    fn count(&self) -> usize {
        *self.lock()
    }

    /// Waits until `total` requests have completed; `Err` with the count if they did not within
    /// [`WAIT`] (a request hangs).
    fn wait_for(&self, total: usize) -> Result<(), usize> {
        let deadline = Instant::now() + WAIT;
        let mut done = self.lock();
        while *done < total {
            let now = Instant::now();
            if now >= deadline {
                return Err(*done);
            }
            done = self
                .changed
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What one load thread saw.
struct Load {
    answered_by: BTreeSet<u32>,
    requests: usize,
    failures: Vec<String>,
}

/// Requests on new connections, one after another, until `stop` (bounded in count and time).
fn load(port: u16, stop: &AtomicBool, progress: &Progress) -> Load {
    const MAX_REQUESTS: usize = 50_000;
    let deadline = Instant::now() + 2 * WAIT;
    let mut seen = Load {
        answered_by: BTreeSet::new(),
        requests: 0,
        failures: Vec::new(),
    };
    while !stop.load(Ordering::SeqCst) && seen.requests < MAX_REQUESTS && Instant::now() < deadline
    {
        match tcp_get(port) {
            Ok(pid) => {
                seen.answered_by.insert(pid);
            }
            Err(err) => seen.failures.push(format!("{:?}: {err}", err.kind())),
        }
        seen.requests += 1;
        progress.add();
    }
    seen
}

#[test]
fn no_connection_is_refused_or_dropped_during_three_upgrades() {
    const CLIENTS: usize = 3;
    /// Requests completed between upgrades, so the load runs across each one.
    const BETWEEN: usize = 30;
    let dir = TempDir::new("load");
    let server = start(&example_binary(), &["--listen", "127.0.0.1:0"], &dir);
    let gen1 = server.first;
    let port = tcp_port(gen1);

    let stop = Arc::new(AtomicBool::new(false));
    // Should the test fail, the load stops with it.
    let _stop_on_failure = StopOnDrop(Arc::clone(&stop));
    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, progress) = (Arc::clone(&stop), Arc::clone(&progress));
            thread::spawn(move || load(port, &stop, &progress))
        })
        .collect();
    let wait_for_load = |total: usize| {
        if let Err(done) = progress.wait_for(total) {
            stop.store(true, Ordering::SeqCst);
            panic!(
                "the load made {done} of {total} requests in {WAIT:?}: one hangs\n{}",
                server.log().dump()
            );
        }
    };
    wait_for_load(BETWEEN);
    let mut generations = vec![gen1];
    for _ in 0..3 {
        let old = *generations.last().unwrap();
        generations.push(server.upgrade_ok(old));
        // The old generation drains under load and exits 0 (this process's child by now: its
        // own parent exited before it); then the new one alone answers for a while.
        server.expect_clean_exit(old);
        wait_for_load(progress.count() + BETWEEN);
    }
    stop.store(true, Ordering::SeqCst);
    let loads: Vec<Load> = clients
        .into_iter()
        .map(|client| client.join().expect("a load thread"))
        .collect();

    let failures: Vec<&String> = loads.iter().flat_map(|l| &l.failures).collect();
    let requests: usize = loads.iter().map(|l| l.requests).sum();
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed during the upgrades, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        server.log().dump()
    );
    assert!(loads.iter().all(|l| l.requests > 0));

    let answered_by: BTreeSet<u32> = loads.iter().flat_map(|l| l.answered_by.clone()).collect();
    let expected: BTreeSet<u32> = generations.iter().copied().collect();
    assert_eq!(
        answered_by, expected,
        "each generation served in turn, and only they did"
    );
    server.stop_all(&[], *generations.last().unwrap());
}

// ---- 3. the readiness deadline ----------------------------------------------------------------

#[test]
fn a_new_generation_late_for_its_readiness_deadline_is_killed_and_the_old_one_serves_on() {
    let dir = TempDir::new("deadline");
    let program = deploy_path(&dir);
    let pid_file = dir.join("server.pid");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--ready-timeout",
        "1000",
        "--pid-file",
        pid_file.to_str().expect("UTF-8"),
    ];
    let server = start(&program, &args, &dir);
    let gen1 = server.first;
    let port = tcp_port(gen1);

    // The next release takes a minute to become ready.
    let slow = dir.join("slow");
    write_script(&slow, &exec_example("--ready-delay 60000"));
    point(&program, &slow);
    let asked = Instant::now();
    let err = server
        .upgrade(gen1)
        .expect_err("a generation that is not ready in time must not take over");
    let waited = asked.elapsed();
    assert!(
        err.contains("was not ready within 1s and was killed"),
        "{err}"
    );
    assert!(
        waited >= Duration::from_secs(1),
        "gave up after {waited:?}, before the deadline"
    );

    // The late generation was killed and reaped by the old one: it is gone, not a zombie.
    let late = pid_in_error(&err);
    assert!(
        proc_stat(late).is_none_or(|(_, ppid)| ppid != gen1),
        "the late generation {late} is still a child of {gen1}: {:?}",
        proc_stat(late)
    );
    assert_no_zombie_children(gen1, server.log());
    let late_tag = format!("upgrade_server[{late}]");
    assert_eq!(server.log().count(|line| line.contains(&late_tag)), 0);

    // The old generation carries on: it serves, and the pid file names it. (That a generation
    // still upgrades after a rollback is checked with the default deadline, below.)
    assert_eq!(tcp_get(port).expect("after the timeout"), gen1);
    assert_eq!(pid_file_names(&pid_file), gen1);
    server.stop_all(&[], gen1);
}

// ---- 4 and 10. rollback, and no zombie after it ----------------------------------------------

#[test]
fn rollback_when_the_new_generation_exits_crashes_in_probation_or_cannot_start() {
    let dir = TempDir::new("rollback");
    let program = deploy_path(&dir);
    let pid_file = dir.join("server.pid");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--probation",
        "30000",
        "--pid-file",
        pid_file.to_str().expect("UTF-8"),
    ];
    let server = start(&program, &args, &dir);
    let gen1 = server.first;
    let port = tcp_port(gen1);
    let rolled_back = |case: &str| {
        assert_eq!(
            tcp_get(port).expect(case),
            gen1,
            "{case}: the old one serves"
        );
        assert_eq!(pid_file_names(&pid_file), gen1, "{case}: the pid file");
        assert_no_zombie_children(gen1, server.log());
    };

    // A release that exits 1 at once.
    let exits = dir.join("exits");
    write_script(&exits, "exit 1");
    point(&program, &exits);
    let err = server.upgrade(gen1).expect_err("exit 1 must roll back");
    assert!(
        err.contains("exited with status 1 before it was ready"),
        "{err}"
    );
    rolled_back("exit 1");

    // A release that is ready, then crashes during the old generation's probation: the old one
    // serves again, and the pid file (which named the new one since it was ready) names it.
    let crashes = dir.join("crashes");
    write_script(&crashes, &exec_example("--crash-after-ready 0"));
    point(&program, &crashes);
    let err = server
        .upgrade(gen1)
        .expect_err("a crash in probation must roll back");
    assert!(
        err.contains("killed by SIGABRT") && err.contains("during probation"),
        "{err}"
    );
    let crashed = pid_in_error(&err);
    let ready = format!("new generation ready pid={crashed}");
    server.log().wait_for(&ready, |line| line.ends_with(&ready));
    rolled_back("crash");

    // A release that cannot be executed at all.
    let broken = dir.join("broken");
    write_file(&broken, b"#!/bin/sh\nexit 0\n", 0o644);
    point(&program, &broken);
    let err = server
        .upgrade(gen1)
        .expect_err("a failed exec must roll back");
    assert!(
        err.contains("could not start the new generation") && err.contains("Permission denied"),
        "{err}"
    );
    rolled_back("exec failure");

    // The old generation is none the worse for it. (Its probation, 30 s so that the crash is
    // surely caught within it, makes a good release too slow to try here; see the next test.)
    server.stop_all(&[], gen1);
}

#[test]
fn after_rollbacks_a_good_release_takes_over_once_its_probation_is_over() {
    const PROBATION: Duration = Duration::from_millis(1500);
    let dir = TempDir::new("probation");
    let program = deploy_path(&dir);
    let pid_file = dir.join("server.pid");
    let probation = PROBATION.as_millis().to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--probation",
        &probation,
        "--pid-file",
        pid_file.to_str().expect("UTF-8"),
    ];
    let server = start(&program, &args, &dir);
    let gen1 = server.first;
    let port = tcp_port(gen1);

    let exits = dir.join("exits");
    write_script(&exits, "exit 1");
    point(&program, &exits);
    server.upgrade(gen1).expect_err("exit 1 must roll back");
    assert_no_zombie_children(gen1, server.log());

    point(&program, &example_binary());
    let asked = Instant::now();
    let gen2 = server.upgrade_ok(gen1);
    let took = asked.elapsed();
    assert!(
        took >= PROBATION,
        "the upgrade was done after {took:?}, before the end of its probation"
    );
    assert_eq!(pid_file_names(&pid_file), gen2);
    server.expect_clean_exit(gen1);
    assert_eq!(tcp_get(port).expect("after the probation"), gen2);
    server.stop_all(&[], gen2);
}

// ---- 5. triggers during an upgrade join it ---------------------------------------------------

#[test]
fn triggers_during_an_upgrade_join_it_and_get_its_outcome() {
    let dir = TempDir::new("join");
    let program = deploy_path(&dir);
    let gate = Gate::new(dir.join("gate"));
    let server = start(&program, &["--listen", "127.0.0.1:0"], &dir);
    let gen1 = server.first;
    let port = tcp_port(gen1);
    let log = server.log();

    // SIGUSR2 starts an upgrade whose new generation waits at the gate...
    let gated = dir.join("gated");
    write_script(
        &gated,
        &format!("{}\n{}", gate.wait_lines(), exec_example("")),
    );
    point(&program, &gated);
    server.signal(gen1, libc::SIGUSR2);
    let gen2 = wait_gate(log, &[]);
    // ...two control clients ask meanwhile, and the server has read both requests...
    let first = ControlRequest::send(&server.control_socket(gen1));
    let second = ControlRequest::send(&server.control_socket(gen1));
    first.wait_taken();
    second.wait_taken();
    assert!(
        !first.answered() && !second.answered(),
        "answered mid-upgrade"
    );
    assert_eq!(tcp_get(port).expect("mid-upgrade"), gen1);
    // ...and once the new generation is ready, both hear of that one upgrade.
    gate.open();
    assert_eq!(first.answer(), format!("ok {gen2}"));
    assert_eq!(second.answer(), format!("ok {gen2}"));
    server.expect_clean_exit(gen1);
    let drained = format!("upgrade_server[{gen1}]: drained; PID {gen2} serves now");
    log.wait_for(&drained, |line| line.ends_with(&drained));
    assert_eq!(log.count(|line| gate_pid(line).is_some()), 1, "one start");
    assert_eq!(log.count(|line| line.contains("new generation started")), 1);
    assert_eq!(
        log.count(|line| line.contains("upgrade by signal failed")),
        0
    );

    // A failed upgrade is shared the same way: the same error for both, one start.
    let failing = dir.join("failing");
    write_script(&failing, &format!("{}\nexit 3", gate.wait_lines()));
    point(&program, &failing);
    let first = ControlRequest::send(&server.control_socket(gen2));
    let failed = wait_gate(log, &[gen2]);
    let second = ControlRequest::send(&server.control_socket(gen2));
    second.wait_taken();
    assert!(
        !first.answered() && !second.answered(),
        "answered mid-upgrade"
    );
    gate.open();
    let (first, second) = (first.answer(), second.answer());
    assert!(
        first.starts_with("err ")
            && first.contains(&format!("(PID {failed}) exited with status 3")),
        "{first}"
    );
    assert_eq!(first, second);
    assert_eq!(
        log.count(|line| gate_pid(line).is_some()),
        2,
        "one more start"
    );
    assert_no_zombie_children(gen2, log);
    assert_eq!(tcp_get(port).expect("after the failure"), gen2);
    server.stop_all(&[], gen2);
}

// ---- 2. the SIGHUP trigger --------------------------------------------------------------------

#[test]
fn sighup_reloads_by_default_and_upgrades_when_it_is_the_upgrade_signal() {
    let dir = TempDir::new("sighup");
    let program = deploy_path(&dir);

    // By default SIGHUP reloads the tree and starts no new generation.
    let reloading = start(&program, &["--listen", "127.0.0.1:0"], &dir);
    let gen1 = reloading.first;
    reloading.signal(gen1, libc::SIGHUP);
    reloading.log().wait_for("the reload", |line| {
        line.contains("reload requested by signal")
    });
    assert_eq!(
        reloading
            .log()
            .count(|line| line.contains("upgrade requested by signal")),
        0
    );
    assert_eq!(tcp_get(tcp_port(gen1)).expect("after the reload"), gen1);
    reloading.stop_all(&[], gen1);
    drop(reloading);

    // With `--upgrade-signal HUP`, SIGHUP upgrades, and does not also reload.
    let args = ["--listen", "127.0.0.1:0", "--upgrade-signal", "HUP"];
    let upgrading = start(&program, &args, &dir);
    let gen1 = upgrading.first;
    let port = tcp_port(gen1);
    upgrading.signal(gen1, libc::SIGHUP);
    let drained = format!("upgrade_server[{gen1}]: drained; PID ");
    let line = upgrading
        .log()
        .wait_for("the first generation to hand over", |line| {
            line.contains(&drained)
        });
    let gen2: u32 = line[line.find(&drained).unwrap() + drained.len()..]
        .split(' ')
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no PID in {line:?}"));
    upgrading.expect_clean_exit(gen1);
    assert_eq!(tcp_get(port).expect("after the upgrade"), gen2);
    assert_eq!(
        upgrading
            .log()
            .count(|line| line.contains("reload requested by signal")),
        0
    );
    upgrading.stop_all(&[], gen2);
}

// ---- 6. deploys -------------------------------------------------------------------------------

#[test]
fn deploy_by_rename_runs_the_new_binary() {
    let dir = TempDir::new("rename");
    let program = dir.join("server");
    if fs::hard_link(example_binary(), &program).is_err() {
        fs::copy(example_binary(), &program).expect("copying the example");
    }
    let old = file_identity(&program);
    let server = start(&program, &["--listen", "127.0.0.1:0"], &dir);
    let gen1 = server.first;
    let port = tcp_port(gen1);
    assert_eq!(exe_identity(gen1), old);

    // The new release: other bytes in another file, renamed over the path the server runs.
    let staged = dir.join("server.new");
    fs::copy(example_binary(), &staged).expect("staging the release");
    {
        use std::io::Write;
        let mut file = fs::OpenOptions::new().append(true).open(&staged).unwrap();
        file.write_all(b"\0procwarden upgrade test: release 2\0")
            .unwrap();
    }
    let new = file_identity(&staged);
    assert_ne!(new, old);
    fs::rename(&staged, &program).expect("deploying by rename");

    let gen2 = server.upgrade_ok(gen1);
    assert_eq!(
        exe_identity(gen2),
        new,
        "the new generation runs the new file"
    );
    server.expect_clean_exit(gen1);
    assert_eq!(tcp_get(port).expect("after the deploy"), gen2);
    server.stop_all(&[], gen2);
}

#[test]
fn deploy_by_symlink_swap_runs_the_new_target() {
    let dir = TempDir::new("symlink");
    let program = deploy_path(&dir);
    let server = start(&program, &["--listen", "127.0.0.1:0"], &dir);
    let gen1 = server.first;
    let port = tcp_port(gen1);
    let mark = b"PROCWARDEN_TEST_RELEASE=2".to_vec();
    assert!(!environ(gen1).contains(&mark));

    // The new release is a wrapper that marks its environment and says so, then runs the
    // server; the link is swapped to it atomically.
    let release = dir.join("release-2");
    write_script(
        &release,
        &format!(
            "export PROCWARDEN_TEST_RELEASE=2\necho \"release 2 started as $$\" >&2\n{}",
            exec_example("")
        ),
    );
    point(&program, &release);

    let gen2 = server.upgrade_ok(gen1);
    let started = format!("release 2 started as {gen2}");
    server.log().wait_for(&started, |line| line == started);
    assert!(
        environ(gen2).contains(&mark),
        "the new generation came from the new target"
    );
    assert_eq!(exe_identity(gen2), file_identity(&example_binary()));
    server.expect_clean_exit(gen1);
    assert_eq!(tcp_get(port).expect("after the deploy"), gen2);
    server.stop_all(&[], gen2);
}

// ---- 7. arguments that are not UTF-8 ---------------------------------------------------------

#[test]
fn non_utf8_arguments_and_environment_reach_the_new_generation_unchanged() {
    let dir = TempDir::new("bytes");
    // argv[0] (the path it was started by) and an argument, both with bytes that are not UTF-8.
    let bin = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"bin-\xff\xfe"));
    fs::create_dir(&bin).unwrap();
    let program = bin.join("server");
    point(&program, &example_binary());
    let pid_file = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"pid-\xe9t\xe9.pid"));
    let argv = [
        program.clone().into_os_string(),
        os(b"--listen"),
        os(b"127.0.0.1:0"),
        os(b"--pid-file"),
        pid_file.clone().into_os_string(),
    ];
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env("PROCWARDEN_TEST_BYTES", os(b"caf\xe9 \xff"));
    let server = Server::start(command, &dir);
    let gen1 = server.first;
    server.wait_ready(gen1);
    let expected = nul_joined(argv.iter().map(|arg| arg.as_os_str()));
    assert_eq!(cmdline(gen1), expected);

    let gen2 = server.upgrade_ok(gen1);
    assert_eq!(
        cmdline(gen2),
        expected,
        "the new generation's argv, byte for byte"
    );
    assert!(environ(gen2).contains(&b"PROCWARDEN_TEST_BYTES=caf\xe9 \xff".to_vec()));
    // The example reads its --pid-file lossily; the old generation wrote the new PID there.
    let lossy = dir.join(String::from_utf8_lossy(b"pid-\xe9t\xe9.pid").as_ref());
    assert_eq!(pid_file_names(&lossy), gen2);
    server.stop_all(&[gen1], gen2);
}

// ---- 8. socket activation ---------------------------------------------------------------------

#[test]
fn a_socket_passed_by_listen_fds_is_served_without_binding_another() {
    let dir = TempDir::new("activation");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().unwrap().port();
    let fd = listener.as_raw_fd();
    let inode = socket_inode(&fs::read_link(format!("/proc/self/fd/{fd}")).unwrap())
        .expect("a socket inode");

    // As systemd does: the socket at descriptor 3, LISTEN_FDS and LISTEN_FDNAMES, and LISTEN_PID
    // naming the server's own PID (the shell's, which exec keeps).
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(example_binary())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http");
    // SAFETY: dup2 and fcntl are async-signal-safe; `fd` is open in the parent, so in the child.
    unsafe {
        command.pre_exec(move || {
            let placed = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if placed < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::start(command, &dir);
    drop(listener);
    let gen1 = server.first;
    server.wait_ready(gen1);

    assert_eq!(
        tcp_listeners_of(gen1),
        [(port, inode)],
        "the server listens on the socket it was passed, and on no other"
    );
    assert_eq!(tcp_get(port).expect("activated"), gen1);

    // The next generation gets the same socket, through the same protocol.
    let gen2 = server.upgrade_ok(gen1);
    assert_eq!(tcp_listeners_of(gen2), [(port, inode)]);
    let env = environ(gen2);
    for entry in [
        format!("LISTEN_PID={gen2}"),
        "LISTEN_FDS=1".to_owned(),
        "LISTEN_FDNAMES=http".to_owned(),
    ] {
        assert!(env.contains(&entry.clone().into_bytes()), "{entry} missing");
    }
    server.expect_clean_exit(gen1);
    assert_eq!(tcp_get(port).expect("after the upgrade"), gen2);
    server.stop_all(&[], gen2);
}

// ---- 9. systemd notifications ----------------------------------------------------------------

#[test]
fn systemd_hears_reloading_then_the_new_main_pid_and_stopping_only_without_a_successor() {
    let dir = TempDir::new("notify");
    let socket_path = dir.join("notify");
    let notify = NotifySocket::bind(&socket_path);
    let program = deploy_path(&dir);
    let gate = Gate::new(dir.join("gate"));
    let mut command = Server::command(&program, &["--listen", "127.0.0.1:0"]);
    command.env("NOTIFY_SOCKET", &socket_path);
    let server = Server::start(command, &dir);
    let gen1 = server.first;
    server.wait_ready(gen1);

    // The first generation: READY=1, with its PID.
    let (sender, ready) = notify.recv();
    assert_eq!(sender, gen1);
    assert!(fields(&ready).contains(&"READY=1"), "{ready:?}");
    assert_eq!(field(&ready, "MAINPID"), Some(gen1.to_string().as_str()));

    // An upgrade held at the gate: RELOADING=1 from the old generation, and nothing about the
    // new one while it is not ready.
    let gated = dir.join("gated");
    write_script(
        &gated,
        &format!("{}\n{}", gate.wait_lines(), exec_example("")),
    );
    point(&program, &gated);
    let before = monotonic_usec();
    let request = ControlRequest::send(&server.control_socket(gen1));
    let gen2 = wait_gate(server.log(), &[]);
    let (sender, reloading) = notify.recv();
    assert_eq!(sender, gen1);
    assert_reloading(&reloading, before, monotonic_usec());
    assert_eq!(
        notify.try_recv(),
        None,
        "a notification before the new one is ready"
    );

    // Ready: MAINPID=<new> and READY=1 in one datagram, from the old generation.
    gate.open();
    assert_eq!(request.answer(), format!("ok {gen2}"));
    let (sender, handed) = notify.recv();
    assert_eq!(sender, gen1);
    assert_eq!(field(&handed, "MAINPID"), Some(gen2.to_string().as_str()));
    assert!(fields(&handed).contains(&"READY=1"), "{handed:?}");
    // The old generation exits without STOPPING=1: systemd would stop the new one too.
    server.expect_clean_exit(gen1);
    assert_eq!(notify.try_recv(), None, "the retired generation said more");

    // A failed upgrade: RELOADING=1, then READY=1 again with the same main PID.
    let exits = dir.join("exits");
    write_script(&exits, "exit 1");
    point(&program, &exits);
    let before = monotonic_usec();
    server.upgrade(gen2).expect_err("exit 1 must roll back");
    let after = monotonic_usec();
    let (sender, reloading) = notify.recv();
    assert_eq!(sender, gen2);
    assert_reloading(&reloading, before, after);
    let (sender, again) = notify.recv();
    assert_eq!(sender, gen2);
    assert_eq!(field(&again, "MAINPID"), Some(gen2.to_string().as_str()));
    assert!(fields(&again).contains(&"READY=1"), "{again:?}");
    assert_eq!(notify.try_recv(), None);

    // SIGTERM, no successor: STOPPING=1, once, from the generation that stops.
    server.stop_all(&[], gen2);
    assert_eq!(notify.recv(), (gen2, "STOPPING=1".to_owned()));
    assert_eq!(notify.try_recv(), None);
}

// ---- 11. the pid file, and SIGTERM --------------------------------------------------------

#[test]
fn the_pid_file_is_replaced_atomically_once_ready_and_sigterm_stops_gracefully() {
    let dir = TempDir::new("pidfile");
    let run = dir.join("run");
    fs::create_dir(&run).unwrap();
    let pid_file = run.join("server.pid");
    let program = deploy_path(&dir);
    let gate = Gate::new(dir.join("gate"));
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().expect("UTF-8"),
    ];
    let server = start(&program, &args, &dir);
    let gen1 = server.first;
    assert_eq!(pid_file_names(&pid_file), gen1, "written when ready");
    let first_file = file_identity(&pid_file);

    // A reader that keeps reading the pid file throughout the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (Arc::clone(&stop), pid_file.clone());
        thread::spawn(move || {
            let mut seen = BTreeSet::new();
            for _ in 0..1_000_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                seen.insert(fs::read_to_string(&path).unwrap_or_else(|e| format!("<{e}>")));
                thread::yield_now();
            }
            seen
        })
    };

    let gated = dir.join("gated");
    write_script(
        &gated,
        &format!("{}\n{}", gate.wait_lines(), exec_example("")),
    );
    point(&program, &gated);
    server.signal(gen1, libc::SIGUSR2);
    let gen2 = wait_gate(server.log(), &[]);
    assert_eq!(
        pid_file_names(&pid_file),
        gen1,
        "replaced before the new one was ready"
    );
    gate.open();
    let done = format!("upgrade done; winding down successor={gen2}");
    server.log().wait_for(&done, |line| line.contains(&done));
    assert_eq!(pid_file_names(&pid_file), gen2);
    assert_ne!(
        file_identity(&pid_file),
        first_file,
        "the pid file was rewritten in place, not replaced by a rename"
    );
    stop.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let whole: BTreeSet<String> = [format!("{gen1}\n"), format!("{gen2}\n")].into();
    assert!(seen.is_subset(&whole), "a reader saw {seen:?}");
    let files: Vec<_> = fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files,
        ["server.pid"],
        "temporary files left beside the pid file"
    );

    // The retired generation exits 0 and leaves its successor's pid file alone.
    server.expect_clean_exit(gen1);
    assert_eq!(pid_file_names(&pid_file), gen2);

    // SIGTERM with a request in flight: it is answered, the process exits 0 and removes the
    // pid file that names it.
    let mut busy = Http::tcp(tcp_port(gen2)).expect("connect");
    assert_eq!(busy.get(false).expect("request").pid, gen2);
    busy.start().expect("request head");
    server.signal(gen2, libc::SIGTERM);
    server.log().wait_for("the graceful stop", |line| {
        line.contains("stopping gracefully")
    });
    assert_eq!(busy.finish(false).expect("in flight at SIGTERM").pid, gen2);
    drop(busy);
    server.expect_clean_exit(gen2);
    assert!(!pid_file.exists(), "the pid file outlived its process");
    assert!(server.log().wait_closed(WAIT));
    assert_no_control_sockets(&server);
}

#[test]
fn sigterm_leaves_a_pid_file_that_names_another_process() {
    let dir = TempDir::new("pidother");
    let pid_file = dir.join("server.pid");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().expect("UTF-8"),
    ];
    let server = start(&example_binary(), &args, &dir);
    assert_eq!(pid_file_names(&pid_file), server.first);
    // Someone else took the pid file over (another instance, an operator).
    let other = std::process::id();
    fs::write(&pid_file, format!("{other}\n")).unwrap();
    server.stop_all(&[], server.first);
    assert_eq!(
        pid_file_names(&pid_file),
        other,
        "removed another process's pid file"
    );
}
