//! Hot reload: plugin and config swaps under continuous SMTP load, broken files that leave
//! the running configuration in place, SIGHUP, `postrider reload`, and listener changes.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postrider_testkit::plugin_wasm;

use crate::harness::{BIN, Relay, config};

/// The most a change may take to be visible to new sessions.
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);

/// A small SMTP client whose failures are values, so a load thread can count them; a reply
/// that takes longer than 5 s counts as a hang.
struct Raw {
    stream: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Result<Raw, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut c = Raw {
            stream: BufReader::new(stream),
        };
        expect("greeting", c.reply()?, &[220])?;
        Ok(c)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .get_mut()
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    fn reply(&mut self) -> Result<u16, String> {
        loop {
            let mut line = String::new();
            match self.stream.read_line(&mut line) {
                Ok(0) => return Err("connection closed".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("no reply (hang?): {e}")),
            }
            if line.len() < 4 {
                return Err(format!("bad reply line {line:?}"));
            }
            if line.as_bytes()[3] == b' ' {
                return line[..3].parse().map_err(|_| format!("bad reply {line:?}"));
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Result<u16, String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }
}

fn expect(what: &str, code: u16, allowed: &[u16]) -> Result<u16, String> {
    if allowed.contains(&code) {
        Ok(code)
    } else {
        Err(format!("{what}: unexpected {code} (allowed {allowed:?})"))
    }
}

/// One transaction as the load sees it: every behaviour of the test is an expected answer
/// (250, greylist 451, allowlist 550); anything else, a closed connection or a hang is not.
fn transaction(c: &mut Raw) -> Result<(), String> {
    expect("MAIL", c.cmd("MAIL FROM:<load@client.test>")?, &[250])?;
    let a = expect(
        "RCPT alice",
        c.cmd("RCPT TO:<alice@relay.test>")?,
        &[250, 451],
    )?;
    let b = expect(
        "RCPT bob",
        c.cmd("RCPT TO:<bob@relay.test>")?,
        &[250, 451, 550],
    )?;
    if a == 250 || b == 250 {
        expect("DATA", c.cmd("DATA")?, &[354])?;
        c.send(b"Subject: load\r\n\r\nunder reload\r\n.\r\n")?;
        expect("end of data", c.reply()?, &[250])?;
    } else {
        expect("RSET", c.cmd("RSET")?, &[250])?;
    }
    Ok(())
}

/// A connection with three transactions.
fn session(addr: SocketAddr) -> Result<(), String> {
    let mut c = Raw::connect(addr)?;
    expect("EHLO", c.cmd("EHLO load.test")?, &[250])?;
    for _ in 0..3 {
        transaction(&mut c)?;
    }
    expect("QUIT", c.cmd("QUIT")?, &[221])?;
    Ok(())
}

/// Continuous load from a background thread until `stop` (bounded in count and time).
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (Arc::clone(&stop), Arc::clone(&done));
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(240)
                && d.load(Ordering::Relaxed) < 100_000
            {
                match session(addr) {
                    Ok(()) => {
                        d.fetch_add(3, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e),
                }
            }
            failures
        });
        Load { stop, done, thread }
    }

    /// Stops the load; returns the transactions done and every failure.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.thread.join().expect("load thread panicked");
        (self.done.load(Ordering::Relaxed), failures)
    }
}

/// What a new session gets for RCPT alice and RCPT bob (then QUIT).
fn probe(addr: SocketAddr) -> (u16, u16) {
    let run = || -> Result<(u16, u16), String> {
        let mut c = Raw::connect(addr)?;
        expect("EHLO", c.cmd("EHLO probe.test")?, &[250])?;
        expect("MAIL", c.cmd("MAIL FROM:<probe@client.test>")?, &[250])?;
        let a = c.cmd("RCPT TO:<alice@relay.test>")?;
        let b = c.cmd("RCPT TO:<bob@relay.test>")?;
        let _ = c.cmd("QUIT");
        Ok((a, b))
    };
    run().unwrap_or_else(|e| panic!("probe failed: {e}"))
}

