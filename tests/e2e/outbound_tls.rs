//! Authenticated outbound TLS in the real relay, against other relays as STARTTLS receivers
//! with certificates from test CAs: a smarthost route's credentials go only over a verified
//! session (or, named as such, with `insecure_auth`); `[delivery] tls = "verify"` checks MX
//! certificates against the system store (`SSL_CERT_FILE` here), passes a message to the
//! next MX when one fails, and defers with 4.7.5 (shown by `queue show`) when none passes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postrider_testkit::TestCa;

use crate::dnssec::{Signing, Zone, signed_dns};
use crate::harness::{
    ADMIN, Relay, auth_relay, config, config_dns, list_json, python, queue, scrape, send_message,
    tls_report_of, tls_reports, value,
};
use crate::peers::{dnsmasq, free_port_on, wait_for};

/// A `[[listener]]` on `address` with the certificate and key `files`.
fn listener(
    name: &str,
    address: SocketAddr,
    kind: &str,
    (cert, key): &(PathBuf, PathBuf),
) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\naddress = \"{address}\"\nkind = \"{kind}\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// A relay receiving for `domains` on `address` (STARTTLS with the certificate `cert`).
pub fn tls_receiver(address: SocketAddr, cert: &(PathBuf, PathBuf), domains: &[&str]) -> Relay {
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    Relay::builder(&config(&format!(
        "{}[relay]\nlocal_domains = [{}]\n",
        listener("mx", address, "smtp", cert),
        domains.join(", ")
    )))
    .start()
}

/// `postrider_outbound_tls_sessions_total` for `policy` and `result` in scraped `samples`.
fn tls_sessions(samples: &HashMap<String, f64>, policy: &str, result: &str) -> f64 {
    value(
        samples,
        &format!(
            "postrider_outbound_tls_sessions_total{{policy=\"{policy}\",result=\"{result}\"}}"
        ),
    )
}

/// The lines of `logs` with `needle`.
fn lines_with<'a>(logs: &'a str, needle: &str) -> Vec<&'a str> {
    logs.lines().filter(|l| l.contains(needle)).collect()
}

