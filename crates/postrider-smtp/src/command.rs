//! Parsing of one SMTP command line (RFC 5321 §4.1) and its ESMTP parameters.
//!
//! The parser is stateless: sequencing and policy (HELO vs EHLO, SMTPUTF8 for
//! recipients, SIZE limits) are the session's job.

use crate::address::{
    self, AddressError, Domain, ForwardPath, ReversePath, forward_path_prefix, reverse_path_prefix,
};
use crate::reply::Reply;

/// Maximum length of an ENVID value after decoding (RFC 3461 §4.4).
const MAX_ENVID: usize = 100;
/// Maximum length of an ORCPT value (RFC 3461 §4.2).
const MAX_ORCPT: usize = 500;
/// Maximum length of a SASL mechanism name (RFC 4422 §3.1).
const MAX_MECHANISM: usize = 20;

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(Domain),
    /// `HELO domain`.
    Helo(Domain),
    /// `MAIL FROM:<path> [params]`.
    Mail {
        /// The reverse-path, source route removed.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
        /// True if a source route was present and discarded.
        source_route: bool,
    },
    /// `RCPT TO:<path> [params]`.
    Rcpt {
        /// The forward-path, source route removed.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
        /// True if a source route was present and discarded.
        source_route: bool,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets in the chunk that follows the command line.
        size: u64,
        /// True if this is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `HELP [string]`.
    Help,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn(String),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The mechanism name, upper-cased.
        mechanism: String,
        /// The initial response, still base64 encoded (`=` means empty).
        initial: Option<String>,
    },
}

/// The BODY parameter of MAIL (RFC 6152); kept in the spool as its keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Body {
    /// `BODY=7BIT`.
    #[cfg_attr(feature = "serde", serde(rename = "7BIT"))]
    SevenBit,
    /// `BODY=8BITMIME`.
    #[cfg_attr(feature = "serde", serde(rename = "8BITMIME"))]
    EightBitMime,
}

impl Body {
    /// The parameter's value as written on the wire.
    pub fn keyword(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
        }
    }
}

/// The RET parameter of MAIL (RFC 3461 §4.3); kept in the spool as its keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Ret {
    /// Return the full message in a DSN.
    #[cfg_attr(feature = "serde", serde(rename = "FULL"))]
    Full,
    /// Return only the headers in a DSN.
    #[cfg_attr(feature = "serde", serde(rename = "HDRS"))]
    Hdrs,
}

impl Ret {
    /// The parameter's value as written on the wire.
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// Which events of a NOTIFY list are requested (RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotifyOn {
    /// Notify on successful delivery.
    pub success: bool,
    /// Notify on failure.
    pub failure: bool,
    /// Notify on delay.
    pub delay: bool,
}

/// The NOTIFY parameter of RCPT (RFC 3461 §4.1); kept in the spool as its list of keywords
/// (`["NEVER"]`, or some of `SUCCESS`, `FAILURE`, `DELAY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// `NOTIFY=NEVER`.
    Never,
    /// A non-empty set of SUCCESS, FAILURE and DELAY.
    On(NotifyOn),
}

impl Notify {
    /// The keywords as written on the wire, in RFC 3461's order.
    pub fn keywords(self) -> Vec<&'static str> {
        match self {
            Notify::Never => vec!["NEVER"],
            Notify::On(on) => [
                (on.success, "SUCCESS"),
                (on.failure, "FAILURE"),
                (on.delay, "DELAY"),
            ]
            .into_iter()
            .filter_map(|(on, k)| on.then_some(k))
            .collect(),
        }
    }

    /// From keywords (any case); NEVER wins over the others, unknown words are ignored.
    pub fn from_keywords<S: AsRef<str>>(keywords: &[S]) -> Notify {
        let has = |k: &str| keywords.iter().any(|w| w.as_ref().eq_ignore_ascii_case(k));
        if has("NEVER") {
            return Notify::Never;
        }
        Notify::On(NotifyOn {
            success: has("SUCCESS"),
            failure: has("FAILURE"),
            delay: has("DELAY"),
        })
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Notify {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.keywords())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Notify {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let words = <Vec<String> as serde::Deserialize>::deserialize(deserializer)?;
        Ok(Notify::from_keywords(&words))
    }
}

