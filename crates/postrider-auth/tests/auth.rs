//! SPF, DKIM, DMARC and ARC through a real resolver against a local test DNS server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use postrider_auth::{
    ArcSealer, AuthError, AuthOutcome, AuthResult, DkimSigner, DmarcPolicy, Signers, SpfOutcome,
};
use support::*;

const HOST: &str = "mx.test.example";

// ---------------------------------------------------------------- SPF

async fn spf_for(record: Option<&str>, ip: std::net::IpAddr) -> SpfOutcome {
    let dns = TestDns::start().await;
    if let Some(record) = record {
        dns.txt("example.org", record);
    }
    dns.verifier()
        .spf_mail_from(ip, "mail.example.org", HOST, "<bounce@example.org>")
        .await
}

#[tokio::test]
async fn spf_pass() {
    let spf = spf_for(Some("v=spf1 ip4:192.0.2.0/24 -all"), GOOD_IP).await;
    assert_eq!(spf.result, AuthResult::Pass);
    assert_eq!(spf.domain, "example.org");
}

#[tokio::test]
async fn spf_fail() {
    let spf = spf_for(Some("v=spf1 ip4:192.0.2.0/24 -all"), BAD_IP).await;
    assert_eq!(spf.result, AuthResult::Fail);
}

#[tokio::test]
async fn spf_softfail() {
    let spf = spf_for(Some("v=spf1 ip4:192.0.2.0/24 ~all"), BAD_IP).await;
    assert_eq!(spf.result, AuthResult::SoftFail);
}

#[tokio::test]
async fn spf_neutral() {
    let spf = spf_for(Some("v=spf1 ip4:192.0.2.0/24 ?all"), BAD_IP).await;
    assert_eq!(spf.result, AuthResult::Neutral);
}

#[tokio::test]
async fn spf_none_without_record() {
    let spf = spf_for(None, GOOD_IP).await;
    assert_eq!(spf.result, AuthResult::None);
}

#[tokio::test]
async fn spf_none_with_only_other_txt() {
    let spf = spf_for(Some("google-site-verification=abc"), GOOD_IP).await;
    assert_eq!(spf.result, AuthResult::None);
}

#[tokio::test]
async fn spf_permerror_on_broken_record() {
    // An include without a record (RFC 7208 §5.2), records that do not parse.
    for record in [
        "v=spf1 include:missing.example -all",
        "v=spf1 ip4: -all",
        "v=spf1 redirect=a.example redirect=b.example",
    ] {
        let spf = spf_for(Some(record), GOOD_IP).await;
        assert_eq!(spf.result, AuthResult::PermError, "{record}");
    }
}

#[tokio::test]
async fn spf_temperror_on_servfail() {
    let dns = TestDns::start().await;
    dns.servfail("example.org");
    let spf = dns
        .verifier()
        .spf_mail_from(GOOD_IP, "mail.example.org", HOST, "bounce@example.org")
        .await;
    assert_eq!(spf.result, AuthResult::TempError);
}

#[tokio::test]
async fn spf_a_mechanism_resolves_addresses() {
    let dns = TestDns::start().await;
    dns.txt("example.org", "v=spf1 a:out.example.org -all");
    dns.a("out.example.org", std::net::Ipv4Addr::new(192, 0, 2, 10));
    let v = dns.verifier();
    let pass = v
        .spf_mail_from(GOOD_IP, "h.example", HOST, "b@example.org")
        .await;
    let fail = v
        .spf_mail_from(BAD_IP, "h.example", HOST, "b@example.org")
        .await;
    assert_eq!(
        (pass.result, fail.result),
        (AuthResult::Pass, AuthResult::Fail)
    );
}

#[tokio::test]
async fn spf_helo_identity_and_address_literal() {
    let dns = TestDns::start().await;
    dns.txt("mail.example.org", "v=spf1 ip4:192.0.2.10 -all");
    let v = dns.verifier();
    let helo = v.spf_helo(GOOD_IP, "mail.example.org", HOST).await;
    assert_eq!(helo.result, AuthResult::Pass);
    assert_eq!(helo.domain, "mail.example.org");
    let literal = v.spf_helo(GOOD_IP, "[192.0.2.10]", HOST).await;
    assert_eq!(literal.result, AuthResult::None);
}

