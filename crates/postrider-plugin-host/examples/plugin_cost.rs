//! Per-transaction cost of one plugin, with and without the warm instance pool.
//!
//! ```sh
//! cargo run --release -p postrider-plugin-host --example plugin_cost -- PLUGIN.wasm \
//!     [--config JSON] [--reuse N] [--pool-idle N] [-n 1000] [--warmup 50] [--memory-mb 32]
//! ```
//!
//! Loads the plugin as the relay does (compiled code cached in `target/plugin-cost-cache`),
//! then plays `-n` SMTP sessions one after another, each calling exactly the stages the
//! plugin asked for, with the relay's instance lifetimes: connect and HELO each in their own
//! transaction, then MAIL FROM, one RCPT TO and DATA (a 1 KiB message) in one, then one
//! routing call. Every stage is called whatever the plugin answered before. Prints the mean,
//! p50, p99 and max wall time per session in microseconds. DNS answers nothing (NXDOMAIN),
//! kv is in memory.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postrider_kv::{MemoryKv, SystemClock};
use postrider_plugin_host::{
    ConnInfo, EngineOptions, EnvelopeInfo, FailurePolicy, LoadedPlugin, MessageView, Pipeline,
    PluginEngine, PluginSpec, Services, Stage, StaticDns,
};

const MESSAGE: &str = "From: Alice Example <alice@sender.example>\r\n\
To: bob@example.org\r\n\
Subject: Lunch on Friday\r\n\
Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
Message-ID: <1@sender.example>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n";

struct Args {
    wasm: PathBuf,
    config: String,
    reuse: u32,
    pool_idle: u32,
    n: usize,
    warmup: usize,
    memory_mb: usize,
}

fn usage() -> String {
    "usage: plugin_cost PLUGIN.wasm [--config JSON] [--reuse N] [--pool-idle N] [-n N] \
     [--warmup N] [--memory-mb N]"
        .to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut out = Args {
        wasm: PathBuf::new(),
        config: "{}".to_owned(),
        reuse: 1,
        pool_idle: 8,
        n: 1000,
        warmup: 50,
        memory_mb: 32,
    };
    let mut wasm = None;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            "--config" => out.config = value("--config")?,
            "--reuse" => out.reuse = number(value("--reuse")?)? as u32,
            "--pool-idle" => out.pool_idle = number(value("--pool-idle")?)? as u32,
            "-n" => out.n = number(value("-n")?)?,
            "--warmup" => out.warmup = number(value("--warmup")?)?,
            "--memory-mb" => out.memory_mb = number(value("--memory-mb")?)?,
            "-h" | "--help" => return Err(usage()),
            _ if wasm.is_none() && !a.starts_with('-') => wasm = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a}\n{}", usage())),
        }
    }
    out.wasm = wasm.ok_or_else(usage)?;
    serde_json::from_str::<serde_json::Value>(&out.config)
        .map_err(|e| format!("--config is not JSON: {e}"))?;
    if out.reuse == 0 || out.n == 0 {
        return Err("--reuse and -n must be at least 1".to_owned());
    }
    Ok(out)
}

fn conn(i: usize, helo: Option<&str>) -> ConnInfo {
    ConnInfo {
        id: format!("bench-{i}"),
        client_ip: IpAddr::from([192, 0, 2, (i % 250) as u8 + 1]),
        client_port: 40000,
        client_name: None,
        listener: "mx".into(),
        server_ip: IpAddr::from([127, 0, 0, 1]),
        server_port: 25,
        helo: helo.map(str::to_owned),
        tls: None,
        auth_user: None,
    }
}

/// One SMTP session with the stages the plugin wants; returns how many calls failed.
async fn session(p: &Arc<Pipeline>, i: usize, message: &MessageView) -> usize {
    let mut failed = 0;
    let mut count = |calls: &[postrider_plugin_host::PluginCall]| {
        failed += calls.iter().filter(|c| c.failure.is_some()).count();
    };
    let mut chain = p.session(false);
    let c = conn(i, None);
    if p.wants(Stage::Connect) {
        count(&chain.on_connect(&c).await.calls);
        chain.end_transaction();
    }
    let c = conn(i, Some("mail.sender.example"));
    if p.wants(Stage::Helo) {
        count(&chain.on_helo(&c, "mail.sender.example").await.calls);
        chain.end_transaction();
    }
    let mut env = EnvelopeInfo {
        mail_from: "alice@sender.example".into(),
        ..EnvelopeInfo::default()
    };
    let rcpt = "bob@example.org";
    if p.wants(Stage::MailFrom) {
        count(&chain.on_mail_from(&c, &env).await.calls);
    }
    if p.wants(Stage::Rcpt) {
        count(&chain.on_rcpt(&c, &env, rcpt).await.calls);
    }
    env.recipients.push(rcpt.to_owned());
    if p.wants(Stage::Data) {
        count(&chain.on_data(&c, &env, message).await.calls);
    }
    chain.end_transaction();
    if p.wants(Stage::Route) {
        env.queue_id = Some(format!("Q{i:06}"));
        count(&p.route(&c, &env, rcpt, false).await.1);
    }
    failed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let engine = Arc::new(
        PluginEngine::new(&EngineOptions {
            max_instances: 64,
            max_memory_bytes: args.memory_mb << 20,
        })
        .map_err(|e| e.to_string())?,
    );
    let clock = Arc::new(SystemClock);
    let services = Services {
        kv: Arc::new(MemoryKv::new(clock.clone())),
        dns: Arc::new(StaticDns::default()),
        clock,
        kv_timeout: Duration::from_millis(250),
        dns_timeout: Duration::from_millis(1500),
        net_observer: None,
    };
    let name = args
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().replace('_', "-"))
        .unwrap_or_else(|| "plugin".into());
    let spec = PluginSpec {
        name: name.clone(),
        path: args.wasm.clone(),
        config_json: args.config.clone(),
        failure_policy: FailurePolicy::Continue,
        timeout: Duration::from_secs(10),
        memory_bytes: args.memory_mb << 20,
        reuse: args.reuse,
        pool_idle: args.pool_idle,
        log_level: None,
        network: Default::default(),
    };
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugin-cost-cache");
    let started = Instant::now();
    let plugin = LoadedPlugin::load(&engine, spec, Some(&cache), &services)
        .await
        .map_err(|e| e.to_string())?;
    let load = started.elapsed();
    let stages = plugin.stage_names().join(",");
    let pipeline = Arc::new(Pipeline::new(
        Arc::clone(&engine),
        vec![Arc::new(plugin)],
        services,
    ));
    let body =
        "Noon at the usual place? We could also try the new place on the corner.\r\n".repeat(12);
    let message = MessageView::new(Arc::from(format!("{MESSAGE}{body}").into_bytes()));

    let mut failed = 0;
    for i in 0..args.warmup {
        failed += session(&pipeline, i, &message).await;
    }
    let mut times = Vec::with_capacity(args.n);
    for i in 0..args.n {
        let t = Instant::now();
        failed += session(&pipeline, args.warmup + i, &message).await;
        times.push(t.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name}: stages {stages}; reuse {} (pool_idle {}); {} sessions after {} warm-up; \
         load {} ms",
        args.reuse,
        args.pool_idle,
        args.n,
        args.warmup,
        load.as_millis()
    );
    println!(
        "  per session: mean {:.1} us, p50 {:.1} us, p99 {:.1} us, max {:.1} us; failed calls {failed}",
        us(mean),
        us(percentile(&times, 0.50)),
        us(percentile(&times, 0.99)),
        us(times[times.len() - 1]),
    );
    Ok(())
}