/// ESMTP parameters of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=` declared message size (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded (RFC 3461).
    pub envid: Option<String>,
    /// `AUTH=`, xtext-decoded (RFC 4954 §5).
    pub auth: Option<String>,
    /// `REQUIRETLS` (RFC 8689): the message may only be relayed over authenticated TLS to
    /// servers that support REQUIRETLS.
    pub require_tls: bool,
}

impl MailParams {
    /// True if no parameter was given (as required in a HELO session).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The parameters that describe the message (not AUTH=) as (keyword, value) pairs in
    /// wire form, keywords upper-case: what plugins are shown.
    pub fn keywords(&self) -> Vec<(String, Option<String>)> {
        let mut list = Vec::new();
        if let Some(size) = self.size {
            list.push(("SIZE".to_owned(), Some(size.to_string())));
        }
        if let Some(body) = self.body {
            list.push(("BODY".to_owned(), Some(body.keyword().to_owned())));
        }
        if self.smtputf8 {
            list.push(("SMTPUTF8".to_owned(), None));
        }
        if let Some(ret) = self.ret {
            list.push(("RET".to_owned(), Some(ret.keyword().to_owned())));
        }
        if let Some(envid) = &self.envid {
            list.push(("ENVID".to_owned(), Some(envid.clone())));
        }
        if self.require_tls {
            list.push(("REQUIRETLS".to_owned(), None));
        }
        list
    }
}

/// ESMTP parameters of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461).
    pub notify: Option<Notify>,
    /// `ORCPT=addr-type;xtext`, as (addr-type, decoded address) (RFC 3461).
    pub orcpt: Option<(String, String)>,
}

impl RcptParams {
    /// True if no parameter was given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a command line was refused; converts into the reply to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The verb is not one we know (500 5.5.2).
    #[error("unknown command")]
    UnknownVerb,
    /// The line holds a control character or invalid UTF-8 (500 5.5.2).
    #[error("invalid character in command")]
    InvalidCharacter,
    /// A known verb with bad arguments; carries the usage text (501 5.5.4).
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// Unparsable sender (501 5.1.7, or 553 5.6.7 for UTF-8 without SMTPUTF8).
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// Unparsable recipient (501 5.1.3, or 553 5.6.7 for UTF-8 without SMTPUTF8).
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// A parameter we do not recognize (555 5.5.4, RFC 5321 §4.1.1.11).
    #[error("unsupported parameter {0}")]
    UnknownParameter(String),
    /// A parameter given twice (501 5.5.4).
    #[error("duplicate parameter {0}")]
    DuplicateParameter(String),
    /// A malformed parameter: bad esmtp-keyword/esmtp-value syntax, or a value a
    /// known parameter does not allow (501 5.5.4).
    #[error("invalid parameter {0}")]
    InvalidParameter(String),
    /// `BODY=BINARYMIME`, which we do not offer (555 5.5.4).
    #[error("BODY=BINARYMIME is not supported")]
    BinaryMime,
}