#[tokio::test]
async fn spf_null_sender_checks_helo_domain() {
    let dns = TestDns::start().await;
    dns.txt("mail.example.org", "v=spf1 ip4:192.0.2.10 -all");
    let v = dns.verifier();
    let ok = v
        .spf_mail_from(GOOD_IP, "mail.example.org", HOST, "<>")
        .await;
    assert_eq!(ok.result, AuthResult::Pass);
    assert_eq!(ok.domain, "mail.example.org");
    let bad = v.spf_mail_from(BAD_IP, "mail.example.org", HOST, "").await;
    assert_eq!(bad.result, AuthResult::Fail);
    let literal = v.spf_mail_from(GOOD_IP, "[192.0.2.10]", HOST, "<>").await;
    assert_eq!(literal.result, AuthResult::None);
}

// ---------------------------------------------------------------- DKIM

/// Signs `raw` for example.org with `key_pem`, publishes `record_key`'s public key, verifies.
async fn sign_and_verify(
    key_pem: &str,
    record_key: &str,
    tamper: fn(Vec<u8>) -> Vec<u8>,
) -> AuthOutcome {
    let dns = TestDns::start().await;
    dns.txt("sel._domainkey.example.org", &dkim_record(record_key));
    let signer = DkimSigner::load(&signer_config("example.org", key_pem)).unwrap();
    let raw = message("alice@example.org", "Hello, world.");
    let signed = tamper(prepend(&signer.sign(&raw).unwrap(), &raw));
    let spf = SpfOutcome::none("example.net");
    dns.verifier()
        .verify_message(&signed, GOOD_IP, "h.example.net", "x@example.net", &spf)
        .await
}

fn untouched(raw: Vec<u8>) -> Vec<u8> {
    raw
}

fn replace(raw: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    assert!(text.contains(from));
    text.replacen(from, to, 1).into_bytes()
}

#[tokio::test]
async fn dkim_rsa_signature_verifies() {
    let out = sign_and_verify("rsa2048.pem", "rsa", untouched).await;
    assert_eq!(out.dkim.len(), 1);
    assert_eq!(out.dkim[0].result, AuthResult::Pass);
    assert_eq!(out.dkim[0].domain, "example.org");
    assert_eq!(out.dkim[0].selector, "sel");
}

#[tokio::test]
async fn dkim_rsa_pkcs1_key_verifies() {
    let out = sign_and_verify("rsa2048-pkcs1.pem", "rsa", untouched).await;
    assert_eq!(out.dkim[0].result, AuthResult::Pass);
}

#[tokio::test]
async fn dkim_ed25519_signature_verifies() {
    let out = sign_and_verify("ed25519.pem", "ed25519", untouched).await;
    assert_eq!(out.dkim.len(), 1);
    assert_eq!(out.dkim[0].result, AuthResult::Pass);
}

#[tokio::test]
async fn dkim_tampered_body_fails() {
    let out = sign_and_verify("rsa2048.pem", "rsa", |raw| replace(&raw, "Hello", "Jello")).await;
    assert_eq!(out.dkim[0].result, AuthResult::Fail);
    let out = sign_and_verify("ed25519.pem", "ed25519", |raw| {
        replace(&raw, "world.\r\n", "world.\r\nP.S. added\r\n")
    })
    .await;
    assert_eq!(out.dkim[0].result, AuthResult::Fail);
}

#[tokio::test]
async fn dkim_tampered_header_fails() {
    let out = sign_and_verify("rsa2048.pem", "rsa", |raw| {
        replace(&raw, "Subject: Test message", "Subject: Urgent")
    })
    .await;
    assert_eq!(out.dkim[0].result, AuthResult::Fail);
}

#[tokio::test]
async fn dkim_wrong_public_key_fails() {
    let out = sign_and_verify("ed25519.pem", "rsa", untouched).await;
    assert_ne!(out.dkim[0].result, AuthResult::Pass);
}

#[tokio::test]
async fn dkim_unpublished_key_is_permerror() {
    let dns = TestDns::start().await;
    let signer = DkimSigner::load(&signer_config("example.org", "rsa2048.pem")).unwrap();
    let raw = message("alice@example.org", "Hi");
    let signed = prepend(&signer.sign(&raw).unwrap(), &raw);
    let out = dns
        .verifier()
        .verify_message(
            &signed,
            GOOD_IP,
            "h",
            "x@example.net",
            &SpfOutcome::none("example.net"),
        )
        .await;
    assert_eq!(out.dkim[0].result, AuthResult::PermError);
}

