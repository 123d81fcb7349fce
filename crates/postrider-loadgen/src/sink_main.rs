//! `postrider-sink`: a discarding SMTP server with STARTTLS for the verified-TLS benchmark.
//!
//! ```sh
//! postrider-sink --listen 127.0.0.1:2617 --ca-out ca.pem --counts counts
//! # listening on 127.0.0.1:2617      (counts holds "MESSAGES HANDSHAKES RESUMED")
//! ```

use anyhow::Result;
use clap::Parser;
use postrider_loadgen::sink::{SinkOptions, bind};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Accepts and discards mail over SMTP with STARTTLS, counting messages and TLS handshakes.
#[derive(Debug, Parser)]
#[command(name = "postrider-sink", version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long)]
    listen: SocketAddr,
    /// Name in the greeting and in the server certificate (with the listening IP address).
    #[arg(long, default_value = "sink.bench.test")]
    name: String,
    /// Where to write the CA certificate (PEM) that signed the server certificate.
    #[arg(long)]
    ca_out: PathBuf,
    /// Where to write "MESSAGES HANDSHAKES RESUMED".
    #[arg(long)]
    counts: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let (addr, serve) = bind(SinkOptions {
        listen: a.listen,
        name: a.name,
        ca_out: a.ca_out,
        counts: a.counts,
    })
    .await?;
    println!("listening on {addr}");
    serve.await
}
