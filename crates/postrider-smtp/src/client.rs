//! The sans-IO SMTP/LMTP client session (RFC 5321, RFC 2033): greeting, EHLO/LHLO
//! with HELO fallback, STARTTLS (RFC 3207), AUTH PLAIN (RFC 4954, RFC 4616) and mail
//! transactions with or without PIPELINING (RFC 2920).
//!
//! The caller connects, then loops: [`ClientSession::feed`] received bytes, handle
//! every [`ClientSession::poll_event`], write [`ClientSession::take_output`]. The
//! session performs no IO and reads no clock: timeouts and the TLS handshake are the
//! caller's. Every failure is reported as an event, never as a panic.

mod parse;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use std::collections::VecDeque;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::command::{Notify, Ret, encode_xtext};
use crate::reply::{EnhancedCode, Reply};

pub use parse::{MAX_LINE, MAX_LINES, ReplySyntaxError};
use parse::{ReplyReader, parse_ehlo};

/// Whether to use STARTTLS towards a next hop: the one TLS policy type of the relay (config,
/// route plugins, delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum TlsPolicy {
    /// Never send STARTTLS.
    None,
    /// STARTTLS if the server offers it; continue in plaintext if not offered or refused.
    #[default]
    Opportunistic,
    /// STARTTLS is mandatory: fail temporarily (4.7.5) if not offered or refused. The
    /// certificate is not verified (Postfix's `encrypt`).
    Require,
    /// STARTTLS is mandatory and the certificate must chain to a trusted root and name the
    /// next hop (Postfix's `verify`); the check itself is the caller's TLS configuration.
    Verify,
    /// DANE (RFC 7672): where the MX host has DNSSEC-validated TLSA records, TLS is mandatory
    /// and the certificate must match them; elsewhere as `Opportunistic`. The delivery agent
    /// decides per host and gives the session `Verify`, `Require` or `Opportunistic`; a
    /// session given `Dane` itself behaves as `Opportunistic`.
    Dane,
    /// MTA-STS (RFC 8461): where the recipient domain publishes a policy in `enforce` mode,
    /// only the MX hosts it names, over TLS verified as `Verify`; in `testing` mode as
    /// `Opportunistic`, with what would have failed logged; without a policy as
    /// `Opportunistic`. Decided per host by the delivery agent, like `Dane`.
    #[cfg_attr(feature = "serde", serde(rename = "mta-sts"))]
    MtaSts,
    /// `Dane` for MX hosts with usable DNSSEC-validated TLSA records, else `MtaSts` where the
    /// domain publishes a policy, else `Opportunistic`; decided per host.
    Auto,
}

impl TlsPolicy {
    /// The session fails rather than go on without TLS.
    pub fn mandatory(self) -> bool {
        matches!(self, TlsPolicy::Require | TlsPolicy::Verify)
    }

    /// The policy's name in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Require => "require",
            TlsPolicy::Verify => "verify",
            TlsPolicy::Dane => "dane",
            TlsPolicy::MtaSts => "mta-sts",
            TlsPolicy::Auto => "auto",
        }
    }
}

/// Credentials for AUTH PLAIN.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Per-connection settings of a client session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our name for EHLO/LHLO/HELO; spaces and control characters are dropped
    /// (`localhost` if nothing remains).
    pub helo_name: String,
    /// Speak LMTP (LHLO, one reply per recipient after the data, no HELO fallback).
    pub lmtp: bool,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// AUTH PLAIN credentials, sent only over TLS: without TLS, or if the server does
    /// not offer PLAIN, the connection fails temporarily instead.
    pub auth: Option<Credentials>,
}

/// What the server's last EHLO/LHLO reply advertised (all unset after HELO).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(max)`, where `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// CHUNKING (RFC 3030); not used by this client.
    pub chunking: bool,
    /// SASL mechanisms of the AUTH keyword, upper-cased, in advertised order.
    pub auth_mechanisms: Vec<String>,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// REQUIRETLS (RFC 8689).
    pub require_tls: bool,
}

impl Extensions {
    /// True if AUTH advertised `mechanism` (case-insensitive).
    pub fn offers_auth(&self, mechanism: &str) -> bool {
        self.auth_mechanisms
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism))
    }
}

