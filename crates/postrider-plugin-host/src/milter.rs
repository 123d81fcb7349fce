//! Milters in the chain: each SMTP session gets its own connection to each milter, opened at
//! the first stage the milter is consulted at. Before each stage's step the milter is told
//! what it has not heard yet (connect, HELO, sender, recipients), so a milter consulted only
//! at `data` still sees the whole transaction. Its answers become the chain's decisions, and
//! at the end of the message its changes become header edits, a new body and envelope edits.

use std::sync::Arc;
use std::time::Duration;

use postrider_milter::client::{ClientError, Connection};
use postrider_milter::codec::protocol;
use postrider_milter::{Address, Command, Family, Modification, Offer, Verdict};
use postrider_smtp::address;
use postrider_smtp::reply::Reply;

use crate::error::CallFailure;
use crate::plugin::{FailurePolicy, Stage};
use crate::{ConnInfo, Decision, EnvelopeEdit, EnvelopeInfo, HeaderEdit, edits, validate};

/// One `[[milter]]` as the chain runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterSpec {
    /// Name in logs, verdicts and metrics.
    pub name: String,
    /// Where it listens.
    pub address: Address,
    /// The stages it is consulted at.
    pub stages: Vec<Stage>,
    /// Its place in the chain: after this plugin or milter; `None`: after every plugin.
    pub after: Option<String>,
    /// What a milter that is down, slow or breaks the protocol means.
    pub failure_policy: FailurePolicy,
    /// Deadline to connect and negotiate.
    pub connect_timeout: Duration,
    /// Deadline of each answer but the last.
    pub command_timeout: Duration,
    /// Deadline of the answer to the end of the message.
    pub content_timeout: Duration,
    /// Largest body it may put in place of the message's (the message size limit).
    pub max_body: usize,
    /// Our host name (the `j` macro).
    pub hostname: String,
}

impl MilterSpec {
    /// Whether the milter is consulted at `stage`.
    pub fn wants(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }
}

/// What a stage is about, for a milter.
#[derive(Clone, Copy)]
pub(crate) enum Now<'a> {
    Connect(&'a ConnInfo),
    Helo(&'a ConnInfo),
    Mail(&'a ConnInfo, &'a EnvelopeInfo),
    Rcpt(&'a ConnInfo, &'a EnvelopeInfo, &'a str),
    Data(&'a ConnInfo, &'a EnvelopeInfo, &'a [u8]),
}

impl Now<'_> {
    pub(crate) fn stage(&self) -> Stage {
        match self {
            Now::Connect(_) => Stage::Connect,
            Now::Helo(_) => Stage::Helo,
            Now::Mail(..) => Stage::MailFrom,
            Now::Rcpt(..) => Stage::Rcpt,
            Now::Data(..) => Stage::Data,
        }
    }

    fn conn(&self) -> &ConnInfo {
        match self {
            Now::Connect(c) | Now::Helo(c) => c,
            Now::Mail(c, _) | Now::Rcpt(c, _, _) | Now::Data(c, _, _) => c,
        }
    }

    fn env(&self) -> Option<&EnvelopeInfo> {
        match self {
            Now::Connect(_) | Now::Helo(_) => None,
            Now::Mail(_, e) | Now::Rcpt(_, e, _) | Now::Data(_, e, _) => Some(e),
        }
    }
}

/// Changes a milter asked for at the end of the message, checked.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) edits: Vec<HeaderEdit>,
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) envelope: Vec<EnvelopeEdit>,
    pub(crate) quarantine: Option<String>,
}

/// What a milter made of a stage.
#[derive(Debug)]
pub(crate) struct Heard {
    pub(crate) decision: Decision,
    /// It said discard: the message is accepted and thrown away.
    pub(crate) discard: bool,
    pub(crate) changes: Changes,
}

impl Heard {
    /// A failed call's outcome: the failure policy's decision, no changes.
    pub(crate) fn failed(decision: Decision) -> Heard {
        Heard {
            decision,
            discard: false,
            changes: Changes::default(),
        }
    }
}

