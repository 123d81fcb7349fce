//! RFC 5321 §4.1.2 paths and domains, with the RFC 6531 (SMTPUTF8) extensions.
//!
//! Parsing is strict: only the grammar of RFC 5321 is accepted, source routes are
//! parsed and discarded (RFC 5321 §4.1.2, Appendix C) and the §4.5.3.1 size limits
//! are enforced.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Maximum octets in a local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Maximum octets in a domain (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Maximum octets in a path, angle brackets included (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// Maximum octets in one domain label (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;

/// Why an address or domain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The text does not follow the RFC 5321 grammar.
    #[error("address syntax error")]
    Syntax,
    /// The local part exceeds 64 octets.
    #[error("local part exceeds 64 octets")]
    LocalPartTooLong,
    /// The domain exceeds 255 octets.
    #[error("domain exceeds 255 octets")]
    DomainTooLong,
    /// A domain label exceeds 63 octets.
    #[error("domain label exceeds 63 octets")]
    LabelTooLong,
    /// The whole path exceeds 256 octets.
    #[error("path exceeds 256 octets")]
    PathTooLong,
    /// The address literal is not a valid IPv4, IPv6 or general literal.
    #[error("invalid address literal")]
    InvalidLiteral,
    /// UTF-8 was used without the SMTPUTF8 extension (RFC 6531).
    #[error("non-ASCII address without SMTPUTF8")]
    NonAsciiWithoutSmtputf8,
}

/// The domain part of a mailbox or an EHLO argument.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A host name (ASCII labels, or U-labels under SMTPUTF8), as received.
    Name(String),
    /// An IPv4 address literal, `[192.0.2.1]`.
    Ipv4(Ipv4Addr),
    /// An IPv6 address literal, `[IPv6:2001:db8::1]`.
    Ipv6(Ipv6Addr),
    /// A general address literal, `[tag:content]`.
    General {
        /// The standardized tag.
        tag: String,
        /// The literal content after the colon.
        content: String,
    },
}

impl Domain {
    /// True if the domain is pure ASCII (no U-labels).
    pub fn is_ascii(&self) -> bool {
        match self {
            Self::Name(n) => n.is_ascii(),
            Self::General { tag, content } => tag.is_ascii() && content.is_ascii(),
            Self::Ipv4(_) | Self::Ipv6(_) => true,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Ipv4(a) => write!(f, "[{a}]"),
            Self::Ipv6(a) => write!(f, "[IPv6:{a}]"),
            Self::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

/// A mailbox `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part with quoting removed (quoted pairs decoded).
    pub local_part: String,
    /// The domain or address literal.
    pub domain: Domain,
    raw_local: String,
}

impl Mailbox {
    /// Builds a mailbox from an unquoted local part; the raw form is quoted if needed.
    pub fn new(local_part: impl Into<String>, domain: Domain) -> Self {
        let local_part = local_part.into();
        let raw_local = quote_local_part(&local_part);
        Self {
            local_part,
            domain,
            raw_local,
        }
    }

    /// The local part as written on the wire, with any quotes and backslashes.
    pub fn local_part_raw(&self) -> &str {
        &self.raw_local
    }

    /// True if the local part was received as a quoted string.
    pub fn is_quoted(&self) -> bool {
        self.raw_local.starts_with('"')
    }

    /// True if both the local part and the domain are ASCII (no SMTPUTF8 needed).
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", quote_local_part(&self.local_part), self.domain)
    }
}

/// Renders a local part as a Dot-string when possible, else as a Quoted-string.
fn quote_local_part(local: &str) -> String {
    let dot_string = !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c) || !c.is_ascii()));
    if dot_string {
        return local.to_owned();
    }
    let mut out = String::with_capacity(local.len() + 2);
    out.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The argument of MAIL FROM: the null path `<>` or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`, used for bounces and other notifications.
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// The address without angle brackets; empty for the null path.
    pub fn address(&self) -> String {
        match self {
            Self::Null => String::new(),
            Self::Mailbox(m) => m.to_string(),
        }
    }

    /// True if the path needs no SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        match self {
            Self::Null => true,
            Self::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("<>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The argument of RCPT TO: a mailbox or the special domainless `<postmaster>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (RFC 5321 §4.1.1.3), meaning our postmaster.
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// The address without angle brackets; `postmaster` for the domainless postmaster.
    pub fn address(&self) -> String {
        match self {
            Self::Postmaster => "postmaster".to_owned(),
            Self::Mailbox(m) => m.to_string(),
        }
    }

    /// True if the path needs no SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        match self {
            Self::Postmaster => true,
            Self::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postmaster => f.write_str("<postmaster>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// A parsed path together with whether a (discarded) source route preceded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPath<P> {
    /// The path with any source route removed.
    pub path: P,
    /// True if the client sent an `@relay,@relay:` source route, which was discarded.
    pub had_source_route: bool,
}

