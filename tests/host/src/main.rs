//! `collector-host`: run the component like `spin up` would, without the Spin CLI.
//!
//! ```text
//! collector-host [--from PATH] [--state-dir DIR] [--runtime-config-file PATH] [--variable NAME=VALUE]... [--max-memory SIZE] cron [--timestamp SECS]
//! collector-host [--from PATH] [--state-dir DIR] [--runtime-config-file PATH] [--variable NAME=VALUE]... [--max-memory SIZE] serve [--listen ADDR]
//! ```
//!
//! `cron` calls `handle-cron-event` once and exits 0 when it returned ok, 1 when it returned an
//! error, 2 when the instance trapped or the host could not start it. `serve` serves the HTTP
//! export until interrupted (Ctrl-C or SIGTERM).
//!
//! `--max-memory SIZE` caps each instance's linear memory the way Akamai Functions and Fermyon
//! Cloud do (128 MiB per instance): `--max-memory 128MiB`. SIZE is a whole number of bytes or
//! of `KiB`, `MiB` or `GiB`. An instance whose memory would grow past it traps with a message
//! naming the limit (`cron` exits 2; `serve` answers that request 500). Without it, as under
//! `spin up`, there is no limit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use collector_host::app::parse_memory_size;
use collector_host::manifest::ProvidedVariables;
use collector_host::{App, HostOptions, Outcome, Trigger};

const USAGE: &str = "usage: collector-host [--from PATH] [--state-dir DIR] [--runtime-config-file PATH] [--variable NAME=VALUE]... [--max-memory SIZE] (cron [--timestamp SECS] | serve [--listen ADDR])\n  --max-memory SIZE: the most linear memory one instance may have, e.g. 128MiB (the limit of Akamai Functions and Fermyon Cloud); SIZE is bytes or KiB, MiB, GiB";

enum Command {
    Cron { timestamp: Option<u64> },
    Serve { listen: String },
}

fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String> {
    args.next()
        .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))
}

fn parse_args(args: Vec<String>) -> Result<(HostOptions, Command)> {
    let mut options = HostOptions::default();
    let mut cli_vars = Vec::new();
    let mut args = args.into_iter();
    let command = loop {
        let Some(arg) = args.next() else {
            bail!("no command given\n{USAGE}");
        };
        match arg.as_str() {
            "--from" | "-f" => options.manifest = Some(PathBuf::from(value(&mut args, &arg)?)),
            "--state-dir" => options.state_dir = Some(PathBuf::from(value(&mut args, &arg)?)),
            "--runtime-config-file" => {
                options.runtime_config = Some(PathBuf::from(value(&mut args, &arg)?))
            }
            "--variable" => cli_vars.push(value(&mut args, &arg)?),
            "--max-memory" => {
                let size = value(&mut args, &arg)?;
                let bytes = parse_memory_size(&size)
                    .map_err(|e| anyhow!("invalid --max-memory {size:?}: {e}\n{USAGE}"))?;
                options.max_memory = Some(bytes);
            }
            "cron" | "serve" => break arg,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    };
    let command = if command == "cron" {
        let mut timestamp = None;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--timestamp" => timestamp = Some(value(&mut args, &arg)?.parse()?),
                other => bail!("unknown cron argument {other:?}\n{USAGE}"),
            }
        }
        Command::Cron { timestamp }
    } else {
        let mut listen = "127.0.0.1:3000".to_string();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--listen" => listen = value(&mut args, &arg)?,
                other => bail!("unknown serve argument {other:?}\n{USAGE}"),
            }
        }
        Command::Serve { listen }
    };
    options.variables = ProvidedVariables {
        cli: ProvidedVariables::parse_cli(&cli_vars)?,
        env: ProvidedVariables::from_env(std::env::vars()),
    };
    Ok((options, command))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(options: HostOptions, command: Command) -> Result<ExitCode> {
    match command {
        Command::Cron { timestamp } => {
            let app = App::load(&options, Trigger::Cron)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let inv = app.run_cron(timestamp.unwrap_or(now)).await?;
            print!("{}", inv.stdout);
            eprint!("{}", inv.stderr);
            Ok(match inv.outcome {
                Outcome::Ok => ExitCode::SUCCESS,
                Outcome::GuestError(e) => {
                    eprintln!("collector-host: handle-cron-event returned an error: {e}");
                    ExitCode::from(1)
                }
                Outcome::Trap(e) => {
                    eprintln!("collector-host: the component trapped: {e}");
                    ExitCode::from(2)
                }
            })
        }
        Command::Serve { listen } => {
            let app = Arc::new(App::load(&options, Trigger::Http)?);
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("Serving http://{}", listener.local_addr()?);
            println!("Available Routes:");
            for t in &app.manifest.triggers.http {
                println!(
                    "  {}: http://{}{}",
                    t.component,
                    listener.local_addr()?,
                    t.route
                );
            }
            collector_host::serve::serve(app, listener, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let parsed = parse_args(std::env::args().skip(1).collect());
    let (options, command) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("collector-host: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match runtime.block_on(run(options, command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("collector-host: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn memory_sizes_in_binary_units_and_bytes() {
        assert_eq!(parse_memory_size("128MiB").unwrap(), 128 * 1024 * 1024);
        assert_eq!(parse_memory_size("64MiB").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_memory_size("1GiB").unwrap(), 1024 * 1024 * 1024);
        assert_eq!(parse_memory_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_memory_size("134217728").unwrap(), 128 * 1024 * 1024);
        assert_eq!(parse_memory_size("4096B").unwrap(), 4096);
        assert_eq!(parse_memory_size("128 MiB").unwrap(), 128 * 1024 * 1024);
    }

    #[test]
    fn other_memory_sizes_are_refused() {
        for bad in [
            "",
            "MiB",
            "128MB",
            "128mb",
            "128M",
            "1.5GiB",
            "-1",
            "0",
            "0MiB",
            "128 MiB x",
            "1TiB",
            "99999999999999999999",
            "18446744073709551615GiB",
        ] {
            assert!(parse_memory_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn max_memory_is_an_option_before_the_command() {
        let (options, command) = parse_args(args(&["--max-memory", "128MiB", "cron"])).unwrap();
        assert_eq!(options.max_memory, Some(128 * 1024 * 1024));
        assert!(matches!(command, Command::Cron { timestamp: None }));
        let (options, command) = parse_args(args(&["--max-memory", "1GiB", "serve"])).unwrap();
        assert_eq!(options.max_memory, Some(1024 * 1024 * 1024));
        assert!(matches!(command, Command::Serve { .. }));
        let (options, _) = parse_args(args(&["cron"])).unwrap();
        assert_eq!(options.max_memory, None);
    }

    #[test]
    fn a_bad_max_memory_names_the_flag() {
        let Err(e) = parse_args(args(&["--max-memory", "128MB", "cron"])) else {
            panic!("128MB was accepted");
        };
        let e = format!("{e:#}");
        assert!(e.contains("--max-memory") && e.contains("128MB"), "{e}");
        assert!(e.contains("MiB"), "{e}");
        let Err(e) = parse_args(args(&["--max-memory"])) else {
            panic!("a missing size was accepted");
        };
        assert!(
            format!("{e:#}").contains("--max-memory needs a value"),
            "{e:#}"
        );
    }
}
