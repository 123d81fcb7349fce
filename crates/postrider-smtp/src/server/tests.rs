//! Session tests: every command, every error path, smuggling and split-input invariance.

use super::*;

type Decide = Box<dyn FnMut(&Event) -> Option<Reply>>;

/// Drives a session with scripted input, deciding events with `decide`
/// (`None` accepts; Message is queued as "Q1", Auth succeeds, StartTls completes).
struct Harness {
    session: Session,
    events: Vec<Event>,
    output: Vec<u8>,
    decide: Decide,
}

impl Harness {
    fn new(config: SessionConfig, tls: bool) -> Self {
        let mut session = Session::new(config, tls);
        session.greet();
        let mut h = Self {
            session,
            events: Vec::new(),
            output: Vec::new(),
            decide: Box::new(|event| match event {
                Event::Auth { password, .. } if password != "secret" => {
                    Some(reply(535, (5, 7, 8), "Authentication credentials invalid"))
                }
                _ => None,
            }),
        };
        h.pump();
        h
    }

    fn with_decide(mut self, decide: impl FnMut(&Event) -> Option<Reply> + 'static) -> Self {
        self.decide = Box::new(decide);
        self
    }

    fn pump(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match (&event, (self.decide)(&event)) {
                (Event::Close, _) => {}
                (Event::StartTls, _) => {
                    // Pipelined plaintext must be gone before the handshake (CVE-2011-0411).
                    assert_eq!(
                        self.session.buffered_input_len(),
                        0,
                        "input survived STARTTLS"
                    );
                    self.session.tls_established().unwrap();
                }
                (_, Some(r)) => self.session.reject(r).unwrap(),
                (Event::Message(_), None) => self.session.queued("Q1").unwrap(),
                (Event::Auth { username, .. }, None) => {
                    let user = username.clone();
                    self.session.auth_succeeded(&user).unwrap();
                }
                (_, None) => self.session.accept().unwrap(),
            }
            self.events.push(event);
        }
        self.output.extend(self.session.take_output());
    }

    fn feed(&mut self, bytes: &[u8]) -> &mut Self {
        self.session.feed(bytes);
        self.pump();
        self
    }

    /// Replies as "code[ enhanced]", one per (possibly multiline) reply.
    fn replies(&self) -> Vec<String> {
        replies(&self.output)
    }

    fn messages(&self) -> Vec<&Envelope> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(env) => Some(&**env),
                _ => None,
            })
            .collect()
    }
}

fn replies(output: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(output).unwrap();
    assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
    let mut out = Vec::new();
    for line in text.split_terminator("\r\n") {
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        let code = &line[..3];
        let enhanced = line
            .get(4..)
            .and_then(|rest| rest.split(' ').next())
            .filter(|tok| tok.parse::<EnhancedCode>().is_ok());
        out.push(match enhanced {
            Some(e) => format!("{code} {e}"),
            None => code.to_owned(),
        });
    }
    out
}

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        ..SessionConfig::default()
    }
}

fn run(input: &[u8]) -> Harness {
    let mut h = Harness::new(config(), false);
    h.feed(input);
    h
}

fn run_with(config: SessionConfig, tls: bool, input: &[u8]) -> Harness {
    let mut h = Harness::new(config, tls);
    h.feed(input);
    h
}

const TX: &[u8] = b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\nDATA\r\n";

#[test]
fn greeting_and_ehlo_extensions() {
    let h = run(b"EHLO client.test\r\n");
    assert_eq!(
        String::from_utf8(h.output.clone()).unwrap(),
        "220 mx.test ESMTP Postrider\r\n\
         250-mx.test\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n\
         250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n\
         250 LIMITS RCPTMAX=1000\r\n"
    );
    assert_eq!(
        h.events,
        [Event::Helo {
            domain: Domain::Name("client.test".into()),
            extended: true
        }]
    );
    assert!(h.session.is_esmtp());
    assert_eq!(h.session.helo(), Some(&Domain::Name("client.test".into())));

    let cfg = SessionConfig {
        starttls: true,
        auth: true,
        chunking: false,
        ..config()
    };
    let text = String::from_utf8(run_with(cfg.clone(), false, b"EHLO c\r\n").output).unwrap();
    assert!(text.contains("250-STARTTLS\r\n") || text.contains("250 STARTTLS\r\n"));
    assert!(!text.contains("AUTH") && !text.contains("CHUNKING"));
    assert!(!text.contains("REQUIRETLS"));
    let text = String::from_utf8(run_with(cfg, true, b"EHLO c\r\n").output).unwrap();
    assert!(text.contains("250-AUTH PLAIN LOGIN\r\n"));
    assert!(text.ends_with("250 REQUIRETLS\r\n"), "{text}");
    assert!(!text.contains("STARTTLS"));
}

#[test]
fn helo_session() {
    let h = run(b"HELO client.test\r\nMAIL FROM:<a@b> SIZE=10\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=NEVER\r\nRCPT TO:<c@d>\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "555 5.5.4",
            "250 2.1.0",
            "555 5.5.4",
            "250 2.1.5"
        ]
    );
    assert!(h.output.windows(11).any(|w| w == b"250 mx.test"));
    assert!(!h.session.is_esmtp());
}

#[test]
fn full_pipelined_transaction() {
    let mut input = TX.to_vec();
    input.extend_from_slice(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n");
    let h = run(&input);
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    let msgs = h.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].data, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
    assert_eq!(msgs[0].from.to_string(), "<a@b.test>");
    assert_eq!(msgs[0].recipients.len(), 1);
    assert!(
        h.output
            .ends_with(b"250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 Bye\r\n")
    );
    assert_eq!(h.events.last(), Some(&Event::Close));
    assert!(h.session.is_closed());
    assert!(!h.session.wants_input());
}

