//! The Postrider mail relay.

mod outbound;
mod passwords;
mod plugins;
mod relay;
mod server;
mod session;
mod tls;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postrider_config::Config;

/// Postrider: a mail relay whose policy and routing are WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay. Without --config it runs the embedded default (config/postrider.toml).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
    },
    /// Validate a configuration file; prints the first error with file, line and key.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Read a password on standard input and print its argon2id hash for the password file.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, log_json } => serve(config, log_json),
        Command::CheckConfig { file } => Config::load(&file)
            .map(|_| println!("{}: ok", file.display()))
            .map_err(Into::into),
        Command::HashPassword => hash_password(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postrider: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Option<PathBuf>, log_json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTRIDER_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::embedded()?,
    };
    tracing::info!(config = %config.origin, "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(server::serve(config))
}

fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    println!("{}", passwords::hash_password(password)?);
    Ok(())
}