impl CommandError {
    /// The reply to send for this error; the text never echoes client input.
    pub fn reply(&self) -> Reply {
        let (code, e, text) = match self {
            Self::UnknownVerb => (500, (5, 5, 2), "Error: command not recognized"),
            Self::InvalidCharacter => (500, (5, 5, 2), "Error: invalid character in command"),
            Self::Syntax(usage) => (501, (5, 5, 4), *usage),
            Self::BadSender(AddressError::NonAsciiWithoutSmtputf8)
            | Self::BadRecipient(AddressError::NonAsciiWithoutSmtputf8) => {
                (553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8")
            }
            Self::BadSender(_) => (501, (5, 1, 7), "Bad sender address syntax"),
            Self::BadRecipient(_) => (501, (5, 1, 3), "Bad recipient address syntax"),
            Self::UnknownParameter(_) => (555, (5, 5, 4), "Unsupported parameter"),
            Self::DuplicateParameter(_) => (501, (5, 5, 4), "Duplicate parameter"),
            Self::InvalidParameter(_) => (501, (5, 5, 4), "Invalid parameter value"),
            Self::BinaryMime => (555, (5, 5, 4), "BODY=BINARYMIME is not supported"),
        };
        Reply::local(code, e, text)
    }
}

impl From<CommandError> for Reply {
    fn from(err: CommandError) -> Self {
        err.reply()
    }
}

impl Command {
    /// Parses one command line, without its CRLF.
    pub fn parse(line: &[u8]) -> Result<Self, CommandError> {
        if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(CommandError::InvalidCharacter);
        }
        let line = std::str::from_utf8(line).map_err(|_| CommandError::InvalidCharacter)?;
        let (verb, rest) = match line.split_once(' ') {
            Some((verb, rest)) => (verb, rest),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        // Trailing spaces are harmless and common; they are ignored everywhere.
        let args = rest.trim_end_matches(' ');
        match verb.as_str() {
            "EHLO" => parse_hello(args, "Syntax: EHLO hostname").map(Self::Ehlo),
            "HELO" => parse_hello(args, "Syntax: HELO hostname").map(Self::Helo),
            "MAIL" => parse_mail(rest),
            "RCPT" => parse_rcpt(rest),
            "DATA" => no_args(args, Self::Data, "Syntax: DATA"),
            "BDAT" => parse_bdat(args),
            "RSET" => no_args(args, Self::Rset, "Syntax: RSET"),
            "NOOP" => Ok(Self::Noop),
            "QUIT" => no_args(args, Self::Quit, "Syntax: QUIT"),
            "HELP" => Ok(Self::Help),
            "VRFY" => required_arg(args, "Syntax: VRFY address").map(Self::Vrfy),
            "EXPN" => required_arg(args, "Syntax: EXPN list").map(Self::Expn),
            "STARTTLS" => no_args(args, Self::StartTls, "Syntax: STARTTLS"),
            "AUTH" => parse_auth(args),
            _ => Err(CommandError::UnknownVerb),
        }
    }

    /// The command verb, upper-case, for logging.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::Mail { .. } => "MAIL",
            Self::Rcpt { .. } => "RCPT",
            Self::Data => "DATA",
            Self::Bdat { .. } => "BDAT",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::Help => "HELP",
            Self::Vrfy(_) => "VRFY",
            Self::Expn(_) => "EXPN",
            Self::StartTls => "STARTTLS",
            Self::Auth { .. } => "AUTH",
        }
    }
}

fn no_args(args: &str, cmd: Command, usage: &'static str) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(usage))
    }
}

fn required_arg(args: &str, usage: &'static str) -> Result<String, CommandError> {
    if args.is_empty() {
        Err(CommandError::Syntax(usage))
    } else {
        Ok(args.to_owned())
    }
}

fn parse_hello(args: &str, usage: &'static str) -> Result<Domain, CommandError> {
    if args.is_empty() || args.contains(' ') {
        return Err(CommandError::Syntax(usage));
    }
    // `_` is tolerated in labels here (not in mail addresses): Windows clients send
    // their NetBIOS name, e.g. `EHLO my_pc`, and Postfix accepts it.
    address::parse_helo_domain(args).map_err(|_| CommandError::Syntax(usage))
}

/// Strips `prefix` (case-insensitive) and one optional space after it.
fn strip_keyword<'a>(rest: &'a str, prefix: &str) -> Option<&'a str> {
    let head = rest.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let tail = rest.get(prefix.len()..)?;
    Some(tail.strip_prefix(' ').unwrap_or(tail))
}