#[test]
fn sequence_errors() {
    let h = run(b"MAIL FROM:<a@b>\r\nRCPT TO:<a@b>\r\nDATA\r\nBDAT 0 LAST\r\nEHLO c\r\nRCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "503 5.5.1",
            "503 5.5.1",
            "503 5.5.1",
            "503 5.5.1",
            "250",
            "503 5.5.1",
            "503 5.5.1",
            "250 2.1.0",
            "503 5.5.1",
            "503 5.5.1",
        ]
    );
}

#[test]
fn data_after_all_recipients_rejected() {
    let h = Harness::new(config(), false).with_decide(|e| {
        matches!(e, Event::RcptTo { .. }).then(|| reply(550, (5, 1, 1), "No such user"))
    });
    let mut h = h;
    h.feed(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@b>\r\nDATA\r\nBDAT 3 LAST\r\nabcNOOP\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "550 5.1.1",
            "554 5.5.1",
            "554 5.5.1",
            "250 2.0.0"
        ]
    );
}

#[test]
fn size_param_and_recipient_limit() {
    let cfg = SessionConfig {
        max_message_size: 1000,
        max_recipients: 2,
        ..config()
    };
    let h = run_with(
        cfg,
        false,
        b"EHLO c\r\nMAIL FROM:<a@b> SIZE=1001\r\nMAIL FROM:<a@b> SIZE=1000\r\nRCPT TO:<1@b>\r\nRCPT TO:<2@b>\r\nRCPT TO:<3@b>\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "552 5.3.4",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "452 4.5.3"
        ]
    );
    assert_eq!(h.session.transaction().unwrap().recipients.len(), 2);
}

#[test]
fn smtputf8_addresses() {
    let h = run("EHLO c\r\nMAIL FROM:<jö@b>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<jö@b>\r\nRSET\r\nMAIL FROM:<jö@b> SMTPUTF8\r\nRCPT TO:<用户@例子.广告>\r\n".as_bytes());
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "553 5.6.7",
            "250 2.1.0",
            "553 5.6.7",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5"
        ]
    );
}

#[test]
fn simple_commands() {
    let h = run(b"NOOP\r\nRSET\r\nHELP\r\nVRFY bob\r\nEXPN staff\r\nFOO\r\nRSET x\r\nEHLO\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "250 2.0.0",
            "250 2.0.0",
            "214 2.0.0",
            "252 2.5.2",
            "502 5.5.1",
            "500 5.5.2",
            "501 5.5.4",
            "501 5.5.4",
            "221 2.0.0"
        ]
    );
    assert_eq!(h.events, [Event::Close]);
}

#[test]
fn parse_errors_in_mail_and_rcpt() {
    let h = run(b"EHLO c\r\nMAIL FROM:<a b>\r\nMAIL FROM:<a@b> FOO=1\r\nMAIL FROM:<a@b> BODY=BINARYMIME\r\nMAIL FROM: <a@b>\r\nRCPT TO:<x@-y>\r\nRCPT TO:<x@y> ORCPT=bad\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "501 5.1.7",
            "555 5.5.4",
            "555 5.5.4",
            "250 2.1.0",
            "501 5.1.3",
            "501 5.5.4"
        ]
    );
}

#[test]
fn source_routes_and_special_paths() {
    let h = run(b"EHLO c\r\nMAIL FROM:<@relay.test:a@b>\r\nRCPT TO:<@r1,@r2:x@y>\r\nRCPT TO:<Postmaster>\r\nRSET\r\nMAIL FROM:<>\r\n");
    let mail = h
        .events
        .iter()
        .find(|e| matches!(e, Event::MailFrom { .. }))
        .unwrap();
    assert!(
        matches!(mail, Event::MailFrom { source_route: true, from, .. } if from.to_string() == "<a@b>")
    );
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::RcptTo {
            source_route: true,
            ..
        }
    )));
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::RcptTo {
            to: ForwardPath::Postmaster,
            ..
        }
    )));
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::MailFrom {
            from: ReversePath::Null,
            ..
        }
    )));
}

#[test]
fn ehlo_resets_transaction_but_rejected_ehlo_does_not() {
    let mut h = Harness::new(config(), false).with_decide(|e| match e {
        Event::Helo { domain, .. } if domain.to_string() == "bad.test" => {
            Some(reply(550, (5, 7, 1), "Go away"))
        }
        _ => None,
    });
    h.feed(b"EHLO c\r\nMAIL FROM:<a@b>\r\nEHLO bad.test\r\n");
    assert!(h.session.transaction().is_some());
    h.feed(b"EHLO c\r\n");
    assert!(h.session.transaction().is_none());
    h.feed(b"MAIL FROM:<a@b>\r\nHELO c\r\n");
    assert!(h.session.transaction().is_none());
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "550 5.7.1",
            "250",
            "250 2.1.0",
            "250"
        ]
    );
}

#[test]
fn command_line_limits() {
    // 512 octets including CRLF is fine; 513 is too long.
    let ok = format!("NOOP {}\r\n", "x".repeat(505));
    assert_eq!(ok.len(), 512);
    let long = format!("NOOP {}\r\n", "x".repeat(506));
    let huge = format!("NOOP {}\r\n", "x".repeat(5000));
    let h = run(format!("{ok}{long}{huge}NOOP\r\n").as_bytes());
    assert_eq!(
        h.replies(),
        ["220", "250 2.0.0", "500 5.5.2", "500 5.5.2", "250 2.0.0"]
    );
    // The buffer does not keep an overlong line.
    let mut h = Harness::new(config(), false);
    h.feed(&vec![b'x'; 10_000]);
    assert!(h.session.input.len() < MAX_COMMAND_LINE);
    h.feed(b"\r\nNOOP\r\n");
    assert_eq!(h.replies(), ["220", "500 5.5.2", "250 2.0.0"]);
}