#[test]
fn dkim_signature_header_shape() {
    let signer = DkimSigner::load(&signer_config("example.org", "rsa2048.pem")).unwrap();
    let header = signer.sign(&message("alice@example.org", "Hi")).unwrap();
    assert!(header.starts_with("DKIM-Signature: "), "{header}");
    assert!(header.ends_with("\r\n"));
    assert!(header.lines().all(|l| l.len() <= 78), "folded: {header}");
    for tag in [
        "a=rsa-sha256",
        "d=example.org",
        "s=sel",
        "c=relaxed/relaxed",
    ] {
        assert!(header.contains(tag), "{tag} missing in {header}");
    }
    let signer = DkimSigner::load(&signer_config("example.org", "ed25519.pem")).unwrap();
    let header = signer.sign(&message("alice@example.org", "Hi")).unwrap();
    assert!(header.contains("a=ed25519-sha256"), "{header}");
}

#[test]
fn keys_that_cannot_sign_are_refused_naming_the_file() {
    for (file, needle) in [
        ("rsa1024.pem", "2048"),
        ("ec-p256-sec1.pem", "EC"),
        ("missing.pem", "missing.pem"),
        ("rsa2048.p.txt", "PEM"),
    ] {
        let err = DkimSigner::load(&signer_config("example.org", file))
            .err()
            .unwrap_or_else(|| panic!("{file} loaded"));
        let text = err.to_string();
        assert!(text.contains(file), "{text}");
        assert!(text.contains(needle), "{text}");
        assert!(matches!(
            err,
            AuthError::KeyRead { .. } | AuthError::KeyInvalid { .. }
        ));
    }
}

#[test]
fn signer_is_chosen_by_from_domain() {
    let signers = Signers::load(&[
        signer_config("example.org", "rsa2048.pem"),
        signer_config("other.example", "ed25519.pem"),
    ])
    .unwrap();
    let pick = |from: &str| {
        signers
            .for_message(&message(from, "x"))
            .map(|s| s.domain().to_string())
    };
    assert_eq!(pick("alice@example.org").as_deref(), Some("example.org"));
    assert_eq!(pick("Bob@OTHER.Example").as_deref(), Some("other.example"));
    assert_eq!(pick("carol@sub.example.org"), None);
    assert_eq!(pick("dave@unknown.example"), None);
    assert!(signers.for_message(b"no header block").is_none());
}

// ---------------------------------------------------------------- DMARC

/// A DNS with example.org's DMARC record, SPF record and DKIM key, plus other.example's key.
async fn dmarc_dns(dmarc: &str) -> TestDns {
    let dns = TestDns::start().await;
    dns.txt("_dmarc.example.org", dmarc);
    dns.txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all");
    dns.txt("sel._domainkey.example.org", &dkim_record("rsa"));
    dns.txt("sel._domainkey.other.example", &dkim_record("rsa"));
    dns
}

async fn check(dns: &TestDns, raw: &[u8], ip: std::net::IpAddr, mail_from: &str) -> AuthOutcome {
    let v = dns.verifier();
    let spf = v.spf_mail_from(ip, "h.example.net", HOST, mail_from).await;
    v.verify_message(raw, ip, "h.example.net", mail_from, &spf)
        .await
}

fn signed_by(domain: &str, from: &str) -> Vec<u8> {
    let signer = DkimSigner::load(&signer_config(domain, "rsa2048.pem")).unwrap();
    let raw = message(from, "Hello");
    prepend(&signer.sign(&raw).unwrap(), &raw)
}

#[tokio::test]
async fn dmarc_pass_with_aligned_dkim() {
    let dns = dmarc_dns("v=DMARC1; p=reject").await;
    // SPF is about another domain and fails; the aligned signature carries DMARC.
    let out = check(
        &dns,
        &signed_by("example.org", "alice@example.org"),
        BAD_IP,
        "b@example.net",
    )
    .await;
    assert_eq!(out.dmarc.result, AuthResult::Pass);
    assert_eq!(out.dmarc.from_domain, "example.org");
    assert_eq!(out.dmarc.policy, DmarcPolicy::Reject);
    assert_eq!(out.dmarc.action(), DmarcPolicy::None);
}

