//! A small supervised tree from start to finish: ordered start, a failure and its restart with
//! backoff, a reload that reaches every child, the status of the tree, and a graceful stop in
//! reverse start order.
//!
//! ```text
//! cargo run -p procwarden --example supervised_tree
//! ```
//!
//! The tree:
//!
//! ```text
//! root
//! ├── config            reports ready once its settings are loaded; web waits for it
//! ├── web               serves until asked to stop; re-reads its settings on reload
//! └── workers           a nested supervisor
//!     ├── indexer       a plain worker
//!     └── mailer        takes jobs as messages; its first run crashes on its first job
//! ```
//!
//! The program steps through the tree's life by waiting for the tree's own events and for
//! notes the children send back, never by sleeping, so it prints the same log on every run. It
//! ends by itself in well under a second and exits with 0; if the tree ever stopped making
//! progress, a 30-second guard would end it with exit status 1 instead of hanging.

use std::error::Error;
use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use procwarden::supervisor::{ChildState, ChildStatus, Event, EventKind, RecvError, Subscription};
use procwarden::{Backoff, ChildSpec, Context, Restart, Strategy, Supervisor};
use tokio::sync::mpsc;

type DemoResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// What the children tell the program (a reload handled, a job done), one line each.
type Notes = mpsc::UnboundedSender<String>;

/// A job for the mailer, sent through its mailbox.
struct Job(u32);

/// How long the mailer waits before its first restart.
const MAILER_BACKOFF: Duration = Duration::from_millis(200);

/// How long the whole demo may take before it is considered stuck.
const GUARD: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    match tokio::time::timeout(GUARD, demo()).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            eprintln!("supervised_tree: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("supervised_tree: no progress within {GUARD:?}; giving up");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> DemoResult {
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let supervisor = tree(notes_tx)?;
    let handle = supervisor.handle();
    // Subscribe before the tree runs, so that no event is missed.
    let mut events = handle.subscribe();
    let running = supervisor.spawn();

    step("1. start: children start in order, each once the one before it is ready");
    wait_for(&mut events, "root", |kind| *kind == EventKind::Ready).await?;

    step("2. failure: workers/mailer crashes on its first job and is restarted after a backoff");
    handle.send("workers/mailer", Job(1)).await?;
    wait_for(&mut events, "root/workers/mailer", |kind| {
        *kind == EventKind::Ready
    })
    .await?;
    println!("   (the mailbox survives restarts; job 2 goes to the new run)");
    handle.send("workers/mailer", Job(2)).await?;
    note(&notes.recv().await.ok_or("the children's notes ended")?);

    step("3. reload: one request reaches every running child, nested ones included");
    handle.reload()?;
    let mut reloaded = Vec::new();
    for _ in 0..4 {
        reloaded.push(notes.recv().await.ok_or("the children's notes ended")?);
    }
    // The children handle the reload concurrently; sort their notes for a stable log.
    reloaded.sort();
    for line in &reloaded {
        note(line);
    }

    step("4. status of the whole tree");
    print_status(&handle.status().await?, "   ");

    step("5. graceful stop: children stop in reverse start order");
    handle.shutdown();
    // config started first, so it stops last; once it has, the root returns.
    wait_for(&mut events, "root/config", |kind| {
        matches!(kind, EventKind::Exited(_))
    })
    .await?;
    running.await??;
    println!("\nThe supervisor returned Ok(()): every child stopped gracefully.");
    Ok(())
}

/// Builds the tree described at the top of this file.
fn tree(notes: Notes) -> DemoResult<Supervisor> {
    let workers = Supervisor::builder("workers")
        .strategy(Strategy::OneForOne)
        .child(ChildSpec::new("indexer", {
            let notes = notes.clone();
            move |ctx| serve(ctx, notes.clone(), "rebuilt its index plan")
        }))
        .child(mailer(notes.clone()))
        .build()?;

    let root = Supervisor::builder("root")
        .child(
            ChildSpec::new("config", {
                let notes = notes.clone();
                move |ctx: Context| {
                    let notes = notes.clone();
                    async move {
                        // Loading and validating the settings would happen here.
                        ctx.ready();
                        serve(ctx, notes, "re-read the settings file").await
                    }
                }
            })
            .reports_ready(),
        )
        .child(
            ChildSpec::new("web", {
                let notes = notes.clone();
                move |ctx| serve(ctx, notes.clone(), "swapped in the new settings")
            })
            .restart(Restart::Permanent)
            .shutdown_timeout(Duration::from_secs(2)),
        )
        .child(ChildSpec::supervisor(workers))
        .build()?;
    Ok(root)
}

