//! Verification (SPF, DKIM, ARC, DMARC) and the `Authentication-Results` header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mail_auth::dkim::Signature;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, MX, MessageAuthenticator, Parameters, RecordSet, SpfOutput, SpfResult, Txt,
};

use crate::AuthResult;
use crate::cache::{BoundedCache, Caches};

/// Entries per parsed-record cache (TXT, MX, A, AAAA, PTR), each bounded separately.
const CACHE_CAPACITY: usize = 4096;

/// Checks what a client sends us (SPF, DKIM, ARC, DMARC) through the relay's resolver, and renders
/// the results as an `Authentication-Results` header under our authserv-id.
pub struct Verifier {
    auth: MessageAuthenticator,
    caches: Caches,
    authserv_id: String,
}

/// The `Parameters` type `mail-auth` takes, with our caches plugged in.
type Params<'x, P> = Parameters<
    'x,
    P,
    BoundedCache<Box<str>, Txt>,
    BoundedCache<Box<str>, RecordSet<MX>>,
    BoundedCache<Box<str>, RecordSet<Ipv4Addr>>,
    BoundedCache<Box<str>, RecordSet<Ipv6Addr>>,
    BoundedCache<IpAddr, RecordSet<Box<str>>>,
>;

impl Verifier {
    /// A verifier that resolves through `resolver` (the relay's one hickory resolver, so the
    /// configured `[dns] nameservers` apply) and names itself `authserv_id` in the results.
    pub fn new(
        resolver: hickory_resolver::TokioResolver,
        authserv_id: impl Into<String>,
    ) -> Verifier {
        Verifier {
            auth: MessageAuthenticator(resolver),
            caches: Caches::new(CACHE_CAPACITY),
            authserv_id: authserv_id.into(),
        }
    }

    /// The authserv-id this verifier writes and whose forged results [`crate::strip_forged_results`]
    /// must remove.
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    fn params<'x, P>(&'x self, params: P) -> Params<'x, P> {
        Parameters::new(params)
            .with_txt_cache(&self.caches.txt)
            .with_mx_cache(&self.caches.mx)
            .with_ipv4_cache(&self.caches.ipv4)
            .with_ipv6_cache(&self.caches.ipv6)
            .with_ptr_cache(&self.caches.ptr)
    }

    /// SPF of the HELO identity (RFC 7208 §2.3); `none` without a lookup when `helo` is an address
    /// literal, which has no SPF record. `host_name` is ours (the `%{r}` macro).
    pub async fn spf_helo(&self, ip: IpAddr, helo: &str, host_name: &str) -> SpfOutcome {
        if is_address_literal(helo) {
            return SpfOutcome::none(helo);
        }
        let output = self
            .auth
            .verify_spf(self.params(SpfParameters::verify_ehlo(ip, helo, host_name)))
            .await;
        SpfOutcome::from_output(output)
    }

    /// SPF of the MAIL FROM identity. For the null sender (`""` or `"<>"`) it checks
    /// `postmaster@<helo>` as RFC 7208 §2.4 says (so `none` when `helo` is an address literal).
    pub async fn spf_mail_from(
        &self,
        ip: IpAddr,
        helo: &str,
        host_name: &str,
        mail_from: &str,
    ) -> SpfOutcome {
        let sender = bare_address(mail_from);
        if !sender.contains('@') && is_address_literal(helo) {
            return SpfOutcome::none(helo);
        }
        let output = self
            .auth
            .verify_spf(self.params(SpfParameters::verify_mail_from(ip, helo, host_name, sender)))
            .await;
        SpfOutcome::from_output(output)
    }

    /// DKIM and ARC verification and DMARC evaluation of a complete message as received (header
    /// block and body, CRLF line ends). DMARC aligns the RFC5322.From domain with the passing DKIM
    /// signatures and with the SPF MAIL FROM outcome `spf` (its domain: the MAIL FROM domain, or
    /// `helo` for the null sender).
    pub async fn verify_message(
        &self,
        raw: &[u8],
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: &SpfOutcome,
    ) -> AuthOutcome {
        let envelope = Envelope {
            ip,
            helo: helo.to_string(),
            mail_from: bare_address(mail_from).to_string(),
            spf: spf.output.clone(),
        };
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            return AuthOutcome {
                dkim: Vec::new(),
                arc: AuthResult::None,
                dmarc: DmarcOutcome::from_output(DmarcOutput::default()),
                arc_result: DkimResult::None,
                envelope,
            };
        };
        let dkim_outputs = self.auth.verify_dkim(self.params(&message)).await;
        let arc_output = self.auth.verify_arc(self.params(&message)).await;
        let mail_from_domain = spf_domain(helo, mail_from);
        let dmarc_output = self
            .auth
            .verify_dmarc(self.params(DmarcParameters::new(
                &message,
                &dkim_outputs,
                mail_from_domain,
                &spf.output,
            )))
            .await;
        AuthOutcome {
            dkim: dkim_outputs.iter().map(DkimOutcome::from_output).collect(),
            arc: dkim_result(&body_hash_mismatch_fails(arc_output.result().clone())),
            dmarc: DmarcOutcome::from_output(dmarc_output),
            arc_result: body_hash_mismatch_fails(arc_output.result().clone()),
            envelope,
        }
    }

    /// The `Authentication-Results` header (RFC 8601) for these results — `Authentication-Results:
    /// <authserv-id>; spf=... smtp.helo=...; spf=... smtp.mailfrom=...; dkim=...; arc=...;
    /// dmarc=...`, one method per folded line, CRLF-terminated, ready to prepend. Methods whose
    /// outcome is `None` are left out; with none at all the value is `<authserv-id>; none`.
    pub fn authentication_results(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf_helo: Option<&SpfOutcome>,
        spf: Option<&SpfOutcome>,
        msg: Option<&AuthOutcome>,
    ) -> String {
        let id = self.authserv_id.as_str();
        let mail_from = bare_address(mail_from);
        // Each method is rendered by mail-auth's builder; the pieces are joined here only so that
        // a message without any DKIM signature can say `dkim=none`, which the builder cannot.
        let fragment = |builder: AuthenticationResults<'_>| {
            let text = builder.to_string();
            text.strip_prefix(id).unwrap_or(&text).to_string()
        };
        let mut value = String::from(id);
        value.push_str(&fragment(add_spf(
            AuthenticationResults::new(id),
            ip,
            helo,
            mail_from,
            spf_helo,
            spf,
        )));
        if let Some(msg) = msg {
            if msg.dkim.is_empty() {
                value.push_str(";\r\n\tdkim=none");
            } else {
                value.push_str(&fragment(add_dkim(AuthenticationResults::new(id), msg)));
            }
            value.push_str(&fragment(add_arc_dmarc(
                AuthenticationResults::new(id),
                msg,
                ip,
            )));
        }
        if value.len() == id.len() {
            value.push_str("; none");
        }
        format!("Authentication-Results: {value}\r\n")
    }
}

