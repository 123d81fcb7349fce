//! Real peers for delivery tests: dnsmasq serving MX and A records on loopback, Postfix's
//! smtp-sink as a receiving MTA, and a scripted receiver for failure modes smtp-sink cannot
//! play (451 then 250), which also speaks LMTP over TCP or a unix socket with replies
//! scripted per recipient. All on 127.0.0.x (or a temp dir), killed on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process stopped on drop: SIGTERM first, so that a daemon with workers (rspamd,
/// opendkim) stops them too, then SIGKILL after a bounded wait.
pub struct Proc(Child);

impl Proc {
    /// Takes charge of a started child.
    pub fn new(child: Child) -> Proc {
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free UDP+TCP port on 127.0.0.1 for dnsmasq.
/// A port of `ip` free for both TCP and UDP.
pub fn free_port(ip: &str) -> u16 {
    loop {
        let tcp = TcpListener::bind((ip, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// A port free on every listed loopback address (MX hosts share the SMTP port).
pub fn free_port_on(ips: &[&str]) -> u16 {
    'outer: loop {
        let first = TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        for ip in &ips[1..] {
            if TcpListener::bind((*ip, port)).is_err() {
                continue 'outer;
            }
        }
        return port;
    }
}

/// dnsmasq on 127.0.0.1 answering only from its arguments (`--mx-host`, `--host-record`).
pub fn dnsmasq(records: &[String]) -> (Proc, SocketAddr) {
    let port = free_port("127.0.0.1");
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--pid-file",
        "--log-facility=-",
    ])
    .arg(format!("--port={port}"))
    .args(records)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if is_root() {
        cmd.arg("--user=root");
    }
    let child = cmd
        .spawn()
        .expect("dnsmasq must be installed (apt-get install dnsmasq)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), addr)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Postfix's smtp-sink on `addr`, saving each message into `dir`.
pub fn smtp_sink(addr: SocketAddr, dir: &Path) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let _ = Command::new("chmod").arg("777").arg(dir).status();
    let mut cmd =
        Command::new(std::env::var("POSTRIDER_SMTP_SINK").unwrap_or_else(|_| "smtp-sink".into()));
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd
        .arg("-d")
        .arg(dir.join("msg-%H%M%S."))
        .arg(addr.to_string())
        .arg("64")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink must be installed (apt-get install postfix)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

/// Messages smtp-sink saved in `dir`.
pub fn sunk(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path()).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Waits (bounded) until `check` holds.
pub fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How the scripted receiver answers the end of each message, in order (the last repeats).
#[derive(Clone)]
pub struct Script(pub Vec<&'static str>);

/// LMTP replies after the data, per recipient address (as in RCPT TO, without brackets):
/// the n-th time a recipient reaches the end of data it gets the n-th reply (the last
/// repeats). Recipients not listed get "250 2.0.0 Ok".
#[derive(Clone)]
pub struct RcptScript(pub Vec<(&'static str, Vec<&'static str>)>);

/// Which protocol the scripted receiver speaks.
#[derive(Clone)]
enum Mode {
    /// SMTP: EHLO, one reply after the data, scripted per transaction.
    Smtp(Script),
    /// LMTP (RFC 2033): LHLO only, one reply per accepted recipient, scripted per recipient.
    Lmtp(RcptScript),
}

/// A message the scripted receiver accepted: MAIL FROM, RCPTs, data.
pub type Accepted = (String, Vec<String>, String);

/// A scripted SMTP or LMTP receiver; keeps every message it accepted with 250.
pub struct Receiver {
    /// Accepted messages: (MAIL FROM, RCPTs, data). In LMTP mode, one entry per recipient
    /// accepted after the data (the RCPT list holds just that recipient).
    pub accepted: Arc<Mutex<Vec<Accepted>>>,
    /// Transactions that reached the end of data.
    pub transactions: Arc<Mutex<usize>>,
    /// The RCPTs of each transaction that reached the end of data, in order.
    pub rcpts_per_transaction: Arc<Mutex<Vec<Vec<String>>>>,
    /// The hello verbs the client used ("EHLO", "HELO", "LHLO"), one per use.
    pub hellos: Arc<Mutex<Vec<String>>>,
}

/// What every connection of one receiver shares.
#[derive(Clone)]
struct Shared {
    mode: Mode,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    transactions: Arc<Mutex<usize>>,
    rcpts_per_transaction: Arc<Mutex<Vec<Vec<String>>>>,
    hellos: Arc<Mutex<Vec<String>>>,
    /// LMTP: how many end-of-data replies each recipient got so far.
    finals: Arc<Mutex<HashMap<String, usize>>>,
}

impl Receiver {
    /// Listens on `addr` and answers the end of each message per `script`.
    pub fn start(addr: SocketAddr, script: Script) -> Receiver {
        Receiver::start_tcp(addr, Mode::Smtp(script))
    }

    /// An LMTP server on `addr` answering each recipient after the data per `script`.
    pub fn start_lmtp(addr: SocketAddr, script: RcptScript) -> Receiver {
        Receiver::start_tcp(addr, Mode::Lmtp(script))
    }

    /// An LMTP server on a unix socket at `path` (created; removed first if present).
    pub fn start_lmtp_unix(path: &Path, script: RcptScript) -> Receiver {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let (receiver, shared) = Receiver::new(Mode::Lmtp(script));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    if stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .is_ok()
                    {
                        let _ = serve(stream, &shared);
                    }
                });
            }
        });
        receiver
    }

    fn start_tcp(addr: SocketAddr, mode: Mode) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap();
        let (receiver, shared) = Receiver::new(mode);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    if stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .is_ok()
                    {
                        let _ = serve(stream, &shared);
                    }
                });
            }
        });
        receiver
    }

    fn new(mode: Mode) -> (Receiver, Shared) {
        let shared = Shared {
            mode,
            accepted: Arc::new(Mutex::new(Vec::new())),
            transactions: Arc::new(Mutex::new(0usize)),
            rcpts_per_transaction: Arc::new(Mutex::new(Vec::new())),
            hellos: Arc::new(Mutex::new(Vec::new())),
            finals: Arc::new(Mutex::new(HashMap::new())),
        };
        let receiver = Receiver {
            accepted: Arc::clone(&shared.accepted),
            transactions: Arc::clone(&shared.transactions),
            rcpts_per_transaction: Arc::clone(&shared.rcpts_per_transaction),
            hellos: Arc::clone(&shared.hellos),
        };
        (receiver, shared)
    }

    /// The recipients accepted after the data, in order (one entry per acceptance).
    pub fn accepted_rcpts(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, rcpts, _)| rcpts.clone())
            .collect()
    }
}