/// Why each message in `relay_dir`'s queue waits (`queue list`'s reason).
fn last_replies(relay_dir: &Path) -> Vec<String> {
    list_json(relay_dir)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn smarthost_credentials_go_only_over_verified_tls() {
    // The smarthost: a second relay whose submission listener requires STARTTLS and AUTH,
    // with a certificate for "localhost" from the test CA.
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "test");
    let cert = ca.issue("smarthost", &["localhost"]);
    let cfg = config(&format!(
        "{}{}",
        listener(
            "submission",
            "127.0.0.1:0".parse().unwrap(),
            "submission",
            &cert
        ),
        auth_relay(tmp.path(), "smart.test")
    ));
    let mut smarthost = Relay::builder(&cfg).in_tmp(tmp).start();
    let port = smarthost.addr("submission").port();
    let route = |domain: &str, extra: &str| {
        format!(
            "[[route]]\ndomains = [\"{domain}\"]\nrelay = \"localhost:{port}\"\n\
             auth_user = \"alice\"\nauth_password = \"s3cret\"\n{extra}"
        )
    };
    let routes = [
        // verify (the default with credentials) against the route's CA file.
        route(
            "smart.test",
            &format!("ca_file = \"{}\"\n", ca.cert_file().display()),
        ),
        // verify against the system store, which does not know the test CA.
        route("untrusted.test", ""),
        // The operator's explicit opt-out.
        route("insecure.test", "tls = \"require\"\ninsecure_auth = true\n"),
    ]
    .concat();
    let mut relay = Relay::builder(&config(&format!(
        "[relay]\nrelay_networks = [\"127.0.0.0/8\"]\n[delivery]\nretry_intervals = [1]\n{routes}"
    )))
    .start();
    let mut c = relay.client();
    for to in ["bob@smart.test", "bob@untrusted.test", "bob@insecure.test"] {
        let (code, _) = send_message(&mut c, "sender@client.test", &[to], "Subject: hi\r\n\r\nhi");
        assert_eq!(code, 250, "{to}");
    }
    wait_for(
        "the smarthost to queue two",
        Duration::from_secs(30),
        || smarthost.queued() == 2,
    );
    wait_for(
        "the untrusted one to be deferred",
        Duration::from_secs(10),
        || last_replies(&relay.dir).iter().any(|r| r.contains("4.7.5")),
    );
    // Retried (every second) and still refused: the smarthost never gets a third.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(relay.queued(), 1);
    let replies = last_replies(&relay.dir);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with("451 4.7.5 TLS with localhost failed (verify)")
            && replies[0].contains("UnknownIssuer"),
        "{replies:?}"
    );
    let spool = smarthost.stop_and_read_spool();
    let mut got: Vec<(String, Option<String>)> = spool
        .iter()
        .map(|(env, _)| {
            (
                env.recipients[0].address.clone(),
                env.client.authenticated.clone(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("bob@insecure.test".to_owned(), Some("alice".to_owned())),
            ("bob@smart.test".to_owned(), Some("alice".to_owned()))
        ]
    );
    for (env, msg) in &spool {
        assert!(
            env.client
                .tls
                .as_deref()
                .is_some_and(|t| t.starts_with("TLSv1.3 ")),
            "{:?}",
            env.client.tls
        );
        assert!(String::from_utf8_lossy(msg).contains("with ESMTPSA"));
    }
    let logs = relay.stop_and_logs();
    let delivered = lines_with(&logs, "delivered");
    let verified = format!("certificate verified by {}", ca.cert_file().display());
    assert!(
        delivered.iter().any(|l| l.contains("bob@smart.test")
            && l.contains("tls=verify: TLSv1.3")
            && l.contains(&verified)),
        "{delivered:#?}"
    );
    assert!(
        delivered.iter().any(|l| l.contains("bob@insecure.test")
            && l.contains("tls=require (insecure_auth): TLSv1.3")
            && l.contains("certificate not verified")),
        "{delivered:#?}"
    );
    assert!(
        lines_with(&logs, "deferred")
            .iter()
            .all(|l| l.contains("bob@untrusted.test") && l.contains("tls=verify: no TLS")),
        "{logs}"
    );
    assert!(
        lines_with(&logs, "insecure_auth: this route sends its credentials over TLS whose certificate is not verified").len() == 1,
        "{logs}"
    );
}

#[test]
fn mx_verify_per_domain_uses_the_system_store_and_the_next_mx_then_defers_4_7_5() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "public");
    let port = free_port_on(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let at = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let (_dns, dns) = dnsmasq(
        &[
            "--mx-host=dest.test,mx1.dest.test,10",
            "--mx-host=dest.test,mx2.dest.test,20",
            "--host-record=mx1.dest.test,127.0.0.2",
            "--host-record=mx2.dest.test,127.0.0.3",
            "--mx-host=self.test,mx.self.test,10",
            "--host-record=mx.self.test,127.0.0.4",
            "--mx-host=other.test,mx.other.test,10",
            "--host-record=mx.other.test,127.0.0.5",
        ]
        .map(String::from),
    );
    // mx1 presents a certificate for another name, mx2 its own; mx.self.test and
    // mx.other.test ones that chain to no trusted root (another CA). other.test has no
    // [[tls_policy]]: [delivery]'s opportunistic TLS takes any certificate.
    let receiver = |_: &str, address: SocketAddr, cert: (PathBuf, PathBuf)| {
        tls_receiver(address, &cert, &["dest.test", "self.test", "other.test"])
    };
    let other = TestCa::new(tmp.path(), "other");
    let mut mx1 = receiver("mx", at("127.0.0.2"), ca.issue("mx1", &["www.dest.test"]));
    let mut mx2 = receiver("mx", at("127.0.0.3"), ca.issue("mx2", &["mx2.dest.test"]));
    let mut own = receiver(
        "mx",
        at("127.0.0.4"),
        other.issue("self", &["mx.self.test"]),
    );
    let mut plain = receiver(
        "mx",
        at("127.0.0.5"),
        other.issue("other", &["mx.other.test"]),
    );
    let mut relay = Relay::builder(&config_dns(
        &dns.to_string(),
        &format!(
            "{ADMIN}[relay]\nrelay_networks = [\"127.0.0.0/8\"]\n[delivery]\nsmtp_port = {port}\n\
             retry_intervals = [1]\n\
             [[tls_policy]]\ndomains = [\"dest.test\", \"*.self.test\", \"self.test\"]\ntls = \"verify\"\n"
        ),
    ))
    // The system store, as rustls-native-certs reads it: only the test CA (an empty
    // SSL_CERT_DIR is no directory).
    .env("SSL_CERT_FILE", ca.cert_file())
    .env("SSL_CERT_DIR", "")
    .start();
    let mut c = relay.client();
    for to in ["bob@dest.test", "carol@self.test", "dave@other.test"] {
        let (code, _) = send_message(&mut c, "sender@client.test", &[to], "Subject: hi\r\n\r\nhi");
        assert_eq!(code, 250, "{to}");
    }
    wait_for(
        "mx2 and mx.other.test to queue theirs",
        Duration::from_secs(30),
        || mx2.queued() == 1 && plain.queued() == 1,
    );
    wait_for(
        "the self-signed one to be deferred",
        Duration::from_secs(10),
        || last_replies(&relay.dir).iter().any(|r| r.contains("4.7.5")),
    );
    let replies = last_replies(&relay.dir);
    assert!(
        replies.len() == 1
            && replies[0].starts_with("451 4.7.5 TLS with mx.self.test failed (verify)")
            && replies[0].contains("UnknownIssuer"),
        "{replies:?}"
    );
    let id = list_json(&relay.dir)["entries"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, shown) = queue(&relay.dir, &["show", &id]);
    assert!(
        ok && shown.contains("4.7.5 TLS with mx.self.test failed (verify)"),
        "{shown}"
    );
    // Each new connection counted: mx1 and every attempt at mx.self.test failed, mx2 passed.
    let samples = scrape(&relay);
    let sessions = |result: &str| tls_sessions(&samples, "verify", result);
    assert_eq!(sessions("verified"), 1.0);
    assert!(sessions("failed") >= 2.0, "{samples:?}");
    assert_eq!(sessions("plaintext") + sessions("unverified"), 0.0);
    assert_eq!(tls_sessions(&samples, "opportunistic", "unverified"), 1.0);
    assert_eq!(plain.stop_and_read_spool().len(), 1);
    assert_eq!(mx1.stop_and_read_spool().len(), 0);
    assert_eq!(own.stop_and_read_spool().len(), 0);
    let spool = mx2.stop_and_read_spool();
    assert_eq!(spool[0].0.recipients[0].address, "bob@dest.test");
    let logs = relay.stop_and_logs();
    assert!(
        lines_with(&logs, "delivered")
            .iter()
            .any(|l| l.contains("mx2.dest.test[127.0.0.3]")
                && l.contains("tls=verify: TLSv1.3")
                && l.contains("certificate verified by system trust store")),
        "{logs}"
    );
    assert!(
        lines_with(&logs, "delivered")
            .iter()
            .any(|l| l.contains("dave@other.test")
                && l.contains("tls=opportunistic: TLSv1.3")
                && l.contains("certificate not verified")),
        "{logs}"
    );
    assert!(
        lines_with(&logs, "host failed before the message")
            .iter()
            .any(|l| l.contains("mx1.dest.test") && l.contains("not valid for name")),
        "{logs}"
    );
}

