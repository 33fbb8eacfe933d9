//! `procwarden status`: this user's shared services.

use std::fmt::Write as _;
use std::time::Duration;

use procwarden::shared::{ServiceStatus, StateDir, list};

use crate::Failure;

/// Prints the services of `dir`, as a table or as JSON.
pub fn run(dir: &StateDir, json: bool) -> Result<(), Failure> {
    let services = list(dir).map_err(Failure::runtime)?;
    if json {
        println!("{}", to_json(&services));
    } else {
        print!("{}", to_table(&services));
    }
    Ok(())
}

fn to_json(services: &[ServiceStatus]) -> String {
    let rows: Vec<serde_json::Value> = services
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "pid": s.info.pid(),
                "port": s.info.port(),
                "holders": s.holders,
                "uptime_secs": s.uptime.map(|u| u.as_secs()),
                "state": s.state.as_str(),
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

fn to_table(services: &[ServiceStatus]) -> String {
    let mut out = String::new();
    if services.is_empty() {
        out.push_str("no shared services\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:>6} {:>8} {:>10}  STATE",
        "NAME", "PID", "PORT", "HOLDERS", "UPTIME"
    );
    let dash = || "-".to_owned();
    for s in services {
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>6} {:>8} {:>10}  {}",
            s.name,
            s.info.pid().map_or_else(dash, |p| p.to_string()),
            s.info.port().map_or_else(dash, |p| p.to_string()),
            s.holders,
            s.uptime.map_or_else(dash, human),
            s.state.as_str(),
        );
    }
    out
}

/// `3s`, `4m12s`, `2h05m`.
fn human(uptime: Duration) -> String {
    let secs = uptime.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}
