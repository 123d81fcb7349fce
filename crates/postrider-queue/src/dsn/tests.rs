use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::*;
use crate::ClientInfo;

const RECEIVED_MS: u64 = 1_700_000_000_000; // Tue, 14 Nov 2023 22:13:20 +0000

fn envelope(mail_from: &str) -> Envelope {
    Envelope {
        received_at_unix_ms: RECEIVED_MS,
        mail_from: mail_from.into(),
        smtputf8: false,
        body: None,
        ret: None,
        envid: None,
        size_param: None,
        recipients: vec![rcpt("bob@example.net"), rcpt("carol@example.net")],
        client: ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 2525,
            listener: "submission".into(),
            helo: "client.example.org".into(),
            tls: None,
            authenticated: None,
            reverse_dns: None,
            session: None,
            server: None,
            sni: None,
        },
        quarantine: None,
        spf: None,
        require_tls: false,
    }
}

fn rcpt(address: &str) -> Recipient {
    Recipient {
        address: address.into(),
        notify: None,
        orcpt: None,
    }
}

fn notify(keywords: &[&str]) -> Recipient {
    Recipient {
        notify: Some(postrider_smtp::command::Notify::from_keywords(keywords)),
        ..rcpt("bob@example.net")
    }
}

fn failed(address: &str, diagnostic: &str) -> DsnRecipient {
    DsnRecipient {
        recipient: rcpt(address),
        status: "5.1.1".into(),
        diagnostic: Some(diagnostic.into()),
        remote_mta: Some("mx.example.net".into()),
    }
}

const ORIGINAL: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Subject: Lunch\r\n\
Message-ID: <lunch-1@example.org>\r\n\
\r\n\
Shall we have lunch on Friday?\r\n";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(RECEIVED_MS + 3_600_000)
}

/// Asserts the wire rules: CRLF only, no line over 998 octets.
fn assert_wire_clean(dsn: &[u8]) {
    assert!(dsn.ends_with(b"\r\n"), "must end with CRLF");
    for (i, &b) in dsn.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(dsn.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert_eq!(dsn.get(i.wrapping_sub(1)), Some(&b'\r'), "bare LF at {i}");
        }
    }
    for (n, line) in dsn.split(|&b| b == b'\n').enumerate() {
        let len = line.strip_suffix(b"\r").unwrap_or(line).len();
        assert!(len <= MAX_LINE, "line {n} is {len} octets");
    }
}

fn text(dsn: &[u8]) -> &str {
    std::str::from_utf8(dsn).unwrap()
}

/// The multipart boundary of a DSN.
fn boundary(dsn: &str) -> &str {
    let marker = "boundary=\"";
    let at = dsn.find(marker).unwrap() + marker.len();
    &dsn[at..at + dsn[at..].find('"').unwrap()]
}

/// The body of the part whose Content-Type starts with `ctype`.
fn part_body<'a>(dsn: &'a str, ctype: &str) -> &'a str {
    let start = dsn
        .find(&format!("Content-Type: {ctype}"))
        .unwrap_or_else(|| panic!("no {ctype} part in\n{dsn}"));
    let body = &dsn[start..];
    let body = &body[body.find("\r\n\r\n").unwrap() + 4..];
    &body[..body.find(&format!("\r\n--{}", boundary(dsn))).unwrap()]
}

#[test]
fn wants_dsn_follows_notify_and_the_null_sender() {
    let env = envelope("alice@example.org");
    let table: &[(Recipient, bool, bool)] = &[
        (rcpt("bob@example.net"), true, true),
        (notify(&["NEVER"]), false, false),
        (notify(&["FAILURE"]), true, false),
        (notify(&["DELAY"]), false, true),
        (notify(&["SUCCESS"]), false, false),
        (notify(&["SUCCESS", "FAILURE", "DELAY"]), true, true),
        (notify(&["failure", "delay"]), true, true),
        (notify(&[]), false, false),
    ];
    for (recipient, failure, delay) in table {
        assert_eq!(
            wants_dsn(&env, recipient, DsnKind::Failure),
            *failure,
            "failure, {:?}",
            recipient.notify
        );
        assert_eq!(
            wants_dsn(&env, recipient, DsnKind::Delay),
            *delay,
            "delay, {:?}",
            recipient.notify
        );
    }
    // Never to the null sender, whatever NOTIFY says.
    for null in ["", "<>", " "] {
        let env = envelope(null);
        for recipient in [rcpt("bob@example.net"), notify(&["FAILURE", "DELAY"])] {
            assert!(!wants_dsn(&env, &recipient, DsnKind::Failure));
            assert!(!wants_dsn(&env, &recipient, DsnKind::Delay));
        }
    }
}

