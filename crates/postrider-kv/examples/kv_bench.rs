//! Latency of kv calls per backend: `cargo run --release -p postrider-kv --example kv_bench
//! -- [redis://127.0.0.1:6379/0] [CALLS]`. Runs CALLS sequential `incr`s, then CALLS spread
//! over 32 concurrent tasks, against the in-memory, embedded and (with a URL) Redis stores,
//! and prints the mean and p50/p99 per call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use postrider_kv::{EmbeddedKv, KvStore, MemoryKv, RedisKv, RedisOptions, SystemClock};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.iter().find(|a| a.starts_with("redis")).cloned();
    let calls: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("kv-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut stores: Vec<(&str, Arc<dyn KvStore>)> = vec![
        ("memory", Arc::new(MemoryKv::new(Arc::new(SystemClock)))),
        (
            "embedded",
            Arc::new(EmbeddedKv::open(&dir.join("kv.redb"), Arc::new(SystemClock)).unwrap()),
        ),
    ];
    if let Some(url) = url {
        let kv = RedisKv::new(
            RedisOptions {
                url,
                cluster: "bench".into(),
                ca_pem: None,
                timeout: Duration::from_millis(250),
            },
            Arc::new(SystemClock),
        )
        .unwrap();
        stores.push(("redis", Arc::new(kv)));
    }
    println!("{calls} incr calls per run");
    for (name, store) in stores {
        let mut seq = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            store
                .incr("bench", "seq", 1, Some(Duration::from_secs(60)))
                .await
                .unwrap();
            seq.push(t.elapsed());
        }
        report(name, "sequential", &mut seq, None);
        let started = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    for _ in 0..calls / 32 {
                        let t = Instant::now();
                        store
                            .incr("bench", &format!("k{i}"), 1, Some(Duration::from_secs(60)))
                            .await
                            .unwrap();
                        times.push(t.elapsed());
                    }
                    times
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        report(name, "32 concurrent", &mut all, Some(started.elapsed()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn report(store: &str, mode: &str, times: &mut [Duration], wall: Option<Duration>) {
    times.sort();
    let n = times.len();
    let mean = times.iter().sum::<Duration>() / n as u32;
    let rate = wall.map_or(String::new(), |w| {
        format!(", {:.0} calls/s", n as f64 / w.as_secs_f64())
    });
    println!(
        "{store:>8} {mode:>13}: mean {:>7.1} µs, p50 {:>7.1} µs, p99 {:>7.1} µs{rate}",
        mean.as_secs_f64() * 1e6,
        times[n / 2].as_secs_f64() * 1e6,
        times[n * 99 / 100].as_secs_f64() * 1e6
    );
}
