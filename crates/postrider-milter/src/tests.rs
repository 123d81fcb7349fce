use crate::codec::{action, protocol};
use crate::*;

/// A response as the milter would write it on the wire.
fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(code);
    p.extend_from_slice(data);
    p
}

fn negotiate(actions: u32, protocol: u32) -> Response {
    Response::Negotiate {
        version: 6,
        actions,
        protocol,
    }
}

/// A session past negotiation with what the milter asked for.
fn ready(actions: u32, protocol: u32) -> Session {
    let (mut s, _) = Session::new(Offer::default(), 1 << 20);
    assert!(matches!(
        s.receive(negotiate(actions, protocol)).unwrap(),
        Received::Negotiated { .. }
    ));
    s
}

fn answer(s: &mut Session, r: Response) -> Answer {
    match s.receive(r).unwrap() {
        Received::Answer(a) => a,
        other => panic!("{other:?}"),
    }
}

#[test]
fn commands_encode_as_libmilter_expects() {
    let (_, neg) = Session::new(Offer::default(), 0);
    assert_eq!(
        neg,
        [
            0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0, 0xff, 0, 0x1f, 0xff, 0xff
        ]
    );
    let c = Command::Connect {
        hostname: "mail.example".into(),
        family: Family::Inet,
        port: 25,
        address: "192.0.2.1".into(),
    }
    .encode();
    assert_eq!(&c[4..], b"Cmail.example\x004\x00\x19192.0.2.1\x00");
    assert_eq!(
        u32::from_be_bytes(c[..4].try_into().unwrap()) as usize,
        c.len() - 4
    );
    assert_eq!(
        Command::Mail(vec!["<a@b>".into(), "SIZE=10".into()]).encode()[4..],
        *b"M<a@b>\x00SIZE=10\x00"
    );
    assert_eq!(
        Command::Header("Sub\0ject".into(), " hi".into()).encode()[4..],
        *b"LSubject\x00 hi\x00"
    );
    assert_eq!(
        Command::Macros {
            stage: b'C',
            pairs: vec![("j".into(), "mx.test".into())]
        }
        .encode()[4..],
        *b"DCj\x00mx.test\x00"
    );
    assert_eq!(Command::EndOfBody.encode(), [0, 0, 0, 1, b'E']);
}

#[test]
fn the_decoder_reassembles_split_packets_and_bounds_their_size() {
    let mut d = Decoder::default();
    let mut bytes = packet(b'c', b"");
    bytes.extend(packet(b'h', b"X-Spam\0yes\0"));
    bytes.extend(packet(b'y', b"550 5.7.1 no\0"));
    for b in &bytes[..7] {
        d.feed(&[*b]);
    }
    assert_eq!(d.decode().unwrap(), Some(Response::Continue));
    assert_eq!(d.decode().unwrap(), None);
    d.feed(&bytes[7..]);
    assert_eq!(
        d.decode().unwrap(),
        Some(Response::AddHeader("X-Spam".into(), "yes".into()))
    );
    assert_eq!(
        d.decode().unwrap(),
        Some(Response::ReplyCode("550 5.7.1 no".into()))
    );
    assert_eq!((d.decode().unwrap(), d.pending()), (None, 0));

    let mut d = Decoder::default();
    d.feed(&[0xff, 0xff, 0xff, 0xff, b'b']);
    assert_eq!(d.decode(), Err(MilterError::PacketSize(0xffff_ffff)));
    let mut d = Decoder::default();
    d.feed(&[0, 0, 0, 0]);
    assert!(d.decode().is_err());
    let mut d = Decoder::default();
    d.feed(&packet(b'h', b"no terminator"));
    assert!(matches!(d.decode(), Err(MilterError::Malformed(_))));
    let mut d = Decoder::default();
    d.feed(&packet(b'Z', b""));
    assert_eq!(d.decode(), Err(MilterError::UnknownResponse(b'Z')));
}

