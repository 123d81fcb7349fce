//! `postrider-harness`: test and explore Postrider plugins (see `plugins/README.md`).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use postrider_harness::case::{self, Case, ConnSpec, TlsSpec};
use postrider_harness::report;
use postrider_harness::runner::{Harness, LoadOptions, World, conn_info};
use postrider_harness::transcript;
use postrider_plugin_host::{FailurePolicy, StaticDns};

/// Tests Postrider plugins (WebAssembly components) through the relay's own plugin host.
///
/// `test` runs TOML case files and prints one line per case ("ok   NAME" or "FAIL NAME" with
/// an expected-vs-actual diff), then "N passed, N failed"; it exits 0 when every case passed,
/// 1 when one failed, 2 when the cases could not be run (bad case file, missing plugin).
/// `run` plays an SMTP transcript against the plugin and prints the server's replies.
/// The case file format is documented in plugins/README.md.
#[derive(Debug, Parser)]
#[command(name = "postrider-harness", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run case files against a plugin and report each case.
    Test(TestArgs),
    /// Play the client side of an SMTP transcript against a plugin; print both sides.
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// A line per case, diffs on failure, a closing "N passed, N failed".
    Text,
    /// One JSON document: every case with its mismatches, stages, plugin and host calls.
    Json,
}

#[derive(Debug, Args)]
struct Common {
    /// The plugin's name: its kv namespace and the name in traces [default: the file name
    /// without `.wasm`, `_` turned into `-`].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Keep compiled plugins in DIR between invocations (default: a temporary directory
    /// removed at exit).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The plugin component (`.wasm` built for wasm32-wasip2).
    plugin: PathBuf,
    /// Case files (TOML), or directories searched recursively for `*.toml`.
    #[arg(required = true, value_name = "CASES")]
    cases: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Show every stage call with its input and result, and every host call (dns, kv, log)
    /// with its time.
    #[arg(long)]
    trace: bool,
    /// Only run cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The plugin component (`.wasm` built for wasm32-wasip2).
    plugin: PathBuf,
    /// The client's lines: EHLO/HELO, MAIL FROM, RCPT TO, DATA and the message up to ".",
    /// RSET, QUIT. Outside DATA, blank lines and `#` comments are skipped, a leading "C: "
    /// is dropped and "S: " lines are ignored.
    #[arg(long, value_name = "FILE")]
    transcript: PathBuf,
    /// The plugin's config: a TOML file holding the table given to `init` (as JSON).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Mocked DNS answers: a TOML file with the tables of a case's `[dns]` (a, aaaa, mx, txt,
    /// ptr). Names not listed are NXDOMAIN.
    #[arg(long, value_name = "FILE")]
    dns: Option<PathBuf>,
    /// Client address.
    #[arg(long, default_value = "192.0.2.10")]
    client_ip: IpAddr,
    /// Client port.
    #[arg(long, default_value_t = 40000)]
    client_port: u16,
    /// Forward-confirmed reverse DNS name of the client.
    #[arg(long, value_name = "NAME")]
    client_name: Option<String>,
    /// Listener name.
    #[arg(long, default_value = "mx")]
    listener: String,
    /// The client authenticated as this user.
    #[arg(long, value_name = "USER")]
    auth_user: Option<String>,
    /// The connection uses TLS (TLSv1.3).
    #[arg(long)]
    tls: bool,
    /// The clock plugins see, Unix milliseconds.
    #[arg(long, default_value_t = case::DEFAULT_CLOCK_MS)]
    clock_ms: u64,
    /// What a trap, timeout or invalid answer means: tempfail (451 4.3.0), continue (ignore
    /// the failed call) or reject (550 5.7.1).
    #[arg(long, default_value = "tempfail")]
    failure_policy: FailurePolicy,
    /// Deadline of each plugin call.
    #[arg(long, default_value_t = case::DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// Memory cap of each plugin instance.
    #[arg(long, default_value_t = case::DEFAULT_MEMORY_MB)]
    memory_mb: u32,
    /// Transactions one plugin instance may serve (the relay's `reuse`; 1: a fresh one each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    reuse: u32,
    /// Show every plugin call and host call.
    #[arg(long)]
    trace: bool,
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Test(args) => test(args).await,
            Command::Run(args) => run(args).await.map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The plugin's name from its file: `rate_limit.wasm` → `rate-limit`.
fn plugin_name(common: &Common, wasm: &Path) -> String {
    common.name.clone().unwrap_or_else(|| {
        wasm.file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_else(|| "plugin".into())
    })
}

fn check_plugin(wasm: &Path) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(wasm).with_context(|| format!("plugin component {}", wasm.display()))?;
    if !meta.is_file() {
        bail!("plugin component {} is not a file", wasm.display());
    }
    Ok(())
}

