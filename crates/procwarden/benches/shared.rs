//! What one process pays to take and give back a hold on a shared service that is already
//! running, against the kernel floor, measured in one run on this machine.
//!
//! Setup: a private state directory (`StateDir::at`, under the temp dir), one service `sleep 600`
//! spawned by `on_first_acquire` in its own process group (`process_group(0)`,
//! `.stop_group(true)`), default health check, no linger. A first handle is acquired (it starts
//! the service) and held for the whole run, so every measured acquire finds the service running.
//! Measured on a current-thread tokio runtime, in batches; each figure is the median over the
//! batches of the batch's mean ns per operation. Batches of every case are interleaved, so that a
//! drift in the machine hits all cases alike.
//!
//! - **floor**: a raw System V `semop` +1, then a `semop` −1, both with `SEM_UNDO`, on a private
//!   set (`IPC_PRIVATE`, one semaphore, removed at the end): the least the kernel does to count a
//!   crash-proof hold and give it back.
//! - **same calls raw** (a diagnostic, not a target): the three system calls procwarden's fast
//!   paths make, made raw on a private 7-semaphore set: the 7-operation join `semop`, a
//!   zero-timeout `poll` of the service's pidfd (the default health check), the 4-operation leave
//!   `semop`. What acquire+release costs above it is procwarden's own user-space work.
//! - **acquire+release**: `svc.acquire().await`, then `handle.release().await` (the target: at
//!   most 1.5 µs).
//! - **acquire+drop**: `svc.acquire().await`, then the handle dropped.
//! - **acquire / release alone**: 1,000 acquires in a row with their handles kept, then their
//!   1,000 releases, timed apart.
//! - **new client**: a fresh `SharedService` built for every iteration, then acquire + release:
//!   its first acquire opens the set and goes through the lifecycle lock and the state file.
//!   Closer to what procref's 3.15 µs ("build + acquire + release") counted.
//!
//! At the end the held handle is released: that stops the service; the run then checks that the
//! service process is gone, that `RefCounter::find` finds no set, that no state file and no
//! keeper process are left, and removes the directory and the floors' sets. A failure (a panic)
//! cleans up the same way, with `shared::stop_now`.
//!
//! Output: one JSON object per line, then a summary with the ratios.
//! `cargo bench -p procwarden --bench shared`; `PROCWARDEN_BENCH_SHARED_ITERS` (operations per
//! batch, default 20,000), `PROCWARDEN_BENCH_SHARED_BATCHES` (default 10) and
//! `PROCWARDEN_BENCH_SHARED_NEW_CLIENT_ITERS` (new clients per batch, default a twentieth of the
//! operations) change it. Run as a test (`cargo test --all-targets`), it does a quick smoke run.