/// One milter's connection within one SMTP session, and what it has been told.
pub(crate) struct MilterLink {
    pub(crate) spec: Arc<MilterSpec>,
    conn: Option<Connection>,
    /// The HELO name told on this connection.
    helo: Option<String>,
    /// MAIL FROM told in this transaction.
    mail: bool,
    /// Recipients told in this transaction.
    rcpts: Vec<String>,
    /// The end of the message was answered: no abort needed.
    ended: bool,
    /// A transaction was left unfinished: abort before the next.
    abort: bool,
    /// It failed: not tried again before the next MAIL FROM.
    pub(crate) down: bool,
    /// Its refusal at connect: the answer to every later stage of the session, as Postfix
    /// keeps a milter's connect-level reject or tempfail.
    refused: Option<Decision>,
}

impl Drop for MilterLink {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.quit();
        }
    }
}

const DEFAULT_REJECT: (u16, (u8, u16, u16), &str) = (550, (5, 7, 1), "Command rejected");
const DEFAULT_TEMPFAIL: (u16, (u8, u16, u16), &str) =
    (451, (4, 7, 1), "Service unavailable - try again later");

impl MilterLink {
    pub(crate) fn new(spec: Arc<MilterSpec>) -> MilterLink {
        MilterLink {
            spec,
            conn: None,
            helo: None,
            mail: false,
            rcpts: Vec::new(),
            ended: false,
            abort: false,
            down: false,
            refused: None,
        }
    }

    /// The transaction is over (or never began): the next one starts with an abort if this
    /// one was told to the milter but not finished.
    pub(crate) fn end_transaction(&mut self) {
        if self.mail && !self.ended {
            self.abort = true;
        }
        self.mail = false;
        self.rcpts.clear();
        self.ended = false;
    }

    /// A new MAIL FROM: a milter that failed is tried again.
    pub(crate) fn begin_transaction(&mut self) {
        self.down = false;
    }

    /// Tells the milter what it has not heard, then this stage's step. Any error drops the
    /// connection: the caller applies the failure policy.
    pub(crate) async fn stage(&mut self, now: Now<'_>) -> Result<Heard, CallFailure> {
        if self.down {
            return Err(CallFailure::Unavailable(format!(
                "{}: failed earlier in this transaction",
                self.spec.address
            )));
        }
        match self.run(now).await {
            Ok(heard) => Ok(heard),
            Err(e) => {
                self.conn = None;
                self.down = true;
                Err(match e {
                    ClientError::Timeout(ms) => CallFailure::Timeout(ms),
                    ClientError::Protocol(p) => CallFailure::Invalid(p.to_string()),
                    ClientError::Io(_) | ClientError::Closed => {
                        CallFailure::Unavailable(format!("{}: {e}", self.spec.address))
                    }
                })
            }
        }
    }