/// Probes until new sessions answer `expected`; returns the time since `since`.
fn wait_for(addr: SocketAddr, expected: (u16, u16), since: Instant, what: &str) -> Duration {
    loop {
        let got = probe(addr);
        if got == expected {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{what}: still {got:?} instead of {expected:?} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Probes for `period` and asserts that nothing changes from `expected`.
fn stays(addr: SocketAddr, expected: (u16, u16), period: Duration, what: &str) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        assert_eq!(probe(addr), expected, "{what}: behaviour changed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replaces `path` atomically with `bytes` (write a temporary file, rename it over).
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Relay config: the `allow` plugin (rcpt-allowlist) lets `users` of relay.test through,
/// then the `swap` plugin (whatever component `swap.wasm` holds, with an empty config).
fn reload_config(dir: &Path, users: &str, swap: bool, extra: &str) -> String {
    let mut plugins = format!(
        "[[plugin]]\nname = \"allow\"\npath = \"{}\"\nconfig = {{ domains = {{ \"relay.test\" = [{users}] }} }}\n",
        dir.join("allow.wasm").display()
    );
    if swap {
        plugins.push_str(&format!(
            "[[plugin]]\nname = \"swap\"\npath = \"{}\"\n",
            dir.join("swap.wasm").display()
        ));
    }
    config(&format!(
        "{extra}[relay]\nlocal_domains = [\"relay.test\"]\n{plugins}"
    ))
}

const BOTH: &str = "\"alice\", \"bob\"";
const ALICE: &str = "\"alice\"";

/// The component `swap.wasm` holds.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Swap {
    /// header-stamp: data stage only, so RCPT passes.
    Stamp,
    /// greylist: every new triplet gets 451 at RCPT.
    Greylist,
}

/// What a probe sees with `swap` and the allowlist letting `bob` through or not.
fn expected(swap: Swap, bob_allowed: bool) -> (u16, u16) {
    let pass = if swap == Swap::Greylist { 451 } else { 250 };
    (pass, if bob_allowed { pass } else { 550 })
}

fn copy_plugins(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    std::fs::copy(plugin_wasm("rcpt-allowlist"), dir.join("allow.wasm")).unwrap();
    let stamp = std::fs::read(plugin_wasm("header-stamp")).unwrap();
    let grey = std::fs::read(plugin_wasm("greylist")).unwrap();
    std::fs::write(dir.join("swap.wasm"), &stamp).unwrap();
    (stamp, grey)
}

fn summary(latencies: &[Duration]) -> String {
    let mut ms: Vec<u128> = latencies.iter().map(Duration::as_millis).collect();
    ms.sort_unstable();
    format!(
        "n={} min={}ms median={}ms max={}ms",
        ms.len(),
        ms.first().copied().unwrap_or(0),
        ms.get(ms.len() / 2).copied().unwrap_or(0),
        ms.last().copied().unwrap_or(0)
    )
}

#[test]
fn plugin_and_config_swaps_under_load_lose_nothing_and_show_within_two_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().to_owned();
    let (stamp, grey) = copy_plugins(&dir);
    let conf = dir.join("postrider.toml");
    let mut relay = Relay::builder(&reload_config(&dir, BOTH, true, ""))
        .in_tmp(tmp)
        .start();
    let addr = relay.addr("smtp");
    let (mut swap, mut bob) = (Swap::Stamp, true);
    assert_eq!(probe(addr), expected(swap, bob));
    let load = Load::start(addr);

    // Warm-up, not timed: the first compilation of a component may miss the plugin cache.
    replace(&dir.join("swap.wasm"), &grey);
    wait_for(
        addr,
        expected(Swap::Greylist, bob),
        Instant::now(),
        "warm-up",
    );
    replace(&dir.join("swap.wasm"), &stamp);
    wait_for(addr, expected(Swap::Stamp, bob), Instant::now(), "warm-up");

    let (mut plugin_swaps, mut config_swaps) = (Vec::new(), Vec::new());
    for i in 0..20 {
        // Swap the component file under the configured path.
        swap = if swap == Swap::Stamp {
            Swap::Greylist
        } else {
            Swap::Stamp
        };
        let bytes = if swap == Swap::Greylist {
            &grey
        } else {
            &stamp
        };
        replace(&dir.join("swap.wasm"), bytes);
        let written = Instant::now();
        plugin_swaps.push(wait_for(
            addr,
            expected(swap, bob),
            written,
            &format!("plugin swap {i}"),
        ));
        // Rewrite the config in place (as an editor that truncates and writes does).
        bob = !bob;
        std::fs::write(
            &conf,
            reload_config(&dir, if bob { BOTH } else { ALICE }, true, ""),
        )
        .unwrap();
        let written = Instant::now();
        config_swaps.push(wait_for(
            addr,
            expected(swap, bob),
            written,
            &format!("config swap {i}"),
        ));
    }

    // A half-written (truncated) component does not compile: the old plugin stays.
    let now = expected(swap, bob);
    let current = if swap == Swap::Greylist {
        &grey
    } else {
        &stamp
    };
    let other = if swap == Swap::Greylist {
        &stamp
    } else {
        &grey
    };
    replace(&dir.join("swap.wasm"), &other[..other.len() / 2]);
    stays(addr, now, Duration::from_millis(1500), "truncated wasm");
    replace(&dir.join("swap.wasm"), current);
    stays(addr, now, Duration::from_millis(700), "restored wasm");

    // A config with an unknown key is refused whole: the old config and plugins stay.
    let good = reload_config(&dir, if bob { BOTH } else { ALICE }, true, "");
    std::fs::write(&conf, format!("bogus_key = 1\n{good}")).unwrap();
    stays(addr, now, Duration::from_millis(1500), "unknown key");
    // The next change is tried again.
    bob = !bob;
    std::fs::write(
        &conf,
        reload_config(&dir, if bob { BOTH } else { ALICE }, true, ""),
    )
    .unwrap();
    let written = Instant::now();
    let fixed = wait_for(addr, expected(swap, bob), written, "fixed config");
    assert!(fixed < VISIBLE_WITHIN, "fixed config took {fixed:?}");

    let (done, failures) = load.finish();
    let logs = relay.stop_and_logs();
    eprintln!(
        "reload under load: {done} transactions; plugin swaps {}; config swaps {}",
        summary(&plugin_swaps),
        summary(&config_swaps)
    );
    assert!(
        failures.is_empty(),
        "{} of the load's sessions failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(done >= 100, "the load ran only {done} transactions");
    for (what, l) in [("plugin", &plugin_swaps), ("config", &config_swaps)] {
        let max = l.iter().max().copied().unwrap_or_default();
        assert!(
            max < VISIBLE_WITHIN,
            "a {what} swap took {max:?}: {}",
            summary(l)
        );
    }
    assert!(
        logs.contains("reload failed") && logs.contains("loading plugin swap"),
        "the truncated component is not reported:\n{logs}"
    );
    assert!(
        logs.contains("key `bogus_key`"),
        "the unknown key is not reported:\n{logs}"
    );
    assert!(
        logs.matches("reload done").count() >= 41,
        "{} reloads done",
        logs.matches("reload done").count()
    );
}

#[test]
fn sighup_reloads_and_the_first_plugins_start_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    copy_plugins(&dir);
    let conf = dir.join("postrider.toml");
    // No plugins at start: the plugin engine is created at the first reload that has some.
    let mut relay = Relay::builder(&config("[relay]\nlocal_domains = [\"relay.test\"]\n"))
        .in_tmp(tmp)
        .args(&["--no-watch"])
        .start();
    let addr = relay.addr("smtp");
    assert_eq!(probe(addr), (250, 250));
    std::fs::write(&conf, reload_config(&dir, ALICE, false, "")).unwrap();
    // Not watching: nothing happens until asked.
    stays(addr, (250, 250), Duration::from_millis(1200), "no watch");
    relay.signal("HUP");
    let sent = Instant::now();
    let took = wait_for(addr, (250, 550), sent, "SIGHUP");
    eprintln!("SIGHUP reload visible after {took:?}");
    assert!(took < VISIBLE_WITHIN, "SIGHUP reload took {took:?}");
    // A second SIGHUP with a broken config keeps the running one.
    std::fs::write(
        &conf,
        format!("bogus = 1\n{}", reload_config(&dir, BOTH, false, "")),
    )
    .unwrap();
    relay.signal("HUP");
    stays(
        addr,
        (250, 550),
        Duration::from_millis(1200),
        "broken config",
    );
    let logs = relay.stop_and_logs();
    assert!(logs.contains("SIGHUP"), "{logs}");
    assert!(logs.contains("reload failed"), "{logs}");
    assert!(logs.contains("key `bogus`"), "{logs}");
}

fn reload_cmd(config: &Path) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(["reload", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn postrider_reload_answers_ok_or_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (stamp, _) = copy_plugins(&dir);
    let conf = dir.join("postrider.toml");
    let mut relay = Relay::builder(&reload_config(&dir, BOTH, true, ""))
        .in_tmp(tmp)
        .args(&["--no-watch"])
        .start();
    let addr = relay.addr("smtp");
    assert_eq!(probe(addr), (250, 250));
    // A copy of a valid config tells `postrider reload` where the admin socket is.
    let ctl = dir.join("ctl.toml");
    std::fs::write(&ctl, reload_config(&dir, BOTH, true, "")).unwrap();

    std::fs::write(&conf, reload_config(&dir, ALICE, true, "")).unwrap();
    let (ok, stdout, stderr) = reload_cmd(&conf);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("reloaded: configuration generation 2"),
        "{stdout}"
    );
    // The reload is done when the command returns.
    assert_eq!(probe(addr), (250, 550));

    // A component that does not compile: the relay says why and keeps the running plugin.
    replace(&dir.join("swap.wasm"), &stamp[..1000]);
    let (ok, stdout, stderr) = reload_cmd(&conf);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("reload failed") && stderr.contains("loading plugin swap"),
        "{stderr}"
    );
    assert_eq!(probe(addr), (250, 550));
    replace(&dir.join("swap.wasm"), &stamp);

    // A config the relay refuses: its error names the file, line and key.
    std::fs::write(
        &conf,
        format!(
            "{}unknown_top = true\n",
            reload_config(&dir, BOTH, true, "")
        ),
    )
    .unwrap();
    let (ok, _, stderr) = reload_cmd(&ctl);
    assert!(!ok);
    assert!(
        stderr.contains("postrider.toml:") && stderr.contains("unknown_top"),
        "{stderr}"
    );
    assert_eq!(probe(addr), (250, 550));

    // Fixed: the next reload applies it.
    std::fs::write(&conf, reload_config(&dir, BOTH, true, "")).unwrap();
    let (ok, stdout, stderr) = reload_cmd(&ctl);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("generation 3"), "{stdout}");
    assert_eq!(probe(addr), (250, 250));
    relay.stop_and_logs();
}

