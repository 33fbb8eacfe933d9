//! An HTTP/1.1 server that replaces its own binary without dropping a connection.
//!
//! ```text
//! upgrade_server --listen 127.0.0.1:PORT [--pid-file PATH] [--ready-delay MS]
//!                [--ready-timeout MS] [--probation MS] [--unix PATH] [--udp ADDR]
//!                [--crash-after-ready MS] [--upgrade-signal USR2|HUP]
//! ```
//!
//! Every request is answered `200` with the body `pid <PID>\n`, with keep-alive. SIGUSR2
//! upgrades (a new generation starts from the same path, inherits the listeners, and this one
//! drains once it is ready), SIGHUP reloads the tree, SIGTERM or SIGINT stop gracefully.
//!
//! `--ready-delay` simulates a slow start. `--unix` and `--udp` add listeners of the other
//! kinds (the Unix one speaks the same HTTP; the UDP one answers each datagram with
//! `pid <PID>\n`). `--upgrade-signal HUP` makes SIGHUP upgrade (as reload_self has it) instead
//! of reloading. `--crash-after-ready` makes the process abort that long after it starts
//! serving (for a successor: after its predecessor accepted it), to try rollback during probation.
//!
//! Try it:
//!
//! ```text
//! cargo run -p procwarden --example upgrade_server -- --listen 127.0.0.1:8080 --pid-file /tmp/us.pid &
//! curl http://127.0.0.1:8080/        # pid 1234
//! kill -USR2 $(cat /tmp/us.pid)      # or: procwarden upgrade --pid-file /tmp/us.pid
//! curl http://127.0.0.1:8080/        # pid 1240
//! ```

use std::error::Error;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use procwarden::process::Signal;
use procwarden::upgrade::Upgrader;
use procwarden::{ChildSpec, Context, Supervisor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn Error + Send + Sync>;

/// How long a draining generation waits for the next request on an idle keep-alive connection
/// before closing it: long enough for a busy client to send one more request and be told
/// `Connection: close`, short enough to exit promptly.
const IDLE_DRAIN: Duration = Duration::from_secs(2);
/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Default)]
struct Options {
    listen: String,
    pid_file: Option<PathBuf>,
    ready_delay: Duration,
    ready_timeout: Option<Duration>,
    probation: Option<Duration>,
    unix: Option<PathBuf>,
    udp: Option<String>,
    crash_after_ready: Option<Duration>,
    upgrade_signal: Option<Signal>,
}

fn main() -> ExitCode {
    let options = match parse(std::env::args_os().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("upgrade_server: {message}");
            return ExitCode::from(2);
        }
    };
    // Upgrade outcomes, rollbacks included, are logged through `tracing`.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(serve(options)) {
        Ok(code) => code,
        Err(err) => {
            say(format_args!("{err}"));
            ExitCode::FAILURE
        }
    }
}

async fn serve(options: Options) -> Result<ExitCode, BoxError> {
    let mut builder = Upgrader::builder();
    if let Some(path) = &options.pid_file {
        builder = builder.pid_file(path);
    }
    if let Some(timeout) = options.ready_timeout {
        builder = builder.ready_timeout(timeout);
    }
    if let Some(probation) = options.probation {
        builder = builder.probation(probation);
    }
    if let Some(signal) = options.upgrade_signal {
        builder = builder.signal(Some(signal));
    }
    let upgrader = builder.build()?;
    // Bind (or inherit) every listener before anything starts, so a bad address fails fast.
    let listeners = upgrader.listeners();
    listeners.tcp("http", options.listen.as_str())?;
    if let Some(path) = &options.unix {
        listeners.unix("unix", path)?;
    }
    if let Some(addr) = &options.udp {
        listeners.udp("udp", addr.as_str())?;
    }

    let http = Address::Tcp(options.listen.clone());
    let mut tree = Supervisor::builder("server").child(http_child(&upgrader, "http", http));
    if let Some(path) = options.unix.clone() {
        tree = tree.child(http_child(&upgrader, "unix", Address::Unix(path)));
    }
    if let Some(addr) = options.udp.clone() {
        tree = tree.child(udp_child(&upgrader, addr));
    }
    let delay = options.ready_delay;
    let crash = options.crash_after_ready;
    let ready = upgrader.clone();
    let tree = tree
        .child(
            ChildSpec::new("ready", move |ctx| {
                let upgrader = ready.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    upgrader.ready()?;
                    let successor = if upgrader.has_predecessor() {
                        " (successor)"
                    } else {
                        ""
                    };
                    say(format_args!("ready{successor}"));
                    if let Some(after) = crash {
                        // Counted from when it serves: for a successor, once its predecessor
                        // accepted the handover.
                        upgrader.accepting(true).await;
                        tokio::time::sleep(after).await;
                        say(format_args!("crashing as asked"));
                        std::process::abort();
                    }
                    ctx.shutdown_requested().await;
                    Ok::<(), BoxError>(())
                }
            })
            .restart(procwarden::Restart::Temporary),
        )
        .build()?;
    let outcome = upgrader.run(tree).await;
    if let Some(pid) = upgrader.successor() {
        say(format_args!("drained; PID {pid} serves now"));
    }
    Ok(outcome.exit_code())
}

