//! Stamps every accepted message with a header summarising it, at the data stage.
//!
//! The stamp is `VALUE; item=...; item=...`, built from the message resource without copying
//! the message into the plugin: for example whether a `Message-ID` is present, the length of the
//! `Subject`, the size, attachment count, and what the relay verified (SPF, DKIM, DMARC, ARC),
//! so a filter downstream can read one short header instead of parsing
//! `Authentication-Results`. By default any incoming header of the same name is removed first,
//! so a sender cannot forge the stamp.
//!
//! Config (every key optional), under the plugin's `[[plugin]]` entry:
//!
//! ```toml
//! [plugin.config]
//! header = "X-Postrider-Stamp"
//! value = "mx1.example.org"
//! position = "prepend"        # or "append"
//! remove_existing = true      # drop incoming headers of that name first
//! report = ["queue-id", "message-id", "subject-length", "size", "attachments",
//!           "spf", "dkim", "dmarc", "arc", "tls", "auth"]   # default: the first four
//! ```
//!
//! gives e.g. `X-Postrider-Stamp: mx1.example.org; queue-id=7QK2B4; message-id=present;
//! subject-length=12; size=2345; attachments=0; spf=pass; dkim=pass(example.com);
//! dmarc=pass; arc=none; tls=TLSv1.3; auth=no`.
//!
//! The authentication items use the result names of `Authentication-Results` (RFC 8601):
//! `none`, `pass`, `fail`, `softfail`, `neutral`, `temperror`, `permerror`, `policy`.
//! `spf` is the relay's SPF result for the MAIL FROM identity; `dkim` lists every signature as
//! `RESULT(DOMAIN)`, comma-separated (`dkim=pass(a.example),fail(b.example)`), or `dkim=none`
//! for an unsigned message; `dmarc` and `arc` are single results. The relay verifies only mail
//! from clients that are neither authenticated nor in `relay_networks` (and only with
//! `[authentication] verify` on); for other mail every one of these items says `none`.

use postrider_plugin::{
    AuthResult, Config, Connection, DataOutcome, Envelope, HeaderEdit, Message, Plugin, Stages,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_value")]
    value: String,
    #[serde(default)]
    position: Position,
    #[serde(default = "yes")]
    remove_existing: bool,
    #[serde(default = "default_report")]
    report: Vec<Item>,
}

fn default_header() -> String {
    "X-Postrider-Stamp".into()
}
fn default_value() -> String {
    "postrider".into()
}
fn yes() -> bool {
    true
}
fn default_report() -> Vec<Item> {
    vec![
        Item::QueueId,
        Item::MessageId,
        Item::SubjectLength,
        Item::Size,
    ]
}

/// Where the stamp goes in the header block.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Position {
    /// At the top (trace position), like `Received:`.
    #[default]
    Prepend,
    /// At the end of the header block.
    Append,
}

/// One fact reported in the stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Item {
    /// `queue-id=ID` (or `none`).
    QueueId,
    /// `message-id=present|missing`.
    MessageId,
    /// `subject-length=N` in characters of the decoded subject (`none` without one).
    SubjectLength,
    /// `size=BYTES` as received.
    Size,
    /// `attachments=N`.
    Attachments,
    /// `spf=RESULT` for the MAIL FROM identity (`none` when not checked).
    Spf,
    /// `dkim=RESULT(DOMAIN),...` for each signature (`none` when unsigned).
    Dkim,
    /// `dmarc=RESULT`.
    Dmarc,
    /// `arc=RESULT` of the chain (`none` without one).
    Arc,
    /// `tls=PROTOCOL` or `tls=no`.
    Tls,
    /// `auth=yes|no` (whether the client authenticated; the user name is not disclosed).
    Auth,
}

/// The plugin: validated config.
#[derive(Debug)]
pub struct HeaderStamp {
    header: String,
    value: String,
    position: Position,
    remove_existing: bool,
    report: Vec<Item>,
}

/// RFC 5322 field name: printable ASCII except `:`, here at most 76 bytes.
fn validate_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 76 {
        return Err(format!("header name {name:?} must be 1 to 76 characters"));
    }
    if !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!(
            "header name {name:?} may only hold printable ASCII without ':'"
        ));
    }
    Ok(())
}