#[test]
fn failure_dsn_structure() {
    let mut env = envelope("alice@example.org");
    env.envid = Some("QQ314159".into());
    let mut r1 = failed(
        "bob@example.net",
        "550 5.1.1 <bob@example.net>: no such user",
    );
    r1.recipient.orcpt = Some("rfc822;Bob@Example.NET".into());
    let r2 = DsnRecipient {
        recipient: rcpt("carol@example.net"),
        status: "5.4.7".into(),
        diagnostic: None,
        remote_mta: None,
    };
    let dsn = build_dsn(
        "mx1.example.org",
        &env,
        ORIGINAL,
        &[r1, r2],
        DsnKind::Failure,
        now(),
    );
    assert_wire_clean(&dsn);
    let s = text(&dsn);
    let head = &s[..s.find("\r\n\r\n").unwrap() + 2];
    for line in [
        "From: Mail Delivery System <MAILER-DAEMON@mx1.example.org>\r\n",
        "To: <alice@example.org>\r\n",
        "Subject: Undelivered Mail Returned to Sender\r\n",
        "Date: Tue, 14 Nov 2023 23:13:20 +0000\r\n",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Content-Transfer-Encoding: 7bit\r\n",
    ] {
        assert!(head.contains(line), "{line:?} missing from\n{head}");
    }
    assert!(head.contains("Message-ID: <") && head.contains("@mx1.example.org>\r\n"));

    let status = part_body(s, "message/delivery-status");
    let expected = "Reporting-MTA: dns; mx1.example.org\r\n\
        Original-Envelope-Id: QQ314159\r\n\
        Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
        \r\n\
        Original-Recipient: rfc822; Bob@Example.NET\r\n\
        Final-Recipient: rfc822; bob@example.net\r\n\
        Action: failed\r\n\
        Status: 5.1.1\r\n\
        Remote-MTA: dns; mx.example.net\r\n\
        Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: no such user\r\n\
        \r\n\
        Final-Recipient: rfc822; carol@example.net\r\n\
        Action: failed\r\n\
        Status: 5.4.7\r\n";
    assert_eq!(status, expected);
    assert!(!status.contains("Will-Retry-Until"));

    // The whole original comes back, byte for byte.
    let returned = part_body(s, "message/rfc822");
    assert_eq!(returned.as_bytes(), ORIGINAL);

    let human = part_body(s, "text/plain");
    assert!(human.contains("could not be delivered"));
    assert!(human.contains("<bob@example.net>: host mx.example.net said: 550 5.1.1"));
    assert!(human.contains("<carol@example.net>: status 5.4.7"));

    // Three parts, in order, then the close delimiter.
    let text_at = s.find("Content-Type: text/plain").unwrap();
    let status_at = s.find("Content-Type: message/delivery-status").unwrap();
    let original_at = s.find("Content-Type: message/rfc822").unwrap();
    assert!(text_at < status_at && status_at < original_at);
}

#[test]
fn mail_parser_reads_the_report() {
    let env = envelope("alice@example.org");
    let dsn = build_dsn(
        "mx1.example.org",
        &env,
        ORIGINAL,
        &[failed("bob@example.net", "550 5.1.1 no such user")],
        DsnKind::Failure,
        now(),
    );
    let message = MessageParser::default().parse(&dsn).unwrap();
    assert_eq!(
        message.subject(),
        Some("Undelivered Mail Returned to Sender")
    );
    let from = message.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("MAILER-DAEMON@mx1.example.org"));
    assert_eq!(
        message.to().unwrap().first().unwrap().address(),
        Some("alice@example.org")
    );
    let ct = message.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert!(message.date().is_some());
    assert!(message.message_id().is_some());

    let PartType::Multipart(children) = &message.root_part().body else {
        panic!("root is not multipart");
    };
    assert_eq!(children.len(), 3);
    let part = |i: usize| &message.parts[children[i] as usize];
    let types: Vec<String> = (0..3)
        .map(|i| {
            let ct = part(i).content_type().unwrap();
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        types,
        ["text/plain", "message/delivery-status", "message/rfc822"]
    );
    assert!(
        part(0)
            .text_contents()
            .unwrap()
            .contains("could not be delivered")
    );
    let status = String::from_utf8_lossy(part(1).contents()).into_owned();
    assert!(status.contains("Final-Recipient: rfc822; bob@example.net\r\n"));
    assert!(status.contains("Action: failed\r\n"));
    let inner = part(2)
        .message()
        .expect("message/rfc822 is parsed as a message");
    assert_eq!(inner.subject(), Some("Lunch"));
    assert_eq!(inner.message_id(), Some("lunch-1@example.org"));
    assert_eq!(
        inner.body_text(0).as_deref(),
        Some("Shall we have lunch on Friday?\r\n")
    );
}