#[test]
fn bare_lf_and_nul_in_commands() {
    let h = run(b"NOOP\nNO\0OP\r\nNOOP\rX\r\nNOOP\r\n");
    assert_eq!(
        h.replies(),
        ["220", "500 5.5.2", "500 5.5.2", "500 5.5.2", "250 2.0.0"]
    );
}

#[test]
fn too_many_bad_commands() {
    let cfg = SessionConfig {
        max_bad_commands: 3,
        ..config()
    };
    let h = run_with(cfg, false, b"A\r\nB\r\nC\r\nD\r\nNOOP\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "500 5.5.2",
            "500 5.5.2",
            "500 5.5.2",
            "500 5.5.2",
            "421 4.7.0"
        ]
    );
    assert_eq!(h.events, [Event::Close]);
    assert!(h.session.is_closed());
}

#[test]
fn rejected_greeting() {
    let mut s = Session::new(config(), false);
    s.greet_reject(Reply::new(554, Some("5.7.1".parse().unwrap()), "No service").unwrap());
    s.feed(b"EHLO c\r\nNOOP\r\nQUIT\r\n");
    assert_eq!(s.poll_event(), Some(Event::Close));
    assert_eq!(
        replies(&s.take_output()),
        ["554 5.7.1", "503 5.5.1", "503 5.5.1", "221 2.0.0"]
    );

    let mut s = Session::new(config(), false);
    s.greet_reject(Reply::new(421, Some("4.3.2".parse().unwrap()), "mx.test busy").unwrap());
    assert!(s.is_closed());
    assert_eq!(s.poll_event(), Some(Event::Close));
    assert_eq!(s.poll_event(), None);
}

#[test]
fn timeouts_and_shutdown() {
    let mut h = run(TX);
    assert_eq!(h.session.timeout_phase(), TimeoutPhase::DataBlock);
    h.session.timed_out();
    h.pump();
    assert!(
        h.output
            .ends_with(b"421 4.4.2 mx.test Error: timeout exceeded\r\n")
    );
    assert_eq!(h.events.last(), Some(&Event::Close));

    let mut h = run(b"EHLO c\r\n");
    assert_eq!(h.session.timeout_phase(), TimeoutPhase::Command);
    h.session.shutdown();
    h.pump();
    assert!(
        h.output
            .ends_with(b"421 4.3.2 mx.test Service shutting down\r\n")
    );
    h.session.shutdown();
    assert!(h.session.take_output().is_empty());
}

#[test]
fn decisions_and_misuse() {
    let mut s = Session::new(config(), false);
    assert!(s.accept().is_err());
    assert!(s.queued("x").is_err());
    assert!(s.auth_succeeded("u").is_err());
    assert!(s.tls_established().is_err());
    assert!(s.reject(reply(550, (5, 0, 0), "x")).is_err());
    s.feed(b"EHLO c\r\nNOOP\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Helo { .. })));
    assert!(!s.wants_input());
    assert_eq!(s.poll_event(), None);
    assert!(s.queued("x").is_err());
    assert!(s.reject(reply(250, (2, 0, 0), "x")).is_err());
    // Nothing after EHLO was processed while the decision was pending.
    assert_eq!(replies(s.output()), Vec::<String>::new());
    s.reject(Reply::new(421, Some("4.7.0".parse().unwrap()), "mx.test go away").unwrap())
        .unwrap();
    assert_eq!(s.poll_event(), Some(Event::Close));
    assert_eq!(replies(&s.take_output()), ["421 4.7.0"]);
}

#[test]
fn message_rejected_by_caller() {
    let mut h = Harness::new(config(), false)
        .with_decide(|e| matches!(e, Event::Message(_)).then(|| reply(554, (5, 7, 1), "Spam")));
    h.feed(TX).feed(b"x\r\n.\r\nRCPT TO:<a@b>\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "554 5.7.1",
            "503 5.5.1"
        ]
    );
}

#[test]
fn data_start_rejected() {
    let mut h = Harness::new(config(), false)
        .with_decide(|e| matches!(e, Event::DataStart).then(|| reply(451, (4, 3, 0), "Try later")));
    h.feed(TX);
    assert_eq!(
        h.replies(),
        ["220", "250", "250 2.1.0", "250 2.1.5", "451 4.3.0"]
    );
    assert_eq!(h.session.timeout_phase(), TimeoutPhase::Command);
    assert!(h.session.transaction().is_some());
}

// The ten SMTP smuggling sequences: none may end the message.
const SMUGGLING: [&[u8]; 10] = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r",
    b"\r\n.\x00\r\n",
];

fn smuggle(seq: &[u8], policy: LineEndings) -> Harness {
    let mut input = TX.to_vec();
    input.extend_from_slice(b"hello");
    input.extend_from_slice(seq);
    input.extend_from_slice(b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nsmuggled\r\n.\r\n");
    input.extend_from_slice(b"\r\n.\r\n");
    let cfg = SessionConfig {
        line_endings: policy,
        ..config()
    };
    run_with(cfg, false, &input)
}

fn no_evil_mail(h: &Harness) -> bool {
    !h.events
        .iter()
        .any(|e| matches!(e, Event::MailFrom { from, .. } if from.to_string().contains("evil")))
}

#[test]
fn smuggling_rejected() {
    for seq in SMUGGLING {
        let h = smuggle(seq, LineEndings::Reject);
        assert!(h.messages().is_empty(), "{seq:?}");
        assert!(no_evil_mail(&h), "{seq:?}");
        assert_eq!(
            h.replies(),
            [
                "220",
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                "550 5.6.0",
                "500 5.5.2",
                "500 5.5.2"
            ],
            "{seq:?}"
        );
    }
}

#[test]
fn smuggling_normalized() {
    for seq in SMUGGLING {
        let h = smuggle(seq, LineEndings::Normalize);
        assert!(no_evil_mail(&h), "{seq:?}");
        let has_nul = seq.contains(&0);
        assert_eq!(h.messages().len(), usize::from(!has_nul), "{seq:?}");
        if let Some(msg) = h.messages().first() {
            // The smuggled commands stayed inside the one message, all lines CRLF.
            let data = &msg.data;
            assert!(data.windows(18).any(|w| w == b"MAIL FROM:<evil@x>"));
            assert!(data.ends_with(b"smuggled\r\n"));
            for (i, &b) in data.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(data[i - 1], b'\r', "{seq:?}");
                }
                if b == b'\r' {
                    assert_eq!(data[i + 1], b'\n', "{seq:?}");
                }
            }
        }
    }
}

