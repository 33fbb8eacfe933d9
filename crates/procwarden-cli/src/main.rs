//! The `procwarden` command.

use clap::Parser;

/// Supervise, share and upgrade processes.
#[derive(Parser)]
#[command(name = "procwarden", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
