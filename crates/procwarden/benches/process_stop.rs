//! How long `ProcessRef::stop()` takes to return for a process that exits on SIGTERM, against
//! the floor, measured in one run on this machine.
//!
//! Every sample is a fresh `sleep 600` child (it exits on SIGTERM, the default action), spawned
//! with `std::process::Command` and left to settle until `/proc` shows it asleep in `sleep`, so
//! that the signal always lands on a process in the same state. Then, timed:
//!
//! - **floor**: `kill(pid, SIGTERM)`, then a blocking `waitid(P_PID, WEXITED | WNOWAIT)`: the
//!   least any program can do to signal a process and learn that it exited. `WNOWAIT` leaves the
//!   child unreaped, as `stop()` does.
//! - **floor+reap**: `kill(pid, SIGTERM)`, then a blocking `waitpid` (`Child::wait`), which also
//!   reaps.
//! - **stop, current-thread**: `ProcessRef::stop(5 s).await` on a current-thread tokio runtime.
//! - **stop, multi-thread**: the same from a task on a multi-thread runtime with 2 workers.
//! - **stop_blocking**: `ProcessRef::stop_blocking(5 s)`, no runtime.
//!
//! Not timed, in every case: spawning, settling, `ProcessRef::from_child` (opens the pidfd) and,
//! except in floor+reap, reaping (`Child::wait` after the timed part; `stop()` waits for the exit
//! through the pidfd and leaves reaping to the parent). So floor and stop count the same thing:
//! signal sent to exit observed. `stop − floor` (of the medians, of the p90s, and the median of
//! the round-by-round differences) is the time from the process's exit to `stop()` returning
//! beyond the least possible; the target is 1 ms (procref sleeps in 50 ms steps). The cases run
//! in rotating order within each round, so that a drift in the machine hits all of them alike.
//!
//! Output: one JSON object per line, then a summary. `cargo bench -p procwarden --bench
//! process_stop`; `PROCWARDEN_BENCH_STOP_ITERS` (samples per case, default 200) changes it. Run
//! as a test (`cargo test --all-targets`), it does a quick smoke run. Every child is reaped,
//! also when the run fails.

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("process_stop bench: Linux only (pidfds); nothing measured");
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use procwarden::process::{ProcessRef, StopOutcome};
    use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process, waitid};

    /// The grace `stop()` is given: far more than a `sleep` needs to die of SIGTERM.
    const GRACE: Duration = Duration::from_secs(5);
    /// The longest a child may take to settle into its sleep.
    const SETTLE: Duration = Duration::from_secs(5);
    /// The longest one whole case may take before the run fails.
    const LIMIT: Duration = Duration::from_secs(30);
    /// The target for `stop()` after the process's exit, from the issue.
    const TARGET_US: f64 = 1_000.0;

    fn fail(why: &str) -> ! {
        panic!("process_stop bench FAILED: {why}")
    }

    fn load_average() -> Option<f64> {
        let text = std::fs::read_to_string("/proc/loadavg").ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    fn json_opt(value: Option<f64>) -> String {
        value.map_or_else(|| "null".to_owned(), |v| format!("{v:.2}"))
    }

    /// A `sleep 600` child, killed and reaped when dropped unless it was reaped already.
    struct Kid {
        child: Child,
        reaped: bool,
    }

    impl Kid {
        fn spawn() -> Self {
            let child = Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| fail(&format!("spawning sleep: {err}")));
            let kid = Self {
                child,
                reaped: false,
            };
            kid.settle();
            kid
        }

        /// Waits until the child runs `sleep` and is asleep in it.
        fn settle(&self) {
            let path = format!("/proc/{}/stat", self.child.id());
            let deadline = Instant::now() + SETTLE;
            loop {
                if let Ok(stat) = std::fs::read_to_string(&path)
                    && stat.split_once(") ").is_some_and(|(comm, rest)| {
                        comm.ends_with("(sleep") && rest.starts_with('S')
                    })
                {
                    return;
                }
                if Instant::now() > deadline {
                    fail("a sleep child did not settle");
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }

        fn pid(&self) -> Pid {
            Pid::from_raw(self.child.id() as i32).expect("a child's PID is positive")
        }

        fn process(&self) -> ProcessRef {
            ProcessRef::from_child(&self.child)
                .unwrap_or_else(|err| fail(&format!("ProcessRef::from_child: {err}")))
        }

        /// Blocks until the child has exited, without reaping it.
        fn wait_exit_unreaped(&self) {
            loop {
                match waitid(
                    WaitId::Pid(self.pid()),
                    WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
                ) {
                    Ok(Some(_)) => return,
                    Ok(None) => fail("waitid returned no status"),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(err) => fail(&format!("waitid: {err}")),
                }
            }
        }

        /// Reaps the child, which must have exited of SIGTERM.
        fn reap(mut self) {
            let status = self
                .child
                .wait()
                .unwrap_or_else(|err| fail(&format!("waitpid: {err}")));
            self.reaped = true;
            if status.signal() != Some(libc::SIGTERM) {
                fail(&format!("the child ended with {status}, not of SIGTERM"));
            }
        }
    }

    impl Drop for Kid {
        fn drop(&mut self) {
            if !self.reaped {
                // Unreaped, so its PID is still ours: SIGKILL reaches only it.
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    // ---- the cases -------------------------------------------------------------------------------

    fn floor(kid: Kid) -> Duration {
        let start = Instant::now();
        if let Err(err) = kill_process(kid.pid(), Signal::TERM) {
            fail(&format!("kill: {err}"));
        }
        kid.wait_exit_unreaped();
        let took = start.elapsed();
        kid.reap();
        took
    }

    fn floor_reap(kid: Kid) -> Duration {
        let start = Instant::now();
        if let Err(err) = kill_process(kid.pid(), Signal::TERM) {
            fail(&format!("kill: {err}"));
        }
        kid.reap();
        start.elapsed()
    }

    async fn stop(kid: Kid) -> Duration {
        let process = kid.process();
        let start = Instant::now();
        let outcome = process.stop(GRACE).await;
        let took = start.elapsed();
        match outcome {
            Ok(StopOutcome::Exited) => {}
            other => fail(&format!("stop() returned {other:?}, not Exited")),
        }
        kid.reap();
        took
    }

    fn stop_blocking(kid: Kid) -> Duration {
        let process = kid.process();
        let start = Instant::now();
        let outcome = process.stop_blocking(GRACE);
        let took = start.elapsed();
        match outcome {
            Ok(StopOutcome::Exited) => {}
            other => fail(&format!("stop_blocking() returned {other:?}, not Exited")),
        }
        kid.reap();
        took
    }

    // ---- statistics and reporting ------------------------------------------------------------------

    struct Case {
        name: &'static str,
        what: &'static str,
        samples: Vec<Duration>,
    }

    struct Stats {
        median: f64,
        p90: f64,
        min: f64,
        max: f64,
        mean: f64,
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    impl Case {
        /// The median of the differences to `other` round by round (both ran in every round,
        /// one right after the other), in µs: less sensitive to drift than a difference of
        /// medians.
        fn paired_minus(&self, other: &Case) -> f64 {
            median(
                self.samples
                    .iter()
                    .zip(&other.samples)
                    .map(|(a, b)| (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
                    .collect(),
            )
        }

        fn stats(&self) -> Stats {
            let mut us: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
            us.sort_by(f64::total_cmp);
            let n = us.len();
            Stats {
                median: median(us.clone()),
                // Nearest rank.
                p90: us[(n * 9).div_ceil(10) - 1],
                min: us[0],
                max: us[n - 1],
                mean: us.iter().sum::<f64>() / n as f64,
            }
        }
    }

    pub(crate) fn main() {
        // `cargo bench` passes `--bench`; without it this is a test run: keep it quick.
        let bench = std::env::args().any(|arg| arg == "--bench");
        let iters = match std::env::var("PROCWARDEN_BENCH_STOP_ITERS") {
            Ok(value) => match value.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => fail(&format!(
                    "PROCWARDEN_BENCH_STOP_ITERS={value:?} is not a positive integer"
                )),
            },
            Err(_) if bench => 200,
            Err(_) => 10,
        };
        let warmup = (iters / 10).max(2);
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let load_start = load_average();
        eprintln!(
            "process_stop bench: {iters} samples per case (+{warmup} warm-up), a fresh `sleep 600` \
             each; {cpus} CPUs, load average {}",
            json_opt(load_start)
        );
        println!(
            "{{\"bench\":\"meta\",\"iters\":{iters},\"warmup_iters\":{warmup},\"cpus\":{cpus},\
             \"loadavg1_start\":{}}}",
            json_opt(load_start)
        );

        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|err| fail(&format!("runtime: {err}")));
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|err| fail(&format!("runtime: {err}")));

        let mut cases = [
            Case {
                name: "floor",
                what: "kill(SIGTERM); waitid(WEXITED|WNOWAIT)",
                samples: Vec::new(),
            },
            Case {
                name: "floor+reap",
                what: "kill(SIGTERM); waitpid (reaps)",
                samples: Vec::new(),
            },
            Case {
                name: "stop current-thread",
                what: "ProcessRef::stop(5s).await, current-thread runtime",
                samples: Vec::new(),
            },
            Case {
                name: "stop multi-thread",
                what: "ProcessRef::stop(5s).await in a task, multi-thread runtime, 2 workers",
                samples: Vec::new(),
            },
            Case {
                name: "stop_blocking",
                what: "ProcessRef::stop_blocking(5s)",
                samples: Vec::new(),
            },
        ];
        let started = Instant::now();
        for round in 0..warmup + iters {
            for k in 0..cases.len() {
                // Rotate the order from round to round.
                let which = (round + k) % cases.len();
                let kid = Kid::spawn();
                let took = match which {
                    0 => floor(kid),
                    1 => floor_reap(kid),
                    2 => current.block_on(stop(kid)),
                    3 => match multi.block_on(multi.spawn(stop(kid))) {
                        Ok(took) => took,
                        Err(err) => fail(&format!("the stop task failed: {err}")),
                    },
                    _ => stop_blocking(kid),
                };
                if round >= warmup {
                    cases[which].samples.push(took);
                }
            }
            if started.elapsed() > LIMIT * cases.len() as u32 {
                fail("the run took too long");
            }
        }
        current.shutdown_timeout(Duration::from_secs(5));
        multi.shutdown_timeout(Duration::from_secs(5));
        let load_end = load_average();

        let floor = cases[0].stats();
        for case in &cases {
            let s = case.stats();
            println!(
                "{{\"bench\":\"process_stop\",\"case\":\"{}\",\"what\":\"{}\",\"iters\":{},\
                 \"median_us\":{:.1},\"p90_us\":{:.1},\"mean_us\":{:.1},\"min_us\":{:.1},\
                 \"max_us\":{:.1},\"median_minus_floor_us\":{:.1},\"p90_minus_floor_us\":{:.1},\
                 \"paired_median_minus_floor_us\":{:.1}}}",
                case.name,
                case.what,
                case.samples.len(),
                s.median,
                s.p90,
                s.mean,
                s.min,
                s.max,
                s.median - floor.median,
                s.p90 - floor.p90,
                case.paired_minus(&cases[0])
            );
        }
        println!(
            "{{\"bench\":\"process_stop\",\"case\":\"end\",\"children\":{},\"all_reaped\":true,\
             \"loadavg1_end\":{}}}",
            (warmup + iters) * cases.len(),
            json_opt(load_end)
        );

        println!();
        println!(
            "Summary: microseconds from the first signal to the exit seen (stop: to return), {iters} \
             samples each, a fresh `sleep 600` each; reaping not counted except in floor+reap."
        );
        println!(
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>13} {:>11} {:>13}",
            "case", "median", "p90", "min", "max", "median-floor", "p90-floor", "paired-floor"
        );
        for case in &cases {
            let s = case.stats();
            println!(
                "{:<20} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>13.1} {:>11.1} {:>13.1}",
                case.name,
                s.median,
                s.p90,
                s.min,
                s.max,
                s.median - floor.median,
                s.p90 - floor.p90,
                case.paired_minus(&cases[0])
            );
        }
        let worst = cases[2..]
            .iter()
            .map(|c| c.stats().median - floor.median)
            .fold(f64::MIN, f64::max);
        let verdict = if cfg!(debug_assertions) {
            "not judged (unoptimized build)"
        } else if worst <= TARGET_US {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "Target (stop() returns within {TARGET_US:.0} us of the exit, beyond the floor): \
             {verdict}; worst median excess {worst:.1} us."
        );
        println!(
            "Load average (1 min): {} at start, {} at end; {cpus} CPUs. Every child reaped.",
            json_opt(load_start),
            json_opt(load_end)
        );
        if cfg!(debug_assertions) {
            println!(
                "Unoptimized build (a test run): a smoke test only; measure with `cargo bench`."
            );
        }
        println!();
        println!(
            "Reference (peers.md, not measured here): procref's stop() sleeps in 50 ms steps."
        );
    }
}