    async fn run(&mut self, now: Now<'_>) -> Result<Heard, ClientError> {
        let mut heard = Heard::failed(Decision::Continue);
        if let Some(refused) = &self.refused {
            heard.decision = refused.clone();
            return Ok(heard);
        }
        let conn = now.conn();
        let command = self.spec.command_timeout;
        if self.conn.is_none() {
            // Rejected recipients are never sent (SMFIP_RCPT_REJ is not offered).
            let offer = Offer {
                protocol: protocol::ALL & !protocol::RCPT_REJ,
                ..Offer::default()
            };
            let opened = Connection::open(
                &self.spec.address,
                offer,
                self.spec.max_body,
                self.spec.connect_timeout,
            )
            .await?;
            self.conn = Some(opened);
            self.helo = None;
            self.mail = false;
            self.rcpts.clear();
            self.abort = false;
            self.tell(&connect_macros(&self.spec.hostname, conn), command)
                .await?;
            let hello = Command::Connect {
                hostname: conn
                    .client_name
                    .clone()
                    .unwrap_or_else(|| format!("[{}]", conn.client_ip)),
                family: if conn.client_ip.is_ipv4() {
                    Family::Inet
                } else {
                    Family::Inet6
                },
                port: conn.client_port,
                address: conn.client_ip.to_string(),
            };
            if self.hear(&hello, command, false, &mut heard).await? {
                self.refused = Some(heard.decision.clone());
                return Ok(heard);
            }
        }
        // At the HELO stage always (a second EHLO must not slip past a refusal of the first;
        // after STARTTLS the TLS macros are news); at later stages once per name.
        if let Some(helo) = &conn.helo
            && (matches!(now, Now::Helo(_)) || self.helo.as_ref() != Some(helo))
        {
            self.helo = Some(helo.clone());
            self.tell(&helo_macros(conn), command).await?;
            if self
                .hear(&Command::Helo(helo.clone()), command, false, &mut heard)
                .await?
            {
                return Ok(heard);
            }
        }
        let Some(env) = now.env() else {
            return Ok(heard);
        };
        if self.abort || (matches!(now, Now::Mail(..)) && self.mail) {
            self.tell(&Command::Abort, command).await?;
            self.abort = false;
            self.mail = false;
            self.rcpts.clear();
        }
        if !self.mail {
            self.mail = true;
            self.ended = false;
            self.tell(&mail_macros(conn, env), command).await?;
            let mut args = vec![format!("<{}>", env.mail_from)];
            args.extend(env.mail_params.iter().map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            }));
            if self
                .hear(&Command::Mail(args), command, false, &mut heard)
                .await?
            {
                return Ok(heard);
            }
        }
        let current = match now {
            Now::Rcpt(_, _, rcpt) => Some(rcpt),
            _ => None,
        };
        // Recipients accepted since it was last told, then the one at hand.
        let untold: Vec<String> = env
            .recipients
            .iter()
            .filter(|r| !self.rcpts.contains(r))
            .cloned()
            .collect();
        for rcpt in untold.iter().map(String::as_str).chain(current) {
            self.rcpts.push(rcpt.to_owned());
            let at_hand = Some(rcpt) == current;
            self.tell(&rcpt_macros(rcpt), command).await?;
            let cmd = Command::Rcpt(vec![format!("<{rcpt}>")]);
            if self.hear(&cmd, command, !at_hand, &mut heard).await? {
                return Ok(heard);
            }
        }
        if let Now::Data(_, env, message) = now {
            self.data(env, message, &mut heard).await?;
        }
        Ok(heard)
    }

    async fn data(
        &mut self,
        env: &EnvelopeInfo,
        message: &[u8],
        heard: &mut Heard,
    ) -> Result<(), ClientError> {
        let command = self.spec.command_timeout;
        let id = env.queue_id.clone().unwrap_or_default();
        let queue_id = |stage: u8| Command::Macros {
            stage,
            pairs: vec![("i".to_owned(), id.clone())],
        };
        self.tell(&queue_id(b'T'), command).await?;
        if self.hear(&Command::Data, command, false, heard).await? {
            return Ok(());
        }
        let leading_space = self
            .conn
            .as_ref()
            .is_some_and(|c| c.session().protocol() & protocol::HEADER_LEADING_SPACE != 0);
        let (fields, body) = edits::fields(message);
        for (name, value) in fields {
            if name.is_empty() {
                continue;
            }
            let value = String::from_utf8_lossy(&value).replace("\r\n", "\n");
            let value = if leading_space {
                value
            } else {
                value.trim_start_matches([' ', '\t']).to_owned()
            };
            let cmd = Command::Header(name.to_owned(), value);
            if self.hear(&cmd, command, false, heard).await? {
                return Ok(());
            }
        }
        self.tell(&queue_id(b'N'), command).await?;
        if self
            .hear(&Command::EndOfHeaders, command, false, heard)
            .await?
        {
            return Ok(());
        }
        for chunk in body.chunks(postrider_milter::codec::BODY_CHUNK) {
            if self
                .hear(&Command::Body(chunk.to_vec()), command, false, heard)
                .await?
            {
                return Ok(());
            }
        }
        self.tell(&queue_id(b'E'), command).await?;
        let content = self.spec.content_timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Closed);
        };
        let answer = conn.step(&Command::EndOfBody, content).await?;
        // Not sent (the milter was done with the message earlier): the next transaction
        // starts with an abort, which makes it listen again.
        self.ended = answer.is_some();
        if let Some(answer) = answer {
            let malformed = |e| ClientError::Protocol(postrider_milter::MilterError::Malformed(e));
            let mut changes = changes(answer.modifications, env.smtputf8).map_err(malformed)?;
            if let Some(body) = changes.body.take() {
                let max = self.spec.max_body as u64;
                let body = edits::checked_body(message, &body, max).map_err(|e| {
                    tracing::warn!(milter = %self.spec.name, error = %e, "replacement body refused");
                    malformed("a replacement body the message cannot take")
                })?;
                changes.body = Some(body);
            }
            heard.changes = changes;
            self.verdict(answer.verdict, false, heard);
        }
        Ok(())
    }

    /// Sends what needs no answer (macros, abort).
    async fn tell(&mut self, cmd: &Command, timeout: Duration) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Closed);
        };
        conn.step(cmd, timeout).await.map(drop)
    }

    /// Sends a step and takes its answer into `heard`; true when the stage is decided (a
    /// refusal). `told` marks a recipient told late, already accepted: its refusal is moot.
    async fn hear(
        &mut self,
        cmd: &Command,
        timeout: Duration,
        told: bool,
        heard: &mut Heard,
    ) -> Result<bool, ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Closed);
        };
        match conn.step(cmd, timeout).await? {
            Some(answer) => Ok(self.verdict(answer.verdict, told, heard)),
            None => Ok(false),
        }
    }

    fn verdict(&self, verdict: Verdict, told: bool, heard: &mut Heard) -> bool {
        let reply = |r: Option<Reply>, (code, enhanced, text): (u16, (u8, u16, u16), &str)| {
            r.unwrap_or_else(|| Reply::local(code, enhanced, text))
        };
        heard.decision = match verdict {
            Verdict::Continue | Verdict::Accept => return false,
            Verdict::Discard => {
                heard.discard = true;
                return false;
            }
            Verdict::Reject(_) | Verdict::Tempfail(_) if told => {
                tracing::debug!(milter = %self.spec.name, "refusal of a recipient already accepted is ignored");
                return false;
            }
            Verdict::Reject(r) => Decision::Reject(reply(r, DEFAULT_REJECT)),
            Verdict::Tempfail(r) => {
                let r = reply(r, DEFAULT_TEMPFAIL);
                if r.code() == 421 {
                    Decision::Disconnect(r)
                } else {
                    Decision::Tempfail(r)
                }
            }
        };
        true
    }
}

