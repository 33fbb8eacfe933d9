//! The `Supervisor` and its builder.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::core::{Core, Msg};
use super::handle::Tree;
use super::index::{IndexError, NameIndex};
use super::pool_drain::PoolDrain;
use super::shutdown_request::ShutdownRequest;
use super::{ChildSpec, Context, Intensity, Strategy, SupervisorError, SupervisorHandle, name};

/// A tree of async services: named children started in order, restarted by policy, stopped
/// gracefully in reverse order.
///
/// ```
/// use std::time::Duration;
/// use procwarden::{ChildSpec, Supervisor};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let supervisor = Supervisor::builder("app")
///     .child(ChildSpec::new("worker", |ctx| async move {
///         ctx.shutdown_requested().await;
///         Ok::<(), std::io::Error>(())
///     }))
///     .build()?;
/// let handle = supervisor.handle();
/// let running = tokio::spawn(supervisor.run());
///
/// let status = handle.status().await?;
/// assert_eq!(status.children.len(), 1);
///
/// handle.shutdown();
/// running.await.unwrap()?;
/// # Ok::<(), procwarden::SupervisorError>(())
/// # }).unwrap();
/// ```
pub struct Supervisor {
    definition: Arc<Definition>,
    channel: Option<Channel>,
    tree: Arc<Tree>,
}

/// What a supervisor is, independent of any one run of it.
pub(crate) struct Definition {
    pub(crate) name: Arc<str>,
    pub(crate) strategy: Strategy,
    pub(crate) intensity: Intensity,
    pub(crate) dynamic: bool,
    /// Held by value: a slot refers to its spec by position, so that a pool of many children
    /// costs no allocation per child here, and dropping it no deallocation per child.
    pub(crate) children: Vec<ChildSpec>,
    /// Each first child's position in `children`, by name: made once by the builder's
    /// duplicate check, so that no run of the supervisor has to index them again.
    pub(crate) index: NameIndex,
}

pub(crate) struct Channel {
    pub(crate) sender: mpsc::UnboundedSender<Msg>,
    pub(crate) receiver: mpsc::UnboundedReceiver<Msg>,
    pub(crate) shutdown: Arc<ShutdownRequest>,
    pub(crate) drain: Arc<PoolDrain>,
}

impl Channel {
    fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            receiver,
            shutdown: Arc::default(),
            drain: Arc::default(),
        }
    }

    /// A handle that reaches this channel's supervisor.
    fn handle(&self, path: Arc<str>, tree: Arc<Tree>) -> SupervisorHandle {
        SupervisorHandle::new(
            self.sender.clone(),
            Arc::clone(&self.shutdown),
            Arc::clone(&self.drain),
            path,
            tree,
        )
    }
}

/// Builds a [`Supervisor`]; see [`Supervisor::builder`].
#[derive(Debug)]
#[must_use]
pub struct SupervisorBuilder {
    name: String,
    strategy: Strategy,
    intensity: Intensity,
    dynamic: bool,
    children: Vec<ChildSpec>,
}

impl SupervisorBuilder {
    /// Sets the restart strategy. Default: [`Strategy::OneForOne`].
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the restart intensity. Default: [`Intensity::default`].
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// Makes this a dynamic pool: children (usually many, alike, added at run time) start
    /// without waiting for each other and stop in parallel; children that end for good are
    /// removed; and the supervisor stays up with no children, waiting for
    /// [`SupervisorHandle::add`]. Without it, a supervisor returns once all its children have
    /// stopped for good.
    pub fn dynamic(mut self) -> Self {
        self.dynamic = true;
        self
    }

    /// Adds a child, after those added before it in the start order.
    pub fn child(mut self, spec: ChildSpec) -> Self {
        self.children.push(spec);
        self
    }

    /// Adds several children, in order.
    pub fn children(mut self, specs: impl IntoIterator<Item = ChildSpec>) -> Self {
        self.children.extend(specs);
        self
    }

