//! SMTP load generator for `bench/compare.sh`: the latency half of the benchmark.
//!
//! Postfix's `smtp-source` drives the throughput runs but reports no latencies, so this runs
//! the same load — `sessions` parallel sessions, `messages` messages of `size` body bytes, a
//! new connection per message or reused connections (`smtp-source -d`) — in plain SMTP without
//! pipelining (as `smtp-source`): EHLO, MAIL FROM, RCPT TO, DATA, the message, `.`. It times
//! every message and reports throughput and latency percentiles.
//!
//! A message's latency runs from the client's first step for it until the server's reply to
//! the final dot: from the TCP connect (so greeting and EHLO included) with a new connection
//! per message, from `MAIL FROM` on a reused connection. `QUIT` is not timed.

pub mod sink;

use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

/// What to send, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` of the server under test.
    pub server: String,
    /// Parallel sessions.
    pub sessions: usize,
    /// Messages in all, shared out among the sessions as they become free.
    pub messages: usize,
    /// Body bytes of each message, headers not included (as `smtp-source -l`).
    pub size: usize,
    /// Send the next message over the same connection (`smtp-source -d`).
    pub reuse: bool,
    /// Envelope sender and `From:`.
    pub from: String,
    /// Envelope recipient and `To:`.
    pub to: String,
    /// EHLO name.
    pub helo: String,
    /// Bound on each wait for a reply (and on the connect).
    pub timeout: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Messages the server accepted (2xx after the dot).
    pub accepted: usize,
    /// Messages that failed: a refusal, a lost connection or a timeout.
    pub failed: usize,
    /// The first failure, for the log.
    pub first_error: Option<String>,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
    /// Latency of every accepted message, sorted.
    pub latencies: Vec<Duration>,
}

impl Report {
    /// Accepted messages per second of the whole run.
    pub fn msgs_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.accepted as f64 / secs
        } else {
            0.0
        }
    }

    /// The `p`-th percentile (0 < p <= 100, nearest rank) of the latencies, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[idx].as_secs_f64() * 1000.0
    }

    /// The one-line JSON the benchmark script reads.
    pub fn to_json(&self, opts: &Options) -> serde_json::Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "server": opts.server,
            "sessions": opts.sessions,
            "messages": opts.messages,
            "size": opts.size,
            "reuse": opts.reuse,
            "accepted": self.accepted,
            "failed": self.failed,
            "first_error": self.first_error,
            "elapsed_s": round(self.elapsed.as_secs_f64()),
            "msgs_per_s": round(self.msgs_per_s()),
            "p50_ms": round(self.percentile_ms(50.0)),
            "p99_ms": round(self.percentile_ms(99.0)),
            "max_ms": round(self.percentile_ms(100.0)),
        })
    }
}

/// The body sent with every message: lines of 76 letters (the last one shorter) with CRLF,
/// `size` bytes in all, followed by the end-of-data dot.
fn body(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 3);
    let mut line = 0usize;
    while out.len() < size {
        let left = size - out.len();
        if left <= 2 {
            out.extend(std::iter::repeat_n(b'x', left));
            break;
        }
        let text = (left - 2).min(76);
        let letter = b'a' + (line % 26) as u8;
        out.extend(std::iter::repeat_n(letter, text));
        out.extend_from_slice(b"\r\n");
        line += 1;
    }
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        // A body whose size leaves a stub still ends its last line.
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One SMTP connection.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
    timeout: Duration,
}

impl Conn {
    async fn open(opts: &Options) -> Result<Conn> {
        let stream = tokio::time::timeout(opts.timeout, TcpStream::connect(&opts.server))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {}", opts.server))?;
        // Commands and replies alternate: without NODELAY, a message written in two parts
        // waits for the delayed ACK of the first.
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut conn = Conn {
            reader: BufReader::with_capacity(16 * 1024, r),
            writer: w,
            line: String::new(),
            timeout: opts.timeout,
        };
        conn.expect(220, "greeting").await?;
        conn.command(&format!("EHLO {}\r\n", opts.helo), 250, "EHLO")
            .await?;
        Ok(conn)
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, code: u16, what: &str) -> Result<()> {
        let got = tokio::time::timeout(self.timeout, self.reply())
            .await
            .with_context(|| format!("no reply to {what} in {:?}", self.timeout))??;
        if got.0 != code {
            bail!("{what}: {}", got.1.trim_end());
        }
        Ok(())
    }