fn parse_config(config: &Config) -> Result<HeaderStamp, String> {
    let raw: RawConfig = config.parse()?;
    validate_header_name(&raw.header).map_err(|e| format!("header-stamp: {e}"))?;
    let value = raw.value.trim().to_owned();
    if value.is_empty() || value.len() > 200 || value.chars().any(char::is_control) {
        return Err("header-stamp: `value` must be one line of 1 to 200 characters".into());
    }
    let mut report = Vec::new();
    for item in raw.report {
        if report.contains(&item) {
            return Err(format!("header-stamp: `report` lists {item:?} twice"));
        }
        report.push(item);
    }
    Ok(HeaderStamp {
        header: raw.header,
        value,
        position: raw.position,
        remove_existing: raw.remove_existing,
        report,
    })
}

/// The contract's name for an authentication result.
fn result_name(r: AuthResult) -> &'static str {
    match r {
        AuthResult::None => "none",
        AuthResult::Pass => "pass",
        AuthResult::Fail => "fail",
        AuthResult::Softfail => "softfail",
        AuthResult::Neutral => "neutral",
        AuthResult::Temperror => "temperror",
        AuthResult::Permerror => "permerror",
        AuthResult::Policy => "policy",
    }
}

/// A signing domain as the stamp shows it. The sender chose it (the signature's `d=`), so
/// anything that is not a domain-name character becomes `?`: a crafted `d=` cannot close the
/// parentheses or add items a filter would read.
fn domain_text(d: &str) -> String {
    let d: String = d
        .trim()
        .chars()
        .take(253)
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '?'
            }
        })
        .collect();
    if d.is_empty() { "?".into() } else { d }
}

/// The facts a stamp can report, gathered from the message resource and the session.
#[derive(Debug, Default)]
struct Facts {
    queue_id: Option<String>,
    message_id: bool,
    subject_chars: Option<usize>,
    size: u64,
    attachments: usize,
    spf: Option<AuthResult>,
    /// Each signature's result and signing domain.
    dkim: Vec<(AuthResult, String)>,
    dmarc: Option<AuthResult>,
    arc: Option<AuthResult>,
    tls: Option<String>,
    auth: bool,
}