/// Splits what follows a path into parameters; the path must be followed by SP or nothing.
fn split_params<'a>(after: &'a str, usage: &'static str) -> Result<Vec<&'a str>, CommandError> {
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(CommandError::Syntax(usage));
    }
    Ok(after.split(' ').filter(|p| !p.is_empty()).collect())
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "Syntax: MAIL FROM:<address>";
    let path = strip_keyword(rest, "FROM:").ok_or(CommandError::Syntax(USAGE))?;
    if !path.starts_with('<') {
        return Err(CommandError::Syntax(USAGE));
    }
    let (parsed, used) = reverse_path_prefix(path, true).map_err(CommandError::BadSender)?;
    let mut params = MailParams::default();
    for param in split_params(path.get(used..).unwrap_or(""), USAGE)? {
        mail_param(&mut params, param)?;
    }
    if !params.smtputf8 && !parsed.path.is_ascii() {
        return Err(CommandError::BadSender(
            AddressError::NonAsciiWithoutSmtputf8,
        ));
    }
    Ok(Command::Mail {
        from: parsed.path,
        params,
        source_route: parsed.had_source_route,
    })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "Syntax: RCPT TO:<address>";
    let path = strip_keyword(rest, "TO:").ok_or(CommandError::Syntax(USAGE))?;
    if !path.starts_with('<') {
        return Err(CommandError::Syntax(USAGE));
    }
    // UTF-8 is accepted here; the session checks it against the transaction's SMTPUTF8.
    let (parsed, used) = forward_path_prefix(path, true).map_err(CommandError::BadRecipient)?;
    let mut params = RcptParams::default();
    for param in split_params(path.get(used..).unwrap_or(""), USAGE)? {
        rcpt_param(&mut params, param)?;
    }
    Ok(Command::Rcpt {
        to: parsed.path,
        params,
        source_route: parsed.had_source_route,
    })
}

fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "Syntax: BDAT size [LAST]";
    let mut words = args.split(' ');
    let size = words.next().unwrap_or("");
    if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax(USAGE));
    }
    let size = size.parse().map_err(|_| CommandError::Syntax(USAGE))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax(USAGE)),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax(USAGE));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "Syntax: AUTH mechanism [initial-response]";
    let mut words = args.split(' ');
    let mechanism = words.next().unwrap_or("");
    let initial = words.next();
    let mechanism_ok = (1..=MAX_MECHANISM).contains(&mechanism.len())
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !mechanism_ok || words.next().is_some() || initial == Some("") {
        return Err(CommandError::Syntax(USAGE));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial: initial.map(str::to_owned),
    })
}

/// Splits `KEY[=VALUE]`, validating the esmtp-keyword and esmtp-value grammar.
fn split_param(param: &str) -> Result<(String, Option<&str>), CommandError> {
    let (key, value) = match param.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (param, None),
    };
    let key_ok = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !key_ok {
        return Err(CommandError::InvalidParameter(String::new()));
    }
    let key = key.to_ascii_uppercase();
    if value.is_some_and(|v| v.is_empty() || v.contains('=')) {
        return Err(CommandError::InvalidParameter(key));
    }
    Ok((key, value))
}

/// Stores `value` in `slot`, refusing a second occurrence.
fn set_once<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(CommandError::DuplicateParameter(key.to_owned()));
    }
    *slot = Some(value);
    Ok(())
}

/// Sets a parameter that takes no value, refusing a value or a second occurrence.
fn set_flag(flag: &mut bool, value: Option<&str>, key: String) -> Result<(), CommandError> {
    if value.is_some() {
        return Err(CommandError::InvalidParameter(key));
    }
    if *flag {
        return Err(CommandError::DuplicateParameter(key));
    }
    *flag = true;
    Ok(())
}

