//! MTA-STS (RFC 8461) in the real relay under `tls = "auto"`: dnsmasq serves the `_mta-sts`
//! TXT records and MX hosts, a Python HTTPS server on loopback (certificate from a test CA
//! that `SSL_CERT_FILE` makes the system store) serves the policies, other relays receive.
//! An `enforce` policy gets verified delivery to a listed MX and a 4.7.5 deferral for an
//! unlisted one; `testing` delivers and reports; bad policies (redirect, too big, wrong
//! type, 404, untrusted certificate) each leave the domain without a policy and the mail
//! flowing; a cached policy survives a restart and keeps being enforced after the TXT
//! record and the policy server are gone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postrider_testkit::TestCa;

use crate::harness::{
    ADMIN, Relay, command, config_dns, list_json, send_message, tls_report_of, tls_reports,
};
use crate::peers::{dnsmasq, free_port_on, https_table_server, wait_for};

/// Every recipient domain of the test.
const DOMAINS: [&str; 9] = [
    "enforce", "unlisted", "testing", "redirect", "big", "html", "missing", "badcert", "reports",
];

const ENFORCE: &str = "version: STSv1\nmode: enforce\nmx: *.enforce.test\nmax_age: 86400\n";

/// A relay receiving for every test domain on `address` with the certificate `cert`.
fn receiver(address: SocketAddr, cert: &(PathBuf, PathBuf)) -> Relay {
    let domains: Vec<String> = DOMAINS.iter().map(|d| format!("{d}.test")).collect();
    let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
    crate::outbound_tls::tls_receiver(address, cert, &domains)
}

/// The sending relay in `dir`, with `tls = "auto"`, resolving through `dns`.
fn sender(dir: &Path, dns: SocketAddr, smtp: u16, https: u16, ca: &TestCa) -> Relay {
    Relay::builder(&config_dns(
        &dns.to_string(),
        &format!(
            "{ADMIN}[relay]\nrelay_networks = [\"127.0.0.0/8\"]\n[delivery]\nsmtp_port = {smtp}\n\
             mta_sts_port = {https}\nretry_intervals = [1]\ntls = \"auto\"\n"
        ),
    ))
    .in_dir(dir)
    .env("SSL_CERT_FILE", ca.cert_file())
    .env("SSL_CERT_DIR", "")
    .start()
}

/// Why each message still queued waits.
fn reasons(dir: &Path) -> Vec<String> {
    list_json(dir)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn delivered<'a>(logs: &'a str, rcpt: &str) -> Option<&'a str> {
    logs.lines()
        .find(|l| l.contains("delivered") && l.contains(rcpt))
}

