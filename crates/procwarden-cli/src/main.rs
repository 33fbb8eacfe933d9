//! The `procwarden` command: shared services and zero-downtime upgrades today; supervised
//! process sets come with the part of the library they use.

mod duration;
#[cfg(target_os = "linux")]
mod share;
#[cfg(target_os = "linux")]
mod status;
#[cfg(target_os = "linux")]
mod stop;
#[cfg(target_os = "linux")]
mod upgrade;

use std::ffi::OsString;
use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "procwarden",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = COMING,
    arg_required_else_help = true
)]
struct Cli {
    /// Where shared-service state and upgrade control sockets live [default:
    /// $PROCWARDEN_STATE_DIR, else $XDG_RUNTIME_DIR/procwarden, else /tmp/procwarden-$UID]
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

const ABOUT: &str = "procwarden: manage the lifecycle of processes and services";

const LONG_ABOUT: &str = "\
procwarden: manage the lifecycle of processes and services.

procwarden starts processes and services in order, restarts them by policy, reloads them, \
reports their status and stops them gracefully; it shares one service among many processes, \
and replaces a running binary without dropping connections. It is a Rust library (the \
`procwarden` crate) and this command, which puts the same parts in the hands of people who \
don't write Rust.";

const COMING: &str = "\
Coming (not available yet):
  run      Supervise a set of processes described in a TOML file";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run CLIENT while holding the shared service NAME: the first holder starts it, the last
    /// one's departure stops it, and a killed holder gives its hold back
    Share(ShareArgs),
    /// Show this user's shared services: name, pid, port, holders, uptime, state
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Stop the shared service NAME now, whoever holds it
    Stop {
        /// The service
        name: String,
    },
    /// Ask the program named in a pid file to replace itself with a new generation of its
    /// binary without dropping connections, and wait until the new one is ready or rolled back
    #[command(long_about = UPGRADE_LONG_ABOUT)]
    Upgrade(UpgradeArgs),
}

const UPGRADE_LONG_ABOUT: &str = "\
Ask the program named in a pid file to replace itself with a new generation of its binary \
without dropping connections, and wait for the outcome.

The program must use procwarden's Upgrader with its control socket, in the same state \
directory (--state-dir, PROCWARDEN_STATE_DIR). Exit status: 0 when the new generation is ready \
(the new PID is printed); 1 when the upgrade was rolled back or refused (the reason is printed), \
or when no outcome came within --timeout (the upgrade may still complete).";

#[derive(clap::Args, Debug)]
struct UpgradeArgs {
    /// The pid file of the program to upgrade, as its Upgrader writes it
    #[arg(long, value_name = "PATH")]
    pid_file: PathBuf,
    /// How long to wait for the outcome (the new generation's readiness, and probation)
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_timeout)]
    timeout: Duration,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match duration::parse(text)? {
        Duration::ZERO => Err(format!("{text:?} is no time to wait: give more than 0")),
        timeout => Ok(timeout),
    }
}

#[derive(clap::Args, Debug)]
struct ShareArgs {
    /// The service's name: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot
    name: String,
    /// The command that runs the service, through /bin/sh -c
    #[arg(long, value_name = "CMD")]
    start: String,
    /// When the service is ready: tcp:HOST:PORT, or cmd:COMMAND that exits 0 [default: once started]
    #[arg(long, value_name = "PROBE", value_parser = parse_ready)]
    ready: Option<procwarden::shared::Readiness>,
    /// How long the service may take to become ready
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = duration::parse)]
    ready_timeout: Duration,
    /// Keep the service this long after the last holder leaves
    #[arg(long, value_name = "DUR", default_value = "0", value_parser = duration::parse)]
    linger: Duration,
    /// The signal that asks the service to stop
    #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    stop_signal: procwarden::process::Signal,
    /// How long the service has to stop before SIGKILL
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = duration::parse)]
    stop_timeout: Duration,
    /// The command to run while the service is held, after --
    #[arg(last = true, required = true, value_name = "CLIENT")]
    client: Vec<OsString>,
}

fn parse_ready(text: &str) -> Result<procwarden::shared::Readiness, String> {
    procwarden::shared::Readiness::parse(text)
}

fn parse_signal(text: &str) -> Result<procwarden::process::Signal, String> {
    text.parse()
        .map_err(|err: procwarden::process::SignalError| err.to_string())
}

/// A failure, as one line on stderr and an exit status: 2 for usage, 1 at run time.
pub enum Failure {
    Usage(String),
    Runtime(String),
}

impl Failure {
    pub fn usage(message: impl Display) -> Self {
        Self::Usage(message.to_string())
    }

    pub fn runtime(message: impl Display) -> Self {
        Self::Runtime(message.to_string())
    }

    /// A bad name is the caller's mistake; anything else happened at run time.
    pub fn usage_from(err: procwarden::shared::SharedError) -> Self {
        match err {
            procwarden::shared::SharedError::InvalidName { .. } => Self::usage(err),
            other => Self::runtime(other),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    match run(cli) {
        Ok(code) => code,
        Err(Failure::Usage(message)) => {
            eprintln!("procwarden: error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("procwarden: error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Help and version go to stdout as clap renders them; a usage error is one line.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(2)
        }
        _ => {
            let rendered = err.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid usage");
            eprintln!("procwarden: {line}");
            ExitCode::from(2)
        }
    }
}

#[cfg(target_os = "linux")]
fn run(cli: Cli) -> Result<ExitCode, Failure> {
    use procwarden::shared::StateDir;

    let dir = match cli.state_dir {
        Some(path) => StateDir::at(path),
        None => StateDir::from_env(),
    }
    .map_err(Failure::runtime)?;
    // The client's parent-death signal is tied to the thread that spawns it: one thread runs
    // everything here, for as long as the command does.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::runtime(format!("building the runtime: {err}")))?;
    runtime.block_on(async {
        match cli.command {
            Command::Share(args) => {
                let share = share::Share {
                    name: args.name,
                    start: args.start,
                    ready: args.ready,
                    ready_timeout: args.ready_timeout,
                    linger: args.linger,
                    stop_signal: args.stop_signal,
                    stop_timeout: args.stop_timeout,
                    client: args.client,
                };
                share::run(share, dir).await
            }
            Command::Status { json } => status::run(&dir, json).map(|()| ExitCode::SUCCESS),
            Command::Stop { name } => stop::run(&dir, &name).await.map(|()| ExitCode::SUCCESS),
            Command::Upgrade(args) => upgrade::run(&dir, &args.pid_file, args.timeout).await,
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn run(_cli: Cli) -> Result<ExitCode, Failure> {
    Err(Failure::runtime(
        "shared services are available on Linux only so far",
    ))
}
