//! One milter connection as a state machine, without I/O: what to send at each step of an
//! SMTP transaction (or not, as negotiated), which response it waits for, and what the
//! milter's answers mean. The caller writes [`Session::send`]'s bytes, feeds what it reads to
//! a [`crate::Decoder`] and hands each response to [`Session::receive`].

use postrider_smtp::reply::{EnhancedCode, Reply};

use crate::MilterError;
use crate::codec::{BODY_CHUNK, Command, Response, VERSION, action, protocol};

/// What the MTA allows a milter: actions (`codec::action`) and steps it may leave out
/// (`codec::protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Actions allowed.
    pub actions: u32,
    /// Protocol steps the milter may leave out or not answer.
    pub protocol: u32,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            actions: action::ALL,
            protocol: protocol::ALL,
        }
    }
}

/// A step of the transaction a milter may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The client connected.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA.
    Data,
    /// One header.
    Header,
    /// End of headers.
    EndOfHeaders,
    /// A body chunk.
    Body,
    /// End of the message.
    EndOfBody,
}

impl Step {
    /// The step a command is, if it is one.
    fn of(cmd: &Command) -> Option<Step> {
        Some(match cmd {
            Command::Connect { .. } => Step::Connect,
            Command::Helo(_) => Step::Helo,
            Command::Mail(_) => Step::Mail,
            Command::Rcpt(_) => Step::Rcpt,
            Command::Data => Step::Data,
            Command::Header(..) => Step::Header,
            Command::EndOfHeaders => Step::EndOfHeaders,
            Command::Body(_) => Step::Body,
            Command::EndOfBody => Step::EndOfBody,
            _ => return None,
        })
    }

    /// (not sent when the milter sets this, no reply when it sets this).
    fn flags(self) -> (u32, u32) {
        match self {
            Step::Connect => (protocol::NO_CONNECT, protocol::NR_CONNECT),
            Step::Helo => (protocol::NO_HELO, protocol::NR_HELO),
            Step::Mail => (protocol::NO_MAIL, protocol::NR_MAIL),
            Step::Rcpt => (protocol::NO_RCPT, protocol::NR_RCPT),
            Step::Data => (protocol::NO_DATA, protocol::NR_DATA),
            Step::Header => (protocol::NO_HEADERS, protocol::NR_HEADER),
            Step::EndOfHeaders => (protocol::NO_EOH, protocol::NR_EOH),
            Step::Body => (protocol::NO_BODY, protocol::NR_BODY),
            Step::EndOfBody => (0, 0),
        }
    }
}

/// The SMTP reply of a `y` response: "NNN [x.y.z] text", 4xx or 5xx; a multi-line reply
/// ("550-5.7.1 a\r\n550 5.7.1 b") keeps its lines. The text is made one printable line each,
/// so a milter cannot smuggle a line break into the relay's reply.
pub fn reply_of(s: &str) -> Result<Reply, MilterError> {
    let bad = || MilterError::Malformed("reply code is not 4xx or 5xx text");
    let code: u16 = s.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    if !(400..=599).contains(&code) {
        return Err(bad());
    }
    let mut enhanced = None;
    let mut lines = Vec::new();
    for (i, line) in s.split("\r\n").filter(|l| !l.is_empty()).enumerate() {
        let rest = match line.strip_prefix(&s[..3]) {
            Some(r) if r.is_empty() || r.starts_with([' ', '-']) => r.get(1..).unwrap_or(""),
            _ => return Err(bad()),
        };
        // The enhanced code of the first line stands for the reply (every line repeats it).
        let text = match rest.split_once(' ').map_or((rest, ""), |(e, t)| (e, t)) {
            (e, t) if i == 0 => match e.parse::<EnhancedCode>() {
                Ok(code_) if u16::from(code_.class) == code / 100 => {
                    enhanced = Some(code_);
                    t
                }
                _ => rest,
            },
            (e, t) if enhanced.is_some_and(|x| x.to_string() == e) => t,
            _ => rest,
        };
        let text: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    ' '
                }
            })
            .take(400)
            .collect();
        lines.push(text.trim().to_owned());
        if lines.len() == 10 {
            break;
        }
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    Reply::multiline(code, enhanced, lines).map_err(|_| bad())
}