/// The same results as the `Authentication-Results` header, as one `mail-auth` value, for the
/// `ARC-Authentication-Results` header of a seal.
pub(crate) fn seal_results<'a>(
    authserv_id: &'a str,
    spf_helo: Option<&SpfOutcome>,
    msg: &AuthOutcome,
) -> AuthenticationResults<'a> {
    let env = &msg.envelope;
    let spf = SpfOutcome::from_output(env.spf.clone());
    let builder = add_spf(
        AuthenticationResults::new(authserv_id),
        env.ip,
        &env.helo,
        &env.mail_from,
        spf_helo,
        Some(&spf),
    );
    add_arc_dmarc(add_dkim(builder, msg), msg, env.ip)
}

fn add_spf<'a>(
    mut builder: AuthenticationResults<'a>,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    spf_helo: Option<&SpfOutcome>,
    spf: Option<&SpfOutcome>,
) -> AuthenticationResults<'a> {
    if let Some(spf_helo) = spf_helo {
        builder = builder.with_spf_ehlo_result(&spf_helo.output, ip, helo);
    }
    if let Some(spf) = spf {
        builder = builder.with_spf_mailfrom_result(&spf.output, ip, mail_from, helo);
    }
    builder
}

fn add_dkim<'a>(
    builder: AuthenticationResults<'a>,
    msg: &AuthOutcome,
) -> AuthenticationResults<'a> {
    let outputs: Vec<DkimOutput<'_>> = msg.dkim.iter().filter_map(DkimOutcome::output).collect();
    builder.with_dkim_results(&outputs, &msg.dmarc.from_domain)
}

fn add_arc_dmarc<'a>(
    builder: AuthenticationResults<'a>,
    msg: &AuthOutcome,
    ip: IpAddr,
) -> AuthenticationResults<'a> {
    builder
        .with_arc_result(
            &ArcOutput::default().with_result(msg.arc_result.clone()),
            ip,
        )
        .with_dmarc_result(&msg.dmarc.output)
}