#[test]
fn verify_without_roots_is_a_warning_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-roots.pem");
    std::fs::write(&empty, "").unwrap();
    let mut relay = Relay::builder(&config("[delivery]\ntls = \"verify\"\n"))
        .env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", "")
        .start();
    let logs = relay.stop_and_logs();
    assert_eq!(
        lines_with(&logs, "the system trust store has no certificates").len(),
        1,
        "{logs}"
    );
    // The same store with a CA file for MX delivery: nothing to warn about.
    let ca = TestCa::new(dir.path(), "mx");
    let mut relay = Relay::builder(&config(&format!(
        "[delivery]\ntls = \"verify\"\nca_file = \"{}\"\n",
        ca.cert_file().display()
    )))
    .env("SSL_CERT_FILE", &empty)
    .env("SSL_CERT_DIR", "")
    .start();
    let logs = relay.stop_and_logs();
    assert!(
        lines_with(&logs, "has no certificates").is_empty(),
        "{logs}"
    );
}

/// "3 0 1": the SHA-256 of the certificate file `cert`, in hex.
fn dane_ee_full(cert: &Path) -> String {
    python(
        "import ssl, hashlib, sys\n\
         pem = open(sys.argv[1]).read()\n\
         print(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())",
        &[cert.to_str().unwrap()],
    )
    .trim()
    .to_owned()
}

