//! What supervision costs over bare tokio, measured on this machine in one run.
//!
//! Every procwarden figure is set against the floor — the least a program can do with plain tokio
//! for the same job — measured in the same run, on the same runtime configuration: a fresh
//! multi-thread runtime with 2 worker threads per measurement, no `tracing` subscriber.
//!
//! 1. **100,000 at once.** Floor: tasks waiting on child `CancellationToken`s of one parent, in a
//!    `TaskTracker`, spawned and joined by the measuring task. procwarden: a dynamic pool with
//!    100,000 `ChildSpec`s, each waiting on `ctx.shutdown_requested()`, its `run()` awaited by the
//!    measuring task (as `run_until_signal().await` in a `main` runs it); secondarily, the same
//!    on a task of its own (`Supervisor::spawn`), and the same 100,000 added at run time, with
//!    `SupervisorHandle::add` one by one and in one `add_all`. Measured: spawn to all running
//!    (every child counts itself when first polled, the last one notifies), stop request to
//!    joined, and live heap per child. Each of these measurements runs in a new process of this
//!    program, so that each starts from a fresh heap, as a program's supervisor does; then the
//!    floor and the pool are also measured repeatedly in this one process, where what the
//!    allocator kept from one repetition weighs on the next (see the README).
//! 2. **One child, stop latency.** `handle.shutdown()` to `run()` returned, against cancel to a
//!    task's `JoinHandle` resolved. `run()` is awaited by the caller's own task, as the floor's
//!    caller awaits its task: in both, one task stops and one wakes. Secondarily, the same
//!    through `Supervisor::spawn`'s `JoinHandle`, which puts one more task between the two. All
//!    three are sampled alternately on one runtime.
//! 3. **Failure to restart.** A child told to fail, until its next run has started, against a
//!    hand-written respawn loop.
//!
//! Output: one JSON object per line and measurement, then a summary table with the ratios and
//! the targets. `cargo bench -p procwarden --bench supervisor`; `PROCWARDEN_BENCH_N` (default
//! 100000), `PROCWARDEN_BENCH_ITERS` (default 500) and `PROCWARDEN_BENCH_REPS` (default 5)
//! shrink or grow it. Run as a test (`cargo test --all-targets`), it does a quick smoke run.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use procwarden::supervisor::Intensity;
use procwarden::{Backoff, ChildSpec, Context, Restart, Supervisor};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// ---- heap accounting --------------------------------------------------------------------------

/// The system allocator, counting what is live and how many allocations were made.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);
static ALLOC_CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees hold; the counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            counted_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            counted_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from this allocator, hence from `System`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; `ptr` came from this allocator, hence from `System`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            ALLOC_CALLS.fetch_add(1, Ordering::Relaxed);
        }
        new
    }
}

fn counted_alloc(size: usize) {
    LIVE_BYTES.fetch_add(size as isize, Ordering::Relaxed);
    LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
    ALLOC_CALLS.fetch_add(1, Ordering::Relaxed);
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A reading of the heap counters; the difference of two is what happened in between.
#[derive(Clone, Copy)]
struct Heap {
    bytes: isize,
    allocs: isize,
    calls: usize,
}

impl Heap {
    fn now() -> Self {
        Self {
            bytes: LIVE_BYTES.load(Ordering::SeqCst),
            allocs: LIVE_ALLOCS.load(Ordering::SeqCst),
            calls: ALLOC_CALLS.load(Ordering::SeqCst),
        }
    }

    /// Per child, since `earlier`: live bytes, live allocations, allocation calls.
    fn per_child_since(self, earlier: Heap, n: usize) -> PerChild {
        let n = n as f64;
        PerChild {
            bytes: (self.bytes - earlier.bytes) as f64 / n,
            live_allocs: (self.allocs - earlier.allocs) as f64 / n,
            alloc_calls: (self.calls - earlier.calls) as f64 / n,
        }
    }
}

#[derive(Clone, Copy)]
struct PerChild {
    bytes: f64,
    live_allocs: f64,
    alloc_calls: f64,
}

// ---- CPU time and load --------------------------------------------------------------------------

/// CPU time used so far by the whole process (all threads), where the platform says.
#[cfg(unix)]
fn cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(unix))]
fn cpu_time() -> Option<Duration> {
    None
}

/// Wall and CPU time of one phase.
#[derive(Clone, Copy)]
struct Phase {
    wall: Duration,
    cpu: Option<Duration>,
}

/// A running stopwatch over wall and process CPU time.
struct Stopwatch {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            cpu: cpu_time(),
            wall: Instant::now(),
        }
    }

    fn stop(&self) -> Phase {
        let wall = self.wall.elapsed();
        let cpu = match (self.cpu, cpu_time()) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        Phase { wall, cpu }
    }
}

/// The 1-minute load average, where the platform says: others' work skews wall times.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn json_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "null".to_owned(), |v| format!("{v:.3}"))
}

// ---- configuration, runtime, bounded waits ----------------------------------------------------

/// The longest any one wait may take before the run fails.
const LIMIT: Duration = Duration::from_secs(60);
/// The longest one whole measurement may take (its waits are bounded by [`LIMIT`] each).
const MEASUREMENT_LIMIT: Duration = Duration::from_secs(30 * 60);

struct Config {
    n: usize,
    iters: usize,
    reps: usize,
    warmup: usize,
}

