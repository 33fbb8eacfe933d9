//! Listening sockets by name, bound once and handed from generation to generation.

use std::ffi::OsStr;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{UpgradeError, handover};
use crate::sync::lock;

/// The listening sockets of a program, by name: `"http"` on `127.0.0.1:8080`.
///
/// The first generation binds each socket when it is first asked for, or takes it from systemd
/// socket activation (`LISTEN_FDS` with `LISTEN_FDNAMES`, as set by `FileDescriptorName=`).
/// Later generations inherit every socket by descriptor from the one before, through the same
/// variables, so a listening socket is never closed and no connection waiting in its accept
/// queue is lost.
///
/// Each call hands out a new descriptor of the same socket, so a supervised child that is
/// restarted asks again and gets the same socket. The registry keeps its own descriptor until
/// it is dropped: a generation that stops accepting leaves the socket open for its successor.
///
/// Unix socket files are not removed when a generation exits: the next one listens on them.
///
/// ```
/// use procwarden::upgrade::Listeners;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let listeners = Listeners::new();
/// let http = listeners.tcp("http", "127.0.0.1:0")?;
/// // Asking again (a restarted child) gives the same socket, not a new port.
/// let again = listeners.tcp("http", "127.0.0.1:0")?;
/// assert_eq!(http.local_addr().unwrap(), again.local_addr().unwrap());
/// # Ok::<(), procwarden::upgrade::UpgradeError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct Listeners {
    sockets: Mutex<Vec<Named>>,
}

#[derive(Debug)]
struct Named {
    name: String,
    fd: OwnedFd,
}

/// The kinds of socket a name can stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Unix,
    Udp,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Tcp => "a TCP listener",
            Kind::Unix => "a Unix stream listener",
            Kind::Udp => "a UDP socket",
        }
    }
}

impl Listeners {
    /// An empty registry: every socket is bound when first asked for.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sockets this process was handed: by systemd socket activation or by the
    /// generation before it. Empty when the environment hands none to this process.
    ///
    /// Only the first call in a process takes the descriptors; later calls are refused, as two
    /// owners would close each other's sockets. An [`Upgrader`](super::Upgrader) makes this
    /// call itself: use it directly only for socket activation without upgrades.
    pub fn from_env() -> Result<Self, UpgradeError> {
        let names = handover::parse_listen(
            std::env::var_os(handover::LISTEN_PID).as_deref(),
            std::env::var_os(handover::LISTEN_FDS).as_deref(),
            std::env::var_os(handover::LISTEN_FDNAMES).as_deref(),
            std::process::id(),
        )?;
        let Some(names) = names else {
            return Ok(Self::new());
        };
        let fds = crate::sys::exec::take_inherited(names.len()).map_err(|source| {
            UpgradeError::BadEnvironment {
                variable: handover::LISTEN_FDS,
                value: names.len().to_string(),
                reason: source.to_string(),
            }
        })?;
        let sockets = names
            .into_iter()
            .zip(fds)
            .map(|(name, fd)| Named { name, fd })
            .collect();
        Ok(Self {
            sockets: Mutex::new(sockets),
        })
    }

    /// The TCP listener named `name`, inherited if this process was handed one bound to `addr`
    /// (with port 0, any port), otherwise bound to `addr` now (with `SO_REUSEADDR`).
    ///
    /// Must be called inside a tokio runtime.
    pub fn tcp(
        &self,
        name: &str,
        addr: impl ToSocketAddrs,
    ) -> Result<tokio::net::TcpListener, UpgradeError> {
        let fd = self.claim_inet(name, Kind::Tcp, addr, |wanted| {
            Ok(std::net::TcpListener::bind(wanted)?.into())
        })?;
        register(name, fd, tokio::net::TcpListener::from_std)
    }

    /// The Unix stream listener named `name` at `path`, inherited or bound now. A socket file
    /// left at `path` by a program that is gone is replaced; one that still accepts is not.
    ///
    /// Must be called inside a tokio runtime.
    pub fn unix(
        &self,
        name: &str,
        path: impl AsRef<Path>,
    ) -> Result<tokio::net::UnixListener, UpgradeError> {
        let path = path.as_ref();
        let same_path = |fd: BorrowedFd<'_>| Ok(local_path(fd)?.as_deref() == Some(path));
        let fd = self.claim(name, Kind::Unix, same_path, || bind_unix(path))?;
        register(name, fd, tokio::net::UnixListener::from_std)
    }

    /// The UDP socket named `name`, inherited if this process was handed one bound to `addr`,
    /// otherwise bound now.
    ///
    /// Must be called inside a tokio runtime.
    pub fn udp(
        &self,
        name: &str,
        addr: impl ToSocketAddrs,
    ) -> Result<tokio::net::UdpSocket, UpgradeError> {
        let fd = self.claim_inet(name, Kind::Udp, addr, |wanted| {
            Ok(std::net::UdpSocket::bind(wanted)?.into())
        })?;
        register(name, fd, tokio::net::UdpSocket::from_std)
    }

