//! The relay behind a load balancer: Debian's haproxy in front of a `proxy_protocol` listener
//! (v1 and v2), real clients (Python's smtplib) connecting to haproxy from 127.0.0.2 and
//! 127.0.0.3. Relay control, the rate-limit plugin, logs and the stored `Received` must see
//! those addresses, not haproxy's; a connection without a header, or from an address not in
//! `proxy_trusted`, is closed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{NO_DNS, Relay, config_full, python};
use crate::peers::{Proc, free_port, wait_listening};

/// haproxy (TCP mode) on a free 127.0.0.1 port, sending `send_proxy` (`send-proxy` for v1,
/// `send-proxy-v2`) to `backend`.
fn haproxy(dir: &Path, backend: SocketAddr, send_proxy: &str) -> (Proc, SocketAddr) {
    let port = free_port("127.0.0.1");
    let conf = dir.join(format!("haproxy-{send_proxy}.cfg"));
    std::fs::write(
        &conf,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
             timeout server 30s\nfrontend smtp\n  bind 127.0.0.1:{port}\n  default_backend relay\n\
             backend relay\n  server relay {backend} {send_proxy}\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy must be installed (apt-get install haproxy)");
    let proc = Proc::new(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening("haproxy", addr, Duration::from_secs(20));
    (proc, addr)
}

/// One SMTP transaction with Python's smtplib from `source` through `server`: the reply code
/// of each command, space-separated (`MAIL RCPT DATA`), stopping at the first refusal.
fn transaction(server: SocketAddr, source: &str, rcpt: &str) -> String {
    let script = r#"
import smtplib, sys
host, port, source, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = smtplib.SMTP(host, port, source_address=(source, 0), timeout=20)
s.ehlo("client.test")
codes = []
for cmd, arg in (("mail", "FROM:<sender@client.test>"), ("rcpt", "TO:<%s>" % rcpt)):
    code, _ = s.docmd(cmd, arg)
    codes.append(code)
    if code >= 400:
        break
else:
    code, _ = s.data(b"Subject: via the balancer\r\n\r\nhello\r\n")
    codes.append(code)
s.quit()
print(" ".join(map(str, codes)))
"#;
    let (ip, port) = (server.ip().to_string(), server.port().to_string());
    python(script, &[&ip, &port, source, rcpt])
        .trim()
        .to_owned()
}

/// Whether the server closes a connection from `source` after it sends `first` (never
/// greeting it).
fn closed_without_greeting(server: SocketAddr, source: &str, first: &[u8]) -> bool {
    let script = r#"
import socket, sys
s = socket.socket()
s.bind((sys.argv[3], 0))
s.settimeout(20)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(bytes.fromhex(sys.argv[4]))
data = b""
try:
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
except socket.timeout:
    print("timeout")
    sys.exit(0)
except ConnectionResetError:
    pass
print("closed" if not data else "answered " + data.decode(errors="replace").strip())
"#;
    let hex: String = first.iter().map(|b| format!("{b:02x}")).collect();
    let (ip, port) = (server.ip().to_string(), server.port().to_string());
    python(script, &[&ip, &port, source, &hex]).trim() == "closed"
}

#[test]
fn behind_haproxy_the_relay_sees_the_real_clients_with_v1_and_v2() {
    for send_proxy in ["send-proxy", "send-proxy-v2"] {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_full(
            NO_DNS,
            "",
            "[relay]\nlocal_domains = [\"relay.test\"]\nrelay_networks = [\"127.0.0.2/32\"]\n\
             [[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n\
             proxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n\
             [[plugin]]\nname = \"rate-limit\"\npath = \"builtin:rate-limit\"\n\
             config = { per_client_ip = { limit = 1, window_seconds = 3600 } }\n",
        );
        let mut relay = Relay::builder(&config).start();
        let mx = relay.addr("mx");
        let (_haproxy, front) = haproxy(tmp.path(), mx, send_proxy);

        // 127.0.0.2 is a relay client: it may relay to elsewhere.test, once an hour.
        assert_eq!(
            transaction(front, "127.0.0.2", "user@elsewhere.test"),
            "250 250 250",
            "{send_proxy}"
        );
        assert_eq!(
            transaction(front, "127.0.0.2", "user@elsewhere.test"),
            "450"
        );
        // 127.0.0.3 is not: local mail only, and its own count (haproxy's one address would
        // have hit the limit above).
        assert_eq!(
            transaction(front, "127.0.0.3", "user@elsewhere.test"),
            "250 554"
        );
        assert_eq!(
            transaction(front, "127.0.0.4", "alice@relay.test"),
            "250 250 250"
        );

        // Straight to the listener: from a trusted address without a header, or from an
        // untrusted one with a forged header, the connection is closed unanswered.
        assert!(closed_without_greeting(
            mx,
            "127.0.0.1",
            b"EHLO direct.test\r\n"
        ));
        assert!(closed_without_greeting(
            mx,
            "127.0.0.5",
            b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n"
        ));

        let logs = relay.stop_and_logs();
        assert!(logs.contains("via=127.0.0.1:"), "{logs}");
        assert!(logs.contains("client=127.0.0.3:"), "{logs}");
        assert!(
            logs.contains("no acceptable PROXY protocol header"),
            "{logs}"
        );
        assert!(logs.contains("not in proxy_trusted"), "{logs}");
        let spool = crate::harness::read_spool(&relay.dir.join("spool"));
        assert_eq!(spool.len(), 2, "{send_proxy}");
        let mut clients: Vec<String> = spool.iter().map(|(e, _)| e.client.ip.to_string()).collect();
        clients.sort();
        assert_eq!(clients, ["127.0.0.2", "127.0.0.4"]);
        for (e, message) in &spool {
            let text = String::from_utf8_lossy(message);
            assert!(text.contains(&format!("([{}])", e.client.ip)), "{text}");
        }
    }
}

#[test]
fn a_slow_or_partial_proxy_header_costs_only_its_own_connection() {
    let config = config_full(
        NO_DNS,
        "",
        "[timeouts]\ncommand = 2\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\
         kind = \"smtp\"\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\"]\n",
    );
    let relay = Relay::builder(&config).start();
    let mx = relay.addr("mx");
    // Half a header, then nothing: closed at the command timeout.
    let mut stuck = TcpStream::connect(mx).unwrap();
    stuck.write_all(b"PROXY TCP4 127.0.0.9 ").unwrap();
    // Meanwhile a whole header, split in two writes, gets its greeting.
    let mut ok = TcpStream::connect(mx).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ok.write_all(b"PROXY TCP4 127.0.0.9 127.0.0.1 4").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    ok.write_all(b"0000 25\r\n").unwrap();
    let mut greeting = [0u8; 3];
    ok.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220");
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        stuck.read(&mut buf).unwrap_or(0),
        0,
        "the stuck connection was answered"
    );
}

#[test]
fn an_ipv6_listener_serves_and_advertises_its_recipient_limit() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        panic!("this machine has no IPv6 loopback (::1): the test needs one");
    }
    let config = config_full(
        NO_DNS,
        "",
        "[relay]\nlocal_domains = [\"relay.test\"]\n[limits]\nmax_recipients = 2\n\
         [[listener]]\nname = \"v6\"\naddress = \"[::1]:0\"\nkind = \"smtp\"\n",
    );
    let mut relay = Relay::builder(&config).start();
    let v6 = relay.addr("v6");
    assert!(v6.is_ipv6(), "{v6}");
    let mut c = crate::harness::Client::connect(v6);
    assert_eq!(c.reply().0, 220);
    c.send(b"EHLO client.test\r\n");
    let (code, lines) = c.reply();
    assert_eq!(code, 250);
    assert!(lines.iter().any(|l| l == "LIMITS RCPTMAX=2"), "{lines:?}");
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<a@relay.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@relay.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<c@relay.test>"), (452, "4.5.3".into()));
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: over IPv6\r\n\r\nhello\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    assert_eq!(spool[0].0.client.ip.to_string(), "::1");
    let text = String::from_utf8_lossy(&spool[0].1);
    assert!(text.contains("IPv6:::1"), "{text}");
}