#[test]
fn normalize_policy_via_session() {
    let cfg = SessionConfig {
        line_endings: LineEndings::Normalize,
        ..config()
    };
    let mut input = TX.to_vec();
    input.extend_from_slice(b"a\nb\r\n..c\r\n.\r\n");
    let h = run_with(cfg, false, &input);
    assert_eq!(h.messages()[0].data, b"a\r\nb\r\n.c\r\n");
}

#[test]
fn data_limits() {
    let cfg = SessionConfig {
        max_message_size: 100,
        max_header_size: 20,
        ..config()
    };
    let cases: [(Vec<u8>, &str); 5] = [
        (b"Subject: x\r\n\r\nshort\r\n.\r\n".to_vec(), "250 2.0.0"),
        (
            [
                b"A: b\r\n\r\n".to_vec(),
                vec![b'x'; 200],
                b"\r\n.\r\n".to_vec(),
            ]
            .concat(),
            "552 5.3.4",
        ),
        (
            b"A-Long-Header: 123456789\r\n\r\nb\r\n.\r\n".to_vec(),
            "552 5.3.4",
        ),
        (b"a\0b\r\n.\r\n".to_vec(), "550 5.6.0"),
        (b"a\nb\r\n.\r\n".to_vec(), "550 5.6.0"),
    ];
    for (body, expected) in cases {
        let mut input = TX.to_vec();
        input.extend_from_slice(&body);
        input.extend_from_slice(b"NOOP\r\n");
        let h = run_with(cfg.clone(), false, &input);
        assert_eq!(
            h.replies(),
            [
                "220",
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                expected,
                "250 2.0.0"
            ],
            "{body:?}"
        );
    }
    let mut input = TX.to_vec();
    input.extend_from_slice(&[vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat());
    let h = run(&input);
    assert_eq!(h.replies().last().map(String::as_str), Some("500 5.5.2"));
    assert!(h.messages().is_empty());
    assert!(h.session.transaction().is_none());
}

const BDAT_TX: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nBDAT 6\r\nhello\rBDAT 9 LAST\r\n\n world\r\nQUIT\r\n";

#[test]
fn bdat_pipelined_chunks() {
    let h = run(BDAT_TX);
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert_eq!(h.messages()[0].data, b"hello\r\n world\r\n");
    assert!(h.output.windows(20).any(|w| w == b"Ok: 6 octets receive"));
}

#[test]
fn bdat_errors() {
    // Failure inside a chunk: error for that chunk, 503 for the following ones.
    let h = run(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nBDAT 3\r\na\nbBDAT 2 LAST\r\nxyNOOP\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "550 5.6.0",
            "503 5.5.1",
            "250 2.0.0"
        ]
    );
    assert!(h.messages().is_empty());
    // DATA inside a BDAT transaction.
    let h =
        run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nBDAT 1\r\naDATA\r\nBDAT 1 LAST\r\nb");
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "503 5.5.1",
            "250 2.0.0"
        ]
    );
    assert_eq!(h.messages()[0].data, b"ab");
    // CHUNKING disabled: refused but the chunk is still skipped.
    let cfg = SessionConfig {
        chunking: false,
        ..config()
    };
    let h = run_with(cfg, false, b"EHLO c\r\nBDAT 4\r\nQUITNOOP\r\n");
    assert_eq!(h.replies(), ["220", "250", "502 5.5.1", "250 2.0.0"]);
    // BDAT size limit applies across chunks.
    let cfg = SessionConfig {
        max_message_size: 5,
        ..config()
    };
    let h = run_with(
        cfg,
        false,
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nBDAT 3\r\nabcBDAT 3 LAST\r\ndefNOOP\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "552 5.3.4",
            "250 2.0.0"
        ]
    );
}

/// Feeding `input` split anywhere gives the same events and output as feeding it whole.
fn assert_split_invariant(input: &[u8]) {
    let whole = run(input);
    for cut in 0..=input.len() {
        let mut h = Harness::new(config(), false);
        h.feed(&input[..cut]).feed(&input[cut..]);
        assert_eq!(h.events, whole.events, "cut at {cut}");
        assert_eq!(h.output, whole.output, "cut at {cut}");
    }
    let mut h = Harness::new(config(), false);
    for b in input {
        h.feed(std::slice::from_ref(b));
    }
    assert_eq!(h.events, whole.events);
    assert_eq!(h.output, whole.output);
}

#[test]
fn split_input_full_transaction() {
    let mut input = TX.to_vec();
    input.extend_from_slice(b"Subject: x\r\n\r\n..a\r\n.b\r\n\r\n.\r\nMAIL FROM:<c@d>\r\nRCPT TO:<e@f>\r\nRCPT TO:<bad\r\nDATA\r\n.\r\nNOOP\n");
    input.extend_from_slice(format!("NOOP {}\r\nRSET\r\nQUIT\r\n", "x".repeat(600)).as_bytes());
    assert_split_invariant(&input);
}

#[test]
fn split_input_bdat() {
    assert_split_invariant(BDAT_TX);
}

#[test]
fn split_input_smuggling() {
    for seq in SMUGGLING {
        let mut input = TX.to_vec();
        input.extend_from_slice(seq);
        input.extend_from_slice(b"x\r\n.\r\nQUIT\r\n");
        assert_split_invariant(&input);
    }
}

