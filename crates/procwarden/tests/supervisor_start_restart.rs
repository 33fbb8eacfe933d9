//! Starting, adding, removing and restarting children; restart policies, strategies, intensity
//! and backoff; readiness; and the events and status seen along the way.
//!
//! Nothing here waits on a real-time sleep: tests sequence on channels, on the supervisor's
//! events, or on tokio's paused clock, and every wait is bounded so that a bug fails the test
//! instead of hanging it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use procwarden::supervisor::{
    ChildState, ChildStatus, Event, EventKind, Intensity, MAX_NAME_LEN, Shutdown, Subscription,
};
use procwarden::{
    Backoff, ChildSpec, Context, ExitReason, Restart, Strategy, Supervisor, SupervisorError,
    SupervisorHandle,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

// ---- helpers -----------------------------------------------------------------------------------

/// How long any single wait may take before the test fails. Generous, for a loaded machine; in
/// paused-time tests it is virtual time, and far beyond any delay a test expects.
const PATIENCE: Duration = Duration::from_secs(60);

const HOUR: Duration = Duration::from_secs(3600);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match timeout(PATIENCE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// What children report, in the order they report it, with the (tokio) time they did.
#[derive(Clone)]
struct Log(mpsc::UnboundedSender<(String, Instant)>);

struct Reader(mpsc::UnboundedReceiver<(String, Instant)>);

fn log() -> (Log, Reader) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Log(tx), Reader(rx))
}

impl Log {
    fn push(&self, entry: String) {
        let _ = self.0.send((entry, Instant::now()));
    }
}

impl Reader {
    async fn next_timed(&mut self) -> (String, Instant) {
        within("the next log entry", self.0.recv())
            .await
            .expect("every child is gone: no more log entries")
    }

    async fn next(&mut self) -> String {
        self.next_timed().await.0
    }

    async fn take(&mut self, n: usize) -> Vec<String> {
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            match timeout(PATIENCE, self.0.recv()).await {
                Ok(Some((entry, _))) => entries.push(entry),
                Ok(None) => panic!("log closed after {entries:?}"),
                Err(_) => panic!("timed out waiting for {n} log entries; got {entries:?}"),
            }
        }
        entries
    }

    /// Nothing was logged that the test has not read.
    fn assert_quiet(&mut self) {
        if let Ok((entry, _)) = self.0.try_recv() {
            panic!("unexpected log entry {entry:?}");
        }
    }
}

/// How many runs a child has had.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicU32>);

impl Runs {
    fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What one run of a scripted child does after logging `start:NAME#RUN` and calling `ready()`.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Waits to be asked to stop, logs `stop:NAME#RUN`, returns `Ok`.
    Serve,
    /// Logs `exit:NAME#RUN` and returns `Ok` at once.
    Exit,
    /// Logs `fail:NAME#RUN` and returns the error `NAME run RUN failed` at once.
    Fail,
    /// Logs `panic:NAME#RUN` and panics with `NAME run RUN panicked`.
    Panic,
    /// Runs this long (unless asked to stop), then fails like `Fail`.
    FailAfter(Duration),
}

fn failure(name: &str, run: u32) -> ExitReason {
    ExitReason::Failed(format!("{name} run {run} failed").into())
}

/// A child whose every run follows `script(run)` (runs count from 1).
fn scripted(
    name: &'static str,
    log: &Log,
    script: impl Fn(u32) -> Then + Send + Sync + 'static,
) -> (ChildSpec, Runs) {
    let runs = Runs::default();
    let spec = {
        let (log, runs) = (log.clone(), runs.clone());
        let script = Arc::new(script);
        ChildSpec::new(name, move |ctx: Context| {
            let (log, runs, script) = (log.clone(), runs.clone(), Arc::clone(&script));
            async move {
                let run = runs.next();
                log.push(format!("start:{name}#{run}"));
                ctx.ready();
                match script(run) {
                    Then::Serve => {
                        ctx.shutdown_requested().await;
                        log.push(format!("stop:{name}#{run}"));
                        Ok(())
                    }
                    Then::Exit => {
                        log.push(format!("exit:{name}#{run}"));
                        Ok(())
                    }
                    Then::Fail => {
                        log.push(format!("fail:{name}#{run}"));
                        Err(format!("{name} run {run} failed"))
                    }
                    Then::Panic => {
                        log.push(format!("panic:{name}#{run}"));
                        panic!("{name} run {run} panicked");
                    }
                    Then::FailAfter(after) => {
                        tokio::select! {
                            () = ctx.shutdown_requested() => {
                                log.push(format!("stop:{name}#{run}"));
                                Ok(())
                            }
                            () = tokio::time::sleep(after) => {
                                log.push(format!("fail:{name}#{run}"));
                                Err(format!("{name} run {run} failed"))
                            }
                        }
                    }
                }
            }
        })
    };
    (spec, runs)
}

/// What a test tells a [`puppet`] child to do.
#[derive(Debug)]
enum Cmd {
    Fail,
}

/// A child that logs `start:NAME#RUN`, calls `ready()`, then serves until it is asked to stop
/// (logs `stop:NAME#RUN`) or told to fail (logs `fail:NAME#RUN`). Commands survive restarts:
/// one sent between runs is read by the next run. Dropping the sender just means no commands.
fn puppet(name: &'static str, log: &Log) -> (ChildSpec, Runs, mpsc::UnboundedSender<Cmd>) {
    let runs = Runs::default();
    let (tx, rx) = mpsc::unbounded_channel::<Cmd>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let spec = {
        let (log, runs) = (log.clone(), runs.clone());
        ChildSpec::new(name, move |ctx: Context| {
            let (log, runs, rx) = (log.clone(), runs.clone(), Arc::clone(&rx));
            async move {
                let run = runs.next();
                log.push(format!("start:{name}#{run}"));
                ctx.ready();
                let mut commands = rx.lock().await;
                let told = async {
                    match commands.recv().await {
                        Some(cmd) => cmd,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = ctx.shutdown_requested() => {
                        log.push(format!("stop:{name}#{run}"));
                        Ok(())
                    }
                    Cmd::Fail = told => {
                        log.push(format!("fail:{name}#{run}"));
                        Err(format!("{name} run {run} failed"))
                    }
                }
            }
        })
    };
    (spec, runs, tx)
}

fn ev(path: &str, kind: EventKind) -> Event {
    Event {
        path: path.into(),
        kind,
    }
}

fn is(event: &Event, path: &str, kind: &EventKind) -> bool {
    &*event.path == path && &event.kind == kind
}

/// The kinds of the events about exactly `path`, in order.
fn kinds(events: &[Event], path: &str) -> Vec<EventKind> {
    events
        .iter()
        .filter(|e| &*e.path == path)
        .map(|e| e.kind.clone())
        .collect()
}

/// The paths of the events of kind `kind`, in order.
fn paths_of(events: &[Event], kind: &EventKind) -> Vec<String> {
    events
        .iter()
        .filter(|e| &e.kind == kind)
        .map(|e| e.path.to_string())
        .collect()
}

/// Events up to and including the first for which `done` holds.
async fn events_until(
    sub: &mut Subscription,
    what: &str,
    mut done: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        match timeout(PATIENCE, sub.recv()).await {
            Ok(Ok(event)) => {
                let last = done(&event);
                seen.push(event);
                if last {
                    return seen;
                }
            }
            Ok(Err(err)) => panic!("subscription failed ({err}) waiting for {what}; saw {seen:#?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
        }
    }
}

/// Events up to and including the `n`th for which `matches` holds.
async fn events_until_nth(
    sub: &mut Subscription,
    what: &str,
    n: usize,
    matches: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut count = 0;
    events_until(sub, what, |e| {
        if matches(e) {
            count += 1;
        }
        count == n
    })
    .await
}

async fn status(handle: &SupervisorHandle) -> ChildStatus {
    within("a status report", handle.status())
        .await
        .expect("the supervisor answers status requests")
}

fn node<'a>(status: &'a ChildStatus, relative: &str) -> &'a ChildStatus {
    status
        .find(relative)
        .unwrap_or_else(|| panic!("no {relative} under {}: {status:#?}", status.path))
}

fn names(status: &ChildStatus) -> Vec<&str> {
    status.children.iter().map(|c| &*c.name).collect()
}

/// Shuts the supervisor down and checks that its children, which logged their first start in
/// the order `started`, stopped in the reverse order.
async fn stops_in_reverse_order<const N: usize>(
    handle: &SupervisorHandle,
    running: JoinHandle<Result<(), SupervisorError>>,
    reader: &mut Reader,
    started: [&str; N],
) {
    handle.shutdown();
    finish(running).await.unwrap();
    let expected: Vec<String> = started
        .iter()
        .rev()
        .map(|name| format!("stop:{name}#1"))
        .collect();
    assert_eq!(reader.take(N).await, expected);
}

async fn finish(running: JoinHandle<Result<(), SupervisorError>>) -> Result<(), SupervisorError> {
    within("the supervisor to return", running)
        .await
        .expect("the supervisor's task does not panic")
}

fn delays(events: &[Event], path: &str) -> Vec<Duration> {
    kinds(events, path)
        .into_iter()
        .filter_map(|kind| match kind {
            EventKind::Restarting { delay } => Some(delay),
            _ => None,
        })
        .collect()
}