/// Prints "match" when the certificate a STARTTLS handshake on the port shows is the one in
/// the PEM file, else "other".
const PY_CERT: &str = r#"
import hashlib, socket, ssl, sys
port, pem = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", port), timeout=5)
f = s.makefile("rb")
def reply():
    while True:
        line = f.readline()
        assert line, "closed"
        if line[3:4] == b" ":
            return int(line[:3])
assert reply() == 220
s.sendall(b"EHLO py.test\r\n"); assert reply() == 250
s.sendall(b"STARTTLS\r\n"); assert reply() == 220
t = ctx.wrap_socket(s, server_hostname="localhost")
seen = t.getpeercert(binary_form=True)
want = ssl.PEM_cert_to_DER_cert(open(pem).read())
print("match" if seen == want else "other")
"#;

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn listeners_come_and_go_and_a_new_certificate_is_used_without_dropping_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (cert, key) = crate::harness::make_cert(&dir);
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let base = config(&format!("{tls}[relay]\nlocal_domains = [\"relay.test\"]\n"));
    let conf = dir.join("postrider.toml");
    let mut relay = Relay::builder(&base).in_tmp(tmp).start();
    let port = relay.addr("smtp").port().to_string();
    let check = || crate::harness::python(PY_CERT, &[&port, &cert.display().to_string()]);
    assert_eq!(check().trim(), "match");

    // A session on the old certificate's listener stays up through the change.
    let mut old = Raw::connect(relay.addr("smtp")).unwrap();
    expect("EHLO", old.cmd("EHLO old.test").unwrap(), &[250]).unwrap();
    crate::harness::make_cert(&dir);
    let written = Instant::now();
    while check().trim() != "match" {
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "new certificate never used"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "new certificate used after {took:?}"
    );

    // Added listener: starts accepting.
    let extra_port = free_port();
    let extra: SocketAddr = format!("127.0.0.1:{extra_port}").parse().unwrap();
    std::fs::write(
        &conf,
        format!("{base}[[listener]]\nname = \"extra\"\naddress = \"{extra}\"\nkind = \"smtp\"\n"),
    )
    .unwrap();
    let written = Instant::now();
    let mut on_extra = loop {
        if let Ok(c) = Raw::connect(extra) {
            break c;
        }
        assert!(
            written.elapsed() < VISIBLE_WITHIN,
            "extra listener not started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    expect("EHLO", on_extra.cmd("EHLO extra.test").unwrap(), &[250]).unwrap();

    // Removed listener: stops accepting; its session goes on.
    std::fs::write(&conf, &base).unwrap();
    let written = Instant::now();
    while TcpStream::connect(extra).is_ok() {
        assert!(
            written.elapsed() < VISIBLE_WITHIN,
            "extra listener still accepting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in [&mut on_extra, &mut old] {
        transaction(c).unwrap();
        expect("QUIT", c.cmd("QUIT").unwrap(), &[221]).unwrap();
    }
    // The first listener was never interrupted.
    assert_eq!(probe(relay.addr("smtp")), (250, 250));
    let logs = relay.stop_and_logs();
    assert!(logs.contains("listener stopped"), "{logs}");
}
