//! The Postrider mail relay.

mod admin_http;
mod admin_socket;
mod allocator;
mod builtin;
mod generation;
mod inbound;
mod kv_admin;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod layout;
mod plugins;
mod queue;
mod reload;
mod serve;
mod status;
mod systemd;
mod watch;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postrider_config::Config;

/// Postrider: a mail relay whose policy and routing are WebAssembly plugins.
///
/// `serve` runs the relay; `reload`, `status` and `queue` talk to a running relay through its
/// owner-only admin socket (`admin_socket` in the config); `check-config` and
/// `hash-password` work offline. Every command takes the same `--config FILE`, before or
/// after its name, to find the relay.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML). Default: $POSTRIDER_CONFIG, else the embedded
    /// config/postrider.toml, whose relative paths (var/spool, var/admin.sock) are relative
    /// to the working directory.
    #[arg(long, short, global = true, env = "POSTRIDER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay. Without --config it runs the embedded default (config/postrider.toml).
    ///
    /// Prints `postrider: listening NAME ADDRESS` for each listener, `postrider: admin http
    /// ADDRESS` when `[admin] http` is set, then `postrider: ready` on standard output; logs
    /// go to standard error (level from the POSTRIDER_LOG environment variable, e.g. `info`
    /// or `postrider=debug`; default `info`). SIGHUP or `postrider reload` reloads the
    /// configuration; SIGTERM or SIGINT stops accepting and lets sessions finish within
    /// `timeouts.shutdown_grace`.
    Serve {
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
        /// Do not watch the config file and the files it names for changes; reload only on
        /// SIGHUP or `postrider reload`.
        #[arg(long)]
        no_watch: bool,
    },
    /// Ask the running relay to reload its configuration and plugins; prints the error and
    /// fails if the new configuration is not usable (the relay then keeps the running one).
    Reload,
    /// Show what the running relay is doing: listeners, plugins (hash, load time, stages),
    /// configuration generation and queue summary, from its admin socket.
    ///
    /// Fails (exit status 1) when no relay answers on the admin socket.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration as `serve` would load it: the file (the first error with
    /// file, line and key), then the certificates, keys, password file and every plugin
    /// (compiled and `init` called with its config). Exits 1 on the first failure.
    CheckConfig {
        /// Configuration file (TOML); the same as --config.
        file: Option<PathBuf>,
    },
    /// Print the DNS TXT records to publish for the DKIM (and ARC) signing keys of the
    /// configuration, in zone-file form, e.g.
    /// `s1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=..."`.
    DkimRecords,
    /// Read a password on standard input and print its argon2id hash for the password file.
    ///
    /// Example: echo "alice:$(echo 's3cret' | postrider hash-password)" >> /etc/postrider/passwords
    HashPassword,
    /// A plugin's kv entries (its namespace is its name): list or delete them, through the
    /// running relay's admin socket, or in the kv store itself when the relay is stopped.
    ///
    /// Example: postrider kv list greylist --prefix 't:203.0.113.'
    Kv {
        /// Print JSON instead of a table (before or after the action).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: kv_admin::KvRequest,
    },
    /// Print the TLS reporting (RFC 8460) counts of the running relay: for each day and
    /// recipient domain, the outbound sessions under its DANE or MTA-STS policy, successful
    /// and failed by result type, as the JSON aggregate report would carry them. Reports of
    /// a day go by themselves once it is over (UTC).
    TlsReport {
        /// Send the reports now, today's counts so far included, and start counting anew.
        #[arg(long)]
        send: bool,
    },
    /// Inspect and manage the queue: through the running relay's admin socket, or directly in
    /// the spool directory when the relay is stopped.
    ///
    /// States: queued (not tried yet), deferred (a temporary failure; retried later), held
    /// (`queue hold`, or held by a route plugin) and quarantined (by a data-stage plugin).
    Queue {
        /// Print JSON instead of a table (before or after the action).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: queue::admin::Request,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    let result = match cli.command {
        Command::Serve { log_json, no_watch } => serve(config, log_json, !no_watch),
        Command::Reload => reload(config),
        Command::Status { json } => status(config, json),
        Command::CheckConfig { file } => check_config(config, file),
        Command::DkimRecords => dkim_records(config),
        Command::HashPassword => hash_password(),
        Command::Queue { json, action } => queue(config, json, action),
        Command::Kv { json, action } => kv(config, json, action),
        Command::TlsReport { send } => tls_report(config, send),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postrider: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration of `--config FILE` (or `$POSTRIDER_CONFIG`), else the embedded default.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded()?,
    })
}