impl Config {
    fn from_env() -> Self {
        // `cargo bench` passes `--bench`; without it this is a test run: keep it quick.
        let bench = std::env::args().any(|arg| arg == "--bench");
        let (n, iters, reps) = if bench {
            (100_000, 500, 5)
        } else {
            (2_000, 20, 1)
        };
        let n = env_usize("PROCWARDEN_BENCH_N", n);
        let iters = env_usize("PROCWARDEN_BENCH_ITERS", iters);
        let reps = env_usize("PROCWARDEN_BENCH_REPS", reps);
        Self {
            n,
            iters,
            reps,
            warmup: (iters / 10).max(5),
        }
    }
}

/// See [`common::env_usize`]; a bad value fails the run.
fn env_usize(name: &str, default: usize) -> usize {
    common::env_usize(name, default).unwrap_or_else(|why| fail(&why))
}

/// Every measurement gets a fresh runtime of the same shape.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `driver` as a task on a fresh runtime's workers (as a supervisor's own task is), and
/// returns its output.
fn on_runtime<T, F>(driver: F) -> T
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime();
    let out = rt.block_on(async move {
        bounded_by(MEASUREMENT_LIMIT, "measurement", tokio::spawn(driver)).await
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    out.unwrap_or_else(|err| fail(&format!("driver task failed: {err}")))
}

/// Waits at most [`LIMIT`] for `fut`; past it, fails the whole run at once.
async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    bounded_by(LIMIT, what, fut).await
}

async fn bounded_by<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => fail(&format!("timed out after {limit:?} waiting for: {what}")),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("supervisor bench FAILED: {why}");
    std::process::exit(1)
}

// ---- what the children do -----------------------------------------------------------------------

/// Children that have been polled at least once, and how many are expected.
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
static EXPECTED: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Notified (a stored permit) by the last child to arrive.
static ALL_ARRIVED: Notify = Notify::const_new();
/// Notified by the single child of the latency measurements on entry.
static ENTERED: Notify = Notify::const_new();

fn expect_arrivals(n: usize) {
    ARRIVED.store(0, Ordering::SeqCst);
    EXPECTED.store(n, Ordering::SeqCst);
}

/// The first thing every child of the 100,000 does, floor and procwarden alike.
fn arrived() {
    if ARRIVED.fetch_add(1, Ordering::AcqRel) + 1 == EXPECTED.load(Ordering::Acquire) {
        ALL_ARRIVED.notify_one();
    }
}

/// A pool child: count itself, then wait to be told to stop.
fn pool_spec(name: String) -> ChildSpec {
    ChildSpec::new(name, |ctx: Context| async move {
        arrived();
        ctx.shutdown_requested().await;
        Ok::<(), Infallible>(())
    })
}

/// Lets every thread go idle, so that each latency sample starts from a quiet runtime.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

// ---- 1. 100,000 at once -------------------------------------------------------------------------

struct Pool {
    n: usize,
    /// Spawn (or first `add`) to every child running.
    start: Phase,
    /// For `add`: first `add` called to the last one accepted.
    adds: Option<Duration>,
    /// Stop request to everything joined.
    stop: Phase,
    heap: PerChild,
    /// What the `ChildSpec`s cost the caller before the supervisor ever ran (not in `heap`).
    spec_heap: Option<PerChild>,
}

fn floor_pool(n: usize) -> Pool {
    on_runtime(async move {
        let parent = CancellationToken::new();
        let tracker = TaskTracker::new();
        expect_arrivals(n);
        let before = Heap::now();
        let t0 = Stopwatch::start();
        for _ in 0..n {
            let token = parent.child_token();
            tracker.spawn(async move {
                arrived();
                token.cancelled().await;
            });
        }
        bounded("floor: all tasks running", ALL_ARRIVED.notified()).await;
        let start = t0.stop();
        let heap = Heap::now().per_child_since(before, n);
        let t1 = Stopwatch::start();
        parent.cancel();
        tracker.close();
        bounded("floor: all tasks joined", tracker.wait()).await;
        let stop = t1.stop();
        Pool {
            n,
            start,
            adds: None,
            stop,
            heap,
            spec_heap: None,
        }
    })
}

/// How the supervisor of a measurement runs.
#[derive(Clone, Copy)]
enum Driven {
    /// `run()` awaited by the measuring task itself, as the floor's task spawns and joins its
    /// own tasks (and as `run_until_signal().await` in a `main` runs it).
    InPlace,
    /// On a task of its own (`Supervisor::spawn`), awaited through its `JoinHandle`.
    Spawned,
}

fn procwarden_pool(n: usize, driven: Driven) -> Pool {
    on_runtime(async move {
        expect_arrivals(n);
        let before_specs = Heap::now();
        let specs: Vec<ChildSpec> = (0..n).map(|i| pool_spec(format!("w{i}"))).collect();
        let supervisor = Supervisor::builder("pool")
            .dynamic()
            .children(specs)
            .build()
            .unwrap_or_else(|err| fail(&format!("build: {err}")));
        let handle = supervisor.handle();
        let before = Heap::now();
        let spec_heap = before.per_child_since(before_specs, n);
        let all_running = || bounded("procwarden: all children running", ALL_ARRIVED.notified());

        let (start, heap, stop) = match driven {
            Driven::InPlace => {
                let t0 = Stopwatch::start();
                let run = supervisor.run();
                tokio::pin!(run);
                beside(run.as_mut(), all_running()).await;
                let start = t0.stop();
                let heap = Heap::now().per_child_since(before, n);
                let t1 = Stopwatch::start();
                handle.shutdown();
                bounded("procwarden pool", run)
                    .await
                    .unwrap_or_else(|err| fail(&format!("procwarden pool: {err}")));
                (start, heap, t1.stop())
            }
            Driven::Spawned => {
                let t0 = Stopwatch::start();
                let running = supervisor.spawn();
                all_running().await;
                let start = t0.stop();
                let heap = Heap::now().per_child_since(before, n);
                let t1 = Stopwatch::start();
                handle.shutdown();
                joined("procwarden pool", running).await;
                (start, heap, t1.stop())
            }
        };
        Pool {
            n,
            start,
            adds: None,
            stop,
            heap,
            spec_heap: Some(spec_heap),
        }
    })
}