/// Parses a complete reverse-path such as `<>` or `<user@example.com>`.
pub fn parse_reverse_path(
    input: &str,
    smtputf8: bool,
) -> Result<ParsedPath<ReversePath>, AddressError> {
    let (parsed, used) = reverse_path_prefix(input, smtputf8)?;
    if used == input.len() {
        Ok(parsed)
    } else {
        Err(AddressError::Syntax)
    }
}

/// Parses a complete forward-path such as `<postmaster>` or `<user@example.com>`.
pub fn parse_forward_path(
    input: &str,
    smtputf8: bool,
) -> Result<ParsedPath<ForwardPath>, AddressError> {
    let (parsed, used) = forward_path_prefix(input, smtputf8)?;
    if used == input.len() {
        Ok(parsed)
    } else {
        Err(AddressError::Syntax)
    }
}

/// Parses a bare mailbox `local@domain` (no angle brackets).
pub fn parse_mailbox(input: &str, smtputf8: bool) -> Result<Mailbox, AddressError> {
    let mut cur = Cursor::new(input, smtputf8);
    let mailbox = cur.mailbox()?;
    cur.finish()?;
    Ok(mailbox)
}

/// Parses a domain or address literal, e.g. an EHLO argument.
pub fn parse_domain(input: &str, smtputf8: bool) -> Result<Domain, AddressError> {
    let mut cur = Cursor::new(input, smtputf8);
    let domain = cur.domain_or_literal()?;
    cur.finish()?;
    Ok(domain)
}

/// Parses an EHLO/HELO argument: like [`parse_domain`] (ASCII only), but `_` is also
/// accepted in domain labels for interoperability (`EHLO my_pc`).
pub(crate) fn parse_helo_domain(input: &str) -> Result<Domain, AddressError> {
    let mut cur = Cursor::new(input, false);
    cur.underscore = true;
    let domain = cur.domain_or_literal()?;
    cur.finish()?;
    Ok(domain)
}

/// Parses a reverse-path at the start of `input`; returns it and the octets used.
pub(crate) fn reverse_path_prefix(
    input: &str,
    smtputf8: bool,
) -> Result<(ParsedPath<ReversePath>, usize), AddressError> {
    let mut cur = Cursor::new(input, smtputf8);
    cur.require('<')?;
    if cur.eat('>') {
        let parsed = ParsedPath {
            path: ReversePath::Null,
            had_source_route: false,
        };
        return Ok((parsed, cur.pos));
    }
    let had_source_route = cur.source_route()?;
    let mailbox = cur.mailbox()?;
    cur.require('>')?;
    cur.check_path_len()?;
    let parsed = ParsedPath {
        path: ReversePath::Mailbox(mailbox),
        had_source_route,
    };
    Ok((parsed, cur.pos))
}

/// Parses a forward-path at the start of `input`; returns it and the octets used.
pub(crate) fn forward_path_prefix(
    input: &str,
    smtputf8: bool,
) -> Result<(ParsedPath<ForwardPath>, usize), AddressError> {
    let mut cur = Cursor::new(input, smtputf8);
    cur.require('<')?;
    const POSTMASTER: &str = "postmaster>";
    if cur
        .rest()
        .get(..POSTMASTER.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(POSTMASTER))
    {
        cur.pos += POSTMASTER.len();
        let parsed = ParsedPath {
            path: ForwardPath::Postmaster,
            had_source_route: false,
        };
        return Ok((parsed, cur.pos));
    }
    let had_source_route = cur.source_route()?;
    let mailbox = cur.mailbox()?;
    cur.require('>')?;
    cur.check_path_len()?;
    let parsed = ParsedPath {
        path: ForwardPath::Mailbox(mailbox),
        had_source_route,
    };
    Ok((parsed, cur.pos))
}

