//! Starts the real `postrider` binary on free loopback ports and talks SMTP to it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use postrider_queue::{Envelope, Spool, SpoolOptions};

/// Path of the binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_postrider");

/// A running relay in its own temporary directory. Killed on drop.
pub struct Relay {
    child: Option<Child>,
    /// The temporary directory holding config, spool and certificates.
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Bound address of each listener, by name.
    pub listeners: HashMap<String, SocketAddr>,
    /// Bound address of the admin HTTP listener, when `[admin] http` is set.
    pub admin_http: Option<SocketAddr>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// Compiled plugins are cached across tests and runs (debug-built Cranelift compiles slowly).
pub fn plugin_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// A resolver address where nothing answers.
pub const NO_DNS: &str = "127.0.0.1:9";

/// A config with one plain `smtp` listener on a free port; `extra` is appended (TOML).
/// Its resolver points at a closed loopback port ([`NO_DNS`]), so outbound delivery of the
/// accepted mail fails temporarily and messages stay in the spool for the test to inspect.
pub fn config(extra: &str) -> String {
    config_dns(NO_DNS, extra)
}

/// `postrider reload --config CONF`: the running relay reads its config again (asserts
/// that the reload succeeded).
pub fn reload(conf: &Path) {
    let out = Command::new(BIN)
        .args(["reload", "--config"])
        .arg(conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `[[plugin]]` entry for the example plugin `file` (its crate name), named `name`, with
/// `extra` TOML lines (config, failure_policy, ...).
pub fn plugin(name: &str, file: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
        postrider_testkit::plugin_wasm(file).display()
    )
}

/// Like [`config`], with the resolver pointed at `nameserver` ("ip:port").
pub fn config_dns(nameserver: &str, extra: &str) -> String {
    config_full(nameserver, "", extra)
}

/// Like [`config_dns`], with more `[plugins]` settings (TOML lines).
/// With [`NO_DNS`], email authentication is off: every SPF and DKIM lookup would wait for
/// the resolver's timeout (tests/e2e/email_auth.rs checks it against dnsmasq).
pub fn config_full(nameserver: &str, plugin_settings: &str, extra: &str) -> String {
    let no_auth = if nameserver == NO_DNS {
        "\n[authentication]\nverify = false\n"
    } else {
        ""
    };
    format!(
        "hostname = \"mx.relay.test\"\nspool_dir = \"spool\"\n[plugins]\ncache_dir = \"{cache}\"\n{plugin_settings}\n[dns]\nnameservers = [\"{nameserver}\"]\n{no_auth}\n[[listener]]\nname = \"smtp\"\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n{extra}",
        cache = plugin_cache().display()
    )
}

/// How to start a relay: its config text, where it lives, extra `serve` arguments and
/// environment. `Relay::builder(cfg).start()` runs it in a new temporary directory.
pub struct RelayBuilder {
    config: String,
    dir: Place,
    args: Vec<String>,
    env: Vec<(String, std::ffi::OsString)>,
}

/// Where a relay keeps its config, spool and certificates.
enum Place {
    /// A temporary directory removed when the relay is dropped.
    Temp(tempfile::TempDir),
    /// An existing directory (to restart on the same spool).
    Dir(PathBuf),
}

impl RelayBuilder {
    /// Runs in `tmp` (prepared beforehand, e.g. with certificates), removed on drop.
    pub fn in_tmp(mut self, tmp: tempfile::TempDir) -> Self {
        self.dir = Place::Temp(tmp);
        self
    }

    /// Runs in an existing directory, kept after the relay stops (to restart on its spool).
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.dir = Place::Dir(dir.to_owned());
        self
    }

    /// Extra `serve` arguments (e.g. "--no-watch").
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An extra environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((key.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Writes `postrider.toml`, starts the relay and waits until it says it is ready.
    pub fn start(self) -> Relay {
        let (dir, tmp) = match self.dir {
            Place::Temp(t) => (t.path().to_owned(), Some(t)),
            Place::Dir(d) => (d, None),
        };
        let mut relay = Relay::spawn(&dir, &self.config, &self.args, &self.env);
        relay._tmp = tmp;
        relay
    }
}

impl Relay {
    /// A relay with `config_text` as its `postrider.toml`; see [`RelayBuilder`].
    pub fn builder(config_text: &str) -> RelayBuilder {
        RelayBuilder {
            config: config_text.to_owned(),
            dir: Place::Temp(tempfile::tempdir().unwrap()),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn spawn(
        dir: &Path,
        config_text: &str,
        args: &[String],
        env: &[(String, std::ffi::OsString)],
    ) -> Relay {
        std::fs::write(dir.join("postrider.toml"), config_text).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.join("postrider.toml"))
            .args(args)
            .env("POSTRIDER_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut listeners = HashMap::new();
        let mut relay = Relay {
            child: Some(child),
            dir: dir.to_owned(),
            _tmp: None,
            listeners: HashMap::new(),
            admin_http: None,
            stderr: Some(stderr),
        };
        loop {
            // Generous: a cold start compiles every plugin (the Python and JavaScript
            // components take a minute in debug builds); a relay that exits ends this at once.
            match rx.recv_timeout(Duration::from_secs(300)) {
                Ok(line) if line == "postrider: ready" => break,
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("postrider: admin http ") {
                        relay.admin_http = Some(addr.parse().unwrap());
                    }
                    if let Some(rest) = line.strip_prefix("postrider: listening ") {
                        let (name, addr) = rest.split_once(' ').unwrap();
                        listeners.insert(name.to_owned(), addr.parse().unwrap());
                    }
                }
                Err(_) => {
                    let logs = relay.stop_and_logs();
                    panic!("relay did not become ready:\n{logs}");
                }
            }
        }
        relay.listeners = listeners;
        relay
    }

    /// Address of the listener called `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    /// A raw SMTP client connected to the `smtp` listener, greeting already read.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(self.addr("smtp"));
        assert_eq!(c.reply().0, 220);
        c
    }

    /// Messages in the relay's spool (`active/`), read while it runs.
    pub fn queued(&self) -> usize {
        std::fs::read_dir(self.dir.join("spool/active"))
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal to the relay (e.g. "TERM", "KILL").
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (bounded), returning whether it exited successfully.
    pub fn wait_exit(&mut self, within: Duration) -> Option<bool> {
        let child = self.child.as_mut().unwrap();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the relay and returns what it logged.
    pub fn stop_and_logs(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Stops the relay (SIGKILL) and returns every message in its spool.
    pub fn stop_and_read_spool(&mut self) -> Vec<(Envelope, Vec<u8>)> {
        self.stop_and_logs();
        read_spool(&self.dir.join("spool"))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test shows what the relay logged.
        if std::thread::panicking()
            && let Some(logs) = self.stderr.take().and_then(|h| h.join().ok())
        {
            eprintln!("---- relay log ({}) ----\n{logs}", self.dir.display());
        }
    }
}

/// Every message in a spool directory (the relay must be stopped).
pub fn read_spool(dir: &Path) -> Vec<(Envelope, Vec<u8>)> {
    let (spool, _) = Spool::open(dir, SpoolOptions::default()).unwrap();
    spool
        .list()
        .unwrap()
        .iter()
        .map(|id| spool.load(id).unwrap())
        .collect()
}

/// The admin HTTP listener on a free port (config TOML).
pub const ADMIN: &str = "[admin]\nhttp = \"127.0.0.1:0\"\n";

/// Every sample of `/metrics`, by series (`name{labels}` exactly as exposed).
pub fn scrape(relay: &Relay) -> HashMap<String, f64> {
    let (code, body) = http(relay.admin_http.expect("admin http"), "GET", "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The value of one series (0 when it is not exposed yet).
pub fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// One HTTP/1.1 request (`method path`) to `addr`: the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// A blocking SMTP client that sends raw bytes and parses replies.
pub struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    /// Connects (bounded by a read timeout, so a test never hangs).
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            stream: BufReader::new(stream),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).unwrap();
    }

    /// Writes raw bytes; `Err` once the server has closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes)
    }

    /// Whether a reply (or the end of the connection) is waiting, without blocking.
    pub fn has_data(&mut self) -> bool {
        if !self.stream.buffer().is_empty() {
            return true;
        }
        let socket = self.stream.get_mut();
        socket.set_nonblocking(true).unwrap();
        let peeked = socket.peek(&mut [0u8; 1]);
        socket.set_nonblocking(false).unwrap();
        peeked.is_ok()
    }

    /// Reads one (possibly multi-line) reply: code and text lines.
    pub fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.stream.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "connection closed while waiting for a reply (got {lines:?})"
            );
            assert!(
                line.ends_with("\r\n"),
                "reply line not ending in CRLF: {line:?}"
            );
            let code: u16 = line[..3].parse().unwrap();
            let last = line.as_bytes()[3] == b' ';
            lines.push(line[4..].trim_end().to_owned());
            if last {
                return (code, lines);
            }
        }
    }

    /// Sends a command line and returns the reply's code and enhanced code ("2.1.0", or "").
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        let (code, lines) = self.reply();
        (code, enhanced(&lines[0]))
    }