/// How the children of [`procwarden_pool_add`] are added.
#[derive(Clone, Copy)]
enum Adding {
    /// One `add().await` after the other, as a caller adds them as they come.
    OneByOne,
    /// All in one `add_all`.
    InOneBatch,
}

fn procwarden_pool_add(n: usize, adding: Adding) -> Pool {
    on_runtime(async move {
        let supervisor = Supervisor::builder("pool")
            .dynamic()
            .build()
            .unwrap_or_else(|err| fail(&format!("build: {err}")));
        let handle = supervisor.handle();
        let running = supervisor.spawn();
        bounded("procwarden: empty pool up", handle.status())
            .await
            .unwrap_or_else(|err| fail(&format!("status: {err}")));
        expect_arrivals(n);
        let before_specs = Heap::now();
        let mut specs: Vec<ChildSpec> = (0..n).map(|i| pool_spec(format!("w{i}"))).collect();
        let before = Heap::now();
        let spec_heap = before.per_child_since(before_specs, n);

        let t0 = Stopwatch::start();
        // `drain` keeps the vector's buffer, so that freeing it does not count against the pool.
        match adding {
            Adding::OneByOne => {
                for spec in specs.drain(..) {
                    bounded("procwarden: add", handle.add(spec))
                        .await
                        .unwrap_or_else(|err| fail(&format!("add: {err}")));
                }
            }
            Adding::InOneBatch => bounded("procwarden: add_all", handle.add_all(specs.drain(..)))
                .await
                .unwrap_or_else(|err| fail(&format!("add_all: {err}"))),
        }
        let adds = t0.stop().wall;
        bounded(
            "procwarden: all added children running",
            ALL_ARRIVED.notified(),
        )
        .await;
        let start = t0.stop();
        let heap = Heap::now().per_child_since(before, n);
        drop(specs);

        let t1 = Stopwatch::start();
        handle.shutdown();
        joined("procwarden pool (added)", running).await;
        let stop = t1.stop();
        Pool {
            n,
            start,
            adds: Some(adds),
            stop,
            heap,
            spec_heap: Some(spec_heap),
        }
    })
}

// ---- one pool measurement per process ----------------------------------------------------------

/// Which of the 100,000-children measurements a process makes.
#[derive(Clone, Copy)]
enum PoolKind {
    Floor,
    InPlace,
    Spawned,
    Added,
    AddedInOneBatch,
}

impl PoolKind {
    const ALL: [PoolKind; 5] = [
        PoolKind::Floor,
        PoolKind::InPlace,
        PoolKind::Spawned,
        PoolKind::Added,
        PoolKind::AddedInOneBatch,
    ];

    fn arg(self) -> &'static str {
        match self {
            PoolKind::Floor => "floor",
            PoolKind::InPlace => "in-place",
            PoolKind::Spawned => "spawned",
            PoolKind::Added => "added",
            PoolKind::AddedInOneBatch => "added-in-one-batch",
        }
    }

    /// The `bench` and `impl` of its JSON line.
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            PoolKind::Floor => ("pool", "floor"),
            PoolKind::InPlace => ("pool", "procwarden"),
            PoolKind::Spawned => ("pool_spawned", "procwarden"),
            PoolKind::Added => ("pool_add", "procwarden"),
            PoolKind::AddedInOneBatch => ("pool_add_all", "procwarden"),
        }
    }

    fn from_arg(arg: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.arg() == arg)
    }

    fn measure(self, n: usize) -> Pool {
        match self {
            PoolKind::Floor => floor_pool(n),
            PoolKind::InPlace => procwarden_pool(n, Driven::InPlace),
            PoolKind::Spawned => procwarden_pool(n, Driven::Spawned),
            PoolKind::Added => procwarden_pool_add(n, Adding::OneByOne),
            PoolKind::AddedInOneBatch => procwarden_pool_add(n, Adding::InOneBatch),
        }
    }
}

/// The argument that makes this program one measurement's process.
const POOL_ARG: &str = "--pool-measurement";