#[test]
fn dane_against_a_signed_zone_authenticates_defers_on_mismatch_and_bogus_and_is_opportunistic_unsigned()
 {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "dane");
    let port = free_port_on(&["127.0.0.2", "127.0.0.3", "127.0.0.5"]);
    let at = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    // Names on the certificates do not matter to DANE-EE.
    let (good, wrong, plain) = (
        ca.issue("good", &["anything.example"]),
        ca.issue("wrong", &["mx.wrong.test"]),
        ca.issue("plain", &["mx.plain.test"]),
    );
    let zone = |name: &str, signing: Signing, ip: &str, tlsa: Option<&Path>| Zone {
        name: name.to_owned(),
        signing,
        records: [
            format!("@ 300 IN MX 10 mx.{name}."),
            format!("mx 300 IN A {ip}"),
        ]
        .into_iter()
        .chain(tlsa.map(|c| format!("_{port}._tcp.mx 300 IN TLSA 3 0 1 {}", dane_ee_full(c))))
        .collect(),
    };
    let dns = signed_dns(
        &tmp.path().join("dns"),
        &[
            zone("dane.test", Signing::Signed, "127.0.0.2", Some(&good.0)),
            // Publishes the digest of another certificate than its server's.
            zone("wrong.test", Signing::Signed, "127.0.0.3", Some(&good.0)),
            zone("bogus.test", Signing::Bogus, "127.0.0.4", Some(&good.0)),
            zone("plain.test", Signing::Unsigned, "127.0.0.5", Some(&good.0)),
        ],
    );
    let receiver = |address: SocketAddr, cert: (PathBuf, PathBuf)| {
        Relay::builder(&config(&format!(
            "{}[relay]\nlocal_domains = [\"dane.test\", \"wrong.test\", \"plain.test\"]\n",
            listener("mx", address, "smtp", &cert)
        )))
        .start()
    };
    let mut mx_dane = receiver(at("127.0.0.2"), good);
    let mut mx_wrong = receiver(at("127.0.0.3"), wrong);
    let mut mx_plain = receiver(at("127.0.0.5"), plain);
    let cfg = config_dns(
        &dns.addr.to_string(),
        &format!(
            "{ADMIN}[relay]\nrelay_networks = [\"127.0.0.0/8\"]\n[delivery]\nsmtp_port = {port}\n\
             retry_intervals = [1]\ntls = \"dane\"\n"
        ),
    )
    .replace(
        "[dns]\n",
        &format!("[dns]\ntrust_anchor = \"{}\"\n", dns.trust_anchor.display()),
    );
    let mut relay = Relay::builder(&cfg).start();
    let mut c = relay.client();
    for to in [
        "a@dane.test",
        "b@wrong.test",
        "c@bogus.test",
        "d@plain.test",
    ] {
        let (code, _) = send_message(&mut c, "sender@client.test", &[to], "Subject: hi\r\n\r\nhi");
        assert_eq!(code, 250, "{to}");
    }
    wait_for(
        "dane.test and plain.test delivered",
        Duration::from_secs(30),
        || mx_dane.queued() == 1 && mx_plain.queued() == 1,
    );
    wait_for("two deferred", Duration::from_secs(15), || {
        last_replies(&relay.dir).len() == 2
            && last_replies(&relay.dir).iter().all(|r| !r.is_empty())
    });
    // TLS reporting: the DANE sessions under their TLSA records.
    let counts = tls_reports(&relay.dir);
    let policy = |domain: &str| tls_report_of(&counts, domain)["policies"][0].clone();
    let good = policy("dane.test");
    assert_eq!(good["policy"]["policy-type"], "tlsa");
    assert!(
        good["policy"]["policy-string"][0]
            .as_str()
            .unwrap()
            .starts_with("3 0 1 ")
    );
    assert_eq!(good["summary"]["total-successful-session-count"], 1);
    let wrong = policy("wrong.test");
    assert_eq!(wrong["summary"]["total-successful-session-count"], 0);
    assert_eq!(
        wrong["failure-details"][0]["result-type"],
        "validation-failure"
    );
    assert_eq!(
        wrong["failure-details"][0]["receiving-mx-hostname"],
        "mx.wrong.test"
    );

    // `auto` against the same zones: validation works here, so DANE applies where the
    // TLSA records are, and the unsigned domain gets opportunistic TLS.
    let mut auto = Relay::builder(&cfg.replace("tls = \"dane\"", "tls = \"auto\"")).start();
    let mut c = auto.client();
    for to in ["e@dane.test", "f@plain.test"] {
        let (code, _) = send_message(&mut c, "sender@client.test", &[to], "Subject: hi\r\n\r\nhi");
        assert_eq!(code, 250, "{to}");
    }
    wait_for("auto to deliver both", Duration::from_secs(30), || {
        mx_dane.queued() == 2 && mx_plain.queued() == 2
    });
    let logs = auto.stop_and_logs();
    let delivered = lines_with(&logs, "delivered");
    assert!(
        delivered.iter().any(|l| l.contains("e@dane.test")
            && l.contains("tls=dane: TLSv1.3")
            && l.contains("certificate verified by TLSA 3 0 1")),
        "{logs}"
    );
    assert!(
        delivered
            .iter()
            .any(|l| l.contains("f@plain.test") && l.contains("tls=opportunistic: TLSv1.3")),
        "{logs}"
    );

    let mut replies = last_replies(&relay.dir);
    replies.sort();
    assert!(
        replies[0].starts_with("451 4.4.3 DNS lookup failed: DNSSEC")
            && replies[1].starts_with("451 4.7.5 TLS with mx.wrong.test failed (dane)")
            && replies[1].contains("no DANE TLSA record matches"),
        "{replies:?}"
    );
    assert_eq!(mx_wrong.stop_and_read_spool().len(), 0);
    assert_eq!(mx_dane.stop_and_read_spool().len(), 2);
    assert_eq!(mx_plain.stop_and_read_spool().len(), 2);
    let samples = scrape(&relay);
    let sessions = |result: &str| tls_sessions(&samples, "dane", result);
    assert_eq!((sessions("verified"), sessions("unverified")), (1.0, 1.0));
    assert!(sessions("failed") >= 1.0);
    let logs = relay.stop_and_logs();
    let delivered = lines_with(&logs, "delivered");
    assert!(
        delivered.iter().any(|l| l.contains("a@dane.test")
            && l.contains("tls=dane: TLSv1.3")
            && l.contains("certificate verified by TLSA 3 0 1")),
        "{logs}"
    );
    assert!(
        delivered.iter().any(|l| l.contains("d@plain.test")
            && l.contains("tls=dane: TLSv1.3")
            && l.contains("certificate not verified")),
        "{logs}"
    );
}

