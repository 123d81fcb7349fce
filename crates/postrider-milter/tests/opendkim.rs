//! The protocol core against a real milter: Debian's opendkim, started by the test with a key
//! made by opendkim-genkey, signs a message it is sent step by step through a [`Session`];
//! the DKIM-Signature it asks to add is checked by dkimpy (an independent implementation)
//! against the public key opendkim-genkey wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use postrider_milter::{
    Answer, Command, Decoder, Family, Modification, Offer, Received, Session, Verdict,
};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// opendkim signing for example.org with selector `sel`, on a free loopback port.
fn opendkim(dir: &Path) -> (Killed, u16) {
    let ok = Process::new("opendkim-genkey")
        .args(["-b", "2048", "-d", "example.org", "-s", "sel", "-D"])
        .arg(dir)
        .status()
        .expect("opendkim-genkey must be installed (apt-get install opendkim-tools)");
    assert!(ok.success());
    let port = free_port();
    let conf = dir.join("opendkim.conf");
    // RequireSafeKeys: the key lives under the temp dir, which other users may write.
    std::fs::write(
        &conf,
        format!(
            "Mode s\nDomain example.org\nSelector sel\nKeyFile {key}\nSocket inet:{port}@127.0.0.1\n\
             Background no\nSyslog no\nCanonicalization relaxed/simple\nPidFile {pid}\n\
             RequireSafeKeys false\n",
            key = dir.join("sel.private").display(),
            pid = dir.join("opendkim.pid").display(),
        ),
    )
    .unwrap();
    let child = Process::new("opendkim")
        .args(["-f", "-x"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("opendkim must be installed (apt-get install opendkim)");
    let killed = Killed(child);
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "opendkim did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (killed, port)
}

/// A blocking driver: writes a command's bytes, then reads until the step it waits on is
/// answered (or nothing is awaited).
struct Driver {
    stream: TcpStream,
    decoder: Decoder,
    session: Session,
}

impl Driver {
    fn read_until_answer(&mut self) -> Option<Received> {
        let mut buf = [0u8; 4096];
        loop {
            while let Some(r) = self.decoder.decode().unwrap() {
                match self.session.receive(r).unwrap() {
                    Received::Pending => continue,
                    other => return Some(other),
                }
            }
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "the milter closed the connection");
            self.decoder.feed(&buf[..n]);
        }
    }

    fn step(&mut self, cmd: Command) -> Option<Answer> {
        let bytes = self.session.send(&cmd).unwrap();
        self.stream.write_all(&bytes).unwrap();
        self.session.awaiting()?;
        match self.read_until_answer() {
            Some(Received::Answer(a)) => Some(a),
            other => panic!("{other:?}"),
        }
    }
}

const HEADERS: [(&str, &str); 5] = [
    ("From", " Alice <alice@example.org>"),
    ("To", " bob@example.net"),
    ("Subject", " milter test"),
    ("Date", " Mon, 07 Dec 2026 20:00:00 +0000"),
    ("Message-ID", " <1@example.org>"),
];
const BODY: &[u8] = b"Hello Bob,\r\n\r\nsigned by opendkim through postrider-milter.\r\n";

#[test]
fn opendkim_signs_a_message_sent_through_the_session_and_dkimpy_verifies_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_opendkim, port) = opendkim(dir.path());
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (session, hello) = Session::new(Offer::default(), 1 << 20);
    let mut d = Driver {
        stream,
        decoder: Decoder::default(),
        session,
    };
    d.stream.write_all(&hello).unwrap();
    assert!(matches!(
        d.read_until_answer(),
        Some(Received::Negotiated { .. })
    ));

    let macros = |stage: u8, pairs: &[(&str, &str)]| Command::Macros {
        stage,
        pairs: pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
    };
    d.step(macros(
        b'C',
        &[("j", "mx.example.org"), ("{daemon_name}", "postrider")],
    ));
    // 127.0.0.1 is among opendkim's default InternalHosts: its mail is signed.
    let a = d.step(Command::Connect {
        hostname: "localhost".into(),
        family: Family::Inet,
        port: 40000,
        address: "127.0.0.1".into(),
    });
    assert!(
        a.as_ref().is_none_or(|a| a.verdict == Verdict::Continue),
        "{a:?}"
    );
    d.step(Command::Helo("client.example.org".into()));
    d.step(macros(b'M', &[("i", "ABC123")]));
    d.step(Command::Mail(vec!["<alice@example.org>".into()]));
    d.step(Command::Rcpt(vec!["<bob@example.net>".into()]));
    d.step(Command::Data);
    for (name, value) in HEADERS {
        d.step(Command::Header(name.into(), value.into()));
    }
    d.step(Command::EndOfHeaders);
    d.step(Command::Body(BODY.to_vec()));
    let end = d
        .step(Command::EndOfBody)
        .expect("an answer to the end of the body");
    // opendkim says accept (it wants nothing more of this message) with its header.
    assert!(
        matches!(end.verdict, Verdict::Accept | Verdict::Continue),
        "{end:?}"
    );
    let signature = end
        .modifications
        .iter()
        .find_map(|m| match m {
            Modification::InsertHeader(_, n, v) | Modification::AddHeader(n, v)
                if n.eq_ignore_ascii_case("DKIM-Signature") =>
            {
                Some(v.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no DKIM-Signature in {:?}", end.modifications));
    d.step(Command::Quit);

    // The message as the relay would store it, the signature on top. Milters fold header
    // values with bare LF ("\n\t"): a message line ends with CRLF.
    let signature = signature.replace("\r\n", "\n").replace('\n', "\r\n");
    let mut message = format!("DKIM-Signature:{signature}\r\n").into_bytes();
    for (name, value) in HEADERS {
        message.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
    }
    message.extend_from_slice(b"\r\n");
    message.extend_from_slice(BODY);
    let signed = dir.path().join("signed.eml");
    std::fs::write(&signed, &message).unwrap();
    let verify = r#"
import re, sys, dkim
record = "".join(re.findall(r'"([^"]*)"', open(sys.argv[2]).read()))
def dns(name, timeout=5):
    assert name == b"sel._domainkey.example.org.", name
    return record.encode()
sys.exit(0 if dkim.verify(open(sys.argv[1], "rb").read(), dnsfunc=dns) else 1)
"#;
    let dkimpy = |file: &Path| {
        Process::new("python3")
            .arg("-c")
            .arg(verify)
            .arg(file)
            .arg(dir.path().join("sel.txt"))
            .output()
            .expect("python3 with dkimpy (apt-get install python3-dkim)")
    };
    let out = dkimpy(&signed);
    assert!(
        out.status.success(),
        "dkimpy did not verify:\n{}\n{}",
        String::from_utf8_lossy(&message),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same check fails once the body is changed.
    let tampered = dir.path().join("tampered.eml");
    let text = String::from_utf8(message)
        .unwrap()
        .replace("Hello Bob", "Hello Eve");
    std::fs::write(&tampered, text).unwrap();
    assert!(
        !dkimpy(&tampered).status.success(),
        "a changed body verified"
    );
}