#[test]
fn mta_sts_enforces_reports_survives_bad_policies_restarts_and_a_removed_record() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "public");
    let other = TestCa::new(tmp.path(), "other");
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let smtp = free_port_on(&ips);
    let https = free_port_on(&["127.0.0.6", "127.0.0.7"]);
    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let bad_policy = ["redirect", "big", "html", "missing", "badcert"];
    let mut records: Vec<String> = [
        "--mx-host=enforce.test,mx.enforce.test,10",
        "--host-record=mx.enforce.test,127.0.0.2",
        "--mx-host=unlisted.test,mx.unlisted.test,10",
        "--host-record=mx.unlisted.test,127.0.0.3",
        "--mx-host=testing.test,mx.testing.test,10",
        "--host-record=mx.testing.test,127.0.0.4",
        "--host-record=mx.bad.test,127.0.0.5",
        "--host-record=mta-sts.badcert.test,127.0.0.7",
        // Where TLS reports go: a POST for enforce.test, an email for testing.test.
        "--host-record=reports.test,127.0.0.6",
        "--mx-host=reports.test,mx.bad.test,10",
        "--txt-record=_smtp._tls.testing.test,v=TLSRPTv1; rua=mailto:tlsrpt@reports.test",
    ]
    .map(String::from)
    .to_vec();
    for d in ["enforce", "unlisted", "testing"].iter().chain(&bad_policy) {
        records.push(format!("--txt-record=_mta-sts.{d}.test,v=STSv1; id=first"));
        if *d != "badcert" {
            records.push(format!("--host-record=mta-sts.{d}.test,127.0.0.6"));
        }
    }
    for d in &bad_policy {
        records.push(format!("--mx-host={d}.test,mx.bad.test,10"));
    }
    records.push(format!(
        "--txt-record=_smtp._tls.enforce.test,v=TLSRPTv1; rua=https://reports.test:{https}/tlsrpt"
    ));
    let (dns_proc, dns) = dnsmasq(&records);

    let table = tmp.path().join("policies.json");
    let policy = |mode: &str, mx: &str| serde_json::json!({"body": format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n")});
    std::fs::write(
        &table,
        serde_json::json!({
            "mta-sts.enforce.test": {"body": ENFORCE},
            "mta-sts.unlisted.test": policy("enforce", "mail.unlisted.test"),
            "mta-sts.testing.test": policy("testing", "mx.testing.test"),
            "mta-sts.redirect.test": {"status": 301, "location": "https://mta-sts.enforce.test/.well-known/mta-sts.txt"},
            "mta-sts.big.test": {"body": "mx: mx.bad.test\n", "repeat": 5000},
            "mta-sts.html.test": {"body": ENFORCE.replace("*.enforce.test", "mx.bad.test"), "type": "text/html"},
            "mta-sts.badcert.test": policy("enforce", "nothing.badcert.test"),
        })
        .to_string(),
    )
    .unwrap();
    let policy_names: Vec<String> = ["enforce", "unlisted", "testing"]
        .iter()
        .chain(&bad_policy)
        .map(|d| format!("mta-sts.{d}.test"))
        .collect();
    let mut names: Vec<&str> = policy_names.iter().map(String::as_str).collect();
    names.push("reports.test");
    let web = https_table_server(at("127.0.0.6", https), &ca.issue("web", &names), &table);
    let untrusted = https_table_server(
        at("127.0.0.7", https),
        &other.issue("web", &["mta-sts.badcert.test"]),
        &table,
    );

    let mut enforced = receiver(
        at("127.0.0.2", smtp),
        &ca.issue("mx1", &["mx.enforce.test"]),
    );
    let mut unlisted = receiver(
        at("127.0.0.3", smtp),
        &ca.issue("mx2", &["mx.unlisted.test"]),
    );
    let mut testing = receiver(
        at("127.0.0.4", smtp),
        &other.issue("mx3", &["mx.testing.test"]),
    );
    let mut bad = receiver(at("127.0.0.5", smtp), &other.issue("mx4", &["mx.bad.test"]));

    let dir = tmp.path().join("relay");
    std::fs::create_dir(&dir).unwrap();
    let mut relay = sender(&dir, dns, smtp, https, &ca);
    let mut c = relay.client();
    let rcpts: Vec<String> = ["enforce", "unlisted", "testing"]
        .iter()
        .chain(&bad_policy)
        .map(|d| format!("user@{d}.test"))
        .collect();
    for to in &rcpts {
        let (code, _) = send_message(&mut c, "sender@client.test", &[to], "Subject: hi\r\n\r\nhi");
        assert_eq!(code, 250, "{to}");
    }
    // A sender who says the recipient's policies do not matter for this message (RFC 8689
    // section 5): delivered to the MX the enforce policy does not name, opportunistically.
    let (code, _) = send_message(
        &mut c,
        "sender@client.test",
        &["anyway@unlisted.test"],
        "TLS-Required: No\r\nSubject: hi\r\n\r\nhi",
    );
    assert_eq!(code, 250);
    wait_for("the deliveries", Duration::from_secs(30), || {
        enforced.queued() == 1
            && testing.queued() == 1
            && unlisted.queued() == 1
            && bad.queued() == bad_policy.len()
    });
    wait_for(
        "the unlisted MX to be deferred",
        Duration::from_secs(10),
        || reasons(&dir).iter().any(|r| r.contains("4.7.5")),
    );
    let waiting = reasons(&dir);
    assert!(
        waiting.len() == 1
            && waiting[0].contains(
                "451 4.7.5 MX host mx.unlisted.test is not in the recipient domain's MTA-STS policy"
            ),
        "{waiting:?}"
    );
    assert_eq!(unlisted.queued(), 1, "only the TLS-Required: No message");
    assert!(
        dir.join("spool/mta-sts/enforce.test.policy").is_file(),
        "the policy is cached on disk"
    );
    // TLS reporting counts: the sessions under each policy, as RFC 8460 reports carry them.
    let counts = tls_reports(&dir);
    let report = |domain: &str| tls_report_of(&counts, domain);
    let enforce = report("enforce.test");
    assert_eq!(enforce["organization-name"], "mx.relay.test");
    let policy = &enforce["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "sts");
    assert_eq!(
        policy["policy"]["mx-host"],
        serde_json::json!(["*.enforce.test"])
    );
    assert_eq!(policy["summary"]["total-successful-session-count"], 1);
    assert_eq!(policy["summary"]["total-failure-session-count"], 0);
    let reported = &report("testing.test")["policies"][0];
    assert_eq!(reported["summary"]["total-failure-session-count"], 1);
    assert_eq!(
        reported["failure-details"][0]["result-type"],
        "certificate-not-trusted"
    );
    assert_eq!(
        reported["failure-details"][0]["receiving-mx-hostname"],
        "mx.testing.test"
    );
    assert_eq!(reported["failure-details"][0]["receiving-ip"], "127.0.0.4");
    let skipped = &report("unlisted.test")["policies"][0];
    assert_eq!(
        skipped["failure-details"][0]["result-type"],
        "validation-failure"
    );
    assert_eq!(
        skipped["failure-details"][0]["receiving-mx-hostname"],
        "mx.unlisted.test"
    );
    // A policy that could not be had is reported as such, under an empty sts policy.
    for (domain, result) in [
        ("redirect.test", "sts-policy-fetch-error"),
        ("missing.test", "sts-policy-fetch-error"),
        ("big.test", "sts-policy-invalid"),
        ("html.test", "sts-policy-invalid"),
        ("badcert.test", "sts-webpki-invalid"),
    ] {
        let failed = &report(domain)["policies"][0];
        assert_eq!(failed["policy"]["policy-type"], "sts", "{domain}");
        assert_eq!(
            failed["failure-details"][0]["result-type"], result,
            "{domain}"
        );
    }
    assert_eq!(counts["reports"].as_array().unwrap().len(), 8, "{counts:#}");

    // Sending: a POST of the gzipped JSON to enforce.test's https address, an email with it
    // attached to testing.test's mailto address (through the relay's own queue to
    // reports.test's MX), nothing for unlisted.test, which publishes no _smtp._tls record.
    let (ok, out) = command(&dir, "tls-report", &["--send"]);
    assert!(ok, "{out}");
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        result,
        serde_json::json!({"sent": 2, "failed": []}),
        "{out}"
    );
    let posted = std::fs::read(tmp.path().join("policies.json.posted")).unwrap();
    let mut json = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&posted[..]), &mut json)
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        report["policies"][0]["policy"]["policy-domain"],
        "enforce.test"
    );
    assert_eq!(
        report["policies"][0]["summary"]["total-successful-session-count"],
        1
    );
    let requests = std::fs::read_to_string(tmp.path().join("policies.json.log")).unwrap();
    assert!(
        requests.contains("POST reports.test /tlsrpt application/tlsrpt+gzip"),
        "{requests}"
    );
    wait_for("the emailed report", Duration::from_secs(20), || {
        bad.queued() == bad_policy.len() + 1
    });
    assert_eq!(
        tls_reports(&dir)["reports"],
        serde_json::json!([]),
        "sent days are forgotten"
    );

    let logs = relay.stop_and_logs();
    let line = delivered(&logs, "user@enforce.test").unwrap_or_else(|| panic!("{logs}"));
    assert!(
        line.contains("tls=mta-sts: TLSv1.3")
            && line.contains("certificate verified by system trust store"),
        "{line}"
    );
    let line = delivered(&logs, "anyway@unlisted.test").unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("tls=opportunistic: TLSv1.3"), "{line}");
    let line = delivered(&logs, "user@testing.test").unwrap_or_else(|| panic!("{logs}"));
    assert!(
        line.contains("tls=mta-sts: TLSv1.3")
            && line.contains("not verified (MTA-STS testing: enforce would refuse: invalid peer certificate: UnknownIssuer)"),
        "{line}"
    );
    // Each bad policy: the failure logged, the domain treated as having none.
    for (domain, error) in [
        ("redirect.test", "HTTP 301 redirect (not followed)"),
        ("big.test", "response larger than 65536 bytes"),
        ("html.test", "content type \"text/html\", not text/plain"),
        ("missing.test", "HTTP status 404"),
        ("badcert.test", "invalid peer certificate: UnknownIssuer"),
    ] {
        assert!(
            logs.lines()
                .any(|l| l.contains("MTA-STS policy fetch failed")
                    && l.contains(domain)
                    && l.contains(error)
                    && l.contains("no policy")),
            "{domain}: {error}\n{logs}"
        );
        let rcpt = format!("user@{domain}");
        let line = delivered(&logs, &rcpt).unwrap_or_else(|| panic!("{rcpt}: {logs}"));
        assert!(line.contains("tls=opportunistic: TLSv1.3"), "{line}");
    }
    // The redirect was not followed: one request for its policy, none elsewhere for it.
    assert_eq!(
        requests
            .lines()
            .filter(|l| l.starts_with("mta-sts.redirect.test"))
            .count(),
        1,
        "{requests}"
    );
    assert!(
        requests
            .lines()
            .all(|l| l.ends_with(" /.well-known/mta-sts.txt") || l.starts_with("POST ")),
        "{requests}"
    );

    // The attacker's turn: the TXT record and the policy server are gone, and mx.enforce.test
    // now presents a certificate no trusted CA issued. After a restart the cached policy
    // (on disk) is still enforced: deferred, not delivered.
    drop((web, untrusted, dns_proc));
    enforced.stop_and_logs();
    let mut impostor = receiver(
        at("127.0.0.2", smtp),
        &other.issue("evil", &["mx.enforce.test"]),
    );
    let (_dns2, dns2) = dnsmasq(&[
        "--mx-host=enforce.test,mx.enforce.test,10".to_owned(),
        "--host-record=mx.enforce.test,127.0.0.2".to_owned(),
    ]);
    let mut relay = sender(&dir, dns2, smtp, https, &ca);
    let mut c = relay.client();
    let (code, _) = send_message(
        &mut c,
        "sender@client.test",
        &["again@enforce.test"],
        "Subject: hi\r\n\r\nhi",
    );
    assert_eq!(code, 250);
    wait_for(
        "the impostor to be refused",
        Duration::from_secs(20),
        || {
            reasons(&dir)
                .iter()
                .any(|r| r.contains("451 4.7.5 TLS with mx.enforce.test failed (mta-sts)"))
        },
    );
    assert_eq!(impostor.queued(), 0);
    let logs = relay.stop_and_logs();
    assert!(!logs.contains("MTA-STS policy fetched"), "{logs}");
    impostor.stop_and_logs();
    testing.stop_and_logs();
    unlisted.stop_and_logs();
    let spool = bad.stop_and_read_spool();
    let (envelope, message) = spool
        .iter()
        .find(|(e, _)| e.recipients[0].address == "tlsrpt@reports.test")
        .expect("the emailed report");
    assert_eq!(envelope.mail_from, "postmaster@mx.relay.test");
    let text = String::from_utf8_lossy(message);
    assert!(
        text.contains("TLS-Report-Domain: testing.test\r\n")
            && text.contains("TLS-Report-Submitter: mx.relay.test\r\n")
            && text.contains("report-type=\"tlsrpt\"")
            && text.contains("Content-Type: application/tlsrpt+gzip"),
        "{text}"
    );
}
