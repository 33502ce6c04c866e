//! `collector-host`: run the component like `spin up` would, without the Spin CLI.
//!
//! ```text
//! collector-host [--from PATH] [--state-dir DIR] [--runtime-config-file PATH] [--variable NAME=VALUE]... cron [--timestamp SECS]
//! collector-host [--from PATH] [--state-dir DIR] [--runtime-config-file PATH] [--variable NAME=VALUE]... serve [--listen ADDR]
//! ```
//!
//! `cron` calls `handle-cron-event` once and exits 0 when it returned ok, 1 when it returned an
//! error, 2 when the instance trapped or the host could not start it. `serve` serves the HTTP
//! export until interrupted (Ctrl-C or SIGTERM).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use collector_host::manifest::ProvidedVariables;
use collector_host::{App, HostOptions, Outcome, Trigger};

const USAGE: &str = "usage: collector-host [--from PATH] [--state-dir DIR] [--runtime-config-file PATH] [--variable NAME=VALUE]... (cron [--timestamp SECS] | serve [--listen ADDR])";

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
