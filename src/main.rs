//! The `blenderdist` binary: parse the command line, set up logging, run, and map errors to an exit code.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use blenderdist::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.self_check {
        return match blenderdist::update::run_self_check() {
            Ok(line) => {
                println!("{line}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("blenderdist: self-check failed: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let Some(command) = cli.command else {
        eprintln!("blenderdist: give a command: host, join or status (see --help)");
        return std::process::ExitCode::from(2);
    };
    let default = match cli.verbose {
        // `status` prints a report on stdout; its own progress would only clutter the terminal.
        0 if matches!(command, Command::Status(_)) => "warn",
        0 => "blenderdist=info,warn",
        1 => "blenderdist=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Logs go to stderr: stdout carries the host's join line, which scripts read.
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).compact().with_writer(std::io::stderr).init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blenderdist: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal();
        match command {
            Command::Host(args) => blenderdist::host::run(args.into_config()?, shutdown).await,
            Command::Join(args) => blenderdist::worker::join(args.into_options()?, shutdown).await,
            Command::Status(args) => {
                let report = blenderdist::status::fetch(args.address()?).await?;
                let text = if args.json {
                    blenderdist::status::to_json(&report)?
                } else {
                    blenderdist::status::to_text(&report)
                };
                println!("{}", text.trim_end());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blenderdist: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM, so the host and volunteers stop cleanly when asked.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
