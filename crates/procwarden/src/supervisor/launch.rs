//! One run of a child, as a task: its function contained, the tasks it spawned drained, and the
//! outcome reported to its supervisor.

use std::any::Any;
use std::future::Future;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use pin_project_lite::pin_project;
use tracing::Instrument;

use super::core::Msg;
use super::exit::panic_message;
use super::spec::LaunchRun;
use super::{BoxError, ChildResult, Context, ExitReason};

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
    let span = tracing::info_span!("child", path = %ctx.path());
    // The guard is made here, outside the task's first poll, so that it ends the run even if the
    // task is dropped before then.
    let task = RunTask {
        end: EndRun(ctx),
        stage: Stage::Call { run },
    };
    // No `JoinHandle` or `AbortHandle` is kept (see `Run::abort`): the exit is reported by the
    // task itself, or decided by the supervisor when it aborts the run.
    if span.is_disabled() {
        drop(tokio::spawn(task));
    } else {
        drop(tokio::spawn(task.instrument(span)));
    }
}

pin_project! {
    /// One run, as its task: the function, contained, then the tasks it spawned, then the
    /// report.
    ///
    /// Written out rather than as an `async` block, so that the task holds the child's future
    /// and little more: every byte here is in each task of a pool, and tokio sizes a task in
    /// steps of 128 bytes.
    struct RunTask<R, Fut> {
        end: EndRun,
        #[pin]
        stage: Stage<R, Fut>,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage<R, Fut> {
        /// Not polled yet: the function is called by the first poll, which contains its panics.
        Call { run: R },
        Running { #[pin] fut: Fut },
        /// The function is over; the tasks it spawned are being drained.
        Draining { reason: ExitReason },
        Reported,
    }
}

impl<R, F, Fut, E> Future for RunTask<R, Fut>
where
    R: Deref<Target = ChildFn<F>>,
    F: Fn(Context) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        let ctx = &this.end.0;
        let state = ctx.run();
        // An abort drops the run where it stands, as aborting its task would.
        if state.poll_aborted(cx).is_ready() {
            return Poll::Ready(());
        }
        state.set_in_poll(true);
        let polled = advance(this.stage, ctx, cx);
        state.set_in_poll(false);
        // Told to stop by a handle directly and not done at once: the supervisor must hear of
        // it to arm the grace period (see `shutdown_request`).
        if polled.is_pending() && ctx.supervisor().shutdown_request().needs_poke() {
            ctx.supervisor().notify(Msg::Shutdown);
        }
        polled
    }
}

/// Takes a run through its stages as far as it can go without waiting.
fn advance<R, F, Fut, E>(
    mut stage: Pin<&mut Stage<R, Fut>>,
    ctx: &Context,
    cx: &mut std::task::Context<'_>,
) -> Poll<()>
where
    R: Deref<Target = ChildFn<F>>,
    F: Fn(Context) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    loop {
        match stage.as_mut().project() {
            StageProj::Call { run } => {
                // Inside the containment: a panic before the first `.await` is caught too.
                let next = match catch_unwind(AssertUnwindSafe(|| (run.0)(ctx.clone()))) {
                    Ok(fut) => Stage::Running { fut },
                    Err(payload) => Stage::Draining {
                        reason: ended(ctx, Err(payload)),
                    },
                };
                stage.set(next);
            }
            StageProj::Running { fut } => {
                let outcome = match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(result)) => Ok(result.map_err(Into::into)),
                    Err(payload) => Err(payload),
                };
                let reason = ended(ctx, outcome);
                let reason = drop_finished(stage.as_mut(), reason);
                stage.set(Stage::Draining { reason });
            }
            StageProj::Draining { reason } => {
                std::task::ready!(ctx.run().poll_drain_spawned(cx));
                let reason = std::mem::replace(reason, ExitReason::Normal);
                stage.set(Stage::Reported);
                report(ctx, reason);
                return Poll::Ready(());
            }
            StageProj::Reported => return Poll::Ready(()),
        }
    }
}

/// Drops the child's finished future, whose destructors are the child's code too: a panic in
/// one is the child's failure, unless the run had failed already.
fn drop_finished<R, Fut>(mut stage: Pin<&mut Stage<R, Fut>>, reason: ExitReason) -> ExitReason {
    // A panicking destructor still leaves the new stage in place, so the future is not dropped
    // twice.
    match catch_unwind(AssertUnwindSafe(|| stage.set(Stage::Reported))) {
        Ok(()) => reason,
        Err(payload) => match reason {
            ExitReason::Normal | ExitReason::Shutdown => {
                let reason = ExitReason::Panicked(panic_message(payload).into());
                tracing::warn!("{reason}");
                reason
            }
            failed => failed,
        },
    }
}

/// The function is over: its exit reason, logged if a failure, and the tasks it spawned told
/// to stop with it.
fn ended(ctx: &Context, outcome: Result<ChildResult, Box<dyn Any + Send>>) -> ExitReason {
    let state = ctx.run();
    let reason = exit_reason(outcome, state.signals.is_stop_requested());
    if let ExitReason::Failed(_) | ExitReason::Panicked(_) = &reason {
        tracing::warn!("{reason}");
    }
    state.signals.request_stop();
    reason
}

/// Tells the supervisor how the run ended, unless its pool is stopping and counts the ends of
/// tasks instead (see `pool_drain`).
fn report(ctx: &Context, reason: ExitReason) {
    if ctx.supervisor().pool_drain().is_silent() {
        return;
    }
    let state = ctx.run();
    state.set_reported();
    ctx.supervisor().notify(Msg::Exited {
        key: state.key,
        generation: state.generation,
        reason,
    });
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

/// How the outcome of a child's function maps to its exit reason.
fn exit_reason(
    outcome: Result<ChildResult, Box<dyn Any + Send>>,
    asked_to_stop: bool,
) -> ExitReason {
    match outcome {
        Ok(Ok(())) if asked_to_stop => ExitReason::Shutdown,
        Ok(Ok(())) => ExitReason::Normal,
        Ok(Err(err)) => ExitReason::failed(super::error::chain(&*err)),
        Err(payload) => ExitReason::Panicked(panic_message(payload).into()),
    }
}
