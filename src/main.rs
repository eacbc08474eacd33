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
        eprintln!("blenderdist: give a command: host, join, relay, status or generate (see --help)");
        return std::process::ExitCode::from(2);
    };
    if let Command::Generate(args) = command {
        return generate(args.what);
    }
    let default = match cli.verbose {
        // `status` prints a report on stdout; its own progress would only clutter the terminal.
        0 if matches!(command, Command::Status(_)) => "warn",
        0 => "blenderdist=info,warn",
        1 => "blenderdist=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Logs go to stderr: stdout carries the host's join line, which scripts read. A thread of their own writes them,
    // so a stderr that blocks (a file on a disk busy writing back) never holds up the event loops: lines beyond what
    // it buffers are dropped instead. They are flushed at exit, and before a relaunch (`update::relaunch`).
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    blenderdist::update::keep_log_writer(guard);
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).compact().with_writer(writer).init();

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
            Command::Join(args) => {
                // A volunteer with a public address may relay for owners behind home routers as well.
                let relay = match args.relay_options()? {
                    Some(options) => Some(blenderdist::relay::start(options).await?),
                    None => None,
                };
                if let Some(addr) = relay.as_ref().and_then(|r| r.best_addr()) {
                    tracing::info!("also relaying: owners behind a home router can use --relay {addr}");
                }
                blenderdist::worker::join(args.into_options()?, shutdown).await
            }
            Command::Relay(args) => blenderdist::relay::run(args.into_options()?, shutdown).await,
            Command::Status(args) if args.watch => {
                let every = std::time::Duration::from_secs_f64(args.interval);
                blenderdist::status::watch(args.address()?, args.key.key()?, every, args.json, shutdown).await
            }
            Command::Status(args) => {
                let report = blenderdist::status::fetch(args.address()?, args.key.key()?).await?;
                let text = if args.json {
                    blenderdist::status::to_json(&report)?
                } else {
                    blenderdist::status::to_text(&report)
                };
                println!("{}", text.trim_end());
                Ok(())
            }
            Command::Generate(_) => Ok(()),
        }
    });
    // Every queued log line is out before the last word.
    drop(runtime);
    blenderdist::update::flush_log();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blenderdist: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `blenderdist generate`: completions on stdout, or man pages into a folder (their paths on stdout).
fn generate(what: blenderdist::cli::Generate) -> std::process::ExitCode {
    use blenderdist::cli::Generate;
    match what {
        Generate::Completions { shell } => blenderdist::generate::completions(shell, &mut std::io::stdout()),
        Generate::Man { dir } => match blenderdist::generate::man_pages(&dir) {
            Ok(pages) => pages.iter().for_each(|p| println!("{}", p.display())),
            Err(e) => {
                eprintln!("blenderdist: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
    }
    std::process::ExitCode::SUCCESS
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