/// An address as the client wrote it in MAIL FROM/RCPT TO, brackets and parameters dropped.
fn path_of(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_owned(),
        _ => arg.split(' ').next().unwrap_or("").to_owned(),
    }
}

fn serve<S: Read + Write>(stream: S, shared: &Shared) -> std::io::Result<()> {
    let lmtp = matches!(shared.mode, Mode::Lmtp(_));
    let mut r = BufReader::new(stream);
    if lmtp {
        r.get_mut().write_all(b"220 scripted.test LMTP\r\n")?;
    } else {
        r.get_mut().write_all(b"220 scripted.test ESMTP\r\n")?;
    }
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: Vec<String> = if upper.starts_with("EHLO")
            || upper.starts_with("HELO")
            || upper.starts_with("LHLO")
        {
            let verb = upper[..4].to_owned();
            shared.hellos.lock().unwrap().push(verb.clone());
            match (lmtp, verb.as_str()) {
                // RFC 2033 section 4.1: an LMTP server must not answer EHLO or HELO.
                // Like Dovecot and Cyrus, the LMTP mode offers PIPELINING.
                (true, "LHLO") => vec![
                    "250-scripted.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
                        .to_owned(),
                ],
                (false, "EHLO") => vec![
                    "250-scripted.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n".to_owned(),
                ],
                (false, "HELO") => vec!["250 scripted.test\r\n".to_owned()],
                _ => vec!["500 5.5.1 Command unrecognized\r\n".to_owned()],
            }
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().to_owned();
            rcpts.clear();
            vec!["250 2.1.0 Ok\r\n".to_owned()]
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(line[8..].trim().to_owned());
            vec!["250 2.1.5 Ok\r\n".to_owned()]
        } else if upper.starts_with("DATA") {
            r.get_mut().write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l)? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(&l);
            }
            let n = {
                let mut t = shared.transactions.lock().unwrap();
                *t += 1;
                *t
            };
            shared
                .rcpts_per_transaction
                .lock()
                .unwrap()
                .push(rcpts.clone());
            match &shared.mode {
                Mode::Smtp(script) => {
                    let reply = script
                        .0
                        .get(n - 1)
                        .or(script.0.last())
                        .copied()
                        .unwrap_or("250 2.0.0 Ok");
                    if reply.starts_with('2') {
                        shared
                            .accepted
                            .lock()
                            .unwrap()
                            .push((from.clone(), rcpts.clone(), data));
                    }
                    vec![format!("{reply}\r\n")]
                }
                Mode::Lmtp(script) => {
                    let mut replies = Vec::new();
                    for rcpt in &rcpts {
                        let address = path_of(rcpt);
                        let k = {
                            let mut finals = shared.finals.lock().unwrap();
                            let k = finals.entry(address.clone()).or_insert(0);
                            *k += 1;
                            *k
                        };
                        let reply = script
                            .0
                            .iter()
                            .find(|(a, _)| a.eq_ignore_ascii_case(&address))
                            .and_then(|(_, rs)| rs.get(k - 1).or(rs.last()).copied())
                            .unwrap_or("250 2.0.0 Ok");
                        if reply.starts_with('2') {
                            shared.accepted.lock().unwrap().push((
                                from.clone(),
                                vec![rcpt.clone()],
                                data.clone(),
                            ));
                        }
                        replies.push(format!("{reply}\r\n"));
                    }
                    replies
                }
            }
        } else if upper.starts_with("QUIT") {
            r.get_mut().write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            vec!["250 2.0.0 Ok\r\n".to_owned()]
        };
        r.get_mut().write_all(reply.concat().as_bytes())?;
    }
}

