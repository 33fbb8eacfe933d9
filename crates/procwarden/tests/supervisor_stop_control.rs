//! Integration tests of the supervisor's shutdown, containment, reload, messages, status and
//! events.
//!
//! Nothing here waits on a real-time sleep: tests are sequenced with channels, counters, events
//! and tokio's paused clock, and every wait is bounded so that a bug fails instead of hanging.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procwarden::supervisor::{ChildState, Event, EventKind, Shutdown, Subscription};
use procwarden::{
    Backoff, ChildSpec, Context, ExitReason, Restart, Supervisor, SupervisorError, SupervisorHandle,
};
use tokio::sync::{Barrier, Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

// ---- helpers ---------------------------------------------------------------------------------

/// How long any single wait may take before the test fails (virtual time in paused tests).
const WAIT: Duration = Duration::from_secs(60);

type Res = Result<(), io::Error>;

type BoxedRun = std::pin::Pin<Box<dyn Future<Output = Res> + Send>>;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(WAIT, what, fut).await
}

async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Runs a closure when dropped: tells when a child's future (or a task) is gone.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn on_drop<F: FnOnce()>(f: F) -> OnDrop<F> {
    OnDrop(Some(f))
}

/// A shared, ordered record of what happened.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: impl Into<String>) {
        self.0.lock().unwrap().push(line.into());
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A counter that can be awaited.
#[derive(Clone)]
struct Counter(Arc<watch::Sender<usize>>);

impl Counter {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }

    fn up(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    fn down(&self) {
        self.0.send_modify(|n| *n -= 1);
    }

    fn get(&self) -> usize {
        *self.0.borrow()
    }

    /// Counts one up now and one down when the returned guard is dropped.
    fn hold(&self) -> OnDrop<impl FnOnce() + Send + 'static> {
        self.up();
        let this = self.clone();
        on_drop(move || this.down())
    }

    async fn wait_until(&self, what: &str, mut pred: impl FnMut(usize) -> bool) {
        let mut rx = self.0.subscribe();
        let waited = tokio::time::timeout(WAIT, rx.wait_for(|n| pred(*n))).await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {what}; the count is {}",
            self.get()
        );
    }

    async fn reach(&self, what: &str, target: usize) {
        self.wait_until(what, |n| n >= target).await;
    }

    async fn fall_to_zero(&self, what: &str) {
        self.wait_until(what, |n| n == 0).await;
    }
}

/// Collects events until one matches `last` (included).
async fn events_until(
    sub: &mut Subscription,
    what: &str,
    mut last: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let collected = tokio::time::timeout(WAIT, async {
        loop {
            match sub.recv().await {
                Ok(event) => {
                    let done = last(&event);
                    seen.push(event);
                    if done {
                        return;
                    }
                }
                Err(err) => panic!("subscription failed: {err}"),
            }
        }
    })
    .await;
    assert!(
        collected.is_ok(),
        "timed out waiting for {what}; events seen: {seen:#?}"
    );
    seen
}

fn is_exit_of(event: &Event, path: &str) -> bool {
    &*event.path == path && matches!(event.kind, EventKind::Exited(_))
}

/// The stop-related events (Stopping and Exited) of the given paths, as text, in order.
fn stop_events(events: &[Event], paths: &[&str]) -> Vec<String> {
    events
        .iter()
        .filter(|e| paths.contains(&&*e.path))
        .filter_map(|e| match &e.kind {
            EventKind::Stopping => Some(format!("stopping {}", e.path)),
            EventKind::Exited(reason) => Some(format!("exited {} {reason:?}", e.path)),
            _ => None,
        })
        .collect()
}