use EventKind::{Exited, Ready, Removed, Starting, Stopping};

// ---- children: order, add, remove, restart, names, paths ---------------------------------------

#[tokio::test]
async fn children_given_to_the_builder_start_in_order() {
    let (log, mut reader) = log();
    let (a, runs_a) = scripted("a", &log, |_| Then::Serve);
    let (b, runs_b) = scripted("b", &log, |_| Then::Serve);
    let (c, runs_c) = scripted("c", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .child(a)
        .children([b, c])
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();

    let events = events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;
    assert_eq!(
        events,
        vec![
            ev("root/a", Starting),
            ev("root/a", Ready),
            ev("root/b", Starting),
            ev("root/b", Ready),
            ev("root/c", Starting),
            ev("root/c", Ready),
            ev("root", Ready),
        ]
    );
    let mut started = reader.take(3).await;
    started.sort();
    assert_eq!(started, ["start:a#1", "start:b#1", "start:c#1"]);

    let tree = status(&handle).await;
    assert_eq!(&*tree.path, "root");
    assert_eq!(tree.state, ChildState::Running);
    assert_eq!(names(&tree), ["a", "b", "c"]);
    for child in &tree.children {
        assert_eq!(&*child.path, format!("root/{}", child.name));
        assert_eq!(child.state, ChildState::Running, "{child:?}");
        assert_eq!(child.restarts, 0, "{child:?}");
        assert_eq!(child.last_exit, None, "{child:?}");
        assert!(child.uptime.is_some(), "{child:?}");
        assert!(child.children.is_empty(), "{child:?}");
    }

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!((runs_a.get(), runs_b.get(), runs_c.get()), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_child_starts_only_after_the_previous_one_is_ready() {
    let (log, mut reader) = log();
    let specs: Vec<ChildSpec> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|name| scripted(name, &log, |_| Then::Serve).0.reports_ready())
        .collect();
    let supervisor = Supervisor::builder("root").children(specs).build().unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();

    // Each logs before it reports ready, so a child that started early would log early.
    assert_eq!(
        reader.take(4).await,
        ["start:a#1", "start:b#1", "start:c#1", "start:d#1"]
    );

    stops_in_reverse_order(&handle, running, &mut reader, ["a", "b", "c", "d"]).await;
}

#[tokio::test]
async fn children_added_before_and_while_running_start_after_the_others() {
    let (log, mut reader) = log();
    let (a, _) = scripted("a", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root").child(a).build().unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();

    // Queue an `add` before the supervisor runs: it waits in the queue and is handled then.
    let (b, runs_b) = scripted("b", &log, |_| Then::Serve);
    let early = handle.add(b);
    tokio::pin!(early);
    std::future::poll_fn(|cx| {
        assert!(
            early.as_mut().poll(cx).is_pending(),
            "answered before running"
        );
        Poll::Ready(())
    })
    .await;
    let running = supervisor.spawn();
    within("the early add", early).await.unwrap();

    let events = events_until(&mut sub, "b ready", |e| is(e, "root/b", &Ready)).await;
    assert_eq!(
        paths_of(&events, &Starting),
        ["root/a", "root/b"],
        "{events:#?}"
    );

    // A child added while running gets its path and starts after the others.
    let (path_tx, mut path_rx) = mpsc::unbounded_channel();
    let c = ChildSpec::new("c", move |ctx: Context| {
        let path_tx = path_tx.clone();
        async move {
            let _ = path_tx.send((ctx.name().to_owned(), ctx.path().to_owned()));
            ctx.shutdown_requested().await;
            Ok::<(), String>(())
        }
    });
    within("add c", handle.add(c)).await.unwrap();
    let (name, path) = within("c to run", path_rx.recv()).await.unwrap();
    assert_eq!((name.as_str(), path.as_str()), ("c", "root/c"));
    events_until(&mut sub, "c ready", |e| is(e, "root/c", &Ready)).await;

    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["a", "b", "c"]);
    assert!(
        tree.children
            .iter()
            .all(|c| c.state == ChildState::Running && c.restarts == 0),
        "{tree:#?}"
    );

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(runs_b.get(), 1);
    let mut entries = reader.take(4).await;
    entries.sort();
    assert_eq!(entries, ["start:a#1", "start:b#1", "stop:a#1", "stop:b#1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_added_at_run_time_starts_in_order_after_the_others() {
    let (log, mut reader) = log();
    let ready = |name| scripted(name, &log, |_| Then::Serve).0.reports_ready();
    let supervisor = Supervisor::builder("root")
        .child(ready("a"))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    assert_eq!(reader.take(1).await, ["start:a#1"]);

    // "b" reports ready only when let go: until then, the rest of its batch waits.
    let gate = Arc::new(tokio::sync::Notify::new());
    let b = {
        let (log, gate) = (log.clone(), Arc::clone(&gate));
        ChildSpec::new("b", move |ctx: Context| {
            let (log, gate) = (log.clone(), Arc::clone(&gate));
            async move {
                log.push("start:b#1".to_owned());
                gate.notified().await;
                ctx.ready();
                ctx.shutdown_requested().await;
                log.push("stop:b#1".to_owned());
                Ok::<(), String>(())
            }
        })
        .reports_ready()
    };
    within("the batch", handle.add_all([b, ready("c"), ready("d")]))
        .await
        .unwrap();
    assert_eq!(reader.take(1).await, ["start:b#1"]);
    let tree = status(&handle).await;
    let states: Vec<ChildState> = tree.children.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [
            ChildState::Running,
            ChildState::Starting,
            ChildState::Waiting,
            ChildState::Waiting
        ]
    );
    gate.notify_one();
    // Each logs before it reports ready, so a child that started early would log early.
    assert_eq!(reader.take(2).await, ["start:c#1", "start:d#1"]);
    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["a", "b", "c", "d"]);
    assert_eq!(node(&tree, "c").path.as_ref(), "root/c");

    stops_in_reverse_order(&handle, running, &mut reader, ["a", "b", "c", "d"]).await;
}

#[tokio::test]
async fn a_batch_with_one_refused_child_adds_none_of_it() {
    let (log, mut reader) = log();
    let (w0, _) = scripted("w0", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("pool")
        .dynamic()
        .child(w0)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    assert_eq!(reader.take(1).await, ["start:w0#1"]);

    let (x1, runs_x1) = scripted("x1", &log, |_| Then::Serve);
    let (x2, runs_x2) = scripted("x2", &log, |_| Then::Serve);
    let (w0_again, _) = scripted("w0", &log, |_| Then::Serve);
    let (bad, _) = scripted("no/slash", &log, |_| Then::Serve);
    let taken = handle.add_all([x1.clone(), w0_again]).await.unwrap_err();
    assert!(
        matches!(&taken, SupervisorError::DuplicateName { path } if path == "pool/w0"),
        "{taken:?}"
    );
    let twice = handle.add_all([x1.clone(), x1.clone()]).await.unwrap_err();
    assert!(
        matches!(&twice, SupervisorError::DuplicateName { path } if path == "pool/x1"),
        "{twice:?}"
    );
    let invalid = handle.add_all([x1.clone(), bad]).await.unwrap_err();
    assert!(
        matches!(&invalid, SupervisorError::InvalidName { name, .. } if name == "no/slash"),
        "{invalid:?}"
    );
    assert_eq!(names(&status(&handle).await), ["w0"]);
    assert_eq!(runs_x1.get(), 0, "a refused batch ran a child");

    within("nothing to add", handle.add_all([])).await.unwrap();
    within("the batch", handle.add_all([x1, x2])).await.unwrap();
    let mut started = reader.take(2).await;
    started.sort();
    assert_eq!(started, ["start:x1#1", "start:x2#1"]);
    assert_eq!(names(&status(&handle).await), ["w0", "x1", "x2"]);

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!((runs_x1.get(), runs_x2.get()), (1, 1));
}

#[tokio::test]
async fn remove_stops_the_child_and_returns_why_it_ended() {
    let (log, mut reader) = log();
    let (keeper, runs_keeper) = scripted("keeper", &log, |_| Then::Serve);
    let (victim, runs_victim) = scripted("victim", &log, |_| Then::Serve);
    let (done, runs_done) = scripted("done", &log, |_| Then::Exit);
    let supervisor = Supervisor::builder("root")
        .child(keeper)
        .child(victim)
        .child(done.restart(Restart::Transient))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    events_until(&mut sub, "done to exit", |e| {
        is(e, "root/done", &Exited(ExitReason::Normal))
    })
    .await;

    // A running child: stopped gracefully, then gone.
    let reason = within("remove victim", handle.remove("victim")).await;
    assert_eq!(reason.unwrap(), ExitReason::Shutdown);
    let events = events_until(&mut sub, "victim removed", |e| {
        is(e, "root/victim", &Removed)
    })
    .await;
    assert_eq!(
        kinds(&events, "root/victim"),
        [Stopping, Exited(ExitReason::Shutdown), Removed]
    );
    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["keeper", "done"]);
    assert!(tree.find("victim").is_none());

    // A child that already stopped for good: its last exit.
    let reason = within("remove done", handle.remove("done")).await;
    assert_eq!(reason.unwrap(), ExitReason::Normal);
    assert_eq!(names(&status(&handle).await), ["keeper"]);

    // Gone means gone.
    match within("remove victim again", handle.remove("victim")).await {
        Err(SupervisorError::NoSuchChild { path }) => assert_eq!(path, "root/victim"),
        other => panic!("expected NoSuchChild, got {other:?}"),
    }

    // The name is free again.
    let (again, runs_again) = scripted("victim", &log, |_| Then::Serve);
    within("add victim again", handle.add(again)).await.unwrap();
    events_until(&mut sub, "new victim ready", |e| {
        is(e, "root/victim", &Ready)
    })
    .await;
    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["keeper", "victim"]);
    assert_eq!(node(&tree, "victim").last_exit, None);

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(
        (
            runs_keeper.get(),
            runs_victim.get(),
            runs_done.get(),
            runs_again.get()
        ),
        (1, 1, 1, 1)
    );
    let mut entries = reader.take(8).await;
    entries.sort();
    assert_eq!(
        entries,
        [
            "exit:done#1",
            "start:done#1",
            "start:keeper#1",
            "start:victim#1",
            "start:victim#1",
            "stop:keeper#1",
            "stop:victim#1",
            "stop:victim#1",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_demand_is_graceful_and_does_not_count_toward_intensity() {
    let (log, mut reader) = log();
    let (w, runs, commands) = puppet("w", &log);
    let (keeper, runs_keeper) = scripted("keeper", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .intensity(Intensity::new(1, HOUR))
        .child(w.backoff(Backoff::none()))
        .child(keeper)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let mut started = reader.take(2).await;
    started.sort();
    assert_eq!(started, ["start:keeper#1", "start:w#1"]);
    events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;

    for run in 1..=3 {
        within("restart w", handle.restart("w")).await.unwrap();
        // Asked to stop (not aborted), then started again.
        assert_eq!(
            reader.take(2).await,
            [format!("stop:w#{run}"), format!("start:w#{}", run + 1)]
        );
        let events = events_until(&mut sub, "w ready again", |e| is(e, "root/w", &Ready)).await;
        let seen: Vec<EventKind> = kinds(&events, "root/w")
            .into_iter()
            .filter(|k| !matches!(k, EventKind::Restarting { .. }))
            .collect();
        assert_eq!(
            seen,
            [Stopping, Exited(ExitReason::Shutdown), Starting, Ready]
        );
        let tree = status(&handle).await;
        let w = node(&tree, "w");
        assert_eq!(w.state, ChildState::Running);
        assert_eq!(w.last_exit, Some(ExitReason::Shutdown));
    }

    // Three restarts on demand, and the intensity (1 per hour) still allows one failure...
    commands.send(Cmd::Fail).unwrap();
    assert_eq!(reader.take(2).await, ["fail:w#4", "start:w#5"]);
    let tree = status(&handle).await;
    assert_eq!(node(&tree, "w").state, ChildState::Running);
    assert_eq!(node(&tree, "w").last_exit, Some(failure("w", 4)));

    // ...and only the second one exceeds it.
    commands.send(Cmd::Fail).unwrap();
    match finish(running).await {
        Err(SupervisorError::IntensityExceeded {
            path,
            max_restarts,
            child,
            reason,
            ..
        }) => {
            assert_eq!(path, "root");
            assert_eq!(max_restarts, 1);
            assert_eq!(child, "root/w");
            assert_eq!(reason, failure("w", 5));
        }
        other => panic!("expected IntensityExceeded, got {other:?}"),
    }
    assert_eq!((runs.get(), runs_keeper.get()), (5, 1));
}

#[tokio::test]
async fn restart_on_demand_starts_a_stopped_child_and_refuses_unknown_ones() {
    let (log, mut reader) = log();
    let (once, runs) = scripted("once", &log, |run| {
        if run == 1 { Then::Exit } else { Then::Serve }
    });
    let (keeper, _) = scripted("keeper", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .child(keeper)
        .child(once.restart(Restart::Transient))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    events_until(&mut sub, "once to exit", |e| {
        is(e, "root/once", &Exited(ExitReason::Normal))
    })
    .await;
    assert_eq!(
        node(&status(&handle).await, "once").state,
        ChildState::Stopped
    );

    within("restart once", handle.restart("once"))
        .await
        .unwrap();
    events_until(&mut sub, "once ready", |e| is(e, "root/once", &Ready)).await;
    let tree = status(&handle).await;
    assert_eq!(node(&tree, "once").state, ChildState::Running);
    assert_eq!(runs.get(), 2);

    match within("restart nope", handle.restart("nope")).await {
        Err(SupervisorError::NoSuchChild { path }) => assert_eq!(path, "root/nope"),
        other => panic!("expected NoSuchChild, got {other:?}"),
    }

    handle.shutdown();
    finish(running).await.unwrap();
    let mut entries = reader.take(6).await;
    entries.sort();
    assert_eq!(
        entries,
        [
            "exit:once#1",
            "start:keeper#1",
            "start:once#1",
            "start:once#2",
            "stop:keeper#1",
            "stop:once#2"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn restart_on_demand_skips_a_pending_backoff() {
    let (log, mut reader) = log();
    let (c, runs) = scripted(
        "c",
        &log,
        |run| {
            if run == 1 { Then::Fail } else { Then::Serve }
        },
    );
    let supervisor = Supervisor::builder("root")
        .child(c.backoff(Backoff::exponential(secs(60), secs(60)).jitter(0.0)))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    events_until(&mut sub, "c to back off", |e| {
        is(e, "root/c", &EventKind::Restarting { delay: secs(60) })
    })
    .await;
    let asked = Instant::now();
    within("restart c", handle.restart("c")).await.unwrap();
    assert_eq!(reader.take(2).await, ["start:c#1", "fail:c#1"]);
    let (entry, at) = reader.next_timed().await;
    assert_eq!(entry, "start:c#2");
    assert_eq!(at, asked, "started again without waiting out the backoff");

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn child_names_are_unique_within_their_supervisor() {
    let (log, _reader) = log();
    let dup = Supervisor::builder("root")
        .child(scripted("a", &log, |_| Then::Serve).0)
        .child(scripted("b", &log, |_| Then::Serve).0)
        .child(scripted("a", &log, |_| Then::Serve).0)
        .build();
    match dup {
        Err(err @ SupervisorError::DuplicateName { .. }) => {
            let SupervisorError::DuplicateName { path } = &err else {
                unreachable!()
            };
            assert_eq!(path, "root/a");
            assert!(err.to_string().contains("root/a"), "{err}");
        }
        other => panic!("expected DuplicateName, got {other:?}"),
    }

    let (a, runs_a) = scripted("a", &log, |_| Then::Serve);
    let (pool, runs_pool) = scripted("pool", &log, |_| Then::Serve);
    let db = Supervisor::builder("db").child(pool).build().unwrap();
    let supervisor = Supervisor::builder("root")
        .child(a)
        .child(ChildSpec::supervisor(db))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;

    for name in ["a", "db"] {
        let (spec, runs) = scripted(name, &log, |_| Then::Serve);
        match within("a duplicate add", handle.add(spec)).await {
            Err(err @ SupervisorError::DuplicateName { .. }) => {
                let expected = format!("root/{name}");
                assert!(err.to_string().contains(&expected), "{err}");
                assert!(
                    matches!(&err, SupervisorError::DuplicateName { path } if *path == expected),
                    "{err:?}"
                );
            }
            other => panic!("expected DuplicateName for {name}, got {other:?}"),
        }
        assert_eq!(runs.get(), 0);
    }

    let db = within("the db handle", handle.nested("db")).await.unwrap();
    let (again, runs_again) = scripted("pool", &log, |_| Then::Serve);
    match within("a duplicate nested add", db.add(again)).await {
        Err(SupervisorError::DuplicateName { path }) => assert_eq!(path, "root/db/pool"),
        other => panic!("expected DuplicateName, got {other:?}"),
    }
    assert_eq!(runs_again.get(), 0);

    // The same name in another supervisor is another child.
    let (root_pool, runs_root_pool) = scripted("pool", &log, |_| Then::Serve);
    within("add root/pool", handle.add(root_pool))
        .await
        .unwrap();
    events_until(&mut sub, "root/pool ready", |e| is(e, "root/pool", &Ready)).await;

    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["a", "db", "pool"]);
    assert_eq!(&*node(&tree, "pool").path, "root/pool");
    assert_eq!(&*node(&tree, "db/pool").path, "root/db/pool");
    assert_eq!(names(node(&tree, "db")), ["pool"]);
    // The refused duplicates disturbed nothing.
    assert_eq!(node(&tree, "a").state, ChildState::Running);
    assert_eq!(node(&tree, "db/pool").state, ChildState::Running);

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(
        (runs_a.get(), runs_pool.get(), runs_root_pool.get()),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn invalid_names_are_refused_with_the_reason() {
    let (log, _reader) = log();
    let too_long = "x".repeat(MAX_NAME_LEN + 1);
    let cases: [(&str, &str); 7] = [
        ("", "empty"),
        (".hidden", "dot"),
        ("a/b", "allowed"),
        ("sp ace", "allowed"),
        ("tab\t", "allowed"),
        ("é", "allowed"),
        (&too_long, "64"),
    ];
    let check = |err: SupervisorError, name: &str, fragment: &str| match &err {
        SupervisorError::InvalidName {
            name: given,
            reason,
        } => {
            assert_eq!(given, name);
            assert!(reason.contains(fragment), "{name:?}: {reason}");
            let text = err.to_string();
            assert!(text.contains(&format!("{name:?}")), "{text}");
            assert!(text.contains(fragment), "{text}");
        }
        other => panic!("expected InvalidName for {name:?}, got {other:?}"),
    };

    for (name, fragment) in cases {
        let built = Supervisor::builder("root")
            .child(ChildSpec::new(name, |_ctx: Context| async {
                Ok::<(), String>(())
            }))
            .build();
        check(built.unwrap_err(), name, fragment);
        let built = Supervisor::builder(name).build();
        check(built.unwrap_err(), name, fragment);
    }

    let longest = "y".repeat(MAX_NAME_LEN);
    let (serve, _) = scripted("serve", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root").child(serve).build().unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    for (name, fragment) in cases {
        let spec = ChildSpec::new(name, |_ctx: Context| async { Ok::<(), String>(()) });
        check(
            within("an invalid add", handle.add(spec))
                .await
                .unwrap_err(),
            name,
            fragment,
        );
    }
    let spec = ChildSpec::new(longest.as_str(), |ctx: Context| async move {
        ctx.shutdown_requested().await;
        Ok::<(), String>(())
    });
    within("add the longest name", handle.add(spec))
        .await
        .unwrap();
    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["serve", longest.as_str()]);

    handle.shutdown();
    finish(running).await.unwrap();
}

#[tokio::test]
async fn every_child_has_a_path_from_the_root() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let reporter = |name: &'static str| {
        let seen_tx = seen_tx.clone();
        ChildSpec::new(name, move |ctx: Context| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send((
                    ctx.name().to_owned(),
                    ctx.path().to_owned(),
                    ctx.supervisor().path().to_owned(),
                ));
                ctx.shutdown_requested().await;
                Ok::<(), String>(())
            }
        })
    };
    let cache = Supervisor::builder("cache")
        .child(reporter("leaf"))
        .build()
        .unwrap();
    let db = Supervisor::builder("db")
        .child(reporter("pool"))
        .child(ChildSpec::supervisor(cache))
        .build()
        .unwrap();
    let supervisor = Supervisor::builder("root")
        .child(ChildSpec::supervisor(db))
        .child(reporter("web"))
        .build()
        .unwrap();
    assert_eq!(supervisor.name(), "root");
    let handle = supervisor.handle();
    assert_eq!(handle.path(), "root");
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let events = events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            within("a child to report its path", seen_rx.recv())
                .await
                .unwrap(),
        );
    }
    seen.sort();
    let expect =
        |name: &str, path: &str, sup: &str| (name.to_owned(), path.to_owned(), sup.to_owned());
    assert_eq!(
        seen,
        [
            expect("leaf", "root/db/cache/leaf", "root/db/cache"),
            expect("pool", "root/db/pool", "root/db"),
            expect("web", "root/web", "root"),
        ]
    );
    // Children of nested supervisors start, in order, before the children after them.
    assert_eq!(
        paths_of(&events, &Starting),
        [
            "root/db",
            "root/db/pool",
            "root/db/cache",
            "root/db/cache/leaf",
            "root/web"
        ]
    );

    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["db", "web"]);
    assert_eq!(names(node(&tree, "db")), ["pool", "cache"]);
    assert_eq!(names(node(&tree, "db/cache")), ["leaf"]);
    for (relative, path) in [
        ("db", "root/db"),
        ("db/pool", "root/db/pool"),
        ("db/cache", "root/db/cache"),
        ("db/cache/leaf", "root/db/cache/leaf"),
        ("web", "root/web"),
    ] {
        let child = node(&tree, relative);
        assert_eq!(&*child.path, path);
        assert_eq!(child.state, ChildState::Running, "{child:?}");
    }

    let db = within("nested db", handle.nested("db")).await.unwrap();
    assert_eq!(db.path(), "root/db");
    let cache = within("nested db/cache", handle.nested("root/db/cache"))
        .await
        .unwrap();
    assert_eq!(cache.path(), "root/db/cache");
    let cache_status = status(&cache).await;
    assert_eq!(&*cache_status.path, "root/db/cache");
    assert_eq!(names(&cache_status), ["leaf"]);
    match within("nested web", handle.nested("web")).await {
        Err(SupervisorError::NotASupervisor { path }) => assert_eq!(path, "root/web"),
        other => panic!("expected NotASupervisor, got {other:?}"),
    }

    handle.shutdown();
    finish(running).await.unwrap();
}

#[tokio::test]
async fn a_dynamic_supervisor_stays_up_without_children() {
    let (log, mut reader) = log();
    let supervisor = Supervisor::builder("pool").dynamic().build().unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();

    // It answers, so it did not return for lack of children.
    let tree = status(&handle).await;
    assert!(tree.children.is_empty());
    assert_eq!(tree.state, ChildState::Running);

    // Children that end for good are removed, and the pool stays up.
    let (job, runs_job) = scripted("job", &log, |_| Then::Exit);
    within("add job", handle.add(job.restart(Restart::Temporary)))
        .await
        .unwrap();
    let events = events_until(&mut sub, "job removed", |e| is(e, "pool/job", &Removed)).await;
    assert_eq!(
        kinds(&events, "pool/job"),
        [Starting, Ready, Exited(ExitReason::Normal), Removed]
    );
    let (once, runs_once) = scripted("once", &log, |_| Then::Exit);
    within("add once", handle.add(once.restart(Restart::Transient)))
        .await
        .unwrap();
    events_until(&mut sub, "once removed", |e| is(e, "pool/once", &Removed)).await;
    assert!(status(&handle).await.children.is_empty());

    // A pool starts children at once: one that is not ready holds back no other.
    let (slow_started_tx, slow_started) = oneshot::channel();
    let slow_started_tx = Mutex::new(Some(slow_started_tx));
    let slow = ChildSpec::new("slow", move |ctx: Context| {
        let tx = slow_started_tx.lock().unwrap().take();
        async move {
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
            ctx.shutdown_requested().await;
            Ok::<(), String>(())
        }
    })
    .reports_ready()
    .start_timeout(None);
    within("add slow", handle.add(slow)).await.unwrap();
    within("slow to start", slow_started).await.unwrap();
    let (fast, runs_fast) = scripted("fast", &log, |_| Then::Serve);
    within("add fast", handle.add(fast)).await.unwrap();
    events_until(&mut sub, "fast ready", |e| is(e, "pool/fast", &Ready)).await;
    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["slow", "fast"]);
    assert_eq!(node(&tree, "slow").state, ChildState::Starting);
    assert_eq!(node(&tree, "fast").state, ChildState::Running);

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(
        (runs_job.get(), runs_once.get(), runs_fast.get()),
        (1, 1, 1)
    );
    let mut entries = reader.take(6).await;
    entries.sort();
    assert_eq!(
        entries,
        [
            "exit:job#1",
            "exit:once#1",
            "start:fast#1",
            "start:job#1",
            "start:once#1",
            "stop:fast#1"
        ]
    );
}

#[tokio::test]
async fn a_static_supervisor_returns_once_all_children_stopped_for_good() {
    // With no children at all, at once.
    let empty = Supervisor::builder("empty").build().unwrap();
    within("an empty supervisor to return", empty.run())
        .await
        .unwrap();

    let (log, _reader) = log();
    let (once, runs_once) = scripted("once", &log, |_| Then::Exit);
    let (temp, runs_temp) = scripted("temp", &log, |_| Then::Fail);
    let (flaky, runs_flaky) = scripted("flaky", &log, |run| {
        if run == 1 { Then::Fail } else { Then::Exit }
    });
    let supervisor = Supervisor::builder("root")
        .child(once.restart(Restart::Transient))
        .child(temp.restart(Restart::Temporary))
        .child(flaky.restart(Restart::Transient).backoff(Backoff::none()))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    within("the supervisor to return", supervisor.run())
        .await
        .unwrap();
    assert_eq!(
        (runs_once.get(), runs_temp.get(), runs_flaky.get()),
        (1, 1, 2)
    );
    let events = events_until(&mut sub, "flaky's normal exit", |e| {
        is(e, "root/flaky", &Exited(ExitReason::Normal))
    })
    .await;
    assert_eq!(
        kinds(&events, "root/temp"),
        [Starting, Ready, Exited(failure("temp", 1)), Removed]
    );
    assert_eq!(
        kinds(&events, "root/flaky"),
        [
            Starting,
            Ready,
            Exited(failure("flaky", 1)),
            EventKind::Restarting {
                delay: Duration::ZERO
            },
            Starting,
            Ready,
            Exited(ExitReason::Normal),
        ]
    );
    assert!(matches!(
        within("status after return", handle.status()).await,
        Err(SupervisorError::NotRunning { .. })
    ));
}

// ---- restart policies ----------------------------------------------------------------------

#[tokio::test]
async fn permanent_children_restart_after_normal_exits_errors_and_panics() {
    let (log, mut reader) = log();
    let (p, runs) = scripted("p", &log, |run| match run {
        1 => Then::Exit,
        2 => Then::Fail,
        3 => Then::Panic,
        _ => Then::Serve,
    });
    let supervisor = Supervisor::builder("root")
        .child(p.backoff(Backoff::none()))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let events = events_until_nth(&mut sub, "p's fourth run", 4, |e| is(e, "root/p", &Ready)).await;
    let restarting = EventKind::Restarting {
        delay: Duration::ZERO,
    };
    let panicked = ExitReason::Panicked("p run 3 panicked".into());
    assert_eq!(
        kinds(&events, "root/p"),
        [
            Starting,
            Ready,
            Exited(ExitReason::Normal),
            restarting.clone(),
            Starting,
            Ready,
            Exited(failure("p", 2)),
            restarting.clone(),
            Starting,
            Ready,
            Exited(panicked.clone()),
            restarting,
            Starting,
            Ready,
        ]
    );
    let tree = status(&handle).await;
    let p = node(&tree, "p");
    assert_eq!(p.state, ChildState::Running);
    assert_eq!(p.restarts, 3);
    assert_eq!(p.last_exit, Some(panicked));

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(runs.get(), 4);
    assert_eq!(
        reader.take(8).await,
        [
            "start:p#1",
            "exit:p#1",
            "start:p#2",
            "fail:p#2",
            "start:p#3",
            "panic:p#3",
            "start:p#4",
            "stop:p#4"
        ]
    );
}

#[tokio::test]
async fn transient_children_restart_only_after_a_failure() {
    let (log, _reader) = log();
    let (t, runs) = scripted("t", &log, |run| match run {
        1 => Then::Fail,
        2 => Then::Panic,
        _ => Then::Exit,
    });
    let (keeper, _) = scripted("keeper", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .child(t.restart(Restart::Transient).backoff(Backoff::none()))
        .child(keeper)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let events = events_until(&mut sub, "t's normal exit", |e| {
        is(e, "root/t", &Exited(ExitReason::Normal))
    })
    .await;
    let restarting = EventKind::Restarting {
        delay: Duration::ZERO,
    };
    assert_eq!(
        kinds(&events, "root/t"),
        [
            Starting,
            Ready,
            Exited(failure("t", 1)),
            restarting.clone(),
            Starting,
            Ready,
            Exited(ExitReason::Panicked("t run 2 panicked".into())),
            restarting,
            Starting,
            Ready,
            Exited(ExitReason::Normal),
        ]
    );
    let tree = status(&handle).await;
    let t = node(&tree, "t");
    assert_eq!(t.state, ChildState::Stopped);
    assert_eq!(t.restarts, 2);
    assert_eq!(t.last_exit, Some(ExitReason::Normal));
    assert_eq!(t.uptime, None);
    assert_eq!(runs.get(), 3);
    assert_eq!(node(&tree, "keeper").state, ChildState::Running);

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(runs.get(), 3);
}

#[tokio::test]
async fn temporary_children_never_restart_and_are_removed() {
    let (log, _reader) = log();
    let (ok, runs_ok) = scripted("ok", &log, |_| Then::Exit);
    let (err, runs_err) = scripted("err", &log, |_| Then::Fail);
    let (boom, runs_boom) = scripted("boom", &log, |_| Then::Panic);
    let (keeper, _) = scripted("keeper", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .child(keeper)
        .children(
            [ok, err, boom].map(|spec| spec.restart(Restart::Temporary).backoff(Backoff::none())),
        )
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let mut removed = 0;
    let events = events_until(&mut sub, "three removals", |e| {
        removed += usize::from(e.kind == Removed);
        removed == 3
    })
    .await;
    for (path, reason) in [
        ("root/ok", ExitReason::Normal),
        ("root/err", failure("err", 1)),
        (
            "root/boom",
            ExitReason::Panicked("boom run 1 panicked".into()),
        ),
    ] {
        assert_eq!(
            kinds(&events, path),
            [Starting, Ready, Exited(reason), Removed],
            "{path}"
        );
    }
    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["keeper"]);

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!((runs_ok.get(), runs_err.get(), runs_boom.get()), (1, 1, 1));
}

// ---- strategies ------------------------------------------------------------------------------

#[tokio::test]
async fn one_for_one_restarts_only_the_child_that_failed() {
    let (log, mut reader) = log();
    let (a, runs_a, _) = puppet("a", &log);
    let (b, runs_b, b_cmd) = puppet("b", &log);
    let (c, runs_c, _) = puppet("c", &log);
    let supervisor = Supervisor::builder("root")
        .strategy(Strategy::OneForOne)
        .children([a, b, c].map(|spec| spec.backoff(Backoff::none())))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;
    let mut started = reader.take(3).await;
    started.sort();
    assert_eq!(started, ["start:a#1", "start:b#1", "start:c#1"]);

    b_cmd.send(Cmd::Fail).unwrap();
    assert_eq!(reader.take(2).await, ["fail:b#1", "start:b#2"]);
    let events = events_until_nth(&mut sub, "b's second run", 1, |e| is(e, "root/b", &Ready)).await;
    assert!(paths_of(&events, &Stopping).is_empty(), "{events:#?}");
    assert_eq!(paths_of(&events, &Starting), ["root/b"]);

    let tree = status(&handle).await;
    let restarts: Vec<u32> = tree.children.iter().map(|c| c.restarts).collect();
    assert_eq!(restarts, [0, 1, 0]);
    assert_eq!(node(&tree, "b").last_exit, Some(failure("b", 1)));
    assert_eq!(node(&tree, "a").last_exit, None);
    assert_eq!(node(&tree, "c").last_exit, None);

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!((runs_a.get(), runs_b.get(), runs_c.get()), (1, 2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_stops_the_others_in_reverse_order_then_starts_all_in_order() {
    let (log, mut reader) = log();
    let (a, runs_a, _) = puppet("a", &log);
    let (b, runs_b, _) = puppet("b", &log);
    let (c, runs_c, c_cmd) = puppet("c", &log);
    let (d, runs_d, _) = puppet("d", &log);
    let supervisor = Supervisor::builder("root")
        .strategy(Strategy::OneForAll)
        .children([a, b, c, d].map(|spec| spec.reports_ready().backoff(Backoff::none())))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    assert_eq!(
        reader.take(4).await,
        ["start:a#1", "start:b#1", "start:c#1", "start:d#1"]
    );
    events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;

    c_cmd.send(Cmd::Fail).unwrap();
    assert_eq!(
        reader.take(8).await,
        [
            "fail:c#1",
            "stop:d#1",
            "stop:b#1",
            "stop:a#1",
            "start:a#2",
            "start:b#2",
            "start:c#2",
            "start:d#2",
        ]
    );
    let events = events_until(&mut sub, "d ready again", |e| is(e, "root/d", &Ready)).await;
    assert_eq!(paths_of(&events, &Stopping), ["root/d", "root/b", "root/a"]);
    assert_eq!(
        paths_of(&events, &Starting),
        ["root/a", "root/b", "root/c", "root/d"]
    );
    assert_eq!(
        kinds(&events, "root/b"),
        [
            Stopping,
            Exited(ExitReason::Shutdown),
            EventKind::Restarting {
                delay: Duration::ZERO
            },
            Starting,
            Ready
        ]
    );
    assert_eq!(
        kinds(&events, "root/c")[..2],
        [
            Exited(failure("c", 1)),
            EventKind::Restarting {
                delay: Duration::ZERO
            }
        ]
    );

    let tree = status(&handle).await;
    for child in &tree.children {
        assert_eq!(child.state, ChildState::Running, "{child:?}");
        assert_eq!(child.restarts, 1, "{child:?}");
    }
    assert_eq!(node(&tree, "c").last_exit, Some(failure("c", 1)));
    assert_eq!(node(&tree, "a").last_exit, Some(ExitReason::Shutdown));

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(
        (runs_a.get(), runs_b.get(), runs_c.get(), runs_d.get()),
        (2, 2, 2, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_exactly_the_later_siblings() {
    let (log, mut reader) = log();
    let mut runs = Vec::new();
    let mut commands = Vec::new();
    let mut specs = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        let (spec, r, cmd) = puppet(name, &log);
        specs.push(spec.reports_ready().backoff(Backoff::none()));
        runs.push(r);
        commands.push(cmd);
    }
    let supervisor = Supervisor::builder("root")
        .strategy(Strategy::RestForOne)
        .children(specs)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    assert_eq!(
        reader.take(5).await,
        [
            "start:a#1",
            "start:b#1",
            "start:c#1",
            "start:d#1",
            "start:e#1"
        ]
    );
    events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;

    commands[2].send(Cmd::Fail).unwrap();
    assert_eq!(
        reader.take(6).await,
        [
            "fail:c#1",
            "stop:e#1",
            "stop:d#1",
            "start:c#2",
            "start:d#2",
            "start:e#2",
        ]
    );
    let events = events_until(&mut sub, "e ready again", |e| is(e, "root/e", &Ready)).await;
    assert_eq!(paths_of(&events, &Stopping), ["root/e", "root/d"]);
    assert_eq!(paths_of(&events, &Starting), ["root/c", "root/d", "root/e"]);
    assert!(kinds(&events, "root/a").is_empty(), "{events:#?}");
    assert!(kinds(&events, "root/b").is_empty(), "{events:#?}");

    let tree = status(&handle).await;
    let restarts: Vec<u32> = tree.children.iter().map(|c| c.restarts).collect();
    assert_eq!(restarts, [0, 0, 1, 1, 1]);
    assert!(tree.children.iter().all(|c| c.state == ChildState::Running));
    assert_eq!(node(&tree, "a").last_exit, None);
    assert_eq!(node(&tree, "b").last_exit, None);
    let counts: Vec<u32> = runs.iter().map(Runs::get).collect();
    assert_eq!(counts, [1, 1, 2, 2, 2]);

    // The last child's failure restarts only it.
    commands[4].send(Cmd::Fail).unwrap();
    assert_eq!(reader.take(2).await, ["fail:e#2", "start:e#3"]);
    let events = events_until(&mut sub, "e ready again", |e| is(e, "root/e", &Ready)).await;
    assert!(paths_of(&events, &Stopping).is_empty(), "{events:#?}");
    let tree = status(&handle).await;
    let restarts: Vec<u32> = tree.children.iter().map(|c| c.restarts).collect();
    assert_eq!(restarts, [0, 0, 1, 1, 2]);

    handle.shutdown();
    finish(running).await.unwrap();
    let counts: Vec<u32> = runs.iter().map(Runs::get).collect();
    assert_eq!(counts, [1, 1, 2, 2, 3]);
}

// ---- intensity -----------------------------------------------------------------------------

#[tokio::test]
async fn a_restart_storm_past_the_intensity_fails_the_supervisor() {
    let (log, mut reader) = log();
    let (crasher, runs) = scripted("crasher", &log, |_| Then::Fail);
    let (bystander, runs_bystander) = scripted("bystander", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("storm")
        .intensity(Intensity::new(3, secs(60)))
        .child(bystander)
        .child(crasher.backoff(Backoff::none()))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let err = within("the supervisor to fail", supervisor.run())
        .await
        .unwrap_err();
    match &err {
        SupervisorError::IntensityExceeded {
            path,
            max_restarts,
            period,
            child,
            reason,
        } => {
            assert_eq!(path, "storm");
            assert_eq!(*max_restarts, 3);
            assert_eq!(*period, secs(60));
            assert_eq!(child, "storm/crasher");
            assert_eq!(*reason, failure("crasher", 4));
        }
        other => panic!("expected IntensityExceeded, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("storm") && text.contains("storm/crasher"),
        "{text}"
    );
    assert_eq!(
        runs.get(),
        4,
        "three restarts, and the fourth failure ends it"
    );
    assert_eq!(runs_bystander.get(), 1);

    let events = events_until(&mut sub, "the bystander to stop", |e| {
        is(e, "storm/bystander", &Exited(ExitReason::Shutdown))
    })
    .await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::IntensityExceeded)
            .map(|e| &*e.path)
            .collect::<Vec<_>>(),
        ["storm"]
    );
    assert_eq!(
        delays(&events, "storm/crasher"),
        [Duration::ZERO; 3],
        "three restarts, not four"
    );
    let mut entries = reader.take(10).await;
    entries.sort();
    assert_eq!(
        entries,
        [
            "fail:crasher#1",
            "fail:crasher#2",
            "fail:crasher#3",
            "fail:crasher#4",
            "start:bystander#1",
            "start:crasher#1",
            "start:crasher#2",
            "start:crasher#3",
            "start:crasher#4",
            "stop:bystander#1",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_intensity_counts_restarts_within_its_period_only() {
    // Failing every 4 s, the third failure is the third restart within 10 s.
    let (log, _reader) = log();
    let (c, runs) = scripted("c", &log, |_| Then::FailAfter(secs(4)));
    let supervisor = Supervisor::builder("root")
        .intensity(Intensity::new(2, secs(10)))
        .child(c.backoff(Backoff::none()))
        .build()
        .unwrap();
    let began = Instant::now();
    let err = within("the supervisor to fail", supervisor.run())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SupervisorError::IntensityExceeded { ref reason, .. } if *reason == failure("c", 3)),
        "{err:?}"
    );
    assert_eq!(runs.get(), 3);
    assert_eq!(began.elapsed(), secs(12));
}

#[tokio::test(start_paused = true)]
async fn restarts_spread_wider_than_the_period_never_exceed_the_intensity() {
    // Failing every 6 s, at most two restarts ever fall within 10 s.
    let (log, mut reader) = log();
    let (c, runs) = scripted("c", &log, |_| Then::FailAfter(secs(6)));
    let supervisor = Supervisor::builder("root")
        .intensity(Intensity::new(2, secs(10)))
        .child(c.backoff(Backoff::none()))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    let began = Instant::now();
    for run in 1..=10 {
        let (entry, at) = reader.next_timed().await;
        assert_eq!(entry, format!("start:c#{run}"));
        assert_eq!(at - began, secs(6) * (run - 1));
        if run < 10 {
            assert_eq!(reader.next().await, format!("fail:c#{run}"));
        }
    }
    let tree = status(&handle).await;
    assert_eq!(node(&tree, "c").restarts, 9);
    assert_eq!(node(&tree, "c").state, ChildState::Running);

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(reader.next().await, "stop:c#10");
    assert_eq!(runs.get(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_supervisor_past_its_intensity_is_restarted_by_its_parent() {
    let (log, mut reader) = log();
    let (flaky, runs_flaky) = scripted("flaky", &log, |run| {
        if run <= 2 { Then::Fail } else { Then::Serve }
    });
    let inner = Supervisor::builder("inner")
        .intensity(Intensity::new(1, secs(60)))
        .child(flaky.backoff(Backoff::none()))
        .build()
        .unwrap();
    let (sibling, runs_sibling) = scripted("sibling", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .child(sibling)
        .child(ChildSpec::supervisor(inner).backoff(Backoff::none()))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();

    let mut events = events_until(&mut sub, "inner to fail", |e| {
        &*e.path == "root/inner" && matches!(e.kind, Exited(_))
    })
    .await;
    events.extend(
        events_until(&mut sub, "inner ready again", |e| {
            is(e, "root/inner", &Ready)
        })
        .await,
    );

    let Some(Exited(ExitReason::Failed(message))) = kinds(&events, "root/inner")
        .into_iter()
        .find(|k| matches!(k, Exited(_)))
    else {
        panic!("inner did not fail: {events:#?}");
    };
    for part in [
        "root/inner",
        "exceeded its restart intensity",
        "root/inner/flaky",
        "flaky run 2 failed",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    // The nested supervisor said it exceeded its intensity before its parent saw it exit, and
    // the parent restarted it by its own policy.
    let inner_kinds = kinds(&events, "root/inner");
    let lifecycle: Vec<&EventKind> = inner_kinds
        .iter()
        .filter(|k| {
            matches!(
                k,
                Starting | Exited(_) | EventKind::Restarting { .. } | EventKind::IntensityExceeded
            )
        })
        .collect();
    assert_eq!(
        lifecycle,
        [
            &Starting,
            &EventKind::IntensityExceeded,
            &Exited(ExitReason::Failed(message.clone())),
            &EventKind::Restarting {
                delay: Duration::ZERO
            },
            &Starting,
        ]
    );
    assert_eq!(inner_kinds.last(), Some(&Ready));
    assert_eq!(
        kinds(&events, "root/inner/flaky")
            .into_iter()
            .filter(|k| !matches!(k, Ready))
            .collect::<Vec<_>>(),
        [
            Starting,
            Exited(failure("flaky", 1)),
            EventKind::Restarting {
                delay: Duration::ZERO
            },
            Starting,
            Exited(failure("flaky", 2)),
            Starting,
        ]
    );
    assert_eq!(
        kinds(&events, "root/sibling"),
        [Starting, Ready],
        "untouched"
    );

    let tree = status(&handle).await;
    let inner = node(&tree, "inner");
    assert_eq!(inner.state, ChildState::Running);
    assert_eq!(inner.restarts, 1);
    assert_eq!(inner.last_exit, Some(ExitReason::Failed(message)));
    let flaky = node(&tree, "inner/flaky");
    assert_eq!(&*flaky.path, "root/inner/flaky");
    assert_eq!(flaky.state, ChildState::Running);
    assert_eq!(flaky.restarts, 0, "a fresh run of inner has a fresh child");
    let sibling = node(&tree, "sibling");
    assert_eq!((sibling.restarts, sibling.last_exit.clone()), (0, None));

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!((runs_flaky.get(), runs_sibling.get()), (3, 1));
    let mut entries = reader.take(8).await;
    entries.sort();
    assert_eq!(
        entries,
        [
            "fail:flaky#1",
            "fail:flaky#2",
            "start:flaky#1",
            "start:flaky#2",
            "start:flaky#3",
            "start:sibling#1",
            "stop:flaky#3",
            "stop:sibling#1",
        ]
    );
}

#[tokio::test]
async fn a_nested_supervisor_failure_past_the_parents_intensity_fails_the_parent() {
    let (log, mut reader) = log();
    let (crasher, runs_crasher) = scripted("crasher", &log, |_| Then::Fail);
    let inner = Supervisor::builder("inner")
        .intensity(Intensity::new(0, secs(60)))
        .child(crasher.backoff(Backoff::none()))
        .build()
        .unwrap();
    let (sibling, runs_sibling) = scripted("sibling", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .intensity(Intensity::new(0, secs(60)))
        .child(sibling)
        .child(ChildSpec::supervisor(inner).backoff(Backoff::none()))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let err = within("the root to fail", supervisor.run())
        .await
        .unwrap_err();
    let SupervisorError::IntensityExceeded {
        path,
        max_restarts,
        child,
        reason: ExitReason::Failed(message),
        ..
    } = &err
    else {
        panic!("expected IntensityExceeded after a failure, got {err:?}");
    };
    assert_eq!((path.as_str(), *max_restarts), ("root", 0));
    assert_eq!(child, "root/inner");
    assert!(
        message.contains("supervisor root/inner exceeded its restart intensity")
            && message.contains("root/inner/crasher"),
        "{message}"
    );
    assert_eq!((runs_crasher.get(), runs_sibling.get()), (1, 1));

    let events = events_until(&mut sub, "root's intensity", |e| {
        is(e, "root", &EventKind::IntensityExceeded)
    })
    .await;
    assert_eq!(
        paths_of(&events, &EventKind::IntensityExceeded),
        ["root/inner", "root"]
    );
    let mut entries = reader.take(4).await;
    entries.sort();
    assert_eq!(
        entries,
        [
            "fail:crasher#1",
            "start:crasher#1",
            "start:sibling#1",
            "stop:sibling#1"
        ]
    );
}

#[tokio::test]
async fn a_nested_supervisor_reports_ready_once_per_run() {
    let (log, _reader) = log();
    let (w, _) = scripted("w", &log, |_| Then::Serve);
    let inner = Supervisor::builder("inner").child(w).build().unwrap();
    let supervisor = Supervisor::builder("root")
        .child(ChildSpec::supervisor(inner))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let events = events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;
    assert_eq!(
        events,
        [
            ev("root/inner", Starting),
            ev("root/inner/w", Starting),
            ev("root/inner/w", Ready),
            ev("root/inner", Ready),
            ev("root", Ready),
        ]
    );
    handle.shutdown();
    finish(running).await.unwrap();
}

// ---- backoff -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn backoff_doubles_up_to_its_cap() {
    let (log, mut reader) = log();
    let (c, runs) = scripted(
        "c",
        &log,
        |run| {
            if run <= 8 { Then::Fail } else { Then::Serve }
        },
    );
    let supervisor = Supervisor::builder("root")
        .intensity(Intensity::new(100, HOUR))
        .child(c.backoff(Backoff::exponential(ms(100), ms(1000)).jitter(0.0)))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let mut starts = Vec::new();
    for run in 1..=9 {
        let (entry, at) = reader.next_timed().await;
        assert_eq!(entry, format!("start:c#{run}"));
        starts.push(at);
        if run <= 8 {
            assert_eq!(reader.next().await, format!("fail:c#{run}"));
        }
    }
    let expected = [100, 200, 400, 800, 1000, 1000, 1000, 1000].map(ms);
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, expected);

    let events = events_until_nth(&mut sub, "c's ninth run", 9, |e| is(e, "root/c", &Ready)).await;
    assert_eq!(delays(&events, "root/c"), expected);
    let tree = status(&handle).await;
    let c = node(&tree, "c");
    assert_eq!(c.state, ChildState::Running);
    assert_eq!(c.restarts, 8);
    assert_eq!(c.last_exit, Some(failure("c", 8)));

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(runs.get(), 9);
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_stable_running() {
    let (log, mut reader) = log();
    let (c, _) = scripted("c", &log, |run| match run {
        4 => Then::FailAfter(secs(6)), // stable: longer than reset_after
        6 => Then::FailAfter(secs(4)), // not stable
        8.. => Then::Serve,
        _ => Then::Fail,
    });
    let supervisor = Supervisor::builder("root")
        .intensity(Intensity::new(100, HOUR))
        .child(
            c.backoff(
                Backoff::exponential(ms(100), secs(10))
                    .jitter(0.0)
                    .reset_after(secs(5)),
            ),
        )
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let mut starts = Vec::new();
    for run in 1..=8 {
        let (entry, at) = reader.next_timed().await;
        assert_eq!(entry, format!("start:c#{run}"));
        starts.push(at);
        if run < 8 {
            assert_eq!(reader.next().await, format!("fail:c#{run}"));
        }
    }
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [
            ms(100),
            ms(200),
            ms(400),
            secs(6) + ms(100), // ran 6 s: back to the initial delay
            ms(200),
            secs(4) + ms(400), // ran 4 s: keeps growing
            ms(800),
        ]
    );
    let events = events_until_nth(&mut sub, "c's eighth run", 8, |e| is(e, "root/c", &Ready)).await;
    assert_eq!(
        delays(&events, "root/c"),
        [100, 200, 400, 100, 200, 400, 800].map(ms)
    );

    handle.shutdown();
    finish(running).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn backoff_jitter_stays_within_its_bounds() {
    const RESTARTS: u32 = 40;
    let (log, mut reader) = log();
    let (c, _) = scripted("c", &log, |run| {
        if run <= RESTARTS {
            Then::Fail
        } else {
            Then::Serve
        }
    });
    let supervisor = Supervisor::builder("root")
        .intensity(Intensity::new(1000, HOUR))
        .child(c.backoff(Backoff::exponential(secs(1), secs(1)).jitter(0.5)))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let mut starts = Vec::new();
    for run in 1..=RESTARTS + 1 {
        let (entry, at) = reader.next_timed().await;
        assert_eq!(entry, format!("start:c#{run}"));
        starts.push(at);
        if run <= RESTARTS {
            reader.next().await;
        }
    }
    let events = events_until_nth(&mut sub, "the last run", RESTARTS as usize + 1, |e| {
        is(e, "root/c", &Ready)
    })
    .await;
    let announced = delays(&events, "root/c");
    assert_eq!(announced.len(), RESTARTS as usize);
    for (i, (delay, gap)) in announced
        .iter()
        .zip(starts.windows(2).map(|w| w[1] - w[0]))
        .enumerate()
    {
        assert!(
            (ms(500)..=ms(1500)).contains(delay),
            "restart {i}: delay {delay:?} outside 1 s ± 50%"
        );
        // The timer has millisecond resolution.
        assert!(
            gap >= *delay && gap <= *delay + ms(1),
            "restart {i}: waited {gap:?} for a delay of {delay:?}"
        );
    }
    // Jitter spreads delays both ways (each side has odds of 2^-40 of never being hit).
    assert!(announced.iter().any(|d| *d < secs(1)), "{announced:?}");
    assert!(announced.iter().any(|d| *d > secs(1)), "{announced:?}");

    handle.shutdown();
    finish(running).await.unwrap();
}

// ---- readiness -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_child_starts_only_once_the_previous_one_is_ready() {
    let (log, mut reader) = log();
    let (release, gate) = oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some(gate)));
    let a = {
        let log = log.clone();
        ChildSpec::new("a", move |ctx: Context| {
            let (log, gate) = (log.clone(), gate.lock().unwrap().take());
            async move {
                log.push("start:a".to_owned());
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                log.push("ready:a".to_owned());
                ctx.ready();
                ctx.shutdown_requested().await;
                Ok::<(), String>(())
            }
        })
        .reports_ready()
        .start_timeout(None)
    };
    let (b, runs_b) = scripted("b", &log, |_| Then::Serve);
    let (c, runs_c) = scripted("c", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .child(a)
        .child(b.reports_ready())
        .child(c)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();

    assert_eq!(reader.next().await, "start:a");
    // a is running and not ready: b and c wait.
    let tree = status(&handle).await;
    assert_eq!(node(&tree, "a").state, ChildState::Starting);
    assert_eq!(node(&tree, "b").state, ChildState::Waiting);
    assert_eq!(node(&tree, "c").state, ChildState::Waiting);
    assert_eq!((runs_b.get(), runs_c.get()), (0, 0));
    reader.assert_quiet();

    release.send(()).unwrap();
    assert_eq!(reader.take(3).await, ["ready:a", "start:b#1", "start:c#1"]);
    let events = events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;
    assert_eq!(
        events,
        [
            ev("root/a", Starting),
            ev("root/a", Ready),
            ev("root/b", Starting),
            ev("root/b", Ready),
            ev("root/c", Starting),
            ev("root/c", Ready),
            ev("root", Ready),
        ]
    );
    let tree = status(&handle).await;
    assert!(
        tree.children.iter().all(|c| c.state == ChildState::Running),
        "{tree:#?}"
    );

    handle.shutdown();
    finish(running).await.unwrap();
}

#[tokio::test]
async fn a_child_that_does_not_report_readiness_is_ready_once_started() {
    let (log, mut reader) = log();
    // Never calls `ready()`.
    let quiet = {
        let log = log.clone();
        ChildSpec::new("quiet", move |ctx: Context| {
            let log = log.clone();
            async move {
                log.push("start:quiet".to_owned());
                ctx.shutdown_requested().await;
                Ok::<(), String>(())
            }
        })
    };
    let (next, runs_next) = scripted("next", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .child(quiet)
        .child(next.reports_ready())
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let events = events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;
    assert_eq!(
        events,
        [
            ev("root/quiet", Starting),
            ev("root/quiet", Ready),
            ev("root/next", Starting),
            ev("root/next", Ready),
            ev("root", Ready),
        ]
    );
    let mut entries = reader.take(2).await;
    entries.sort();
    assert_eq!(entries, ["start:next#1", "start:quiet"]);
    let tree = status(&handle).await;
    assert_eq!(node(&tree, "quiet").state, ChildState::Running);
    assert_eq!(node(&tree, "next").state, ChildState::Running);
    assert_eq!(runs_next.get(), 1);

    handle.shutdown();
    finish(running).await.unwrap();
}

/// A child that reports readiness, but only from run `ready_from` on; before that it waits to be
/// asked to stop (or ignores the request, when `stubborn`).
fn late(name: &'static str, log: &Log, ready_from: u32, stubborn: bool) -> (ChildSpec, Runs) {
    let runs = Runs::default();
    let spec = {
        let (log, runs) = (log.clone(), runs.clone());
        ChildSpec::new(name, move |ctx: Context| {
            let (log, runs) = (log.clone(), runs.clone());
            async move {
                let run = runs.next();
                log.push(format!("start:{name}#{run}"));
                if run >= ready_from {
                    ctx.ready();
                    ctx.shutdown_requested().await;
                } else if stubborn {
                    std::future::pending::<()>().await;
                } else {
                    ctx.shutdown_requested().await;
                }
                log.push(format!("stop:{name}#{run}"));
                Ok::<(), String>(())
            }
        })
        .reports_ready()
    };
    (spec, runs)
}

#[tokio::test(start_paused = true)]
async fn a_child_not_ready_within_its_start_timeout_fails_and_is_restarted() {
    let (log, mut reader) = log();
    let (a, runs_a) = late("a", &log, 2, false);
    let (b, runs_b) = scripted("b", &log, |_| Then::Serve);
    let supervisor = Supervisor::builder("root")
        .child(
            a.start_timeout(Some(secs(5)))
                .backoff(Backoff::exponential(secs(1), secs(10)).jitter(0.0)),
        )
        .child(b)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let began = Instant::now();
    let running = supervisor.spawn();

    let mut timeline = Vec::new();
    for _ in 0..4 {
        let (entry, at) = reader.next_timed().await;
        timeline.push((entry, at - began));
    }
    let at = |entry: &str, after: Duration| (entry.to_owned(), after);
    assert_eq!(
        timeline,
        [
            at("start:a#1", Duration::ZERO),
            at("stop:a#1", secs(5)), // asked to stop when its start timeout ran out
            at("start:a#2", secs(6)), // restarted after its backoff
            at("start:b#1", secs(6)), // b waited for a to be ready
        ]
    );
    let events = events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;
    let not_ready = ExitReason::Failed("not ready within 5s".into());
    assert_eq!(
        kinds(&events, "root/a"),
        [
            Starting,
            Stopping,
            Exited(not_ready.clone()),
            EventKind::Restarting { delay: secs(1) },
            Starting,
            Ready,
        ]
    );
    assert_eq!(
        events
            .iter()
            .position(|e| is(e, "root/b", &Starting))
            .expect("b started"),
        events
            .iter()
            .rposition(|e| is(e, "root/a", &Ready))
            .unwrap()
            + 1,
        "{events:#?}"
    );
    let tree = status(&handle).await;
    let a = node(&tree, "a");
    assert_eq!(a.state, ChildState::Running);
    assert_eq!(a.restarts, 1);
    assert_eq!(a.last_exit, Some(not_ready));
    let b = node(&tree, "b");
    assert_eq!((b.state, b.restarts), (ChildState::Running, 0));

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!((runs_a.get(), runs_b.get()), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_start_timeout_failure_keeps_its_reason_when_the_child_must_be_aborted() {
    let (log, mut reader) = log();
    let (a, runs_a) = late("a", &log, 2, true);
    let supervisor = Supervisor::builder("root")
        .child(
            a.start_timeout(Some(secs(5)))
                .shutdown(Shutdown::Timeout(secs(2)))
                .backoff(Backoff::none()),
        )
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let began = Instant::now();
    let running = supervisor.spawn();
    let events = events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;
    let not_ready = ExitReason::Failed("not ready within 5s".into());
    assert_eq!(
        kinds(&events, "root/a"),
        [
            Starting,
            Stopping,
            Exited(not_ready.clone()),
            EventKind::Restarting {
                delay: Duration::ZERO
            },
            Starting,
            Ready,
        ]
    );
    assert_eq!(reader.next().await, "start:a#1");
    let (entry, at) = reader.next_timed().await;
    assert_eq!((entry.as_str(), at - began), ("start:a#2", secs(7)));
    assert_eq!(node(&status(&handle).await, "a").last_exit, Some(not_ready));

    handle.shutdown();
    finish(running).await.unwrap();
    assert_eq!(runs_a.get(), 2);
}

// ---- events and status ---------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn status_follows_a_child_through_its_backoffs() {
    let (log, _reader) = log();
    let (c, _) = scripted(
        "c",
        &log,
        |run| {
            if run <= 2 { Then::Fail } else { Then::Serve }
        },
    );
    let supervisor = Supervisor::builder("root")
        .child(c.backoff(Backoff::exponential(secs(10), secs(60)).jitter(0.0)))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let began = Instant::now();
    let running = supervisor.spawn();

    for (restarts, until) in [(1, secs(10)), (2, secs(10 + 20))] {
        events_until(&mut sub, "a restart", |e| {
            &*e.path == "root/c" && matches!(e.kind, EventKind::Restarting { .. })
        })
        .await;
        let tree = status(&handle).await;
        let c = node(&tree, "c");
        assert_eq!(
            c.state,
            ChildState::Restarting {
                until: began + until
            }
        );
        assert_eq!(c.restarts, restarts);
        assert_eq!(c.last_exit, Some(failure("c", restarts)));
        assert_eq!(c.uptime, None);
    }
    events_until(&mut sub, "the third run", |e| is(e, "root/c", &Ready)).await;
    assert_eq!(began.elapsed(), secs(30));
    let tree = status(&handle).await;
    let c = node(&tree, "c");
    assert_eq!(c.state, ChildState::Running);
    assert_eq!(c.restarts, 2);
    assert_eq!(c.last_exit, Some(failure("c", 2)));
    assert_eq!(c.uptime, Some(Duration::ZERO));

    handle.shutdown();
    finish(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_children_appear_under_their_supervisor() {
    let (log, mut reader) = log();
    let (pool, runs_pool, pool_cmd) = puppet("pool", &log);
    let (web, _, _) = puppet("web", &log);
    let db = Supervisor::builder("db")
        .child(pool.backoff(Backoff::none()))
        .build()
        .unwrap();
    let supervisor = Supervisor::builder("root")
        .child(ChildSpec::supervisor(db))
        .child(web)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut sub = handle.subscribe();
    let running = supervisor.spawn();
    let events = events_until(&mut sub, "root ready", |e| is(e, "root", &Ready)).await;
    assert_eq!(kinds(&events, "root/db/pool"), [Starting, Ready]);
    let mut started = reader.take(2).await;
    started.sort();
    assert_eq!(started, ["start:pool#1", "start:web#1"]);

    let db = within("nested db", handle.nested("db")).await.unwrap();
    let mut db_events = db.subscribe();

    // A restart inside db shows in both streams; db's stream holds only db's subtree.
    pool_cmd.send(Cmd::Fail).unwrap();
    assert_eq!(reader.take(2).await, ["fail:pool#1", "start:pool#2"]);
    let expected = [
        ev("root/db/pool", Exited(failure("pool", 1))),
        ev(
            "root/db/pool",
            EventKind::Restarting {
                delay: Duration::ZERO,
            },
        ),
        ev("root/db/pool", Starting),
        ev("root/db/pool", Ready),
    ];
    let seen = events_until(&mut db_events, "pool ready again", |e| {
        is(e, "root/db/pool", &Ready)
    })
    .await;
    assert_eq!(seen, expected);
    let seen = events_until(&mut sub, "pool ready again", |e| {
        is(e, "root/db/pool", &Ready)
    })
    .await;
    assert_eq!(seen, expected);

    // A restart outside db shows only in the root's stream.
    handle.restart("web").await.unwrap();
    let seen = events_until(&mut sub, "web ready again", |e| is(e, "root/web", &Ready)).await;
    assert!(seen.iter().all(|e| &*e.path == "root/web"), "{seen:#?}");

    let tree = status(&handle).await;
    assert_eq!(names(&tree), ["db", "web"]);
    let db_node = node(&tree, "db");
    assert_eq!(names(db_node), ["pool"]);
    let pool = node(&tree, "db/pool");
    assert_eq!(&*pool.path, "root/db/pool");
    assert_eq!(pool.state, ChildState::Running);
    assert_eq!(pool.restarts, 1);
    assert_eq!(pool.last_exit, Some(failure("pool", 1)));
    assert_eq!(db_node.restarts, 0);
    assert_eq!(db_node.last_exit, None);
    let from_db = status(&db).await;
    assert_eq!(&*from_db.path, "root/db");
    assert_eq!(names(&from_db), ["pool"]);
    assert_eq!(from_db.children[0].restarts, 1);

    // Nothing about root/web reached db's stream: web stops first, yet the next event db's
    // subscriber sees is about db itself.
    handle.shutdown();
    let next = within("db's next event", db_events.recv()).await.unwrap();
    assert_eq!(&*next.path, "root/db", "{next:?}");
    finish(running).await.unwrap();
    assert_eq!(runs_pool.get(), 2);
}
