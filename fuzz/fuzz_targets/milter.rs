//! Milter responses (the bytes a milter, possibly hostile, writes back to the relay).
//!
//! Properties checked:
//! - No input panics the decoder or the session.
//! - The decoder holds no more than it was fed.
//! - A replacement body never exceeds the session's limit; an error closes the session.
//! - A milter address (the input as text, as in `[[milter]] address`) that parses prints as
//!   text that parses back to the same address.
//!
//! Input: the milter's bytes. The relay side walks a whole transaction (connect to end of
//! body, then abort, and again), sending each step once the last one is answered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_milter::{
    Address, Command, Decoder, Family, MilterError, Modification, Offer, Received, Session,
};

const MAX_BODY: usize = 4096;

fn steps() -> Vec<Command> {
    vec![
        Command::Connect {
            hostname: "client.test".into(),
            family: Family::Inet,
            port: 40000,
            address: "192.0.2.1".into(),
        },
        Command::Helo("client.test".into()),
        Command::Mail(vec!["<a@b.test>".into()]),
        Command::Rcpt(vec!["<c@d.test>".into()]),
        Command::Data,
        Command::Header("Subject".into(), "hi".into()),
        Command::EndOfHeaders,
        Command::Body(b"body\r\n".to_vec()),
        Command::EndOfBody,
        Command::Abort,
    ]
}

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input)
        && let Ok(address) = Address::parse(text)
    {
        assert_eq!(Address::parse(&address.to_string()), Ok(address));
    }
    let (mut session, _) = Session::new(Offer::default(), MAX_BODY);
    let mut decoder = Decoder::default();
    let steps = steps();
    let mut next = 0usize;
    decoder.feed(input);
    loop {
        let r = match decoder.decode() {
            Ok(Some(r)) => r,
            Ok(None) => {
                assert!(decoder.pending() <= input.len());
                break;
            }
            Err(_) => break,
        };
        match session.receive(r) {
            Err(_) => {
                assert_eq!(session.send(&Command::Data), Err(MilterError::Closed));
                break;
            }
            Ok(Received::Pending) => continue,
            Ok(Received::Answer(a)) => {
                for m in &a.modifications {
                    if let Modification::ReplaceBody(b) = m {
                        assert!(b.len() <= MAX_BODY);
                    }
                }
            }
            Ok(Received::Negotiated { .. }) => {}
        }
        // Send steps until one awaits an answer.
        for _ in 0..steps.len() {
            if session.awaiting().is_some() {
                break;
            }
            let cmd = &steps[next % steps.len()];
            next += 1;
            if session.send(cmd).is_err() {
                return;
            }
        }
    }
});