/// Measures `kind` in a new process of this program: each start then begins from the same
/// state, a fresh heap, as a program's supervisor does, whatever the measurements before it
/// left behind (glibc keeps some freed heap for the next allocations and hands the rest back to
/// the kernel, depending on what the process did before).
fn pool_in_own_process(kind: PoolKind, n: usize) -> Pool {
    let exe = std::env::current_exe().unwrap_or_else(|err| fail(&format!("current_exe: {err}")));
    let output = std::process::Command::new(exe)
        .args([POOL_ARG, kind.arg(), &n.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|err| fail(&format!("start the {} measurement: {err}", kind.arg())));
    if !output.status.success() {
        fail(&format!(
            "the {} measurement's process {}",
            kind.arg(),
            output.status
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Pool::parse(text.trim()).unwrap_or_else(|| {
        fail(&format!(
            "the {} measurement's process printed {text:?}",
            kind.arg()
        ))
    })
}

/// In a measurement's process (see [`pool_in_own_process`]): measures and prints the result.
fn pool_measurement_process(args: &[String]) {
    let (kind, n) = match args {
        [kind, n] => (PoolKind::from_arg(kind), n.parse().ok()),
        _ => (None, None),
    };
    let (Some(kind), Some(n)) = (kind, n) else {
        fail(&format!(
            "usage: {POOL_ARG} <floor|in-place|...> <n>, not {args:?}"
        ));
    };
    println!("{}", kind.measure(n).to_line());
}

impl Pool {
    /// The measurement as one line of numbers (nanoseconds, bytes; -1 for none), for
    /// [`Pool::parse`].
    fn to_line(&self) -> String {
        let nanos = |d: Option<Duration>| d.map_or(-1, |d| d.as_nanos() as i128);
        let spec = self.spec_heap;
        format!(
            "{} {} {} {} {} {} {} {} {} {} {} {}",
            self.n,
            nanos(Some(self.start.wall)),
            nanos(self.start.cpu),
            nanos(Some(self.stop.wall)),
            nanos(self.stop.cpu),
            nanos(self.adds),
            self.heap.bytes,
            self.heap.live_allocs,
            self.heap.alloc_calls,
            spec.map_or(f64::NAN, |s| s.bytes),
            spec.map_or(f64::NAN, |s| s.live_allocs),
            spec.map_or(f64::NAN, |s| s.alloc_calls),
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split(' ').collect();
        let [
            n,
            start,
            start_cpu,
            stop,
            stop_cpu,
            adds,
            bytes,
            allocs,
            calls,
            s_bytes,
            s_allocs,
            s_calls,
        ] = fields[..]
        else {
            return None;
        };
        let nanos = |field: &str| -> Option<Option<Duration>> {
            let value: i128 = field.parse().ok()?;
            Some((value >= 0).then(|| Duration::from_nanos(value as u64)))
        };
        let per_child = |bytes: &str, allocs: &str, calls: &str| -> Option<PerChild> {
            Some(PerChild {
                bytes: bytes.parse().ok()?,
                live_allocs: allocs.parse().ok()?,
                alloc_calls: calls.parse().ok()?,
            })
        };
        let spec = per_child(s_bytes, s_allocs, s_calls)?;
        Some(Pool {
            n: n.parse().ok()?,
            start: Phase {
                wall: nanos(start)??,
                cpu: nanos(start_cpu)?,
            },
            stop: Phase {
                wall: nanos(stop)??,
                cpu: nanos(stop_cpu)?,
            },
            adds: nanos(adds)?,
            heap: per_child(bytes, allocs, calls)?,
            spec_heap: (!spec.bytes.is_nan()).then_some(spec),
        })
    }
}

async fn joined(
    what: &str,
    running: tokio::task::JoinHandle<Result<(), procwarden::SupervisorError>>,
) {
    match bounded(what, running).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => fail(&format!("{what}: supervisor returned {err}")),
        Err(err) => fail(&format!("{what}: supervisor task {err}")),
    }
}

// ---- 2. one child, stop latency -----------------------------------------------------------------

/// Stop latencies of the floor and of procwarden, sampled alternately on one runtime so that
/// whatever else the machine does falls on both alike.
struct OneStop {
    floor: Vec<Duration>,
    procwarden: Vec<Duration>,
    spawned: Vec<Duration>,
}

fn one_stop(cfg: &Config) -> OneStop {
    let (warmup, iters) = (cfg.warmup, cfg.iters);
    on_runtime(async move {
        let mut out = OneStop {
            floor: Vec::with_capacity(iters),
            procwarden: Vec::with_capacity(iters),
            spawned: Vec::with_capacity(iters),
        };
        for i in 0..warmup + iters {
            let floor = floor_one_stop().await;
            let procwarden = procwarden_one_stop(Driven::InPlace).await;
            let spawned = procwarden_one_stop(Driven::Spawned).await;
            if i >= warmup {
                out.floor.push(floor);
                out.procwarden.push(procwarden);
                out.spawned.push(spawned);
            }
        }
        out
    })
}

/// Cancel to joined, for one task waiting on a token.
async fn floor_one_stop() -> Duration {
    let token = CancellationToken::new();
    let child = token.clone();
    let task = tokio::spawn(async move {
        ENTERED.notify_one();
        child.cancelled().await;
    });
    bounded("floor: task entered", ENTERED.notified()).await;
    settle().await;
    let t = Instant::now();
    token.cancel();
    bounded("floor: task joined", task)
        .await
        .unwrap_or_else(|err| fail(&format!("floor task: {err}")));
    t.elapsed()
}

/// A supervisor of one child that says when it is up, and returns as soon as it is asked to stop.
fn one_child_supervisor() -> Supervisor {
    Supervisor::builder("one")
        .child(ChildSpec::new("child", |ctx: Context| async move {
            ENTERED.notify_one();
            ctx.shutdown_requested().await;
            Ok::<(), Infallible>(())
        }))
        .build()
        .unwrap_or_else(|err| fail(&format!("build: {err}")))
}

/// `handle.shutdown()` to the supervisor returned, for [`one_child_supervisor`], once the child
/// is up and the runtime quiet.
async fn procwarden_one_stop(driven: Driven) -> Duration {
    let supervisor = one_child_supervisor();
    let handle = supervisor.handle();
    let up = || async {
        bounded("procwarden: child entered", ENTERED.notified()).await;
        settle().await;
    };
    match driven {
        Driven::InPlace => {
            let run = supervisor.run();
            tokio::pin!(run);
            beside(run.as_mut(), up()).await;
            let t = Instant::now();
            handle.shutdown();
            bounded("procwarden one child", run)
                .await
                .unwrap_or_else(|err| fail(&format!("one child: supervisor returned {err}")));
            t.elapsed()
        }
        Driven::Spawned => {
            let running = supervisor.spawn();
            up().await;
            let t = Instant::now();
            handle.shutdown();
            joined("procwarden one child, spawned", running).await;
            t.elapsed()
        }
    }
}

/// Awaits `fut` while polling a supervisor's `run()` beside it, which must not return first.
async fn beside<R: Future, F: Future>(run: std::pin::Pin<&mut R>, fut: F) -> F::Output {
    tokio::select! {
        biased;
        _ = run => fail("procwarden: the supervisor returned before it was asked to"),
        out = fut => out,
    }
}

// ---- 3. failure to restart ----------------------------------------------------------------------

/// One run of the failing child: say when it started, then fail when told (or end when stopped).
async fn failing_run(
    entered: mpsc::UnboundedSender<Instant>,
    fail_now: &Notify,
    stop: impl Future<Output = ()>,
) -> Result<(), std::io::Error> {
    let _ = entered.send(Instant::now());
    tokio::select! {
        () = fail_now.notified() => Err(std::io::Error::other("told to fail")),
        () = stop => Ok(()),
    }
}

static FAIL_NOW: Notify = Notify::const_new();

/// Signal to the next run's first instruction, through `samples` failures.
async fn restart_samples(
    entered: &mut mpsc::UnboundedReceiver<Instant>,
    warmup: usize,
    iters: usize,
) -> Vec<Duration> {
    bounded("first run entered", entered.recv()).await;
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        settle().await;
        let t = Instant::now();
        FAIL_NOW.notify_one();
        let Some(at) = bounded("next run entered", entered.recv()).await else {
            fail("the failing child is gone");
        };
        if i >= warmup {
            samples.push(at.saturating_duration_since(t));
        }
    }
    samples
}

/// The hand-written loop procwarden replaces: await the child's task, spawn it again on error.
fn floor_restart(cfg: &Config) -> Vec<Duration> {
    let (warmup, iters) = (cfg.warmup, cfg.iters);
    on_runtime(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let looping = {
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let tx = tx.clone();
                    let stop = stop.clone();
                    let run = tokio::spawn(async move {
                        failing_run(tx, &FAIL_NOW, stop.cancelled_owned()).await
                    });
                    match run.await {
                        Ok(Ok(())) => return,
                        Ok(Err(_)) => continue,
                        Err(err) if err.is_panic() => continue,
                        Err(_) => return,
                    }
                }
            })
        };
        let samples = restart_samples(&mut rx, warmup, iters).await;
        stop.cancel();
        bounded("floor: restart loop joined", looping)
            .await
            .unwrap_or_else(|err| fail(&format!("floor restart loop: {err}")));
        samples
    })
}