/// What a milter decided at a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// Accept: this milter wants nothing more of this message.
    Accept,
    /// Accept the message and throw it away (at RCPT: the recipient).
    Discard,
    /// Refuse (at RCPT: the recipient): its reply, or the MTA's default 5xx.
    Reject(Option<Reply>),
    /// Refuse for now: its reply, or the MTA's default 4xx.
    Tempfail(Option<Reply>),
}

/// A change to the message a milter asked for at the end of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    /// Add a header at the end.
    AddHeader(String, String),
    /// Insert a header at this position (0: first).
    InsertHeader(u32, String, String),
    /// Change the index-th (1-based) header of this name; an empty value deletes it.
    ChangeHeader(u32, String, String),
    /// Replace the whole body with this.
    ReplaceBody(Vec<u8>),
    /// Add a recipient (with ESMTP arguments).
    AddRcpt(String, Option<String>),
    /// Remove a recipient.
    DeleteRcpt(String),
    /// Change the envelope sender (with ESMTP arguments).
    ChangeFrom(String, Option<String>),
    /// Hold the message in quarantine with this reason.
    Quarantine(String),
}

/// The milter's answer to the step the session waited on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The step answered.
    pub step: Step,
    /// What it decided.
    pub verdict: Verdict,
    /// At the end of the body: the changes it asked for, in order.
    pub modifications: Vec<Modification>,
}

/// What [`Session::receive`] made of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Negotiation is done: the actions and steps agreed.
    Negotiated {
        /// Actions the milter may ask for.
        actions: u32,
        /// Steps it left out or will not answer.
        protocol: u32,
    },
    /// Not an answer yet (progress, or a modification before the end-of-body verdict).
    Pending,
    /// The step waited on is answered.
    Answer(Answer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// OPTNEG sent, waiting for the milter's.
    Negotiating,
    /// Nothing outstanding.
    Ready,
    /// A command was sent whose reply is due.
    Awaiting(Step),
    /// Quit sent, or the connection failed: nothing more.
    Closed,
}

/// One milter connection.
#[derive(Debug)]
pub struct Session {
    offer: Offer,
    state: State,
    actions: u32,
    protocol: u32,
    /// The milter said accept, discard, reject or skip: no more steps of this message
    /// (reject at RCPT only ends that recipient).
    message_done: bool,
    /// Skip answered to a body chunk: no more chunks.
    body_skipped: bool,
    modifications: Vec<Modification>,
    /// Bytes of body replacement collected, bounded by `max_body`.
    replacement: Option<Vec<u8>>,
    max_body: usize,
}

impl Session {
    /// A session offering `offer`; the bytes are the negotiation to send first. A body
    /// replacement larger than `max_body` bytes is refused (the caller's message size limit).
    pub fn new(offer: Offer, max_body: usize) -> (Session, Vec<u8>) {
        let bytes = Command::Negotiate {
            version: VERSION,
            actions: offer.actions,
            protocol: offer.protocol,
        }
        .encode();
        let session = Session {
            offer,
            state: State::Negotiating,
            actions: 0,
            protocol: 0,
            message_done: false,
            body_skipped: false,
            modifications: Vec::new(),
            replacement: None,
            max_body,
        };
        (session, bytes)
    }

    /// True when `step` is to be sent to this milter now: negotiated, not left out by it,
    /// and the milter has not finished with the message.
    pub fn wants(&self, step: Step) -> bool {
        if self.state != State::Ready {
            return false;
        }
        let per_message = !matches!(step, Step::Connect | Step::Helo);
        if per_message && self.message_done {
            return false;
        }
        if step == Step::Body && self.body_skipped {
            return false;
        }
        self.protocol & step.flags().0 == 0
    }