fn tls_config() -> SessionConfig {
    SessionConfig {
        starttls: true,
        auth: true,
        ..config()
    }
}

#[test]
fn starttls_discards_pipelined_input() {
    let h = run_with(
        tls_config(),
        false,
        b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
    );
    assert_eq!(h.replies(), ["220", "250", "220 2.0.0"]);
    assert!(h.events.contains(&Event::StartTls));
    assert!(!h.events.iter().any(|e| matches!(e, Event::MailFrom { .. })));
    assert!(h.session.tls());
    assert_eq!(h.session.helo(), None);
    let mut h = h;
    let before_tls = h.output.len();
    h.feed(b"MAIL FROM:<a@b>\r\nEHLO c\r\nSTARTTLS\r\n");
    assert_eq!(h.replies()[3..], ["503 5.5.1", "250", "503 5.5.1"]);
    // No EHLO line after TLS advertises STARTTLS, wherever it would be listed.
    let after = String::from_utf8(h.output[before_tls..].to_vec()).unwrap();
    assert!(after.lines().any(|l| l.starts_with("250")));
    for line in after.lines() {
        assert!(
            !line.get(4..).unwrap_or("").eq_ignore_ascii_case("STARTTLS"),
            "{line}"
        );
    }
}

#[test]
fn starttls_pending_drops_fed_bytes() {
    let mut s = Session::new(tls_config(), false);
    s.feed(b"EHLO c\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Helo { .. })));
    s.accept().unwrap();
    s.feed(b"STARTTLS\r\nNOOP\r\n");
    assert_eq!(s.poll_event(), Some(Event::StartTls));
    assert_eq!(s.buffered_input_len(), 0);
    assert!(!s.wants_input());
    s.feed(b"NOOP\r\n");
    assert_eq!(s.buffered_input_len(), 0);
    s.tls_established().unwrap();
    assert_eq!(s.poll_event(), None);
    assert_eq!(replies(&s.take_output()), ["250", "220 2.0.0"]);
    assert!(s.tls_established().is_err());
}

#[test]
fn starttls_errors() {
    let h = run_with(tls_config(), false, b"STARTTLS now\r\n");
    assert_eq!(h.replies(), ["220", "501 5.5.4"]);
    let h = run(b"STARTTLS\r\n");
    assert_eq!(h.replies(), ["220", "503 5.5.1"]);
    let h = run_with(tls_config(), true, b"STARTTLS\r\n");
    assert_eq!(h.replies(), ["220", "503 5.5.1"]);
    // REQUIRETLS (RFC 8689) only over TLS.
    let h = run(b"EHLO c\r\nMAIL FROM:<a@b.example> REQUIRETLS\r\n");
    assert_eq!(h.replies(), ["220", "250", "530 5.7.10"]);
}

fn b64(s: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn auth_events(h: &Harness) -> Vec<(AuthMechanism, String, String, String)> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::Auth {
                mechanism,
                authzid,
                username,
                password,
            } => Some((
                *mechanism,
                authzid.clone(),
                username.clone(),
                password.clone(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn auth_plain() {
    let input = format!("EHLO c\r\nAUTH PLAIN {}\r\n", b64(b"\0bob\0secret"));
    let h = run_with(tls_config(), true, input.as_bytes());
    assert_eq!(h.replies(), ["220", "250", "235 2.7.0"]);
    assert_eq!(h.session.authenticated(), Some("bob"));
    assert_eq!(
        auth_events(&h),
        [(
            AuthMechanism::Plain,
            String::new(),
            "bob".into(),
            "secret".into()
        )]
    );

    let input = format!(
        "EHLO c\r\nAUTH plain\r\n{}\r\nAUTH PLAIN\r\n",
        b64(b"admin\0bob\0wrong")
    );
    let h = run_with(tls_config(), true, input.as_bytes());
    assert!(String::from_utf8_lossy(&h.output).contains("\r\n334 \r\n"));
    assert_eq!(h.replies(), ["220", "250", "334", "535 5.7.8", "334"]);
    assert_eq!(auth_events(&h)[0].1, "admin");
    let debug = format!("{:?}", h.events);
    assert!(debug.contains("bob") && !debug.contains("wrong"));
    assert_eq!(h.session.authenticated(), None);
}

#[test]
fn auth_login() {
    let input = format!(
        "EHLO c\r\nAUTH LOGIN\r\n{}\r\n{}\r\n",
        b64(b"bob"),
        b64(b"secret")
    );
    let h = run_with(tls_config(), true, input.as_bytes());
    let text = String::from_utf8_lossy(&h.output).into_owned();
    assert!(text.contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0"));
    assert_eq!(
        auth_events(&h),
        [(
            AuthMechanism::Login,
            String::new(),
            "bob".into(),
            "secret".into()
        )]
    );
    let input = format!(
        "EHLO c\r\nAUTH LOGIN {}\r\n{}\r\n",
        b64(b"bob"),
        b64(b"secret")
    );
    let h = run_with(tls_config(), true, input.as_bytes());
    assert_eq!(h.replies(), ["220", "250", "334", "235 2.7.0"]);
}

#[test]
fn auth_errors() {
    let h = run(b"EHLO c\r\nAUTH PLAIN\r\n");
    assert_eq!(h.replies(), ["220", "250", "503 5.5.1"]);
    let h = run_with(tls_config(), false, b"EHLO c\r\nAUTH PLAIN\r\n");
    assert_eq!(h.replies(), ["220", "250", "538 5.7.11"]);
    let h = run_with(
        tls_config(),
        true,
        b"AUTH PLAIN\r\nEHLO c\r\nAUTH CRAM-MD5\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n!!!\r\nAUTH PLAIN\r\nYm9i\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "503 5.5.1",
            "250",
            "504 5.5.4",
            "334",
            "501 5.0.0",
            "334",
            "501 5.5.2",
            "334",
            "501 5.5.2",
            "250 2.1.0",
            "503 5.5.1"
        ]
    );
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {}\r\nAUTH PLAIN {}\r\n",
        b64(b"\0bob\0secret"),
        b64(b"\0bob\0secret")
    );
    let h = run_with(tls_config(), true, input.as_bytes());
    assert_eq!(h.replies(), ["220", "250", "235 2.7.0", "503 5.5.1"]);
    // SASL lines may be long, but not endless.
    let long = format!("EHLO c\r\nAUTH PLAIN\r\n{}\r\nNOOP\r\n", "A".repeat(20_000));
    let h = run_with(tls_config(), true, long.as_bytes());
    assert_eq!(h.replies(), ["220", "250", "334", "500 5.5.6", "250 2.0.0"]);
    assert!(
        String::from_utf8_lossy(&h.output)
            .contains("\r\n500 5.5.6 Authentication Exchange line is too long\r\n")
    );
}

#[test]
fn auth_required_for_mail() {
    let cfg = SessionConfig {
        auth_required: true,
        ..tls_config()
    };
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@b>\r\n",
        b64(b"\0bob\0secret")
    );
    let h = run_with(cfg, true, input.as_bytes());
    assert_eq!(
        h.replies(),
        ["220", "250", "530 5.7.0", "235 2.7.0", "250 2.1.0"]
    );
}

// --- Review fixes ---

#[test]
fn bad_command_counter_ignores_452_and_skipped_chunks() {
    let cfg = SessionConfig {
        max_bad_commands: 2,
        max_recipients: 1,
        ..config()
    };
    // Too many recipients: 452 4.5.3 is flow control, not abuse.
    let h = run_with(
        cfg.clone(),
        false,
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@b>\r\nRCPT TO:<2@b>\r\nRCPT TO:<3@b>\r\nRCPT TO:<4@b>\r\nRCPT TO:<5@b>\r\nNOOP\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "452 4.5.3",
            "452 4.5.3",
            "452 4.5.3",
            "452 4.5.3",
            "250 2.0.0"
        ]
    );
    assert!(!h.session.is_closed());
    // One failed BDAT chunk counts once; the pipelined chunks skipped after it do not.
    let h = run_with(
        cfg.clone(),
        false,
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nBDAT 3\r\na\nbBDAT 1\r\nxBDAT 1\r\nxBDAT 1\r\nxBDAT 1 LAST\r\nyNOOP\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "550 5.6.0",
            "503 5.5.1",
            "503 5.5.1",
            "503 5.5.1",
            "503 5.5.1",
            "250 2.0.0"
        ]
    );
    // ... but a BDAT without a transaction, later on, counts again.
    let h = run_with(
        cfg,
        false,
        b"EHLO c\r\nBDAT 1\r\nxBDAT 1\r\nxBDAT 1\r\nxNOOP\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "503 5.5.1",
            "503 5.5.1",
            "503 5.5.1",
            "421 4.7.0"
        ]
    );
}