/// Checks a milter's changes and turns them into the chain's edits.
fn changes(mods: Vec<Modification>, smtputf8: bool) -> Result<Changes, &'static str> {
    let mut out = Changes::default();
    let name = |n: &str| validate::header_name(n).map_err(|_| "a bad header name");
    let value = |v: &str| validate::milter_header_value(v).map_err(|_| "a bad header value");
    let bare = |a: &str| {
        a.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned()
    };
    for m in mods {
        match m {
            Modification::AddHeader(n, v) => out.edits.push(HeaderEdit::Append {
                name: name(&n)?,
                value: value(&v)?,
            }),
            Modification::InsertHeader(index, n, v) => out.edits.push(HeaderEdit::Insert {
                index,
                name: name(&n)?,
                value: value(&v)?,
            }),
            // The index is 1-based; libmilter and Postfix read 0 as 1.
            Modification::ChangeHeader(index, n, v) if v.is_empty() => {
                out.edits.push(HeaderEdit::Delete {
                    name: name(&n)?,
                    index: index.saturating_sub(1),
                })
            }
            Modification::ChangeHeader(index, n, v) => out.edits.push(HeaderEdit::Change {
                name: name(&n)?,
                index: index.saturating_sub(1),
                value: value(&v)?,
            }),
            Modification::ReplaceBody(body) => out.body = Some(edits::crlf(&body)),
            Modification::AddRcpt(rcpt, _args) => {
                let parsed = address::parse_forward_path(&format!("<{}>", bare(&rcpt)), smtputf8)
                    .map_err(|_| "an added recipient is not an address")?;
                out.envelope
                    .push(EnvelopeEdit::AddRcpt(parsed.path.address()));
            }
            Modification::DeleteRcpt(rcpt) => {
                out.envelope.push(EnvelopeEdit::DeleteRcpt(bare(&rcpt)))
            }
            Modification::ChangeFrom(from, _args) => {
                let parsed = address::parse_reverse_path(&format!("<{}>", bare(&from)), smtputf8)
                    .map_err(|_| "a new sender is not an address")?;
                out.envelope
                    .push(EnvelopeEdit::ChangeFrom(parsed.path.address()));
            }
            Modification::Quarantine(reason) => {
                out.quarantine =
                    Some(validate::reason(&reason).map_err(|_| "a bad quarantine reason")?);
            }
        }
    }
    Ok(out)
}