/// Case files: the files given, and every `*.toml` under the directories given (except
/// `Cargo.toml` and `target/`), sorted.
fn case_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading directory {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading directory {}", dir.display()))?;
        entries.sort();
        for p in entries {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if p.is_dir() {
                // A plugin's crate directory holds its cases beside its build output.
                if name.as_deref() != Some("target") {
                    walk(&p, out)?;
                }
            } else if p.extension().is_some_and(|e| e == "toml")
                && name.as_deref() != Some("Cargo.toml")
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = files.len();
            walk(p, &mut files)?;
            if files.len() == before {
                bail!("no *.toml case files under {}", p.display());
            }
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

async fn test(args: TestArgs) -> anyhow::Result<bool> {
    check_plugin(&args.plugin)?;
    let mut cases: Vec<Case> = Vec::new();
    for file in case_files(&args.cases)? {
        cases.extend(case::load_file(&file)?);
    }
    if let Some(f) = &args.filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    let max_memory = cases
        .iter()
        .map(|c| c.plugin.memory_mb)
        .max()
        .unwrap_or(case::DEFAULT_MEMORY_MB);
    let harness = Harness::new(
        &args.plugin,
        &plugin_name(&args.common, &args.plugin),
        max_memory,
        args.common.cache_dir.clone(),
    )
    .context("starting the plugin engine")?;

    let (mut passed, mut failed) = (0, 0);
    let mut reports = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for c in &cases {
        let r = harness.run_case(c).await;
        if r.passed {
            passed += 1;
        } else {
            failed += 1;
        }
        if args.format == Format::Text {
            stdout
                .write_all(report::render_case(&r, args.trace).as_bytes())
                .and_then(|()| stdout.flush())
                .context("writing to stdout")?;
        }
        reports.push(r);
    }
    match args.format {
        Format::Text => writeln!(stdout, "{}", report::summary(passed, failed)),
        Format::Json => {
            let doc = serde_json::json!({
                "plugin": args.plugin.display().to_string(),
                "cases": reports,
                "passed": passed,
                "failed": failed,
            });
            writeln!(stdout, "{doc:#}")
        }
    }
    .context("writing to stdout")?;
    Ok(failed == 0)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    check_plugin(&args.plugin)?;
    let config_json = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("parsing config {}", path.display()))?;
            serde_json::to_string(&table).context("config as JSON")?
        }
        None => "{}".to_owned(),
    };
    let dns = match &args.dns {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading DNS answers {}", path.display()))?;
            case::parse_dns(&text, path)?
        }
        None => StaticDns::default(),
    };
    let transcript = std::fs::read_to_string(&args.transcript)
        .with_context(|| format!("reading transcript {}", args.transcript.display()))?;
    let harness = Harness::new(
        &args.plugin,
        &plugin_name(&args.common, &args.plugin),
        args.memory_mb,
        args.common.cache_dir.clone(),
    )
    .context("starting the plugin engine")?;
    let world = World::new(args.clock_ms, dns, None);
    let options = LoadOptions {
        config_json,
        failure_policy: args.failure_policy,
        timeout_ms: args.timeout_ms,
        memory_mb: args.memory_mb,
        reuse: args.reuse,
        pool_idle: case::DEFAULT_POOL_IDLE,
        network: Default::default(),
    };
    let pipeline = harness
        .load(&options, &world.services)
        .await
        .with_context(|| format!("loading {}", args.plugin.display()))?;
    let conn = ConnSpec {
        client_ip: Some(args.client_ip),
        client_port: Some(args.client_port),
        client_name: args.client_name.clone(),
        listener: Some(args.listener.clone()),
        auth_user: args.auth_user.clone(),
        tls: Some(args.tls.then(|| TlsSpec {
            protocol: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            sni: None,
        })),
        ..ConnSpec::default()
    }
    .resolve("harness-1");
    let dialogue = transcript::play(
        &pipeline,
        conn_info(&conn),
        &transcript,
        args.clock_ms,
        args.trace,
    )
    .await
    .context("playing the transcript")?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(dialogue.as_bytes())
        .context("writing to stdout")?;
    let kv = postrider_harness::runner::namespace_entries(&world.kv, harness.name());
    if args.trace && !kv.is_empty() {
        writeln!(stdout, "   # kv after the session:").context("writing to stdout")?;
        for (k, v) in kv {
            writeln!(stdout, "   #   {k} = {v:?}").context("writing to stdout")?;
        }
    }
    Ok(())
}
