//! SMTP TLS Reporting (RFC 8460) without I/O: the `_smtp._tls` TXT record, the counts of
//! outbound TLS sessions per UTC day, recipient (policy) domain and policy, and the JSON
//! aggregate report built from them. The relay records sessions and sends the reports.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Distinct recipient domains counted per day; sessions for further domains are dropped
/// (and counted in [`Aggregates::dropped`]), so a flood of domains cannot grow memory.
pub const MAX_DOMAINS_PER_DAY: usize = 10_000;

/// Distinct failure details kept per day, domain and policy; further ones are counted
/// without the receiving host and address.
pub const MAX_DETAILS: usize = 100;

/// Why a TXT record set gives no reporting address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No record starts with `v=TLSRPTv1`.
    #[error("no v=TLSRPTv1 record")]
    Missing,
    /// More than one does (RFC 8460 section 3: no reporting).
    #[error("{0} v=TLSRPTv1 records")]
    Several(usize),
    /// The record does not follow the grammar, or names no `mailto:` or `https:` address.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// The `rua` addresses (`mailto:` and `https:` URIs, in order) of the one `v=TLSRPTv1`
/// record among `records` (RFC 8460 section 3); other schemes are ignored.
pub fn parse_record<S: AsRef<str>>(records: &[S]) -> Result<Vec<String>, RecordError> {
    let ours: Vec<&str> = records
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| {
            r.strip_prefix("v=TLSRPTv1")
                .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(';'))
        })
        .collect();
    let record = match ours.as_slice() {
        [] => return Err(RecordError::Missing),
        [one] => *one,
        many => return Err(RecordError::Several(many.len())),
    };
    let mut rua = None;
    let mut fields = record
        .split(';')
        .map(|f| f.trim_matches([' ', '\t']))
        .skip(1);
    let mut ended = false;
    for field in fields.by_ref() {
        if ended {
            return Err(RecordError::Malformed("empty field"));
        }
        if field.is_empty() {
            ended = true;
            continue;
        }
        let (name, value) = field
            .split_once('=')
            .ok_or(RecordError::Malformed("field without '='"))?;
        if name == "rua" {
            if rua.is_some() {
                return Err(RecordError::Malformed("two rua fields"));
            }
            let uris: Vec<&str> = value
                .split(',')
                .map(|u| u.trim_matches([' ', '\t']))
                .collect();
            if uris
                .iter()
                .any(|u| u.is_empty() || u.bytes().any(|b| !(0x21..=0x7e).contains(&b)))
            {
                return Err(RecordError::Malformed("bad rua URI"));
            }
            rua = Some(
                uris.into_iter()
                    .filter(|u| {
                        let lower = u.to_ascii_lowercase();
                        (lower.starts_with("mailto:") && u.len() > 7 && u.contains('@'))
                            || (lower.starts_with("https://") && u.len() > 8)
                    })
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            );
        } else if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(RecordError::Malformed("bad field name"));
        }
    }
    match rua {
        Some(uris) if !uris.is_empty() => Ok(uris),
        Some(_) => Err(RecordError::Malformed("no mailto: or https: address")),
        None => Err(RecordError::Malformed("no rua")),
    }
}

/// The policy a session was held to (RFC 8460 section 4.4, `policy-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyType {
    /// MTA-STS.
    Sts,
    /// DANE.
    Tlsa,
    /// Neither was found.
    NoPolicyFound,
}

impl PolicyType {
    /// The report's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }

    /// The type named `s` in a report.
    fn parse(s: &str) -> Option<PolicyType> {
        [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// Why a session failed (RFC 8460 section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResultType {
    /// The server did not offer STARTTLS, or refused it.
    StarttlsNotSupported,
    /// The certificate does not name the host.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// The certificate chains to no trusted root.
    CertificateNotTrusted,
    /// Any other failure to establish or validate the session (an MX host not in the
    /// policy, a TLSA mismatch, a failed handshake).
    ValidationFailure,
    /// The TLSA records were invalid.
    TlsaInvalid,
    /// DNSSEC validation failed.
    DnssecInvalid,
    /// The MTA-STS policy could not be fetched.
    StsPolicyFetchError,
    /// The MTA-STS policy was invalid.
    StsPolicyInvalid,
    /// The MTA-STS policy host's certificate did not validate.
    StsWebpkiInvalid,
}

impl ResultType {
    /// The report's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The result type named `s` in a report.
    fn parse(s: &str) -> Option<ResultType> {
        use ResultType::*;
        [
            StarttlsNotSupported,
            CertificateHostMismatch,
            CertificateExpired,
            CertificateNotTrusted,
            ValidationFailure,
            TlsaInvalid,
            DnssecInvalid,
            StsPolicyFetchError,
            StsPolicyInvalid,
            StsWebpkiInvalid,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// One policy of a domain, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Policy {
    /// Its type.
    pub policy_type: PolicyType,
    /// The policy as published: the STS policy's lines, or the TLSA records.
    pub strings: Vec<String>,
    /// The MX patterns of an STS policy.
    pub mx_host: Vec<String>,
}

/// One failed session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Failure {
    /// Why.
    pub result: ResultType,
    /// The MX host, when one was reached.
    pub receiving_mx_hostname: Option<String>,
    /// Its address.
    pub receiving_ip: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Counts {
    success: u64,
    failure: u64,
    details: BTreeMap<Failure, u64>,
}

/// Session counts by UTC day, policy domain and policy.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    days: BTreeMap<String, BTreeMap<String, BTreeMap<Policy, Counts>>>,
    dropped: u64,
}

/// The UTC day ("2026-12-03") of `unix` seconds.
pub fn day_of(unix: u64) -> String {
    let secs = i64::try_from(unix).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

impl Aggregates {
    /// Counts a session to `domain` held to `policy` at `unix` seconds: `Ok` when TLS was
    /// established as the policy asked.
    pub fn record(
        &mut self,
        unix: u64,
        domain: &str,
        policy: &Policy,
        result: Result<(), Failure>,
    ) {
        let day = self.days.entry(day_of(unix)).or_default();
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if !day.contains_key(&domain) && day.len() >= MAX_DOMAINS_PER_DAY {
            self.dropped += 1;
            return;
        }
        let counts = day
            .entry(domain)
            .or_default()
            .entry(policy.clone())
            .or_default();
        match result {
            Ok(()) => counts.success += 1,
            Err(mut failure) => {
                counts.failure += 1;
                if !counts.details.contains_key(&failure) && counts.details.len() >= MAX_DETAILS {
                    failure.receiving_mx_hostname = None;
                    failure.receiving_ip = None;
                }
                *counts.details.entry(failure).or_default() += 1;
            }
        }
    }

    /// Sessions not counted because of [`MAX_DOMAINS_PER_DAY`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The days with counts, oldest first.
    pub fn days(&self) -> Vec<String> {
        self.days.keys().cloned().collect()
    }

    /// The domains with counts on `day`.
    pub fn domains(&self, day: &str) -> Vec<String> {
        self.days
            .get(day)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets `day` (its reports are sent).
    pub fn remove_day(&mut self, day: &str) {
        self.days.remove(day);
    }

    /// The aggregate report (RFC 8460 section 4.4) for `domain` on `day`, if it had
    /// sessions.
    pub fn report(&self, day: &str, domain: &str, from: &Reporter) -> Option<Value> {
        let policies = self.days.get(day)?.get(domain)?;
        let policies: Vec<Value> = policies
            .iter()
            .map(|(policy, counts)| {
                let mut entry = json!({
                    "policy": {
                        "policy-type": policy.policy_type.as_str(),
                        "policy-string": policy.strings,
                        "policy-domain": domain,
                        "mx-host": policy.mx_host,
                    },
                    "summary": {
                        "total-successful-session-count": counts.success,
                        "total-failure-session-count": counts.failure,
                    },
                });
                if !counts.details.is_empty() {
                    let details: Vec<Value> = counts
                        .details
                        .iter()
                        .map(|(f, n)| {
                            let mut d = json!({
                                "result-type": f.result.as_str(),
                                "failed-session-count": n,
                            });
                            if let Some(mx) = &f.receiving_mx_hostname {
                                d["receiving-mx-hostname"] = json!(mx);
                            }
                            if let Some(ip) = &f.receiving_ip {
                                d["receiving-ip"] = json!(ip);
                            }
                            d
                        })
                        .collect();
                    entry["failure-details"] = json!(details);
                }
                entry
            })
            .collect();
        Some(json!({
            "organization-name": from.organization,
            "date-range": {
                "start-datetime": format!("{day}T00:00:00Z"),
                "end-datetime": format!("{day}T23:59:59Z"),
            },
            "contact-info": from.contact,
            "report-id": format!("{day}.{domain}@{}", from.organization),
            "policies": policies,
        }))
    }

    /// Every count, for `postrider tls-report`: one object per day and domain.
    pub fn to_json(&self, from: &Reporter) -> Value {
        let mut out = Vec::new();
        for (day, domains) in &self.days {
            for domain in domains.keys() {
                if let Some(report) = self.report(day, domain, from) {
                    out.push(report);
                }
            }
        }
        json!({"reports": out, "dropped-sessions": self.dropped})
    }
}

impl Aggregates {
    /// Every count as JSON, to keep across a restart ([`Aggregates::from_state`]).
    pub fn to_state(&self) -> Value {
        let mut entries = Vec::new();
        for (day, domains) in &self.days {
            for (domain, policies) in domains {
                for (policy, counts) in policies {
                    let details: Vec<Value> = counts
                        .details
                        .iter()
                        .map(|(f, n)| {
                            json!([
                                f.result.as_str(),
                                f.receiving_mx_hostname,
                                f.receiving_ip,
                                n
                            ])
                        })
                        .collect();
                    entries.push(json!({
                        "day": day, "domain": domain,
                        "type": policy.policy_type.as_str(),
                        "strings": policy.strings, "mx": policy.mx_host,
                        "success": counts.success, "failure": counts.failure,
                        "details": details,
                    }));
                }
            }
        }
        json!({"entries": entries, "dropped": self.dropped})
    }

    /// Reads what [`Aggregates::to_state`] wrote; entries that do not parse are skipped.
    pub fn from_state(state: &Value) -> Aggregates {
        let mut out = Aggregates {
            dropped: state["dropped"].as_u64().unwrap_or(0),
            ..Aggregates::default()
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        for e in state["entries"].as_array().into_iter().flatten() {
            let (Some(day), Some(domain), Some(policy_type)) = (
                e["day"].as_str(),
                e["domain"].as_str(),
                e["type"].as_str().and_then(PolicyType::parse),
            ) else {
                continue;
            };
            let policy = Policy {
                policy_type,
                strings: strings(&e["strings"]),
                mx_host: strings(&e["mx"]),
            };
            let counts = out
                .days
                .entry(day.to_owned())
                .or_default()
                .entry(domain.to_owned())
                .or_default()
                .entry(policy)
                .or_default();
            counts.success += e["success"].as_u64().unwrap_or(0);
            counts.failure += e["failure"].as_u64().unwrap_or(0);
            for d in e["details"].as_array().into_iter().flatten() {
                let Some(result) = d[0].as_str().and_then(ResultType::parse) else {
                    continue;
                };
                let failure = Failure {
                    result,
                    receiving_mx_hostname: d[1].as_str().map(str::to_owned),
                    receiving_ip: d[2].as_str().map(str::to_owned),
                };
                *counts.details.entry(failure).or_default() += d[3].as_u64().unwrap_or(0);
            }
        }
        out
    }
}

/// Who sends the reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    /// `organization-name`: the relay's host name.
    pub organization: String,
    /// `contact-info`: an address for questions about the reports.
    pub contact: String,
}

/// A report as sent: gzip-compressed JSON (`application/tlsrpt+gzip`, RFC 8460 section
/// 5.3).
pub fn gzip(report: &Value) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(report.to_string().as_bytes());
    encoder.finish().unwrap_or_default()
}

/// The report's file name (RFC 8460 section 5.3):
/// `submitter!policy-domain!begin!end!unique-id.json.gz`, times in seconds since the epoch.
pub fn file_name(submitter: &str, domain: &str, begin: u64, end: u64, id: &str) -> String {
    format!("{submitter}!{domain}!{begin}!{end}!{id}.json.gz")
}

/// The email carrying a gzipped report to a `mailto:` address (RFC 8460 section 5.3): a
/// `multipart/report; report-type="tlsrpt"` message with the `TLS-Report-Domain` and
/// `TLS-Report-Submitter` fields, a short text part and the report as an attachment.
/// `date` is an RFC 5322 date; `boundary` must not occur in base64 text (it has a `=`).
#[allow(clippy::too_many_arguments)]
pub fn mail(
    from: &str,
    to: &str,
    domain: &str,
    submitter: &str,
    report_id: &str,
    file: &str,
    gzipped: &[u8],
    date: &str,
) -> Vec<u8> {
    use base64::Engine;
    let boundary = format!("=_tlsrpt_{}", report_id.len());
    let encoded = base64::engine::general_purpose::STANDARD.encode(gzipped);
    let mut body = String::new();
    for chunk in encoded.as_bytes().chunks(76) {
        body.push_str(&String::from_utf8_lossy(chunk));
        body.push_str("\r\n");
    }
    format!(
        "From: {from}\r\nTo: {to}\r\nDate: {date}\r\n\
         Subject: Report Domain: {domain}\r\n Submitter: {submitter}\r\n Report-ID: <{report_id}>\r\n\
         Message-ID: <{report_id}>\r\nTLS-Report-Domain: {domain}\r\n\
         TLS-Report-Submitter: {submitter}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is an aggregate TLS report from {submitter} for {domain}.\r\n\r\n\
         --{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment;\r\n\tfilename=\"{file}\"\r\n\r\n\
         {body}\r\n--{boundary}--\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
