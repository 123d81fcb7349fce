//! `Command::parse` on arbitrary lines: never panics; every error converts into a reply; every
//! accepted command, written back out in wire form, parses again to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_smtp::address::{self, ForwardPath, Mailbox, ReversePath};
use postrider_smtp::command::{Command, Notify, encode_xtext};

fuzz_target!(|line: &[u8]| {
    let parsed = Command::parse(line);

    // The verb is case-insensitive: lower-casing it changes nothing.
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let mut lowered = line.to_vec();
    lowered[..verb_end].make_ascii_lowercase();
    assert_eq!(
        Command::parse(&lowered),
        parsed,
        "verb case changed the result"
    );

    let cmd = match parsed {
        Ok(cmd) => cmd,
        Err(err) => {
            let reply = err.reply();
            let mut out = Vec::new();
            reply.write_to(&mut out);
            assert!(out.ends_with(b"\r\n"));
            assert!((500..600).contains(&reply.code()));
            let _ = err.to_string();
            return;
        }
    };
    let _ = cmd.verb();
    let _ = format!("{cmd:?}");
    match &cmd {
        Command::Mail { from, params, .. } => {
            let _ = (
                from.address(),
                from.is_ascii(),
                params.is_empty(),
                params.keywords(),
            );
            assert!(params.smtputf8 || from.is_ascii());
        }
        Command::Rcpt { to, params, .. } => {
            let _ = (to.address(), to.is_ascii(), params.is_empty());
        }
        _ => {}
    }

    // Round trip through the wire form.
    let Some(wire) = render(&cmd) else {
        return;
    };
    let again = Command::parse(wire.as_bytes())
        .unwrap_or_else(|e| panic!("rendered {wire:?} of {cmd:?} does not parse: {e:?}"));
    assert_eq!(
        normalize(again),
        normalize(cmd.clone()),
        "round trip through {wire:?}"
    );
});

/// The command as a client would write it; `None` where the written path would be longer
/// than a path may be (an IPv6 literal's canonical form can be longer than what was sent).
fn render(cmd: &Command) -> Option<String> {
    Some(match cmd {
        Command::Ehlo(d) => format!("EHLO {d}"),
        Command::Helo(d) => format!("HELO {d}"),
        Command::Mail { from, params, .. } => {
            let path = from.to_string();
            if path.len() > address::MAX_PATH {
                return None;
            }
            let mut s = format!("MAIL FROM:{path}");
            if let Some(size) = params.size {
                s += &format!(" SIZE={size}");
            }
            if let Some(body) = params.body {
                s += &format!(" BODY={}", body.keyword());
            }
            if params.smtputf8 {
                s += " SMTPUTF8";
            }
            if let Some(ret) = params.ret {
                s += &format!(" RET={}", ret.keyword());
            }
            if let Some(envid) = &params.envid {
                s += &format!(" ENVID={}", encode_xtext(envid));
            }
            if let Some(auth) = &params.auth {
                s += &format!(" AUTH={}", encode_xtext(auth));
            }
            s
        }
        Command::Rcpt { to, params, .. } => {
            let path = to.to_string();
            if path.len() > address::MAX_PATH {
                return None;
            }
            let mut s = format!("RCPT TO:{path}");
            match params.notify {
                None => {}
                Some(Notify::Never) => s += " NOTIFY=NEVER",
                Some(Notify::On(on)) => {
                    let flags: Vec<&str> = [
                        (on.success, "SUCCESS"),
                        (on.failure, "FAILURE"),
                        (on.delay, "DELAY"),
                    ]
                    .into_iter()
                    .filter_map(|(set, name)| set.then_some(name))
                    .collect();
                    s += &format!(" NOTIFY={}", flags.join(","));
                }
            }
            if let Some((addr_type, addr)) = &params.orcpt {
                s += &format!(" ORCPT={addr_type};{}", encode_xtext(addr));
            }
            s
        }
        Command::Data => "DATA".to_owned(),
        Command::Bdat { size, last } => {
            format!("BDAT {size}{}", if *last { " LAST" } else { "" })
        }
        Command::Rset => "RSET".to_owned(),
        Command::Noop => "NOOP".to_owned(),
        Command::Quit => "QUIT".to_owned(),
        Command::Help => "HELP".to_owned(),
        Command::Vrfy(s) => format!("VRFY {s}"),
        Command::Expn(s) => format!("EXPN {s}"),
        Command::StartTls => "STARTTLS".to_owned(),
        Command::Auth { mechanism, initial } => match initial {
            Some(initial) => format!("AUTH {mechanism} {initial}"),
            None => format!("AUTH {mechanism}"),
        },
    })
}

/// What a round trip keeps: a discarded source route is not written back, and a local part's
/// unnecessary quoting is dropped when rendering.
fn normalize(cmd: Command) -> Command {
    let plain = |m: Mailbox| Mailbox::new(m.local_part, m.domain);
    match cmd {
        Command::Mail { from, params, .. } => Command::Mail {
            from: match from {
                ReversePath::Mailbox(m) => ReversePath::Mailbox(plain(m)),
                ReversePath::Null => ReversePath::Null,
            },
            params,
            source_route: false,
        },
        Command::Rcpt { to, params, .. } => Command::Rcpt {
            to: match to {
                ForwardPath::Mailbox(m) => ForwardPath::Mailbox(plain(m)),
                ForwardPath::Postmaster => ForwardPath::Postmaster,
            },
            params,
            source_route: false,
        },
        other => other,
    }
}
