//! STARTTLS, implicit TLS, and AUTH over TLS only.

use std::process::Command;

use crate::harness::{Relay, auth_relay, python, tls_listener};

/// A relay with an `smtp` listener offering STARTTLS, a `submission` and a `submissions`
/// listener, and one user `alice` with password `s3cret`.
fn tls_relay() -> Relay {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let cfg = format!(
        "hostname = \"mx.relay.test\"\nspool_dir = \"spool\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
         [authentication]\nverify = false\n{}{}{}{}",
        tls_listener(&dir, "smtp", "smtp"),
        tls_listener(&dir, "submission", "submission"),
        tls_listener(&dir, "submissions", "submissions"),
        auth_relay(&dir, "relay.test"),
    );
    Relay::builder(&cfg).in_tmp(tmp).start()
}

const PY_TLS: &str = r#"
import smtplib, socket, ssl, sys
mode, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def read_reply(f):
    lines = []
    while True:
        line = f.readline()
        assert line, "connection closed"
        lines.append(line)
        if line[3:4] == b" ":
            return int(line[:3]), lines

if mode == "starttls":
    with smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=20) as s:
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("auth"), s.esmtp_features
        code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")
        assert code == 538, code
        s.starttls(context=ctx)
        s.ehlo()
        assert not s.has_extn("starttls") and "PLAIN" in s.esmtp_features["auth"], s.esmtp_features
        s.sendmail("a@client.test", ["b@relay.test"], b"Subject: tls\r\n\r\nover tls\r\n")
        # Unauthenticated over TLS: still no relaying.
        try:
            s.sendmail("a@client.test", ["x@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
            raise SystemExit("relayed without auth")
        except smtplib.SMTPRecipientsRefused as e:
            assert e.recipients["x@elsewhere.test"][0] == 554
        s.login("alice", "s3cret")
        s.sendmail("alice@relay.test", ["x@elsewhere.test"], b"Subject: relayed\r\n\r\nrelayed\r\n")
elif mode == "inject":
    # CVE-2011-0411: commands pipelined after STARTTLS in plaintext must be discarded.
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = sock.makefile("rb")
    assert read_reply(f)[0] == 220
    sock.sendall(b"EHLO py.test\r\n")
    assert read_reply(f)[0] == 250
    sock.sendall(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n")
    assert read_reply(f)[0] == 220
    tls = ctx.wrap_socket(sock)
    tf = tls.makefile("rb")
    tls.sendall(b"EHLO py.test\r\n")
    code, lines = read_reply(tf)
    assert code == 250 and len(lines) > 1, ("injected command was answered", lines)
    tls.sendall(b"RCPT TO:<b@relay.test>\r\n")
    code, lines = read_reply(tf)
    assert code == 503, ("MAIL from before STARTTLS survived", lines)
elif mode == "submission":
    with smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=20) as s:
        s.starttls(context=ctx)
        s.ehlo()
        code, msg = s.mail("a@client.test")
        assert code == 530, (code, msg)
        s.rset()
        try:
            s.login("alice", "wrong")
            raise SystemExit("bad password accepted")
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535
        s.login("alice", "s3cret")
        s.sendmail("alice@relay.test", ["y@elsewhere.test"], b"Subject: sub\r\n\r\nsubmitted\r\n")
elif mode == "submissions":
    with smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="py.test", timeout=20, context=ctx) as s:
        s.ehlo()
        assert not s.has_extn("starttls"), s.esmtp_features
        s.login("alice", "s3cret")
        s.sendmail("alice@relay.test", ["z@elsewhere.test"], b"Subject: subs\r\n\r\nimplicit\r\n")
print("ok")
"#;

#[test]
fn starttls_auth_submission_and_implicit_tls() {
    let mut relay = tls_relay();
    for (mode, listener) in [
        ("starttls", "smtp"),
        ("inject", "smtp"),
        ("submission", "submission"),
        ("submissions", "submissions"),
    ] {
        python(PY_TLS, &[mode, &relay.addr(listener).port().to_string()]);
    }
    let spool = relay.stop_and_read_spool();
    let mut subjects: Vec<String> = spool
        .iter()
        .map(|(env, msg)| {
            let text = String::from_utf8_lossy(msg);
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("")
                .to_owned();
            assert!(
                env.client
                    .tls
                    .as_deref()
                    .is_some_and(|t| t.starts_with("TLSv1")),
                "{subject}: {:?}",
                env.client.tls
            );
            if subject != "tls" {
                assert_eq!(
                    env.client.authenticated.as_deref(),
                    Some("alice"),
                    "{subject}"
                );
                assert!(text.contains("with ESMTPSA"), "{text}");
            }
            subject
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["relayed", "sub", "subs", "tls"]);
}

#[test]
fn swaks_auth_login_on_submission() {
    let mut relay = tls_relay();
    let addr = relay.addr("submission");
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--tls",
        ])
        .args([
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "s3cret",
        ])
        .args([
            "--from",
            "alice@relay.test",
            "--to",
            "someone@elsewhere.test",
            "--helo",
            "swaks.test",
        ])
        .output()
        .expect("swaks must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks --auth LOGIN failed:\n{text}");
    assert!(text.contains("<~  235 2.7.0"), "{text}");
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    assert_eq!(spool[0].0.client.authenticated.as_deref(), Some("alice"));
}

#[test]
fn swaks_starttls() {
    let mut relay = tls_relay();
    let addr = relay.addr("smtp");
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--tls",
        ])
        .args([
            "--from",
            "swaks@client.test",
            "--to",
            "carol@relay.test",
            "--helo",
            "swaks.test",
        ])
        .output()
        .expect("swaks must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks --tls failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    assert!(spool[0].0.client.tls.is_some());
}
