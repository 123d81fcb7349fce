//! The spool entry a received message becomes, and the route stage's inputs read back from
//! it: what the route plugins see is what the spool kept of the connection and envelope.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use postrider_plugin_host::{AuthResult, ConnInfo, EnvelopeInfo, SpfCheck, TlsInfo};
use postrider_queue::{ClientInfo, Envelope, Recipient, SpfRecord};
use postrider_smtp::address::ForwardPath;
use postrider_smtp::command::{MailParams, RcptParams};
use postrider_smtp::server::{self as smtp, Session};

/// Builds the spool entry of a complete message: the envelope, and the message with our
/// `Received` header on top followed by `trace` (our `Authentication-Results`, when verified).
pub fn spool_entry(
    now: SystemTime,
    hostname: &str,
    conn: &ConnInfo,
    session: &Session,
    envelope: smtp::Envelope,
    trace: &str,
    spf: Option<&SpfCheck>,
) -> (Envelope, Vec<u8>) {
    let helo = conn.helo.clone().unwrap_or_default();
    let smtp::Envelope {
        from,
        mail_params,
        recipients,
        data,
    } = envelope;
    let received = received_header(hostname, conn, session, &mail_params, &recipients, now);
    let mut message = Vec::with_capacity(received.len() + trace.len() + data.len());
    message.extend_from_slice(received.as_bytes());
    message.extend_from_slice(trace.as_bytes());
    message.extend_from_slice(&data);
    let MailParams {
        size,
        body,
        smtputf8,
        ret,
        envid,
        require_tls,
        ..
    } = mail_params;
    let envelope = Envelope {
        received_at_unix_ms: now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        mail_from: from.address(),
        smtputf8,
        body,
        ret,
        envid,
        size_param: size,
        recipients: recipients
            .iter()
            .map(|(to, params)| recipient(to, params))
            .collect(),
        client: ClientInfo {
            ip: conn.client_ip,
            port: conn.client_port,
            listener: conn.listener.clone(),
            helo,
            tls: conn
                .tls
                .as_ref()
                .map(|t| format!("{} {}", t.protocol, t.cipher)),
            authenticated: conn.auth_user.clone(),
            reverse_dns: conn.client_name.clone(),
            session: Some(conn.id.clone()),
            server: Some(std::net::SocketAddr::new(conn.server_ip, conn.server_port)),
            sni: conn.tls.as_ref().and_then(|t| t.sni.clone()),
        },
        quarantine: None,
        spf: spf.map(spf_record),
        require_tls,
    };
    (envelope, message)
}

fn recipient(to: &ForwardPath, params: &RcptParams) -> Recipient {
    Recipient {
        address: to.address(),
        notify: params.notify,
        orcpt: params
            .orcpt
            .as_ref()
            .map(|(kind, addr)| format!("{kind};{addr}")),
    }
}

/// The Received trace header (RFC 5321 section 4.4, protocol names from RFC 3848).
fn received_header(
    hostname: &str,
    conn: &ConnInfo,
    session: &Session,
    params: &MailParams,
    recipients: &[(ForwardPath, RcptParams)],
    now: SystemTime,
) -> String {
    let mut protocol = String::from(if params.smtputf8 {
        "UTF8SMTP"
    } else if session.is_esmtp() {
        "ESMTP"
    } else {
        "SMTP"
    });
    if conn.tls.is_some() {
        protocol.push('S');
    }
    if conn.auth_user.is_some() {
        protocol.push('A');
    }
    let date = chrono::DateTime::<chrono::Utc>::from(now).to_rfc2822();
    let tls = conn
        .tls
        .as_ref()
        .map(|t| format!("\r\n\t(using {} {})", t.protocol, t.cipher))
        .unwrap_or_default();
    let rcpt = match recipients {
        [(one, _)] => format!("\r\n\tfor <{}>", one.address()),
        _ => String::new(),
    };
    // RFC 5321 section 4.4: the TCP-info is an address literal, `[IPv6:...]` for IPv6.
    let ip = match conn.client_ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    format!(
        "Received: from {helo} ([{ip}]){tls}\r\n\tby {hostname} (Postrider) with {protocol}{rcpt};\r\n\t{date}\r\n",
        helo = conn.helo.as_deref().unwrap_or_default(),
    )
}

/// The connection and envelope the route stage shows for a spooled message: the connection
/// it came in on and its MAIL FROM parameters, as the spool kept them.
pub fn route_inputs(queue_id: &str, e: &Envelope) -> (ConnInfo, EnvelopeInfo) {
    let c = &e.client;
    let server = c
        .server
        .unwrap_or_else(|| std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let tls = c.tls.as_deref().map(|t| {
        let (protocol, cipher) = t.split_once(' ').unwrap_or((t, ""));
        TlsInfo {
            protocol: protocol.to_owned(),
            cipher: cipher.to_owned(),
            sni: c.sni.clone(),
        }
    });
    let conn = ConnInfo {
        id: c.session.clone().unwrap_or_default(),
        client_ip: c.ip,
        client_port: c.port,
        client_name: c.reverse_dns.clone(),
        listener: c.listener.clone(),
        server_ip: server.ip(),
        server_port: server.port(),
        helo: Some(c.helo.clone()),
        tls,
        auth_user: c.authenticated.clone(),
    };
    let env = EnvelopeInfo {
        queue_id: Some(queue_id.to_owned()),
        mail_from: e.mail_from.clone(),
        mail_params: e.mail_params().keywords(),
        recipients: e.recipients.iter().map(|r| r.address.clone()).collect(),
        smtputf8: e.smtputf8,
        spf: e.spf.as_ref().and_then(spf_from_record),
    };
    (conn, env)
}

/// The RFC 8601 keyword of a result (`pass`, `softfail`, ...).
pub fn auth_result_keyword(r: AuthResult) -> &'static str {
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

const RESULTS: [AuthResult; 8] = [
    AuthResult::None,
    AuthResult::Pass,
    AuthResult::Fail,
    AuthResult::Softfail,
    AuthResult::Neutral,
    AuthResult::Temperror,
    AuthResult::Permerror,
    AuthResult::Policy,
];

/// SPF as the spool keeps it, for the route stage.
pub fn spf_record(spf: &SpfCheck) -> SpfRecord {
    SpfRecord {
        result: auth_result_keyword(spf.result).to_owned(),
        domain: spf.domain.clone(),
    }
}

/// SPF from a spooled envelope, as plugins see it; `None` for an unknown result word.
pub fn spf_from_record(record: &SpfRecord) -> Option<SpfCheck> {
    let result = RESULTS
        .into_iter()
        .find(|r| record.result.eq_ignore_ascii_case(auth_result_keyword(*r)))?;
    Some(SpfCheck {
        result,
        domain: record.domain.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spf_records_round_trip_every_result() {
        for r in RESULTS {
            let check = SpfCheck {
                result: r,
                domain: "example.org".into(),
            };
            let back = spf_from_record(&spf_record(&check)).unwrap();
            assert_eq!(back.result, r);
            assert_eq!(back.domain, "example.org");
        }
        let bad = SpfRecord {
            result: "maybe".into(),
            domain: "example.org".into(),
        };
        assert!(spf_from_record(&bad).is_none());
    }
}