/// One message to send over the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The reverse-path without `<>`; empty for the null sender.
    pub from: String,
    /// The recipients, in the order their outcomes are reported.
    pub recipients: Vec<OutboundRecipient>,
    /// Octets of the message data, declared with SIZE= and checked against the limit.
    pub size: u64,
    /// The body has 8-bit octets and needs 8BITMIME (also assumed if the data has any).
    pub eight_bit: bool,
    /// Addresses or headers need SMTPUTF8 (also assumed for non-ASCII addresses).
    pub smtputf8: bool,
    /// DSN RET= (sent only if the server offers DSN).
    pub ret: Option<Ret>,
    /// DSN ENVID=, xtext-encoded on the wire (sent only if the server offers DSN).
    pub envid: Option<String>,
    /// REQUIRETLS (RFC 8689): sent only over TLS to a server that offers it; a server that
    /// does not is refused locally (5.7.30). That the TLS is authenticated is the caller's
    /// part.
    pub require_tls: bool,
}

/// One recipient of an [`OutboundMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecipient {
    /// The forward-path without `<>`.
    pub address: String,
    /// DSN NOTIFY= (sent only if the server offers DSN).
    pub notify: Option<Notify>,
    /// DSN ORCPT= as (addr-type, address); the address is xtext-encoded on the wire.
    pub orcpt: Option<(String, String)>,
}

/// Something the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server answered 220 to STARTTLS: flush the output, do the TLS handshake,
    /// then call [`ClientSession::tls_established`].
    StartTls,
    /// Greeting, EHLO and any STARTTLS/AUTH are done (or a transaction ended):
    /// [`ClientSession::send`] a message or [`ClientSession::quit`].
    Ready,
    /// The outcome of the last [`ClientSession::send`], one per recipient, in order;
    /// a `Ready` follows, but `send` and `quit` are already allowed.
    Delivered(Vec<RcptOutcome>),
    /// Instead of `Delivered`: the last [`ClientSession::send`] was refused locally
    /// because this peer lacks what the message needs (SMTPUTF8: 5.6.7, 8BITMIME: 5.6.3,
    /// or its SIZE limit is too small: 5.3.4). Nothing was sent; every recipient has that
    /// permanent result, but another server may take the message. A `Ready` follows.
    Unsupported(Vec<RcptOutcome>),
    /// The connection is unusable; `Closed` follows. Every recipient of a message in
    /// flight gets this outcome (once data was sent, a `Delivered` with the known
    /// outcomes comes first, so no message is in flight then).
    Failed(ConnectionFailure),
    /// The session is over: flush the output and close the connection.
    Closed,
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// The recipient address as given in [`OutboundRecipient::address`].
    pub recipient: String,
    /// What happened to it.
    pub result: RcptResult,
}

/// Accepted, or refused for now or for good, with the server's (or a local) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// The server took responsibility for the message.
    Accepted(Reply),
    /// Try again later.
    Temporary(Reply),
    /// Do not retry: bounce.
    Permanent(Reply),
}

impl RcptResult {
    /// The reply behind this result.
    pub fn reply(&self) -> &Reply {
        match self {
            Self::Accepted(r) | Self::Temporary(r) | Self::Permanent(r) => r,
        }
    }

    /// Temporary for 4xx (or unexpected 2xx/3xx), permanent for 5xx.
    fn refused(reply: &Reply) -> Self {
        if reply.is_permanent() {
            Self::Permanent(reply.clone())
        } else {
            Self::Temporary(reply.clone())
        }
    }
}

/// Why the connection became unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionFailure {
    /// True for a 5xx from the server; local failures are always temporary.
    pub permanent: bool,
    /// The server's reply, or a locally made one (e.g. `421 4.4.0` for a malformed reply).
    pub reply: Reply,
    /// Where it happened: "greeting", "ehlo" (also LHLO), "helo", "starttls", "auth",
    /// "idle", "mail", "rcpt", "data", "rset" or "quit".
    pub stage: &'static str,
}

/// An API call that does not fit the session state; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Misuse {
    /// `send` outside the Ready state.
    #[error("send() is only allowed after ClientEvent::Ready or Delivered")]
    NotReady,
    /// `send` with an empty recipient list.
    #[error("send() needs at least one recipient")]
    NoRecipients,
    /// `tls_established` without a pending StartTls.
    #[error("tls_established() without a pending ClientEvent::StartTls")]
    NoTlsPending,
}

/// A reply the session expects, in the order the commands were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// MAIL FROM.
    Mail,
    /// RCPT TO of recipient `.0`.
    Rcpt(usize),
    /// The DATA command (354 wanted).
    Data,
    /// The reply after the data (one per accepted recipient in LMTP); `discard` for
    /// the empty message sent only to close a DATA no recipient needs.
    Final {
        /// The reply means nothing (no recipient was accepted).
        discard: bool,
    },
    /// RSET after an abandoned transaction.
    Rset,
}

