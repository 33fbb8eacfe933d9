//! The `procwarden` binary as a user runs it: exit statuses and what it prints.

use std::process::{Command, Output};

fn procwarden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_procwarden"))
        .args(args)
        .output()
        .expect("the procwarden binary runs")
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("output is UTF-8")
}

#[test]
fn version_prints_the_crate_version() {
    let out = procwarden(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim_end(),
        format!("procwarden {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn help_says_what_procwarden_is_and_lists_its_commands() {
    for flag in ["--help", "-h"] {
        let out = procwarden(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        let help = text(&out.stdout);
        assert!(help.contains("procwarden"), "{flag}: {help}");
        assert!(help.contains("Usage: procwarden"), "{flag}: {help}");
        for command in ["share", "status", "stop", "upgrade", "run"] {
            assert!(
                help.lines()
                    .any(|line| line.trim_start().starts_with(command)),
                "{flag}: help does not list the command {command}:\n{help}"
            );
        }
        assert!(out.stderr.is_empty(), "{flag}: {out:?}");
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = procwarden(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "expected one line:\n{stderr}");
    assert!(stderr.starts_with("procwarden: error:"), "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn no_arguments_shows_help_as_a_usage_error() {
    let out = procwarden(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("Usage: procwarden"), "{out:?}");
}