#[test]
fn bad_command_counter_policy_rejects_and_reset_on_queue() {
    let cfg = SessionConfig {
        max_bad_commands: 2,
        ..config()
    };
    // reject() counts (spam-relay signal), except 452.
    let mut h = Harness::new(cfg.clone(), false).with_decide(|e| match e {
        Event::RcptTo { to, .. } if to.to_string().starts_with("<full") => {
            Some(reply(452, (4, 2, 2), "Mailbox full"))
        }
        Event::RcptTo { to, .. } if to.to_string().starts_with("<x") => {
            Some(reply(550, (5, 7, 1), "Relay denied"))
        }
        _ => None,
    });
    h.feed(b"EHLO c\r\nMAIL FROM:<a@b>\r\n");
    for _ in 0..5 {
        h.feed(b"RCPT TO:<full@b>\r\n");
    }
    h.feed(b"RCPT TO:<x1@b>\r\nRCPT TO:<x2@b>\r\nRCPT TO:<x3@b>\r\nNOOP\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "452 4.2.2",
            "452 4.2.2",
            "452 4.2.2",
            "452 4.2.2",
            "452 4.2.2",
            "550 5.7.1",
            "550 5.7.1",
            "550 5.7.1",
            "421 4.7.0"
        ]
    );
    // A queued message resets the counter.
    let mut input = b"FOO\r\nFOO\r\n".to_vec();
    input.extend_from_slice(TX);
    input.extend_from_slice(b"x\r\n.\r\nFOO\r\nFOO\r\nNOOP\r\nFOO\r\n");
    let h = run_with(cfg, false, &input);
    assert_eq!(
        h.replies(),
        [
            "220",
            "500 5.5.2",
            "500 5.5.2",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "500 5.5.2",
            "500 5.5.2",
            "250 2.0.0",
            "500 5.5.2",
            "421 4.7.0"
        ]
    );
}

#[test]
fn malformed_bdat_closes_session() {
    let overlong = format!("BDAT 5 {}\r\n", "x".repeat(600));
    let huge = format!("bdat 5{}\r\n", " ".repeat(5000));
    for bad in [
        "BDAT 5 X\r\n",
        "BDAT 99999999999999999999\r\n",
        "BDAT 5\n",
        "bdat 5 last\n",
        "BDAT\r\n",
        "BDAT -1\r\n",
        "BDAT 5\t\r\n",
        "Bdat\t5\r\n",
        &overlong,
        &huge,
    ] {
        for prefix in [
            &b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\n"[..],
            b"EHLO c\r\n",
        ] {
            let mut input = prefix.to_vec();
            input.extend_from_slice(bad.as_bytes());
            // The chunk octets must not run as commands.
            input.extend_from_slice(b"RSET\r\nMAIL FROM:<evil@x>\r\n");
            let h = run(&input);
            let replies = h.replies();
            assert_eq!(
                replies.last().map(String::as_str),
                Some("421 4.5.0"),
                "{bad:?}"
            );
            // Greeting, one reply per prefix line, then 421: nothing after it.
            let lines = prefix.iter().filter(|&&b| b == b'\n').count();
            assert_eq!(replies.len(), lines + 2, "{bad:?}");
            assert!(h.session.is_closed(), "{bad:?}");
            assert_eq!(h.events.last(), Some(&Event::Close), "{bad:?}");
            assert!(no_evil_mail(&h), "{bad:?}");
        }
    }
    let h = run(b"EHLO c\r\nBDAT 5 X\r\n");
    assert!(
        String::from_utf8_lossy(&h.output)
            .ends_with("421 4.5.0 mx.test Error: malformed BDAT command, closing connection\r\n")
    );
    // Other malformed lines are not affected.
    let h = run(b"EHLO c\r\nBDATX 5\r\nBDA 5\r\nNOOP\n");
    assert_eq!(
        h.replies(),
        ["220", "250", "500 5.5.2", "500 5.5.2", "500 5.5.2"]
    );
}