fn procwarden_restart(cfg: &Config) -> Vec<Duration> {
    let (warmup, iters) = (cfg.warmup, cfg.iters);
    on_runtime(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor::builder("restarts")
            .intensity(Intensity::new(u32::MAX, Duration::from_secs(1)))
            .child(
                ChildSpec::new("flaky", move |ctx: Context| {
                    let tx = tx.clone();
                    async move { failing_run(tx, &FAIL_NOW, ctx.shutdown_requested()).await }
                })
                .restart(Restart::Permanent)
                .backoff(Backoff::none()),
            )
            .build()
            .unwrap_or_else(|err| fail(&format!("build: {err}")));
        let handle = supervisor.handle();
        let running = supervisor.spawn();
        let samples = restart_samples(&mut rx, warmup, iters).await;
        handle.shutdown();
        joined("procwarden restarts", running).await;
        samples
    })
}

// ---- reporting ------------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Latency {
    median: Duration,
    p90: Duration,
    min: Duration,
    max: Duration,
    mean: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2
        };
        // Nearest rank.
        let p90 = samples[(n * 9).div_ceil(10) - 1];
        let mean = samples.iter().sum::<Duration>() / n as u32;
        Self {
            median,
            p90,
            min: samples[0],
            max: samples[n - 1],
            mean,
        }
    }
}