    /// Whether the server has closed the connection (reads EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.stream.read(&mut buf), Ok(0))
    }
}

/// The enhanced status code at the start of a reply line, or "".
pub fn enhanced(line: &str) -> String {
    let first = line.split(' ').next().unwrap_or("");
    let parts: Vec<_> = first.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        first.to_owned()
    } else {
        String::new()
    }
}

/// Runs a whole transaction and returns the final reply to the message content.
pub fn send_message(c: &mut Client, from: &str, to: &[&str], body: &str) -> (u16, Vec<String>) {
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
    for rcpt in to {
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).0, 250, "RCPT {rcpt}");
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(body.as_bytes());
    c.send(b"\r\n.\r\n");
    c.reply()
}

/// The queue ID named in a "250 2.0.0 Ok: queued as ID" reply.
pub fn queue_id(lines: &[String]) -> String {
    lines[0].rsplit(' ').next().unwrap().to_owned()
}

/// A self-signed certificate for `localhost`, written as PEM into `dir`: (cert, key).
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec![
        "localhost".to_owned(),
        "mx.relay.test".to_owned(),
    ])
    .unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

/// A `[[listener]]` called `name` of `kind` (smtp, submission, submissions) on a free
/// loopback port with the self-signed certificate of `dir` (made on first use), as TOML.
pub fn tls_listener(dir: &Path, name: &str, kind: &str) -> String {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        make_cert(dir);
    }
    format!(
        "[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nkind = \"{kind}\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// `[relay]` with `domain` local and AUTH for user alice, password s3cret (the password file
/// is written into `dir`), as TOML.
pub fn auth_relay(dir: &Path, domain: &str) -> String {
    password_file(dir);
    format!("[relay]\nlocal_domains = [\"{domain}\"]\npasswords = \"passwords\"\n")
}

/// Runs a Python 3 script with arguments; panics with its output unless it exits 0.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes `passwords` with user alice, password s3cret, into `dir`.
pub fn password_file(dir: &Path) {
    let out = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"s3cret\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    std::fs::write(
        dir.join("passwords"),
        format!("alice:{}", String::from_utf8(out.stdout).unwrap()),
    )
    .unwrap();
}