fn mail_param(params: &mut MailParams, param: &str) -> Result<(), CommandError> {
    let (key, value) = split_param(param)?;
    let invalid = || CommandError::InvalidParameter(key.clone());
    match key.as_str() {
        "SMTPUTF8" => set_flag(&mut params.smtputf8, value, key)?,
        "REQUIRETLS" => set_flag(&mut params.require_tls, value, key)?,
        "SIZE" => {
            let v = value.ok_or_else(invalid)?;
            if !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let size = v.parse().map_err(|_| invalid())?;
            set_once(&mut params.size, size, &key)?;
        }
        "BODY" => {
            let v = value.ok_or_else(invalid)?;
            let body = if v.eq_ignore_ascii_case("7BIT") {
                Body::SevenBit
            } else if v.eq_ignore_ascii_case("8BITMIME") {
                Body::EightBitMime
            } else if v.eq_ignore_ascii_case("BINARYMIME") {
                return Err(CommandError::BinaryMime);
            } else {
                return Err(invalid());
            };
            set_once(&mut params.body, body, &key)?;
        }
        "RET" => {
            let v = value.ok_or_else(invalid)?;
            let ret = if v.eq_ignore_ascii_case("FULL") {
                Ret::Full
            } else if v.eq_ignore_ascii_case("HDRS") {
                Ret::Hdrs
            } else {
                return Err(invalid());
            };
            set_once(&mut params.ret, ret, &key)?;
        }
        "ENVID" => {
            let v = value.and_then(decode_xtext).ok_or_else(invalid)?;
            if v.len() > MAX_ENVID {
                return Err(invalid());
            }
            set_once(&mut params.envid, v, &key)?;
        }
        "AUTH" => {
            let v = value.and_then(decode_xtext).ok_or_else(invalid)?;
            set_once(&mut params.auth, v, &key)?;
        }
        _ => return Err(CommandError::UnknownParameter(key)),
    }
    Ok(())
}

fn rcpt_param(params: &mut RcptParams, param: &str) -> Result<(), CommandError> {
    let (key, value) = split_param(param)?;
    let invalid = || CommandError::InvalidParameter(key.clone());
    match key.as_str() {
        "NOTIFY" => {
            let v = value.ok_or_else(invalid)?;
            let notify = parse_notify(v).ok_or_else(invalid)?;
            set_once(&mut params.notify, notify, &key)?;
        }
        "ORCPT" => {
            let v = value.ok_or_else(invalid)?;
            if v.len() > MAX_ORCPT {
                return Err(invalid());
            }
            let (addr_type, addr) = v.split_once(';').ok_or_else(invalid)?;
            let type_ok = !addr_type.is_empty()
                && addr_type
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let addr = decode_xtext(addr).filter(|a| type_ok && !a.is_empty());
            let addr = addr.ok_or_else(invalid)?;
            set_once(&mut params.orcpt, (addr_type.to_owned(), addr), &key)?;
        }
        _ => return Err(CommandError::UnknownParameter(key)),
    }
    Ok(())
}