/// Waits for every task of the runtime beyond `baseline` to end.
async fn settle_tasks(baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let settled = tokio::time::timeout(WAIT, async {
        while metrics.num_alive_tasks() > baseline {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "tasks left behind: {} alive, {baseline} before the supervisor",
        metrics.num_alive_tasks()
    );
}

/// A child that counts itself started, then waits to be asked to stop.
fn idle(name: &str, started: &Counter) -> ChildSpec {
    let started = started.clone();
    ChildSpec::new(name, move |ctx: Context| {
        let started = started.clone();
        async move {
            started.up();
            ctx.shutdown_requested().await;
            Ok::<(), io::Error>(())
        }
    })
}

/// A child that counts itself started and its future alive, then waits to be asked to stop.
fn tracked(name: &str, started: &Counter, alive: &Counter) -> ChildSpec {
    let (started, alive) = (started.clone(), alive.clone());
    ChildSpec::new(name, move |ctx: Context| {
        let (started, alive) = (started.clone(), alive.clone());
        async move {
            let _alive = alive.hold();
            started.up();
            ctx.shutdown_requested().await;
            Ok::<(), io::Error>(())
        }
    })
}

/// A child that counts itself started and alive and never stops on its own.
fn stubborn(name: &str, started: &Counter, alive: &Counter) -> ChildSpec {
    let (started, alive) = (started.clone(), alive.clone());
    ChildSpec::new(name, move |_ctx: Context| {
        let (started, alive) = (started.clone(), alive.clone());
        async move {
            let _alive = alive.hold();
            started.up();
            std::future::pending::<()>().await;
            Ok::<(), io::Error>(())
        }
    })
}

fn no_jitter(delay: Duration) -> Backoff {
    Backoff::exponential(delay, delay).jitter(0.0)
}

fn nested(name: &str, children: Vec<ChildSpec>) -> ChildSpec {
    ChildSpec::supervisor(
        Supervisor::builder(name)
            .children(children)
            .build()
            .expect("valid names"),
    )
}

// ---- shutdown order --------------------------------------------------------------------------

/// How long an ordered child takes to stop once asked (virtual time).
const STOP_TIME: Duration = Duration::from_millis(10);

/// A child that, when asked to stop, records whether every child after it in the global start
/// order is already gone (its future dropped) and every child before it is still there, then
/// takes `STOP_TIME` to stop.
fn ordered(
    name: &str,
    index: usize,
    gone: &Arc<Vec<AtomicBool>>,
    log: &Log,
    started: &Counter,
) -> ChildSpec {
    let (gone, log, started) = (Arc::clone(gone), log.clone(), started.clone());
    let label = name.to_owned();
    ChildSpec::new(name, move |ctx: Context| {
        let (gone, log, started, label) = (
            Arc::clone(&gone),
            log.clone(),
            started.clone(),
            label.clone(),
        );
        async move {
            let _gone = on_drop({
                let gone = Arc::clone(&gone);
                move || gone[index].store(true, SeqCst)
            });
            started.up();
            ctx.shutdown_requested().await;
            assert!(ctx.is_shutdown_requested());
            assert!(ctx.shutdown_token().is_cancelled());
            let later_gone = gone[index + 1..].iter().all(|g| g.load(SeqCst));
            let earlier_here = gone[..index].iter().all(|g| !g.load(SeqCst));
            log.push(format!(
                "asked {label} later_gone={later_gone} earlier_here={earlier_here}"
            ));
            tokio::time::sleep(STOP_TIME).await;
            log.push(format!("exit {label}"));
            Ok::<(), io::Error>(())
        }
    })
}

fn expected_order(names_in_stop_order: &[&str]) -> Vec<String> {
    names_in_stop_order
        .iter()
        .flat_map(|name| {
            [
                format!("asked {name} later_gone=true earlier_here=true"),
                format!("exit {name}"),
            ]
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_children_in_reverse_start_order_one_after_the_other() {
    const N: usize = 5;
    let gone: Arc<Vec<AtomicBool>> = Arc::new((0..N).map(|_| AtomicBool::new(false)).collect());
    let log = Log::default();
    let started = Counter::new();
    let names: Vec<String> = (0..N).map(|k| format!("c{k}")).collect();
    let supervisor = Supervisor::builder("root")
        .children(
            names
                .iter()
                .enumerate()
                .map(|(k, name)| ordered(name, k, &gone, &log, &started)),
        )
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("all children to start", N).await;

    let t0 = Instant::now();
    handle.shutdown();
    within("the supervisor to return", running)
        .await
        .unwrap()
        .expect("a graceful shutdown returns Ok");
    assert_eq!(
        t0.elapsed(),
        STOP_TIME * N as u32,
        "one child after the other"
    );

    let stop_order: Vec<&str> = names.iter().rev().map(String::as_str).collect();
    assert_eq!(log.lines(), expected_order(&stop_order));

    let events = events_until(&mut events, "c0 to exit", |e| is_exit_of(e, "root/c0")).await;
    let paths: Vec<String> = names.iter().map(|n| format!("root/{n}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let expected: Vec<String> = paths
        .iter()
        .rev()
        .flat_map(|p| [format!("stopping {p}"), format!("exited {p} Shutdown")])
        .collect();
    assert_eq!(stop_events(&events, &paths), expected);
}

#[tokio::test(start_paused = true)]
async fn nested_supervisors_stop_their_subtree_in_order() {
    // Global start order: a, sub/x, sub/y, b. Stop order: b, sub/y, sub/x, (sub), a.
    let gone: Arc<Vec<AtomicBool>> = Arc::new((0..4).map(|_| AtomicBool::new(false)).collect());
    let log = Log::default();
    let started = Counter::new();
    let supervisor = Supervisor::builder("root")
        .child(ordered("a", 0, &gone, &log, &started))
        .child(nested(
            "sub",
            vec![
                ordered("x", 1, &gone, &log, &started),
                ordered("y", 2, &gone, &log, &started),
            ],
        ))
        .child(ordered("b", 3, &gone, &log, &started))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("all leaves to start", 4).await;

    let t0 = Instant::now();
    handle.shutdown();
    within("the supervisor to return", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t0.elapsed(), STOP_TIME * 4);
    assert_eq!(log.lines(), expected_order(&["b", "y", "x", "a"]));

    let events = events_until(&mut events, "a to exit", |e| is_exit_of(e, "root/a")).await;
    let leaves = ["root/a", "root/sub/x", "root/sub/y", "root/b"];
    assert_eq!(
        stop_events(&events, &leaves),
        [
            "stopping root/b",
            "exited root/b Shutdown",
            "stopping root/sub/y",
            "exited root/sub/y Shutdown",
            "stopping root/sub/x",
            "exited root/sub/x Shutdown",
            "stopping root/a",
            "exited root/a Shutdown",
        ]
    );
    let position = |wanted: &str| {
        events
            .iter()
            .position(|e| format!("{} {:?}", e.path, e.kind) == wanted)
            .unwrap_or_else(|| panic!("no event {wanted}: {events:#?}"))
    };
    let sub_exit = position("root/sub Exited(Shutdown)");
    assert!(position("root/sub/x Exited(Shutdown)") < sub_exit);
    assert!(sub_exit < position("root/a Stopping"));
}

// ---- grace periods ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_child_that_ignores_shutdown_is_aborted_after_its_own_grace_and_run_returns() {
    let started = Counter::new();
    let alive = Counter::new();
    let asked = Log::default();
    let t0 = Arc::new(Mutex::new(None::<Instant>));
    let ignoring = |name: &'static str, grace: u64| {
        let (started, alive, asked, t0) = (
            started.clone(),
            alive.clone(),
            asked.clone(),
            Arc::clone(&t0),
        );
        ChildSpec::new(name, move |ctx: Context| {
            let (started, alive, asked, t0) = (
                started.clone(),
                alive.clone(),
                asked.clone(),
                Arc::clone(&t0),
            );
            async move {
                let _alive = alive.hold();
                started.up();
                ctx.shutdown_requested().await;
                let since = t0.lock().unwrap().expect("t0 set").elapsed();
                asked.push(format!("{name} asked at {since:?}"));
                std::future::pending::<()>().await; // ignores the request
                Ok::<(), io::Error>(())
            }
        })
        .shutdown_timeout(Duration::from_secs(grace))
    };
    let cooperative = {
        let (started, asked, t0) = (started.clone(), asked.clone(), Arc::clone(&t0));
        ChildSpec::new("c", move |ctx: Context| {
            let (started, asked, t0) = (started.clone(), asked.clone(), Arc::clone(&t0));
            async move {
                started.up();
                ctx.shutdown_requested().await;
                let since = t0.lock().unwrap().expect("t0 set").elapsed();
                asked.push(format!("c asked at {since:?}"));
                Ok::<(), io::Error>(())
            }
        })
    };
    let supervisor = Supervisor::builder("root")
        .child(cooperative)
        .child(ignoring("a", 3))
        .child(ignoring("b", 7))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("all children to start", 3).await;

    *t0.lock().unwrap() = Some(Instant::now());
    let start = Instant::now();
    handle.shutdown();
    within("run() to return after the grace periods", running)
        .await
        .unwrap()
        .expect("a shutdown with aborted children still returns Ok");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3 + 7),
        "each child waits exactly its own grace, one after the other"
    );
    assert_eq!(
        asked.lines(),
        ["b asked at 0ns", "a asked at 7s", "c asked at 10s"]
    );
    let events = events_until(&mut events, "c to exit", |e| is_exit_of(e, "root/c")).await;
    assert_eq!(
        stop_events(&events, &["root/a", "root/b", "root/c"]),
        [
            "stopping root/b",
            "exited root/b Aborted",
            "stopping root/a",
            "exited root/a Aborted",
            "stopping root/c",
            "exited root/c Shutdown",
        ]
    );
    alive
        .fall_to_zero("the aborted children's futures to be dropped")
        .await;
}

// A handle stops the last child started directly, and the child tells the supervisor; these
// are the cases where the child would not.

#[tokio::test(start_paused = true)]
async fn a_last_child_that_never_looks_at_its_token_is_aborted_after_its_grace() {
    let started = Counter::new();
    let alive = Counter::new();
    let supervisor = Supervisor::builder("root")
        .child(stubborn("deaf", &started, &alive).shutdown_timeout(Duration::from_secs(4)))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("the child to start", 1).await;

    let start = Instant::now();
    handle.shutdown();
    within("run() to return after the grace period", running)
        .await
        .unwrap()
        .expect("a shutdown with an aborted child still returns Ok");
    assert_eq!(start.elapsed(), Duration::from_secs(4));
    let events = events_until(&mut events, "the child to exit", |e| {
        is_exit_of(e, "root/deaf")
    })
    .await;
    assert_eq!(
        stop_events(&events, &["root/deaf"]),
        ["stopping root/deaf", "exited root/deaf Aborted"]
    );
    alive
        .fall_to_zero("the aborted child's future to be dropped")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_blocking_its_thread_at_shutdown_is_aborted_after_its_grace() {
    // The child holds its worker thread (as a child must not, but one with a bug may) until
    // the test lets it go, which it does only once run() has returned.
    let (entered_tx, entered_rx) = oneshot::channel::<()>();
    let entered_tx = Mutex::new(Some(entered_tx));
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let blocking = ChildSpec::new("blocking", move |_ctx: Context| {
        if let Some(tx) = entered_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let _ = release_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
        std::future::ready(Ok::<(), io::Error>(()))
    })
    .shutdown_timeout(Duration::from_millis(100));
    let supervisor = Supervisor::builder("root").child(blocking).build().unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    within("the child to block", entered_rx).await.unwrap();

    handle.shutdown();
    let returned = tokio::time::timeout(Duration::from_secs(10), running).await;
    // Released before any assertion, so that a failure does not keep the thread blocked.
    let _ = release_tx.send(());
    returned
        .expect("run() returns while the child still blocks")
        .unwrap()
        .expect("a shutdown with an aborted child still returns Ok");
    let events = events_until(&mut events, "the child to exit", |e| {
        is_exit_of(e, "root/blocking")
    })
    .await;
    assert_eq!(
        stop_events(&events, &["root/blocking"]),
        ["stopping root/blocking", "exited root/blocking Aborted"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_last_child_restarts_over_and_over_returns_ok() {
    // The run a handle may stop directly changes with every restart: whichever one the handle
    // reaches, the supervisor must stop, neither hang nor count the stop as a failure.
    for round in 0..200 {
        let started = Counter::new();
        let alive = Counter::new();
        let flapping = {
            let (started, alive) = (started.clone(), alive.clone());
            ChildSpec::new("flapping", move |ctx: Context| {
                let (started, alive) = (started.clone(), alive.clone());
                async move {
                    let _alive = alive.hold();
                    started.up();
                    tokio::select! {
                        () = tokio::task::yield_now() => {}
                        () = ctx.shutdown_requested() => {}
                    }
                    Ok::<(), io::Error>(())
                }
            })
            .restart(Restart::Permanent)
            .backoff(Backoff::none())
        };
        let supervisor = Supervisor::builder("root")
            .intensity(procwarden::supervisor::Intensity::new(
                u32::MAX,
                Duration::from_secs(1),
            ))
            .child(idle("steady", &started))
            .child(flapping)
            .build()
            .unwrap();
        let handle = supervisor.handle();
        let running = supervisor.spawn();
        started.reach("a few restarts", 2 + round % 7).await;
        handle.shutdown();
        within_for(Duration::from_secs(10), "run() to return", running)
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        assert_eq!(alive.get(), 0, "round {round}: a run outlived run()");
    }
}

#[tokio::test(start_paused = true)]
async fn brutal_shutdown_aborts_at_once_without_asking() {
    let started = Counter::new();
    let alive = Counter::new();
    let brutal_saw_request = Arc::new(AtomicBool::new(false));
    let first_asked_at = Arc::new(Mutex::new(None::<Instant>));
    let brutal = {
        let (started, alive, saw) = (
            started.clone(),
            alive.clone(),
            Arc::clone(&brutal_saw_request),
        );
        ChildSpec::new("brutal", move |ctx: Context| {
            let (started, alive, saw) = (started.clone(), alive.clone(), Arc::clone(&saw));
            async move {
                let _alive = alive.hold();
                started.up();
                ctx.shutdown_requested().await;
                saw.store(true, SeqCst);
                Ok::<(), io::Error>(())
            }
        })
        .shutdown(Shutdown::Brutal)
    };
    let first = {
        let (started, asked) = (started.clone(), Arc::clone(&first_asked_at));
        ChildSpec::new("first", move |ctx: Context| {
            let (started, asked) = (started.clone(), Arc::clone(&asked));
            async move {
                started.up();
                ctx.shutdown_requested().await;
                *asked.lock().unwrap() = Some(Instant::now());
                Ok::<(), io::Error>(())
            }
        })
    };
    let supervisor = Supervisor::builder("root")
        .child(first)
        .child(brutal)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("both children to start", 2).await;

    let t0 = Instant::now();
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "a brutal child is not given a grace"
    );
    assert_eq!(*first_asked_at.lock().unwrap(), Some(t0));
    assert!(
        !brutal_saw_request.load(SeqCst),
        "a brutal child is aborted, not asked to stop"
    );
    let events = events_until(&mut events, "first to exit", |e| {
        is_exit_of(e, "root/first")
    })
    .await;
    assert_eq!(
        stop_events(&events, &["root/brutal", "root/first"]),
        [
            "stopping root/brutal",
            "exited root/brutal Aborted",
            "stopping root/first",
            "exited root/first Shutdown",
        ]
    );
    alive
        .fall_to_zero("the brutal child's future to be dropped")
        .await;
}

#[tokio::test(start_paused = true)]
async fn infinity_shutdown_waits_as_long_as_the_child_needs() {
    const STOP: Duration = Duration::from_secs(3600);
    let started = Counter::new();
    let supervisor = Supervisor::builder("root")
        .child({
            let started = started.clone();
            ChildSpec::new("patient", move |ctx: Context| {
                let started = started.clone();
                async move {
                    started.up();
                    ctx.shutdown_requested().await;
                    tokio::time::sleep(STOP).await; // far past the default 5 s grace
                    Ok::<(), io::Error>(())
                }
            })
            .shutdown(Shutdown::Infinity)
        })
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("the child to start", 1).await;

    let t0 = Instant::now();
    handle.shutdown();
    within_for(STOP * 2, "run() to return", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t0.elapsed(), STOP);
    let events = events_until(&mut events, "patient to exit", |e| {
        is_exit_of(e, "root/patient")
    })
    .await;
    assert_eq!(
        events.last().unwrap().kind,
        EventKind::Exited(ExitReason::Shutdown)
    );
}

// ---- dynamic pools -----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_dynamic_pool_asks_all_its_children_to_stop_at_once() {
    const N: usize = 64;
    let barrier = Arc::new(Barrier::new(N));
    let started = Counter::new();
    let asked = Counter::new();
    let passed = Counter::new();
    let worker = |i: usize| {
        let (barrier, started, asked, passed) = (
            Arc::clone(&barrier),
            started.clone(),
            asked.clone(),
            passed.clone(),
        );
        ChildSpec::new(format!("w{i}"), move |ctx: Context| {
            let (barrier, started, asked, passed) = (
                Arc::clone(&barrier),
                started.clone(),
                asked.clone(),
                passed.clone(),
            );
            async move {
                started.up();
                ctx.shutdown_requested().await;
                asked.up();
                // Nobody gets past this until all N have been asked to stop.
                barrier.wait().await;
                passed.up();
                Ok::<(), io::Error>(())
            }
        })
    };
    let supervisor = Supervisor::builder("pool")
        .dynamic()
        .children((0..N / 2).map(worker))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    for i in N / 2..N {
        handle.add(worker(i)).await.unwrap();
    }
    started.reach("every worker to start", N).await;

    let t0 = Instant::now();
    handle.shutdown();
    within("the pool to return", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO, "no child waited out a grace");
    assert_eq!(asked.get(), N);
    assert_eq!(
        passed.get(),
        N,
        "every worker was asked before any had to exit"
    );

    let mut exits = 0;
    while exits < N {
        let event = events_until(&mut events, "every worker to exit", |e| {
            matches!(e.kind, EventKind::Exited(_))
        })
        .await
        .pop()
        .unwrap();
        assert_eq!(
            event.kind,
            EventKind::Exited(ExitReason::Shutdown),
            "{event:?}"
        );
        exits += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_100_000_children_starts_and_stops_cleanly() {
    const N: usize = 100_000;
    const LONG: Duration = Duration::from_secs(600);
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let started = Counter::new();
    let exited = Counter::new();
    let specs = (0..N).map(|i| {
        let (started, exited) = (started.clone(), exited.clone());
        ChildSpec::new(format!("w{i}"), move |ctx: Context| {
            let (started, exited) = (started.clone(), exited.clone());
            async move {
                started.up();
                ctx.shutdown_requested().await;
                exited.up();
                Ok::<(), io::Error>(())
            }
        })
    });
    let supervisor = Supervisor::builder("pool")
        .dynamic()
        .children(specs)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    within_for(LONG, "every child to start", async {
        let mut rx = started.0.subscribe();
        rx.wait_for(|n| *n == N).await.unwrap();
    })
    .await;
    assert!(
        metrics.num_alive_tasks() > baseline + N,
        "each child runs on a task of its own"
    );

    handle.shutdown();
    within_for(LONG, "the pool to return", running)
        .await
        .unwrap()
        .expect("a graceful stop returns Ok");
    assert_eq!(exited.get(), N, "every child saw its shutdown and returned");
    assert_eq!(started.get(), N, "no child was started twice");
    settle_tasks(baseline).await;
}

// A pool stopping with no subscriber counts the ends of its children's tasks instead of reading
// one exit message per child; these check that nothing is lost that way.

#[tokio::test(start_paused = true)]
async fn an_unobserved_pool_aborts_only_its_stragglers_after_the_grace() {
    const GRACE: Duration = Duration::from_secs(3);
    let started = Counter::new();
    let alive = Counter::new();
    let specs = (0..20).map(|i| {
        let spec = if i % 4 == 0 {
            stubborn(&format!("s{i}"), &started, &alive)
        } else {
            tracked(&format!("t{i}"), &started, &alive)
        };
        spec.shutdown_timeout(GRACE)
    });
    let supervisor = Supervisor::builder("pool")
        .dynamic()
        .children(specs)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("every child to start", 20).await;

    let t0 = Instant::now();
    handle.shutdown();
    alive
        .wait_until("the cooperative children to stop", |n| n == 5)
        .await;
    let status = within("status during the stop", handle.status())
        .await
        .unwrap();
    for child in &status.children {
        let expected = if child.name.starts_with('s') {
            ChildState::Stopping
        } else {
            ChildState::Stopped
        };
        assert_eq!(child.state, expected, "{}", child.name);
    }
    assert_eq!(t0.elapsed(), Duration::ZERO, "nothing waited yet");

    within("the pool to return", running)
        .await
        .unwrap()
        .expect("a stop with aborted stragglers still returns Ok");
    assert_eq!(
        t0.elapsed(),
        GRACE,
        "the stragglers were aborted after the grace"
    );
    assert_eq!(alive.get(), 0, "the stragglers' futures were dropped");
    assert_eq!(started.get(), 20, "no child was started twice");
}

#[tokio::test(start_paused = true)]
async fn an_unobserved_pool_returns_once_its_last_child_stops() {
    let started = Counter::new();
    let release = Arc::new(Notify::new());
    let asked = Arc::new(Notify::new());
    let slow = held_at_stop("slow", &started, &asked, &release);
    let supervisor = Supervisor::builder("pool")
        .dynamic()
        .child(slow)
        .children((0..10).map(|i| idle(&format!("w{i}"), &started)))
        .child(
            ChildSpec::new("brutal", |_ctx: Context| async {
                std::future::pending::<()>().await;
                Ok::<(), io::Error>(())
            })
            .shutdown(Shutdown::Brutal),
        )
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut running = supervisor.spawn();
    started.reach("every child to start", 11).await;

    handle.shutdown();
    let early = tokio::time::timeout(Duration::from_secs(3600), &mut running).await;
    assert!(
        early.is_err(),
        "the pool returned before its last child stopped"
    );
    release.notify_one();
    within("the pool to return", running)
        .await
        .unwrap()
        .expect("a graceful stop returns Ok");
}

#[tokio::test(start_paused = true)]
async fn a_pool_stopping_while_a_child_is_removed_still_answers_the_removal() {
    let started = Counter::new();
    let release = Arc::new(Notify::new());
    let asked = Arc::new(Notify::new());
    let leaving = held_at_stop("leaving", &started, &asked, &release);
    let supervisor = Supervisor::builder("pool")
        .dynamic()
        .child(leaving)
        .children((0..10).map(|i| idle(&format!("w{i}"), &started)))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("every child to start", 11).await;

    let removal = tokio::spawn({
        let handle = handle.clone();
        async move { handle.remove("leaving").await }
    });
    // The removal has reached the supervisor once the child is stopping.
    within("the removal to begin", async {
        loop {
            let status = handle.status().await.unwrap();
            let leaving = status.children.iter().find(|c| &*c.name == "leaving");
            if leaving.is_some_and(|c| c.state == ChildState::Stopping) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    handle.shutdown();
    release.notify_one();
    assert_eq!(
        within("the removal's answer", removal)
            .await
            .unwrap()
            .unwrap(),
        ExitReason::Shutdown
    );
    within("the pool to return", running)
        .await
        .unwrap()
        .expect("a graceful stop returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_whose_children_end_on_their_own_as_they_are_stopped_always_return() {
    const ROUNDS: usize = 100;
    const N: usize = 16;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    for round in 0..ROUNDS {
        let started = Counter::new();
        let go = Arc::new(Notify::new());
        let specs = (0..N).map(|i| {
            let (started, go) = (started.clone(), Arc::clone(&go));
            ChildSpec::new(format!("w{i}"), move |ctx: Context| {
                let (started, go) = (started.clone(), Arc::clone(&go));
                async move {
                    // Made before the child counts itself started: `notify_waiters` reaches a
                    // `Notified` from when it is made, so no child misses the go.
                    let go = go.notified();
                    started.up();
                    if i % 2 == 0 {
                        // Ends by itself, racing the stop; as temporary, it is not restarted.
                        go.await;
                        return Err(io::Error::other("done early"));
                    }
                    ctx.shutdown_requested().await;
                    Ok::<(), io::Error>(())
                }
            })
            .restart(Restart::Temporary)
            // No grace period to end it: a pool that lost track of an exit would hang, and the
            // round would time out, rather than return after aborting the child.
            .shutdown(Shutdown::Infinity)
        });
        let supervisor = Supervisor::builder("pool")
            .dynamic()
            .children(specs)
            .build()
            .unwrap();
        let handle = supervisor.handle();
        let running = supervisor.spawn();
        started.reach("every child to start", N).await;
        go.notify_waiters();
        handle.shutdown();
        within(&format!("round {round}: the pool to return"), running)
            .await
            .unwrap()
            .expect("a graceful stop returns Ok");
    }
    settle_tasks(baseline).await;
}

// ---- tasks spawned by children ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn tasks_spawned_by_a_child_are_drained_before_it_counts_as_stopped() {
    let log = Log::default();
    let started = Counter::new();
    let t0 = Arc::new(Mutex::new(None::<Instant>));
    let first = {
        let (log, started, t0) = (log.clone(), started.clone(), Arc::clone(&t0));
        ChildSpec::new("first", move |ctx: Context| {
            let (log, started, t0) = (log.clone(), started.clone(), Arc::clone(&t0));
            async move {
                started.up();
                ctx.shutdown_requested().await;
                let since = t0.lock().unwrap().unwrap().elapsed();
                log.push(format!("first asked at {since:?}"));
                Ok::<(), io::Error>(())
            }
        })
    };
    let spawner = {
        let (log, started) = (log.clone(), started.clone());
        ChildSpec::new("spawner", move |ctx: Context| {
            let (log, started) = (log.clone(), started.clone());
            async move {
                for i in 0..3u32 {
                    let (task_ctx, log) = (ctx.clone(), log.clone());
                    ctx.spawn(async move {
                        task_ctx.shutdown_requested().await;
                        if i == 2 {
                            // A task spawned while the child is being drained is waited for too.
                            let log = log.clone();
                            task_ctx.spawn(async move {
                                tokio::time::sleep(Duration::from_millis(40)).await;
                                log.push("task 3 done");
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(10) * (i + 1)).await;
                        log.push(format!("task {i} done"));
                    });
                }
                started.up();
                ctx.shutdown_requested().await;
                log.push("spawner returned");
                Ok::<(), io::Error>(())
            }
        })
    };
    let supervisor = Supervisor::builder("root")
        .child(first)
        .child(spawner)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("both children to start", 2).await;

    *t0.lock().unwrap() = Some(Instant::now());
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
    assert_eq!(
        log.lines(),
        [
            "spawner returned",
            "task 0 done",
            "task 1 done",
            "task 2 done",
            "task 3 done",
            "first asked at 40ms",
        ],
        "the child counts as stopped only once its tasks have finished"
    );
    let events = events_until(&mut events, "first to exit", |e| {
        is_exit_of(e, "root/first")
    })
    .await;
    assert_eq!(
        stop_events(&events, &["root/spawner"]),
        ["stopping root/spawner", "exited root/spawner Shutdown"]
    );
}

/// Spawns one task that holds a clone of the context (as tasks that watch for shutdown or read
/// messages do) and one that does not; both ignore the shutdown.
fn spawn_stuck_tasks(ctx: &Context, tasks: &Counter, started: &Counter) {
    let held = ctx.clone();
    let (guard, ready) = (tasks.hold(), started.clone());
    ctx.spawn(async move {
        let _guard = guard;
        let _held = held;
        ready.up();
        std::future::pending::<()>().await;
    });
    let (guard, ready) = (tasks.hold(), started.clone());
    ctx.spawn(async move {
        let _guard = guard;
        ready.up();
        std::future::pending::<()>().await;
    });
}

#[tokio::test(start_paused = true)]
async fn tasks_spawned_by_a_child_are_stopped_when_the_child_is_aborted() {
    // Stop order: brutal (at once), stubborn (aborted after 2 s), returner (returns, but its
    // tasks outlive the 1 s grace), then first at 3 s.
    let started = Counter::new();
    let tasks = Counter::new();
    let first_asked_at = Arc::new(Mutex::new(None::<Instant>));
    let first = {
        let (started, asked) = (started.clone(), Arc::clone(&first_asked_at));
        ChildSpec::new("first", move |ctx: Context| {
            let (started, asked) = (started.clone(), Arc::clone(&asked));
            async move {
                started.up();
                ctx.shutdown_requested().await;
                *asked.lock().unwrap() = Some(Instant::now());
                Ok::<(), io::Error>(())
            }
        })
    };
    let returner = {
        let (started, tasks) = (started.clone(), tasks.clone());
        ChildSpec::new("returner", move |ctx: Context| {
            let (started, tasks) = (started.clone(), tasks.clone());
            async move {
                spawn_stuck_tasks(&ctx, &tasks, &started);
                started.up();
                ctx.shutdown_requested().await;
                Ok::<(), io::Error>(())
            }
        })
        .shutdown_timeout(Duration::from_secs(1))
    };
    let stubborn_child = {
        let (started, tasks) = (started.clone(), tasks.clone());
        ChildSpec::new("stubborn", move |ctx: Context| {
            let (started, tasks) = (started.clone(), tasks.clone());
            async move {
                spawn_stuck_tasks(&ctx, &tasks, &started);
                started.up();
                std::future::pending::<()>().await;
                Ok::<(), io::Error>(())
            }
        })
        .shutdown_timeout(Duration::from_secs(2))
    };
    let brutal = {
        let (started, tasks) = (started.clone(), tasks.clone());
        ChildSpec::new("brutal", move |ctx: Context| {
            let (started, tasks) = (started.clone(), tasks.clone());
            async move {
                spawn_stuck_tasks(&ctx, &tasks, &started);
                started.up();
                std::future::pending::<()>().await;
                Ok::<(), io::Error>(())
            }
        })
        .shutdown(Shutdown::Brutal)
    };
    let supervisor = Supervisor::builder("root")
        .child(first)
        .child(returner)
        .child(stubborn_child)
        .child(brutal)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    // 4 children, and 2 tasks each for 3 of them.
    started.reach("every child and task to start", 4 + 6).await;
    assert_eq!(tasks.get(), 6);

    let t0 = Instant::now();
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(
        *first_asked_at.lock().unwrap(),
        Some(t0 + Duration::from_secs(3))
    );
    let events = events_until(&mut events, "first to exit", |e| {
        is_exit_of(e, "root/first")
    })
    .await;
    assert_eq!(
        stop_events(&events, &["root/returner", "root/stubborn", "root/brutal"]),
        [
            "stopping root/brutal",
            "exited root/brutal Aborted",
            "stopping root/stubborn",
            "exited root/stubborn Aborted",
            "stopping root/returner",
            "exited root/returner Aborted",
        ]
    );
    tasks
        .fall_to_zero("every task spawned by an aborted child to be stopped")
        .await;
}

/// On one thread, a run's task is dropped in the poll that ends it, before its supervisor hears
/// of the exit: once `run()` returned, the run is over.
#[tokio::test]
async fn a_task_spawned_through_a_context_kept_past_its_run_is_dropped_without_running() {
    let kept: Arc<Mutex<Option<Context>>> = Arc::default();
    let once = ChildSpec::new("once", {
        let kept = Arc::clone(&kept);
        move |ctx: Context| {
            let kept = Arc::clone(&kept);
            async move {
                *kept.lock().unwrap() = Some(ctx);
                Ok::<(), io::Error>(())
            }
        }
    })
    .restart(Restart::Temporary);
    let supervisor = Supervisor::builder("root").child(once).build().unwrap();
    within(
        "the supervisor to return once its child ended",
        supervisor.run(),
    )
    .await
    .expect("a child that ended for good ends the supervisor with Ok");

    let ctx = kept
        .lock()
        .unwrap()
        .take()
        .expect("the child kept its context");
    let ran = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = on_drop({
        let dropped = Arc::clone(&dropped);
        move || dropped.store(true, SeqCst)
    });
    ctx.spawn({
        let ran = Arc::clone(&ran);
        async move {
            let _guard = guard;
            ran.store(true, SeqCst);
        }
    });
    assert!(dropped.load(SeqCst), "the task is dropped at once");
    tokio::task::yield_now().await;
    assert!(!ran.load(SeqCst), "and never runs");
}

#[tokio::test(start_paused = true)]
async fn tasks_spawned_by_children_are_stopped_when_the_supervisor_is_aborted() {
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let started = Counter::new();
    let tasks = Counter::new();
    let child = |name: &str| {
        let (started, tasks) = (started.clone(), tasks.clone());
        ChildSpec::new(name, move |ctx: Context| {
            let (started, tasks) = (started.clone(), tasks.clone());
            async move {
                let (held, guard, ready) = (ctx.clone(), tasks.hold(), started.clone());
                ctx.spawn(async move {
                    let _guard = guard;
                    ready.up();
                    held.shutdown_requested().await;
                    std::future::pending::<()>().await;
                });
                started.up();
                ctx.shutdown_requested().await;
                Ok::<(), io::Error>(())
            }
        })
    };
    let supervisor = Supervisor::builder("root")
        .child(child("a"))
        .child(nested("sub", vec![child("x")]))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("children and their tasks to start", 4).await;

    handle.abort();
    let result = within("run() to return", running).await.unwrap();
    assert!(
        matches!(&result, Err(SupervisorError::Aborted { path }) if path == "root"),
        "{result:?}"
    );
    tasks
        .fall_to_zero("the tasks spawned by aborted children to be stopped")
        .await;
    settle_tasks(baseline).await;
}

// ---- adding while stopping ---------------------------------------------------------------------

/// A child that, once asked to stop, says so and then waits for `gate` before returning.
fn held_at_stop(
    name: &str,
    started: &Counter,
    asked: &Arc<Notify>,
    gate: &Arc<Notify>,
) -> ChildSpec {
    let (started, asked, gate) = (started.clone(), Arc::clone(asked), Arc::clone(gate));
    ChildSpec::new(name, move |ctx: Context| {
        let (started, asked, gate) = (started.clone(), Arc::clone(&asked), Arc::clone(&gate));
        async move {
            started.up();
            ctx.shutdown_requested().await;
            asked.notify_one();
            gate.notified().await;
            Ok::<(), io::Error>(())
        }
    })
    .shutdown(Shutdown::Infinity)
}

#[tokio::test(start_paused = true)]
async fn a_child_added_while_the_supervisor_stops_is_refused_and_never_runs() {
    let started = Counter::new();
    let late_runs = Arc::new(AtomicUsize::new(0));
    let late = |name: &str| {
        let runs = Arc::clone(&late_runs);
        ChildSpec::new(name, move |_ctx: Context| {
            runs.fetch_add(1, SeqCst);
            async move { Ok::<(), io::Error>(()) }
        })
    };
    let (slow_asked, slow_gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (inner_asked, inner_gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    // Once asked to stop, tries to add a sibling itself: refused too.
    let adder = {
        let (started, sibling) = (started.clone(), late("from-inside"));
        ChildSpec::new("adder", move |ctx: Context| {
            let (started, sibling) = (started.clone(), sibling.clone());
            async move {
                started.up();
                ctx.shutdown_requested().await;
                let refused = ctx.supervisor().add(sibling).await;
                assert!(
                    matches!(&refused, Err(SupervisorError::Stopping { path, child })
                        if path == "root" && child == "from-inside"),
                    "{refused:?}"
                );
                Ok::<(), io::Error>(())
            }
        })
    };
    let supervisor = Supervisor::builder("root")
        .child(idle("first", &started))
        .child(nested(
            "sub",
            vec![held_at_stop("inner", &started, &inner_asked, &inner_gate)],
        ))
        .child(adder)
        .child(held_at_stop("slow", &started, &slow_asked, &slow_gate))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("children to start", 4).await;
    let sub = handle.nested("sub").await.unwrap();

    handle.shutdown();
    within("slow to be asked", slow_asked.notified()).await;
    let err = handle.add(late("late")).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Stopping { path, child } if path == "root" && child == "late"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("root") && text.contains("late"), "{text}");
    // Other changes are refused too while stopping.
    assert!(matches!(
        handle.restart("first").await,
        Err(SupervisorError::Stopping { .. })
    ));

    slow_gate.notify_one();
    // Then adder stops (it tries to add a sibling on its way), then the nested supervisor, which
    // refuses new children once it is stopping too.
    within("inner to be asked", inner_asked.notified()).await;
    let err = sub.add(late("late-inner")).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Stopping { path, child }
            if path == "root/sub" && child == "late-inner"),
        "{err:?}"
    );
    inner_gate.notify_one();
    within("run() to return", running).await.unwrap().unwrap();
    assert_eq!(late_runs.load(SeqCst), 0, "a refused child never runs");
    let events = events_until(&mut events, "first to exit", |e| {
        is_exit_of(e, "root/first")
    })
    .await;
    assert!(
        events
            .iter()
            .all(|e| !e.path.contains("late") && !e.path.contains("from-inside")),
        "{events:#?}"
    );
    assert_eq!(
        stop_events(&events, &["root/adder"]),
        ["stopping root/adder", "exited root/adder Shutdown"],
        "the refusal inside a stopping child is an error value, not a panic"
    );
    assert!(matches!(
        handle.add(late("after")).await,
        Err(SupervisorError::NotRunning { path }) if path == "root"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_pool_refuses_children_added_right_after_shutdown() {
    let started = Counter::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let supervisor = Supervisor::builder("pool")
        .dynamic()
        .child(idle("w0", &started))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("w0 to start", 1).await;
    handle.shutdown();
    let late = {
        let runs = Arc::clone(&runs);
        ChildSpec::new("late", move |_ctx: Context| {
            runs.fetch_add(1, SeqCst);
            async move { Ok::<(), io::Error>(()) }
        })
    };
    let err = handle.add(late.clone()).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Stopping { path, child } if path == "pool" && child == "late"),
        "{err:?}"
    );
    let err = handle.add_all([late.clone(), late]).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Stopping { path, child } if path == "pool" && child == "late"),
        "{err:?}"
    );
    within("the pool to return", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(runs.load(SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_added_while_a_pool_shuts_down_are_either_stopped_or_refused() {
    const TRIES: usize = 20_000;
    const SHUT_AFTER: usize = 500;
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let started = Counter::new();
    let exited = Counter::new();
    let supervisor = Supervisor::builder("pool").dynamic().build().unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    let (accepted_tx, mut accepted_rx) = watch::channel(0usize);
    let adder = {
        let (handle, started, exited) = (handle.clone(), started.clone(), exited.clone());
        tokio::spawn(async move {
            let mut accepted = 0;
            let mut refusals = Vec::new();
            for i in 0..TRIES {
                let (started, exited) = (started.clone(), exited.clone());
                let spec = ChildSpec::new(format!("w{i}"), move |ctx: Context| {
                    let (started, exited) = (started.clone(), exited.clone());
                    async move {
                        started.up();
                        ctx.shutdown_requested().await;
                        exited.up();
                        Ok::<(), io::Error>(())
                    }
                })
                .shutdown(Shutdown::Infinity);
                match handle.add(spec).await {
                    Ok(()) => {
                        assert!(refusals.is_empty(), "w{i} accepted after a refusal");
                        accepted += 1;
                        accepted_tx.send_replace(accepted);
                    }
                    Err(err) => refusals.push(err),
                }
            }
            (accepted, refusals)
        })
    };
    within(
        "some children to be accepted",
        accepted_rx.wait_for(|n| *n >= SHUT_AFTER),
    )
    .await
    .unwrap();
    handle.shutdown();
    within("the pool to return", running)
        .await
        .unwrap()
        .unwrap();
    let (accepted, refusals) = within("the adder to finish", adder).await.unwrap();
    assert!(
        (SHUT_AFTER..TRIES).contains(&accepted),
        "accepted {accepted}"
    );
    assert_eq!(refusals.len(), TRIES - accepted);
    for err in &refusals {
        assert!(
            matches!(err, SupervisorError::Stopping { path, .. } | SupervisorError::NotRunning { path } if path == "pool"),
            "{err:?}"
        );
    }
    assert_eq!(
        started.get(),
        accepted,
        "every accepted child ran, no refused one did"
    );
    assert_eq!(exited.get(), accepted, "every accepted child was stopped");
    settle_tasks(baseline).await;
}

// ---- aborting the supervisor -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn abort_returns_aborted_and_leaves_no_child_behind() {
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let started = Counter::new();
    let alive = Counter::new();
    let stubborn_asked = Arc::new(Notify::new());
    let slow_to_stop = {
        let (started, alive, asked) = (started.clone(), alive.clone(), Arc::clone(&stubborn_asked));
        ChildSpec::new("slow", move |ctx: Context| {
            let (started, alive, asked) = (started.clone(), alive.clone(), Arc::clone(&asked));
            async move {
                let _alive = alive.hold();
                started.up();
                ctx.shutdown_requested().await;
                asked.notify_one();
                std::future::pending::<()>().await;
                Ok::<(), io::Error>(())
            }
        })
        .shutdown_timeout(Duration::from_secs(3600))
    };
    let supervisor = Supervisor::builder("root")
        .child(tracked("a", &started, &alive))
        .child(nested(
            "sub",
            vec![
                tracked("x", &started, &alive),
                stubborn("y", &started, &alive),
            ],
        ))
        .child(slow_to_stop)
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("every child to start", 4).await;
    assert_eq!(alive.get(), 4);

    // Abort in the middle of a graceful stop that would take an hour.
    handle.shutdown();
    within("slow to be asked", stubborn_asked.notified()).await;
    let t0 = Instant::now();
    handle.abort();
    let result = within("run() to return", running).await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "abort does not wait for graces"
    );
    let err = result.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Aborted { path } if path == "root"),
        "{err:?}"
    );
    assert!(err.to_string().contains("root"), "{err}");
    alive
        .fall_to_zero("every child's future, nested ones included, to be dropped")
        .await;
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "aborted, not stopped after a grace"
    );
    settle_tasks(baseline).await;
    assert!(matches!(
        handle.status().await,
        Err(SupervisorError::NotRunning { path }) if path == "root"
    ));
    assert!(handle.reload().is_err());
}

#[tokio::test(start_paused = true)]
async fn aborting_the_supervisor_task_aborts_its_children() {
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let started = Counter::new();
    let alive = Counter::new();
    let supervisor = Supervisor::builder("root")
        .child(tracked("a", &started, &alive))
        .child(nested(
            "sub",
            vec![
                tracked("x", &started, &alive),
                nested("deeper", vec![stubborn("y", &started, &alive)]),
            ],
        ))
        .child(stubborn("b", &started, &alive))
        .build()
        .unwrap();
    let running = supervisor.spawn();
    started.reach("every child to start", 4).await;

    let t0 = Instant::now();
    running.abort();
    let joined = within("the aborted supervisor task", running).await;
    assert!(joined.unwrap_err().is_cancelled());
    alive
        .fall_to_zero("every child of the aborted supervisor to be dropped")
        .await;
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "aborted, not stopped after a grace"
    );
    settle_tasks(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_supervisor_future_aborts_its_children() {
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let started = Counter::new();
    let alive = Counter::new();
    let supervisor = Supervisor::builder("root")
        .child(tracked("a", &started, &alive))
        .child(nested("sub", vec![stubborn("x", &started, &alive)]))
        .build()
        .unwrap();
    let mut run = Box::pin(supervisor.run());
    tokio::select! {
        result = &mut run => panic!("the supervisor returned early: {result:?}"),
        () = started.reach("every child to start", 2) => {}
    }
    assert_eq!(alive.get(), 2);
    let t0 = Instant::now();
    drop(run);
    alive
        .fall_to_zero("every child of the dropped supervisor to be dropped")
        .await;
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "aborted, not stopped after a grace"
    );
    settle_tasks(baseline).await;
}

// ---- containment -----------------------------------------------------------------------------

fn explode(message: &str) -> Res {
    panic!("{message}")
}

/// Runs `failing` between two healthy siblings and checks that its failure is reported as
/// `expected`, that the siblings are untouched, and that the supervisor carries on and restarts it.
async fn assert_contained(failing: ChildSpec, expected: ExitReason) {
    let name = failing.name().to_owned();
    let path = format!("root/{name}");
    let before_runs = Counter::new();
    let after_runs = Counter::new();
    let supervisor = Supervisor::builder("root")
        .child(idle("before", &before_runs))
        .child(
            failing
                .restart(Restart::Permanent)
                .backoff(no_jitter(Duration::from_secs(10))),
        )
        .child(idle("after", &after_runs))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();

    let seen = events_until(&mut events, "the failing child to exit", |e| {
        is_exit_of(e, &path)
    })
    .await;
    assert_eq!(
        seen.last().unwrap().kind,
        EventKind::Exited(expected.clone())
    );
    before_runs.reach("before to start", 1).await;
    after_runs.reach("after to start", 1).await;

    let status = handle.status().await.expect("the supervisor keeps running");
    assert_eq!(status.state, ChildState::Running);
    let child = status.find(&name).unwrap();
    assert_eq!(child.last_exit, Some(expected.clone()));
    assert!(
        matches!(child.state, ChildState::Restarting { .. }),
        "{:?}",
        child.state
    );
    for sibling in ["before", "after"] {
        let s = status.find(sibling).unwrap();
        assert_eq!(s.state, ChildState::Running, "{sibling}");
        assert_eq!(s.restarts, 0, "{sibling}");
        assert_eq!(s.last_exit, None, "{sibling}");
    }

    // And it is restarted after its backoff, by the same supervisor.
    let seen = events_until(&mut events, "the failing child to restart", |e| {
        *e.path == *path && e.kind == EventKind::Starting
    })
    .await;
    assert!(
        seen.iter().any(|e| *e.path == *path
            && e.kind
                == EventKind::Restarting {
                    delay: Duration::from_secs(10)
                }),
        "{seen:#?}"
    );
    assert!(
        seen.iter().all(|e| *e.path == *path || &*e.path == "root"),
        "siblings were touched: {seen:#?}"
    );
    assert_eq!(
        (before_runs.get(), after_runs.get()),
        (1, 1),
        "siblings ran once"
    );

    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_closure_before_the_future_is_that_childs_failure() {
    let failing = ChildSpec::new("early", |_ctx: Context| {
        let _: Res = explode("boom while building the future");
        async move { Ok::<(), io::Error>(()) }
    });
    assert_contained(
        failing,
        ExitReason::Panicked("boom while building the future".into()),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_at_the_start_of_the_future_is_that_childs_failure() {
    let failing = ChildSpec::new("start", |_ctx: Context| async move {
        explode("boom before the first await")
    });
    assert_contained(
        failing,
        ExitReason::Panicked("boom before the first await".into()),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_after_the_first_await_is_that_childs_failure() {
    let failing = ChildSpec::new("later", |_ctx: Context| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let code = 42;
        explode(&format!("boom after the first await ({code})"))
    });
    assert_contained(
        failing,
        ExitReason::Panicked("boom after the first await (42)".into()),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_while_the_finished_future_is_dropped_is_that_childs_failure() {
    let failing = ChildSpec::new("careless", |_ctx: Context| PanicsWhenDropped);
    assert_contained(
        failing,
        ExitReason::Panicked("boom while dropping the finished future".into()),
    )
    .await;
}

/// A hand-written future, done at once, whose destructor panics: the run must still report.
struct PanicsWhenDropped;

impl Future for PanicsWhenDropped {
    type Output = Res;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Res> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("boom while dropping the finished future");
    }
}

#[derive(Debug)]
struct StartError {
    source: ConnectError,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("starting the database pool")
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[derive(Debug)]
struct ConnectError {
    source: io::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connecting to 127.0.0.1:5432")
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_return_is_a_failure_with_its_source_chain() {
    let failing = ChildSpec::new("db", |_ctx: Context| async move {
        tokio::task::yield_now().await;
        Err::<(), _>(StartError {
            source: ConnectError {
                source: io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
            },
        })
    });
    assert_contained(
        failing,
        ExitReason::Failed(
            "starting the database pool: connecting to 127.0.0.1:5432: connection refused".into(),
        ),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn exit_reasons_are_distinct_in_status_and_events() {
    let started = Counter::new();
    let long = no_jitter(Duration::from_secs(100_000));
    let supervisor = Supervisor::builder("root")
        .child(idle("anchor", &started))
        .child(
            ChildSpec::new(
                "normal",
                |_ctx: Context| async move { Ok::<(), io::Error>(()) },
            )
            .restart(Restart::Transient),
        )
        .child(idle("shutdown", &started))
        .child(
            ChildSpec::new("failed", |_ctx: Context| async move {
                Err::<(), _>(io::Error::other("bad input"))
            })
            .backoff(long),
        )
        .child(
            ChildSpec::new("panicked", |_ctx: Context| async move { explode("ouch") })
                .backoff(long),
        )
        .child({
            let started = started.clone();
            ChildSpec::new("aborted", move |_ctx: Context| {
                let started = started.clone();
                async move {
                    started.up();
                    std::future::pending::<()>().await;
                    Ok::<(), io::Error>(())
                }
            })
            .shutdown_timeout(Duration::from_secs(1))
        })
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started
        .reach("anchor, shutdown and aborted to start", 3)
        .await;
    handle.restart("shutdown").await.unwrap();
    handle.restart("aborted").await.unwrap();

    let expected = [
        ("normal", ExitReason::Normal),
        ("shutdown", ExitReason::Shutdown),
        ("failed", ExitReason::Failed("bad input".into())),
        ("panicked", ExitReason::Panicked("ouch".into())),
        ("aborted", ExitReason::Aborted),
    ];
    let mut from_events = std::collections::HashMap::new();
    while from_events.len() < expected.len() {
        let event = events_until(&mut events, "every child to exit once", |e| {
            matches!(e.kind, EventKind::Exited(_))
        })
        .await
        .pop()
        .unwrap();
        let EventKind::Exited(reason) = event.kind else {
            unreachable!()
        };
        let name = event.path.strip_prefix("root/").unwrap().to_owned();
        assert!(
            from_events.insert(name.clone(), reason).is_none(),
            "{name} exited twice"
        );
    }
    let status = handle.status().await.unwrap();
    for (name, reason) in &expected {
        assert_eq!(from_events.get(*name), Some(reason), "{name} in events");
        let child = status.find(name).unwrap();
        assert_eq!(child.last_exit.as_ref(), Some(reason), "{name} in status");
    }
    assert_eq!(status.find("normal").unwrap().state, ChildState::Stopped);
    assert_eq!(status.find("anchor").unwrap().last_exit, None);

    // Five different reasons, five different texts, and only the last three are failures.
    for (i, (_, a)) in expected.iter().enumerate() {
        for (_, b) in &expected[i + 1..] {
            assert_ne!(std::mem::discriminant(a), std::mem::discriminant(b));
            assert_ne!(a.to_string(), b.to_string());
        }
    }
    let failures: Vec<bool> = expected.iter().map(|(_, r)| r.is_failure()).collect();
    assert_eq!(failures, [false, false, true, true, true]);

    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

// ---- reload ----------------------------------------------------------------------------------

/// A child that reports every reload it sees with its path.
fn reloadable(name: &str, started: &Counter, seen: &mpsc::UnboundedSender<String>) -> ChildSpec {
    let (started, seen) = (started.clone(), seen.clone());
    ChildSpec::new(name, move |ctx: Context| {
        let (started, seen) = (started.clone(), seen.clone());
        async move {
            started.up();
            loop {
                tokio::select! {
                    biased;
                    _ = ctx.shutdown_requested() => return Ok::<(), io::Error>(()),
                    () = ctx.reload_requested() => {
                        let _ = seen.send(ctx.path().to_owned());
                    }
                }
            }
        }
    })
}

async fn collect_reloads(rx: &mut mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
    let mut paths = Vec::new();
    for _ in 0..n {
        paths.push(within("a reload to be seen", rx.recv()).await.unwrap());
    }
    // Let everything settle (paused time: this returns only once all tasks are idle), then
    // make sure nobody saw more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Ok(extra) = rx.try_recv() {
        panic!("unexpected extra reload at {extra} after {paths:?}");
    }
    paths.sort();
    paths
}

#[tokio::test(start_paused = true)]
async fn reload_reaches_every_running_child_including_nested_ones() {
    let started = Counter::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::builder("root")
        .child(reloadable("a", &started, &tx))
        .child(nested(
            "sub",
            vec![
                reloadable("x", &started, &tx),
                nested("deep", vec![reloadable("y", &started, &tx)]),
            ],
        ))
        .child(reloadable("b", &started, &tx))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("every child to start", 4).await;

    handle.reload().unwrap();
    assert_eq!(
        collect_reloads(&mut rx, 4).await,
        ["root/a", "root/b", "root/sub/deep/y", "root/sub/x"]
    );
    let sub = handle.nested("sub").await.unwrap();
    sub.reload().unwrap();
    assert_eq!(
        collect_reloads(&mut rx, 2).await,
        ["root/sub/deep/y", "root/sub/x"]
    );
    let deep = handle.nested("sub/deep").await.unwrap();
    assert_eq!(deep.path(), "root/sub/deep");
    deep.reload().unwrap();
    assert_eq!(collect_reloads(&mut rx, 1).await, ["root/sub/deep/y"]);

    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

/// Asks the child for the number of reloads it has seen.
struct Ping(oneshot::Sender<usize>);

async fn reloads_seen(handle: &SupervisorHandle) -> usize {
    let (reply, answer) = oneshot::channel();
    handle.send("counter", Ping(reply)).await.unwrap();
    within("the counter's answer", answer).await.unwrap()
}

#[tokio::test]
async fn reload_never_blocks_the_caller_and_no_request_is_lost() {
    const BURST: usize = 100_000;
    let counter = ChildSpec::new("counter", |ctx: Context| async move {
        let mut count = 0;
        loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown_requested() => return Ok::<(), io::Error>(()),
                () = ctx.reload_requested() => count += 1,
                Some(Ping(reply)) = ctx.recv::<Ping>() => {
                    let _ = reply.send(count);
                }
            }
        }
    })
    .messages::<Ping>();
    let supervisor = Supervisor::builder("root").child(counter).build().unwrap();
    let handle = supervisor.handle();
    // Before the supervisor runs: queued, not lost.
    handle.reload().unwrap();
    let running = supervisor.spawn();
    assert_eq!(reloads_seen(&handle).await, 1);

    // A burst from another thread while this runtime's only thread is blocked: the supervisor
    // cannot run at all, so reload() must not wait for it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let burst = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            for _ in 0..BURST {
                handle.reload().unwrap();
            }
            let _ = done_tx.send(());
        })
    };
    done_rx
        .recv_timeout(WAIT)
        .expect("reload() blocked while the supervisor could not run");
    burst.join().unwrap();

    let after_burst = reloads_seen(&handle).await;
    assert!(after_burst >= 2, "the burst was lost: {after_burst}");
    assert!(
        after_burst - 1 < BURST / 10,
        "{} reloads seen for a burst of {BURST}: they do not coalesce",
        after_burst - 1
    );
    // One at a time, every request is seen.
    for i in 1..=200 {
        handle.reload().unwrap();
        assert_eq!(reloads_seen(&handle).await, after_burst + i);
    }
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn reloads_requested_while_a_child_is_busy_are_kept_and_coalesced() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    let child = {
        let gate = Arc::clone(&gate);
        ChildSpec::new("busy", move |ctx: Context| {
            let (gate, seen) = (Arc::clone(&gate), seen_tx.clone());
            async move {
                let mut n = 0;
                let _ = seen.send("started".to_owned());
                loop {
                    tokio::select! {
                        biased;
                        _ = ctx.shutdown_requested() => return Ok::<(), io::Error>(()),
                        () = ctx.reload_requested() => {
                            n += 1;
                            let _ = seen.send(format!("reload {n}"));
                            gate.notified().await; // busy applying it
                        }
                    }
                }
            }
        })
    };
    let supervisor = Supervisor::builder("root").child(child).build().unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    assert_eq!(within("start", seen_rx.recv()).await.unwrap(), "started");

    handle.reload().unwrap();
    assert_eq!(
        within("reload 1", seen_rx.recv()).await.unwrap(),
        "reload 1"
    );
    // While it is busy: three more, which must count as one and not be lost.
    for _ in 0..3 {
        handle.reload().unwrap();
    }
    handle.status().await.unwrap(); // the supervisor has passed them on
    gate.notify_one();
    assert_eq!(
        within("reload 2", seen_rx.recv()).await.unwrap(),
        "reload 2"
    );
    gate.notify_one();
    tokio::time::sleep(Duration::from_secs(1)).await; // all idle
    assert!(
        seen_rx.try_recv().is_err(),
        "the busy period's reloads coalesce into one"
    );
    handle.reload().unwrap();
    assert_eq!(
        within("reload 3", seen_rx.recv()).await.unwrap(),
        "reload 3"
    );

    gate.notify_one();
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

/// A child whose first run ends as `end_first_run` says; later runs report whether a reload was
/// waiting for them.
fn second_run_reports_reload(
    name: &str,
    seen: mpsc::UnboundedSender<String>,
    first_run: impl Fn(Context) -> BoxedRun + Send + Sync + 'static,
) -> ChildSpec {
    let runs = Arc::new(AtomicUsize::new(0));
    let first_run = Arc::new(first_run);
    ChildSpec::new(name, move |ctx: Context| {
        let (runs, seen, first_run) = (Arc::clone(&runs), seen.clone(), Arc::clone(&first_run));
        async move {
            let run = runs.fetch_add(1, SeqCst) + 1;
            if run == 1 {
                let _ = seen.send("run 1".to_owned());
                return first_run(ctx).await;
            }
            tokio::select! {
                biased;
                () = ctx.reload_requested() => { let _ = seen.send(format!("run {run} saw the reload")); }
                () = tokio::time::sleep(Duration::from_secs(3600)) => {
                    let _ = seen.send(format!("run {run} saw no reload"));
                }
            }
            // Exactly one: no second reload is pending.
            tokio::select! {
                biased;
                () = ctx.reload_requested() => { let _ = seen.send(format!("run {run} saw a second reload")); }
                () = tokio::time::sleep(Duration::from_secs(3600)) => {
                    let _ = seen.send(format!("run {run} saw nothing more"));
                }
            }
            ctx.shutdown_requested().await;
            Ok(())
        }
    })
}

/// What the second run of a [`second_run_reports_reload`] child reports next.
async fn run_2_report(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    within_for(Duration::from_secs(7200), "run 2", rx.recv())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_reload_sent_during_backoff_is_seen_by_the_next_run() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let child = second_run_reports_reload("flaky", tx, |_ctx| {
        Box::pin(async move { Err(io::Error::other("first run fails")) })
    })
    .backoff(no_jitter(Duration::from_secs(10)));
    let supervisor = Supervisor::builder("root").child(child).build().unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    assert_eq!(within("run 1", rx.recv()).await.unwrap(), "run 1");
    events_until(&mut events, "the first run to fail", |e| {
        is_exit_of(e, "root/flaky")
    })
    .await;
    let status = handle.status().await.unwrap();
    assert!(matches!(
        status.find("flaky").unwrap().state,
        ChildState::Restarting { .. }
    ));

    handle.reload().unwrap();
    assert_eq!(run_2_report(&mut rx).await, "run 2 saw the reload");
    assert_eq!(run_2_report(&mut rx).await, "run 2 saw nothing more");
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_reload_sent_while_a_child_is_being_restarted_is_seen_by_the_next_run() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let asked = Arc::new(Notify::new());
    let child = {
        let asked = Arc::clone(&asked);
        second_run_reports_reload("worker", tx, move |ctx| {
            let asked = Arc::clone(&asked);
            Box::pin(async move {
                ctx.shutdown_requested().await;
                asked.notify_one();
                // Takes a while to stop: the reload arrives meanwhile.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            })
        })
    };
    let supervisor = Supervisor::builder("root").child(child).build().unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    assert_eq!(within("run 1", rx.recv()).await.unwrap(), "run 1");

    let restart = tokio::spawn({
        let handle = handle.clone();
        async move { handle.restart("worker").await }
    });
    within("run 1 to be asked to stop", asked.notified()).await;
    handle.reload().unwrap();
    within("the restart", restart).await.unwrap().unwrap();
    assert_eq!(
        run_2_report(&mut rx).await,
        "run 2 saw the reload",
        "a reload sent while the child restarts is kept for its next run"
    );
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_reload_a_run_did_not_take_before_it_failed_is_seen_by_the_next_run() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let fail = Arc::new(Notify::new());
    let child = {
        let fail = Arc::clone(&fail);
        second_run_reports_reload("worker", tx, move |_ctx| {
            let fail = Arc::clone(&fail);
            // Never looks for a reload; fails when told to.
            Box::pin(async move {
                fail.notified().await;
                Err(io::Error::other("run 1 fails"))
            })
        })
    }
    .backoff(no_jitter(Duration::from_millis(10)));
    let supervisor = Supervisor::builder("root").child(child).build().unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    assert_eq!(within("run 1", rx.recv()).await.unwrap(), "run 1");

    handle.reload().unwrap();
    // Answered after the reload was handed to run 1.
    handle.status().await.unwrap();
    fail.notify_one();
    assert_eq!(
        run_2_report(&mut rx).await,
        "run 2 saw the reload",
        "a reload the failed run never took is kept for the next one"
    );
    assert_eq!(run_2_report(&mut rx).await, "run 2 saw nothing more");
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

// ---- messages --------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Query(u32);

/// A child that forwards every `Query` it receives, with its path.
fn mailbox(name: &str, started: &Counter, out: &mpsc::UnboundedSender<(String, u32)>) -> ChildSpec {
    let (started, out) = (started.clone(), out.clone());
    ChildSpec::new(name, move |ctx: Context| {
        let (started, out) = (started.clone(), out.clone());
        async move {
            started.up();
            loop {
                tokio::select! {
                    _ = ctx.shutdown_requested() => return Ok::<(), io::Error>(()),
                    Some(Query(n)) = ctx.recv::<Query>() => {
                        let _ = out.send((ctx.path().to_owned(), n));
                    }
                }
            }
        }
    })
    .messages::<Query>()
}

#[tokio::test(start_paused = true)]
async fn send_reaches_a_child_by_relative_and_root_paths() {
    let started = Counter::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::builder("root")
        .child(nested("db", vec![mailbox("pool", &started, &tx)]))
        .child(mailbox("top", &started, &tx))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("both to start", 2).await;

    handle.send("db/pool", Query(1)).await.unwrap();
    handle.send("root/db/pool", Query(2)).await.unwrap();
    handle.send("top", Query(3)).await.unwrap();
    handle.send("root/top", Query(4)).await.unwrap();
    let db = handle.nested("db").await.unwrap();
    db.send("pool", Query(5)).await.unwrap();
    db.send("root/db/pool", Query(6)).await.unwrap();

    let mut pool = Vec::new();
    let mut top = Vec::new();
    for _ in 0..6 {
        let (path, n) = within("a message", rx.recv()).await.unwrap();
        match path.as_str() {
            "root/db/pool" => pool.push(n),
            "root/top" => top.push(n),
            other => panic!("message delivered to {other}"),
        }
    }
    assert_eq!(pool, [1, 2, 5, 6]);
    assert_eq!(top, [3, 4]);
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_message_sent_while_the_child_restarts_is_received_by_its_next_run() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicUsize::new(0));
    let child = {
        let runs = Arc::clone(&runs);
        ChildSpec::new("worker", move |ctx: Context| {
            let (runs, tx) = (Arc::clone(&runs), tx.clone());
            async move {
                let run = runs.fetch_add(1, SeqCst) + 1;
                if run == 1 {
                    return Err(io::Error::other("first run fails"));
                }
                tokio::select! {
                    _ = ctx.shutdown_requested() => {}
                    Some(Query(n)) = ctx.recv::<Query>() => {
                        let _ = tx.send((run, n));
                        ctx.shutdown_requested().await;
                    }
                }
                Ok(())
            }
        })
        .messages::<Query>()
        .backoff(no_jitter(Duration::from_secs(10)))
    };
    let supervisor = Supervisor::builder("root").child(child).build().unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    events_until(&mut events, "the first run to fail", |e| {
        is_exit_of(e, "root/worker")
    })
    .await;
    let status = handle.status().await.unwrap();
    assert!(matches!(
        status.find("worker").unwrap().state,
        ChildState::Restarting { .. }
    ));

    handle
        .send("worker", Query(7))
        .await
        .expect("kept for the next run");
    assert_eq!(within("the message", rx.recv()).await.unwrap(), (2, 7));
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_messages_queued_at_once_is_delivered_in_full() {
    // More than the supervisor handles per wake, all queued before it runs again.
    const SENT: u32 = 1_000;
    let started = Counter::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::builder("root")
        .child(mailbox("inbox", &started, &tx))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("the child to start", 1).await;

    let mut senders = tokio::task::JoinSet::new();
    for n in 0..SENT {
        let handle = handle.clone();
        senders.spawn(async move { handle.send("inbox", Query(n)).await });
    }
    while let Some(sent) = senders.join_next().await {
        sent.unwrap().expect("every message accepted");
    }
    let mut received = Vec::new();
    for _ in 0..SENT {
        received.push(within("a message", rx.recv()).await.unwrap().1);
    }
    received.sort_unstable();
    assert_eq!(received, (0..SENT).collect::<Vec<_>>());
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn send_errors_name_the_path() {
    let started = Counter::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::builder("root")
        .child(nested("db", vec![mailbox("pool", &started, &tx)]))
        .child(idle("plain", &started))
        .child(
            ChildSpec::new(
                "done",
                |_ctx: Context| async move { Ok::<(), io::Error>(()) },
            )
            .restart(Restart::Transient)
            .messages::<Query>(),
        )
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("pool and plain to start", 2).await;
    events_until(&mut events, "done to stop for good", |e| {
        is_exit_of(e, "root/done")
    })
    .await;

    let check = |result: Result<(), SupervisorError>, path: &str| -> SupervisorError {
        let err = result.expect_err("the send must fail");
        assert!(err.to_string().contains(path), "{err} does not name {path}");
        err
    };
    for (target, path) in [
        ("nope", "root/nope"),
        ("root/nope", "root/nope"),
        ("db/nope", "root/db/nope"),
        ("root/db/nope", "root/db/nope"),
        ("nope/pool", "root/nope"),
    ] {
        let err = check(handle.send(target, Query(0)).await, path);
        assert!(
            matches!(&err, SupervisorError::NoSuchChild { path: p } if p == path),
            "{target}: {err:?}"
        );
    }
    let err = check(handle.send("plain/x", Query(0)).await, "root/plain");
    assert!(
        matches!(&err, SupervisorError::NotASupervisor { path } if path == "root/plain"),
        "{err:?}"
    );

    let err = check(
        handle.send("db/pool", "text".to_owned()).await,
        "root/db/pool",
    );
    match &err {
        SupervisorError::WrongMessageType {
            path,
            expected,
            got,
        } => {
            assert_eq!(path, "root/db/pool");
            assert_eq!(*expected, std::any::type_name::<Query>());
            assert_eq!(*got, std::any::type_name::<String>());
        }
        other => panic!("{other:?}"),
    }
    let err = check(handle.send("plain", Query(0)).await, "root/plain");
    assert!(
        matches!(
            &err,
            SupervisorError::WrongMessageType {
                expected: "none",
                ..
            }
        ),
        "{err:?}"
    );

    let err = check(handle.send("done", Query(0)).await, "root/done");
    assert!(
        matches!(&err, SupervisorError::ChildStopped { path } if path == "root/done"),
        "{err:?}"
    );

    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
    let err = check(handle.send("db/pool", Query(0)).await, "root");
    assert!(
        matches!(&err, SupervisorError::NotRunning { .. }),
        "{err:?}"
    );
}

// ---- status and events -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn status_reports_the_whole_tree() {
    let started = Counter::new();
    let cold_runs = Arc::new(AtomicUsize::new(0));
    let cache = {
        let (runs, started) = (Arc::clone(&cold_runs), started.clone());
        ChildSpec::new("cache", move |ctx: Context| {
            let (runs, started) = (Arc::clone(&runs), started.clone());
            async move {
                if runs.fetch_add(1, SeqCst) < 2 {
                    return Err(io::Error::other("cold cache"));
                }
                started.up();
                ctx.shutdown_requested().await;
                Ok(())
            }
        })
        .backoff(Backoff::none())
    };
    let supervisor = Supervisor::builder("root")
        .child(idle("a", &started))
        .child(nested("db", vec![idle("pool", &started), cache]))
        .child(
            ChildSpec::new(
                "once",
                |_ctx: Context| async move { Ok::<(), io::Error>(()) },
            )
            .restart(Restart::Transient),
        )
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let mut events = handle.subscribe();
    let running = supervisor.spawn();
    started.reach("a, pool and cache to run", 3).await;
    events_until(&mut events, "once to exit", |e| is_exit_of(e, "root/once")).await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(5));

    let root = handle.status().await.unwrap();
    assert_eq!((&*root.name, &*root.path), ("root", "root"));
    assert_eq!(root.state, ChildState::Running);
    assert!(root.uptime.unwrap() >= Duration::from_secs(5));
    let names: Vec<&str> = root.children.iter().map(|c| &*c.name).collect();
    assert_eq!(names, ["a", "db", "once"], "in start order");

    let a = root.find("a").unwrap();
    assert_eq!(&*a.path, "root/a");
    assert_eq!(a.state, ChildState::Running);
    assert_eq!((a.restarts, a.last_exit.clone()), (0, None));
    assert_eq!(a.uptime, Some(Duration::from_secs(5)));
    assert!(a.children.is_empty());

    let db = root.find("db").unwrap();
    assert_eq!(&*db.path, "root/db");
    assert_eq!(db.state, ChildState::Running);
    let names: Vec<&str> = db.children.iter().map(|c| &*c.name).collect();
    assert_eq!(names, ["pool", "cache"], "a nested supervisor's children");

    let pool = root.find("db/pool").unwrap();
    assert_eq!(&*pool.path, "root/db/pool");
    assert_eq!((pool.state, pool.restarts), (ChildState::Running, 0));
    assert_eq!(pool.uptime, Some(Duration::from_secs(5)));

    let cache = root.find("db/cache").unwrap();
    assert_eq!(&*cache.path, "root/db/cache");
    assert_eq!((cache.state, cache.restarts), (ChildState::Running, 2));
    assert_eq!(
        cache.last_exit,
        Some(ExitReason::Failed("cold cache".into()))
    );
    assert_eq!(cache.uptime, Some(Duration::from_secs(5)));

    let once = root.find("once").unwrap();
    assert_eq!(once.state, ChildState::Stopped);
    assert_eq!(once.last_exit, Some(ExitReason::Normal));
    assert_eq!(once.uptime, None);

    // The nested supervisor's own handle reports its subtree.
    let db_handle = handle.nested("db").await.unwrap();
    let db_status = db_handle.status().await.unwrap();
    assert_eq!(&*db_status.path, "root/db");
    let paths: Vec<&str> = db_status.children.iter().map(|c| &*c.path).collect();
    assert_eq!(paths, ["root/db/pool", "root/db/cache"]);

    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
    assert!(matches!(
        handle.status().await,
        Err(SupervisorError::NotRunning { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn subscribe_on_a_nested_handle_sees_only_its_subtree() {
    let started = Counter::new();
    let supervisor = Supervisor::builder("root")
        .child(idle("dbx", &started))
        .child(nested("db", vec![idle("pool", &started)]))
        .child(idle("web", &started))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("every child to start", 3).await;
    let db = handle.nested("db").await.unwrap();
    let mut sub = db.subscribe();
    let mut all = handle.subscribe();

    handle.restart("dbx").await.unwrap();
    handle.restart("web").await.unwrap();
    db.restart("pool").await.unwrap();
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();

    let seen = events_until(&mut sub, "root/db to exit", |e| is_exit_of(e, "root/db")).await;
    for event in &seen {
        assert!(
            &*event.path == "root/db" || event.path.starts_with("root/db/"),
            "outside the subtree: {event:?}"
        );
    }
    let pool: Vec<&EventKind> = seen
        .iter()
        .filter(|e| &*e.path == "root/db/pool")
        .map(|e| &e.kind)
        .collect();
    assert_eq!(
        pool,
        [
            &EventKind::Stopping,
            &EventKind::Exited(ExitReason::Shutdown),
            &EventKind::Starting,
            &EventKind::Ready,
            &EventKind::Stopping,
            &EventKind::Exited(ExitReason::Shutdown),
        ]
    );
    // The root's subscription sees the rest of the tree.
    let everything = events_until(&mut all, "root/db to exit", |e| is_exit_of(e, "root/db")).await;
    for path in ["root/dbx", "root/web", "root/db/pool"] {
        assert!(
            everything.iter().any(|e| &*e.path == path),
            "no event for {path}: {everything:#?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_sees_a_restart_that_a_backoff_timer_triggers() {
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicUsize::new(0));
    let flaky = {
        let runs = Arc::clone(&runs);
        ChildSpec::new("flaky", move |ctx: Context| {
            let (runs, failed) = (Arc::clone(&runs), failed_tx.clone());
            async move {
                if runs.fetch_add(1, SeqCst) == 0 {
                    let _ = failed.send(());
                    return Err(io::Error::other("first run fails"));
                }
                ctx.shutdown_requested().await;
                Ok(())
            }
        })
        .backoff(no_jitter(Duration::from_secs(10)))
    };
    let supervisor = Supervisor::builder("root").child(flaky).build().unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    // Nobody is subscribed yet while flaky fails and enters its backoff.
    within("the first run to fail", failed_rx.recv())
        .await
        .unwrap();
    let status = handle.status().await.unwrap();
    let flaky = status.find("flaky").unwrap();
    assert!(
        matches!(flaky.state, ChildState::Restarting { .. }),
        "{flaky:?}"
    );

    // Subscribed now: the restart that the backoff timer triggers must be seen.
    let mut events = handle.subscribe();
    let t0 = Instant::now();
    let seen = events_until(&mut events, "flaky to restart", |e| {
        &*e.path == "root/flaky" && e.kind == EventKind::Ready
    })
    .await;
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    assert!(
        seen.iter()
            .any(|e| &*e.path == "root/flaky" && e.kind == EventKind::Starting),
        "{seen:#?}"
    );
    assert_eq!(runs.load(SeqCst), 2);
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_sees_nested_children_asked_to_stop() {
    let started = Counter::new();
    let supervisor = Supervisor::builder("root")
        .child(nested("db", vec![idle("pool", &started)]))
        .child(idle("web", &started))
        .build()
        .unwrap();
    let handle = supervisor.handle();
    let running = supervisor.spawn();
    started.reach("every child to start", 2).await;

    // Subscribed once the tree runs, before the shutdown.
    let mut events = handle.subscribe();
    handle.shutdown();
    within("run() to return", running).await.unwrap().unwrap();
    let seen = events_until(&mut events, "db to exit", |e| is_exit_of(e, "root/db")).await;
    assert_eq!(
        stop_events(&seen, &["root/web", "root/db/pool"]),
        [
            "stopping root/web",
            "exited root/web Shutdown",
            "stopping root/db/pool",
            "exited root/db/pool Shutdown",
        ]
    );
    assert_eq!(
        seen.last().unwrap().kind,
        EventKind::Exited(ExitReason::Shutdown),
        "{seen:#?}"
    );
}