/// Writes one line to stderr in a single write, so that lines of generations sharing the
/// terminal never interleave.
fn say(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let line = format!("upgrade_server[{}]: {message}\n", std::process::id());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Where an HTTP listener listens.
#[derive(Clone)]
enum Address {
    Tcp(String),
    Unix(PathBuf),
}

/// The accept loop of the HTTP listener `name`. It pauses while a successor is on probation
/// and stops when the tree shuts down; the connections it accepted finish their current
/// request first.
fn http_child(upgrader: &Upgrader, name: &'static str, address: Address) -> ChildSpec {
    let upgrader = upgrader.clone();
    ChildSpec::new(name, move |ctx| {
        let upgrader = upgrader.clone();
        let address = address.clone();
        async move {
            // Asked again at each start, the registry returns the same socket.
            match address {
                Address::Tcp(addr) => {
                    let listener = upgrader.listeners().tcp(name, addr.as_str())?;
                    ctx.ready();
                    accept_loop(&ctx, &upgrader, || listener.accept()).await
                }
                Address::Unix(path) => {
                    let listener = upgrader.listeners().unix(name, &path)?;
                    ctx.ready();
                    accept_loop(&ctx, &upgrader, || listener.accept()).await
                }
            }
        }
    })
    .reports_ready()
    .shutdown_timeout(Duration::from_secs(30))
}

async fn accept_loop<S, A, F, Fut>(
    ctx: &Context,
    upgrader: &Upgrader,
    mut accept: F,
) -> Result<(), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, A)>>,
{
    loop {
        tokio::select! {
            // The gate before the listener: a paused generation must not take one more.
            biased;
            _ = ctx.shutdown_requested() => return Ok(()),
            () = upgrader.accepting(false) => {
                tokio::select! {
                    _ = ctx.shutdown_requested() => return Ok(()),
                    () = upgrader.accepting(true) => {}
                }
            }
            accepted = accept() => match accepted {
                Ok((stream, _)) => {
                    let drain = ctx.shutdown_token();
                    ctx.spawn(async move {
                        let _ = connection(stream, drain).await;
                    });
                    // Serve it before taking the next: a connection still in the listener's
                    // queue survives this process's crash (its predecessor, on probation,
                    // serves it), one accepted and not yet served is lost with it. Under
                    // load this also serves more requests, each while its data is hot.
                    tokio::task::yield_now().await;
                }
                // Out of descriptors and the like: keep serving the connections we have.
                Err(err) => say(format_args!("accept: {err}")),
            },
        }
    }
}

/// Serves one connection: requests one after another (keep-alive) until the client closes, or
/// until the generation drains — then the current request is answered with `Connection: close`,
/// and an idle connection gets [`IDLE_DRAIN`] to send one more.
async fn connection<S>(mut stream: S, drain: CancellationToken) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let body = format!("pid {}\n", std::process::id());
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let Some(request) = next_request(&mut stream, &mut buffer, &drain).await? else {
            return Ok(());
        };
        let close = request.close || drain.is_cancelled();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
        );
        stream.write_all(response.as_bytes()).await?;
        if close {
            return stream.shutdown().await;
        }
    }
}

