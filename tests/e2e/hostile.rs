//! Hostile clients: deadlines that bound whole units of work (a client trickling one byte at
//! a time), password guessing across connections, a flood of AUTH attempts, and AUTH PLAIN
//! with someone else's authorization identity.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{
    ADMIN, Client, Relay, auth_relay, config, enhanced, python, read_spool, scrape, tls_listener,
    value,
};

/// Sends `bytes` one at a time, `every` apart, until the relay closes the connection or the
/// bytes run out; returns when it stopped.
fn trickle(c: &mut Client, bytes: &[u8], every: Duration) -> Instant {
    for b in bytes {
        if c.try_send(std::slice::from_ref(b)).is_err() {
            break;
        }
        std::thread::sleep(every);
        if c.has_data() {
            break;
        }
    }
    Instant::now()
}

/// The (code, enhanced code) of the next reply.
fn reply(c: &mut Client) -> (u16, String) {
    let (code, lines) = c.reply();
    (code, enhanced(&lines[0]))
}

#[test]
fn a_client_trickling_a_command_line_is_closed_at_the_command_deadline() {
    let relay = Relay::builder(&config("[timeouts]\ncommand = 3\n")).start();
    let mut c = relay.client();
    let start = Instant::now();
    // 60 bytes at 4 a second would take 15 s; each arrives well within a per-read timeout.
    let line = format!("EHLO {}\r\n", "t".repeat(53));
    trickle(&mut c, line.as_bytes(), Duration::from_millis(250));
    assert_eq!(reply(&mut c), (421, "4.4.2".into()));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    assert!(c.is_closed());
}

#[test]
fn a_client_trickling_message_content_runs_out_of_its_data_budget() {
    let cfg = config(&format!(
        "{ADMIN}[relay]\nlocal_domains = [\"relay.test\"]\n\
         [timeouts]\ndata_block = 3\nmin_data_rate = 500\n"
    ));
    let relay = Relay::builder(&cfg).start();
    let mut c = in_data(&relay);
    let start = Instant::now();
    // 4 octets a second earn 8 ms a second: the 3 s budget runs out after about 3 s.
    trickle(&mut c, &[b'x'; 60], Duration::from_millis(250));
    assert_eq!(reply(&mut c), (421, "4.4.2".into()));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    let timeouts = value(
        &scrape(&relay),
        "postrider_session_timeouts_total{listener=\"smtp\",result=\"data\"}",
    );
    assert_eq!(timeouts, 1.0);
}