impl Expect {
    fn stage(self) -> &'static str {
        match self {
            Self::Mail => "mail",
            Self::Rcpt(_) => "rcpt",
            Self::Data | Self::Final { .. } => "data",
            Self::Rset => "rset",
        }
    }
}

/// A mail transaction in progress.
struct Transaction {
    /// Recipient addresses, in the caller's order.
    recipients: Vec<String>,
    /// Known outcome per recipient; RCPT acceptances are replaced by the final reply.
    outcomes: Vec<Option<RcptResult>>,
    /// RCPT lines not yet written (without PIPELINING), with their recipient index.
    rcpt_lines: VecDeque<(usize, Vec<u8>)>,
    /// Replies still due, in order.
    expect: VecDeque<Expect>,
    /// All commands were written in one batch.
    pipelined: bool,
    /// The server accepted MAIL FROM.
    mail_accepted: bool,
    /// Indices of recipients whose RCPT was accepted, in order.
    accepted: Vec<usize>,
    /// How many of `accepted` have their final outcome.
    finals: usize,
    /// The dot-stuffed data with its terminator, written after 354.
    payload: Vec<u8>,
    /// The message data (with terminator) was written.
    data_sent: bool,
    /// A terminator (with or without data) was written: the server closed the transaction.
    dot_sent: bool,
}

impl fmt::Debug for Transaction {
    /// Summarises the transaction without dumping the message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("recipients", &self.recipients)
            .field("outcomes", &self.outcomes)
            .field("expect", &self.expect)
            .field("accepted", &self.accepted)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// The outcomes so far; recipients without one get `fallback`.
    fn outcomes(&self, fallback: &RcptResult) -> Vec<RcptOutcome> {
        self.recipients
            .iter()
            .zip(&self.outcomes)
            .map(|(recipient, result)| RcptOutcome {
                recipient: recipient.clone(),
                result: result.clone().unwrap_or_else(|| fallback.clone()),
            })
            .collect()
    }

    /// Sets the final outcome of the accepted recipients from `finals` on (`count` of them).
    fn set_finals(&mut self, count: usize, result: &RcptResult) {
        let end = self.finals.saturating_add(count).min(self.accepted.len());
        for &i in self.accepted.get(self.finals..end).unwrap_or_default() {
            if let Some(slot) = self.outcomes.get_mut(i) {
                *slot = Some(result.clone());
            }
        }
        self.finals = end;
    }
}

/// Where the session stands.
#[derive(Debug)]
enum State {
    /// Waiting for the 220 greeting.
    Greeting,
    /// Waiting for the EHLO/LHLO reply.
    Ehlo,
    /// Waiting for the HELO reply.
    Helo,
    /// Waiting for the STARTTLS reply.
    StartTls,
    /// The caller is doing the TLS handshake; input is ignored.
    TlsHandshake,
    /// Waiting for the AUTH reply; `responded` once the credentials went after a 334.
    Auth {
        /// The credentials were sent in answer to a 334 challenge.
        responded: bool,
    },
    /// Idle between transactions.
    Ready,
    /// A mail transaction.
    Transaction(Box<Transaction>),
    /// QUIT written, waiting for its reply.
    Quitting,
    /// Over.
    Closed,
}

impl State {
    fn stage(&self) -> &'static str {
        match self {
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::Helo => "helo",
            Self::StartTls | Self::TlsHandshake => "starttls",
            Self::Auth { .. } => "auth",
            Self::Ready | Self::Closed => "idle",
            Self::Transaction(txn) => txn.expect.front().map_or("mail", |e| e.stage()),
            Self::Quitting => "quit",
        }
    }
}

/// A locally made reply (text sanitized, so outside text may be embedded).
fn local(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply::sanitized(code, Some(EnhancedCode::new(e.0, e.1, e.2)), text)
}

/// True if `address` can go between `<>` safely: no control character (CR, LF, NUL
/// would inject commands), no `<` or `>` (they would end the path early).
fn safe_path(address: &str) -> bool {
    !address
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>')
}