fn print_pool(bench: &str, imp: &str, rep: usize, pool: &Pool) {
    let mut line = format!(
        "{{\"bench\":\"{bench}\",\"impl\":\"{imp}\",\"rep\":{rep},\"n\":{},\"start_ms\":{:.3},\"stop_ms\":{:.3},\
         \"start_cpu_ms\":{},\"stop_cpu_ms\":{},\
         \"heap_bytes_per_child\":{:.1},\"live_allocs_per_child\":{:.2},\"alloc_calls_per_child\":{:.2}",
        pool.n,
        ms(pool.start.wall),
        ms(pool.stop.wall),
        json_opt(pool.start.cpu.map(ms)),
        json_opt(pool.stop.cpu.map(ms)),
        pool.heap.bytes,
        pool.heap.live_allocs,
        pool.heap.alloc_calls,
    );
    if let Some(adds) = pool.adds {
        line += &format!(
            ",\"add_all_ms\":{:.3},\"add_us_each\":{:.3}",
            ms(adds),
            us(adds) / pool.n as f64
        );
    }
    if let Some(spec) = pool.spec_heap {
        line += &format!(
            ",\"spec_bytes_per_child\":{:.1},\"spec_allocs_per_child\":{:.2}",
            spec.bytes, spec.live_allocs
        );
    }
    line += ",\"heap_counts\":\"";
    line += if imp == "floor" {
        "live heap after all tasks run minus before the first spawn: tasks, child tokens"
    } else {
        "live heap after all children run minus after the specs (and for build, the supervisor) \
         were made: the supervisor task and state, per-child slots, runs (contexts), child tasks; \
         not the specs' own name and closure allocations"
    };
    line += "\"}";
    println!("{line}");
}

fn print_latency(bench: &str, imp: &str, lat: &Latency, iters: usize) {
    println!(
        "{{\"bench\":\"{bench}\",\"impl\":\"{imp}\",\"iters\":{iters},\"median_us\":{:.2},\"p90_us\":{:.2},\
         \"mean_us\":{:.2},\"min_us\":{:.2},\"max_us\":{:.2}}}",
        us(lat.median),
        us(lat.p90),
        us(lat.mean),
        us(lat.min),
        us(lat.max)
    );
}