#[test]
fn python_email_package_reads_the_report() {
    let mut env = envelope("alice@example.org");
    env.envid = Some("ENV-1".into());
    let mut r1 = failed("bob@example.net", "550 5.1.1 no such user");
    r1.recipient.orcpt = Some("rfc822;bob@example.net".into());
    let r2 = DsnRecipient {
        status: "5.2.2".into(),
        diagnostic: Some(format!("552 5.2.2 mailbox full {}", "x".repeat(300))),
        ..failed("carol@example.net", "")
    };
    let dsn = build_dsn(
        "mx1.example.org",
        &env,
        ORIGINAL,
        &[r1, r2],
        DsnKind::Failure,
        now(),
    );

    let script = r#"
import email, json, sys
msg = email.message_from_bytes(sys.stdin.buffer.read())
parts = msg.get_payload()
status = parts[1]
blocks = status.get_payload()
out = {
    "defects": [str(d) for d in msg.defects],
    "type": msg.get_content_type(),
    "report_type": msg.get_param("report-type"),
    "subject": msg["Subject"],
    "auto": msg["Auto-Submitted"],
    "types": [p.get_content_type() for p in parts],
    "per_message": {k: str(v) for k, v in blocks[0].items()},
    "recipients": [{k: " ".join(str(v).split()) for k, v in b.items()} for b in blocks[1:]],
    "original_subject": parts[2].get_payload()[0]["Subject"],
}
print(json.dumps(out))
"#;
    let child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("python3 not installed; skipping the Python cross-check");
            return;
        }
        Err(e) => panic!("cannot run python3: {e}"),
    };
    child.stdin.take().unwrap().write_all(&dsn).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(v["defects"], serde_json::json!([]));
    assert_eq!(v["type"], "multipart/report");
    assert_eq!(v["report_type"], "delivery-status");
    assert_eq!(v["subject"], "Undelivered Mail Returned to Sender");
    assert_eq!(
        v["types"],
        serde_json::json!(["text/plain", "message/delivery-status", "message/rfc822"])
    );
    assert_eq!(v["per_message"]["Reporting-MTA"], "dns; mx1.example.org");
    assert_eq!(v["per_message"]["Original-Envelope-Id"], "ENV-1");
    let recipients = v["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 2);
    assert_eq!(recipients[0]["Final-Recipient"], "rfc822; bob@example.net");
    assert_eq!(
        recipients[0]["Original-Recipient"],
        "rfc822; bob@example.net"
    );
    assert_eq!(recipients[0]["Action"], "failed");
    assert_eq!(recipients[0]["Status"], "5.1.1");
    assert_eq!(recipients[0]["Remote-MTA"], "dns; mx.example.net");
    assert_eq!(
        recipients[0]["Diagnostic-Code"],
        "smtp; 550 5.1.1 no such user"
    );
    assert_eq!(
        recipients[1]["Final-Recipient"],
        "rfc822; carol@example.net"
    );
    assert_eq!(recipients[1]["Status"], "5.2.2");
    // The long diagnostic was folded, and unfolds to the original text.
    assert_eq!(
        recipients[1]["Diagnostic-Code"],
        format!("smtp; 552 5.2.2 mailbox full {}", "x".repeat(300))
    );
    assert_eq!(v["original_subject"], "Lunch");
}

#[test]
fn ret_hdrs_returns_only_the_header_section() {
    let mut env = envelope("alice@example.org");
    env.ret = Some(postrider_smtp::command::Ret::Hdrs);
    let dsn = build_dsn(
        "mx1.example.org",
        &env,
        ORIGINAL,
        &[failed("bob@example.net", "550 no")],
        DsnKind::Failure,
        now(),
    );
    assert_wire_clean(&dsn);
    let s = text(&dsn);
    assert!(!s.contains("message/rfc822"));
    let headers = part_body(s, "text/rfc822-headers");
    assert!(headers.starts_with("From: Alice <alice@example.org>\r\n"));
    assert!(headers.ends_with("Message-ID: <lunch-1@example.org>\r\n"));
    assert!(!s.contains("Shall we have lunch"));

    // RET=FULL and no RET return everything.
    env.ret = Some(postrider_smtp::command::Ret::Full);
    let full = build_dsn("h", &env, ORIGINAL, &[], DsnKind::Failure, now());
    assert!(text(&full).contains("Shall we have lunch"));
}