#[test]
fn split_input_malformed_bdat() {
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@b>\r\nNOOP {}\r\nBDAT 3 {}\r\nabcNOOP\r\n",
        "y".repeat(520),
        "x".repeat(520)
    );
    assert_split_invariant(input.as_bytes());
    assert_eq!(run(input.as_bytes()).replies().last().unwrap(), "421 4.5.0");
}

#[test]
fn rcpt_between_bdat_chunks() {
    let h = run(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nBDAT 1\r\naRCPT TO:<x@d>\r\nBDAT 1 LAST\r\nb",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "503 5.5.1",
            "250 2.0.0"
        ]
    );
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::RcptTo { to, .. } if to.to_string() == "<x@d>"))
    );
    let msgs = h.messages();
    assert_eq!(msgs[0].data, b"ab");
    assert_eq!(msgs[0].recipients.len(), 1);
}

#[test]
fn auth_control_characters_refused() {
    for creds in [
        &b"\0bob\0sec\0ret"[..],
        b"\0bob\0secret\r\n",
        b"\0b\nob\0secret",
        b"\0bob\x1b[2J\0secret",
        b"ad\rmin\0bob\0secret",
    ] {
        let input = format!("EHLO c\r\nAUTH PLAIN {}\r\n", b64(creds));
        let h = run_with(tls_config(), true, input.as_bytes());
        assert_eq!(h.replies(), ["220", "250", "501 5.5.2"], "{creds:?}");
        assert!(auth_events(&h).is_empty(), "{creds:?}");
    }
    // LOGIN: a bad username ends the exchange at once (the password line is then
    // an unknown command); a bad password ends it after the second challenge.
    let input = format!("EHLO c\r\nAUTH LOGIN\r\n{}\r\n", b64(b"bo\0b"));
    let h = run_with(tls_config(), true, input.as_bytes());
    assert_eq!(h.replies(), ["220", "250", "334", "501 5.5.2"]);
    let input = format!(
        "EHLO c\r\nAUTH LOGIN\r\n{}\r\n{}\r\n",
        b64(b"bob"),
        b64(b"sec\r\nret")
    );
    let h = run_with(tls_config(), true, input.as_bytes());
    assert_eq!(h.replies(), ["220", "250", "334", "334", "501 5.5.2"]);
    assert!(auth_events(&h).is_empty());
}

#[test]
fn no_valid_recipients_after_unparsable_rcpts() {
    let h = run(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bad\r\nRCPT TO <x@y>\r\nRCPT TO:<x@y> FOO=1\r\nDATA\r\nBDAT 3 LAST\r\nabcNOOP\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "501 5.1.3",
            "501 5.5.4",
            "555 5.5.4",
            "554 5.5.1",
            "554 5.5.1",
            "250 2.0.0"
        ]
    );
    // No RCPT at all: 503, for DATA and BDAT alike (the chunk is still skipped).
    let h = run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nDATA\r\nBDAT 4 LAST\r\nQUITNOOP\r\n");
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "250 2.1.0",
            "503 5.5.1",
            "503 5.5.1",
            "250 2.0.0"
        ]
    );
    // A new MAIL forgets the attempts.
    let h =
        run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bad\r\nRSET\r\nMAIL FROM:<a@b>\r\nDATA\r\n");
    assert_eq!(h.replies().last().unwrap(), "503 5.5.1");
}

#[test]
fn malformed_parameter_values_session() {
    let h = run(
        b"EHLO c\r\nMAIL FROM:<a@b> SIZE=abc\r\nMAIL FROM:<a@b> RET=X\r\nMAIL FROM:<a@b> BODY=X\r\nMAIL FROM:<a@b> ENVID=a+zz\r\nMAIL FROM:<a@b> SIZE=1 SIZE=1\r\nMAIL FROM:<a@b> XFOO=1\r\nMAIL FROM:<a@b> BODY=BINARYMIME\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=\r\nRCPT TO:<c@d> NOTIFY=NEVER,SUCCESS\r\nRCPT TO:<c@d> ORCPT=rfc822;a+zz\r\nRCPT TO:<c@d> XFOO\r\n",
    );
    assert_eq!(
        h.replies(),
        [
            "220",
            "250",
            "501 5.5.4",
            "501 5.5.4",
            "501 5.5.4",
            "501 5.5.4",
            "501 5.5.4",
            "555 5.5.4",
            "555 5.5.4",
            "250 2.1.0",
            "501 5.5.4",
            "501 5.5.4",
            "501 5.5.4",
            "555 5.5.4"
        ]
    );
}