fn parse_notify(value: &str) -> Option<Notify> {
    if value.eq_ignore_ascii_case("NEVER") {
        return Some(Notify::Never);
    }
    let mut on = NotifyOn::default();
    for item in value.split(',') {
        let flag = if item.eq_ignore_ascii_case("SUCCESS") {
            &mut on.success
        } else if item.eq_ignore_ascii_case("FAILURE") {
            &mut on.failure
        } else if item.eq_ignore_ascii_case("DELAY") {
            &mut on.delay
        } else {
            return None;
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    Some(Notify::On(on))
}

/// Decodes RFC 3461 xtext (`+HH` escapes); `None` if malformed or if the result
/// holds control characters (they would be dangerous in a generated DSN).
pub fn decode_xtext(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                let hex = input.get(i + 1..i + 3)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'!'..=b'~' if b != b'=' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|s| !s.chars().any(char::is_control))
}

/// Encodes text as RFC 3461 xtext, escaping `+`, `=` and anything outside `!`..=`~`.
pub fn encode_xtext(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::address::Mailbox;

    fn parse(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    fn code(s: &str) -> (u16, String) {
        let reply = parse(s).unwrap_err().reply();
        (
            reply.code(),
            reply.enhanced().map(|e| e.to_string()).unwrap_or_default(),
        )
    }

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox::new(local, Domain::Name(domain.into()))
    }

    #[test]
    fn simple_verbs_case_insensitive() {
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("RsEt"), Ok(Command::Rset));
        assert_eq!(parse("NOOP"), Ok(Command::Noop));
        assert_eq!(parse("NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
        assert_eq!(parse("QUIT "), Ok(Command::Quit));
        assert_eq!(parse("HELP"), Ok(Command::Help));
        assert_eq!(parse("HELP mail"), Ok(Command::Help));
        assert_eq!(parse("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(parse("VRFY bob"), Ok(Command::Vrfy("bob".into())));
        assert_eq!(parse("EXPN staff"), Ok(Command::Expn("staff".into())));
        assert_eq!(
            parse("ehlo mx.example.com"),
            Ok(Command::Ehlo(Domain::Name("mx.example.com".into())))
        );
        assert_eq!(
            parse("HELO [192.0.2.1]"),
            Ok(Command::Helo(Domain::Ipv4([192, 0, 2, 1].into())))
        );
    }

    #[test]
    fn syntax_errors_of_known_verbs() {
        for s in [
            "DATA x",
            "RSET x",
            "QUIT now",
            "STARTTLS x",
            "VRFY",
            "EXPN",
            "EHLO",
            "HELO",
            "EHLO a b",
            "EHLO -bad-",
            "MAIL",
            "MAIL TO:<a@b>",
            "MAIL FROM:a@b",
            "MAIL FROM:<a@b>x",
            "MAIL  FROM:<a@b>",
            "MAIL FROM:  <a@b>",
            "RCPT",
            "RCPT FROM:<a@b>",
            "BDAT",
            "BDAT x",
            "BDAT 10 NOTLAST",
            "BDAT 10 LAST x",
            "BDAT -1",
            "BDAT 99999999999999999999",
            "AUTH",
            "AUTH PL@IN",
            "AUTH PLAIN a b",
            "AUTH ABCDEFGHIJKLMNOPQRSTU",
        ] {
            assert_eq!(code(s), (501, "5.5.4".into()), "{s}");
        }
    }

    #[test]
    fn unknown_verb_and_invalid_characters() {
        assert_eq!(code("FOO"), (500, "5.5.2".into()));
        assert_eq!(code(""), (500, "5.5.2".into()));
        assert_eq!(code("MAILFROM:<a@b>"), (500, "5.5.2".into()));
        assert_eq!(code("NO\0OP"), (500, "5.5.2".into()));
        assert_eq!(code("NOOP\r"), (500, "5.5.2".into()));
        assert_eq!(
            Command::parse(b"NOOP \xff").unwrap_err(),
            CommandError::InvalidCharacter
        );
    }

    #[test]
    fn mail_from_variants() {
        let expect = Command::Mail {
            from: ReversePath::Mailbox(mb("a", "b.example")),
            params: MailParams::default(),
            source_route: false,
        };
        assert_eq!(parse("MAIL FROM:<a@b.example>"), Ok(expect.clone()));
        assert_eq!(parse("mail from:<a@b.example>"), Ok(expect.clone()));
        assert_eq!(parse("MAIL FROM: <a@b.example>"), Ok(expect.clone()));
        assert_eq!(parse("MAIL FROM:<a@b.example> "), Ok(expect));
        assert!(matches!(
            parse("MAIL FROM:<>"),
            Ok(Command::Mail {
                from: ReversePath::Null,
                ..
            })
        ));
        assert!(matches!(
            parse("MAIL FROM:<@r.example:a@b>"),
            Ok(Command::Mail {
                source_route: true,
                ..
            })
        ));
    }

    #[test]
    fn mail_params() {
        let Ok(Command::Mail { params, .. }) = parse(
            "MAIL FROM:<a@b> size=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2BR+3DZ AUTH=<>",
        ) else {
            panic!()
        };
        assert_eq!(
            params,
            MailParams {
                size: Some(1000),
                body: Some(Body::EightBitMime),
                smtputf8: true,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+R=Z".into()),
                auth: Some("<>".into()),
                require_tls: false,
            }
        );
        assert!(!params.is_empty());
        let pair = |k: &str, v: Option<&str>| (k.to_owned(), v.map(str::to_owned));
        assert_eq!(
            params.keywords(),
            [
                pair("SIZE", Some("1000")),
                pair("BODY", Some("8BITMIME")),
                pair("SMTPUTF8", None),
                pair("RET", Some("HDRS")),
                pair("ENVID", Some("QQ+R=Z")),
            ]
        );
        let Ok(Command::Mail { params, .. }) = parse("MAIL FROM:<a@b> BODY=7BIT RET=full") else {
            panic!()
        };
        assert_eq!(params.body, Some(Body::SevenBit));
        assert_eq!(params.ret, Some(Ret::Full));
        assert_eq!(
            params.keywords(),
            [pair("BODY", Some("7BIT")), pair("RET", Some("FULL"))]
        );
        assert!(MailParams::default().keywords().is_empty());
        let Ok(Command::Mail { params, .. }) = parse("MAIL FROM:<a@b> requiretls") else {
            panic!()
        };
        assert!(params.require_tls);
        assert_eq!(params.keywords(), [pair("REQUIRETLS", None)]);
    }

    #[test]
    fn mail_param_errors() {
        for s in [
            "MAIL FROM:<a@b> SIZE=1 SIZE=2",
            "MAIL FROM:<a@b> SMTPUTF8 SMTPUTF8",
            "MAIL FROM:<a@b> BODY=7BIT BODY=7BIT",
            "MAIL FROM:<a@b> SIZE=abc",
            "MAIL FROM:<a@b> SIZE",
            "MAIL FROM:<a@b> SIZE=",
            "MAIL FROM:<a@b> SIZE=99999999999999999999999",
            "MAIL FROM:<a@b> BODY=9BIT",
            "MAIL FROM:<a@b> RET=ALL",
            "MAIL FROM:<a@b> ENVID=a+zz",
            "MAIL FROM:<a@b> ENVID=a+0D+0A",
            "MAIL FROM:<a@b> SMTPUTF8=yes",
            "MAIL FROM:<a@b> REQUIRETLS REQUIRETLS",
            "MAIL FROM:<a@b> REQUIRETLS=yes",
            "MAIL FROM:<a@b> -X=1",
            "MAIL FROM:<a@b> =1",
            "MAIL FROM:<a@b> A=1=2",
        ] {
            assert_eq!(code(s), (501, "5.5.4".into()), "{s}");
        }
        let long = format!("MAIL FROM:<a@b> ENVID={}", "x".repeat(101));
        assert_eq!(code(&long), (501, "5.5.4".into()));
        // Unrecognized or unimplemented parameters keep 555 (RFC 5321 §4.1.1.11).
        for s in [
            "MAIL FROM:<a@b> FOO=BAR",
            "MAIL FROM:<a@b> XFOO",
            "MAIL FROM:<a@b> BODY=BINARYMIME",
            "MAIL FROM:<a@b> NOTIFY=NEVER",
        ] {
            assert_eq!(code(s), (555, "5.5.4".into()), "{s}");
        }
        assert_eq!(
            parse("MAIL FROM:<a@b> BODY=BINARYMIME"),
            Err(CommandError::BinaryMime)
        );
    }

    #[test]
    fn bad_addresses() {
        assert_eq!(code("MAIL FROM:<a@@b>"), (501, "5.1.7".into()));
        assert_eq!(code("MAIL FROM:<a b@c>"), (501, "5.1.7".into()));
        assert_eq!(code("RCPT TO:<a@-b>"), (501, "5.1.3".into()));
        assert_eq!(code("RCPT TO:<>"), (501, "5.1.3".into()));
        assert_eq!(code("MAIL FROM:<jö@b>"), (553, "5.6.7".into()));
        assert!(parse("MAIL FROM:<jö@b> SMTPUTF8").is_ok());
        // RCPT accepts UTF-8 syntactically; the session enforces SMTPUTF8.
        assert!(parse("RCPT TO:<jö@b>").is_ok());
    }

    #[test]
    fn rcpt_params() {
        let Ok(Command::Rcpt { to, params, .. }) =
            parse("RCPT TO:<Postmaster> NOTIFY=SUCCESS,delay ORCPT=rfc822;a+2Bb@c")
        else {
            panic!()
        };
        assert_eq!(to, ForwardPath::Postmaster);
        assert_eq!(
            params.notify,
            Some(Notify::On(NotifyOn {
                success: true,
                failure: false,
                delay: true
            }))
        );
        assert_eq!(params.orcpt, Some(("rfc822".into(), "a+b@c".into())));
        let Ok(Command::Rcpt { params, .. }) = parse("RCPT TO:<a@b> NOTIFY=NEVER") else {
            panic!()
        };
        assert_eq!(params.notify, Some(Notify::Never));
        for s in [
            "RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<a@b> NOTIFY=SUCCESS,SUCCESS",
            "RCPT TO:<a@b> NOTIFY=",
            "RCPT TO:<a@b> NOTIFY=SOMETIMES",
            "RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER",
            "RCPT TO:<a@b> ORCPT=rfc822",
            "RCPT TO:<a@b> ORCPT=;a@b",
            "RCPT TO:<a@b> ORCPT=rfc822;a+zz",
            "RCPT TO:<a@b> ORCPT=rfc822;a+0Ab",
        ] {
            assert_eq!(code(s), (501, "5.5.4".into()), "{s}");
        }
        assert_eq!(code("RCPT TO:<a@b> SIZE=1"), (555, "5.5.4".into()));
    }

    #[test]
    fn hello_allows_underscore_in_labels() {
        assert_eq!(
            parse("EHLO my_pc"),
            Ok(Command::Ehlo(Domain::Name("my_pc".into())))
        );
        assert_eq!(
            parse("HELO my_pc.corp.example"),
            Ok(Command::Helo(Domain::Name("my_pc.corp.example".into())))
        );
        // Only in the EHLO/HELO argument, not in addresses.
        assert_eq!(code("MAIL FROM:<a@my_pc>"), (501, "5.1.7".into()));
        assert_eq!(code("RCPT TO:<a@my_pc>"), (501, "5.1.3".into()));
    }

    #[test]
    fn bdat_and_auth() {
        assert_eq!(
            parse("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            parse("bdat 512 last"),
            Ok(Command::Bdat {
                size: 512,
                last: true
            })
        );
        assert_eq!(
            parse("BDAT 10"),
            Ok(Command::Bdat {
                size: 10,
                last: false
            })
        );
        assert_eq!(
            parse("auth plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            parse("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
    }

    #[test]
    fn xtext_round_trip() {
        assert_eq!(decode_xtext("a+2Bb+3D"), Some("a+b=".into()));
        assert_eq!(decode_xtext("a+2bb"), Some("a+b".into()));
        assert_eq!(decode_xtext("a+2"), None);
        assert_eq!(decode_xtext("a b"), None);
        assert_eq!(decode_xtext("a=b"), None);
        assert_eq!(encode_xtext("a+b= c"), "a+2Bb+3D+20c");
        assert_eq!(decode_xtext(&encode_xtext("x+y=z")), Some("x+y=z".into()));
    }

    #[test]
    fn errors_convert_into_replies() {
        let reply: Reply = CommandError::UnknownVerb.into();
        assert_eq!(reply.code(), 500);
        let mut out = Vec::new();
        reply.write_to(&mut out);
        assert_eq!(out, b"500 5.5.2 Error: command not recognized\r\n");
    }
}