    /// The bytes to write for `cmd` (macros, abort and quit included); after a step command
    /// that the milter answers, [`Session::awaiting`] says so until the answer arrives. A
    /// step it does not want gives no bytes.
    pub fn send(&mut self, cmd: &Command) -> Result<Vec<u8>, MilterError> {
        match (self.state, cmd) {
            (State::Closed, _) => return Err(MilterError::Closed),
            (State::Negotiating | State::Awaiting(_), _) => {
                return Err(MilterError::OutOfOrder("a command while an answer is due"));
            }
            (State::Ready, _) => {}
        }
        match cmd {
            Command::Negotiate { .. } => {
                return Err(MilterError::OutOfOrder("negotiation happens once, first"));
            }
            Command::Abort => {
                self.reset_message();
                return Ok(cmd.encode());
            }
            Command::Quit | Command::QuitNewConnection => {
                self.state = if matches!(cmd, Command::Quit) {
                    State::Closed
                } else {
                    self.reset_message();
                    State::Ready
                };
                return Ok(cmd.encode());
            }
            Command::Macros { .. } => return Ok(cmd.encode()),
            _ => {}
        }
        let Some(step) = Step::of(cmd) else {
            return Ok(Vec::new());
        };
        if step == Step::EndOfBody {
            // The end of the message is always sent unless the milter is done with it.
            if self.message_done {
                return Ok(Vec::new());
            }
        } else if !self.wants(step) {
            return Ok(Vec::new());
        }
        if let Command::Body(chunk) = cmd
            && chunk.len() > BODY_CHUNK
        {
            return Err(MilterError::OutOfOrder("a body chunk over 65535 bytes"));
        }
        if self.protocol & step.flags().1 == 0 {
            self.state = State::Awaiting(step);
        }
        Ok(cmd.encode())
    }

    /// The actions negotiated (`codec::action`).
    pub fn actions(&self) -> u32 {
        self.actions
    }

    /// The steps the milter leaves out or does not answer (`codec::protocol`), as agreed.
    pub fn protocol(&self) -> u32 {
        self.protocol
    }

    /// The step whose answer is due, if any.
    pub fn awaiting(&self) -> Option<Step> {
        match self.state {
            State::Awaiting(s) => Some(s),
            _ => None,
        }
    }

    /// True until negotiation is done.
    pub fn negotiating(&self) -> bool {
        self.state == State::Negotiating
    }

    fn reset_message(&mut self) {
        self.message_done = false;
        self.body_skipped = false;
        self.modifications.clear();
        self.replacement = None;
    }

    fn allowed(&self, flag: u32) -> Result<(), MilterError> {
        if self.actions & flag == flag {
            Ok(())
        } else {
            Err(MilterError::NotNegotiated(flag))
        }
    }

    /// Takes one response. Errors leave the session closed: the caller applies the milter's
    /// failure policy and drops the connection.
    pub fn receive(&mut self, r: Response) -> Result<Received, MilterError> {
        let out = self.receive_inner(r);
        if out.is_err() {
            self.state = State::Closed;
        }
        out
    }