/// `postrider check-config`: loads everything `serve` loads for a generation, without
/// binding a port or touching the spool and the kv store.
fn check_config(config: Option<PathBuf>, file: Option<PathBuf>) -> anyhow::Result<()> {
    // A file named on the command line wins over --config and POSTRIDER_CONFIG: checking a
    // candidate next to the running configuration is the point.
    let path = file.or(config);
    let name = path.as_ref().map_or_else(
        || "the embedded default".to_owned(),
        |p| p.display().to_string(),
    );
    let config = load_config(path.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let dns = serve::dns_of(&config)?;
        let resolver = dns.resolver();
        let metrics = std::sync::Arc::new(postrider_metrics::Metrics::new(
            env!("CARGO_PKG_VERSION"),
            config.admin.metrics_domains,
        ));
        let plugins = plugins::PluginBuilder::checking(std::sync::Arc::new(dns), metrics);
        let generation = generation::GenerationBuilder::new(plugins, resolver)
            .build(1, config, None)
            .await?;
        let count = generation.config.plugins.len();
        println!("{name}: ok ({count} plugin(s) loaded and initialised)");
        anyhow::Ok(())
    })
}

/// Prints a zone-file TXT record for every signing key of the configuration.
fn dkim_records(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(config.as_deref())?;
    let auth = &config.authentication;
    let keys: Vec<_> = auth.dkim_sign.iter().chain(&auth.arc_seal).collect();
    if keys.is_empty() {
        anyhow::bail!("the configuration has no [[dkim_sign]] or arc_seal key");
    }
    for key in keys {
        let record = postrider_auth::SigningKey::load(&key.key_file)?.dns_record();
        // A TXT string holds at most 255 bytes: longer records (RSA) are split.
        let strings: Vec<String> = record
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        println!(
            "{}._domainkey.{}. IN TXT {}",
            key.selector,
            key.domain,
            strings.join(" ")
        );
    }
    Ok(())
}

fn serve(config: Option<PathBuf>, log_json: bool, watch: bool) -> anyhow::Result<()> {
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
    allocator::return_large_buffers();
    let source = match config {
        // Absolute, so that reloads and the file watcher see the same paths whatever the
        // working directory.
        Some(path) => generation::ConfigSource::File(
            std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))?,
        ),
        None => generation::ConfigSource::Embedded,
    };
    let config = match &source {
        generation::ConfigSource::File(path) => Config::load(path)?,
        generation::ConfigSource::Embedded => Config::embedded()?,
    };
    tracing::info!(config = %config.origin, "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve::serve(source, config, watch))
}

fn queue(
    config: Option<PathBuf>,
    json: bool,
    request: queue::admin::Request,
) -> anyhow::Result<()> {
    let config = load_config(config.as_deref())?;
    let response = match std::os::unix::net::UnixStream::connect(&config.admin_socket) {
        Ok(stream) => admin_call(stream, &request)?,
        // No relay running: work on the spool directly (its lock keeps a relay out meanwhile).
        Err(_) if !config.spool_dir.exists() => anyhow::bail!(
            "no relay is answering on {} and there is no spool at {}: {}",
            absolute(&config.admin_socket),
            absolute(&config.spool_dir),
            hint(&config)
        ),
        Err(_) => {
            let (spool, _) = postrider_queue::Spool::open(
                &config.spool_dir,
                postrider_queue::SpoolOptions::default(),
            )
            .with_context(|| {
                format!(
                    "the relay is not answering on {} and its spool {} cannot be opened",
                    config.admin_socket.display(),
                    config.spool_dir.display()
                )
            })?;
            queue::admin::run_offline(&spool, &request)
        }
    };
    print_answer(response, json)
}

/// Prints an admin answer as JSON (`kv list`: its entries) or for people; an error fails.
fn print_answer(response: queue::admin::Response, json: bool) -> anyhow::Result<()> {
    use queue::admin::Response;
    if json {
        let value = match &response {
            Response::Kv { entries } => serde_json::to_value(entries),
            other => serde_json::to_value(other),
        }
        .context("encoding JSON")?;
        println!(
            "{}",
            serde_json::to_string_pretty(&value).context("encoding JSON")?
        );
    } else {
        print!("{}", queue::admin::render(&response));
    }
    if let Response::Error { message } = response {
        anyhow::bail!("{message}");
    }
    Ok(())
}

