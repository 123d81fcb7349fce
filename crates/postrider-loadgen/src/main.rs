//! `postrider-loadgen`: SMTP load with per-message latencies, one JSON line on standard output.
//!
//! ```sh
//! postrider-loadgen --server 127.0.0.1:2525 --sessions 20 --messages 5000 --size 4096 [--reuse]
//! # {"accepted":5000,"failed":0,"msgs_per_s":812.4,"p50_ms":21.3,"p99_ms":64.0,...}
//! ```
//!
//! Exits 1 when any message failed (the JSON still says how many and the first error).

use anyhow::Result;
use clap::Parser;
use postrider_loadgen::{Options, run};
use std::time::Duration;

/// Sends SMTP messages like Postfix's smtp-source and reports msgs/s and p50/p99 latency.
#[derive(Debug, Parser)]
#[command(name = "postrider-loadgen", version)]
struct Args {
    /// host:port of the server under test.
    #[arg(long)]
    server: String,
    /// Parallel sessions (smtp-source -s).
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Messages in all (smtp-source -m).
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Body bytes per message, headers not included (smtp-source -l).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Reuse connections: send the next message over the same one (smtp-source -d).
    #[arg(long)]
    reuse: bool,
    /// Envelope sender.
    #[arg(long, default_value = "sender@client.test")]
    from: String,
    /// Envelope recipient.
    #[arg(long, default_value = "user@remote.test")]
    to: String,
    /// EHLO name.
    #[arg(long, default_value = "loadgen.client.test")]
    helo: String,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let opts = Options {
        server: a.server,
        sessions: a.sessions,
        messages: a.messages,
        size: a.size,
        reuse: a.reuse,
        from: a.from,
        to: a.to,
        helo: a.helo,
        timeout: Duration::from_secs(a.timeout),
    };
    let report = run(opts.clone()).await?;
    println!("{}", report.to_json(&opts));
    if report.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