/// An HTTPS server on `addr` with the certificate and key `files`, answering every request
/// from the JSON table in `table`, read again on each request so a test can change it:
/// `{"HOST": {"status": 200, "type": "text/plain", "body": "...", "location": "...",
/// "repeat": N}}` keyed by the Host header (`body` is repeated `repeat` times); a host not in
/// the table gets 404. Each request is appended to `table` + ".log" as "HOST PATH".
pub fn https_table_server(
    addr: SocketAddr,
    (cert, key): &(std::path::PathBuf, std::path::PathBuf),
    table: &Path,
) -> Proc {
    const SERVER: &str = r#"
import http.server, json, ssl, sys
host, port, cert, key, table = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        name = (self.headers.get("Host") or "").split(":")[0]
        with open(table + ".log", "a") as log:
            log.write(f"{name} {self.path}\n")
        with open(table) as f:
            entry = json.load(f).get(name)
        if entry is None:
            entry = {"status": 404, "body": "not here"}
        body = (entry.get("body", "") * entry.get("repeat", 1)).encode()
        self.send_response(entry.get("status", 200))
        self.send_header("Content-Type", entry.get("type", "text/plain"))
        if "location" in entry:
            self.send_header("Location", entry["location"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        name = (self.headers.get("Host") or "").split(":")[0]
        with open(table + ".log", "a") as log:
            log.write(f"POST {name} {self.path} {self.headers.get('Content-Type')}\n")
        with open(table + ".posted", "ab") as posted:
            posted.write(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((host, port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;
    let child = Command::new("python3")
        .arg("-c")
        .arg(SERVER)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(cert)
        .arg(key)
        .arg(table)
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "HTTPS server did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(child)
}

/// Waits (bounded) until something accepts TCP connections on `addr`.
pub fn wait_listening(what: &str, addr: SocketAddr, within: Duration) {
    wait_for(what, within, || TcpStream::connect(addr).is_ok());
}

/// Debian's postgrey (a Postfix policy daemon) on 127.0.0.1, greylisting for `delay` seconds,
/// its database in `dir`, no whitelists.
pub fn postgrey(dir: &Path, delay: u32) -> (Proc, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let _ = Command::new("chmod").arg("777").arg(dir).status();
    let empty = dir.join("whitelist");
    std::fs::write(&empty, "").unwrap();
    let port = free_port("127.0.0.1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new("postgrey");
    cmd.arg(format!("--inet={addr}"))
        .arg(format!("--dbdir={}", dir.display()))
        .arg(format!("--delay={delay}"))
        .arg(format!("--whitelist-clients={}", empty.display()))
        .arg(format!("--whitelist-recipients={}", empty.display()))
        .arg("--auto-whitelist-clients=0")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if is_root() {
        cmd.args(["--user=nobody", "--group=nogroup"]);
    }
    let child = cmd
        .spawn()
        .expect("postgrey must be installed (apt-get install postgrey)");
    let proc = Proc(child);
    wait_listening("postgrey", addr, Duration::from_secs(20));
    (proc, addr)
}

/// Debian's rspamd with its shipped rules, its own state in `dir`: the normal worker (HTTP
/// /checkv2) and the proxy (milter mode) on free loopback ports, DNS pointed at a closed
/// port (every lookup fails fast). Returns (process, normal worker, milter proxy).
pub fn rspamd(dir: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let local = dir.join("local/override.d");
    for d in [
        &local,
        &dir.join("local/local.d"),
        &dir.join("db"),
        &dir.join("run"),
        &dir.join("log"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Results as headers (X-Spamd-Result, X-Rspamd-Server, ...) on every scanned message.
    std::fs::write(
        dir.join("local/local.d/milter_headers.conf"),
        "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n",
    )
    .unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port("127.0.0.1")).collect();
    let bind = |file: &str, port: u16| {
        std::fs::write(
            local.join(file),
            format!("bind_socket = \"127.0.0.1:{port}\";\n"),
        )
        .unwrap();
    };
    bind("worker-normal.inc", ports[0]);
    bind("worker-controller.inc", ports[1]);
    // The proxy (milter mode) hands each message to the normal worker above.
    std::fs::write(
        local.join("worker-proxy.inc"),
        format!(
            "bind_socket = \"127.0.0.1:{}\";\nmilter = yes;\ntimeout = 120s;\n\
             upstream \"local\" {{\n  default = yes;\n  hosts = \"127.0.0.1:{}\";\n}}\n",
            ports[2], ports[0]
        ),
    )
    .unwrap();
    std::fs::write(
        local.join("options.inc"),
        "dns {\n  nameserver = [\"127.0.0.1:9\"];\n  timeout = 0.2s;\n  retransmits = 1;\n}\n",
    )
    .unwrap();
    let _ = Command::new("chmod").arg("-R").arg("777").arg(dir).status();
    let mut cmd = Command::new("rspamd");
    cmd.args(["-f", "-c", "/etc/rspamd/rspamd.conf"])
        .arg(format!(
            "--var=LOCAL_CONFDIR={}",
            dir.join("local").display()
        ))
        .arg(format!("--var=DBDIR={}", dir.join("db").display()))
        .arg(format!("--var=RUNDIR={}", dir.join("run").display()))
        .arg(format!("--var=LOGDIR={}", dir.join("log").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if is_root() {
        cmd.args(["-u", "_rspamd", "-g", "_rspamd"]);
    }
    let child = cmd
        .spawn()
        .expect("rspamd must be installed (apt-get install rspamd)");
    let proc = Proc(child);
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    // It compiles its regular expressions first: about 20 s on 2 cores.
    wait_listening("rspamd", addr(ports[0]), Duration::from_secs(120));
    (proc, addr(ports[0]), addr(ports[2]))
}

/// Debian's opendkim signing mail from example.org with selector `sel` (a 2048-bit key made by
/// opendkim-genkey in `dir`, its DNS record in `dir/sel.txt`), as a milter on a free loopback
/// port. 127.0.0.1 is among its default InternalHosts: mail from there is signed.
pub fn opendkim(dir: &Path) -> (Proc, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("opendkim-genkey")
        .args(["-b", "2048", "-d", "example.org", "-s", "sel", "-D"])
        .arg(dir)
        .status()
        .expect("opendkim-genkey must be installed (apt-get install opendkim-tools)");
    assert!(ok.success());
    let port = free_port("127.0.0.1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = dir.join("opendkim.conf");
    // RequireSafeKeys: the key lives under the temp dir, which other users may write.
    std::fs::write(
        &conf,
        format!(
            "Mode s\nDomain example.org\nSelector sel\nKeyFile {key}\nSocket inet:{port}@127.0.0.1\n\
             Background no\nSyslog no\nCanonicalization simple/simple\nPidFile {pid}\n\
             RequireSafeKeys false\n",
            key = dir.join("sel.private").display(),
            pid = dir.join("opendkim.pid").display(),
        ),
    )
    .unwrap();
    let child = Command::new("opendkim")
        .args(["-f", "-x"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("opendkim must be installed (apt-get install opendkim)");
    let proc = Proc(child);
    wait_listening("opendkim", addr, Duration::from_secs(20));
    (proc, addr)
}

/// Verifies the DKIM signatures of `message` with dkimpy (an implementation independent of
/// opendkim and of the relay), the key for `sel._domainkey.example.org` read from the
/// opendkim-genkey record `record`. Ok: verified; Err: dkimpy's complaint.
pub fn dkimpy_verify(message: &[u8], record: &Path) -> Result<(), String> {
    let script = r#"
import re, sys, dkim
record = "".join(re.findall(r'"([^"]*)"', open(sys.argv[1]).read()))
def dns(name, timeout=5):
    assert name == b"sel._domainkey.example.org.", name
    return record.encode()
sys.exit(0 if dkim.verify(sys.stdin.buffer.read(), dnsfunc=dns) else 1)
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(record)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with dkimpy (apt-get install python3-dkim)");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
