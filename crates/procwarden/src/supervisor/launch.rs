//! One run of a child, as a task: its function contained, the tasks it spawned drained, and the
//! outcome reported to its supervisor.

use std::future::Future;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::FutureExt;
use tracing::Instrument;

use super::core::Msg;
use super::exit::panic_message;
use super::spec::LaunchRun;
use super::{BoxError, Context, ExitReason};

/// A child's function, as its spec keeps it.
pub(crate) struct ChildFn<F>(pub(crate) F);

impl<F, Fut, E> LaunchRun for ChildFn<F>
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn launch_static(&'static self, ctx: Context) {
        spawn(self, ctx);
    }

    fn launch_shared(self: Arc<Self>, ctx: Context) {
        spawn(self, ctx);
    }
}

/// How a run holds its child's function: `&'static` when it has no state, else an `Arc`.
trait FnRef<F>: Deref<Target = ChildFn<F>> + Send + Sync + 'static {}

impl<F, R: Deref<Target = ChildFn<F>> + Send + Sync + 'static> FnRef<F> for R {}

/// Spawns `run(ctx)` as a task. Generic, so the child's future sits in the task unboxed; the
/// `tracing` span is attached only when something listens for it.
fn spawn<F, Fut, E>(run: impl FnRef<F>, ctx: Context)
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let span = tracing::info_span!("child", path = %ctx.run().slot.path());
    let task = run_child(run, ctx);
    // No `JoinHandle` or `AbortHandle` is kept (see `Run::abort`): the exit is reported by the
    // task itself, or decided by the supervisor when it aborts the run.
    if span.is_disabled() {
        drop(tokio::spawn(task));
    } else {
        drop(tokio::spawn(task.instrument(span)));
    }
}

/// The run itself: the function, contained, then the tasks it spawned, then the report.
///
/// Not an `async fn`: the guard that ends the run is made here, so that it ends the run even if
/// the task is dropped before its first poll.
fn run_child<F, Fut, E>(run: impl FnRef<F>, ctx: Context) -> impl Future<Output = ()>
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let end = EndRun(ctx);
    async move {
        let ctx = &end.0;
        let mut run_and_report = pin!(run_and_report(run, ctx));
        // An abort drops the run where it stands, as aborting its task would.
        std::future::poll_fn(|cx| {
            let state = ctx.run();
            if state.poll_aborted(cx).is_ready() {
                return Poll::Ready(());
            }
            state.set_in_poll(true);
            let polled = run_and_report.as_mut().poll(cx);
            state.set_in_poll(false);
            // Told to stop by a handle directly and not done at once: the supervisor must hear
            // of it to arm the grace period (see `shutdown_request`).
            if polled.is_pending() && ctx.supervisor().shutdown_request().needs_poke() {
                ctx.supervisor().notify(Msg::Shutdown);
            }
            polled
        })
        .await;
    }
}

/// Ends a run's task, however the task ends: aborting it must abort the tasks it spawned too,
/// the run must not keep the finished task allocated, and the supervisor counts it gone.
struct EndRun(Context);

impl Drop for EndRun {
    fn drop(&mut self) {
        let run = self.0.run();
        run.close_spawned();
        run.release_task();
        self.0.supervisor().pool_drain().task_ended();
    }
}

/// The function, contained, then the tasks it spawned, then the report.
async fn run_and_report<F, Fut, E>(run: impl FnRef<F>, ctx: &Context)
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    // The call is inside the contained future: a panic before the first `.await` is caught too.
    let outcome = AssertUnwindSafe(async { (run.0)(ctx.clone()).await.map_err(Into::into) })
        .catch_unwind()
        .await;
    let state = ctx.run();
    let reason = exit_reason(outcome, state.stop.is_requested());
    if let ExitReason::Failed(_) | ExitReason::Panicked(_) = &reason {
        tracing::warn!("{reason}");
    }
    // The tasks it spawned stop with it.
    state.stop.request();
    state.drain_spawned().await;
    if ctx.supervisor().pool_drain().is_silent() {
        // Its pool is stopping and counts the ends of tasks instead (see `pool_drain`).
        return;
    }
    ctx.supervisor().notify(Msg::Exited {
        key: state.key,
        generation: state.generation,
        reason,
    });
}

/// How the outcome of a child's function maps to its exit reason.
fn exit_reason(
    outcome: Result<Result<(), BoxError>, Box<dyn std::any::Any + Send>>,
    asked_to_stop: bool,
) -> ExitReason {
    match outcome {
        Ok(Ok(())) if asked_to_stop => ExitReason::Shutdown,
        Ok(Ok(())) => ExitReason::Normal,
        Ok(Err(err)) => ExitReason::failed(super::error::chain(&*err)),
        Err(payload) => ExitReason::Panicked(panic_message(payload).into()),
    }
}
