//! What a supervisor needs to know to run one child.

use std::any::{TypeId, type_name};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use smol_str::SmolStr;

use super::{Backoff, Context, Restart, Supervisor};

/// The error type a child may return: anything that converts into a boxed error, as
/// `anyhow::Error`, `std::io::Error` and `String` do.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What one run of a child returns.
pub type ChildResult = Result<(), BoxError>;

/// Spawns one run of a child as a task; made generic over the child's future by
/// [`ChildSpec::new`], so that the future lives in the task itself, unboxed. The function is
/// the launcher itself: one pointer to follow per start.
#[derive(Clone)]
pub(crate) enum Launch {
    /// A function without state, such as a plain `fn` or a closure that captures nothing: it
    /// needs no memory, so nothing is allocated per spec, or freed when a pool of them goes.
    Stateless(&'static dyn LaunchRun),
    /// A function with state, shared by every run of the child.
    Shared(Arc<dyn LaunchRun>),
}

pub(crate) trait LaunchRun: Send + Sync {
    fn launch_static(&'static self, ctx: Context);
    fn launch_shared(self: Arc<Self>, ctx: Context);
}

impl Launch {
    /// Wraps `run`, allocating only when it has state.
    fn new<L: LaunchRun + 'static>(run: L) -> Self {
        if size_of::<L>() == 0 && !std::mem::needs_drop::<L>() {
            // A `Box` of a zero-sized value allocates nothing, and leaking a value with no drop
            // glue loses nothing: this is a `'static` reference for free.
            Self::Stateless(Box::leak(Box::new(run)))
        } else {
            Self::Shared(Arc::new(run))
        }
    }

    /// Spawns one run, as a task of the current runtime.
    pub(crate) fn launch(&self, ctx: Context) {
        match self {
            Self::Stateless(run) => run.launch_static(ctx),
            Self::Shared(run) => Arc::clone(run).launch_shared(ctx),
        }
    }
}

/// How long a child may take to stop once asked (OTP's `shutdown` child option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Abort the child's task at once, without asking it to stop.
    Brutal,
    /// Ask the child to stop, wait this long, then abort its task.
    Timeout(Duration),
    /// Ask the child to stop and wait for as long as it takes. The default for nested supervisors,
    /// which always return.
    Infinity,
}

impl Default for Shutdown {
    /// Five seconds, OTP's default for workers.
    fn default() -> Self {
        Self::Timeout(Duration::from_secs(5))
    }
}

/// A long-running service run as a child: the trait form of [`ChildSpec::new`]'s closure.
///
/// ```
/// use procwarden::{ChildSpec, Context, supervisor::{Service, ChildResult}};
///
/// struct Ticker;
///
/// impl Service for Ticker {
///     async fn run(&self, ctx: Context) -> ChildResult {
///         ctx.shutdown_requested().await;
///         Ok(())
///     }
/// }
///
/// let spec = ChildSpec::service("ticker", Ticker);
/// assert_eq!(spec.name(), "ticker");
/// ```
pub trait Service: Send + Sync + 'static {
    /// Runs the service until it is asked to stop (see [`Context::shutdown_requested`]) or fails.
    /// Called again for every restart.
    fn run(&self, ctx: Context) -> impl Future<Output = ChildResult> + Send;
}

/// The description of one child: its name, how to run it, and the policies that govern it.
///
/// ```
/// use std::time::Duration;
/// use procwarden::{ChildSpec, Restart};
///
/// let spec = ChildSpec::new("worker", |ctx| async move {
///     ctx.shutdown_requested().await;
///     Ok::<(), std::io::Error>(())
/// })
/// .restart(Restart::Transient)
/// .shutdown_timeout(Duration::from_secs(2));
/// assert_eq!(spec.name(), "worker");
/// ```
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) name: SmolStr,
    pub(crate) launch: Launch,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) start_timeout: Option<Duration>,
    pub(crate) reports_ready: bool,
    /// `None` for the default, which most children keep: it is not copied into every spec.
    backoff: Option<Box<Backoff>>,
    pub(crate) messages: Option<MessageType>,
    pub(crate) is_supervisor: bool,
}

/// The type of message a child accepts, by id and by name for error messages.
///
/// A pointer to a function of the type rather than its id and name: every spec holds one, and
/// this is a quarter of the size.
#[derive(Clone, Copy)]
pub(crate) struct MessageType(fn() -> (TypeId, &'static str));

impl MessageType {
    pub(crate) fn of<M: 'static>() -> Self {
        Self(|| (TypeId::of::<M>(), type_name::<M>()))
    }

    fn id(self) -> TypeId {
        (self.0)().0
    }

    /// The type's name, for error messages.
    pub(crate) fn name(self) -> &'static str {
        (self.0)().1
    }
}

/// By type id, not by pointer: one type's function may be instantiated at more than one address.
impl PartialEq for MessageType {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ChildSpec {
    /// A child named `name` that runs `run(ctx)`, again on every restart.
    ///
    /// The name must be unique within its supervisor, 1 to 64 bytes of `[A-Za-z0-9._-]`; the
    /// supervisor checks it when the child is added.
    pub fn new<F, Fut, E>(name: impl Into<String>, run: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self {
            name: SmolStr::from(name.into()),
            launch: Launch::new(super::launch::ChildFn(run)),
            restart: Restart::default(),
            shutdown: Shutdown::default(),
            start_timeout: Some(Duration::from_secs(30)),
            reports_ready: false,
            backoff: None,
            messages: None,
            is_supervisor: false,
        }
    }