fn pending_rcpt(mail: &[u8]) -> Session {
    let mut s = Session::new(config(), false);
    s.feed(b"EHLO c\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Helo { .. })));
    s.accept().unwrap();
    s.feed(mail);
    assert!(matches!(s.poll_event(), Some(Event::MailFrom { .. })));
    s.accept().unwrap();
    s.feed(b"RCPT TO:<alias@d.test> NOTIFY=NEVER\r\n");
    assert!(matches!(s.poll_event(), Some(Event::RcptTo { .. })));
    s.take_output();
    s
}

#[test]
fn accept_rcpt_as_records_rewritten_recipient() {
    let target = ForwardPath::Mailbox(crate::Mailbox::new("real", Domain::Name("d.test".into())));
    let mut s = pending_rcpt(b"MAIL FROM:<a@b>\r\n");
    s.accept_rcpt_as(target.clone()).unwrap();
    assert_eq!(replies(&s.take_output()), ["250 2.1.5"]);
    let tx = s.transaction().unwrap();
    assert_eq!(tx.recipients.len(), 1);
    assert_eq!(tx.recipients[0].0, target);
    assert_eq!(tx.recipients[0].1.notify, Some(crate::Notify::Never));
    // Only while an RcptTo decision is pending.
    assert!(s.accept_rcpt_as(target.clone()).is_err());
    s.feed(b"DATA\r\n");
    assert_eq!(s.poll_event(), Some(Event::DataStart));
    assert!(s.accept_rcpt_as(target.clone()).is_err());
    let mut s = Session::new(config(), false);
    s.feed(b"EHLO c\r\n");
    assert!(matches!(s.poll_event(), Some(Event::Helo { .. })));
    assert!(s.accept_rcpt_as(target).is_err());
    s.accept().unwrap();
    assert_eq!(replies(&s.take_output()), ["250"]);
}

#[test]
fn accept_rcpt_as_utf8_needs_smtputf8() {
    let utf8 = ForwardPath::Mailbox(crate::Mailbox::new("jörg", Domain::Name("d.test".into())));
    let mut s = pending_rcpt(b"MAIL FROM:<a@b>\r\n");
    assert!(s.accept_rcpt_as(utf8.clone()).is_err());
    // The decision is still pending.
    assert!(!s.wants_input());
    assert_eq!(s.output(), b"");
    s.accept().unwrap();
    assert_eq!(replies(&s.take_output()), ["250 2.1.5"]);
    assert_eq!(
        s.transaction().unwrap().recipients[0].0.to_string(),
        "<alias@d.test>"
    );
    let mut s = pending_rcpt(b"MAIL FROM:<a@b> SMTPUTF8\r\n");
    s.accept_rcpt_as(utf8.clone()).unwrap();
    assert_eq!(replies(&s.take_output()), ["250 2.1.5"]);
    assert_eq!(s.transaction().unwrap().recipients[0].0, utf8);
}

#[test]
fn ehlo_with_underscore() {
    let h = run(b"EHLO my_pc\r\nHELO my_pc.corp\r\nMAIL FROM:<a@my_pc>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@my_pc>\r\n");
    assert_eq!(
        h.replies(),
        ["220", "250", "250", "501 5.1.7", "250 2.1.0", "501 5.1.3"]
    );
    assert_eq!(
        h.events[0],
        Event::Helo {
            domain: Domain::Name("my_pc".into()),
            extended: true
        }
    );
    assert_eq!(h.session.helo(), Some(&Domain::Name("my_pc.corp".into())));
}

#[test]
fn disconnect_answers_pending_decision_and_closes() {
    let mut session = Session::new(config(), false);
    session.greet();
    session.feed(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n");
    assert!(matches!(session.poll_event(), Some(Event::Helo { .. })));
    session.accept().unwrap();
    assert!(matches!(session.poll_event(), Some(Event::MailFrom { .. })));
    session
        .disconnect(reply(554, (5, 7, 1), "go away"))
        .unwrap();
    assert!(session.is_closed());
    let out = replies(&session.take_output());
    assert_eq!(
        out,
        ["220", "250", "554 5.7.1"],
        "the pipelined NOOP must not be answered"
    );
    assert!(session.disconnect(reply(250, (2, 0, 0), "ok")).is_err());
}

#[test]
fn disconnect_without_pending_decision_at_connect() {
    let mut session = Session::new(config(), false);
    session
        .disconnect(reply(421, (4, 7, 0), "not now"))
        .unwrap();
    assert!(session.is_closed());
    assert_eq!(replies(&session.take_output()), ["421 4.7.0"]);
}

/// Feeds `input` byte by byte, taking the pending content out after each byte as the relay
/// does; returns the messages, each with the taken octets put back in front.
fn run_draining(input: &[u8]) -> Vec<Vec<u8>> {
    let mut h = Harness::new(config(), false);
    let mut taken = Vec::new();
    let mut messages = Vec::new();
    for b in input {
        h.feed(std::slice::from_ref(b));
        for event in h.events.drain(..) {
            if let Event::Message(env) = event {
                let mut whole = std::mem::take(&mut taken);
                whole.extend_from_slice(&env.data);
                messages.push(whole);
            }
        }
        if h.session.message_in_progress() {
            taken.extend_from_slice(h.session.pending_content());
            h.session.clear_pending_content();
        } else {
            taken.clear();
        }
    }
    messages
}

#[test]
fn pending_content_taken_while_it_arrives_makes_up_the_message() {
    let mut data = TX.to_vec();
    data.extend_from_slice(b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n");
    assert_eq!(
        run_draining(&data),
        [b"Subject: x\r\n\r\n.dot\r\nbody\r\n".to_vec()]
    );
    assert_eq!(run_draining(BDAT_TX), [b"hello\r\n world\r\n".to_vec()]);
    // A failed message leaves nothing behind for the next one.
    let mut failing = TX.to_vec();
    failing.extend_from_slice(b"bare\nLF\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\n");
    failing.extend_from_slice(b"DATA\r\nok\r\n.\r\n");
    assert_eq!(run_draining(&failing), [b"ok\r\n".to_vec()]);
    // Outside a message there is nothing pending.
    let h = run(b"EHLO c\r\n");
    assert!(!h.session.message_in_progress());
    assert!(h.session.pending_content().is_empty());
}