/// The outcome of one SPF check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    /// The SPF result.
    pub result: AuthResult,
    /// The domain whose record was evaluated (the MAIL FROM domain, or the HELO name).
    pub domain: String,
    output: SpfOutput,
}

impl SpfOutcome {
    /// An outcome of `none` for `domain`, for when SPF was not checked (an address-literal HELO,
    /// or SPF turned off).
    pub fn none(domain: &str) -> SpfOutcome {
        SpfOutcome::from_output(SpfOutput::new(domain.to_string()).with_result(SpfResult::None))
    }

    /// An outcome of `temperror` for `domain`, for a check that did not finish in time.
    pub fn temperror(domain: &str) -> SpfOutcome {
        SpfOutcome::from_output(
            SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError),
        )
    }

    /// The explanation the domain published (`exp=`) for a fail, if any.
    pub fn explanation(&self) -> Option<&str> {
        self.output.explanation()
    }

    fn from_output(output: SpfOutput) -> SpfOutcome {
        SpfOutcome {
            result: match output.result() {
                SpfResult::Pass => AuthResult::Pass,
                SpfResult::Fail => AuthResult::Fail,
                SpfResult::SoftFail => AuthResult::SoftFail,
                SpfResult::Neutral => AuthResult::Neutral,
                SpfResult::TempError => AuthResult::TempError,
                SpfResult::PermError => AuthResult::PermError,
                SpfResult::None => AuthResult::None,
            },
            domain: output.domain().to_string(),
            output,
        }
    }
}

/// The outcome of one DKIM signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimOutcome {
    /// The DKIM result for this signature.
    pub result: AuthResult,
    /// The signing domain (`d=`), empty when the signature could not be parsed.
    pub domain: String,
    /// The selector (`s=`), empty when the signature could not be parsed.
    pub selector: String,
    raw: DkimResult,
    signature: Option<Signature>,
    atps: bool,
}

impl DkimOutcome {
    fn from_output(output: &DkimOutput<'_>) -> DkimOutcome {
        let signature = output.signature().cloned();
        let mut outcome = DkimOutcome {
            result: AuthResult::None,
            domain: signature.as_ref().map(|s| s.d.clone()).unwrap_or_default(),
            selector: signature.as_ref().map(|s| s.s.clone()).unwrap_or_default(),
            raw: output.result().clone(),
            signature,
            atps: false,
        };
        // mail-auth does not say whether an output is a third-party (ATPS) one; it is if it
        // differs from the plain output rebuilt from the same parts.
        if let Some(mut plain) = outcome.output() {
            if let Some(report) = output.failure_report_addr() {
                plain = plain.with_report(report.to_string());
            }
            outcome.atps = plain != *output;
        }
        outcome.raw = body_hash_mismatch_fails(outcome.raw);
        outcome.result = dkim_result(&outcome.raw);
        outcome
    }

    /// The `mail-auth` output again, for its header builder.
    fn output(&self) -> Option<DkimOutput<'_>> {
        let output = match &self.raw {
            DkimResult::Pass => DkimOutput::pass(),
            DkimResult::Neutral(err) => DkimOutput::neutral(err.clone()),
            DkimResult::Fail(err) => DkimOutput::fail(err.clone()),
            DkimResult::PermError(err) => DkimOutput::perm_err(err.clone()),
            DkimResult::TempError(err) => DkimOutput::temp_err(err.clone()),
            DkimResult::None => return None,
        };
        let output = match &self.signature {
            Some(signature) => output.with_signature(signature),
            None => output,
        };
        Some(if self.atps {
            output.with_atps()
        } else {
            output
        })
    }
}

/// What a domain's DMARC record asks receivers to do with mail that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DmarcPolicy {
    /// Deliver as usual (monitoring only), or no record.
    None,
    /// Treat as suspicious (e.g. deliver to spam).
    Quarantine,
    /// Reject during the SMTP transaction.
    Reject,
}

/// The outcome of DMARC evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcOutcome {
    /// The DMARC result: `pass` when an aligned DKIM signature or an aligned SPF pass was found.
    pub result: AuthResult,
    /// The RFC5322.From domain evaluated (empty when the message has no single From domain).
    pub from_domain: String,
    /// The policy that applies to this From domain on failure: `p=`, or `sp=`/`np=` for a
    /// subdomain that only has an organizational record, lowered one step under `t=y`. (`pct=`
    /// is gone from DMARCbis, which mail-auth implements; `t=` replaces it.)
    pub policy: DmarcPolicy,
    output: DmarcOutput,
}