#[tokio::test]
async fn dmarc_pass_with_aligned_spf() {
    let dns = dmarc_dns("v=DMARC1; p=reject").await;
    let raw = message("alice@example.org", "unsigned");
    let out = check(&dns, &raw, GOOD_IP, "bounce@example.org").await;
    assert!(out.dkim.is_empty());
    assert_eq!(out.dmarc.result, AuthResult::Pass);
}

#[tokio::test]
async fn dmarc_relaxed_alignment_accepts_subdomain_of_mail_from() {
    let dns = dmarc_dns("v=DMARC1; p=reject").await;
    dns.txt("bounces.example.org", "v=spf1 ip4:192.0.2.0/24 -all");
    let raw = message("alice@example.org", "unsigned");
    let out = check(&dns, &raw, GOOD_IP, "x@bounces.example.org").await;
    assert_eq!(out.dmarc.result, AuthResult::Pass);
    let dns = dmarc_dns("v=DMARC1; p=reject; aspf=s").await;
    dns.txt("bounces.example.org", "v=spf1 ip4:192.0.2.0/24 -all");
    let out = check(&dns, &raw, GOOD_IP, "x@bounces.example.org").await;
    assert_eq!(out.dmarc.result, AuthResult::Fail, "strict SPF alignment");
}

#[tokio::test]
async fn dmarc_fail_when_nothing_aligns() {
    let dns = dmarc_dns("v=DMARC1; p=reject").await;
    // A valid signature, but by other.example; SPF passes, but for other.example.
    dns.txt("other.example", "v=spf1 ip4:192.0.2.0/24 -all");
    let raw = signed_by("other.example", "alice@example.org");
    let out = check(&dns, &raw, GOOD_IP, "b@other.example").await;
    assert_eq!(out.dkim[0].result, AuthResult::Pass);
    assert_eq!(out.dkim[0].domain, "other.example");
    assert_eq!(out.dmarc.result, AuthResult::Fail);
    assert_eq!(out.dmarc.policy, DmarcPolicy::Reject);
    assert_eq!(out.dmarc.action(), DmarcPolicy::Reject);
}

#[tokio::test]
async fn dmarc_quarantine_policy_is_reported() {
    let dns = dmarc_dns("v=DMARC1; p=quarantine").await;
    let raw = message("alice@example.org", "unsigned");
    let out = check(&dns, &raw, BAD_IP, "b@example.org").await;
    assert_eq!(out.dmarc.result, AuthResult::Fail);
    assert_eq!(out.dmarc.policy, DmarcPolicy::Quarantine);
    assert_eq!(out.dmarc.action(), DmarcPolicy::Quarantine);
}

#[tokio::test]
async fn dmarc_subdomain_policy_applies_to_subdomains() {
    let dns = dmarc_dns("v=DMARC1; p=none; sp=reject").await;
    dns.a("sub.example.org", std::net::Ipv4Addr::new(192, 0, 2, 1));
    let raw = message("alice@sub.example.org", "unsigned");
    let out = check(&dns, &raw, BAD_IP, "b@example.net").await;
    assert_eq!(out.dmarc.from_domain, "sub.example.org");
    assert_eq!(out.dmarc.result, AuthResult::Fail);
    assert_eq!(out.dmarc.policy, DmarcPolicy::Reject);
}

#[tokio::test]
async fn dmarc_none_without_record() {
    let dns = TestDns::start().await;
    let raw = message("alice@example.org", "unsigned");
    let out = check(&dns, &raw, BAD_IP, "b@example.org").await;
    assert_eq!(out.dmarc.result, AuthResult::None);
    assert_eq!(out.dmarc.policy, DmarcPolicy::None);
}

// ---------------------------------------------------------------- ARC