    /// [`claim`](Self::claim) for an IP socket: the held one if bound to one of the addresses
    /// `addr` resolves to, else one from `bind`.
    fn claim_inet(
        &self,
        name: &str,
        kind: Kind,
        addr: impl ToSocketAddrs,
        bind: impl FnOnce(&[SocketAddr]) -> io::Result<OwnedFd>,
    ) -> Result<OwnedFd, UpgradeError> {
        let wanted: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|err| UpgradeError::listener(name, "resolving its address", err))?
            .collect();
        let same_address = |fd: BorrowedFd<'_>| {
            let bound = local_inet(fd)?;
            Ok(wanted.iter().any(|want| same_inet(*want, bound)))
        };
        self.claim(name, kind, same_address, || bind(&wanted))
    }

    /// The names of every socket held, in handover order.
    pub fn names(&self) -> Vec<String> {
        lock(&self.sockets).iter().map(|s| s.name.clone()).collect()
    }

    /// A new descriptor of the socket `name`: the registered one if it is of `kind` and
    /// `matches`, else a fresh one from `bind`, which replaces it in the registry.
    fn claim(
        &self,
        name: &str,
        kind: Kind,
        matches: impl FnOnce(BorrowedFd<'_>) -> io::Result<bool>,
        bind: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> Result<OwnedFd, UpgradeError> {
        crate::name::check(name).map_err(|reason| UpgradeError::BadName {
            name: name.to_owned(),
            reason,
        })?;
        let mut sockets = lock(&self.sockets);
        let held = sockets.iter().position(|s| s.name == name);
        if let Some(index) = held {
            let fd = sockets[index].fd.as_fd();
            let found =
                kind_of(fd).map_err(|err| UpgradeError::listener(name, "inspecting it", err))?;
            if found != Some(kind) {
                return Err(UpgradeError::WrongKind {
                    name: name.to_owned(),
                    found: found
                        .map_or("another kind of descriptor", Kind::describe)
                        .to_owned(),
                    wanted: kind.describe(),
                });
            }
            let same =
                matches(fd).map_err(|err| UpgradeError::listener(name, "inspecting it", err))?;
            if same {
                return fd
                    .try_clone_to_owned()
                    .map_err(|err| UpgradeError::listener(name, "duplicating it", err));
            }
            tracing::warn!(
                listener = name,
                "the socket held under this name is bound elsewhere; binding a new one"
            );
        }
        let fd = bind().map_err(|err| UpgradeError::listener(name, "binding it", err))?;
        let copy = fd
            .try_clone()
            .map_err(|err| UpgradeError::listener(name, "duplicating it", err))?;
        let named = Named {
            name: name.to_owned(),
            fd,
        };
        match held {
            Some(index) => sockets[index] = named,
            None => sockets.push(named),
        }
        Ok(copy)
    }

    /// The names and descriptors to hand to the next generation, in order.
    pub(crate) fn handover(&self) -> Result<(Vec<String>, Vec<OwnedFd>), UpgradeError> {
        let sockets = lock(&self.sockets);
        let mut names = Vec::with_capacity(sockets.len());
        let mut fds = Vec::with_capacity(sockets.len());
        for socket in sockets.iter() {
            let fd = socket
                .fd
                .try_clone()
                .map_err(|err| UpgradeError::listener(&socket.name, "duplicating it", err))?;
            names.push(socket.name.clone());
            fds.push(fd);
        }
        Ok((names, fds))
    }
}

/// Hands `fd` to the runtime as a `T`, non-blocking as tokio wants it.
fn register<S: From<OwnedFd>, T>(
    name: &str,
    fd: OwnedFd,
    from_std: impl FnOnce(S) -> io::Result<T>,
) -> Result<T, UpgradeError> {
    rustix::io::ioctl_fionbio(&fd, true)
        .map_err(io::Error::from)
        .and_then(|()| from_std(S::from(fd)))
        .map_err(|err| UpgradeError::listener(name, "registering it with the runtime", err))
}

/// What kind of socket `fd` is, if one of ours.
fn kind_of(fd: BorrowedFd<'_>) -> io::Result<Option<Kind>> {
    use rustix::net::{AddressFamily, SocketType, getsockname, sockopt};
    let Ok(kind) = sockopt::socket_type(fd) else {
        return Ok(None);
    };
    let family = getsockname(fd)?.address_family();
    let inet = family == AddressFamily::INET || family == AddressFamily::INET6;
    Ok(match kind {
        SocketType::STREAM if inet => Some(Kind::Tcp),
        SocketType::STREAM if family == AddressFamily::UNIX => Some(Kind::Unix),
        SocketType::DGRAM if inet => Some(Kind::Udp),
        _ => None,
    })
}

fn local_inet(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let addr = rustix::net::getsockname(fd)?;
    SocketAddr::try_from(addr).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn local_path(fd: BorrowedFd<'_>) -> io::Result<Option<PathBuf>> {
    let addr = rustix::net::getsockname(fd)?;
    let unix = rustix::net::SocketAddrUnix::try_from(addr)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(unix
        .path_bytes()
        .filter(|bytes| !bytes.is_empty())
        .map(|bytes| PathBuf::from(OsStr::from_bytes(bytes))))
}

/// Whether a socket bound to `bound` serves a request for `want` (port 0 asks for any port).
fn same_inet(want: SocketAddr, bound: SocketAddr) -> bool {
    want.ip() == bound.ip() && (want.port() == 0 || want.port() == bound.port())
}

/// Binds a Unix stream listener at `path`, replacing a socket file nobody listens on.
fn bind_unix(path: &Path) -> io::Result<OwnedFd> {
    match std::os::unix::net::UnixListener::bind(path) {
        Ok(listener) => Ok(listener.into()),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(err);
            }
            let meta = std::fs::symlink_metadata(path)?;
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(err);
            }
            std::fs::remove_file(path)?;
            Ok(std::os::unix::net::UnixListener::bind(path)?.into())
        }
        Err(err) => Err(err),
    }
}