#[test]
fn a_message_sent_fast_enough_is_still_capped_at_data_total() {
    let cfg = config(
        "[relay]\nlocal_domains = [\"relay.test\"]\n\
         [timeouts]\ndata_block = 60\nmin_data_rate = 1\ndata_total = 3\n",
    );
    let relay = Relay::builder(&cfg).start();
    let mut c = in_data(&relay);
    let start = Instant::now();
    // 50 lines a second of 20 octets: 1,000 octets/s, far above min_data_rate.
    let body = "a line of content.\r\n".repeat(1000);
    for chunk in body.as_bytes().chunks(20) {
        if c.try_send(chunk).is_err() || c.has_data() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(reply(&mut c), (421, "4.4.2".into()));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
}

#[test]
fn a_client_trickling_a_tls_handshake_is_closed_at_the_handshake_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!(
        "spool_dir = \"spool\"\n[timeouts]\ntls_handshake = 2\n{}",
        tls_listener(tmp.path(), "submissions", "submissions")
    );
    let relay = Relay::builder(&cfg).in_tmp(tmp).start();
    let mut s = TcpStream::connect(relay.addr("submissions")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let start = Instant::now();
    // A TLS handshake record header announcing 512 octets, then the octets one by one.
    let mut record = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    record.extend([0u8; 512]);
    let mut closed = false;
    for b in &record {
        if s.write_all(std::slice::from_ref(b)).is_err() || is_closed(&mut s) {
            closed = true;
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    let took = start.elapsed();
    assert!(closed, "still open after {took:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
}

/// Whether the peer closed or reset the connection (waits up to the read timeout).
fn is_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Python: AUTH over STARTTLS on the submission listener. Modes:
/// `plain PORT AUTHZID USER PASSWORD` prints the reply code and enhanced code of one AUTH PLAIN,
/// `send PORT AUTHZID USER PASSWORD` authenticates so, then sends one message,
/// `flood PORT N` runs N concurrent connections each trying a wrong password and prints how
/// many got each reply code, while a further connection's EHLO must be answered within 1 s.
const PY_AUTH: &str = r#"
import base64, smtplib, ssl, sys, threading, time
mode, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def session():
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=60)
    s.starttls(context=ctx)
    s.ehlo()
    return s

def plain(s, authzid, user, password):
    token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
    code, text = s.docmd("AUTH", "PLAIN " + token)
    return code, text.decode().split(" ")[0]

if mode == "plain":
    s = session()
    code, enh = plain(s, *sys.argv[3:6])
    print(code, enh)
elif mode == "repeat":
    # Wrong passwords on one connection until it closes; each answer's code, then "closed".
    s = session()
    codes = []
    for i in range(int(sys.argv[3])):
        try:
            code, _ = plain(s, "", "alice", "wrong%d" % i)
        except smtplib.SMTPServerDisconnected:
            codes.append("closed")
            break
        codes.append(str(code))
    else:
        try:
            s.noop()
        except smtplib.SMTPServerDisconnected:
            codes.append("closed")
    print(" ".join(codes))
elif mode == "send":
    s = session()
    code, enh = plain(s, *sys.argv[3:6])
    assert code == 235, (code, enh)
    s.sendmail("postmaster@relay.test", ["x@elsewhere.test"], b"Subject: as\r\n\r\nacting as\r\n")
    print("sent")
elif mode == "flood":
    n = int(sys.argv[3])
    codes, lock = {}, threading.Lock()
    barrier = threading.Barrier(n + 1)
    def attempt():
        try:
            s = session()
            barrier.wait()
            code, _ = plain(s, "", "alice", "wrong")
        except Exception as e:
            code = type(e).__name__
            try:
                barrier.abort()
            except Exception:
                pass
        with lock:
            codes[code] = codes.get(code, 0) + 1
    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    # While the checks run, another client is answered at once.
    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=10) as s:
        code, _ = s.ehlo()
        assert code == 250, code
    ehlo = time.monotonic() - start
    for t in threads:
        t.join()
    print(" ".join(f"{k}={v}" for k, v in sorted(codes.items(), key=str)), f"ehlo={ehlo:.3f}")
"#;

/// A relay with a `submission` listener (STARTTLS) and user alice / s3cret, plus `extra`.
fn submission_relay(extra: &str) -> Relay {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let cfg = format!(
        "hostname = \"mx.relay.test\"\nspool_dir = \"spool\"\n{ADMIN}[dns]\n\
         nameservers = [\"127.0.0.1:9\"]\n[authentication]\nverify = false\n{}{}{extra}",
        tls_listener(&dir, "submission", "submission"),
        auth_relay(&dir, "relay.test"),
    );
    Relay::builder(&cfg).in_tmp(tmp).start()
}

fn auth_plain(relay: &Relay, authzid: &str, user: &str, password: &str) -> String {
    let port = relay.addr("submission").port().to_string();
    python(PY_AUTH, &["plain", &port, authzid, user, password])
        .trim()
        .to_owned()
}

#[test]
fn auth_plain_as_another_identity_is_refused_unless_allowed() {
    let mut relay =
        submission_relay("[smtp_auth]\nact_as = { alice = [\"postmaster@relay.test\"] }\n");
    // RFC 4616 §2: alice's password does not make her root.
    assert_eq!(auth_plain(&relay, "root", "alice", "s3cret"), "535 5.7.8");
    assert_eq!(auth_plain(&relay, "alice", "alice", "s3cret"), "235 2.7.0");
    assert_eq!(auth_plain(&relay, "", "alice", "s3cret"), "235 2.7.0");
    // Allowed by act_as: the session acts as postmaster from then on.
    let port = relay.addr("submission").port().to_string();
    python(
        PY_AUTH,
        &["send", &port, "postmaster@relay.test", "alice", "s3cret"],
    );
    let logs = relay.stop_and_logs();
    let spool = read_spool(&relay.dir.join("spool"));
    assert_eq!(spool.len(), 1);
    assert_eq!(
        spool[0].0.client.authenticated.as_deref(),
        Some("postmaster@relay.test")
    );
    assert!(
        logs.contains("user=alice as_user=postmaster@relay.test"),
        "the log names both identities:\n{logs}"
    );
}

#[test]
fn a_connection_is_closed_after_its_failed_authentications() {
    let relay = submission_relay("[smtp_auth]\nsession_failures = 3\ndelay_after = 100\n");
    let port = relay.addr("submission").port().to_string();
    assert_eq!(
        python(PY_AUTH, &["repeat", &port, "5"]).trim(),
        "535 535 421 closed"
    );
    // Another connection starts its own count (the client lockout is further away).
    assert_eq!(auth_plain(&relay, "", "alice", "s3cret"), "235 2.7.0");
}

#[test]
fn password_guessing_is_delayed_then_locked_across_connections_until_the_window_ends() {
    let relay = submission_relay(
        "[smtp_auth]\nfailure_window = 4\ndelay_after = 2\ndelay_ms = 300\n\
         max_delay_ms = 300\nlockout_client = 3\nlockout_user = 100\n",
    );
    assert_eq!(auth_plain(&relay, "", "alice", "guess1"), "535 5.7.8");
    assert_eq!(auth_plain(&relay, "", "alice", "guess2"), "535 5.7.8");
    let start = Instant::now();
    assert_eq!(auth_plain(&relay, "", "alice", "guess3"), "535 5.7.8");
    let delayed = start.elapsed();
    // Three failures from this client: locked, on a new connection, right password or not.
    assert_eq!(auth_plain(&relay, "", "bob", "guess4"), "454 4.7.0");
    assert_eq!(auth_plain(&relay, "", "alice", "s3cret"), "454 4.7.0");
    let samples = scrape(&relay);
    let attempts = |result: &str| {
        value(
            &samples,
            &format!(
                "postrider_auth_attempts_total{{listener=\"submission\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(attempts("failure"), 3.0);
    assert_eq!(attempts("delayed"), 1.0);
    assert_eq!(attempts("locked"), 2.0);
    assert!(delayed >= Duration::from_millis(300), "{delayed:?}");
    // After the window, the right password works at once.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(auth_plain(&relay, "", "alice", "s3cret"), "235 2.7.0");
}

#[test]
fn a_flood_of_auth_attempts_waits_or_gets_454_and_other_clients_are_answered() {
    let relay = submission_relay(
        "[smtp_auth]\nmax_concurrent_checks = 2\nmax_waiting_checks = 4\nlockout_client = 0\n\
         lockout_user = 0\ndelay_after = 1000\n[limits]\nmax_connections_per_ip = 200\n",
    );
    let port = relay.addr("submission").port().to_string();
    let out = python(PY_AUTH, &["flood", &port, "100"]);
    let counts: std::collections::HashMap<&str, &str> = out
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let count = |code: &str| -> u32 { counts.get(code).map_or(0, |n| n.parse().unwrap()) };
    // At most 2 running + 4 waiting at any time; every attempt got an answer.
    assert_eq!(count("535") + count("454"), 100, "{out}");
    assert!(count("454") >= 50, "{out}");
    assert!(count("535") >= 6, "{out}");
    let ehlo: f64 = counts["ehlo"].parse().unwrap();
    assert!(ehlo < 1.0, "EHLO took {ehlo} s during the flood");
    // Memory: two checks at a time, not a hundred.
    let hwm = status_kib(relay.pid(), "VmHWM");
    assert!(hwm < 300 * 1024, "peak RSS {hwm} KiB");
}

/// A `/proc/PID/status` field in KiB: `VmHWM` (peak resident set) or `VmRSS` (now).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The size of the files a process has open in a spool's `tmp/` (unnamed files included).
fn spilled_bytes(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().contains("/spool/tmp/"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|meta| meta.len())
        .sum()
}

/// A client that has sent EHLO, MAIL, RCPT and DATA (354 read).
fn in_data(relay: &Relay) -> Client {
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c
}

#[test]
fn messages_being_received_are_kept_out_of_memory_and_arrive_whole() {
    const CLIENTS: usize = 10;
    const BODY: usize = 10 * 1024 * 1024;
    let mut relay = Relay::builder(&config("[relay]\nlocal_domains = [\"relay.test\"]\n")).start();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    let whole_lines = |n: usize| n / line.len() * line.len();
    let body: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(whole_lines(BODY))
        .collect();
    let three = whole_lines(3 * 1024 * 1024);
    let before = status_kib(relay.pid(), "VmRSS");
    // Ten clients each send 10 MiB of content and stop before the final dot.
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| in_data(&relay)).collect();
    for c in &mut clients {
        c.send(b"Subject: large\r\n\r\n");
        c.send(&body);
    }
    // Every session has its content, but in unnamed files in the spool's tmp/, beyond the
    // 32 KiB kept in memory.
    let pid = relay.pid();
    let want = (CLIENTS * (body.len() - 128 * 1024)) as u64;
    crate::peers::wait_for("the content in files", Duration::from_secs(60), || {
        spilled_bytes(pid) >= want
    });
    let during = status_kib(pid, "VmRSS");
    assert!(
        during < before + 40 * 1024,
        "RSS grew from {before} KiB to {during} KiB with {CLIENTS} x 10 MiB arriving"
    );
    // One finishes: the message arrives whole, from its file.
    let first = &mut clients[0];
    first.send(b".\r\n");
    let (code, _) = first.reply();
    assert_eq!(code, 250);
    // A BDAT message in chunks larger than what stays in memory arrives whole too.
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@relay.test>").0, 250);
    let head = b"Subject: chunked\r\n\r\n";
    c.send(format!("BDAT {}\r\n", head.len()).as_bytes());
    c.send(head);
    assert_eq!(c.reply().0, 250);
    for (i, chunk) in body[..three].chunks(1024 * 1024).enumerate() {
        let last = if i == 2 { " LAST" } else { "" };
        c.send(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        c.send(chunk);
        assert_eq!(c.reply().0, 250);
    }
    drop(clients);
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 2);
    for (_, message) in &spool {
        let text = String::from_utf8_lossy(message);
        let (want_subject, want_body) = if text.contains("Subject: large") {
            ("Subject: large\r\n\r\n", &body[..])
        } else {
            ("Subject: chunked\r\n\r\n", &body[..three])
        };
        let at = message
            .windows(want_subject.len())
            .position(|w| w == want_subject.as_bytes())
            .unwrap();
        assert_eq!(
            &message[at + want_subject.len()..],
            want_body,
            "{want_subject:?}: the stored body differs"
        );
    }
}

#[test]
fn failed_authentications_counted_in_redis_lock_the_client_out_at_every_relay() {
    let dir = tempfile::tempdir().unwrap();
    let redis = postrider_testkit::RedisServer::start(dir.path());
    let extra = format!(
        "[plugins]\nkv_url = \"{}\"\nkv_cluster = \"e2e\"\n\
         [smtp_auth]\ndelay_after = 100\nlockout_client = 3\n",
        redis.url(0)
    );
    let a = submission_relay(&extra);
    let b = submission_relay(&extra);
    assert_eq!(auth_plain(&a, "", "alice", "guess1"), "535 5.7.8");
    assert_eq!(auth_plain(&b, "", "alice", "guess2"), "535 5.7.8");
    assert_eq!(auth_plain(&a, "", "alice", "guess3"), "535 5.7.8");
    // Three failures across the two relays: locked at both.
    assert_eq!(auth_plain(&b, "", "alice", "s3cret"), "454 4.7.0");
    assert_eq!(auth_plain(&a, "", "alice", "s3cret"), "454 4.7.0");
    let keys = redis.command(&["KEYS", "*auth-failures*"]).unwrap();
    assert!(keys.contains("client:127.0.0.1"), "{keys}");
}