#[test]
fn a_large_original_comes_back_as_headers_only() {
    let env = envelope("alice@example.org");
    let mut big = ORIGINAL.to_vec();
    big.extend_from_slice(&b"0123456789abcdef0123456789abcdef\r\n".repeat(100));
    let options = DsnOptions {
        max_returned_len: 1000,
        ..DsnOptions::default()
    };
    let dsn = build_dsn_with(
        "h",
        &env,
        &big,
        &[failed("bob@example.net", "550 no")],
        DsnKind::Failure,
        now(),
        &options,
    );
    let s = text(&dsn);
    assert!(s.contains("Content-Type: text/rfc822-headers"));
    assert!(!s.contains("0123456789abcdef"));
    assert!(part_body(s, "text/plain").contains("too large"));
}

#[test]
fn delay_dsn() {
    let env = envelope("alice@example.org");
    let r = DsnRecipient {
        status: "4.4.1".into(),
        diagnostic: Some("connect to mx.example.net: Connection refused".into()),
        remote_mta: None,
        recipient: rcpt("bob@example.net"),
    };
    let dsn = build_dsn(
        "mx1.example.org",
        &env,
        ORIGINAL,
        std::slice::from_ref(&r),
        DsnKind::Delay,
        now(),
    );
    assert_wire_clean(&dsn);
    let s = text(&dsn);
    assert!(s.contains("Subject: Delayed Mail (still being retried)\r\n"));
    let status = part_body(s, "message/delivery-status");
    assert!(status.contains("Action: delayed\r\n"));
    assert!(status.contains("Status: 4.4.1\r\n"));
    // Arrival plus the default five days.
    assert!(status.contains("Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n"));
    assert!(!status.contains("Remote-MTA"));
    // A warning returns the headers only.
    assert!(s.contains("Content-Type: text/rfc822-headers"));
    assert!(!s.contains("Shall we have lunch"));
    assert!(part_body(s, "text/plain").contains("WARNING ONLY"));

    let options = DsnOptions {
        will_retry_until: Some(UNIX_EPOCH + Duration::from_millis(RECEIVED_MS + 86_400_000)),
        ..DsnOptions::default()
    };
    let dsn = build_dsn_with("h", &env, ORIGINAL, &[r], DsnKind::Delay, now(), &options);
    assert!(text(&dsn).contains("Will-Retry-Until: Wed, 15 Nov 2023 22:13:20 +0000\r\n"));
}

#[test]
fn long_and_hostile_diagnostics_stay_within_the_line_limit() {
    let env = envelope("alice@example.org");
    let words = "word ".repeat(400);
    let token = "y".repeat(3000);
    let multi = "550-5.1.1 first line\r\n550 5.1.1 second line\nwith bare LF\rand CR";
    let recipients = [
        failed("a@example.net", &format!("550 5.1.1 {words}")),
        failed("b@example.net", &format!("550 5.1.1 {token} end")),
        failed("c@example.net", multi),
    ];
    let dsn = build_dsn("h", &env, ORIGINAL, &recipients, DsnKind::Failure, now());
    assert_wire_clean(&dsn);
    let s = text(&dsn);
    // Folded: continuation lines start with a space, and no field line is long.
    let status = part_body(s, "message/delivery-status");
    assert!(
        status
            .lines()
            .all(|l| l.len() <= 78 || !l.contains(' ') || l.starts_with(' '))
    );
    assert!(status.contains("Diagnostic-Code: smtp; 550 5.1.1 word word"));
    // The unbreakable token is cut into pieces, none over the limit.
    assert!(status.contains(&"y".repeat(900)));
    assert!(!status.contains(&"y".repeat(999)));
    // Line breaks in a reply cannot forge fields.
    let unfolded = status.replace("\r\n ", " ");
    assert!(
        unfolded.contains("smtp; 550-5.1.1 first line 550 5.1.1 second line with bare LF and CR")
    );
    assert!(!status.contains("\r\nwith bare LF"));
}

#[test]
fn the_returned_message_is_normalized() {
    let env = envelope("alice@example.org");
    let mut original = b"Subject: long\nX-Long: ".to_vec();
    original.extend_from_slice(&[b'h'; 1500]);
    original.extend_from_slice(b"\n\nbody line\rcr only\n");
    original.extend_from_slice(&[b'b'; 2500]);
    let dsn = build_dsn("h", &env, &original, &[], DsnKind::Failure, now());
    assert_wire_clean(&dsn);
    let s = text(&dsn);
    let returned = part_body(s, "message/rfc822");
    assert!(returned.starts_with("Subject: long\r\nX-Long: hhh"));
    // The long header line is folded, so it stays one field.
    assert!(returned.contains("hhh\r\n hhh"));
    assert!(returned.contains("\r\n\r\nbody line\r\ncr only\r\nbbb"));
    assert_eq!(returned.matches('b').count(), 2500 + 2);
    // The message still parses with its header intact.
    let message = MessageParser::default().parse(&dsn).unwrap();
    let PartType::Multipart(children) = &message.root_part().body else {
        panic!("root is not multipart");
    };
    let inner = message.parts[children[2] as usize].message().unwrap();
    assert_eq!(inner.subject(), Some("long"));
}