impl DmarcOutcome {
    /// What to do with this message: the domain's `policy` when DMARC failed, `None` otherwise
    /// (a pass, or an error that must not lead to rejection).
    pub fn action(&self) -> DmarcPolicy {
        if self.result == AuthResult::Fail {
            self.policy
        } else {
            DmarcPolicy::None
        }
    }

    fn from_output(output: DmarcOutput) -> DmarcOutcome {
        DmarcOutcome {
            result: match output.result() {
                DmarcResult::Pass => AuthResult::Pass,
                DmarcResult::Fail(_) => AuthResult::Fail,
                DmarcResult::TempError(_) => AuthResult::TempError,
                DmarcResult::PermError(_) => AuthResult::PermError,
                DmarcResult::None => AuthResult::None,
            },
            from_domain: output.domain().to_string(),
            policy: match output.policy() {
                mail_auth::dmarc::Policy::Reject => DmarcPolicy::Reject,
                mail_auth::dmarc::Policy::Quarantine => DmarcPolicy::Quarantine,
                mail_auth::dmarc::Policy::None | mail_auth::dmarc::Policy::Unspecified => {
                    DmarcPolicy::None
                }
            },
            output,
        }
    }
}

/// What [`Verifier::verify_message`] found: every DKIM signature, the ARC chain and DMARC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOutcome {
    /// One entry per DKIM-Signature header (including malformed ones, as `neutral`).
    pub dkim: Vec<DkimOutcome>,
    /// The ARC chain validation result (`none` without ARC headers).
    pub arc: AuthResult,
    /// DMARC for the RFC5322.From domain.
    pub dmarc: DmarcOutcome,
    arc_result: DkimResult,
    envelope: Envelope,
}

impl AuthOutcome {
    /// The ARC result as mail-auth gave it, for sealing.
    pub(crate) fn arc_result(&self) -> &DkimResult {
        &self.arc_result
    }
}

/// The SMTP side of a verification, kept for the ARC-Authentication-Results of a later seal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Envelope {
    ip: IpAddr,
    helo: String,
    mail_from: String,
    spf: SpfOutput,
}

fn dkim_result(result: &DkimResult) -> AuthResult {
    match result {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(_) => AuthResult::PermError,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::None => AuthResult::None,
    }
}

/// mail-auth reports a body that no longer matches its signature's body hash as `neutral`; the
/// signature did not verify, which RFC 6376 §6.1.3 calls a failure and RFC 8601 §2.7.1 `fail`.
fn body_hash_mismatch_fails(result: DkimResult) -> DkimResult {
    match result {
        DkimResult::Neutral(
            err @ (mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)
            | mail_auth::Error::Arc(mail_auth::arc::ArcError::FailedBodyHashMatch)),
        ) => DkimResult::Fail(err),
        other => other,
    }
}

/// `[192.0.2.1]`, `[IPv6:2001:db8::1]` or a bare address: no SPF record can exist for it.
fn is_address_literal(helo: &str) -> bool {
    helo.starts_with('[') || helo.parse::<IpAddr>().is_ok()
}

/// The reverse-path without angle brackets; `""` for the null sender.
fn bare_address(mail_from: &str) -> &str {
    let trimmed = mail_from.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(trimmed)
}

/// The domain SPF checked for MAIL FROM, which DMARC aligns: the sender's domain, or the HELO
/// name for the null sender (RFC 7489 §4.1).
fn spf_domain<'a>(helo: &'a str, mail_from: &'a str) -> &'a str {
    bare_address(mail_from)
        .rsplit_once('@')
        .map_or(helo, |(_, domain)| domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_literals() {
        assert!(is_address_literal("[192.0.2.1]"));
        assert!(is_address_literal("[IPv6:2001:db8::1]"));
        assert!(is_address_literal("192.0.2.1"));
        assert!(!is_address_literal("mail.example.org"));
    }

    #[test]
    fn reverse_paths() {
        assert_eq!(bare_address("<>"), "");
        assert_eq!(bare_address(""), "");
        assert_eq!(bare_address("<a@example.org>"), "a@example.org");
        assert_eq!(bare_address("a@example.org"), "a@example.org");
        assert_eq!(spf_domain("helo.example", "<>"), "helo.example");
        assert_eq!(spf_domain("helo.example", "a@b.example"), "b.example");
    }
}