/// Dot-stuffs `data` and appends the terminator (RFC 5321 §4.5.2).
///
/// Line ends are made canonical: a bare LF and a bare CR each become CRLF, so the
/// output never holds a bare CR or LF. A missing final CRLF is added.
pub fn encode_data(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 5);
    let mut line_start = true;
    let mut bytes = data.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\r' => {
                bytes.next_if_eq(&b'\n');
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            _ => {
                if line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                line_start = false;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The SMTP/LMTP client state machine for one connection.
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    reader: ReplyReader,
    output: Vec<u8>,
    events: VecDeque<ClientEvent>,
    extensions: Extensions,
    tls: bool,
    /// The peer closed the connection; handled once buffered replies are processed.
    peer_closed: bool,
    /// The caller gave up waiting for the peer; handled like `peer_closed`.
    timed_out: bool,
}

impl fmt::Debug for ClientSession {
    /// Omits the output buffer, which may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSession")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("extensions", &self.extensions)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// Creates a session for a fresh connection; it waits for the server's greeting.
    pub fn new(mut config: ClientConfig) -> Self {
        config.helo_name.retain(|c| !c.is_control() && c != ' ');
        if config.helo_name.is_empty() {
            config.helo_name = "localhost".to_owned();
        }
        Self {
            config,
            state: State::Greeting,
            reader: ReplyReader::default(),
            output: Vec::new(),
            events: VecDeque::new(),
            extensions: Extensions::default(),
            tls: false,
            peer_closed: false,
            timed_out: false,
        }
    }