#[test]
fn negotiation_keeps_what_was_offered() {
    let (mut s, _) = Session::new(
        Offer {
            actions: action::ADD_HEADERS,
            protocol: protocol::NO_CONNECT,
        },
        0,
    );
    assert!(s.negotiating());
    assert!(s.send(&Command::Helo("x".into())).is_err());
    // Steps not offered are sent anyway; actions not offered fail the negotiation.
    assert_eq!(
        s.receive(negotiate(
            action::ADD_HEADERS,
            protocol::NO_CONNECT | protocol::NO_HELO
        ))
        .unwrap(),
        Received::Negotiated {
            actions: action::ADD_HEADERS,
            protocol: protocol::NO_CONNECT
        }
    );
    assert!(!s.wants(Step::Connect));
    assert!(s.wants(Step::Helo));

    let (mut s, _) = Session::new(
        Offer {
            actions: action::ADD_HEADERS,
            protocol: 0,
        },
        0,
    );
    assert_eq!(
        s.receive(negotiate(action::CHANGE_BODY, 0)),
        Err(MilterError::NotNegotiated(action::CHANGE_BODY))
    );
    assert_eq!(s.send(&Command::Data), Err(MilterError::Closed));
    let (mut s, _) = Session::new(Offer::default(), 0);
    assert!(s.receive(negotiate(0, 0)).is_ok());
    let (mut s2, _) = Session::new(Offer::default(), 0);
    assert_eq!(
        s2.receive(Response::Negotiate {
            version: 7,
            actions: 0,
            protocol: 0
        }),
        Err(MilterError::Version(7))
    );
    assert_eq!(
        s.receive(Response::Continue),
        Err(MilterError::OutOfOrder("a response nobody asked for"))
    );
}

#[test]
fn steps_left_out_are_not_sent_and_no_reply_steps_are_not_awaited() {
    let mut s = ready(
        0,
        protocol::NO_HELO | protocol::NR_CONNECT | protocol::NR_HEADER,
    );
    assert!(
        !s.send(&Command::Connect {
            hostname: "h".into(),
            family: Family::Unknown,
            port: 0,
            address: String::new()
        })
        .unwrap()
        .is_empty()
    );
    assert_eq!(s.awaiting(), None, "no reply to connect");
    assert!(s.send(&Command::Helo("h".into())).unwrap().is_empty());
    assert!(
        !s.send(&Command::Mail(vec!["<a@b>".into()]))
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.awaiting(), Some(Step::Mail));
    assert!(
        s.send(&Command::Rcpt(vec!["<c@d>".into()])).is_err(),
        "answer due"
    );
    assert_eq!(
        answer(&mut s, Response::Continue).verdict,
        Verdict::Continue
    );
    s.send(&Command::Header("A".into(), "b".into())).unwrap();
    assert_eq!(s.awaiting(), None, "no reply to headers");
}

#[test]
fn verdicts_end_what_they_end() {
    let mut s = ready(0, 0);
    s.send(&Command::Mail(vec!["<a@b>".into()])).unwrap();
    assert_eq!(
        answer(&mut s, Response::Continue).verdict,
        Verdict::Continue
    );
    s.send(&Command::Rcpt(vec!["<x@d>".into()])).unwrap();
    let a = answer(
        &mut s,
        Response::ReplyCode("550 5.1.1 No such user\0".into()),
    );
    assert_eq!(
        a.verdict,
        Verdict::Reject(Some(reply("550", "5.1.1", "No such user")))
    );
    // A refused recipient leaves the message going.
    assert!(s.wants(Step::Rcpt));
    s.send(&Command::Rcpt(vec!["<y@d>".into()])).unwrap();
    assert_eq!(answer(&mut s, Response::Accept).verdict, Verdict::Accept);
    // Accept: nothing more of this message, not even its end.
    assert!(!s.wants(Step::Data));
    assert!(s.send(&Command::EndOfBody).unwrap().is_empty());
    // The next transaction starts afresh.
    s.send(&Command::Abort).unwrap();
    assert!(s.wants(Step::Mail));
    s.send(&Command::Mail(vec!["<a@b>".into()])).unwrap();
    assert_eq!(
        answer(&mut s, Response::ReplyCode("421 4.7.0 go away".into())).verdict,
        Verdict::Tempfail(Some(reply("421", "4.7.0", "go away")))
    );
    s.send(&Command::Abort).unwrap();
    s.send(&Command::Mail(vec!["<a@b>".into()])).unwrap();
    assert!(matches!(
        s.receive(Response::ReplyCode("250 ok".into())),
        Err(MilterError::Malformed(_))
    ));
    assert_eq!(s.send(&Command::Data), Err(MilterError::Closed));
}