/// A child that runs until it is asked to stop, and notes each reload it handles.
async fn serve(ctx: Context, notes: Notes, on_reload: &'static str) -> io::Result<()> {
    loop {
        tokio::select! {
            () = ctx.shutdown_requested() => return Ok(()),
            () = ctx.reload_requested() => {
                let _ = notes.send(format!("{}: {on_reload}", ctx.path()));
            }
        }
    }
}

/// The mailer: takes jobs from its mailbox. Its first run loses its connection on its first
/// job and fails; every later run sends its jobs.
fn mailer(notes: Notes) -> ChildSpec {
    let runs = Arc::new(AtomicU32::new(0));
    ChildSpec::new("mailer", move |ctx: Context| {
        let run = runs.fetch_add(1, Ordering::Relaxed) + 1;
        let notes = notes.clone();
        async move {
            loop {
                tokio::select! {
                    () = ctx.shutdown_requested() => return Ok(()),
                    () = ctx.reload_requested() => {
                        let _ = notes.send(format!("{}: reconnected to the mail relay", ctx.path()));
                    }
                    job = ctx.recv::<Job>() => {
                        let Some(Job(id)) = job else { return Ok(()) };
                        if run == 1 {
                            return Err(io::Error::other(format!(
                                "lost the connection to the mail relay while sending job {id}"
                            )));
                        }
                        let _ = notes.send(format!("{}: sent job {id} (run {run})", ctx.path()));
                    }
                }
            }
        }
    })
    .messages::<Job>()
    .restart(Restart::Permanent)
    .backoff(Backoff::exponential(MAILER_BACKOFF, Duration::from_secs(2)).jitter(0.0))
}

/// Prints events as they come until one about `path` matches `done`.
async fn wait_for(
    events: &mut Subscription,
    path: &str,
    done: impl Fn(&EventKind) -> bool,
) -> DemoResult {
    loop {
        match events.recv().await {
            Ok(event) => {
                print_event(&event);
                if &*event.path == path && done(&event.kind) {
                    return Ok(());
                }
            }
            Err(RecvError::Lagged(missed)) => println!("   ({missed} events missed)"),
            Err(RecvError::Closed) => return Err("the tree's event stream closed".into()),
        }
    }
}

fn print_event(event: &Event) {
    let what = match &event.kind {
        EventKind::Starting => "starting".to_owned(),
        EventKind::Ready => "ready".to_owned(),
        EventKind::Stopping => "stopping".to_owned(),
        EventKind::Exited(reason) => format!("exited: {reason}"),
        EventKind::Restarting { delay } => format!("restarting in {delay:?}"),
        EventKind::Removed => "removed".to_owned(),
        EventKind::IntensityExceeded => "restart intensity exceeded".to_owned(),
        other => format!("{other:?}"),
    };
    println!("   event  {:<22} {what}", event.path);
}

fn note(line: &str) {
    println!("   note   {line}");
}

fn step(title: &str) {
    println!("\n{title}");
}

/// Prints a status tree, one line per node, children indented under their supervisor.
fn print_status(node: &ChildStatus, indent: &str) {
    let state = match node.state {
        ChildState::Waiting => "waiting",
        ChildState::Starting => "starting",
        ChildState::Running => "running",
        ChildState::Restarting { .. } => "restarting",
        ChildState::Stopping => "stopping",
        ChildState::Stopped => "stopped",
        ChildState::Failed => "failed",
    };
    let label = format!("{indent}{}", node.name);
    let mut line = format!("{label:<18} {state:<8}  restarts: {}", node.restarts);
    if let Some(exit) = &node.last_exit {
        line.push_str(&format!("  last exit: {exit}"));
    }
    println!("{line}");
    let deeper = format!("{indent}  ");
    for child in &node.children {
        print_status(child, &deeper);
    }
}