#[tokio::test]
async fn arc_seal_then_verify_passes_and_chains() {
    let dns = dmarc_dns("v=DMARC1; p=none").await;
    dns.txt("sel._domainkey.forwarder.example", &dkim_record("rsa"));
    dns.txt("sel._domainkey.second.example", &dkim_record("ed25519"));
    let raw = signed_by("example.org", "alice@example.org");

    // Hop 1 verifies and seals.
    let first = check(&dns, &raw, GOOD_IP, "b@example.org").await;
    assert_eq!(first.arc, AuthResult::None);
    let sealer = ArcSealer::load(
        &signer_config("forwarder.example", "rsa2048.pem"),
        AUTHSERV_ID,
    )
    .unwrap();
    let set = sealer.seal(&raw, None, &first).unwrap();
    assert!(set.starts_with("ARC-Seal: i=1;"), "{set}");
    assert!(set.contains("cv=none"), "{set}");
    assert!(set.contains("ARC-Message-Signature: i=1;"), "{set}");
    assert!(
        set.contains(&format!("ARC-Authentication-Results: i=1; {AUTHSERV_ID}")),
        "{set}"
    );
    assert!(set.contains("dkim=pass"), "{set}");
    let hop1 = prepend(&set, &raw);

    // Hop 2 sees a valid chain, and adds to it.
    let second = check(&dns, &hop1, BAD_IP, "b@forwarder.example").await;
    assert_eq!(second.arc, AuthResult::Pass);
    let sealer =
        ArcSealer::load(&signer_config("second.example", "ed25519.pem"), AUTHSERV_ID).unwrap();
    let set = sealer.seal(&hop1, None, &second).unwrap();
    assert!(set.starts_with("ARC-Seal: i=2;"), "{set}");
    assert!(set.contains("cv=pass"), "{set}");
    assert!(set.contains("arc=pass"), "{set}");
    let hop2 = prepend(&set, &hop1);

    let third = check(&dns, &hop2, BAD_IP, "b@second.example").await;
    assert_eq!(third.arc, AuthResult::Pass);

    // Changing the body breaks the chain.
    let tampered = replace(&hop2, "Hello", "Jello");
    let broken = check(&dns, &tampered, BAD_IP, "b@second.example").await;
    assert_ne!(broken.arc, AuthResult::Pass);
}

#[tokio::test]
async fn arc_refuses_to_extend_a_failed_chain() {
    let dns = dmarc_dns("v=DMARC1; p=none").await;
    dns.txt("sel._domainkey.forwarder.example", &dkim_record("rsa"));
    let raw = message("alice@example.org", "Hello");
    let sealer = ArcSealer::load(
        &signer_config("forwarder.example", "rsa2048.pem"),
        AUTHSERV_ID,
    )
    .unwrap();
    let first = check(&dns, &raw, GOOD_IP, "b@example.org").await;
    let hop1 = prepend(&sealer.seal(&raw, None, &first).unwrap(), &raw);
    // Hop 2 seals a tampered copy: cv=fail.
    let tampered = replace(&hop1, "Hello", "Jello");
    let second = check(&dns, &tampered, BAD_IP, "b@forwarder.example").await;
    assert_ne!(second.arc, AuthResult::Pass);
    let set = sealer.seal(&tampered, None, &second).unwrap();
    assert!(set.contains("cv=fail"), "{set}");
    let hop2 = prepend(&set, &tampered);
    // Nobody adds to a chain that says cv=fail.
    let third = check(&dns, &hop2, BAD_IP, "b@forwarder.example").await;
    assert_eq!(third.arc, AuthResult::Fail);
    assert!(matches!(
        sealer.seal(&hop2, None, &third),
        Err(AuthError::Seal(_))
    ));
}

// ---------------------------------------------------------------- Authentication-Results

