//! systemd's notification protocol (`sd_notify`): one datagram per state change.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets to the socket it listens on.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to the service manager, if this process runs under one.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The manager named by `NOTIFY_SOCKET`, or `None` when there is none (or its address
    /// cannot be used here, which is logged).
    pub(crate) fn from_env() -> Option<Self> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        match Self::connect(value.as_bytes()) {
            Ok(notifier) => Some(notifier),
            Err(err) => {
                tracing::warn!(socket = ?value, error = %err, "cannot notify the service manager");
                None
            }
        }
    }

    fn connect(name: &[u8]) -> io::Result<Self> {
        let addr = match name {
            [b'@', abstract_name @ ..] => abstract_addr(abstract_name)?,
            path => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))?,
        };
        let socket = UnixDatagram::unbound()?;
        // A notification must never stall the runtime; systemd reads them promptly.
        socket.set_nonblocking(true)?;
        Ok(Self { socket, addr })
    }

    /// Sends `message`, newline-separated `KEY=VALUE` lines. A failure is logged, not returned:
    /// the service goes on whether or not its manager hears of it.
    pub(crate) fn send(&self, message: &str) {
        if let Err(err) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            tracing::warn!(error = %err, message, "notifying the service manager failed");
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` wants it.
pub(crate) fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
    secs * 1_000_000 + micros
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket addresses exist only on Linux",
    ))
}