/// The client side of the REQUIRETLS test: REQUIRETLS refused before TLS, advertised after,
/// two messages with it (to sure.test and open.test) and one without (to open.test).
const PY_REQUIRETLS: &str = r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo("client.test")
assert not s.has_extn("requiretls"), s.esmtp_features
code, _ = s.docmd("MAIL FROM:<sender@client.test> REQUIRETLS")
print("plain", code)
s.rset()
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
s.starttls(context=context)
s.ehlo("client.test")
assert s.has_extn("requiretls"), s.esmtp_features
msg = "Subject: secret\r\n\r\nfor TLS only\r\n"
s.sendmail("sender@client.test", ["user@sure.test"], msg, mail_options=["REQUIRETLS"])
s.sendmail("sender@client.test", ["user@open.test"], msg, mail_options=["REQUIRETLS"])
s.sendmail("sender@client.test", ["plain@open.test"], "Subject: any\r\n\r\nx\r\n")
s.quit()
print("sent")
"#;

#[test]
fn requiretls_goes_only_over_authenticated_tls_to_servers_that_support_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "public");
    let port = free_port_on(&["127.0.0.2", "127.0.0.3"]);
    let at = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let (_dns, dns) = dnsmasq(
        &[
            "--mx-host=sure.test,mx.sure.test,10",
            "--host-record=mx.sure.test,127.0.0.2",
            "--mx-host=open.test,mx.open.test,10",
            "--host-record=mx.open.test,127.0.0.3",
        ]
        .map(String::from),
    );
    // Both receivers present certificates the sender trusts, and advertise REQUIRETLS over
    // TLS; only sure.test has a policy (verify) that authenticates its MX.
    let domains = ["sure.test", "open.test"];
    let mut sure = tls_receiver(
        at("127.0.0.2"),
        &ca.issue("sure", &["mx.sure.test"]),
        &domains,
    );
    let mut open = tls_receiver(
        at("127.0.0.3"),
        &ca.issue("open", &["mx.open.test"]),
        &domains,
    );
    let relay_dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::builder(&config_dns(
        &dns.to_string(),
        &format!(
            "{}{ADMIN}[relay]\nrelay_networks = [\"127.0.0.0/8\"]\n[delivery]\nsmtp_port = {port}\n\
             retry_intervals = [1]\n\
             [[tls_policy]]\ndomains = [\"sure.test\"]\ntls = \"verify\"\n",
            crate::harness::tls_listener(relay_dir.path(), "submit", "smtp")
        ),
    ))
    .in_tmp(relay_dir)
    .env("SSL_CERT_FILE", ca.cert_file())
    .env("SSL_CERT_DIR", "")
    .start();
    let out = python(PY_REQUIRETLS, &[&relay.addr("submit").port().to_string()]);
    assert_eq!(out, "plain 530\nsent\n", "{out}");
    wait_for("the two deliveries", Duration::from_secs(30), || {
        sure.queued() == 1 && open.queued() == 1
    });
    let logs = relay.stop_and_logs();
    assert!(
        lines_with(&logs, "bounced")
            .iter()
            .any(|l| l.contains("user@open.test")
                && l.contains("dsn=5.7.10")
                && l.contains(
                    "REQUIRETLS: TLS with mx.open.test would not be authenticated (opportunistic)"
                )),
        "{logs}"
    );
    // Its DSN returns the header only and itself requires TLS.
    let queued = relay.stop_and_read_spool();
    let (dsn_envelope, dsn) = queued
        .iter()
        .find(|(e, _)| e.mail_from.is_empty())
        .expect("the DSN of the REQUIRETLS message");
    assert!(dsn_envelope.require_tls);
    let dsn = String::from_utf8_lossy(dsn);
    assert!(
        dsn.contains("Subject: secret") && !dsn.contains("for TLS only"),
        "{dsn}"
    );
    let spool = sure.stop_and_read_spool();
    assert!(spool[0].0.require_tls, "the flag travels with the message");
    assert_eq!(spool[0].0.recipients[0].address, "user@sure.test");
    let spool = open.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    assert_eq!(spool[0].0.recipients[0].address, "plain@open.test");
    assert!(!spool[0].0.require_tls);
}