/// A self-signed certificate for `names`, as PEM files `stem.pem` and `stem.key` in `dir`.
fn cert_for(dir: &Path, stem: &str, names: &[&str]) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// STARTTLS with Python's ssl asking for `sni` (none when empty): which of `certs` (PEM
/// files) the server presented, then a message sent over that session.
fn starttls_picks(server: SocketAddr, sni: &str, certs: &[&str]) -> String {
    let script = r#"
import smtplib, ssl, sys
host, port, sni = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, port, timeout=20)
s.ehlo("client.test")
s._host = sni or None
s.starttls(context=ctx)
der = s.sock.getpeercert(binary_form=True)
picked = [i for i, f in enumerate(sys.argv[4:]) if ssl.PEM_cert_to_DER_cert(open(f).read()) == der]
s.ehlo("client.test")
s.sendmail("sender@client.test", ["alice@relay.test"], b"Subject: sni\r\n\r\nhi\r\n")
s.quit()
print(picked)
"#;
    let (ip, port) = (server.ip().to_string(), server.port().to_string());
    let args: Vec<&str> = [ip.as_str(), &port, sni]
        .into_iter()
        .chain(certs.iter().copied())
        .collect();
    python(script, &args).trim().to_owned()
}

#[test]
fn sni_picks_the_certificate_and_plugins_see_the_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (default_cert, default_key) = cert_for(tmp.path(), "default", &["mx.relay.test"]);
    let (mail_cert, mail_key) = cert_for(tmp.path(), "mail", &["mail.example.org"]);
    let (wild_cert, wild_key) = cert_for(tmp.path(), "wild", &["*.example.net"]);
    let config = config_full(
        NO_DNS,
        "",
        &format!(
            "[relay]\nlocal_domains = [\"relay.test\"]\n\
             [[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n\
             tls_cert = \"{default_cert}\"\ntls_key = \"{default_key}\"\n\
             [[certificate]]\nnames = [\"mail.example.org\"]\ncert = \"{mail_cert}\"\nkey = \"{mail_key}\"\n\
             [[certificate]]\nnames = [\"*.example.net\"]\ncert = \"{wild_cert}\"\nkey = \"{wild_key}\"\n{}",
            crate::harness::plugin("inputs", "misbehave", "config = { mode = \"inputs\" }")
        ),
    );
    let mut relay = Relay::builder(&config).start();
    let tls = relay.addr("tls");
    let certs = [
        default_cert.as_str(),
        mail_cert.as_str(),
        wild_cert.as_str(),
    ];
    assert_eq!(starttls_picks(tls, "mail.example.org", &certs), "[1]");
    assert_eq!(starttls_picks(tls, "smtp.example.net", &certs), "[2]");
    assert_eq!(starttls_picks(tls, "other.test", &certs), "[0]");
    assert_eq!(starttls_picks(tls, "", &certs), "[0]");
    let spool = relay.stop_and_read_spool();
    let mut seen: Vec<String> = spool
        .iter()
        .map(|(_, m)| {
            let text = String::from_utf8_lossy(m);
            let inputs = text
                .lines()
                .find(|l| l.starts_with("X-Stage-Inputs:"))
                .unwrap_or_else(|| panic!("{text}"))
                .to_owned();
            inputs
                .split(' ')
                .find_map(|f| f.strip_prefix("tls="))
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["-", "mail.example.org", "other.test", "smtp.example.net"]
    );
}