fn macros(stage: u8, pairs: Vec<(&str, String)>) -> Command {
    Command::Macros {
        stage,
        pairs: pairs.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
    }
}

fn connect_macros(hostname: &str, conn: &ConnInfo) -> Command {
    macros(
        b'C',
        vec![
            ("j", hostname.to_owned()),
            ("{daemon_name}", "postrider".to_owned()),
            (
                "v",
                concat!("Postrider ", env!("CARGO_PKG_VERSION")).to_owned(),
            ),
            ("_", format!("[{}]", conn.client_ip)),
            ("{client_addr}", conn.client_ip.to_string()),
            ("{client_port}", conn.client_port.to_string()),
            (
                "{client_name}",
                conn.client_name
                    .clone()
                    .unwrap_or_else(|| format!("[{}]", conn.client_ip)),
            ),
            ("{if_addr}", conn.server_ip.to_string()),
        ],
    )
}

fn helo_macros(conn: &ConnInfo) -> Command {
    let mut pairs = Vec::new();
    if let Some(tls) = &conn.tls {
        pairs.push(("{tls_version}", tls.protocol.clone()));
        pairs.push(("{cipher}", tls.cipher.clone()));
    }
    macros(b'H', pairs)
}

fn mail_macros(conn: &ConnInfo, env: &EnvelopeInfo) -> Command {
    let mut pairs = vec![("{mail_addr}", env.mail_from.clone())];
    if let Some(user) = &conn.auth_user {
        pairs.push(("{auth_authen}", user.clone()));
    }
    macros(b'M', pairs)
}

fn rcpt_macros(rcpt: &str) -> Command {
    macros(b'R', vec![("{rcpt_addr}", rcpt.to_owned())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_checked_and_converted() {
        let c = changes(
            vec![
                Modification::InsertHeader(0, "DKIM-Signature".into(), " v=1;\n\tb=abc".into()),
                Modification::ChangeHeader(2, "X-Spam".into(), String::new()),
                Modification::ChangeHeader(0, "Subject".into(), "new".into()),
                Modification::AddRcpt("<bob@example.net>".into(), None),
                Modification::DeleteRcpt("<carol@example.net>".into()),
                Modification::ChangeFrom("<>".into(), None),
                Modification::Quarantine("held".into()),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            c.edits,
            vec![
                HeaderEdit::Insert {
                    index: 0,
                    name: "DKIM-Signature".into(),
                    value: " v=1;\r\n\tb=abc".into()
                },
                HeaderEdit::Delete {
                    name: "X-Spam".into(),
                    index: 1
                },
                HeaderEdit::Change {
                    name: "Subject".into(),
                    index: 0,
                    value: "new".into()
                },
            ]
        );
        assert_eq!(
            c.envelope,
            vec![
                EnvelopeEdit::AddRcpt("bob@example.net".into()),
                EnvelopeEdit::DeleteRcpt("carol@example.net".into()),
                EnvelopeEdit::ChangeFrom(String::new()),
            ]
        );
        assert_eq!(c.quarantine.as_deref(), Some("held"));
        for bad in [
            Modification::AddHeader("Bad Name".into(), "v".into()),
            Modification::AddHeader("X".into(), "a\0b".into()),
            Modification::AddRcpt("not an address".into(), None),
            Modification::ChangeFrom("a@b@c".into(), None),
            Modification::Quarantine("a\r\nb".into()),
        ] {
            assert!(changes(vec![bad.clone()], false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_folded_value_cannot_start_a_header() {
        assert_eq!(
            validate::milter_header_value("a\nBcc: x").unwrap(),
            "a\r\n\tBcc: x"
        );
        assert!(validate::milter_header_value("a\rb").is_err());
    }
}