/// Builds the header value from the configured items (pure, so it can be tested).
fn stamp_value(base: &str, report: &[Item], f: &Facts) -> String {
    let mut parts = vec![base.to_owned()];
    for item in report {
        parts.push(match item {
            Item::QueueId => format!("queue-id={}", f.queue_id.as_deref().unwrap_or("none")),
            Item::MessageId => format!(
                "message-id={}",
                if f.message_id { "present" } else { "missing" }
            ),
            Item::SubjectLength => match f.subject_chars {
                Some(n) => format!("subject-length={n}"),
                None => "subject-length=none".into(),
            },
            Item::Size => format!("size={}", f.size),
            Item::Attachments => format!("attachments={}", f.attachments),
            Item::Spf => format!("spf={}", f.spf.map_or("none", result_name)),
            Item::Dkim if f.dkim.is_empty() => "dkim=none".into(),
            Item::Dkim => format!(
                "dkim={}",
                f.dkim
                    .iter()
                    .map(|(r, d)| format!("{}({})", result_name(*r), domain_text(d)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Item::Dmarc => format!("dmarc={}", f.dmarc.map_or("none", result_name)),
            Item::Arc => format!("arc={}", f.arc.map_or("none", result_name)),
            Item::Tls => format!("tls={}", f.tls.as_deref().unwrap_or("no")),
            Item::Auth => format!("auth={}", if f.auth { "yes" } else { "no" }),
        });
    }
    // Header values are one line: keep only printable text from the host's strings.
    parts
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl HeaderStamp {
    /// Reads only what the configured items need from the message.
    fn gather(&self, conn: &Connection, env: &Envelope, msg: &Message) -> Facts {
        let wants = |i: Item| self.report.contains(&i);
        let mut f = Facts {
            queue_id: env.queue_id.clone(),
            tls: conn.tls.as_ref().map(|t| t.protocol.clone()),
            auth: conn.is_authenticated(),
            ..Facts::default()
        };
        if wants(Item::MessageId) {
            f.message_id = msg.has_header("Message-ID");
        }
        if wants(Item::SubjectLength) {
            f.subject_chars = msg
                .first_header("Subject")
                .map(|s| s.trim().chars().count());
        }
        if wants(Item::Size) {
            f.size = msg.size();
        }
        if wants(Item::Attachments) {
            f.attachments = msg.attachments().len();
        }
        if wants(Item::Spf) {
            f.spf = env.spf.as_ref().map(|s| s.result);
        }
        if wants(Item::Dkim) || wants(Item::Dmarc) || wants(Item::Arc) {
            let auth = msg.authentication();
            f.dkim = auth
                .dkim
                .into_iter()
                .map(|d| (d.result, d.domain))
                .collect();
            f.dmarc = Some(auth.dmarc);
            f.arc = Some(auth.arc);
        }
        f
    }

    fn edits(&self, value: String) -> Vec<HeaderEdit> {
        let mut edits = Vec::with_capacity(2);
        if self.remove_existing {
            edits.push(HeaderEdit::remove(self.header.clone()));
        }
        edits.push(match self.position {
            Position::Prepend => HeaderEdit::prepend(self.header.clone(), value),
            Position::Append => HeaderEdit::append(self.header.clone(), value),
        });
        edits
    }
}

impl Plugin for HeaderStamp {
    fn init(config: &Config) -> Result<Self, String> {
        parse_config(config)
    }

    fn stages(&self) -> Stages {
        Stages::DATA
    }

    fn on_data(&mut self, conn: &Connection, env: &Envelope, msg: &Message) -> DataOutcome {
        let facts = self.gather(conn, env, msg);
        DataOutcome::edits(self.edits(stamp_value(&self.value, &self.report, &facts)))
    }
}

postrider_plugin::export!(HeaderStamp);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<HeaderStamp, String> {
        parse_config(&Config::new(json))
    }

    #[test]
    fn defaults() {
        let s = cfg("{}").unwrap();
        assert_eq!(s.header, "X-Postrider-Stamp");
        assert_eq!(s.position, Position::Prepend);
        assert_eq!(s.report, default_report());
        let edits = s.edits("v".into());
        assert_eq!(
            edits,
            vec![
                HeaderEdit::remove("X-Postrider-Stamp"),
                HeaderEdit::prepend("X-Postrider-Stamp", "v")
            ]
        );
        let a = cfg(r#"{"position": "append", "remove_existing": false}"#).unwrap();
        assert_eq!(
            a.edits("v".into()),
            vec![HeaderEdit::append("X-Postrider-Stamp", "v")]
        );
    }

    #[test]
    fn errors() {
        for (json, needle) in [
            (r#"{"header": "X Bad"}"#, "printable ASCII"),
            (r#"{"header": "A:B"}"#, "printable ASCII"),
            (r#"{"header": ""}"#, "1 to 76"),
            (r#"{"value": "a\r\nBcc: x"}"#, "one line"),
            (r#"{"position": "middle"}"#, "unknown variant `middle`"),
            (r#"{"report": ["size", "size"]}"#, "twice"),
            (r#"{"report": ["colour"]}"#, "unknown variant `colour`"),
        ] {
            let err = cfg(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn values() {
        let facts = Facts {
            queue_id: Some("Q1".into()),
            message_id: true,
            subject_chars: Some(5),
            size: 1234,
            attachments: 2,
            spf: Some(AuthResult::Softfail),
            dkim: vec![(AuthResult::Pass, "d.example".into())],
            dmarc: Some(AuthResult::Fail),
            arc: Some(AuthResult::Pass),
            tls: Some("TLSv1.3".into()),
            auth: false,
        };
        let all = [
            Item::QueueId,
            Item::MessageId,
            Item::SubjectLength,
            Item::Size,
            Item::Attachments,
            Item::Spf,
            Item::Dkim,
            Item::Dmarc,
            Item::Arc,
            Item::Tls,
            Item::Auth,
        ];
        assert_eq!(
            stamp_value("mx1", &all, &facts),
            "mx1; queue-id=Q1; message-id=present; subject-length=5; size=1234; attachments=2; \
             spf=softfail; dkim=pass(d.example); dmarc=fail; arc=pass; tls=TLSv1.3; auth=no"
        );
        let auth = [Item::Spf, Item::Dkim, Item::Dmarc, Item::Arc];
        assert_eq!(
            stamp_value("mx1", &auth, &Facts::default()),
            "mx1; spf=none; dkim=none; dmarc=none; arc=none"
        );
        let signed = Facts {
            dkim: vec![
                (AuthResult::Pass, "a.example".into()),
                (AuthResult::Fail, "b.example".into()),
                (AuthResult::Permerror, "x) dmarc=pass; (y".into()),
                (AuthResult::Neutral, String::new()),
            ],
            ..Facts::default()
        };
        assert_eq!(
            stamp_value("mx1", &[Item::Dkim], &signed),
            "mx1; dkim=pass(a.example),fail(b.example),permerror(x??dmarc?pass???y),neutral(?)"
        );
        assert_eq!(
            stamp_value(
                "mx1",
                &[Item::MessageId, Item::SubjectLength],
                &Facts::default()
            ),
            "mx1; message-id=missing; subject-length=none"
        );
        assert_eq!(stamp_value("mx1", &[], &Facts::default()), "mx1");
    }
}