/// Runs `postrider queue ARGS` on the relay in `relay_dir` (running or stopped): whether it
/// succeeded, and what it printed.
pub fn queue(relay_dir: &Path, args: &[&str]) -> (bool, String) {
    command(relay_dir, "queue", args)
}

/// Runs `postrider COMMAND ARGS --config` the relay in `relay_dir`: whether it succeeded, and
/// what it printed (standard output, then standard error).
pub fn command(relay_dir: &Path, command: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg(command)
        .arg("--config")
        .arg(relay_dir.join("postrider.toml"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `postrider tls-report` on the relay in `relay_dir`: the TLS reporting counts as JSON.
pub fn tls_reports(relay_dir: &Path) -> serde_json::Value {
    let (ok, out) = command(relay_dir, "tls-report", &[]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

/// The report for `domain` among `counts` ([`tls_reports`]).
pub fn tls_report_of(counts: &serde_json::Value, domain: &str) -> serde_json::Value {
    counts["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["policies"][0]["policy"]["policy-domain"] == domain)
        .unwrap_or_else(|| panic!("no report for {domain}: {counts:#}"))
        .clone()
}

/// `postrider queue --json list` on the relay in `relay_dir`.
pub fn list_json(relay_dir: &Path) -> serde_json::Value {
    let (ok, out) = queue(relay_dir, &["--json", "list"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}