#[test]
fn the_boundary_never_occurs_in_the_parts() {
    // An original that quotes a previous DSN's boundary cannot break the new one.
    let env = envelope("alice@example.org");
    let first = build_dsn("h", &env, ORIGINAL, &[], DsnKind::Failure, now());
    let second = build_dsn("h", &env, &first, &[], DsnKind::Failure, now());
    let s = text(&second);
    let boundary = boundary(s);
    assert_eq!(s.matches(&format!("--{boundary}\r\n")).count(), 3);
    assert_eq!(s.matches(&format!("--{boundary}--\r\n")).count(), 1);
    assert_wire_clean(&second);
}

#[test]
fn smtputf8_addresses_use_the_utf8_address_type() {
    let mut env = envelope("алиса@пример.рф");
    env.smtputf8 = true;
    let mut r = failed("用户@例子.中国", "550 5.1.1 用户 unknown");
    r.recipient.orcpt = Some("utf-8;用户@例子.中国".into());
    let recipients = [r, failed("bob@example.net", "550 5.1.1 no")];
    let original = "From: алиса@пример.рф\r\nSubject: привет\r\n\r\nтекст\r\n".as_bytes();
    assert!(dsn_needs_smtputf8(&env, original, &recipients));
    let dsn = build_dsn(
        "mx1.example.org",
        &env,
        original,
        &recipients,
        DsnKind::Failure,
        now(),
    );
    assert_wire_clean(&dsn);
    let s = text(&dsn);
    assert!(s.contains("To: <алиса@пример.рф>\r\n"));
    assert!(s.contains("Content-Transfer-Encoding: 8bit\r\n"));
    let status = part_body(s, "message/global-delivery-status");
    assert!(status.contains("Original-Recipient: utf-8; 用户@例子.中国\r\n"));
    assert!(status.contains("Final-Recipient: utf-8; 用户@例子.中国\r\n"));
    assert!(status.contains("Final-Recipient: rfc822; bob@example.net\r\n"));
    assert!(part_body(s, "message/global\r\n").contains("Subject: привет"));

    let message = MessageParser::default().parse(&dsn).unwrap();
    assert_eq!(
        message.to().unwrap().first().unwrap().address(),
        Some("алиса@пример.рф")
    );

    // ASCII everything: no SMTPUTF8 needed, plain delivery-status.
    let ascii = envelope("alice@example.org");
    let plain = [failed("bob@example.net", "550 no")];
    assert!(!dsn_needs_smtputf8(&ascii, ORIGINAL, &plain));
    let dsn = build_dsn("h", &ascii, ORIGINAL, &plain, DsnKind::Failure, now());
    assert!(dsn.is_ascii());
    assert!(text(&dsn).contains("Content-Type: message/delivery-status\r\n"));
}

#[test]
fn helpers() {
    assert_eq!(
        header_section(b"A: 1\r\nB: 2\r\n\r\nbody"),
        b"A: 1\r\nB: 2\r\n"
    );
    assert_eq!(header_section(b"A: 1\nB: 2\n\nbody"), b"A: 1\nB: 2\n");
    assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
    assert_eq!(header_section(b"\r\nbody"), b"");
    assert_eq!(header_section(b""), b"");
    assert_eq!(normalize(b"a\nb\rc\r\nd", 0), b"a\r\nb\r\nc\r\nd\r\n");
    assert_eq!(normalize(b"", 0), b"");
    // Never split inside a UTF-8 sequence when breaking a line.
    let line = "é".repeat(600);
    let out = normalize(line.as_bytes(), 0);
    assert!(std::str::from_utf8(&out).is_ok());
    assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    assert!(rfc5322_date(u64::MAX).ends_with("+0000"));
    let lines = wrap(&format!("Name: {}", "ab ".repeat(40)), " ");
    assert!(lines.len() > 1 && lines.iter().all(|l| l.len() <= SOFT_WRAP));
    assert!(lines[1..].iter().all(|l| l.starts_with(" ab")));
    assert_eq!(lines.concat().matches("ab").count(), 40);
}