    /// Checks the names and builds the supervisor.
    pub fn build(self) -> Result<Supervisor, SupervisorError> {
        name::validate(&self.name)?;
        let index = NameIndex::build(&self.children, |child| name::validate(child).is_ok())
            .map_err(|err| match err {
                IndexError::Invalid(position) => name::validate(&self.children[position].name)
                    .expect_err("the index found this name invalid"),
                IndexError::Duplicate(position) => SupervisorError::DuplicateName {
                    path: format!("{}/{}", self.name, self.children[position].name),
                },
            })?;
        Ok(Supervisor {
            definition: Arc::new(Definition {
                name: self.name.into(),
                strategy: self.strategy,
                intensity: self.intensity,
                dynamic: self.dynamic,
                children: self.children,
                index,
            }),
            channel: Some(Channel::new()),
            tree: Tree::new(),
        })
    }
}

impl Supervisor {
    /// Starts building a supervisor named `name` (1 to 64 bytes of `[A-Za-z0-9._-]`).
    pub fn builder(name: impl Into<String>) -> SupervisorBuilder {
        SupervisorBuilder {
            name: name.into(),
            strategy: Strategy::default(),
            intensity: Intensity::default(),
            dynamic: false,
            children: Vec::new(),
        }
    }

    /// The supervisor's name, which is also its path at the root of a tree.
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// A handle to control this supervisor once it runs. Calls made before then wait in its
    /// queue.
    ///
    /// For a supervisor that is then nested with [`ChildSpec::supervisor`], reach it through its
    /// root's handle instead ([`SupervisorHandle::nested`]): each run of a nested supervisor has
    /// a handle of its own.
    pub fn handle(&self) -> SupervisorHandle {
        let name = Arc::clone(&self.definition.name);
        match &self.channel {
            Some(channel) => channel.handle(name, Arc::clone(&self.tree)),
            // No channel: a handle that reaches no supervisor.
            None => Channel::new().handle(name, Arc::clone(&self.tree)),
        }
    }

    /// Runs the tree until it is shut down, fails, or all its children have stopped for good.
    ///
    /// Returns `Ok(())` after a graceful shutdown or once every child of a non-dynamic supervisor
    /// has stopped for good, and an error when the restart intensity was exceeded or the
    /// supervisor was aborted. It returns in every case: children that outlive their grace
    /// period are aborted.
    pub async fn run(mut self) -> Result<(), SupervisorError> {
        let channel = self.channel.take().unwrap_or_else(Channel::new);
        let handle = channel.handle(Arc::clone(&self.definition.name), Arc::clone(&self.tree));
        Core::new(Arc::clone(&self.definition), handle, channel.receiver, None)
            .run()
            .await
    }

    /// Runs the tree on a new task of the current runtime.
    pub fn spawn(self) -> JoinHandle<Result<(), SupervisorError>> {
        tokio::spawn(self.run())
    }

    pub(crate) fn into_definition(self) -> Arc<Definition> {
        self.definition
    }

    /// One run of a supervisor nested under another: it shares its parent's tree, stops when
    /// its context asks it to, and passes reloads on to its children.
    pub(crate) async fn run_nested(
        definition: Arc<Definition>,
        ctx: Context,
    ) -> Result<(), SupervisorError> {
        let channel = Channel::new();
        let path: Arc<str> = ctx.path().into();
        let handle = channel.handle(path, Arc::clone(ctx.tree()));
        ctx.set_nested(Some(handle.clone()));
        let result = Core::new(definition, handle, channel.receiver, Some(ctx.clone()))
            .run()
            .await;
        ctx.set_nested(None);
        result
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.definition.name)
            .field("strategy", &self.definition.strategy)
            .field("intensity", &self.definition.intensity)
            .field("dynamic", &self.definition.dynamic)
            .field("children", &self.definition.children.len())
            .finish()
    }
}
