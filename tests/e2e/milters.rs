//! `[[milter]]` entries in the chain: Debian's opendkim signs (dkimpy verifies what the relay
//! stored), rspamd's proxy in milter mode rejects GTUBE, and a scripted milter plays what
//! real ones do rarely: every change a milter may ask for, and the faults (down, silent,
//! garbage, out of order, gone mid-message), each answered by the failure policy while other
//! sessions go on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::{Relay, config, send_message};
use crate::peers::{dkimpy_verify, opendkim, rspamd};

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// A relay for relay.test with this chain (`[[milter]]` and `[[plugin]]` entries).
fn relay_with(chain: &str) -> Relay {
    Relay::builder(&config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{chain}"
    )))
    .start()
}

fn milter(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("[[milter]]\nname = \"{name}\"\naddress = \"inet:{addr}\"\n{extra}\n")
}

#[test]
fn opendkim_signs_as_a_milter_and_dkimpy_verifies_the_stored_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (_opendkim, addr) = opendkim(&tmp.path().join("opendkim"));
    let mut relay = relay_with(&milter("opendkim", addr, ""));
    for subject in ["first", "second"] {
        // Two messages on one connection: the milter connection serves both.
        let mut c = relay.client();
        let (code, lines) = send_message(
            &mut c,
            "alice@example.org",
            &["bob@relay.test"],
            &format!(
                "From: Alice <alice@example.org>\r\nTo: bob@relay.test\r\nSubject:  {subject}\r\n\
                 Date: Mon, 07 Dec 2026 20:00:00 +0000\r\nMessage-ID: <{subject}@example.org>\r\n\
                 X-Folded: a\r\n\tb\r\n\r\nHello Bob,\r\n\r\nsigned by opendkim as a milter.\r\n"
            ),
        );
        assert_eq!(code, 250, "{lines:?}");
    }
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 2);
    let record = tmp.path().join("opendkim/sel.txt");
    for (_, message) in &spool {
        let text = String::from_utf8_lossy(message);
        assert!(text.contains("DKIM-Signature:"), "{text}");
        assert!(
            !message.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "a bare LF in the stored message: {text}"
        );
        dkimpy_verify(message, &record).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // What dkimpy checked is what was signed: a changed body fails.
        let tampered = text.replace("Hello Bob", "Hello Eve");
        assert!(dkimpy_verify(tampered.as_bytes(), &record).is_err());
    }
}

#[test]
fn rspamd_in_milter_mode_rejects_gtube_and_passes_a_clean_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rspamd, _http, proxy) = rspamd(tmp.path());
    let mut relay = relay_with(&milter("rspamd", proxy, "content_timeout_ms = 60000"));
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "sender@client.test",
        &["alice@relay.test"],
        &format!("Subject: offer\r\nFrom: <sender@client.test>\r\n\r\n{GTUBE}\r\n"),
    );
    assert!((500..600).contains(&code), "{code} {lines:?}");
    assert!(lines[0].starts_with("5.7.1"), "{lines:?}");
    let (code, lines) = send_message(
        &mut c,
        "sender@client.test",
        &["alice@relay.test"],
        "Subject: lunch\r\nFrom: <sender@client.test>\r\nTo: <alice@relay.test>\r\n\r\nAt noon?\r\n",
    );
    assert_eq!(code, 250, "{lines:?}");
    let logs = relay.stop_and_logs();
    assert!(logs.contains("rspamd@data=reject"), "{logs}");
    assert!(logs.contains("rspamd@data=continue"), "{logs}");
    let spool = crate::harness::read_spool(&relay.dir.join("spool"));
    assert_eq!(spool.len(), 1);
    // rspamd's result headers, asked for at the end of the message, are in the stored copy.
    let text = String::from_utf8_lossy(&spool[0].1);
    assert!(text.contains("\r\nX-Spamd-Result: "), "{text}");
    assert!(text.contains("Subject: lunch\r\n"), "{text}");
}

/// A milter's answer to one command, as the script decides.
enum Act {
    /// Send these packets (code, data).
    Send(Vec<(u8, Vec<u8>)>),
    /// Send nothing (a command that needs no answer).
    Quiet,
    /// Close the connection.
    Close,
    /// Wait, then send.
    Slow(Duration, Vec<(u8, Vec<u8>)>),
    /// Send these raw bytes.
    Raw(Vec<u8>),
}

fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(code);
    out.extend_from_slice(data);
    out
}

fn cont() -> Act {
    Act::Send(vec![(b'c', Vec::new())])
}

/// Strings as milter data: each NUL-terminated.
fn strings(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.bytes().chain([0])).collect()
}

/// A scripted milter on 127.0.0.1: it negotiates every action and every step, answers each
/// command as `script(command, data, connection number)` says; one thread per connection.
/// Returns its address and the number of connections it took.
fn scripted(
    script: impl Fn(u8, &[u8], usize) -> Act + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(script);
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let script = Arc::clone(&script);
            std::thread::spawn(move || serve(stream, n, &*script));
        }
    });
    (addr, count)
}

fn serve(mut s: TcpStream, n: usize, script: &dyn Fn(u8, &[u8], usize) -> Act) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut body).is_err() || body.is_empty() {
            return;
        }
        let (cmd, data) = (body[0], &body[1..]);
        let act = match cmd {
            // Version 6, every action, every step sent and answered.
            b'O' => Act::Send(vec![(
                b'O',
                [6u32, 0xff, 0]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect(),
            )]),
            b'D' | b'A' => Act::Quiet,
            b'Q' => return,
            _ => script(cmd, data, n),
        };
        let bytes: Vec<u8> = match act {
            Act::Quiet => continue,
            Act::Close => return,
            Act::Raw(b) => b,
            Act::Send(p) => p.iter().flat_map(|(c, d)| packet(*c, d)).collect(),
            Act::Slow(d, p) => {
                std::thread::sleep(d);
                p.iter().flat_map(|(c, d)| packet(*c, d)).collect()
            }
        };
        if s.write_all(&bytes).is_err() {
            return;
        }
    }
}

const MESSAGE: &str = "From: <sender@client.test>\r\nSubject: hello\r\nX-Spam: one\r\nX-Spam: two\r\n\r\noriginal body\r\n";

#[test]
fn every_change_a_milter_asks_for_is_applied_to_the_stored_message() {
    let (addr, _) = scripted(|cmd, _, _| match cmd {
        b'E' => Act::Send(vec![
            (b'h', strings(&["X-Milter", "added"])),
            (
                b'i',
                [0u32.to_be_bytes().to_vec(), strings(&["X-First", "top"])].concat(),
            ),
            (
                b'm',
                [2u32.to_be_bytes().to_vec(), strings(&["X-Spam", ""])].concat(),
            ),
            (
                b'm',
                [
                    1u32.to_be_bytes().to_vec(),
                    strings(&["Subject", "changed"]),
                ]
                .concat(),
            ),
            (b'b', b"new body\nwith a bare LF\n".to_vec()),
            (b'+', strings(&["<carol@relay.test>"])),
            (b'-', strings(&["<bob@relay.test>"])),
            (b'e', strings(&["<bounces@client.test>"])),
            (b'c', Vec::new()),
        ]),
        _ => cont(),
    });
    let mut relay = relay_with(&milter("editor", addr, ""));
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "sender@client.test",
        &["alice@relay.test", "bob@relay.test"],
        MESSAGE,
    );
    assert_eq!(code, 250, "{lines:?}");
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    let (envelope, message) = &spool[0];
    let text = String::from_utf8_lossy(message);
    assert!(text.starts_with("X-First: top\r\nReceived: "), "{text}");
    assert!(
        text.contains("Subject: changed\r\nX-Spam: one\r\nX-Milter: added\r\n\r\nnew body\r\nwith a bare LF\r\n"),
        "{text}"
    );
    assert!(!text.contains("original body"), "{text}");
    let rcpts: Vec<&str> = envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["alice@relay.test", "carol@relay.test"]);
    assert_eq!(envelope.mail_from, "bounces@client.test");
}

