//! Where mail for a domain goes (RFC 5321 section 5.1): MX hosts by preference, random
//! among equal preferences; no MX means the domain itself (implicit MX); a null MX
//! (RFC 7505) means the domain accepts no mail.

use postrider_dns::{Dns, DnsError, SecureDns};
use rand::seq::SliceRandom;

/// Why a domain has no usable mail host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The domain does not exist (permanent).
    #[error("domain does not exist")]
    NxDomain,
    /// The domain publishes a null MX: it accepts no mail (permanent).
    #[error("domain accepts no mail (null MX)")]
    NullMx,
    /// A lookup failed in a way that may pass (temporary).
    #[error("DNS lookup failed: {0}")]
    Temporary(String),
}

/// The hosts to try for `domain`, in order.
pub async fn mail_hosts(dns: &dyn Dns, domain: &str) -> Result<Vec<String>, ResolveError> {
    match dns.lookup_mx(domain).await {
        Ok(records) => by_preference(records),
        // No MX records: the domain itself is the implicit MX, if it has an address.
        Err(DnsError::NoData) => implicit(domain, dns.lookup_ip(domain).await),
        Err(DnsError::NxDomain) => Err(ResolveError::NxDomain),
        Err(e) => Err(ResolveError::Temporary(e.to_string())),
    }
}

/// [`mail_hosts`] through a validating resolver, with whether the MX records were DNSSEC-
/// secure; an implicit MX counts as secure (the domain's own address records decide, as for
/// any host: RFC 7672 section 2.2.1).
pub async fn secure_mail_hosts(
    dns: &dyn SecureDns,
    domain: &str,
) -> Result<(Vec<String>, bool), ResolveError> {
    match dns.secure_mx(domain).await {
        Ok(v) => Ok((by_preference(v.records)?, v.secure)),
        Err(DnsError::NoData) => {
            let ips = dns.secure_ip(domain).await.map(|v| v.records);
            Ok((implicit(domain, ips)?, true))
        }
        Err(DnsError::NxDomain) => Err(ResolveError::NxDomain),
        Err(e) => Err(ResolveError::Temporary(e.to_string())),
    }
}

/// The MX hosts by preference, random among equal ones; a null MX is an error.
fn by_preference(mut records: Vec<(u16, String)>) -> Result<Vec<String>, ResolveError> {
    if records.len() == 1 && records[0].1.trim_end_matches('.').is_empty() {
        return Err(ResolveError::NullMx);
    }
    records.retain(|(_, host)| !host.trim_end_matches('.').is_empty());
    if records.is_empty() {
        return Err(ResolveError::NullMx);
    }
    let mut rng = rand::thread_rng();
    records.shuffle(&mut rng);
    // Stable sort keeps the shuffled order among equal preferences.
    records.sort_by_key(|(pref, _)| *pref);
    let mut hosts: Vec<String> = Vec::new();
    for (_, host) in records {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

/// The implicit MX: `domain` itself, if the address lookup found one.
fn implicit(
    domain: &str,
    ips: Result<Vec<std::net::IpAddr>, DnsError>,
) -> Result<Vec<String>, ResolveError> {
    match ips {
        Ok(ips) if !ips.is_empty() => Ok(vec![domain.trim_end_matches('.').to_ascii_lowercase()]),
        Ok(_) | Err(DnsError::NoData) | Err(DnsError::NxDomain) => Err(ResolveError::NxDomain),
        Err(e) => Err(ResolveError::Temporary(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use postrider_dns::StaticDns;

    use super::*;

    type MxAnswer<'a> = (&'a str, Result<Vec<(u16, &'a str)>, DnsError>);

    fn dns(mx: &[MxAnswer<'_>], ip: &[&str]) -> StaticDns {
        StaticDns {
            mx: mx
                .iter()
                .map(|(n, r)| {
                    (
                        n.to_string(),
                        r.clone()
                            .map(|v| v.into_iter().map(|(p, h)| (p, h.to_owned())).collect()),
                    )
                })
                .collect(),
            ip: ip
                .iter()
                .map(|n| (n.to_string(), Ok(vec!["127.0.0.2".parse().unwrap()])))
                .collect::<HashMap<_, _>>(),
            ..StaticDns::default()
        }
    }

    #[tokio::test]
    async fn mx_by_preference_random_among_equals() {
        let d = dns(
            &[(
                "d.test",
                Ok(vec![
                    (20, "c.d.test."),
                    (10, "a.d.test."),
                    (10, "b.d.test."),
                ]),
            )],
            &[],
        );
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let hosts = mail_hosts(&d, "d.test").await.unwrap();
            assert_eq!(hosts.len(), 3);
            assert_eq!(hosts[2], "c.d.test");
            firsts.insert(hosts[0].clone());
        }
        assert_eq!(firsts.len(), 2, "equal preferences must be shuffled");
    }

    #[tokio::test]
    async fn implicit_null_and_missing() {
        let d = dns(
            &[
                ("nomx.test", Err(DnsError::NoData)),
                ("null.test", Ok(vec![(0, ".")])),
                ("gone.test", Err(DnsError::NoData)),
            ],
            &["nomx.test"],
        );
        assert_eq!(mail_hosts(&d, "nomx.test").await.unwrap(), ["nomx.test"]);
        assert_eq!(mail_hosts(&d, "null.test").await, Err(ResolveError::NullMx));
        assert_eq!(
            mail_hosts(&d, "gone.test").await,
            Err(ResolveError::NxDomain)
        );
        assert_eq!(
            mail_hosts(&d, "unknown.test").await,
            Err(ResolveError::NxDomain)
        );
        let t = dns(&[("t.test", Err(DnsError::Timeout))], &[]);
        assert!(matches!(
            mail_hosts(&t, "t.test").await,
            Err(ResolveError::Temporary(_))
        ));
    }
}
