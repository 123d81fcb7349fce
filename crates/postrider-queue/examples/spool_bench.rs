//! Spool throughput: stores N messages of 4 KiB from K threads and reports msgs/s and syncs.
//!
//! Usage: `cargo run --release -p postrider-queue --example spool_bench [N] [K] [DIR]`
//! (defaults: 20000 messages, 32 threads, a temporary directory under the current one,
//! which is usually on the same file system as the real spool would be; /tmp may be tmpfs).

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postrider_queue::{ClientInfo, Envelope, Recipient, Spool, SpoolOptions, SyncMode};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let k: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(32)
        .max(1);
    let base = args.next().unwrap_or_else(|| ".".into());

    for sync in [SyncMode::Group, SyncMode::None] {
        let dir = tempfile::tempdir_in(&base)?;
        run(dir.path(), sync, n, k)?;
    }
    Ok(())
}

fn run(dir: &Path, sync: SyncMode, n: usize, k: usize) -> Result<(), Box<dyn Error>> {
    let options = SpoolOptions {
        sync,
        ..SpoolOptions::default()
    };
    let (spool, _) = Spool::open(dir, options)?;
    let envelope = Arc::new(envelope());
    let message: Arc<[u8]> = vec![b'x'; 4096].into();

    let start = Instant::now();
    let threads: Vec<_> = (0..k)
        .map(|t| {
            let (spool, envelope, message) = (spool.clone(), envelope.clone(), message.clone());
            let count = n / k + usize::from(t < n % k);
            std::thread::spawn(
                move || -> Result<Vec<Duration>, postrider_queue::SpoolError> {
                    let mut latencies = Vec::with_capacity(count);
                    for _ in 0..count {
                        let t0 = Instant::now();
                        spool.store_blocking((*envelope).clone(), message.to_vec())?;
                        latencies.push(t0.elapsed());
                    }
                    Ok(latencies)
                },
            )
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    for thread in threads {
        let thread_latencies = thread.join().map_err(|_| "bench thread panicked")??;
        latencies.extend(thread_latencies);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let pct = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .copied()
            .unwrap_or_default()
    };

    let syncs = spool.sync_count();
    let batches = spool.batch_count().max(1);
    println!(
        "sync={sync:?} dir={} msgs={n} threads={k} elapsed={:.2}s rate={:.0} msgs/s \
         syncs={syncs} batches={batches} avg_batch={:.1} p50={:.2}ms p99={:.2}ms",
        dir.display(),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        n as f64 / batches as f64,
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
    );
    Ok(())
}

fn envelope() -> Envelope {
    Envelope {
        received_at_unix_ms: 1_700_000_000_000,
        mail_from: "bench@example.org".into(),
        smtputf8: false,
        body: Some(postrider_smtp::command::Body::EightBitMime),
        ret: None,
        envid: None,
        size_param: Some(4096),
        recipients: vec![Recipient {
            address: "rcpt@example.net".into(),
            notify: None,
            orcpt: None,
        }],
        client: ClientInfo {
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 2525,
            listener: "bench".into(),
            helo: "bench.example.org".into(),
            tls: None,
            authenticated: None,
            reverse_dns: None,
            session: None,
            server: None,
            sni: None,
        },
        quarantine: None,
        spf: None,
        require_tls: false,
    }
}
