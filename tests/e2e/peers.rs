//! Real peers for delivery tests: dnsmasq serving MX and A records on loopback, Postfix's
//! smtp-sink as a receiving MTA, and a scripted receiver for failure modes smtp-sink cannot
//! play (451 then 250). All on 127.0.0.x, killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free UDP+TCP port on 127.0.0.1 for dnsmasq.
fn free_port(ip: &str) -> u16 {
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

/// A message the scripted receiver accepted: MAIL FROM, RCPTs, data.
pub type Accepted = (String, Vec<String>, String);

/// A scripted SMTP receiver; keeps every message it accepted with 250.
pub struct Receiver {
    /// Accepted messages: (MAIL FROM, RCPTs, data).
    pub accepted: Arc<Mutex<Vec<Accepted>>>,
    /// Transactions that reached the end of data.
    pub transactions: Arc<Mutex<usize>>,
}

impl Receiver {
    /// Listens on `addr` and answers the end of each message per `script`.
    pub fn start(addr: SocketAddr, script: Script) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let transactions = Arc::new(Mutex::new(0usize));
        let (acc, tx) = (Arc::clone(&accepted), Arc::clone(&transactions));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (acc, tx, script) = (Arc::clone(&acc), Arc::clone(&tx), script.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &acc, &tx, &script);
                });
            }
        });
        Receiver {
            accepted,
            transactions,
        }
    }
}

fn serve(
    stream: TcpStream,
    acc: &Mutex<Vec<Accepted>>,
    tx: &Mutex<usize>,
    script: &Script,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 scripted.test ESMTP\r\n")?;
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            w.write_all(b"250-scripted.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().to_owned();
            rcpts.clear();
            w.write_all(b"250 2.1.0 Ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(line[8..].trim().to_owned());
            w.write_all(b"250 2.1.5 Ok\r\n")?;
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n")?;
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
                let mut t = tx.lock().unwrap();
                *t += 1;
                *t
            };
            let reply = script
                .0
                .get(n - 1)
                .or(script.0.last())
                .copied()
                .unwrap_or("250 2.0.0 Ok");
            if reply.starts_with('2') {
                acc.lock()
                    .unwrap()
                    .push((from.clone(), rcpts.clone(), data));
            }
            w.write_all(format!("{reply}\r\n").as_bytes())?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"250 2.0.0 Ok\r\n")?;
        }
    }
}