    async fn reply(&mut self) -> Result<(u16, String)> {
        loop {
            self.line.clear();
            let n = self.reader.read_line(&mut self.line).await?;
            if n == 0 {
                bail!("connection closed by the server");
            }
            let bytes = self.line.as_bytes();
            if bytes.len() < 4 {
                bail!("malformed reply {:?}", self.line);
            }
            let code: u16 = self.line[..3]
                .parse()
                .with_context(|| format!("malformed reply {:?}", self.line))?;
            if bytes[3] != b'-' {
                return Ok((code, self.line.clone()));
            }
        }
    }

    async fn command(&mut self, cmd: &str, code: u16, what: &str) -> Result<()> {
        self.writer.write_all(cmd.as_bytes()).await?;
        self.expect(code, what).await
    }

    async fn transaction(&mut self, opts: &Options, header: &str, body: &[u8]) -> Result<()> {
        self.command(&format!("MAIL FROM:<{}>\r\n", opts.from), 250, "MAIL FROM")
            .await?;
        self.command(&format!("RCPT TO:<{}>\r\n", opts.to), 250, "RCPT TO")
            .await?;
        self.command("DATA\r\n", 354, "DATA").await?;
        self.writer.write_all(header.as_bytes()).await?;
        self.writer.write_all(body).await?;
        self.expect(250, "end of data").await
    }

    async fn quit(mut self) {
        // Best effort, untimed by the caller: the message is already accepted.
        if self.writer.write_all(b"QUIT\r\n").await.is_ok() {
            let _ = tokio::time::timeout(self.timeout, self.reply()).await;
        }
    }
}

struct Shared {
    next: AtomicUsize,
    body: Vec<u8>,
    results: Mutex<Vec<Result<Duration, String>>>,
}

async fn session(opts: Arc<Options>, shared: Arc<Shared>) {
    let mut conn: Option<Conn> = None;
    let mut results = Vec::new();
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= opts.messages {
            break;
        }
        let header = format!(
            "From: <{}>\r\nTo: <{}>\r\nSubject: loadgen {n}\r\nMessage-ID: <{n}.{}@{}>\r\n\r\n",
            opts.from,
            opts.to,
            std::process::id(),
            opts.helo
        );
        let start = Instant::now();
        let outcome = async {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(Conn::open(&opts).await?),
            };
            c.transaction(&opts, &header, &shared.body).await
        }
        .await;
        let elapsed = start.elapsed();
        match outcome {
            Ok(()) => results.push(Ok(elapsed)),
            Err(e) => {
                results.push(Err(format!("{e:#}")));
                // Start over on a fresh connection: the old one is in an unknown state.
                conn = None;
                continue;
            }
        }
        if !opts.reuse
            && let Some(c) = conn.take()
        {
            c.quit().await;
        }
    }
    if let Some(c) = conn.take() {
        c.quit().await;
    }
    shared.results.lock().await.extend(results);
}

/// Runs the load and measures it.
pub async fn run(opts: Options) -> Result<Report> {
    if opts.sessions == 0 {
        bail!("sessions must be at least 1");
    }
    let opts = Arc::new(opts);
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        body: body(opts.size),
        results: Mutex::new(Vec::with_capacity(opts.messages)),
    });
    let start = Instant::now();
    let tasks: Vec<_> = (0..opts.sessions.min(opts.messages.max(1)))
        .map(|_| tokio::spawn(session(opts.clone(), shared.clone())))
        .collect();
    for t in tasks {
        t.await.context("a session panicked")?;
    }
    let elapsed = start.elapsed();
    let results = std::mem::take(&mut *shared.results.lock().await);
    let mut report = Report {
        accepted: 0,
        failed: 0,
        first_error: None,
        elapsed,
        latencies: Vec::with_capacity(results.len()),
    };
    for r in results {
        match r {
            Ok(d) => {
                report.accepted += 1;
                report.latencies.push(d);
            }
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert(e);
            }
        }
    }
    report.latencies.sort_unstable();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_requested_size_and_ends_with_the_dot() {
        for size in [0, 1, 2, 3, 78, 79, 4096, 102400] {
            let b = body(size);
            assert!(b.ends_with(b".\r\n"), "{size}");
            let payload = &b[..b.len() - 3];
            assert!(
                payload.len() >= size && payload.len() <= size + 2,
                "{size}: {}",
                payload.len()
            );
            assert!(payload.is_empty() || payload.ends_with(b"\r\n"), "{size}");
            assert!(!payload.starts_with(b"."));
            assert!(payload.split(|&c| c == b'\n').all(|l| l.len() <= 78));
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let report = Report {
            accepted: 100,
            failed: 0,
            first_error: None,
            elapsed: Duration::from_secs(2),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(report.percentile_ms(50.0), 50.0);
        assert_eq!(report.percentile_ms(99.0), 99.0);
        assert_eq!(report.percentile_ms(100.0), 100.0);
        assert_eq!(report.msgs_per_s(), 50.0);
    }
}
