//! The server session state machine (RFC 5321 §4, with PIPELINING, CHUNKING,
//! STARTTLS and AUTH). Sans-IO: the caller feeds bytes, polls events, makes the
//! policy decisions the events ask for, and sends [`Session::output`].

use std::fmt;

use crate::address::{Domain, ForwardPath, ReversePath};
use crate::command::{Command, MailParams, RcptParams};
pub use crate::data::LineEndings;
use crate::data::{BdatReceiver, DataReceiver, Limits};
use crate::reply::{EnhancedCode, Reply};
use crate::sasl::{self, MAX_SASL_LINE, SaslError};

/// Maximum command line length, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;

/// Per-listener settings of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our host name, used in the greeting, EHLO and 421 replies.
    pub hostname: String,
    /// Advertised SIZE; larger messages get 552 5.3.4.
    pub max_message_size: u64,
    /// Recipients per transaction; beyond it RCPT gets 452 4.5.3.
    pub max_recipients: usize,
    /// Error replies tolerated before 421 4.7.0 closes the session.
    pub max_bad_commands: u32,
    /// Maximum header section size of a message.
    pub max_header_size: usize,
    /// Treatment of bare CR and LF in message content.
    pub line_endings: LineEndings,
    /// STARTTLS is available (the listener has a certificate).
    pub starttls: bool,
    /// AUTH PLAIN and LOGIN are available, once TLS is active.
    pub auth: bool,
    /// MAIL requires a successful AUTH first (submission).
    pub auth_required: bool,
    /// Advertise CHUNKING and accept BDAT.
    pub chunking: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".to_owned(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_bad_commands: 20,
            max_header_size: 64 * 1024,
            line_endings: LineEndings::Reject,
            starttls: false,
            auth: false,
            auth_required: false,
            chunking: true,
        }
    }
}

/// Which timeout applies now (RFC 5321 §4.5.3.2); the caller maps it to a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Waiting for a command or SASL response.
    Command,
    /// Receiving DATA or BDAT content.
    DataBlock,
}

/// The SASL mechanism used by an AUTH exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    /// RFC 4616 PLAIN.
    Plain,
    /// The LOGIN mechanism (username, then password).
    Login,
}

/// A complete message and its envelope, handed over for queueing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The MAIL FROM reverse-path.
    pub from: ReversePath,
    /// The MAIL FROM parameters.
    pub mail_params: MailParams,
    /// Accepted recipients, in order.
    pub recipients: Vec<(ForwardPath, RcptParams)>,
    /// The message: canonical CRLF text, dot-unstuffed, without the terminator.
    pub data: Vec<u8>,
}

/// The mail transaction in progress (after an accepted MAIL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The MAIL FROM reverse-path.
    pub from: ReversePath,
    /// The MAIL FROM parameters.
    pub mail_params: MailParams,
    /// Recipients accepted so far.
    pub recipients: Vec<(ForwardPath, RcptParams)>,
}

/// Something the caller must act on.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// EHLO (`extended`) or HELO; decide with accept or reject.
    Helo {
        /// The client's claimed name.
        domain: Domain,
        /// True for EHLO.
        extended: bool,
    },
    /// MAIL FROM passed the protocol checks; decide with accept or reject.
    MailFrom {
        /// The sender.
        from: ReversePath,
        /// The parameters.
        params: MailParams,
        /// A source route was present and discarded.
        source_route: bool,
    },
    /// RCPT TO passed the protocol checks; decide with accept or reject.
    RcptTo {
        /// The recipient.
        to: ForwardPath,
        /// The parameters.
        params: RcptParams,
        /// A source route was present and discarded.
        source_route: bool,
    },
    /// DATA passed the protocol checks; accept sends 354.
    DataStart,
    /// A complete message; store it, then call queued or reject.
    Message(Box<Envelope>),
    /// The 220 reply to STARTTLS is in the output: flush it, handshake, then call
    /// tls_established. Bytes pipelined after STARTTLS were discarded (CVE-2011-0411).
    StartTls,
    /// Credentials to verify; call auth_succeeded or reject (535 5.7.8).
    Auth {
        /// The mechanism used.
        mechanism: AuthMechanism,
        /// The authorization identity (empty if none).
        authzid: String,
        /// The authentication identity.
        username: String,
        /// The password.
        password: String,
    },
    /// Flush the output and close the connection.
    Close,
}