/// Unfolds an A-R header and splits it into the authserv-id and `method=result` pairs.
fn parse_results(header: &str) -> (String, Vec<(String, String)>) {
    assert!(header.ends_with("\r\n"), "{header:?}");
    let value = header
        .strip_prefix("Authentication-Results: ")
        .unwrap_or_else(|| panic!("{header:?}"));
    for line in value.trim_end_matches("\r\n").split("\r\n").skip(1) {
        assert!(
            line.starts_with('\t') || line.starts_with(' '),
            "bad fold: {line:?}"
        );
    }
    let value = value.replace("\r\n", "");
    let mut parts = value.split(';').map(str::trim);
    let id = parts.next().unwrap().to_string();
    let methods = parts
        .map(|p| {
            let word = p.split_whitespace().next().unwrap_or("");
            let (method, result) = word.split_once('=').unwrap_or((word, ""));
            (method.to_string(), result.to_string())
        })
        .collect();
    (id, methods)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn results_header_lists_every_method() {
    let dns = dmarc_dns("v=DMARC1; p=reject").await;
    dns.txt("h.example.net", "v=spf1 -all");
    let v = dns.verifier();
    let raw = signed_by("example.org", "alice@example.org");
    let spf_helo = v.spf_helo(GOOD_IP, "h.example.net", HOST).await;
    let spf = v
        .spf_mail_from(GOOD_IP, "h.example.net", HOST, "<b@example.org>")
        .await;
    let out = v
        .verify_message(&raw, GOOD_IP, "h.example.net", "<b@example.org>", &spf)
        .await;
    let header = v.authentication_results(
        GOOD_IP,
        "h.example.net",
        "<b@example.org>",
        Some(&spf_helo),
        Some(&spf),
        Some(&out),
    );
    let (id, methods) = parse_results(&header);
    assert_eq!(id, AUTHSERV_ID);
    assert_eq!(
        methods,
        pairs(&[
            ("spf", "fail"),
            ("spf", "pass"),
            ("dkim", "pass"),
            ("arc", "none"),
            ("dmarc", "pass"),
        ]),
        "{header}"
    );
    for property in [
        "smtp.helo=h.example.net",
        "smtp.mailfrom=b@example.org",
        "header.d=example.org",
        "header.s=sel",
        "header.from=example.org",
        "policy.dmarc=reject",
    ] {
        assert!(header.contains(property), "{property} missing in {header}");
    }
}

#[tokio::test]
async fn results_header_for_unsigned_mail_and_null_sender() {
    let dns = TestDns::start().await;
    let v = dns.verifier();
    let raw = message("alice@example.org", "unsigned");
    let spf = v.spf_mail_from(BAD_IP, "h.example.net", HOST, "<>").await;
    let out = v
        .verify_message(&raw, BAD_IP, "h.example.net", "<>", &spf)
        .await;
    let header =
        v.authentication_results(BAD_IP, "h.example.net", "<>", None, Some(&spf), Some(&out));
    let (_, methods) = parse_results(&header);
    assert_eq!(
        methods,
        pairs(&[
            ("spf", "none"),
            ("dkim", "none"),
            ("arc", "none"),
            ("dmarc", "none")
        ]),
        "{header}"
    );
    assert!(header.contains("smtp.mailfrom=<>"), "{header}");
}

#[test]
fn results_header_without_results_says_none() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dns = TestDns::start().await;
        let header = dns
            .verifier()
            .authentication_results(GOOD_IP, "h", "", None, None, None);
        assert_eq!(
            header,
            format!("Authentication-Results: {AUTHSERV_ID}; none\r\n")
        );
    });
}

#[tokio::test]
async fn forged_results_are_stripped_and_signature_survives() {
    let dns = dmarc_dns("v=DMARC1; p=reject").await;
    let signed = signed_by("example.org", "alice@example.org");
    let forged = prepend(
        &format!("Authentication-Results: {AUTHSERV_ID};\r\n\tdkim=pass\r\n"),
        &signed,
    );
    let cleaned = postrider_auth::strip_forged_results(&forged, &AUTHSERV_ID.to_uppercase());
    assert_eq!(&*cleaned, &signed[..]);
    let out = check(&dns, &cleaned, BAD_IP, "b@example.net").await;
    assert_eq!(out.dkim[0].result, AuthResult::Pass);
}

#[test]
fn dns_records_match_what_openssl_derives() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    for (key, kind, p_file) in [
        ("rsa2048.pem", "rsa", "rsa2048.p.txt"),
        ("rsa2048-pkcs1.pem", "rsa", "rsa2048.p.txt"),
        ("ed25519.pem", "ed25519", "ed25519.p.txt"),
    ] {
        let record = postrider_auth::SigningKey::load(&dir.join(key))
            .unwrap()
            .dns_record();
        let p = std::fs::read_to_string(dir.join(p_file)).unwrap();
        assert_eq!(
            record,
            format!("v=DKIM1; k={kind}; p={}", p.trim()),
            "{key}"
        );
    }
}