/// What the server needs of a request.
struct Request {
    /// The client asked to close after this one.
    close: bool,
}

/// Reads the next request (its head and body) from `stream`; `None` when the client closed
/// between requests, or when draining and it stayed idle too long.
async fn next_request<S>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    drain: &CancellationToken,
) -> std::io::Result<Option<Request>>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some(end) = find_head_end(buffer) {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let close = header(&head, "connection").is_some_and(|v| v == "close")
                || head
                    .lines()
                    .next()
                    .is_some_and(|line| line.ends_with("http/1.0"));
            let total = end + 4 + length;
            while buffer.len() < total {
                if read_some(stream, buffer).await? == 0 {
                    return Ok(None);
                }
            }
            buffer.drain(..total);
            return Ok(Some(Request { close }));
        }
        if buffer.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let read = if buffer.is_empty() && drain.is_cancelled() {
            match tokio::time::timeout(IDLE_DRAIN, read_some(stream, buffer)).await {
                Ok(read) => read?,
                Err(_) => return Ok(None),
            }
        } else if buffer.is_empty() {
            tokio::select! {
                read = read_some(stream, buffer) => read?,
                // Draining: loop round to give the idle connection its last chance.
                _ = drain.cancelled() => continue,
            }
        } else {
            read_some(stream, buffer).await?
        };
        if read == 0 {
            return Ok(None);
        }
    }
}

async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buffer.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The value of header `name` (lowercase) in a lowercased request head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// Answers every datagram on the UDP listener with `pid <PID>\n`.
fn udp_child(upgrader: &Upgrader, addr: String) -> ChildSpec {
    let upgrader = upgrader.clone();
    ChildSpec::new("udp", move |ctx| {
        let upgrader = upgrader.clone();
        let addr = addr.clone();
        async move {
            let socket = upgrader.listeners().udp("udp", addr.as_str())?;
            ctx.ready();
            let body = format!("pid {}\n", std::process::id());
            let mut datagram = [0u8; 1500];
            loop {
                tokio::select! {
                    biased;
                    _ = ctx.shutdown_requested() => return Ok::<(), BoxError>(()),
                    // Paused while a successor is on probation; a stop still ends it.
                    () = upgrader.accepting(false) => tokio::select! {
                        _ = ctx.shutdown_requested() => return Ok(()),
                        () = upgrader.accepting(true) => {}
                    },
                    received = socket.recv_from(&mut datagram) => {
                        let (_, peer) = received?;
                        socket.send_to(body.as_bytes(), peer).await?;
                    }
                }
            }
        }
    })
    .reports_ready()
}

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Options, String> {
    let mut options = Options::default();
    let millis = |value: String| -> Result<Duration, String> {
        value
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("{value:?} is not a number of milliseconds"))
    };
    while let Some(flag) = args.next() {
        let flag = flag.to_string_lossy().into_owned();
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value"))
                .map(|v| v.to_string_lossy().into_owned())
        };
        match flag.as_str() {
            "--listen" => options.listen = value()?,
            "--pid-file" => options.pid_file = Some(value()?.into()),
            "--ready-delay" => options.ready_delay = millis(value()?)?,
            "--ready-timeout" => options.ready_timeout = Some(millis(value()?)?),
            "--probation" => options.probation = Some(millis(value()?)?),
            "--crash-after-ready" => options.crash_after_ready = Some(millis(value()?)?),
            "--unix" => options.unix = Some(value()?.into()),
            "--udp" => options.udp = Some(value()?),
            "--upgrade-signal" => {
                let name = value()?;
                let signal = name
                    .parse()
                    .map_err(|_| format!("{name:?} is not a signal"))?;
                options.upgrade_signal = Some(signal);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.listen.is_empty() {
        return Err("--listen ADDR is required".into());
    }
    Ok(options)
}