    /// Appends bytes received from the server. Ignored while the TLS handshake is
    /// pending (plaintext sent after the 220 to STARTTLS is an injection) and once closed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !matches!(self.state, State::TlsHandshake | State::Closed) {
            self.reader.feed(bytes);
        }
    }

    /// Processes buffered replies until an event needs the caller; `None` when more
    /// input is needed. Write [`ClientSession::take_output`] when this returns `None`.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if matches!(self.state, State::Closed) {
                return None;
            }
            if matches!(self.state, State::TlsHandshake) {
                if self.peer_closed || self.timed_out {
                    self.connection_lost();
                    continue;
                }
                return None;
            }
            match self.reader.next_reply() {
                Ok(Some(reply)) => self.on_reply(reply),
                Ok(None) if self.peer_closed || self.timed_out => self.connection_lost(),
                Ok(None) => return None,
                Err(err) => self.on_malformed(err),
            }
        }
    }

    /// Takes the bytes to write to the server.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// The TLS handshake after [`ClientEvent::StartTls`] succeeded: the session forgets
    /// the extensions and sends EHLO/LHLO again (RFC 3207 §4.2).
    pub fn tls_established(&mut self) -> Result<(), Misuse> {
        if !matches!(self.state, State::TlsHandshake) {
            return Err(Misuse::NoTlsPending);
        }
        self.tls = true;
        self.extensions = Extensions::default();
        self.reader.clear();
        self.send_hello();
        Ok(())
    }

    /// Starts a transaction for `msg`; the outcome comes as [`ClientEvent::Delivered`].
    ///
    /// `data` is the message in canonical CRLF form without the final `.`; it is
    /// dot-stuffed and terminated by [`encode_data`] (bare CR and LF become CRLF).
    /// Needs the peer cannot meet (SMTPUTF8, 8BITMIME, SIZE, REQUIRETLS) are refused locally:
    /// [`ClientEvent::Unsupported`] follows at once and nothing is sent. Unsafe addresses
    /// are refused locally too: `Delivered` follows at once if no recipient is left.
    pub fn send(&mut self, msg: &OutboundMessage, data: &[u8]) -> Result<(), Misuse> {
        if !matches!(self.state, State::Ready) {
            return Err(Misuse::NotReady);
        }
        if msg.recipients.is_empty() {
            return Err(Misuse::NoRecipients);
        }
        self.drop_stale_ready();
        let ext = &self.extensions;
        let smtputf8 = msg.smtputf8
            || !msg.from.is_ascii()
            || msg.recipients.iter().any(|r| !r.address.is_ascii());
        let eight_bit = msg.eight_bit || !data.is_ascii();
        let unsupported = if smtputf8 && !ext.smtputf8 {
            Some(local(554, (5, 6, 7), "Peer lacks SMTPUTF8 support"))
        } else if eight_bit && !ext.eight_bit_mime {
            Some(local(554, (5, 6, 3), "Peer lacks 8BITMIME support"))
        } else if ext.size.is_some_and(|max| max > 0 && msg.size > max) {
            Some(local(552, (5, 3, 4), "Message too big for peer"))
        } else if msg.require_tls && !(self.tls && ext.require_tls) {
            Some(local(550, (5, 7, 30), "Peer lacks REQUIRETLS support"))
        } else {
            None
        };
        let peer_lacks = unsupported.is_some();
        let refusal = unsupported.or_else(|| {
            (!safe_path(&msg.from)).then(|| local(501, (5, 1, 7), "Bad sender address syntax"))
        });
        let mut outcomes: Vec<Option<RcptResult>> = msg
            .recipients
            .iter()
            .map(|r| match &refusal {
                Some(reply) => Some(RcptResult::Permanent(reply.clone())),
                None if !safe_path(&r.address) || r.address.is_empty() => Some(
                    RcptResult::Permanent(local(501, (5, 1, 3), "Bad recipient address syntax")),
                ),
                None => None,
            })
            .collect();
        let recipients: Vec<String> = msg.recipients.iter().map(|r| r.address.clone()).collect();
        if outcomes.iter().all(Option::is_some) {
            let txn = Transaction {
                recipients,
                outcomes: std::mem::take(&mut outcomes),
                rcpt_lines: VecDeque::new(),
                expect: VecDeque::new(),
                pipelined: false,
                mail_accepted: false,
                accepted: Vec::new(),
                finals: 0,
                payload: Vec::new(),
                data_sent: false,
                dot_sent: false,
            };
            if peer_lacks {
                let fallback = RcptResult::Temporary(local(451, (4, 3, 0), "No outcome"));
                self.events
                    .push_back(ClientEvent::Unsupported(txn.outcomes(&fallback)));
                self.ready();
            } else {
                self.finish(&txn);
            }
            return Ok(());
        }
        let mail = self.mail_line(msg, smtputf8, eight_bit);
        let rcpt_lines: VecDeque<(usize, Vec<u8>)> = msg
            .recipients
            .iter()
            .enumerate()
            .filter(|(i, _)| outcomes.get(*i).is_some_and(Option::is_none))
            .map(|(i, r)| (i, self.rcpt_line(r)))
            .collect();
        let mut txn = Transaction {
            recipients,
            outcomes,
            rcpt_lines,
            expect: VecDeque::from([Expect::Mail]),
            pipelined: self.extensions.pipelining,
            mail_accepted: false,
            accepted: Vec::new(),
            finals: 0,
            payload: encode_data(data),
            data_sent: false,
            dot_sent: false,
        };
        self.output.extend_from_slice(&mail);
        if txn.pipelined {
            // RFC 2920: MAIL, every RCPT and DATA in one batch; replies match in order.
            for (i, line) in std::mem::take(&mut txn.rcpt_lines) {
                self.output.extend_from_slice(&line);
                txn.expect.push_back(Expect::Rcpt(i));
            }
            self.output.extend_from_slice(b"DATA\r\n");
            txn.expect.push_back(Expect::Data);
        }
        self.state = State::Transaction(Box::new(txn));
        Ok(())
    }

    /// Ends the session. When Ready, writes QUIT and reports [`ClientEvent::Closed`]
    /// once it is answered (the caller may also close right after flushing QUIT).
    /// In any other state nothing is written and `Closed` is reported at once (a message
    /// in flight gets no `Delivered`: the caller treats it as not sent).
    pub fn quit(&mut self) {
        self.events
            .retain(|e| !matches!(e, ClientEvent::Ready | ClientEvent::StartTls));
        match self.state {
            State::Closed | State::Quitting => {}
            State::Ready => {
                self.output.extend_from_slice(b"QUIT\r\n");
                self.state = State::Quitting;
            }
            _ => self.close(),
        }
    }

    /// The server closed the connection (EOF). Replies already fed are processed
    /// first; then the session fails (421 4.4.2), or closes if QUIT was sent.
    pub fn peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// The caller gave up waiting for the server (its reply timeout expired). Like
    /// [`ClientSession::peer_closed`]: complete replies already fed are processed first
    /// (so an LMTP message in flight keeps the per-recipient outcomes already known, in
    /// a `Delivered`); then the session fails (421 4.4.2, no QUIT), or closes if QUIT
    /// was sent. The caller should then close the connection.
    pub fn timed_out(&mut self) {
        self.timed_out = true;
    }

    /// True once the session is over ([`ClientEvent::Closed`] was queued).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// What the server's last EHLO/LHLO advertised (empty after HELO or before EHLO).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// True once [`ClientSession::tls_established`] was called.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// True when a transaction is in progress (a `send` awaits its `Delivered`).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Transaction(_))
    }

    // --- replies -------------------------------------------------------------------

    fn on_reply(&mut self, reply: Reply) {
        let code = reply.code();
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Greeting => {
                self.state = State::Greeting;
                if code == 220 {
                    self.send_hello();
                } else {
                    self.refused(reply);
                }
            }
            State::Ehlo => {
                self.state = State::Ehlo;
                if code / 100 == 2 {
                    self.extensions = parse_ehlo(&reply);
                    self.after_hello();
                } else if reply.is_permanent() && !self.config.lmtp {
                    // RFC 5321 §3.2: an old server; HELO has no extensions.
                    let line = format!("HELO {}\r\n", self.config.helo_name);
                    self.output.extend_from_slice(line.as_bytes());
                    self.state = State::Helo;
                } else {
                    self.refused(reply);
                }
            }
            State::Helo => {
                self.state = State::Helo;
                if code / 100 == 2 {
                    self.extensions = Extensions::default();
                    self.after_hello();
                } else {
                    self.refused(reply);
                }
            }
            State::StartTls => {
                self.state = State::StartTls;
                if code == 220 {
                    // Anything after the 220 came before the handshake: plaintext
                    // injection, never to be read as a reply over TLS.
                    self.reader.clear();
                    self.state = State::TlsHandshake;
                    self.events.push_back(ClientEvent::StartTls);
                } else if reply.is_positive() || code == 421 {
                    self.refused(reply);
                } else if self.config.tls.mandatory() {
                    let text = format!("TLS required but STARTTLS refused: {reply}");
                    self.fail(local(421, (4, 7, 5), &text), false, true);
                } else {
                    self.start_auth();
                }
            }
            State::Auth { responded } => {
                self.state = State::Auth { responded };
                if code == 235 {
                    self.ready();
                } else if code == 334 && !responded {
                    // A server that ignored the initial response asks for it.
                    self.write_credentials();
                    self.state = State::Auth { responded: true };
                } else {
                    self.refused(reply);
                }
            }
            State::Ready => {
                self.state = State::Ready;
                self.refused(reply);
            }
            State::Transaction(txn) => self.on_transaction_reply(txn, reply),
            State::Quitting => self.close(),
            State::TlsHandshake => self.state = State::TlsHandshake,
            State::Closed => {}
        }
    }

    /// A negative reply ends the session with it (permanent for 5xx; QUIT unless 421);
    /// a positive reply that does not fit the state is a protocol error.
    fn refused(&mut self, reply: Reply) {
        if reply.is_positive() {
            let text = format!("Unexpected reply in {}: {reply}", self.state.stage());
            self.fail(local(421, (4, 5, 0), &text), false, false);
        } else {
            let quit = reply.code() != 421;
            let permanent = reply.is_permanent();
            self.fail(reply, permanent, quit);
        }
    }

    fn on_malformed(&mut self, err: ReplySyntaxError) {
        if matches!(self.state, State::Quitting) {
            self.close();
            return;
        }
        let text = format!("Malformed reply from server: {err}");
        self.fail(local(421, (4, 4, 0), &text), false, false);
    }

    fn connection_lost(&mut self) {
        if matches!(self.state, State::Quitting) {
            self.close();
            return;
        }
        let reply = if self.peer_closed {
            local(421, (4, 4, 2), "Connection closed by server")
        } else {
            local(421, (4, 4, 2), "Timed out waiting for the server")
        };
        self.fail(reply, false, false);
    }

    /// Reports `reply` as the connection's failure, writes QUIT if `quit` (the server
    /// is waiting for a command), and closes. Once data was sent, the in-flight message
    /// is reported first, the recipients still without a final reply getting `reply`.
    fn fail(&mut self, reply: Reply, permanent: bool, quit: bool) {
        let stage = self.state.stage();
        if let State::Transaction(txn) = &mut self.state
            && (txn.data_sent || txn.expect.front() == Some(&Expect::Rset))
        {
            let result = if permanent {
                RcptResult::Permanent(reply.clone())
            } else {
                RcptResult::Temporary(reply.clone())
            };
            txn.set_finals(usize::MAX, &result);
            let outcomes = txn.outcomes(&result);
            self.events.push_back(ClientEvent::Delivered(outcomes));
        }
        if quit {
            self.output.extend_from_slice(b"QUIT\r\n");
        }
        self.events
            .push_back(ClientEvent::Failed(ConnectionFailure {
                permanent,
                reply,
                stage,
            }));
        self.close();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.reader.clear();
        self.events.push_back(ClientEvent::Closed);
    }

    // --- connection setup ----------------------------------------------------------

    fn send_hello(&mut self) {
        let verb = if self.config.lmtp { "LHLO" } else { "EHLO" };
        let line = format!("{verb} {}\r\n", self.config.helo_name);
        self.output.extend_from_slice(line.as_bytes());
        self.state = State::Ehlo;
    }

    fn after_hello(&mut self) {
        if self.tls || self.config.tls == TlsPolicy::None {
            self.start_auth();
        } else if self.extensions.starttls {
            self.output.extend_from_slice(b"STARTTLS\r\n");
            self.state = State::StartTls;
        } else if self.config.tls.mandatory() {
            self.state = State::StartTls;
            let reply = local(421, (4, 7, 5), "TLS required but not offered");
            self.fail(reply, false, true);
        } else {
            self.start_auth();
        }
    }

    fn start_auth(&mut self) {
        if self.config.auth.is_none() {
            self.ready();
            return;
        }
        self.state = State::Auth { responded: false };
        if !self.tls {
            let reply = local(421, (4, 7, 0), "Refusing to send credentials without TLS");
            self.fail(reply, false, true);
        } else if !self.extensions.offers_auth("PLAIN") {
            let reply = local(421, (4, 7, 0), "AUTH PLAIN not offered by server");
            self.fail(reply, false, true);
        } else {
            self.output.extend_from_slice(b"AUTH PLAIN ");
            self.write_credentials();
        }
    }

    /// Writes base64(`\0user\0pass`) and CRLF (RFC 4616).
    fn write_credentials(&mut self) {
        if let Some(creds) = &self.config.auth {
            let mut message = Vec::with_capacity(creds.username.len() + creds.password.len() + 2);
            message.push(0);
            message.extend_from_slice(creds.username.as_bytes());
            message.push(0);
            message.extend_from_slice(creds.password.as_bytes());
            self.output
                .extend_from_slice(STANDARD.encode(message).as_bytes());
            self.output.extend_from_slice(b"\r\n");
        }
    }

    fn ready(&mut self) {
        self.state = State::Ready;
        self.events.push_back(ClientEvent::Ready);
    }

    /// A `Ready` still queued is stale once the caller acts on `Delivered`.
    fn drop_stale_ready(&mut self) {
        self.events.retain(|e| !matches!(e, ClientEvent::Ready));
    }

    // --- transactions --------------------------------------------------------------

    fn mail_line(&self, msg: &OutboundMessage, smtputf8: bool, eight_bit: bool) -> Vec<u8> {
        let ext = &self.extensions;
        let mut line = format!("MAIL FROM:<{}>", msg.from);
        if ext.size.is_some() {
            line.push_str(&format!(" SIZE={}", msg.size));
        }
        if eight_bit {
            line.push_str(" BODY=8BITMIME");
        }
        if smtputf8 {
            line.push_str(" SMTPUTF8");
        }
        if msg.require_tls {
            line.push_str(" REQUIRETLS");
        }
        if ext.dsn {
            match msg.ret {
                Some(Ret::Full) => line.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => line.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &msg.envid {
                line.push_str(" ENVID=");
                line.push_str(&encode_xtext(envid));
            }
        }
        line.push_str("\r\n");
        line.into_bytes()
    }

    fn rcpt_line(&self, rcpt: &OutboundRecipient) -> Vec<u8> {
        let mut line = format!("RCPT TO:<{}>", rcpt.address);
        if self.extensions.dsn {
            match rcpt.notify {
                Some(Notify::Never) => line.push_str(" NOTIFY=NEVER"),
                Some(Notify::On(on)) => {
                    let flags: Vec<&str> = [
                        (on.success, "SUCCESS"),
                        (on.failure, "FAILURE"),
                        (on.delay, "DELAY"),
                    ]
                    .into_iter()
                    .filter_map(|(set, name)| set.then_some(name))
                    .collect();
                    if !flags.is_empty() {
                        line.push_str(" NOTIFY=");
                        line.push_str(&flags.join(","));
                    }
                }
                None => {}
            }
            if let Some((addr_type, addr)) = &rcpt.orcpt {
                let type_ok = !addr_type.is_empty()
                    && addr_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if type_ok && !addr.is_empty() {
                    line.push_str(&format!(" ORCPT={addr_type};{}", encode_xtext(addr)));
                }
            }
        }
        line.push_str("\r\n");
        line.into_bytes()
    }

    fn on_transaction_reply(&mut self, mut txn: Box<Transaction>, reply: Reply) {
        let Some(expect) = txn.expect.front().copied() else {
            self.state = State::Transaction(txn);
            self.refused(reply);
            return;
        };
        if reply.code() == 421 {
            // The server is closing the connection, whatever the command.
            self.state = State::Transaction(txn);
            self.refused(reply);
            return;
        }
        let class = reply.code() / 100;
        match expect {
            Expect::Mail => {
                if class == 2 {
                    txn.mail_accepted = true;
                } else {
                    let result = RcptResult::refused(&reply);
                    for slot in txn.outcomes.iter_mut().filter(|o| o.is_none()) {
                        *slot = Some(result.clone());
                    }
                }
            }
            Expect::Rcpt(i) => {
                if let Some(slot) = txn.outcomes.get_mut(i)
                    && slot.is_none()
                {
                    if class == 2 {
                        *slot = Some(RcptResult::Accepted(reply));
                        txn.accepted.push(i);
                    } else {
                        *slot = Some(RcptResult::refused(&reply));
                    }
                }
            }
            Expect::Data => {
                if reply.code() == 354 {
                    txn.dot_sent = true;
                    if txn.accepted.is_empty() {
                        // Only a pipelined DATA gets here: close it with an empty message.
                        self.output.extend_from_slice(b".\r\n");
                        if !self.config.lmtp {
                            txn.expect.push_back(Expect::Final { discard: true });
                        }
                    } else {
                        self.output.append(&mut txn.payload);
                        txn.data_sent = true;
                        let replies = if self.config.lmtp {
                            txn.accepted.len()
                        } else {
                            1
                        };
                        for _ in 0..replies {
                            txn.expect.push_back(Expect::Final { discard: false });
                        }
                    }
                } else if reply.is_positive() {
                    self.state = State::Transaction(txn);
                    self.refused(reply);
                    return;
                } else {
                    txn.set_finals(usize::MAX, &RcptResult::refused(&reply));
                }
            }
            Expect::Final { discard: true } => {}
            Expect::Final { discard: false } => {
                let result = match class {
                    2 => RcptResult::Accepted(reply),
                    4 | 5 => RcptResult::refused(&reply),
                    _ => {
                        self.state = State::Transaction(txn);
                        self.refused(reply);
                        return;
                    }
                };
                let count = if self.config.lmtp { 1 } else { usize::MAX };
                txn.set_finals(count, &result);
            }
            Expect::Rset => {
                if class != 2 {
                    // The outcomes are known; a refused RSET only makes the connection
                    // unusable, which is never a permanent failure.
                    self.state = State::Transaction(txn);
                    if reply.is_positive() {
                        self.refused(reply);
                    } else {
                        self.fail(reply, false, true);
                    }
                    return;
                }
            }
        }
        txn.expect.pop_front();
        if !txn.pipelined && matches!(expect, Expect::Mail | Expect::Rcpt(_)) {
            self.next_command(&mut txn);
        }
        if !txn.expect.is_empty() {
            self.state = State::Transaction(txn);
        } else if txn.mail_accepted && !txn.dot_sent && expect != Expect::Rset {
            // The transaction is open on the server but will not be completed.
            self.output.extend_from_slice(b"RSET\r\n");
            txn.expect.push_back(Expect::Rset);
            self.state = State::Transaction(txn);
        } else {
            self.finish(&txn);
        }
    }

    /// Without PIPELINING: writes the next RCPT, or DATA once all are answered.
    fn next_command(&mut self, txn: &mut Transaction) {
        if !txn.expect.is_empty() || !txn.mail_accepted {
            return;
        }
        if let Some((i, line)) = txn.rcpt_lines.pop_front() {
            self.output.extend_from_slice(&line);
            txn.expect.push_back(Expect::Rcpt(i));
        } else if !txn.accepted.is_empty() {
            self.output.extend_from_slice(b"DATA\r\n");
            txn.expect.push_back(Expect::Data);
        }
    }

    /// Reports the transaction's outcomes; the session is Ready again.
    fn finish(&mut self, txn: &Transaction) {
        let fallback = RcptResult::Temporary(local(451, (4, 3, 0), "No reply for recipient"));
        self.events
            .push_back(ClientEvent::Delivered(txn.outcomes(&fallback)));
        self.ready();
    }
}