/// What to do when a command finds no relay where `config` says it is.
fn hint(config: &Config) -> &'static str {
    if config.origin == postrider_config::EMBEDDED_NAME {
        "give the relay's configuration with --config (or POSTRIDER_CONFIG); the embedded \
         default's paths are relative to the directory the relay runs in"
    } else {
        "give the relay's configuration with --config (or POSTRIDER_CONFIG)"
    }
}

/// Connects to the running relay's admin socket, or says where it looked.
fn connect_admin(config: &Config) -> anyhow::Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(&config.admin_socket).with_context(|| {
        format!(
            "no relay answering on {}: {}",
            absolute(&config.admin_socket),
            hint(config)
        )
    })
}

/// A path as the operator should read it: absolute.
fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// `postrider kv`: through the running relay, else in the configured store itself.
fn kv(config: Option<PathBuf>, json: bool, request: kv_admin::KvRequest) -> anyhow::Result<()> {
    use queue::admin::{Request, Response};
    let config = load_config(config.as_deref())?;
    let plugin = request.plugin();
    if !config.plugins.iter().any(|p| p.name == plugin) {
        let names: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!(
            "no plugin {plugin:?} in {} (its plugins: {})",
            config.origin,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    let settings = &config.plugin_settings;
    let response = match std::os::unix::net::UnixStream::connect(&config.admin_socket) {
        Ok(stream) => admin_call(stream, &Request::Kv { kv: request })?,
        Err(_) if settings.kv_redis.is_none() && !settings.kv_path.exists() => anyhow::bail!(
            "no relay is answering on {} and there is no kv store at {}: {}",
            absolute(&config.admin_socket),
            absolute(&settings.kv_path),
            hint(&config)
        ),
        Err(_) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let store = plugins::open_offline_kv(settings)?;
                anyhow::Ok(Response::from(
                    kv_admin::run(store.as_ref(), &request).await,
                ))
            })?
        }
    };
    print_answer(response, json)
}

/// Sends one request on a connected admin socket and reads the answer.
fn admin_call(
    mut stream: std::os::unix::net::UnixStream,
    request: &queue::admin::Request,
) -> anyhow::Result<queue::admin::Response> {
    use std::io::Write;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .context("admin socket")?;
    let mut line = serde_json::to_vec(request).context("encoding the request")?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .context("writing to the admin socket")?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .context("reading from the admin socket")?;
    serde_json::from_str(&answer).context("decoding the relay's answer")
}

/// `postrider reload`: asks the running relay to reload, and reports what it answered.
fn reload(config: Option<PathBuf>) -> anyhow::Result<()> {
    use queue::admin::Response;
    let config = load_config(config.as_deref()).context("not reloading")?;
    let stream = connect_admin(&config)?;
    match admin_call(stream, &queue::admin::Request::Reload)? {
        Response::Ok { generation } => {
            println!("reloaded: configuration generation {generation}");
            Ok(())
        }
        Response::Error { message } => anyhow::bail!("reload failed: {message}"),
        other => anyhow::bail!("unexpected answer from the relay: {other:?}"),
    }
}

/// `postrider status`: asks the running relay what it is doing.
fn status(config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    use queue::admin::Response;
    let config = load_config(config.as_deref())?;
    let stream = connect_admin(&config)?;
    match admin_call(stream, &queue::admin::Request::Status)? {
        Response::Status { status } => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).context("encoding JSON")?
                );
            } else {
                print!("{}", status::render(&status));
            }
            Ok(())
        }
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the relay: {other:?}"),
    }
}

/// `postrider tls-report`: the running relay's TLS reporting counts, as JSON.
fn tls_report(config: Option<PathBuf>, send: bool) -> anyhow::Result<()> {
    use queue::admin::Response;
    let config = load_config(config.as_deref())?;
    let stream = connect_admin(&config)?;
    match admin_call(stream, &queue::admin::Request::TlsReport { send })? {
        Response::TlsReport { report } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).context("encoding JSON")?
            );
            Ok(())
        }
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the relay: {other:?}"),
    }
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
    println!("{}", inbound::passwords::hash_password(password)?);
    Ok(())
}