    fn receive_inner(&mut self, r: Response) -> Result<Received, MilterError> {
        let step = match self.state {
            State::Closed => return Err(MilterError::Closed),
            State::Ready => return Err(MilterError::OutOfOrder("a response nobody asked for")),
            State::Negotiating => {
                let Response::Negotiate {
                    version,
                    actions,
                    protocol,
                } = r
                else {
                    return Err(MilterError::OutOfOrder("a response before negotiation"));
                };
                if !(2..=VERSION).contains(&version) {
                    return Err(MilterError::Version(version));
                }
                if actions & !self.offer.actions != 0 {
                    return Err(MilterError::NotNegotiated(actions & !self.offer.actions));
                }
                // Steps we did not offer to leave out are sent anyway.
                self.actions = actions;
                self.protocol = protocol & self.offer.protocol;
                self.state = State::Ready;
                return Ok(Received::Negotiated {
                    actions,
                    protocol: self.protocol,
                });
            }
            State::Awaiting(step) => step,
        };
        let at_end = step == Step::EndOfBody;
        let verdict = match r {
            Response::Negotiate { .. } => return Err(MilterError::OutOfOrder("negotiation again")),
            Response::Progress => return Ok(Received::Pending),
            Response::Continue => Verdict::Continue,
            Response::Accept => Verdict::Accept,
            Response::Discard => Verdict::Discard,
            Response::Reject => Verdict::Reject(None),
            Response::Tempfail => Verdict::Tempfail(None),
            Response::ReplyCode(text) => {
                let reply = reply_of(&text)?;
                if reply.code() >= 500 {
                    Verdict::Reject(Some(reply))
                } else {
                    Verdict::Tempfail(Some(reply))
                }
            }
            Response::Skip => {
                if step != Step::Body || self.protocol & protocol::SKIP == 0 {
                    return Err(MilterError::OutOfOrder("skip outside a body chunk"));
                }
                self.body_skipped = true;
                Verdict::Continue
            }
            modification => {
                if !at_end {
                    return Err(MilterError::OutOfOrder(
                        "a modification before the end of body",
                    ));
                }
                self.modification(modification)?;
                return Ok(Received::Pending);
            }
        };
        self.state = State::Ready;
        let ends_message = match (&verdict, step) {
            (Verdict::Continue, _) => false,
            // Reject or tempfail of one recipient leaves the others.
            (Verdict::Reject(_) | Verdict::Tempfail(_), Step::Rcpt) => false,
            _ => true,
        };
        if ends_message && !matches!(step, Step::Connect | Step::Helo) {
            self.message_done = true;
        }
        let mut modifications = std::mem::take(&mut self.modifications);
        if let Some(body) = self.replacement.take() {
            modifications.push(Modification::ReplaceBody(body));
        }
        if at_end {
            // The next message starts afresh.
            self.message_done = false;
            self.body_skipped = false;
        }
        Ok(Received::Answer(Answer {
            step,
            verdict,
            modifications,
        }))
    }

    fn modification(&mut self, r: Response) -> Result<(), MilterError> {
        let m = match r {
            Response::AddHeader(n, v) => {
                self.allowed(action::ADD_HEADERS)?;
                Modification::AddHeader(n, v)
            }
            Response::InsertHeader(i, n, v) => {
                self.allowed(action::ADD_HEADERS)?;
                Modification::InsertHeader(i, n, v)
            }
            Response::ChangeHeader(i, n, v) => {
                self.allowed(action::CHANGE_HEADERS)?;
                Modification::ChangeHeader(i, n, v)
            }
            Response::ReplaceBody(chunk) => {
                self.allowed(action::CHANGE_BODY)?;
                let body = self.replacement.get_or_insert_with(Vec::new);
                if body.len() + chunk.len() > self.max_body {
                    return Err(MilterError::BodyTooLarge(self.max_body));
                }
                body.extend_from_slice(&chunk);
                return Ok(());
            }
            Response::AddRcpt(rcpt) => {
                self.allowed(action::ADD_RCPT)?;
                Modification::AddRcpt(rcpt, None)
            }
            Response::AddRcptPar(rcpt, args) => {
                self.allowed(action::ADD_RCPT_PAR)?;
                Modification::AddRcpt(rcpt, Some(args))
            }
            Response::DeleteRcpt(rcpt) => {
                self.allowed(action::DELETE_RCPT)?;
                Modification::DeleteRcpt(rcpt)
            }
            Response::ChangeFrom(from, args) => {
                self.allowed(action::CHANGE_FROM)?;
                Modification::ChangeFrom(from, args)
            }
            Response::Quarantine(reason) => {
                self.allowed(action::QUARANTINE)?;
                Modification::Quarantine(reason)
            }
            _ => return Err(MilterError::OutOfOrder("not a modification")),
        };
        // A milter that floods modifications cannot grow memory without bound.
        if self.modifications.len() >= MAX_MODIFICATIONS {
            return Err(MilterError::TooManyModifications);
        }
        self.modifications.push(m);
        Ok(())
    }
}

/// Most modifications one milter may ask for per message.
pub const MAX_MODIFICATIONS: usize = 10_000;