#[test]
fn early_talkers_are_refused_or_served_as_configured() {
    for (policy, want) in [("reject", "554 5.5.1"), ("allow", "220 ")] {
        let config = config_full(
            NO_DNS,
            "",
            &format!("[limits]\ngreet_delay_ms = 1500\nearly_talkers = \"{policy}\"\n"),
        );
        let relay = Relay::builder(&config).start();
        let smtp = relay.addr("smtp");
        // Talks at once, before the greeting.
        let mut early = TcpStream::connect(smtp).unwrap();
        early
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        early.write_all(b"EHLO hasty.test\r\n").unwrap();
        // Until the connection closes or the EHLO reply is whole.
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = early.read(&mut chunk) {
            got.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&got).contains("\r\n250 ") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        if policy == "reject" {
            assert!(
                text.starts_with(want) && text.lines().count() == 1,
                "{text:?}"
            );
        } else {
            // Greeted after the delay, then its EHLO answered.
            assert!(text.starts_with(want), "{text:?}");
            assert!(text.contains("\r\n250-"), "{text:?}");
        }
        // A patient client is greeted and served.
        let mut c = crate::harness::Client::connect(smtp);
        assert_eq!(c.reply().0, 220);
        assert_eq!(c.cmd("EHLO patient.test").0, 250);
        assert_eq!(c.cmd("QUIT").0, 221);
        let logs = {
            let mut relay = relay;
            relay.stop_and_logs()
        };
        assert!(logs.contains("early talker"), "{logs}");
    }
}