impl fmt::Debug for Event {
    /// Like a derived `Debug`, but never prints the AUTH password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Helo { domain, extended } => f
                .debug_struct("Helo")
                .field("domain", domain)
                .field("extended", extended)
                .finish(),
            Self::MailFrom {
                from,
                params,
                source_route,
            } => f
                .debug_struct("MailFrom")
                .field("from", from)
                .field("params", params)
                .field("source_route", source_route)
                .finish(),
            Self::RcptTo {
                to,
                params,
                source_route,
            } => f
                .debug_struct("RcptTo")
                .field("to", to)
                .field("params", params)
                .field("source_route", source_route)
                .finish(),
            Self::DataStart => f.write_str("DataStart"),
            Self::Message(envelope) => f.debug_tuple("Message").field(envelope).finish(),
            Self::StartTls => f.write_str("StartTls"),
            Self::Auth {
                mechanism,
                authzid,
                username,
                password: _,
            } => f
                .debug_struct("Auth")
                .field("mechanism", mechanism)
                .field("authzid", authzid)
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Close => f.write_str("Close"),
        }
    }
}

/// The decision method called does not match the pending event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SMTP session API misuse: {0}")]
pub struct Misuse(&'static str);

/// What the input bytes mean right now.
#[derive(Debug)]
enum Mode {
    /// Command lines.
    Command,
    /// SASL response lines of an AUTH exchange.
    Sasl(SaslStep),
    /// DATA content until CRLF.CRLF.
    Data(DataReceiver),
    /// BDAT chunk content, stored in `Session::bdat`.
    Chunk,
    /// BDAT chunk content that is thrown away, then `reply` is sent.
    Discard {
        /// Octets still to skip.
        remaining: u64,
        /// The reply for the refused BDAT.
        reply: Reply,
        /// Whether `reply` counts toward `max_bad_commands` (not for the chunks
        /// skipped after a failed BDAT: one failure, one count).
        counted: bool,
    },
    /// Waiting for the TLS handshake after STARTTLS; input is discarded.
    TlsHandshake,
    /// The session is over.
    Closed,
}

/// Where an AUTH exchange stands.
#[derive(Debug)]
enum SaslStep {
    /// PLAIN: waiting for the response to the empty challenge.
    Plain,
    /// LOGIN: waiting for the username.
    LoginUsername,
    /// LOGIN: waiting for the password.
    LoginPassword {
        /// The username already received.
        username: String,
    },
}

/// The event awaiting the caller's decision, with what the decision needs.
#[derive(Debug)]
enum Pending {
    Helo {
        domain: Domain,
        extended: bool,
    },
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    Data,
    Message,
    StartTls,
    Auth,
}

/// One line read from the input.
enum LineRead {
    /// A line, CRLF removed.
    Line(Vec<u8>),
    /// The line exceeded the limit and was discarded; `bdat` if its verb was BDAT.
    TooLong { bdat: bool },
    /// The line ended in LF without CR; `bdat` if its verb was BDAT.
    BareLf { bdat: bool },
    /// No complete line buffered yet.
    NeedMore,
}

/// What one processing step produced.
enum Flow {
    Event(Event),
    Continue,
    NeedInput,
}

/// An SMTP server session: protocol state, input buffer and pending output.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    tls: bool,
    input: Vec<u8>,
    pos: usize,
    /// An overlong line is being dropped; `Some(true)` if its verb is BDAT.
    discarding_line: Option<bool>,
    output: Vec<u8>,
    mode: Mode,
    pending: Option<Pending>,
    helo: Option<Domain>,
    esmtp: bool,
    authenticated: Option<String>,
    transaction: Option<Transaction>,
    rcpt_attempted: bool,
    bdat: Option<BdatReceiver>,
    /// A non-last BDAT chunk failed: the client's pipelined follow-up chunks are
    /// refused without counting as bad commands, until a LAST chunk or another command.
    bdat_failed: bool,
    greeting_rejected: bool,
    bad_commands: u32,
    close_reported: bool,
}

/// True if the verb of a raw command line (the octets up to the first space or
/// control character) is `verb`, case-insensitively, whether or not the line parses.
fn has_verb(line: &[u8], verb: &str) -> bool {
    let end = line
        .iter()
        .position(|&b| b <= b' ' || b == 0x7f)
        .unwrap_or(line.len());
    line.get(..end)
        .is_some_and(|v| v.eq_ignore_ascii_case(verb.as_bytes()))
}

/// Shorthand for the crate's fixed replies.
fn reply(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply::local(code, e, text)
}

impl Session {
    /// Creates a session; `tls` is true on implicit-TLS listeners.
    /// Control characters and spaces in the host name are dropped.
    pub fn new(mut config: SessionConfig, tls: bool) -> Self {
        config.hostname.retain(|c| !c.is_control() && c != ' ');
        Self {
            config,
            tls,
            input: Vec::new(),
            pos: 0,
            discarding_line: None,
            output: Vec::new(),
            mode: Mode::Command,
            pending: None,
            helo: None,
            esmtp: false,
            authenticated: None,
            transaction: None,
            rcpt_attempted: false,
            bdat: None,
            bdat_failed: false,
            greeting_rejected: false,
            bad_commands: 0,
            close_reported: false,
        }
    }