fn median_by(pools: &[Pool], key: impl Fn(&Pool) -> f64) -> f64 {
    let mut values: Vec<f64> = pools.iter().map(key).collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

struct Row {
    what: String,
    floor: String,
    procwarden: String,
    ratio: String,
    target: String,
    ok: String,
}

impl Row {
    fn new(what: impl Into<String>, floor: String, procwarden: String) -> Self {
        Self {
            what: what.into(),
            floor,
            procwarden,
            ratio: String::new(),
            target: String::new(),
            ok: String::new(),
        }
    }

    /// Two durations in milliseconds, and their ratio against `max`.
    fn ms(what: impl Into<String>, values: (f64, f64), max: Option<f64>) -> Self {
        Self::compared(what, values, 1, " ms", max)
    }

    /// Two durations in microseconds, and their ratio against `max`.
    fn us(what: impl Into<String>, values: (f64, f64), max: Option<f64>) -> Self {
        Self::compared(what, values, 1, " us", max)
    }

    /// Two sizes in bytes, and their ratio.
    fn bytes(what: impl Into<String>, values: (f64, f64)) -> Self {
        Self::compared(what, values, 0, " B", None)
    }

    /// Two measurements written with `decimals` and `unit`, and their ratio against `max`.
    fn compared(
        what: impl Into<String>,
        (floor, procwarden): (f64, f64),
        decimals: usize,
        unit: &str,
        max: Option<f64>,
    ) -> Self {
        Self::new(
            what,
            format!("{floor:.decimals$}{unit}"),
            format!("{procwarden:.decimals$}{unit}"),
        )
        .ratio(floor, procwarden, max)
    }

    fn ratio(mut self, floor: f64, procwarden: f64, max: Option<f64>) -> Self {
        let ratio = procwarden / floor;
        self.ratio = format!("{ratio:.2}x");
        if let Some(max) = max {
            self.target = format!("<= {max}x");
            self.ok = verdict(ratio <= max).to_owned();
        }
        self
    }

    fn target(mut self, target: &str, ok: bool) -> Self {
        if !self.target.is_empty() {
            self.target += ", ";
        }
        self.target += target;
        self.ok = match self.ok.as_str() {
            "" | "yes" => verdict(ok).to_owned(),
            _ => "NO".to_owned(),
        };
        self
    }
}

fn print_table(rows: &[Row]) {
    let header = Row {
        what: "measurement".into(),
        floor: "floor".into(),
        procwarden: "procwarden".into(),
        ratio: "ratio".into(),
        target: "target".into(),
        ok: "met".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let w = [
        width(|r| &r.what),
        width(|r| &r.floor),
        width(|r| &r.procwarden),
        width(|r| &r.ratio),
        width(|r| &r.target),
    ];
    for (i, r) in all.iter().enumerate() {
        println!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:<w4$}  {}",
            r.what,
            r.floor,
            r.procwarden,
            r.ratio,
            r.target,
            r.ok,
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4],
        );
        if i == 0 {
            println!("{}", "-".repeat(w.iter().sum::<usize>() + 2 * 5 + 3));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|arg| arg == POOL_ARG) {
        pool_measurement_process(&args[at + 1..]);
        return;
    }
    let cfg = Config::from_env();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load_start = load_average();
    eprintln!(
        "supervisor bench: N={} children, {} latency iterations (+{} warm-up), {} repetitions; \
         multi-thread runtime, 2 workers, fresh per measurement; {cpus} CPUs, load average {}",
        cfg.n,
        cfg.iters,
        cfg.warmup,
        cfg.reps,
        json_opt(load_start)
    );
    println!(
        "{{\"bench\":\"meta\",\"n\":{},\"iters\":{},\"warmup_iters\":{},\"reps\":{},\"workers\":2,\
         \"cpus\":{cpus},\"loadavg1_start\":{}}}",
        cfg.n,
        cfg.iters,
        cfg.warmup,
        cfg.reps,
        json_opt(load_start)
    );

    // 1. 100,000 at once, each measurement in a process of its own, in rounds interleaved so
    // that drifts in the machine hit all alike.
    let (mut floor, mut built, mut spawned, mut added, mut batched) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..cfg.reps {
        for kind in PoolKind::ALL {
            let pool = pool_in_own_process(kind, cfg.n);
            let (bench, imp) = kind.labels();
            print_pool(bench, imp, rep, &pool);
            match kind {
                PoolKind::Floor => &mut floor,
                PoolKind::InPlace => &mut built,
                PoolKind::Spawned => &mut spawned,
                PoolKind::Added => &mut added,
                PoolKind::AddedInOneBatch => &mut batched,
            }
            .push(pool);
        }
    }
    // The same start and stop repeated in this one process, where what the allocator kept
    // from one repetition decides much of the next one's cost. One unrecorded round first.
    let _ = floor_pool(cfg.n);
    let _ = procwarden_pool(cfg.n, Driven::InPlace);
    let (mut floor_repeated, mut built_repeated) = (Vec::new(), Vec::new());
    for rep in 0..cfg.reps {
        let f = floor_pool(cfg.n);
        print_pool("pool_repeated", "floor", rep, &f);
        floor_repeated.push(f);
        let p = procwarden_pool(cfg.n, Driven::InPlace);
        print_pool("pool_repeated", "procwarden", rep, &p);
        built_repeated.push(p);
    }

    // 2. One child, stop latency.
    let stops = one_stop(&cfg);
    let floor_stop = Latency::of(stops.floor);
    print_latency("one_child_stop", "floor", &floor_stop, cfg.iters);
    let pw_stop = Latency::of(stops.procwarden);
    print_latency("one_child_stop", "procwarden", &pw_stop, cfg.iters);
    let spawned_stop = Latency::of(stops.spawned);
    print_latency(
        "one_child_stop_spawned",
        "procwarden",
        &spawned_stop,
        cfg.iters,
    );

    // 3. Failure to restart.
    let floor_restart = Latency::of(floor_restart(&cfg));
    print_latency("failure_to_restart", "floor", &floor_restart, cfg.iters);
    let pw_restart = Latency::of(procwarden_restart(&cfg));
    print_latency("failure_to_restart", "procwarden", &pw_restart, cfg.iters);
    let load_end = load_average();

    // Summary: medians over the repetitions.
    let n = cfg.n;
    let wall = |pools: &[Pool], phase: fn(&Pool) -> Phase| median_by(pools, |p| ms(phase(p).wall));
    let cpu = |pools: &[Pool], phase: fn(&Pool) -> Phase| {
        median_by(pools, |p| phase(p).cpu.map_or(f64::NAN, ms))
    };
    let start = |p: &Pool| p.start;
    let stop = |p: &Pool| p.stop;
    let (f_start, f_stop) = (wall(&floor, start), wall(&floor, stop));
    let (p_start, p_stop) = (wall(&built, start), wall(&built, stop));
    let (s_start, s_stop) = (wall(&spawned, start), wall(&spawned, stop));
    let (a_start, a_stop) = (wall(&added, start), wall(&added, stop));
    let b_start = wall(&batched, start);
    let (fr_start, fr_stop) = (wall(&floor_repeated, start), wall(&floor_repeated, stop));
    let (pr_start, pr_stop) = (wall(&built_repeated, start), wall(&built_repeated, stop));
    let (f_start_cpu, f_stop_cpu) = (cpu(&floor, start), cpu(&floor, stop));
    let (p_start_cpu, p_stop_cpu) = (cpu(&built, start), cpu(&built, stop));
    let f_bytes = median_by(&floor, |p| p.heap.bytes);
    let p_bytes = median_by(&built, |p| p.heap.bytes);
    let a_bytes = median_by(&added, |p| p.heap.bytes);
    let b_bytes = median_by(&batched, |p| p.heap.bytes);
    let f_allocs = median_by(&floor, |p| p.heap.live_allocs);
    let p_allocs = median_by(&built, |p| p.heap.live_allocs);
    let a_each = median_by(&added, |p| us(p.adds.unwrap_or_default()) / n as f64);
    let spec_bytes = median_by(&built, |p| p.spec_heap.map_or(0.0, |s| s.bytes));

    let start_ok = p_start / f_start <= 1.5;
    let stop_ok = p_stop / f_stop <= 1.5;
    let heap_ok = p_bytes <= 1024.0;
    let one_ok = us(pw_stop.median) / us(floor_stop.median) <= 2.0;
    println!(
        "{{\"bench\":\"summary\",\"n\":{n},\"start_ratio\":{:.3},\"stop_ratio\":{:.3},\
         \"start_cpu_ratio\":{},\"stop_cpu_ratio\":{},\"heap_bytes_per_child\":{p_bytes:.1},\
         \"floor_heap_bytes_per_child\":{f_bytes:.1},\"one_child_stop_ratio\":{:.3},\
         \"start_spawned_ratio\":{:.3},\"stop_spawned_ratio\":{:.3},\
         \"one_child_stop_spawned_ratio\":{:.3},\"failure_to_restart_ratio\":{:.3},\
         \"start_repeated_ratio\":{:.3},\"stop_repeated_ratio\":{:.3},\
         \"start_ok\":{start_ok},\"stop_ok\":{stop_ok},\
         \"heap_ok\":{heap_ok},\"one_child_stop_ok\":{one_ok},\"loadavg1_start\":{},\
         \"loadavg1_end\":{}}}",
        p_start / f_start,
        p_stop / f_stop,
        json_opt(Some(p_start_cpu / f_start_cpu).filter(|r| r.is_finite())),
        json_opt(Some(p_stop_cpu / f_stop_cpu).filter(|r| r.is_finite())),
        us(pw_stop.median) / us(floor_stop.median),
        s_start / f_start,
        s_stop / f_stop,
        us(spawned_stop.median) / us(floor_stop.median),
        us(pw_restart.median) / us(floor_restart.median),
        pr_start / fr_start,
        pr_stop / fr_stop,
        json_opt(load_start),
        json_opt(load_end),
    );

    let mut rows = vec![
        Row::ms(
            format!("{n} start (spawn -> all running)"),
            (f_start, p_start),
            Some(1.5),
        ),
        Row::ms(
            format!("{n} stop (request -> joined)"),
            (f_stop, p_stop),
            Some(1.5),
        ),
        Row::bytes(format!("{n} live heap per child"), (f_bytes, p_bytes))
            .target("<= 1024 B", heap_ok),
        Row::compared(
            format!("{n} live allocations per child"),
            (f_allocs, p_allocs),
            2,
            "",
            None,
        ),
    ];
    if f_start_cpu.is_finite() && p_start_cpu.is_finite() {
        rows.push(Row::ms(
            format!("{n} start, CPU time (all threads)"),
            (f_start_cpu, p_start_cpu),
            None,
        ));
        rows.push(Row::ms(
            format!("{n} stop, CPU time (all threads)"),
            (f_stop_cpu, p_stop_cpu),
            None,
        ));
    }
    rows.extend([
        Row::ms(
            format!("{n} start, repeated in one process"),
            (fr_start, pr_start),
            None,
        ),
        Row::ms(
            format!("{n} stop, repeated in one process"),
            (fr_stop, pr_stop),
            None,
        ),
        Row::ms(format!("{n} spawned: start"), (f_start, s_start), None),
        Row::ms(format!("{n} spawned: stop"), (f_stop, s_stop), None),
        Row::ms(
            format!("{n} added at run time: start"),
            (f_start, a_start),
            None,
        ),
        Row::ms(
            format!("{n} added at run time: stop"),
            (f_stop, a_stop),
            None,
        ),
        Row::bytes(
            format!("{n} added at run time: heap/child"),
            (f_bytes, a_bytes),
        ),
        Row::ms(
            format!("{n} in one add_all: start"),
            (f_start, b_start),
            None,
        ),
        Row::bytes(
            format!("{n} in one add_all: heap/child"),
            (f_bytes, b_bytes),
        ),
        Row::new(
            "one add (round trip, one caller)",
            String::new(),
            format!("{a_each:.2} us"),
        ),
        Row::us(
            "one child stop, median",
            (us(floor_stop.median), us(pw_stop.median)),
            Some(2.0),
        ),
        Row::us(
            "one child stop, p90",
            (us(floor_stop.p90), us(pw_stop.p90)),
            None,
        ),
        Row::us(
            "one child stop, spawned, median",
            (us(floor_stop.median), us(spawned_stop.median)),
            None,
        ),
        Row::us(
            "failure -> next run, median",
            (us(floor_restart.median), us(pw_restart.median)),
            None,
        ),
        Row::us(
            "failure -> next run, p90",
            (us(floor_restart.p90), us(pw_restart.p90)),
            None,
        ),
    ]);

    println!();
    println!(
        "Summary: {} reps of {n} for the pool rows (medians; each in a process of its own, \
         except the rows repeated in one process), {} iterations for latencies. Floor = bare \
         tokio measured in this run, same runtime (multi-thread, 2 workers).",
        cfg.reps, cfg.iters
    );
    print_table(&rows);
    if cfg!(debug_assertions) {
        println!("Unoptimized build (a test run): a smoke test only; measure with `cargo bench`.");
    }
    if n != 100_000 {
        println!("The targets are set for 100,000 children; this run used {n}.");
    }
    println!(
        "Heap counts what is live once all run, minus before the start; the ChildSpecs are made \
         before that and cost the caller another {spec_bytes:.0} B per child."
    );
    println!(
        "Floor for failure -> next run: a hand-written loop awaiting the child's JoinHandle and \
         spawning it again."
    );
    println!(
        "Load average (1 min): {} at start, {} at end (this bench adds up to 2); wall times \
         above 1 are shared with other work.",
        json_opt(load_start),
        json_opt(load_end)
    );
    match std::env::var("GLIBC_TUNABLES") {
        Ok(tunables) => println!(
            "Allocator: GLIBC_TUNABLES={tunables}, for the floor and procwarden alike (see the \
             README for what it shows)."
        ),
        Err(_) => println!(
            "Allocator: glibc's defaults. Repeated in one process, a start costs what the \
             allocator did not keep from the last one: freed heap handed back to the kernel is \
             faulted in again (see the README)."
        ),
    }
    println!();
    println!("References (peers.md, measured elsewhere, NOT in this run):");
    println!(
        "  tokio-graceful-shutdown 0.20.0, 100,000 subsystems: 581 ms start, 501 ms stop, 3.5 KB each"
    );
    println!("  processmanager 0.6.0: 11.1 ms to stop one child (median of 200)");
    println!(
        "  bare tokio floor there: 53-77 ms spawn, 27-36 ms cancel+join, ~0.52 KB each, 7.4 us one task"
    );
}