#[cfg(target_os = "linux")]
mod common;

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("shared bench: Linux only (System V semaphores); nothing measured");
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::hint::black_box;
    use std::io::Write;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use procwarden::process::{Pid, ProcessRef};
    use procwarden::shared::{RefCounter, ServiceInfo, SharedService, StateDir, stop_now};

    /// The service's name in the private state directory.
    const NAME: &str = "bench-svc";
    /// The longest any one wait may take.
    const LIMIT: Duration = Duration::from_secs(60);
    /// Handles held at once in the acquire / release alone case.
    const HOLD: usize = 1_000;
    /// The target, from the issue.
    const TARGET_NS: f64 = 1_500.0;
    /// procref 0.1.0, from peers.md: build + acquire + release, measured elsewhere.
    const PROCREF_NS: f64 = 3_150.0;
    /// The floor peers.md reports, measured elsewhere.
    const PEERS_FLOOR_NS: f64 = 500.0;

    struct Config {
        iters: usize,
        batches: usize,
        fresh_iters: usize,
    }

    impl Config {
        fn from_env() -> Self {
            // `cargo bench` passes `--bench`; without it this is a test run: keep it quick.
            let bench = std::env::args().any(|arg| arg == "--bench");
            let (iters, batches) = if bench { (20_000, 10) } else { (1_000, 2) };
            let iters = env_usize("PROCWARDEN_BENCH_SHARED_ITERS", iters);
            let batches = env_usize("PROCWARDEN_BENCH_SHARED_BATCHES", batches);
            let fresh_iters = env_usize(
                "PROCWARDEN_BENCH_SHARED_NEW_CLIENT_ITERS",
                (iters / 20).max(10),
            );
            Self {
                iters,
                batches,
                fresh_iters,
            }
        }
    }

    /// See [`crate::common::env_usize`]; a bad value fails the run.
    fn env_usize(name: &str, default: usize) -> usize {
        crate::common::env_usize(name, default).unwrap_or_else(|why| fail(&why))
    }

    /// Fails the run by unwinding, so that every guard below cleans up on the way out.
    fn fail(why: &str) -> ! {
        panic!("shared bench FAILED: {why}")
    }

    fn load_average() -> Option<f64> {
        let text = std::fs::read_to_string("/proc/loadavg").ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    fn json_opt(value: Option<f64>) -> String {
        value.map_or_else(|| "null".to_owned(), |v| format!("{v:.2}"))
    }

    // ---- the floor: a raw semop pair on a private set -------------------------------------------

    /// A private System V semaphore set, removed when dropped.
    struct PrivateSet {
        id: i32,
    }

    impl PrivateSet {
        fn new(nsems: i32) -> Self {
            // SAFETY: semget takes plain integers and touches no memory of ours.
            let id = unsafe { libc::semget(libc::IPC_PRIVATE, nsems, libc::IPC_CREAT | 0o600) };
            if id < 0 {
                fail(&format!(
                    "semget(IPC_PRIVATE): {}",
                    std::io::Error::last_os_error()
                ));
            }
            Self { id }
        }

        /// Applies `ops` in one `semop`; fails the run if the kernel refuses.
        fn semop(&self, ops: &mut [libc::sembuf]) {
            // SAFETY: `ops` is a valid, writable array of `ops.len()` sembufs that outlives the
            // call.
            let result = unsafe { libc::semop(self.id, ops.as_mut_ptr(), ops.len()) };
            if result != 0 {
                fail(&format!("semop: {}", std::io::Error::last_os_error()));
            }
        }

        /// Whether the set `id` is still there.
        fn exists(id: i32) -> bool {
            // SAFETY: GETVAL takes no pointer argument.
            unsafe { libc::semctl(id, 0, libc::GETVAL) >= 0 }
        }
    }

    impl Drop for PrivateSet {
        fn drop(&mut self) {
            // SAFETY: IPC_RMID takes no pointer argument.
            unsafe { libc::semctl(self.id, 0, libc::IPC_RMID) };
        }
    }

    fn op(num: u16, delta: i16, flags: i32) -> libc::sembuf {
        libc::sembuf {
            sem_num: num,
            sem_op: delta,
            sem_flg: flags as i16,
        }
    }

    /// The floor: `semop` +1, then `semop` -1, both with `SEM_UNDO`, on a one-semaphore set.
    fn floor(set: &PrivateSet, n: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            set.semop(&mut [op(0, 1, libc::SEM_UNDO)]);
            set.semop(&mut [op(0, -1, libc::SEM_UNDO)]);
        }
        start.elapsed()
    }

    /// The semaphores of a procwarden set that the fast paths touch (see `src/sys/sysv.rs`).
    const COUNT: u16 = 0;
    const LOCK: u16 = 1;
    const GEN: u16 = 3;
    /// The generation the diagnostic set is at.
    const G: i16 = 1;

    /// Prepares a private 7-semaphore set like a running service's: one other holder, no lock,
    /// generation [`G`].
    fn same_calls_set() -> PrivateSet {
        let set = PrivateSet::new(7);
        set.semop(&mut [op(COUNT, 1, 0), op(GEN, G, 0)]);
        set
    }

    /// A diagnostic floor, not a target: the very system calls procwarden's fast paths make,
    /// made raw: the 7-operation join `semop`, a zero-timeout `poll` of a pidfd (the default
    /// health check), and the 4-operation leave `semop`. What is above it is procwarden's own
    /// user-space work.
    fn same_calls(set: &PrivateSet, pidfd: &impl AsFd, n: usize) -> Duration {
        use libc::{IPC_NOWAIT as NOWAIT, SEM_UNDO as UNDO};
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let start = Instant::now();
        for _ in 0..n {
            set.semop(&mut [
                op(LOCK, 0, NOWAIT),
                op(COUNT, -1, NOWAIT),
                op(COUNT, 1, 0),
                op(COUNT, 1, UNDO),
                op(GEN, -G, NOWAIT),
                op(GEN, 0, NOWAIT),
                op(GEN, G, 0),
            ]);
            let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
            if poll(&mut fds, Some(&zero)) != Ok(0) {
                fail("the poll says the process exited");
            }
            set.semop(&mut [
                op(LOCK, 0, NOWAIT),
                op(COUNT, -1, UNDO),
                op(COUNT, -1, NOWAIT),
                op(COUNT, 1, 0),
            ]);
        }
        start.elapsed()
    }

    // ---- the service -------------------------------------------------------------------------------

    /// The service processes this run started, reaped at the end (until then a PID here cannot
    /// be reused, so it can be signalled safely).
    type Services = Arc<Mutex<Vec<std::process::Child>>>;

    fn lock(services: &Services) -> std::sync::MutexGuard<'_, Vec<std::process::Child>> {
        services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `sleep 600` in its own process group, as in `tests/shared.rs`.
    fn service(dir: StateDir, services: Services) -> SharedService {
        SharedService::builder(NAME)
            .state_dir(dir)
            .stop_timeout(Duration::from_secs(5))
            .stop_group(true)
            .on_first_acquire(move || {
                let services = Arc::clone(&services);
                async move {
                    let child = std::process::Command::new("sleep")
                        .arg("600")
                        .process_group(0)
                        .spawn()?;
                    let pid = child.id();
                    lock(&services).push(child);
                    Ok(ServiceInfo::new(pid, 4000))
                }
            })
            .build()
            .unwrap_or_else(|err| fail(&format!("build: {err}")))
    }

    /// A new client of the running service: it must never have to start it.
    fn client(dir: StateDir) -> SharedService {
        SharedService::builder(NAME)
            .state_dir(dir)
            .stop_timeout(Duration::from_secs(5))
            .stop_group(true)
            .on_first_acquire(|| async { Err("a new client found the service not running".into()) })
            .build()
            .unwrap_or_else(|err| fail(&format!("build: {err}")))
    }

    async fn acquire_release(svc: &SharedService, n: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            let handle = match svc.acquire().await {
                Ok(handle) => handle,
                Err(err) => fail(&format!("acquire: {err}")),
            };
            if let Err(err) = black_box(handle).release().await {
                fail(&format!("release: {err}"));
            }
        }
        start.elapsed()
    }

    async fn acquire_drop(svc: &SharedService, n: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            match svc.acquire().await {
                Ok(handle) => drop(black_box(handle)),
                Err(err) => fail(&format!("acquire: {err}")),
            }
        }
        start.elapsed()
    }

    /// `n` acquires and `n` releases, [`HOLD`] at a time; their times apart.
    async fn acquire_then_release(svc: &SharedService, n: usize) -> (Duration, Duration) {
        let mut held = Vec::with_capacity(HOLD);
        let (mut acquiring, mut releasing) = (Duration::ZERO, Duration::ZERO);
        let mut left = n;
        while left > 0 {
            let round = left.min(HOLD);
            left -= round;
            let start = Instant::now();
            for _ in 0..round {
                match svc.acquire().await {
                    Ok(handle) => held.push(handle),
                    Err(err) => fail(&format!("acquire: {err}")),
                }
            }
            let acquired = Instant::now();
            for handle in held.drain(..) {
                if let Err(err) = handle.release().await {
                    fail(&format!("release: {err}"));
                }
            }
            acquiring += acquired - start;
            releasing += acquired.elapsed();
        }
        (acquiring, releasing)
    }

    async fn new_client(dir: &StateDir, n: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            let svc = client(dir.clone());
            let handle = match svc.acquire().await {
                Ok(handle) => handle,
                Err(err) => fail(&format!("new client's acquire: {err}")),
            };
            if let Err(err) = handle.release().await {
                fail(&format!("new client's release: {err}"));
            }
        }
        start.elapsed()
    }

    // ---- leftovers ------------------------------------------------------------------------------

    /// Keeper processes: forks of this process, so running this executable.
    fn keepers() -> Vec<i32> {
        let me = std::process::id() as i32;
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe))
            .collect()
    }

    /// Waits until `done` holds, polling every 5 ms, at most [`LIMIT`].
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + LIMIT;
        while !done() {
            if Instant::now() > deadline {
                return Err(format!("timed out after {LIMIT:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The private state directory and the service processes started in it; on the way out,
    /// stops whatever is left and removes the directory.
    struct Scratch {
        path: PathBuf,
        services: Services,
    }

    impl Scratch {
        fn new() -> Self {
            let path = std::env::temp_dir()
                .join(format!("procwarden-bench-shared-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self {
                path,
                services: Services::default(),
            }
        }

        fn state_dir(&self) -> StateDir {
            StateDir::at(&self.path).unwrap_or_else(|err| fail(&format!("state dir: {err}")))
        }

        fn set(&self) -> Option<RefCounter> {
            let dir = StateDir::at(&self.path).ok()?;
            RefCounter::find(&dir, NAME).ok().flatten()
        }

        fn state_file(&self) -> PathBuf {
            self.path.join(format!("{NAME}.state"))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if self.set().is_some() || self.state_file().exists() {
                eprintln!("shared bench: cleaning up with stop_now");
                if let (Ok(dir), Ok(rt)) = (
                    StateDir::at(&self.path),
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build(),
                ) {
                    let stopped = rt.block_on(async {
                        tokio::time::timeout(LIMIT, stop_now(&dir, NAME)).await
                    });
                    eprintln!("shared bench: stop_now: {stopped:?}");
                }
            }
            // A service process still running now was left behind (say, by a keeper that could
            // not stop it): kill its group. It is our unreaped child, so its PID, and the group
            // id it leads, cannot have been reused.
            for child in lock(&self.services).iter_mut() {
                if let Ok(None) = child.try_wait() {
                    eprintln!(
                        "shared bench: killing the group of leftover service {}",
                        child.id()
                    );
                    if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                        let _ = rustix::process::kill_process_group(
                            group,
                            rustix::process::Signal::KILL,
                        );
                    }
                }
                let _ = child.wait();
            }
            if let Err(err) = wait_until("the keeper to exit", || keepers().is_empty()) {
                eprintln!("shared bench: {err}: {:?}", keepers());
            }
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    // ---- reporting --------------------------------------------------------------------------------

    /// ns per operation, one value per batch.
    struct Figures {
        case: &'static str,
        what: &'static str,
        per_batch: Vec<f64>,
        iters: usize,
    }

    impl Figures {
        fn new(case: &'static str, what: &'static str, iters: usize) -> Self {
            Self {
                case,
                what,
                per_batch: Vec::new(),
                iters,
            }
        }

        fn add(&mut self, total: Duration, n: usize) {
            self.per_batch.push(total.as_nanos() as f64 / n as f64);
        }

        fn sorted(&self) -> Vec<f64> {
            let mut v = self.per_batch.clone();
            v.sort_by(f64::total_cmp);
            v
        }

        fn median(&self) -> f64 {
            let v = self.sorted();
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        }

        fn min(&self) -> f64 {
            self.sorted()[0]
        }

        fn max(&self) -> f64 {
            *self.sorted().last().expect("batches")
        }

        fn json(&self, floor: f64) -> String {
            let batches: Vec<String> = self.per_batch.iter().map(|v| format!("{v:.1}")).collect();
            format!(
                "{{\"bench\":\"shared\",\"case\":\"{}\",\"what\":\"{}\",\"iters_per_batch\":{},\
                 \"batches\":{},\"median_ns\":{:.1},\"min_ns\":{:.1},\"max_ns\":{:.1},\
                 \"x_floor\":{:.2},\"batch_ns\":[{}]}}",
                self.case,
                self.what,
                self.iters,
                self.per_batch.len(),
                self.median(),
                self.min(),
                self.max(),
                self.median() / floor,
                batches.join(",")
            )
        }
    }

    // ---- the run ----------------------------------------------------------------------------------

    pub(crate) fn main() {
        let cfg = Config::from_env();
        let load_start = load_average();
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        eprintln!(
            "shared bench: {} batches of {} operations per case (+1 warm-up batch), new-client \
             batches of {}; current-thread runtime; {cpus} CPUs, load average {}",
            cfg.batches,
            cfg.iters,
            cfg.fresh_iters,
            json_opt(load_start)
        );
        println!(
            "{{\"bench\":\"meta\",\"iters_per_batch\":{},\"batches\":{},\"new_client_iters\":{},\
             \"runtime\":\"current_thread\",\"cpus\":{cpus},\"loadavg1_start\":{}}}",
            cfg.iters,
            cfg.batches,
            cfg.fresh_iters,
            json_opt(load_start)
        );

        // Dropped in reverse order: the runtime and the floor's set first, the directory last.
        let scratch = Scratch::new();
        let dir = scratch.state_dir();
        let set = PrivateSet::new(1);
        let same_set = same_calls_set();
        let set_ids = [set.id, same_set.id];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|err| fail(&format!("runtime: {err}")));

        let svc = service(dir.clone(), Arc::clone(&scratch.services));
        let (figures, first_acquire, last_release, service_pid, poll_kind) = rt.block_on(async {
            let started = Instant::now();
            let holder = match tokio::time::timeout(LIMIT, svc.acquire()).await {
                Ok(Ok(handle)) => handle,
                Ok(Err(err)) => fail(&format!("first acquire: {err}")),
                Err(_) => fail("first acquire timed out"),
            };
            let first_acquire = started.elapsed();
            let service_pid = holder.pid().expect("the service has a process");
            // Where the kernel (or valgrind) has no pidfds, procwarden falls back to /proc;
            // the diagnostic then polls an idle socket instead.
            let (poll_fd, poll_kind, _peer): (OwnedFd, &str, _) =
                match rustix::process::Pid::from_raw(service_pid as i32).map(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                }) {
                    Some(Ok(fd)) => (fd, "pidfd", None),
                    _ => {
                        let (idle, peer) = std::os::unix::net::UnixStream::pair()
                            .unwrap_or_else(|err| fail(&format!("socketpair: {err}")));
                        (idle.into(), "idle socket (no pidfds here)", Some(peer))
                    }
                };

            let mut floor_f = Figures::new(
                "floor",
                "raw semop +1 then -1, SEM_UNDO, private set",
                cfg.iters,
            );
            let mut same_f = Figures::new(
                "same calls raw",
                "diagnostic: procwarden's 3 system calls (7-op semop, poll, 4-op semop), raw",
                cfg.iters,
            );
            let mut release_f = Figures::new(
                "acquire+release",
                "acquire().await; release().await",
                cfg.iters,
            );
            let mut drop_f =
                Figures::new("acquire+drop", "acquire().await; drop(handle)", cfg.iters);
            let mut acq_f = Figures::new(
                "acquire alone",
                "acquire().await with 1,000 handles kept",
                cfg.iters,
            );
            let mut rel_f = Figures::new(
                "release alone",
                "release().await of 1,000 kept handles",
                cfg.iters,
            );
            let mut fresh_f = Figures::new(
                "new client",
                "SharedService::builder()..build(); acquire; release",
                cfg.fresh_iters,
            );
            // One unrecorded batch of each, then the batches interleaved.
            for batch in 0..=cfg.batches {
                let record = batch > 0;
                let n = cfg.iters;
                let t = floor(&set, n);
                if record {
                    floor_f.add(t, n);
                }
                let t = same_calls(&same_set, &poll_fd, n);
                if record {
                    same_f.add(t, n);
                }
                let t = acquire_release(&svc, n).await;
                if record {
                    release_f.add(t, n);
                }
                let t = acquire_drop(&svc, n).await;
                if record {
                    drop_f.add(t, n);
                }
                let (a, r) = acquire_then_release(&svc, n).await;
                if record {
                    acq_f.add(a, n);
                    rel_f.add(r, n);
                }
                let t = new_client(&dir, cfg.fresh_iters).await;
                if record {
                    fresh_f.add(t, cfg.fresh_iters);
                }
            }
            match svc.holders() {
                Ok(1) => {}
                other => fail(&format!("after the batches, holders = {other:?}, not 1")),
            }

            // The last hold: releasing it stops the service here (no linger).
            let process = Pid::try_from(service_pid)
                .ok()
                .and_then(|pid| ProcessRef::new(pid).ok())
                .unwrap_or_else(|| fail("the service process is gone before the end"));
            let started = Instant::now();
            match tokio::time::timeout(LIMIT, holder.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => fail(&format!("last release: {err}")),
                Err(_) => fail("last release timed out"),
            }
            let last_release = started.elapsed();
            if process.is_alive() {
                fail("the service still runs after the last release");
            }
            (
                [floor_f, same_f, release_f, drop_f, acq_f, rel_f, fresh_f],
                first_acquire,
                last_release,
                service_pid,
                poll_kind,
            )
        });
        drop(rt);

        // Nothing may be left: the service exited and reaped, no set, no state file, no keeper.
        let started = lock(&scratch.services).len();
        if started != 1 {
            fail(&format!(
                "the service was started {started} times, not once"
            ));
        }
        for child in lock(&scratch.services).iter_mut() {
            // It has exited (checked above): this only reaps.
            if let Err(err) = wait_until("the service to be reaped", || {
                matches!(child.try_wait(), Ok(Some(_)))
            }) {
                fail(&err);
            }
        }
        if let Some(counter) = scratch.set() {
            fail(&format!("counter left behind: {counter:?}"));
        }
        if scratch.state_file().exists() {
            fail("state file left behind");
        }
        if let Err(err) = wait_until("the keeper to exit", || keepers().is_empty()) {
            fail(&err);
        }
        drop(set);
        drop(same_set);
        if set_ids.into_iter().any(PrivateSet::exists) {
            fail("a private set of the floors is still there");
        }
        drop(scratch);
        let load_end = load_average();

        let floor_ns = figures[0].median();
        for f in &figures {
            println!("{}", f.json(floor_ns));
        }
        println!(
            "{{\"bench\":\"shared\",\"case\":\"lifecycle\",\"first_acquire_us\":{:.1},\
             \"last_release_us\":{:.1},\"service_pid\":{service_pid},\"cleanup\":\"ok\",\
             \"same_calls_poll_fd\":\"{poll_kind}\",\"loadavg1_end\":{}}}",
            first_acquire.as_secs_f64() * 1e6,
            last_release.as_secs_f64() * 1e6,
            json_opt(load_end)
        );

        let mut out = std::io::stdout().lock();
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Summary: ns per operation, median of {} batches of {} (new client: of {}); floor \
             measured in this run, interleaved.",
            cfg.batches, cfg.iters, cfg.fresh_iters
        );
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>10} {:>9} {:>10} {:>11}",
            "case", "median ns", "min ns", "max ns", "x floor", "x target", "x procref"
        );
        for f in &figures {
            let m = f.median();
            let _ = writeln!(
                out,
                "{:<16} {:>10.1} {:>10.1} {:>10.1} {:>9.2} {:>10.2} {:>11.2}",
                f.case,
                m,
                f.min(),
                f.max(),
                m / floor_ns,
                m / TARGET_NS,
                m / PROCREF_NS
            );
        }
        let release = figures[2].median();
        let verdict = if cfg!(debug_assertions) {
            "not judged (unoptimized build)"
        } else if release <= TARGET_NS {
            "met"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            out,
            "Target (acquire+release <= {TARGET_NS:.0} ns): {verdict} at {release:.0} ns, {:.2}x \
             the floor of this run ({floor_ns:.0} ns).",
            release / floor_ns
        );
        let same = figures[1].median();
        let _ = writeln!(
            out,
            "Of it, the kernel (the same system calls, raw): {same:.0} ns; procwarden's user-space \
             work: {:.0} ns.",
            release - same
        );
        let _ = writeln!(
            out,
            "First acquire (starts the service, forks the keeper): {:.0} us; last release (stops \
             it, removes the set): {:.0} us. Cleanup checked: service reaped, no set, no state \
             file, no keeper, floor sets removed.",
            first_acquire.as_secs_f64() * 1e6,
            last_release.as_secs_f64() * 1e6
        );
        let _ = writeln!(
            out,
            "Load average (1 min): {} at start, {} at end; {cpus} CPUs.",
            json_opt(load_start),
            json_opt(load_end)
        );
        if cfg!(debug_assertions) {
            let _ = writeln!(
                out,
                "Unoptimized build (a test run): a smoke test only; measure with `cargo bench`."
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "References (peers.md, measured elsewhere, NOT in this run):"
        );
        let _ = writeln!(
            out,
            "  procref 0.1.0: {PROCREF_NS:.0} ns build + acquire + release of a running service; \
             floor there ~{PEERS_FLOOR_NS:.0} ns (semop +1/-1 pair with SEM_UNDO)"
        );
    }
}