#[test]
fn milter_verdicts_reach_the_client_at_each_stage() {
    let (addr, _) = scripted(|cmd, data, _| match cmd {
        b'R' if data.starts_with(b"<nobody@") => {
            Act::Send(vec![(b'y', strings(&["550 5.1.1 no such user here"]))])
        }
        b'R' if data.starts_with(b"<later@") => Act::Send(vec![(b't', Vec::new())]),
        b'R' if data.starts_with(b"<void@") => Act::Send(vec![(b'd', Vec::new())]),
        b'M' if data.starts_with(b"<spammer@") => Act::Send(vec![(b'r', Vec::new())]),
        _ => cont(),
    });
    let mut relay = relay_with(&milter("verdicts", addr, ""));
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    c.send(b"MAIL FROM:<spammer@client.test>\r\n");
    let (code, lines) = c.reply();
    assert_eq!((code, lines[0].as_str()), (550, "5.7.1 Command rejected"));
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    c.send(b"RCPT TO:<nobody@relay.test>\r\n");
    let (code, lines) = c.reply();
    assert_eq!((code, lines[0].as_str()), (550, "5.1.1 no such user here"));
    let (code, lines) = c.cmd("RCPT TO:<later@relay.test>");
    assert_eq!(code, 451, "{lines:?}");
    assert_eq!(c.cmd("RCPT TO:<alice@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(MESSAGE.as_bytes());
    c.send(b".\r\n");
    assert_eq!(c.reply().0, 250);
    // A discard at RCPT: the message is accepted, and thrown away.
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<void@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(MESSAGE.as_bytes());
    c.send(b".\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1, "the discarded message was stored");
    let rcpts: Vec<&str> = spool[0]
        .0
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["alice@relay.test"]);
}

/// Sends one message and returns the reply to its end of data.
fn one_message(relay: &Relay) -> (u16, Vec<String>) {
    let mut c = relay.client();
    send_message(&mut c, "sender@client.test", &["alice@relay.test"], MESSAGE)
}

#[test]
fn a_milter_gone_mid_message_tempfails_that_message_and_the_next_one_reconnects() {
    // The first connection closes after the headers; later ones behave.
    let (addr, connections) = scripted(|cmd, _, n| match cmd {
        b'N' if n == 0 => Act::Close,
        _ => cont(),
    });
    let mut relay = relay_with(&milter("flaky", addr, ""));
    let mut c = relay.client();
    let (code, lines) = send_message(&mut c, "sender@client.test", &["alice@relay.test"], MESSAGE);
    assert_eq!(code, 451, "{lines:?}");
    assert!(lines[0].starts_with("4.3.0"), "{lines:?}");
    // The same session's next transaction connects again and tells it all from the start.
    assert_eq!(c.cmd("RSET").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(MESSAGE.as_bytes());
    c.send(b".\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(relay.stop_and_read_spool().len(), 1);
}

#[test]
fn faults_are_answered_by_the_failure_policy_while_other_sessions_go_on() {
    // Garbage: a packet length far over the limit, at MAIL FROM.
    let (garbage, _) = scripted(|cmd, _, _| match cmd {
        b'M' => Act::Raw(vec![0xff, 0xff, 0xff, 0xff, b'c']),
        _ => cont(),
    });
    // Out of order: two answers to one RCPT.
    let (twice, _) = scripted(|cmd, _, _| match cmd {
        b'R' => Act::Send(vec![(b'c', Vec::new()), (b'c', Vec::new())]),
        _ => cont(),
    });
    // A modification before the end of the message.
    let (early, _) = scripted(|cmd, _, _| match cmd {
        b'T' => Act::Send(vec![(b'h', strings(&["X-Early", "1"]))]),
        _ => cont(),
    });
    // Silent past the deadline at the end of the message.
    let (slow, _) = scripted(|cmd, _, _| match cmd {
        b'E' => Act::Slow(Duration::from_secs(5), vec![(b'c', Vec::new())]),
        _ => cont(),
    });
    // Nothing listens here.
    let down = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (addr, policy, extra, want) in [
        (garbage, "tempfail", "", 451),
        (twice, "reject", "", 550),
        (early, "tempfail", "", 451),
        (slow, "tempfail", "content_timeout_ms = 1000", 451),
        (down, "continue", "", 250),
    ] {
        let relay = relay_with(&milter(
            "faulty",
            addr,
            &format!("failure_policy = \"{policy}\"\n{extra}"),
        ));
        let mut c = relay.client();
        assert_eq!(c.cmd("EHLO client.test").0, 250, "{addr}");
        let mail = c.cmd("MAIL FROM:<sender@client.test>").0;
        let rcpt = if mail == 250 {
            c.cmd("RCPT TO:<alice@relay.test>").0
        } else {
            mail
        };
        let code = if rcpt == 250 {
            assert_eq!(c.cmd("DATA").0, 354);
            c.send(MESSAGE.as_bytes());
            c.send(b".\r\n");
            c.reply().0
        } else {
            rcpt
        };
        assert_eq!(code, want, "{addr} with failure_policy {policy}");
        // The session goes on: a reset and a NOOP are answered.
        assert_eq!(c.cmd("RSET").0, 250);
        assert_eq!(c.cmd("NOOP").0, 250);
        drop(c);
        drop(relay);
    }
}

#[test]
fn a_slow_milter_holds_only_its_own_session() {
    let (addr, _) = scripted(|cmd, data, _| match cmd {
        b'R' if data.starts_with(b"<slow@") => {
            Act::Slow(Duration::from_secs(2), vec![(b'c', Vec::new())])
        }
        _ => cont(),
    });
    let relay = relay_with(&milter("slow", addr, ""));
    let mut stuck = relay.client();
    assert_eq!(stuck.cmd("EHLO client.test").0, 250);
    assert_eq!(stuck.cmd("MAIL FROM:<sender@client.test>").0, 250);
    stuck.send(b"RCPT TO:<slow@relay.test>\r\n");
    let (code, lines) = one_message(&relay);
    assert_eq!(code, 250, "{lines:?}");
    assert!(!stuck.has_data(), "the slow RCPT was answered early");
    assert_eq!(stuck.reply().0, 250);
    assert_eq!(stuck.cmd("QUIT").0, 221);
}

#[test]
fn a_milter_and_a_plugin_change_the_body_as_equals() {
    // The milter replaces the body; the disclaimer plugin after it appends a footer part.
    let (addr, _) = scripted(|cmd, _, _| match cmd {
        b'E' => Act::Send(vec![
            (b'b', b"replaced by the milter\n".to_vec()),
            (b'c', Vec::new()),
        ]),
        _ => cont(),
    });
    let mut relay = relay_with(&format!(
        "{}{}",
        milter("rewriter", addr, ""),
        crate::harness::plugin(
            "footer",
            "disclaimer",
            "config = { text = \"-- \\nsent through Postrider\", only_authenticated = false }"
        ),
    ));
    let mut c = relay.client();
    let (code, lines) = send_message(&mut c, "sender@client.test", &["alice@relay.test"], MESSAGE);
    assert_eq!(code, 250, "{lines:?}");
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    // Python's email package, a MIME parser independent of the relay, reads the parts.
    let script = r#"
import sys, email
m = email.message_from_binary_file(sys.stdin.buffer)
assert m.get_content_type() == "multipart/mixed", m.get_content_type()
for p in m.walk():
    if not p.is_multipart():
        print(p.get_content_type(), repr(p.get_payload(decode=True).decode()))
"#;
    let mut py = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(&spool[0].1).unwrap();
    let out = py.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&spool[0].1);
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "text/plain 'replaced by the milter\\n'\ntext/plain '-- \\nsent through Postrider'\n",
        "{text}"
    );
    assert!(text.contains("X-Disclaimer: added\r\n"), "{text}");
    assert!(
        !spool[0]
            .1
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "a bare LF in the stored message: {text}"
    );
}

#[test]
fn a_milter_done_with_one_message_hears_the_next_and_a_refused_helo_stays_refused() {
    // Accept (done with the message) at the first MAIL of each connection, reject the
    // second; refuse the HELO name bad.test every time it is told.
    let mails = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&mails);
    let (addr, _) = scripted(move |cmd, data, _| match cmd {
        b'H' if data.starts_with(b"bad.test") => Act::Send(vec![(b'r', Vec::new())]),
        b'M' if seen.fetch_add(1, Ordering::SeqCst) == 0 => Act::Send(vec![(b'a', Vec::new())]),
        b'M' => Act::Send(vec![(b'r', Vec::new())]),
        _ => cont(),
    });
    let mut relay = relay_with(&milter("picky", addr, ""));
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO bad.test").0, 550);
    assert_eq!(c.cmd("EHLO bad.test").0, 550, "a second EHLO slipped past");
    assert_eq!(c.cmd("EHLO good.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(MESSAGE.as_bytes());
    c.send(b".\r\n");
    assert_eq!(c.reply().0, 250);
    // The milter said accept at MAIL last time: it still hears this transaction.
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 550);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert_eq!(mails.load(Ordering::SeqCst), 2);
    assert_eq!(relay.stop_and_read_spool().len(), 1);
}