    /// A child that runs a [`Service`].
    pub fn service<S: Service>(name: impl Into<String>, service: S) -> Self {
        let service = Arc::new(service);
        Self::new(name, move |ctx| {
            let service = Arc::clone(&service);
            async move { service.run(ctx).await }
        })
    }

    /// A nested supervisor as a child, so trees nest. It reports ready once all its own children
    /// are started, waits as long as its children need to stop ([`Shutdown::Infinity`]), and
    /// fails when its restart intensity is exceeded, which its parent treats like any failure.
    pub fn supervisor(supervisor: Supervisor) -> Self {
        let definition = supervisor.into_definition();
        let name = definition.name.to_string();
        let mut spec = Self::new(name, move |ctx| {
            let definition = Arc::clone(&definition);
            async move { super::Supervisor::run_nested(definition, ctx).await }
        });
        spec.shutdown = Shutdown::Infinity;
        spec.reports_ready = true;
        spec.start_timeout = None;
        spec.is_supervisor = true;
        spec
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The delays between the child's restarts.
    pub(crate) fn delays(&self) -> &Backoff {
        self.backoff.as_deref().unwrap_or(&Backoff::DEFAULT)
    }

    /// Sets when the child is restarted. Default: [`Restart::Permanent`].
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets how the child is stopped. Default: a 5 s grace period.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Sets the grace period between asking the child to stop and aborting its task.
    pub fn shutdown_timeout(self, grace: Duration) -> Self {
        self.shutdown(Shutdown::Timeout(grace))
    }

    /// Declares that the child calls [`Context::ready`] once it can serve. Until it does, the
    /// supervisor starts none of the children after it; if it has not within its start timeout
    /// (see [`start_timeout`](Self::start_timeout)), it has failed to start.
    ///
    /// A child that does not report readiness counts as ready as soon as it is started.
    pub fn reports_ready(mut self) -> Self {
        self.reports_ready = true;
        self
    }

    /// Sets how long a child that reports readiness may take to become ready (default 30 s);
    /// `None` waits for ever.
    pub fn start_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Sets the delays between restarts. Default: [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = (backoff != Backoff::DEFAULT).then(|| Box::new(backoff));
        self
    }

    /// Declares that the child accepts messages of type `M`, sent with
    /// [`SupervisorHandle::send`](crate::SupervisorHandle::send) and received with
    /// [`Context::recv`]. The mailbox survives restarts: a message sent while the child restarts
    /// waits for its next run.
    pub fn messages<M: Send + 'static>(mut self) -> Self {
        self.messages = Some(MessageType::of::<M>());
        self
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("start_timeout", &self.start_timeout)
            .field("reports_ready", &self.reports_ready)
            .field("backoff", self.delays())
            .field("messages", &self.messages.map(MessageType::name))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn plain(_: Context) -> ChildResult {
        Ok(())
    }

    #[test]
    fn a_function_without_state_costs_no_allocation() {
        assert!(matches!(
            ChildSpec::new("f", plain).launch,
            Launch::Stateless(_)
        ));
        let closure = ChildSpec::new("c", |_| async { Ok::<(), Infallible>(()) });
        assert!(matches!(closure.launch, Launch::Stateless(_)));
        let state = Arc::new(1);
        let capturing = ChildSpec::new("s", move |_| {
            let _ = &state;
            async { Ok::<(), Infallible>(()) }
        });
        assert!(matches!(capturing.launch, Launch::Shared(_)));
    }

    #[test]
    fn a_spec_holds_a_backoff_only_when_it_is_not_the_default() {
        let custom = Backoff::exponential(Duration::from_millis(1), Duration::from_millis(8));
        let spec = ChildSpec::new("f", plain).backoff(custom);
        assert_eq!(*spec.delays(), custom);
        let default = ChildSpec::new("g", plain).backoff(Backoff::default());
        assert!(default.backoff.is_none());
        assert_eq!(*default.delays(), Backoff::default());
    }

    #[test]
    fn message_types_are_equal_by_type() {
        assert_eq!(MessageType::of::<u32>(), MessageType::of::<u32>());
        assert_ne!(MessageType::of::<u32>(), MessageType::of::<i32>());
        assert_eq!(MessageType::of::<u32>().name(), "u32");
    }

    /// Every child's spec is held for as long as its supervisor lives: 100,000 of them should
    /// not grow unnoticed.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_spec_is_at_most_104_bytes() {
        assert!(std::mem::size_of::<ChildSpec>() <= 104);
    }

    #[test]
    fn a_zero_sized_function_with_a_drop_is_dropped() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Guard;
        impl Drop for Guard {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let guard = Guard;
        let spec = ChildSpec::new("g", move |_| {
            let _ = &guard;
            async { Ok::<(), Infallible>(()) }
        });
        assert!(matches!(spec.launch, Launch::Shared(_)));
        drop(spec);
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    }
}