#[test]
fn modifications_come_at_the_end_of_body_and_only_as_negotiated() {
    let mut s = ready(
        action::ADD_HEADERS | action::CHANGE_HEADERS | action::CHANGE_BODY | action::QUARANTINE,
        protocol::SKIP,
    );
    s.send(&Command::Body(b"hello".to_vec())).unwrap();
    assert_eq!(answer(&mut s, Response::Skip).verdict, Verdict::Continue);
    assert!(!s.wants(Step::Body), "skipped");
    assert!(s.send(&Command::Body(b"more".to_vec())).unwrap().is_empty());
    s.send(&Command::EndOfBody).unwrap();
    for r in [
        Response::Progress,
        Response::AddHeader("DKIM-Signature".into(), "v=1".into()),
        Response::ChangeHeader(1, "Subject".into(), String::new()),
        Response::ReplaceBody(b"new ".to_vec()),
        Response::ReplaceBody(b"body".to_vec()),
        Response::Quarantine("suspect".into()),
    ] {
        assert_eq!(s.receive(r).unwrap(), Received::Pending);
    }
    let a = answer(&mut s, Response::Accept);
    assert_eq!(a.step, Step::EndOfBody);
    assert_eq!(
        a.modifications,
        vec![
            Modification::AddHeader("DKIM-Signature".into(), "v=1".into()),
            Modification::ChangeHeader(1, "Subject".into(), String::new()),
            Modification::Quarantine("suspect".into()),
            Modification::ReplaceBody(b"new body".to_vec()),
        ]
    );
    // The next message may be sent in full again.
    assert!(s.wants(Step::Body));

    // Not negotiated: adding a recipient ends the session.
    s.send(&Command::EndOfBody).unwrap();
    assert_eq!(
        s.receive(Response::AddRcpt("<z@d>".into())),
        Err(MilterError::NotNegotiated(action::ADD_RCPT))
    );

    // Before the end of the body a modification is out of order, as is skip without SKIP.
    let mut s = ready(action::ADD_HEADERS, 0);
    s.send(&Command::Data).unwrap();
    assert!(
        s.receive(Response::AddHeader("a".into(), "b".into()))
            .is_err()
    );
    let mut s = ready(0, 0);
    s.send(&Command::Body(b"x".to_vec())).unwrap();
    assert!(s.receive(Response::Skip).is_err());
}

#[test]
fn a_replacement_body_is_bounded() {
    let (mut s, _) = Session::new(Offer::default(), 8);
    s.receive(negotiate(action::CHANGE_BODY, 0)).unwrap();
    s.send(&Command::EndOfBody).unwrap();
    s.receive(Response::ReplaceBody(b"12345".to_vec())).unwrap();
    assert_eq!(
        s.receive(Response::ReplaceBody(b"6789".to_vec())),
        Err(MilterError::BodyTooLarge(8))
    );
}

#[test]
fn reply_texts_parse_strictly() {
    let r = reply_of("451 4.7.1 Greylisted\r\n").unwrap();
    assert_eq!(r, reply("451", "4.7.1", "Greylisted"));
    let r = reply_of("554 Go away").unwrap();
    assert_eq!((r.code(), r.enhanced(), r.text()), (554, None, "Go away"));
    let r = reply_of("550-5.7.1 first\r\n550 5.7.1 second").unwrap();
    assert_eq!(r.lines(), ["first", "second"]);
    let r = reply_of("550 4.7.1 wrong class").unwrap();
    assert_eq!((r.enhanced(), r.text()), (None, "4.7.1 wrong class"));
    let r = reply_of("550 5.7.1 tab\there\x7f").unwrap();
    assert_eq!(r.text(), "tab here");
    for bad in ["250 ok", "abc", "55", "600 x", "550x", "550 a\r\n451 b"] {
        assert!(reply_of(bad).is_err(), "{bad}");
    }
}

/// A reply as the relay builds one.
fn reply(code: &str, enhanced: &str, text: &str) -> postrider_smtp::reply::Reply {
    postrider_smtp::reply::Reply::new(code.parse().unwrap(), Some(enhanced.parse().unwrap()), text)
        .unwrap()
}