    /// Writes the `220 <hostname> ESMTP Postrider` greeting.
    pub fn greet(&mut self) {
        let text = format!("{} ESMTP Postrider", self.config.hostname);
        self.send(&Reply::sanitized(220, None, &text));
    }

    /// Writes a refusing greeting: after 554 only QUIT works; 421 closes.
    pub fn greet_reject(&mut self, reply: Reply) {
        self.greeting_rejected = true;
        self.send(&reply);
    }

    /// Appends received bytes. Ignored once closed and during the TLS handshake.
    ///
    /// The caller should stop reading while [`Session::wants_input`] is false.
    pub fn feed(&mut self, bytes: &[u8]) {
        if matches!(self.mode, Mode::Closed | Mode::TlsHandshake) {
            return;
        }
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// Processes buffered input until an event needs the caller; `None` when input is
    /// exhausted or a decision is pending. Flush the output when this returns `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        loop {
            if matches!(self.mode, Mode::Closed) {
                if self.close_reported {
                    return None;
                }
                self.close_reported = true;
                return Some(Event::Close);
            }
            if self.pending.is_some() {
                return None;
            }
            match self.step() {
                Flow::Event(event) => return Some(event),
                Flow::Continue => {}
                Flow::NeedInput => return None,
            }
        }
    }

    /// True when no decision is pending and the session is open.
    pub fn wants_input(&self) -> bool {
        self.pending.is_none() && !self.is_closed()
    }

    /// Replies not yet sent.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Takes the replies to send.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// True after QUIT or a 421: flush the output, then close the socket.
    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    /// The timeout that applies to the next read.
    pub fn timeout_phase(&self) -> TimeoutPhase {
        match self.mode {
            Mode::Data(_) | Mode::Chunk | Mode::Discard { .. } => TimeoutPhase::DataBlock,
            _ => TimeoutPhase::Command,
        }
    }

    /// True while message content is being received: inside DATA, or between the BDAT
    /// chunks of one message.
    pub fn message_in_progress(&self) -> bool {
        matches!(self.mode, Mode::Data(_) | Mode::Chunk) || self.bdat.is_some()
    }

    /// The message content stored since the last [`Session::clear_pending_content`] (empty
    /// outside a message). A caller that keeps large messages out of memory moves these
    /// octets elsewhere (e.g. a file), clears them, and puts them back in front of
    /// [`Envelope::data`], which then holds only the rest.
    pub fn pending_content(&self) -> &[u8] {
        match (&self.mode, &self.bdat) {
            (Mode::Data(rx), _) => rx.pending(),
            (_, Some(rx)) => rx.pending(),
            _ => &[],
        }
    }

    /// Forgets the content returned by [`Session::pending_content`]; the size limits still
    /// count it.
    pub fn clear_pending_content(&mut self) {
        match (&mut self.mode, &mut self.bdat) {
            (Mode::Data(rx), _) => rx.clear_pending(),
            (_, Some(rx)) => rx.clear_pending(),
            _ => {}
        }
    }

    /// The read timed out: writes 421 4.4.2 and closes.
    pub fn timed_out(&mut self) {
        if !self.is_closed() {
            let text = format!("{} Error: timeout exceeded", self.config.hostname);
            self.send(&Reply::sanitized(
                421,
                Some(EnhancedCode::new(4, 4, 2)),
                &text,
            ));
        }
    }

    /// The server is stopping: writes 421 4.3.2 and closes.
    pub fn shutdown(&mut self) {
        if !self.is_closed() {
            let text = format!("{} Service shutting down", self.config.hostname);
            self.send(&Reply::sanitized(
                421,
                Some(EnhancedCode::new(4, 3, 2)),
                &text,
            ));
        }
    }

    /// Accepts a pending Helo, MailFrom, RcptTo or DataStart.
    pub fn accept(&mut self) -> Result<(), Misuse> {
        match self.pending.take() {
            Some(Pending::Helo { domain, extended }) => {
                self.reset_transaction();
                self.helo = Some(domain);
                self.esmtp = extended;
                let r = if extended {
                    self.ehlo_reply()
                } else {
                    Reply::sanitized(250, None, &self.config.hostname)
                };
                self.send(&r);
            }
            Some(Pending::Mail { from, params }) => {
                self.transaction = Some(Transaction {
                    from,
                    mail_params: params,
                    recipients: Vec::new(),
                });
                self.rcpt_attempted = false;
                self.send(&reply(250, (2, 1, 0), "Ok"));
            }
            Some(Pending::Rcpt { to, params }) => {
                if let Some(tx) = &mut self.transaction {
                    tx.recipients.push((to, params));
                }
                self.send(&reply(250, (2, 1, 5), "Ok"));
            }
            Some(Pending::Data) => {
                self.mode = Mode::Data(DataReceiver::new(self.limits()));
                self.send(&Reply::fixed(354, None, "End data with <CR><LF>.<CR><LF>"));
            }
            other => {
                self.pending = other;
                return Err(Misuse(
                    "accept() without a pending Helo, MailFrom, RcptTo or DataStart",
                ));
            }
        }
        Ok(())
    }

    /// Accepts a pending RcptTo but records `to` instead of the address the client
    /// gave (e.g. a plugin rewrote the recipient); replies `250 2.1.5 Ok`. The RCPT
    /// parameters are kept.
    ///
    /// A non-ASCII `to` needs a transaction with SMTPUTF8; otherwise this is a
    /// [`Misuse`] and the decision stays pending.
    pub fn accept_rcpt_as(&mut self, to: ForwardPath) -> Result<(), Misuse> {
        if !matches!(self.pending, Some(Pending::Rcpt { .. })) {
            return Err(Misuse("accept_rcpt_as() without a pending RcptTo"));
        }
        let smtputf8 = self
            .transaction
            .as_ref()
            .is_some_and(|tx| tx.mail_params.smtputf8);
        if !smtputf8 && !to.is_ascii() {
            return Err(Misuse(
                "accept_rcpt_as() with a non-ASCII address in a transaction without SMTPUTF8",
            ));
        }
        let Some(Pending::Rcpt { params, .. }) = self.pending.take() else {
            return Err(Misuse("accept_rcpt_as() without a pending RcptTo"));
        };
        if let Some(tx) = &mut self.transaction {
            tx.recipients.push((to, params));
        }
        self.send(&reply(250, (2, 1, 5), "Ok"));
        Ok(())
    }

    /// Refuses any pending decision except StartTls with a 4xx/5xx reply; 421 closes.
    pub fn reject(&mut self, reply: Reply) -> Result<(), Misuse> {
        if reply.is_positive() {
            return Err(Misuse("reject() needs a 4xx or 5xx reply"));
        }
        match self.pending.take() {
            None => return Err(Misuse("reject() without a pending decision")),
            Some(Pending::StartTls) => {
                self.pending = Some(Pending::StartTls);
                return Err(Misuse("reject() while a TLS handshake is pending"));
            }
            Some(Pending::Message) => self.reset_transaction(),
            Some(_) => {}
        }
        self.send(&reply);
        Ok(())
    }

    /// Answers any pending decision (or none, e.g. at connect) with `reply` (4xx/5xx), then
    /// closes the session: a policy that wants the client gone (plugin `disconnect`).
    pub fn disconnect(&mut self, reply: Reply) -> Result<(), Misuse> {
        if reply.is_positive() {
            return Err(Misuse("disconnect() needs a 4xx or 5xx reply"));
        }
        if matches!(self.pending, Some(Pending::StartTls)) {
            return Err(Misuse("disconnect() while a TLS handshake is pending"));
        }
        self.pending = None;
        self.reset_transaction();
        reply.write_to(&mut self.output);
        self.close();
        Ok(())
    }

    /// The largest message accepted, in octets (the `SIZE` announced).
    pub fn max_message_size(&self) -> u64 {
        self.config.max_message_size
    }

    /// Reports a stored message: `250 2.0.0 Ok: queued as <id>`.
    pub fn queued(&mut self, queue_id: &str) -> Result<(), Misuse> {
        if !matches!(self.pending, Some(Pending::Message)) {
            return Err(Misuse("queued() without a pending Message"));
        }
        self.pending = None;
        self.reset_transaction();
        // A delivered message shows the client is not just probing: forgive past errors.
        self.bad_commands = 0;
        let text = format!("Ok: queued as {queue_id}");
        self.send(&Reply::sanitized(
            250,
            Some(EnhancedCode::new(2, 0, 0)),
            &text,
        ));
        Ok(())
    }

    /// Reports valid credentials: `235 2.7.0 Authentication successful`.
    pub fn auth_succeeded(&mut self, user: &str) -> Result<(), Misuse> {
        if !matches!(self.pending, Some(Pending::Auth)) {
            return Err(Misuse("auth_succeeded() without a pending Auth"));
        }
        self.pending = None;
        self.authenticated = Some(user.to_owned());
        self.send(&reply(235, (2, 7, 0), "Authentication successful"));
        Ok(())
    }

    /// The TLS handshake after STARTTLS succeeded: back to the fresh state (RFC 3207 §4.2).
    pub fn tls_established(&mut self) -> Result<(), Misuse> {
        if !matches!(self.pending, Some(Pending::StartTls)) {
            return Err(Misuse("tls_established() without a pending StartTls"));
        }
        self.pending = None;
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.authenticated = None;
        self.reset_transaction();
        self.input.clear();
        self.pos = 0;
        self.discarding_line = None;
        self.mode = Mode::Command;
        Ok(())
    }

    /// The domain of the accepted HELO/EHLO.
    pub fn helo(&self) -> Option<&Domain> {
        self.helo.as_ref()
    }

    /// True after an accepted EHLO.
    pub fn is_esmtp(&self) -> bool {
        self.esmtp
    }

    /// True when the connection is encrypted.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The authenticated user, if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The mail transaction in progress; `None` once its message was handed over.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.transaction.as_ref()
    }

    /// Octets received but not yet processed (for tests).
    #[cfg(test)]
    fn buffered_input_len(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_size: self.config.max_message_size,
            max_header_size: self.config.max_header_size,
            line_endings: self.config.line_endings,
        }
    }

    fn reset_transaction(&mut self) {
        self.transaction = None;
        self.rcpt_attempted = false;
        self.bdat = None;
    }

    fn close(&mut self) {
        self.mode = Mode::Closed;
        self.pending = None;
        self.input.clear();
        self.pos = 0;
    }

    /// Writes a reply, counting errors; 421 closes the session.
    ///
    /// `452` (e.g. 4.5.3 too many recipients) is not counted: it is flow control that
    /// a client legitimately hits by pipelining many RCPTs, not a sign of abuse.
    fn send(&mut self, r: &Reply) {
        self.send_counted(r, true);
    }

    /// Writes a reply; an error counts toward `max_bad_commands` only if `count`.
    fn send_counted(&mut self, r: &Reply, count: bool) {
        if self.is_closed() {
            return;
        }
        r.write_to(&mut self.output);
        if r.code() == 421 {
            self.close();
            return;
        }
        if count && r.code() >= 400 && r.code() != 452 {
            self.bad_commands = self.bad_commands.saturating_add(1);
            if self.bad_commands > self.config.max_bad_commands {
                let text = format!("{} Error: too many errors", self.config.hostname);
                self.send(&Reply::sanitized(
                    421,
                    Some(EnhancedCode::new(4, 7, 0)),
                    &text,
                ));
            }
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if self.config.chunking {
            lines.push("CHUNKING".to_owned());
        }
        lines.push("DSN".to_owned());
        // RFC 9422: the recipients one transaction may have (the one limit a session has).
        lines.push(format!("LIMITS RCPTMAX={}", self.config.max_recipients));
        if self.config.starttls && !self.tls {
            lines.push("STARTTLS".to_owned());
        }
        if self.config.auth && self.tls {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        // RFC 8689 section 4.1: only on a TLS session.
        if self.tls {
            lines.push("REQUIRETLS".to_owned());
        }
        Reply::fixed_lines(250, lines)
    }

    /// Reads one line of at most `max` octets (CRLF included) from the input.
    fn read_line(&mut self, max: usize) -> LineRead {
        let buf = self.input.get(self.pos..).unwrap_or_default();
        let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() >= max && self.discarding_line.is_none() {
                // The line cannot fit: drop it now so the buffer stays bounded,
                // remembering whether it was a BDAT command.
                self.discarding_line = Some(has_verb(buf, "BDAT"));
                self.input.clear();
                self.pos = 0;
            } else if self.discarding_line.is_some() {
                self.input.clear();
                self.pos = 0;
            }
            return LineRead::NeedMore;
        };
        let line = buf.get(..lf).unwrap_or_default();
        self.pos += lf + 1;
        if let Some(bdat) = self.discarding_line.take() {
            return LineRead::TooLong { bdat };
        }
        if lf + 1 > max {
            return LineRead::TooLong {
                bdat: has_verb(line, "BDAT"),
            };
        }
        match line.split_last() {
            Some((b'\r', text)) => LineRead::Line(text.to_vec()),
            _ => LineRead::BareLf {
                bdat: has_verb(line, "BDAT"),
            },
        }
    }

    fn step(&mut self) -> Flow {
        match &mut self.mode {
            Mode::Command => match self.read_line(MAX_COMMAND_LINE) {
                LineRead::Line(line) => self.command_line(&line),
                LineRead::TooLong { bdat: true } | LineRead::BareLf { bdat: true }
                    if !self.greeting_rejected =>
                {
                    self.malformed_bdat()
                }
                LineRead::TooLong { .. } => self.respond(500, (5, 5, 2), "Line too long"),
                LineRead::BareLf { .. } => {
                    self.respond(500, (5, 5, 2), "Bare LF in command line not allowed")
                }
                LineRead::NeedMore => Flow::NeedInput,
            },
            Mode::Sasl(_) => match self.read_line(MAX_SASL_LINE) {
                LineRead::Line(line) => self.sasl_line(&line),
                // RFC 4954 §6.
                LineRead::TooLong { .. } => self.sasl_abort(reply(
                    500,
                    (5, 5, 6),
                    "Authentication Exchange line is too long",
                )),
                LineRead::BareLf { .. } => {
                    self.sasl_abort(reply(500, (5, 5, 2), "Bare LF in command line not allowed"))
                }
                LineRead::NeedMore => Flow::NeedInput,
            },
            Mode::Data(rx) => {
                let buf = self.input.get(self.pos..).unwrap_or_default();
                if buf.is_empty() {
                    return Flow::NeedInput;
                }
                let progress = rx.receive(buf);
                self.pos += progress.consumed;
                if progress.done {
                    self.data_done()
                } else {
                    Flow::NeedInput
                }
            }
            Mode::Chunk => {
                let Some(rx) = &mut self.bdat else {
                    self.mode = Mode::Command;
                    return Flow::Continue;
                };
                let buf = self.input.get(self.pos..).unwrap_or_default();
                let progress = rx.receive(buf);
                self.pos += progress.consumed;
                if progress.done {
                    self.chunk_done()
                } else {
                    Flow::NeedInput
                }
            }
            Mode::Discard { remaining, .. } => {
                let buf = self.input.get(self.pos..).unwrap_or_default();
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.pos += take;
                *remaining -= take as u64;
                if *remaining > 0 {
                    return Flow::NeedInput;
                }
                if let Mode::Discard { reply, counted, .. } =
                    std::mem::replace(&mut self.mode, Mode::Command)
                {
                    self.send_counted(&reply, counted);
                }
                Flow::Continue
            }
            Mode::TlsHandshake | Mode::Closed => Flow::NeedInput,
        }
    }

    /// Sends a fixed reply and carries on with the next input.
    fn respond(&mut self, code: u16, e: (u8, u16, u16), text: &str) -> Flow {
        self.send(&reply(code, e, text));
        Flow::Continue
    }

    fn ask(&mut self, pending: Pending, event: Event) -> Flow {
        self.pending = Some(pending);
        Flow::Event(event)
    }

    fn command_line(&mut self, line: &[u8]) -> Flow {
        let parsed = Command::parse(line);
        if self.greeting_rejected {
            return match parsed {
                Ok(Command::Quit) => self.quit(),
                _ => self.respond(503, (5, 5, 1), "Error: only QUIT is allowed"),
            };
        }
        if !matches!(parsed, Ok(Command::Bdat { .. })) {
            self.bdat_failed = false;
        }
        let command = match parsed {
            Ok(command) => command,
            Err(err) => {
                if has_verb(line, "BDAT") {
                    return self.malformed_bdat();
                }
                if has_verb(line, "RCPT") && self.transaction.is_some() {
                    self.rcpt_attempted = true;
                }
                self.send(&err.reply());
                return Flow::Continue;
            }
        };
        match command {
            Command::Ehlo(domain) => self.ask(
                Pending::Helo {
                    domain: domain.clone(),
                    extended: true,
                },
                Event::Helo {
                    domain,
                    extended: true,
                },
            ),
            Command::Helo(domain) => self.ask(
                Pending::Helo {
                    domain: domain.clone(),
                    extended: false,
                },
                Event::Helo {
                    domain,
                    extended: false,
                },
            ),
            Command::Mail {
                from,
                params,
                source_route,
            } => self.mail(from, params, source_route),
            Command::Rcpt {
                to,
                params,
                source_route,
            } => self.rcpt(to, params, source_route),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.reset_transaction();
                self.respond(250, (2, 0, 0), "Ok")
            }
            Command::Noop => self.respond(250, (2, 0, 0), "Ok"),
            Command::Quit => self.quit(),
            Command::Help => self.respond(
                214,
                (2, 0, 0),
                "Postrider ESMTP, see https://www.rfc-editor.org/rfc/rfc5321",
            ),
            Command::Vrfy(_) => self.respond(
                252,
                (2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::Expn(_) => self.respond(502, (5, 5, 1), "Error: command not implemented"),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial.as_deref()),
        }
    }

    fn quit(&mut self) -> Flow {
        self.send(&reply(221, (2, 0, 0), "Bye"));
        self.close();
        Flow::Continue
    }

    fn mail(&mut self, from: ReversePath, params: MailParams, source_route: bool) -> Flow {
        if self.helo.is_none() {
            return self.respond(503, (5, 5, 1), "Error: send HELO/EHLO first");
        }
        if self.transaction.is_some() {
            return self.respond(503, (5, 5, 1), "Error: nested MAIL command");
        }
        if self.config.auth_required && self.authenticated.is_none() {
            return self.respond(530, (5, 7, 0), "Authentication required");
        }
        if !self.esmtp && !params.is_empty() {
            return self.respond(555, (5, 5, 4), "ESMTP parameters require EHLO");
        }
        if params.require_tls && !self.tls {
            return self.respond(530, (5, 7, 10), "REQUIRETLS needs a TLS session");
        }
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_size)
        {
            return self.respond(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            );
        }
        let pending = Pending::Mail {
            from: from.clone(),
            params: params.clone(),
        };
        self.ask(
            pending,
            Event::MailFrom {
                from,
                params,
                source_route,
            },
        )
    }

    fn rcpt(&mut self, to: ForwardPath, params: RcptParams, source_route: bool) -> Flow {
        let Some(tx) = &self.transaction else {
            return self.respond(503, (5, 5, 1), "Error: need MAIL command");
        };
        let smtputf8 = tx.mail_params.smtputf8;
        let full = tx.recipients.len() >= self.config.max_recipients;
        self.rcpt_attempted = true;
        if self.bdat.is_some() {
            return self.respond(503, (5, 5, 1), "Error: BDAT transaction in progress");
        }
        if !self.esmtp && !params.is_empty() {
            return self.respond(555, (5, 5, 4), "ESMTP parameters require EHLO");
        }
        if !smtputf8 && !to.is_ascii() {
            return self.respond(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8");
        }
        if full {
            return self.respond(452, (4, 5, 3), "Error: too many recipients");
        }
        let pending = Pending::Rcpt {
            to: to.clone(),
            params: params.clone(),
        };
        self.ask(
            pending,
            Event::RcptTo {
                to,
                params,
                source_route,
            },
        )
    }

    fn data(&mut self) -> Flow {
        let Some(tx) = &self.transaction else {
            return self.respond(503, (5, 5, 1), "Error: need MAIL command");
        };
        if self.bdat.is_some() {
            return self.respond(503, (5, 5, 1), "Error: BDAT transaction in progress");
        }
        if let Some(refusal) = self.no_recipients_refusal(tx) {
            self.send(&refusal);
            return Flow::Continue;
        }
        self.ask(Pending::Data, Event::DataStart)
    }

    /// DATA or BDAT without an accepted recipient: 554 if RCPTs were attempted
    /// (all refused or unparsable), 503 if none was sent.
    fn no_recipients_refusal(&self, tx: &Transaction) -> Option<Reply> {
        if !tx.recipients.is_empty() {
            None
        } else if self.rcpt_attempted {
            Some(reply(554, (5, 5, 1), "Error: no valid recipients"))
        } else {
            Some(reply(503, (5, 5, 1), "Error: need RCPT command"))
        }
    }

    /// A BDAT command line that does not parse (bad size, extra words, bare LF,
    /// overlong): the chunk length is unknown, so the chunk octets that follow
    /// cannot be skipped and must not run as commands. `421 4.5.0` and close.
    fn malformed_bdat(&mut self) -> Flow {
        let text = format!(
            "{} Error: malformed BDAT command, closing connection",
            self.config.hostname
        );
        self.send(&Reply::sanitized(
            421,
            Some(EnhancedCode::new(4, 5, 0)),
            &text,
        ));
        Flow::Continue
    }

    fn bdat(&mut self, size: u64, last: bool) -> Flow {
        let refusal = if !self.config.chunking {
            Some(reply(502, (5, 5, 1), "Error: command not implemented"))
        } else {
            match &self.transaction {
                None => Some(reply(503, (5, 5, 1), "Error: need MAIL command")),
                Some(tx) => self.no_recipients_refusal(tx),
            }
        };
        if let Some(reply) = refusal {
            // Chunks pipelined after a failed BDAT were already paid for by its error.
            let counted = !self.bdat_failed;
            if last {
                self.bdat_failed = false;
            }
            self.mode = Mode::Discard {
                remaining: size,
                reply,
                counted,
            };
            return Flow::Continue;
        }
        let limits = self.limits();
        self.bdat
            .get_or_insert_with(|| BdatReceiver::new(limits))
            .start_chunk(size, last);
        self.mode = Mode::Chunk;
        Flow::Continue
    }

    fn data_done(&mut self) -> Flow {
        let Mode::Data(rx) = std::mem::replace(&mut self.mode, Mode::Command) else {
            return Flow::Continue;
        };
        match rx.finish() {
            Ok(data) => self.deliver(data),
            Err(err) => {
                self.reset_transaction();
                self.send(&err.reply());
                Flow::Continue
            }
        }
    }

    fn chunk_done(&mut self) -> Flow {
        self.mode = Mode::Command;
        let Some(rx) = self.bdat.take() else {
            return Flow::Continue;
        };
        if let Some(err) = rx.failure() {
            self.reset_transaction();
            self.send(&err.reply());
            self.bdat_failed = !rx.is_last();
            return Flow::Continue;
        }
        if !rx.is_last() {
            let text = format!("Ok: {} octets received", rx.chunk_size());
            self.bdat = Some(rx);
            self.send(&Reply::sanitized(
                250,
                Some(EnhancedCode::new(2, 0, 0)),
                &text,
            ));
            return Flow::Continue;
        }
        match rx.finish() {
            Ok(data) => self.deliver(data),
            Err(err) => {
                self.reset_transaction();
                self.send(&err.reply());
                Flow::Continue
            }
        }
    }

    /// Hands a complete message to the caller.
    fn deliver(&mut self, data: Vec<u8>) -> Flow {
        let Some(tx) = self.transaction.take() else {
            return Flow::Continue;
        };
        let envelope = Envelope {
            from: tx.from,
            mail_params: tx.mail_params,
            recipients: tx.recipients,
            data,
        };
        self.ask(Pending::Message, Event::Message(Box::new(envelope)))
    }

    fn starttls(&mut self) -> Flow {
        if !self.config.starttls || self.tls {
            return self.respond(503, (5, 5, 1), "Error: STARTTLS not available");
        }
        self.send(&reply(220, (2, 0, 0), "Ready to start TLS"));
        // Anything pipelined after STARTTLS is plaintext injection (CVE-2011-0411).
        self.input.clear();
        self.pos = 0;
        self.discarding_line = None;
        self.mode = Mode::TlsHandshake;
        self.ask(Pending::StartTls, Event::StartTls)
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Flow {
        if !self.config.auth {
            return self.respond(503, (5, 5, 1), "Error: authentication not enabled");
        }
        if !self.tls {
            return self.respond(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            );
        }
        if !self.esmtp {
            return self.respond(503, (5, 5, 1), "Error: send EHLO first");
        }
        if self.authenticated.is_some() {
            return self.respond(503, (5, 5, 1), "Error: already authenticated");
        }
        if self.transaction.is_some() {
            return self.respond(503, (5, 5, 1), "Error: MAIL transaction in progress");
        }
        match (mechanism, initial) {
            ("PLAIN", Some(response)) => self.sasl_response(SaslStep::Plain, response),
            ("PLAIN", None) => self.challenge(SaslStep::Plain, ""),
            ("LOGIN", Some(response)) => self.sasl_response(SaslStep::LoginUsername, response),
            ("LOGIN", None) => self.challenge(SaslStep::LoginUsername, "VXNlcm5hbWU6"),
            _ => self.respond(504, (5, 5, 4), "Unrecognized authentication type"),
        }
    }

    /// Writes a `334` continuation and waits for the next SASL line.
    fn challenge(&mut self, step: SaslStep, challenge: &str) -> Flow {
        self.output.extend_from_slice(b"334 ");
        self.output.extend_from_slice(challenge.as_bytes());
        self.output.extend_from_slice(b"\r\n");
        self.mode = Mode::Sasl(step);
        Flow::Continue
    }

    fn sasl_abort(&mut self, r: Reply) -> Flow {
        self.mode = Mode::Command;
        self.send(&r);
        Flow::Continue
    }

    fn sasl_line(&mut self, line: &[u8]) -> Flow {
        let Mode::Sasl(step) = std::mem::replace(&mut self.mode, Mode::Command) else {
            return Flow::Continue;
        };
        match std::str::from_utf8(line) {
            Ok(text) => self.sasl_response(step, text),
            Err(_) => self.sasl_abort(SaslError::BadBase64.reply()),
        }
    }

    /// Processes one base64 response in `step`.
    fn sasl_response(&mut self, step: SaslStep, response: &str) -> Flow {
        match self.sasl_decode(step, response) {
            Ok(flow) => flow,
            Err(err) => self.sasl_abort(err.reply()),
        }
    }

    fn sasl_decode(&mut self, step: SaslStep, response: &str) -> Result<Flow, SaslError> {
        let decoded = sasl::decode_response(response)?;
        let event = match step {
            SaslStep::Plain => {
                let (authzid, username, password) = sasl::parse_plain(&decoded)?;
                Event::Auth {
                    mechanism: AuthMechanism::Plain,
                    authzid,
                    username,
                    password,
                }
            }
            SaslStep::LoginUsername => {
                let username = sasl::utf8(decoded)?;
                return Ok(self.challenge(SaslStep::LoginPassword { username }, "UGFzc3dvcmQ6"));
            }
            SaslStep::LoginPassword { username } => Event::Auth {
                mechanism: AuthMechanism::Login,
                authzid: String::new(),
                username,
                password: sasl::utf8(decoded)?,
            },
        };
        self.mode = Mode::Command;
        Ok(self.ask(Pending::Auth, event))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