/// `atext` of RFC 5322 §3.2.3, ASCII only.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// `qtextSMTP` of RFC 5321 §4.1.2, ASCII only.
fn is_qtext(c: char) -> bool {
    matches!(c, ' ' | '!' | '#'..='[' | ']'..='~')
}

/// `dcontent` of RFC 5321 §4.1.3.
fn is_dcontent(c: char) -> bool {
    matches!(c, '!'..='Z' | '^'..='~')
}

/// A position in the text being parsed.
struct Cursor<'a> {
    input: &'a str,
    pos: usize,
    smtputf8: bool,
    /// Accept `_` in domain labels (EHLO/HELO arguments only).
    underscore: bool,
}

impl<'a> Cursor<'a> {
    fn new(input: &'a str, smtputf8: bool) -> Self {
        Self {
            input,
            pos: 0,
            smtputf8,
            underscore: false,
        }
    }

    fn rest(&self) -> &'a str {
        self.input.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.pos += want.len_utf8();
            true
        } else {
            false
        }
    }

    fn require(&mut self, want: char) -> Result<(), AddressError> {
        if self.eat(want) {
            Ok(())
        } else {
            Err(AddressError::Syntax)
        }
    }

    fn finish(&self) -> Result<(), AddressError> {
        if self.pos == self.input.len() {
            Ok(())
        } else {
            Err(AddressError::Syntax)
        }
    }

    fn check_path_len(&self) -> Result<(), AddressError> {
        if self.pos > MAX_PATH {
            Err(AddressError::PathTooLong)
        } else {
            Ok(())
        }
    }

    /// Accepts a non-ASCII character only under SMTPUTF8.
    fn non_ascii(&self) -> Result<(), AddressError> {
        if self.smtputf8 {
            Ok(())
        } else {
            Err(AddressError::NonAsciiWithoutSmtputf8)
        }
    }

    /// Parses and discards `@a,@b:`; returns whether one was present.
    fn source_route(&mut self) -> Result<bool, AddressError> {
        if self.peek() != Some('@') {
            return Ok(false);
        }
        loop {
            self.require('@')?;
            self.domain_name()?;
            if self.eat(':') {
                return Ok(true);
            }
            self.require(',')?;
        }
    }

    fn mailbox(&mut self) -> Result<Mailbox, AddressError> {
        let start = self.pos;
        let local_part = if self.peek() == Some('"') {
            self.quoted_string()?
        } else {
            self.dot_string()?
        };
        let raw_local = self.input.get(start..self.pos).unwrap_or("").to_owned();
        if raw_local.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong);
        }
        self.require('@')?;
        let domain = self.domain_or_literal()?;
        Ok(Mailbox {
            local_part,
            domain,
            raw_local,
        })
    }

    fn dot_string(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        let mut atom_len = 0usize;
        while let Some(c) = self.peek() {
            if c == '.' {
                if atom_len == 0 {
                    return Err(AddressError::Syntax);
                }
                atom_len = 0;
            } else if is_atext(c) {
                atom_len += 1;
            } else if !c.is_ascii() {
                self.non_ascii()?;
                atom_len += 1;
            } else {
                break;
            }
            self.bump();
        }
        if atom_len == 0 {
            return Err(AddressError::Syntax);
        }
        Ok(self.input.get(start..self.pos).unwrap_or("").to_owned())
    }

    fn quoted_string(&mut self) -> Result<String, AddressError> {
        self.require('"')?;
        let mut out = String::new();
        loop {
            match self.bump().ok_or(AddressError::Syntax)? {
                '"' => return Ok(out),
                '\\' => match self.bump() {
                    Some(c @ ' '..='~') => out.push(c),
                    _ => return Err(AddressError::Syntax),
                },
                c if is_qtext(c) => out.push(c),
                c if !c.is_ascii() => {
                    self.non_ascii()?;
                    out.push(c);
                }
                _ => return Err(AddressError::Syntax),
            }
        }
    }

    fn domain_or_literal(&mut self) -> Result<Domain, AddressError> {
        if self.peek() == Some('[') {
            self.address_literal()
        } else {
            self.domain_name().map(Domain::Name)
        }
    }

    /// `Domain = sub-domain *("." sub-domain)`, sub-domain = Let-dig [Ldh-str] or a U-label.
    fn domain_name(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || (c == '_' && self.underscore) {
                self.bump();
            } else if !c.is_ascii() {
                self.non_ascii()?;
                self.bump();
            } else {
                break;
            }
        }
        let name = self.input.get(start..self.pos).unwrap_or("");
        if name.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        for label in name.split('.') {
            if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
                return Err(AddressError::Syntax);
            }
            // A U-label's octet length is not its A-label length; bound its characters instead.
            let len = if label.is_ascii() {
                label.len()
            } else {
                label.chars().count()
            };
            if len > MAX_LABEL {
                return Err(AddressError::LabelTooLong);
            }
        }
        Ok(name.to_owned())
    }

    fn address_literal(&mut self) -> Result<Domain, AddressError> {
        self.require('[')?;
        let start = self.pos;
        let end = self
            .rest()
            .find(']')
            .ok_or(AddressError::Syntax)?
            .saturating_add(start);
        let content = self.input.get(start..end).unwrap_or("");
        self.pos = end + 1;
        if content.len() + 2 > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        if let Some(v6) = content
            .get(..5)
            .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
            .and_then(|_| content.get(5..))
        {
            return v6
                .parse::<Ipv6Addr>()
                .map(Domain::Ipv6)
                .map_err(|_| AddressError::InvalidLiteral);
        }
        if content.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return content
                .parse::<Ipv4Addr>()
                .map(Domain::Ipv4)
                .map_err(|_| AddressError::InvalidLiteral);
        }
        let (tag, value) = content
            .split_once(':')
            .ok_or(AddressError::InvalidLiteral)?;
        let tag_ok = tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && tag
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !tag_ok || value.is_empty() || !value.chars().all(is_dcontent) {
            return Err(AddressError::InvalidLiteral);
        }
        Ok(Domain::General {
            tag: tag.to_owned(),
            content: value.to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn mbox(s: &str) -> Mailbox {
        match parse_forward_path(s, false) {
            Ok(ParsedPath {
                path: ForwardPath::Mailbox(m),
                ..
            }) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn simple_and_null_paths() {
        let m = mbox("<user@example.com>");
        assert_eq!(m.local_part, "user");
        assert_eq!(m.domain, Domain::Name("example.com".into()));
        assert_eq!(m.to_string(), "user@example.com");
        assert!(!m.is_quoted());
        let p = parse_reverse_path("<>", false).unwrap();
        assert_eq!(p.path, ReversePath::Null);
        assert_eq!(parse_forward_path("<>", false), Err(AddressError::Syntax));
    }

    #[test]
    fn postmaster() {
        for s in ["<postmaster>", "<Postmaster>", "<POSTMASTER>"] {
            assert_eq!(
                parse_forward_path(s, false).unwrap().path,
                ForwardPath::Postmaster
            );
        }
        assert_eq!(
            parse_reverse_path("<postmaster>", false),
            Err(AddressError::Syntax)
        );
        let m = mbox("<postmaster@example.com>");
        assert_eq!(m.local_part, "postmaster");
    }

    #[test]
    fn addresses_without_brackets() {
        assert_eq!(ForwardPath::Postmaster.address(), "postmaster");
        assert_eq!(ReversePath::Null.address(), "");
        let m = mbox("<a@example.com>");
        assert_eq!(ForwardPath::Mailbox(m.clone()).address(), "a@example.com");
        assert_eq!(ReversePath::Mailbox(m).address(), "a@example.com");
    }

    #[test]
    fn quoted_local_parts() {
        let m = mbox(r#"<"john doe"@example.com>"#);
        assert_eq!(m.local_part, "john doe");
        assert_eq!(m.local_part_raw(), r#""john doe""#);
        assert!(m.is_quoted());
        assert_eq!(m.to_string(), r#""john doe"@example.com"#);

        let m = mbox(r#"<"user@host"@relay>"#);
        assert_eq!(m.local_part, "user@host");
        assert_eq!(m.domain, Domain::Name("relay".into()));
        assert_eq!(m.to_string(), r#""user@host"@relay"#);

        let m = mbox(r#"<"a\"b\\c"@x>"#);
        assert_eq!(m.local_part, r#"a"b\c"#);
        assert_eq!(m.to_string(), r#""a\"b\\c"@x"#);

        // Unnecessary quoting is removed when rendering.
        let m = mbox(r#"<"plain"@x>"#);
        assert_eq!(m.local_part_raw(), r#""plain""#);
        assert_eq!(m.to_string(), "plain@x");

        let m = mbox(r#"<""@x>"#);
        assert_eq!(m.local_part, "");
        assert_eq!(m.to_string(), r#"""@x"#);

        assert_eq!(
            parse_forward_path("<\"a\tb\"@x>", false),
            Err(AddressError::Syntax)
        );
        assert_eq!(
            parse_forward_path("<\"abc@x>", false),
            Err(AddressError::Syntax)
        );
    }

    #[test]
    fn percent_and_bang_hacks_are_plain_atext() {
        let m = mbox("<user%host@relay>");
        assert_eq!(m.local_part, "user%host");
        let m = mbox("<host!user@relay>");
        assert_eq!(m.local_part, "host!user");
        assert_eq!(
            parse_forward_path("<host!user>", false),
            Err(AddressError::Syntax)
        );
    }

    #[test]
    fn source_route_is_discarded() {
        let p = parse_forward_path("<@relay:user@host>", false).unwrap();
        assert!(p.had_source_route);
        assert_eq!(p.path.to_string(), "<user@host>");
        let p = parse_reverse_path("<@a.example,@b.example:user@host>", false).unwrap();
        assert!(p.had_source_route);
        assert_eq!(p.path.to_string(), "<user@host>");
        assert!(
            !parse_forward_path("<user@host>", false)
                .unwrap()
                .had_source_route
        );
        for bad in [
            "<@relay user@host>",
            "<@:user@host>",
            "<@relay,user@host>",
            "<@relay:>",
        ] {
            assert_eq!(
                parse_forward_path(bad, false),
                Err(AddressError::Syntax),
                "{bad}"
            );
        }
    }

    #[test]
    fn dot_string_rules() {
        for bad in [
            "<.a@x>", "<a.@x>", "<a..b@x>", "<a b@x>", "<@x>", "<a@>", "<a>", "a@x", "<a@x",
        ] {
            assert!(parse_forward_path(bad, false).is_err(), "{bad}");
        }
        assert_eq!(mbox("<a.b.c@x>").local_part, "a.b.c");
    }

    #[test]
    fn domain_rules() {
        assert_eq!(
            parse_domain("mail.example.com", false),
            Ok(Domain::Name("mail.example.com".into()))
        );
        assert_eq!(
            parse_domain("a-b.c0", false),
            Ok(Domain::Name("a-b.c0".into()))
        );
        for bad in [
            "-a.com", "a-.com", "a..com", ".a", "a.", "", "a_b.com", "a b",
        ] {
            assert!(parse_domain(bad, false).is_err(), "{bad:?}");
        }
        let label63 = "a".repeat(63);
        assert!(parse_domain(&format!("{label63}.com"), false).is_ok());
        assert_eq!(
            parse_domain(&format!("a{label63}.com"), false),
            Err(AddressError::LabelTooLong)
        );
    }

    #[test]
    fn helo_domain_allows_underscore() {
        assert_eq!(parse_helo_domain("my_pc"), Ok(Domain::Name("my_pc".into())));
        assert_eq!(
            parse_helo_domain("host_1.corp.example"),
            Ok(Domain::Name("host_1.corp.example".into()))
        );
        for bad in ["-a_b", "a_b-", "a..b", "a b", "bücher.example", ""] {
            assert!(parse_helo_domain(bad).is_err(), "{bad:?}");
        }
        // Mail addresses stay strict.
        assert!(parse_domain("my_pc", false).is_err());
        assert!(parse_mailbox("a@my_pc", false).is_err());
        assert!(parse_forward_path("<a@my_pc.example>", false).is_err());
    }

    #[test]
    fn domain_length_boundary() {
        // 4 labels of 63 plus 3 dots = 255.
        let l = "a".repeat(63);
        let d255 = format!("{l}.{l}.{l}.{l}");
        assert_eq!(d255.len(), 255);
        assert!(parse_domain(&d255, false).is_ok());
        let d257 = format!("b{d255}");
        assert_eq!(d257.len(), 256);
        assert_eq!(parse_domain(&d257, false), Err(AddressError::DomainTooLong));
    }

    #[test]
    fn local_part_boundary() {
        let l64 = "a".repeat(64);
        assert_eq!(mbox(&format!("<{l64}@x>")).local_part.len(), 64);
        assert_eq!(
            parse_forward_path(&format!("<a{l64}@x>"), false),
            Err(AddressError::LocalPartTooLong)
        );
        // Quotes count: 62 characters quoted is 64 octets.
        let q = format!("\"{}\"", "b".repeat(62));
        assert!(parse_forward_path(&format!("<{q}@x>"), false).is_ok());
        let q = format!("\"{}\"", "b".repeat(63));
        assert_eq!(
            parse_forward_path(&format!("<{q}@x>"), false),
            Err(AddressError::LocalPartTooLong)
        );
    }

    #[test]
    fn path_length_boundary() {
        // <64@189> = 1 + 64 + 1 + 189 + 1 = 256.
        let local = "a".repeat(64);
        let l = "d".repeat(63);
        let domain = format!("{l}.{l}.{}", "e".repeat(61));
        assert_eq!(domain.len(), 189);
        let path = format!("<{local}@{domain}>");
        assert_eq!(path.len(), 256);
        assert!(parse_forward_path(&path, false).is_ok());
        let path = format!("<{local}@{domain}e>");
        assert_eq!(
            parse_forward_path(&path, false),
            Err(AddressError::PathTooLong)
        );
    }

    #[test]
    fn ip_literals() {
        let m = mbox("<a@[192.0.2.1]>");
        assert_eq!(m.domain, Domain::Ipv4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(m.to_string(), "a@[192.0.2.1]");
        let m = mbox("<a@[IPv6:2001:db8::1]>");
        assert_eq!(m.domain, Domain::Ipv6("2001:db8::1".parse().unwrap()));
        assert_eq!(m.to_string(), "a@[IPv6:2001:db8::1]");
        let m = mbox("<a@[IPv6:::ffff:192.0.2.1]>");
        assert!(matches!(m.domain, Domain::Ipv6(_)));
        let m = mbox("<a@[x-tag:some-content]>");
        assert_eq!(
            m.domain,
            Domain::General {
                tag: "x-tag".into(),
                content: "some-content".into()
            }
        );
        assert_eq!(m.to_string(), "a@[x-tag:some-content]");
        for bad in [
            "<a@[256.0.0.1]>",
            "<a@[1.2.3]>",
            "<a@[IPv6:zz::1]>",
            "<a@[IPv6:1.2.3.4]>",
            "<a@[]>",
            "<a@[tag:]>",
            "<a@[tag-:x]>",
            "<a@[1.2.3.4>",
        ] {
            assert!(parse_forward_path(bad, false).is_err(), "{bad}");
        }
        assert_eq!(
            parse_domain("[192.0.2.1]", false),
            Ok(Domain::Ipv4(Ipv4Addr::new(192, 0, 2, 1)))
        );
    }

    #[test]
    fn utf8_needs_smtputf8() {
        for s in [
            "<jöran@example.com>",
            "<user@bücher.example>",
            "<\"jö ran\"@x>",
        ] {
            assert_eq!(
                parse_forward_path(s, false),
                Err(AddressError::NonAsciiWithoutSmtputf8),
                "{s}"
            );
            let p = parse_forward_path(s, true).unwrap();
            assert!(!p.path.is_ascii());
        }
        let m = match parse_forward_path("<用户@例子.广告>", true).unwrap().path {
            ForwardPath::Mailbox(m) => m,
            ForwardPath::Postmaster => panic!(),
        };
        assert_eq!(m.local_part, "用户");
        assert_eq!(m.domain, Domain::Name("例子.广告".into()));
        assert_eq!(
            parse_domain("bücher.example", false),
            Err(AddressError::NonAsciiWithoutSmtputf8)
        );
        assert!(parse_domain("bücher.example", true).is_ok());
    }

    #[test]
    fn prefix_parsing_reports_length() {
        let (p, used) = reverse_path_prefix("<\"a> b\"@x> SIZE=1", false).unwrap();
        assert_eq!(used, 10);
        assert!(matches!(p.path, ReversePath::Mailbox(_)));
    }

    #[test]
    fn constructed_mailbox_quotes_when_needed() {
        let m = Mailbox::new("john doe", Domain::Name("x".into()));
        assert_eq!(m.local_part_raw(), "\"john doe\"");
        assert!(m.is_quoted());
        let m = Mailbox::new("john", Domain::Name("x".into()));
        assert_eq!(m.local_part_raw(), "john");
    }
}
